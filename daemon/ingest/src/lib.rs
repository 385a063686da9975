//! tandem's Kafka side: the consumer thread, the apply loop and the dead-letter forwarder.
//!
//! ```text
//!  consumer thread ── batches ──► apply loop ── plans ──► writer ──► store (one WriteBatch per batch)
//!   (poll, decode)  ◄─ revoke ack ─┘      └── wake ──► dead-letter forwarder ──► DLQ topic
//! ```
//!
//! Four OS threads, because each of them blocks (librdkafka polls, RocksDB writes) and none
//! of that belongs on an async runtime. All of them stop when the cancellation token fires.

mod apply;
mod consumer;
mod dead_letters;
mod deliveries;
mod disk;
mod fence;
#[cfg(test)]
mod handover_tests;
pub mod metrics;
mod poll;
pub mod quiet;
mod requests;
mod signals;
pub mod status;
mod writer;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::bounded;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::BaseProducer;
use rdkafka::ClientConfig;
use tandem_core::apply::ViewError;
use tandem_core::ownership::OwnershipPolicy;
use tandem_core::{Mapping, System, Timestamp};
use tandem_formats::FormatSettings;
use tandem_store::{Coordinates, Store};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

pub use metrics::IngestMetrics;
pub use signals::DebeziumSignals;
pub use status::{IngestSnapshot, IngestStatus, PartitionPosition, Reevaluation, StoppedPartition};

use crate::apply::ApplyLoop;
use crate::consumer::{ControlRequest, TandemConsumerContext};
use crate::dead_letters::{DeadLetterContext, DeadLetterForwarder};
use crate::deliveries::Deliveries;
use crate::poll::run_consumer;
use crate::requests::{RequestForwarder, Sent};

/// Result of an ingest operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why ingestion could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kafka client could not be created (usually a bad `[kafka.properties]` entry).
    #[error("cannot create the Kafka {client}: {source}; check [kafka] and [kafka.properties] in the configuration")]
    Client {
        /// `consumer` or `dead-letter producer`.
        client: &'static str,
        /// librdkafka's error.
        source: KafkaError,
    },
    /// Subscribing to the configured topics failed.
    #[error("cannot subscribe to {topics:?}: {source}")]
    Subscribe {
        /// The topics.
        topics: Vec<String>,
        /// librdkafka's error.
        source: KafkaError,
    },
    /// The store failed; ingestion stops so that nothing is applied half-way.
    #[error(transparent)]
    Store(tandem_store::Error),
    /// Planning a message failed because the store could not be read.
    #[error("cannot apply the message at {coordinates}: {source}")]
    Plan {
        /// Where the message was read.
        coordinates: Coordinates,
        /// The read error.
        source: ViewError,
    },
    /// Checking the feeds' transactions failed because the store could not be read.
    #[error("cannot check the feeds' transactions: {source}")]
    Settle {
        /// The read error.
        source: ViewError,
    },
    /// Listing the pending records whose grace ended failed because the store could not be
    /// read.
    #[error("cannot list the records whose grace ended: {source}")]
    Due {
        /// The read error.
        source: ViewError,
    },
    /// Re-evaluating a pending record failed because the store could not be read.
    #[error("cannot re-evaluate `{entity}` `{join_key}`: {source}")]
    Reevaluate {
        /// The entity.
        entity: String,
        /// The join key.
        join_key: String,
        /// The read error.
        source: ViewError,
    },
    /// The consumer hit an error librdkafka cannot recover from.
    #[error("the Kafka consumer stopped for good ({code}): {hint}")]
    ConsumerFatal {
        /// librdkafka's error.
        code: rdkafka::error::RDKafkaErrorCode,
        /// What it means and what to do.
        hint: &'static str,
    },
    /// An ingest thread panicked (a bug: please report it with the log).
    #[error("the {thread} thread panicked")]
    Panicked {
        /// Which thread.
        thread: &'static str,
    },
}

/// Everything the ingest side needs to know, resolved from the configuration.
#[derive(Clone, Debug)]
pub struct IngestSettings {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Consumer group id.
    pub group_id: String,
    /// Static group membership (`group.instance.id`): a restarted daemon takes its
    /// partitions back at once instead of waiting for its old session to expire.
    pub group_instance_id: Option<String>,
    /// Extra librdkafka properties, passed through as given.
    pub properties: BTreeMap<String, String>,
    /// Every consumed topic with the system it belongs to.
    pub topics: BTreeMap<String, System>,
    /// How each topic's messages are decoded; a topic not listed is in the canonical format.
    pub formats: BTreeMap<String, FormatSettings>,
    /// Who owns live work, and who may write into the fenced system.
    pub ownership: OwnershipPolicy,
    /// Where violations of the ownership rule are published (none: they are only kept).
    pub violations_topic: Option<String>,
    /// Where commands undoing non-owner writes are published.
    pub commands_topic: Option<String>,
    /// Where undecodable messages go.
    pub dead_letter_topic: String,
    /// Messages larger than this are dead-lettered without parsing.
    pub max_message_bytes: usize,
    /// A batch is committed when it holds this many messages...
    pub batch_max_messages: usize,
    /// ...or when its first message has waited this long, or at once when the apply loop
    /// has taken every earlier batch and librdkafka holds no further message.
    pub batch_max_wait: Duration,
    /// How long sides may differ before it counts as divergence.
    pub grace: Duration,
    /// Whether the clock follows wall time while tandem is idle and caught up.
    pub idle_clock: bool,
    /// Where re-read requests for unverified records go (none: they are only reported).
    pub reread_topic: Option<String>,
    /// Re-read requests per system, at most this many ids per minute.
    pub reread_max_ids_per_minute: u32,
    /// Ids per re-read request message, at most.
    pub reread_batch_max_ids: usize,
    /// A re-read with no answer is requested again after this long.
    pub reread_resend_after: Duration,
    /// Where snapshot requests go (none: they are only reported).
    pub control_topic: Option<String>,
    /// Per system whose connector is Debezium: re-read and snapshot requests go to it as
    /// Debezium signals instead of the request topics.
    pub debezium_signals: BTreeMap<System, DebeziumSignals>,
    /// The store's directory, whose disk is watched.
    pub store_path: std::path::PathBuf,
    /// Ingestion pauses while the store's disk has less free space than this.
    pub min_free_bytes: u64,
    /// With replication: the deployment's transactional id. The output producers then send
    /// in transactions of `<id>.dead-letters` and `<id>.requests`, which a new active
    /// instance fences.
    pub output_transactional_id: Option<String>,
}

impl IngestSettings {
    /// The consumer's librdkafka configuration: tandem's defaults, then the user's properties.
    pub fn consumer_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", &self.group_id)
            // Offsets live in the store; group commits would only ever feed monitoring.
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // Never move past offsets tandem has not read without saying so: a position the
            // broker no longer has is an error the poll loop turns into a recorded loss.
            .set("auto.offset.reset", "error")
            // Events of aborted transactions are never applied.
            .set("isolation.level", "read_committed")
            .set("statistics.interval.ms", "1000")
            .set("enable.partition.eof", "false")
            .set(
                "fetch.message.max.bytes",
                (self.max_message_bytes + 4096).max(1 << 20).to_string(),
            );
        if let Some(instance_id) = &self.group_instance_id {
            config.set("group.instance.id", instance_id);
        }
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }

    /// Whether the consumer reads only committed transactions (the default).
    pub fn read_committed(&self) -> bool {
        self.properties
            .get("isolation.level")
            .is_none_or(|level| level == "read_committed")
    }

    /// The dead-letter producer's librdkafka configuration.
    pub fn producer_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("message.timeout.ms", "60000");
        for (key, value) in &self.properties {
            if !CONSUMER_ONLY_PROPERTIES.contains(&key.as_str()) {
                config.set(key, value);
            }
        }
        config
    }
}

pub use deliveries::{is_fenced, serve_deliveries};

/// Consumer properties that a producer rejects or warns about (kept out of producers).
pub const CONSUMER_ONLY_PROPERTIES: &[&str] = &[
    "group.id",
    "group.instance.id",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    "auto.offset.reset",
    "enable.auto.commit",
    "auto.commit.interval.ms",
    "enable.auto.offset.store",
    "partition.assignment.strategy",
    "fetch.message.max.bytes",
    "fetch.max.bytes",
    "fetch.min.bytes",
    "fetch.wait.max.ms",
    "isolation.level",
    "enable.partition.eof",
    "check.crcs",
    "queued.min.messages",
    "queued.max.messages.kbytes",
    "group.protocol",
    "group.remote.assignor",
];

/// Why a change asked of a running daemon was not made. The two are told apart because they
/// call for different actions: a refusal is about the request (409: change it, or wait for
/// the state it needs), a stop is about the daemon (503: restart it, see /readyz).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlError {
    /// The change cannot be made in the present state; nothing was changed.
    Refused(String),
    /// Ingestion has stopped, or stopped before the change was durable.
    Stopped(String),
}

impl std::fmt::Display for ControlError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlError::Refused(why) | ControlError::Stopped(why) => formatter.write_str(why),
        }
    }
}

impl std::error::Error for ControlError {}

/// Ingestion is gone: a request could not be handed over.
fn ingestion_stopped() -> ControlError {
    ControlError::Stopped("ingestion has stopped; restart tandem (see /readyz for why)".to_owned())
}

/// Asks the apply loop to take cutover steps and to evaluate every record again: each is
/// committed in batches of its own, so it is ordered with the events around it and survives a
/// crash.
#[derive(Clone)]
pub struct ControlHandle {
    requests: crossbeam_channel::Sender<ControlRequest>,
    status: Arc<IngestStatus>,
}

impl ControlHandle {
    /// Takes a step and waits until it is durable. `Err` carries why it was refused.
    pub fn request(
        &self,
        order: tandem_core::cutover::StepOrder,
    ) -> std::result::Result<tandem_core::cutover::TransitionRecord, ControlError> {
        let (reply, answer) = bounded(1);
        self.requests
            .send(ControlRequest::Step { order, reply })
            .map_err(|_| ingestion_stopped())?;
        answer
            .recv()
            .map_err(|_| {
                ControlError::Stopped(
                    "ingestion stopped before the step was durable; restart tandem and look at /v1/cutover".to_owned(),
                )
            })?
            .map_err(ControlError::Refused)
    }

    /// Resets a partition whose ingestion stopped because its stored position lies beyond the
    /// broker's log (a re-created topic): records the loss, marks the partition's records
    /// unverified, asks for snapshots, and reads the partition again from offset 0. Answers
    /// once the reset is durable. `Err` says why it cannot be done.
    pub fn reset_partition(
        &self,
        topic: &str,
        partition: i32,
        reason: String,
    ) -> std::result::Result<tandem_core::feed::OffsetLoss, ControlError> {
        let snapshot = self.status.snapshot();
        let Some(stopped) = snapshot
            .stopped_partitions
            .get(&(topic.to_owned(), partition))
        else {
            return Err(ControlError::Refused(format!(
                "{topic}/{partition} is not stopped here: only a partition whose stored position lies beyond the broker's log (see /readyz) can be reset, on the instance it is assigned to"
            )));
        };
        let Some(system) = snapshot.topic_systems.get(topic).copied() else {
            return Err(ControlError::Refused(format!(
                "{topic} is not a configured topic"
            )));
        };
        let loss = tandem_core::feed::OffsetLoss {
            system,
            topic: topic.to_owned(),
            partition,
            first_offset: stopped.stored_next_offset,
            last_offset: stopped.stored_next_offset,
            kind: tandem_core::feed::OffsetLossKind::TopicRecreated,
            detected_at: Timestamp::from_system_time(std::time::SystemTime::now()),
            healed_at: None,
        };
        let (reply, answer) = bounded(1);
        self.requests
            .send(ControlRequest::ResetPartition {
                loss: loss.clone(),
                reason,
                reply,
            })
            .map_err(|_| ingestion_stopped())?;
        answer
            .recv()
            .map_err(|_| {
                ControlError::Stopped(
                    "ingestion stopped before the reset was durable; restart tandem and look at /readyz"
                        .to_owned(),
                )
            })?
            .map_err(ControlError::Refused)?;
        Ok(loss)
    }

    /// Starts a re-evaluation of every stored record; its progress shows in the status.
    pub fn reevaluate(&self, reason: String) -> std::result::Result<(), ControlError> {
        self.requests
            .send(ControlRequest::Reevaluate { reason })
            .map_err(|_| ingestion_stopped())
    }
}

/// The running ingest threads.
pub struct Ingest {
    consumer: JoinHandle<Result<()>>,
    apply: JoinHandle<Result<()>>,
    writer: JoinHandle<()>,
    dead_letters: JoinHandle<()>,
    requests: JoinHandle<()>,
    cancel: CancellationToken,
    status: Arc<IngestStatus>,
    control: ControlHandle,
}

/// A producer of tandem's own messages; with replication, transactional under
/// `<output_transactional_id>.<name>`, its transactions initialized (which fences the same
/// producer of an instance that was active before).
fn output_producer<C: rdkafka::producer::ProducerContext>(
    settings: &IngestSettings,
    name: &'static str,
    context: C,
) -> Result<BaseProducer<C>> {
    let mut config = settings.producer_config();
    if let Some(id) = &settings.output_transactional_id {
        config
            .set("transactional.id", format!("{id}.{name}"))
            .set("transaction.timeout.ms", "60000");
    }
    let producer: BaseProducer<C> =
        config
            .create_with_context(context)
            .map_err(|source| Error::Client {
                client: name,
                source,
            })?;
    if settings.output_transactional_id.is_some() {
        rdkafka::producer::Producer::init_transactions(&producer, Duration::from_secs(30))
            .map_err(|source| Error::Client {
                client: name,
                source,
            })?;
    }
    Ok(producer)
}

/// Starts consuming. Stops when `cancel` fires (or when the apply loop fails).
pub fn start(
    settings: IngestSettings,
    store: Store,
    mapping: Arc<Mapping>,
    status: Arc<IngestStatus>,
    metrics: IngestMetrics,
    cancel: CancellationToken,
) -> Result<Ingest> {
    let (apply_tx, apply_rx) = bounded(4);
    let (dead_letter_tx, dead_letter_rx) = bounded(1);
    let producer: BaseProducer<DeadLetterContext> = output_producer(
        &settings,
        "dead-letters",
        DeadLetterContext::new("dead-letter"),
    )?;
    let (control_tx, control_rx) = bounded(1);
    let control = ControlHandle {
        requests: control_tx,
        status: status.clone(),
    };
    let resets = Arc::new(Mutex::new(Vec::new()));
    let fence = Arc::new(fence::Fence::default());
    let context = TandemConsumerContext {
        store: store.clone(),
        apply_tx,
        status: status.clone(),
        revoked: Mutex::new(Vec::new()),
        assigned: Mutex::new(Vec::new()),
        read_committed: settings.read_committed(),
        resets: resets.clone(),
        errors: crate::quiet::Quieted::new(consumer::KAFKA_ERROR_LOG_EVERY),
        fence: fence.clone(),
        revoke_timeout: consumer::REVOKE_TIMEOUT,
    };
    let consumer: BaseConsumer<TandemConsumerContext> = settings
        .consumer_config()
        .create_with_context(context)
        .map_err(|source| Error::Client {
            client: "consumer",
            source,
        })?;
    let topics: Vec<String> = settings.topics.keys().cloned().collect();
    let topic_names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topic_names)
        .map_err(|source| Error::Subscribe {
            topics: topics.clone(),
            source,
        })?;
    let (jobs_tx, jobs_rx) = bounded(1);
    let (written_tx, written_rx) = crossbeam_channel::unbounded();
    let mut apply_loop = ApplyLoop::try_new(
        store.clone(),
        mapping,
        settings.clone(),
        status.clone(),
        metrics,
        dead_letter_tx,
        writer::WriterLink {
            jobs_tx,
            written_rx,
            fence: fence.clone(),
        },
    )?
    .with_resets(resets)
    .with_cancel(cancel.clone());
    // Before the consumer starts: a disk that is already nearly full pauses it from the
    // first assignment on.
    apply_loop.watch_disk();
    let writer_store = store.clone();
    let publish_violations = settings.violations_topic.is_some();
    let writer = spawn("tandem-writer", move || {
        writer::run_writer(writer_store, jobs_rx, written_tx, fence, publish_violations)
    });
    info!(topics = ?topics, group_id = %settings.group_id, brokers = %settings.brokers, "consuming");

    let request_producer: BaseProducer<Deliveries<Sent>> =
        output_producer(&settings, "requests", Deliveries::new("request"))?;
    let request_forwarder = RequestForwarder {
        store: store.clone(),
        producer: request_producer,
        settings: settings.clone(),
        transactional: settings.output_transactional_id.is_some(),
    };
    let requests_cancel = cancel.clone();
    let requests = spawn("tandem-requests", move || {
        request_forwarder.run(requests_cancel)
    });
    let forwarder = DeadLetterForwarder {
        store,
        producer,
        topic: settings.dead_letter_topic.clone(),
        max_payload_bytes: settings.max_message_bytes.min(900 * 1024),
        transactional: settings.output_transactional_id.is_some(),
    };
    let forwarder_cancel = cancel.clone();
    let dead_letters = spawn("tandem-dead-letters", move || {
        forwarder.run(dead_letter_rx, forwarder_cancel)
    });
    let apply_cancel = cancel.clone();
    let apply = spawn("tandem-apply", move || {
        let result = apply_loop.run(apply_rx, control_rx);
        if let Err(error) = &result {
            error!(%error, "ingestion stopped");
            apply_cancel.cancel();
        }
        result
    });
    let consumer_cancel = cancel.clone();
    let topic_systems = settings.topics.clone();
    let consumer = spawn("tandem-consumer", move || {
        run_consumer(consumer, &settings, &topic_systems, &consumer_cancel)
    });
    Ok(Ingest {
        consumer,
        apply,
        writer,
        requests,
        dead_letters,
        cancel,
        status,
        control,
    })
}

fn spawn<T: Send + 'static>(
    name: &str,
    body: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(body)
        .expect("invariant: the OS can start a thread at daemon start-up")
}

impl Ingest {
    /// The handle the API takes cutover steps and re-evaluations through.
    pub fn control(&self) -> ControlHandle {
        self.control.clone()
    }

    /// Waits for every thread to stop (after cancellation or a failure).
    pub fn wait(self) -> Result<()> {
        let consumer = self.consumer.join();
        let apply = self.apply.join();
        // The writer stops when the apply loop drops its end of the job channel.
        let writer = self.writer.join();
        // The forwarder only stops on cancellation; after a failure of the apply loop the
        // token is already cancelled.
        self.cancel.cancel();
        let dead_letters = self.dead_letters.join();
        let requests = self.requests.join();
        let outcome = match (consumer, apply, writer, dead_letters) {
            (Err(_), _, _, _) => Err(Error::Panicked { thread: "consumer" }),
            (_, Err(_), _, _) => Err(Error::Panicked { thread: "apply" }),
            (_, _, Err(_), _) => Err(Error::Panicked { thread: "writer" }),
            (_, _, _, Err(_)) => Err(Error::Panicked {
                thread: "dead-letter",
            }),
            // The consumer's own failure first: the apply loop then only drained.
            (Ok(Err(failure)), _, _, _) => Err(failure),
            (Ok(Ok(())), Ok(result), Ok(()), Ok(())) => result,
        };
        let outcome = match (outcome, requests) {
            (Ok(()), Err(_)) => Err(Error::Panicked { thread: "request" }),
            (outcome, _) => outcome,
        };
        if let Err(error) = &outcome {
            let reason = error.to_string();
            self.status
                .update(|snapshot| snapshot.stopped = Some(reason));
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handle whose apply loop is gone, as after ingestion stopped.
    fn orphaned() -> ControlHandle {
        let (requests, receiver) = bounded(1);
        drop(receiver);
        ControlHandle {
            requests,
            status: Arc::new(IngestStatus::new(
                [("crm.changes".to_owned(), tandem_core::System::Source)].into(),
            )),
        }
    }

    #[test]
    fn a_refusal_and_a_stopped_ingestion_are_told_apart() {
        let handle = orphaned();
        // The partition is not stopped: the request is refused, whatever ingestion does.
        assert!(matches!(
            handle.reset_partition("crm.changes", 0, "re-created".to_owned()),
            Err(ControlError::Refused(why)) if why.contains("is not stopped here")
        ));
        // Nobody takes the request: ingestion has stopped.
        assert!(matches!(
            handle.reevaluate("rules changed".to_owned()),
            Err(ControlError::Stopped(why)) if why.contains("restart tandem")
        ));
        let order = tandem_core::cutover::StepOrder {
            transition: tandem_core::cutover::Transition::Freeze,
            by: "test".to_owned(),
            caller: None,
            reason: "freeze".to_owned(),
            evidence: None,
            measured_at_events: None,
        };
        assert!(matches!(
            handle.request(order),
            Err(ControlError::Stopped(_))
        ));
    }
}
