//! The librdkafka rebalance callbacks. They own no state: they hand the partitions to the
//! loop that owns everything ([`super::runner`]) and wait for its answer, as Vector's Kafka
//! source does. They run on the polling thread, inside `poll`, so waiting here holds the
//! rebalance until the loop has drained and said what to commit.
//!
//! The polling thread hands records over in batches, gathered here: a callback sends the
//! records polled before it first, so the loop sees records and rebalances in the order
//! librdkafka delivered them.

use std::sync::{Arc, Mutex, PoisonError};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot};

use super::state::Tp;
use crate::metrics::Metrics;

/// What the polling thread tells the loop.
pub(crate) enum Event {
    /// Records, in the order they were polled (already detached from the client's buffers).
    Records(Vec<rdkafka::message::OwnedMessage>),
    /// Partitions assigned (and resumed at the client).
    Assigned(Vec<Tp>),
    /// Partitions being revoked; the loop answers with the positions to commit once it has
    /// drained them. `lost`: the group already gave them away, so no commit will be accepted.
    Revoked {
        tps: Vec<Tp>,
        lost: bool,
        reply: oneshot::Sender<Vec<(Tp, i64)>>,
    },
    /// The client hit a fatal error (fenced, say) and will deliver nothing more: the engine
    /// stops, so that whatever supervises the process starts it afresh.
    Fatal(String),
}

pub(crate) struct EngineContext {
    pub(crate) events: mpsc::Sender<Event>,
    /// Records polled and not yet sent, with their bytes.
    batch: Mutex<(Vec<rdkafka::message::OwnedMessage>, usize)>,
    /// Where librdkafka's statistics go.
    metrics: Arc<Metrics>,
}

/// A batch is sent when it holds this many records or bytes (or the poll comes up empty).
const BATCH_RECORDS: usize = 512;
const BATCH_BYTES: usize = 1 << 20;

impl EngineContext {
    pub(crate) fn new(events: mpsc::Sender<Event>, metrics: Arc<Metrics>) -> Self {
        Self {
            events,
            metrics,
            batch: Mutex::new((Vec::new(), 0)),
        }
    }

    /// Adds a polled record to the batch; true when the batch is full.
    pub(crate) fn gather(&self, msg: rdkafka::message::OwnedMessage) -> bool {
        use rdkafka::message::Message;
        let mut batch = self.batch.lock().unwrap_or_else(PoisonError::into_inner);
        batch.1 += msg.payload().map_or(0, <[u8]>::len) + msg.key().map_or(0, <[u8]>::len);
        batch.0.push(msg);
        batch.0.len() >= BATCH_RECORDS || batch.1 >= BATCH_BYTES
    }

    /// Sends the batch gathered so far (waiting while the loop is behind); false when the
    /// loop is gone.
    pub(crate) fn flush(&self) -> bool {
        let records = {
            let mut batch = self.batch.lock().unwrap_or_else(PoisonError::into_inner);
            batch.1 = 0;
            std::mem::take(&mut batch.0)
        };
        records.is_empty() || self.events.blocking_send(Event::Records(records)).is_ok()
    }
}

impl ClientContext for EngineContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        self.metrics
            .kafka
            .observe(crate::kafka_stats::Client::Consumer, &statistics);
    }
}

fn tps_of(tpl: &TopicPartitionList) -> Vec<Tp> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().into(), e.partition()))
        .collect()
}

impl ConsumerContext for EngineContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                self.flush();
                let tps = tps_of(tpl);
                let lost = consumer.assignment_lost();
                let (reply, answer) = oneshot::channel();
                let sent = self.events.blocking_send(Event::Revoked {
                    tps: tps.clone(),
                    lost,
                    reply,
                });
                // The loop is gone (shutting down): it committed what was done already.
                let Ok(positions) = sent
                    .map_err(drop)
                    .and_then(|()| answer.blocking_recv().map_err(drop))
                else {
                    return;
                };
                if positions.is_empty() || lost {
                    return;
                }
                let mut commit = TopicPartitionList::new();
                for ((topic, partition), pos) in &positions {
                    if let Err(e) =
                        commit.add_partition_offset(topic, *partition, Offset::Offset(*pos))
                    {
                        tracing::warn!(error = %e, "cannot build the revoke commit");
                        return;
                    }
                }
                match consumer.commit(&commit, CommitMode::Sync) {
                    Ok(()) => tracing::info!(
                        partitions = positions.len(),
                        "committed done offsets of revoked partitions"
                    ),
                    Err(e) => tracing::warn!(
                        error = %e,
                        "commit on revoke failed; the new owner will see those records again"
                    ),
                }
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
            Rebalance::Assign(_) => {}
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            // librdkafka keeps a partition's pause flag across revoke and re-assign; the loop
            // starts every assigned partition unpaused, so the client must agree.
            if tpl.count() > 0
                && let Err(e) = consumer.resume(tpl)
            {
                tracing::warn!(error = %e, "resume of assigned partitions failed");
            }
            let tps = tps_of(tpl);
            tracing::info!(partitions = ?tps, "assigned");
            self.flush();
            let _ = self.events.blocking_send(Event::Assigned(tps));
        }
    }
}
