//! The publisher: the active instance's transactional producer on the changelog.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use tandem_ingest::{is_fenced, serve_deliveries};
use tandem_store::{Changelog, Previous, PublishError};

use crate::{
    Replication, CHUNKS_HEADER, CHUNK_HEADER, INSTANCE_HEADER, KIND_HEADER, PREVIOUS_HEADER,
};

/// The largest chunk of a batch in one message (the broker's default limit is 1 MiB).
const CHUNK_BYTES: usize = 512 * 1024;
/// How long a transaction may take to initialize, commit or abort.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);

/// The outcome of a transaction's deliveries: the highest offset, or the first failure.
#[derive(Default)]
struct Deliveries(Mutex<Option<Result<i64, KafkaError>>>);

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, (): ()) {
        let mut outcome = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *outcome = match (outcome.take(), result) {
            (Some(Err(first)), _) => Some(Err(first)),
            (_, Err((error, _))) => Some(Err(error.clone())),
            (Some(Ok(highest)), Ok(message)) => Some(Ok(highest.max(message.offset()))),
            (None, Ok(message)) => Some(Ok(message.offset())),
        };
    }
}

/// Publishes batches in transactions of the deployment's transactional id.
pub struct Publisher {
    replication: Arc<Replication>,
    producer: BaseProducer<Deliveries>,
    /// Transactions run one at a time (the store's write lock orders them already).
    lock: Mutex<()>,
}

impl Publisher {
    /// Creates the producer and initializes its transactions: from here on, the previous
    /// holder of the transactional id is fenced and its open transaction aborted.
    pub(crate) fn new(replication: Arc<Replication>) -> Result<Publisher, String> {
        let settings = &replication.settings;
        let producer: BaseProducer<Deliveries> = settings
            .client()
            .set("transactional.id", &settings.transactional_id)
            .set("transaction.timeout.ms", "60000")
            .set("compression.type", "lz4")
            .set("linger.ms", "0")
            // A transaction right after another waits until the broker wrote the previous
            // one's markers (CONCURRENT_TRANSACTIONS, retried): retry at once, not after the
            // default 100 ms, or every batch pays it.
            .set("retry.backoff.ms", "5")
            .set("retry.backoff.max.ms", "50")
            .set("message.timeout.ms", "60000")
            .create_with_context(Deliveries::default())
            .map_err(|error| format!("cannot create the changelog producer: {error}"))?;
        producer
            .init_transactions(TRANSACTION_TIMEOUT)
            .map_err(|error| {
                format!("cannot initialize the changelog producer's transactions: {error}")
            })?;
        Ok(Publisher {
            replication,
            producer,
            lock: Mutex::new(()),
        })
    }

    /// Commits the takeover marker; returns its offset, the new epoch.
    pub(crate) fn mark_takeover(&self) -> Result<i64, String> {
        let instance = self.replication.settings.instance.clone();
        let headers = OwnedHeaders::new()
            .insert(header(KIND_HEADER, "takeover"))
            .insert(header(INSTANCE_HEADER, &instance));
        self.transaction(vec![(headers, Vec::new())])
            .map_err(|failure| failure.message)
    }

    /// Sends `messages` in one transaction; returns the offset of the last.
    fn transaction(&self, messages: Vec<(OwnedHeaders, Vec<u8>)>) -> Result<i64, PublishError> {
        let _guard = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.replication.lease_lost.load(Ordering::Acquire) {
            return Err(PublishError {
                fenced: true,
                message: "this instance lost the lease to another one; it writes nothing more (restart it to follow as a standby)".to_owned(),
            });
        }
        self.producer
            .begin_transaction()
            .map_err(|error| self.failed("begin", &error))?;
        let deliveries = &self.producer.context().0;
        *deliveries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        let topic = self.replication.settings.topic.clone();
        for (headers, payload) in &messages {
            let record = BaseRecord::<(), [u8]>::to(&topic)
                .partition(0)
                .payload(payload)
                .headers(headers.clone());
            if let Err((error, _)) = self.producer.send(record) {
                let failure = self.failed("send", &error);
                let _ = self.producer.abort_transaction(TRANSACTION_TIMEOUT);
                return Err(failure);
            }
        }
        if !serve_deliveries(&self.producer, TRANSACTION_TIMEOUT) {
            let failure = self.failed(
                "delivery",
                &KafkaError::Flush(RDKafkaErrorCode::MessageTimedOut),
            );
            let _ = self.producer.abort_transaction(TRANSACTION_TIMEOUT);
            return Err(failure);
        }
        if let Err(error) = self.producer.commit_transaction(TRANSACTION_TIMEOUT) {
            let failure = self.failed("commit", &error);
            let _ = self.producer.abort_transaction(TRANSACTION_TIMEOUT);
            return Err(failure);
        }
        let outcome = deliveries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        match outcome {
            Some(Ok(offset)) => Ok(offset),
            Some(Err(error)) => Err(self.failed("delivery", &error)),
            None => Err(self.failed("delivery", &KafkaError::Canceled)),
        }
    }

    /// Why a step of a transaction failed; fencing is told apart.
    fn failed(&self, step: &str, error: &KafkaError) -> PublishError {
        let fenced = is_fenced(error);
        let message = if fenced {
            format!("another instance took over the changelog (transaction {step}: {error}); this one is fenced and writes nothing more (restart it to follow as a standby)")
        } else {
            format!("the changelog did not take a batch (transaction {step}: {error}); writes stop until tandem restarts, which replays the changelog from the store's position")
        };
        if fenced {
            self.replication.step_down(message.clone());
        }
        PublishError { fenced, message }
    }
}

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}

impl Changelog for Publisher {
    fn publish(&self, previous: Previous, writes: &[u8]) -> Result<i64, PublishError> {
        let chunks: Vec<&[u8]> = if writes.is_empty() {
            vec![writes]
        } else {
            writes.chunks(CHUNK_BYTES).collect()
        };
        let count = chunks.len().to_string();
        let previous = previous.header();
        let instance = &self.replication.settings.instance;
        let messages = chunks
            .iter()
            .enumerate()
            .map(|(index, chunk)| {
                let headers = OwnedHeaders::new()
                    .insert(header(KIND_HEADER, "batch"))
                    .insert(header(PREVIOUS_HEADER, &previous))
                    .insert(header(CHUNK_HEADER, &index.to_string()))
                    .insert(header(CHUNKS_HEADER, &count))
                    .insert(header(INSTANCE_HEADER, instance));
                (headers, chunk.to_vec())
            })
            .collect();
        let last = self.transaction(messages)?;
        if let Some(metrics) = &self.replication.metrics {
            metrics.published(writes.len());
        }
        Ok(last + 1)
    }
}
