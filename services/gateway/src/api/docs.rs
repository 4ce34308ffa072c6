//! The API's own description: the OpenAPI document and RapiDoc rendering it, served from the
//! binary (no network), open and not limited.

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// `GET /v1/openapi.json`: this API's OpenAPI 3.1 document.
#[utoipa::path(
    get,
    tag = "documentation",
    path = "/v1/openapi.json",
    security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document", body = serde_json::Value))
)]
pub async fn openapi_json() -> Response {
    axum::Json(crate::openapi::document()).into_response()
}

/// `GET /v1/docs`: the document rendered by RapiDoc (served from the binary, no network).
pub async fn docs_page() -> Response {
    axum::response::Html(DOCS_PAGE).into_response()
}

/// `GET /v1/docs/rapidoc-min.js`.
pub async fn rapidoc_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        RAPIDOC_JS,
    )
        .into_response()
}

const DOCS_PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>verdict gateway API</title>
<script type="module" src="/v1/docs/rapidoc-min.js"></script></head>
<body><rapi-doc spec-url="/v1/openapi.json" render-style="read" allow-try="true" load-fonts="false"
 show-header="false" heading-text="verdict gateway"></rapi-doc></body></html>"#;

const RAPIDOC_JS: &str = include_str!("../../assets/rapidoc-min.js");
