//! `ferry-bench`: ferry's benchmarks, one report per run (markdown and JSON). Figures are
//! ratios measured in the same run against the machine's own tools, since the machines are
//! shared and noisy; every timing is the median of `--runs` repetitions.
//!
//! `ferry-bench manifest --dir DIR --size SIZE --out OUT` (see `scripts/bench`, which makes an
//! XFS reflink mount for DIR):
//! * a VM-like image (25% holes, 50% random data, 25% duplicated 64 KiB-aligned runs) in a
//!   `ferry-agent` volume;
//! * full manifest throughput against `b3sum` on the same snapshot file, page cache warm and
//!   cold; io_uring against pread; O_DIRECT; block sizes 16 KiB to 1 MiB;
//! * 1% random 4 KiB writes, then the incremental manifest against the full one.
//!
//! The other subcommands each have their module: `replication` (against rsync, restic, borg
//! and the QUIC ceiling), `scale` (volume size and volume count), `longlink` (through the
//! relay), `index` (the dedup index at scale), `plan` (a backup plan across sites),
//! `controller-load` (the scheduler and API under load).

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use ferry_agent::config::{Cache, DirectChoice, EngineChoice, IoConfig};
use ferry_agent::manifest;
use ferry_wire::units::{format_size, parse_size};
use rand::{Rng, SeedableRng};
use serde::Serialize;

#[derive(Parser)]
#[command(name = "ferry-bench", about = "ferry benchmarks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Manifest throughput: full vs b3sum, io_uring vs pread, incremental vs full.
    Manifest {
        /// Working directory (XFS with reflink=1 for the incremental figures).
        #[arg(long)]
        dir: PathBuf,
        /// Image size, e.g. 4G.
        #[arg(long, default_value = "4G", value_parser = |s: &str| parse_size(s).map_err(|e| e.to_string()))]
        size: u64,
        /// Report directory (report.md, report.json).
        #[arg(long)]
        out: PathBuf,
        /// Repetitions per measurement (the median is reported).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Seed of the generated image.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// The controller under load: scheduler drift and API latency, embedded store and etcd.
    ControllerLoad {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 1000)]
        plans: usize,
        /// API requests per second during the firing window.
        #[arg(long, default_value_t = 100)]
        rate: u32,
    },
    /// Write the benchmarks' VM-like image into an existing file (for profiling by hand).
    Generate {
        file: PathBuf,
        #[arg(long, default_value = "4G", value_parser = |s: &str| parse_size(s).map_err(|e| e.to_string()))]
        size: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// A backup plan's runs (a VM of four disks on two agents to another site), run start
    /// to mirror group recorded, beside the agents' own `replicate` of the same snapshots.
    Plan {
        /// Working directory (XFS with reflink=1 for O(1) snapshots).
        #[arg(long)]
        dir: PathBuf,
        /// Size of each of the four disks.
        #[arg(long, default_value = "1G", value_parser = |s: &str| parse_size(s).map_err(|e| e.to_string()))]
        size: u64,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Incremental runs (medians reported).
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Replication: ferry full and incremental against rsync, restic, borg and the raw QUIC
    /// ceiling, in the same run, warm and cold.
    Replication {
        /// Working directory (XFS with reflink=1).
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "4G", value_parser = |s: &str| parse_size(s).map_err(|e| e.to_string()))]
        size: u64,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Repetitions of every step (medians reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Page cache: warm, cold (dropped before every timed step) or both.
        #[arg(long, default_value = "both", value_parser = ["warm", "cold", "both"])]
        caches: String,
    },
    /// Incrementals on a 1 GiB and a 32 GiB volume (time and receiver memory), and 100
    /// small volumes in one call (per-volume overhead).
    Scale {
        /// Working directory (XFS with reflink=1: the 32 GiB volume is shared extents).
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        #[arg(long, default_value = "both", value_parser = ["warm", "cold", "both"])]
        caches: String,
    },
    /// A full replication through the relay at 0 and 100 ms round trip, 0 and 5% loss,
    /// against loopback.
    Longlink {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "1G", value_parser = |s: &str| parse_size(s).map_err(|e| e.to_string()))]
        size: u64,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value_t = 1)]
        runs: usize,
        /// `[net]` settings for both agents, e.g. 'stream_window = "16MiB"'.
        #[arg(long, default_value = "")]
        windows: String,
    },
    /// The dedup index at scale: build and probe an index of ENTRIES blocks.
    Index {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 100_000_000)]
        entries: u64,
        /// Probes per warm case (a tenth of it cold).
        #[arg(long, default_value_t = 1_000_000)]
        probes: u64,
    },
}

fn caches_of(s: &str) -> Vec<replication::Caches> {
    use replication::Caches;
    match s {
        "warm" => vec![Caches::Warm],
        "cold" => vec![Caches::Cold],
        _ => vec![Caches::Warm, Caches::Cold],
    }
}

/// One measured row.
#[derive(Debug, Clone, Serialize)]
struct Row {
    name: String,
    wall_s: f64,
    cpu_s: f64,
    bytes_read: u64,
    /// Logical bytes covered (the image size) per wall second, GB/s.
    gb_per_s: f64,
    note: String,
}

pub(crate) fn cpu_self() -> f64 {
    rusage(libc::RUSAGE_SELF)
}
pub(crate) fn cpu_children() -> f64 {
    rusage(libc::RUSAGE_CHILDREN)
}
fn rusage(who: libc::c_int) -> f64 {
    // SAFETY: getrusage fills the zeroed struct.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut u) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// The peak resident memory (VmHWM) of process `pid` ("self" for this one), bytes.
pub(crate) fn peak_rss(pid: &str) -> u64 {
    status_bytes(pid, "VmHWM:")
}

/// A process's anonymous resident memory (RssAnon: heap and stacks, not mapped files).
fn rss_anon(pid: &str) -> u64 {
    status_bytes(pid, "RssAnon:")
}

/// A `kB` field of `/proc/PID/status`, in bytes (0 if missing).
fn status_bytes(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Samples a process's anonymous memory every 5 ms until stopped; the kernel keeps a peak
/// only of the whole RSS (VmHWM), which also counts the pages of files it maps.
pub(crate) struct AnonPeak {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl AnonPeak {
    pub(crate) fn start(pid: u32) -> AnonPeak {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_anon(&pid.to_string()));
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            peak
        });
        AnonPeak { stop, thread }
    }

    /// The peak seen.
    pub(crate) fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or(0)
    }
}

/// The median of `v` (the upper one of an even count; 0 for none).
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

pub(crate) fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub(crate) fn drop_caches() -> Result<()> {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3").context("drop page cache (needs root)")
}

pub(crate) fn agent_bin() -> Result<PathBuf> {
    let p = std::env::current_exe()?.with_file_name("ferry-agent");
    if !p.exists() {
        bail!(
            "{} missing: build with cargo build --release --workspace --bins",
            p.display()
        );
    }
    Ok(p)
}

fn agent(data: &Path, args: &[&str]) -> Result<serde_json::Value> {
    let out = Command::new(agent_bin()?)
        .arg("--data-dir")
        .arg(data)
        .arg("--json")
        .args(args)
        .output()
        .context("run ferry-agent")?;
    if !out.status.success() {
        bail!(
            "ferry-agent {args:?}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Writes the VM-like image: per 1 MiB segment, 25% hole, 50% random, 25% a copy of an earlier
/// random segment shifted by a multiple of `align`.
pub(crate) fn generate(path: &Path, size: u64, seed: u64, align: u64) -> Result<()> {
    let f = OpenOptions::new().read(true).write(true).open(path)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let seg = 1usize << 20;
    let mut buf = vec![0u8; seg];
    let mut randoms: Vec<u64> = Vec::new();
    let mut off = 0u64;
    while off < size {
        let n = (size - off).min(seg as u64) as usize;
        let p: f64 = rng.gen();
        if p < 0.25 {
            // hole
        } else if p < 0.75 || randoms.is_empty() {
            rng.fill(&mut buf[..n]);
            f.write_all_at(&buf[..n], off)?;
            randoms.push(off);
        } else {
            let src = randoms[rng.gen_range(0..randoms.len())];
            let shift = rng.gen_range(0..(1u64 << 20) / align) * align;
            let len = (n as u64).min(size - src.max(src + shift).min(size)) as usize;
            let mut tmp = vec![0u8; len];
            f.read_exact_at(&mut tmp, (src + shift).min(size - len as u64))
                .or_else(|_| f.read_exact_at(&mut tmp, src))?;
            f.write_all_at(&tmp, off)?;
        }
        off += n as u64;
    }
    f.sync_all()?;
    Ok(())
}

/// One thing to time: returns the bytes it read.
struct Variant<'a> {
    name: String,
    note: String,
    run: Box<dyn FnMut() -> Result<u64> + 'a>,
}

fn variant<'a>(name: &str, note: &str, run: impl FnMut() -> Result<u64> + 'a) -> Variant<'a> {
    Variant {
        name: name.into(),
        note: note.into(),
        run: Box::new(run),
    }
}

/// An external command as a variant (its CPU time is counted through RUSAGE_CHILDREN).
fn command<'a>(name: &str, note: &str, cmd: Vec<String>, bytes: u64) -> Variant<'a> {
    variant(name, note, move || {
        let out = Command::new(&cmd[0])
            .args(&cmd[1..])
            .output()
            .with_context(|| format!("run {}", cmd[0]))?;
        if !out.status.success() {
            bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(bytes)
    })
}

struct Bench {
    runs: usize,
    size: u64,
    rows: Vec<Row>,
}

impl Bench {
    /// Runs every variant once per round, `runs` rounds, so that noise from other tenants
    /// falls on all variants alike; records the medians in the given order. `cold` drops the
    /// page cache before each run.
    fn interleaved(&mut self, mut variants: Vec<Variant<'_>>, cold: bool) -> Result<Vec<Row>> {
        let n = variants.len();
        let (mut walls, mut cpus, mut bytes) =
            (vec![Vec::new(); n], vec![Vec::new(); n], vec![0u64; n]);
        for _ in 0..self.runs {
            for (i, v) in variants.iter_mut().enumerate() {
                if cold {
                    drop_caches()?;
                }
                let (c0, t0) = (cpu_self() + cpu_children(), Instant::now());
                bytes[i] = (v.run)().with_context(|| v.name.clone())?;
                walls[i].push(t0.elapsed().as_secs_f64());
                cpus[i].push(cpu_self() + cpu_children() - c0);
            }
        }
        Ok(variants
            .iter()
            .enumerate()
            .map(|(i, v)| {
                self.push(
                    &v.name,
                    &v.note,
                    median(walls[i].clone()),
                    median(cpus[i].clone()),
                    bytes[i],
                )
            })
            .collect())
    }

    fn push(&mut self, name: &str, note: &str, wall: f64, cpu: f64, bytes: u64) -> Row {
        let row = Row {
            name: name.into(),
            wall_s: wall,
            cpu_s: cpu,
            bytes_read: bytes,
            gb_per_s: self.size as f64 / wall / 1e9,
            note: note.into(),
        };
        eprintln!(
            "{:<40} {:>8.3} s  {:>7.2} GB/s  cpu {:>6.2} s  read {}",
            name,
            wall,
            row.gb_per_s,
            cpu,
            format_size(bytes)
        );
        self.rows.push(row.clone());
        row
    }
}

fn manifest_bench(dir: &Path, size: u64, out: &Path, runs: usize, seed: u64) -> Result<()> {
    std::fs::create_dir_all(out)?;
    let data = dir.join("bench-agent");
    if data.exists() {
        std::fs::remove_dir_all(&data)?;
    }
    let info = agent(&data, &["info"])?;
    eprintln!(
        "backend {} on {}, io_uring {}",
        info["backend"], info["filesystem"], info["io_uring"]
    );
    let size_s = size.to_string();
    agent(&data, &["volume", "create", "vm", "--size", &size_s])?;
    let vol = PathBuf::from(
        agent(&data, &["volume", "path", "vm"])?["path"]
            .as_str()
            .unwrap_or_default(),
    );
    eprintln!("generating a {} VM-like image", format_size(size));
    generate(&vol, size, seed, 65536)?;
    agent(&data, &["snapshot", "create", "vm", "s0"])?;
    let snap = data.join("volumes/vm/snapshots/s0/data.img");
    let snap_s = snap.to_str().unwrap_or_default().to_string();
    let scratch_m = dir.join("bench.manifest");
    let scratch_l = dir.join("bench.leaves");
    let mut b = Bench {
        runs,
        size,
        rows: Vec::new(),
    };
    let build = |io: IoConfig, bs: u32, cache: Cache| {
        let (m, l) = (scratch_m.clone(), scratch_l.clone());
        let snap = snap.clone();
        move || -> Result<u64> {
            let r = manifest::build(
                manifest::Source {
                    image: &snap,
                    cache,
                    size,
                    block_size: bs,
                },
                None,
                &m,
                &l,
                &io,
            )?;
            Ok(r.bytes_read)
        }
    };
    let io = |engine, direct| IoConfig {
        engine,
        direct,
        ..IoConfig::default()
    };
    let bs = ferry_wire::hash::DEFAULT_BLOCK_SIZE;
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .to_string();

    // Warm page cache: every reader sees the same cached file.
    std::fs::read(&snap).map(drop).ok();
    let b3cmd = vec![
        "b3sum".to_string(),
        "--num-threads".into(),
        threads.clone(),
        snap_s.clone(),
    ];
    let uring_off = io(EngineChoice::IoUring, DirectChoice::Off);
    let mut warm = vec![
        command(
            "b3sum (warm)",
            "b3sum --num-threads N, mmap",
            b3cmd.clone(),
            size,
        ),
        variant(
            "ferry full manifest, io_uring (warm)",
            "default config (buffered: warm)",
            build(IoConfig::default(), bs, Cache::Warm),
        ),
        variant(
            "ferry full manifest, pread (warm)",
            "engine = pread",
            build(io(EngineChoice::Pread, DirectChoice::Off), bs, Cache::Warm),
        ),
    ];
    let sizes = [16u32 << 10, 256 << 10, 1 << 20];
    for bsz in sizes {
        let name = format!(
            "ferry full manifest, {} blocks (warm)",
            format_size(bsz as u64)
        );
        warm.push(variant(
            &name,
            "block size sweep",
            build(uring_off.clone(), bsz, Cache::Warm),
        ));
    }
    let w = b.interleaved(warm, false)?;
    let (b3, fu, fp) = (w[0].clone(), w[1].clone(), w[2].clone());
    let mut sweep: Vec<(u32, f64)> = sizes
        .iter()
        .zip(&w[3..])
        .map(|(s, r)| (*s, r.wall_s))
        .collect();
    sweep.push((bs, fu.wall_s));
    let mut cold = None;
    if is_root() {
        let c = b.interleaved(
            vec![
                command("b3sum (cold)", "page cache dropped", b3cmd, size),
                variant(
                    "ferry full manifest, io_uring (cold)",
                    "page cache dropped, buffered",
                    build(uring_off.clone(), bs, Cache::Cold),
                ),
                variant(
                    "ferry full manifest, pread (cold)",
                    "page cache dropped, buffered",
                    build(io(EngineChoice::Pread, DirectChoice::Off), bs, Cache::Cold),
                ),
                variant(
                    "ferry full manifest, io_uring O_DIRECT (cold)",
                    "default config for a cold file",
                    build(IoConfig::default(), bs, Cache::Cold),
                ),
                variant(
                    "ferry full manifest, pread O_DIRECT (cold)",
                    "direct = on",
                    build(io(EngineChoice::Pread, DirectChoice::On), bs, Cache::Cold),
                ),
            ],
            true,
        )?;
        cold = Some((
            c[0].clone(),
            c[1].clone(),
            c[2].clone(),
            c[3].clone(),
            c[4].clone(),
        ));
    } else {
        eprintln!("not root: cold-cache rows skipped");
    }
    let _ = std::fs::remove_file(&scratch_m);
    let _ = std::fs::remove_file(&scratch_l);

    // Incremental against full, like for like: each round deletes the snapshots, takes a full
    // snapshot (no base), writes 1% of the image in random 4 KiB pages, and takes an incremental
    // one. Both manifests are read from a just-cloned snapshot file, whose page cache is cold
    // (a clone is a new inode), as in production.
    let writes = (size / 4096 / 100) as usize;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
    let f = OpenOptions::new().write(true).open(&vol)?;
    let (mut full_ms, mut inc_ms, mut inc_wall, mut inc_read, mut modes) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut page = [0u8; 4096];
    let mut names: Vec<String> = vec!["s0".into()];
    for round in 0..runs {
        for n in names.drain(..) {
            agent(&data, &["snapshot", "delete", "vm", &n])?;
        }
        let fname = format!("f{round}");
        let m = agent(&data, &["snapshot", "create", "vm", &fname])?;
        full_ms.push(m["manifest"]["elapsed_ms"].as_f64().unwrap_or(f64::NAN));
        for _ in 0..writes {
            rng.fill(&mut page[..]);
            f.write_all_at(&page, rng.gen_range(0..size / 4096) * 4096)?;
        }
        f.sync_all()?;
        let iname = format!("i{round}");
        let t0 = Instant::now();
        let m = agent(&data, &["snapshot", "create", "vm", &iname])?;
        inc_wall.push(t0.elapsed().as_secs_f64());
        inc_ms.push(m["manifest"]["elapsed_ms"].as_f64().unwrap_or(f64::NAN));
        inc_read.push(m["manifest"]["bytes_read"].as_u64().unwrap_or(0) as f64);
        modes.push(m["manifest"]["mode"].as_str().unwrap_or("?").to_string());
        names = vec![fname, iname];
    }
    let fresh = b.push(
        "ferry full manifest in snapshot create (fresh clone)",
        "no base; snapshot file's page cache cold",
        median(full_ms.clone()) / 1000.0,
        0.0,
        size,
    );
    let inc = b.push(
        "ferry incremental manifest in snapshot create (fresh clone)",
        &format!(
            "after {writes} random 4 KiB writes; mode {}",
            modes.join("/")
        ),
        median(inc_ms.clone()) / 1000.0,
        0.0,
        median(inc_read) as u64,
    );
    let inc_cmd = median(inc_wall);

    // Report.
    let ratio = |a: f64, b: f64| a / b;
    let mut md = String::new();
    let w = &mut md;
    use std::fmt::Write as _;
    writeln!(w, "# ferry manifest benchmark\n")?;
    writeln!(w, "Image: {} VM-like (25% holes, 50% random, 25% duplicated 64 KiB-aligned runs), seed {seed}; backend {} on {}; {} run(s) per figure, medians; {} CPUs.\n", format_size(size), info["backend"], info["filesystem"], runs, threads)?;
    writeln!(w, "| measurement | wall s | GB/s of image | CPU s | bytes read | note |\n|---|---:|---:|---:|---:|---|")?;
    for r in &b.rows {
        writeln!(
            w,
            "| {} | {:.3} | {:.2} | {:.2} | {} | {} |",
            r.name,
            r.wall_s,
            r.gb_per_s,
            r.cpu_s,
            format_size(r.bytes_read),
            r.note
        )?;
    }
    writeln!(w, "\n## Ratios (same run)\n")?;
    writeln!(
        w,
        "- full manifest vs b3sum, warm: **{:.2}x** b3sum's speed (goal >= 0.8x)",
        ratio(b3.wall_s, fu.wall_s)
    )?;
    writeln!(
        w,
        "- io_uring vs pread, warm: **{:.2}x**",
        ratio(fp.wall_s, fu.wall_s)
    )?;
    if let Some((b3c, fuc, fpc, fdc, fdp)) = &cold {
        writeln!(
            w,
            "- full manifest vs b3sum, cold: **{:.2}x** with the default (io_uring, O_DIRECT for a cold file); {:.2}x buffered",
            ratio(b3c.wall_s, fdc.wall_s),
            ratio(b3c.wall_s, fuc.wall_s)
        )?;
        writeln!(
            w,
            "- io_uring vs pread, cold buffered: **{:.2}x**; O_DIRECT: **{:.2}x**",
            ratio(fpc.wall_s, fuc.wall_s),
            ratio(fdp.wall_s, fdc.wall_s)
        )?;
    }
    writeln!(w, "- incremental vs full manifest, both in `snapshot create` on a fresh clone: **{:.1}%** ({:.1} ms vs {:.1} ms; goal < 5%); whole incremental `snapshot create` command {:.3} s", 100.0 * inc.wall_s / fresh.wall_s, inc.wall_s * 1000.0, fresh.wall_s * 1000.0, inc_cmd)?;
    writeln!(
        w,
        "- incremental vs the warm in-process full manifest: {:.1}%",
        100.0 * inc.wall_s / fu.wall_s
    )?;
    let best = sweep
        .iter()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|x| x.0)
        .unwrap_or(bs);
    writeln!(
        w,
        "- block size sweep: fastest full manifest at {} (default {})",
        format_size(best as u64),
        format_size(bs as u64)
    )?;
    std::fs::write(out.join("report.md"), &md)?;
    let json = serde_json::json!({
        "image_size": size, "seed": seed, "runs": runs,
        "backend": info["backend"], "filesystem": info["filesystem"],
        "rows": b.rows,
        "ratios": {
            "full_vs_b3sum_warm": ratio(b3.wall_s, fu.wall_s),
            "io_uring_vs_pread_warm": ratio(fp.wall_s, fu.wall_s),
            "full_vs_b3sum_cold": cold.as_ref().map(|c| ratio(c.0.wall_s, c.3.wall_s)),
            "full_vs_b3sum_cold_buffered": cold.as_ref().map(|c| ratio(c.0.wall_s, c.1.wall_s)),
            "io_uring_vs_pread_cold": cold.as_ref().map(|c| ratio(c.2.wall_s, c.1.wall_s)),
            "io_uring_vs_pread_direct_cold": cold.as_ref().map(|c| ratio(c.4.wall_s, c.3.wall_s)),
            "incremental_over_full": inc.wall_s / fresh.wall_s,
            "incremental_over_full_warm": inc.wall_s / fu.wall_s,
        },
        "full_rounds_ms": full_ms,
        "incremental_rounds_ms": inc_ms,
    });
    let mut jf = std::fs::File::create(out.join("report.json"))?;
    serde_json::to_writer_pretty(&mut jf, &json)?;
    writeln!(jf)?;
    print!("{md}");
    agent(&data, &["volume", "delete", "vm", "--force"])?;
    Ok(())
}

mod controller_load;
mod index;
mod longlink;
mod plan_level;
mod replication;
mod scale;

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Manifest {
            dir,
            size,
            out,
            runs,
            seed,
        } => manifest_bench(&dir, size, &out, runs.max(1), seed),
        Cmd::Generate { file, size, seed } => generate(&file, size, seed, 4096),
        Cmd::ControllerLoad { out, plans, rate } => controller_load::run(&out, plans, rate),
        Cmd::Replication {
            dir,
            size,
            out,
            seed,
            runs,
            caches,
        } => {
            let o = replication::Options {
                size,
                seed,
                runs: runs.max(1),
                caches: caches_of(&caches),
            };
            replication::run(&dir, &out, &o)
        }
        Cmd::Plan {
            dir,
            size,
            out,
            seed,
            runs,
        } => plan_level::run(&dir, size, &out, seed, runs),
        Cmd::Scale {
            dir,
            out,
            seed,
            runs,
            caches,
        } => scale::run(&dir, &out, runs.max(1), &caches_of(&caches), seed),
        Cmd::Longlink {
            dir,
            size,
            out,
            seed,
            runs,
            windows,
        } => longlink::run(&dir, &out, size, runs.max(1), seed, &windows),
        Cmd::Index {
            dir,
            out,
            entries,
            probes,
        } => index::run(&dir, &out, entries.max(1), probes),
    }
}
