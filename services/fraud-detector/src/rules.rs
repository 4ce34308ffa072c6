//! Rules that need no training: an amount limit and per-account velocity over a
//! sliding window (kept in a `DashMap`, one deque of (time, event id) per account).
//!
//! Velocity counts each event once, by its `event_id`: a transaction that comes back (from a
//! retry topic after a later stage failed, or redelivered after a rebalance) finds itself
//! already counted and gets the same count as its first time.
//!
//! Memory is bounded per account: an account keeps at most `4 × (max + 1)` events (at least
//! 64), its newest; past that it is over the limit whatever was dropped. Accounts leave when
//! their newest event leaves the window (events far ahead of the clock are refused before).

use std::collections::VecDeque;

use dashmap::DashMap;

pub struct Velocity {
    window_ms: i64,
    max: usize,
    /// Events kept per account.
    keep: usize,
    seen: DashMap<String, VecDeque<(i64, String)>>,
}

impl Velocity {
    pub fn new(window_ms: u64, max: usize) -> Self {
        Self {
            window_ms: i64::try_from(window_ms).unwrap_or(i64::MAX),
            max,
            keep: max.saturating_add(1).saturating_mul(4).max(64),
            seen: DashMap::new(),
        }
    }

    /// Records transaction `event_id` of `account` at `at_ms` (event time), once; returns how
    /// many of the account's transactions fall in the window ending there (itself included),
    /// and whether that is over the limit.
    pub fn observe(&self, account: &str, event_id: &str, at_ms: i64) -> (usize, bool) {
        let mut times = match self.seen.get_mut(account) {
            Some(times) => times,
            None => self.seen.entry(account.to_string()).or_default(),
        };
        let from = at_ms.saturating_sub(self.window_ms);
        while times.front().is_some_and(|(t, _)| *t <= from) {
            times.pop_front();
        }
        // Seen before: counted as of its own time, as the first time. Else counted now, and
        // the deque kept ordered even when events arrive slightly out of order.
        let at = match times.iter().find(|(_, id)| id == event_id) {
            Some((seen, _)) => *seen,
            None => {
                let pos = times.partition_point(|(t, _)| *t <= at_ms);
                times.insert(pos, (at_ms, event_id.to_string()));
                while times.len() > self.keep {
                    times.pop_front();
                }
                at_ms
            }
        };
        let n = times.iter().filter(|(t, _)| *t <= at).count();
        (n, n > self.max)
    }

    /// Drops accounts with no transaction in the last window (bounds memory).
    pub fn evict_idle(&self, now_ms: i64) {
        let from = now_ms.saturating_sub(self.window_ms);
        self.seen
            .retain(|_, t| t.back().is_some_and(|(last, _)| *last > from));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_within_the_window_only() {
        let v = Velocity::new(1000, 3);
        assert_eq!(v.observe("a", "e1", 0), (1, false));
        assert_eq!(v.observe("a", "e2", 100), (2, false));
        assert_eq!(v.observe("a", "e3", 200), (3, false));
        assert_eq!(v.observe("a", "e4", 300), (4, true));
        assert_eq!(v.observe("b", "e5", 300), (1, false), "per account");
        assert_eq!(
            v.observe("a", "e6", 1250),
            (2, false),
            "0, 100 and 200 left the window"
        );
        v.evict_idle(10_000);
        assert_eq!(v.observe("a", "e7", 10_000), (1, false));
    }

    #[test]
    fn an_account_keeps_a_bounded_number_of_events() {
        let v = Velocity::new(60_000, 3);
        for i in 0..10_000 {
            let (_, over) = v.observe("busy", &format!("e{i}"), i);
            assert_eq!(over, i >= 3, "event {i}");
        }
        let kept = v.seen.get("busy").map(|t| t.len());
        assert_eq!(kept, Some(64));
    }

    #[test]
    fn an_event_seen_again_gets_its_first_count() {
        let v = Velocity::new(1000, 1);
        assert_eq!(v.observe("a", "e1", 0), (1, false));
        assert_eq!(v.observe("a", "e1", 0), (1, false), "a retry counts once");
        assert_eq!(v.observe("a", "e2", 10), (2, true));
        assert_eq!(
            v.observe("a", "e1", 0),
            (1, false),
            "redelivered after a later event: still its first count"
        );
    }
}
