//! Burrow's partition evaluation, as a pure function of a sliding window of samples.
//!
//! Burrow watches every offset commit; the monitor samples the committed offset every poll
//! instead, so "the consumer commits the same offset" (STALL) and "the consumer stopped
//! committing" (STOP) are told apart by ownership: a lagging partition whose offset does not
//! move is STALL while a group member owns it and STOP when none does, or when it has not
//! moved for `stop_after_ms`. A lagging partition of a group with no member at all is STOP at
//! once: nothing is going to read it.

use serde::Serialize;

/// A partition's state, in increasing severity (the status gauge's value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Ok = 0,
    Warning = 1,
    Rewind = 2,
    Stall = 3,
    Stop = 4,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warning => "WARNING",
            Status::Rewind => "REWIND",
            Status::Stall => "STALL",
            Status::Stop => "STOP",
        }
    }
}

/// One poll of one partition.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub at_ms: i64,
    pub committed: i64,
    pub lag: i64,
}

/// Who reads a partition now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// A member of the group.
    Member,
    /// No member, while the group has some (a rebalance, say).
    Nobody,
    /// The group has no member at all.
    NoMembers,
}

/// The status of a partition given its last samples (oldest first), who owns it now, and
/// when its committed offset last changed.
pub fn evaluate(
    window: &[Sample],
    owner: Owner,
    last_move_ms: i64,
    now_ms: i64,
    stop_after_ms: i64,
) -> Status {
    let (Some(first), Some(last)) = (window.first(), window.last()) else {
        return Status::Ok;
    };
    if window.windows(2).any(|w| w[1].committed < w[0].committed) {
        return Status::Rewind;
    }
    if window.iter().any(|s| s.lag == 0) {
        return Status::Ok;
    }
    let stuck_for = now_ms - last_move_ms;
    let unmoved = window.len() >= 2 && first.committed == last.committed;
    if owner == Owner::NoMembers || (owner == Owner::Nobody && unmoved) {
        return Status::Stop;
    }
    if stuck_for > stop_after_ms {
        return Status::Stop;
    }
    if window.len() < 2 {
        return Status::Ok;
    }
    if unmoved {
        return Status::Stall;
    }
    if window.windows(2).all(|w| w[1].lag >= w[0].lag) {
        return Status::Warning;
    }
    Status::Ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(points: &[(i64, i64)]) -> Vec<Sample> {
        points
            .iter()
            .enumerate()
            .map(|(i, (committed, lag))| Sample {
                at_ms: i64::try_from(i).expect("small") * 1000,
                committed: *committed,
                lag: *lag,
            })
            .collect()
    }

    const STOP_AFTER: i64 = 60_000;

    #[test]
    fn any_zero_lag_in_the_window_is_ok() {
        let s = w(&[(10, 5), (15, 0), (15, 3)]);
        assert_eq!(
            evaluate(&s, Owner::Member, 1_000, 2_000, STOP_AFTER),
            Status::Ok
        );
    }

    #[test]
    fn a_fixed_offset_with_lag_is_stall_when_owned_and_stop_when_not() {
        let s = w(&[(10, 5), (10, 6), (10, 9)]);
        assert_eq!(
            evaluate(&s, Owner::Member, 0, 2_000, STOP_AFTER),
            Status::Stall
        );
        assert_eq!(
            evaluate(&s, Owner::Nobody, 0, 2_000, STOP_AFTER),
            Status::Stop
        );
    }

    #[test]
    fn no_move_for_longer_than_stop_after_is_stop() {
        let s = w(&[(10, 5), (11, 6), (12, 9)]);
        assert_eq!(
            evaluate(&s, Owner::Member, 0, 61_000, STOP_AFTER),
            Status::Stop
        );
    }

    #[test]
    fn moving_offsets_with_growing_lag_is_warning_and_shrinking_lag_ok() {
        let growing = w(&[(10, 5), (12, 5), (14, 8)]);
        assert_eq!(
            evaluate(&growing, Owner::Member, 2_000, 2_000, STOP_AFTER),
            Status::Warning
        );
        let shrinking = w(&[(10, 5), (12, 7), (20, 2)]);
        assert_eq!(
            evaluate(&shrinking, Owner::Member, 2_000, 2_000, STOP_AFTER),
            Status::Ok
        );
    }

    #[test]
    fn an_offset_going_back_is_rewind() {
        let s = w(&[(10, 5), (4, 11), (6, 9)]);
        assert_eq!(
            evaluate(&s, Owner::Nobody, 2_000, 2_000, STOP_AFTER),
            Status::Rewind
        );
    }

    #[test]
    fn lag_in_a_group_without_members_is_stop_at_once() {
        let s = w(&[(10, 5)]);
        assert_eq!(
            evaluate(&s, Owner::NoMembers, 0, 0, STOP_AFTER),
            Status::Stop
        );
        assert_eq!(evaluate(&s, Owner::Nobody, 0, 0, STOP_AFTER), Status::Ok);
        let caught_up = w(&[(10, 0)]);
        assert_eq!(
            evaluate(&caught_up, Owner::NoMembers, 0, 0, STOP_AFTER),
            Status::Ok
        );
    }

    #[test]
    fn one_sample_is_not_enough_to_judge() {
        let s = w(&[(10, 5)]);
        assert_eq!(evaluate(&s, Owner::Member, 0, 0, STOP_AFTER), Status::Ok);
        assert_eq!(evaluate(&[], Owner::Member, 0, 0, STOP_AFTER), Status::Ok);
    }
}
