//! A token bucket for bandwidth limits: `take(n)` says how long to wait before `n` more bytes
//! may go. Pure (time is passed in), so it is tested without sleeping.

use std::time::{Duration, Instant};

/// Bytes per second, with a burst of one tenth of a second (at least 1 MiB).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(bytes_per_sec: u64, now: Instant) -> Self {
        let rate = bytes_per_sec.max(1) as f64;
        let burst = (rate / 10.0).max(1_048_576.0);
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes `n` bytes at `now`; returns how long the caller must wait before sending them.
    pub fn take(&mut self, n: u64, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst) - n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paces_to_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10 << 20, t0); // 10 MiB/s, 1 MiB burst
        assert_eq!(
            b.take(1 << 20, t0),
            Duration::ZERO,
            "the burst goes at once"
        );
        // The next MiB must wait a tenth of a second.
        let w = b.take(1 << 20, t0);
        assert!((w.as_secs_f64() - 0.1).abs() < 1e-6, "{w:?}");
        // Sending 100 MiB, sleeping as told, takes ~10 s of simulated time.
        let mut now = t0 + w;
        let mut b = TokenBucket::new(10 << 20, now);
        for _ in 0..100 {
            now += b.take(1 << 20, now);
        }
        let secs = now.duration_since(t0 + w).as_secs_f64();
        assert!((9.8..10.1).contains(&secs), "{secs}");
        // Idle time refills only up to the burst.
        let later = now + Duration::from_secs(60);
        assert_eq!(b.take(1 << 20, later), Duration::ZERO);
        assert!(b.take(1 << 20, later) > Duration::ZERO);
    }
}
