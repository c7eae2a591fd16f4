//! Reconnect delays: capped exponential backoff with jitter, so a fleet of workers that lost the
//! same master does not hammer it in lockstep when it comes back.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Delays for successive reconnect attempts.
///
/// The nominal delay starts at `base` and doubles after every attempt up to `cap`; the delay
/// actually returned is drawn uniformly from `[nominal / 2, nominal]` ("equal jitter"): never
/// longer than the schedule promises, never so short that the doubling is lost.
#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    nominal: Duration,
    rng: XorShift64,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration, seed: u64) -> Self {
        assert!(base <= cap, "backoff base {base:?} above its cap {cap:?}");
        Backoff {
            base,
            cap,
            nominal: base,
            rng: XorShift64::new(seed),
        }
    }

    /// How long to wait before the next attempt; advances the schedule.
    pub fn next_delay(&mut self) -> Duration {
        let high = self.nominal.as_micros() as u64;
        let low = high / 2;
        let delay = Duration::from_micros(low + self.rng.next_u64() % (high - low + 1));
        self.nominal = (self.nominal * 2).min(self.cap);
        delay
    }

    /// Back to the shortest delay, after a connection that worked.
    pub fn reset(&mut self) {
        self.nominal = self.base;
    }
}

/// A seed that differs between workers started at the same moment on different hosts (the clock's
/// nanoseconds) and on the same host (the pid).
pub fn seed_from_clock_and_pid() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}

/// Marsaglia's xorshift64: plenty for jitter, and no dependency.
#[derive(Debug)]
struct XorShift64 {
    state: u64,
}

impl XorShift64 {
    fn new(seed: u64) -> Self {
        // Zero is the one state xorshift never leaves.
        XorShift64 {
            state: if seed == 0 {
                0x9E37_79B9_7F4A_7C15
            } else {
                seed
            },
        }
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_millis(100);
    const CAP: Duration = Duration::from_secs(5);

    #[test]
    fn doubles_then_caps() {
        let mut b = Backoff::new(BASE, CAP, 42);
        let nominals: Vec<u64> = (0..10)
            .map(|_| {
                let n = b.nominal.as_millis() as u64;
                b.next_delay();
                n
            })
            .collect();
        assert_eq!(
            nominals,
            [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000, 5000]
        );
    }

    #[test]
    fn jitter_stays_within_half_to_full_nominal() {
        for seed in 0..200 {
            let mut b = Backoff::new(BASE, CAP, seed);
            for _ in 0..12 {
                let nominal = b.nominal;
                let d = b.next_delay();
                assert!(d >= nominal / 2 && d <= nominal, "{d:?} vs {nominal:?}");
            }
        }
    }

    #[test]
    fn jitter_actually_varies() {
        let mut b = Backoff::new(CAP, CAP, 7);
        let first = b.next_delay();
        assert!((0..20).any(|_| b.next_delay() != first));
    }

    #[test]
    fn reset_returns_to_base() {
        let mut b = Backoff::new(BASE, CAP, 1);
        for _ in 0..8 {
            b.next_delay();
        }
        b.reset();
        assert_eq!(b.nominal, BASE);
        assert!(b.next_delay() <= BASE);
    }

    #[test]
    fn zero_seed_still_produces_numbers() {
        let mut r = XorShift64::new(0);
        assert_ne!(r.next_u64(), 0);
    }
}
