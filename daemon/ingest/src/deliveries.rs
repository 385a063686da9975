//! Delivery reports of the producers that publish tandem's own messages (dead letters,
//! re-read and snapshot requests): each message carries what it stands for, and the report
//! says whether the broker acknowledged it.

use std::sync::Mutex;

use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::ClientContext;
use tracing::warn;

use crate::consumer::KAFKA_ERROR_LOG_EVERY;
use crate::quiet::Quieted;

/// Collects `(item, outcome)` for each delivered or failed message.
pub(crate) struct Deliveries<T> {
    producer: &'static str,
    reports: Mutex<Vec<(T, Result<(), String>)>>,
    /// Errors and librdkafka's own warnings repeat while a broker stays away.
    errors: Quieted,
}

impl<T> Deliveries<T> {
    /// Reports for a producer named `producer` in logs.
    pub(crate) fn new(producer: &'static str) -> Self {
        Deliveries {
            producer,
            reports: Mutex::new(Vec::new()),
            errors: Quieted::new(KAFKA_ERROR_LOG_EVERY),
        }
    }

    /// Takes every report collected so far.
    pub(crate) fn take(&self) -> Vec<(T, Result<(), String>)> {
        std::mem::take(
            &mut *self
                .reports
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }
}

impl<T: Send + Sync> ClientContext for Deliveries<T> {
    fn error(&self, error: KafkaError, reason: &str) {
        self.errors.warn_about(&error.to_string(), |suppressed| {
            warn!(producer = self.producer, %error, reason, suppressed, "producer error (the same error is logged at most every 30 s; `suppressed` counts those held back)");
        });
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        crate::consumer::librdkafka_log(&self.errors, level, facility, message);
    }
}

impl<T: Send + Sync + 'static> ProducerContext for Deliveries<T> {
    type DeliveryOpaque = Box<T>;

    fn delivery(&self, result: &DeliveryResult<'_>, item: Self::DeliveryOpaque) {
        let outcome = result
            .as_ref()
            .map(|_| ())
            .map_err(|(error, _)| error.to_string());
        self.reports
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push((*item, outcome));
    }
}
