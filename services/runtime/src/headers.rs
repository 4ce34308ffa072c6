//! Record headers verdict reads and writes.
//!
//! Dead letters keep the original key and value bytes untouched and carry headers
//! in the style of Kafka Connect's `errors.deadletterqueue.context.headers.enable`,
//! under the `verdict.errors.` prefix. Retries carry the attempt count, the
//! not-before time and the same original coordinates. A record whose copy does not fit the
//! topic is dead-lettered as a stub: no value, its size and sha256 in headers.

use rdkafka::message::{BorrowedHeaders, Header, OwnedHeaders};

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
/// On a record of a shadow run's input: replayed only to build state (see
/// `engine.shadow_warmup`), decided by no one.
pub const SHADOW_WARMUP: &str = "verdict.shadow.warmup";
pub const ORIGINAL_SIZE: &str = "verdict.errors.original.size";
pub const ORIGINAL_SHA256: &str = "verdict.errors.original.sha256";

/// A record's headers in order, values as bytes: headers verdict does not know (including
/// non-UTF-8 values) travel unchanged to the retry and dead-letter topics; a key that is not
/// UTF-8 travels read lossily.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeaderMap(pub Vec<(String, Vec<u8>)>);

impl HeaderMap {
    /// A key that is not UTF-8 is read lossily (U+FFFD), as Kafka's Java client reads it.
    pub fn from_kafka(headers: Option<&BorrowedHeaders>) -> Self {
        Self(headers.map(native::read).unwrap_or_default())
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

    /// The bytes of every key and value (what the headers add to a record's size).
    pub fn byte_len(&self) -> usize {
        self.0.iter().map(|(k, v)| k.len() + v.len()).sum()
    }

    /// Adds a header whose key is any bytes, as other Kafka clients may send (rdkafka's own
    /// `insert` takes only a `&str` key).
    pub fn insert_bytes(mut headers: OwnedHeaders, key: &[u8], value: &[u8]) -> OwnedHeaders {
        native::add(&mut headers, key, value);
        headers
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

/// librdkafka's headers read and written by index and length. rdkafka's `Headers::try_get`
/// unwraps the key's UTF-8 check, so a record whose header key is not UTF-8 (any client may
/// send one) would panic whatever reads it. Here a key is read lossily, as Kafka's Java client
/// reads it.
mod native {
    #![allow(unsafe_code)]

    use std::ffi::{CStr, c_char, c_void};

    use rdkafka::bindings::{
        rd_kafka_header_add, rd_kafka_header_get_all, rd_kafka_headers_t, rd_kafka_resp_err_t,
    };
    use rdkafka::message::{BorrowedHeaders, OwnedHeaders};

    /// The librdkafka headers behind `h`. rdkafka hands out `&BorrowedHeaders` only as the
    /// address of a live `rd_kafka_headers_t` (`OwnedHeaders::as_borrowed`, the messages'
    /// `headers()`), and reads it back the same way (`BorrowedHeaders::as_native_ptr`).
    fn ptr(h: &BorrowedHeaders) -> *mut rd_kafka_headers_t {
        std::ptr::from_ref(h).cast_mut().cast()
    }

    /// Every header as (key, value); a key that is not UTF-8 is read lossily, a null value as
    /// empty.
    pub(super) fn read(h: &BorrowedHeaders) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for idx in 0.. {
            let (mut name, mut value, mut size) = (std::ptr::null(), std::ptr::null(), 0usize);
            // SAFETY: `ptr(h)` is a live headers list for the borrow of `h`; librdkafka writes
            // the three out-pointers only when `idx` is in range and returns an error past the
            // end. The name it returns is NUL-terminated (librdkafka copies it with a
            // terminator); the value is `size` bytes, or null.
            let err = unsafe {
                rd_kafka_header_get_all(ptr(h), idx, &raw mut name, &raw mut value, &raw mut size)
            };
            if err != rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                break;
            }
            // SAFETY: as above; both are copied before `h`'s borrow ends.
            let (key, bytes) = unsafe {
                (
                    CStr::from_ptr(name).to_string_lossy().into_owned(),
                    if value.is_null() {
                        Vec::new()
                    } else {
                        std::slice::from_raw_parts(value.cast::<u8>(), size).to_vec()
                    },
                )
            };
            out.push((key, bytes));
        }
        out
    }

    /// Appends a header whose key is any bytes.
    pub(super) fn add(h: &mut OwnedHeaders, key: &[u8], value: &[u8]) {
        // SAFETY: an `OwnedHeaders` is a writable list it owns; librdkafka copies the key and
        // the value (lengths given, so neither needs a terminator) before returning. Lengths
        // of slices fit in `isize`.
        let err = unsafe {
            rd_kafka_header_add(
                ptr(h.as_borrowed()),
                key.as_ptr().cast::<c_char>(),
                key.len().cast_signed(),
                value.as_ptr().cast::<c_void>(),
                value.len().cast_signed(),
            )
        };
        debug_assert_eq!(err, rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR);
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::message::Headers;

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

    #[test]
    fn a_key_that_is_not_utf8_is_read_lossily() {
        let owned = HeaderMap::insert_bytes(
            OwnedHeaders::new().insert(Header {
                key: "first",
                value: Some("1"),
            }),
            b"\xffk\xfe",
            b"v",
        )
        .insert(Header {
            key: "empty",
            value: None::<&[u8]>,
        });
        let h = HeaderMap::from_kafka(Some(owned.as_borrowed()));
        assert_eq!(
            h.0,
            vec![
                ("first".to_string(), b"1".to_vec()),
                ("\u{fffd}k\u{fffd}".to_string(), b"v".to_vec()),
                ("empty".to_string(), Vec::new()),
            ]
        );
    }
}
