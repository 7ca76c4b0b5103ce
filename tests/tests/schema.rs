//! The state store's schema version: a store written before versions existed (built here
//! key by key, as that code wrote it) is migrated by the new controller and read by it; a
//! store of a newer schema is refused at start.

use std::process::{Command, Stdio};

use ferry_controller::state::{EmbeddedStore, Store};
use ferry_tests::bin;
use ferry_tests::controller::{wait_for, Controller};
use serde_json::json;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn put(store: &Store, key: &str, v: serde_json::Value) {
    let bytes = if v.is_null() {
        Vec::new()
    } else {
        v.to_string().into_bytes()
    };
    rt().block_on(store.put(key, &bytes)).expect("put");
}

fn open(path: &std::path::Path) -> Store {
    Store::Embedded(EmbeddedStore::open(path).expect("open the store"))
}

#[test]
fn a_store_of_schema_0_is_migrated_and_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("old.redb");
    {
        let s = open(&path);
        put(
            &s,
            "/ferry/objects/o",
            json!({"name": "o", "kind": {"type": "virtual_volume",
            "volume": {"node": "n1", "volume": "v"}}}),
        );
        // A plan without an id, its group, a finished rollback, and a run in progress with
        // the old per-run active key.
        put(
            &s,
            "/ferry/plans/p",
            json!({"spec": {"name": "p", "objects": ["o"], "retention": 3,
            "schedule": {"every": "daily", "start": "2036-01-01T00:00"}}, "paused": false}),
        );
        put(
            &s,
            "/ferry/groups/p/p-20261130T000000Z",
            json!({"plan": "p",
            "group": "p-20261130T000000Z", "run": "s1", "created": "2026-11-30T00:00:01Z",
            "snapshots": [["n1", {"volume": "v", "snapshot": "p-20261130T000000Z", "size": 4096,
                "root": "00"}]]}),
        );
        put(
            &s,
            "/ferry/rollbacks/p/rb1",
            json!({"id": "rb1", "plan": "p",
            "group": "p-20261130T000000Z", "generation": 1, "step": "done",
            "volumes": {"n1": {"v": "done"}}, "created": "2026-11-30T01:00:00Z"}),
        );
        put(
            &s,
            "/ferry/runs/p/m1",
            json!({"run": {"id": "m1", "plan": "p",
            "group": "p-20261201T000000Z", "generation": 1,
            "hooks": {"pre": null, "post": null, "timeout_secs": null}, "step": "snapshot",
            "nodes": {"n1": {"volumes": ["v"], "state": "pending"}}, "error": null},
            "trigger": "manual", "slot": null, "created": "2026-12-01T00:00:00Z"}),
        );
        put(&s, "/ferry/active/p/m1", serde_json::Value::Null);
    }
    let store = format!(
        "[store]\nkind = \"embedded\"\npath = {:?}",
        path.display().to_string()
    );
    let c = Controller::start(&store);
    let (code, groups) = c.admin("GET", "/v1/plans/p/groups", None);
    assert_eq!(code, 200);
    assert_eq!(groups[0]["group"], "p-20261130T000000Z", "{groups}");
    let (_, rbs) = c.admin("GET", "/v1/plans/p/rollbacks", None);
    assert_eq!(rbs[0]["step"], "done", "{rbs}");
    // The old run is found through the migrated active index and driven to its end (its
    // agent never registered: it fails as agent_down).
    wait_for("the migrated run is carried on", 20, || {
        let (_, r) = c.admin("GET", "/v1/plans/p/runs/m1", None);
        r["run"]["step"] == "failed"
    });
    let (_, r) = c.admin("GET", "/v1/plans/p/runs/m1", None);
    assert!(r["run"]["error"].to_string().contains("down"), "{r}");
    // Then the plan is free: a run may start.
    let (code, v) = c.admin("POST", "/v1/plans/p/run", None);
    assert_eq!(code, 202, "{v}");
    drop(c);
    let s = open(&path);
    let v = rt()
        .block_on(s.get("/ferry/schema"))
        .expect("get")
        .expect("a version");
    assert_eq!(v.value, b"1");
    assert!(rt()
        .block_on(s.get("/ferry/active/p/m1"))
        .expect("get")
        .is_none());
}

#[test]
fn a_store_of_a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("new.redb");
    put(&open(&path), "/ferry/schema", serde_json::Value::from(99));
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:0\"\n[store]\nkind = \"embedded\"\npath = {:?}\n\
             [[tokens]]\nname = \"a\"\nrole = \"admin\"\nblake3 = \"{}\"\n",
            path.display().to_string(),
            "0".repeat(64)
        ),
    )
    .expect("config");
    let out = Command::new(bin("ferry-controller"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("schema version 99") && err.contains("newer"),
        "{err}"
    );
}
