//! The Avro schemas in `schemas/`: documented, and every change in their history
//! passes BACKWARD compatibility in a real registry.

use std::process::Command;

use harness::{Http, Stack, repo_root, run};
use serde_json::{Value, json};

fn schema_files() -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(repo_root().join("schemas"))
        .expect("schemas dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "avsc"))
        .collect();
    files.sort();
    files
}

/// Every named type has a namespace (own or inherited) and a doc; every field has a doc.
fn check_docs(v: &Value, path: &str, inherited_ns: bool, problems: &mut Vec<String>) {
    let Value::Object(map) = v else {
        if let Value::Array(items) = v {
            items
                .iter()
                .for_each(|i| check_docs(i, path, inherited_ns, problems));
        }
        return;
    };
    let ty = map.get("type").and_then(Value::as_str).unwrap_or("");
    let mut ns = inherited_ns;
    if matches!(ty, "record" | "enum" | "fixed") {
        ns |= map.contains_key("namespace");
        let name = map.get("name").and_then(Value::as_str).unwrap_or("?");
        if !ns {
            problems.push(format!("{path}: type {name} has no namespace"));
        }
        if ty != "fixed" && !map.contains_key("doc") {
            problems.push(format!("{path}: type {name} has no doc"));
        }
    }
    if let Some(Value::Array(fields)) = map.get("fields") {
        for f in fields {
            let name = f.get("name").and_then(Value::as_str).unwrap_or("?");
            if f.get("doc")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                problems.push(format!("{path}: field {name} has no doc"));
            }
            check_docs(&f["type"], &format!("{path}.{name}"), ns, problems);
        }
    }
    for key in ["type", "items", "values"] {
        if let Some(inner) = map.get(key).filter(|v| v.is_object() || v.is_array()) {
            check_docs(inner, path, ns, problems);
        }
    }
}

#[test]
fn every_schema_parses_and_is_documented() {
    let files = schema_files();
    assert!(files.len() >= 5, "{files:?}");
    let mut problems = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read");
        apache_avro::Schema::parse_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let json: Value = serde_json::from_str(&text).expect("json");
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        check_docs(&json, &name, false, &mut problems);
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// Versions of a file in git history, oldest first, then the working tree.
fn history(file: &std::path::Path) -> Vec<(String, String)> {
    let root = repo_root();
    let rel = file
        .strip_prefix(&root)
        .expect("in repo")
        .to_string_lossy()
        .to_string();
    let mut out = Vec::new();
    let log = Command::new("git")
        .current_dir(&root)
        .args(["log", "--format=%h", "--reverse", "--", &rel])
        .output();
    match log {
        Ok(o) if o.status.success() => {
            for rev in String::from_utf8_lossy(&o.stdout).lines() {
                let show = Command::new("git")
                    .current_dir(&root)
                    .args(["show", &format!("{rev}:{rel}")])
                    .output();
                if let Some(s) = show.ok().filter(|s| s.status.success()) {
                    out.push((
                        rev.to_string(),
                        String::from_utf8_lossy(&s.stdout).to_string(),
                    ));
                }
            }
        }
        _ => eprintln!("note: no git history for {rel}; checking the working tree only"),
    }
    out.push((
        "working tree".to_string(),
        std::fs::read_to_string(file).expect("read"),
    ));
    out
}

#[test]
fn schema_history_is_backward_compatible() {
    run(120, async {
        let stack = Stack::start().await;
        let http = Http::new(stack.registry_url());
        assert_eq!(
            http.get("/config").await.body["compatibilityLevel"],
            "BACKWARD"
        );
        for file in schema_files() {
            let subject = file
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .expect("stem");
            for (rev, text) in history(&file) {
                let r = http
                    .post(
                        &format!("/subjects/{subject}/versions"),
                        json!({ "schema": text }),
                    )
                    .await;
                assert_eq!(
                    r.status,
                    200,
                    "{} at {rev} breaks BACKWARD compatibility: {}",
                    file.display(),
                    r.body
                );
            }
        }
    });
}
