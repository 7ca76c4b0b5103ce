//! `ferry-bench replication`: ferry full and incremental replication between two real agents
//! on loopback, against rsync (daemon; default and `--block-size=4096`), restic and borg on the
//! same images in the same run, and the raw QUIC ceiling of this machine.
//!
//! Image: VM-like (25% holes, 50% random, 25% runs duplicated at 4 KiB alignment); the
//! incremental step rewrites 1% of it in random 4 KiB pages. ferry's times include taking
//! the snapshot (its manifest is the scan rsync does itself); CPU counts both agents; bytes
//! are block payload. rsync's bytes are its `Total bytes sent`; restic's and borg's are the
//! growth of their repositories.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use ferry_agent::pki;
use ferry_wire::units::format_size;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::{agent_bin, cpu_children, cpu_self, generate};

#[derive(Debug, Clone, Serialize)]
struct Row {
    tool: &'static str,
    phase: &'static str,
    wall_s: f64,
    cpu_s: f64,
    bytes: u64,
}

/// CPU seconds of a running process and its reaped children, from /proc.
fn proc_cpu(pid: u32) -> f64 {
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

/// Lets every tool start from a quiet machine: writes still in flight (a just generated
/// image, the previous tool's output) are flushed first, outside the timing. Without it the
/// first tool measured (ferry) paid for writing back the 4 GiB generated image: 20 s instead
/// of 13 s for its full replication. Caches are kept (dropping them would also drop the
/// loop device's backing file and measure this VM's shared disk, too noisy to compare).
fn settle() {
    let _ = Command::new("sync").status();
}

/// Runs a command, returning (wall, CPU of it and its children, stdout), after [`settle`].
fn timed(cmd: &mut Command) -> Result<(f64, f64, String)> {
    settle();
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

struct Killed(Child);
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

/// Replaces `dst` with a clone of `src` (same path for every tool, as a backup source would be).
fn stage(src: &Path, dst: &Path) -> Result<()> {
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

fn ferry_rows(
    dir: &Path,
    size: u64,
    seed: u64,
    rows: &mut Vec<Row>,
) -> Result<(PathBuf, PathBuf, u64)> {
    let pki_dir = dir.join("pki");
    let (a_ca, b_ca) = (pki_dir.join("a"), pki_dir.join("b"));
    pki::create_ca("site-a", &a_ca, 30)?;
    pki::create_ca("site-b", &b_ca, 30)?;
    let (ac, ak) = pki::issue(&a_ca, "a1", &a_ca, 30)?;
    let (bc, bk) = pki::issue(&b_ca, "b1", &b_ca, 30)?;
    let cfg = |data: &Path, cert: &Path, key: &Path, peer: &Path| {
        format!(
            "data_dir = {:?}\n[net]\nlisten = \"127.0.0.1:0\"\ncert = {:?}\nkey = {:?}\npeer_cas = [{:?}]\n",
            data.display().to_string(),
            cert.display().to_string(),
            key.display().to_string(),
            peer.join("ca.pem").display().to_string()
        )
    };
    let a_cfg = dir.join("a.toml");
    let b_cfg = dir.join("b.toml");
    std::fs::write(&a_cfg, cfg(&dir.join("a"), &ac, &ak, &b_ca))?;
    std::fs::write(&b_cfg, cfg(&dir.join("b"), &bc, &bk, &a_ca))?;
    let agent = |args: &[&str]| -> Command {
        let mut c = Command::new(agent_bin().expect("agent binary"));
        c.arg("--config").arg(&a_cfg).arg("--json").args(args);
        c
    };
    let mut serve = Command::new(agent_bin()?);
    serve
        .arg("--config")
        .arg(&b_cfg)
        .arg("serve")
        .stdout(Stdio::piped());
    // FERRY_BENCH_SERVE_LOG=FILE keeps the receiver's log (its level from FERRY_LOG).
    match std::env::var_os("FERRY_BENCH_SERVE_LOG") {
        Some(p) => serve.stderr(std::fs::File::create(p)?),
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

    let out = agent(&["volume", "create", "vm", "--size", &size.to_string()]).output()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("volume create")?;
    let vol = PathBuf::from(v["path"].as_str().unwrap_or_default());
    eprintln!("generating a {} VM-like image", format_size(size));
    generate(&vol, size, seed, 4096)?;

    let mut phase = |name: &'static str, snap: &str| -> Result<u64> {
        let c_server = proc_cpu(server.0.id());
        let (w1, c1, _) = timed(&mut agent(&["snapshot", "create", "vm", snap]))?;
        let (w2, c2, out) = timed(&mut agent(&["replicate", "vm", snap, "--to", &addr]))?;
        let r: serde_json::Value = serde_json::from_str(&out)?;
        let bytes = r["sent_bytes"].as_u64().unwrap_or(0);
        let cpu = c1 + c2 + proc_cpu(server.0.id()) - c_server;
        eprintln!(
            "ferry {name}: snapshot {w1:.2} s + replicate {w2:.2} s, {} sent",
            format_size(bytes)
        );
        rows.push(Row {
            tool: "ferry",
            phase: name,
            wall_s: w1 + w2,
            cpu_s: cpu,
            bytes,
        });
        Ok(bytes)
    };
    phase("full", "s1")?;
    let v1 = dir.join("a/volumes/vm/snapshots/s1/data.img");
    // 1% of the image in random 4 KiB pages.
    let pages = size / 4096;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x1234);
    let f = std::fs::OpenOptions::new().write(true).open(&vol)?;
    let mut distinct = BTreeSet::new();
    let mut page = [0u8; 4096];
    for _ in 0..pages / 100 {
        let p = rng.gen_range(0..pages);
        rng.fill(&mut page[..]);
        f.write_all_at(&page, p * 4096)?;
        distinct.insert(p);
    }
    f.sync_all()?;
    phase("incremental", "s2")?;
    let v2 = dir.join("a/volumes/vm/snapshots/s2/data.img");
    drop(server);
    Ok((v1, v2, distinct.len() as u64 * 4096))
}

fn rsync_rows(dir: &Path, v1: &Path, v2: &Path, rows: &mut Vec<Row>) -> Result<()> {
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
    let src = dir.join("src/vm.img");
    std::fs::create_dir_all(dir.join("src"))?;
    let sent = |stats: &str| -> u64 {
        stats
            .lines()
            .find(|l| l.starts_with("Total bytes sent:"))
            .and_then(|l| l.split(':').nth(1))
            .map(|n| n.trim().replace(',', "").parse().unwrap_or(0))
            .unwrap_or(0)
    };
    for (tool, target, extra) in [
        ("rsync", "vm.img", None),
        ("rsync-4k", "vm4k.img", Some("--block-size=4096")),
    ] {
        let url = format!("rsync://127.0.0.1:{port}/dst/{target}");
        for (phase, image) in [("full", v1), ("incremental", v2)] {
            stage(image, &src)?;
            let c_daemon = proc_cpu(daemon.0.id());
            let mut c = Command::new("rsync");
            c.args(["--inplace", "--no-whole-file", "--ignore-times", "--stats"]);
            if let Some(e) = extra {
                c.arg(e);
            }
            c.arg(&src).arg(&url);
            let (wall, cpu, out) = timed(&mut c)?;
            let cpu = cpu + proc_cpu(daemon.0.id()) - c_daemon;
            eprintln!(
                "{tool} {phase}: {wall:.2} s, {} sent",
                format_size(sent(&out))
            );
            rows.push(Row {
                tool,
                phase,
                wall_s: wall,
                cpu_s: cpu,
                bytes: sent(&out),
            });
        }
    }
    Ok(())
}

fn repo_rows(dir: &Path, v1: &Path, v2: &Path, rows: &mut Vec<Row>) -> Result<()> {
    let src = dir.join("src/vm.img");
    let restic = dir.join("restic");
    let borg = dir.join("borg");
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
    for (phase, image, name) in [("full", v1, "v1"), ("incremental", v2, "v2")] {
        stage(image, &src)?;
        let before = dir_size(&restic);
        let (w, c, _) = run(Command::new("restic")
            .arg("-r")
            .arg(&restic)
            .args(["backup", "--quiet"])
            .arg(&src))?;
        rows.push(Row {
            tool: "restic",
            phase,
            wall_s: w,
            cpu_s: c,
            bytes: dir_size(&restic) - before,
        });
        eprintln!("restic {phase}: {w:.2} s");
        let before = dir_size(&borg);
        let (w, c, _) = run(Command::new("borg")
            .arg("create")
            .arg(format!("{}::{name}", borg.display()))
            .arg(&src))?;
        rows.push(Row {
            tool: "borg",
            phase,
            wall_s: w,
            cpu_s: c,
            bytes: dir_size(&borg) - before,
        });
        eprintln!("borg {phase}: {w:.2} s");
    }
    Ok(())
}

/// Streams `bytes` over 4 unidirectional QUIC streams (ferry's transport and TLS settings) to
/// a server that discards them: the most any QUIC transfer gets on this machine.
fn quic_ceiling(dir: &Path, bytes: u64, rows: &mut Vec<Row>) -> Result<f64> {
    let d = dir.join("pki-ceiling");
    pki::create_ca("ceil", &d, 30)?;
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
    rows.push(Row {
        tool: "quic-ceiling",
        phase: "full",
        wall_s: wall,
        cpu_s: cpu_self() - c0,
        bytes,
    });
    eprintln!("quic ceiling: {} in {wall:.2} s", format_size(bytes));
    Ok(bytes as f64 / wall)
}

pub fn run(dir: &Path, size: u64, out: &Path, seed: u64) -> Result<()> {
    std::fs::create_dir_all(out)?;
    let work = dir.join("bench-replication");
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    std::fs::create_dir_all(&work)?;
    let mut rows = Vec::new();
    let (v1, v2, ideal) = ferry_rows(&work, size, seed, &mut rows)?;
    // FERRY_BENCH_FERRY_ONLY=1: ferry and the QUIC ceiling only (for profiling sessions).
    if std::env::var_os("FERRY_BENCH_FERRY_ONLY").is_none() {
        rsync_rows(&work, &v1, &v2, &mut rows)?;
        repo_rows(&work, &v1, &v2, &mut rows)?;
    }
    let ferry_full_bytes = rows
        .iter()
        .find(|r| r.tool == "ferry" && r.phase == "full")
        .map_or(0, |r| r.bytes);
    let ceiling_rate = quic_ceiling(&work, ferry_full_bytes.max(256 << 20), &mut rows)?;

    let get = |tool: &str, phase: &str| {
        rows.iter()
            .find(|r| r.tool == tool && r.phase == phase)
            .cloned()
    };
    let (ff, fi) = (get("ferry", "full"), get("ferry", "incremental"));
    let (rf, ri) = (get("rsync", "full"), get("rsync", "incremental"));
    use std::fmt::Write as _;
    let mut md = String::new();
    writeln!(md, "# ferry replication benchmark\n")?;
    writeln!(md, "Image: {} VM-like (25% holes, 50% random, 25% runs duplicated at 4 KiB alignment), seed {seed}; incremental = 1% random 4 KiB writes ({} of distinct changed pages). One run, both ends on this machine (loopback), XFS reflink on a loop device.\n", format_size(size), format_size(ideal))?;
    writeln!(
        md,
        "| tool | phase | wall s | CPU s | bytes |\n|---|---|---:|---:|---:|"
    )?;
    for r in &rows {
        writeln!(
            md,
            "| {} | {} | {:.2} | {:.2} | {} |",
            r.tool,
            r.phase,
            r.wall_s,
            r.cpu_s,
            format_size(r.bytes)
        )?;
    }
    writeln!(md, "\n## Against the goals\n")?;
    if let (Some(ff), Some(fi), Some(rf), Some(ri)) = (&ff, &fi, &rf, &ri) {
        writeln!(
            md,
            "- incremental bytes / distinct changed 4 KiB data: **{:.2}x** (goal <= 1.1x)",
            fi.bytes as f64 / ideal as f64
        )?;
        writeln!(
            md,
            "- incremental wall time / rsync's delta: **{:.3}** (goal <= 0.1)",
            fi.wall_s / ri.wall_s
        )?;
        writeln!(
            md,
            "- full replication speed / rsync's full copy: **{:.2}x** (goal >= 2x)",
            rf.wall_s / ff.wall_s
        )?;
        writeln!(md, "- full replication / QUIC ceiling for the bytes it sends: **{:.2}x** (goal >= 0.8x; ceiling {:.0} MB/s)", (ff.bytes as f64 / ceiling_rate) / ff.wall_s, ceiling_rate / 1e6)?;
    }
    std::fs::write(out.join("report.md"), &md)?;
    let json = serde_json::json!({ "ideal_incremental_bytes": ideal, "image_size": size, "seed": seed, "rows": rows });
    std::fs::write(out.join("report.json"), serde_json::to_vec_pretty(&json)?)?;
    print!("{md}");
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
