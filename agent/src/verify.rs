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
