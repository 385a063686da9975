//! Replication's metrics: role, epoch, lag, and the batches sent and applied.

use prometheus::{IntCounter, IntGauge, IntGaugeVec, Opts, Registry};

use crate::{ReplicationView, Role};

/// The replication series of `/metrics`.
#[derive(Clone)]
pub struct ReplicationMetrics {
    role: IntGaugeVec,
    epoch: IntGauge,
    lag: IntGauge,
    published_batches: IntCounter,
    published_bytes: IntCounter,
    applied_batches: IntCounter,
    applied_bytes: IntCounter,
}

impl ReplicationMetrics {
    /// Creates the series and registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<ReplicationMetrics> {
        let metrics = ReplicationMetrics {
            role: IntGaugeVec::new(
                Opts::new(
                    "tandem_replication_role",
                    "This instance's replication role (1 for the role it has now)",
                ),
                &["role"],
            )?,
            epoch: IntGauge::new(
                "tandem_replication_epoch",
                "The changelog offset of the latest takeover this instance knows of (grows with every takeover)",
            )?,
            lag: IntGauge::new(
                "tandem_replication_lag_messages",
                "Changelog messages a standby has not applied yet (0 on the active instance)",
            )?,
            published_batches: IntCounter::new(
                "tandem_replication_published_batches_total",
                "Store batches published to the changelog by this instance while active",
            )?,
            published_bytes: IntCounter::new(
                "tandem_replication_published_bytes_total",
                "Bytes of store batches published to the changelog",
            )?,
            applied_batches: IntCounter::new(
                "tandem_replication_applied_batches_total",
                "Changelog batches applied by this instance while standby",
            )?,
            applied_bytes: IntCounter::new(
                "tandem_replication_applied_bytes_total",
                "Bytes of changelog batches applied",
            )?,
        };
        registry.register(Box::new(metrics.role.clone()))?;
        registry.register(Box::new(metrics.epoch.clone()))?;
        registry.register(Box::new(metrics.lag.clone()))?;
        registry.register(Box::new(metrics.published_batches.clone()))?;
        registry.register(Box::new(metrics.published_bytes.clone()))?;
        registry.register(Box::new(metrics.applied_batches.clone()))?;
        registry.register(Box::new(metrics.applied_bytes.clone()))?;
        Ok(metrics)
    }

    pub(crate) fn observe(&self, view: &ReplicationView) {
        for role in Role::ALL {
            self.role
                .with_label_values(&[role.as_str()])
                .set(i64::from(role == view.role));
        }
        self.epoch.set(view.epoch.unwrap_or(-1));
        self.lag.set(view.lag_messages.unwrap_or(0));
    }

    pub(crate) fn published(&self, bytes: usize) {
        self.published_batches.inc();
        self.published_bytes.inc_by(bytes as u64);
    }

    pub(crate) fn applied(&self, bytes: usize) {
        self.applied_batches.inc();
        self.applied_bytes.inc_by(bytes as u64);
    }
}
