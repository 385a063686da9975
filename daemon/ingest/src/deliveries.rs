//! Delivery reports of the producers that publish tandem's own messages (dead letters,
//! re-read and snapshot requests): each message carries what it stands for, and the report
//! says whether the broker acknowledged it.

use std::sync::Mutex;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;
use tracing::{error, warn};

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
    /// The round's transaction was aborted and its reports dropped: nothing of it counts as
    /// delivered; it is sent again.
    Discarded,
    /// The producer sends nothing more (another instance took over the outputs); what is
    /// undelivered stays in the outbox.
    Stop,
}

/// How long a transaction of an output producer may take to begin, commit or abort.
const OUTPUT_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts a round of sends: with replication, a transaction of the deployment's output
/// transactional id, which a new active instance fences. `false` (logged): the producer can
/// send nothing more.
pub(crate) fn begin_round<T: Send + Sync + 'static>(
    producer: &BaseProducer<Deliveries<T>>,
    transactional: bool,
) -> bool {
    if !transactional {
        return true;
    }
    match producer.begin_transaction() {
        Ok(()) => true,
        // Beginning fails only for a producer that cannot go on (fenced, or failed for good).
        Err(error) => {
            error!(producer = producer.context().producer, %error, "no transaction can begin; nothing more is published, undelivered messages stay in the outbox until restart");
            false
        }
    }
}

/// Ends a round: commits its transaction once every delivery report is in, or, without
/// replication, serves the reports that came.
pub(crate) fn end_round<T: Send + Sync + 'static>(
    producer: &BaseProducer<Deliveries<T>>,
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
    let served = serve_deliveries(producer, OUTPUT_TRANSACTION_TIMEOUT);
    let committed = if served {
        producer.commit_transaction(OUTPUT_TRANSACTION_TIMEOUT)
    } else {
        Err(KafkaError::Flush(RDKafkaErrorCode::MessageTimedOut))
    };
    let Err(error) = committed else {
        return RoundEnd::Settle;
    };
    let _ = producer.abort_transaction(OUTPUT_TRANSACTION_TIMEOUT);
    producer.context().take();
    let name = producer.context().producer;
    if is_fenced(&error) {
        error!(producer = name, %error, "another instance took over the output topics; this one publishes nothing more, undelivered messages stay in the outbox");
        RoundEnd::Stop
    } else {
        warn!(producer = name, %error, "a transaction of published messages was aborted; they are sent again");
        RoundEnd::Discarded
    }
}

/// Serves delivery reports until none is outstanding; `false` if some still are after
/// `timeout`.
///
/// Commit before this, and `commit_transaction` flushes first: the client's flush polls 100 ms
/// at a time, each poll lasting its whole timeout, so every commit would take 100 ms or more.
/// Polls of a millisecond serve the reports as they come.
pub fn serve_deliveries<C: ProducerContext>(producer: &BaseProducer<C>, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while producer.in_flight_count() > 0 {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        producer.poll(Duration::from_millis(1));
    }
    true
}

/// Whether a transaction failed because another instance holds the transactional id now.
pub fn is_fenced(error: &KafkaError) -> bool {
    let code = match error {
        KafkaError::Transaction(error) if error.is_fatal() => return true,
        KafkaError::Transaction(error) => error.code(),
        other => match other.rdkafka_error_code() {
            Some(code) => code,
            None => return false,
        },
    };
    matches!(
        code,
        RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::TransactionCoordinatorFenced
    )
}
