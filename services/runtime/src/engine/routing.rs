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
    headers.set(
        headers::ERROR_MESSAGE,
        truncated(error.to_string(), MAX_ERROR_MESSAGE_CHARS),
    );
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

/// The longest error message a failure header carries (a reason may quote input).
pub const MAX_ERROR_MESSAGE_CHARS: usize = 1024;

/// `text` cut to at most `max` characters (on a character boundary), marked when cut.
fn truncated(mut text: String, max: usize) -> String {
    if let Some((at, _)) = text.char_indices().nth(max) {
        text.truncate(at);
        text.push('…');
    }
    text
}

/// The dead-letter headers of a record whose copy does not fit the topic (`why`: the
/// producer's or the broker's refusal): only the failure headers (the record's own headers
/// may be what made it too large), the record's key + value size and its value's sha256, and
/// the reason extended by why the dead letter is a stub. `headers` are the record's failure
/// headers from [`failure_headers`] (for a retry or a dead letter: the retry headers are left
/// out with the record's own, and the stub counts `attempts`).
pub fn stub_headers(
    headers: HeaderMap,
    attempts: u32,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    why: &impl std::fmt::Display,
) -> HeaderMap {
    let mut stub = HeaderMap(
        headers
            .0
            .into_iter()
            .filter(|(k, _)| k.starts_with("verdict.errors."))
            .collect(),
    );
    stub.set(headers::ATTEMPTS, attempts.to_string());
    let size = key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len);
    stub.set(headers::ORIGINAL_SIZE, size.to_string());
    stub.set(
        headers::ORIGINAL_SHA256,
        crate::models::sha256_hex(value.unwrap_or_default()),
    );
    let reason = stub.get(headers::ERROR_MESSAGE).unwrap_or_default();
    let reason = format!(
        "{reason}; the record ({size} bytes) is dead-lettered as a stub, its copy was refused: {}",
        truncated(why.to_string(), 256)
    );
    stub.set(headers::ERROR_MESSAGE, reason);
    stub
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
    fn the_failure_headers_fit_in_the_headroom_producers_leave() {
        // The largest they get: a 249-character topic name (Kafka's longest), a message of
        // four-byte characters cut at its cap, the retry headers and a trace.
        let origin = Origin {
            topic: "t".repeat(249),
            partition: i32::MAX,
            offset: i64::MAX,
            timestamp_ms: Some(i64::MAX),
        };
        let e = ProcessError::transient("score", "\u{1d11e}".repeat(5_000));
        let mut h = HeaderMap::default();
        h.set(
            headers::TRACEPARENT,
            format!("00-{}-{}-01", "a".repeat(32), "b".repeat(16)),
        );
        let retry = route(&e, 1, &steps(), "in.dlq", i64::MAX / 2);
        let h = failure_headers(h, &origin, &e, "document-analyzer", &retry, i64::MAX);
        // Each header also costs its varint lengths and a count: under 16 bytes.
        let bytes: usize = h.0.iter().map(|(k, v)| k.len() + v.len() + 16).sum();
        assert!(
            bytes + 512 < crate::record_limit::DEAD_LETTER_HEADROOM,
            "{bytes} bytes of failure headers"
        );
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

    #[test]
    fn error_messages_are_capped_on_a_character_boundary() {
        let e = ProcessError::invalid("merchant_id", "é".repeat(5_000));
        let dead = Routing::DeadLetter {
            topic: "in.dlq".into(),
            attempts: 1,
        };
        let origin = Origin {
            topic: "in".into(),
            partition: 0,
            offset: 1,
            timestamp_ms: None,
        };
        let h = failure_headers(HeaderMap::default(), &origin, &e, "svc", &dead, 0);
        let message = h.get(headers::ERROR_MESSAGE).unwrap_or_default();
        assert_eq!(message.chars().count(), MAX_ERROR_MESSAGE_CHARS + 1);
        assert!(message.ends_with("é…"), "{message}");
        assert_eq!(truncated("short".into(), 10), "short");
    }

    #[test]
    fn a_stub_keeps_only_the_failure_headers_and_says_what_it_stands_for() {
        let mut h = HeaderMap::default();
        h.0.push(("huge".into(), vec![b'x'; 10_000]));
        h.set(headers::ERROR_CLASS, "Invalid");
        h.set(headers::ERROR_MESSAGE, "amount: -1 is not positive");
        h.set(headers::ORIGINAL_OFFSET, "7");
        h.set(headers::ATTEMPT, "2");
        let stub = stub_headers(h, 2, Some(b"key"), Some(b"abc"), &"MessageSizeTooLarge");
        assert_eq!(
            stub.get(headers::ATTEMPT),
            None,
            "a stub is a dead letter, not a retry"
        );
        assert_eq!(stub.get(headers::ATTEMPTS), Some("2"));
        assert_eq!(
            stub.get("huge"),
            None,
            "the record's own headers are left out"
        );
        assert_eq!(stub.get(headers::ORIGINAL_OFFSET), Some("7"));
        assert_eq!(stub.get(headers::ORIGINAL_SIZE), Some("6"));
        assert_eq!(
            stub.get(headers::ORIGINAL_SHA256),
            Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
            "sha256(\"abc\")"
        );
        let message = stub.get(headers::ERROR_MESSAGE).unwrap_or_default();
        assert!(
            message.starts_with("amount: -1 is not positive; the record (6 bytes)")
                && message.ends_with("MessageSizeTooLarge"),
            "{message}"
        );
    }
}
