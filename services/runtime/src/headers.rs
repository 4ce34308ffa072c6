//! Record headers verdict reads and writes.
//!
//! Dead letters keep the original key and value bytes untouched and carry headers
//! in the style of Kafka Connect's `errors.deadletterqueue.context.headers.enable`,
//! under the `verdict.errors.` prefix. Retries carry the attempt count, the
//! not-before time and the same original coordinates. A record whose copy does not fit the
//! topic is dead-lettered as a stub: no value, its size and sha256 in headers.

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
/// On a stub: the failed record's key + value size in bytes, and its value's sha256 (hex).
pub const ORIGINAL_SIZE: &str = "verdict.errors.original.size";
pub const ORIGINAL_SHA256: &str = "verdict.errors.original.sha256";

/// A record's headers in order, values as bytes: headers verdict does not know (including
/// non-UTF-8 ones) travel unchanged to the retry and dead-letter topics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeaderMap(pub Vec<(String, Vec<u8>)>);

impl HeaderMap {
    pub fn from_kafka(headers: Option<&BorrowedHeaders>) -> Self {
        let mut out = Vec::new();
        if let Some(h) = headers {
            for header in h.iter() {
                out.push((
                    header.key.to_string(),
                    header.value.map(<[u8]>::to_vec).unwrap_or_default(),
                ));
            }
        }
        Self(out)
    }

    /// The last value of `key`, if it is UTF-8.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// Sets `key`, replacing earlier values.
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        self.0.retain(|(k, _)| k != key);
        self.0.push((key.to_string(), value.into().into_bytes()));
    }

    /// Removes every value of `key`.
    pub fn remove(&mut self, key: &str) {
        self.0.retain(|(k, _)| k != key);
    }

    /// Sets `key` only if it is absent (keeps the first failure's coordinates).
    pub fn set_if_absent(&mut self, key: &str, value: impl Into<String>) {
        if !self.0.iter().any(|(k, _)| k == key) {
            self.0.push((key.to_string(), value.into().into_bytes()));
        }
    }

    pub fn to_kafka(&self) -> OwnedHeaders {
        self.0.iter().fold(
            OwnedHeaders::new_with_capacity(self.0.len()),
            |h, (k, v)| {
                h.insert(Header {
                    key: k,
                    value: Some(v.as_slice()),
                })
            },
        )
    }

    /// The attempt number a retry record carries (1 when absent or not a number).
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

    #[test]
    fn non_utf8_values_are_kept() {
        let owned = OwnedHeaders::new()
            .insert(Header {
                key: "bin",
                value: Some(&[0xff_u8, 0xfe, 0x00][..]),
            })
            .insert(Header {
                key: "text",
                value: Some("a"),
            });
        let borrowed: &BorrowedHeaders = owned.as_borrowed();
        let h = HeaderMap::from_kafka(Some(borrowed));
        assert_eq!(h.get("bin"), None, "not UTF-8, so not a string");
        assert_eq!(h.get("text"), Some("a"));
        let back = h.to_kafka();
        let values: Vec<Option<&[u8]>> = back.iter().map(|x| x.value).collect();
        assert_eq!(
            values,
            vec![Some(&[0xff_u8, 0xfe, 0x00][..]), Some(&b"a"[..])]
        );
    }
}
