//! docker-compose.yml stays honest without a Docker engine: every service binary of
//! the workspace has an entry, ports bind to loopback, long-running services have
//! healthchecks, and Compose itself validates the file. Also: scripts/demo.sh builds every
//! declared service.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use harness::{repo_root, run_command};
use serde_yaml::Value;

/// Binary names of every crate under services/.
fn workspace_binaries() -> BTreeSet<String> {
    let mut bins = BTreeSet::new();
    for entry in std::fs::read_dir(repo_root().join("services"))
        .expect("services")
        .filter_map(Result::ok)
    {
        let manifest = entry.path().join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        let doc: toml::Table = toml::from_str(&text).expect("manifest");
        match doc.get("bin").and_then(toml::Value::as_array) {
            Some(list) => bins.extend(
                list.iter()
                    .filter_map(|b| b.get("name")?.as_str().map(String::from)),
            ),
            None if entry.path().join("src/main.rs").exists() => {
                bins.extend(doc["package"]["name"].as_str().map(String::from));
            }
            None => {}
        }
    }
    bins
}

#[test]
fn every_binary_has_a_service_and_the_file_is_sound() {
    let text =
        std::fs::read_to_string(repo_root().join("docker-compose.yml")).expect("compose file");
    let doc: Value = serde_yaml::from_str(&text).expect("valid YAML");
    let services = doc["services"].as_mapping().expect("services");
    let mut commanded = BTreeSet::new();
    for (name, svc) in services {
        let name = name.as_str().unwrap_or("?");
        if let Some(first) = svc["command"]
            .as_sequence()
            .and_then(|c| c.first())
            .and_then(Value::as_str)
        {
            commanded.insert(first.to_string());
        }
        for port in svc["ports"].as_sequence().into_iter().flatten() {
            let p = port.as_str().unwrap_or("");
            assert!(
                p.starts_with("127.0.0.1:"),
                "{name}: port {p} must bind to 127.0.0.1"
            );
        }
        let one_shot = svc["restart"].as_str() == Some("no");
        assert!(
            one_shot || !svc["healthcheck"].is_null(),
            "{name} needs a healthcheck"
        );
    }
    let bins = workspace_binaries();
    assert!(
        bins.contains("verdict") && bins.contains("verdict-schema-registry"),
        "{bins:?}"
    );
    let missing: Vec<_> = bins.difference(&commanded).collect();
    assert!(
        missing.is_empty(),
        "binaries without a compose service: {missing:?}"
    );
    // Every declared pipeline service (services/verdict-cli/src/services.rs) runs in compose.
    for declared in verdict_cli::services::SERVICES {
        assert!(
            services.contains_key(declared.name),
            "declared service {} has no compose service of that name",
            declared.name
        );
    }
}

#[test]
fn compose_validates_the_file() {
    // Debian's docker-compose 1.29 (installed by scripts/install.sh) validates
    // without an engine; the v2 plugin is used where that is what exists.
    let file = repo_root().join("docker-compose.yml");
    let mut cmd = if Command::new("docker-compose")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        let mut c = Command::new("docker-compose");
        c.arg("-f").arg(&file);
        c
    } else if Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        let mut c = Command::new("docker");
        c.arg("compose").arg("-f").arg(&file);
        c
    } else {
        panic!(
            "neither docker-compose nor the docker compose plugin is installed: run scripts/install.sh"
        );
    };
    let out = run_command(cmd.args(["config", "-q"]), Duration::from_secs(60));
    assert!(
        out.status.success(),
        "compose rejects the file: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn compose_runs_the_kafka_version_of_the_local_stack() {
    let text =
        std::fs::read_to_string(repo_root().join("docker-compose.yml")).expect("compose file");
    let doc: Value = serde_yaml::from_str(&text).expect("valid YAML");
    let image = doc["services"]["kafka"]["image"]
        .as_str()
        .expect("kafka image");
    assert_eq!(
        image,
        format!("apache/kafka:{}", verdict_cli::broker::kafka_version()),
        "docker-compose.yml and scripts/kafka/pom.xml name the same Kafka"
    );
}

/// `scripts/demo.sh` builds only what the main job runs: it must build every declared service,
/// or `verdict stack up` cannot start it on a fresh clone.
#[test]
fn the_demo_builds_every_declared_service() {
    let demo =
        std::fs::read_to_string(harness::repo_root().join("scripts/demo.sh")).expect("demo.sh");
    for declared in verdict_cli::services::SERVICES {
        assert!(
            demo.contains(&format!("-p {}", declared.name)),
            "scripts/demo.sh does not build {} (add `-p {}` to its cargo build)",
            declared.name,
            declared.name
        );
    }
}
