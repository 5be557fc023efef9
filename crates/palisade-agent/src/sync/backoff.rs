//! Exponential backoff with full jitter for every retry loop of the sync
//! client (enrollment, policy stream, upload).
//!
//! The n-th delay is drawn uniformly from `[floor, min(cap, base * 2^n)]`, so
//! ten thousand agents that lost the server at the same moment come back
//! spread over the whole window instead of in lockstep. The small floor keeps
//! a zero draw from turning a failure loop into a busy loop. This module must
//! never sleep by itself: callers decide how to wait (and to stop waiting on
//! shutdown).

use std::time::Duration;

/// Smallest delay ever returned, whatever the draw.
pub const MIN_DELAY: Duration = Duration::from_millis(10);

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

// === impl Backoff ===

impl Backoff {
    /// `base` is the first window, `cap` the largest one.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base: base.max(MIN_DELAY),
            cap: cap.max(base).max(MIN_DELAY),
            attempt: 0,
        }
    }

    /// The upper bound of the next window, without drawing.
    pub fn window(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The next delay (full jitter) and move to the next, larger window.
    pub fn next_delay(&mut self) -> Duration {
        let window = self.window();
        self.attempt = self.attempt.saturating_add(1);
        jitter(MIN_DELAY, window)
    }

    /// A success: the next failure starts again from `base`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Failures since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

/// A uniform draw in `[lo, hi]` (or `lo` when `hi <= lo`).
pub fn jitter(lo: Duration, hi: Duration) -> Duration {
    if hi <= lo {
        return lo;
    }
    let span = (hi - lo).as_millis().min(u64::MAX as u128) as u64;
    lo + Duration::from_millis(rand::random::<u64>() % (span + 1))
}

/// What the server asked for (`retry_after_ms`), plus up to 50% jitter so
/// that agents told the same value do not return together.
pub fn server_delay(retry_after_ms: u32, fallback: Duration) -> Duration {
    if retry_after_ms == 0 {
        return fallback;
    }
    let base = Duration::from_millis(u64::from(retry_after_ms));
    jitter(base, base + base / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_double_up_to_the_cap_and_reset() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut windows = Vec::new();
        for _ in 0..6 {
            windows.push(b.window().as_millis());
            let d = b.next_delay();
            assert!(d <= Duration::from_secs(1), "{d:?}");
            assert!(d >= MIN_DELAY);
        }
        assert_eq!(windows, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.attempts(), 6);
        b.reset();
        assert_eq!(b.window(), Duration::from_millis(100));
    }

    #[test]
    fn many_failures_never_overflow() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
        for _ in 0..10_000 {
            assert!(b.next_delay() <= Duration::from_secs(60));
        }
        assert_eq!(b.window(), Duration::from_secs(60));
    }

    #[test]
    fn draws_spread_over_the_window() {
        // Full jitter: of many draws in a 1 s window, some land in each half.
        let draws: Vec<_> = (0..200)
            .map(|_| jitter(Duration::ZERO, Duration::from_secs(1)))
            .collect();
        assert!(draws.iter().any(|d| *d < Duration::from_millis(500)));
        assert!(draws.iter().any(|d| *d >= Duration::from_millis(500)));
        assert!(draws.iter().all(|d| *d <= Duration::from_secs(1)));
    }

    #[test]
    fn server_delay_honours_retry_after_with_jitter_above_it() {
        for _ in 0..100 {
            let d = server_delay(1000, Duration::from_secs(9));
            assert!(d >= Duration::from_millis(1000) && d <= Duration::from_millis(1500), "{d:?}");
        }
        assert_eq!(server_delay(0, Duration::from_secs(9)), Duration::from_secs(9));
    }

    #[test]
    fn degenerate_bounds_are_clamped() {
        let b = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(b.window(), MIN_DELAY);
        assert_eq!(jitter(Duration::from_secs(2), Duration::from_secs(1)), Duration::from_secs(2));
    }
}
