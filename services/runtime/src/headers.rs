//! Record headers verdict reads and writes.
//!
//! Dead letters keep the original key and value bytes untouched and carry headers
//! in the style of Kafka Connect's `errors.deadletterqueue.context.headers.enable`,
//! under the `verdict.errors.` prefix. Retries carry the attempt count, the
//! not-before time and the same original coordinates.

use rdkafka::message::{BorrowedHeaders, Header, Headers, OwnedHeaders};

pub const TRACEPARENT: &str = "traceparent";
pub const ATTEMPT: &str = "verdict.attempt";
pub const NOT_BEFORE: &str = "verdict.retry.not-before";
pub const ORIGINAL_TOPIC: &str = "verdict.errors.topic";
pub const ORIGINAL_PARTITION: &str = "verdict.errors.partition";
pub const ORIGINAL_OFFSET: &str = "verdict.errors.offset";
pub const ORIGINAL_TIMESTAMP: &str = "verdict.errors.timestamp";
pub const ERROR_CLASS: &str = "verdict.errors.exception.class.name";
pub const ERROR_MESSAGE: &str = "verdict.errors.exception.message";
pub const ERROR_RETRYABLE: &str = "verdict.errors.retryable";
pub const ATTEMPTS: &str = "verdict.errors.attempts";
pub const SERVICE: &str = "verdict.errors.service";
pub const FAILED_AT: &str = "verdict.errors.failed.at";

/// Header values of a record as UTF-8 strings (non-UTF-8 values are skipped).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeaderMap(pub Vec<(String, String)>);

impl HeaderMap {
    pub fn from_kafka(headers: Option<&BorrowedHeaders>) -> Self {
        let mut out = Vec::new();
        if let Some(h) = headers {
            for header in h.iter() {
                if let Some(Ok(v)) = header.value.map(std::str::from_utf8) {
                    out.push((header.key.to_string(), v.to_string()));
                }
            }
        }
        Self(out)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Sets `key`, replacing earlier values.
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        self.0.retain(|(k, _)| k != key);
        self.0.push((key.to_string(), value.into()));
    }

    /// Sets `key` only if it is absent (keeps the first failure's coordinates).
    pub fn set_if_absent(&mut self, key: &str, value: impl Into<String>) {
        if self.get(key).is_none() {
            self.0.push((key.to_string(), value.into()));
        }
    }

    pub fn to_kafka(&self) -> OwnedHeaders {
        self.0.iter().fold(
            OwnedHeaders::new_with_capacity(self.0.len()),
            |h, (k, v)| {
                h.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                })
            },
        )
    }

    /// The processing attempt this record is on (1 for a fresh record).
    pub fn attempt(&self) -> u32 {
        self.get(ATTEMPT)
            .and_then(|v| v.parse().ok())
            .filter(|&a| a >= 1)
            .unwrap_or(1)
    }

    /// Not-before time of a retried record, in ms since the epoch.
    pub fn not_before_ms(&self) -> Option<i64> {
        self.get(NOT_BEFORE).and_then(|v| v.parse().ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_replaces_and_set_if_absent_keeps() {
        let mut h = HeaderMap::default();
        h.set(ATTEMPT, "1");
        h.set(ATTEMPT, "2");
        h.set_if_absent(ORIGINAL_OFFSET, "5");
        h.set_if_absent(ORIGINAL_OFFSET, "9");
        assert_eq!(h.attempt(), 2);
        assert_eq!(h.get(ORIGINAL_OFFSET), Some("5"));
        assert_eq!(h.0.len(), 2);
        assert_eq!(HeaderMap::default().attempt(), 1);
    }
}
