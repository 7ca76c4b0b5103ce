//! `ferry-bench plan`: a backup plan's full and incremental runs, timed from the run's start
//! to the mirror group recorded at the target, beside the agent-level `ferry-agent
//! replicate` of the same volumes in the same run (to a third site, so neither dedups
//! against the other's copy). The difference is what the controllers add: scheduling the
//! snapshot, the site requests, task dispatch and the record.
//!
//! Sites (real processes on this machine, `ferry_tests::sites`): site-a with two agents and
//! a VM of four disks (two per node), site-b (the plan's target) and site-c (the
//! hand-driven replicate's), each with two agents, all on the embedded store.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use ferry_tests::controller::READER;
use ferry_tests::sites::{pair, Site};
use ferry_tests::{agent_volume_path, Pki};
use ferry_wire::units::format_size;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::median;

#[derive(Debug, Serialize)]
struct Step {
    what: String,
    plan_s: f64,
    /// Of the plan's time: taking the snapshot group (the agents' manifests).
    snapshot_s: f64,
    /// Of the plan's time: the longest of its transfers, as the agents timed them.
    transfers_s: f64,
    replicate_s: f64,
    /// (plan - snapshot - transfers) / plan: the controllers' share, within the same run.
    controller_share: f64,
    plan_bytes_sent: u64,
    /// Runs measured (medians reported), and the spread of the plan's time.
    runs: usize,
    plan_min_s: f64,
    plan_max_s: f64,
}

const DISKS: [(&str, &str); 4] = [("a1", "d0"), ("a1", "d1"), ("a2", "d2"), ("a2", "d3")];

fn run_now(a: &Site) -> Result<(f64, serde_json::Value)> {
    let t0 = Instant::now();
    let (code, r) = a.controller.admin("POST", "/v1/plans/bench/run", None);
    if code != 202 {
        bail!("run: {code} {r}");
    }
    let id = r["run"]["id"].as_str().context("run id")?.to_string();
    loop {
        let (_, v) = a.controller.call(
            "GET",
            &format!("/v1/plans/bench/runs/{id}"),
            Some(READER),
            None,
        );
        match v["run"]["step"].as_str() {
            Some("done") => return Ok((t0.elapsed().as_secs_f64(), v)),
            Some("failed" | "partially_done") => bail!("run {id}: {v}"),
            _ => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
}

/// `ferry-agent replicate` of every disk's snapshot `group` to site-c, the two nodes at
/// once, each to its own agent there (as the plan's placement spreads them over site-b's
/// two agents), as an operator would script it; returns the wall time.
fn replicate(a: &Site, c: &Site, group: &str) -> Result<f64> {
    let peers: Vec<String> = c
        .controller
        .agents()
        .iter()
        .filter_map(|x| x["replication_address"].as_str().map(String::from))
        .collect();
    if peers.is_empty() {
        bail!("site-c has no agent address");
    }
    let t0 = Instant::now();
    let mut children = Vec::new();
    for (k, node) in ["a1", "a2"].into_iter().enumerate() {
        let peer = &peers[k % peers.len()];
        let mut cmd = std::process::Command::new(ferry_tests::bin("ferry-agent"));
        cmd.arg("--config").arg(a.config(node)).arg("replicate");
        for (n, d) in DISKS {
            if n == node {
                cmd.args([d, group]);
            }
        }
        cmd.args(["--to", peer, "--retries", "3"]);
        children.push(cmd.stdout(std::process::Stdio::null()).spawn()?);
    }
    for mut ch in children {
        if !ch.wait()?.success() {
            bail!("replicate failed");
        }
    }
    Ok(t0.elapsed().as_secs_f64())
}

pub fn run(dir: &Path, size: u64, out: &Path, seed: u64, runs: usize) -> Result<()> {
    std::fs::create_dir_all(out)?;
    let pki = Pki::new();
    let store = ferry_tests::controller::EMBEDDED;
    let a = Site::start(&pki, dir, "site-a", store, &["a1", "a2"]);
    let b = Site::start(&pki, dir, "site-b", store, &["b1", "b2"]);
    let c = Site::start(&pki, dir, "site-c", store, &["c1", "c2"]);
    pair(&a, &b, dir);
    pair(&a, &c, dir);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let sz = size.to_string();
    for (node, d) in DISKS {
        a.agent(node, &["volume", "create", d, "--size", &sz]);
        let p = agent_volume_path(a.config(node), d);
        // The benchmarks' VM-like image (data, zeros and holes), one seed per disk.
        crate::generate(
            &p,
            size,
            seed.wrapping_add(d.len() as u64 + rng.gen::<u8>() as u64),
            4096,
        )?;
    }
    let disks: Vec<serde_json::Value> = DISKS
        .iter()
        .map(|(n, d)| serde_json::json!({"volume": {"node": n, "volume": d}}))
        .collect();
    let vm = serde_json::json!({"name": "bench-vm", "kind": {"type": "vm", "vcpus": 4,
        "memory_mib": 8192, "disks": disks}});
    let (code, v) = a.controller.admin("POST", "/v1/objects", Some(vm));
    if code != 201 {
        bail!("object: {code} {v}");
    }
    let plan = serde_json::json!({"name": "bench", "objects": ["bench-vm"], "retention": 2,
        "enabled": false, "schedule": {"every": "daily", "start": "2026-01-01T00:00"},
        "targets": [{"site": "site-b", "retention": 2}]});
    let (code, v) = a.controller.admin("POST", "/v1/plans", Some(plan));
    if code != 201 {
        bail!("plan: {code} {v}");
    }
    let sent = |v: &serde_json::Value| -> u64 {
        v["run"]["targets"]["site-b"]["transfers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| t["sent_bytes"].as_u64().unwrap_or(0))
            .sum()
    };
    let mut steps = Vec::new();
    for (what, reps) in [
        ("full", 1),
        ("incremental (1% random 4 KiB writes)", runs.max(1)),
    ] {
        let mut m: Vec<[f64; 4]> = Vec::new();
        let mut bytes = 0;
        for _ in 0..reps {
            if what != "full" {
                for (node, d) in DISKS {
                    let p = agent_volume_path(a.config(node), d);
                    let f = std::fs::OpenOptions::new().write(true).open(&p)?;
                    let pages = size / 4096;
                    let page: Vec<u8> = (0..4096).map(|_| rng.gen()).collect();
                    for _ in 0..pages / 100 {
                        let i = rng.gen_range(0..pages);
                        std::os::unix::fs::FileExt::write_at(&f, &page, i * 4096)?;
                    }
                    f.sync_all()?;
                }
            }
            let (plan_s, v) = run_now(&a)?;
            let group = v["run"]["group"].as_str().context("group")?.to_string();
            let replicate_s = replicate(&a, &c, &group)?;
            let ts =
                |x: &serde_json::Value| x.as_str().and_then(|t| t.parse::<jiff::Timestamp>().ok());
            let snapshot_s = match (ts(&v["created"]), ts(&v["run"]["group_created"])) {
                (Some(a), Some(b)) => (b.as_millisecond() - a.as_millisecond()) as f64 / 1e3,
                _ => 0.0,
            };
            let transfers_s = v["run"]["targets"]["site-b"]["transfers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| t["elapsed_ms"].as_f64().unwrap_or(0.0) / 1e3)
                .fold(0.0, f64::max);
            bytes = sent(&v);
            eprintln!(
                "{what}: plan {plan_s:.2} s ({snapshot_s:.2} s snapshot, transfers {transfers_s:.2} s, {} sent), replicate alone {replicate_s:.2} s",
                format_size(bytes)
            );
            m.push([plan_s, snapshot_s, transfers_s, replicate_s]);
        }
        let col = |k: usize| median(m.iter().map(|x| x[k]).collect());
        let (plan_s, snapshot_s, transfers_s, replicate_s) = (col(0), col(1), col(2), col(3));
        let over: Vec<f64> = m.iter().map(|x| (x[0] - x[1] - x[2]) / x[0]).collect();
        steps.push(Step {
            what: what.to_string(),
            plan_s,
            snapshot_s,
            transfers_s,
            replicate_s,
            controller_share: median(over),
            plan_bytes_sent: bytes,
            runs: m.len(),
            plan_min_s: m.iter().map(|x| x[0]).fold(f64::INFINITY, f64::min),
            plan_max_s: m.iter().map(|x| x[0]).fold(0.0, f64::max),
        });
    }
    let mut md = format!(
        "# Plan-level replication ({} VM: 4 disks of {} on 2 agents)\n\n\
         The plan's time runs from `POST /run` to the mirror group recorded at site-b; of \
         it, the snapshot group and the longest transfer as the agents timed them; what is \
         left is the controllers' part (site requests, dispatch, the record), in the same \
         run. `replicate` is the agents alone sending the same snapshots to site-c, started \
         by hand. Medians of the runs; the plan's spread in brackets.\n\n\
         | step | runs | plan (s) | snapshot (s) | transfers (s) | controllers' share | replicate alone (s) | sent by the plan |\n|---|---|---|---|---|---|---|---|\n",
        format_size(4 * size),
        format_size(size)
    );
    for s in &steps {
        md.push_str(&format!(
            "| {} | {} | {:.2} [{:.2}-{:.2}] | {:.2} | {:.2} | {:.1}% | {:.2} | {} |\n",
            s.what,
            s.runs,
            s.plan_s,
            s.plan_min_s,
            s.plan_max_s,
            s.snapshot_s,
            s.transfers_s,
            100.0 * s.controller_share,
            s.replicate_s,
            format_size(s.plan_bytes_sent)
        ));
    }
    std::fs::write(out.join("report.md"), &md)?;
    std::fs::write(out.join("report.json"), serde_json::to_vec_pretty(&steps)?)?;
    print!("{md}");
    Ok(())
}
