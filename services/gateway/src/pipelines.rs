//! The pipelines behind the gateway as the lag monitor sees them: each one's consumer-group
//! lag (messages and seconds, through the runtime's `GroupReader`) and members, read every
//! few seconds. Adaptive limits and `/v1/health` use it.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use serde::Serialize;
use verdict_runtime::groups::GroupReader;
use verdict_runtime::kafka::KafkaSettings;

#[derive(Debug, Clone, Serialize)]
pub struct PipelineLag {
    pub service: String,
    pub group: String,
    pub lag: i64,
    pub lag_seconds: f64,
    pub members: usize,
    pub at_ms: i64,
}

/// Lag by job kind (`transaction`, `document`).
#[derive(Default)]
pub struct Pipelines {
    pub by_kind: DashMap<String, PipelineLag>,
}

/// A pipeline: its job kind, service and consumer group.
#[derive(Debug, Clone)]
pub struct Watched {
    pub kind: String,
    pub service: String,
    pub group: String,
    /// The service's input: its partitions without a commit count from the log start (the
    /// service reads from the earliest offset), so a group that never committed shows lag.
    pub input: String,
}

/// Each watched pipeline's lag: its group's, plus the unread records of input partitions it
/// has not committed on yet (age from the first of them).
async fn read(
    kafka: &KafkaSettings,
    reader: &GroupReader,
    groups: &[String],
    watched: &[Watched],
) -> Result<Vec<PipelineLag>, verdict_runtime::kafka::KafkaError> {
    let lags = reader.describe_many(groups).await?;
    let mut out = Vec::with_capacity(watched.len());
    for (w, g) in watched.iter().zip(lags) {
        let n = i32::try_from(kafka.partition_count(&w.input).await).unwrap_or(0);
        let uncommitted: Vec<(String, i32)> = (0..n)
            .filter(|p| {
                !g.partitions
                    .iter()
                    .any(|x| x.topic == w.input && x.partition == *p && x.committed.is_some())
            })
            .map(|p| (w.input.clone(), p))
            .collect();
        let marks = reader.watermarks(uncommitted).await?;
        let unread: Vec<(String, i32, i64)> = marks
            .iter()
            .filter(|(_, (low, high))| high > low)
            .map(|((t, p), (low, _))| (t.clone(), *p, *low))
            .collect();
        let extra: i64 = marks.values().map(|(low, high)| (high - low).max(0)).sum();
        let stamps = reader.timestamps_at(unread).await?;
        let oldest = stamps
            .values()
            .map(|ts| verdict_runtime::groups::seconds_between(*ts, g.at_ms))
            .fold(0.0, f64::max);
        out.push(PipelineLag {
            service: w.service.clone(),
            group: w.group.clone(),
            lag: g.total_lag() + extra,
            lag_seconds: g.max_lag_seconds().max(oldest),
            members: g.members.len(),
            at_ms: g.at_ms,
        });
    }
    Ok(out)
}

impl Pipelines {
    /// Reads the groups' lag every `every` until the process ends.
    pub async fn watch(
        self: Arc<Self>,
        kafka: KafkaSettings,
        watched: Vec<Watched>,
        every: Duration,
    ) -> Result<(), String> {
        let reader = GroupReader::new(&kafka).map_err(|e| e.to_string())?;
        let groups: Vec<String> = watched.iter().map(|w| w.group.clone()).collect();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match read(&kafka, &reader, &groups, &watched).await {
                Ok(lags) => {
                    for (w, lag) in watched.iter().zip(lags) {
                        self.by_kind.insert(w.kind.clone(), lag);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reading the pipelines' lag"),
            }
        }
    }

    pub fn lag(&self, kind: &str) -> Option<PipelineLag> {
        self.by_kind.get(kind).map(|l| l.clone())
    }
}
