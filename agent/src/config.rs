//! `ferry-agent` configuration: one TOML file, every field documented and defaulted, unknown
//! keys rejected. `agent/ferry-agent.example.toml` is the documented sample (a test parses it).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

use crate::error::{Result, StoreError};
use crate::net;

/// Which volume-store backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// `reflink` if the data directory can clone files, else `copy`.
    #[default]
    Auto,
    /// FICLONE snapshots and FIEMAP diffs; refuses to start where cloning is unsupported.
    Reflink,
    /// Sparse-copy snapshots and hash diffs; works on any filesystem.
    Copy,
}

/// How snapshot data is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum EngineChoice {
    /// io_uring, falling back to pread (logged once) where io_uring cannot be set up.
    #[default]
    Auto,
    /// io_uring only; an error if it cannot be set up.
    IoUring,
    /// Plain pread from one thread.
    Pread,
}

/// Whether reads bypass the page cache (O_DIRECT, where the filesystem supports it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DirectChoice {
    /// O_DIRECT for data that is not in the page cache anyway (a just-cloned snapshot is a new
    /// inode with no cached pages; verification must read the media), buffered for data that
    /// probably is (a snapshot the copy backend has just written). Measured: see README.
    #[default]
    Auto,
    /// Always buffered.
    Off,
    /// Always O_DIRECT.
    On,
}

/// What the reader can expect of the page cache for a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cache {
    /// Not cached: a fresh clone, or a read that must reach the media (verification).
    Cold,
    /// Probably cached: just written through the page cache.
    Warm,
}

impl DirectChoice {
    /// Whether to ask for O_DIRECT.
    pub fn wanted(self, cache: Cache) -> bool {
        match self {
            DirectChoice::Auto => cache == Cache::Cold,
            DirectChoice::Off => false,
            DirectChoice::On => true,
        }
    }
}

/// Read and hashing settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IoConfig {
    /// Read engine: "auto", "io_uring" or "pread".
    pub engine: EngineChoice,
    /// io_uring submission queue depth (reads in flight).
    pub queue_depth: u32,
    /// Size of one read, e.g. "1MiB"; a multiple of 16 KiB.
    #[serde(deserialize_with = "de_size")]
    pub read_size: u64,
    /// O_DIRECT: "auto", "off" or "on".
    pub direct: DirectChoice,
    /// Hashing threads; 0 means one per CPU.
    pub hash_threads: usize,
}

impl Default for IoConfig {
    fn default() -> Self {
        IoConfig {
            engine: EngineChoice::Auto,
            queue_depth: 16,
            read_size: 256 << 10,
            direct: DirectChoice::Auto,
            hash_threads: 0,
        }
    }
}

impl IoConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        if self.queue_depth == 0 || self.queue_depth > 4096 {
            return Err(StoreError::Invalid(format!(
                "io.queue_depth must be between 1 and 4096, not {}",
                self.queue_depth
            )));
        }
        let leaf = ferry_wire::LEAF_SIZE as u64;
        if self.read_size < leaf || self.read_size % leaf != 0 || self.read_size > 64 << 20 {
            return Err(StoreError::Invalid(format!(
                "io.read_size must be a multiple of 16 KiB between 16 KiB and 64 MiB, not {}",
                self.read_size
            )));
        }
        if self.hash_threads > 256 {
            return Err(StoreError::Invalid(
                "io.hash_threads must be at most 256".into(),
            ));
        }
        Ok(())
    }

    /// Hashing threads to start.
    pub fn threads(&self) -> usize {
        if self.hash_threads == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            self.hash_threads
        }
    }
}

/// Network settings: the QUIC endpoint of `ferry-agent serve` and outgoing connections.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetConfig {
    /// Address `serve` listens on for replication from paired sites (UDP).
    pub listen: std::net::SocketAddr,
    /// This node's certificate (PEM), issued by its site's CA (`ferry-agent pki issue`).
    pub cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    pub key: Option<PathBuf>,
    /// CA certificates of the paired sites: connections are accepted only from nodes whose
    /// certificates these CAs issued, and made only to such nodes.
    pub peer_cas: Vec<PathBuf>,
    /// Most connections served at once; more are refused.
    pub max_connections: usize,
    /// Bytes per second all outgoing transfers of this agent may send together, e.g.
    /// "100MiB"; 0 = unlimited. A transfer may have a lower limit of its own (`--bwlimit`).
    #[serde(deserialize_with = "de_size")]
    pub bandwidth_limit: u64,
    /// Per-block compression of outgoing data: "off", "zstd" (level 1) or "zstd:LEVEL"
    /// (1 to 19). A block travels compressed only when that saves at least an eighth of it.
    pub compress: Compression,
    /// Where paired sites' agents reach this node's endpoint (`HOST:PORT`), told to the
    /// controller, when `listen` is a wildcard they cannot use as is. Default: the address
    /// the controller link comes from, with `listen`'s port.
    pub advertise: Option<String>,
    /// Most transfers the daemon sends at once for its controller (more wait their turn).
    pub max_transfers: usize,
    /// Flow-control window per replication stream, e.g. "8MiB" (at most 16 MiB): data one
    /// stream may have in flight. A transfer spreads over up to 16 streams, as many as fill
    /// `connection_window`. Both ends' settings count.
    #[serde(deserialize_with = "de_size")]
    pub stream_window: u64,
    /// Flow-control window per connection (all of its streams), e.g. "128MiB": at least the
    /// link's bandwidth-delay product (1 Gbit/s at 100 ms round trip: 12.5 MB).
    #[serde(deserialize_with = "de_size")]
    pub connection_window: u64,
    /// What a replication connection may send in its first round trip, e.g. "4MiB" (default
    /// 240,000 bytes, QUIC's own): BBR then doubles its rate every round trip until it has
    /// measured the link. On a dedicated long link, up to the bandwidth-delay product lets a
    /// transfer start near full speed; on a shared one, keep the default.
    #[serde(deserialize_with = "de_size")]
    pub initial_window: u64,
    /// The largest start window learned from the last large transfer to a peer, e.g.
    /// "64MiB" (the default); "0" turns learning off. A connection to a peer whose last
    /// transfer (32 MiB or more, within a week) measured its rate and round trip starts with
    /// their product, at least `initial_window` and at most this.
    #[serde(deserialize_with = "de_size")]
    pub learned_window_max: u64,
}

impl NetConfig {
    /// The replication connections' flow-control windows.
    pub fn windows(&self) -> net::Windows {
        net::Windows {
            stream: self.stream_window,
            connection: self.connection_window,
            initial: self.initial_window,
        }
    }
}

/// Per-block compression of replication data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    Off,
    /// zstd at this level.
    Zstd(i32),
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || {
            format!("compression must be \"off\", \"zstd\" or \"zstd:LEVEL\" (1 to 19), not {s:?}")
        };
        match s {
            "off" | "none" => Ok(Compression::Off),
            "zstd" => Ok(Compression::Zstd(1)),
            _ => match s.strip_prefix("zstd:").map(str::parse::<i32>) {
                Some(Ok(l)) if (1..=19).contains(&l) => Ok(Compression::Zstd(l)),
                _ => Err(bad()),
            },
        }
    }
}

impl<'de> Deserialize<'de> for Compression {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The default cap on learned start windows: a 1 GB/s link's bandwidth-delay product at
/// about 65 ms, half the default connection window.
pub const DEFAULT_LEARNED_WINDOW_MAX: u64 = 64 << 20;

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            listen: std::net::SocketAddr::from(([0, 0, 0, 0], 7443)),
            cert: None,
            key: None,
            peer_cas: Vec::new(),
            max_connections: 256,
            bandwidth_limit: 0,
            compress: Compression::Off,
            advertise: None,
            max_transfers: 4,
            stream_window: net::Windows::default().stream,
            connection_window: net::Windows::default().connection,
            initial_window: net::Windows::default().initial,
            learned_window_max: DEFAULT_LEARNED_WINDOW_MAX,
        }
    }
}

/// The agent's configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Where the agent keeps volumes, snapshots and manifests.
    pub data_dir: PathBuf,
    /// Volume-store backend: "auto", "reflink" or "copy".
    pub backend: BackendChoice,
    /// Block size of new volumes (a power of two, 16 KiB to 16 MiB).
    #[serde(deserialize_with = "de_size")]
    pub block_size: u64,
    /// Seconds a pre/post snapshot hook may run before it is killed.
    pub hook_timeout_secs: u64,
    /// Read and hashing settings.
    pub io: IoConfig,
    /// QUIC endpoint and TLS identity.
    pub net: NetConfig,
    /// The site controller this agent takes tasks from.
    pub controller: ControllerLink,
}

/// Where the site's controller is (absent: the agent runs without one).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControllerLink {
    /// The controller's agent endpoint, HOST:PORT (UDP).
    pub address: Option<String>,
    /// More of the site's controllers (several on etcd): the agent tries them in turn, and a
    /// controller that is not the leader tells it where the leader is.
    pub addresses: Vec<String>,
    /// This site's CA certificate: only a controller with a certificate it issued is
    /// accepted.
    pub ca: Option<PathBuf>,
}

impl ControllerLink {
    /// Every configured controller address, `address` first.
    pub fn all(&self) -> Vec<String> {
        self.address
            .iter()
            .chain(self.addresses.iter())
            .cloned()
            .collect()
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            data_dir: PathBuf::from("/var/lib/ferry/agent"),
            backend: BackendChoice::Auto,
            block_size: ferry_wire::hash::DEFAULT_BLOCK_SIZE as u64,
            hook_timeout_secs: 120,
            io: IoConfig::default(),
            net: NetConfig::default(),
            controller: ControllerLink::default(),
        }
    }
}

impl AgentConfig {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| StoreError::Io {
            op: "read config".into(),
            path: path.to_owned(),
            source: e,
        })?;
        Self::parse(&text).map_err(|e| StoreError::Invalid(format!("{}: {e}", path.display())))
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Self> {
        let c: AgentConfig =
            toml::from_str(text).map_err(|e| StoreError::Invalid(e.message().to_owned()))?;
        c.validate()?;
        Ok(c)
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        ferry_wire::hash::check_block_size(self.block_size)
            .map_err(|e| StoreError::Invalid(format!("block_size: {e}")))?;
        if self.net.max_connections == 0 {
            return Err(StoreError::Invalid(
                "net.max_connections must be at least 1".into(),
            ));
        }
        if !(1..=64).contains(&self.net.max_transfers) {
            return Err(StoreError::Invalid(
                "net.max_transfers must be 1 to 64".into(),
            ));
        }
        if !((1 << 20)..=net::MAX_STREAM_WINDOW).contains(&self.net.stream_window) {
            return Err(StoreError::Invalid(format!(
                "net.stream_window must be 1MiB to {}MiB (a transfer spreads over several streams; \
                 QUIC closes a connection whose stream holds over 1,024 gaps of lost packets, \
                 which a larger stream window reaches on a lossy long link): raise \
                 net.connection_window for more data in flight",
                net::MAX_STREAM_WINDOW >> 20
            )));
        }
        if !((1 << 20)..=(1 << 40)).contains(&self.net.connection_window) {
            return Err(StoreError::Invalid(
                "net.connection_window must be 1MiB to 1TiB".into(),
            ));
        }
        if self.net.connection_window < self.net.stream_window {
            return Err(StoreError::Invalid(
                "net.connection_window must be at least net.stream_window".into(),
            ));
        }
        // A start window: at least QUIC's minimum (a few datagrams), at most what flow control
        // lets the connection have in flight.
        let start_windows = [
            ("initial_window", self.net.initial_window, ""),
            (
                "learned_window_max",
                self.net.learned_window_max,
                "0 (no learning) or ",
            ),
        ];
        for (key, value, or) in start_windows {
            let off = !or.is_empty() && value == 0;
            if !off && !(14_720..=self.net.connection_window).contains(&value) {
                return Err(StoreError::Invalid(format!(
                    "net.{key} must be {or}14720 bytes to net.connection_window ({} bytes), \
                     not {value}",
                    self.net.connection_window
                )));
            }
        }
        if self.net.cert.is_some() != self.net.key.is_some() {
            return Err(StoreError::Invalid(
                "net.cert and net.key go together".into(),
            ));
        }
        if self.hook_timeout_secs == 0 {
            return Err(StoreError::Invalid(
                "hook_timeout_secs must be at least 1".into(),
            ));
        }
        self.io.validate()
    }
}

fn de_size<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum S {
        N(u64),
        S(String),
    }
    match S::deserialize(d)? {
        S::N(n) => Ok(n),
        S::S(s) => ferry_wire::units::parse_size(&s).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_parses() {
        let text = include_str!("../ferry-agent.example.toml");
        let c = AgentConfig::parse(text).expect("example config parses");
        assert_eq!(c.block_size, 64 << 10);
        assert_eq!(c.io.read_size, 256 << 10);
    }

    #[test]
    fn bad_configs_fail() {
        let bad = [
            ("unknown = 1", "unknown field"),
            ("block_size = \"3K\"", "block_size"),
            ("block_size = 65535", "block_size"),
            ("backend = \"zfs\"", "unknown variant"),
            ("[io]\nqueue_depth = 0", "queue_depth"),
            ("[io]\nread_size = \"10K\"", "read_size"),
            ("[io]\nengine = \"aio\"", "unknown variant"),
            ("[io]\nbogus = true", "unknown field"),
            ("hook_timeout_secs = 0", "hook_timeout_secs"),
            ("[net]\nlisten = \"nowhere\"", "invalid socket address"),
            ("[net]\ncert = \"/x.pem\"", "go together"),
            ("[net]\nmax_connections = 0", "max_connections"),
            ("[net]\nmax_transfers = 0", "max_transfers"),
            ("[net]\nstream_window = \"4K\"", "stream_window"),
            ("[net]\ninitial_window = \"1K\"", "initial_window"),
            ("[net]\ninitial_window = \"1GiB\"", "initial_window"),
            ("[net]\nlearned_window_max = \"1K\"", "learned_window_max"),
            ("[net]\nlearned_window_max = \"1GiB\"", "learned_window_max"),
            ("[net]\nstream_window = \"32MiB\"", "1,024 gaps"),
            (
                "[net]\nstream_window = \"16MiB\"\nconnection_window = \"8MiB\"",
                "at least net.stream_window",
            ),
            ("[net]\nconnection_window = \"2TiB\"", "1MiB to 1TiB"),
        ];
        for (text, want) in bad {
            let e = AgentConfig::parse(text).expect_err(text).to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
        let c = AgentConfig::parse("").expect("empty config is all defaults");
        assert_eq!(c.backend, BackendChoice::Auto);
    }
}
