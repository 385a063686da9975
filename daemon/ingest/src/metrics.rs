//! Prometheus metrics of the ingest side. Counters start from the values persisted in the
//! store, so they stay monotonic across restarts and agree with `/v1/report`.

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
        })
    }

    /// Adds the difference between two counter states (after a commit, or from zero at start).
    pub fn count(&self, before: &IngestCounters, after: &IngestCounters) {
        for system in System::ALL {
            let (old, new) = (before.system(system), after.system(system));
            let label = [system.as_str()];
            self.events_applied
                .with_label_values(&label)
                .inc_by(new.events_applied.saturating_sub(old.events_applied));
            self.duplicates_dropped.with_label_values(&label).inc_by(
                new.duplicates_dropped
                    .saturating_sub(old.duplicates_dropped),
            );
            self.stale_versions
                .with_label_values(&label)
                .inc_by(new.stale_versions.saturating_sub(old.stale_versions));
        }
        for reason in DeadLetterReason::ALL {
            let old = before
                .dead_lettered_by_reason
                .get(&reason)
                .copied()
                .unwrap_or(0);
            let new = after
                .dead_lettered_by_reason
                .get(&reason)
                .copied()
                .unwrap_or(0);
            self.dead_lettered
                .with_label_values(&[reason.as_str()])
                .inc_by(new.saturating_sub(old));
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
