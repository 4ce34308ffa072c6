//! Rules that need no training: an amount limit and per-account velocity over a
//! sliding window (kept in a `DashMap`, one deque of timestamps per account).

use std::collections::VecDeque;

use dashmap::DashMap;

pub struct Velocity {
    window_ms: i64,
    max: usize,
    seen: DashMap<String, VecDeque<i64>>,
}

impl Velocity {
    pub fn new(window_ms: u64, max: usize) -> Self {
        Self {
            window_ms: i64::try_from(window_ms).unwrap_or(i64::MAX),
            max,
            seen: DashMap::new(),
        }
    }

    /// Records a transaction of `account` at `at_ms` (event time); returns how many
    /// of its transactions fall in the window ending there, and whether that is over the limit.
    pub fn observe(&self, account: &str, at_ms: i64) -> (usize, bool) {
        let mut times = self.seen.entry(account.to_string()).or_default();
        let from = at_ms.saturating_sub(self.window_ms);
        while times.front().is_some_and(|&t| t <= from) {
            times.pop_front();
        }
        // Keep the deque ordered even when events arrive slightly out of order.
        let pos = times.partition_point(|&t| t <= at_ms);
        times.insert(pos, at_ms);
        let n = times.len();
        (n, n > self.max)
    }

    /// Drops accounts with no transaction in the last window (bounds memory).
    pub fn evict_idle(&self, now_ms: i64) {
        let from = now_ms.saturating_sub(self.window_ms);
        self.seen
            .retain(|_, t| t.back().is_some_and(|&last| last > from));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_within_the_window_only() {
        let v = Velocity::new(1000, 3);
        assert_eq!(v.observe("a", 0), (1, false));
        assert_eq!(v.observe("a", 100), (2, false));
        assert_eq!(v.observe("a", 200), (3, false));
        assert_eq!(v.observe("a", 300), (4, true));
        assert_eq!(v.observe("b", 300), (1, false), "per account");
        assert_eq!(
            v.observe("a", 1250),
            (2, false),
            "0, 100 and 200 left the window"
        );
        v.evict_idle(10_000);
        assert_eq!(v.observe("a", 10_000), (1, false));
    }
}
