//! How large a record may be so that every copy the pipeline makes of it still fits.
//!
//! A failed record is copied to a retry or dead-letter topic with the failure headers added
//! (their size is capped, see [`crate::engine::routing`]). A record that fills its topic to
//! the byte leaves no room for them: its copy would be refused and become a stub. Producers
//! (the gateway, `verdict produce`) therefore refuse a record whose key, value and headers
//! exceed the topic's limit less [`DEAD_LETTER_HEADROOM`], saying both numbers.

use std::time::{Duration, Instant};

use dashmap::DashMap;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;

use crate::kafka::{KafkaError, KafkaSettings};

/// Bytes a record leaves free under its limit for the failure headers of a copy and the
/// record's framing.
pub const DEAD_LETTER_HEADROOM: usize = 8 * 1024;
/// librdkafka's `message.max.bytes` when the settings do not set it.
const PRODUCER_DEFAULT: usize = 1_000_000;
/// Kafka's `max.message.bytes` when the broker does not say.
const TOPIC_DEFAULT: usize = 1_048_588;
/// How long a topic's limit is trusted before it is read again.
const REFRESH: Duration = Duration::from_secs(60);

/// The limits on one topic's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordLimit {
    /// The topic's `max.message.bytes`.
    pub topic: usize,
    /// The producer's `message.max.bytes`.
    pub producer: usize,
}

/// A record over its [`RecordLimit`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the record is {size} bytes; {topic} takes at most {usable} ({max} less {DEAD_LETTER_HEADROOM} \
     kept for the headers of a retry or dead-letter copy)"
)]
pub struct TooLarge {
    pub topic: String,
    pub size: usize,
    pub usable: usize,
    pub max: usize,
}

impl RecordLimit {
    /// The largest key + value + headers a producer should send.
    pub fn usable(&self) -> usize {
        self.topic
            .min(self.producer)
            .saturating_sub(DEAD_LETTER_HEADROOM)
    }

    pub fn check(&self, topic: &str, size: usize) -> Result<(), TooLarge> {
        if size <= self.usable() {
            return Ok(());
        }
        Err(TooLarge {
            topic: topic.to_string(),
            size,
            usable: self.usable(),
            max: self.topic.min(self.producer),
        })
    }
}

/// The limits of the topics a producer writes, read from the broker (one admin client) and
/// read again after a minute, so a changed `max.message.bytes` is seen.
pub struct RecordLimits {
    admin: AdminClient<DefaultClientContext>,
    producer: usize,
    topics: DashMap<String, (Instant, usize)>,
}

impl RecordLimits {
    pub fn new(kafka: &KafkaSettings) -> Result<Self, KafkaError> {
        let producer = kafka
            .properties
            .get("message.max.bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(PRODUCER_DEFAULT);
        Ok(Self {
            admin: kafka.admin()?,
            producer,
            topics: DashMap::new(),
        })
    }

    pub async fn of(&self, topic: &str) -> Result<RecordLimit, KafkaError> {
        let known = self
            .topics
            .get(topic)
            .filter(|e| e.0.elapsed() < REFRESH)
            .map(|e| e.1);
        let max = match known {
            Some(max) => max,
            None => {
                let max = self.read(topic).await?;
                self.topics.insert(topic.to_string(), (Instant::now(), max));
                max
            }
        };
        Ok(RecordLimit {
            topic: max,
            producer: self.producer,
        })
    }

    async fn read(&self, topic: &str) -> Result<usize, KafkaError> {
        let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
        let described = self
            .admin
            .describe_configs([&ResourceSpecifier::Topic(topic)], &opts)
            .await?;
        Ok(described
            .into_iter()
            .next()
            .and_then(Result::ok)
            .and_then(|r| {
                r.entries
                    .into_iter()
                    .find(|e| e.name == "max.message.bytes")
            })
            .and_then(|e| e.value?.parse().ok())
            .unwrap_or(TOPIC_DEFAULT))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_leaves_the_headroom_under_the_smaller_limit() {
        let limit = RecordLimit {
            topic: 1_048_588,
            producer: 1_000_000,
        };
        assert_eq!(limit.usable(), 1_000_000 - DEAD_LETTER_HEADROOM);
        assert!(limit.check("t", limit.usable()).is_ok());
        let err = limit
            .check("t", limit.usable() + 1)
            .expect_err("one byte over");
        assert_eq!(err.max, 1_000_000);
        assert_eq!(
            err.to_string(),
            "the record is 991809 bytes; t takes at most 991808 (1000000 less 8192 kept for the \
             headers of a retry or dead-letter copy)"
        );
    }
}
