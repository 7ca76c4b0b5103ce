//! What a red-team pass broke (issue 11), each test failing before its fix.

use std::time::{Duration, Instant};

use ferry_tests::pair::Pair;
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

/// `ferry-controller serve` on an embedded store at `path`: (exit code, stderr), or None
/// when it started serving (it is killed then).
fn serve_embedded(path: &std::path::Path) -> Option<(Option<i32>, String)> {
    use std::io::Read;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("c.toml");
    let text = ferry_tests::controller::config(&ferry_tests::controller::embedded_at(path));
    std::fs::write(&cfg, text).expect("config");
    let mut child = std::process::Command::new(ferry_tests::bin("ferry-controller"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(st)) = child.try_wait() {
            let mut err = String::new();
            let _ = child
                .stderr
                .take()
                .expect("stderr")
                .read_to_string(&mut err);
            return Some((st.code(), err));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Finding 3: a damaged or empty store file panicked inside redb (exit 101, a restart loop)
/// or, empty, started with no state at all. Now any file that is not a valid store is
/// refused at start with a clear error.
#[test]
fn a_damaged_or_empty_store_file_is_refused_at_start() {
    use ferry_controller::state::{EmbeddedStore, Store};
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = dir.path().join("empty.redb");
    std::fs::write(&empty, b"").expect("write");
    let (code, err) = serve_embedded(&empty).expect("refused");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("empty") && !err.contains("panicked"), "{err}");
    // A real store, then damaged: bytes flipped in its middle, or cut short.
    let good = dir.path().join("good.redb");
    {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        let s = Store::Embedded(EmbeddedStore::open(&good).expect("open"));
        for i in 0..200 {
            rt.block_on(s.put(&format!("/ferry/objects/o{i}"), &vec![b'x'; 2000]))
                .expect("put");
        }
    }
    let bytes = std::fs::read(&good).expect("read");
    for (name, damaged) in [
        ("flipped", {
            // One byte in every 4 KiB page past the header: data pages are hit.
            let mut b = bytes.clone();
            for at in (4096 + 100..b.len()).step_by(4096) {
                b[at] = !b[at];
            }
            b
        }),
        ("header", {
            let mut b = bytes.clone();
            for x in &mut b[..512] {
                *x = !*x;
            }
            b
        }),
        ("truncated", bytes[..bytes.len() / 2].to_vec()),
    ] {
        let p = dir.path().join(format!("{name}.redb"));
        std::fs::write(&p, &damaged).expect("write");
        let (code, err) = serve_embedded(&p).unwrap_or_else(|| panic!("{name}: it served"));
        assert_eq!(code, Some(1), "{name}: {err}");
        assert!(!err.contains("panicked"), "{name}: {err}");
        assert!(err.contains("not a valid ferry store"), "{name}: {err}");
    }
}

/// Finding 2: after the embedded store's disk filled, every write kept failing (redb's
/// "Previous I/O error") though space was freed, and `/healthz` said ok. Now the store is
/// unhealthy while broken and reopens itself once there is room.
#[test]
fn the_embedded_store_recovers_after_its_disk_filled() {
    use ferry_tests::controller::{wait_for, Controller};
    use serde_json::json;
    let Some(fs) = ferry_tests::Tmpfs::mount("16M") else {
        return;
    };
    let c = Controller::start(&ferry_tests::controller::embedded_at(
        &fs.path.join("state.redb"),
    ));
    let object = |i: usize| {
        json!({"name": format!("o{i}"), "kind": {"type": "nfs_file", "export": "/exports",
            "path": format!("{}/{i}.img", "d".repeat(1000)),
            "volume": {"node": "n1", "volume": format!("v{i}")}}})
    };
    for i in 0..10 {
        let (code, v) = c.admin("POST", "/v1/objects?allow_missing=true", Some(object(i)));
        assert_eq!(code, 201, "{v}");
    }
    // Fill the filesystem, then write until the store fails.
    let filler = fs.path.join("filler");
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", filler.display()))
        .stderr(std::process::Stdio::null())
        .status();
    let mut failed_at = None;
    for i in 10..20_000 {
        let (code, v) = c.admin("POST", "/v1/objects?allow_missing=true", Some(object(i)));
        if code == 503 {
            assert_eq!(v["error"]["code"], "store_unavailable", "{v}");
            failed_at = Some(i);
            break;
        }
        assert_eq!(code, 201, "{v}");
    }
    let failed_at = failed_at.expect("the full disk made a write fail");
    let (code, h) = c.call("GET", "/healthz", None, None);
    assert_eq!(code, 503, "unhealthy while broken: {h}");
    // Room again: the store reopens and writes go through.
    std::fs::remove_file(&filler).expect("free space");
    wait_for("writes work again", 20, || {
        c.admin(
            "POST",
            "/v1/objects?allow_missing=true",
            Some(object(failed_at + 1)),
        )
        .0 == 201
    });
    let (code, h) = c.call("GET", "/healthz", None, None);
    assert_eq!(code, 200, "{h}");
    let (code, o) = c.admin("GET", "/v1/objects/o9", None);
    assert_eq!(code, 200, "what was written before is there: {o}");
}

/// Finding 4: half-open requests (headers never finished) were held for ever, past the
/// descriptor limit, and one delayed exit on SIGTERM by 40 s. Now headers have a deadline,
/// connections a limit with a clear answer past it, and shutdown a bound.
#[test]
fn half_open_connections_are_bounded_and_closed() {
    use ferry_controller::http::server::{HEADER_TIMEOUT, MAX_CONNECTIONS};
    use ferry_tests::controller::{wait_for, Controller};
    use std::io::{Read, Write};
    let mut c = Controller::start(ferry_tests::controller::EMBEDDED);
    let half_open = || {
        let mut s = std::net::TcpStream::connect(c.addr).expect("connect");
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .expect("write");
        s
    };
    let mut held: Vec<std::net::TcpStream> = (0..MAX_CONNECTIONS).map(|_| half_open()).collect();
    // Past the limit: a clear answer at once.
    let mut extra = std::net::TcpStream::connect(c.addr).expect("connect");
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut answer = String::new();
    let _ = extra.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 503") && answer.contains("too_many_connections"),
        "{answer:?}"
    );
    // The half-open ones are closed at the header deadline, and the API answers again.
    let t0 = Instant::now();
    wait_for(
        "the half-open connections are closed",
        HEADER_TIMEOUT.as_secs() + 15,
        || c.call("GET", "/healthz", None, None).0 == 200,
    );
    assert!(t0.elapsed() >= Duration::from_secs(1));
    let closed = held
        .iter_mut()
        .map(|s| {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = [0u8; 1];
            match s.read(&mut buf) {
                Ok(0) => true,
                Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
                Ok(_) => false,
            }
        })
        .filter(|c| *c)
        .count();
    assert_eq!(closed, held.len(), "every half-open connection was closed");
    drop(held);
    // SIGTERM with a half-open connection: the controller exits within its bound.
    let _h = half_open();
    let t0 = Instant::now();
    assert!(c.terminate().is_some(), "it exits");
    assert!(
        t0.elapsed() < Duration::from_secs(12),
        "exit took {:?}",
        t0.elapsed()
    );
}

/// A `/proc/PID/status` field in KiB (VmRSS, VmHWM).
fn proc_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim_start_matches(':')
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// A VM object of about 3.8 KB (as in the finding: 3,032 of them made 11.6 MB).
fn big_vm(i: usize) -> serde_json::Value {
    let disks: Vec<_> = (0..24)
        .map(|d| serde_json::json!({"volume": {"node": "node-with-a-long-name-for-sizing", "volume": format!("vm-{i:05}-disk-{d:02}-with-a-long-volume-name")}}))
        .collect();
    let nics: Vec<_> = (0..4)
        .map(|n| serde_json::json!({"switch": format!("switch-{n}"), "mac": format!("52:54:00:00:{:02x}:{n:02x}", i % 256)}))
        .collect();
    serde_json::json!({"name": format!("vm-{i:05}"), "kind": {"type": "vm", "vcpus": 4, "memory_mib": 8192, "disks": disks, "nics": nics}})
}

/// How many objects `GET /v1/objects` lists, page after page, counted in the raw answers
/// (parsing 150 copies of the site in this debug build would take most of the test's time).
fn objects_listed(addr: &str, token: &str) -> usize {
    use std::io::{Read, Write};
    let (mut count, mut after) = (0, String::new());
    loop {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        let req = format!(
            "GET /v1/objects?limit=1000{after} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             Authorization: Bearer {token}\r\n\r\n"
        );
        s.write_all(req.as_bytes()).expect("write");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let Some(head_end) = out.windows(4).position(|w| w == b"\r\n\r\n") else {
            return count;
        };
        let head = String::from_utf8_lossy(&out[..head_end]);
        if !head.starts_with("HTTP/1.1 200") {
            return count;
        }
        count += out[head_end..]
            .windows(8)
            .filter(|w| w == b"\"kind\":{")
            .count();
        match head.lines().find_map(|l| l.strip_prefix("x-next-after: ")) {
            Some(n) => after = format!("&after={n}"),
            None => return count,
        }
    }
}

/// Finding 5: 150 concurrent reads of 3,032 VM objects took the controller from 0.76 GB to
/// 2.26 GB. Lists come in pages now and list requests take turns, so memory follows the
/// page, not the site; every object is still listed, page after page.
#[test]
fn lists_come_in_pages_and_memory_stays_bounded_under_concurrent_reads() {
    use ferry_tests::controller::{Controller, READER};
    let c = Controller::start(ferry_tests::controller::EMBEDDED);
    const OBJECTS: usize = 3_000;
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for t in 0..4 {
            let c = &c;
            s.spawn(move || {
                for i in (t..OBJECTS).step_by(4) {
                    let body = serde_json::to_vec(&big_vm(i)).expect("json");
                    let (code, v) = c.call(
                        "POST",
                        "/v1/objects?allow_missing=true",
                        Some(ferry_tests::controller::ADMIN),
                        Some(&body),
                    );
                    assert_eq!(code, 201, "{v}");
                }
            });
        }
    });
    eprintln!("{OBJECTS} objects made in {:?}", t0.elapsed());
    // Pages: 500 by default, the cursor in x-next-after, every object exactly once.
    let (code, first) = c.call("GET", "/v1/objects", Some(READER), None);
    assert_eq!(code, 200);
    assert_eq!(first.as_array().map(Vec::len), Some(500));
    let all = c.list("/v1/objects?limit=1000").expect("list");
    let names: std::collections::BTreeSet<String> = all
        .iter()
        .filter_map(|o| o["name"].as_str().map(String::from))
        .collect();
    assert_eq!(names.len(), OBJECTS);
    assert_eq!(
        c.call("GET", "/v1/objects?limit=1001", Some(READER), None)
            .0,
        400
    );
    assert_eq!(
        c.call("GET", "/v1/objects?after=../x", Some(READER), None)
            .0,
        400
    );

    let pid = c.pid();
    let before = proc_kib(pid, "VmRSS");
    let addr = c.addr.to_string();
    let ok = std::sync::atomic::AtomicUsize::new(0);
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..150 {
            let (addr, ok) = (&addr, &ok);
            s.spawn(move || {
                if objects_listed(addr, READER) == OBJECTS {
                    ok.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    });
    eprintln!("150 readers took {:?}", t0.elapsed());
    let peak = proc_kib(pid, "VmHWM");
    let after = proc_kib(pid, "VmRSS");
    eprintln!("controller: {before} KiB before, {peak} KiB at most, {after} KiB after");
    assert_eq!(ok.into_inner(), 150, "every reader got every object");
    assert!(
        peak.saturating_sub(before) < 300 * 1024,
        "memory grew from {before} KiB to {peak} KiB"
    );
}

/// Finding 5: on etcd, one prefix read of 10,000 run records was more than an etcd
/// response may carry (`list runs: 503`). They list now, in pages.
#[test]
fn ten_thousand_runs_list_on_etcd() {
    use ferry_controller::machines::run::Step;
    use ferry_controller::state::{EtcdStore, Op, Store, Txn};
    use ferry_tests::controller::{Controller, ADMIN};
    let Some(etcd) = ferry_tests::Etcd::start() else {
        return;
    };
    let c = Controller::start(&format!(
        "[store]\nkind = \"etcd\"\nendpoints = [{:?}]",
        etcd.endpoint
    ));
    let (code, v) = c.admin(
        "POST",
        "/v1/objects?allow_missing=true",
        Some(serde_json::json!({"name": "o", "kind": {"type": "virtual_volume", "volume": {"node": "n", "volume": "v"}}})),
    );
    assert_eq!(code, 201, "{v}");
    let plan = serde_json::json!({"name": "p", "objects": ["o"], "enabled": false, "schedule": {"every": "daily", "start": "2026-01-01T00:00"}, "retention": 3});
    let (code, v) = c.admin("POST", "/v1/plans", Some(plan));
    assert_eq!(code, 201, "{v}");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let store = Store::Etcd(
            EtcdStore::connect(std::slice::from_ref(&etcd.endpoint))
                .await
                .expect("connect"),
        );
        // 100 plans' histories of 100 runs each, as the scheduler writes them, all over.
        let mut ops = Vec::new();
        for p in 0..100 {
            let mut rec: ferry_controller::state::schema::PlanRecord =
                serde_json::from_value(v.clone()).expect("plan record");
            rec.spec.name = ferry_wire::Name::new(&format!("plan-{p:03}")).expect("name");
            rec.id = Some(ferry_controller::state::schema::new_plan_id(&rec.spec.name));
            for r in 0..100 {
                let at = jiff::Timestamp::from_second(1_780_000_000 + r * 3600).expect("time");
                let mut run =
                    ferry_controller::daemon::scheduler::new_run(&rec, &[], Some(at), 1, at);
                run.run.step = Step::Done;
                run.run.finished = Some(at.to_string());
                ops.push(Op::Put(run.key(), serde_json::to_vec(&run).expect("json")));
            }
        }
        for chunk in ops.chunks(ferry_controller::state::MAX_TXN_OPS) {
            let t = Txn {
                when: vec![],
                then: chunk.to_vec(),
            };
            assert!(store.txn(t).await.expect("txn").succeeded);
        }
    });
    let runs = c.list("/v1/runs?limit=1000").expect("list runs");
    let ids: std::collections::BTreeSet<String> = runs
        .iter()
        .filter_map(|r| {
            Some(format!(
                "{}/{}",
                r["plan_id"].as_str()?,
                r["run"]["id"].as_str()?
            ))
        })
        .collect();
    assert_eq!(ids.len(), 10_000);
    let (code, page) = c.admin("GET", "/v1/runs", None);
    assert_eq!(code, 200);
    assert_eq!(page.as_array().map(Vec::len), Some(500));
    let _ = ADMIN;
}

/// Finding 6: a sender killed while the receiver committed, retried at once, got
/// "mirror snapshot already exists" for good. A snapshot committed with the same root is
/// the retry's success, whatever moment the sender died.
#[test]
fn a_retry_after_the_sender_died_near_the_end_succeeds() {
    use rand::Rng;
    let s = Pair::with(&std::env::temp_dir(), None, &[], false);
    let mut r = ferry_tests::rng("retry-near-the-end");
    const MIB: usize = 1 << 20;
    s.a(&["volume", "create", "v", "--size", "64M"]);
    let v = s.path("v");
    let rate = "32MiB";
    // How long one transfer of 48 MiB takes, unkilled.
    ferry_tests::write_random(&v, 0, 48 * MIB, &mut r);
    s.a(&["snapshot", "create", "v", "s0"]);
    let (ok, out, took) =
        s.try_replicate(&s.a_cfg, "v", "s0", &["--retries", "0", "--bwlimit", rate]);
    assert!(ok, "{out}");
    let (mut killed, mut hit) = (0, 0);
    for i in 1..=8 {
        let snap = format!("s{i}");
        ferry_tests::write_random(&v, 0, 48 * MIB, &mut r);
        s.a(&["snapshot", "create", "v", &snap]);
        let addr = s.addr();
        let mut child = std::process::Command::new(ferry_tests::bin("ferry-agent"))
            .arg("--config")
            .arg(&s.a_cfg)
            .args(["--json", "replicate", "v", &snap, "--to", &addr])
            .args(["--retries", "0", "--bwlimit", rate])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(Duration::from_secs_f64(took * r.gen_range(0.8..1.05)));
        if child.try_wait().expect("wait").is_none() {
            killed += 1;
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
        }
        let _ = child.wait();
        let (ok, out, _) = s.try_replicate(&s.a_cfg, "v", &snap, &["--retries", "0"]);
        assert!(ok, "try {i}: the retry failed: {out}");
        if out["already_there"] == true {
            hit += 1;
        }
        assert_eq!(s.b(&["snapshot", "verify", "v", &snap])["ok"], true);
    }
    eprintln!("{killed} of 8 senders killed; {hit} retries found the snapshot committed");
    assert!(killed > 0, "no sender was killed: the test did not test");
}

/// Free bytes of the filesystem holding `p`.
fn free_bytes(p: &std::path::Path) -> u64 {
    ferry_agent::fsx::space(p).0
}

/// Finding 7: errors were of the wrong kind at the sender: a receiver out of space came
/// back as "peer identity refused" (and was logged so there), policy refusals as `network`
/// (retried five times over 31 s), another snapshot of the same name as `corrupt`.
#[test]
fn errors_reach_the_sender_with_their_class() {
    let Some(tmp) = ferry_tests::Tmpfs::mount("48m") else {
        return;
    };
    let s = Pair::with(&std::env::temp_dir(), Some(&tmp.path), &["site-c"], true);
    let mut r = ferry_tests::rng("error-classes");
    const MIB: usize = 1 << 20;
    // Out of space on the receiver: no_space, at once, and not an identity problem there.
    s.a(&["volume", "create", "big", "--size", "96M"]);
    ferry_tests::write_random(&s.path("big"), 0, 80 * MIB, &mut r);
    s.a(&["snapshot", "create", "big", "s1"]);
    let (ok, out, _) = s.try_replicate(&s.a_cfg, "big", "s1", &[]);
    assert!(!ok);
    assert_eq!(out["error"]["kind"], "no_space", "{out}");
    let log = std::fs::read_to_string(s.b_log.as_ref().expect("logged")).expect("log");
    assert!(!log.contains("identity"), "{log}");
    assert!(log.contains("no_space"), "{log}");
    // The mirror can be deleted on the full disk, and the space comes back once the failed
    // session has let go of its files (its journal flusher wakes every 2 s).
    s.b(&["volume", "delete", "big", "--force"]);
    ferry_tests::controller::wait_for("the space is back", 10, || free_bytes(&tmp.path) > 40 << 20);

    // Policy: into a volume that is not a mirror: refused, without retrying.
    s.b(&["volume", "create", "plain", "--size", "4M"]);
    s.a(&["volume", "create", "plain", "--size", "4M"]);
    s.a(&["snapshot", "create", "plain", "s1"]);
    let (ok, out, took) = s.try_replicate(&s.a_cfg, "plain", "s1", &[]);
    assert!(!ok);
    assert_eq!(out["error"]["kind"], "refused", "{out}");
    assert!(took < 10.0, "a refusal is not retried ({took:.1} s)");

    // Policy: site-c into site-a's mirror: refused.
    s.a(&["volume", "create", "m", "--size", "4M"]);
    ferry_tests::write_random(&s.path("m"), 0, MIB, &mut r);
    s.a(&["snapshot", "create", "m", "s1"]);
    let (ok, out, _) = s.try_replicate(&s.a_cfg, "m", "s1", &[]);
    assert!(ok, "{out}");
    let c = s
        .pki
        .agent_config("site-c", "x1", &["site-b"], &s.dir.path().join("c"));
    Pair::ok(&c, &["volume", "create", "m", "--size", "4M"]);
    Pair::ok(&c, &["snapshot", "create", "m", "s2"]);
    let (ok, out, took) = s.try_replicate(&c, "m", "s2", &[]);
    assert!(!ok);
    assert_eq!(out["error"]["kind"], "refused", "{out}");
    assert!(took < 10.0, "a refusal is not retried ({took:.1} s)");

    // Another snapshot of the same name: site-a's volume made anew, its s1 sent again.
    s.a(&["volume", "delete", "m", "--force"]);
    s.a(&["volume", "create", "m", "--size", "4M"]);
    ferry_tests::write_random(&s.path("m"), 0, MIB, &mut r);
    s.a(&["snapshot", "create", "m", "s1"]);
    let (ok, out, _) = s.try_replicate(&s.a_cfg, "m", "s1", &[]);
    assert!(!ok);
    assert_eq!(out["error"]["kind"], "conflict", "{out}");
}

/// Finding 8: on a full disk `info`, `volume list`, `snapshot list` and `volume delete
/// --force` failed on the reflink probe ("needs more room"), so ferry could neither inspect
/// nor free the space.
#[test]
fn the_agent_cli_inspects_and_frees_a_full_disk() {
    use std::io::Write;
    let Some(tmp) = ferry_tests::Tmpfs::mount("24m") else {
        return;
    };
    let data = tmp.path.join("agent");
    let agent = |args: &[&str]| {
        let out = std::process::Command::new(ferry_tests::bin("ferry-agent"))
            .arg("--data-dir")
            .arg(&data)
            .arg("--json")
            .args(args)
            .env_remove("FERRY_AGENT_CONFIG")
            .output()
            .expect("run ferry-agent");
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        assert!(out.status.success(), "{args:?}: {v}");
        v
    };
    agent(&["volume", "create", "v", "--size", "8M"]);
    let img = agent(&["volume", "path", "v"])["path"]
        .as_str()
        .expect("path")
        .to_string();
    ferry_tests::write_random(
        std::path::Path::new(&img),
        0,
        8 << 20,
        &mut ferry_tests::rng("full-cli"),
    );
    agent(&["snapshot", "create", "v", "s1"]);
    // Fill what is left.
    let mut filler = std::fs::File::create(tmp.path.join("filler")).expect("filler");
    let chunk = vec![0x77u8; 1 << 20];
    while filler.write_all(&chunk).is_ok() {}
    assert!(free_bytes(&tmp.path) < 4096, "the disk is full");
    assert!(agent(&["info"])["backend"].is_string());
    assert_eq!(agent(&["volume", "list"]).as_array().map(Vec::len), Some(1));
    assert_eq!(
        agent(&["snapshot", "list", "v"]).as_array().map(Vec::len),
        Some(1)
    );
    agent(&["volume", "delete", "v", "--force"]);
    assert!(
        free_bytes(&tmp.path) >= 16 << 20,
        "the volume's space is free"
    );
}

/// A node certificate for `node` of `site` from the CA in `ca_dir`, valid from `from` to
/// `to` (Unix seconds): what `pki issue` will not make (an expired or future one).
fn cert_valid(
    ca_dir: &std::path::Path,
    site: &str,
    node: &str,
    from: i64,
    to: i64,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let ca_pem = std::fs::read_to_string(ca_dir.join("ca.pem")).expect("ca");
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(ca_dir.join("ca.key")).expect("key"))
            .expect("ca key");
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).expect("issuer");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut p = rcgen::CertificateParams::new(vec!["ferry-agent".to_string()]).expect("params");
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, node);
    dn.push(rcgen::DnType::OrganizationName, site);
    p.distinguished_name = dn;
    p.not_before = rcgen::date_time_ymd(1970, 1, 1) + std::time::Duration::from_secs(from as u64);
    p.not_after = rcgen::date_time_ymd(1970, 1, 1) + std::time::Duration::from_secs(to as u64);
    p.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = p.signed_by(&key, &issuer).expect("sign");
    let (c, k) = (
        ca_dir.join(format!("{node}-odd.pem")),
        ca_dir.join(format!("{node}-odd.key")),
    );
    std::fs::write(&c, cert.pem()).expect("write");
    std::fs::write(&k, key.serialize_pem()).expect("write");
    (c, k)
}

/// Finding 9: `pki issue --days 0` made a certificate already expired; `serve` started on
/// an expired or not-yet-valid certificate and failed only at handshakes; directories were
/// made 0777 under umask 000.
#[test]
fn certificates_are_checked_when_made_and_when_served() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let pki = ferry_tests::Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = |args: &[&str]| {
        let mut c = std::process::Command::new(ferry_tests::bin("ferry-agent"));
        c.arg("--json").args(args);
        // SAFETY: umask is async-signal-safe; called in the child before exec.
        unsafe {
            c.pre_exec(|| {
                libc::umask(0);
                Ok(())
            });
        }
        let out = c.output().expect("run");
        (
            out.status.success(),
            serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default(),
        )
    };
    let ca = dir.path().join("deep/er/ca");
    let ca_s = ca.to_str().expect("utf8");
    let (ok, v) = agent(&["pki", "ca", "site-q", "--dir", ca_s, "--days", "0"]);
    assert!(!ok && v["error"]["kind"] == "invalid_argument", "{v}");
    assert!(agent(&["pki", "ca", "site-q", "--dir", ca_s, "--days", "100"]).0);
    let out = dir.path().join("out/certs");
    let out_s = out.to_str().expect("utf8");
    let (ok, v) = agent(&[
        "pki", "issue", "n1", "--ca-dir", ca_s, "--out", out_s, "--days", "0",
    ]);
    assert!(!ok && v["error"]["kind"] == "invalid_argument", "{v}");
    // Not beyond the CA's own end.
    let (ok, v) = agent(&[
        "pki", "issue", "n1", "--ca-dir", ca_s, "--out", out_s, "--days", "200",
    ]);
    assert!(
        !ok && v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("outlive"),
        "{v}"
    );
    assert!(agent(&["pki", "issue", "n1", "--ca-dir", ca_s, "--out", out_s, "--days", "10"]).0);
    for d in [
        dir.path().join("deep"),
        dir.path().join("deep/er"),
        ca.clone(),
        dir.path().join("out"),
        out.clone(),
    ] {
        let mode = std::fs::metadata(&d).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", d.display());
    }

    // serve refuses a certificate that is not valid now, saying so at start.
    pki.ca("site-a");
    let ca_a = pki.ca("site-a").parent().expect("dir").to_path_buf();
    let now = jiff::Timestamp::now().as_second();
    for (from, to, says) in [
        (now - 20 * 86400, now - 86400, "expired"),
        (now + 86400, now + 20 * 86400, "not valid before"),
    ] {
        let (cert, key) = cert_valid(&ca_a, "site-a", "n9", from, to);
        let cfg = dir.path().join(format!("n9-{from}.toml"));
        std::fs::write(&cfg, format!(
            "data_dir = {:?}\n[net]\nlisten = \"127.0.0.1:0\"\ncert = {:?}\nkey = {:?}\npeer_cas = [{:?}]\n",
            dir.path().join("n9").display().to_string(), cert.display().to_string(), key.display().to_string(),
            pki.ca("site-a").display().to_string())).expect("config");
        let out = std::process::Command::new(ferry_tests::bin("ferry-agent"))
            .arg("--config")
            .arg(&cfg)
            .arg("serve")
            .output()
            .expect("serve");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{err}");
    }

    // A certificate ending within 30 days: warned of at start, and shown in the metrics.
    use ferry_tests::controller::{free_udp_port, linked_agent, site_controller, wait_for, READER};
    let port = free_udp_port();
    let (c, _) = site_controller(
        &pki,
        dir.path(),
        "ctl",
        ferry_tests::controller::EMBEDDED,
        port,
    );
    let site_a = pki.ca("site-a").parent().expect("dir").to_path_buf();
    let out = std::process::Command::new(ferry_tests::bin("ferry-agent"))
        .args(["pki", "issue", "n5", "--days", "10", "--ca-dir"])
        .arg(&site_a)
        .arg("--out")
        .arg(&site_a)
        .output()
        .expect("issue");
    assert!(out.status.success());
    let (served, cfg) = linked_agent(&pki, dir.path(), "n5", &[port], &[]);
    drop(served);
    let log = dir.path().join("n5.log");
    let _served = ferry_tests::Served::start_logged(&cfg, &log);
    wait_for("the agent registers", 30, || !c.agents().is_empty());
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.contains("expires soon"), "{text}");
    let metrics = c.text("/metrics", READER);
    let line = metrics
        .lines()
        .find(|l| l.starts_with("ferry_certificate_expiry_timestamp_seconds{holder=\"agent/n5\"}"))
        .unwrap_or_else(|| panic!("{metrics}"));
    let at: i64 = line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("value");
    eprintln!("{line}");
    assert!((at - (now + 10 * 86400)).abs() < 3 * 3600, "{line}");
    assert!(
        metrics.contains("ferry_certificate_expiry_timestamp_seconds{holder=\"controller\"}"),
        "{metrics}"
    );
}

/// Finding 10: `volume adopt` checked the path, not the file: a hard link to a committed
/// snapshot's image, outside the data directory, was adopted, and writes through it
/// corrupted the snapshot.
#[test]
fn adopt_refuses_a_second_name_for_a_file_of_the_store() {
    let Some(env) = Env::new(Fs::Local) else {
        return;
    };
    env.ok(&["volume", "create", "v", "--size", "4M"]);
    ferry_tests::write_random(
        &env.volume_path("v"),
        0,
        1 << 20,
        &mut ferry_tests::rng("adopt-link"),
    );
    env.ok(&["snapshot", "create", "v", "s1"]);
    let image = env.snapshot_dir("v", "s1").join("data.img");
    let link = env.path("outside.img");
    std::fs::hard_link(&image, &link).expect("link");
    let (kind, msg) = env.fails(&["volume", "adopt", "a", link.to_str().expect("utf8")]);
    assert_eq!(kind, "invalid_argument");
    assert!(msg.contains("hard links"), "{msg}");
    // Nor the same file adopted twice under two names, nor a volume's image through a link.
    std::fs::remove_file(&link).expect("unlink");
    let own = env.path("own.img");
    std::fs::write(&own, vec![1u8; 1 << 20]).expect("write");
    env.ok(&["volume", "adopt", "a", own.to_str().expect("utf8")]);
    let again = env.path("again.img");
    std::fs::hard_link(&own, &again).expect("link");
    let (kind, _) = env.fails(&["volume", "adopt", "b", again.to_str().expect("utf8")]);
    assert_eq!(kind, "invalid_argument");
    assert_eq!(env.ok(&["snapshot", "verify", "v", "s1"])["ok"], true);
}

/// Finding 11: `1Gb` (bits?) and ` 1G` were taken as 1 GiB, and a schedule starting in
/// year 0000 was accepted. One strict grammar, in the agent's CLI and the controller's API.
#[test]
fn sizes_and_dates_are_read_strictly_everywhere() {
    use ferry_tests::controller::{Controller, ADMIN};
    let Some(env) = Env::new(Fs::Local) else {
        return;
    };
    for bad in ["1Gb", " 1G", "1G ", "1gb", "4 kib"] {
        let out = env.raw(&["volume", "create", "x", "--size", bad]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {err}");
        assert!(err.contains("invalid size"), "{bad:?}: {err}");
    }
    env.ok(&["volume", "create", "x", "--size", "1 GiB"]);
    let c = Controller::start(ferry_tests::controller::EMBEDDED);
    let obj = serde_json::json!({"name": "o", "kind": {"type": "virtual_volume", "volume": {"node": "n", "volume": "v"}}});
    assert_eq!(
        c.admin("POST", "/v1/objects?allow_missing=true", Some(obj))
            .0,
        201
    );
    for start in ["0000-01-01T00:00", "1999-12-31T23:00", "9999-12-31T00:00"] {
        let plan = serde_json::json!({"name": "p", "objects": ["o"], "retention": 1,
            "schedule": {"every": "daily", "start": start}});
        let (code, v) = c.admin("POST", "/v1/plans", Some(plan));
        assert_eq!(code, 400, "{start}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("schedule.start"),
            "{v}"
        );
    }
    // A volume size through the API: the same grammar (refused before the agent is asked).
    let (code, v) = c.call(
        "POST",
        "/v1/agents/n/volumes",
        Some(ADMIN),
        Some(br#"{"name": "v2", "size": "1Gb"}"#),
    );
    assert!(code == 400 || code == 404, "{code} {v}");
}
