//! The REST API, route for route as Confluent Schema Registry serves it for Avro.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::{self, Users};
use crate::compat::Level;
use crate::error::ApiError;
use crate::log::{Plan, SchemaLog};
use crate::store::{ParsedSchema, Record, Store, SubjectEntry};

pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

type App = State<Arc<SchemaLog>>;
type Params = Query<HashMap<String, String>>;
type ApiResult = Result<Response, ApiError>;

/// The API, behind `users`' basic auth when there are any.
pub fn router(log: Arc<SchemaLog>, users: Arc<Users>) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { json_response(StatusCode::OK, json!({})) }),
        )
        .route(
            "/mode",
            get(|| async { json_response(StatusCode::OK, json!({ "mode": "READWRITE" })) }),
        )
        .route(
            "/schemas/types",
            get(|| async { json_response(StatusCode::OK, json!(["AVRO"])) }),
        )
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/schemas/ids/{id}/schema", get(raw_schema_by_id))
        .route("/schemas/ids/{id}/versions", get(versions_of_id))
        .route("/schemas/ids/{id}/subjects", get(subjects_of_id))
        .route("/subjects", get(list_subjects))
        .route("/subjects/{subject}", post(lookup).delete(delete_subject))
        .route(
            "/subjects/{subject}/versions",
            get(list_versions).post(register),
        )
        .route(
            "/subjects/{subject}/versions/{version}",
            get(get_version).delete(delete_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(get_version_schema),
        )
        .route(
            "/subjects/{subject}/versions/{version}/referencedby",
            get(referenced_by),
        )
        .route(
            "/config",
            get(get_global_config)
                .put(put_global_config)
                .delete(delete_global_config),
        )
        .route(
            "/config/{subject}",
            get(get_subject_config)
                .put(put_subject_config)
                .delete(delete_subject_config),
        )
        .route(
            "/compatibility/subjects/{subject}/versions",
            post(check_all),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(check_version),
        )
        .fallback(|| async { ApiError::NoRoute })
        .layer(axum::middleware::from_fn_with_state(users, auth::authorize))
        .with_state(log)
}

/// A JSON body with the registry's content type.
pub fn json_response(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        body.to_string(),
    )
        .into_response()
}

fn ok(body: Value) -> ApiResult {
    Ok(json_response(StatusCode::OK, body))
}

fn flag(params: &HashMap<String, String>, name: &str) -> bool {
    params
        .get(name)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

fn parse_body<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            ApiError::Unprocessable(e.to_string())
        } else {
            ApiError::MalformedJson(e.to_string())
        }
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaRequest {
    schema: String,
    schema_type: Option<String>,
    #[serde(default)]
    references: Option<Vec<Value>>,
}

impl SchemaRequest {
    fn parse(body: &Bytes) -> Result<ParsedSchema, ApiError> {
        let req: SchemaRequest = parse_body(body)?;
        if let Some(t) = req
            .schema_type
            .as_deref()
            .filter(|t| !t.eq_ignore_ascii_case("AVRO"))
        {
            return Err(ApiError::InvalidSchema(format!(
                "schema type {t} is not supported by this registry; only AVRO is"
            )));
        }
        if req.references.as_ref().is_some_and(|r| !r.is_empty()) {
            return Err(ApiError::InvalidSchema(
                "schema references are not supported by this registry".into(),
            ));
        }
        ParsedSchema::parse(&req.schema)
    }
}

#[derive(Clone, Copy)]
enum VersionSel {
    Latest,
    Number(u32),
}

fn parse_version(raw: &str) -> Result<VersionSel, ApiError> {
    if raw == "latest" || raw == "-1" {
        return Ok(VersionSel::Latest);
    }
    match raw.parse::<i64>() {
        Ok(n) if (1..=i64::from(i32::MAX)).contains(&n) => Ok(VersionSel::Number(n as u32)),
        _ => Err(ApiError::InvalidVersion(raw.to_string())),
    }
}

fn parse_id(raw: &str) -> Result<u32, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::SchemaNotFound(raw.to_string()))
}

fn subject<'a>(
    store: &'a Store,
    name: &str,
    include_deleted: bool,
) -> Result<&'a SubjectEntry, ApiError> {
    store
        .subject(name)
        .filter(|s| include_deleted || s.is_live())
        .ok_or_else(|| ApiError::SubjectNotFound(name.to_string()))
}

/// Resolves a version selector to `(version, schema id)`.
fn resolve(
    store: &Store,
    name: &str,
    sel: VersionSel,
    include_deleted: bool,
) -> Result<(u32, u32), ApiError> {
    let s = subject(store, name, include_deleted)?;
    let found = match sel {
        VersionSel::Latest => s.live().last().or_else(|| {
            if include_deleted {
                s.versions().last()
            } else {
                None
            }
        }),
        VersionSel::Number(n) => s
            .get(n)
            .filter(|e| include_deleted || !e.deleted)
            .map(|e| (n, e)),
    };
    let label = match sel {
        VersionSel::Latest => "latest".to_string(),
        VersionSel::Number(n) => n.to_string(),
    };
    found
        .map(|(v, e)| (v, e.id))
        .ok_or(ApiError::VersionNotFound(label))
}

fn schema_text(store: &Store, id: u32) -> Result<&str, ApiError> {
    store
        .schema(id)
        .map(|s| s.text.as_str())
        .ok_or_else(|| ApiError::SchemaNotFound(id.to_string()))
}

fn raw_json(text: &str) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        text.to_string(),
    )
        .into_response()
}

async fn schema_by_id(State(log): App, Path(id): Path<String>) -> ApiResult {
    let id = parse_id(&id)?;
    ok(json!({ "schema": schema_text(&*log.read().await, id)? }))
}

async fn raw_schema_by_id(State(log): App, Path(id): Path<String>) -> ApiResult {
    let id = parse_id(&id)?;
    Ok(raw_json(schema_text(&*log.read().await, id)?))
}

async fn versions_of_id(State(log): App, Path(id): Path<String>, Query(q): Params) -> ApiResult {
    let id = parse_id(&id)?;
    let store = log.read().await;
    schema_text(&store, id)?;
    let usages: Vec<Value> = store
        .usages(id, flag(&q, "deleted"))
        .into_iter()
        .map(|(subject, version)| json!({ "subject": subject, "version": version }))
        .collect();
    ok(Value::Array(usages))
}

async fn subjects_of_id(State(log): App, Path(id): Path<String>, Query(q): Params) -> ApiResult {
    let id = parse_id(&id)?;
    let store = log.read().await;
    schema_text(&store, id)?;
    let mut subjects: Vec<String> = store
        .usages(id, flag(&q, "deleted"))
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    subjects.dedup();
    ok(json!(subjects))
}

async fn list_subjects(State(log): App, Query(q): Params) -> ApiResult {
    let store = log.read().await;
    let prefix = q.get("subjectPrefix").map(String::as_str).unwrap_or("");
    let deleted = flag(&q, "deleted");
    let names: Vec<&String> = store
        .subjects()
        .filter(|(name, s)| name.starts_with(prefix) && (deleted || s.is_live()))
        .map(|(name, _)| name)
        .collect();
    ok(json!(names))
}

async fn list_versions(State(log): App, Path(name): Path<String>, Query(q): Params) -> ApiResult {
    let store = log.read().await;
    let deleted = flag(&q, "deleted");
    let s = subject(&store, &name, deleted)?;
    let versions: Vec<u32> = s
        .versions()
        .filter(|(_, e)| deleted || !e.deleted)
        .map(|(v, _)| v)
        .collect();
    ok(json!(versions))
}

async fn get_version(
    State(log): App,
    Path((name, version)): Path<(String, String)>,
    Query(q): Params,
) -> ApiResult {
    let sel = parse_version(&version)?;
    let store = log.read().await;
    let (version, id) = resolve(&store, &name, sel, flag(&q, "deleted"))?;
    ok(json!({ "subject": name, "version": version, "id": id, "schema": schema_text(&store, id)? }))
}

async fn get_version_schema(
    State(log): App,
    Path((name, version)): Path<(String, String)>,
    Query(q): Params,
) -> ApiResult {
    let sel = parse_version(&version)?;
    let store = log.read().await;
    let (_, id) = resolve(&store, &name, sel, flag(&q, "deleted"))?;
    Ok(raw_json(schema_text(&store, id)?))
}

async fn referenced_by(
    State(log): App,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult {
    let sel = parse_version(&version)?;
    resolve(&*log.read().await, &name, sel, false)?;
    ok(json!([]))
}

async fn register(State(log): App, Path(name): Path<String>, body: Bytes) -> ApiResult {
    let parsed = SchemaRequest::parse(&body)?;
    let id = log
        .write(|store| {
            let entry = store.subject(&name);
            let live: Vec<(u32, u32)> = entry
                .map(|s| s.live().map(|(v, e)| (v, e.id)).collect())
                .unwrap_or_default();
            let known_id = store.id_of(&parsed);
            if let Some(id) = known_id.filter(|id| live.iter().any(|(_, e)| e == id)) {
                return Ok(Plan::done(id));
            }
            let history: Vec<(u32, &apache_avro::Schema)> = live
                .iter()
                .filter_map(|(v, id)| store.schema(*id).map(|s| (*v, s.schema.as_ref())))
                .collect();
            let reasons = store.effective_level(&name).check(&parsed.schema, &history);
            if !reasons.is_empty() {
                return Err(ApiError::Incompatible {
                    subject: name.clone(),
                    reasons,
                });
            }
            let id = known_id.unwrap_or_else(|| store.next_id());
            let version = entry.map_or(1, SubjectEntry::next_version);
            Ok(Plan {
                records: vec![Record::Schema {
                    subject: name.clone(),
                    version,
                    id,
                    schema: parsed.text.clone(),
                    deleted: false,
                }],
                answer: id,
            })
        })
        .await?;
    ok(json!({ "id": id }))
}

async fn lookup(
    State(log): App,
    Path(name): Path<String>,
    Query(q): Params,
    body: Bytes,
) -> ApiResult {
    let parsed = SchemaRequest::parse(&body)?;
    let deleted = flag(&q, "deleted");
    let store = log.read().await;
    let s = subject(&store, &name, deleted)?;
    let id = store
        .id_of(&parsed)
        .ok_or_else(|| ApiError::SchemaNotFound("".into()))?;
    let (version, _) = s
        .versions()
        .filter(|(_, e)| e.id == id && (deleted || !e.deleted))
        .last()
        .ok_or_else(|| ApiError::SchemaNotFound("".into()))?;
    ok(json!({ "subject": name, "id": id, "version": version, "schema": schema_text(&store, id)? }))
}

async fn delete_subject(State(log): App, Path(name): Path<String>, Query(q): Params) -> ApiResult {
    let permanent = flag(&q, "permanent");
    let versions = log
        .write(|store| {
            let s = subject(store, &name, true)?;
            let all: Vec<u32> = s.versions().map(|(v, _)| v).collect();
            if permanent {
                if s.is_live() {
                    return Err(ApiError::SubjectNotSoftDeleted(name.clone()));
                }
                let mut records: Vec<Record> = all
                    .iter()
                    .map(|&version| Record::SchemaTombstone {
                        subject: name.clone(),
                        version,
                    })
                    .collect();
                records.push(Record::DeleteSubjectTombstone {
                    subject: name.clone(),
                });
                records.push(Record::Config {
                    subject: Some(name.clone()),
                    level: None,
                });
                return Ok(Plan {
                    records,
                    answer: all,
                });
            }
            let live: Vec<u32> = s.live().map(|(v, _)| v).collect();
            let Some(&latest) = all.last().filter(|_| !live.is_empty()) else {
                return Err(ApiError::SubjectSoftDeleted(name.clone()));
            };
            Ok(Plan {
                records: vec![Record::DeleteSubject {
                    subject: name.clone(),
                    version: latest,
                }],
                answer: live,
            })
        })
        .await?;
    ok(json!(versions))
}

async fn delete_version(
    State(log): App,
    Path((name, version)): Path<(String, String)>,
    Query(q): Params,
) -> ApiResult {
    let sel = parse_version(&version)?;
    let permanent = flag(&q, "permanent");
    let deleted_version = log
        .write(|store| {
            let s = subject(store, &name, true)?;
            let (version, entry) = match sel {
                VersionSel::Latest => s.live().last().or_else(|| s.versions().last()),
                VersionSel::Number(n) => s.get(n).map(|e| (n, e)),
            }
            .ok_or_else(|| ApiError::VersionNotFound(version.clone()))?;
            let record = match (permanent, entry.deleted) {
                (false, true) => return Err(ApiError::VersionSoftDeleted(name.clone(), version)),
                (true, false) => {
                    return Err(ApiError::VersionNotSoftDeleted(name.clone(), version));
                }
                (true, true) => Record::SchemaTombstone {
                    subject: name.clone(),
                    version,
                },
                (false, false) => Record::Schema {
                    subject: name.clone(),
                    version,
                    id: entry.id,
                    schema: schema_text(store, entry.id)?.to_string(),
                    deleted: true,
                },
            };
            Ok(Plan {
                records: vec![record],
                answer: version,
            })
        })
        .await?;
    ok(json!(deleted_version))
}

#[derive(Deserialize)]
struct ConfigRequest {
    compatibility: Option<String>,
    #[serde(rename = "compatibilityLevel")]
    compatibility_level: Option<String>,
}

fn parse_level(body: &Bytes) -> Result<Level, ApiError> {
    let req: ConfigRequest = parse_body(body)?;
    let raw = req
        .compatibility
        .or(req.compatibility_level)
        .ok_or_else(|| ApiError::Unprocessable("missing field `compatibility`".into()))?;
    raw.parse()
        .map_err(|()| ApiError::InvalidCompatibilityLevel(raw))
}

async fn get_global_config(State(log): App) -> ApiResult {
    ok(json!({ "compatibilityLevel": log.read().await.global_level() }))
}

async fn put_global_config(State(log): App, body: Bytes) -> ApiResult {
    let level = parse_level(&body)?;
    log.write(|_| {
        Ok(Plan {
            records: vec![Record::Config {
                subject: None,
                level: Some(level),
            }],
            answer: (),
        })
    })
    .await?;
    ok(json!({ "compatibility": level }))
}

async fn delete_global_config(State(log): App) -> ApiResult {
    let previous = log
        .write(|store| {
            Ok(Plan {
                records: vec![Record::Config {
                    subject: None,
                    level: None,
                }],
                answer: store.global_level(),
            })
        })
        .await?;
    ok(json!({ "compatibilityLevel": previous }))
}

async fn get_subject_config(
    State(log): App,
    Path(name): Path<String>,
    Query(q): Params,
) -> ApiResult {
    let store = log.read().await;
    let level = match store.subject_level(&name) {
        Some(level) => level,
        None if flag(&q, "defaultToGlobal") => store.global_level(),
        None => return Err(ApiError::SubjectLevelNotConfigured(name)),
    };
    ok(json!({ "compatibilityLevel": level }))
}

async fn put_subject_config(State(log): App, Path(name): Path<String>, body: Bytes) -> ApiResult {
    let level = parse_level(&body)?;
    log.write(|_| {
        Ok(Plan {
            records: vec![Record::Config {
                subject: Some(name.clone()),
                level: Some(level),
            }],
            answer: (),
        })
    })
    .await?;
    ok(json!({ "compatibility": level }))
}

async fn delete_subject_config(State(log): App, Path(name): Path<String>) -> ApiResult {
    let previous = log
        .write(|store| {
            let previous = store
                .subject_level(&name)
                .ok_or_else(|| ApiError::SubjectNotFound(name.clone()))?;
            Ok(Plan {
                records: vec![Record::Config {
                    subject: Some(name.clone()),
                    level: None,
                }],
                answer: previous,
            })
        })
        .await?;
    ok(json!({ "compatibilityLevel": previous }))
}

fn compatibility_answer(reasons: Vec<String>, verbose: bool) -> ApiResult {
    let mut body = json!({ "is_compatible": reasons.is_empty() });
    if verbose {
        body["messages"] = json!(reasons);
    }
    ok(body)
}

/// `POST /compatibility/subjects/{s}/versions/{v}`: the new schema against one version.
async fn check_version(
    State(log): App,
    Path((name, version)): Path<(String, String)>,
    Query(q): Params,
    body: Bytes,
) -> ApiResult {
    let sel = parse_version(&version)?;
    let parsed = SchemaRequest::parse(&body)?;
    let store = log.read().await;
    let (version, id) = resolve(&store, &name, sel, false)?;
    let old = store
        .schema(id)
        .ok_or_else(|| ApiError::SchemaNotFound(id.to_string()))?;
    let reasons = store
        .effective_level(&name)
        .check(&parsed.schema, &[(version, old.schema.as_ref())]);
    compatibility_answer(reasons, flag(&q, "verbose"))
}

/// `POST /compatibility/subjects/{s}/versions`: the new schema against the versions
/// the subject's level names (latest, or all for transitive levels).
async fn check_all(
    State(log): App,
    Path(name): Path<String>,
    Query(q): Params,
    body: Bytes,
) -> ApiResult {
    let parsed = SchemaRequest::parse(&body)?;
    let store = log.read().await;
    let history: Vec<(u32, &apache_avro::Schema)> = store
        .subject(&name)
        .map(|s| {
            s.live()
                .filter_map(|(v, e)| store.schema(e.id).map(|p| (v, p.schema.as_ref())))
                .collect()
        })
        .unwrap_or_default();
    let reasons = store.effective_level(&name).check(&parsed.schema, &history);
    compatibility_answer(reasons, flag(&q, "verbose"))
}
