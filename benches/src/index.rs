//! `ferry-bench index`: the receiver's dedup index at simulated scale. Builds an index of
//! `--entries` blocks (100 million by default: about 6 TiB of distinct 64 KiB blocks) with
//! the agent's own builder (`store::dedup::build`, in passes of bounded memory), then
//! probes it for keys it holds and keys it does not, warm and cold, the way a receiving
//! session does (one page read per probe). Reports the build time, the file's size, the
//! process's peak memory during the build and during the probes, and probes per second.
//! Keys are pseudo-random (their distribution is a hash's) rather than BLAKE3 of data,
//! so that generating 100 million of them per pass costs little next to the build itself.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use ferry_agent::store::dedup::{buckets_for, build, probe, read_header};
use ferry_wire::blockindex::Entry;
use ferry_wire::units::format_size;
use serde::Serialize;

use crate::{drop_caches, is_root};

#[derive(Debug, Clone, Serialize)]
struct Probes {
    what: &'static str,
    count: u64,
    found: u64,
    wall_s: f64,
    per_s: f64,
}

#[derive(Debug, Clone, Serialize)]
struct IndexReport {
    entries: u64,
    buckets: u64,
    file_bytes: u64,
    build_s: f64,
    build_peak_rss: u64,
    probe_peak_rss: u64,
    probes: Vec<Probes>,
}

fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The key of entry `i` (entries past `held` are keys the index does not have).
fn key_of(i: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&mix(i).to_le_bytes());
    k[8..].copy_from_slice(&mix(i ^ 0x5555_5555).to_le_bytes());
    k
}

fn entry(i: u64) -> Entry {
    Entry {
        key: key_of(i),
        volume: (i % 1000) as u32,
        block: i / 1000,
    }
}

/// A reset of this process's peak resident memory.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

pub fn run(dir: &Path, out: &Path, entries: u64, probes: u64) -> Result<()> {
    std::fs::create_dir_all(out)?;
    std::fs::create_dir_all(dir)?;
    let path = dir.join("bench-blocks.idx");
    let buckets = buckets_for(entries);
    eprintln!(
        "building an index of {entries} entries in {buckets} buckets ({})",
        format_size(4096 * (buckets + 1))
    );
    reset_peak_rss();
    let t0 = Instant::now();
    let n = build(&path, 65536, buckets, entries, &mut |sink| {
        for i in 0..entries {
            sink(entry(i));
        }
    })?;
    let build_s = t0.elapsed().as_secs_f64();
    let build_peak_rss = crate::peak_rss("self");
    eprintln!(
        "built in {build_s:.1} s, peak RSS {}",
        format_size(build_peak_rss)
    );
    let file = std::fs::File::open(&path)?;
    let header = read_header(&file)?;
    let file_bytes = file.metadata()?.len();
    reset_peak_rss();
    let mut rows = Vec::new();
    let mut state = 0x1234_5678u64;
    let mut cases = vec![("held, warm", true), ("not held, warm", false)];
    if is_root() {
        cases.extend([("held, cold", true), ("not held, cold", false)]);
    }
    for (what, held) in cases {
        let count = if what.ends_with("cold") {
            probes / 10
        } else {
            probes
        }
        .max(1);
        if what.ends_with("cold") {
            drop_caches()?;
        }
        let t0 = Instant::now();
        let mut found = 0;
        for _ in 0..count {
            state = mix(state);
            let i = if held {
                state % entries
            } else {
                entries + state % entries
            };
            let e = entry(i);
            if probe(&file, &header, &e.key)?.contains(&e) {
                found += 1;
            }
        }
        let wall_s = t0.elapsed().as_secs_f64();
        eprintln!("{what}: {count} probes in {wall_s:.2} s, {found} found");
        rows.push(Probes {
            what,
            count,
            found,
            wall_s,
            per_s: count as f64 / wall_s.max(1e-9),
        });
    }
    let r = IndexReport {
        entries: n,
        buckets: header.buckets,
        file_bytes,
        build_s,
        build_peak_rss,
        probe_peak_rss: crate::peak_rss("self"),
        probes: rows,
    };
    std::fs::remove_file(&path)?;
    let md = report(&r)?;
    std::fs::write(out.join("report.md"), &md)?;
    std::fs::write(out.join("report.json"), serde_json::to_vec_pretty(&r)?)?;
    print!("{md}");
    Ok(())
}

fn report(r: &IndexReport) -> Result<String> {
    use std::fmt::Write as _;
    let mut md = String::new();
    writeln!(md, "# ferry dedup index benchmark\n")?;
    writeln!(
        md,
        "{} entries ({} of distinct 64 KiB blocks) in {} buckets: a {} file, {:.1} bytes per entry. Built in **{:.1} s** with a peak RSS of **{}**; probed with a peak RSS of **{}** (the process's whole memory, the build's pass buffers freed).\n",
        r.entries,
        format_size(r.entries * 65536),
        r.buckets,
        format_size(r.file_bytes),
        r.file_bytes as f64 / r.entries.max(1) as f64,
        r.build_s,
        format_size(r.build_peak_rss),
        format_size(r.probe_peak_rss)
    )?;
    writeln!(
        md,
        "| probes | count | found | wall s | per second |\n|---|---:|---:|---:|---:|"
    )?;
    for p in &r.probes {
        writeln!(
            md,
            "| {} | {} | {} | {:.2} | {:.0} |",
            p.what, p.count, p.found, p.wall_s, p.per_s
        )?;
    }
    Ok(md)
}
