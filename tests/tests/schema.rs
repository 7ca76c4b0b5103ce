//! The state store's schema version: a store written before versions existed (built here
//! key by key, as that code wrote it) is migrated by the new controller and read by it; a
//! store of a newer schema is refused at start.

use std::process::{Command, Stdio};

use ferry_controller::state::{EmbeddedStore, Store};
use ferry_tests::bin;
use ferry_tests::controller::{wait_for, Controller};
use serde_json::{json, Value};

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
    let c = Controller::start(&ferry_tests::controller::embedded_at(&path));
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
    let text = ferry_tests::controller::config(&ferry_tests::controller::embedded_at(&path));
    std::fs::write(&cfg, text).expect("config");
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

/// The key patterns of the schema table in `controller/src/state/schema.rs`'s module doc.
fn table_patterns() -> Vec<String> {
    let src =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../controller/src/state/schema.rs");
    let text = std::fs::read_to_string(src).expect("read schema.rs");
    text.lines()
        .filter_map(|l| l.strip_prefix("//! | `"))
        .filter_map(|l| l.split('`').next())
        .map(String::from)
        .collect()
}

/// Whether `key` matches `pattern` (`<segment>` is one path segment, `...` anything).
fn matches(pattern: &str, key: &str) -> bool {
    if let Some(prefix) = pattern.strip_suffix("...") {
        return key.starts_with(prefix);
    }
    let (p, k): (Vec<&str>, Vec<&str>) = (pattern.split('/').collect(), key.split('/').collect());
    p.len() == k.len()
        && p.iter()
            .zip(&k)
            .all(|(p, k)| (p.starts_with('<') && p.ends_with('>') && !k.is_empty()) || p == k)
}

/// Every key a site writes in a scheduled and a manual run, a rollback, a volume created
/// through the API, agent registration and heartbeats, and a plan deleted with its groups
/// (removal jobs, the orphan marker) is in the schema table: read from etcd's history, so
/// keys written and deleted since count too.
#[test]
fn every_key_a_site_writes_is_in_the_schema_table() {
    use ferry_tests::controller::{free_udp_port, linked_agent, site_controller};
    let Some(etcd) = ferry_tests::Etcd::start() else {
        return;
    };
    let pki = ferry_tests::Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_udp_port();
    let store = format!(
        "[store]\nkind = \"etcd\"\nendpoints = [{:?}]\nlease_ttl_secs = 3",
        etcd.endpoint
    );
    let (c, _) = site_controller(&pki, dir.path(), "controller1", &store, port);
    let (_agent, _) = linked_agent(&pki, dir.path(), "n1", &[port], &["v"]);
    wait_for("the agent is up", 20, || {
        c.agents().iter().any(|a| a["status"] == "up")
    });
    let (code, v) = c.admin(
        "POST",
        "/v1/agents/n1/volumes",
        Some(json!({"name": "w", "size": "4M"})),
    );
    assert_eq!(code, 201, "{v}");
    let obj = json!({"name": "o", "kind": {"type": "virtual_volume", "volume": {"node": "n1", "volume": "v"}}});
    assert_eq!(c.admin("POST", "/v1/objects", Some(obj)).0, 201);
    // Its first slot lies in the past: it runs at once, from the schedule.
    let plan = json!({"name": "p", "objects": ["o"], "retention": 3,
        "schedule": {"every": "daily", "start": "2026-01-01T00:00"}});
    assert_eq!(c.admin("POST", "/v1/plans", Some(plan)).0, 201);
    let over = |path: &str, field: &str| {
        let mut last = Value::Null;
        wait_for(&format!("{path} is over"), 30, || {
            let (_, v) = c.admin("GET", path, None);
            last = v;
            last.as_array().is_some_and(|a| {
                !a.is_empty()
                    && a.iter().all(|r| {
                        let step = r.pointer(field).and_then(Value::as_str).unwrap_or("");
                        step == "done" || step == "failed"
                    })
            })
        });
        last
    };
    over("/v1/plans/p/runs", "/run/step");
    let (code, v) = c.admin("POST", "/v1/plans/p/run", None);
    assert_eq!(code, 202, "{v}");
    let runs = over("/v1/plans/p/runs", "/run/step");
    assert!(runs.to_string().contains("\"schedule\""), "{runs}");
    let (_, groups) = c.admin("GET", "/v1/plans/p/groups", None);
    let g = groups[0]["group"].as_str().expect("a group").to_string();
    let (code, v) = c.admin("POST", "/v1/plans/p/rollbacks", Some(json!({"group": g})));
    assert_eq!(code, 202, "{v}");
    over("/v1/plans/p/rollbacks", "/step");
    assert_eq!(c.admin("DELETE", "/v1/plans/p?groups=delete", None).0, 204);
    wait_for("the deleted plan's leftovers go", 30, || {
        let (_, v) = c.admin("GET", "/v1/orphans", None);
        v == json!([])
    });
    std::thread::sleep(std::time::Duration::from_millis(500));

    // Every key ever written, from etcd's history.
    let patterns = table_patterns();
    assert!(patterns.len() >= 12, "{patterns:?}");
    let keys: std::collections::BTreeSet<String> = rt().block_on(async {
        let s = Store::Etcd(
            ferry_controller::state::EtcdStore::connect(std::slice::from_ref(&etcd.endpoint))
                .await
                .expect("connect"),
        );
        let until = s.revision().await.expect("revision");
        let mut w = s.watch("/ferry/", 1).await.expect("watch");
        let mut keys = std::collections::BTreeSet::new();
        let mut rev = 0;
        while rev < until {
            let e = tokio::time::timeout(std::time::Duration::from_secs(5), w.next())
                .await
                .expect("the history comes")
                .expect("watch open")
                .expect("an event");
            if let ferry_controller::state::Event::Put(kv) = &e {
                rev = kv.mod_revision;
                keys.insert(kv.key.clone());
            } else if let ferry_controller::state::Event::Delete { mod_revision, .. } = &e {
                rev = *mod_revision;
            }
        }
        keys
    });
    let unlisted: Vec<&String> = keys
        .iter()
        .filter(|k| !patterns.iter().any(|p| matches(p, k)))
        .collect();
    assert!(
        unlisted.is_empty(),
        "keys not in the schema table: {unlisted:?}"
    );
    // The walk above reached every kind of record.
    for p in [
        "/ferry/schema",
        "/ferry/objects/<name>",
        "/ferry/plans/<name>",
        "/ferry/runs/<plan-id>/<run>",
        "/ferry/fired/<plan-id>",
        "/ferry/active/<plan-id>",
        "/ferry/groups/<plan-id>/<group>",
        "/ferry/rollbacks/<plan-id>/<id>",
        "/ferry/removals/<plan-id>/<id>",
        "/ferry/orphans/<plan-id>",
        "/ferry/agents/<node>",
        "/ferry/leader...",
    ] {
        assert!(patterns.iter().any(|x| x == p), "{p} is not in the table");
        assert!(
            keys.iter().any(|k| matches(p, k)),
            "nothing written under {p}: {keys:?}"
        );
    }
}
