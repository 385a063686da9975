//! Prometheus metrics of the ingest side. Counters start from the values persisted in the
//! store, so they stay monotonic across restarts and agree with `/v1/report`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};
use tandem_core::{DeadLetterReason, IngestCounters, System};

/// The ingest metrics, registered in one registry.
#[derive(Clone)]
pub struct IngestMetrics {
    events_applied: IntCounterVec,
    duplicates_dropped: IntCounterVec,
    stale_versions: IntCounterVec,
    dead_lettered: IntCounterVec,
    batches: IntCounter,
    batch_apply_seconds: Histogram,
    /// Consumer lag per system (messages), refreshed by the API at scrape time.
    pub lag: IntGaugeVec,
    /// The store's totals as far as the counters above hold them.
    counted: Arc<Mutex<Counted>>,
}

/// Totals already counted: events applied, duplicates dropped and stale versions per system
/// (in `System::ALL`'s order), and dead letters per reason.
#[derive(Default)]
struct Counted {
    systems: [[u64; 3]; 2],
    reasons: BTreeMap<DeadLetterReason, u64>,
}

impl IngestMetrics {
    /// Creates and registers the metrics.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let events_applied = IntCounterVec::new(
            Opts::new(
                "tandem_events_applied_total",
                "Distinct change events recorded, per system",
            ),
            &["system"],
        )?;
        let duplicates_dropped = IntCounterVec::new(
            Opts::new(
                "tandem_duplicates_dropped_total",
                "Re-delivered events dropped by event_id, per system",
            ),
            &["system"],
        )?;
        let stale_versions = IntCounterVec::new(
            Opts::new(
                "tandem_stale_versions_total",
                "Events older than the stored version, logged but not applied",
            ),
            &["system"],
        )?;
        let dead_lettered = IntCounterVec::new(
            Opts::new(
                "tandem_dead_lettered_total",
                "Messages sent to the dead-letter topic, per reason",
            ),
            &["reason"],
        )?;
        let batches = IntCounter::new("tandem_batches_total", "Batches committed to the store")?;
        let batch_apply_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "tandem_batch_apply_seconds",
                "Time to plan and commit one batch, from its arrival at the apply loop",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )?;
        let lag = IntGaugeVec::new(
            Opts::new(
                "tandem_consumer_lag",
                "Messages on the broker not yet applied, per system",
            ),
            &["system"],
        )?;
        registry.register(Box::new(events_applied.clone()))?;
        registry.register(Box::new(duplicates_dropped.clone()))?;
        registry.register(Box::new(stale_versions.clone()))?;
        registry.register(Box::new(dead_lettered.clone()))?;
        registry.register(Box::new(batches.clone()))?;
        registry.register(Box::new(batch_apply_seconds.clone()))?;
        registry.register(Box::new(lag.clone()))?;
        Ok(IngestMetrics {
            events_applied,
            duplicates_dropped,
            stale_versions,
            dead_lettered,
            batches,
            batch_apply_seconds,
            lag,
            counted: Arc::default(),
        })
    }

    /// Brings the counters up to the store's `counters` (at each scrape, and after each commit):
    /// only what was not counted yet is added, so a daemon may count the store's totals
    /// before its API answers and ingest may count them again at its own start. Every
    /// system's and reason's series exists from the first call on, zero or not.
    pub fn count_up_to(&self, counters: &IngestCounters) {
        let mut counted = self.counted.lock().unwrap_or_else(PoisonError::into_inner);
        for (index, system) in System::ALL.into_iter().enumerate() {
            let totals = counters.system(system);
            let label = [system.as_str()];
            let series = [
                (&self.events_applied, totals.events_applied),
                (&self.duplicates_dropped, totals.duplicates_dropped),
                (&self.stale_versions, totals.stale_versions),
            ];
            for (kind, (metric, total)) in series.into_iter().enumerate() {
                let seen = &mut counted.systems[index][kind];
                metric
                    .with_label_values(&label)
                    .inc_by(total.saturating_sub(*seen));
                *seen = (*seen).max(total);
            }
        }
        for reason in DeadLetterReason::ALL {
            let total = counters
                .dead_lettered_by_reason
                .get(&reason)
                .copied()
                .unwrap_or(0);
            let seen = counted.reasons.entry(reason).or_default();
            self.dead_lettered
                .with_label_values(&[reason.as_str()])
                .inc_by(total.saturating_sub(*seen));
            *seen = (*seen).max(total);
        }
    }

    pub(crate) fn observe_batch(&self, seconds: f64) {
        self.batches.inc();
        self.batch_apply_seconds.observe(seconds);
    }

    /// The batch apply latency histogram, for benchmarks.
    pub fn batch_apply_seconds(&self) -> &Histogram {
        &self.batch_apply_seconds
    }
}
