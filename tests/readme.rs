//! The README is executable: every `verdict` command of its Quick start, CLI and Operations
//! sections runs here exactly as written (from a working directory with the repository's
//! `topology/`, `schemas/` and `models/`, `verdict` on the PATH and `target/release/verdict`
//! both this build's binary), against a broker that has been used: 200,000 transactions
//! decided by the fraud-detector, dead letters, groups. Each command's exit code and what the
//! README says it prints are checked. A command the README shows and this test does not know
//! fails it, so an example cannot be added without being run; the few run elsewhere name the
//! test that runs them. Each command's output is kept in `target/readme-run/` (the README's
//! "what you see" blocks are copied from there).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use harness::{
    ServiceProcess, Stack, bin, local_deployment, repo_root, run, wait_committed_to_end,
    write_history,
};
use serde_json::Value;
use verdict_runtime::service::Deployment;

/// A command as the README shows it.
#[derive(Debug, Clone)]
struct Shown {
    line: usize,
    text: String,
}

/// The `verdict` commands of the README's ```sh blocks in the sections that a user follows
/// from the top: Quick start, CLI, Operations. Continuation lines (`\`) are joined and
/// trailing `# comments` dropped.
fn readme_commands(readme: &str) -> Vec<Shown> {
    let mut out = Vec::new();
    let mut section = "";
    let mut in_sh = false;
    let mut pending: Option<Shown> = None;
    for (i, line) in readme.lines().enumerate() {
        if let Some(title) = line.strip_prefix("## ") {
            section = title;
        }
        let followed = ["Quick start", "CLI", "Operations"]
            .iter()
            .any(|s| section.starts_with(s));
        if line.starts_with("```") {
            in_sh = line == "```sh" && followed;
            continue;
        }
        if !in_sh {
            continue;
        }
        let code = line.split(" #").next().unwrap_or("").trim_end();
        let (code, continues) = match code.strip_suffix('\\') {
            Some(c) => (c.trim_end(), true),
            None => (code, false),
        };
        match pending.as_mut() {
            Some(p) => {
                p.text.push(' ');
                p.text.push_str(code.trim());
            }
            None if code.starts_with("verdict ") || code.starts_with("target/release/verdict ") => {
                pending = Some(Shown {
                    line: i + 1,
                    text: code.trim().to_string(),
                });
            }
            None => continue,
        }
        if !continues && let Some(p) = pending.take() {
            out.push(p);
        }
    }
    out
}

/// The first ```jsonl block of the README: the `events.jsonl` its produce example sends.
fn readme_events(readme: &str) -> String {
    readme
        .split("```jsonl\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the README shows events.jsonl in a ```jsonl block")
        .to_string()
}

/// A closer look at a command's output (panics when it is wrong).
type Check = Box<dyn Fn(&Output)>;

/// What a README command must do.
enum Expect {
    /// Exit with `code`; stdout and stderr together say each of `says`; `check` looks closer.
    Runs {
        code: i32,
        says: Vec<String>,
        check: Option<Check>,
    },
    /// Follows until it printed `lines` lines, then is stopped with Ctrl-C (SIGINT): exits 0.
    FollowsThenCtrlC { lines: usize },
    /// Runs in another test (it needs a stack of its own on the README's ports).
    Elsewhere {
        test_file: &'static str,
        test: &'static str,
    },
}

fn runs(code: i32, says: &[&str]) -> Expect {
    Expect::Runs {
        code,
        says: says.iter().map(|s| (*s).to_string()).collect(),
        check: None,
    }
}

fn runs_and(code: i32, says: &[&str], check: impl Fn(&Output) + 'static) -> Expect {
    Expect::Runs {
        code,
        says: says.iter().map(|s| (*s).to_string()).collect(),
        check: Some(Box::new(check)),
    }
}

fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect()
}

/// How many dead letters the history holds.
const DEAD_LETTERS: usize = 60;
const HISTORY: usize = 200_000;
const PARTITIONS: usize = 6;

/// Each README command and what it must do on the used stack.
fn expectation(cmd: &str) -> Option<Expect> {
    let e = match cmd {
        "target/release/verdict stack status" | "target/release/verdict stack down" => {
            Expect::Elsewhere {
                test_file: "stack_cli.rs",
                test: "stack_up_apply_demo_status_down",
            }
        }
        "target/release/verdict kafka consumer-groups --describe --all-groups" => {
            runs(0, &["verdict-fraud-detector", "transactions", "LAG"])
        }
        "verdict topology check" => runs(0, &["topology/topology.toml: ok"]),
        "verdict topology apply" => runs(0, &["0 created", "0 drift"]),
        "verdict kafka consumer-groups --describe --group verdict-fraud-detector" => runs(
            0,
            &["verdict-fraud-detector", "CURRENT-OFFSET", "LOG-END-OFFSET"],
        ),
        "verdict kafka console-consumer --topic transactions.dlq --from-beginning --formatter-property print.headers=true --timeout-ms 5000" => {
            runs_and(0, &["verdict.errors.exception.class.name:Panic"], |out| {
                assert!(
                    !String::from_utf8_lossy(&out.stdout).contains("DEPRECATED"),
                    "no deprecation warning on stdout"
                );
            })
        }
        "verdict kafka metadata-quorum describe --status" => {
            runs(0, &["LeaderId", "CurrentVoters"])
        }
        "verdict kafka configs --describe --entity-type topics --entity-name transactions" => {
            runs(0, &["retention.ms=604800000"])
        }
        "verdict produce transactions -f events.jsonl -k account_id --tenant tenant-a -H origin=backfill --rate 500" => {
            runs(0, &["produced 2 record(s) to transactions, skipped 0"])
        }
        "verdict consume fraud-decisions -o -10 -e" => runs_and(0, &[], |out| {
            let lines = json_lines(out);
            assert_eq!(
                lines.len(),
                10 * PARTITIONS,
                "the last 10 of each partition"
            );
            for l in &lines {
                assert!(l["value"]["outcome"].is_string(), "a decoded decision: {l}");
            }
        }),
        "verdict consume fraud-decisions -o s@1764655200000 -o e@1764658800000" => {
            runs_and(0, &[], |out| {
                for l in json_lines(out) {
                    let ts = l["timestamp"].as_i64().unwrap_or(0);
                    assert!((1_764_655_200_000..1_764_658_800_000).contains(&ts), "{l}");
                }
            })
        }
        "verdict consume transactions.dlq -G my-reader" => Expect::FollowsThenCtrlC {
            lines: DEAD_LETTERS,
        },
        "verdict consume transactions.dlq -G my-reader -e" => {
            runs_and(0, &["consumed 0 record(s)"], |out| {
                assert!(
                    out.stdout.is_empty(),
                    "my-reader continues where it stopped"
                );
            })
        }
        "verdict consume fraud-decisions -o -5 -e --isolation read_uncommitted" => {
            runs_and(0, &[], |out| {
                assert_eq!(
                    json_lines(out).len(),
                    5 * PARTITIONS,
                    "the last 5 of each partition"
                );
            })
        }
        "verdict groups list" => runs(0, &["verdict-fraud-detector", "Classic", "my-reader"]),
        "verdict groups describe verdict-fraud-detector" => runs(
            0,
            &[
                "group verdict-fraud-detector type Classic state Stable members 1",
                "LAG-SECONDS",
            ],
        ),
        "verdict replay verdict-fraud-detector --to-datetime 2026-12-02T06:00:00.000Z --all-topics"
        | "verdict replay verdict-fraud-detector --by-duration PT1H --topic transactions:0,1" => {
            runs(0, &["NEW-OFFSET", "plan only", "nothing changed"])
        }
        "verdict replay verdict-fraud-detector --shift-by -500 --topic transactions --execute" => {
            runs(
                0,
                &[
                    "committed: group verdict-fraud-detector will re-process 3000 record(s) on 6 partition(s)",
                ],
            )
        }
        "verdict dlq list transactions.dlq" => runs(
            0,
            &[
                "Panic",
                "fraud-detector",
                &format!("{DEAD_LETTERS} dead letter(s) in transactions.dlq"),
            ],
        ),
        "verdict dlq show transactions.dlq -p 0 -o 42" => runs_and(0, &["Panic"], |out| {
            let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
            assert_eq!(v["offset"], 42);
            assert_eq!(v["value"]["tenant_id"], "tenant-broken", "decoded: {v}");
        }),
        "verdict dlq redrive transactions.dlq --class Panic --since 2026-12-02T06:00:00Z --dry-run" => {
            runs(
                0,
                &[&format!("would redrive {DEAD_LETTERS} of {DEAD_LETTERS}")],
            )
        }
        "verdict dlq redrive transactions.dlq --class Panic --since 2026-12-02T06:00:00Z" => runs(
            0,
            &[
                &format!("redrove {DEAD_LETTERS} of {DEAD_LETTERS}"),
                "remembered in transactions.dlq.redriven",
            ],
        ),
        "verdict shadow --service fraud-detector --name strict --from-offset 0 --to-offset 1000 --set service.review_threshold=0.3 --report shadow.md --json shadow.json" => {
            runs(
                0,
                &["6000 events of `transactions`", "How far to trust this"],
            )
        }
        _ => return None,
    };
    Some(e)
}

/// The working directory a user runs the README from: the repository's topology, schemas
/// and models, `target/release/verdict` and `verdict` on the PATH as this build's binary.
fn workdir(readme: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("dir");
    for d in ["topology", "schemas", "models"] {
        std::os::unix::fs::symlink(repo_root().join(d), dir.path().join(d)).expect("symlink");
    }
    let release = dir.path().join("target/release");
    std::fs::create_dir_all(&release).expect("dir");
    std::os::unix::fs::symlink(bin("verdict"), release.join("verdict")).expect("symlink");
    let path_dir = dir.path().join("bin");
    std::fs::create_dir_all(&path_dir).expect("dir");
    std::os::unix::fs::symlink(bin("verdict"), path_dir.join("verdict")).expect("symlink");
    std::fs::write(dir.path().join("events.jsonl"), readme_events(readme)).expect("events");
    (dir, path_dir)
}

fn shell(cmd: &str, dir: &Path, path_dir: &Path, stack: &Stack) -> Command {
    let path = format!(
        "{}:{}",
        path_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .env("PATH", path)
        .env("KAFKA_BOOTSTRAP_SERVERS", stack.broker.bootstrap())
        .env("VERDICT_SCHEMA_REGISTRY_URL", stack.registry_url())
        .env_remove("RUST_LOG");
    c
}

/// Runs a following command until it printed `lines` lines, then stops it with SIGINT.
fn follow_then_ctrl_c(mut cmd: Command, lines: usize) -> Output {
    // `exec` so that the signal reaches verdict itself, not the shell.
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut printed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while printed.len() < lines && Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            printed.push(l);
        }
    }
    assert_eq!(printed.len(), lines, "printed before Ctrl-C");
    // Give it a moment to print anything beyond what was expected.
    std::thread::sleep(Duration::from_secs(1));
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().expect("wait");
    printed.extend(rx.try_iter());
    Output {
        status: out.status,
        stdout: printed.join("\n").into_bytes(),
        stderr: out.stderr,
    }
}

fn deployment(stack: &Stack) -> Deployment {
    Deployment {
        kafka: stack.broker.kafka(),
        registry_url: stack.registry_url(),
        registry_user: None,
        registry_ca_file: None,
        ..local_deployment(None)
    }
}

fn fraud_detector(stack: &Stack) -> ServiceProcess {
    ServiceProcess::spawn::<fraud_detector::Spec>(&deployment(stack), |s| {
        // A clean stop empties the group at once (replay --execute follows it).
        s.engine.group_instance_id = String::new();
        s.service.fail_first_attempts = u32::MAX;
        s.service.fail_tenant = "tenant-broken".into();
        s.service.fail_mode = fraud_detector::config::FailMode::Panic;
    })
}

#[test]
fn every_command_of_the_readme_runs_as_written_on_a_used_stack() {
    run(1500, async {
        let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README");
        let commands = readme_commands(&readme);
        assert!(commands.len() >= 20, "found {commands:?}");
        let unknown: Vec<&Shown> = commands
            .iter()
            .filter(|c| expectation(&c.text).is_none())
            .collect();
        assert!(
            unknown.is_empty(),
            "README commands this test does not know (add what they must do): {unknown:#?}"
        );

        // A stack used for a while: the README's topic names on a broker of this test's own.
        let stack = Stack::start_own().await;
        let kafka = stack.broker.kafka();
        let registry =
            verdict_runtime::registry::RegistryClient::new(stack.registry_url()).expect("client");
        verdict_cli::topology_cmd::apply(
            &repo_root().join("topology/topology.toml"),
            None,
            &kafka,
            &registry,
        )
        .await
        .expect("apply");
        let began = Instant::now();
        write_history(&stack, "transactions", HISTORY).await;
        let mut fraud = fraud_detector(&stack);
        fraud.wait_ready(Duration::from_secs(60)).await;
        let mut rng = rand::rng();
        let producer = verdict_cli::records::AvroProducer::new(&kafka, stack.registry_url())
            .expect("producer");
        for _ in 0..DEAD_LETTERS {
            let (key, value) = verdict_cli::records::sample_transaction(&mut rng, "tenant-broken");
            producer
                .send("transactions", &key, &value)
                .await
                .expect("send");
        }
        wait_committed_to_end(
            &kafka,
            "verdict-fraud-detector",
            "transactions",
            Duration::from_secs(900),
        )
        .await;
        eprintln!(
            "history: {HISTORY} transactions decided and {DEAD_LETTERS} dead letters in {:?}",
            began.elapsed()
        );

        let (dir, path_dir) = workdir(&readme);
        let outputs = repo_root().join("target/readme-run");
        let _ = std::fs::remove_dir_all(&outputs);
        std::fs::create_dir_all(&outputs).expect("dir");
        let mut elsewhere: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (n, c) in commands.iter().enumerate() {
            let expect = expectation(&c.text).expect("known");
            // The README: stop the service before replay --execute (its group must be empty).
            if c.text.contains("--execute") {
                fraud.stop_cleanly();
                harness::wait_empty_group(&kafka, "verdict-fraud-detector").await;
            }
            let cmd = shell(&format!("exec {}", c.text), dir.path(), &path_dir, &stack);
            let out = match &expect {
                Expect::Elsewhere { test_file, test } => {
                    elsewhere
                        .entry(test_file)
                        .or_default()
                        .push(test.to_string());
                    continue;
                }
                Expect::Runs { .. } => harness::run_command(&mut { cmd }, Duration::from_secs(600)),
                Expect::FollowsThenCtrlC { lines } => {
                    tokio::task::block_in_place(|| follow_then_ctrl_c(cmd, *lines))
                }
            };
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            std::fs::write(
                outputs.join(format!("{n:02}.txt")),
                format!("$ {}\n{all}\n[exit {:?}]\n", c.text, out.status.code()),
            )
            .expect("write output");
            let at = format!("README line {}: `{}`", c.line, c.text);
            match expect {
                Expect::Runs { code, says, check } => {
                    assert_eq!(out.status.code(), Some(code), "{at}:\n{all}");
                    for s in &says {
                        assert!(all.contains(s.as_str()), "{at} should say {s:?}:\n{all}");
                    }
                    if let Some(check) = check {
                        check(&out);
                    }
                }
                Expect::FollowsThenCtrlC { .. } => {
                    assert!(out.status.success(), "{at}: {:?}\n{all}", out.status);
                }
                Expect::Elsewhere { .. } => {}
            }
        }
        // What runs elsewhere does run there.
        for (file, tests) in elsewhere {
            let source =
                std::fs::read_to_string(repo_root().join("tests").join(file)).expect("test file");
            for t in tests {
                assert!(
                    source.contains(&format!("fn {t}()")),
                    "tests/{file} has no test {t}"
                );
            }
        }
    });
}

#[test]
fn readme_commands_are_found_whole() {
    let text = "## CLI\n```sh\nverdict a \\\n  --b c   # note\nbash x\n```\n## Other\n```sh\nverdict d\n```\n";
    let found = readme_commands(text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].text, "verdict a --b c");
    assert_eq!(found[0].line, 3);
}
