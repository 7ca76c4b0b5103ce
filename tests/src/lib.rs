//! Harness for ferry's whole-system tests: runs the real `ferry-agent` binary on real
//! filesystems, kills it with SIGKILL, and checks results against independent computations
//! (BLAKE3 of each block read straight from the files).
//!
//! Filesystems: `Fs::Local` is a temporary directory on the machine's ordinary filesystem
//! (ext4 here: the copy backend); `Fs::Xfs` and `Fs::Btrfs` are directories on the XFS
//! (reflink=1) and btrfs loop mounts that `scripts/test` sets up and names in
//! `FERRY_TEST_XFS` and `FERRY_TEST_BTRFS` (the reflink backend). Tests that need XFS or root say so:
//! without them they are skipped with a message, except under `CI=true`, where they fail.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use rand::{Rng, SeedableRng};
use serde_json::Value;

pub use rand::rngs::StdRng;

/// Directory of the workspace's built binaries (`target/debug` next to the test executable).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/<test> -> target/debug; target/release/<binary> -> target/release
    let dir = exe.parent().expect("executable directory");
    match dir.file_name() {
        Some(n) if n == "deps" => dir.parent().expect("target directory").to_path_buf(),
        _ => dir.to_path_buf(),
    }
}

/// Path of a workspace binary; fails with a clear message if it was not built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace binaries first (scripts/test does: cargo build --workspace --bins)",
        p.display()
    );
    p
}

/// Whether tests that cannot run here must fail rather than skip.
pub fn strict() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Skips (returns false) or, under CI, fails when a requirement is missing.
pub fn require(ok: bool, what: &str) -> bool {
    if ok {
        return true;
    }
    assert!(!strict(), "required under CI but missing: {what}");
    eprintln!("SKIPPED: {what}");
    false
}

/// Whether we run as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Which filesystem a test's data directory lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fs {
    /// The ordinary filesystem (copy backend).
    Local,
    /// The XFS reflink mount from `FERRY_TEST_XFS` (reflink backend).
    Xfs,
    /// The btrfs mount from `FERRY_TEST_BTRFS` (reflink backend).
    Btrfs,
}

impl Fs {
    /// Whether this filesystem uses the reflink backend.
    pub fn reflink(self) -> bool {
        matches!(self, Fs::Xfs | Fs::Btrfs)
    }
}

/// A scratch directory for one test: its agent data dir and room for other files.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub fs: Fs,
}

impl Env {
    /// A new environment on `fs`, or `None` (skipped) when that filesystem is unavailable.
    pub fn new(fs: Fs) -> Option<Env> {
        let parent = match fs {
            Fs::Local => std::env::temp_dir(),
            Fs::Xfs | Fs::Btrfs => {
                let var = if fs == Fs::Xfs {
                    "FERRY_TEST_XFS"
                } else {
                    "FERRY_TEST_BTRFS"
                };
                let v = std::env::var(var).ok().filter(|v| !v.is_empty());
                let what =
                    format!("a {fs:?} reflink mount in {var} (scripts/test sets it up as root)");
                if !require(v.is_some(), &what) {
                    return None;
                }
                PathBuf::from(v.expect("checked"))
            }
        };
        let dir = tempfile::Builder::new()
            .prefix("ferry-test-")
            .tempdir_in(parent)
            .expect("temp dir");
        Some(Env { dir, fs })
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("agent")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A `ferry-agent` command on this environment's data dir.
    pub fn agent(&self) -> Command {
        let mut c = Command::new(bin("ferry-agent"));
        c.arg("--data-dir").arg(self.data_dir());
        c.env_remove("FERRY_AGENT_CONFIG");
        c
    }

    fn json(&self, args: &[&str]) -> Output {
        self.agent()
            .args(args)
            .arg("--json")
            .output()
            .expect("run ferry-agent")
    }

    /// Runs `ferry-agent ARGS --json`, expecting success; returns the parsed output.
    pub fn ok(&self, args: &[&str]) -> Value {
        let out = self.json(args);
        assert!(
            out.status.success(),
            "ferry-agent {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "ferry-agent {args:?}: bad JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Runs `ferry-agent ARGS --json`, expecting failure; returns (kind, message).
    pub fn fails(&self, args: &[&str]) -> (String, String) {
        let out = self.json(args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "ferry-agent {args:?} should fail with exit 1: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("JSON error");
        (
            v["error"]["kind"].as_str().unwrap_or_default().to_string(),
            v["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    }

    /// Runs a raw command and returns its output.
    pub fn raw(&self, args: &[&str]) -> Output {
        self.agent().args(args).output().expect("run ferry-agent")
    }

    /// Starts `ferry-agent ARGS` without waiting.
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.agent()
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ferry-agent")
    }

    /// The image path of a volume.
    pub fn volume_path(&self, vol: &str) -> PathBuf {
        PathBuf::from(
            self.ok(&["volume", "path", vol])["path"]
                .as_str()
                .expect("path"),
        )
    }

    /// The directory of a committed snapshot (layout documented in agent/src/store.rs).
    pub fn snapshot_dir(&self, vol: &str, snap: &str) -> PathBuf {
        self.data_dir()
            .join("volumes")
            .join(vol)
            .join("snapshots")
            .join(snap)
    }

    /// Names of the committed snapshots of a volume, oldest first.
    pub fn snapshots(&self, vol: &str) -> Vec<String> {
        self.ok(&["snapshot", "list", vol])
            .as_array()
            .expect("array")
            .iter()
            .map(|s| s["name"].as_str().expect("name").to_string())
            .collect()
    }

    /// Entries under the data dir whose names mark unfinished work (`.tmp-`, `.del-`), and
    /// intent files, which must not survive the next command.
    pub fn leftovers(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        walk(&self.data_dir(), &mut |p| {
            let n = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if n.starts_with(".tmp-")
                || n.starts_with(".del-")
                || n == "rollback.json"
                || n.starts_with("group-")
            {
                out.push(p.to_path_buf());
            }
        });
        out
    }
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        f(&p);
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&p, f);
        }
    }
}

/// A seeded RNG; the seed is printed so a failure can be replayed with FERRY_TEST_SEED.
pub fn rng(test: &str) -> StdRng {
    let seed = std::env::var("FERRY_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    eprintln!("{test}: FERRY_TEST_SEED={seed}");
    StdRng::seed_from_u64(seed)
}

/// Fills `[off, off + len)` of `path` with random bytes.
pub fn write_random(path: &Path, off: u64, len: usize, rng: &mut StdRng) {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open for write");
    let mut buf = vec![0u8; len.min(1 << 20)];
    let mut at = 0usize;
    while at < len {
        let n = (len - at).min(buf.len());
        rng.fill(&mut buf[..n]);
        f.write_all_at(&buf[..n], off + at as u64).expect("write");
        at += n;
    }
    f.sync_all().expect("fsync");
}

/// Writes random 4 KiB pages at `count` distinct random page indexes below `size`; returns the
/// sorted page indexes.
pub fn random_page_writes(path: &Path, size: u64, count: usize, rng: &mut StdRng) -> Vec<u64> {
    let pages = size / 4096;
    let mut idx = std::collections::BTreeSet::new();
    while idx.len() < count {
        idx.insert(rng.gen_range(0..pages));
    }
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open for write");
    let mut buf = [0u8; 4096];
    for &p in &idx {
        rng.fill(&mut buf[..]);
        f.write_all_at(&buf, p * 4096).expect("write");
    }
    f.sync_all().expect("fsync");
    idx.into_iter().collect()
}

/// BLAKE3 of every `block_size` block of `path`, hex, computed independently of ferry.
pub fn block_hashes(path: &Path, block_size: usize) -> Vec<String> {
    let f = File::open(path).expect("open");
    let size = f.metadata().expect("stat").len();
    let mut out = Vec::new();
    let mut buf = vec![0u8; block_size];
    let mut off = 0u64;
    while off < size {
        let n = (size - off).min(block_size as u64) as usize;
        f.read_exact_at(&mut buf[..n], off).expect("read");
        out.push(blake3::hash(&buf[..n]).to_hex().to_string());
        off += n as u64;
    }
    out
}

/// BLAKE3 of a whole file, hex.
pub fn file_hash(path: &Path) -> String {
    let mut h = blake3::Hasher::new();
    let f = File::open(path).expect("open");
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    loop {
        let n = f.read_at(&mut buf, off).expect("read");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        off += n as u64;
    }
    h.finalize().to_hex().to_string()
}

/// The `hashes` array of `snapshot hashes --json`.
pub fn manifest_hashes(env: &Env, vol: &str, snap: &str) -> Vec<String> {
    env.ok(&["snapshot", "hashes", vol, snap])["hashes"]
        .as_array()
        .expect("hashes")
        .iter()
        .map(|h| h.as_str().expect("hex").to_string())
        .collect()
}

/// A mounted tmpfs of a given size, unmounted on drop (needs root).
pub struct Tmpfs {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount(size: &str) -> Option<Tmpfs> {
        if !require(is_root(), "root, to mount a small tmpfs") {
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(st.success(), "mount tmpfs failed");
        Some(Tmpfs {
            path: dir.path().to_path_buf(),
            _dir: dir,
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // A process forked by a parallel test may hold an inherited descriptor for a moment.
        for _ in 0..50 {
            if Command::new("umount")
                .arg(&self.path)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
            {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Runs `ferry-agent --config CONFIG --json ARGS...` and returns its JSON answer.
pub fn agent_json(config: &Path, args: &[&str]) -> Value {
    let out = Command::new(bin("ferry-agent"))
        .arg("--config")
        .arg(config)
        .arg("--json")
        .args(args)
        .output()
        .expect("run ferry-agent");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "ferry-agent {args:?}: bad JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A volume's image path, as the agent with `config` reports it.
pub fn agent_volume_path(config: &Path, volume: &str) -> PathBuf {
    let j = agent_json(config, &["volume", "path", volume]);
    PathBuf::from(j["path"].as_str().expect("path"))
}

/// A site PKI made with `ferry-agent pki`: `dir/<site>/ca.pem` and node certificates.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        Pki {
            dir: tempfile::Builder::new()
                .prefix("ferry-pki-")
                .tempdir()
                .expect("tempdir"),
        }
    }

    fn run(&self, args: &[&str]) {
        let out = Command::new(bin("ferry-agent"))
            .args(args)
            .output()
            .expect("run pki");
        assert!(
            out.status.success(),
            "pki {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The CA certificate of `site`, created on first use.
    pub fn ca(&self, site: &str) -> PathBuf {
        let d = self.dir.path().join(site);
        if !d.join("ca.pem").exists() {
            self.run(&["pki", "ca", site, "--dir", d.to_str().expect("utf8")]);
        }
        d.join("ca.pem")
    }

    /// Writes an agent config for `node` of `site` trusting `peers`' CAs; returns its path.
    pub fn agent_config(&self, site: &str, node: &str, peers: &[&str], data_dir: &Path) -> PathBuf {
        self.ca(site);
        let d = self.dir.path().join(site);
        let cert = d.join(format!("{node}.pem"));
        if !cert.exists() {
            self.run(&[
                "pki",
                "issue",
                node,
                "--ca-dir",
                d.to_str().expect("utf8"),
                "--out",
                d.to_str().expect("utf8"),
            ]);
        }
        let cas: Vec<String> = peers
            .iter()
            .map(|p| format!("{:?}", self.ca(p).display().to_string()))
            .collect();
        let text = format!(
            "data_dir = {:?}\n[net]\nlisten = \"127.0.0.1:0\"\ncert = {:?}\nkey = {:?}\npeer_cas = [{}]\n",
            data_dir.display().to_string(),
            cert.display().to_string(),
            d.join(format!("{node}.key")).display().to_string(),
            cas.join(", ")
        );
        let path = self.dir.path().join(format!("{site}-{node}.toml"));
        std::fs::write(&path, text).expect("write config");
        path
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

/// A running `ferry-agent serve`, killed (SIGKILL) on drop.
pub struct Served {
    pub child: Child,
    pub addr: std::net::SocketAddr,
}

impl Served {
    /// Starts `ferry-agent --config CONFIG serve` and waits for its listening line.
    pub fn start(config: &Path) -> Served {
        Self::start_with(config, Stdio::null())
    }

    /// [`Served::start`], its log written to `log`.
    pub fn start_logged(config: &Path, log: &Path) -> Served {
        Self::start_with(config, std::fs::File::create(log).expect("log").into())
    }

    fn start_with(config: &Path, stderr: Stdio) -> Served {
        use std::io::BufRead;
        let mut child = Command::new(bin("ferry-agent"))
            .arg("--config")
            .arg(config)
            .arg("serve")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read listening line");
        let addr = line
            .trim()
            .rsplit(' ')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no listening address in {line:?}"));
        Served { child, addr }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A UDP relay on loopback that drops a share of datagrams and delays the rest, each way:
/// network impairment for QUIC tests where the kernel has no netem. Stops when dropped.
///
/// It moves datagrams in batches, as QUIC's own sockets do: it receives with GRO (one read
/// returns up to 64 KiB of datagrams of one sender) and sends a batch with GSO (one write),
/// with large socket buffers; a datagram at a time, its one thread capped a 2-CPU machine's
/// loopback at 143 MB/s where QUIC reaches 600 MB/s.
pub struct LossyRelay {
    pub addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// One socket of the relay with its batching state.
struct RelaySocket {
    io: tokio::net::UdpSocket,
    state: quinn_udp::UdpSocketState,
}

impl RelaySocket {
    fn bind() -> RelaySocket {
        let std = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind relay");
        ferry_net::quic::large_buffers(&std);
        std.set_nonblocking(true).expect("nonblocking");
        let state = quinn_udp::UdpSocketState::new((&std).into()).expect("socket state");
        let io = tokio::net::UdpSocket::from_std(std).expect("socket");
        RelaySocket { io, state }
    }

    /// Receives batches: `(bytes, datagram size, sender)` per filled buffer.
    async fn recv(
        &self,
        bufs: &mut [Vec<u8>],
        out: &mut Vec<(usize, usize, std::net::SocketAddr)>,
    ) -> std::io::Result<()> {
        use std::io::IoSliceMut;
        let mut meta = vec![quinn_udp::RecvMeta::default(); bufs.len()];
        loop {
            self.io.readable().await?;
            let mut slices: Vec<IoSliceMut<'_>> =
                bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            let got = self.io.try_io(tokio::io::Interest::READABLE, || {
                self.state.recv((&self.io).into(), &mut slices, &mut meta)
            });
            match got {
                Ok(n) => {
                    out.extend(meta[..n].iter().map(|m| (m.len, m.stride, m.addr)));
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends datagrams of `stride` bytes (the last may be shorter) to `to`, in as few writes
    /// as GSO allows. Send errors lose the datagrams, as a network would.
    async fn send(&self, data: &[u8], stride: usize, to: std::net::SocketAddr) {
        let per = self.state.max_gso_segments().max(1) * stride;
        for chunk in data.chunks(per.max(1)) {
            let t = quinn_udp::Transmit {
                destination: to,
                ecn: None,
                contents: chunk,
                segment_size: (chunk.len() > stride).then_some(stride),
                src_ip: None,
            };
            loop {
                if self.io.writable().await.is_err() {
                    return;
                }
                let sent = self.io.try_io(tokio::io::Interest::WRITABLE, || {
                    self.state.send((&self.io).into(), &t)
                });
                match sent {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    _ => break,
                }
            }
        }
    }
}

/// A batch on its way: when it leaves, its datagrams, their size, where to.
type Batch = (tokio::time::Instant, Vec<u8>, usize, std::net::SocketAddr);

impl LossyRelay {
    /// Relays to `target`, dropping `loss` (0..1) of datagrams and delaying each by `delay`.
    pub fn start(
        target: std::net::SocketAddr,
        loss: f64,
        delay: std::time::Duration,
        seed: u64,
    ) -> LossyRelay {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let cut = Arc::new(AtomicBool::new(false));
        let cut2 = cut.clone();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let front = Arc::new(RelaySocket::bind());
                let back = Arc::new(RelaySocket::bind());
                let _ = addr_tx.send(front.io.local_addr().expect("addr"));
                let mut rng = StdRng::seed_from_u64(seed);
                let mut client: Option<std::net::SocketAddr> = None;
                let bufs = || (0..8).map(|_| vec![0u8; 1 << 16]).collect::<Vec<_>>();
                let (mut a, mut b) = (bufs(), bufs());
                let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
                // One forwarder per direction: the delay is the same for every datagram, so
                // a queue in arrival order is also in departure order (no task per packet).
                let forward = |sock: Arc<RelaySocket>| {
                    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Batch>();
                    tokio::spawn(async move {
                        while let Some((at, data, stride, to)) = rx.recv().await {
                            tokio::time::sleep_until(at).await;
                            sock.send(&data, stride, to).await;
                        }
                    });
                    tx
                };
                let (to_back, to_front) = (forward(back.clone()), forward(front.clone()));
                // The datagrams of a batch that survive the loss, in order.
                let mut kept = |buf: &[u8], stride: usize| -> Vec<u8> {
                    if cut2.load(Ordering::Relaxed) {
                        return Vec::new();
                    }
                    if loss <= 0.0 {
                        return buf.to_vec();
                    }
                    let mut out = Vec::with_capacity(buf.len());
                    for d in buf.chunks(stride.max(1)) {
                        if rng.gen::<f64>() >= loss {
                            out.extend_from_slice(d);
                        }
                    }
                    out
                };
                while !stop2.load(Ordering::Relaxed) {
                    got_a.clear();
                    got_b.clear();
                    tokio::select! {
                        r = front.recv(&mut a, &mut got_a) => {
                            if r.is_err() { continue }
                            for (i, &(n, stride, from)) in got_a.iter().enumerate() {
                                client = Some(from);
                                let data = kept(&a[i][..n], stride);
                                if !data.is_empty() {
                                    let at = tokio::time::Instant::now() + delay;
                                    let _ = to_back.send((at, data, stride, target));
                                }
                            }
                        }
                        r = back.recv(&mut b, &mut got_b) => {
                            if r.is_err() { continue }
                            for (i, &(n, stride, _)) in got_b.iter().enumerate() {
                                let data = kept(&b[i][..n], stride);
                                if let (Some(c), false) = (client, data.is_empty()) {
                                    let at = tokio::time::Instant::now() + delay;
                                    let _ = to_front.send((at, data, stride, c));
                                }
                            }
                        }
                        _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
                    }
                }
            });
        });
        let addr = addr_rx.recv().expect("relay started");
        LossyRelay {
            addr,
            stop,
            cut,
            thread: Some(thread),
        }
    }

    /// Drops every packet both ways while `on` (a partition), from now on.
    pub fn cut(&self, on: bool) {
        self.cut.store(on, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for LossyRelay {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A real etcd server (Debian's `etcd-server`) on free loopback ports, its data on a temp
/// dir (in /dev/shm when there is one, so its fsyncs cost nothing), killed on drop.
pub struct Etcd {
    child: Child,
    pub endpoint: String,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Etcd {
    /// Starts etcd and waits until it answers `/health`; `None` (with a message, or a
    /// failure under `CI`) when there is no etcd binary.
    pub fn start() -> Option<Etcd> {
        let bin = ["/usr/bin/etcd", "/usr/local/bin/etcd"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists());
        if !require(bin.is_some(), "etcd (Debian package etcd-server)") {
            return None;
        }
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .expect("etcd dir");
        for _attempt in 0..5 {
            let (client, peer) = (free_port(), free_port());
            let endpoint = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let data = dir.path().join(format!("data-{client}"));
            let mut child = Command::new(bin.as_ref().expect("checked"))
                .args(["--name", "ferry-test", "--data-dir"])
                .arg(&data)
                .args(["--listen-client-urls", &endpoint])
                .args(["--advertise-client-urls", &endpoint])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &format!("ferry-test={peer_url}")])
                .args(["--heartbeat-interval", "10", "--election-timeout", "100"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn etcd");
            let t0 = std::time::Instant::now();
            while t0.elapsed() < std::time::Duration::from_secs(10) {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // a port was taken meanwhile: try others
                }
                if etcd_healthy(client) {
                    return Some(Etcd {
                        child,
                        endpoint,
                        _dir: dir,
                    });
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("etcd did not become healthy");
    }

    /// Kills etcd with SIGKILL (as a crash would).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn etcd_healthy(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(std::time::Duration::from_millis(500)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

pub mod dev;
pub mod pair;
pub mod sites;
pub mod tls;
pub mod webhook;

/// A real `ferry-controller serve` with an admin and a read-only token, and a minimal HTTP
/// client for it.
pub mod controller {
    use std::io::{Read, Write};
    use std::net::SocketAddr;
    use std::process::{Child, Command, Stdio};

    use serde_json::Value;

    use crate::bin;

    pub const ADMIN: &str = "admin-token-for-tests-0123456789";
    pub const READER: &str = "reader-token-for-tests-0123456789";

    pub struct Controller {
        child: Child,
        pub addr: SocketAddr,
        _dir: tempfile::TempDir,
    }

    impl Drop for Controller {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// A `[store]` section: the embedded store in the controller's temporary directory.
    pub const EMBEDDED: &str = "[store]\nkind = \"embedded\"\npath = \"DIR/state.redb\"";

    /// A `[store]` section: the embedded store at `path`.
    pub fn embedded_at(path: &std::path::Path) -> String {
        format!(
            "[store]\nkind = \"embedded\"\npath = {:?}",
            path.display().to_string()
        )
    }

    /// A controller's configuration: HTTP on a free loopback port, `store` (its `[store]`
    /// section and any others), and the [`ADMIN`] and [`READER`] tokens.
    pub fn config(store: &str) -> String {
        let hash = |t: &str| blake3::hash(t.as_bytes()).to_hex().to_string();
        format!(
            "listen = \"127.0.0.1:0\"\n{store}\n\
             [[tokens]]\nname = \"ops\"\nrole = \"admin\"\nblake3 = \"{}\"\n\
             [[tokens]]\nname = \"monitoring\"\nrole = \"read_only\"\nblake3 = \"{}\"\n",
            hash(ADMIN),
            hash(READER)
        )
    }

    impl Controller {
        /// `ferry-controller serve` with [`config`]`(store)`; `DIR` in `store` stands for a
        /// temporary directory.
        pub fn start(store: &str) -> Controller {
            use std::io::BufRead;
            let dir = tempfile::tempdir().expect("tempdir");
            let cfg = config(store).replace("DIR", &dir.path().display().to_string());
            let path = dir.path().join("controller.toml");
            std::fs::write(&path, cfg).expect("config");
            let mut child = Command::new(bin("ferry-controller"))
                .arg("serve")
                .arg("--config")
                .arg(&path)
                .stdout(Stdio::piped())
                .stderr(log_to())
                .spawn()
                .expect("spawn controller");
            let mut line = String::new();
            std::io::BufReader::new(child.stdout.take().expect("stdout"))
                .read_line(&mut line)
                .expect("read");
            let addr = line
                .trim()
                .rsplit(' ')
                .next()
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("no address in {line:?}"));
            Controller {
                child,
                addr,
                _dir: dir,
            }
        }

        /// The controller's process id.
        pub fn pid(&self) -> u32 {
            self.child.id()
        }

        /// Sends SIGTERM and waits (30 s at most) for the controller to exit.
        pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
            ferry_controller::process::signal_and_wait(
                &mut self.child,
                libc::SIGTERM,
                std::time::Duration::from_secs(30),
            )
        }

        /// One HTTP/1.1 request; returns (status, JSON body or Null).
        pub fn call(
            &self,
            method: &str,
            path: &str,
            token: Option<&str>,
            body: Option<&[u8]>,
        ) -> (u16, Value) {
            let body = body.map(|b| String::from_utf8_lossy(b).into_owned());
            http(&self.addr.to_string(), method, path, token, body)
        }

        /// Every item of the paged list at `path`, read with the read-only token.
        pub fn list(&self, path: &str) -> Result<Vec<Value>, (u16, Value)> {
            list(&self.addr.to_string(), path, Some(READER))
        }

        /// A GET whose body is text (the metrics), with `token`.
        pub fn text(&self, path: &str, token: &str) -> String {
            let mut s = std::net::TcpStream::connect(self.addr).expect("connect");
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: ferry\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\r\n"
            );
            s.write_all(req.as_bytes()).expect("write");
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string()
        }

        pub fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
            let b = body.map(|v| serde_json::to_vec(&v).expect("json"));
            self.call(method, path, Some(ADMIN), b.as_deref())
        }
    }

    /// Where a controller's log goes: a new file in `FERRY_TEST_LOGS` when that is set (to
    /// read what a failing test's controllers did), else nowhere.
    fn log_to() -> Stdio {
        match std::env::var_os("FERRY_TEST_LOGS") {
            Some(d) => {
                let _ = std::fs::create_dir_all(&d);
                let p = std::path::Path::new(&d).join(format!(
                    "controller-{}-{}.log",
                    std::process::id(),
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |t| t.as_nanos())
                ));
                std::fs::File::create(p).map_or(Stdio::null(), Stdio::from)
            }
            None => Stdio::null(),
        }
    }

    /// A free UDP port on loopback.
    pub fn free_udp_port() -> u16 {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .map(|a| a.port())
            .expect("free port")
    }

    /// Polls `f` every 100 ms until it holds; fails the test with `what` after `secs`.
    pub fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
        let t0 = std::time::Instant::now();
        while !f() {
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(secs),
                "{what}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// One HTTP/1.1 request to `addr` (host:port) with `token`; returns (status, JSON body
    /// or Null).
    pub fn http(
        addr: &str,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<String>,
    ) -> (u16, Value) {
        let (status, _, v) = exchange(addr, method, path, token, body);
        (status, v)
    }

    /// Every item of the paged list at `path` (following `x-next-after`), or the first
    /// answer that is not a 200.
    pub fn list(addr: &str, path: &str, token: Option<&str>) -> Result<Vec<Value>, (u16, Value)> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let sep = if path.contains('?') { '&' } else { '?' };
            let page = match &after {
                None => path.to_string(),
                Some(a) => format!("{path}{sep}after={a}"),
            };
            let (status, next, v) = exchange(addr, "GET", &page, token, None);
            if status != 200 {
                return Err((status, v));
            }
            all.extend(v.as_array().cloned().unwrap_or_default());
            match next {
                Some(n) => after = Some(n),
                None => return Ok(all),
            }
        }
    }

    /// One request; returns (status, the `x-next-after` header, JSON body or Null).
    fn exchange(
        addr: &str,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<String>,
    ) -> (u16, Option<String>, Value) {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: ferry\r\nConnection: close\r\n");
        if let Some(t) = token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        let body = body.unwrap_or_default();
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        ));
        s.write_all(req.as_bytes()).expect("write");
        s.write_all(body.as_bytes()).expect("write body");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out);
        let status: u16 = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no status in {text:?}"));
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let next = head
            .lines()
            .find_map(|l| l.strip_prefix("x-next-after: "))
            .map(String::from);
        (
            status,
            next,
            serde_json::from_str(body).unwrap_or(Value::Null),
        )
    }

    impl Controller {
        /// This site's agents as the API lists them.
        pub fn agents(&self) -> Vec<Value> {
            let (code, v) = self.call("GET", "/v1/agents", Some(READER), None);
            assert_eq!(code, 200, "{v}");
            v.as_array().cloned().unwrap_or_default()
        }

        /// `/healthz`.
        pub fn health(&self) -> Value {
            self.call("GET", "/healthz", None, None).1
        }
    }

    /// A controller `name` of site-a with its agent endpoint on UDP `port`, over `store` (a
    /// `[store]` section; `DIR` stands for a temporary directory). Returns it and its
    /// configuration (to start it again).
    pub fn site_controller(
        pki: &crate::Pki,
        dir: &std::path::Path,
        name: &str,
        store: &str,
        port: u16,
    ) -> (Controller, String) {
        pki.agent_config("site-a", name, &["site-b"], &dir.join("unused"));
        let site_dir = pki.dir.path().join("site-a");
        let cfg = format!(
            "{store}\n[agents]\nlisten = \"127.0.0.1:{port}\"\ncert = {:?}\nkey = {:?}\nca = {:?}",
            site_dir.join(format!("{name}.pem")).display().to_string(),
            site_dir.join(format!("{name}.key")).display().to_string(),
            pki.ca("site-a").display().to_string(),
        );
        (Controller::start(&cfg), cfg)
    }

    /// An agent `node` of site-a linked to the controllers on UDP `ports` (tried in turn),
    /// with 4 MiB volumes `vols`, serving; returns it and its configuration.
    pub fn linked_agent(
        pki: &crate::Pki,
        dir: &std::path::Path,
        node: &str,
        ports: &[u16],
        vols: &[&str],
    ) -> (crate::Served, std::path::PathBuf) {
        let cfg = pki.agent_config("site-a", node, &["site-b"], &dir.join(node));
        let mut text = std::fs::read_to_string(&cfg).expect("config");
        let addrs: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
        text.push_str(&format!(
            "[controller]\naddresses = [{}]\nca = {:?}\n",
            addrs.join(", "),
            pki.ca("site-a").display().to_string()
        ));
        std::fs::write(&cfg, text).expect("config");
        for v in vols {
            let out = Command::new(bin("ferry-agent"))
                .arg("--config")
                .arg(&cfg)
                .args(["volume", "create", v, "--size", "4M"])
                .output()
                .expect("create");
            assert!(out.status.success());
        }
        (crate::Served::start(&cfg), cfg)
    }
}
