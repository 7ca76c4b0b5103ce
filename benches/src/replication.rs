//! `ferry-bench replication`: ferry full and incremental replication between two real agents
//! on loopback, against rsync (daemon; default and `--block-size=4096`), restic and borg on the
//! same images, and this machine's own limits in the same run: the raw QUIC ceiling, the
//! disk's for a full copy (a local copy of the image with fsync), and the disk's floor for a
//! durable incremental (`disk_incremental`: the volume cloned, the changed pages read and
//! written into a clone of the mirror, fsync).
//!
//! Image: VM-like (25% holes, 50% random, 25% runs duplicated at 4 KiB alignment); the
//! incremental step rewrites 1% of it in random 4 KiB pages (the same pages every run).
//! Every tool repeats every step `--runs` times, interleaved (run 1 of every tool, then run
//! 2, ...), each from the same starting state, so noise from other tenants falls on all
//! alike; the report gives medians with their spread. With cold caches, the page cache is
//! dropped before every timed step of every tool. ferry's times include taking the snapshot
//! (its manifest is the scan rsync does itself); CPU counts both agents; bytes are block
//! payload. rsync's bytes are its `Total bytes sent`; restic's and borg's are the growth of
//! their repositories.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ferry_agent::pki;
use ferry_wire::units::format_size;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::{agent_bin, cpu_children, cpu_self, drop_caches, generate, median};

/// Page-cache state of a measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Caches {
    Warm,
    Cold,
}

impl Caches {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Caches::Warm => "warm",
            Caches::Cold => "cold",
        }
    }
}

/// One timed step of one tool.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Sample {
    pub tool: &'static str,
    pub phase: &'static str,
    pub caches: Caches,
    pub wall_s: f64,
    pub cpu_s: f64,
    pub bytes: u64,
    /// ferry: seconds per part (the snapshot, its manifest, and `replicate --json`'s
    /// timings, sender and receiver).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub parts: BTreeMap<String, f64>,
}

/// The medians of one (tool, phase, caches) over the runs.
#[derive(Debug, Clone, Serialize)]
struct Row {
    tool: &'static str,
    phase: &'static str,
    caches: Caches,
    runs: usize,
    wall_s: f64,
    wall_min_s: f64,
    wall_max_s: f64,
    cpu_s: f64,
    bytes: u64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    parts: BTreeMap<String, f64>,
}

/// CPU seconds of a running process and its reaped children, from /proc.
pub(crate) fn proc_cpu(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may contain spaces) start at ") ".
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // utime, stime, cutime, cstime are fields 14..17 (1-based); rest starts at field 3.
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    f.get(11..15).map_or(0.0, |v| v.iter().sum::<f64>() / tck)
}

fn dir_size(p: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += dir_size(&e.path()),
                Ok(m) => total += std::os::unix::fs::MetadataExt::blocks(&m) * 512,
                Err(_) => {}
            }
        }
    }
    total
}

/// The parts of a ferry step the reports break its time into: (key, label).
pub(crate) const PARTS: &[(&str, &str)] = &[
    ("snapshot", "snapshot (clone + manifest)"),
    ("snapshot.manifest", "  of it the manifest"),
    ("replicate", "replicate (the command)"),
    ("replicate.open", "  open the snapshot"),
    ("replicate.connect", "  connect"),
    (
        "replicate.begin",
        "  begin (receiver picks the base, resets its copy)",
    ),
    (
        "replicate.receiver.open",
        "    receiver: open (its copy reset to the base, the index read)",
    ),
    ("replicate.plan", "  base manifest, changed ranges"),
    ("replicate.transfer", "  offers and data"),
    ("replicate.reads", "    sender's reads and checks"),
    ("replicate.commit", "  commit"),
    (
        "replicate.receiver.base_reads",
        "    receiver: base reads (summed over the reads in flight)",
    ),
    ("replicate.receiver.verify", "    receiver: checks (summed)"),
    ("replicate.receiver.write", "    receiver: writes"),
    (
        "replicate.receiver.sync",
        "    receiver: last blocks and fsync",
    ),
    (
        "replicate.receiver.snapshot",
        "    receiver: the mirror snapshot",
    ),
];

/// The phases of a `replicate --json` report, seconds, as `replicate.PHASE` (the sender's)
/// and `replicate.receiver.PHASE`.
pub(crate) fn timings(r: &serde_json::Value) -> BTreeMap<String, f64> {
    let mut parts = BTreeMap::new();
    for (side, t) in [
        ("", &r["timings"]),
        ("receiver.", &r["timings"]["receiver"]),
    ] {
        for (k, v) in t.as_object().into_iter().flatten() {
            if let (Some(ms), Some(k)) = (v.as_f64(), k.strip_suffix("_ms")) {
                parts.insert(format!("replicate.{side}{k}"), ms / 1e3);
            }
        }
    }
    parts
}

/// Lets every step start from a quiet machine: writes still in flight (the previous step's
/// output) are flushed first, outside the timing; with cold caches the page cache is
/// dropped too (which also drops the loop device's backing file: what a cold read costs on
/// this VM's disk).
pub(crate) fn settle(caches: Caches) -> Result<()> {
    let _ = Command::new("sync").status();
    if caches == Caches::Cold {
        drop_caches()?;
    }
    Ok(())
}

/// Runs a command, returning (wall, CPU of it and its children, stdout).
pub(crate) fn timed(cmd: &mut Command) -> Result<(f64, f64, String)> {
    let c0 = cpu_children();
    let t0 = Instant::now();
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    let wall = t0.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((
        wall,
        cpu_children() - c0,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

pub(crate) struct Killed(pub Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Replaces `dst` with a clone of `src` (a fresh file, as a backup source would be).
pub(crate) fn stage(src: &Path, dst: &Path) -> Result<()> {
    let _ = std::fs::remove_file(dst);
    let st = Command::new("cp")
        .arg("--reflink=auto")
        .arg(src)
        .arg(dst)
        .status()?;
    if !st.success() {
        bail!("cp {} failed", src.display());
    }
    Ok(())
}

/// Rewrites `share` ten-thousandths of `path` (`size` bytes) in random 4 KiB pages, the same
/// ones for the same `seed`; returns the bytes of distinct pages changed.
pub(crate) fn churn(path: &Path, size: u64, seed: u64, share: u64) -> Result<u64> {
    Ok(churned_pages(path, size, seed, share)?.len() as u64 * 4096)
}

/// [`churn`], returning the distinct pages changed, in order.
fn churned_pages(path: &Path, size: u64, seed: u64, share: u64) -> Result<Vec<u64>> {
    let pages = size / 4096;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let f = std::fs::OpenOptions::new().write(true).open(path)?;
    let mut distinct = BTreeSet::new();
    let mut page = [0u8; 4096];
    for _ in 0..(pages * share / 10_000).max(1) {
        let p = rng.gen_range(0..pages);
        rng.fill(&mut page[..]);
        f.write_all_at(&page, p * 4096)?;
        distinct.insert(p);
    }
    f.sync_all()?;
    Ok(distinct.into_iter().collect())
}

/// Two agents of two sites on loopback: `a` sends (by command), `b` serves.
pub(crate) struct Agents {
    pub a_cfg: PathBuf,
    pub b_cfg: PathBuf,
    pub addr: String,
    pub server: Killed,
}

impl Agents {
    /// Makes the sites' PKI and configurations in `dir` (data in `dir/a`, `dir/b`) and starts
    /// b's daemon; `net` goes into both agents' `[net]` sections.
    pub(crate) fn start(dir: &Path, net: &str) -> Result<Agents> {
        let pki_dir = dir.join("pki");
        let (a_ca, b_ca) = (pki_dir.join("a"), pki_dir.join("b"));
        pki::create_ca("site-a", &a_ca, 365)?;
        pki::create_ca("site-b", &b_ca, 365)?;
        let (ac, ak) = pki::issue(&a_ca, "a1", &a_ca, 30)?;
        let (bc, bk) = pki::issue(&b_ca, "b1", &b_ca, 30)?;
        let cfg = |data: &Path, cert: &Path, key: &Path, peer: &Path, extra: &str| {
            format!(
                "data_dir = {:?}\n[net]\nlisten = \"127.0.0.1:0\"\ncert = {:?}\nkey = {:?}\npeer_cas = [{:?}]\n{extra}\n",
                data.display().to_string(),
                cert.display().to_string(),
                key.display().to_string(),
                peer.join("ca.pem").display().to_string()
            )
        };
        let a_cfg = dir.join("a.toml");
        let b_cfg = dir.join("b.toml");
        // FERRY_BENCH_AGENT_TOML=TEXT: sections appended to both agents' configurations, to
        // compare settings (e.g. "[io]\ndirect_writes = false").
        let more = std::env::var("FERRY_BENCH_AGENT_TOML").unwrap_or_default();
        let net = format!("{net}\n{more}");
        std::fs::write(&a_cfg, cfg(&dir.join("a"), &ac, &ak, &b_ca, &net))?;
        std::fs::write(&b_cfg, cfg(&dir.join("b"), &bc, &bk, &a_ca, &net))?;
        let (server, addr) = Self::serve(&b_cfg)?;
        Ok(Agents {
            a_cfg,
            b_cfg,
            addr,
            server,
        })
    }

    fn serve(cfg: &Path) -> Result<(Killed, String)> {
        let mut serve = Command::new(agent_bin()?);
        serve
            .arg("--config")
            .arg(cfg)
            .arg("serve")
            .stdout(Stdio::piped());
        // FERRY_BENCH_SERVE_LOG=FILE keeps the receiver's log (its level from FERRY_LOG).
        match std::env::var_os("FERRY_BENCH_SERVE_LOG") {
            Some(p) => serve.stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
            None => serve.stderr(Stdio::null()),
        };
        let mut child = serve.spawn()?;
        let stdout = child.stdout.take().context("serve stdout")?;
        let server = Killed(child);
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
        let addr = line
            .trim()
            .rsplit(' ')
            .next()
            .unwrap_or_default()
            .to_string();
        Ok((server, addr))
    }

    /// Starts b's daemon again (its memory high-water mark starts from nothing).
    pub(crate) fn restart_receiver(&mut self) -> Result<()> {
        // Stopped as systemd stops it: it finishes its work in the background first (the
        // mirror's next working copy, cloned after a commit), where SIGKILL would leave
        // that to the next session.
        ferry_controller::process::stop(
            &mut self.server.0,
            libc::SIGTERM,
            Duration::from_secs(120),
        );
        let (server, addr) = Self::serve(&self.b_cfg)?;
        self.server = server;
        self.addr = addr;
        Ok(())
    }

    /// `ferry-agent --config <a or b> --json ARGS`.
    pub(crate) fn cmd(&self, b: bool, args: &[&str]) -> Result<Command> {
        let mut c = Command::new(agent_bin()?);
        c.arg("--config")
            .arg(if b { &self.b_cfg } else { &self.a_cfg })
            .arg("--json")
            .args(args);
        Ok(c)
    }

    /// Runs `ferry-agent ... --json ARGS` and returns its JSON.
    pub(crate) fn json(&self, b: bool, args: &[&str]) -> Result<serde_json::Value> {
        let out = self.cmd(b, args)?.output()?;
        if !out.status.success() {
            bail!(
                "ferry-agent {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Snapshot `snap` of `vol` at a, then replicate it to b (`extra` arguments): a timed
    /// sample with its parts.
    pub(crate) fn step(
        &self,
        phase: &'static str,
        caches: Caches,
        vol: &str,
        snap: &str,
        extra: &[&str],
    ) -> Result<Sample> {
        let c_server = proc_cpu(self.server.0.id());
        let (w1, c1, out) = timed(&mut self.cmd(false, &["snapshot", "create", vol, snap])?)?;
        let s: serde_json::Value = serde_json::from_str(&out)?;
        let mut args = vec!["replicate", vol, snap, "--to", &self.addr];
        args.extend(extra);
        let (w2, c2, out) = timed(&mut self.cmd(false, &args)?)?;
        let r: serde_json::Value = serde_json::from_str(&out)?;
        let r = if r.is_array() { r[0].clone() } else { r };
        let mut parts = BTreeMap::new();
        parts.insert("snapshot".into(), w1);
        parts.insert(
            "snapshot.manifest".into(),
            s["manifest"]["elapsed_ms"].as_f64().unwrap_or(0.0) / 1e3,
        );
        parts.insert("replicate".into(), w2);
        parts.extend(timings(&r));
        Ok(Sample {
            tool: "ferry",
            phase,
            caches,
            wall_s: w1 + w2,
            cpu_s: c1 + c2 + proc_cpu(self.server.0.id()) - c_server,
            bytes: r["sent_bytes"].as_u64().unwrap_or(0),
            parts,
        })
    }
}

/// What every run starts from: the generated image, the same image after the 1% churn,
/// and the distinct bytes the churn changes.
struct Images {
    v1: PathBuf,
    v2: PathBuf,
    /// The pages v2 changed, in order.
    pages: Vec<u64>,
}

impl Images {
    /// The bytes of the distinct pages v2 changed.
    fn changed(&self) -> u64 {
        self.pages.len() as u64 * 4096
    }
}

/// One ferry cycle from nothing: b holds no mirror, a's volume is the generated image; the
/// full step, the churn, the incremental step.
fn ferry_cycle(
    ag: &Agents,
    im: &Images,
    size: u64,
    seed: u64,
    caches: Caches,
) -> Result<[Sample; 2]> {
    let _ = ag.json(true, &["volume", "delete", "vm", "--force"]);
    let _ = ag.json(false, &["volume", "delete", "vm", "--force"]);
    ag.json(
        false,
        &["volume", "create", "vm", "--size", &size.to_string()],
    )?;
    let vol = PathBuf::from(
        ag.json(false, &["volume", "path", "vm"])?["path"]
            .as_str()
            .context("volume path")?,
    );
    stage(&im.v1, &vol)?;
    settle(caches)?;
    let full = ag.step("full", caches, "vm", "s1", &[])?;
    churn(&vol, size, seed ^ 0x1234, 100)?;
    settle(caches)?;
    let inc = ag.step("incremental", caches, "vm", "s2", &[])?;
    eprintln!(
        "ferry {}: full {:.2} s ({}), incremental {:.2} s ({})",
        caches.name(),
        full.wall_s,
        format_size(full.bytes),
        inc.wall_s,
        format_size(inc.bytes)
    );
    Ok([full, inc])
}

struct Rsync {
    port: u16,
    daemon: Killed,
    dst: PathBuf,
}

impl Rsync {
    fn start(dir: &Path) -> Result<Rsync> {
        let dst = dir.join("rsync-dst");
        std::fs::create_dir_all(&dst)?;
        let port = free_port()?;
        let conf = dir.join("rsyncd.conf");
        std::fs::write(
            &conf,
            format!(
                "use chroot = no\nuid = 0\ngid = 0\n[dst]\npath = {}\nread only = no\n",
                dst.display()
            ),
        )?;
        let daemon = Killed(
            Command::new("rsync")
                .args(["--daemon", "--no-detach", "--address=127.0.0.1"])
                .arg(format!("--port={port}"))
                .arg(format!("--config={}", conf.display()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("start rsync daemon")?,
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
        Ok(Rsync { port, daemon, dst })
    }

    /// rsync's full copy and delta of the images (`extra`: its block size).
    fn cycle(
        &self,
        dir: &Path,
        im: &Images,
        tool: &'static str,
        extra: Option<&str>,
        caches: Caches,
    ) -> Result<Vec<Sample>> {
        let src = dir.join("src/vm.img");
        std::fs::create_dir_all(dir.join("src"))?;
        let _ = std::fs::remove_file(self.dst.join(tool));
        let url = format!("rsync://127.0.0.1:{}/dst/{tool}", self.port);
        let mut out = Vec::new();
        for (phase, image) in [("full", &im.v1), ("incremental", &im.v2)] {
            stage(image, &src)?;
            settle(caches)?;
            let c_daemon = proc_cpu(self.daemon.0.id());
            let mut c = Command::new("rsync");
            c.args(["--inplace", "--no-whole-file", "--ignore-times", "--stats"]);
            if let Some(e) = extra {
                c.arg(e);
            }
            c.arg(&src).arg(&url);
            let (wall, cpu, stats) = timed(&mut c)?;
            let sent = stats
                .lines()
                .find(|l| l.starts_with("Total bytes sent:"))
                .and_then(|l| l.split(':').nth(1))
                .map_or(0, |n| n.trim().replace(',', "").parse().unwrap_or(0));
            eprintln!("{tool} {} {phase}: {wall:.2} s", caches.name());
            out.push(Sample {
                tool,
                phase,
                caches,
                wall_s: wall,
                cpu_s: cpu + proc_cpu(self.daemon.0.id()) - c_daemon,
                bytes: sent,
                parts: BTreeMap::new(),
            });
        }
        Ok(out)
    }
}

/// restic's and borg's backups of the images into fresh repositories.
fn repo_cycle(dir: &Path, im: &Images, caches: Caches) -> Result<Vec<Sample>> {
    let src = dir.join("src/vm.img");
    std::fs::create_dir_all(dir.join("src"))?;
    let restic = dir.join("restic");
    let borg = dir.join("borg");
    let _ = std::fs::remove_dir_all(&restic);
    let _ = std::fs::remove_dir_all(&borg);
    let run = |c: &mut Command| {
        timed(
            c.env("RESTIC_PASSWORD", "bench")
                .env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes"),
        )
    };
    run(Command::new("restic").arg("-r").arg(&restic).arg("init"))?;
    run(Command::new("borg")
        .args(["init", "--encryption=none"])
        .arg(&borg))?;
    let mut out = Vec::new();
    for (phase, image, name) in [("full", &im.v1, "v1"), ("incremental", &im.v2, "v2")] {
        stage(image, &src)?;
        settle(caches)?;
        let before = dir_size(&restic);
        let (w, c, _) = run(Command::new("restic")
            .arg("-r")
            .arg(&restic)
            .args(["backup", "--quiet"])
            .arg(&src))?;
        out.push(Sample {
            tool: "restic",
            phase,
            caches,
            wall_s: w,
            cpu_s: c,
            bytes: dir_size(&restic) - before,
            parts: BTreeMap::new(),
        });
        settle(caches)?;
        let before = dir_size(&borg);
        let (w, c, _) = run(Command::new("borg")
            .arg("create")
            .arg(format!("{}::{name}", borg.display()))
            .arg(&src))?;
        out.push(Sample {
            tool: "borg",
            phase,
            caches,
            wall_s: w,
            cpu_s: c,
            bytes: dir_size(&borg) - before,
            parts: BTreeMap::new(),
        });
        eprintln!("restic, borg {} {phase}", caches.name());
    }
    Ok(out)
}

/// Streams `bytes` over 4 unidirectional QUIC streams (ferry's transport and TLS settings) to
/// a server that discards them: the most any QUIC transfer gets on this machine.
pub(crate) fn quic_ceiling(dir: &Path, bytes: u64) -> Result<(f64, f64)> {
    let d = dir.join("pki-ceiling");
    let _ = std::fs::remove_dir_all(&d);
    pki::create_ca("ceil", &d, 365)?;
    let (sc, sk) = pki::issue(&d, "srv", &d, 30)?;
    let (cc, ck) = pki::issue(&d, "cli", &d, 30)?;
    let mut trust = pki::Trust::default();
    trust.add_file(&d.join("ca.pem"), None)?;
    let server_id = pki::Identity::load(&sc, &sk)?;
    let client_id = pki::Identity::load(&cc, &ck)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let c0 = cpu_self();
    let wall = rt.block_on(async {
        let server = ferry_agent::net::endpoint(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            Some(ferry_agent::net::server_config(&server_id, &trust)?),
        )?;
        let addr = server.local_addr()?;
        let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let rx = received.clone();
        let acceptor = tokio::spawn(async move {
            let Some(inc) = server.accept().await else {
                return;
            };
            let Ok(conn) = inc.await else { return };
            let mut tasks = Vec::new();
            while let Ok(mut s) = conn.accept_uni().await {
                let rx = rx.clone();
                tasks.push(tokio::spawn(async move {
                    while let Ok(Some(chunk)) = s.read_chunk(1 << 20, false).await {
                        rx.fetch_add(
                            chunk.bytes.len() as u64,
                            std::sync::atomic::Ordering::Relaxed,
                        );
                    }
                }));
                if tasks.len() == 4 {
                    break;
                }
            }
            for t in tasks {
                let _ = t.await;
            }
            conn.close(0u32.into(), b"done");
        });
        let ep = ferry_agent::net::client_endpoint(
            addr,
            ferry_agent::net::client_config(&client_id, &trust)?,
        )?;
        let conn = ep.connect(addr, pki::SERVER_NAME)?.await?;
        let t0 = Instant::now();
        let chunk = vec![0x5au8; 1 << 20];
        let per = bytes / 4;
        let mut senders = Vec::new();
        for _ in 0..4 {
            let mut s = conn.open_uni().await?;
            let chunk = chunk.clone();
            senders.push(tokio::spawn(async move {
                let mut left = per;
                while left > 0 {
                    let n = left.min(chunk.len() as u64) as usize;
                    s.write_all(&chunk[..n]).await?;
                    left -= n as u64;
                }
                s.finish()?;
                s.stopped().await.ok();
                Ok::<_, anyhow::Error>(())
            }));
        }
        for s in senders {
            s.await??;
        }
        let _ = acceptor.await;
        let wall = t0.elapsed().as_secs_f64();
        let got = received.load(std::sync::atomic::Ordering::Relaxed);
        if got != per * 4 {
            bail!("ceiling: received {got} of {} bytes", per * 4);
        }
        ep.wait_idle().await;
        Ok::<_, anyhow::Error>(wall)
    })?;
    Ok((wall, cpu_self() - c0))
}

/// The medians of the samples, by (tool, phase, caches) in the order first seen.
fn rows(samples: &[Sample]) -> Vec<Row> {
    let mut order: Vec<(&'static str, &'static str, Caches)> = Vec::new();
    for s in samples {
        let k = (s.tool, s.phase, s.caches);
        if !order.contains(&k) {
            order.push(k);
        }
    }
    order
        .into_iter()
        .map(|(tool, phase, caches)| {
            let mine: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.tool == tool && s.phase == phase && s.caches == caches)
                .collect();
            let walls: Vec<f64> = mine.iter().map(|s| s.wall_s).collect();
            let mut parts = BTreeMap::new();
            for k in mine
                .iter()
                .flat_map(|s| s.parts.keys())
                .collect::<BTreeSet<_>>()
            {
                let v = mine
                    .iter()
                    .filter_map(|s| s.parts.get(k).copied())
                    .collect();
                parts.insert(k.clone(), median(v));
            }
            Row {
                tool,
                phase,
                caches,
                runs: mine.len(),
                wall_s: median(walls.clone()),
                wall_min_s: walls.iter().copied().fold(f64::INFINITY, f64::min),
                wall_max_s: walls.iter().copied().fold(0.0, f64::max),
                cpu_s: median(mine.iter().map(|s| s.cpu_s).collect()),
                bytes: median(mine.iter().map(|s| s.bytes as f64).collect()) as u64,
                parts,
            }
        })
        .collect()
}

/// The benchmark's choices.
#[derive(Debug, Clone)]
pub struct Options {
    pub size: u64,
    pub seed: u64,
    pub runs: usize,
    pub caches: Vec<Caches>,
}

pub fn run(dir: &Path, out: &Path, o: &Options) -> Result<()> {
    std::fs::create_dir_all(out)?;
    let work = dir.join("bench-replication");
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    std::fs::create_dir_all(&work)?;
    let ag = Agents::start(&work, "")?;
    // The images every tool starts from.
    eprintln!("generating a {} VM-like image", format_size(o.size));
    let v1 = work.join("v1.img");
    std::fs::File::create(&v1)?.set_len(o.size)?;
    generate(&v1, o.size, o.seed, 4096)?;
    let v2 = work.join("v2.img");
    stage(&v1, &v2)?;
    let pages = churned_pages(&v2, o.size, o.seed ^ 0x1234, 100)?;
    let im = Images { v1, v2, pages };
    let others = std::env::var_os("FERRY_BENCH_FERRY_ONLY").is_none();
    let rsync = if others {
        Some(Rsync::start(&work)?)
    } else {
        None
    };
    let mut samples = Vec::new();
    for run in 0..o.runs {
        for &caches in &o.caches {
            eprintln!("run {} of {}, caches {}", run + 1, o.runs, caches.name());
            let [full, inc] = ferry_cycle(&ag, &im, o.size, o.seed, caches)?;
            let full_bytes = full.bytes;
            samples.extend([full, inc]);
            let floor = disk_incremental(&work, &im, caches)?;
            eprintln!(
                "disk floor of an incremental ({}): {:.2} s",
                caches.name(),
                floor.wall_s
            );
            samples.push(floor);
            if let Some(r) = &rsync {
                samples.extend(r.cycle(&work, &im, "rsync", None, caches)?);
                samples.extend(r.cycle(
                    &work,
                    &im,
                    "rsync-4k",
                    Some("--block-size=4096"),
                    caches,
                )?);
                samples.extend(repo_cycle(&work, &im, caches)?);
            }
            if caches == Caches::Warm {
                let (wall, cpu) = quic_ceiling(&work, full_bytes.max(256 << 20))?;
                eprintln!("quic ceiling: {} in {wall:.2} s", format_size(full_bytes));
                samples.push(Sample {
                    tool: "quic-ceiling",
                    phase: "full",
                    caches,
                    wall_s: wall,
                    cpu_s: cpu,
                    bytes: full_bytes.max(256 << 20),
                    parts: BTreeMap::new(),
                });
                let (wall, cpu) = disk_ceiling(&work, &im.v1)?;
                eprintln!("disk ceiling: a local copy with fsync in {wall:.2} s");
                samples.push(Sample {
                    tool: "disk-ceiling",
                    phase: "full",
                    caches,
                    wall_s: wall,
                    cpu_s: cpu,
                    bytes: full_bytes,
                    parts: BTreeMap::new(),
                });
            }
        }
    }
    let rows = rows(&samples);
    let md = report(o, &im, &rows)?;
    std::fs::write(out.join("report.md"), &md)?;
    let json = serde_json::json!({
        "image_size": o.size, "seed": o.seed, "runs": o.runs,
        "ideal_incremental_bytes": im.changed(), "rows": rows, "samples": samples,
    });
    std::fs::write(out.join("report.json"), serde_json::to_vec_pretty(&json)?)?;
    print!("{md}");
    drop(ag);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// The disk's own limit for a full copy: the image copied within this filesystem (holes
/// kept, no reflink) and made durable, as a receiver must; (wall, CPU) seconds.
fn disk_ceiling(dir: &Path, image: &Path) -> Result<(f64, f64)> {
    let dst = dir.join("disk-ceiling.img");
    let _ = std::fs::remove_file(&dst);
    settle(Caches::Warm)?;
    let (w1, c1, _) = timed(
        Command::new("cp")
            .args(["--sparse=always", "--reflink=never"])
            .arg(image)
            .arg(&dst),
    )?;
    let (w2, c2, _) = timed(Command::new("sync").arg(&dst))?;
    std::fs::remove_file(&dst)?;
    Ok((w1 + w2, c1 + c2))
}

/// The disk's own floor for a durable incremental that already knows which pages changed:
/// the volume cloned (the snapshot a consistent copy of a live volume needs), its changed
/// pages read (16 threads, as a reader with a queue of reads in flight) and written into a
/// clone of the previous image (a mirror sharing its blocks with its snapshots, so every
/// write is copy-on-write), then fsync. No hashing, no network, no manifest.
fn disk_incremental(dir: &Path, im: &Images, caches: Caches) -> Result<Sample> {
    let (snap, mirror) = (dir.join("floor-snap.img"), dir.join("floor-mirror.img"));
    let _ = std::fs::remove_file(&snap);
    stage(&im.v1, &mirror)?;
    settle(caches)?;
    let c0 = cpu_self();
    let t0 = Instant::now();
    let src = std::fs::File::open(&im.v2)?;
    let clone = std::fs::File::create(&snap)?;
    ferry_agent::fsx::ficlone(&src, &clone).context("clone the volume")?;
    drop(clone);
    let snap_f = std::fs::File::open(&snap)?;
    let out = std::fs::OpenOptions::new().write(true).open(&mirror)?;
    let per = im.pages.len().div_ceil(16).max(1);
    std::thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = im
            .pages
            .chunks(per)
            .map(|pages| {
                let (snap_f, out) = (&snap_f, &out);
                s.spawn(move || -> std::io::Result<()> {
                    let mut page = [0u8; 4096];
                    for &p in pages {
                        snap_f.read_exact_at(&mut page, p * 4096)?;
                        out.write_all_at(&page, p * 4096)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("a floor thread panicked"))??;
        }
        Ok(())
    })?;
    out.sync_all()?;
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_self() - c0;
    drop((snap_f, out));
    std::fs::remove_file(&snap)?;
    std::fs::remove_file(&mirror)?;
    Ok(Sample {
        tool: "disk-floor",
        phase: "incremental",
        caches,
        wall_s: wall,
        cpu_s: cpu,
        bytes: im.changed(),
        parts: BTreeMap::new(),
    })
}

/// Seconds of a part, as a cell.
fn cell(v: Option<&f64>) -> String {
    v.map_or("-".into(), |s| format!("{s:.2}"))
}

fn report(o: &Options, im: &Images, rows: &[Row]) -> Result<String> {
    use std::fmt::Write as _;
    let mut md = String::new();
    writeln!(md, "# ferry replication benchmark\n")?;
    writeln!(
        md,
        "Image: {} VM-like (25% holes, 50% random, 25% runs duplicated at 4 KiB alignment), seed {}; incremental = 1% random 4 KiB writes ({} of distinct changed pages). {} runs of every step, interleaved across tools; medians, with the spread (min-max). Both ends on this machine (loopback). Cold: the page cache dropped before every timed step.\n",
        format_size(o.size),
        o.seed,
        format_size(im.changed()),
        o.runs
    )?;
    writeln!(
        md,
        "| tool | phase | caches | wall s | spread | CPU s | bytes |\n|---|---|---|---:|---|---:|---:|"
    )?;
    for r in rows {
        writeln!(
            md,
            "| {} | {} | {} | {:.2} | {:.2}-{:.2} | {:.2} | {} |",
            r.tool,
            r.phase,
            r.caches.name(),
            r.wall_s,
            r.wall_min_s,
            r.wall_max_s,
            r.cpu_s,
            format_size(r.bytes)
        )?;
    }
    let get = |tool: &str, phase: &str, caches: Caches| {
        rows.iter()
            .find(|r| r.tool == tool && r.phase == phase && r.caches == caches)
    };
    writeln!(md, "\n## Where ferry's time goes (medians, seconds)\n")?;
    let cols: Vec<(&str, Caches)> = ["full", "incremental"]
        .iter()
        .flat_map(|p| o.caches.iter().map(move |c| (*p, *c)))
        .collect();
    write!(md, "| part |")?;
    for (p, c) in &cols {
        write!(md, " {p} {} |", c.name())?;
    }
    writeln!(md, "\n|---|{}", "---:|".repeat(cols.len()))?;
    for &(k, label) in PARTS {
        write!(md, "| {label} |")?;
        for (p, c) in &cols {
            write!(
                md,
                " {} |",
                cell(get("ferry", p, *c).and_then(|r| r.parts.get(k)))
            )?;
        }
        writeln!(md)?;
    }
    writeln!(md, "\n## Against the goals\n")?;
    for &c in &o.caches {
        if let (Some(fi), Some(ri)) = (
            get("ferry", "incremental", c),
            get("rsync", "incremental", c),
        ) {
            writeln!(
                md,
                "- incremental, {}: snapshot + replicate / rsync's delta: **{:.3}** (goal <= 0.1; {:.2} s against {:.2} s); bytes / distinct changed pages **{:.2}x**",
                c.name(),
                fi.wall_s / ri.wall_s,
                fi.wall_s,
                ri.wall_s,
                fi.bytes as f64 / im.changed() as f64
            )?;
        }
        if let (Some(fi), Some(d)) = (
            get("ferry", "incremental", c),
            get("disk-floor", "incremental", c),
        ) {
            let ri = get("rsync", "incremental", c);
            writeln!(
                md,
                "- incremental, {}: the disk's own floor (the volume cloned, its changed pages read and written into a clone of the mirror, fsync: {:.2} s) / ferry **{:.2}x**{}",
                c.name(),
                d.wall_s,
                d.wall_s / fi.wall_s,
                ri.map_or(String::new(), |r| format!(
                    "; the floor alone is {:.3} of rsync's delta",
                    d.wall_s / r.wall_s
                ))
            )?;
        }
    }
    if let (Some(ff), Some(rf), Some(q)) = (
        get("ferry", "full", Caches::Warm),
        get("rsync", "full", Caches::Warm),
        get("quic-ceiling", "full", Caches::Warm),
    ) {
        let ceiling_rate = q.bytes as f64 / q.wall_s;
        writeln!(
            md,
            "- full, warm: speed / rsync's full copy **{:.2}x** (goal >= 2x); / the QUIC ceiling for the bytes it sends **{:.2}x** (goal >= 0.6x; ceiling {:.0} MB/s)",
            rf.wall_s / ff.wall_s,
            (ff.bytes as f64 / ceiling_rate) / ff.wall_s,
            ceiling_rate / 1e6
        )?;
    }
    if let (Some(ff), Some(d)) = (
        get("ferry", "full", Caches::Warm),
        get("disk-ceiling", "full", Caches::Warm),
    ) {
        writeln!(
            md,
            "- full, warm: / the disk's own limit (a local copy of the image with fsync, {:.2} s) **{:.2}x**",
            d.wall_s,
            d.wall_s / ff.wall_s
        )?;
    }
    Ok(md)
}
