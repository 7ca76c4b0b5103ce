//! The controller's HTTP API, as a real `ferry-controller serve` process, on the embedded store
//! and on a real etcd: objects and plans, every kind of bad input (a 4xx with a JSON error
//! that says what is wrong, never a 500), and tokens (none, unknown, read-only, admin).

use std::process::Command;

use ferry_tests::controller::{wait_for, Controller, ADMIN, READER};
use ferry_tests::{bin, Etcd};
use serde_json::{json, Value};

/// A 4xx whose JSON error mentions `says`.
fn refused(r: (u16, Value), status: u16, says: &str) {
    assert_eq!(r.0, status, "{}", r.1);
    let msg = r.1["error"]["message"].as_str().unwrap_or_default();
    assert!(
        !r.1["error"]["code"].as_str().unwrap_or_default().is_empty(),
        "{}",
        r.1
    );
    assert!(msg.contains(says), "expected {says:?} in {msg:?}");
}

fn volume(node: &str, v: &str) -> Value {
    json!({"node": node, "volume": v})
}

fn suite(c: &Controller) {
    // Health and the OpenAPI document need no token; everything else does.
    let (code, h) = c.call("GET", "/healthz", None, None);
    assert_eq!((code, &h["ok"]), (200, &json!(true)), "{h}");
    let (code, doc) = c.call("GET", "/v1/openapi.json", None, None);
    assert_eq!(code, 200);
    for p in [
        "/v1/objects",
        "/v1/objects/{name}",
        "/v1/plans",
        "/v1/plans/{name}",
        "/v1/plans/{name}/pause",
        "/v1/plans/{name}/resume",
    ] {
        assert!(doc["paths"][p].is_object(), "{p} undocumented");
    }
    refused(c.call("GET", "/v1/plans", None, None), 401, "missing");
    refused(
        c.call("GET", "/v1/plans", Some("guess"), None),
        401,
        "unknown token",
    );
    let obj =
        json!({"name": "db", "kind": {"type": "virtual_volume", "volume": volume("n1", "db0")}});
    let body = serde_json::to_vec(&obj).expect("json");
    refused(
        c.call("POST", "/v1/objects", Some(READER), Some(&body)),
        403,
        "read-only",
    );
    assert_eq!(c.call("GET", "/v1/objects", Some(READER), None).0, 200);

    // Objects.
    assert_eq!(
        c.admin("POST", "/v1/objects?allow_missing=true", Some(obj.clone()))
            .0,
        201
    );
    refused(
        c.admin("POST", "/v1/objects?allow_missing=true", Some(obj.clone())),
        409,
        "exists",
    );
    let vm = json!({"name": "web", "kind": {"type": "vm", "vcpus": 2, "memory_mib": 4096,
        "disks": [{"volume": volume("n1", "web0")}, {"volume": volume("n2", "iso"), "role": "cdrom"}],
        "nics": [{"switch": "vsw-prod"}]}});
    assert_eq!(
        c.admin("POST", "/v1/objects?allow_missing=true", Some(vm))
            .0,
        201
    );
    let (code, got) = c.call("GET", "/v1/objects/db", Some(READER), None);
    assert_eq!((code, got), (200, obj.clone()));
    refused(
        c.admin("GET", "/v1/objects/nope", None),
        404,
        "no object named nope",
    );
    refused(c.admin("GET", "/v1/objects/..", None), 400, "object name");
    // Bad objects: each kind of mistake, each named.
    let bad_objects = [
        (
            json!({"name": "../x", "kind": {"type": "virtual_volume", "volume": volume("n1", "v")}}),
            "name",
        ),
        (
            json!({"name": "l", "kind": {"type": "iscsi_lun", "target_iqn": "nonsense", "lun": 1, "volume": volume("n1", "v")}}),
            "kind.target_iqn",
        ),
        (
            json!({"name": "l", "kind": {"type": "iscsi_lun", "target_iqn": "iqn.2026-11.com.example", "lun": 99999, "volume": volume("n1", "v")}}),
            "kind.lun",
        ),
        (
            json!({"name": "f", "kind": {"type": "nfs_file", "export": "/e", "path": "../../etc/passwd", "volume": volume("n1", "v")}}),
            "kind.path",
        ),
        (
            json!({"name": "m", "kind": {"type": "vm", "vcpus": 0, "memory_mib": 1024, "disks": [{"volume": volume("n1", "v")}]}}),
            "kind.vcpus",
        ),
        (
            json!({"name": "m", "kind": {"type": "vm", "vcpus": 1, "memory_mib": 1024, "disks": [{"volume": volume("n1", "v"), "role": "cdrom"}]}}),
            "kind.disks",
        ),
        (
            json!({"name": "t", "kind": {"type": "tape", "volume": volume("n1", "v")}}),
            "unknown variant",
        ),
        (
            json!({"name": "u", "kind": {"type": "virtual_volume", "volume": volume("n1", "v")}, "colour": "red"}),
            "unknown field",
        ),
    ];
    for (o, says) in bad_objects {
        refused(c.admin("POST", "/v1/objects", Some(o)), 400, says);
    }
    refused(
        c.call("POST", "/v1/objects", Some(ADMIN), Some(b"{not json")),
        400,
        "request body",
    );
    refused(
        c.call("POST", "/v1/objects", Some(ADMIN), Some(b"")),
        400,
        "request body",
    );
    let huge = vec![b' '; 2 << 20];
    refused(
        c.call("POST", "/v1/objects", Some(ADMIN), Some(&huge)),
        413,
        "request body",
    );
    refused(
        c.admin(
            "PUT",
            "/v1/objects/db",
            Some(json!({"name": "other", "kind": obj["kind"]})),
        ),
        400,
        "the body names other",
    );
    refused(
        c.admin("DELETE", "/v1/nowhere", None),
        404,
        "no such endpoint",
    );

    // Plans.
    let plan = json!({"name": "nightly", "objects": ["db", "web"],
        "schedule": {"every": "daily", "start": "2026-11-24T02:30", "timezone": "Europe/Berlin"},
        "retention": 7});
    let (code, p) = c.admin("POST", "/v1/plans", Some(plan.clone()));
    assert_eq!(code, 201, "{p}");
    assert_eq!(p["paused"], false);
    assert!(
        p["next_run"].as_str().is_some_and(|t| t.ends_with("Z")),
        "{p}"
    );
    refused(
        c.admin("POST", "/v1/plans", Some(plan.clone())),
        409,
        "exists",
    );
    let with = |field: &str, v: Value| {
        let mut p = plan.clone();
        p[field] = v;
        p
    };
    let bad_plans = [
        (
            with("objects", json!([])),
            "objects: a plan protects at least one object",
        ),
        (
            with("objects", json!(["db", "ghost"])),
            "objects[1]: no object named ghost",
        ),
        (
            with("objects", json!(["db", "db"])),
            "objects[1]: db is listed twice",
        ),
        (with("retention", json!(0)), "retention"),
        (with("retention", json!(-1)), "request body"),
        (
            with(
                "schedule",
                json!({"every": "yearly", "start": "2026-11-24T02:30"}),
            ),
            "schedule.every",
        ),
        (
            with("schedule", json!({"every": "daily", "start": "soon"})),
            "schedule.start",
        ),
        (
            with(
                "schedule",
                json!({"every": "daily", "start": "2026-11-24T02:30", "timezone": "Moon/Base"}),
            ),
            "schedule.timezone",
        ),
        (
            with(
                "schedule",
                json!({"every": "daily", "start": "2026-11-24T02:30", "end": "2026-01-01T00:00"}),
            ),
            "schedule.end",
        ),
        (
            with("hooks", json!({"timeout_secs": 0})),
            "hooks.timeout_secs",
        ),
    ];
    for (p, says) in bad_plans {
        refused(c.admin("POST", "/v1/plans", Some(p)), 400, says);
    }
    // Update, pause, resume.
    let (code, p) = c.admin(
        "PUT",
        "/v1/plans/nightly",
        Some(with("retention", json!(14))),
    );
    assert_eq!((code, &p["spec"]["retention"]), (200, &json!(14)));
    refused(
        c.admin("PUT", "/v1/plans/ghost", Some(with("name", json!("ghost")))),
        404,
        "no plan named ghost",
    );
    let (code, p) = c.admin("POST", "/v1/plans/nightly/pause", None);
    assert_eq!(
        (code, &p["paused"], &p["next_run"]),
        (200, &json!(true), &Value::Null)
    );
    refused(
        c.call("POST", "/v1/plans/nightly/resume", Some(READER), None),
        403,
        "read-only",
    );
    let (code, p) = c.admin("POST", "/v1/plans/nightly/resume", None);
    assert_eq!((code, &p["paused"]), (200, &json!(false)));
    let (code, list) = c.call("GET", "/v1/plans", Some(READER), None);
    assert_eq!((code, list.as_array().map(Vec::len)), (200, Some(1)));
    // An object in use cannot go; a plan can, then the object can.
    refused(
        c.admin("DELETE", "/v1/objects/db", None),
        409,
        "protected by plan nightly",
    );
    // (Its first slot ran at creation: a plan is deleted once nothing of it is in progress.)
    let mut deleted = (0, Value::Null);
    wait_for("the plan is deleted", 30, || {
        deleted = c.admin("DELETE", "/v1/plans/nightly", None);
        if deleted.0 == 409 {
            let msg = deleted.1["error"]["message"].as_str().unwrap_or_default();
            assert!(msg.contains("is in progress"), "{msg}");
        }
        deleted.0 != 409
    });
    assert_eq!(deleted.0, 204, "{}", deleted.1);
    refused(
        c.admin("DELETE", "/v1/plans/nightly", None),
        404,
        "no plan named nightly",
    );
    assert_eq!(c.admin("DELETE", "/v1/objects/db", None).0, 204);
}

#[test]
fn api_on_the_embedded_store() {
    let c = Controller::start(ferry_tests::controller::EMBEDDED);
    suite(&c);
}

#[test]
fn api_on_etcd() {
    let Some(etcd) = Etcd::start() else { return };
    let c = Controller::start(&format!(
        "[store]\nkind = \"etcd\"\nendpoints = [\"{}\"]",
        etcd.endpoint
    ));
    suite(&c);
    // The store gone: a clear 503, not a hang or a 500.
    drop(etcd);
    let (code, v) = c.call("GET", "/v1/plans", Some(READER), None);
    assert_eq!(code, 503, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("state store"));
}

#[test]
fn bad_configurations_are_refused_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (cfg, says) in [
        ("listen = \"127.0.0.1:0\"\n[store]\nkind = \"embedded\"\npath = \"/tmp/x.redb\"\n", "no [[tokens]]"),
        ("listen = \"127.0.0.1:0\"\n[store]\nkind = \"floppy\"\n", "floppy"),
        ("listen = \"127.0.0.1:0\"\nsecret = 1\n", "secret"),
        ("listen = \"127.0.0.1:0\"\n[store]\nkind = \"embedded\"\npath = \"/tmp/x.redb\"\n[[tokens]]\nname = \"a\"\nrole = \"admin\"\nblake3 = \"xyz\"\n", "64 hex digits"),
    ] {
        let p = dir.path().join("c.toml");
        std::fs::write(&p, cfg).expect("write");
        let out = Command::new(bin("ferry-controller"))
            .args(["serve", "--config"])
            .arg(&p)
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(1), "{cfg}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{says:?} not in {err}");
    }
    let out = Command::new(bin("ferry-controller"))
        .args(["--json", "token"])
        .output()
        .expect("run");
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    let token = v["token"].as_str().expect("token");
    assert_eq!(
        blake3::hash(token.as_bytes()).to_hex().as_str(),
        v["blake3"].as_str().expect("hash")
    );
}

/// Waits until `f` holds (the scheduler works in the background), at most 10 s.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = std::time::Instant::now();
    while !f() {
        assert!(t0.elapsed() < std::time::Duration::from_secs(10), "{what}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn runs(c: &Controller, plan: &str) -> Vec<Value> {
    let (code, v) = c.call("GET", &format!("/v1/plans/{plan}/runs"), Some(READER), None);
    assert_eq!(code, 200, "{v}");
    v.as_array().cloned().unwrap_or_default()
}

/// Missed slots run once, a restart fires nothing twice, paused and future plans do not run,
/// and "run now" starts a run at once.
fn scheduling(store: &str) {
    let start_cfg = || Controller::start(store);
    let c = start_cfg();
    let two_days_ago = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(48);
    let past = two_days_ago.strftime("%Y-%m-%dT%H:%M").to_string();
    let future = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(48))
        .strftime("%Y-%m-%dT%H:%M")
        .to_string();
    let obj =
        json!({"name": "vol", "kind": {"type": "virtual_volume", "volume": volume("n1", "v")}});
    assert_eq!(
        c.admin("POST", "/v1/objects?allow_missing=true", Some(obj))
            .0,
        201
    );
    let plan = |name: &str, start: &str, enabled: bool| {
        json!({"name": name, "objects": ["vol"],
        "schedule": {"every": "hourly", "start": start}, "retention": 3, "enabled": enabled})
    };
    assert_eq!(
        c.admin("POST", "/v1/plans", Some(plan("missed", &past, true)))
            .0,
        201
    );
    assert_eq!(
        c.admin("POST", "/v1/plans", Some(plan("paused", &past, false)))
            .0,
        201
    );
    assert_eq!(
        c.admin("POST", "/v1/plans", Some(plan("later", &future, true)))
            .0,
        201
    );
    // 48 missed hourly slots: one run, for the latest.
    eventually("the missed plan runs", || !runs(&c, "missed").is_empty());
    let first = runs(&c, "missed");
    assert_eq!(first.len(), 1, "{first:?}");
    let r = &first[0];
    assert_eq!(r["trigger"], "schedule");
    assert!(
        r["run"]["step"] == "snapshot" || r["run"]["step"] == "failed",
        "{r}"
    );
    assert_eq!(r["run"]["nodes"]["n1"]["volumes"], json!(["v"]));
    let slot: jiff::Timestamp = r["slot"].as_str().expect("slot").parse().expect("time");
    assert!(
        jiff::Timestamp::now().as_second() - slot.as_second() < 3600,
        "{slot}"
    );
    // No agent n1 is connected: the executor fails the run clearly.
    eventually("the run fails for want of its agent", || {
        runs(&c, "missed")[0]["run"]["step"] == "failed"
    });
    let failed = &runs(&c, "missed")[0];
    assert!(
        failed["run"]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("agent n1 is down"),
        "{failed}"
    );
    // A restart on the same store fires nothing again.
    drop(c);
    let c = start_cfg();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(runs(&c, "missed").len(), 1);
    assert!(runs(&c, "paused").is_empty() && runs(&c, "later").is_empty());
    // Run now, even paused.
    let (code, m) = c.admin("POST", "/v1/plans/paused/run", None);
    assert_eq!((code, &m["trigger"]), (202, &json!("manual")), "{m}");
    assert_eq!(runs(&c, "paused").len(), 1);
    refused(
        c.call("POST", "/v1/plans/missed/run", Some(READER), None),
        403,
        "read-only",
    );
    refused(
        c.admin("POST", "/v1/plans/ghost/run", None),
        404,
        "no plan named ghost",
    );
    let (code, all) = c.call("GET", "/v1/runs", Some(READER), None);
    assert_eq!((code, all.as_array().map(Vec::len)), (200, Some(2)));
    // Prometheus metrics, for a read-only token.
    refused(c.call("GET", "/metrics", None, None), 401, "missing");
    let text = c.text("/metrics", READER);
    for want in [
        "ferry_plans{state=\"active\"} 2",
        "ferry_plans{state=\"paused\"} 1",
        "ferry_objects 1",
        "ferry_runs{plan=\"missed\",step=\"failed\"} 1",
        "ferry_http_requests_total{route=\"/v1/plans/{name}/runs\",status=\"200\"}",
        "ferry_store_revision ",
    ] {
        assert!(text.contains(want), "{want:?} missing from {text}");
    }
}

#[test]
fn scheduling_on_the_embedded_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    scheduling(&format!(
        "[store]\nkind = \"embedded\"\npath = \"{}\"",
        dir.path().join("state.redb").display()
    ));
}

#[test]
fn scheduling_on_etcd() {
    let Some(etcd) = Etcd::start() else { return };
    scheduling(&format!(
        "[store]\nkind = \"etcd\"\nendpoints = [\"{}\"]",
        etcd.endpoint
    ));
}
