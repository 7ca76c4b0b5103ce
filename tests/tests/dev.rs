//! `ferry-controller dev`: one command gives a working site (a controller on the embedded
//! store and a real agent child process): volumes are created through the API, a plan is
//! run with the `ferry` CLI, retention prunes, a rollback restores the bytes; killed with
//! SIGKILL, it takes its agent with it; started again on the same data directory, it has
//! kept its plans and groups.

use ferry_tests::controller::wait_for;
use ferry_tests::dev::Dev;
use ferry_tests::{agent_volume_path, file_hash, rng, write_random};
use serde_json::json;

fn alive(pid: u64) -> bool {
    // A zombie is dead too: look at its state.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.split(") ").nth(1).unwrap_or("").starts_with('Z'))
        .unwrap_or(false)
}

#[test]
fn dev_mode_is_a_whole_site_in_one_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = Dev::start(dir.path());
    assert!(dev.info["api"]
        .as_str()
        .unwrap_or_default()
        .starts_with("http://127.0.0.1:"));
    assert_eq!(
        dev.info["token"].as_str().map(str::len),
        Some(64),
        "{}",
        dev.info
    );
    for v in ["disk0", "disk1"] {
        let (code, r) = dev.call(
            "POST",
            "/v1/agents/node1/volumes",
            Some(json!({"name": v, "size": "8M"})),
        );
        assert_eq!(code, 201, "{r}");
    }
    let vm = json!({"name": "vm1", "kind": {"type": "vm", "vcpus": 2, "memory_mib": 2048,
        "disks": [{"volume": {"node": "node1", "volume": "disk0"}, "role": "disk"},
                  {"volume": {"node": "node1", "volume": "disk1"}, "role": "disk"}],
        "nics": [{"switch": "lan", "mac": "52:54:00:00:00:01"}]}});
    let obj = dir.path().join("vm1.json");
    std::fs::write(&obj, vm.to_string()).expect("write");
    let (ok, _, err) = dev.ferry(&["objects", "create", obj.to_str().expect("utf8")]);
    assert!(ok, "{err}");
    let plan = json!({"name": "p", "objects": ["vm1"], "retention": 2, "enabled": false,
        "schedule": {"every": "hourly", "start": "2026-01-01T00:00"}});
    let pf = dir.path().join("p.json");
    std::fs::write(&pf, plan.to_string()).expect("write");
    let (ok, _, err) = dev.ferry(&["plans", "create", pf.to_str().expect("utf8")]);
    assert!(ok, "{err}");
    let disk0 = agent_volume_path(&dir.path().join("agent.toml"), "disk0");
    let mut r = rng("dev");
    let mut hashes = Vec::new();
    for i in 0..3 {
        write_random(&disk0, i * (1 << 20), 1 << 20, &mut r);
        hashes.push(file_hash(&disk0));
        let (ok, run, err) = dev.ferry(&["plans", "run", "p", "--wait"]);
        assert!(ok, "run {i}: {err}");
        assert_eq!(run["report"]["objects"][0]["status"], "done", "{run}");
        std::thread::sleep(std::time::Duration::from_millis(1100)); // a new group name
    }
    let (ok, groups, err) = dev.ferry(&["plans", "groups", "p"]);
    assert!(ok, "{err}");
    let groups = groups.as_array().cloned().unwrap_or_default();
    assert_eq!(groups.len(), 2, "retention 2: {groups:?}");
    // Roll back to the older kept group (the second run's data).
    write_random(&disk0, 0, 4 << 20, &mut r);
    let g = groups[0]["group"].as_str().expect("group");
    let (ok, rb, err) = dev.ferry(&["plans", "rollback", "p", g, "--wait"]);
    assert!(ok, "{err}");
    assert_eq!(rb["step"], "done", "{rb}");
    assert_eq!(file_hash(&disk0), hashes[1], "byte-identical to the group");

    // SIGKILL the dev process: its agent goes with it.
    let agent_pid = dev.info["agent"]["pid"].as_u64().expect("pid");
    assert!(alive(agent_pid));
    drop(dev);
    wait_for("the agent dies with its dev controller", 10, || {
        !alive(agent_pid)
    });

    // Again on the same directory: plans and groups are kept, with a new token.
    let again = Dev::start(dir.path());
    let (ok, groups2, err) = again.ferry(&["plans", "groups", "p"]);
    assert!(ok, "{err}");
    assert_eq!(groups2.as_array().map(Vec::len), Some(2), "{groups2}");
    let (ok, _, _) = again.ferry(&["plans", "run", "p", "--wait"]);
    assert!(ok);
}
