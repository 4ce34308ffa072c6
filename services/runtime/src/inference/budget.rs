//! Spend caps per tenant over a calendar window (UTC hour, day or month).
//!
//! A tenant's spend is kept in the `spend` state store: per input partition, as every store
//! is, written to its changelog with the record's outputs and restored on assignment, so a
//! restart does not reset it. A tenant's records are spread over every input partition, so
//! its spend is the sum over all of them: the partitions held here come from the store, the
//! others from the changelog, which every instance follows from its start ([`Ledger::follow`]),
//! as a Kafka Streams global table is kept. [`BudgetSettings::standing`] decides, purely,
//! where a spend stands against the tenant's caps.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Datelike, Months, NaiveDate, Timelike, Utc};
use dashmap::DashMap;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::engine::{RecordState, Route, Store, StoreValue};
use crate::error::ProcessError;
use crate::kafka::KafkaSettings;
use crate::metrics::{Metrics, TenantLimitLabel};

/// The state store tenants' spend is kept in (`stores = { spend = … }` in the topology).
pub const STORE: &str = "spend";

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetSettings {
    /// The window spend is summed over; it starts again at each window's start.
    pub window: Window,
    /// The caps of tenants not named in `tenants` (none: no cap).
    pub default: Option<Cap>,
    /// Caps by tenant id.
    pub tenants: BTreeMap<String, Cap>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Window {
    Hour,
    #[default]
    Day,
    Month,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Cap {
    /// From this spend (US dollars) on, a warning: metric and audit note.
    pub soft_usd: Option<f64>,
    /// From this spend on, the tenant's records take `on_hard`.
    pub hard_usd: Option<f64>,
    pub on_hard: OnHard,
}

/// What a tenant's records get past its hard cap.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnHard {
    /// The stage's fallback (no model call), and the decision says `degraded: budget`.
    #[default]
    Fallback,
    /// No decision: the record is dead-lettered with the reason (redrive it in the next
    /// window, `verdict dlq redrive`).
    Refuse,
}

/// Where a tenant's spend stands against its caps.
#[derive(Clone, Debug, PartialEq)]
pub enum Standing {
    Within,
    Soft {
        spent: f64,
        limit: f64,
    },
    Hard {
        spent: f64,
        limit: f64,
        on_hard: OnHard,
    },
}

impl Standing {
    /// A note for reasons and audit records, `None` within the caps.
    pub fn note(&self, window: &str) -> Option<String> {
        match self {
            Self::Within => None,
            Self::Soft { spent, limit } => Some(format!(
                "budget: the tenant spent ${spent:.4} in {window}, past its soft limit ${limit:.4}"
            )),
            Self::Hard { spent, limit, .. } => Some(format!(
                "budget: the tenant spent ${spent:.4} in {window}, past its hard limit ${limit:.4}"
            )),
        }
    }
}

impl BudgetSettings {
    /// No tenant has a cap.
    pub fn is_empty(&self) -> bool {
        self.default.is_none() && self.tenants.is_empty()
    }

    fn cap(&self, tenant: &str) -> Option<&Cap> {
        self.tenants.get(tenant).or(self.default.as_ref())
    }

    /// Where `spent` stands against `tenant`'s caps (pure).
    pub fn standing(&self, tenant: &str, spent: f64) -> Standing {
        let Some(cap) = self.cap(tenant) else {
            return Standing::Within;
        };
        match (cap.soft_usd, cap.hard_usd) {
            (_, Some(limit)) if spent >= limit => Standing::Hard {
                spent,
                limit,
                on_hard: cap.on_hard,
            },
            (Some(limit), _) if spent >= limit => Standing::Soft { spent, limit },
            _ => Standing::Within,
        }
    }

    /// The first bad cap, as `(key under the section, message)`.
    pub fn check(&self) -> Result<(), (String, String)> {
        let named = self
            .default
            .iter()
            .map(|c| ("default".to_string(), c))
            .chain(
                self.tenants
                    .iter()
                    .map(|(t, c)| (format!("tenants.\"{t}\""), c)),
            );
        for (key, cap) in named {
            for (field, v) in [("soft_usd", cap.soft_usd), ("hard_usd", cap.hard_usd)] {
                if v.is_some_and(|v| !v.is_finite() || v < 0.0) {
                    return Err((
                        format!("{key}.{field}"),
                        "must be a non-negative number".into(),
                    ));
                }
            }
            if let (Some(s), Some(h)) = (cap.soft_usd, cap.hard_usd)
                && s > h
            {
                return Err((format!("{key}.soft_usd"), "must not exceed hard_usd".into()));
            }
        }
        Ok(())
    }
}

impl Window {
    /// `[start, end)` in ms since the epoch of the window holding `at_ms` (UTC).
    pub fn bounds(self, at_ms: i64) -> (i64, i64) {
        let at = DateTime::<Utc>::from_timestamp_millis(at_ms).unwrap_or_default();
        let day = at.date_naive();
        let start = match self {
            Self::Hour => day.and_hms_opt(at.hour(), 0, 0),
            Self::Day => day.and_hms_opt(0, 0, 0),
            Self::Month => NaiveDate::from_ymd_opt(day.year(), day.month(), 1)
                .and_then(|d| d.and_hms_opt(0, 0, 0)),
        }
        .unwrap_or_default()
        .and_utc();
        let end = match self {
            Self::Hour => start + chrono::Duration::hours(1),
            Self::Day => start + chrono::Duration::days(1),
            Self::Month => start.checked_add_months(Months::new(1)).unwrap_or(start),
        };
        (start.timestamp_millis(), end.timestamp_millis())
    }

    /// The window holding `at_ms`, named as people write it: `2026-12-05T03`, `2026-12-05`
    /// or `2026-12` (UTC).
    pub fn name(self, at_ms: i64) -> String {
        let at = DateTime::<Utc>::from_timestamp_millis(at_ms).unwrap_or_default();
        match self {
            Self::Hour => at.format("%Y-%m-%dT%H").to_string(),
            Self::Day => at.format("%Y-%m-%d").to_string(),
            Self::Month => at.format("%Y-%m").to_string(),
        }
    }
}

/// A tenant's spend in one input partition over one window: the `spend` store's value.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct Spent {
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    pub usd: f64,
}

impl StoreValue for Spent {
    fn expires_at(&self) -> i64 {
        self.window_end_ms
    }
}

impl Spent {
    fn in_window(&self, start_ms: i64) -> f64 {
        if self.window_start_ms == start_ms {
            self.usd
        } else {
            0.0
        }
    }
}

/// What a record may do under its tenant's caps ([`admit`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Admitted {
    /// Past the hard cap: take the fallback, no model call.
    pub over_budget: bool,
    /// Past a limit: what to say in reasons and on the audit record.
    pub note: Option<String>,
    /// Caps are kept at all (the audit record then says `within` too).
    kept: bool,
}

impl Admitted {
    /// The audit record's `budget` detail: the note, `within`, or nothing without caps.
    pub fn detail(&self) -> Option<&str> {
        self.kept.then(|| self.note.as_deref().unwrap_or("within"))
    }
}

/// Checks a record of `tenant` at `at_ms` against its caps before any model call: refused
/// (`Err`, dead-lettered) past a hard cap set to refuse, else admitted, over budget or not.
pub fn admit(ledger: Option<&Ledger>, tenant: &str, at_ms: i64) -> Result<Admitted, ProcessError> {
    let Some(ledger) = ledger else {
        return Ok(Admitted {
            over_budget: false,
            note: None,
            kept: false,
        });
    };
    let standing = ledger.standing(tenant, at_ms);
    let note = standing.note(&ledger.window(at_ms));
    let over_budget = match standing {
        Standing::Hard {
            on_hard: OnHard::Refuse,
            ..
        } => return Err(ProcessError::Refused(note.unwrap_or_default())),
        Standing::Hard { .. } => true,
        Standing::Within | Standing::Soft { .. } => false,
    };
    Ok(Admitted {
        over_budget,
        note,
        kept: true,
    })
}

/// Tenants' spend over every input partition, and their caps.
pub struct Ledger {
    settings: BudgetSettings,
    store: Store<Spent>,
    /// The changelog as followed: tenant → partition → spend.
    followed: Arc<DashMap<String, HashMap<i32, Spent>>>,
    metrics: Arc<Metrics>,
}

impl Ledger {
    pub fn new(settings: BudgetSettings, store: Store<Spent>, metrics: Arc<Metrics>) -> Self {
        Self {
            settings,
            store,
            followed: Arc::default(),
            metrics,
        }
    }

    /// The ledger of `route`'s `spend` store, following its changelog; `None` when no tenant
    /// has a cap (nothing is kept then).
    pub fn open(
        settings: &BudgetSettings,
        route: &Route,
        kafka: &KafkaSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Option<Self>, String> {
        if settings.is_empty() {
            return Ok(None);
        }
        let ledger = Self::new(settings.clone(), route.store(STORE)?, metrics);
        ledger
            .follow(kafka)
            .map_err(|e| format!("spend ledger: {e}"))?;
        Ok(Some(ledger))
    }

    /// Follows the store's changelog, every partition from its start, on a thread of its own
    /// until the ledger is dropped: the spend of partitions other instances hold.
    pub fn follow(&self, kafka: &KafkaSettings) -> Result<(), String> {
        let topic = self.store.changelog_topic().to_string();
        let consumer: BaseConsumer = kafka.reader_config().create().map_err(|e| e.to_string())?;
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .map_err(|e| format!("{topic}: {e}"))?;
        let mut tpl = TopicPartitionList::new();
        for t in metadata.topics() {
            for p in t.partitions() {
                tpl.add_partition_offset(&topic, p.id(), Offset::Beginning)
                    .map_err(|e| e.to_string())?;
            }
        }
        if tpl.count() == 0 {
            return Err(format!("{topic} has no partitions"));
        }
        consumer.assign(&tpl).map_err(|e| e.to_string())?;
        let followed = Arc::downgrade(&self.followed);
        std::thread::Builder::new()
            .name("spend-ledger".into())
            .spawn(move || {
                while let Some(followed) = followed.upgrade() {
                    match consumer.poll(Duration::from_millis(200)) {
                        Some(Ok(m)) => {
                            let tenant = m.key().and_then(|k| std::str::from_utf8(k).ok());
                            let spent = m.payload().map(serde_json::from_slice::<Spent>);
                            let mut parts = tenant.map(|t| followed.entry(t.to_string()).or_default());
                            match (parts.as_mut(), spent) {
                                (Some(parts), Some(Ok(s))) => {
                                    parts.insert(m.partition(), s);
                                }
                                (Some(parts), None) => {
                                    parts.remove(&m.partition());
                                }
                                _ => {}
                            }
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, %topic, "spend ledger: reading the changelog failed; reading on");
                            std::thread::sleep(Duration::from_millis(500));
                        }
                        None => {}
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// The window of `at_ms`, named.
    pub fn window(&self, at_ms: i64) -> String {
        self.settings.window.name(at_ms)
    }

    /// `tenant`'s spend in the window holding `at_ms`, over every input partition: the
    /// partitions held here from the store, the others as the changelog was followed.
    pub fn spent(&self, tenant: &str, at_ms: i64) -> f64 {
        let (start, _) = self.settings.window.bounds(at_ms);
        let mut by_partition: HashMap<i32, f64> = self
            .followed
            .get(tenant)
            .map(|parts| {
                parts
                    .iter()
                    .map(|(p, s)| (*p, s.in_window(start)))
                    .collect()
            })
            .unwrap_or_default();
        for (p, s) in self.store.local(tenant.as_bytes()) {
            let here = by_partition.entry(p).or_default();
            *here = here.max(s.in_window(start));
        }
        by_partition.values().sum()
    }

    /// Where `tenant` stands in the window holding `at_ms`; a tenant past a limit is counted
    /// in `verdict_budget_exceeded_total`.
    pub fn standing(&self, tenant: &str, at_ms: i64) -> Standing {
        if self.settings.cap(tenant).is_none() {
            return Standing::Within;
        }
        let standing = self.settings.standing(tenant, self.spent(tenant, at_ms));
        let limit = match standing {
            Standing::Within => return standing,
            Standing::Soft { .. } => "soft",
            Standing::Hard { .. } => "hard",
        };
        self.metrics
            .budget_exceeded
            .get_or_create(&TenantLimitLabel {
                tenant: self.metrics.tenant_label(tenant),
                limit,
            })
            .inc();
        standing
    }

    /// Adds `usd` to `tenant`'s spend in the record's partition, written to the changelog with
    /// the record's outputs. A later attempt from a retry topic is not counted: its partition's
    /// state is not here.
    pub fn charge(
        &self,
        record: &RecordState<'_>,
        tenant: &str,
        at_ms: i64,
        usd: f64,
    ) -> Result<(), ProcessError> {
        if usd <= 0.0 {
            return Ok(());
        }
        let (start, end) = self.settings.window.bounds(at_ms);
        self.store
            .update(record, tenant.as_bytes(), |s| {
                if s.window_start_ms != start {
                    *s = Spent {
                        window_start_ms: start,
                        window_end_ms: end,
                        usd: 0.0,
                    };
                }
                s.usd += usd;
                ((), true)
            })
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Stores;

    fn settings() -> BudgetSettings {
        BudgetSettings {
            window: Window::Day,
            default: None,
            tenants: [(
                "acme".to_string(),
                Cap {
                    soft_usd: Some(1.0),
                    hard_usd: Some(2.0),
                    on_hard: OnHard::Refuse,
                },
            )]
            .into(),
        }
    }

    #[test]
    fn spend_stands_within_then_soft_then_hard() {
        let s = settings();
        assert_eq!(s.standing("acme", 0.5), Standing::Within);
        assert_eq!(
            s.standing("acme", 1.0),
            Standing::Soft {
                spent: 1.0,
                limit: 1.0
            }
        );
        assert!(matches!(
            s.standing("acme", 2.5),
            Standing::Hard {
                on_hard: OnHard::Refuse,
                ..
            }
        ));
        assert_eq!(s.standing("other", 100.0), Standing::Within, "no cap");
    }

    #[test]
    fn windows_are_utc_calendar_hours_days_and_months() {
        // 2026-12-05T03:04:05.678Z
        let at = 1_796_439_845_678;
        let ms = |s: &str| {
            DateTime::parse_from_rfc3339(s)
                .expect("date")
                .timestamp_millis()
        };
        assert_eq!(
            Window::Hour.bounds(at),
            (ms("2026-12-05T03:00:00Z"), ms("2026-12-05T04:00:00Z"))
        );
        assert_eq!(
            Window::Day.bounds(at),
            (ms("2026-12-05T00:00:00Z"), ms("2026-12-06T00:00:00Z"))
        );
        assert_eq!(
            Window::Month.bounds(at),
            (ms("2026-12-01T00:00:00Z"), ms("2027-01-01T00:00:00Z"))
        );
        assert_eq!(Window::Day.name(at), "2026-12-05");
        assert_eq!(Window::Month.name(at), "2026-12");
    }

    #[test]
    fn bad_caps_are_named() {
        let mut s = settings();
        s.tenants.get_mut("acme").expect("acme").soft_usd = Some(3.0);
        assert_eq!(
            s.check().expect_err("soft > hard").0,
            "tenants.\"acme\".soft_usd"
        );
        s.default = Some(Cap {
            hard_usd: Some(f64::NAN),
            ..Cap::default()
        });
        assert_eq!(s.check().expect_err("nan").0, "default.hard_usd");
    }

    #[test]
    fn spend_sums_partitions_and_starts_again_each_window() {
        let stores = Stores::declared([(STORE.to_string(), "g-spend-changelog".into())].into());
        let store = stores.open::<Spent>("svc", STORE).expect("declared");
        store.open_empty(0);
        store.open_empty(1);
        let ledger = Ledger::new(settings(), store, Metrics::new("test"));
        let day = 1_796_439_845_678;
        for (partition, usd) in [(0, 0.75), (1, 0.5)] {
            let record = RecordState::detached(partition, 0, Some(day));
            ledger.charge(&record, "acme", day, usd).expect("charged");
            assert_eq!(record.take_writes().len(), 1, "to the changelog");
        }
        assert!((ledger.spent("acme", day) - 1.25).abs() < 1e-9);
        assert!(matches!(
            ledger.standing("acme", day),
            Standing::Soft { .. }
        ));
        // Another partition's spend, as followed from the changelog.
        ledger.followed.entry("acme".into()).or_default().insert(
            2,
            Spent {
                window_start_ms: Window::Day.bounds(day).0,
                window_end_ms: Window::Day.bounds(day).1,
                usd: 1.0,
            },
        );
        assert!((ledger.spent("acme", day) - 2.25).abs() < 1e-9);
        assert!(matches!(
            ledger.standing("acme", day),
            Standing::Hard { .. }
        ));
        let next_day = day + 86_400_000;
        assert!(ledger.spent("acme", next_day).abs() < 1e-9);
        ledger
            .charge(
                &RecordState::detached(0, 1, Some(next_day)),
                "acme",
                next_day,
                0.1,
            )
            .expect("charged");
        assert!((ledger.spent("acme", next_day) - 0.1).abs() < 1e-9);
    }
}
