//! Backup figures for Prometheus: the age of the last good backup is what the alert watches.

use std::time::Duration;

use prometheus::{Gauge, IntCounter, IntGauge, Registry};

use crate::{Manifest, Result};

/// The backup metrics of one daemon.
#[derive(Clone)]
pub struct BackupMetrics {
    last_success: Gauge,
    interval: Gauge,
    duration: Gauge,
    bytes: IntGauge,
    uploaded: IntCounter,
    failures: IntCounter,
}

impl BackupMetrics {
    /// Registers the metrics, for backups taken every `interval`.
    pub fn register(registry: &Registry, interval: Duration) -> prometheus::Result<BackupMetrics> {
        let metrics = BackupMetrics {
            last_success: Gauge::new(
                "tandem_backup_last_success_timestamp_seconds",
                "When the newest complete backup in the target was taken (Unix time; 0: none)",
            )?,
            interval: Gauge::new(
                "tandem_backup_interval_seconds",
                "How often a backup is taken (backup.interval)",
            )?,
            duration: Gauge::new(
                "tandem_backup_last_duration_seconds",
                "How long the last backup took, checkpoint and upload",
            )?,
            bytes: IntGauge::new(
                "tandem_backup_last_size_bytes",
                "Bytes of the store in the last backup",
            )?,
            uploaded: IntCounter::new(
                "tandem_backup_uploaded_bytes_total",
                "Bytes uploaded by backups (files already in the target are not sent again)",
            )?,
            failures: IntCounter::new(
                "tandem_backup_failures_total",
                "Backups that failed (the log says why)",
            )?,
        };
        metrics.interval.set(interval.as_secs_f64());
        registry.register(Box::new(metrics.last_success.clone()))?;
        registry.register(Box::new(metrics.interval.clone()))?;
        registry.register(Box::new(metrics.duration.clone()))?;
        registry.register(Box::new(metrics.bytes.clone()))?;
        registry.register(Box::new(metrics.uploaded.clone()))?;
        registry.register(Box::new(metrics.failures.clone()))?;
        Ok(metrics)
    }

    /// Sets the last success from a backup found in the target (at start: the age of the
    /// last good backup survives restarts).
    pub fn found(&self, manifest: &Manifest) {
        self.last_success
            .set(manifest.created_at.unix_timestamp_nanos() as f64 / 1e9);
        self.bytes
            .set(i64::try_from(manifest.bytes).unwrap_or(i64::MAX));
    }

    pub(crate) fn record(&self, outcome: &Result<Manifest>, took: Duration) {
        self.duration.set(took.as_secs_f64());
        match outcome {
            Ok(manifest) => {
                self.found(manifest);
                self.uploaded.inc_by(manifest.uploaded_bytes);
            }
            Err(_) => self.failures.inc(),
        }
    }
}
