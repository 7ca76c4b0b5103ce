//! A newcomer's first hour with a dev site: the defects found trying ferry as a new operator
//! would (each test failed before its fix), and the commands such a user looks for first
//! (`ferry status`, `ferry agents`, `ferry volumes`). All tests share one dev site
//! ([`Dev::shared`]) and use names of their own.

use std::process::Stdio;

use ferry_tests::controller::wait_for;
use ferry_tests::dev::Dev;
use ferry_tests::{agent_json, file_hash, rng, write_random};
use serde_json::{json, Value};

fn volume_object(name: &str, volume: &str) -> Value {
    json!({"name": name, "kind": {"type": "virtual_volume",
        "volume": {"node": "node1", "volume": volume}}})
}

fn plan(name: &str, objects: &[&str], retention: u32) -> Value {
    json!({"name": name, "objects": objects, "retention": retention, "enabled": false,
        "schedule": {"every": "daily", "start": "2026-01-01T00:00"}})
}

/// For each name: an 8 MiB volume on node1 and a virtual-volume object on it, both so named.
fn volumes_with_objects(dev: &Dev, names: &[&str]) {
    for n in names {
        dev.volume(n, "8M");
        create(dev, "objects", &volume_object(n, n));
    }
}

fn create(dev: &Dev, what: &str, v: &Value) {
    let (code, r) = dev.call("POST", &format!("/v1/{what}"), Some(v.clone()));
    assert_eq!(code, 201, "create {what} {v}: {r}");
}

/// Runs plan `name` to its end with the CLI; returns the run's detail.
fn run(dev: &Dev, name: &str) -> Value {
    let d = dev.ferry_ok(&["plans", "run", name, "--wait"]);
    assert_eq!(d["run"]["step"], "done", "{d}");
    d
}

fn groups(dev: &Dev, plan: &str) -> Vec<String> {
    let (code, v) = dev.call("GET", &format!("/v1/plans/{plan}/groups"), None);
    assert_eq!(code, 200, "{v}");
    v.as_array()
        .into_iter()
        .flatten()
        .map(|g| g["group"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn snapshots(dev: &Dev, volume: &str) -> Vec<String> {
    agent_json(&dev.agent_config(), &["snapshot", "list", volume])
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| s["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn rollback_done(dev: &Dev, plan: &str, id: &str) -> Value {
    let mut last = Value::Null;
    wait_for("the rollback ends", 30, || {
        let (_, list) = dev.call("GET", &format!("/v1/plans/{plan}/rollbacks"), None);
        last = list
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["id"] == id)
            .cloned()
            .unwrap_or(Value::Null);
        last["step"] != "running"
    });
    last
}

/// Defect 1: a plan created under a deleted plan's name listed the old plan's groups, and a
/// rollback to one of them rolled back a volume the new plan does not protect.
#[test]
fn a_new_plan_does_not_inherit_a_deleted_plans_groups() {
    let dev = Dev::shared();
    volumes_with_objects(dev, &["inh-web", "inh-scratch"]);
    create(dev, "plans", &plan("inh-p2", &["inh-web"], 3));
    let web = dev.volume_path("inh-web");
    write_random(&web, 0, 1 << 20, &mut rng("inherit"));
    run(dev, "inh-p2");
    let old = groups(dev, "inh-p2");
    assert_eq!(old.len(), 1);
    let (code, r) = dev.call("DELETE", "/v1/plans/inh-p2?groups=keep", None);
    assert_eq!(code, 204, "{r}");
    create(dev, "plans", &plan("inh-p2", &["inh-scratch"], 3));
    assert_eq!(
        groups(dev, "inh-p2"),
        Vec::<String>::new(),
        "a new plan's groups"
    );
    // The old group is not the new plan's: refused, and web's volume is untouched.
    write_random(&web, 0, 1 << 20, &mut rng("inherit-2"));
    let before = file_hash(&web);
    let (code, r) = dev.call(
        "POST",
        "/v1/plans/inh-p2/rollbacks",
        Some(json!({"group": old[0]})),
    );
    assert_eq!(code, 400, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("keeps no group named"),
        "{r}"
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(file_hash(&web), before, "web's volume was not touched");
}

/// Defect 1, second half: a rollback touches only volumes the plan protects now, even when
/// the group holds more (the plan lost an object since).
#[test]
fn a_rollback_touches_only_what_the_plan_protects_now() {
    let dev = Dev::shared();
    volumes_with_objects(dev, &["now-a", "now-b"]);
    create(dev, "plans", &plan("now-p", &["now-a", "now-b"], 3));
    let (a, b) = (dev.volume_path("now-a"), dev.volume_path("now-b"));
    let mut r = rng("protects-now");
    write_random(&a, 0, 1 << 20, &mut r);
    write_random(&b, 0, 1 << 20, &mut r);
    let (ha, _) = (file_hash(&a), file_hash(&b));
    run(dev, "now-p");
    let g = groups(dev, "now-p");
    // The plan now protects now-a only.
    let (code, v) = dev.call("PUT", "/v1/plans/now-p", Some(plan("now-p", &["now-a"], 3)));
    assert_eq!(code, 200, "{v}");
    write_random(&a, 0, 1 << 20, &mut r);
    write_random(&b, 0, 1 << 20, &mut r);
    let hb_changed = file_hash(&b);
    let (code, rb) = dev.call(
        "POST",
        "/v1/plans/now-p/rollbacks",
        Some(json!({"group": g[0]})),
    );
    assert_eq!(code, 202, "{rb}");
    let end = rollback_done(dev, "now-p", rb["id"].as_str().expect("id"));
    assert_eq!(end["step"], "done", "{end}");
    assert_eq!(file_hash(&a), ha, "now-a is rolled back");
    assert_eq!(
        file_hash(&b),
        hb_changed,
        "now-b is no longer protected: untouched"
    );
    // Naming the object no longer protected is refused.
    let (code, v) = dev.call(
        "POST",
        "/v1/plans/now-p/rollbacks",
        Some(json!({"group": g[0], "objects": ["now-b"]})),
    );
    assert_eq!(code, 400, "{v}");
}

/// Defect 2: deleting a plan left its groups and snapshots with no owner. Now the API asks
/// (`groups=keep` or `groups=delete`); kept groups are listed as orphans and can be deleted,
/// snapshots included.
#[test]
fn deleting_a_plan_asks_what_becomes_of_its_groups() {
    let dev = Dev::shared();
    volumes_with_objects(dev, &["orph-a", "orph-b"]);
    create(dev, "plans", &plan("orph-keep", &["orph-a"], 5));
    create(dev, "plans", &plan("orph-del", &["orph-b"], 5));
    for p in ["orph-keep", "orph-del"] {
        run(dev, p);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        run(dev, p);
    }
    assert_eq!(snapshots(dev, "orph-a").len(), 2);
    // No choice given: refused, saying what to choose.
    let (code, r) = dev.call("DELETE", "/v1/plans/orph-keep", None);
    assert_eq!(code, 409, "{r}");
    let msg = r["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("2 snapshot groups")
            && msg.contains("groups=keep")
            && msg.contains("groups=delete"),
        "{msg}"
    );
    let (code, r) = dev.call("DELETE", "/v1/plans/orph-keep?groups=maybe", None);
    assert_eq!(code, 400, "{r}");
    // Kept: listed as orphans, snapshots still there.
    let out = dev.ferry_raw(&["plans", "delete", "orph-keep", "--keep-groups"]);
    assert!(out.status.success(), "{out:?}");
    let orphans = dev.ferry_ok(&["orphans", "list"]);
    let mine = orphans
        .as_array()
        .into_iter()
        .flatten()
        .find(|o| o["plan"] == "orph-keep")
        .cloned()
        .unwrap_or_else(|| panic!("orph-keep's groups are listed: {orphans}"));
    assert_eq!(mine["groups"].as_array().map(Vec::len), Some(2), "{mine}");
    assert_eq!(snapshots(dev, "orph-a").len(), 2);
    let text = String::from_utf8_lossy(&dev.ferry_raw(&["orphans", "list"]).stdout).into_owned();
    assert!(text.contains("orph-keep"), "{text}");
    // Deleted on request: the snapshots go from the agent, then the listing.
    let id = mine["plan_id"].as_str().expect("plan id");
    let out = dev.ferry_raw(&["orphans", "delete", id, "--yes"]);
    assert!(out.status.success(), "{out:?}");
    wait_for("the orphaned snapshots are deleted", 30, || {
        snapshots(dev, "orph-a").is_empty()
    });
    wait_for("the orphan is no longer listed", 10, || {
        let (_, v) = dev.call("GET", "/v1/orphans", None);
        !v.to_string().contains("orph-keep")
    });
    // Deleted with the plan.
    let out = dev.ferry_raw(&["plans", "delete", "orph-del", "--delete-groups"]);
    assert!(out.status.success(), "{out:?}");
    wait_for("the plan's snapshots are deleted with it", 30, || {
        snapshots(dev, "orph-b").is_empty()
    });
    let (code, _) = dev.call("GET", "/v1/plans/orph-del", None);
    assert_eq!(code, 404);
    // A plan without groups is deleted without asking.
    create(dev, "plans", &plan("orph-empty", &["orph-b"], 5));
    let (code, r) = dev.call("DELETE", "/v1/plans/orph-empty", None);
    assert_eq!(code, 204, "{r}");
}

/// Defect 3: `ferry plans groups` printed the groups as runs (`run ?: ?`).
#[test]
fn groups_are_listed_as_groups() {
    let dev = Dev::shared();
    dev.volume("grp-v", "8M");
    create(dev, "objects", &volume_object("grp-o", "grp-v"));
    create(dev, "plans", &plan("grp-p", &["grp-o"], 3));
    run(dev, "grp-p");
    let g = groups(dev, "grp-p");
    let out = dev.ferry_raw(&["plans", "groups", "grp-p"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains(&g[0]) && text.contains("GROUP"), "{text}");
    assert!(!text.contains("run ?"), "{text}");
    assert!(
        text.contains("node1/grp-v") || text.contains("1 snapshot"),
        "{text}"
    );
}

/// Defect 4: starting a plan while a run is in progress was accepted, and the runs then
/// failed. Now one start wins, the others are told a run is in progress.
#[test]
fn one_run_at_a_time() {
    let dev = Dev::shared();
    dev.volume("busy-v", "8M");
    create(dev, "objects", &volume_object("busy-o", "busy-v"));
    let mut p = plan("busy-p", &["busy-o"], 3);
    p["hooks"] = json!({"pre": "sleep 2"});
    create(dev, "plans", &p);
    let answers: Vec<(u16, Value)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..20)
            .map(|_| s.spawn(|| dev.call("POST", "/v1/plans/busy-p/run", None)))
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    let accepted: Vec<&(u16, Value)> = answers.iter().filter(|(c, _)| *c == 202).collect();
    assert_eq!(accepted.len(), 1, "{answers:?}");
    for (c, v) in &answers {
        if *c != 202 {
            assert_eq!(*c, 409, "{v}");
            assert!(v.to_string().contains("in progress"), "{v}");
        }
    }
    let id = accepted[0].1["run"]["id"].as_str().expect("id").to_string();
    wait_for("the run ends", 30, || {
        let (_, r) = dev.call("GET", &format!("/v1/plans/busy-p/runs/{id}"), None);
        r["run"]["step"] == "done"
    });
    let (_, runs) = dev.call("GET", "/v1/plans/busy-p/runs", None);
    assert_eq!(runs.as_array().map(Vec::len), Some(1), "{runs}");
    // Over: the next start is accepted.
    let (code, v) = dev.call("POST", "/v1/plans/busy-p/run", None);
    assert_eq!(code, 202, "{v}");
}

/// Defect 5: `/v1/agents` kept the volume list of the agent's registration.
#[test]
fn the_agents_volume_list_is_current() {
    let dev = Dev::shared();
    let listed = |name: &str| {
        let (_, v) = dev.call("GET", "/v1/agents", None);
        v.as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["node"] == "node1")
            .flat_map(|a| a["volumes"].as_array().cloned().unwrap_or_default())
            .any(|v| v["name"] == name)
    };
    dev.volume("fresh-api", "8M");
    wait_for("a volume made through the API is listed", 10, || {
        listed("fresh-api")
    });
    // Made on the node itself, past the controller.
    agent_json(
        &dev.agent_config(),
        &["volume", "create", "fresh-local", "--size", "4M"],
    );
    wait_for("a volume made on the node is listed", 10, || {
        listed("fresh-local")
    });
}

/// The writing end of a pipe whose reading end is closed already.
fn closed_pipe() -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: pipe fills both descriptors, which are then owned here.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: as above; the reading end is closed at once.
    unsafe {
        drop(std::os::fd::OwnedFd::from_raw_fd(fds[0]));
        std::os::fd::OwnedFd::from_raw_fd(fds[1])
    }
}

/// Defect 6: `ferry plans list | true` panicked on the broken pipe (exit 101).
#[test]
fn a_closed_pipe_ends_the_cli_quietly() {
    let dev = Dev::shared();
    for (bin, args) in [
        ("ferry", vec!["plans", "list"]),
        ("ferry", vec!["--json", "objects", "list"]),
        ("ferry-controller", vec!["token"]),
        ("ferry-agent", vec!["--help"]),
    ] {
        let w = closed_pipe();
        let mut cmd = if bin == "ferry" {
            dev.ferry_cmd()
        } else {
            std::process::Command::new(ferry_tests::bin(bin))
        };
        let out = cmd
            .args(&args)
            .stdout(w)
            .stderr(Stdio::piped())
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(101), "{bin} {args:?}: {err}");
        assert!(!err.contains("panicked"), "{bin} {args:?}: {err}");
    }
}

/// Defect 8: sizes are SI or IEC as written (10GB = 10^9 bytes), decimals allowed.
#[test]
fn sizes_are_si_or_iec_as_written() {
    let dev = Dev::shared();
    for (name, size, want) in [
        ("size-si", "10GB", 10_000_000_000u64),
        ("size-iec", "10GiB", 10 << 30),
        ("size-dec", "1.5G", 3 << 29),
    ] {
        let (code, v) = dev.call(
            "POST",
            "/v1/agents/node1/volumes",
            Some(json!({"name": name, "size": size})),
        );
        assert_eq!(code, 201, "{v}");
        assert_eq!(v["size"], want, "{size}");
    }
    let (code, v) = dev.call(
        "POST",
        "/v1/agents/node1/volumes",
        Some(json!({"name": "size-bad", "size": "1.1K"})),
    );
    assert_eq!(code, 400, "{v}");
}

/// Defect 9: an object could name a node or volume that does not exist; the mistake showed
/// only at run time.
#[test]
fn objects_must_name_volumes_that_exist() {
    let dev = Dev::shared();
    dev.volume("exists-v", "8M");
    for (obj, says) in [
        (volume_object("ex-1", "no-such-volume"), "kind.volume"),
        (
            json!({"name": "ex-2", "kind": {"type": "virtual_volume",
                "volume": {"node": "node9", "volume": "exists-v"}}}),
            "kind.volume.node",
        ),
        (
            json!({"name": "ex-3", "kind": {"type": "vm", "vcpus": 1, "memory_mib": 512,
                "disks": [{"volume": {"node": "node1", "volume": "exists-v"}},
                          {"volume": {"node": "node1", "volume": "nope"}}]}}),
            "kind.disks[1].volume",
        ),
    ] {
        let (code, v) = dev.call("POST", "/v1/objects", Some(obj.clone()));
        assert_eq!(code, 400, "{obj}: {v}");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.starts_with(says), "{says}: {msg}");
        assert!(
            msg.contains("allow_missing"),
            "says how to declare it ahead: {msg}"
        );
    }
    // Declared ahead of its agent, on purpose.
    let (code, v) = dev.call(
        "POST",
        "/v1/objects?allow_missing=true",
        Some(volume_object("ex-4", "later")),
    );
    assert_eq!(code, 201, "{v}");
    // Updates are checked too.
    create(dev, "objects", &volume_object("ex-5", "exists-v"));
    let (code, v) = dev.call(
        "PUT",
        "/v1/objects/ex-5",
        Some(volume_object("ex-5", "gone")),
    );
    assert_eq!(code, 400, "{v}");
}

/// Defect 10: `ferry plans groups nosuchplan` exited 0 with nothing.
#[test]
fn a_missing_plan_is_not_found_everywhere() {
    let dev = Dev::shared();
    for path in [
        "/v1/plans/nosuchplan/groups",
        "/v1/plans/nosuchplan/rollbacks",
        "/v1/plans/nosuchplan/runs",
    ] {
        let (code, v) = dev.call("GET", path, None);
        assert_eq!(code, 404, "{path}: {v}");
    }
    let (ok, v, _) = dev.ferry(&["plans", "groups", "nosuchplan"]);
    assert!(!ok, "{v}");
    assert_eq!(v["error"]["code"], "not_found", "{v}");
    assert_eq!(v["error"]["status"], 404, "{v}");
    let out = dev.ferry_raw(&["plans", "groups", "nosuchplan"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no plan named nosuchplan (404)"), "{err}");
}

/// Defect 7: the CLI refused https:// although the docs say to put a TLS proxy in front of
/// the API. Now it speaks TLS: the system's roots, plus `--ca` for a private CA.
#[test]
fn the_cli_speaks_https_through_a_tls_proxy() {
    let dev = Dev::shared();
    let upstream: std::net::SocketAddr = dev
        .api()
        .trim_start_matches("http://")
        .parse()
        .expect("api address");
    let proxy = ferry_tests::tls::TlsProxy::start(upstream);
    let addr = format!("https://127.0.0.1:{}", proxy.addr.port());
    let ca = proxy.ca.to_str().expect("utf8").to_string();
    let out = dev
        .ferry_cmd()
        .args(["--json", "--addr", &addr, "--ca", &ca, "agents"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    let agents: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(agents[0]["node"], "node1", "{agents}");
    // Through the environment too.
    let out = dev
        .ferry_cmd()
        .env("FERRY_ADDR", &addr)
        .env("FERRY_CA", &ca)
        .args(["status"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    // Without the CA the proxy's certificate is not trusted: a clear error.
    let out = dev
        .ferry_cmd()
        .args(["--json", "--addr", &addr, "agents"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err: Value = serde_json::from_slice(&out.stdout).expect("json error");
    assert_eq!(err["error"]["code"], "tls", "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("--ca"),
        "{err}"
    );
}

/// What a new operator looks for first: `ferry status`, `ferry agents`, `ferry volumes`,
/// shell completion, all against a real dev site.
#[test]
fn status_agents_and_volumes_from_the_cli() {
    let dev = Dev::shared();
    let text = |args: &[&str]| {
        let out = dev.ferry_raw(args);
        assert!(out.status.success(), "ferry {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Volumes: create, list (human and JSON), used by an object, delete.
    let t = text(&["volumes", "create", "node1", "cli-v", "--size", "16MiB"]);
    assert!(t.contains("created volume node1/cli-v of 16.00 MiB"), "{t}");
    let t = text(&["volumes", "list"]);
    assert!(t.contains("cli-v") && t.contains("16.00 MiB"), "{t}");
    let list = dev.ferry_ok(&["volumes", "list", "--node", "node1"]);
    let v = list
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == "cli-v")
        .cloned()
        .unwrap_or_else(|| panic!("{list}"));
    assert_eq!(
        (v["size"].as_u64(), v["mirror"].as_bool()),
        (Some(16 << 20), Some(false))
    );
    create(dev, "objects", &volume_object("cli-o", "cli-v"));
    let list = dev.ferry_ok(&["volumes", "list"]);
    assert!(
        list.as_array()
            .into_iter()
            .flatten()
            .any(|v| v["name"] == "cli-v" && v["used_by"] == json!(["cli-o"])),
        "{list}"
    );
    let (ok, e, _) = dev.ferry(&["volumes", "delete", "node1", "cli-v", "--yes"]);
    assert!(!ok && e["error"]["code"] == "conflict", "{e}");
    assert!(e.to_string().contains("used by object cli-o"), "{e}");
    // One with snapshots needs --force.
    dev.ferry_ok(&["volumes", "create", "node1", "cli-x", "--size", "4M"]);
    agent_json(&dev.agent_config(), &["snapshot", "create", "cli-x", "s1"]);
    let (ok, e, _) = dev.ferry(&["volumes", "delete", "node1", "cli-x"]);
    assert!(!ok && e.to_string().contains("--force"), "{e}");
    let d = dev.ferry_ok(&["volumes", "delete", "node1", "cli-x", "--force"]);
    assert_eq!(d["snapshots_deleted"], 1, "{d}");
    let (ok, e, _) = dev.ferry(&["volumes", "delete", "node1", "cli-x"]);
    assert!(!ok && e["error"]["code"] == "not_found", "{e}");

    // Agents.
    let t = text(&["agents"]);
    assert!(
        t.contains("NODE") && t.contains("node1") && t.contains("up"),
        "{t}"
    );
    let a = dev.ferry_ok(&["agents"]);
    assert!(a[0]["free_bytes"].as_u64().unwrap_or(0) > 0, "{a}");

    // Status: a plan with a run, and one never run.
    create(dev, "plans", &plan("cli-p", &["cli-o"], 3));
    create(dev, "plans", &plan("cli-idle", &["cli-o"], 3));
    run(dev, "cli-p");
    let st = dev.ferry_ok(&["status"]);
    let p = st["plans"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "cli-p")
        .cloned()
        .unwrap_or_else(|| panic!("{st}"));
    assert_eq!(p["last_run"]["step"], "done", "{p}");
    assert!(
        p["newest_group"]
            .as_str()
            .unwrap_or("")
            .starts_with("cli-p-"),
        "{p}"
    );
    assert!(
        p["newest_group_age_secs"].as_u64().is_some_and(|a| a < 60),
        "{p}"
    );
    let t = text(&["status"]);
    assert!(t.contains("cli-p") && t.contains("done in"), "{t}");
    assert!(t.contains("cli-idle") && t.contains("never run"), "{t}");
    assert!(t.contains("agents: 1 up, 0 down"), "{t}");
    // --watch redraws until stopped.
    let mut watch = dev
        .ferry_cmd()
        .args(["status", "--watch", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("watch");
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let _ = watch.kill();
    let out = watch.wait_with_output().expect("output");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.matches("ferry status at").count() >= 2, "{shown}");

    // Runs in words: trigger, start, duration, bytes, result.
    let t = text(&["plans", "runs", "cli-p"]);
    assert!(
        t.contains("manual") && t.contains("done: group cli-p-"),
        "{t}"
    );
    // An object whole.
    let t = text(&["objects", "get", "cli-o"]);
    assert!(
        t.contains("virtual_volume") && t.contains("node1/cli-v"),
        "{t}"
    );
    // Completion scripts.
    for shell in ["bash", "zsh", "fish"] {
        let t = text(&["completion", shell]);
        assert!(t.contains("plans") && t.contains("volumes"), "{shell}: {t}");
    }
}

/// A failed hook says why: the run's error carries the last lines of its output, whichever
/// stream it wrote to.
#[test]
fn a_failed_hook_shows_the_tail_of_its_output() {
    let dev = Dev::shared();
    dev.volume("hook-v", "8M");
    create(dev, "objects", &volume_object("hook-o", "hook-v"));
    let mut p = plan("hook-p", &["hook-o"], 3);
    p["hooks"] = json!({"pre": "echo starting; for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15; do echo line $i; done; echo 'fsfreeze: /mnt/db: not mounted' >&2; exit 3"});
    create(dev, "plans", &p);
    let out = dev.ferry_raw(&["plans", "run", "hook-p", "--wait"]);
    assert_eq!(out.status.code(), Some(1));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("fsfreeze: /mnt/db: not mounted"), "{said}");
    assert!(
        said.contains("line 15") && !said.contains("line 2\n"),
        "only the tail: {said}"
    );
    assert!(said.contains("exit status: 3"), "{said}");
}

/// Defect found by the suite: volume tasks were named by the millisecond and the node, so
/// two volumes created on one node in the same millisecond (two API calls at once) got the
/// same task id. The agent refused the second as "already given with different content",
/// and the first caller could wait for an answer the second had taken, until its timeout.
#[test]
fn volumes_created_at_once_on_one_node_all_succeed() {
    let dev = Dev::shared();
    let n = 12;
    let start = std::sync::Barrier::new(n);
    let answers: Vec<(u16, Value)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..n)
            .map(|i| {
                let start = &start;
                s.spawn(move || {
                    start.wait();
                    dev.call(
                        "POST",
                        "/v1/agents/node1/volumes",
                        Some(json!({"name": format!("burst-{i}"), "size": "1M"})),
                    )
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    for (i, (code, r)) in answers.iter().enumerate() {
        assert_eq!(*code, 201, "volume burst-{i}: {r}");
    }
    for i in 0..n {
        let (code, r) = dev.call(
            "DELETE",
            &format!("/v1/agents/node1/volumes/burst-{i}"),
            None,
        );
        assert_eq!(code, 200, "delete burst-{i}: {r}");
    }
}
