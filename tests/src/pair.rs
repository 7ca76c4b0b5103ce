//! Two sites on loopback for replication tests: node n1 of site-a (its commands run one by
//! one) and site-b's agent m1 serving, each with its own data directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::{bin, Pki, Served};

/// Site a's node n1 (configuration only) and site b's node m1 serving.
pub struct Pair {
    pub pki: Pki,
    pub dir: tempfile::TempDir,
    pub a_cfg: PathBuf,
    pub b_cfg: PathBuf,
    pub b_data: PathBuf,
    /// Where site b's agent logs, when it was started with one.
    pub b_log: Option<PathBuf>,
    pub served: Option<Served>,
}

impl Pair {
    pub fn new() -> Pair {
        Self::new_in(&std::env::temp_dir())
    }

    /// Both agents' data directories under `parent` (an XFS mount for the reflink paths).
    pub fn new_in(parent: &Path) -> Pair {
        Self::with(parent, None, &[], false)
    }

    /// Both sites in a temporary directory under `parent`, site b's data under `b_data_in`
    /// if given (a small filesystem); site b trusts `b_trusts` besides site-a and, with
    /// `log`, keeps its agent's log in `b_log`.
    pub fn with(parent: &Path, b_data_in: Option<&Path>, b_trusts: &[&str], log: bool) -> Pair {
        let pki = Pki::new();
        let dir = tempfile::tempdir_in(parent).expect("tempdir");
        let b_data = b_data_in.unwrap_or(dir.path()).join("b");
        let a_cfg = pki.agent_config("site-a", "n1", &["site-b"], &dir.path().join("a"));
        let mut trusts = vec!["site-a"];
        trusts.extend_from_slice(b_trusts);
        let b_cfg = pki.agent_config("site-b", "m1", &trusts, &b_data);
        let b_log = log.then(|| dir.path().join("b.log"));
        let served = Some(match &b_log {
            Some(l) => Served::start_logged(&b_cfg, l),
            None => Served::start(&b_cfg),
        });
        Pair {
            pki,
            dir,
            a_cfg,
            b_cfg,
            b_data,
            b_log,
            served,
        }
    }

    pub fn addr(&self) -> String {
        self.served.as_ref().expect("served").addr.to_string()
    }

    pub fn run(cfg: &Path, args: &[&str]) -> std::process::Output {
        Command::new(bin("ferry-agent"))
            .arg("--config")
            .arg(cfg)
            .arg("--json")
            .args(args)
            .output()
            .expect("run ferry-agent")
    }

    pub fn ok(cfg: &Path, args: &[&str]) -> Value {
        let out = Self::run(cfg, args);
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("json")
    }

    pub fn a(&self, args: &[&str]) -> Value {
        Self::ok(&self.a_cfg, args)
    }

    pub fn b(&self, args: &[&str]) -> Value {
        Self::ok(&self.b_cfg, args)
    }

    /// `replicate VOL SNAP --to b EXTRA` from `cfg`, whatever its outcome: (success, its
    /// JSON answer, seconds taken).
    pub fn try_replicate(
        &self,
        cfg: &Path,
        vol: &str,
        snap: &str,
        extra: &[&str],
    ) -> (bool, Value, f64) {
        let addr = self.addr();
        let mut args = vec!["replicate", vol, snap, "--to", &addr];
        args.extend_from_slice(extra);
        let t0 = std::time::Instant::now();
        let out = Self::run(cfg, &args);
        let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (out.status.success(), v, t0.elapsed().as_secs_f64())
    }

    pub fn replicate(&self, vol: &str, snap: &str, extra: &[&str]) -> Value {
        let addr = self.addr();
        let mut args = vec!["replicate", vol, snap, "--to", &addr];
        args.extend_from_slice(extra);
        self.a(&args)
    }

    pub fn path(&self, vol: &str) -> PathBuf {
        PathBuf::from(
            self.a(&["volume", "path", vol])["path"]
                .as_str()
                .expect("path"),
        )
    }

    pub fn mirror_image(&self, vol: &str, snap: &str) -> PathBuf {
        self.b_data
            .join("volumes")
            .join(vol)
            .join("snapshots")
            .join(snap)
            .join("data.img")
    }

    pub fn root_a(&self, vol: &str, snap: &str) -> Value {
        self.a(&["snapshot", "list", vol])
            .as_array()
            .expect("list")
            .iter()
            .find(|s| s["name"] == snap)
            .map(|s| s["root"].clone())
            .expect("snapshot")
    }

    pub fn mirror_snapshots(&self, vol: &str) -> Vec<(String, Value)> {
        let out = Self::run(&self.b_cfg, &["snapshot", "list", vol]);
        if !out.status.success() {
            return Vec::new();
        }
        let v: Value = serde_json::from_slice(&out.stdout).expect("json");
        v.as_array()
            .expect("list")
            .iter()
            .map(|s| {
                (
                    s["name"].as_str().expect("name").to_string(),
                    s["root"].clone(),
                )
            })
            .collect()
    }
}

impl Default for Pair {
    fn default() -> Self {
        Self::new()
    }
}
