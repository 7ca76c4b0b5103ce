//! Controller tasks on a real agent (`ferry-agent task run`): each task id runs at most once,
//! whatever happens, including SIGKILL in the middle of one.

use std::time::{Duration, Instant};

use ferry_tests::{Env, Fs};
use serde_json::{json, Value};

fn task(env: &Env, name: &str, t: &Value) -> std::path::PathBuf {
    let p = env.path(&format!("{name}.json"));
    std::fs::write(&p, serde_json::to_vec(t).expect("json")).expect("write task");
    p
}

fn run(env: &Env, file: &std::path::Path) -> (Option<i32>, Value) {
    let out = env
        .agent()
        .args(["--json", "task", "run"])
        .arg(file)
        .output()
        .expect("run");
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "bad JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), v)
}

fn group_task(id: &str, generation: u64, snapshot: &str, pre_hook: Option<&str>) -> Value {
    json!({
        "id": id, "generation": generation,
        "kind": {"snapshot_group": {
            "snapshot": snapshot, "volumes": ["v1", "v2"],
            "pre_hook": pre_hook, "post_hook": null, "hook_timeout_secs": 30
        }}
    })
}

/// An agent with volumes v1 and v2 (`None`: skipped).
fn two_volumes() -> Option<Env> {
    let env = Env::new(Fs::Local)?;
    env.ok(&["volume", "create", "v1", "--size", "4M"]);
    env.ok(&["volume", "create", "v2", "--size", "4M"]);
    Some(env)
}

#[test]
fn a_task_runs_at_most_once() {
    let Some(env) = two_volumes() else {
        return;
    };
    let t = task(&env, "t1", &group_task("t-1", 1, "g1", None));
    let (code, first) = run(&env, &t);
    assert_eq!(code, Some(0), "{first}");
    let snaps = &first["done"]["result"]["snapshot_group"]["snapshots"];
    assert_eq!(snaps.as_array().map(Vec::len), Some(2), "{first}");
    // Delete what it made, then give the same task again: it is answered from the ledger,
    // not run again (the snapshot does not come back).
    env.ok(&["snapshot", "delete", "v1", "g1"]);
    let (code, again) = run(&env, &t);
    assert_eq!((code, &again), (Some(0), &first));
    assert!(env.snapshots("v1").is_empty(), "ran twice");
    assert_eq!(env.ok(&["task", "show", "t-1"])["state"], first);

    // The same id with other content is refused.
    let other = task(&env, "t1b", &group_task("t-1", 1, "other", None));
    let out = env.raw(&["--json", "task", "run", other.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("different content"));

    // A newer generation is accepted; an older one is stale and does nothing.
    let (code, _) = run(&env, &task(&env, "t2", &group_task("t-2", 5, "g2", None)));
    assert_eq!(code, Some(0));
    let (code, stale) = run(&env, &task(&env, "t3", &group_task("t-3", 4, "g3", None)));
    assert_eq!(code, Some(1));
    assert_eq!(stale["stale"]["newest"], 5, "{stale}");
    assert!(!env.snapshots("v1").contains(&"g3".to_string()));
    // The same id resent by a newer leader (a resumed run) gets the recorded answer: the
    // generation is the sender's term, not part of the work.
    let (code, resent) = run(&env, &task(&env, "t1c", &group_task("t-1", 6, "g1", None)));
    assert_eq!((code, &resent), (Some(0), &first));
    assert!(env.snapshots("v1").iter().all(|s| s != "g1"), "ran twice");

    // A task that fails says why, with the store's error kind; it is not retried either.
    let del = json!({"id": "t-4", "generation": 5,
        "kind": {"delete_snapshot": {"volume": "v1", "snapshot": "nosuch"}}});
    let f = task(&env, "t4", &del);
    let (code, failed) = run(&env, &f);
    assert_eq!(code, Some(1));
    assert_eq!(failed["failed"]["kind"], "not_found", "{failed}");
    assert_eq!(run(&env, &f).1, failed);

    // Rollback and clone (a rebuild) through tasks.
    let clone = json!({"id": "t-5", "generation": 5,
        "kind": {"clone": {"volume": "v1", "snapshot": "g2", "new_volume": "rebuilt"}}});
    let (code, cloned) = run(&env, &task(&env, "t5", &clone));
    assert_eq!(
        (code, &cloned["done"]["result"]["cloned"]["volume"]),
        (Some(0), &json!("rebuilt"))
    );
    let rb = json!({"id": "t-6", "generation": 5,
        "kind": {"rollback": {"volume": "v2", "snapshot": "g2"}}});
    assert_eq!(run(&env, &task(&env, "t6", &rb)).0, Some(0));

    // Bad input: not JSON, a bad id, an unknown kind.
    for (name, text) in [
        ("bad1", "not json".to_string()),
        ("bad2", json!({"id": "../x", "generation": 1, "kind": {"rollback": {"volume": "v1", "snapshot": "g2"}}}).to_string()),
        ("bad3", json!({"id": "t-9", "generation": 1, "kind": {"format_disk": {}}}).to_string()),
    ] {
        let p = env.path(name);
        std::fs::write(&p, text).expect("write");
        let (kind, msg) = env.fails(&["task", "run", p.to_str().expect("utf8")]);
        assert_eq!(kind, "error", "{name}: {msg}");
        assert!(msg.contains("not a valid task"), "{name}: {msg}");
    }
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}

/// SIGKILL while a task runs (inside its pre hook): the task is `interrupted` afterwards and
/// never runs again; the store recovered (no half group).
#[test]
fn a_task_killed_midway_is_interrupted_not_rerun() {
    let Some(env) = two_volumes() else {
        return;
    };
    let marker = env.path("hook-started");
    let hook = format!("touch {} && sleep 30", marker.display());
    let t = task(&env, "slow", &group_task("t-slow", 1, "g1", Some(&hook)));
    let mut child = env.spawn(&["task", "run", t.to_str().expect("utf8")]);
    let t0 = Instant::now();
    while !marker.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the hook never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("kill");
    child.wait().expect("wait");
    let (code, state) = run(&env, &t);
    assert_eq!(code, Some(1));
    assert_eq!(state, json!("interrupted"));
    assert!(env.snapshots("v1").is_empty() && env.snapshots("v2").is_empty());
    std::fs::remove_file(&marker).expect("rm marker");
    assert_eq!(run(&env, &t).1, json!("interrupted"));
    assert!(!marker.exists(), "the task ran again");
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}

fn hold_task(id: &str, kind: Value) -> Value {
    json!({"id": id, "generation": 1, "kind": kind})
}

/// Prepare / snapshot / release on one agent: the pre hook runs at prepare, the snapshot is
/// taken under the hold without running hooks again, the post hook runs at release. A hold
/// not released in time ends by itself (post hook run), and a snapshot under it then fails;
/// a prepare that comes after its release is refused.
#[test]
fn holds_freeze_until_released_or_their_time_is_up() {
    let Some(env) = two_volumes() else {
        return;
    };
    let log = env.path("hooks.log");
    let hook = |what: &str| {
        format!(
            "echo {what} $FERRY_SNAPSHOT $FERRY_VOLUMES >> {}",
            log.display()
        )
    };
    let lines = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let prepare = |id: &str, hold: &str, secs: u64| {
        hold_task(
            id,
            json!({"prepare": {"hold": hold, "volumes": ["v1", "v2"], "pre_hook": hook("pre"),
                "post_hook": hook("post"), "hook_timeout_secs": null, "hold_secs": secs}}),
        )
    };
    let snap_under = |id: &str, hold: &str, snap: &str| {
        hold_task(
            id,
            json!({"snapshot_group": {"snapshot": snap, "volumes": ["v1", "v2"], "pre_hook": null,
                "post_hook": null, "hook_timeout_secs": null, "hold": hold}}),
        )
    };
    let release = |id: &str, hold: &str| hold_task(id, json!({"release": {"hold": hold}}));

    let (code, st) = run(&env, &task(&env, "p1", &prepare("h-p1", "r1", 60)));
    assert_eq!(
        (code, &st),
        (Some(0), &json!({"done": {"result": "prepared"}}))
    );
    assert_eq!(lines(), ["pre r1 v1 v2"]);
    let (code, st) = run(&env, &task(&env, "s1", &snap_under("h-s1", "r1", "g1")));
    assert_eq!(code, Some(0), "{st}");
    assert_eq!(
        lines().len(),
        1,
        "no hook runs at the snapshot: {:?}",
        lines()
    );
    assert!(env.snapshots("v1").contains(&"g1".to_string()));
    let (code, st) = run(&env, &task(&env, "r1", &release("h-r1", "r1")));
    assert_eq!(code, Some(0), "{st}");
    assert_eq!(st["done"]["result"]["released"]["expired"], false);
    assert_eq!(lines(), ["pre r1 v1 v2", "post r1 v1 v2"]);
    // Released twice (a resend under a new id) does nothing more.
    run(&env, &task(&env, "r1b", &release("h-r1b", "r1")));
    assert_eq!(lines().len(), 2);

    // A hold of 1 s, never released: it ends by itself, and the snapshot under it fails.
    run(&env, &task(&env, "p2", &prepare("h-p2", "r2", 1)));
    std::thread::sleep(Duration::from_millis(1500));
    let (code, st) = run(&env, &task(&env, "s2", &snap_under("h-s2", "r2", "g2")));
    assert_eq!(code, Some(1));
    assert_eq!(st["failed"]["kind"], "hold_ended", "{st}");
    assert!(!env.snapshots("v1").contains(&"g2".to_string()));
    assert_eq!(lines()[2..], ["pre r2 v1 v2", "post r2 v1 v2"]);
    let (_, st) = run(&env, &task(&env, "r2", &release("h-r2", "r2")));
    assert_eq!(st["done"]["result"]["released"]["expired"], true, "{st}");

    // A release that overtook its prepare: the prepare is refused, nothing is frozen.
    run(&env, &task(&env, "r3", &release("h-r3", "r3")));
    let (code, st) = run(&env, &task(&env, "p3", &prepare("h-p3", "r3", 60)));
    assert_eq!(
        (code, &st["failed"]["kind"]),
        (Some(1), &json!("hold_ended")),
        "{st}"
    );
    assert_eq!(lines().len(), 4, "{:?}", lines());
    // A snapshot under a hold never prepared fails too.
    let (_, st) = run(&env, &task(&env, "s4", &snap_under("h-s4", "nohold", "g4")));
    assert_eq!(st["failed"]["kind"], "hold_ended", "{st}");
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}
