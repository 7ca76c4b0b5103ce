//! The `ferry` command line against a real controller (embedded store).

use std::process::{Command, Output};

use ferry_tests::bin;
use ferry_tests::controller::{Controller, ADMIN, READER};
use serde_json::Value;

fn ferry(c: &Controller, token: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(bin("ferry"));
    cmd.env("FERRY_ADDR", format!("http://{}", c.addr))
        .env_remove("FERRY_TOKEN")
        .env("HOME", "/nonexistent");
    if let Some(t) = token {
        cmd.env("FERRY_TOKEN", t);
    }
    cmd.args(args).output().expect("run ferry")
}

fn ok(c: &Controller, args: &[&str]) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let out = ferry(c, Some(ADMIN), &a);
    assert!(
        out.status.success(),
        "ferry {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

fn fails(c: &Controller, token: Option<&str>, args: &[&str], says: &str) {
    let out = ferry(c, token, args);
    assert_eq!(out.status.code(), Some(1), "ferry {args:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(says), "ferry {args:?}: {says:?} not in {err}");
}

#[test]
fn objects_and_plans_from_the_command_line() {
    let c = Controller::start(ferry_tests::controller::EMBEDDED);
    let dir = tempfile::tempdir().expect("tempdir");
    let obj = dir.path().join("web.json");
    std::fs::write(
        &obj,
        r#"{"name":"web","kind":{"type":"vm","vcpus":2,"memory_mib":2048,
            "disks":[{"volume":{"node":"n1","volume":"web0"}},
                     {"volume":{"node":"n1","volume":"iso"},"role":"cdrom"}],
            "nics":[{"switch":"vsw0"}]}}"#,
    )
    .expect("write");
    let plan = dir.path().join("plan.json");
    std::fs::write(
        &plan,
        r#"{"name":"hourly","objects":["web"],"retention":24,
            "schedule":{"every":"hourly","start":"2036-11-24T00:00","timezone":"UTC"}}"#,
    )
    .expect("write");
    let o = ok(
        &c,
        &[
            "objects",
            "create",
            "--allow-missing",
            obj.to_str().expect("utf8"),
        ],
    );
    assert_eq!(o["name"], "web");
    let p = ok(&c, &["plans", "create", plan.to_str().expect("utf8")]);
    assert!(p["next_run"].is_string(), "{p}");
    assert_eq!(ok(&c, &["plans", "pause", "hourly"])["paused"], true);
    assert_eq!(ok(&c, &["plans", "resume", "hourly"])["paused"], false);
    assert_eq!(ok(&c, &["plans", "list"]).as_array().map(Vec::len), Some(1));

    // Human output: a table, CD-ROM marked as not protected.
    let out = ferry(&c, Some(READER), &["objects", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("n1/web0") && text.contains("not protected"),
        "{text}"
    );
    let out = ferry(&c, Some(READER), &["plans", "get", "hourly"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("hourly") && text.contains("active"), "{text}");

    // A run with --wait follows it to the end: here its agent is absent, so it fails clearly.
    let out = ferry(&c, Some(ADMIN), &["plans", "run", "hourly", "--wait"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("failed") && err.contains("agent n1 is down"),
        "{err}"
    );
    // The per-object table came with it.
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("OBJECT") && table.contains("n1/") && table.contains("agent n1 is down"),
        "{table}"
    );
    let runs = ferry(&c, Some(READER), &["plans", "runs", "hourly"]);
    assert!(
        String::from_utf8_lossy(&runs.stdout).contains("failed: "),
        "{runs:?}"
    );
    let list = ok(&c, &["plans", "runs", "hourly"]);
    let id = list[0]["run"]["id"].as_str().expect("run id").to_string();
    let detail = ok(&c, &["plans", "run-show", "hourly", &id]);
    assert_eq!(
        detail["report"]["objects"][0]["status"], "failed",
        "{detail}"
    );
    fails(
        &c,
        Some(READER),
        &["plans", "run-show", "hourly", "nosuch"],
        "(404)",
    );
    fails(
        &c,
        Some(READER),
        &["plans", "run-show", "hourly", "../x"],
        "not a valid name",
    );
    assert_eq!(
        ok(&c, &["plans", "groups", "hourly"]),
        serde_json::json!([])
    );
    fails(
        &c,
        Some(ADMIN),
        &["plans", "rollback", "hourly", "nosuch"],
        "keeps no group named nosuch",
    );

    // Errors say what is wrong.
    fails(&c, None, &["plans", "list"], "no API token");
    fails(&c, Some("wrong"), &["plans", "list"], "unknown token (401)");
    fails(
        &c,
        Some(READER),
        &["plans", "pause", "hourly"],
        "read-only (403)",
    );
    fails(
        &c,
        Some(ADMIN),
        &["plans", "get", "../etc"],
        "not a valid name",
    );
    fails(
        &c,
        Some(ADMIN),
        &["objects", "create", "/nonexistent.json"],
        "read /nonexistent.json",
    );
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{").expect("write");
    fails(
        &c,
        Some(ADMIN),
        &["objects", "create", bad.to_str().expect("utf8")],
        "is not JSON",
    );
    std::fs::write(&bad, r#"{"name":"x","objects":[],"retention":1,"schedule":{"every":"daily","start":"2026-11-24T00:00"}}"#)
        .expect("write");
    fails(
        &c,
        Some(ADMIN),
        &["plans", "create", bad.to_str().expect("utf8")],
        "objects: a plan protects at least one object (400)",
    );
    fails(
        &c,
        Some(ADMIN),
        &["objects", "delete", "web"],
        "protected by plan hourly; remove it from the plan first (409)",
    );
    let mut down = Command::new(bin("ferry"));
    let out = down
        .env("FERRY_ADDR", "http://127.0.0.1:1")
        .env("FERRY_TOKEN", ADMIN)
        .args(["plans", "list"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the controller"));
}

/// The lines of `bin ARGS --help` under `section` (`Commands:`, `Arguments:`, `Options:`).
fn help_section(text: &str, section: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        if line == section {
            inside = true;
        } else if inside && !line.starts_with(' ') {
            inside = false;
        } else if inside {
            out.push(line.to_string());
        }
    }
    out
}

/// Every command and argument of every ferry binary says what it does (`--help`).
#[test]
fn every_command_and_argument_has_help() {
    let mut undocumented = Vec::new();
    for b in ["ferry", "ferry-controller", "ferry-agent"] {
        let mut todo = vec![Vec::<String>::new()];
        while let Some(path) = todo.pop() {
            let out = Command::new(bin(b))
                .args(&path)
                .arg("--help")
                .output()
                .expect("help");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(out.status.success(), "{b} {path:?} --help: {text}");
            for line in help_section(&text, "Commands:") {
                let mut words = line.split_whitespace();
                let Some(name) = words.next() else { continue };
                if name == "help" {
                    continue;
                }
                if words.next().is_none() {
                    undocumented.push(format!("{b} {} {name}", path.join(" ")));
                }
                let mut sub = path.clone();
                sub.push(name.to_string());
                todo.push(sub);
            }
            for section in ["Arguments:", "Options:"] {
                for line in help_section(&text, section) {
                    let t = line.trim();
                    // "<NAME>  what it is" or "--flag <V>  what it does": two spaces
                    // before the help; a continuation line starts with neither.
                    if !(t.starts_with('<') || t.starts_with('-') || t.starts_with('[')) {
                        continue;
                    }
                    let help = t.split_once("  ").map_or("", |(_, h)| h.trim());
                    if help.is_empty() || help.starts_with("[default") {
                        undocumented.push(format!("{b} {}: {t}", path.join(" ")));
                    }
                }
            }
        }
    }
    assert!(
        undocumented.is_empty(),
        "without help:\n{}",
        undocumented.join("\n")
    );
}
