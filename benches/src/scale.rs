//! `ferry-bench scale`: does an incremental cost what changed, whatever else the node holds?
//!
//! * **Volume size**: the same 10 MiB of random 4 KiB writes inside the first GiB of a 1 GiB
//!   and of a 32 GiB volume (the first GiB VM-like, the rest half full: every other 2 MiB
//!   holds data, shared extents of the first GiB so that the benchmark fits a small disk;
//!   the 32 GiB volume's manifest, leaf index, extent map and mirror are still 32 times
//!   larger). Snapshot + incremental replication timed, warm and cold, the two sizes taking
//!   turns step by step; the receiver is started afresh before each incremental so that its
//!   peak memory (VmHWM) is that session's.
//! * **Many small volumes**: 100 volumes of 64 MiB, one changed page each, replicated by one
//!   `replicate` call; the per-volume cost is the call's time over the volume count, against
//!   one volume's incremental of one page.
//!
//! Needs a reflink filesystem (XFS reflink=1, as `scripts/bench` makes): the 32 GiB volume's
//! data are shared extents.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ferry_wire::units::format_size;
use serde::Serialize;

use crate::replication::{churn, settle, timed, Agents, Caches};
use crate::{generate, median};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// One volume size's medians.
#[derive(Debug, Clone, Serialize)]
struct SizeRow {
    size: u64,
    caches: Caches,
    runs: usize,
    wall_s: f64,
    wall_min_s: f64,
    wall_max_s: f64,
    sent_bytes: u64,
    receiver_peak_rss: u64,
    /// The receiver's peak anonymous memory (sampled): without the pages of the files it
    /// maps (the working index, the base's leaf index), which the kernel can drop.
    receiver_peak_anon: u64,
    /// The median over steps of this size's time over the 1 GiB volume's in the same step
    /// (the sizes take turns; each step adds extents to both volumes, so later steps are
    /// slower for both).
    step_ratio: f64,
    parts: BTreeMap<String, f64>,
}

/// One incremental: wall seconds, bytes sent, the receiver's peak RSS and anonymous
/// memory, its parts.
struct Measured {
    wall: f64,
    sent: u64,
    rss: u64,
    anon: u64,
    parts: BTreeMap<String, f64>,
}

/// The many-volumes case.
#[derive(Debug, Clone, Serialize)]
struct ManyRow {
    volumes: usize,
    volume_size: u64,
    one_volume_s: f64,
    all_volumes_s: f64,
    per_volume_ms: f64,
    sent_bytes: u64,
}

/// A volume's path at `a`.
fn volume_path(ag: &Agents, name: &str) -> Result<PathBuf> {
    Ok(PathBuf::from(
        ag.json(false, &["volume", "path", name])?["path"]
            .as_str()
            .context("volume path")?,
    ))
}

/// Makes volume `name` of `size` at `a`: the first GiB VM-like, then every other 2 MiB a
/// shared-extent copy of the first GiB.
fn make_volume(ag: &Agents, name: &str, size: u64, seed: u64) -> Result<PathBuf> {
    ag.json(
        false,
        &["volume", "create", name, "--size", &size.to_string()],
    )?;
    let path = volume_path(ag, name)?;
    generate(&path, size.min(GIB), seed, 4096)?;
    let f = OpenOptions::new().read(true).write(true).open(&path)?;
    let mut at = GIB;
    while at < size {
        let from = at % GIB;
        ferry_agent::fsx::copy_between(&f, from, &f, at, 2 * MIB)?;
        at += 4 * MIB;
    }
    f.sync_all()?;
    Ok(path)
}

/// One volume size's pair of agents, its volume and what its incrementals measured.
struct SizeCase {
    size: u64,
    dir: PathBuf,
    ag: Agents,
    path: PathBuf,
    by: BTreeMap<Caches, Vec<Measured>>,
}

/// The volume-size case: both sizes set up (a full replication each, not timed), then
/// `runs` incrementals of each, the sizes taking turns step by step, so that a noisy spell
/// of this shared machine falls on both rather than on one size's runs.
fn sizes(work: &Path, runs: usize, caches: &[Caches], seed: u64) -> Result<Vec<SizeRow>> {
    let mut cases = Vec::new();
    for size in [GIB, 32 * GIB] {
        let dir = work.join(format!("size-{}", size / GIB));
        std::fs::create_dir_all(&dir)?;
        let ag = Agents::start(&dir, "")?;
        let path = make_volume(&ag, "v", size, seed)?;
        eprintln!("{}: full replication (not timed)", format_size(size));
        ag.step("full", Caches::Warm, "v", "s0", &[])?;
        cases.push(SizeCase {
            size,
            dir,
            ag,
            path,
            by: BTreeMap::new(),
        });
    }
    let mut n = 0;
    for _ in 0..runs {
        for &c in caches {
            n += 1;
            for case in cases.iter_mut() {
                // Other pages at every step (the same ones for both sizes): a step that
                // wrote what the one before wrote would change nothing.
                churn(&case.path, GIB, seed ^ (n as u64 * 7 + 1), 98)?;
                case.ag.restart_receiver()?;
                settle(c)?;
                let snap = format!("s{n}");
                let sampler = crate::AnonPeak::start(case.ag.server.0.id());
                let s = case.ag.step("incremental", c, "v", &snap, &[]);
                let anon = sampler.stop();
                let s = s?;
                let rss = crate::peak_rss(&case.ag.server.0.id().to_string());
                eprintln!(
                    "{} {}: incremental {:.2} s, {} sent, receiver peak {} ({} anonymous)",
                    format_size(case.size),
                    c.name(),
                    s.wall_s,
                    format_size(s.bytes),
                    format_size(rss),
                    format_size(anon)
                );
                case.by.entry(c).or_default().push(Measured {
                    wall: s.wall_s,
                    sent: s.bytes,
                    rss,
                    anon,
                    parts: s.parts,
                });
            }
        }
    }
    let mut rows = Vec::new();
    let small: BTreeMap<Caches, Vec<f64>> = cases
        .first()
        .map(|s| {
            s.by.iter()
                .map(|(c, v)| (*c, v.iter().map(|x| x.wall).collect()))
                .collect()
        })
        .unwrap_or_default();
    for case in cases {
        for (c, v) in case.by {
            let step_ratio = median(
                v.iter()
                    .zip(small.get(&c).into_iter().flatten())
                    .map(|(x, s)| x.wall / s.max(1e-9))
                    .collect(),
            );
            let walls: Vec<f64> = v.iter().map(|x| x.wall).collect();
            let keys: std::collections::BTreeSet<&String> =
                v.iter().flat_map(|x| x.parts.keys()).collect();
            let parts = keys
                .into_iter()
                .map(|k| {
                    let m = median(v.iter().filter_map(|x| x.parts.get(k).copied()).collect());
                    (k.clone(), m)
                })
                .collect();
            rows.push(SizeRow {
                size: case.size,
                caches: c,
                runs: v.len(),
                wall_s: median(walls.clone()),
                wall_min_s: walls.iter().copied().fold(f64::INFINITY, f64::min),
                wall_max_s: walls.iter().copied().fold(0.0, f64::max),
                sent_bytes: median(v.iter().map(|x| x.sent as f64).collect()) as u64,
                receiver_peak_rss: median(v.iter().map(|x| x.rss as f64).collect()) as u64,
                receiver_peak_anon: median(v.iter().map(|x| x.anon as f64).collect()) as u64,
                step_ratio,
                parts,
            });
        }
        drop(case.ag);
        std::fs::remove_dir_all(&case.dir)?;
    }
    Ok(rows)
}

/// The many-volumes case: 100 volumes of 64 MiB replicated in full (not timed), one page
/// changed in each, then one `replicate` call for all of them (medians of `runs`).
fn many(work: &Path, runs: usize, seed: u64) -> Result<ManyRow> {
    const N: usize = 100;
    let size = 64 * MIB;
    let dir = work.join("many");
    std::fs::create_dir_all(&dir)?;
    let ag = Agents::start(&dir, "")?;
    let mut paths = Vec::new();
    for i in 0..N {
        let name = format!("v{i:03}");
        ag.json(
            false,
            &["volume", "create", &name, "--size", &size.to_string()],
        )?;
        let p = volume_path(&ag, &name)?;
        generate(&p, size, seed + i as u64, 4096)?;
        paths.push((name, p));
    }
    let call = |snap: &str, only: Option<usize>| -> Result<(f64, u64)> {
        let mut args: Vec<String> = vec!["replicate".into()];
        for (i, (name, _)) in paths.iter().enumerate() {
            if only.is_none_or(|o| o == i) {
                ag.json(false, &["snapshot", "create", name, snap])?;
                args.extend([name.clone(), snap.to_string()]);
            }
        }
        args.extend(["--to".into(), ag.addr.clone()]);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let _ = std::process::Command::new("sync").status();
        let (wall, _, out) = timed(&mut ag.cmd(false, &argv)?)?;
        let r: serde_json::Value = serde_json::from_str(&out)?;
        let sent = match r.as_array() {
            Some(a) => a.iter().filter_map(|x| x["sent_bytes"].as_u64()).sum(),
            None => r["sent_bytes"].as_u64().unwrap_or(0),
        };
        Ok((wall, sent))
    };
    eprintln!("{N} volumes of {}: full (not timed)", format_size(size));
    call("s0", None)?;
    let (mut one, mut all, mut sent) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        for (i, (_, p)) in paths.iter().enumerate() {
            churn(p, size, seed ^ (run as u64 * 1000 + i as u64), 1)?;
        }
        let (w1, _) = call(&format!("one{run}"), Some(0))?;
        let (wn, s) = call(&format!("all{run}"), None)?;
        eprintln!(
            "one volume {w1:.2} s; {N} volumes {wn:.2} s ({} sent)",
            format_size(s)
        );
        one.push(w1);
        all.push(wn);
        sent.push(s as f64);
    }
    drop(ag);
    std::fs::remove_dir_all(&dir)?;
    let (one, all) = (median(one), median(all));
    Ok(ManyRow {
        volumes: N,
        volume_size: size,
        one_volume_s: one,
        all_volumes_s: all,
        per_volume_ms: all / N as f64 * 1e3,
        sent_bytes: median(sent) as u64,
    })
}

pub fn run(dir: &Path, out: &Path, runs: usize, caches: &[Caches], seed: u64) -> Result<()> {
    if !ferry_agent::fsx::probe_reflink(dir).unwrap_or(false) {
        bail!(
            "{} has no reflink: the 32 GiB volume is made of shared extents (scripts/bench makes an XFS reflink mount)",
            dir.display()
        );
    }
    std::fs::create_dir_all(out)?;
    let work = dir.join("bench-scale");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let size_rows = sizes(&work, runs, caches, seed)?;
    let many_row = many(&work, runs, seed)?;
    let _ = std::fs::remove_dir_all(&work);
    let md = report(runs, &size_rows, &many_row)?;
    std::fs::write(out.join("report.md"), &md)?;
    let json = serde_json::json!({ "runs": runs, "sizes": size_rows, "many": many_row });
    std::fs::write(out.join("report.json"), serde_json::to_vec_pretty(&json)?)?;
    print!("{md}");
    Ok(())
}

fn report(runs: usize, rows: &[SizeRow], many: &ManyRow) -> Result<String> {
    use std::fmt::Write as _;
    let mut md = String::new();
    writeln!(md, "# ferry scaling benchmark\n")?;
    writeln!(
        md,
        "## Cost grows with changed bytes, not with volume size\n"
    )?;
    writeln!(md, "10 MiB of random 4 KiB writes inside the first GiB; snapshot + incremental replication; {runs} runs, medians (spread). The receiver restarted before each incremental: its peak RSS is that session's. Its peak RSS counts the pages of the files it maps (the working index, the base's leaf index: page cache the kernel can drop); its anonymous memory (heap and stacks, sampled every 5 ms) is what it holds.\n")?;
    writeln!(md, "| volume | caches | wall s | spread | snapshot s | replicate s | sent | receiver peak RSS | of it anonymous |\n|---|---|---:|---|---:|---:|---:|---:|---:|")?;
    for r in rows {
        writeln!(
            md,
            "| {} | {} | {:.2} | {:.2}-{:.2} | {:.2} | {:.2} | {} | {} | {} |",
            format_size(r.size),
            r.caches.name(),
            r.wall_s,
            r.wall_min_s,
            r.wall_max_s,
            r.parts.get("snapshot").copied().unwrap_or(0.0),
            r.parts.get("replicate").copied().unwrap_or(0.0),
            format_size(r.sent_bytes),
            format_size(r.receiver_peak_rss),
            format_size(r.receiver_peak_anon)
        )?;
    }
    writeln!(md, "\nWhere the time goes (medians, seconds):\n")?;
    write!(md, "| part |")?;
    for r in rows {
        write!(md, " {} {} |", format_size(r.size), r.caches.name())?;
    }
    writeln!(md, "\n|---|{}", "---:|".repeat(rows.len()))?;
    for &(k, label) in crate::replication::PARTS {
        write!(md, "| {label} |")?;
        for r in rows {
            match r.parts.get(k) {
                Some(x) => write!(md, " {x:.2} |")?,
                None => write!(md, " |")?,
            }
        }
        writeln!(md)?;
    }
    writeln!(md)?;
    for c in [Caches::Warm, Caches::Cold] {
        let find = |size: u64| rows.iter().find(|r| r.size == size && r.caches == c);
        if let (Some(small), Some(big)) = (find(GIB), find(32 * GIB)) {
            writeln!(
                md,
                "- {}: 32 GiB / 1 GiB time **{:.2}** step by step (goal <= 1.2; of the medians {:.2}), receiver anonymous memory **{:.2}** (goal <= 1.2), peak RSS with mapped files {:.2}",
                c.name(),
                big.step_ratio,
                big.wall_s / small.wall_s.max(1e-9),
                big.receiver_peak_anon as f64 / small.receiver_peak_anon.max(1) as f64,
                big.receiver_peak_rss as f64 / small.receiver_peak_rss.max(1) as f64
            )?;
        }
    }
    writeln!(md, "\n## Many small volumes\n")?;
    writeln!(
        md,
        "{} volumes of {}, one changed page each, one `replicate` call: **{:.2} s**, **{:.1} ms per volume** (goal < 20 ms); one volume alone: {:.2} s; {} sent.",
        many.volumes,
        format_size(many.volume_size),
        many.all_volumes_s,
        many.per_volume_ms,
        many.one_volume_s,
        format_size(many.sent_bytes)
    )?;
    Ok(md)
}
