//! Verification of kept snapshots in the background: a re-read of a snapshot (or of a
//! volume rebuilt from it) against its manifest, at a bounded rate, that steps aside while
//! the agent moves a transfer, so a verification never competes with replication for the
//! disk or the network's feeding reads.

use std::time::{Duration, Instant};

use crate::error::Result;
use crate::manifest::VerifyReport;
use crate::replication::ratelimit::TokenBucket;
use crate::store::Store;

/// How long a verification waits before it looks again whether transfers are over.
const STEP_ASIDE: Duration = Duration::from_millis(100);

/// Verifies `volume@snapshot` (with `live`, the volume's image against the snapshot's
/// manifest) reading at most `bytes_per_sec` (unbounded with `None`), pausing while
/// any transfer session runs in this process.
pub fn paced(
    store: &Store,
    volume: &str,
    snapshot: &str,
    live: bool,
    bytes_per_sec: Option<u64>,
) -> Result<VerifyReport> {
    let mut bucket = bytes_per_sec.map(|r| TokenBucket::new(r, Instant::now()));
    let mut pace = |bytes: u64| {
        while crate::replication::moving() > 0 {
            std::thread::sleep(STEP_ASIDE);
        }
        if let Some(b) = bucket.as_mut() {
            let wait = b.take(bytes, Instant::now());
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
        }
    };
    store.verify_paced(volume, snapshot, live, &mut pace)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AgentConfig;
    use crate::hooks::Hooks;

    /// A store with a 4 MiB volume of data and its snapshot `s1`.
    fn store(dir: &std::path::Path) -> Store {
        let cfg = AgentConfig {
            data_dir: dir.to_path_buf(),
            ..AgentConfig::default()
        };
        let store = Store::open(cfg).expect("store");
        let v = store.create_volume("v", 4 << 20, None).expect("volume");
        std::fs::write(&v.path, vec![7u8; 4 << 20]).expect("data");
        store
            .create_snapshot("v", "s1", &Hooks::default())
            .expect("snapshot");
        store
    }

    /// A verification waits while a transfer moves data, and goes on once it ended; it
    /// finds what the manifest says, live or not.
    #[test]
    fn a_verification_steps_aside_for_transfers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path());
        let moving = crate::replication::Moving::start();
        let t0 = Instant::now();
        let done = std::thread::scope(|s| {
            let h = s.spawn(|| paced(&store, "v", "s1", false, None));
            std::thread::sleep(Duration::from_millis(400));
            assert!(!h.is_finished(), "it waits while the transfer runs");
            drop(moving);
            h.join().expect("join")
        })
        .expect("verify");
        assert!(done.ok && t0.elapsed() >= Duration::from_millis(400));
        let live = paced(&store, "v", "s1", true, Some(1 << 30)).expect("live");
        assert!(live.ok, "the volume still equals its snapshot");
        let image = store.volume("v").expect("volume").path;
        std::os::unix::fs::FileExt::write_all_at(
            &std::fs::OpenOptions::new()
                .write(true)
                .open(&image)
                .expect("open"),
            b"x",
            70_000,
        )
        .expect("write");
        let changed = paced(&store, "v", "s1", true, None).expect("live");
        assert_eq!(
            (changed.ok, changed.bad_count, changed.bad_blocks.clone()),
            (false, 1, vec![1])
        );
    }
}
