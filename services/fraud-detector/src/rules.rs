//! Rules that need no training: an amount limit, and per-account velocity over a sliding
//! event-time window, kept in the engine's `velocity` state store.
//!
//! Velocity is **deterministic**: the count for a transaction depends only on the
//! transactions before it in its input partition, by offset, so a redelivery (after a crash
//! or a rebalance), a restart and a replay give it the same count. What it needs:
//! - the store, scoped to the input partition and restored from its changelog when the
//!   partition is assigned (the engine does that);
//! - an account's transactions in one partition (producers key them by account) and run in
//!   offset order (the engine's key ordering);
//! - a retried transaction (read from a retry topic, maybe by another instance) is counted
//!   on its first attempt, which carries the count to the later ones in a header.
//!
//! Accounts are per tenant: the store's key is `["<tenant>","<account>"]`.
//!
//! **Event time** is the transaction's `occurred_at`, clamped to within
//! `velocity_max_skew_ms` (30 s) of the record's Kafka timestamp (the decision says so when
//! it is), so a client's clock can move a transaction by at most that much: events spaced
//! further apart than the window by their own account cannot escape it, and one far-future
//! timestamp cannot make the others look old. The window reaches both ways (transactions
//! less than the window apart), so an event that claims to be older than the previous one
//! is still counted with it.
//!
//! **Memory** is bounded: an account keeps at most `4 × (max + 1)` events (at least 64) and
//! none older than window + 2 × skew before its newest; an account whose newest event is that
//! old by the partition's stream time (the engine's: highest record timestamp, never more
//! than 5 minutes ahead of the host's clock) leaves memory.

use serde::{Deserialize, Serialize};
use verdict_runtime::engine::{RecordState, Store, StoreValue};
use verdict_runtime::error::ProcessError;

/// The store the velocity rule keeps its windows in (`stores = { velocity = … }`).
pub const STORE: &str = "velocity";

/// What the velocity rule found for one transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct VelocityHit {
    /// The account's transactions in the window ending at this one, itself included.
    pub count: usize,
    pub over: bool,
    /// What the decision should say about how it was counted (a clamped time, a count
    /// carried from an earlier attempt that is missing).
    pub notes: Vec<String>,
}

pub struct Velocity {
    store: Store<AccountWindow>,
    window_ms: i64,
    max: usize,
    skew_ms: i64,
    /// Events kept per account.
    keep: usize,
}

impl Velocity {
    pub fn new(store: Store<AccountWindow>, window_ms: u64, max: usize, skew_ms: u64) -> Self {
        Self {
            store,
            window_ms: i64::try_from(window_ms).unwrap_or(i64::MAX),
            max,
            skew_ms: i64::try_from(skew_ms).unwrap_or(i64::MAX),
            keep: max.saturating_add(1).saturating_mul(4).max(64),
        }
    }

    /// The store of the windows.
    pub fn store(&self) -> &Store<AccountWindow> {
        &self.store
    }

    /// Counts the transaction of `tenant`'s `account` at `occurred_at` (see the module).
    pub fn observe(
        &self,
        record: &RecordState<'_>,
        tenant: &str,
        account: &str,
        occurred_at: i64,
    ) -> Result<VelocityHit, ProcessError> {
        let mut notes = Vec::new();
        let at = match record.timestamp_ms() {
            Some(ts) => {
                let at = occurred_at.clamp(
                    ts.saturating_sub(self.skew_ms),
                    ts.saturating_add(self.skew_ms),
                );
                if at != occurred_at {
                    notes.push(format!(
                        "velocity: occurred_at {occurred_at} is more than {} ms from the record's timestamp {ts}; counted at {at}",
                        self.skew_ms
                    ));
                }
                at
            }
            None => occurred_at,
        };
        let key = serde_json::to_vec(&(tenant, account))
            .map_err(|e| ProcessError::transient("velocity", e.to_string()))?;
        let margin = self.skew_ms.saturating_mul(2);
        let offset = record.offset();
        let counted = self.store.update(record, &key, |w| {
            w.observe(offset, at, self.window_ms, margin, self.keep)
        })?;
        let count = match counted {
            Some(n) => {
                record.remember(STORE, n.to_string());
                n
            }
            None => match record.recall(STORE).and_then(|n| n.parse().ok()) {
                Some(n) => n,
                None => {
                    notes.push(
                        "velocity: not evaluated (a retry without the count of its first attempt)"
                            .into(),
                    );
                    return Ok(VelocityHit {
                        count: 0,
                        over: false,
                        notes,
                    });
                }
            },
        };
        Ok(VelocityHit {
            count,
            over: count > self.max,
            notes,
        })
    }
}

/// One account's recent transactions in its input partition, as a state store keeps them:
/// `(input offset, event time)`, ordered by offset. What it answers for a transaction depends
/// only on the transactions at lower offsets of the partition: with the records of a key run
/// in offset order (the engine's key ordering), a record seen again (redelivered after a
/// restart or rebalance, or replayed) gets its first answer, as long as its predecessors are
/// still kept (see [`AccountWindow::observe`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AccountWindow {
    pub events: Vec<(i64, i64)>,
    /// When the account stops mattering: its newest event time + window + margin.
    #[serde(default)]
    pub expires_at: i64,
}

impl StoreValue for AccountWindow {
    fn expires_at(&self) -> i64 {
        self.expires_at
    }
}

impl AccountWindow {
    /// The transaction at `offset` with event time `at_ms`: how many of the account's
    /// transactions at lower offsets lie less than `window_ms` from it (before or after: an
    /// event that claims to be older than the last one is not out of its reach), itself
    /// included; and whether the window changed (to be written to the
    /// changelog). Kept: events not older than `window_ms + margin_ms` before the newest event
    /// time kept, and at most `keep` of them (the highest offsets).
    pub fn observe(
        &mut self,
        offset: i64,
        at_ms: i64,
        window_ms: i64,
        margin_ms: i64,
        keep: usize,
    ) -> (usize, bool) {
        let before = self
            .events
            .iter()
            .filter(|(o, t)| *o < offset && t.abs_diff(at_ms) < window_ms.unsigned_abs())
            .count();
        let changed = match self.events.binary_search_by_key(&offset, |(o, _)| *o) {
            Ok(_) => false,
            Err(pos) => {
                self.events.insert(pos, (offset, at_ms));
                let newest = self.events.iter().map(|(_, t)| *t).max().unwrap_or(at_ms);
                let horizon = newest.saturating_sub(window_ms.saturating_add(margin_ms));
                self.expires_at = newest.saturating_add(window_ms).saturating_add(margin_ms);
                self.events.retain(|(_, t)| *t > horizon);
                let excess = self.events.len().saturating_sub(keep);
                self.events.drain(..excess);
                true
            }
        };
        (before + 1, changed)
    }
}

#[cfg(test)]
mod window_tests {
    use super::*;

    const W: i64 = 1000;

    #[test]
    fn a_record_seen_again_gets_its_first_answer() {
        // The engine runs the records of a key in offset order; after a restart it delivers
        // again from the committed offset, so a record can come back after later ones ran.
        let mut w = AccountWindow::default();
        assert_eq!(w.observe(10, 0, W, W, 64), (1, true));
        assert_eq!(w.observe(11, 100, W, W, 64), (2, true));
        assert_eq!(w.observe(12, 200, W, W, 64), (3, true));
        assert_eq!(
            w.observe(11, 100, W, W, 64),
            (2, false),
            "only what came before it"
        );
        assert_eq!(w.observe(12, 200, W, W, 64), (3, false));
        assert_eq!(w.observe(13, 300, W, W, 64), (4, true));
    }

    #[test]
    fn a_replay_gets_the_first_answers() {
        let mut w = AccountWindow::default();
        let stream = [(1, 0), (2, 10), (3, 20), (4, 1500), (5, 1600)];
        let first: Vec<usize> = stream
            .iter()
            .map(|(o, t)| w.observe(*o, *t, W, W, 64).0)
            .collect();
        let again: Vec<usize> = stream
            .iter()
            .map(|(o, t)| w.observe(*o, *t, W, W, 64).0)
            .collect();
        assert_eq!(first, again);
        assert_eq!(first, vec![1, 2, 3, 1, 2]);
    }

    #[test]
    fn memory_is_bounded_by_time_and_count() {
        let mut w = AccountWindow::default();
        for i in 0..10_000 {
            w.observe(i, i, W, W, 64);
        }
        assert_eq!(w.events.len(), 64, "count");
        let mut w = AccountWindow::default();
        w.observe(1, 0, W, W, 64);
        w.observe(2, 5000, W, W, 64);
        assert_eq!(w.events, vec![(2, 5000)], "older than window + margin");
    }
}

#[cfg(test)]
mod velocity_tests {
    use verdict_runtime::engine::Stores;
    use verdict_runtime::headers::HeaderMap;

    use super::*;

    const MIN: i64 = 60_000;

    fn velocity(max: usize) -> Velocity {
        let stores = Stores::declared([(STORE.to_string(), "g-velocity-changelog".into())].into());
        let store = stores.open("fraud-detector", STORE).expect("declared");
        store.open_empty(0);
        Velocity::new(store, 60_000, max, 30_000)
    }

    fn count(v: &Velocity, offset: i64, tenant: &str, account: &str, at: i64) -> VelocityHit {
        let state = RecordState::detached(0, offset, Some(at));
        v.observe(&state, tenant, account, at).expect("counted")
    }

    #[test]
    fn accounts_are_per_tenant() {
        let v = velocity(2);
        for o in 0..3 {
            assert_eq!(count(&v, o, "a", "acct", o * 1000).count, o as usize + 1);
        }
        assert!(count(&v, 3, "a", "acct", 3000).over);
        let other = count(&v, 4, "b", "acct", 4000);
        assert_eq!(
            (other.count, other.over),
            (1, false),
            "tenant b's account of the same id is another account"
        );
    }

    #[test]
    fn a_client_clock_moves_an_event_by_at_most_the_skew() {
        let now = 100 * MIN;
        for (claimed, what) in [
            (now + 10 * MIN, "ten minutes ahead"),
            (now - 60 * MIN, "an hour back"),
        ] {
            let v = velocity(1);
            assert_eq!(count(&v, 0, "t", "a", now).count, 1);
            // Seconds apart by the broker's clock: counted together, at most 30 s moved.
            let state = RecordState::detached(0, 1, Some(now + 1000));
            let hit = v.observe(&state, "t", "a", claimed).expect("counted");
            assert_eq!((hit.count, hit.over), (2, true), "{what}: {:?}", hit.notes);
            assert!(hit.notes[0].contains("counted at"), "{:?}", hit.notes);
        }
    }

    #[test]
    fn a_later_attempt_uses_the_count_of_the_first() {
        let v = velocity(1);
        let first = RecordState::detached(0, 7, Some(0));
        assert_eq!(v.observe(&first, "t", "a", 0).expect("counted").count, 1);
        // The engine copies what the first attempt remembered into the retry's headers.
        let mut headers = HeaderMap::default();
        headers.set("verdict.state.velocity", "4");
        let retry = RecordState::new(3, 99, Some(10), false, &headers);
        let hit = v.observe(&retry, "t", "a", 0).expect("recalled");
        assert_eq!((hit.count, hit.over), (4, true));
        let bare = HeaderMap::default();
        let lost = RecordState::new(3, 99, Some(10), false, &bare);
        let hit = v.observe(&lost, "t", "a", 0).expect("answered");
        assert!(
            !hit.over && hit.notes[0].contains("not evaluated"),
            "{hit:?}"
        );
    }
}
