//! Several controllers on one real etcd: exactly one leads (schedules, carries out runs,
//! links the agents), the others forward the HTTP API to it over QUIC with mutual TLS. When
//! the leader is killed with SIGKILL, a follower is elected within the lease's time, the
//! agents follow it, and a run that was in progress finishes under the new leader, nothing
//! executed twice, its tasks sent under the new, higher generation.

use std::time::Duration;

use ferry_tests::controller::{
    free_udp_port, linked_agent, site_controller, wait_for, Controller, READER,
};
use ferry_tests::{Etcd, Pki};
use serde_json::{json, Value};

fn role(c: &Controller) -> String {
    c.health()["role"].as_str().unwrap_or("?").to_string()
}

fn run_of(c: &Controller, plan: &str, id: &str) -> Value {
    c.call(
        "GET",
        &format!("/v1/plans/{plan}/runs/{id}"),
        Some(READER),
        None,
    )
    .1
}

#[test]
fn controllers_on_etcd_elect_one_leader_forward_and_fail_over() {
    let Some(etcd) = Etcd::start() else {
        return;
    };
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = format!(
        "[store]\nkind = \"etcd\"\nendpoints = [{:?}]\nlease_ttl_secs = 3",
        etcd.endpoint
    );
    let ports = [free_udp_port(), free_udp_port()];
    let mut cs: Vec<Option<Controller>> = ["controller1", "controller2"]
        .iter()
        .zip(ports)
        .map(|(name, port)| Some(site_controller(&pki, dir.path(), name, &store, port).0))
        .collect();
    let roles = |cs: &[Option<Controller>]| -> Vec<String> {
        cs.iter()
            .map(|c| c.as_ref().map_or("dead".into(), role))
            .collect()
    };
    wait_for("one leader is elected", 20, || {
        let mut r = roles(&cs);
        r.sort();
        r == ["follower", "leader"]
    });
    let l = roles(&cs)
        .iter()
        .position(|r| r == "leader")
        .expect("leader");
    let f = 1 - l;
    let generation = cs[l].as_ref().expect("leader").health()["generation"]
        .as_u64()
        .expect("generation");
    let follower = cs[f].as_ref().expect("follower");
    assert_eq!(
        follower.health()["leader"]["name"],
        format!("controller{}", l + 1)
    );

    // The agent knows both controllers, the follower first: it is pointed at the leader.
    let (_agent, _) = linked_agent(&pki, dir.path(), "n1", &[ports[f], ports[l]], &["v"]);
    wait_for(
        "the agent links to the leader (seen through the follower)",
        30,
        || {
            follower
                .agents()
                .iter()
                .any(|a| a["node"] == "n1" && a["status"] == "up")
        },
    );

    // Through the follower, everything is the leader's: writes, roles, errors.
    let obj = json!({"name": "o", "kind": {"type": "virtual_volume", "volume": {"node": "n1", "volume": "v"}}});
    let (code, v) = follower.admin("POST", "/v1/objects", Some(obj.clone()));
    assert_eq!(code, 201, "{v}");
    let (code, v) = follower.call(
        "POST",
        "/v1/objects",
        Some(READER),
        Some(&serde_json::to_vec(&obj).expect("json")),
    );
    assert_eq!(
        (code, &v["error"]["code"]),
        (403, &json!("forbidden")),
        "{v}"
    );
    assert_eq!(follower.call("GET", "/v1/plans", None, None).0, 401);
    let (code, v) = follower.call(
        "POST",
        "/v1/plans",
        Some(ferry_tests::controller::ADMIN),
        Some(b"{nope"),
    );
    assert_eq!(code, 400, "{v}");
    assert_eq!(
        cs[l]
            .as_ref()
            .expect("leader")
            .call("GET", "/v1/objects/o", Some(READER), None)
            .0,
        200
    );
    let counter = dir.path().join("hook-runs");
    let plan = json!({"name": "p", "objects": ["o"], "retention": 3, "enabled": false,
        "schedule": {"every": "daily", "start": "2026-01-01T00:00"},
        "hooks": {"pre": format!("echo run >> {} && sleep 4", counter.display())}});
    assert_eq!(follower.admin("POST", "/v1/plans", Some(plan)).0, 201);
    let (code, r) = follower.admin("POST", "/v1/plans/p/run", None);
    assert_eq!(code, 202, "{r}");
    assert_eq!(r["run"]["generation"], generation);
    let id = r["run"]["id"].as_str().expect("id").to_string();
    wait_for("the snapshot's hook starts", 20, || counter.exists());

    // SIGKILL the leader mid-run: the follower takes over within the lease's time.
    cs[l] = None;
    wait_for("the follower is elected", 20, || {
        role(cs[f].as_ref().expect("f")) == "leader"
    });
    let new = cs[f].as_ref().expect("new leader");
    let new_generation = new.health()["generation"].as_u64().expect("generation");
    assert!(
        new_generation > generation,
        "{new_generation} > {generation}"
    );
    wait_for("the run finishes under the new leader", 90, || {
        run_of(new, "p", &id)["run"]["step"] == "done"
    });
    let d = run_of(new, "p", &id);
    assert_eq!(
        d["run"]["generation"], new_generation,
        "resumed under the new term: {d}"
    );
    assert_eq!(d["report"]["objects"][0]["status"], "done", "{d}");
    let runs = std::fs::read_to_string(&counter).expect("counter");
    assert_eq!(runs.lines().count(), 1, "the snapshot task ran twice");
    wait_for("the agent follows the new leader", 30, || {
        new.agents()
            .iter()
            .any(|a| a["node"] == "n1" && a["status"] == "up")
    });
    // And the new leader runs plans from now on.
    std::fs::write(&counter, "").expect("reset");
    std::thread::sleep(Duration::from_millis(1100)); // a new group name
    let (code, r) = new.admin("POST", "/v1/plans/p/run", None);
    assert_eq!(code, 202, "{r}");
    let id = r["run"]["id"].as_str().expect("id").to_string();
    wait_for("a run under the new leader", 60, || {
        run_of(new, "p", &id)["run"]["step"] == "done"
    });
    let (_, groups) = new.call("GET", "/v1/plans/p/groups", Some(READER), None);
    assert_eq!(groups.as_array().map(Vec::len), Some(2), "{groups}");
}
