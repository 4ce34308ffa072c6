//! gateway: verdict's HTTP front door. Clients submit transactions and documents and get a
//! job id at once, then poll or wait for the decision; keys are scoped and tenants limited.
//! Kafka stays the backbone: the gateway produces to the input topics and every instance
//! reads the decision, review and dead-letter topics itself, so any instance answers for any
//! job.

pub mod api;
pub mod auth;
pub mod config;
pub mod error;
pub mod jobs;
pub mod limits;
pub mod openapi;
pub mod pipelines;
pub mod webhooks;

use std::sync::Arc;

use config::GatewaySettings;
use verdict_runtime::acls::Acl;
use verdict_runtime::topology::Topology;

/// How the stack, the tests and the loadtest run the gateway.
pub struct Spec;

impl verdict_runtime::service::ServiceSpec for Spec {
    const NAME: &'static str = "gateway";
    type Settings = GatewaySettings;

    fn settings(d: &verdict_runtime::service::Deployment) -> Self::Settings {
        let mut s = GatewaySettings {
            kafka: d.kafka.clone(),
            ..GatewaySettings::default()
        };
        s.registry = verdict_runtime::service::RegistrySection::for_deployment(d);
        s.topology.file = d.topology.clone();
        s.http.listen = d.http_listen;
        s.http.admin_listen = d.admin_listen;
        s
    }

    /// With the default `gateway.resolutions_topic`; none for a topology it cannot serve.
    fn acls(topology: &Topology, principal: &str) -> Vec<Acl> {
        acls(
            topology,
            &config::Gateway::default().resolutions_topic,
            principal,
        )
        .unwrap_or_default()
    }
}

/// The gateway's ACLs, running as `principal`: WRITE on what it produces (submissions to the
/// pipelines' inputs, review resolutions, their audit records) and DESCRIBE_CONFIGS there (a
/// record is checked against `max.message.bytes`); READ on every topic its job store follows,
/// read by its readers' throwaway groups; DESCRIBE on the pipelines' groups (their lag drives
/// the adaptive limits and `/v1/health`). Sorted, without duplicates.
pub fn acls(
    topology: &Topology,
    resolutions_topic: &str,
    principal: &str,
) -> Result<Vec<Acl>, String> {
    use verdict_runtime::acls::{Operation, ResourceType, allow, reader_groups};
    let (transactions, documents, followed) = plan(topology, resolutions_topic)?;
    let resolutions = resolutions_topic.to_string();
    let mut acls = vec![reader_groups(principal)];
    let written = [&transactions, &documents]
        .into_iter()
        .flat_map(|r| {
            [
                (&r.topic, "submissions"),
                (&r.audit, "audit records of reviews"),
            ]
        })
        .chain(std::iter::once((&resolutions, "review resolutions")));
    for (topic, why) in written {
        acls.push(allow(
            principal,
            ResourceType::Topic,
            topic,
            Operation::Write,
            why,
        ));
        acls.push(allow(
            principal,
            ResourceType::Topic,
            topic,
            Operation::DescribeConfigs,
            "its max.message.bytes bounds a record",
        ));
    }
    for f in &followed {
        acls.push(allow(
            principal,
            ResourceType::Topic,
            &f.topic,
            Operation::Read,
            "how jobs end (the job store)",
        ));
    }
    for r in [&transactions, &documents] {
        acls.push(allow(
            principal,
            ResourceType::Group,
            &r.group,
            Operation::Describe,
            "the pipeline's lag (adaptive limits, /v1/health)",
        ));
    }
    acls.sort();
    acls.dedup_by(|a, b| {
        (a.resource_type, &a.resource, a.operation) == (b.resource_type, &b.resource, b.operation)
    });
    Ok(acls)
}

/// The routes and the topics the job store follows, from the topology: submissions go to the
/// fraud-detector's and the document-analyzer's inputs; their decisions, reviews and dead
/// letters tell how jobs end.
pub fn plan(
    topology: &Topology,
    resolutions_topic: &str,
) -> Result<(api::Route, api::Route, Vec<jobs::Followed>), String> {
    if !topology.topics.contains_key(resolutions_topic) {
        return Err(format!(
            "gateway.resolutions_topic: topic {resolutions_topic} is not in the topology"
        ));
    }
    let mut followed = vec![jobs::Followed {
        topic: resolutions_topic.to_string(),
        role: jobs::Role::Resolution,
        kind: "review".into(),
    }];
    let mut route = |service: &str, kind: &'static str, key_field: &'static str, scope| {
        let s = topology
            .service(service)
            .ok_or_else(|| format!("topology.file has no [services.{service}]"))?;
        followed.push(jobs::Followed {
            topic: s.input.clone(),
            role: jobs::Role::Input,
            kind: kind.into(),
        });
        for (role_name, role) in [
            ("decisions", jobs::Role::Decisions),
            ("review", jobs::Role::Review),
        ] {
            if let Some(t) = s.outputs.get(role_name)
                && !followed.iter().any(|f| f.topic == *t)
            {
                followed.push(jobs::Followed {
                    topic: t.clone(),
                    role,
                    kind: kind.into(),
                });
            }
        }
        followed.push(jobs::Followed {
            topic: s.dead_letter_topic.clone(),
            role: jobs::Role::DeadLetters,
            kind: kind.into(),
        });
        let audit = s
            .outputs
            .get("audit")
            .cloned()
            .ok_or_else(|| format!("[services.{service}] has no audit output"))?;
        Ok::<_, String>(api::Route {
            kind,
            topic: s.input.clone(),
            key_field,
            scope,
            audit,
            service: service.to_string(),
            group: s.consumer_group.clone(),
        })
    };
    let transactions = route(
        "fraud-detector",
        "transaction",
        "account_id",
        auth::Scope::TransactionsWrite,
    )?;
    let documents = route(
        "document-analyzer",
        "document",
        "document_id",
        auth::Scope::DocumentsWrite,
    )?;
    Ok((transactions, documents, followed))
}

/// Everything the gateway serves with, from its settings.
pub fn build(settings: &GatewaySettings) -> Result<(Arc<api::App>, Vec<jobs::Followed>), String> {
    let topology = Topology::load(&settings.topology.file, None).map_err(|e| e.to_string())?;
    let (transactions, documents, followed) = plan(&topology, &settings.gateway.resolutions_topic)?;
    let g = &settings.gateway;
    // Signed in once: the password is read here, not for each client.
    let registry = settings.registry.endpoint();
    let registry_http = registry
        .client(std::time::Duration::from_secs(2))
        .map_err(|e| e.to_string())?;
    let app = api::App {
        usage: prometheus_client::metrics::family::Family::default(),
        settings: g.clone(),
        kafka: settings.kafka.clone(),
        registry: registry.clone(),
        producer: settings.kafka.producer().map_err(|e| e.to_string())?,
        record_limits: verdict_runtime::record_limit::RecordLimits::new(&settings.kafka)
            .map_err(|e| e.to_string())?,
        serde: verdict_runtime::serde::AvroSerde::with_timeout(
            registry,
            std::time::Duration::from_millis(settings.registry.timeout_ms),
        ),
        store: jobs::JobStore::new(
            g.job_store_bytes,
            i64::try_from(g.job_ttl_ms).unwrap_or(i64::MAX),
        ),
        limiter: limits::Limiter::default(),
        http: registry_http,
        webhook_http: g.webhooks.client()?,
        pipelines: Arc::default(),
        probe: tokio::sync::Mutex::new(None),
        streams: Arc::default(),
        sending: Arc::default(),
        transactions,
        documents,
    };
    Ok((Arc::new(app), followed))
}
