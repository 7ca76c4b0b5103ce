//! `ferry demo`: ferry's main job on this machine, every step checked. Two sites (each a
//! `ferry-controller dev`: a controller on its embedded store and a real `ferry-agent`, as
//! child processes), paired; at site-a a VM with two disks, an iSCSI LUN and an NFS file
//! holding VM-like data, protected by a backup plan to site-b; its full and incremental
//! runs; site-a stopped outright (SIGKILL); at site-b a rebuild of everything from the
//! newest mirror group, each rebuilt volume compared byte for byte with site-a's group, and
//! a recovery drill; then a summary. Everything goes through the HTTP API and the agents'
//! command line, as an operator would; the demo writes the data itself (no other tool).
//!
//! Run by `cargo run`, it first builds `ferry-agent` and `ferry-controller` beside itself.
//! It removes what it made on success, on failure and on Ctrl-C; `--keep` leaves both sites
//! running instead and says how to reach them.

use std::collections::HashSet;
use std::io::{BufRead, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use ferry_controller::exit::Coded;
use serde_json::{json, Value};

use crate::client::{Api, Given};
use crate::output::{duration, size};

#[derive(clap::Args)]
pub struct Args {
    /// Leave both sites running at the end (site-a started again) and print their API
    /// addresses and tokens.
    #[arg(long)]
    pub keep: bool,
    /// Where the sites live (kept at the end); default a new temporary directory, removed
    /// at the end unless --keep.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The VM's first disk (its second is 3/4 of it, the LUN 1/2, the NFS file 1/4); about
    /// 60% of each holds data.
    #[arg(long, default_value = "256M", value_parser = size_arg)]
    pub size: u64,
}

fn size_arg(s: &str) -> Result<u64, String> {
    let n = ferry_wire::units::parse_size(s).map_err(|e| e.to_string())?;
    if !(4 << 20..=64 << 30).contains(&n) {
        return Err("between 4M and 64G".into());
    }
    Ok(n)
}

const PLAN: &str = "demo";
const FOREIGN: &str = "site-a.demo";
const NODE: &str = "node1";
/// The check a drill runs per object: the VM's disk must boot (its boot sector is there),
/// every other object's volume must hold data.
const CHECK: &str = "case \"$FERRY_OBJECT\" in web) head -c 512 \"$FERRY_VOLUME\" | grep -q FERRY-DEMO-BOOT ;; *) test -s \"$FERRY_VOLUME\" ;; esac";

/// One site: its `ferry-controller dev` process and how to reach it.
struct SiteProc {
    name: &'static str,
    dir: PathBuf,
    token: String,
    child: Option<Child>,
    api: Api,
    addr: String,
    agent_config: PathBuf,
    agent_pid: u32,
}

/// What the demo started and made; dropped, it stops and removes them (unless kept).
struct Demo {
    bins: (PathBuf, PathBuf),
    work: PathBuf,
    /// The work directory is a temporary one of ours (removed at the end).
    owned: bool,
    keep: bool,
    sites: Vec<SiteProc>,
    /// Set once the demo succeeded with --keep: nothing is stopped or removed.
    leave: bool,
}

impl Drop for Demo {
    fn drop(&mut self) {
        if self.leave {
            return;
        }
        for s in &mut self.sites {
            stop(s, libc::SIGTERM);
        }
        if self.owned {
            let _ = std::fs::remove_dir_all(&self.work);
        }
    }
}

/// Signals a site's process and waits (5 s, then SIGKILL) until it is gone.
fn stop(s: &mut SiteProc, sig: libc::c_int) {
    let Some(mut child) = s.child.take() else {
        return;
    };
    ferry_controller::process::stop(&mut child, sig, Duration::from_secs(5));
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

/// Prints a line; a closed output (`ferry demo | head`) is not an error: the demo goes on
/// and still cleans up.
fn say(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout(), "{line}");
}

fn step(what: &str) {
    say(&format!("==> {what}"));
}

/// `ferry-controller` and `ferry-agent` beside this program; run by `cargo run`, built
/// first in the same profile.
fn binaries() -> anyhow::Result<(PathBuf, PathBuf)> {
    let exe = std::env::current_exe().context("find this program")?;
    let dir = exe
        .parent()
        .context("this program has no directory")?
        .to_path_buf();
    if let (Some(cargo), Some(manifest)) = (
        std::env::var_os("CARGO"),
        std::env::var_os("CARGO_MANIFEST_DIR"),
    ) {
        let release = dir.file_name().is_some_and(|n| n == "release");
        step(&format!(
            "building ferry-agent and ferry-controller ({})",
            if release { "release" } else { "dev" }
        ));
        let mut c = Command::new(cargo);
        // Without what `cargo run` told this program of its own package: build scripts
        // that watch such variables would rebuild everything, now and again after.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            let ours = [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_BIN_",
                "CARGO_CRATE_",
            ]
            .iter()
            .any(|p| k.starts_with(p));
            if ours || k == "CARGO_PRIMARY_PACKAGE" || k == "OUT_DIR" {
                c.env_remove(&k);
            }
        }
        c.arg("build")
            .arg("--quiet")
            .arg("--manifest-path")
            .arg(Path::new(&manifest).join("Cargo.toml"))
            .args(["-p", "ferry-agent", "--bin", "ferry-agent"])
            .args(["-p", "ferry-controller", "--bin", "ferry-controller"]);
        if release {
            c.arg("--release");
        }
        let st = c.status().context("run cargo build")?;
        if !st.success() {
            bail!("cargo build of ferry-agent and ferry-controller failed ({st})");
        }
    }
    let (controller, agent) = (dir.join("ferry-controller"), dir.join("ferry-agent"));
    for b in [&controller, &agent] {
        if !b.exists() {
            bail!(
                "ferry demo runs {} from beside ferry: build it (cargo build --release), or run \
                 the demo with cargo run --release --bin ferry -- demo",
                b.display()
            );
        }
    }
    Ok((controller, agent))
}

fn new_token() -> String {
    let mut raw = [0u8; 24];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut raw);
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

impl Demo {
    /// Starts site `name` in `work/name` (again, when it ran before: same state and token).
    async fn start_site(
        &mut self,
        name: &'static str,
        token: Option<String>,
    ) -> anyhow::Result<()> {
        let dir = self.work.join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let token = token.unwrap_or_else(new_token);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.work.join(format!("{name}.log")))
            .context("open the site's log")?;
        let (controller, agent) = &self.bins;
        let mut cmd = Command::new(controller);
        cmd.args(["--json", "dev", "--site", name, "--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(&dir)
            .arg("--agent-bin")
            .arg(agent)
            .env("FERRY_DEV_TOKEN", &token)
            .env("FERRY_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        // Its own process group: a Ctrl-C at the terminal reaches the demo, which stops
        // the sites in order. Unless they are to be kept, they die with the demo.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        if !self.keep {
            // SAFETY: prctl in the forked child before exec, async-signal-safe.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("start {}", controller.display()))?;
        let stdout = child.stdout.take().context("the site's output")?;
        let mut site = SiteProc {
            name,
            dir,
            token: token.clone(),
            child: Some(child),
            api: Api::new(Given {
                addr: Some("http://127.0.0.1:1".into()),
                token: Some(token.clone()),
                ca: None,
            })?,
            addr: String::new(),
            agent_config: PathBuf::new(),
            agent_pid: 0,
        };
        let line = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::task::spawn_blocking(move || {
                let mut line = String::new();
                std::io::BufReader::new(stdout)
                    .read_line(&mut line)
                    .map(|_| line)
            }),
        )
        .await;
        let line = match line {
            Ok(Ok(Ok(l))) if !l.trim().is_empty() => l,
            _ => {
                stop(&mut site, libc::SIGKILL);
                bail!(
                    "site {name} did not start; its log: {}",
                    tail(&self.work.join(format!("{name}.log")))
                );
            }
        };
        let v: Value = serde_json::from_str(&line).context("the site's announcement")?;
        site.addr = v["api"].as_str().context("the site's API")?.to_string();
        site.agent_config = PathBuf::from(v["agent"]["config"].as_str().context("agent config")?);
        site.agent_pid = v["agent"]["pid"].as_u64().unwrap_or(0) as u32;
        site.api = Api::new(Given {
            addr: Some(site.addr.clone()),
            token: Some(token),
            ca: None,
        })?;
        // Up when its agent is.
        let t0 = Instant::now();
        loop {
            let agents = site.api.get("/v1/agents").await.unwrap_or(Value::Null);
            if agents
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x["status"] == "up"))
            {
                break;
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("site {name}'s agent did not come up");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.sites.retain(|s| s.name != name);
        self.sites.push(site);
        Ok(())
    }

    fn site(&self, name: &str) -> anyhow::Result<&SiteProc> {
        self.sites
            .iter()
            .find(|s| s.name == name)
            .with_context(|| format!("site {name} is not running"))
    }

    /// `ferry-agent --config <site's agent> --json ARGS`.
    fn agent(&self, site: &str, args: &[&str]) -> anyhow::Result<Value> {
        let s = self.sites.iter().find(|s| s.name == site).context("site")?;
        let out = Command::new(&self.bins.1)
            .arg("--config")
            .arg(&s.agent_config)
            .arg("--json")
            .args(args)
            .output()
            .context("run ferry-agent")?;
        if !out.status.success() {
            bail!(
                "ferry-agent {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        serde_json::from_slice(&out.stdout).context("ferry-agent's answer")
    }
}

/// The last lines of a log.
fn tail(p: &Path) -> String {
    let text = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

/// xorshift64*: the demo's data is the same at every run.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let x = self.next().to_le_bytes();
            c.copy_from_slice(&x[..c.len()]);
        }
    }
}

const CHUNK: usize = 64 << 10;

/// Writes VM-like data into the image at `path` (`size` bytes): of every 64 KiB, about a
/// third left a hole, a quarter text (logs, compressible), a quarter random (compressed
/// files), the rest copies of a few blocks every disk shares (the same libraries): dedup.
/// A boot disk gets a boot sector. Returns the bytes written.
fn fill(path: &Path, size: u64, seed: u64, shared: &[Vec<u8>], boot: bool) -> anyhow::Result<u64> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    let mut g = Gen(seed | 1);
    let mut buf = vec![0u8; CHUNK];
    let mut written = 0;
    let chunks = size / CHUNK as u64;
    for i in 0..chunks {
        let roll = g.next() % 100;
        let data: &[u8] = if boot && i == 0 {
            g.fill(&mut buf);
            buf[..32].copy_from_slice(b"FERRY-DEMO-BOOT sector, mbr 55aa");
            &buf
        } else if roll < 35 {
            continue;
        } else if roll < 60 {
            let mut t = String::with_capacity(CHUNK);
            while t.len() < CHUNK {
                let n = g.next();
                t.push_str(&format!(
                    "2026-12-02T{:02}:{:02}:{:02}Z web[{}]: GET /api/items/{} 200 {} bytes in {} ms\n",
                    n % 24,
                    (n >> 8) % 60,
                    (n >> 16) % 60,
                    1000 + (n >> 24) % 9000,
                    (n >> 32) % 100_000,
                    (n >> 40) % 65_536,
                    (n >> 48) % 500
                ));
            }
            buf.copy_from_slice(&t.as_bytes()[..CHUNK]);
            &buf
        } else if roll < 85 {
            g.fill(&mut buf);
            &buf
        } else {
            &shared[(g.next() % shared.len() as u64) as usize]
        };
        f.write_all_at(data, i * CHUNK as u64)
            .with_context(|| format!("write {}", path.display()))?;
        written += CHUNK as u64;
    }
    f.sync_all()
        .with_context(|| format!("sync {}", path.display()))?;
    Ok(written)
}

/// Rewrites 1% of the data of the image at `path` (`data` bytes written in `size`) as
/// random 4 KiB pages; returns the bytes of distinct pages changed.
fn churn(path: &Path, size: u64, data: u64, seed: u64) -> anyhow::Result<u64> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    let mut g = Gen(seed | 1);
    let pages = size / 4096;
    let mut seen = HashSet::new();
    let mut page = vec![0u8; 4096];
    for _ in 0..(data / 100 / 4096).max(1) {
        let p = g.next() % pages;
        g.fill(&mut page);
        f.write_all_at(&page, p * 4096)?;
        seen.insert(p);
    }
    f.sync_all()?;
    Ok(seen.len() as u64 * 4096)
}

/// Whether two files hold the same bytes; returns their length.
fn same_bytes(a: &Path, b: &Path) -> anyhow::Result<u64> {
    let (mut fa, mut fb) = (
        std::fs::File::open(a).with_context(|| format!("open {}", a.display()))?,
        std::fs::File::open(b).with_context(|| format!("open {}", b.display()))?,
    );
    let (la, lb) = (fa.metadata()?.len(), fb.metadata()?.len());
    if la != lb {
        bail!("{} is {la} bytes, {} {lb}", a.display(), b.display());
    }
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut at = 0u64;
    loop {
        let n = fa.read(&mut x)?;
        if n == 0 {
            return Ok(at);
        }
        fb.read_exact(&mut y[..n])?;
        if x[..n] != y[..n] {
            let off = x[..n]
                .iter()
                .zip(&y[..n])
                .position(|(p, q)| p != q)
                .unwrap_or(0);
            bail!(
                "{} and {} differ at byte {}",
                a.display(),
                b.display(),
                at + off as u64
            );
        }
        at += n as u64;
    }
}

/// What a run or recovery at `path` is once over (`step`: its state's field).
async fn until_over(api: &Api, path: &str, field: &[&str]) -> anyhow::Result<Value> {
    let t0 = Instant::now();
    loop {
        let v = api.get(path).await?;
        let mut state = &v;
        for f in field {
            state = &state[*f];
        }
        if ["done", "failed", "partially_done"].contains(&state.as_str().unwrap_or("")) {
            return Ok(v);
        }
        if t0.elapsed() > Duration::from_secs(1800) {
            bail!("{path} did not end within 30 minutes");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Seconds between two RFC 3339 times of a record.
fn secs_between(a: &Value, b: &Value) -> f64 {
    let t = |v: &Value| v.as_str().and_then(|s| s.parse::<jiff::Timestamp>().ok());
    match (t(a), t(b)) {
        (Some(a), Some(b)) => (b.as_millisecond() - a.as_millisecond()) as f64 / 1e3,
        _ => 0.0,
    }
}

/// Bytes a run sent to its target.
fn sent(run: &Value) -> u64 {
    run["run"]["targets"]["site-b"]["transfers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| t["sent_bytes"].as_u64().unwrap_or(0))
        .sum()
}

async fn run_plan(api: &Api) -> anyhow::Result<Value> {
    let r = api
        .post(&format!("/v1/plans/{PLAN}/run"), &json!({}))
        .await?;
    let id = r["run"]["id"].as_str().context("run id")?.to_string();
    let run = until_over(
        api,
        &format!("/v1/plans/{PLAN}/runs/{id}"),
        &["run", "step"],
    )
    .await?;
    if run["run"]["step"] != "done" {
        bail!(
            "run {id} ended {}: {}",
            run["run"]["step"],
            run["run"]["error"].as_str().unwrap_or("?")
        );
    }
    Ok(run)
}

/// The volumes: (name, size, the seed of its data, a boot disk).
fn volumes(size: u64) -> [(&'static str, u64, u64, bool); 4] {
    let mib = |x: u64| (x >> 20) << 20;
    [
        ("web-disk0", mib(size), 11, true),
        ("web-disk1", mib(size * 3 / 4), 12, false),
        ("db-lun0", mib(size / 2), 13, false),
        ("share0", mib(size / 4), 14, false),
    ]
}

pub async fn run(args: &Args) -> anyhow::Result<()> {
    let bins = binaries()?;
    let started = Instant::now();
    let (work, owned) = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
            if std::fs::read_dir(d)?.next().is_some() {
                bail!(
                    "--dir {}: not empty; give a new or empty directory",
                    d.display()
                );
            }
            (d.canonicalize()?, false)
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("ferry-demo-")
                .tempdir()
                .context("make a temporary directory")?;
            (t.keep(), true)
        }
    };
    let mut demo = Demo {
        bins,
        work,
        owned,
        keep: args.keep,
        sites: Vec::new(),
        leave: false,
    };
    let work_shown = demo.work.display().to_string();
    step(&format!("two sites on this machine, in {work_shown}"));
    demo.start_site("site-a", None).await?;
    demo.start_site("site-b", None).await?;
    let backend = demo.agent("site-a", &["info"])?["backend"]
        .as_str()
        .unwrap_or("?")
        .to_string();
    say(&format!(
        "    site-a at {}, site-b at {} (volume backend: {backend})",
        demo.site("site-a")?.addr,
        demo.site("site-b")?.addr
    ));

    step("pairing them: each trusts the other's CA");
    let (a, b) = (demo.site("site-a")?, demo.site("site-b")?);
    let bundle_a = a.api.get("/v1/site").await?;
    let bundle_b = b.api.get("/v1/site").await?;
    b.api.post("/v1/sites", &bundle_a).await?;
    a.api.post("/v1/sites", &bundle_b).await?;
    // Each controller puts the pairing in force and tells its agent within 2 s.
    tokio::time::sleep(Duration::from_secs(3)).await;

    step("at site-a: a VM with two disks, an iSCSI LUN and an NFS file, with VM-like data");
    let mut shared = Vec::new();
    let mut g = Gen(99);
    for _ in 0..16 {
        let mut c = vec![0u8; CHUNK];
        g.fill(&mut c);
        shared.push(c);
    }
    let mut data = 0;
    let mut provisioned = 0;
    let mut written = Vec::new();
    for (name, vsize, seed, boot) in volumes(args.size) {
        a.api
            .post(
                &format!("/v1/agents/{NODE}/volumes"),
                &json!({"name": name, "size": vsize}),
            )
            .await?;
        let path = PathBuf::from(
            demo.agent("site-a", &["volume", "path", name])?["path"]
                .as_str()
                .context("volume path")?,
        );
        let w = fill(&path, vsize, seed, &shared, boot)?;
        data += w;
        provisioned += vsize;
        written.push((name, path, vsize, w));
    }
    let objects = [
        json!({"name": "web", "kind": {"type": "vm", "vcpus": 2, "memory_mib": 4096,
            "disks": [{"volume": {"node": NODE, "volume": "web-disk0"}},
                      {"volume": {"node": NODE, "volume": "web-disk1"}}],
            "nics": [{"switch": "lan", "mac": "52:54:00:de:00:01"}]}}),
        json!({"name": "db", "kind": {"type": "iscsi_lun",
            "target_iqn": "iqn.2026-12.demo.ferry:db", "lun": 0,
            "volume": {"node": NODE, "volume": "db-lun0"}}}),
        json!({"name": "share", "kind": {"type": "nfs_file", "export": "/exports/demo",
            "path": "files/share.img", "volume": {"node": NODE, "volume": "share0"}}}),
    ];
    // An object names volumes the controller knows: the agent reports new ones within 2 s.
    for o in &objects {
        let t0 = Instant::now();
        loop {
            match a.api.post("/v1/objects", o).await {
                Ok(_) => break,
                Err(_) if t0.elapsed() < Duration::from_secs(10) => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Err(e) => return Err(e),
            }
        }
    }
    let plan = json!({"name": PLAN, "objects": ["web", "db", "share"], "retention": 3,
        "schedule": {"every": "daily", "start": "2099-01-01T00:00"},
        "targets": [{"site": "site-b", "retention": 3, "switches": {"lan": "dr-lan"}}]});
    a.api.post("/v1/plans", &plan).await?;
    say(&format!(
        "    {} volumes, {} provisioned, {} written; backup plan {PLAN} to site-b",
        written.len(),
        size(provisioned),
        size(data)
    ));

    step("full run: snapshot group at site-a, replicated to site-b over QUIC");
    let t = Instant::now();
    let full = run_plan(&a.api).await?;
    let full_secs = t.elapsed().as_secs_f64();
    let full_sent = sent(&full);

    step("1% of the data rewritten in random 4 KiB pages; incremental run");
    let mut changed = 0;
    for (i, (_, path, vsize, w)) in written.iter().enumerate() {
        changed += churn(path, *vsize, *w, 1000 + i as u64)?;
    }
    let t = Instant::now();
    let inc = run_plan(&a.api).await?;
    let inc_secs = t.elapsed().as_secs_f64();
    let inc_sent = sent(&inc);
    let group = inc["run"]["group"].as_str().context("group")?.to_string();

    step("site-a stopped outright: its controller and agent SIGKILLed");
    let agent_pid = demo.site("site-a")?.agent_pid;
    if let Some(s) = demo.sites.iter_mut().find(|s| s.name == "site-a") {
        stop(s, libc::SIGKILL);
    }
    let t0 = Instant::now();
    while agent_pid != 0 && alive(agent_pid) && t0.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if agent_pid != 0 && alive(agent_pid) {
        bail!("site-a's agent (pid {agent_pid}) outlived its site");
    }

    step(&format!("at site-b: rebuild from mirror group {group}"));
    let b = demo.site("site-b")?;
    let r = b
        .api
        .post(
            &format!("/v1/plans/{FOREIGN}/rebuilds"),
            &json!({"group": group}),
        )
        .await?;
    let id = r["id"].as_str().context("rebuild id")?.to_string();
    let rebuilt = until_over(
        &b.api,
        &format!("/v1/plans/{FOREIGN}/rebuilds/{id}"),
        &["phase"],
    )
    .await?;
    if rebuilt["phase"] != "done" {
        bail!(
            "the rebuild failed: {}",
            rebuilt["error"].as_str().unwrap_or("?")
        );
    }
    let rebuild_secs = secs_between(&rebuilt["created"], &rebuilt["finished"]);
    let made: Vec<String> = rebuilt["objects"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| {
            format!(
                "{} ({})",
                o["object"]["name"].as_str().unwrap_or("?"),
                o["object"]["kind"]["type"].as_str().unwrap_or("?")
            )
        })
        .collect();

    step("every rebuilt volume compared byte for byte with site-a's group");
    let mut compared = 0;
    let mut checked = 0;
    for v in rebuilt["volumes"].as_array().into_iter().flatten() {
        let new = v["new_volume"].as_str().context("new volume")?;
        let at_b = demo.agent("site-b", &["volume", "path", new])?;
        let at_a = demo.agent("site-a", &["snapshot", "path", new, &group])?;
        let (pb, pa) = (
            PathBuf::from(at_b["path"].as_str().context("path")?),
            PathBuf::from(at_a["path"].as_str().context("path")?),
        );
        compared += same_bytes(&pb, &pa)
            .with_context(|| format!("rebuilt volume {new} against site-a's {new}@{group}"))?;
        checked += 1;
    }
    if checked != written.len() {
        bail!("{checked} volumes rebuilt, {} protected", written.len());
    }

    step("a recovery drill at site-b: scratch rebuild, re-read against the manifests, checks");
    let r = b
        .api
        .post(
            &format!("/v1/plans/{FOREIGN}/drills"),
            &json!({"check": CHECK, "timeout_secs": 120}),
        )
        .await?;
    let id = r["id"].as_str().context("drill id")?.to_string();
    let drill = until_over(
        &b.api,
        &format!("/v1/plans/{FOREIGN}/drills/{id}"),
        &["phase"],
    )
    .await?;
    if drill["phase"] != "done" {
        bail!(
            "the drill failed: {}",
            drill["error"].as_str().unwrap_or("?")
        );
    }
    let timing = |k: &str| {
        drill["timings"][k]
            .as_f64()
            .map_or("-".into(), |ms| duration(ms / 1e3))
    };

    say(&format!(
        "\nferry demo: every check passed in {}\n",
        duration(started.elapsed().as_secs_f64())
    ));
    let dedup = data.saturating_sub(full_sent);
    let rows = [
        (
            "data",
            format!(
                "VM web (2 disks), iSCSI LUN db, NFS file share: {} written in {} provisioned",
                size(data),
                size(provisioned)
            ),
        ),
        (
            "full run",
            format!(
                "sent {} in {} ({:.2}x the data: holes never travel, {} deduplicated)",
                size(full_sent),
                duration(full_secs),
                full_sent as f64 / data.max(1) as f64,
                size(dedup)
            ),
        ),
        (
            "incremental",
            format!(
                "{} of 4 KiB pages changed, sent {} in {} ({:.2}x the change)",
                size(changed),
                size(inc_sent),
                duration(inc_secs),
                inc_sent as f64 / changed.max(1) as f64
            ),
        ),
        (
            "site-a",
            "stopped with SIGKILL before the rebuild".to_string(),
        ),
        (
            "rebuild",
            format!(
                "at site-b in {} ({backend} backend): {}",
                duration(rebuild_secs),
                made.join(", ")
            ),
        ),
        (
            "verified",
            format!(
                "{checked} of {checked} rebuilt volumes equal site-a's group byte for byte ({} compared)",
                size(compared)
            ),
        ),
        (
            "drill",
            format!(
                "passed: clone {}, verify {}, check {}, cleanup {}",
                timing("clone"),
                timing("verify"),
                timing("check"),
                timing("cleanup")
            ),
        ),
    ];
    for (k, v) in rows {
        say(&format!("  {k:<12} {v}"));
    }
    if args.keep {
        let token = demo.site("site-a")?.token.clone();
        demo.start_site("site-a", Some(token)).await?;
        demo.sites.sort_by_key(|s| s.name);
        let pids: Vec<String> = demo
            .sites
            .iter()
            .filter_map(|s| s.child.as_ref().map(|c| c.id().to_string()))
            .collect();
        say(&format!(
            "\nboth sites keep running (stop them with: kill {}):",
            pids.join(" ")
        ));
        for s in &demo.sites {
            say(&format!(
                "  {}: export FERRY_ADDR={} FERRY_TOKEN={}   # data in {}",
                s.name,
                s.addr,
                s.token,
                s.dir.display()
            ));
        }
        say(&format!(
            "  then: ferry status; ferry plans list; ferry plans groups {FOREIGN}"
        ));
        demo.leave = true;
    } else if !owned {
        say(&format!("\nthe sites' data stays in {work_shown}"));
    }
    Ok(())
}

/// Runs the demo; Ctrl-C (or SIGTERM) stops it, and whatever it started and made goes.
pub async fn main(args: &Args) -> anyhow::Result<()> {
    // A closed output must not end the demo before it cleans up.
    // SAFETY: setting a signal's disposition to ignore.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("watch for SIGTERM")?;
    tokio::select! {
        r = run(args) => r,
        _ = tokio::signal::ctrl_c() => interrupted(),
        _ = term.recv() => interrupted(),
    }
}

fn interrupted() -> anyhow::Result<()> {
    eprintln!("\ninterrupted: stopping the sites and removing what the demo made");
    Err(Coded::new("cancelled", "the demo was interrupted").into())
}
