//! Everything the engine knows about its partitions, as pure state: no I/O, no clock, no
//! tasks. The loop ([`super::runner`]) feeds it what happened (assigned, a record arrived, a
//! record finished, revoked, committed) and does what it answers (start this record, pause
//! or resume these partitions, commit these positions).
//!
//! - **Offsets.** A partition's commit position is its first record not finished, or one past
//!   the last record seen: a commit never passes a record that is not done.
//! - **Key order.** A record starts only when no record with the same key of the same
//!   partition is running; later ones queue behind it, in offset order.
//! - **Retry time.** A record from a retry topic whose not-before lies ahead is held (not
//!   running, not counted against the in-flight bound) and its partition is paused until the
//!   head of the line is due.
//! - **Backpressure.** Running records are bounded per partition and in all: a record starts
//!   only below both bounds, else it waits (parked, in offset order) until a running one
//!   finishes, so a fetched burst never overshoots. Received bytes (running, waiting or held)
//!   are bounded in all. Over a bound the partitions pause at the client; they resume below
//!   half of it. Waiting records start whenever there is room, paused or not, so the records
//!   that hold the bytes can always finish and the pause always lifts.
//! - **Epochs.** Every assignment of a partition gets a new epoch; news about an older one
//!   (a record finishing after its partition was revoked) is ignored.
//! - **Barrier** (exactly-once): while a transaction commits, nothing new starts; running
//!   records finish. Offsets finished beyond a position ([`State::progress`]) are committed
//!   with it, and a new owner of the partition skips them ([`State::skip`]).

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use crate::FastMap;

/// A topic partition. The topic name is shared, so a record's copy costs no allocation.
pub type Tp = (Arc<str>, i32);

/// A record as the state sees it; `payload` is whatever the loop needs to run it.
#[derive(Debug)]
pub struct Rec<P> {
    pub tp: Tp,
    pub offset: i64,
    /// What orders this record: records with the same value run one after another in offset
    /// order (a hash of the key, or one value for the whole partition); `None` runs at once.
    pub order: Option<u64>,
    pub bytes: usize,
    /// Retry records: the earliest time to process it (ms since the epoch).
    pub not_before_ms: Option<i64>,
    pub payload: P,
}

/// A record to start now, in the partition's current epoch.
#[derive(Debug)]
pub struct Start<P> {
    pub rec: Rec<P>,
    pub epoch: u64,
}

/// The bounds of in-flight work.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub per_partition: usize,
    pub total: usize,
    pub bytes: usize,
}

struct Part<P> {
    epoch: u64,
    /// Records here wait for their not-before time.
    retry: bool,
    /// Offsets received and not yet committable, in offset order, each with whether it is
    /// finished; the front is always unfinished (finished ones are dropped from the front).
    window: VecDeque<(i64, bool)>,
    /// One past the highest offset received (-1: none yet).
    next: i64,
    /// The last position the broker confirmed for this epoch (-1: none).
    committed: i64,
    running: usize,
    bytes: usize,
    /// Bytes of the records running.
    running_bytes: usize,
    /// Order keys with a running record, and the records queued behind it.
    busy: FastMap<u64, VecDeque<Rec<P>>>,
    /// Retry records waiting for their time, head first.
    held: VecDeque<Rec<P>>,
    /// Records that arrived while the partition was paused (already fetched before the pause
    /// took effect), in offset order; admitted when it resumes.
    parked: VecDeque<Rec<P>>,
    /// What the engine last told the client: paused or not.
    paused: bool,
    /// Being revoked: nothing new starts.
    revoking: bool,
    /// Offsets already finished by an earlier owner (from the commit's metadata): skipped
    /// when they arrive.
    skip: BTreeSet<i64>,
    /// Changed since the last [`State::flow`] (and listed in `State::dirty`).
    dirty: bool,
}

impl<P> Part<P> {
    fn position(&self) -> Option<i64> {
        if self.next < 0 {
            return None;
        }
        Some(self.window.front().map_or(self.next, |(offset, _)| *offset))
    }

    /// Marks `offset` finished; false if it was not pending.
    fn finish_offset(&mut self, offset: i64) -> bool {
        let Ok(i) = self.window.binary_search_by_key(&offset, |(o, _)| *o) else {
            return false;
        };
        match self.window.get_mut(i) {
            Some((_, done @ false)) => *done = true,
            _ => return false,
        }
        while self.window.front().is_some_and(|(_, done)| *done) {
            self.window.pop_front();
        }
        true
    }
}

pub struct State<P> {
    parts: FastMap<Tp, Part<P>>,
    limits: Limits,
    running: usize,
    bytes: usize,
    epochs: u64,
    /// Over a global bound, until below half of it again.
    global_paused: bool,
    /// Partitions whose running or held records changed since the last [`State::flow`],
    /// which looks only at these unless a global input (bound, guard) changed.
    dirty: Vec<Tp>,
    /// `(holding, global_paused)` as the last [`State::flow`] saw them.
    last_flow: Option<(bool, bool)>,
    /// Held and parked records in all: when there are none, there is nothing to release.
    held: usize,
    parked: usize,
    /// The dead-letter guard holds consumption (as the last [`State::flow`] was told):
    /// nothing new starts.
    holding: bool,
    /// Bytes of outputs handed to the producer and not yet acknowledged: the byte bound
    /// counts them with the received records.
    output_bytes: usize,
    /// Bytes of the records running: processing a record takes a few times its size, so at
    /// most a quarter of the byte bound runs at once (and always at least one record).
    running_bytes: usize,
    /// A transaction is committing: nothing new starts.
    barrier: bool,
    /// Keys whose next record was due to start while the barrier stood.
    stalled: Vec<(Tp, u64)>,
}

/// Notes that `part` changed, for the next [`State::flow`].
fn mark<P>(dirty: &mut Vec<Tp>, tp: &Tp, part: &mut Part<P>) {
    if !part.dirty {
        part.dirty = true;
        dirty.push(tp.clone());
    }
}

/// What the partitions should look like now: the ones to pause and the ones to resume.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Flow {
    pub pause: Vec<Tp>,
    pub resume: Vec<Tp>,
}

impl<P> State<P> {
    pub fn new(limits: Limits) -> Self {
        Self {
            parts: FastMap::default(),
            limits,
            running: 0,
            bytes: 0,
            epochs: 0,
            global_paused: false,
            dirty: Vec::new(),
            last_flow: None,
            held: 0,
            parked: 0,
            holding: false,
            output_bytes: 0,
            running_bytes: 0,
            barrier: false,
            stalled: Vec::new(),
        }
    }

    /// Records running now.
    pub fn running(&self) -> usize {
        self.running
    }

    /// Bytes of every record received and not finished.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn assigned(&self) -> usize {
        self.parts.len()
    }

    /// Assigned partitions per topic (topics that had partitions keep a 0).
    pub fn assigned_by_topic(&self, topics: &[&str]) -> Vec<(String, usize)> {
        topics
            .iter()
            .map(|t| {
                let n = self
                    .parts
                    .keys()
                    .filter(|(topic, _)| &**topic == *t)
                    .count();
                ((*t).to_string(), n)
            })
            .collect()
    }

    /// New partitions (`retry`: a retry topic's). The client has just resumed them, so they
    /// start unpaused whatever was true of them before.
    pub fn assign(&mut self, tps: impl IntoIterator<Item = (Tp, bool)>) {
        for (tp, retry) in tps {
            if let Some(old) = self.parts.remove(&tp) {
                self.forget(&old);
            }
            self.epochs += 1;
            self.dirty.push(tp.clone());
            self.parts.insert(
                tp,
                Part {
                    epoch: self.epochs,
                    retry,
                    window: VecDeque::new(),
                    next: -1,
                    committed: -1,
                    running: 0,
                    bytes: 0,
                    running_bytes: 0,
                    busy: FastMap::default(),
                    held: VecDeque::new(),
                    parked: VecDeque::new(),
                    paused: false,
                    revoking: false,
                    skip: BTreeSet::new(),
                    dirty: true,
                },
            );
        }
    }

    fn forget(&mut self, part: &Part<P>) {
        self.running -= part.running;
        self.running_bytes -= part.running_bytes;
        self.bytes -= part.bytes;
        self.held -= part.held.len();
        self.parked -= part.parked.len();
    }

    /// A record arrived. Returns it to start now, or keeps it (parked while its partition is
    /// paused, queued behind its key, or held for its time); records of partitions not (or no
    /// longer) ours, and repeats, are dropped.
    pub fn receive(&mut self, rec: Rec<P>, now_ms: i64) -> Option<Start<P>> {
        let part = self.parts.get_mut(&rec.tp).filter(|p| !p.revoking)?;
        if rec.offset < part.next {
            return None;
        }
        mark(&mut self.dirty, &rec.tp, part);
        if part.skip.remove(&rec.offset) {
            // Finished by an earlier owner, its outputs committed with it.
            part.next = rec.offset + 1;
            if !part.window.is_empty() {
                part.window.push_back((rec.offset, true));
            }
            return None;
        }
        part.window.push_back((rec.offset, false));
        part.next = part.next.max(rec.offset + 1);
        part.bytes += rec.bytes;
        self.bytes += rec.bytes;
        let room = !self.holding
            && !self.barrier
            && part.running < self.limits.per_partition
            && self.running < self.limits.total
            && (self.running_bytes == 0 || self.running_bytes + rec.bytes <= self.limits.bytes / 4);
        // Behind the records already waiting (offset order), or until there is room.
        if !room || !part.parked.is_empty() {
            part.parked.push_back(rec);
            self.parked += 1;
            return None;
        }
        let start = Self::admit(part, rec, now_ms, &mut self.held);
        if let Some(st) = &start {
            self.running += 1;
            self.running_bytes += st.rec.bytes;
        }
        start
    }

    /// A record of an unpaused partition: held for its time (retry topics), queued behind its
    /// key, or started.
    fn admit(part: &mut Part<P>, rec: Rec<P>, now_ms: i64, held: &mut usize) -> Option<Start<P>> {
        let due = rec.not_before_ms.is_none_or(|t| t <= now_ms);
        if part.retry && (!part.held.is_empty() || !due) {
            part.held.push_back(rec);
            *held += 1;
            return None;
        }
        Self::start_or_queue(part, rec)
    }

    fn start_or_queue(part: &mut Part<P>, rec: Rec<P>) -> Option<Start<P>> {
        if let Some(order) = rec.order {
            if let Some(queue) = part.busy.get_mut(&order) {
                queue.push_back(rec);
                return None;
            }
            part.busy.insert(order, VecDeque::new());
        }
        part.running += 1;
        part.running_bytes += rec.bytes;
        Some(Start {
            rec,
            epoch: part.epoch,
        })
    }

    /// A record finished (processed, retried or dead-lettered: it is done). Returns the
    /// record of the same key to start next, if one was waiting. News about another epoch is
    /// ignored.
    pub fn finish(
        &mut self,
        tp: &Tp,
        epoch: u64,
        offset: i64,
        order: Option<u64>,
        bytes: usize,
    ) -> Option<Start<P>> {
        let part = self.parts.get_mut(tp).filter(|p| p.epoch == epoch)?;
        if !part.finish_offset(offset) {
            return None;
        }
        mark(&mut self.dirty, tp, part);
        part.running -= 1;
        part.running_bytes -= bytes;
        part.bytes -= bytes;
        self.running -= 1;
        self.running_bytes -= bytes;
        self.bytes -= bytes;
        let order = order?;
        if self.barrier && !part.revoking && part.busy.get(&order).is_some_and(|q| !q.is_empty()) {
            // Started when the barrier lifts.
            self.stalled.push((tp.clone(), order));
            return None;
        }
        let next = part.busy.get_mut(&order).and_then(VecDeque::pop_front);
        match next {
            Some(rec) if !part.revoking => {
                part.running += 1;
                part.running_bytes += rec.bytes;
                self.running += 1;
                self.running_bytes += rec.bytes;
                Some(Start {
                    rec,
                    epoch: part.epoch,
                })
            }
            Some(_) | None => {
                part.busy.remove(&order);
                None
            }
        }
    }

    /// A record of a partition being revoked was aborted before it finished: it no longer
    /// runs, and its offset stays pending (it will be read again).
    pub fn abandon(&mut self, tp: &Tp, epoch: u64, bytes: usize) {
        if let Some(part) = self.parts.get_mut(tp).filter(|p| p.epoch == epoch) {
            mark(&mut self.dirty, tp, part);
            part.running -= 1;
            part.running_bytes -= bytes;
            self.running -= 1;
            self.running_bytes -= bytes;
        }
    }

    /// Records to start now: held retry records whose time has come, and records parked
    /// while their partition was paused, once it is not (key order still applies).
    pub fn release_due(&mut self, now_ms: i64) -> Vec<Start<P>> {
        let mut out = Vec::new();
        if self.held == 0 && self.parked == 0 || self.holding || self.barrier {
            return out;
        }
        let l = self.limits;
        for (tp, part) in self.parts.iter_mut().filter(|(_, p)| !p.revoking) {
            let before = (part.held.len(), part.parked.len());
            // Records start only while the partition and the whole are below their bounds.
            let started_bytes =
                |out: &Vec<Start<P>>| out.iter().map(|s| s.rec.bytes).sum::<usize>();
            let room = |part: &Part<P>, out: &Vec<Start<P>>, next: Option<usize>| {
                let running_bytes = self.running_bytes + started_bytes(out);
                part.running < l.per_partition
                    && self.running + out.len() < l.total
                    && (running_bytes == 0 || next.is_none_or(|b| running_bytes + b <= l.bytes / 4))
            };
            while part.held.front().is_some_and(|r| {
                r.not_before_ms.is_none_or(|t| t <= now_ms) && room(part, &out, Some(r.bytes))
            }) {
                let Some(rec) = part.held.pop_front() else {
                    break;
                };
                self.held -= 1;
                out.extend(Self::start_or_queue(part, rec));
            }
            while room(part, &out, part.parked.front().map(|r| r.bytes)) {
                let Some(rec) = part.parked.pop_front() else {
                    break;
                };
                self.parked -= 1;
                out.extend(Self::admit(part, rec, now_ms, &mut self.held));
            }
            if (part.held.len(), part.parked.len()) != before {
                mark(&mut self.dirty, tp, part);
            }
        }
        self.running += out.len();
        self.running_bytes += out.iter().map(|s| s.rec.bytes).sum::<usize>();
        out
    }

    /// When the next held record falls due.
    pub fn next_due(&self) -> Option<i64> {
        if self.held == 0 {
            return None;
        }
        self.parts
            .values()
            .filter_map(|p| p.held.front()?.not_before_ms)
            .min()
    }

    /// Bytes of outputs not yet acknowledged, for the byte bound of the next [`State::flow`].
    pub fn set_output_bytes(&mut self, bytes: usize) {
        self.output_bytes = bytes;
    }

    /// Which partitions to pause and resume now. `holding`: the dead-letter guard holds
    /// consumption.
    pub fn flow(&mut self, holding: bool) -> Flow {
        self.holding = holding;
        let l = self.limits;
        let bytes = self.bytes + self.output_bytes;
        if self.running >= l.total || bytes >= l.bytes {
            self.global_paused = true;
        } else if self.running <= l.total / 2 && bytes <= l.bytes / 2 {
            self.global_paused = false;
        }
        let mut flow = Flow::default();
        let global = self.global_paused;
        let decide = |tp: &Tp, part: &mut Part<P>, flow: &mut Flow| {
            part.dirty = false;
            if part.revoking {
                return;
            }
            let want = holding
                || global
                || !part.held.is_empty()
                || part.running >= l.per_partition
                || (part.paused && part.running > l.per_partition / 2);
            if want != part.paused {
                part.paused = want;
                if want {
                    flow.pause.push(tp.clone());
                } else {
                    flow.resume.push(tp.clone());
                }
            }
        };
        // Only what changed, unless the guard or a global bound did.
        if self.last_flow.replace((holding, global)) == Some((holding, global)) {
            for tp in self.dirty.drain(..) {
                if let Some(part) = self.parts.get_mut(&tp) {
                    decide(&tp, part, &mut flow);
                }
            }
        } else {
            self.dirty.clear();
            for (tp, part) in &mut self.parts {
                decide(tp, part, &mut flow);
            }
        }
        flow.pause.sort();
        flow.resume.sort();
        flow
    }

    /// A transaction is about to commit: nothing starts until [`State::lift_barrier`].
    pub fn set_barrier(&mut self) {
        self.barrier = true;
    }

    /// The transaction committed: records stalled behind their key start now (the loop
    /// releases parked ones with [`State::release_due`]).
    pub fn lift_barrier(&mut self) -> Vec<Start<P>> {
        self.barrier = false;
        let mut out = Vec::new();
        for (tp, order) in std::mem::take(&mut self.stalled) {
            let Some(part) = self.parts.get_mut(&tp).filter(|p| !p.revoking) else {
                continue;
            };
            match part.busy.get_mut(&order).map(VecDeque::pop_front) {
                Some(Some(rec)) => {
                    part.running += 1;
                    part.running_bytes += rec.bytes;
                    out.push(Start {
                        rec,
                        epoch: part.epoch,
                    });
                }
                Some(None) => {
                    part.busy.remove(&order);
                }
                None => {}
            }
            mark(&mut self.dirty, &tp, part);
        }
        self.running += out.len();
        self.running_bytes += out.iter().map(|s| s.rec.bytes).sum::<usize>();
        out
    }

    /// Offsets of `tp` an earlier owner finished beyond its committed position.
    pub fn skip(&mut self, tp: &Tp, offsets: impl IntoIterator<Item = i64>) {
        if let Some(part) = self.parts.get_mut(tp) {
            part.skip.extend(offsets);
        }
    }

    /// Every partition's commit position with the offsets finished beyond it (its own and
    /// those still to skip), for a transaction's offset commit.
    pub fn progress(&self) -> Vec<(Tp, u64, i64, Vec<i64>)> {
        let mut out: Vec<(Tp, u64, i64, Vec<i64>)> = self
            .parts
            .iter()
            .filter(|(_, p)| !p.revoking || p.running == 0)
            .filter_map(|(tp, p)| {
                let pos = p.position()?;
                let mut done: Vec<i64> = p
                    .window
                    .iter()
                    .filter(|(_, d)| *d)
                    .map(|(o, _)| *o)
                    .chain(p.skip.iter().copied().filter(|o| *o > pos))
                    .collect();
                done.sort_unstable();
                Some((tp.clone(), p.epoch, pos, done))
            })
            .collect();
        out.sort();
        out
    }

    /// Positions that moved past what the broker confirmed, with their epoch.
    pub fn to_commit(&self) -> Vec<(Tp, u64, i64)> {
        let mut out: Vec<(Tp, u64, i64)> = self
            .parts
            .iter()
            .filter_map(|(tp, p)| {
                p.position()
                    .filter(|&pos| pos > p.committed)
                    .map(|pos| (tp.clone(), p.epoch, pos))
            })
            .collect();
        out.sort();
        out
    }

    /// The broker confirmed these positions.
    pub fn committed(&mut self, positions: &[(Tp, u64, i64)]) {
        for (tp, epoch, pos) in positions {
            if let Some(p) = self.parts.get_mut(tp).filter(|p| p.epoch == *epoch) {
                p.committed = p.committed.max(*pos);
            }
        }
    }

    /// Uncommitted records per partition (commit position − confirmed commit).
    pub fn uncommitted(&self) -> Vec<(Tp, i64)> {
        self.parts
            .iter()
            .filter_map(|(tp, p)| {
                let pos = p.position()?;
                Some((tp.clone(), pos - p.committed.max(0).min(pos)))
            })
            .collect()
    }

    /// Revocation begins: nothing new starts in these partitions; queued, held and parked records
    /// are let go (they are not done, so their offsets stay uncommitted). Returns how many
    /// of their records are still running.
    pub fn revoke(&mut self, tps: &[Tp]) -> usize {
        for tp in tps {
            if let Some(part) = self.parts.get_mut(tp) {
                part.revoking = true;
                let waiting: usize = part
                    .busy
                    .values()
                    .flatten()
                    .chain(part.held.iter())
                    .chain(part.parked.iter())
                    .map(|r| r.bytes)
                    .sum();
                part.busy.values_mut().for_each(VecDeque::clear);
                self.held -= part.held.len();
                self.parked -= part.parked.len();
                part.held.clear();
                part.parked.clear();
                part.bytes -= waiting;
                self.bytes -= waiting;
            }
        }
        self.running_in(tps)
    }

    pub fn running_in(&self, tps: &[Tp]) -> usize {
        tps.iter()
            .filter_map(|tp| self.parts.get(tp))
            .map(|p| p.running)
            .sum()
    }

    /// Revocation ends: the positions to commit for these partitions, which are then
    /// forgotten (records still running there are abandoned; they will be redelivered).
    pub fn finish_revoke(&mut self, tps: &[Tp]) -> Vec<(Tp, i64)> {
        let mut out = Vec::new();
        for tp in tps {
            if let Some(part) = self.parts.remove(tp) {
                if let Some(pos) = part.position().filter(|&pos| pos > part.committed) {
                    out.push((tp.clone(), pos));
                }
                self.forget(&part);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        per_partition: 4,
        total: 8,
        bytes: 1000,
    };

    fn tp(p: i32) -> Tp {
        ("in".into(), p)
    }

    fn order(key: &str) -> u64 {
        crate::hash_of(key.as_bytes())
    }

    fn rec(p: i32, offset: i64, key: Option<&str>) -> Rec<()> {
        Rec {
            tp: tp(p),
            offset,
            order: key.map(order),
            bytes: 10,
            not_before_ms: None,
            payload: (),
        }
    }

    fn retry(offset: i64, not_before: i64) -> Rec<()> {
        Rec {
            tp: ("in.retry.1".into(), 0),
            offset,
            order: Some(order(&format!("k{offset}"))),
            bytes: 10,
            not_before_ms: Some(not_before),
            payload: (),
        }
    }

    fn done(s: &mut State<()>, start: &Start<()>) -> Option<Start<()>> {
        s.finish(
            &start.rec.tp,
            start.epoch,
            start.rec.offset,
            start.rec.order,
            start.rec.bytes,
        )
    }

    #[test]
    fn commits_stop_at_the_first_unfinished_offset() {
        let mut s = State::new(Limits {
            per_partition: 8,
            ..LIMITS
        });
        s.assign([(tp(0), false)]);
        let started: Vec<Start<()>> = (10..15)
            .filter_map(|o| s.receive(rec(0, o, None), 0))
            .collect();
        assert_eq!(started.len(), 5);
        assert_eq!(s.to_commit(), vec![(tp(0), 1, 10)]);
        for i in [1, 2, 4] {
            done(&mut s, &started[i]);
        }
        assert_eq!(s.to_commit(), vec![(tp(0), 1, 10)], "10 is still running");
        done(&mut s, &started[0]);
        assert_eq!(s.to_commit(), vec![(tp(0), 1, 13)], "stops before 13");
        done(&mut s, &started[3]);
        assert_eq!(s.to_commit(), vec![(tp(0), 1, 15)]);
        s.committed(&[(tp(0), 1, 15)]);
        assert!(s.to_commit().is_empty());
        assert_eq!((s.running(), s.bytes()), (0, 0));
    }

    #[test]
    fn nothing_starts_behind_a_barrier_and_stalled_keys_start_when_it_lifts() {
        let mut s = State::new(LIMITS);
        s.assign([(tp(0), false)]);
        let a = s.receive(rec(0, 0, Some("k")), 0).expect("start");
        assert!(
            s.receive(rec(0, 1, Some("k")), 0).is_none(),
            "behind its key"
        );
        s.set_barrier();
        assert!(done(&mut s, &a).is_none(), "stalled: the barrier stands");
        assert!(s.receive(rec(0, 2, Some("j")), 0).is_none(), "parked");
        assert!(s.release_due(0).is_empty());
        assert_eq!(s.running(), 0, "the transaction can commit");
        assert_eq!(s.progress(), vec![(tp(0), 1, 1, vec![])]);
        let next = s.lift_barrier();
        assert_eq!(
            next.iter().map(|st| st.rec.offset).collect::<Vec<_>>(),
            vec![1]
        );
        let parked = s.release_due(0);
        assert_eq!(
            parked.iter().map(|st| st.rec.offset).collect::<Vec<_>>(),
            vec![2]
        );
        assert_eq!(s.running(), 2);
    }

    #[test]
    fn offsets_finished_beyond_the_position_are_committed_and_skipped_by_the_next_owner() {
        let mut s = State::new(LIMITS);
        s.assign([(tp(0), false)]);
        let a = s.receive(rec(0, 4, Some("slow")), 0).expect("start");
        let b = s.receive(rec(0, 5, Some("fast")), 0).expect("start");
        done(&mut s, &b);
        assert_eq!(s.progress(), vec![(tp(0), 1, 4, vec![5])]);

        // The next owner starts at 4 and skips 5.
        let mut next = State::new(LIMITS);
        next.assign([(tp(0), false)]);
        next.skip(&tp(0), [5]);
        let again = next
            .receive(rec(0, 4, Some("slow")), 0)
            .expect("runs again");
        assert!(
            next.receive(rec(0, 5, Some("fast")), 0).is_none(),
            "skipped"
        );
        assert_eq!(next.progress(), vec![(tp(0), 1, 4, vec![5])], "still named");
        let c = next.receive(rec(0, 6, None), 0).expect("start");
        done(&mut next, &again);
        done(&mut next, &c);
        assert_eq!(next.progress(), vec![(tp(0), 1, 7, vec![])]);
        done(&mut s, &a);
    }

    #[test]
    fn a_failed_commit_is_offered_again() {
        let mut s = State::new(LIMITS);
        s.assign([(tp(0), false)]);
        let a = s.receive(rec(0, 0, None), 0).expect("start");
        done(&mut s, &a);
        let first = s.to_commit();
        assert_eq!(first, vec![(tp(0), 1, 1)]);
        // The commit failed: nothing is confirmed, so the same position is offered again,
        // although the partition is idle.
        assert_eq!(s.to_commit(), first);
        s.committed(&first);
        assert!(s.to_commit().is_empty());
    }

    #[test]
    fn same_key_records_run_one_after_another_in_offset_order() {
        let mut s = State::new(LIMITS);
        s.assign([(tp(0), false)]);
        let a1 = s.receive(rec(0, 0, Some("a")), 0).expect("a1 starts");
        let b1 = s
            .receive(rec(0, 1, Some("b")), 0)
            .expect("b1 starts: other key");
        assert!(
            s.receive(rec(0, 2, Some("a")), 0).is_none(),
            "a2 waits for a1"
        );
        assert!(s.receive(rec(0, 3, Some("a")), 0).is_none(), "a3 waits too");
        assert_eq!(s.running(), 2);
        let a2 = done(&mut s, &a1).expect("a2 starts when a1 is done");
        assert_eq!(a2.rec.offset, 2);
        assert!(done(&mut s, &b1).is_none());
        let a3 = done(&mut s, &a2).expect("then a3");
        assert_eq!(a3.rec.offset, 3);
        assert!(done(&mut s, &a3).is_none());
        assert_eq!(s.to_commit(), vec![(tp(0), 1, 4)]);
    }

    #[test]
    fn news_from_an_old_assignment_is_ignored() {
        let mut s = State::new(LIMITS);
        s.assign([(tp(0), false)]);
        let old = s.receive(rec(0, 5, Some("k")), 0).expect("old");
        s.revoke(&[tp(0)]);
        assert_eq!(s.finish_revoke(&[tp(0)]), vec![(tp(0), 5)]);
        s.assign([(tp(0), false)]);
        let new = s
            .receive(rec(0, 5, Some("k")), 0)
            .expect("redelivered, starts");
        assert!(
            done(&mut s, &old).is_none(),
            "the abandoned task's end changes nothing"
        );
        assert_eq!(s.running(), 1, "the redelivered record still runs");
        assert!(done(&mut s, &new).is_none());
        assert_eq!(s.running(), 0);
        assert!(
            s.receive(rec(7, 1, None), 0).is_none(),
            "records of partitions not ours are dropped"
        );
    }

    #[test]
    fn revoking_starts_nothing_new_and_commits_only_what_is_done() {
        let mut s = State::new(LIMITS);
        s.assign([(tp(0), false)]);
        let a1 = s.receive(rec(0, 0, Some("a")), 0).expect("a1");
        assert!(s.receive(rec(0, 1, Some("a")), 0).is_none(), "queued");
        assert_eq!(s.revoke(&[tp(0)]), 1, "a1 still runs");
        assert!(
            s.receive(rec(0, 2, None), 0).is_none(),
            "nothing new while revoking"
        );
        assert!(done(&mut s, &a1).is_none(), "the queued a2 does not start");
        assert_eq!(
            s.finish_revoke(&[tp(0)]),
            vec![(tp(0), 1)],
            "up to a2, which is not done"
        );
        assert_eq!((s.running(), s.bytes(), s.assigned()), (0, 0, 0));
    }

    #[test]
    fn retry_records_wait_for_their_time_without_holding_in_flight_slots() {
        let mut s = State::new(LIMITS);
        let rtp: Tp = ("in.retry.1".into(), 0);
        s.assign([(tp(0), false), (rtp.clone(), true)]);
        assert!(s.receive(retry(0, 5_000), 1_000).is_none(), "held");
        assert!(
            s.receive(retry(1, 5_100), 1_000).is_none(),
            "held behind the head"
        );
        assert_eq!(s.running(), 0, "held records do not count as running");
        assert_eq!(s.next_due(), Some(5_000));
        let flow = s.flow(false);
        assert_eq!(
            flow.pause,
            vec![rtp.clone()],
            "only the retry partition waits"
        );
        // Fresh input flows meanwhile, up to the bound.
        for o in 0..4 {
            assert!(s.receive(rec(0, o, None), 1_000).is_some());
        }
        assert!(s.release_due(4_999).is_empty());
        let due = s.release_due(5_050);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].rec.offset, 0);
        let due = s.release_due(5_100);
        assert_eq!(due.len(), 1);
        assert_eq!(
            s.flow(false).resume,
            vec![rtp],
            "resumed once nothing is held"
        );
    }

    #[test]
    fn backpressure_pauses_over_the_bounds_and_resumes_below_half() {
        let mut s = State::new(LIMITS);
        s.assign([(tp(0), false), (tp(1), false)]);
        let mut started = Vec::new();
        for o in 0..4 {
            started.push(s.receive(rec(0, o, None), 0).expect("start"));
        }
        assert_eq!(s.flow(false).pause, vec![tp(0)], "partition 0 at its bound");
        done(&mut s, &started[0]);
        assert_eq!(s.flow(false), Flow::default(), "3 > 4/2: still paused");
        done(&mut s, &started[1]);
        assert_eq!(s.flow(false).resume, vec![tp(0)]);
        // The guard holds everything.
        assert_eq!(s.flow(true).pause, vec![tp(0), tp(1)]);
        assert_eq!(s.flow(false).resume, vec![tp(0), tp(1)]);
    }

    #[test]
    fn records_fetched_before_a_pause_wait_until_it_ends() {
        let mut s = State::new(LIMITS);
        s.assign([(tp(0), false)]);
        assert_eq!(s.flow(true).pause, vec![tp(0)], "the guard holds");
        assert!(
            s.receive(rec(0, 0, None), 0).is_none(),
            "parked, not started"
        );
        assert!(s.receive(rec(0, 1, None), 0).is_none());
        assert!(s.release_due(0).is_empty(), "still paused");
        assert_eq!(
            s.to_commit(),
            vec![(tp(0), 1, 0)],
            "parked records are not done"
        );
        assert_eq!(s.flow(false).resume, vec![tp(0)]);
        let started: Vec<i64> = s.release_due(0).iter().map(|st| st.rec.offset).collect();
        assert_eq!(started, vec![0, 1], "in offset order");
        assert_eq!(s.running(), 2);
    }

    #[test]
    fn a_byte_bound_pauses_big_records() {
        let mut s = State::new(Limits {
            per_partition: 100,
            total: 100,
            bytes: 100,
        });
        s.assign([(tp(0), false)]);
        let mut big = rec(0, 0, None);
        big.bytes = 150;
        let b = s.receive(big, 0).expect("start");
        assert_eq!(s.flow(false).pause, vec![tp(0)], "over the byte bound");
        done(&mut s, &b);
        assert_eq!(s.flow(false).resume, vec![tp(0)]);
    }

    #[test]
    fn a_reassigned_partition_starts_unpaused() {
        let mut s: State<()> = State::new(LIMITS);
        s.assign([(tp(0), false)]);
        assert_eq!(s.flow(true).pause, vec![tp(0)]);
        s.revoke(&[tp(0)]);
        s.finish_revoke(&[tp(0)]);
        s.assign([(tp(0), false)]);
        // The client resumed it on assignment; the state agrees, and pauses it again only
        // if something asks for it.
        assert_eq!(s.flow(false), Flow::default());
        assert_eq!(s.flow(true).pause, vec![tp(0)]);
    }

    /// `flow` looks only at partitions that changed; after any sequence of events every
    /// partition is paused exactly when a look at all of them would pause it.
    #[test]
    fn incremental_flow_agrees_with_a_full_look() {
        let limits = Limits {
            per_partition: 3,
            total: 7,
            bytes: 150,
        };
        let mut s = State::new(limits);
        s.assign((0..4).map(|p| (tp(p), false)));
        let mut running: Vec<Start<()>> = Vec::new();
        let mut next = [0_i64; 4];
        let mut seed = 7_u64;
        for step in 0..5_000_u32 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let r = (seed >> 33) as usize;
            if !r.is_multiple_of(3) || running.is_empty() {
                let p = r % 4;
                let key = format!("k{}", (r / 4) % 5);
                let started = s.receive(rec(p as i32, next[p], Some(&key)), 0);
                next[p] += 1;
                running.extend(started);
            } else {
                let done_one = running.swap_remove(r % running.len());
                running.extend(done(&mut s, &done_one));
            }
            running.extend(s.release_due(0));
            let holding = step.is_multiple_of(97);
            s.flow(holding);
            let global = s.global_paused;
            for part in s.parts.values() {
                let want = holding
                    || global
                    || !part.held.is_empty()
                    || part.running >= limits.per_partition
                    || (part.paused && part.running > limits.per_partition / 2);
                assert_eq!(part.paused, want, "step {step}");
            }
        }
    }

    /// A burst larger than the per-partition bound (a fetched batch arrives at once) starts
    /// only up to the bound; the rest start as running records finish.
    #[test]
    fn the_per_partition_bound_holds_for_a_burst() {
        let mut s = State::new(LIMITS);
        s.assign([(tp(0), false)]);
        let started: Vec<Start<()>> = (0..10)
            .filter_map(|o| s.receive(rec(0, o, None), 0))
            .collect();
        assert_eq!(started.len(), 4, "per_partition is 4");
        assert_eq!(s.running(), 4);
        done(&mut s, &started[0]);
        s.flow(false);
        let next: Vec<i64> = s.release_due(0).iter().map(|st| st.rec.offset).collect();
        assert_eq!(
            next,
            vec![4],
            "one finished, one more starts, in offset order"
        );
    }

    /// Review item 1: a record that arrives while the byte bound pauses everything (fetched
    /// before the pause took effect) must still start, or the bytes it holds never fall and
    /// the pause never lifts.
    #[test]
    fn records_arriving_under_a_byte_pause_still_start() {
        let mut s = State::new(Limits {
            per_partition: 100,
            total: 100,
            bytes: 100,
        });
        s.assign([(tp(0), false)]);
        let sized = |o: i64, bytes: usize| Rec {
            bytes,
            ..rec(0, o, None)
        };
        let a = s.receive(sized(0, 90), 0).expect("starts");
        assert!(
            s.receive(sized(1, 30), 0).is_none(),
            "waits: 90 runs already"
        );
        assert_eq!(s.flow(false).pause, vec![tp(0)], "120 bytes: paused");
        assert!(
            s.receive(sized(2, 60), 0).is_none(),
            "fetched before the pause took effect"
        );
        done(&mut s, &a);
        assert_eq!(
            s.flow(false),
            Flow::default(),
            "90 bytes > 50: still paused"
        );
        // Under the pause, the waiting records run one after another and finish.
        for expected in [1, 2] {
            let started = s.release_due(0);
            assert_eq!(
                started.iter().map(|st| st.rec.offset).collect::<Vec<_>>(),
                vec![expected]
            );
            done(&mut s, &started[0]);
        }
        assert_eq!(s.bytes(), 0);
        assert_eq!(
            s.flow(false).resume,
            vec![tp(0)],
            "and then the pause lifts"
        );
    }

    /// Review item 2: a record that arrives after its partition resumed, before the records
    /// parked during the pause are released, must not overtake them.
    #[test]
    fn a_record_after_a_resume_waits_behind_the_parked_ones() {
        let mut s = State::new(LIMITS);
        s.assign([(tp(0), false)]);
        assert_eq!(s.flow(true).pause, vec![tp(0)], "the guard holds");
        assert!(s.receive(rec(0, 0, Some("a")), 0).is_none(), "parked");
        assert_eq!(s.flow(false).resume, vec![tp(0)]);
        // Offset 1 (same key) arrives before the loop released offset 0.
        let early = s.receive(rec(0, 1, Some("a")), 0);
        assert!(early.is_none(), "offset 1 must not start before offset 0");
        let order: Vec<i64> = s.release_due(0).iter().map(|st| st.rec.offset).collect();
        assert_eq!(order, vec![0], "offset 0 first; 1 waits for it (same key)");
    }

    /// Large records: at most a quarter of the byte bound runs at once (processing takes a
    /// few times a record's size), always at least one; the rest wait in offset order.
    #[test]
    fn a_quarter_of_the_byte_bound_runs_at_once() {
        let mut s = State::new(Limits {
            per_partition: 100,
            total: 100,
            bytes: 400,
        });
        s.assign([(tp(0), false)]);
        let sized = |o: i64, bytes: usize| Rec {
            bytes,
            ..rec(0, o, None)
        };
        let started: Vec<Start<()>> = (0..4).filter_map(|o| s.receive(sized(o, 40), 0)).collect();
        assert_eq!(
            started.len(),
            2,
            "80 bytes of 100 run; a third would be 120"
        );
        done(&mut s, &started[0]);
        let next: Vec<i64> = s.release_due(0).iter().map(|st| st.rec.offset).collect();
        assert_eq!(next, vec![2]);
        let mut huge = State::new(Limits {
            per_partition: 100,
            total: 100,
            bytes: 400,
        });
        huge.assign([(tp(0), false)]);
        assert!(
            huge.receive(
                Rec {
                    bytes: 1_000,
                    ..rec(0, 0, None)
                },
                0
            )
            .is_some(),
            "a record over the whole bound still runs alone"
        );
    }
}
