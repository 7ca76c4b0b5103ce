//! What a red-team pass broke (issue 11), each test failing before its fix.

use std::time::{Duration, Instant};

use ferry_tests::{Env, Fs};

/// Whether a process whose command line contains `marker` is alive.
fn running(marker: &str) -> bool {
    std::process::Command::new("pgrep")
        .args(["-f", marker])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Finding 1: a hook's child outlived the timeout (only the shell was killed) and the agent
/// waited for it to close its output; a hook that succeeded but left a child blocked too.
#[test]
fn hooks_end_at_their_timeout_with_everything_they_started() {
    let Some(env) = Env::new(Fs::Local) else {
        return;
    };
    env.ok(&["volume", "create", "v", "--size", "4M"]);
    let t0 = Instant::now();
    let (kind, msg) = env.fails(&[
        "snapshot",
        "create",
        "v",
        "s1",
        "--pre",
        "sleep 25.31",
        "--hook-timeout",
        "2",
    ]);
    assert_eq!(kind, "hook_failed", "{msg}");
    assert!(
        msg.contains("timed out after 2 s and was killed, with everything it started"),
        "{msg}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "took {:?}",
        t0.elapsed()
    );
    assert!(
        !running("sleep 25.31"),
        "the hook's child was killed with it"
    );
    // A hook that succeeds and leaves a child behind: the snapshot does not wait for it.
    let t0 = Instant::now();
    env.ok(&[
        "snapshot",
        "create",
        "v",
        "s2",
        "--pre",
        "sleep 30.71 & echo started",
        "--hook-timeout",
        "20",
    ]);
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t0.elapsed()
    );
    // Cleanup: what the hook left is its own business, but not the test machine's.
    let _ = std::process::Command::new("pkill")
        .args(["-f", "sleep 30.71"])
        .status();
}

/// Finding 1 through the controller: a plan's hook is killed at its timeout, and a volume
/// creation queued behind a long hook is refused by the agent once it waited too long, so
/// the API's answer (503, not done) is the truth: the volume never appears.
#[test]
fn a_long_hook_delays_other_tasks_but_a_refusal_means_not_done() {
    use ferry_tests::dev::Dev;
    use serde_json::json;
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = Dev::start(dir.path());
    dev.volume("hv", "8M");
    let obj = json!({"name": "ho", "kind": {"type": "virtual_volume", "volume": {"node": "node1", "volume": "hv"}}});
    assert_eq!(dev.call("POST", "/v1/objects", Some(obj)).0, 201);
    let plan = |name: &str, pre: &str, timeout: u64| {
        json!({"name": name, "objects": ["ho"], "retention": 2, "enabled": false,
            "schedule": {"every": "daily", "start": "2030-01-01T00:00"},
            "hooks": {"pre": pre, "timeout_secs": timeout}})
    };
    assert_eq!(
        dev.call("POST", "/v1/plans", Some(plan("quick", "sleep 60.17", 3)))
            .0,
        201
    );
    let t0 = Instant::now();
    let (ok, run, _) = dev.ferry(&["plans", "run", "quick", "--wait"]);
    assert!(!ok, "{run}");
    assert!(run.to_string().contains("timed out after 3 s"), "{run}");
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t0.elapsed()
    );
    assert!(!running("sleep 60.17"));
    // A hook of 40 s holds the agent; a volume creation meanwhile waits, then is refused.
    assert_eq!(
        dev.call("POST", "/v1/plans", Some(plan("slow", "sleep 40.23", 60)))
            .0,
        201
    );
    let (code, v) = dev.call("POST", "/v1/plans/slow/run", None);
    assert_eq!(code, 202, "{v}");
    std::thread::sleep(Duration::from_millis(500));
    let (code, v) = dev.call(
        "POST",
        "/v1/agents/node1/volumes",
        Some(json!({"name": "late", "size": "4M"})),
    );
    assert_eq!(code, 503, "{v}");
    assert_eq!(v["error"]["code"], "agent_busy", "{v}");
    ferry_tests::controller::wait_for("the slow run ends", 60, || {
        let (_, runs) = dev.call("GET", "/v1/plans/slow/runs", None);
        runs[0]["run"]["step"] == "done"
    });
    std::thread::sleep(Duration::from_secs(3));
    let (_, vols) = dev.call("GET", "/v1/agents/node1/volumes", None);
    assert!(
        !vols.to_string().contains("\"late\""),
        "refused means not done: {vols}"
    );
}
