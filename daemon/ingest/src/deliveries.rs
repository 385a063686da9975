//! Delivery reports of the producers that publish tandem's own messages (dead letters,
//! re-read and snapshot requests): each message carries what it stands for, and the report
//! says whether the broker acknowledged it.

use std::sync::Mutex;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer, ProducerContext};
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

/// How a round of an output producer ended.
pub(crate) enum RoundEnd {
    /// The reports collected say what was delivered.
    Settle,
    /// The round's transaction was aborted: nothing of it is delivered, whatever the reports
    /// say; it is sent again.
    Discard(String),
    /// Another instance took over the outputs: this one must send nothing more.
    Fenced(String),
}

impl RoundEnd {
    /// What happened, for the log.
    pub(crate) fn reason(&self) -> &str {
        match self {
            RoundEnd::Settle => "delivered",
            RoundEnd::Discard(reason) | RoundEnd::Fenced(reason) => reason,
        }
    }
}

/// How long a transaction of an output producer may take to begin, commit or abort.
const OUTPUT_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts a round of sends: with replication, a transaction of the deployment's output
/// transactional id, which a new active instance fences.
pub(crate) fn begin_round<C: ProducerContext>(
    producer: &BaseProducer<C>,
    transactional: bool,
) -> Result<(), RoundEnd> {
    if transactional {
        producer.begin_transaction().map_err(outcome_of)?;
    }
    Ok(())
}

/// Ends a round: commits its transaction (which waits for every delivery report), or,
/// without replication, serves the reports that came.
pub(crate) fn end_round<C: ProducerContext>(
    producer: &BaseProducer<C>,
    transactional: bool,
    stopping: bool,
) -> RoundEnd {
    if !transactional {
        if stopping {
            let _ = producer.flush(Duration::from_secs(5));
        } else {
            producer.poll(Duration::from_millis(100));
        }
        return RoundEnd::Settle;
    }
    // Served first in short polls: the commit's own flush would wait 100 ms per round.
    let deadline = std::time::Instant::now() + OUTPUT_TRANSACTION_TIMEOUT;
    while producer.in_flight_count() > 0 && std::time::Instant::now() < deadline {
        producer.poll(Duration::from_millis(1));
    }
    match producer.commit_transaction(OUTPUT_TRANSACTION_TIMEOUT) {
        Ok(()) => RoundEnd::Settle,
        Err(error) => {
            let _ = producer.abort_transaction(OUTPUT_TRANSACTION_TIMEOUT);
            outcome_of(error)
        }
    }
}

fn outcome_of(error: KafkaError) -> RoundEnd {
    let fenced = match &error {
        KafkaError::Transaction(error) => {
            error.is_fatal()
                || matches!(
                    error.code(),
                    RDKafkaErrorCode::Fenced
                        | RDKafkaErrorCode::ProducerFenced
                        | RDKafkaErrorCode::InvalidProducerEpoch
                )
        }
        _ => false,
    };
    if fenced {
        RoundEnd::Fenced(format!(
            "another instance took over the output topics ({error}); this one sends nothing more"
        ))
    } else {
        RoundEnd::Discard(error.to_string())
    }
}
