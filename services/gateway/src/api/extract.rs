//! Extractors that refuse in the one error shape: the [`Caller`] behind the key, and
//! [`Path`] and [`Query`] in place of axum's, whose own rejections are plain text.

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use serde::de::DeserializeOwned;

use super::App;
use crate::auth::{Caller, authenticate, presented_key};
use crate::config::ApiKey;
use crate::error::ApiError;

/// The caller of the request: the one the `limit` middleware admitted on limited routes
/// (so the key is looked up once), else authenticated from its key here; 401 without one.
/// `Result<Caller, ApiError>` takes a key as optional, as `/v1/health` does.
impl<S> FromRequestParts<S> for Caller
where
    Arc<App>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        let app = Arc::<App>::from_ref(state);
        caller_of(&app.settings.keys, &parts.headers)
    }
}

/// The caller whose key is in `Authorization: Bearer <key>` or `X-API-Key`.
fn caller_of(keys: &[ApiKey], headers: &HeaderMap) -> Result<Caller, ApiError> {
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    authenticate(
        keys,
        presented_key(h(header::AUTHORIZATION.as_str()), h("x-api-key")),
    )
}

/// `axum::extract::Path`, refused as `validation_failed`.
#[derive(Debug)]
pub struct Path<T>(pub T);

impl<S, T> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(t) = axum::extract::Path::from_request_parts(parts, state).await?;
        Ok(Self(t))
    }
}

/// `axum::extract::Query`, refused as `validation_failed`.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<S, T> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Query(t) =
            axum::extract::Query::from_request_parts(parts, state).await?;
        Ok(Self(t))
    }
}

#[cfg(test)]
mod tests {
    use axum::http::{Request, StatusCode};
    use axum::response::IntoResponse;

    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Wait {
        #[allow(dead_code)] // only its refusal is looked at
        wait: Option<String>,
    }

    async fn body_json(e: ApiError) -> (StatusCode, serde_json::Value) {
        let resp = e.into_response();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 10_000)
            .await
            .expect("body");
        (status, serde_json::from_slice(&bytes).expect("json"))
    }

    #[tokio::test]
    async fn rejections_of_path_and_query_come_in_the_one_shape() {
        let (mut parts, ()) = Request::builder()
            .uri("/v1/transactions?wait=1s&wait=2s")
            .body(())
            .expect("request")
            .into_parts();
        let refused = Query::<Wait>::from_request_parts(&mut parts, &())
            .await
            .expect_err("a field twice");
        let (status, body) = body_json(refused).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"], "validation_failed", "{body}");
        assert!(
            body["message"].as_str().is_some_and(|m| m.contains("wait")),
            "{body}"
        );
        let refused = Path::<String>::from_request_parts(&mut parts, &())
            .await
            .expect_err("no path parameters");
        let (_, body) = body_json(refused).await;
        assert_eq!(body["error"], "validation_failed", "{body}");
    }

    #[test]
    fn a_caller_is_found_by_bearer_or_x_api_key() {
        let keys = [ApiKey {
            id: "k".into(),
            sha256: crate::auth::key_hash("secret"),
            tenant: "t".into(),
            scopes: vec![],
            revoked: false,
            tier: crate::config::Tier::Interactive,
        }];
        let mut headers = HeaderMap::new();
        assert_eq!(
            caller_of(&keys, &headers).expect_err("no key").code(),
            "unauthorized"
        );
        headers.insert("x-api-key", "secret".parse().expect("value"));
        assert_eq!(caller_of(&keys, &headers).expect("key").tenant, "t");
    }
}
