//! The README's main path through the real CLI: `verdict stack up`, `topology
//! apply`, `demo`, `stack status`, `stack down`, with its own data dir and ports.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use harness::{bin, free_port, repo_root, run_command};

struct StackGuard<'a> {
    dir: &'a Path,
}

impl Drop for StackGuard<'_> {
    fn drop(&mut self) {
        // Stops by the pids in the data dir, whatever happened in the test.
        let _ = verdict(self.dir, &["stack", "down"], &[]);
    }
}

fn verdict(dir: &Path, args: &[&str], extra: &[&str]) -> Output {
    let mut cmd = Command::new(bin("verdict"));
    cmd.current_dir(repo_root())
        .env_remove("KAFKA_BOOTSTRAP_SERVERS")
        .env_remove("VERDICT_SCHEMA_REGISTRY_URL")
        .env("VERDICT_DATA_DIR", dir)
        .args(args)
        .args(extra);
    run_command(&mut cmd, Duration::from_secs(90))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn stack_up_apply_demo_status_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (bp, rp, sp) = (
        free_port().to_string(),
        free_port().to_string(),
        free_port().to_string(),
    );
    let ports = [
        "--broker-port",
        bp.as_str(),
        "--registry-port",
        rp.as_str(),
        "--services-port",
        sp.as_str(),
    ];
    let guard = StackGuard { dir: dir.path() };
    let bootstrap = format!("127.0.0.1:{bp}");
    let registry = format!("http://127.0.0.1:{rp}");

    let up = verdict(dir.path(), &["stack", "up"], &ports);
    assert!(up.status.success(), "{}", text(&up));
    assert!(
        text(&up).contains(&format!("broker: answers metadata requests at {bootstrap}")),
        "{}",
        text(&up)
    );
    for service in ["fraud-detector", "model-server", "document-analyzer"] {
        assert!(
            text(&up).contains(&format!("{service}: ready")),
            "{}",
            text(&up)
        );
    }
    let pids: Vec<u32> = [
        "broker.pid",
        "schema-registry.pid",
        "fraud-detector.pid",
        "model-server.pid",
        "document-analyzer.pid",
    ]
    .iter()
    .map(|f| {
        std::fs::read_to_string(dir.path().join(f))
            .expect("pid file")
            .trim()
            .parse()
            .expect("pid")
    })
    .collect();
    assert!(
        dir.path().join("broker/nisshi.db").exists(),
        "SQLite store in the data dir"
    );

    let again = verdict(dir.path(), &["stack", "up"], &ports);
    assert!(text(&again).contains("already running"), "{}", text(&again));

    let status = verdict(dir.path(), &["stack", "status"], &ports);
    assert!(status.status.success(), "{}", text(&status));
    assert_eq!(
        text(&status).matches("answering").count(),
        2,
        "{}",
        text(&status)
    );

    let endpoints = [
        "--bootstrap-servers",
        bootstrap.as_str(),
        "--registry-url",
        registry.as_str(),
    ];
    let apply = verdict(dir.path(), &["topology", "apply"], &endpoints);
    assert!(apply.status.success(), "{}", text(&apply));
    let demo = verdict(dir.path(), &["demo", "--count", "5"], &endpoints);
    assert!(demo.status.success(), "{}", text(&demo));
    assert!(
        text(&demo).contains("round trip: 5/5 events read back and decoded identically"),
        "{}",
        text(&demo)
    );

    let down = verdict(dir.path(), &["stack", "down"], &ports);
    assert!(down.status.success(), "{}", text(&down));
    for pid in pids {
        assert!(!verdict_cli::stack::alive(pid), "pid {pid} stopped");
    }
    let status = verdict(dir.path(), &["stack", "status"], &ports);
    assert_eq!(status.status.code(), Some(1), "{}", text(&status));
    assert!(text(&status).contains("DOWN"), "{}", text(&status));
    drop(guard);
}
