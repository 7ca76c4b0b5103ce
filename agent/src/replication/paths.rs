//! What the last large transfer to each peer measured of the path, and the start window it
//! gives the next connection to that peer: a learned initial congestion window, as TCP keeps
//! per-destination metrics and QUIC's careful resume reuses a path's last capacity.
//!
//! A new QUIC connection starts with 240,000 bytes in flight and BBR doubles that every round
//! trip until it has measured the link: on a 100 ms link a 1 GiB transfer spends a second or
//! more getting up to speed. Nightly transfers go to the same peers over the same links, so
//! the sender remembers, per peer address, the rate its last large transfer moved and the
//! connection's unloaded round trip, and starts the next connection with their product (the
//! bandwidth-delay product it measured), between `net.initial_window` and
//! `net.learned_window_max`. quinn paces that window over the round trip, so the new
//! connection sends at about the remembered rate from its first round trip instead of in one
//! burst; if the link got slower since, the first losses end BBR's start-up and it settles on
//! what the link gives.
//!
//! The policy is pure ([`learn`], [`start_window`], [`remember`]); [`load`] and [`save`] keep
//! it in the data directory (`store::paths_file`), a hint that is rebuilt from nothing when
//! unreadable.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Transfers that moved less teach nothing: they end before the window has grown, and a
/// nightly incremental of a few MiB must not replace what the last full transfer measured.
pub const MIN_LEARN_BYTES: u64 = 32 << 20;

/// How long a measurement is used: a week, so weekly transfers still find last week's.
pub const LIFETIME_SECS: u64 = 7 * 24 * 3600;

/// Peers remembered at most; the oldest measurement goes first.
pub const MAX_PEERS: usize = 1024;

/// The file is read only up to this size (a thousand peers take about 100 KiB).
const MAX_FILE_BYTES: u64 = 1 << 20;

/// What one transfer measured of the path to a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Measured {
    /// Bytes a second the connection sent during the transfer's data phase.
    pub rate: u64,
    /// The connection's round trip before the transfer loaded it, microseconds.
    pub rtt_us: u64,
    /// When, seconds since the Unix epoch.
    pub at: u64,
}

impl Measured {
    /// The bandwidth-delay product measured: what is in flight at that rate over that round
    /// trip.
    pub fn bdp(&self) -> u64 {
        ((self.rate as u128 * self.rtt_us as u128) / 1_000_000).min(u64::MAX as u128) as u64
    }
}

/// The measurements by peer address.
pub type Memory = BTreeMap<String, Measured>;

/// What a transfer that sent `moved` bytes (datagrams of the connection, retransmissions
/// included) in `took`, on a connection whose unloaded round trip was `rtt`, teaches; `None`
/// for a transfer too small to teach anything.
pub fn learn(moved: u64, took: Duration, rtt: Duration, now: u64) -> Option<Measured> {
    if moved < MIN_LEARN_BYTES || took.is_zero() || rtt.is_zero() {
        return None;
    }
    Some(Measured {
        rate: (moved as f64 / took.as_secs_f64()) as u64,
        rtt_us: rtt.as_micros().min(u64::MAX as u128) as u64,
        at: now,
    })
}

/// The congestion window a new connection to a peer starts with: `initial` (the configured
/// start window) when nothing fresh is known of the path or learning is off (`max` not above
/// `initial`), else the measured bandwidth-delay product between `initial` and `max`.
pub fn start_window(known: Option<&Measured>, now: u64, initial: u64, max: u64) -> u64 {
    let fresh = |m: &&Measured| m.at <= now && now - m.at <= LIFETIME_SECS;
    match known.filter(fresh) {
        Some(m) if max > initial => m.bdp().clamp(initial, max),
        _ => initial,
    }
}

/// Records `m` for `peer`, forgetting the oldest measurements beyond [`MAX_PEERS`].
pub fn remember(memory: &mut Memory, peer: &str, m: Measured) {
    memory.insert(peer.to_owned(), m);
    while memory.len() > MAX_PEERS {
        let oldest = memory
            .iter()
            .min_by_key(|(_, m)| m.at)
            .map(|(p, _)| p.clone());
        match oldest {
            Some(p) => memory.remove(&p),
            None => break,
        };
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[derive(Serialize, Deserialize)]
struct File {
    version: u32,
    peers: Memory,
}

const VERSION: u32 = 1;

/// The measurements kept at `path`; empty when there is none or it cannot be read (it is a
/// hint: the next large transfer writes it again).
pub fn load(path: &Path) -> Memory {
    let read = || -> std::io::Result<Option<Memory>> {
        let f = std::fs::File::open(path)?;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::Read::take(f, MAX_FILE_BYTES + 1), &mut text)?;
        if text.len() as u64 > MAX_FILE_BYTES {
            return Ok(None);
        }
        Ok(serde_json::from_str::<File>(&text)
            .ok()
            .filter(|f| f.version == VERSION && f.peers.len() <= MAX_PEERS)
            .map(|f| f.peers))
    };
    match read() {
        Ok(Some(m)) => m,
        Ok(None) => {
            tracing::warn!(path = %path.display(), "path measurements unreadable; starting afresh");
            Memory::new()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Memory::new(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "path measurements unreadable");
            Memory::new()
        }
    }
}

/// Writes the measurements to `path` (a temporary file renamed over it, so a reader sees
/// the old or the new whole).
pub fn save(path: &Path, memory: &Memory) -> std::io::Result<()> {
    let text = serde_json::to_vec_pretty(&File {
        version: VERSION,
        peers: memory.clone(),
    })
    .map_err(std::io::Error::other)?;
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_transfer_teaches_its_rate_and_round_trip_when_it_was_large_enough() {
        let cases = [
            // (moved, took, rtt) -> rate, rtt_us
            (1 << 30, 2000 * MS, 100 * MS, Some((536_870_912, 100_000))),
            (
                MIN_LEARN_BYTES,
                1000 * MS,
                20 * MS,
                Some((MIN_LEARN_BYTES, 20_000)),
            ),
            (MIN_LEARN_BYTES - 1, 1000 * MS, 20 * MS, None),
            (1 << 30, Duration::ZERO, 20 * MS, None),
            (1 << 30, 1000 * MS, Duration::ZERO, None),
        ];
        for (moved, took, rtt, want) in cases {
            let got = learn(moved, took, rtt, 7).map(|m| (m.rate, m.rtt_us));
            assert_eq!(got, want, "{moved} bytes in {took:?} at {rtt:?}");
        }
    }

    #[test]
    fn the_start_window_is_the_fresh_bandwidth_delay_product_within_the_bounds() {
        let now = 1_000_000_000;
        let m = |rate: u64, rtt_ms: u64, age: u64| Measured {
            rate,
            rtt_us: rtt_ms * 1000,
            at: now - age,
        };
        let (initial, max) = (240_000, 64 << 20);
        let cases = [
            // 300 MB/s at 100 ms: 30 MB in flight
            (Some(m(300_000_000, 100, 3600)), max, 30_000_000),
            // faster than the cap
            (Some(m(3_000_000_000, 100, 0)), max, 64 << 20),
            // slower than the configured start: never below it
            (Some(m(1_000_000, 10, 0)), max, initial),
            // a week old is still used, older is not
            (Some(m(300_000_000, 100, LIFETIME_SECS)), max, 30_000_000),
            (Some(m(300_000_000, 100, LIFETIME_SECS + 1)), max, initial),
            // measured "in the future" (the clock went back): not trusted
            (
                Some(Measured {
                    at: now + 60,
                    ..m(300_000_000, 100, 0)
                }),
                max,
                initial,
            ),
            // nothing known
            (None, max, initial),
            // learning off
            (Some(m(300_000_000, 100, 0)), 0, initial),
            (Some(m(300_000_000, 100, 0)), initial, initial),
        ];
        for (known, max, want) in cases {
            assert_eq!(
                start_window(known.as_ref(), now, initial, max),
                want,
                "{known:?}, max {max}"
            );
        }
    }

    #[test]
    fn the_memory_keeps_the_newest_measurement_per_peer_and_forgets_the_oldest_peers() {
        let m = |at| Measured {
            rate: 1,
            rtt_us: 1,
            at,
        };
        let mut mem = Memory::new();
        remember(&mut mem, "a", m(1));
        remember(&mut mem, "a", m(2));
        assert_eq!(mem.len(), 1);
        assert_eq!(mem["a"].at, 2);
        for k in 0..MAX_PEERS as u64 {
            remember(&mut mem, &format!("p{k}"), m(10 + k));
        }
        assert_eq!(mem.len(), MAX_PEERS);
        assert!(!mem.contains_key("a"), "the oldest measurement goes first");
        assert!(mem.contains_key(&format!("p{}", MAX_PEERS - 1)));
    }

    #[test]
    fn the_file_round_trips_and_an_unreadable_one_is_an_empty_memory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("paths.json");
        assert!(load(&p).is_empty(), "no file");
        let mut mem = Memory::new();
        remember(
            &mut mem,
            "192.0.2.1:7443",
            Measured {
                rate: 5,
                rtt_us: 6,
                at: 7,
            },
        );
        save(&p, &mem).expect("save");
        assert_eq!(load(&p), mem);
        for garbage in [&b"{"[..], b"{\"version\":2,\"peers\":{}}", &[0xff; 64]] {
            std::fs::write(&p, garbage).expect("write");
            assert!(load(&p).is_empty());
        }
        std::fs::write(&p, vec![b' '; MAX_FILE_BYTES as usize + 10]).expect("write");
        assert!(load(&p).is_empty(), "an oversized file is not read");
    }
}
