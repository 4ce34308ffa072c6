//! The schema registry against a real broker: the Confluent REST contract, error
//! codes, the compatibility matrix, deletes, restart and two instances.

use harness::{Http, Stack, run};
use serde_json::{Value, json};
use verdict_schema_registry::RunningRegistry;

fn record(fields: &str) -> String {
    format!(r#"{{"type":"record","name":"R","namespace":"t","fields":[{fields}]}}"#)
}

fn body(schema: &str) -> Value {
    json!({ "schema": schema })
}

const A: &str = r#"{"name":"a","type":"string"}"#;

#[test]
fn register_lookup_and_read_back() {
    run(90, async {
        let stack = Stack::start().await;
        let http = Http::new(stack.registry_url());
        let v1 = record(A);
        let r = http
            .post("/subjects/orders-value/versions", body(&v1))
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.content_type, "application/vnd.schemaregistry.v1+json");
        let id = r.body["id"].as_u64().expect("id");

        // Same schema (other whitespace/key order) → same id, no new version.
        let spaced = r#"{ "namespace":"t", "type":"record", "name":"R", "fields":[ {"type":"string","name":"a"} ] }"#;
        let again = http
            .post("/subjects/orders-value/versions", body(spaced))
            .await;
        assert_eq!(again.body["id"].as_u64(), Some(id));
        // Same schema under another subject → same global id.
        let other = http.post("/subjects/other-value/versions", body(&v1)).await;
        assert_eq!(other.body["id"].as_u64(), Some(id));

        let v2 = record(&format!(
            r#"{A},{{"name":"b","type":["null","int"],"default":null}}"#
        ));
        let id2 = http
            .post("/subjects/orders-value/versions", body(&v2))
            .await
            .body["id"]
            .as_u64()
            .expect("id2");
        assert_ne!(id, id2);

        assert_eq!(
            http.get("/subjects").await.body,
            json!(["orders-value", "other-value"])
        );
        assert_eq!(
            http.get("/subjects/orders-value/versions").await.body,
            json!([1, 2])
        );
        let latest = http.get("/subjects/orders-value/versions/latest").await;
        assert_eq!(latest.body["version"], 2);
        assert_eq!(latest.body["id"].as_u64(), Some(id2));
        assert_eq!(latest.body["subject"], "orders-value");
        assert_eq!(latest.body["schema"], v2.as_str());
        assert_eq!(
            http.get("/subjects/orders-value/versions/-1").await.body["version"],
            2
        );
        assert_eq!(
            http.get("/subjects/orders-value/versions/1").await.body["id"].as_u64(),
            Some(id)
        );
        let raw = http.get("/subjects/orders-value/versions/1/schema").await;
        assert_eq!(raw.body["name"], "R");

        assert_eq!(
            http.get(&format!("/schemas/ids/{id}")).await.body,
            json!({ "schema": v1 })
        );
        assert_eq!(
            http.get(&format!("/schemas/ids/{id}/schema")).await.body["fields"][0]["name"],
            "a"
        );
        assert_eq!(
            http.get(&format!("/schemas/ids/{id}/versions")).await.body,
            json!([{"subject":"orders-value","version":1},{"subject":"other-value","version":1}])
        );

        let found = http.post("/subjects/orders-value", body(spaced)).await;
        assert_eq!(found.status, 200);
        assert_eq!(found.body["version"], 1);
        assert_eq!(found.body["id"].as_u64(), Some(id));
        assert_eq!(http.get("/schemas/types").await.body, json!(["AVRO"]));
    });
}

#[test]
fn bad_requests_get_confluent_error_codes() {
    run(90, async {
        let stack = Stack::start().await;
        let http = Http::new(stack.registry_url());
        let v1 = record(A);
        http.post("/subjects/s/versions", body(&v1)).await;

        let cases: Vec<(harness::Reply, u16, i64)> = vec![
            (http.get("/subjects/nope/versions").await, 404, 40401),
            (http.get("/subjects/s/versions/7").await, 404, 40402),
            (http.get("/schemas/ids/999").await, 404, 40403),
            (
                http.post(
                    "/subjects/s",
                    body(&record(r#"{"name":"zzz","type":"int"}"#)),
                )
                .await,
                404,
                40403,
            ),
            (http.post("/subjects/nope", body(&v1)).await, 404, 40401),
            (http.get("/subjects/s/versions/0").await, 422, 42202),
            (http.get("/subjects/s/versions/abc").await, 422, 42202),
            (
                http.post(
                    "/subjects/s/versions",
                    json!({"schema": "{\"type\":\"record\"}"}),
                )
                .await,
                422,
                42201,
            ),
            (
                http.post("/subjects/s/versions", json!({"schema": "not json"}))
                    .await,
                422,
                42201,
            ),
            (
                http.post(
                    "/subjects/s/versions",
                    json!({"schema": "{}", "schemaType": "PROTOBUF"}),
                )
                .await,
                422,
                42201,
            ),
            (
                http.post(
                    "/subjects/s/versions",
                    json!({"schema": "{}", "schemaType": "JSON"}),
                )
                .await,
                422,
                42201,
            ),
            (
                http.send("POST", "/subjects/s/versions", Some("{\"schema\": ".into()))
                    .await,
                400,
                400,
            ),
            (
                http.post("/subjects/s/versions", json!({"schemas": "x"}))
                    .await,
                422,
                422,
            ),
            (
                http.put("/config", json!({"compatibility": "SIDEWAYS"}))
                    .await,
                422,
                42203,
            ),
            (http.get("/config/s").await, 404, 40408),
            (http.get("/no/such/route").await, 404, 404),
        ];
        for (i, (reply, status, code)) in cases.iter().enumerate() {
            assert_eq!(
                (reply.status, reply.error_code()),
                (*status, Some(*code)),
                "case {i}: {:?}",
                reply.body
            );
            let message = reply.body["message"].as_str().unwrap_or("");
            assert!(!message.is_empty(), "case {i} has a message");
            assert_eq!(
                reply.content_type, "application/vnd.schemaregistry.v1+json",
                "case {i}"
            );
        }
        let protobuf = &cases[9].0;
        assert!(
            protobuf.body["message"]
                .as_str()
                .unwrap_or("")
                .contains("PROTOBUF"),
            "{:?}",
            protobuf.body
        );
    });
}

/// One row of the matrix: the versions already registered (under NONE), the
/// level, a change that must be accepted and one that must be refused.
struct Row {
    level: &'static str,
    history: Vec<String>,
    compatible: String,
    incompatible: Option<String>,
}

#[test]
fn compatibility_matrix_every_level() {
    let opt_b = r#"{"name":"b","type":["null","int"],"default":null}"#;
    let req_b = r#"{"name":"b","type":"int"}"#;
    let b_default = r#"{"name":"b","type":"int","default":0}"#;
    let c = r#"{"name":"c","type":"int"}"#;
    let c_default = r#"{"name":"c","type":"int","default":0}"#;
    let rows = vec![
        Row {
            level: "NONE",
            history: vec![record(A)],
            compatible: record(r#"{"name":"a","type":"int"}"#),
            incompatible: None,
        },
        Row {
            level: "BACKWARD",
            history: vec![record(A)],
            compatible: record(&format!("{A},{opt_b}")),
            incompatible: Some(record(&format!("{A},{req_b}"))),
        },
        Row {
            level: "FORWARD",
            history: vec![record(&format!("{A},{c}"))],
            compatible: record(&format!("{A},{c},{req_b}")),
            incompatible: Some(record(A)),
        },
        Row {
            level: "FULL",
            history: vec![record(A)],
            compatible: record(&format!("{A},{opt_b}")),
            incompatible: Some(record(&format!("{A},{req_b}"))),
        },
        // Transitive rows: the refused change is fine against the latest version
        // and only breaks against the first.
        Row {
            level: "BACKWARD_TRANSITIVE",
            history: vec![record(A), record(&format!("{A},{b_default}"))],
            compatible: record(&format!("{A},{b_default},{opt_b}").replace(
                r#""name":"b","type":["null","int"]"#,
                r#""name":"d","type":["null","int"]"#,
            )),
            incompatible: Some(record(&format!("{A},{req_b}"))),
        },
        Row {
            level: "FORWARD_TRANSITIVE",
            history: vec![
                record(&format!("{A},{c}")),
                record(&format!("{A},{c_default}")),
            ],
            compatible: record(&format!("{A},{c},{req_b}")),
            incompatible: Some(record(A)),
        },
        Row {
            level: "FULL_TRANSITIVE",
            history: vec![record(A), record(&format!("{A},{b_default}"))],
            compatible: record(&format!("{A},{b_default},{opt_b}").replace(
                r#""name":"b","type":["null","int"]"#,
                r#""name":"d","type":["null","int"]"#,
            )),
            incompatible: Some(record(&format!("{A},{req_b}"))),
        },
    ];
    run(120, async move {
        let stack = Stack::start().await;
        let http = Http::new(stack.registry_url());
        for row in &rows {
            let subject = format!("matrix-{}", row.level.to_lowercase());
            assert_eq!(
                http.put(
                    &format!("/config/{subject}"),
                    json!({"compatibility": "NONE"})
                )
                .await
                .status,
                200
            );
            for v in &row.history {
                let r = http
                    .post(&format!("/subjects/{subject}/versions"), body(v))
                    .await;
                assert_eq!(r.status, 200, "{}: seeding {:?}", row.level, r.body);
            }
            let set = http
                .put(
                    &format!("/config/{subject}"),
                    json!({"compatibility": row.level}),
                )
                .await;
            assert_eq!(set.body, json!({"compatibility": row.level}));
            assert_eq!(
                http.get(&format!("/config/{subject}")).await.body["compatibilityLevel"],
                row.level
            );

            if let Some(bad) = &row.incompatible {
                let check = http
                    .post(
                        &format!("/compatibility/subjects/{subject}/versions?verbose=true"),
                        body(bad),
                    )
                    .await;
                assert_eq!(
                    check.body["is_compatible"], false,
                    "{}: {:?}",
                    row.level, check.body
                );
                let messages = check.body["messages"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                assert!(!messages.is_empty(), "{}: verbose gives reasons", row.level);
                let refused = http
                    .post(&format!("/subjects/{subject}/versions"), body(bad))
                    .await;
                assert_eq!(
                    (refused.status, refused.error_code()),
                    (409, Some(409)),
                    "{}: {:?}",
                    row.level,
                    refused.body
                );
                if row.level.ends_with("_TRANSITIVE") {
                    // Against the latest version alone the change passes.
                    let latest = http
                        .post(
                            &format!("/compatibility/subjects/{subject}/versions/latest"),
                            body(bad),
                        )
                        .await;
                    assert_eq!(
                        latest.body["is_compatible"], true,
                        "{}: {:?}",
                        row.level, latest.body
                    );
                }
            }
            let check = http
                .post(
                    &format!("/compatibility/subjects/{subject}/versions/latest?verbose=true"),
                    body(&row.compatible),
                )
                .await;
            assert_eq!(
                check.body,
                json!({"is_compatible": true, "messages": []}),
                "{}",
                row.level
            );
            let accepted = http
                .post(
                    &format!("/subjects/{subject}/versions"),
                    body(&row.compatible),
                )
                .await;
            assert_eq!(accepted.status, 200, "{}: {:?}", row.level, accepted.body);
            let versions = http
                .get(&format!("/subjects/{subject}/versions"))
                .await
                .body;
            assert_eq!(
                versions.as_array().map(Vec::len),
                Some(row.history.len() + 1),
                "{}",
                row.level
            );
        }
        // The global default is BACKWARD and can be changed and reset.
        assert_eq!(
            http.get("/config").await.body,
            json!({"compatibilityLevel": "BACKWARD"})
        );
        assert_eq!(
            http.put("/config", json!({"compatibility": "FULL"}))
                .await
                .body,
            json!({"compatibility": "FULL"})
        );
        assert_eq!(
            http.get("/config").await.body,
            json!({"compatibilityLevel": "FULL"})
        );
        assert_eq!(
            http.delete("/config").await.body,
            json!({"compatibilityLevel": "FULL"})
        );
        assert_eq!(
            http.get("/config").await.body,
            json!({"compatibilityLevel": "BACKWARD"})
        );
        assert_eq!(
            http.get("/config/unset?defaultToGlobal=true").await.body,
            json!({"compatibilityLevel": "BACKWARD"})
        );
    });
}

#[test]
fn soft_and_permanent_deletes() {
    run(90, async {
        let stack = Stack::start().await;
        let http = Http::new(stack.registry_url());
        let v1 = record(A);
        let v2 = record(&format!(
            r#"{A},{{"name":"b","type":["null","int"],"default":null}}"#
        ));
        let v3 = record(&format!(
            r#"{A},{{"name":"c","type":["null","int"],"default":null}}"#
        ));
        for v in [&v1, &v2, &v3] {
            assert_eq!(http.post("/subjects/d/versions", body(v)).await.status, 200);
        }
        // Permanent delete needs a soft delete first.
        assert_eq!(
            http.delete("/subjects/d/versions/2?permanent=true")
                .await
                .error_code(),
            Some(40407)
        );
        assert_eq!(http.delete("/subjects/d/versions/2").await.body, json!(2));
        assert_eq!(
            http.delete("/subjects/d/versions/2").await.error_code(),
            Some(40406)
        );
        assert_eq!(http.get("/subjects/d/versions").await.body, json!([1, 3]));
        assert_eq!(
            http.get("/subjects/d/versions?deleted=true").await.body,
            json!([1, 2, 3])
        );
        assert_eq!(
            http.get("/subjects/d/versions/2").await.error_code(),
            Some(40402)
        );
        assert_eq!(
            http.get("/subjects/d/versions/2?deleted=true").await.status,
            200
        );
        assert_eq!(
            http.delete("/subjects/d/versions/2?permanent=true")
                .await
                .body,
            json!(2)
        );
        assert_eq!(
            http.get("/subjects/d/versions?deleted=true").await.body,
            json!([1, 3])
        );

        assert_eq!(
            http.delete("/subjects/d?permanent=true").await.error_code(),
            Some(40405)
        );
        assert_eq!(http.delete("/subjects/d").await.body, json!([1, 3]));
        assert_eq!(http.delete("/subjects/d").await.error_code(), Some(40404));
        assert_eq!(http.get("/subjects").await.body, json!([]));
        assert_eq!(http.get("/subjects?deleted=true").await.body, json!(["d"]));
        assert_eq!(
            http.get("/subjects/d/versions").await.error_code(),
            Some(40401)
        );
        // Registering again after a soft delete continues the version numbers.
        let again = http.post("/subjects/d/versions", body(&v1)).await;
        assert_eq!(again.status, 200);
        assert_eq!(http.get("/subjects/d/versions").await.body, json!([4]));
        assert_eq!(http.delete("/subjects/d").await.body, json!([4]));
        assert_eq!(
            http.delete("/subjects/d?permanent=true").await.body,
            json!([1, 3, 4])
        );
        assert_eq!(http.get("/subjects?deleted=true").await.body, json!([]));
        assert_eq!(http.delete("/subjects/d").await.error_code(), Some(40401));
    });
}

#[test]
fn survives_restart_with_ids_unchanged() {
    run(120, async {
        let stack = Stack::start().await;
        let http = Http::new(stack.registry_url());
        let mut ids = Vec::new();
        for (i, field) in ["b", "c", "d"].iter().enumerate() {
            let schema = record(&format!(
                r#"{A},{{"name":"{field}","type":["null","int"],"default":null}}"#
            ));
            let r = http
                .post(&format!("/subjects/s{i}/versions"), body(&schema))
                .await;
            ids.push((format!("s{i}"), r.body["id"].as_u64().expect("id")));
        }
        http.put("/config/s1", json!({"compatibility": "FULL"}))
            .await;
        http.delete("/subjects/s2").await;
        let before: Vec<Value> = futures_all(
            &http,
            &[
                "/subjects?deleted=true",
                "/subjects/s0/versions/1",
                "/subjects/s1/versions/1",
                "/config/s1",
            ],
        )
        .await;

        let mut stack = stack;
        let settings = stack.registry_settings();
        stack.stop_registry().await;
        let restarted = RunningRegistry::start(&settings).await.expect("restart");
        let http = Http::new(restarted.url());
        let after = futures_all(
            &http,
            &[
                "/subjects?deleted=true",
                "/subjects/s0/versions/1",
                "/subjects/s1/versions/1",
                "/config/s1",
            ],
        )
        .await;
        assert_eq!(before, after);
        assert_eq!(
            http.get("/subjects").await.body,
            json!(["s0", "s1"]),
            "soft delete survives"
        );
        for (subject, id) in &ids {
            assert_eq!(
                http.get(&format!("/schemas/ids/{id}")).await.status,
                200,
                "{subject}"
            );
        }
        // New schemas get new ids, never reused ones.
        let fresh = http
            .post(
                "/subjects/s9/versions",
                body(&record(r#"{"name":"z","type":"long"}"#)),
            )
            .await;
        let max_before = ids.iter().map(|(_, id)| *id).max().unwrap_or(0);
        assert!(fresh.body["id"].as_u64().expect("id") > max_before);
        restarted.stop().await;
    });
}

async fn futures_all(http: &Http, paths: &[&str]) -> Vec<Value> {
    let mut out = Vec::new();
    for p in paths {
        out.push(http.get(p).await.body);
    }
    out
}

#[test]
fn two_instances_agree() {
    run(120, async {
        let stack = Stack::start().await;
        let second = RunningRegistry::start(&stack.registry_settings())
            .await
            .expect("second");
        let a = Http::new(stack.registry_url());
        let b = Http::new(second.url());

        let v1 = record(A);
        let id = a.post("/subjects/shared/versions", body(&v1)).await.body["id"].clone();
        // B reads A's write (writes go through the log; B catches up on its next write,
        // reads converge as B tails the log).
        let mut seen = Value::Null;
        for _ in 0..50 {
            seen = b.get("/subjects/shared/versions/1").await.body["id"].clone();
            if seen == id {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(seen, id);
        assert_eq!(
            b.post("/subjects/shared/versions", body(&v1)).await.body["id"],
            id,
            "same schema, same id on B"
        );

        // Concurrent writes of different schemas on both instances: distinct ids, same view.
        let mut tasks = Vec::new();
        for i in 0..6 {
            let url = if i % 2 == 0 {
                stack.registry_url()
            } else {
                second.url()
            };
            let schema = record(&format!(r#"{{"name":"f{i}","type":"long"}}"#));
            tasks.push(tokio::spawn(async move {
                let http = Http::new(url);
                let r = http
                    .post(&format!("/subjects/race{i}/versions"), body(&schema))
                    .await;
                assert_eq!(r.status, 200, "{:?}", r.body);
                r.body["id"].as_u64().expect("id")
            }));
        }
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.expect("task"));
        }
        let mut unique = ids.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ids.len(), "ids {ids:?} are distinct");
        // A write on each instance brings both up to the end of the log.
        a.put("/config/sync", json!({"compatibility": "NONE"}))
            .await;
        b.put("/config/sync", json!({"compatibility": "NONE"}))
            .await;
        for (i, id) in ids.iter().enumerate() {
            let path = format!("/subjects/race{i}/versions/1");
            assert_eq!(a.get(&path).await.body, b.get(&path).await.body, "{path}");
            assert_eq!(a.get(&path).await.body["id"].as_u64(), Some(*id));
        }
        second.stop().await;
    });
}

/// Issue 19: with `[auth]` users the registry signs every request in (HTTP basic auth) and
/// holds each user to its role; Confluent's status and error codes, and a challenge on 401.
#[test]
fn basic_auth_signs_users_in_and_holds_them_to_their_roles() {
    run(90, async {
        let stack = Stack::start().await;
        let registry = stack.authenticated_registry().await;
        let client = reqwest::Client::new();
        let password = |name: &str| {
            harness::REGISTRY_USERS
                .iter()
                .find(|(n, ..)| *n == name)
                .map_or("", |(_, _, p)| *p)
        };
        let schema = body(&record(A));
        let level = json!({"compatibility": "FULL"});
        let none = Value::Null;
        // In order: what a user may do, then what the writer registered read back.
        type Case<'a> = (&'a str, &'a str, Option<(&'a str, &'a str)>, &'a Value, u16);
        let cases: [Case; 13] = [
            ("GET", "/", None, &none, 200),
            ("GET", "/subjects", None, &none, 401),
            ("GET", "/subjects", Some(("nobody", "x")), &none, 401),
            (
                "GET",
                "/subjects",
                Some(("writer", password("reader"))),
                &none,
                401,
            ),
            (
                "POST",
                "/subjects/authz-value/versions",
                Some(("reader", password("reader"))),
                &schema,
                403,
            ),
            (
                "POST",
                "/subjects/authz-value/versions",
                Some(("writer", password("writer"))),
                &schema,
                200,
            ),
            (
                "GET",
                "/subjects/authz-value/versions",
                Some(("reader", password("reader"))),
                &none,
                200,
            ),
            (
                "GET",
                "/subjects/authz-value/versions",
                Some(("admin", password("admin"))),
                &none,
                200,
            ),
            (
                "POST",
                "/subjects/authz-value",
                Some(("reader", password("reader"))),
                &schema,
                200,
            ),
            (
                "POST",
                "/compatibility/subjects/authz-value/versions/latest",
                Some(("reader", password("reader"))),
                &schema,
                200,
            ),
            (
                "PUT",
                "/config/authz-value",
                Some(("writer", password("writer"))),
                &level,
                403,
            ),
            (
                "DELETE",
                "/subjects/authz-value",
                Some(("reader", password("reader"))),
                &none,
                403,
            ),
            // The admin's password holds a colon.
            (
                "PUT",
                "/config/authz-value",
                Some(("admin", password("admin"))),
                &level,
                200,
            ),
        ];
        for (method, path, user, payload, want) in cases {
            let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
            let mut req = client
                .request(method.clone(), format!("{}{path}", registry.url()))
                .header("Content-Type", "application/vnd.schemaregistry.v1+json");
            if !payload.is_null() {
                req = req.body(payload.to_string());
            }
            if let Some((u, p)) = user {
                req = req.basic_auth(u, Some(p));
            }
            let r = req.send().await.expect("request");
            let status = r.status().as_u16();
            let challenge = r.headers().get("www-authenticate").cloned();
            let got: Value = r.json().await.unwrap_or(Value::Null);
            let who = user.map(|(u, _)| u);
            assert_eq!(status, want, "{method} {path} as {who:?}: {got}");
            match want {
                401 => {
                    assert_eq!(got["error_code"], 401, "{got}");
                    assert_eq!(
                        challenge.as_ref().and_then(|c| c.to_str().ok()),
                        Some("Basic realm=\"verdict-schema-registry\"")
                    );
                }
                403 => {
                    assert_eq!(got["error_code"], 40301, "{got}");
                    let message = got["message"].as_str().unwrap_or("");
                    assert!(message.contains(who.unwrap_or("?")), "{got}");
                }
                _ => {}
            }
        }
        registry.stop().await;
    });
}

/// `[http.tls]`: the registry speaks HTTPS. A client that trusts its CA (`registry.ca_file`,
/// `schema.registry.ssl.ca.location`) signs in, registers, and round-trips a record through
/// the converter; one that does not trust it is told so; a plain-HTTP client is not served.
#[test]
fn tls_serves_clients_that_trust_its_ca_and_no_one_else() {
    use verdict_runtime::registry::{Registry, RegistryClient, RegistryError};
    use verdict_runtime::serde::{AvroSerde, ValueSchema};
    run(90, async {
        let stack = Stack::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let (registry, ca) = stack.tls_registry(&dir.path().join("tls")).await;
        let url = registry.url();
        assert!(url.starts_with("https://127.0.0.1:"), "{url}");
        let admin = |r: Registry| r.with_user_info("admin:admin:secret").expect("user info");

        let trusted = admin(Registry::new(&url).with_ca_file(&ca).expect("CA file"));
        let client = RegistryClient::new(&trusted).expect("client");
        let topic = harness::unique("tls");
        let id = client
            .register(&format!("{topic}-value"), &record(A))
            .await
            .expect("register over TLS");
        assert!(
            client
                .subjects()
                .await
                .expect("subjects")
                .contains(&format!("{topic}-value"))
        );
        let serde = AvroSerde::new(&trusted);
        let bytes = serde
            .encode(
                &topic,
                &ValueSchema::TopicLatest,
                apache_avro::types::Value::Record(vec![(
                    "a".into(),
                    apache_avro::types::Value::String("over TLS".into()),
                )]),
            )
            .await
            .expect("encode over TLS");
        assert_eq!(verdict_runtime::serde::schema_id(&bytes), Some(id));
        assert_eq!(
            AvroSerde::new(&trusted)
                .decode(Some(&bytes))
                .await
                .expect("decode over TLS"),
            json!({"a": "over TLS"})
        );

        // Without the CA: the certificate is not trusted, and the error says so.
        let untrusted = RegistryClient::new(admin(Registry::new(&url)))
            .expect("client")
            .subjects()
            .await
            .expect_err("a certificate from an unknown CA");
        assert!(untrusted.is_untrusted_certificate(), "{untrusted}");
        assert!(untrusted.to_string().contains("certificate"), "{untrusted}");

        // Plain HTTP to the TLS port: no answer, and not mistaken for a certificate problem.
        let plain = RegistryClient::new(admin(Registry::new(url.replacen("https", "http", 1))))
            .expect("client")
            .subjects()
            .await
            .expect_err("plain HTTP to the TLS port");
        assert!(
            matches!(plain, RegistryError::Unreachable { .. }) && !plain.is_untrusted_certificate(),
            "{plain}"
        );

        // A CA file that is not one is refused when the client is made, naming the file.
        let not_ca = dir.path().join("not-a-ca.pem");
        std::fs::write(&not_ca, "hello").expect("write");
        let refused = Registry::new(&url)
            .with_ca_file(&not_ca)
            .expect_err("not a CA file");
        assert!(refused.to_string().contains("not-a-ca.pem"), "{refused}");
        registry.stop().await;
    });
}

/// Issue 20: `/metrics` and `/readyz` beside the API, open even when the API asks for a
/// user: requests by method, route template and status class (no subject in any label) with
/// their durations, and what the store holds; ready while the store can catch up with its
/// topic, 503 once the broker is gone.
#[test]
fn metrics_and_readiness_are_served_beside_the_api() {
    use verdict_runtime::registry::{Registry, RegistryClient};
    run(120, async {
        let mut stack = Stack::start_own().await;
        let registry = stack.authenticated_registry().await;
        let url = registry.url();
        let admin = Registry::new(&url)
            .with_user_info("admin:admin:secret")
            .expect("user info");
        let client = RegistryClient::new(&admin).expect("client");
        client
            .register("metered-value", &record(A))
            .await
            .expect("register");
        client.subjects().await.expect("subjects");
        let anonymous = reqwest::Client::new();
        let refused = anonymous
            .get(format!("{url}/subjects"))
            .send()
            .await
            .expect("request");
        assert_eq!(refused.status(), 401);

        let ready = anonymous
            .get(format!("{url}/readyz"))
            .send()
            .await
            .expect("readyz");
        assert_eq!(ready.status(), 200);
        assert_eq!(ready.text().await.expect("body"), "ready\n");
        let scraped = anonymous
            .get(format!("{url}/metrics"))
            .send()
            .await
            .expect("metrics");
        assert_eq!(scraped.status(), 200);
        assert!(
            scraped
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|t| t.starts_with("application/openmetrics-text"))
        );
        let text = scraped.text().await.expect("body");
        for line in [
            r#"verdict_registry_requests_total{method="POST",route="/subjects/{subject}/versions",status="2xx"} 1"#,
            r#"verdict_registry_requests_total{method="GET",route="/subjects",status="2xx"} 1"#,
            r#"verdict_registry_requests_total{method="GET",route="/subjects",status="4xx"} 1"#,
            r#"verdict_registry_request_duration_seconds_count{method="POST",route="/subjects/{subject}/versions"} 1"#,
            "verdict_registry_schemas 1",
            "verdict_registry_subjects 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert!(!text.contains("metered"), "no subject in a label:\n{text}");

        // The broker gone: the store cannot catch up, and the registry says it is not ready.
        stack.broker.kill9();
        let not_ready = anonymous
            .get(format!("{url}/readyz"))
            .timeout(std::time::Duration::from_secs(15))
            .send()
            .await
            .expect("readyz");
        assert_eq!(not_ready.status(), 503);
        let said = not_ready.text().await.expect("body");
        assert!(said.starts_with("not ready: the store"), "{said}");
        assert!(!said.contains("127.0.0.1"), "no address: {said}");
        drop(registry);
    });
}
