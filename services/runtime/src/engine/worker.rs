//! One record's I/O: decode it, run the processor, write its outputs and wait for the
//! broker's acknowledgements; if any of that fails (or panics), send the record to the retry
//! or dead-letter topic that [`routing`](super::routing) chooses.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::join_all;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::FutureProducer;
use tracing::Instrument;

use super::routing::{self, Origin, Routing};
use super::{Incoming, Outgoing, Processor, Route};
use crate::error::ProcessError;
use crate::headers::HeaderMap;
use crate::metrics::{Metrics, TopicLabel};
use crate::serde::AvroSerde;
use crate::{now_ms, telemetry};

/// How a record ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    Processed,
    Retried,
    DeadLettered(&'static str),
    /// Neither processed nor routed: the engine stops without committing it.
    Fatal(String),
}

pub(crate) struct Worker<P> {
    pub(crate) processor: P,
    pub(crate) serde: AvroSerde,
    pub(crate) producer: FutureProducer,
    pub(crate) route: Route,
    pub(crate) metrics: Arc<Metrics>,
}

impl<P: Processor> Worker<P> {
    pub(crate) async fn handle(&self, msg: &OwnedMessage) -> Outcome {
        let key = msg.key().map(|k| String::from_utf8_lossy(k).into_owned());
        let headers = HeaderMap::from_kafka(msg.headers().map(|h| h.as_borrowed()));
        // Only a retry topic's records are on a later attempt; a record on the input topic
        // is a first attempt whatever its headers say (a redriven dead letter, say).
        let attempt = if msg.topic() == self.route.input {
            1
        } else {
            headers.attempt()
        };
        let span = tracing::info_span!(
            "record",
            service = %self.route.service,
            topic = msg.topic(),
            partition = msg.partition(),
            offset = msg.offset(),
            key = key.as_deref().unwrap_or(""),
            attempt
        );
        telemetry::continue_trace(&span, &headers);
        async {
            let attempt_result = AssertUnwindSafe(self.attempt(msg, key, &headers, attempt))
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| Err(ProcessError::Panic(panic_message(panic.as_ref()))));
            match attempt_result {
                Ok(()) => Outcome::Processed,
                Err(e) => self.route_failure(msg, headers, attempt, e).await,
            }
        }
        .instrument(span)
        .await
    }

    async fn attempt(
        &self,
        msg: &OwnedMessage,
        key: Option<String>,
        headers: &HeaderMap,
        attempt: u32,
    ) -> Result<(), ProcessError> {
        let value = self.serde.decode(msg.payload()).await?;
        let incoming = Incoming {
            topic: msg.topic().to_string(),
            partition: msg.partition(),
            offset: msg.offset(),
            timestamp_ms: msg.timestamp().to_millis(),
            key,
            value,
            headers: headers.clone(),
            attempt,
        };
        let outputs = self.processor.process(&incoming).await?;
        self.write(outputs).await
    }

    /// Encodes every output, sends them all, and waits until the broker acknowledged each.
    async fn write(&self, outputs: Vec<Outgoing>) -> Result<(), ProcessError> {
        let mut trace = HeaderMap::default();
        telemetry::inject_trace(&tracing::Span::current(), &mut trace);
        let mut encoded = Vec::with_capacity(outputs.len());
        for out in outputs {
            let bytes = self
                .serde
                .encode(out.topic.name(), &out.schema, out.value)
                .await?;
            encoded.push((out.topic, out.key, bytes));
        }
        let sends = encoded.iter().map(|(topic, key, bytes)| {
            crate::producer::send(
                &self.producer,
                topic.name(),
                key.as_deref().map(str::as_bytes),
                Some(bytes),
                trace.to_kafka(),
            )
        });
        for (result, (topic, _, _)) in join_all(sends).await.into_iter().zip(&encoded) {
            result.map_err(ProcessError::Output)?;
            self.metrics
                .records_out
                .get_or_create(&TopicLabel {
                    topic: topic.name().to_string(),
                })
                .inc();
        }
        Ok(())
    }

    async fn route_failure(
        &self,
        msg: &OwnedMessage,
        headers: HeaderMap,
        attempt: u32,
        error: ProcessError,
    ) -> Outcome {
        let now = now_ms();
        let routing = routing::route(
            &error,
            attempt,
            &self.route.retry,
            &self.route.dead_letter_topic,
            now,
        );
        let origin = Origin {
            topic: msg.topic().to_string(),
            partition: msg.partition(),
            offset: msg.offset(),
            timestamp_ms: msg.timestamp().to_millis(),
        };
        let headers =
            routing::failure_headers(headers, &origin, &error, &self.route.service, &routing, now);
        let outcome = match &routing {
            Routing::Retry { topic, .. } => {
                tracing::info!(error = %error, retry_topic = %topic, "retrying later");
                Outcome::Retried
            }
            Routing::DeadLetter { topic, .. } => {
                tracing::warn!(error = %error, dlq = %topic, "dead-lettering record");
                Outcome::DeadLettered(error.class())
            }
        };
        match crate::producer::send(
            &self.producer,
            routing.topic(),
            msg.key(),
            msg.payload(),
            headers.to_kafka(),
        )
        .await
        {
            Ok(_) => outcome,
            Err(e) => Outcome::Fatal(format!(
                "cannot route a failed record to {}: {e}",
                routing.topic()
            )),
        }
    }
}

/// The message a panic carried (`panic!("…")` gives a `&str` or a `String`).
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_messages_are_read_from_either_payload() {
        let a = std::panic::catch_unwind(|| panic!("plain")).expect_err("panics");
        assert_eq!(panic_message(a.as_ref()), "plain");
        let b = std::panic::catch_unwind(|| panic!("formatted {}", 1)).expect_err("panics");
        assert_eq!(panic_message(b.as_ref()), "formatted 1");
    }
}
