//! Where a failed record goes, as a pure function of the error, its attempt and the
//! service's retry steps; and the headers it carries there.

use std::time::Duration;

use crate::error::ProcessError;
use crate::headers::{self, HeaderMap};
use crate::topology::RetryStep;

/// The destination of a record that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routing {
    /// Try again from `topic`, as attempt `attempt`, not before `not_before_ms`.
    Retry {
        topic: String,
        attempt: u32,
        not_before_ms: i64,
    },
    /// Give up: the dead-letter topic, after `attempts` attempts.
    DeadLetter { topic: String, attempts: u32 },
}

impl Routing {
    pub fn topic(&self) -> &str {
        match self {
            Routing::Retry { topic, .. } | Routing::DeadLetter { topic, .. } => topic,
        }
    }
}

/// Retryable errors go to the retry step for this attempt (attempt 1 → the first step) and
/// wait the step's delay, or the dependency's `Retry-After` when that is longer. Non-retryable
/// errors, and retryable ones past the last step, go to the dead-letter topic.
pub fn route(
    error: &ProcessError,
    attempt: u32,
    steps: &[RetryStep],
    dead_letter_topic: &str,
    now_ms: i64,
) -> Routing {
    let step = usize::try_from(attempt)
        .ok()
        .and_then(|a| steps.get(a.saturating_sub(1)));
    match step.filter(|_| error.retryable()) {
        Some(step) => {
            let delay =
                Duration::from_millis(step.delay_ms).max(error.retry_after().unwrap_or_default());
            let delay = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
            Routing::Retry {
                topic: step.topic.clone(),
                attempt: attempt.saturating_add(1),
                not_before_ms: now_ms.saturating_add(delay),
            }
        }
        None => Routing::DeadLetter {
            topic: dead_letter_topic.to_string(),
            attempts: attempt,
        },
    }
}

/// Where the failed record was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
}

/// The failed record's headers on their way to `routing`'s topic: its own headers (unknown
/// ones unchanged), the coordinates of its first failure (kept from an earlier attempt),
/// this error, and the attempt (retry) or attempt count (dead letter). A dead letter carries
/// no retry headers, so redriving it starts afresh.
pub fn failure_headers(
    mut headers: HeaderMap,
    origin: &Origin,
    error: &ProcessError,
    service: &str,
    routing: &Routing,
    now_ms: i64,
) -> HeaderMap {
    headers.set_if_absent(headers::ORIGINAL_TOPIC, origin.topic.clone());
    headers.set_if_absent(headers::ORIGINAL_PARTITION, origin.partition.to_string());
    headers.set_if_absent(headers::ORIGINAL_OFFSET, origin.offset.to_string());
    headers.set_if_absent(
        headers::ORIGINAL_TIMESTAMP,
        origin.timestamp_ms.unwrap_or(-1).to_string(),
    );
    headers.set(headers::ERROR_CLASS, error.class());
    headers.set(headers::ERROR_MESSAGE, error.to_string());
    headers.set(headers::ERROR_RETRYABLE, error.retryable().to_string());
    headers.set(headers::SERVICE, service);
    headers.set(headers::FAILED_AT, now_ms.to_string());
    match routing {
        Routing::Retry {
            attempt,
            not_before_ms,
            ..
        } => {
            headers.set(headers::ATTEMPT, attempt.to_string());
            headers.set(headers::NOT_BEFORE, not_before_ms.to_string());
        }
        Routing::DeadLetter { attempts, .. } => {
            headers.remove(headers::ATTEMPT);
            headers.remove(headers::NOT_BEFORE);
            headers.set(headers::ATTEMPTS, attempts.to_string());
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps() -> Vec<RetryStep> {
        vec![
            RetryStep {
                topic: "in.retry.1".into(),
                delay_ms: 1000,
            },
            RetryStep {
                topic: "in.retry.2".into(),
                delay_ms: 10_000,
            },
        ]
    }

    #[test]
    fn retryable_errors_walk_the_steps_then_dead_letter() {
        let e = ProcessError::transient("score", "timeout");
        assert_eq!(
            route(&e, 1, &steps(), "in.dlq", 100),
            Routing::Retry {
                topic: "in.retry.1".into(),
                attempt: 2,
                not_before_ms: 1100
            }
        );
        assert_eq!(
            route(&e, 2, &steps(), "in.dlq", 100),
            Routing::Retry {
                topic: "in.retry.2".into(),
                attempt: 3,
                not_before_ms: 10_100
            }
        );
        assert_eq!(
            route(&e, 3, &steps(), "in.dlq", 100),
            Routing::DeadLetter {
                topic: "in.dlq".into(),
                attempts: 3
            }
        );
    }

    #[test]
    fn poison_and_panics_go_straight_to_the_dead_letter_topic() {
        for e in [
            ProcessError::Decode("x".into()),
            ProcessError::Panic("boom".into()),
            ProcessError::invalid("amount", "negative"),
        ] {
            assert_eq!(
                route(&e, 1, &steps(), "in.dlq", 0),
                Routing::DeadLetter {
                    topic: "in.dlq".into(),
                    attempts: 1
                }
            );
        }
    }

    #[test]
    fn a_longer_retry_after_wins_over_the_step_delay() {
        let e = ProcessError::Transient {
            stage: "embed".into(),
            reason: "429".into(),
            retry_after: Some(Duration::from_secs(30)),
        };
        let Routing::Retry { not_before_ms, .. } = route(&e, 1, &steps(), "in.dlq", 0) else {
            panic!("retry");
        };
        assert_eq!(not_before_ms, 30_000);
    }

    #[test]
    fn dead_letters_keep_the_first_failure_and_drop_retry_headers() {
        let origin = |topic: &str, offset| Origin {
            topic: topic.into(),
            partition: 2,
            offset,
            timestamp_ms: Some(7),
        };
        let mut h = HeaderMap::default();
        h.0.push(("custom".into(), vec![0xff, 0x00]));
        let e = ProcessError::transient("score", "timeout");
        let r1 = route(&e, 1, &steps(), "in.dlq", 0);
        let h = failure_headers(h, &origin("in", 41), &e, "svc", &r1, 0);
        assert_eq!(h.get(headers::ATTEMPT), Some("2"));
        assert_eq!(h.get(headers::NOT_BEFORE), Some("1000"));
        let dead = Routing::DeadLetter {
            topic: "in.dlq".into(),
            attempts: 3,
        };
        let h = failure_headers(h, &origin("in.retry.2", 9), &e, "svc", &dead, 5);
        assert_eq!(
            h.get(headers::ORIGINAL_TOPIC),
            Some("in"),
            "first failure kept"
        );
        assert_eq!(h.get(headers::ORIGINAL_OFFSET), Some("41"));
        assert_eq!(h.get(headers::ATTEMPTS), Some("3"));
        assert_eq!(
            h.get(headers::ATTEMPT),
            None,
            "a redriven dead letter starts afresh"
        );
        assert_eq!(h.get(headers::NOT_BEFORE), None);
        assert!(
            h.0.contains(&("custom".to_string(), vec![0xff, 0x00])),
            "unknown headers travel"
        );
    }
}
