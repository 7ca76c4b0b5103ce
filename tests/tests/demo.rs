//! `ferry demo` as a newcomer runs it (`scripts/test` runs it whole, as the README says, with
//! its summary in the log): here, that it leaves nothing behind when interrupted, and that
//! `--keep` leaves two working sites and says how to reach them.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use ferry_tests::bin;
use ferry_tests::controller::{http, wait_for};

/// Processes whose command line mentions `dir`.
fn running_in(dir: &str) -> Vec<String> {
    let out = Command::new("pgrep")
        .args(["-fa", dir])
        .output()
        .expect("pgrep");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.contains("pgrep"))
        .map(String::from)
        .collect()
}

/// Starts `ferry demo ARGS`; returns it with a channel of its output lines.
fn demo(args: &[&str]) -> (std::process::Child, mpsc::Receiver<String>) {
    let mut child = Command::new(bin("ferry"))
        .arg("demo")
        .args(args)
        .env("HOME", std::env::temp_dir())
        // The demo runs the agent and controller built beside it (the suite built them).
        // With cargo's variables it runs `cargo build` for them first, which after the
        // suite's own builds rebuilt for minutes (these tests took 154 s in the suite,
        // 8 s without it); the README's `cargo run` path is step 6 of scripts/test.
        .env_remove("CARGO")
        .env_remove("CARGO_MANIFEST_DIR")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn ferry demo");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            eprintln!("demo: {line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Reads lines until one contains `what`; returns every line read.
fn until(rx: &mpsc::Receiver<String>, what: &str, lines: &mut Vec<String>) {
    loop {
        let l = rx
            .recv_timeout(Duration::from_secs(180))
            .unwrap_or_else(|_| panic!("no line with {what:?} after {lines:?}"));
        let found = l.contains(what);
        lines.push(l);
        if found {
            return;
        }
    }
}

/// The demo's work directory, from its second line.
fn work_dir(lines: &[String]) -> String {
    lines
        .iter()
        .filter(|l| l.starts_with("==> two sites"))
        .find_map(|l| l.split(" in ").nth(1))
        .expect("the demo says where it works")
        .trim()
        .to_string()
}

#[test]
fn an_interrupted_demo_leaves_nothing_behind() {
    let (mut child, rx) = demo(&["--size", "16M"]);
    let mut lines = Vec::new();
    until(&rx, "full run", &mut lines);
    let dir = work_dir(&lines);
    assert!(std::path::Path::new(&dir).exists());
    assert!(!running_in(&dir).is_empty(), "the sites run from {dir}");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let st = child.wait().expect("wait");
    assert!(!st.success(), "an interrupted demo fails: {st}");
    wait_for("the sites are gone", 15, || running_in(&dir).is_empty());
    assert!(!std::path::Path::new(&dir).exists(), "{dir} was removed");
}

/// What a kept demo left running, stopped and removed when dropped (also when the test
/// fails).
struct Kept {
    pids: Vec<i32>,
    dir: String,
}

impl Drop for Kept {
    fn drop(&mut self) {
        for pid in &self.pids {
            // SAFETY: signalling the processes the demo left running for us.
            unsafe { libc::kill(*pid, libc::SIGTERM) };
        }
        let t0 = std::time::Instant::now();
        while !running_in(&self.dir).is_empty() && t0.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_kept_demo_leaves_two_working_sites() {
    let (mut child, rx) = demo(&["--size", "16M", "--keep"]);
    let st = child.wait().expect("wait");
    // The reader thread may not have passed on the last lines when the demo exits (the kept
    // sites hold its output open, so there is no end to wait for): read up to the last one.
    let mut lines = Vec::new();
    if st.success() {
        until(&rx, "then: ferry status", &mut lines);
    }
    lines.extend(rx.try_iter());
    let text = lines.join("\n");
    let kept = Kept {
        pids: text
            .split("kill ")
            .nth(1)
            .and_then(|r| r.split(')').next())
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect(),
        dir: work_dir(&lines),
    };
    assert!(st.success(), "{text}");
    assert_eq!(kept.pids.len(), 2, "{text}");
    for says in [
        "every check passed",
        "4 of 4 rebuilt volumes equal site-a's group byte for byte",
        "drill        passed",
        "both sites keep running",
    ] {
        assert!(text.contains(says), "{says:?} in {text}");
    }
    let sites: Vec<(String, String)> = lines
        .iter()
        .filter_map(|l| {
            let rest = l.split("export FERRY_ADDR=").nth(1)?;
            let (addr, rest) = rest.split_once(" FERRY_TOKEN=")?;
            let token = rest.split_whitespace().next()?;
            Some((
                addr.trim_start_matches("http://").to_string(),
                token.to_string(),
            ))
        })
        .collect();
    assert_eq!(sites.len(), 2, "{text}");
    assert!(text.contains("  site-a: export"), "site-a first: {text}");
    // Both answer, site-a again with its groups and site-b with the rebuilt objects.
    for (addr, token) in &sites {
        let (code, v) = http(addr, "GET", "/v1/plans", Some(token), None);
        assert_eq!(code, 200, "{v}");
    }
    let (code, v) = http(
        &sites[1].0,
        "GET",
        "/v1/objects/web",
        Some(&sites[1].1),
        None,
    );
    assert_eq!(code, 200, "the rebuilt VM at site-b: {v}");
    let (code, v) = http(
        &sites[0].0,
        "GET",
        "/v1/plans/demo/groups",
        Some(&sites[0].1),
        None,
    );
    assert!(
        code == 200 && v.as_array().is_some_and(|g| g.len() == 2),
        "{v}"
    );
    // Stopped as the demo says (SIGTERM to the pids it printed), nothing of them is left.
    let dir = kept.dir.clone();
    drop(kept);
    assert!(running_in(&dir).is_empty(), "{:?}", running_in(&dir));
}
