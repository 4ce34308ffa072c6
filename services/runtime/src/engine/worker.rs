//! One record's I/O: decode it, run the processor, write its outputs and wait for the
//! broker's acknowledgements; if any of that fails (or panics), send the record to the retry
//! or dead-letter topic that [`routing`](super::routing) chooses.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;
use rdkafka::message::{Message, OwnedHeaders, OwnedMessage};
use tracing::Instrument;

use super::output::{Outbound, Output, SendError};
use super::routing::{self, Origin, Routing};
use super::store::{ChangelogWrite, RecordState};
use super::{Incoming, Outgoing, OutputTopic, Processor, Route};
use crate::error::ProcessError;
use crate::headers::{self, HeaderMap};
use crate::metrics::Metrics;
use crate::serde::Codec;
use crate::{now_ms, telemetry};

/// The longest key a dead-letter stub keeps (a longer one is left out; its size counts).
const MAX_STUB_KEY_BYTES: usize = 4096;

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
    pub(crate) codec: Codec,
    pub(crate) output: Output,
    pub(crate) route: Route,
    pub(crate) metrics: Arc<Metrics>,
    /// `engine.shadow_warmup`.
    pub(crate) shadow_warmup: bool,
}

impl<P: Processor> Worker<P> {
    pub(crate) async fn handle(&self, msg: &OwnedMessage) -> Outcome {
        let headers = HeaderMap::from_kafka(msg.headers().map(|h| h.as_borrowed()));
        // Only a retry topic's records are on a later attempt; a record on the input topic
        // is a first attempt whatever its headers say (a redriven dead letter, say).
        let attempt = if msg.topic() == self.route.input {
            1
        } else {
            headers.attempt()
        };
        // A span per record only when someone follows it: spans are exported, or the record
        // carries a trace to continue.
        let span = if telemetry::exporting() || headers.get(headers::TRACEPARENT).is_some() {
            let span = tracing::info_span!(
                "record",
                otel.name = %format_args!("process {}", msg.topic()),
                otel.kind = "consumer",
                otel.status_code = tracing::field::Empty,
                otel.status_description = tracing::field::Empty,
                service = %self.route.service,
                topic = msg.topic(),
                partition = msg.partition(),
                offset = msg.offset(),
                // Signed: tracing-opentelemetry writes unsigned values as text.
                attempt = i64::from(attempt),
                event_id = tracing::field::Empty,
                trace_id = tracing::field::Empty,
            );
            telemetry::continue_trace(&span, &headers);
            telemetry::record_trace_id(&span);
            span
        } else {
            tracing::Span::none()
        };
        async {
            let state = RecordState::new(
                msg.partition(),
                msg.offset(),
                msg.timestamp().to_millis(),
                attempt == 1,
                &headers,
            );
            let attempt_result = AssertUnwindSafe(self.attempt(msg, attempt, &state))
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| Err(ProcessError::Panic(panic_message(panic.as_ref()))));
            match attempt_result {
                Ok(()) => Outcome::Processed,
                // Boxed: failures are rare, and every record's task would carry its space.
                Err(e) => {
                    telemetry::record_failure(&e);
                    let memo = state.memo();
                    let changes = state.take_writes();
                    drop(state);
                    Box::pin(self.route_failure(msg, headers, memo, changes, attempt, e)).await
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn attempt(
        &self,
        msg: &OwnedMessage,
        attempt: u32,
        state: &RecordState<'_>,
    ) -> Result<(), ProcessError> {
        let value = self
            .codec
            .decode(msg.payload())
            .instrument(telemetry::stage_span("decode"))
            .await?;
        let key = msg.key().map(String::from_utf8_lossy);
        let incoming = Incoming {
            topic: msg.topic(),
            partition: msg.partition(),
            offset: msg.offset(),
            timestamp_ms: msg.timestamp().to_millis(),
            key: key.as_deref(),
            value,
            raw: msg.payload().unwrap_or_default(),
            attempt,
            state,
        };
        let outputs = self.processor.process(incoming).await?;
        if self.shadow_warmup && attempt == 1 && state.carries(headers::SHADOW_WARMUP) {
            // Replayed to build a shadow run's state: its changes, no decision.
            return self.write(Vec::new(), state.take_writes()).await;
        }
        self.write(outputs, state.take_writes())
            .instrument(telemetry::stage_span("produce"))
            .await
    }

    /// Encodes every output, sends them all with the record's state changes, and waits until
    /// the broker acknowledged each. The values are dropped once encoded, and the encoded
    /// bytes once the producer has copied them: while the broker acknowledges, a record holds
    /// only its input.
    async fn write(
        &self,
        outputs: Vec<Outgoing<P::Output>>,
        changes: Vec<ChangelogWrite>,
    ) -> Result<(), ProcessError> {
        let trace = trace_headers();
        let mut encoded = Vec::with_capacity(outputs.len());
        for Outgoing { topic, key, value } in outputs {
            let bytes = topic.encode(&self.codec, &value).await?;
            encoded.push((topic, key, bytes));
        }
        let sends = encoded.iter().map(|(topic, key, bytes)| Outbound {
            topic: topic.name(),
            partition: None,
            key: key.as_deref().map(str::as_bytes),
            value: Some(bytes),
            headers: trace.clone(),
        });
        let output_error = |e: SendError| ProcessError::Output(e.to_string());
        let pending = self.output.send_all(sends).await.map_err(output_error)?;
        let state = if changes.is_empty() {
            None
        } else {
            let sends = changes.iter().map(ChangelogWrite::outbound);
            Some(self.output.send_all(sends).await.map_err(output_error)?)
        };
        let topics: Vec<OutputTopic> = encoded.into_iter().map(|(topic, ..)| topic).collect();
        pending.acked().await.map_err(output_error)?;
        if let Some(state) = state {
            state.acked().await.map_err(output_error)?;
        }
        for topic in &topics {
            topic.records_out(&self.metrics).inc();
        }
        Ok(())
    }

    /// Sends a failed record to its retry or dead-letter topic, with what the attempt
    /// remembered (`memo`) and its state changes (the record happened, whatever became of it).
    async fn route_failure(
        &self,
        msg: &OwnedMessage,
        mut headers: HeaderMap,
        memo: Vec<(String, String)>,
        changes: Vec<ChangelogWrite>,
        attempt: u32,
        error: ProcessError,
    ) -> Outcome {
        for (name, value) in memo {
            headers.set(&name, value);
        }
        // The copy continues this attempt's trace: its retry (or a redrive of the dead
        // letter) is a child of the attempt that failed.
        let attempt_span = tracing::Span::current();
        if !attempt_span.is_disabled() {
            telemetry::inject_trace(&attempt_span, &mut headers);
        }
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
        // The record's coordinates on the line itself: an untraced record has no span to
        // carry them.
        let outcome = match &routing {
            Routing::Retry { topic, .. } => {
                tracing::info!(
                    error = %error,
                    retry_topic = %topic,
                    topic = msg.topic(),
                    partition = msg.partition(),
                    offset = msg.offset(),
                    attempt,
                    "retrying later"
                );
                Outcome::Retried
            }
            Routing::DeadLetter { topic, .. } => {
                tracing::warn!(
                    error = %error,
                    dlq = %topic,
                    topic = msg.topic(),
                    partition = msg.partition(),
                    offset = msg.offset(),
                    attempt,
                    "dead-lettering record"
                );
                Outcome::DeadLettered(error.class())
            }
        };
        let send = Outbound {
            topic: routing.topic(),
            partition: None,
            key: msg.key(),
            value: msg.payload(),
            headers: Some(headers.to_kafka()),
        };
        match self.output.write_all(with_changes(send, &changes)).await {
            Ok(()) => outcome,
            Err(e) if e.too_large() => {
                let headers = routing::stub_headers(headers, attempt, msg.key(), msg.payload(), &e);
                self.dead_letter_stub(msg, headers, &changes, error.class())
                    .await
            }
            Err(e) => Outcome::Fatal(format!("cannot route a failed record to {e}")),
        }
    }

    /// A record whose retry or dead-letter copy does not fit its topic goes to the
    /// dead-letter topic as a stub: no value, only the failure headers, its size and hash
    /// (the record stays readable at its coordinates until retention removes it).
    async fn dead_letter_stub(
        &self,
        msg: &OwnedMessage,
        headers: HeaderMap,
        changes: &[ChangelogWrite],
        class: &'static str,
    ) -> Outcome {
        let topic = &self.route.dead_letter_topic;
        tracing::warn!(
            dlq = %topic,
            topic = msg.topic(),
            partition = msg.partition(),
            offset = msg.offset(),
            "dead-lettering a stub of a record too large to copy"
        );
        let send = Outbound {
            topic,
            partition: None,
            key: msg.key().filter(|k| k.len() <= MAX_STUB_KEY_BYTES),
            value: None,
            headers: Some(headers.to_kafka()),
        };
        match self.output.write_all(with_changes(send, changes)).await {
            Ok(()) => {
                self.metrics.dead_letter_stubs.inc();
                Outcome::DeadLettered(class)
            }
            Err(e) => Outcome::Fatal(format!("cannot dead-letter a stub to {e}")),
        }
    }
}

/// A failed record's copy and its state changes, sent together.
fn with_changes<'a>(
    send: Outbound<'a>,
    changes: &'a [ChangelogWrite],
) -> std::vec::IntoIter<Outbound<'a>> {
    let mut sends: Vec<Outbound<'a>> = changes.iter().map(ChangelogWrite::outbound).collect();
    sends.push(send);
    sends.into_iter()
}

/// The `traceparent` of a record's outputs: the current span's, when the record is traced
/// (spans are exported, or it came with a trace); none otherwise, as no one follows it.
fn trace_headers() -> Option<OwnedHeaders> {
    let span = tracing::Span::current();
    if span.is_disabled() {
        return None;
    }
    let mut trace = HeaderMap::default();
    telemetry::inject_trace(&span, &mut trace);
    Some(trace.to_kafka())
}

/// The message a panic carried (`panic!("…")` gives a `&str` or a `String`).
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
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
