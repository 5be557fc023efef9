//! Failed authentications (a missing or unknown bearer token, a refused
//! console sign-in), counted per client address in fixed windows.
//!
//! Every failure is audited until an address passes
//! `limits.auth_failures_per_minute` in one window; then the rest of that
//! window's failures from it are answered 429 with `Retry-After` and only
//! counted, and one entry says the address is throttled. The first failure
//! of a later window is audited with how many were only counted before it.
//! So a flood of bad tokens cannot grow the admin audit log without bound,
//! and nothing is lost from it but repetition.
//!
//! **Must never refuse a valid token**: the throttle is consulted only after
//! a token failed. Behind a reverse proxy every caller has the proxy's
//! address; refusing valid tokens there would let anyone lock admins out.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One window of counting.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at once; beyond it the oldest window is forgotten.
const MAX_TRACKED: usize = 10_000;

#[derive(Debug)]
pub(crate) struct AuthFailures {
    /// Failures audited per address and window; 0 turns the throttle off.
    limit: u32,
    by_addr: Mutex<HashMap<String, Window>>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    failures: u32,
    /// Failures of the previous window that were counted, not audited.
    carried: u32,
}

/// What to do with one failed authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Audit it; `unaudited_before` failures from this address were only
    /// counted in its previous window (say so in the entry).
    Audit { unaudited_before: u32 },
    /// Answer 429. `first`: the address just passed the limit, audit that
    /// once (with `limit`); otherwise write nothing.
    Throttle { first: bool, limit: u32, retry_after: Duration },
}

impl AuthFailures {
    pub(crate) fn new(limit: u32) -> Self {
        Self {
            limit,
            by_addr: Mutex::new(HashMap::new()),
        }
    }

    /// Count one failure from `addr` (`None`: no peer address known).
    pub(crate) fn failed(&self, addr: Option<&str>) -> Verdict {
        self.failed_at(addr.unwrap_or("unknown"), Instant::now())
    }

    fn failed_at(&self, addr: &str, now: Instant) -> Verdict {
        if self.limit == 0 {
            return Verdict::Audit { unaudited_before: 0 };
        }
        let mut map = self.by_addr.lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(addr) && map.len() >= MAX_TRACKED {
            map.retain(|_, w| now.duration_since(w.start) < WINDOW);
            if map.len() >= MAX_TRACKED {
                if let Some(oldest) = map.iter().min_by_key(|(_, w)| w.start).map(|(k, _)| k.clone()) {
                    map.remove(&oldest);
                }
            }
        }
        let w = map.entry(addr.to_string()).or_insert(Window {
            start: now,
            failures: 0,
            carried: 0,
        });
        if now.duration_since(w.start) >= WINDOW {
            let unaudited = w.failures.saturating_sub(self.limit + 1);
            *w = Window {
                start: now,
                failures: 0,
                carried: unaudited,
            };
        }
        w.failures = w.failures.saturating_add(1);
        if w.failures <= self.limit {
            let unaudited_before = std::mem::take(&mut w.carried);
            Verdict::Audit { unaudited_before }
        } else {
            Verdict::Throttle {
                first: w.failures == self.limit + 1,
                limit: self.limit,
                retry_after: WINDOW.saturating_sub(now.duration_since(w.start)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttles_past_the_limit_then_carries_the_count_into_the_next_window() {
        let t = AuthFailures::new(3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(t.failed_at("10.0.0.1", t0), Verdict::Audit { unaudited_before: 0 });
        }
        let Verdict::Throttle { first: true, limit: 3, retry_after } = t.failed_at("10.0.0.1", t0) else {
            panic!("the fourth failure is throttled, first");
        };
        assert_eq!(retry_after, WINDOW);
        for _ in 0..5 {
            assert!(matches!(t.failed_at("10.0.0.1", t0), Verdict::Throttle { first: false, .. }));
        }
        // Another address is counted on its own.
        assert_eq!(t.failed_at("10.0.0.2", t0), Verdict::Audit { unaudited_before: 0 });
        // Next window: audited again, naming the 5 that were only counted
        // (the 4th was audited as "throttled").
        let later = t0 + WINDOW;
        assert_eq!(t.failed_at("10.0.0.1", later), Verdict::Audit { unaudited_before: 5 });
        assert_eq!(t.failed_at("10.0.0.1", later), Verdict::Audit { unaudited_before: 0 });
    }

    #[test]
    fn zero_turns_it_off_and_the_table_stays_bounded() {
        let off = AuthFailures::new(0);
        for _ in 0..1000 {
            assert_eq!(off.failed(Some("10.0.0.1")), Verdict::Audit { unaudited_before: 0 });
        }
        let t = AuthFailures::new(1);
        let t0 = Instant::now();
        for i in 0..(MAX_TRACKED + 50) {
            t.failed_at(&format!("addr-{i}"), t0);
        }
        assert!(t.by_addr.lock().unwrap().len() <= MAX_TRACKED);
        assert_eq!(t.failed(None), Verdict::Audit { unaudited_before: 0 });
    }
}
