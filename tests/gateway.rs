//! The HTTP gateway against the real broker, registry and fraud-detector: submit → decision
//! by polling, by `wait` and from another instance; idempotency; specific auth errors and key
//! rotation; per-tenant limits with their headers; validation and size errors in the one
//! error shape.

use std::time::Duration;

use gateway::auth::{Scope, key_hash};
use gateway::config::{ApiKey, TenantLimits, Tier, TokenBudget};
use harness::{ServiceProcess, Stack, Topology, apply_topology, deployment, run};
use serde_json::{Value, json};
use verdict_cli::records::sample_transaction;

const KEY_A: &str = "key-a-current";
const KEY_A_NEXT: &str = "key-a-next";
const KEY_A_OLD: &str = "key-a-old";
const KEY_B: &str = "key-b";
const KEY_READER: &str = "key-c-reader";
const KEY_BATCH: &str = "key-d-batch";

fn all_for_batch() -> Vec<Scope> {
    vec![Scope::TransactionsWrite, Scope::JobsRead]
}

fn keys() -> Vec<ApiKey> {
    let key = |id: &str, secret: &str, tenant: &str, scopes: Vec<Scope>, revoked: bool| ApiKey {
        id: id.into(),
        sha256: key_hash(secret),
        tenant: tenant.into(),
        scopes,
        revoked,
        tier: Tier::Interactive,
    };
    let all = vec![
        Scope::TransactionsWrite,
        Scope::DocumentsWrite,
        Scope::JobsRead,
        Scope::ReviewsWrite,
    ];
    vec![
        key("a-old", KEY_A_OLD, "tenant-a", all.clone(), true),
        key("a-current", KEY_A, "tenant-a", all.clone(), false),
        key("a-next", KEY_A_NEXT, "tenant-a", all.clone(), false),
        key("b", KEY_B, "tenant-b", all, false),
        key(
            "c-reader",
            KEY_READER,
            "tenant-c",
            vec![Scope::JobsRead],
            false,
        ),
        ApiKey {
            tier: Tier::Batch,
            ..key("d-batch", KEY_BATCH, "tenant-d", all_for_batch(), false)
        },
    ]
}

/// The gateway's settings in this test's namespace, with its keys, then `tweak`.
fn spawn_gateway(
    stack: &Stack,
    topology: &Topology,
    tweak: impl FnOnce(&mut gateway::config::GatewaySettings),
) -> ServiceProcess {
    ServiceProcess::spawn::<gateway::Spec>(&deployment(stack, topology, None), |s| {
        s.gateway.keys = keys();
        s.gateway.resolutions_topic = topology.topic("review-resolutions");
        tweak(s);
    })
}

fn gateway(stack: &Stack, topology: &Topology) -> ServiceProcess {
    spawn_gateway(stack, topology, |s| {
        s.gateway.tenants.insert(
            "tenant-b".into(),
            TenantLimits {
                requests_per_minute: 6,
                burst: 3,
            },
        );
        s.gateway.max_body_bytes = 4_000;
    })
}

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

async fn call(
    port: u16,
    method: &str,
    path: &str,
    key: Option<&str>,
    extra: &[(&str, &str)],
    body: Option<String>,
) -> Reply {
    let client = reqwest::Client::new();
    let mut req = client.request(
        reqwest::Method::from_bytes(method.as_bytes()).expect("method"),
        format!("http://127.0.0.1:{port}{path}"),
    );
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Reply {
        status,
        headers,
        body,
    }
}

/// `POST /v1/transactions` with `key`.
async fn post_tx(port: u16, key: &str, body: String) -> Reply {
    call(port, "POST", "/v1/transactions", Some(key), &[], Some(body)).await
}

/// A transaction as a client sends it: no event id or tenant (the gateway sets them).
fn transaction() -> String {
    let (_, mut v) = sample_transaction(&mut rand::rng(), "ignored");
    let obj = v.as_object_mut().expect("object");
    obj.remove("event_id");
    obj.remove("tenant_id");
    v.to_string()
}

/// Job `id` (tenant A) as instance `port` tells it, once `until` holds (or after 10 s).
async fn job_when(port: u16, id: &str, until: impl Fn(&Value) -> bool) -> Value {
    let mut job = Value::Null;
    for _ in 0..40 {
        job = call(
            port,
            "GET",
            &format!("/v1/jobs/{id}"),
            Some(KEY_A),
            &[],
            None,
        )
        .await
        .body;
        if until(&job) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    job
}

fn assert_error_shape(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.body["error"], code, "{}", r.body);
    assert!(r.body["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert!(r.body["hint"].as_str().is_some_and(|m| !m.is_empty()));
    let text = r.body.to_string();
    for leak in ["/work", "rdkafka", "panicked", ".rs:", "src/"] {
        assert!(!text.contains(leak), "an internal detail leaked: {text}");
    }
}

/// Submit → decision by polling, by `?wait=`, and on another instance; the same
/// Idempotency-Key gives the same job on both instances.
#[test]
fn a_submitted_transaction_is_decided_and_any_instance_answers() {
    run(240, async {
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        let mut fraud = ServiceProcess::spawn::<fraud_detector::Spec>(
            &deployment(&stack, &topology, None),
            |_| {},
        );
        let mut a = gateway(&stack, &topology);
        let mut b = gateway(&stack, &topology);
        fraud.wait_ready(Duration::from_secs(30)).await;
        a.wait_ready(Duration::from_secs(30)).await;
        b.wait_ready(Duration::from_secs(30)).await;
        let (pa, pb) = (a.http_port, b.http_port);

        let submitted = post_tx(pa, KEY_A, transaction()).await;
        assert_eq!(submitted.status, 202, "{}", submitted.body);
        assert_eq!(submitted.body["status"], "processing");
        let job = submitted.body["job_id"]
            .as_str()
            .expect("job id")
            .to_string();
        assert_eq!(
            submitted
                .headers
                .get("location")
                .and_then(|v| v.to_str().ok()),
            Some(format!("/v1/jobs/{job}").as_str())
        );
        for h in [
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
        ] {
            assert!(submitted.headers.contains_key(h), "{h} on every response");
        }

        // Polled on the other instance.
        let mut polled = None;
        for _ in 0..120 {
            let r = call(
                pb,
                "GET",
                &format!("/v1/jobs/{job}"),
                Some(KEY_A),
                &[],
                None,
            )
            .await;
            if r.status == 200 && r.body["status"] != "processing" {
                polled = Some(r.body);
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let polled = polled.expect("instance b learns the decision");
        assert!(
            ["complete", "in_review"].contains(&polled["status"].as_str().unwrap_or("")),
            "{polled}"
        );
        assert_eq!(polled["decision"]["event_id"], job.as_str());
        assert_eq!(polled["decision"]["model"]["version"], "1.0.0");
        // Another tenant does not see it.
        let other = call(
            pb,
            "GET",
            &format!("/v1/jobs/{job}"),
            Some(KEY_B),
            &[],
            None,
        )
        .await;
        assert_error_shape(&other, 404, "not_found");

        // ?wait= answers with the decision.
        let waited = call(
            pa,
            "POST",
            "/v1/transactions?wait=15s",
            Some(KEY_A),
            &[],
            Some(transaction()),
        )
        .await;
        assert_eq!(waited.status, 200, "{}", waited.body);
        assert!(
            waited.body["decision"]["outcome"].is_string(),
            "{}",
            waited.body
        );

        // Idempotency-Key: the same job on both instances, sent once.
        let idem = [("idempotency-key", "order-42")];
        let first = call(
            pa,
            "POST",
            "/v1/transactions",
            Some(KEY_A),
            &idem,
            Some(transaction()),
        )
        .await;
        let again = call(
            pa,
            "POST",
            "/v1/transactions",
            Some(KEY_A),
            &idem,
            Some(transaction()),
        )
        .await;
        assert_eq!(first.body["job_id"], again.body["job_id"]);
        assert_eq!(again.body["idempotent_replay"], true);
        let mut on_b = None;
        for _ in 0..40 {
            let r = call(
                pb,
                "POST",
                "/v1/transactions",
                Some(KEY_A),
                &idem,
                Some(transaction()),
            )
            .await;
            if r.body["idempotent_replay"] == true {
                on_b = Some(r);
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let on_b = on_b.expect("instance b knows the job of the key");
        assert_eq!(on_b.body["job_id"], first.body["job_id"]);
    });
}

/// Hardening issue: a gateway started on a cluster with history read it all before anything
/// new (jobs submitted through it stayed `processing` for minutes although decided within
/// milliseconds), evicted with a scan per record past its capacity, and did not answer
/// SIGTERM. It reads a bounded part of the history, says ready once it has, answers new jobs
/// at once, and stops when told.
#[test]
fn a_gateway_on_a_cluster_with_history_answers_new_jobs_at_once() {
    run(400, async {
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        let input = topology.topic("transactions");
        harness::write_history(&stack, &input, 400_000).await;
        // The fraud-detector starts at the end: the history was decided before.
        harness::commit_at_end(
            &stack.broker.kafka(),
            &topology.group("verdict-fraud-detector"),
            &input,
        )
        .await;
        let mut fraud = ServiceProcess::spawn::<fraud_detector::Spec>(
            &deployment(&stack, &topology, None),
            |_| {},
        );
        fraud.wait_ready(Duration::from_secs(30)).await;
        let started = std::time::Instant::now();
        let mut gw = gateway(&stack, &topology);
        gw.wait_ready(Duration::from_secs(120)).await;
        let ready_after = started.elapsed();
        let waited = call(
            gw.http_port,
            "POST",
            "/v1/transactions?wait=10s",
            Some(KEY_A),
            &[],
            Some(transaction()),
        )
        .await;
        assert_eq!(
            waited.status,
            200,
            "decided and answered at once (ready after {ready_after:?}): {}\n{}",
            waited.body,
            gw.log()
        );
        assert!(
            ready_after < Duration::from_secs(30),
            "ready after {ready_after:?}"
        );
        assert_eq!(
            gw.terminate(Duration::from_secs(10)),
            Some(0),
            "stops when told\n{}",
            gw.log()
        );
    });
}

/// Missing, unknown and revoked keys and a missing scope each get their own answer; both
/// active keys of a tenant work (rotation).
#[test]
fn keys_are_checked_with_specific_errors_and_rotate() {
    run(120, async {
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        let mut gw = gateway(&stack, &topology);
        gw.wait_ready(Duration::from_secs(30)).await;
        let p = gw.http_port;
        let post = |key: Option<&'static str>| {
            call(p, "POST", "/v1/transactions", key, &[], Some(transaction()))
        };
        let r = post(None).await;
        assert_error_shape(&r, 401, "unauthorized");
        assert_eq!(r.body["reason"], "missing_key");
        let r = post(Some("not-a-key")).await;
        assert_error_shape(&r, 401, "unauthorized");
        assert_eq!(r.body["reason"], "unknown_key");
        let r = post(Some(KEY_A_OLD)).await;
        assert_error_shape(&r, 401, "unauthorized");
        assert_eq!(r.body["reason"], "revoked_key");
        let r = post(Some(KEY_READER)).await;
        assert_error_shape(&r, 403, "forbidden_scope");
        assert!(
            r.body["hint"]
                .as_str()
                .unwrap_or("")
                .contains("transactions:write")
        );
        assert_eq!(post(Some(KEY_A)).await.status, 202);
        assert_eq!(
            post(Some(KEY_A_NEXT)).await.status,
            202,
            "the second active key works"
        );
        // X-API-Key works too.
        let r = call(
            p,
            "GET",
            "/v1/jobs/none",
            None,
            &[("x-api-key", KEY_READER)],
            None,
        )
        .await;
        assert_error_shape(&r, 404, "not_found");
        // Usage per key: both tenant-a keys sent one accepted request; the reader's 403 and
        // 404 count as 4xx.
        let count =
            |labels: &'static str| gw.metric_where("verdict_gateway_requests_total", labels);
        assert_eq!(
            count("key=\"a-current\",tenant=\"tenant-a\",status=\"2xx\"").await,
            1.0
        );
        assert_eq!(
            count("key=\"a-next\",tenant=\"tenant-a\",status=\"2xx\"").await,
            1.0
        );
        assert_eq!(
            count("key=\"c-reader\",tenant=\"tenant-c\",status=\"4xx\"").await,
            2.0
        );
        // Those counters name every tenant and key: the API port does not serve them, nor the
        // readiness report (it names the registry's address); they are on the admin port.
        for path in ["/metrics", "/readyz", "/healthz"] {
            let r = call(p, "GET", path, None, &[], None).await;
            assert_error_shape(&r, 404, "not_found");
        }
        assert_ne!(gw.admin_port, p, "a port of its own");
    });
}

/// Issue 19: with `[http.tls]` the API speaks HTTPS only, here with the registry behind TLS
/// and basic auth too (`registry.ca_file`, `registry.username`): a client that trusts the CA
/// submits and reads its job by address or by name; one that does not is refused the
/// handshake, and a plain-HTTP client gets no answer. A certificate file that is not one
/// stops the gateway at start-up naming the key.
#[test]
fn the_api_speaks_https_with_a_certificate() {
    use verdict_runtime::tls::ServerTls;
    run(120, async {
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let (registry, ca) = stack.tls_registry(&dir.path().join("tls")).await;
        let secrets = verdict_cli::secure::Secrets::ensure(&dir.path().join("tls"), &[])
            .expect("the same certificates");
        let tls = ServerTls {
            cert_file: Some(secrets.server_certificate()),
            key_file: Some(secrets.server_key()),
        };
        let on_tls = |s: &mut gateway::config::GatewaySettings, tls: ServerTls| {
            s.http.tls = tls;
            s.registry.url = registry.url();
            s.registry.ca_file = Some(ca.clone());
            s.registry.username = Some("writer".into());
            s.registry.password = Some(verdict_runtime::secret::Secret::new("writer-secret"));
        };
        let mut gw = spawn_gateway(&stack, &topology, |s| on_tls(s, tls.clone()));
        gw.wait_ready(Duration::from_secs(30)).await;
        let p = gw.http_port;

        let pem = std::fs::read(&ca).expect("CA");
        let trusting = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("PEM"))
            .build()
            .expect("client");
        let submitted = trusting
            .post(format!("https://127.0.0.1:{p}/v1/transactions"))
            .bearer_auth(KEY_A)
            .header("content-type", "application/json")
            .body(transaction())
            .send()
            .await
            .expect("HTTPS to the gateway");
        assert_eq!(submitted.status(), 202, "{:?}", submitted.text().await);
        let job: Value = submitted.json().await.expect("job");
        let id = job["job_id"].as_str().expect("job id");
        let read = trusting
            .get(format!("https://localhost:{p}/v1/jobs/{id}"))
            .bearer_auth(KEY_A)
            .send()
            .await
            .expect("HTTPS by name");
        assert_eq!(read.status(), 200);

        let untrusted = reqwest::Client::new()
            .get(format!("https://127.0.0.1:{p}/v1/health"))
            .send()
            .await
            .expect_err("a certificate from an unknown CA");
        let said = verdict_runtime::registry::with_causes(&untrusted);
        assert!(said.contains("certificate"), "{said}");
        let plain = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{p}/v1/health"))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        assert!(plain.is_err(), "plain HTTP is not served: {plain:?}");
        drop(gw);

        let not_pem = dir.path().join("not-a-certificate.pem");
        std::fs::write(&not_pem, "hello").expect("write");
        let mut bad = spawn_gateway(&stack, &topology, |s| {
            on_tls(
                s,
                ServerTls {
                    cert_file: Some(not_pem.clone()),
                    ..tls.clone()
                },
            );
        });
        let status = bad.wait_exit(Duration::from_secs(30)).await;
        assert!(status.is_some_and(|s| !s.success()), "{}", bad.log());
        assert!(
            bad.log().contains("http.tls.cert_file") && bad.log().contains("not-a-certificate.pem"),
            "{}",
            bad.log()
        );
        registry.stop().await;
    });
}

/// Issue 20: `verdict keys new` mints a key and prints the `[[gateway.keys]]` lines that
/// admit it (its hash, never the key); a gateway given those lines admits the key with the
/// scopes it was minted with and no others.
#[test]
fn a_key_minted_by_the_cli_is_admitted_with_its_scopes() {
    run(120, async {
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        let out = harness::run_command(
            std::process::Command::new(harness::bin("verdict")).args([
                "keys",
                "new",
                "--tenant",
                "acme",
                "--scopes",
                "transactions:write,jobs:read",
                "--id",
                "minted",
            ]),
            Duration::from_secs(30),
        );
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{said}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let key = said
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("vk_"))
            .expect("the key")
            .to_string();
        let lines = said
            .split_once("[[gateway.keys]]")
            .and_then(|(_, rest)| rest.split_once("Then:"))
            .map(|(table, _)| format!("[[gateway.keys]]{table}"))
            .expect("the settings lines");
        assert!(!lines.contains(&key), "{lines}");
        let minted: gateway::config::GatewaySettings =
            toml::from_str(&lines).expect("the gateway's settings");
        let mut gw = spawn_gateway(&stack, &topology, |s| {
            s.gateway.keys = minted.gateway.keys;
        });
        gw.wait_ready(Duration::from_secs(30)).await;
        let p = gw.http_port;
        let r = post_tx(p, &key, transaction()).await;
        assert_eq!(r.status, 202, "{}", r.body);
        let job = r.body["job_id"].as_str().expect("job id").to_string();
        let r = call(p, "GET", &format!("/v1/jobs/{job}"), Some(&key), &[], None).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let review = format!("/v1/reviews/{job}");
        let r = call(p, "POST", &review, Some(&key), &[], Some("{}".into())).await;
        assert_error_shape(&r, 403, "forbidden_scope");
        assert_eq!(
            gw.metric_where(
                "verdict_gateway_requests_total",
                "key=\"minted\",tenant=\"acme\",status=\"2xx\""
            )
            .await,
            2.0
        );
    });
}

/// A tenant past its limit gets 429 with Retry-After and the limit headers; another tenant
/// is unaffected; the warning header comes at 80 %.
#[test]
fn a_tenant_over_its_limit_is_refused_and_others_are_not() {
    run(120, async {
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        let mut gw = gateway(&stack, &topology);
        gw.wait_ready(Duration::from_secs(30)).await;
        let p = gw.http_port;
        let get = |key: &'static str| call(p, "GET", "/v1/jobs/nothing", Some(key), &[], None);
        let mut replies = Vec::new();
        for _ in 0..4 {
            replies.push(get(KEY_B).await);
        }
        for r in &replies[..3] {
            assert_eq!(r.status, 404, "within the burst: {}", r.body);
            assert_eq!(r.headers["x-ratelimit-limit"], "6");
        }
        assert!(
            replies[2].headers.contains_key("x-ratelimit-warning"),
            "80 % used"
        );
        let refused = &replies[3];
        assert_error_shape(refused, 429, "rate_limit_exceeded");
        assert_eq!(refused.headers["x-ratelimit-remaining"], "0");
        let retry: u64 = refused.headers["retry-after"]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("secs");
        assert!((1..=10).contains(&retry), "{retry}");
        assert_eq!(refused.body["retry_after"], retry);
        assert_eq!(get(KEY_A).await.status, 404, "tenant a is unaffected");
    });
}

/// Bad input gets `validation_failed` naming the field, too much gets `payload_too_large`;
/// an unknown path gets `not_found`; all in the one shape.
#[test]
fn bad_submissions_get_specific_errors() {
    run(120, async {
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        let mut gw = gateway(&stack, &topology);
        gw.wait_ready(Duration::from_secs(30)).await;
        let p = gw.http_port;
        let mut tx: Value = serde_json::from_str(&transaction()).expect("json");
        tx.as_object_mut().expect("object").remove("account_id");
        let r = post_tx(p, KEY_A, tx.to_string()).await;
        assert_error_shape(&r, 400, "validation_failed");
        assert!(
            r.body["message"]
                .as_str()
                .unwrap_or("")
                .contains("account_id"),
            "{}",
            r.body
        );
        let r = post_tx(p, KEY_A, "{not json".into()).await;
        assert_error_shape(&r, 400, "validation_failed");
        // The schema bounds string fields (`maxLength`): an id of 1,000 characters would grow
        // every job store and velocity map it reaches.
        let mut tx: Value = serde_json::from_str(&transaction()).expect("json");
        tx["account_id"] = json!("a".repeat(1_000));
        let r = post_tx(p, KEY_A, tx.to_string()).await;
        assert_error_shape(&r, 400, "validation_failed");
        let message = r.body["message"].as_str().unwrap_or("");
        assert!(
            message.contains("account_id") && message.contains("longer than 128"),
            "{message}"
        );
        let big = json!({"document_id": "d1", "text": "x".repeat(5_000)}).to_string();
        let r = call(p, "POST", "/v1/documents", Some(KEY_A), &[], Some(big)).await;
        assert_error_shape(&r, 413, "payload_too_large");
        let doc = json!({"document_id": "d2", "text": "word ".repeat(200)}).to_string();
        let r = call(
            p,
            "POST",
            "/v1/documents",
            Some(KEY_A),
            &[("x-max-tokens", "10")],
            Some(doc.clone()),
        )
        .await;
        assert_error_shape(&r, 413, "payload_too_large");
        assert!(
            r.body["message"]
                .as_str()
                .unwrap_or("")
                .contains("X-Max-Tokens")
        );
        let r = call(p, "POST", "/v1/documents", Some(KEY_A), &[], Some(doc)).await;
        assert_eq!(r.status, 202, "{}", r.body);
        assert_eq!(r.body["kind"], "document");
        let r = call(p, "GET", "/v2/anything", Some(KEY_A), &[], None).await;
        assert_error_shape(&r, 404, "not_found");
        // Review item 8 of the hardening issue: anyone could read every pipeline's group and
        // lag. Without a key, only the overall status.
        let open = call(p, "GET", "/v1/health", None, &[], None).await;
        assert_eq!(open.status, 200, "{}", open.body);
        assert!(open.body["status"].is_string(), "{}", open.body);
        assert!(open.body.get("services").is_none(), "{}", open.body);
        let health = call(p, "GET", "/v1/health", Some(KEY_READER), &[], None).await;
        assert_eq!(health.status, 200, "{}", health.body);
        assert_eq!(health.body["services"]["kafka"]["status"], "ok");
        assert_eq!(health.body["services"]["registry"]["status"], "ok");
        // No document-analyzer runs and a document waits: that pipeline may already show as
        // down (the gateway reads lag every 5 s), which makes the whole degraded, not down.
        assert_ne!(health.body["status"], "down", "{}", health.body);
        let docs = &health.body["services"]["pipelines"]["document-analyzer"];
        assert!(
            docs["group"]
                .as_str()
                .is_some_and(|g| g.ends_with("verdict-document-analyzer")),
            "{}",
            health.body
        );
        assert!(
            ["ok", "down", "unknown"].contains(&docs["status"].as_str().unwrap_or("")),
            "{}",
            health.body
        );
    });
}

/// Size discipline (hardening issue): a document that filled its topic to the byte was
/// accepted and could only end as a dead-letter stub, its copy having no room for the
/// failure headers. The gateway refuses a record that does not leave that room: 413 naming
/// the limit; one that does is taken.
#[test]
fn a_record_too_large_for_its_topic_is_refused_with_the_limit() {
    run(120, async {
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        let mut gw = spawn_gateway(&stack, &topology, |s| {
            s.gateway.max_body_bytes = 1_000_000;
            s.gateway.default_token_budget = TokenBudget {
                tokens_per_hour: 2_000_000,
            };
        });
        gw.wait_ready(Duration::from_secs(30)).await;
        let p = gw.http_port;
        let doc = |id: &str, chars: usize| {
            json!({"document_id": id, "text": "x".repeat(chars)}).to_string()
        };
        // Under the body limit (1,000,000 bytes of JSON), over the producer's 1,000,000-byte
        // message.max.bytes less the 8,192 bytes kept for a copy's headers.
        let r = call(
            p,
            "POST",
            "/v1/documents",
            Some(KEY_A),
            &[],
            Some(doc("big", 995_000)),
        )
        .await;
        assert_error_shape(&r, 413, "payload_too_large");
        let message = r.body["message"].as_str().unwrap_or("");
        assert!(
            message.contains("takes at most 991808 (1000000 less 8192"),
            "names the limit: {message}"
        );
        let r = call(
            p,
            "POST",
            "/v1/documents",
            Some(KEY_A),
            &[],
            Some(doc("fits", 900_000)),
        )
        .await;
        assert_eq!(r.status, 202, "{}", r.body);
    });
}

/// One SSE event: id, event name, data.
type SseEvent = (String, String, String);

/// Reads an SSE stream until it ends (or `timeout`); returns its events and how many
/// heartbeat comments came.
async fn read_sse(
    port: u16,
    path: &str,
    key: &str,
    last_event_id: Option<&str>,
    timeout: Duration,
) -> (Vec<SseEvent>, usize) {
    let client = reqwest::Client::new();
    let mut req = client
        .get(format!("http://127.0.0.1:{port}{path}"))
        .bearer_auth(key);
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    let mut resp = req.send().await.expect("sse request");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    // Behind a proxy the stream is passed on as it comes, not buffered or cached.
    for (name, value) in [("x-accel-buffering", "no"), ("cache-control", "no-cache")] {
        assert_eq!(
            resp.headers().get(name).and_then(|v| v.to_str().ok()),
            Some(value),
            "{name}"
        );
    }
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, resp.chunk()).await {
            Ok(Ok(Some(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            Ok(Ok(None)) => break,
            Ok(Err(e)) => panic!("reading the stream: {e}"),
            Err(_) => panic!("the stream did not end within {timeout:?}: {text}"),
        }
    }
    let mut events = Vec::new();
    let mut heartbeats = 0;
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let (mut id, mut event, mut data) = (String::new(), String::new(), String::new());
        for line in block.lines() {
            if line.starts_with(':') {
                heartbeats += 1;
            } else if let Some(v) = line.strip_prefix("id: ") {
                id = v.to_string();
            } else if let Some(v) = line.strip_prefix("event: ") {
                event = v.to_string();
            } else if let Some(v) = line.strip_prefix("data: ") {
                data.push_str(v);
            }
        }
        if !event.is_empty() {
            events.push((id, event, data));
        }
    }
    (events, heartbeats)
}

/// Server-Sent Events: a status event per change with increasing ids, heartbeats while
/// nothing happens, an explicit final event with the decision, and `Last-Event-ID` resuming
/// after what the client saw.
#[test]
fn job_events_stream_with_ids_heartbeats_and_resume() {
    run(240, async {
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        let mut gw = spawn_gateway(&stack, &topology, |s| s.gateway.sse_heartbeat_ms = 300);
        gw.wait_ready(Duration::from_secs(30)).await;
        let p = gw.http_port;
        // Above the amount limit: declined whatever the score, so the job ends `complete`.
        let mut tx: Value = serde_json::from_str(&transaction()).expect("json");
        tx["amount"] = json!(50_000.0);
        let submitted = post_tx(p, KEY_A, tx.to_string()).await;
        assert_eq!(submitted.status, 202, "{}", submitted.body);
        let job = submitted.body["job_id"].as_str().expect("id").to_string();
        let path = format!("/v1/jobs/{job}/events");

        // No fraud-detector yet: the stream waits with heartbeats; then one starts.
        let reader = tokio::spawn({
            let path = path.clone();
            async move { read_sse(p, &path, KEY_A, None, Duration::from_secs(90)).await }
        });
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let mut fraud = ServiceProcess::spawn::<fraud_detector::Spec>(
            &deployment(&stack, &topology, None),
            |_| {},
        );
        fraud.wait_ready(Duration::from_secs(30)).await;
        let (events, heartbeats) = reader.await.expect("join");
        assert!(heartbeats >= 2, "heartbeats while waiting: {heartbeats}");
        let names: Vec<(&str, &str)> = events
            .iter()
            .map(|(i, e, _)| (i.as_str(), e.as_str()))
            .collect();
        assert_eq!(
            names,
            vec![("1", "status"), ("2", "status"), ("3", "final")],
            "{events:?}"
        );
        assert!(events[0].2.contains("\"processing\""));
        assert!(events[1].2.contains("\"complete\""));
        let last: Value = serde_json::from_str(&events[2].2).expect("final data");
        assert_eq!(last["status"], "complete");
        assert_eq!(last["decision"]["outcome"], "DECLINE");

        // Resume after event 1: only what came after it.
        let (again, _) = read_sse(p, &path, KEY_A, Some("1"), Duration::from_secs(10)).await;
        let ids: Vec<&str> = again.iter().map(|(i, _, _)| i.as_str()).collect();
        assert_eq!(ids, vec!["2", "3"]);
        // Resume after the final event: nothing more, and the stream ends.
        let (none, _) = read_sse(p, &path, KEY_A, Some("3"), Duration::from_secs(10)).await;
        assert!(none.is_empty(), "{none:?}");
    });
}

const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A webhook receiver on a free loopback port: answers 500 to the first delivery and 200 to
/// the next ones, and keeps every request (headers, body).
async fn receiver() -> (
    u16,
    std::sync::Arc<std::sync::Mutex<Vec<(axum::http::HeaderMap, String)>>>,
) {
    use axum::routing::post;
    let got: std::sync::Arc<std::sync::Mutex<Vec<(axum::http::HeaderMap, String)>>> =
        std::sync::Arc::default();
    let seen = got.clone();
    let app = axum::Router::new().route(
        "/hooks/verdict",
        post(move |headers: axum::http::HeaderMap, body: String| {
            let seen = seen.clone();
            async move {
                let n = {
                    let mut all = seen.lock().expect("lock");
                    all.push((headers, body));
                    all.len()
                };
                if n == 1 {
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    axum::http::StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (port, got)
}

/// A decision is POSTed to the callback URL, signed the Standard Webhooks way with the
/// tenant's secret (the receiver verifies it; a tampered copy fails), retried after a 500,
/// with the attempts on the job; a callback outside the allow-list is refused.
#[test]
fn decisions_are_delivered_to_signed_webhooks_with_retries() {
    run(240, async {
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        let (hook_port, got) = receiver().await;
        let mut gw = spawn_gateway(&stack, &topology, |s| {
            s.gateway.webhooks.allowed_prefixes =
                vec![format!("http://127.0.0.1:{hook_port}/hooks/")];
            // The receiver is on loopback, as nothing in production should be.
            s.gateway.webhooks.allow_private_addresses = true;
            s.gateway.webhooks.backoff_base_ms = 100;
            s.gateway.webhook_secrets.insert(
                "tenant-a".into(),
                verdict_runtime::settings::Secret::new(WEBHOOK_SECRET),
            );
        });
        let mut fraud = ServiceProcess::spawn::<fraud_detector::Spec>(
            &deployment(&stack, &topology, None),
            |_| {},
        );
        gw.wait_ready(Duration::from_secs(30)).await;
        fraud.wait_ready(Duration::from_secs(30)).await;
        let p = gw.http_port;

        let mut tx: Value = serde_json::from_str(&transaction()).expect("json");
        tx["callback_url"] = json!("http://169.254.169.254/latest/meta-data");
        let refused = post_tx(p, KEY_A, tx.to_string()).await;
        assert_error_shape(&refused, 400, "validation_failed");
        assert!(
            refused.body["message"]
                .as_str()
                .unwrap_or("")
                .contains("allow-list")
        );

        tx["callback_url"] = json!(format!("http://127.0.0.1:{hook_port}/hooks/verdict"));
        let submitted = post_tx(p, KEY_A, tx.to_string()).await;
        assert_eq!(submitted.status, 202, "{}", submitted.body);
        let job = submitted.body["job_id"].as_str().expect("id").to_string();

        let mut delivered = None;
        for _ in 0..120 {
            let r = call(p, "GET", &format!("/v1/jobs/{job}"), Some(KEY_A), &[], None).await;
            if r.body["webhook"]["delivered"] == true {
                delivered = Some(r.body);
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let delivered = delivered.expect("the webhook is delivered");
        let attempts = delivered["webhook"]["attempts"]
            .as_array()
            .expect("attempts");
        assert_eq!(attempts.len(), 2, "{delivered}");
        assert_eq!(attempts[0]["status"], 500);
        assert_eq!(attempts[1]["status"], 200);

        let requests = got.lock().expect("lock").clone();
        assert_eq!(requests.len(), 2);
        for (headers, body) in &requests {
            let h = |n: &str| {
                headers
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string()
            };
            let ts: i64 = h("webhook-timestamp").parse().expect("timestamp");
            assert!(
                gateway::webhooks::verify(
                    WEBHOOK_SECRET,
                    &h("webhook-id"),
                    ts,
                    body,
                    &h("webhook-signature")
                ),
                "the receiver verifies the signature"
            );
            let tampered = body
                .replacen("DECLINE", "APPROVE", 1)
                .replacen("REVIEW", "APPROVE", 1)
                + " ";
            assert!(
                !gateway::webhooks::verify(
                    WEBHOOK_SECRET,
                    &h("webhook-id"),
                    ts,
                    &tampered,
                    &h("webhook-signature")
                ),
                "a tampered body is rejected"
            );
            let payload: Value = serde_json::from_str(body).expect("JSON body");
            assert_eq!(payload["data"]["job_id"], job.as_str());
            assert!(payload["type"].as_str().unwrap_or("").starts_with("job."));
        }
        assert_eq!(
            requests[0].0.get("webhook-id"),
            requests[1].0.get("webhook-id"),
            "a retry keeps its webhook-id (receivers dedupe on it)"
        );
    });
}

/// Review item 9 of the hardening issue: concurrent requests with one Idempotency-Key on one
/// instance all found no job yet and all sent the event. One sends; the others get the job
/// (`idempotent_replay`) or `409 conflict` while it is being sent; the input topic holds it
/// once.
#[test]
fn concurrent_requests_with_one_idempotency_key_send_once() {
    run(120, async {
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        let mut gw = gateway(&stack, &topology);
        gw.wait_ready(Duration::from_secs(30)).await;
        let p = gw.http_port;
        let key = [("idempotency-key", "order-concurrent")];
        let calls = (0..8).map(|_| {
            call(
                p,
                "POST",
                "/v1/transactions",
                Some(KEY_A),
                &key,
                Some(transaction()),
            )
        });
        let replies = futures::future::join_all(calls).await;
        let accepted = replies.iter().filter(|r| r.status == 202).count();
        for r in &replies {
            assert!(
                r.status == 202
                    || (r.status == 200 && r.body["idempotent_replay"] == true)
                    || (r.status == 409 && r.body["error"] == "conflict"),
                "{} {}",
                r.status,
                r.body
            );
        }
        assert_eq!(accepted, 1, "one request sends");
        let input = topology.topic("transactions");
        let sent: i64 = harness::end_offsets(&stack.broker.kafka(), &input)
            .await
            .values()
            .sum();
        assert_eq!(sent, 1, "the event is on the input once");
    });
}

/// Review item 7 of the hardening issue: SSE streams were unlimited per tenant, each holding
/// a connection and a waiter. Past `max_streams_per_tenant` a tenant gets 429
/// `too_many_streams`; other tenants are unaffected, and a closed stream frees its place.
#[test]
fn sse_streams_are_limited_per_tenant() {
    run(120, async {
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        let mut gw = spawn_gateway(&stack, &topology, |s| {
            s.gateway.max_streams_per_tenant = 2;
        });
        gw.wait_ready(Duration::from_secs(30)).await;
        let p = gw.http_port;
        // No fraud-detector: the jobs stay `processing` and their streams open.
        let job_of = |key: &'static str| async move {
            let r = post_tx(p, key, transaction()).await;
            assert_eq!(r.status, 202, "{}", r.body);
            r.body["job_id"].as_str().expect("id").to_string()
        };
        let (a, b) = (job_of(KEY_A).await, job_of(KEY_B).await);
        let http = reqwest::Client::new();
        let open = |key: &'static str, job: String| {
            let http = http.clone();
            async move {
                http.get(format!("http://127.0.0.1:{p}/v1/jobs/{job}/events"))
                    .bearer_auth(key)
                    .send()
                    .await
                    .expect("request")
            }
        };
        let first = open(KEY_A, a.clone()).await;
        let second = open(KEY_A, a.clone()).await;
        assert_eq!(
            (first.status().as_u16(), second.status().as_u16()),
            (200, 200)
        );
        let third = open(KEY_A, a.clone()).await;
        assert_eq!(third.status(), 429);
        let body: Value = third.json().await.expect("json");
        assert_eq!(body["error"], "too_many_streams", "{body}");
        assert_eq!(
            open(KEY_B, b).await.status(),
            200,
            "another tenant's stream"
        );
        drop(first);
        let mut reopened = None;
        for _ in 0..40 {
            let r = open(KEY_A, a.clone()).await;
            if r.status() == 200 {
                reopened = Some(r);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(reopened.is_some(), "a closed stream frees its place");
        drop(second);
    });
}

/// Review item 10 of the hardening issue: callback URLs were checked by prefix only, so a
/// name on the allow-list that resolves (or is made to resolve) to 127.0.0.1 or
/// 169.254.169.254 was called, and every tenant shared one allow-list. Targets must resolve to
/// public addresses (unless `allow_private_addresses`), and a tenant with a list of its own
/// may use only that.
#[test]
fn webhook_targets_must_be_public_and_the_tenants_own() {
    run(120, async {
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        let mut gw = spawn_gateway(&stack, &topology, |s| {
            s.gateway.webhooks.allowed_prefixes = vec![
                "http://localhost:9/hooks/".into(),
                "http://127.0.0.1:9/hooks/".into(),
            ];
            s.gateway
                .webhooks
                .tenant_prefixes
                .insert("tenant-b".into(), vec!["https://b.example/hooks/".into()]);
            for tenant in ["tenant-a", "tenant-b"] {
                s.gateway.webhook_secrets.insert(
                    tenant.into(),
                    verdict_runtime::settings::Secret::new(WEBHOOK_SECRET),
                );
            }
        });
        gw.wait_ready(Duration::from_secs(30)).await;
        let p = gw.http_port;
        let with_callback = |url: &str| {
            let mut tx: Value = serde_json::from_str(&transaction()).expect("json");
            tx["callback_url"] = json!(url);
            tx.to_string()
        };
        for url in ["http://localhost:9/hooks/x", "http://127.0.0.1:9/hooks/x"] {
            let r = post_tx(p, KEY_A, with_callback(url)).await;
            assert_error_shape(&r, 400, "validation_failed");
            let message = r.body["message"].as_str().unwrap_or("");
            assert!(message.contains("not a public address"), "{url}: {message}");
        }
        let r = post_tx(p, KEY_B, with_callback("http://localhost:9/hooks/x")).await;
        assert_error_shape(&r, 400, "validation_failed");
        assert!(
            r.body["message"]
                .as_str()
                .unwrap_or("")
                .contains("tenant's allow-list"),
            "{}",
            r.body
        );
    });
}

/// A decision that needs a person shows in the open reviews; resolving it completes the job
/// with `reviewed_by` and writes the resolution and an audit record.
#[test]
fn a_review_is_resolved_through_the_api() {
    run(240, async {
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        let mut gw = gateway(&stack, &topology);
        let mut gw2 = gateway(&stack, &topology);
        let mut fraud = ServiceProcess::spawn::<fraud_detector::Spec>(
            &deployment(&stack, &topology, None),
            |_| {},
        );
        gw.wait_ready(Duration::from_secs(30)).await;
        gw2.wait_ready(Duration::from_secs(30)).await;
        fraud.wait_ready(Duration::from_secs(30)).await;
        let (p, p2) = (gw.http_port, gw2.http_port);
        // Seven transactions of one account within a minute: velocity sends the later ones
        // to review.
        let mut in_review = Vec::new();
        for _ in 0..7 {
            let mut tx: Value = serde_json::from_str(&transaction()).expect("json");
            tx["account_id"] = json!("acct-review");
            tx["amount"] = json!(42.0);
            let r = call(
                p,
                "POST",
                "/v1/transactions?wait=15s",
                Some(KEY_A),
                &[],
                Some(tx.to_string()),
            )
            .await;
            assert_eq!(r.status, 200, "{}", r.body);
            if r.body["status"] == "in_review" {
                in_review.push(r.body["job_id"].as_str().expect("id").to_string());
            }
        }
        assert!(!in_review.is_empty(), "velocity sends some to review");
        let open = call(p, "GET", "/v1/reviews?status=open", Some(KEY_A), &[], None).await;
        let listed: Vec<&str> = open.body["reviews"]
            .as_array()
            .expect("reviews")
            .iter()
            .filter_map(|j| j["job_id"].as_str())
            .collect();
        for id in &in_review {
            assert!(listed.contains(&id.as_str()), "{id} is open: {}", open.body);
        }
        let job = &in_review[0];
        let path = format!("/v1/reviews/{job}");
        let r = call(
            p,
            "POST",
            &path,
            Some(KEY_READER),
            &[],
            Some(json!({"outcome": "APPROVE", "reviewer": "x"}).to_string()),
        )
        .await;
        assert_error_shape(&r, 403, "forbidden_scope");
        let r = call(
            p,
            "POST",
            &path,
            Some(KEY_A),
            &[],
            Some(json!({"outcome": "MAYBE", "reviewer": "ana"}).to_string()),
        )
        .await;
        assert_error_shape(&r, 400, "validation_failed");
        assert!(
            r.body["message"]
                .as_str()
                .unwrap_or("")
                .contains("APPROVE, DECLINE")
        );
        // Two people resolve it at once with opposite outcomes on two instances (review item 9
        // of the hardening issue: both were answered 200). The first resolution on the topic
        // wins; the other gets 409.
        job_when(p2, job, |j| j["status"] == "in_review").await;
        let body =
            json!({"outcome": "APPROVE", "reviewer": "ana", "note": "known customer"}).to_string();
        let other = json!({"outcome": "DECLINE", "reviewer": "bo", "note": null}).to_string();
        let (first, second) = tokio::join!(
            call(p, "POST", &path, Some(KEY_A), &[], Some(body.clone())),
            call(p2, "POST", &path, Some(KEY_A), &[], Some(other)),
        );
        let (resolved, lost) = if first.status == 200 {
            (first, second)
        } else {
            (second, first)
        };
        assert_eq!(resolved.status, 200, "{}", resolved.body);
        assert_error_shape(&lost, 409, "conflict");
        assert_eq!(resolved.body["status"], "complete");
        let (winner, outcome) = (
            resolved.body["reviewed_by"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            resolved.body["review"]["outcome"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        );
        assert!(
            [("ana", "APPROVE"), ("bo", "DECLINE")].contains(&(winner.as_str(), outcome.as_str())),
            "{}",
            resolved.body
        );
        for port in [p, p2] {
            let now = job_when(port, job, |j| j["reviewed_by"].is_string()).await;
            assert_eq!(now["reviewed_by"], winner.as_str(), "every instance: {now}");
        }
        let again = call(p, "POST", &path, Some(KEY_A), &[], Some(body)).await;
        assert_error_shape(&again, 409, "conflict");
        let open = call(p, "GET", "/v1/reviews", Some(KEY_A), &[], None).await;
        assert!(
            !open.body.to_string().contains(job.as_str()),
            "no longer open"
        );
        let done = call(
            p,
            "GET",
            "/v1/reviews?status=resolved",
            Some(KEY_A),
            &[],
            None,
        )
        .await;
        assert!(done.body.to_string().contains(job.as_str()));

        let kafka = stack.broker.kafka();
        let url = stack.registry_url();
        let resolutions = harness::read_topic(
            &kafka,
            &url,
            &topology.topic("review-resolutions"),
            Duration::from_secs(30),
            |rs| !rs.is_empty(),
        )
        .await;
        // Both were written; the first on the topic (keyed by the job) is the one that counts.
        let v = resolutions[0].value.as_ref().expect("decoded");
        assert_eq!(
            (
                v["event_id"].as_str(),
                v["outcome"].as_str(),
                v["reviewer"].as_str()
            ),
            (
                Some(job.as_str()),
                Some(outcome.as_str()),
                Some(winner.as_str())
            )
        );
        assert_eq!(v["pipeline_outcome"], "REVIEW");
        let audits = harness::read_topic(
            &kafka,
            &url,
            &topology.topic("audit"),
            Duration::from_secs(30),
            |rs| {
                rs.iter().any(|r| {
                    r.value
                        .as_ref()
                        .is_some_and(|v| v["action"] == "HUMAN_REVIEW")
                })
            },
        )
        .await;
        let audit = audits
            .iter()
            .filter_map(|r| r.value.as_ref())
            .find(|v| v["action"] == "HUMAN_REVIEW")
            .expect("an audit record of the review");
        assert_eq!(audit["event_id"], job.as_str());
        assert_eq!(audit["actor"], winner.as_str());
        assert_eq!(audit["outcome"], outcome.as_str());
        assert_eq!(
            audits
                .iter()
                .filter_map(|r| r.value.as_ref())
                .filter(|v| v["action"] == "HUMAN_REVIEW")
                .count(),
            1,
            "only the resolution that counts is audited"
        );
    });
}

/// A tenant's token budget refuses documents past it (429 token_budget_exceeded with
/// Retry-After) while another tenant's documents pass.
#[test]
fn documents_past_the_token_budget_are_refused() {
    run(120, async {
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        let mut gw = spawn_gateway(&stack, &topology, |s| {
            s.gateway.token_budgets.insert(
                "tenant-b".into(),
                TokenBudget {
                    tokens_per_hour: 1_000,
                },
            );
        });
        gw.wait_ready(Duration::from_secs(30)).await;
        let p = gw.http_port;
        let doc = |id: &str| json!({"document_id": id, "text": "word ".repeat(600)}).to_string();
        let first = call(
            p,
            "POST",
            "/v1/documents",
            Some(KEY_B),
            &[],
            Some(doc("d1")),
        )
        .await;
        assert_eq!(first.status, 202, "750 of 1000 tokens: {}", first.body);
        let second = call(
            p,
            "POST",
            "/v1/documents",
            Some(KEY_B),
            &[],
            Some(doc("d2")),
        )
        .await;
        assert_error_shape(&second, 429, "token_budget_exceeded");
        assert!(second.headers.contains_key("retry-after"));
        assert!(
            second.body["message"]
                .as_str()
                .unwrap_or("")
                .contains("250 of the tenant's 1000"),
            "{}",
            second.body
        );
        let other = call(
            p,
            "POST",
            "/v1/documents",
            Some(KEY_A),
            &[],
            Some(doc("d3")),
        )
        .await;
        assert_eq!(
            other.status, 202,
            "another tenant is unaffected: {}",
            other.body
        );
    });
}

/// When the fraud-detector stops and its lag passes the threshold, a batch key's limits
/// shrink (saying so in X-RateLimit-Adaptive) while an interactive key keeps flowing; health
/// shows the pipeline degraded.
#[test]
fn adaptive_limits_slow_batch_keys_while_the_pipeline_lags() {
    run(240, async {
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        let mut fraud = ServiceProcess::spawn::<fraud_detector::Spec>(
            &deployment(&stack, &topology, None),
            |s| {
                s.engine.group_instance_id = String::new();
            },
        );
        let mut gw = spawn_gateway(&stack, &topology, |s| {
            s.gateway.adaptive.lag_threshold_seconds = 1.0;
            s.gateway.adaptive.batch_factor = 0.05;
            s.gateway.adaptive.poll_interval_ms = 300;
        });
        fraud.wait_ready(Duration::from_secs(30)).await;
        gw.wait_ready(Duration::from_secs(30)).await;
        let p = gw.http_port;
        let submit = |key: &'static str| post_tx(p, key, transaction());
        // Decided, so the fraud-detector's group has committed offsets to measure lag from.
        let calm = call(
            p,
            "POST",
            "/v1/transactions?wait=15s",
            Some(KEY_BATCH),
            &[],
            Some(transaction()),
        )
        .await;
        assert_eq!(calm.status, 200, "{}", calm.body);
        assert!(!calm.headers.contains_key("x-ratelimit-adaptive"));

        fraud.stop_cleanly();
        for _ in 0..5 {
            assert_eq!(submit(KEY_A).await.status, 202);
        }
        // Wait until the gateway sees the lag.
        let mut degraded = false;
        for _ in 0..60 {
            let h = call(p, "GET", "/v1/health", Some(KEY_A), &[], None).await;
            if h.body["services"]["pipelines"]["fraud-detector"]["status"] != "ok"
                && h.body["services"]["pipelines"]["fraud-detector"]["lag_seconds"].as_f64()
                    > Some(1.0)
            {
                degraded = true;
                assert_eq!(h.body["status"], "degraded", "{}", h.body);
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert!(
            degraded,
            "the gateway sees the fraud-detector's lag: {}\n{}",
            call(p, "GET", "/v1/health", Some(KEY_A), &[], None)
                .await
                .body,
            gw.log()
        );

        let mut refused = None;
        for _ in 0..10 {
            let r = submit(KEY_BATCH).await;
            assert!(
                r.headers
                    .get("x-ratelimit-adaptive")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.contains("fraud-detector")),
                "says the limit is reduced: {:?}",
                r.headers
            );
            if r.status == 429 {
                refused = Some(r);
                break;
            }
        }
        let refused = refused.expect("the batch key hits its reduced limit");
        assert_error_shape(&refused, 429, "rate_limit_exceeded");
        assert_eq!(
            refused.headers["x-ratelimit-limit"], "30",
            "5% of 600 per minute"
        );
        for _ in 0..10 {
            let r = submit(KEY_A).await;
            assert_eq!(
                r.status, 202,
                "interactive requests keep flowing: {}",
                r.body
            );
            assert!(!r.headers.contains_key("x-ratelimit-adaptive"));
        }
    });
}

/// The OpenAPI document is served, lists every route the gateway answers (each documented
/// operation answers with one of its documented statuses), and the docs page renders it in
/// headless Chromium without console errors.
#[test]
fn the_openapi_document_is_true_and_renders() {
    run(180, async {
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        let mut gw = gateway(&stack, &topology);
        gw.wait_ready(Duration::from_secs(30)).await;
        let p = gw.http_port;
        let doc = call(p, "GET", "/v1/openapi.json", None, &[], None).await;
        assert_eq!(doc.status, 200);
        assert!(
            doc.body["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.1")),
            "{}",
            doc.body["openapi"]
        );
        let paths = doc.body["paths"].as_object().expect("paths");
        let mut operations = 0;
        for (path, item) in paths {
            for (method, op) in item.as_object().expect("path item") {
                operations += 1;
                let concrete = path.replace("{id}", "no-such-job");
                let body = (method == "post").then(|| "{}".to_string());
                let r = call(p, &method.to_uppercase(), &concrete, Some(KEY_A), &[], body).await;
                let documented: Vec<u16> = op["responses"]
                    .as_object()
                    .expect("responses")
                    .keys()
                    .filter_map(|k| k.parse().ok())
                    .collect();
                assert!(
                    documented.contains(&r.status),
                    "{method} {path} answered {} which it does not document ({documented:?}): {}",
                    r.status,
                    r.body
                );
            }
        }
        assert_eq!(
            operations,
            8,
            "every route is documented: {:?}",
            paths.keys().collect::<Vec<_>>()
        );
        let page = call(p, "GET", "/v1/docs", None, &[], None).await;
        assert_eq!(page.status, 200);
        let (dom, console) = tokio::task::block_in_place(|| {
            harness::chromium(&format!("http://127.0.0.1:{p}/v1/docs"), None)
        });
        assert!(dom.contains("<rapi-doc"), "{dom}");
        let out_dir = harness::repo_root().join("target/test-output");
        std::fs::create_dir_all(&out_dir).expect("output dir");
        let shot = out_dir.join("gateway-docs.png");
        tokio::task::block_in_place(|| {
            harness::chromium(&format!("http://127.0.0.1:{p}/v1/docs"), Some(&shot))
        });
        assert!(
            std::fs::read(&shot).is_ok_and(|png| png.len() > 10_000),
            "a screenshot of the docs page"
        );
        assert!(
            console
                .iter()
                .all(|l| !l.contains("Uncaught") && !l.contains("Error")),
            "console: {console:?}"
        );
    });
}

/// schemathesis (PyPI) against the OpenAPI document: no 5xx, and no response that breaks the
/// documented schema.
#[test]
fn schemathesis_finds_no_server_errors_or_schema_violations() {
    run(600, async {
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        let mut gw = spawn_gateway(&stack, &topology, |s| {
            s.gateway.max_wait_ms = 200;
            s.gateway.tenants.insert(
                "tenant-a".into(),
                TenantLimits {
                    requests_per_minute: 1_000_000,
                    burst: 100_000,
                },
            );
        });
        gw.wait_ready(Duration::from_secs(30)).await;
        let base = format!("http://127.0.0.1:{}", gw.http_port);
        let st = harness::repo_root().join(".venv-schemathesis/bin/schemathesis");
        assert!(
            st.is_file(),
            "schemathesis is not installed: run scripts/install.sh --tests"
        );
        let out = tokio::task::block_in_place(|| {
            harness::run_command(
                std::process::Command::new(st).args([
                    "run",
                    &format!("{base}/v1/openapi.json"),
                    "--url",
                    &base,
                    "-H",
                    &format!("Authorization: Bearer {KEY_A}"),
                    "--checks",
                    "not_a_server_error,response_schema_conformance",
                    "--max-examples",
                    "30",
                    "--seed",
                    "42",
                    "--request-timeout",
                    "20",
                ]),
                Duration::from_secs(540),
            )
        });
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "schemathesis found problems:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("{stdout}");
        assert!(stdout.contains("passed"), "{stdout}");
    });
}
