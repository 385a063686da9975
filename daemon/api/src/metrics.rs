//! `/metrics`: the registry in Prometheus text format, with gauges refreshed from the report
//! at every scrape.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use prometheus::{
    Encoder, GaugeVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use tandem_core::cutover::Phase;
use tandem_core::ownership::ViolationKind;
use tandem_core::System;
use tandem_ingest::IngestMetrics;

use crate::report::Report;
use crate::{blocking, ApiContext, ApiError};

/// Gauges derived from the report at scrape time.
#[derive(Clone)]
pub(crate) struct ReportGauges {
    records: IntGaugeVec,
    parity: GaugeVec,
    oldest_divergence_age: GaugeVec,
    ingest_running: IntGauge,
    broker_reachable: IntGauge,
    rereads_outstanding: IntGauge,
    open_holes: IntGaugeVec,
    offset_losses_open: IntGaugeVec,
    lost_offsets: IntGaugeVec,
    partitions_stopped: IntGauge,
    kafka_problems: IntGauge,
    /// A counter: the store's count only grows. Each scrape adds what the store counted since
    /// the last one (a restart starts the counter again, as Prometheus expects of counters).
    violations: IntCounterVec,
    /// One scrape at a time moves the counter.
    violations_moving: Arc<std::sync::Mutex<()>>,
    /// 1 for the cutover's phase, 0 for the others.
    cutover_phase: IntGaugeVec,
}

impl ReportGauges {
    /// Creates the gauges and registers them.
    pub(crate) fn register(registry: &Registry) -> prometheus::Result<Self> {
        let gauges = ReportGauges {
            records: IntGaugeVec::new(
                Opts::new("tandem_records", "Records per entity and status"),
                &["entity", "status"],
            )?,
            parity: GaugeVec::new(
                Opts::new("tandem_parity", "Share of an entity's records that are in sync"),
                &["entity"],
            )?,
            oldest_divergence_age: GaugeVec::new(
                Opts::new(
                    "tandem_oldest_divergence_age_seconds",
                    "Age of the oldest current divergence at the reconciliation clock, 0 if none",
                ),
                &["entity"],
            )?,
            ingest_running: IntGauge::new(
                "tandem_ingest_running",
                "1 while ingestion runs, 0 while it is paused or stopped (the report says why)",
            )?,
            broker_reachable: IntGauge::new(
                "tandem_broker_reachable",
                "1 while a Kafka broker is reachable; 0 means the report is getting stale",
            )?,
            rereads_outstanding: IntGauge::new(
                "tandem_rereads_outstanding",
                "Native records that are unverified and wait for a re-read",
            )?,
            open_holes: IntGaugeVec::new(
                Opts::new(
                    "tandem_seq_holes_open",
                    "Partitions with lost events (seq jumps) not yet healed by a snapshot, per system",
                ),
                &["system"],
            )?,
            offset_losses_open: IntGaugeVec::new(
                Opts::new(
                    "tandem_offset_losses_open",
                    "Ranges of offsets the broker deleted before tandem read them, not yet healed by a snapshot, per system",
                ),
                &["system"],
            )?,
            lost_offsets: IntGaugeVec::new(
                Opts::new(
                    "tandem_lost_offsets",
                    "Offsets the broker deleted before tandem read them, over the remembered losses, per system",
                ),
                &["system"],
            )?,
            partitions_stopped: IntGauge::new(
                "tandem_partitions_stopped",
                "Partitions whose ingestion is stopped until an operator resets them (the topic was re-created)",
            )?,
            kafka_problems: IntGauge::new(
                "tandem_kafka_access_problems",
                "Topics or groups the broker refuses tandem (missing, not authorized); /readyz names them",
            )?,
            violations: IntCounterVec::new(
                Opts::new(
                    "tandem_violations_total",
                    "Writes that broke the ownership rule, per system written into and kind",
                ),
                &["system", "kind"],
            )?,
            violations_moving: Arc::default(),
            cutover_phase: IntGaugeVec::new(
                Opts::new(
                    "tandem_cutover_phase",
                    "The cutover's phase: 1 for the phase it is in, 0 for the others",
                ),
                &["phase"],
            )?,
        };
        registry.register(Box::new(gauges.cutover_phase.clone()))?;
        registry.register(Box::new(gauges.records.clone()))?;
        registry.register(Box::new(gauges.parity.clone()))?;
        registry.register(Box::new(gauges.oldest_divergence_age.clone()))?;
        registry.register(Box::new(gauges.ingest_running.clone()))?;
        registry.register(Box::new(gauges.broker_reachable.clone()))?;
        registry.register(Box::new(gauges.rereads_outstanding.clone()))?;
        registry.register(Box::new(gauges.open_holes.clone()))?;
        registry.register(Box::new(gauges.offset_losses_open.clone()))?;
        registry.register(Box::new(gauges.lost_offsets.clone()))?;
        registry.register(Box::new(gauges.partitions_stopped.clone()))?;
        registry.register(Box::new(gauges.kafka_problems.clone()))?;
        registry.register(Box::new(gauges.violations.clone()))?;
        Ok(gauges)
    }

    /// Sets every gauge (and the ingest lag) from a report.
    pub(crate) fn refresh(&self, report: &Report, ingest_metrics: &IngestMetrics) {
        for system in System::ALL {
            let ingest = match system {
                System::Source => &report.ingest.source,
                System::Target => &report.ingest.target,
            };
            ingest_metrics
                .lag
                .with_label_values(&[system.as_str()])
                .set(ingest.lag.unwrap_or(-1));
        }
        let gauges = self;
        gauges.ingest_running.set(i64::from(
            report.ingest.stopped.is_none()
                && report.ingest.paused.is_none()
                && report.ingest.stopped_partitions.is_empty(),
        ));
        gauges
            .broker_reachable
            .set(i64::from(report.ingest.broker_reachable));
        gauges
            .rereads_outstanding
            .set(i64::try_from(report.feed.rereads_outstanding).unwrap_or(i64::MAX));
        let moving = gauges
            .violations_moving
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (system, ingest) in [
            ("source", &report.ingest.source),
            ("target", &report.ingest.target),
        ] {
            for kind in [ViolationKind::NonOwnerWrite, ViolationKind::FencedWrite] {
                let stored = ingest.violations.get(&kind).copied().unwrap_or(0);
                let counter = gauges
                    .violations
                    .with_label_values(&[system, kind.as_str()]);
                counter.inc_by(stored.saturating_sub(counter.get()));
            }
        }
        drop(moving);
        for (system, feed) in [
            ("source", &report.feed.source),
            ("target", &report.feed.target),
        ] {
            let open = feed
                .holes
                .iter()
                .filter(|hole| hole.open_since.is_some())
                .count();
            gauges
                .open_holes
                .with_label_values(&[system])
                .set(i64::try_from(open).unwrap_or(i64::MAX));
            let open_losses = feed
                .lost_offsets
                .iter()
                .filter(|loss| loss.healed_at.is_none())
                .count();
            gauges
                .offset_losses_open
                .with_label_values(&[system])
                .set(i64::try_from(open_losses).unwrap_or(i64::MAX));
            let lost: u64 = feed.lost_offsets.iter().filter_map(|loss| loss.count).sum();
            gauges
                .lost_offsets
                .with_label_values(&[system])
                .set(i64::try_from(lost).unwrap_or(i64::MAX));
        }
        gauges
            .partitions_stopped
            .set(i64::try_from(report.ingest.stopped_partitions.len()).unwrap_or(i64::MAX));
        gauges
            .kafka_problems
            .set(i64::try_from(report.ingest.kafka_problems.len()).unwrap_or(i64::MAX));
        for (entity, entity_report) in &report.entities {
            for (status, count) in &entity_report.by_status {
                gauges
                    .records
                    .with_label_values(&[entity.as_str(), status.as_str()])
                    .set(i64::try_from(*count).unwrap_or(i64::MAX));
            }
            gauges
                .parity
                .with_label_values(&[entity.as_str()])
                .set(entity_report.parity);
            let age = match (entity_report.oldest_divergence_at, report.clock) {
                (Some(oldest), Some(clock)) => clock.duration_since(oldest).as_secs_f64(),
                _ => 0.0,
            };
            gauges
                .oldest_divergence_age
                .with_label_values(&[entity.as_str()])
                .set(age);
        }
    }
}

pub(crate) async fn get_metrics(
    State(context): State<Arc<ApiContext>>,
) -> Result<Response, ApiError> {
    blocking(move || {
        // One snapshot, its state decoded once: the report and the phase agree.
        let live = context.status.snapshot();
        let (report, state) = crate::report_and_state(&context, &live, &context.store.read())
            .map_err(ApiError::internal)?;
        context
            .report_gauges
            .refresh(&report, &context.ingest_metrics);
        // The counters the store holds, counted once: before ingest starts, and on a
        // standby whose store only the changelog writes.
        context.ingest_metrics.count_up_to(&state.counters);
        let phase = state.ownership.cutover.phase;
        for each in Phase::ALL {
            context
                .report_gauges
                .cutover_phase
                .with_label_values(&[each.as_str()])
                .set(i64::from(each == phase));
        }
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&context.registry.gather(), &mut buffer)
            .map_err(ApiError::internal)?;
        Ok((
            [(
                header::CONTENT_TYPE,
                TextEncoder::new().format_type().to_owned(),
            )],
            buffer,
        )
            .into_response())
    })
    .await
}
