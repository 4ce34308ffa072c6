//! The resilience layer against a real HTTP server that misbehaves on purpose: 429 and
//! 503 with `Retry-After` (seconds and HTTP-date), a server slower than the timeout, and
//! a pause request longer than any backoff. The server is a KServe v2 endpoint on an
//! ephemeral loopback port that answers from a script and counts the calls it got.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use harness::run;
use verdict_runtime::inference::kserve::KServeClient;
use verdict_runtime::inference::resilience::{CircuitState, Guarded, ProviderSettings};
use verdict_runtime::inference::{InferenceError, Provider};

#[derive(Clone)]
enum Reply {
    Ok,
    Status(u16, Option<String>),
    Slow(Duration),
}

struct Backend {
    url: String,
    calls: Arc<AtomicU32>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Serves `script` in order, then keeps answering with its last reply.
async fn backend(script: Vec<Reply>) -> Backend {
    let calls = Arc::new(AtomicU32::new(0));
    let queue = Arc::new(std::sync::Mutex::new(VecDeque::from(script)));
    let counter = calls.clone();
    let app = Router::new().route(
        "/v2/models/m/infer",
        post(move || {
            let queue = queue.clone();
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                let reply = {
                    let mut q = queue.lock().expect("script");
                    if q.len() > 1 {
                        q.pop_front()
                    } else {
                        q.front().cloned()
                    }
                };
                answer(reply.unwrap_or(Reply::Ok)).await
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    Backend { url, calls, server }
}

async fn answer(reply: Reply) -> Response {
    match reply {
        Reply::Ok => axum::Json(serde_json::json!({"model_name": "m", "outputs": [
            {"name": "predict_proba", "datatype": "FP64", "shape": [1, 2], "data": [0.25, 0.75]}]}))
        .into_response(),
        Reply::Status(code, retry_after) => {
            let mut headers = HeaderMap::new();
            if let Some(v) = retry_after {
                headers.insert("retry-after", HeaderValue::from_str(&v).expect("header"));
            }
            let status = StatusCode::from_u16(code).expect("status");
            (status, headers, r#"{"error":"busy"}"#).into_response()
        }
        Reply::Slow(d) => {
            tokio::time::sleep(d).await;
            Box::pin(answer(Reply::Ok)).await
        }
    }
}

fn guarded(url: &str, settings: ProviderSettings) -> Guarded<Vec<f64>, Vec<f64>> {
    let client = KServeClient::new(url, "m", "1", "predict_proba").expect("client");
    Guarded::new(Box::new(client), settings)
}

/// Base backoff of 1 ms: any wait of a second or more comes from `Retry-After`.
fn settings() -> ProviderSettings {
    ProviderSettings {
        timeout_ms: 2_000,
        max_retries: 3,
        backoff_base_ms: 1,
        backoff_max_ms: 5_000,
        failure_threshold: 10,
        ..ProviderSettings::default()
    }
}

#[test]
fn status_429_with_retry_after_seconds_is_waited_out() {
    run(60, async {
        let b = backend(vec![Reply::Status(429, Some("1".into())), Reply::Ok]).await;
        let p = guarded(&b.url, settings());
        let started = Instant::now();
        let out = p
            .call(&[vec![1.0, 2.0]])
            .await
            .expect("answer after the pause");
        let waited = started.elapsed();
        assert_eq!(out, vec![vec![0.25, 0.75]]);
        assert_eq!(b.calls.load(Ordering::SeqCst), 2, "one 429, one retry");
        assert!(
            waited >= Duration::from_secs(1),
            "waited {waited:?}, Retry-After said 1 s"
        );
        assert!(waited < Duration::from_secs(3), "waited {waited:?}");
        assert_eq!(p.breaker.state(), CircuitState::Closed);
    });
}

#[test]
fn status_503_with_an_http_date_is_waited_out() {
    run(60, async {
        // Whole seconds: the date is rounded down, so 3 s ahead means at least 2 s.
        let at = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3));
        let b = backend(vec![Reply::Status(503, Some(at)), Reply::Ok]).await;
        let p = guarded(&b.url, settings());
        let started = Instant::now();
        p.call(&[vec![1.0]]).await.expect("answer after the pause");
        let waited = started.elapsed();
        assert_eq!(b.calls.load(Ordering::SeqCst), 2);
        assert!(waited >= Duration::from_millis(1_900), "waited {waited:?}");
        assert!(waited < Duration::from_secs(5), "waited {waited:?}");
    });
}

#[test]
fn a_pause_longer_than_the_longest_backoff_fails_at_once_for_the_fallback() {
    run(60, async {
        let b = backend(vec![Reply::Status(429, Some("3600".into()))]).await;
        let p = guarded(&b.url, settings());
        let started = Instant::now();
        let err = p.call(&[vec![1.0]]).await.expect_err("not waited for");
        assert!(
            matches!(err, InferenceError::Http { status: 429, retry_after: Some(d), .. } if d == Duration::from_secs(3600)),
            "{err:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(b.calls.load(Ordering::SeqCst), 1);
    });
}

#[test]
fn a_server_slower_than_the_timeout_is_retried_then_reported() {
    run(60, async {
        let b = backend(vec![Reply::Slow(Duration::from_secs(3))]).await;
        let p = guarded(
            &b.url,
            ProviderSettings {
                timeout_ms: 300,
                max_retries: 1,
                ..settings()
            },
        );
        let started = Instant::now();
        let err = p.call(&[vec![1.0]]).await.expect_err("times out");
        let took = started.elapsed();
        assert_eq!(err, InferenceError::Timeout(Duration::from_millis(300)));
        assert!(err.retryable());
        assert_eq!(b.calls.load(Ordering::SeqCst), 2, "first try and one retry");
        assert!(
            took >= Duration::from_millis(600) && took < Duration::from_millis(2_000),
            "{took:?}: two 300 ms timeouts, not the server's 3 s"
        );
    });
}

#[test]
fn repeated_503s_open_the_circuit_and_stop_calling_the_server() {
    run(60, async {
        let b = backend(vec![Reply::Status(503, None)]).await;
        let p = guarded(
            &b.url,
            ProviderSettings {
                max_retries: 1,
                failure_threshold: 3,
                open_ms: 60_000,
                ..settings()
            },
        );
        for _ in 0..2 {
            let err = p.call(&[vec![1.0]]).await.expect_err("503");
            assert!(
                matches!(err, InferenceError::Http { status: 503, .. }),
                "{err:?}"
            );
        }
        assert_eq!(p.breaker.state(), CircuitState::Open);
        let calls = b.calls.load(Ordering::SeqCst);
        assert_eq!(
            calls, 3,
            "2 + 1 calls, then the third failure opened the circuit"
        );
        let err = p.call(&[vec![1.0]]).await.expect_err("open");
        assert!(matches!(err, InferenceError::CircuitOpen(_)), "{err:?}");
        assert_eq!(
            b.calls.load(Ordering::SeqCst),
            calls,
            "an open circuit sends nothing"
        );
        assert_eq!(Provider::model(&p).name, "m");
    });
}
