//! The publisher: the active instance's transactional producer on the changelog.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tandem_store::{Changelog, Previous, PublishError};

use crate::{
    Replication, CHUNKS_HEADER, CHUNK_HEADER, INSTANCE_HEADER, KIND_HEADER, PREVIOUS_HEADER,
};

/// The largest chunk of a batch in one message (the broker's default limit is 1 MiB).
const CHUNK_BYTES: usize = 512 * 1024;
/// How long a transaction may take to initialize, commit or abort.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Publishes batches in transactions of the deployment's transactional id.
pub struct Publisher {
    replication: Arc<Replication>,
    producer: FutureProducer,
    /// Transactions run one at a time (the store's write lock orders them already).
    lock: Mutex<()>,
}

impl Publisher {
    /// Creates the producer and initializes its transactions: from here on, the previous
    /// holder of the transactional id is fenced and its open transaction aborted.
    pub(crate) fn new(replication: Arc<Replication>) -> Result<Publisher, String> {
        let settings = &replication.settings;
        let producer: FutureProducer = settings
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
            .create()
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
        let topic = self.replication.settings.topic.clone();
        let mut deliveries = Vec::with_capacity(messages.len());
        for (headers, payload) in &messages {
            let record = FutureRecord::<(), [u8]>::to(&topic)
                .partition(0)
                .payload(payload)
                .headers(headers.clone());
            match self.producer.send_result(record) {
                Ok(delivery) => deliveries.push(delivery),
                Err((error, _)) => {
                    let failure = self.failed("send", &error);
                    let _ = self.producer.abort_transaction(TRANSACTION_TIMEOUT);
                    return Err(failure);
                }
            }
        }
        if let Err(error) = self.producer.commit_transaction(TRANSACTION_TIMEOUT) {
            let failure = self.failed("commit", &error);
            let _ = self.producer.abort_transaction(TRANSACTION_TIMEOUT);
            return Err(failure);
        }
        let last = deliveries
            .pop()
            .expect("invariant: a transaction sends at least one message");
        match futures::executor::block_on(last) {
            Ok(Ok(delivery)) => Ok(delivery.offset),
            Ok(Err((error, _))) => Err(self.failed("delivery", &error)),
            Err(_) => Err(self.failed("delivery", &KafkaError::Canceled)),
        }
    }

    /// Why a step of a transaction failed; fencing is told apart.
    fn failed(&self, step: &str, error: &KafkaError) -> PublishError {
        let fenced = match error {
            KafkaError::Transaction(error) => error.is_fatal() || is_fencing(error.code()),
            other => other.rdkafka_error_code().is_some_and(is_fencing),
        };
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

fn is_fencing(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::TransactionCoordinatorFenced
    )
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
