//! The Kafka consumer: one thread that polls, decodes and batches, and the rebalance
//! handshake that keeps a revoked partition from ever being written.
//!
//! On assignment every partition is positioned at the next offset stored in RocksDB (or the
//! beginning, if nothing of it was applied): the store, not the consumer group, is the
//! source of truth. On revocation the callback hands the partitions to the apply loop and
//! waits until every batch sent before has been committed; messages of the revoked partitions
//! still held in the batch being built are dropped, to be read again by whoever owns them next.
//! Whether or not the apply loop confirmed in time, the callback then closes the write fence
//! on the partitions ([`crate::fence`]) before it returns: nothing of them is committed after.
//! The poll loop itself, and what it does when the broker no longer has an offset, is in
//! [`crate::poll`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Sender};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tandem_core::feed::OffsetLoss;
use tandem_core::{ChangeEvent, DecodeError, System, Timestamp};
use tandem_formats::{decode_message, Format, FormatSettings};
use tandem_store::{Coordinates, Store};
use tracing::{debug, error, info, warn};

use crate::quiet::Quieted;
use crate::status::IngestStatus;

/// How long a revocation waits for the apply loop before giving up on the handshake (the
/// fence keeps anything of the partitions from being committed after that).
pub(crate) const REVOKE_TIMEOUT: Duration = Duration::from_secs(120);

/// One event of a message read from Kafka (or the message itself if it carries no event or
/// could not be decoded), decoded in the consumer thread.
pub(crate) struct ConsumedMessage {
    pub(crate) coordinates: Coordinates,
    /// Which of the message's events this is; 0 for the first or only one.
    pub(crate) part: u32,
    pub(crate) system: System,
    /// What the event log keeps: the raw value for the canonical format and for dead
    /// letters, the canonical event for an event decoded from a vendor format.
    pub(crate) payload: Vec<u8>,
    pub(crate) decoded: Decoded,
}

/// What a message, or one part of it, became.
// Nearly every message is an event: boxing it would cost an allocation per message to save
// space only in the rare skipped and rejected ones.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Decoded {
    Event(ChangeEvent),
    /// The message carries nothing to apply (a tombstone, a transaction marker).
    Skipped,
    Rejected(DecodeError),
    /// No message: the consumer passed over offsets up to this one that hold nothing for
    /// tandem (transaction markers, messages of aborted transactions).
    PassedOver,
    /// No message: offsets up to this one were gone from the broker before tandem read them.
    Lost(OffsetLoss),
}

impl ConsumedMessage {
    /// The parts of one message: one per event it carries, one if it carries none or is
    /// rejected (the whole message goes to the dead-letter topic).
    pub(crate) fn split(
        coordinates: Coordinates,
        system: System,
        format: &FormatSettings,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        max_bytes: usize,
    ) -> Vec<ConsumedMessage> {
        let raw = || payload.map(<[u8]>::to_vec).unwrap_or_default();
        let whole = |decoded| {
            vec![ConsumedMessage {
                coordinates: coordinates.clone(),
                part: 0,
                system,
                payload: raw(),
                decoded,
            }]
        };
        match decode_message(format, key, payload, max_bytes) {
            Err(error) => whole(Decoded::Rejected(error)),
            Ok(events) if events.is_empty() => whole(Decoded::Skipped),
            Ok(events) if format.format == Format::Canonical => whole(Decoded::Event(
                events.into_iter().next().expect("invariant: not empty"),
            )),
            Ok(events) => events
                .into_iter()
                .zip(0u32..)
                .map(|(event, part)| ConsumedMessage {
                    coordinates: coordinates.clone(),
                    part,
                    system,
                    payload: serde_json::to_vec(&event)
                        .expect("invariant: a change event always encodes as JSON"),
                    decoded: Decoded::Event(event),
                })
                .collect(),
        }
    }

    /// The decoded event, if this part is one.
    pub(crate) fn event(&self) -> Option<&ChangeEvent> {
        match &self.decoded {
            Decoded::Event(event) => Some(event),
            Decoded::Skipped | Decoded::Rejected(_) | Decoded::PassedOver | Decoded::Lost(_) => {
                None
            }
        }
    }

    /// A part that is no message but moves the partition's position to just after `offset`.
    pub(crate) fn position(
        coordinates: Coordinates,
        system: System,
        decoded: Decoded,
    ) -> ConsumedMessage {
        ConsumedMessage {
            coordinates,
            part: 0,
            system,
            payload: Vec::new(),
            decoded,
        }
    }
}

/// What the consumer thread tells the apply loop.
pub(crate) enum ApplyCommand {
    /// Messages to apply, in consumption order.
    Batch(Vec<ConsumedMessage>),
    /// These partitions are being revoked: answer once every earlier batch is committed.
    Revoke {
        partitions: Vec<(String, i32)>,
        done: Sender<()>,
    },
}

/// What the API asks of the apply loop, on a channel of its own.
pub(crate) enum ControlRequest {
    /// Take a cutover step; the answer comes once it is durable.
    Step {
        /// The step.
        order: tandem_core::cutover::StepOrder,
        /// Where the answer goes.
        reply: Sender<std::result::Result<tandem_core::cutover::TransitionRecord, String>>,
    },
    /// Evaluate every stored record again (progress in the status).
    Reevaluate {
        /// Why, for the log and the report.
        reason: String,
    },
    /// Read a stopped partition again from offset 0 of the (re-created) topic: the loss is
    /// recorded and the stored position reset in one batch, then the consumer resumes it.
    ResetPartition {
        /// The loss to record (kind `topic_recreated`, at the old stored position).
        loss: OffsetLoss,
        /// Why, for the log.
        reason: String,
        /// The answer comes once the reset is durable, or says why it was not made.
        reply: Sender<std::result::Result<(), String>>,
    },
}

/// The consumer's callbacks: statistics, errors, logs and the rebalance handshake.
pub(crate) struct TandemConsumerContext {
    pub(crate) store: Store,
    pub(crate) apply_tx: Sender<ApplyCommand>,
    pub(crate) status: Arc<IngestStatus>,
    /// Partitions revoked since the consumer thread last looked.
    pub(crate) revoked: Mutex<Vec<(String, i32)>>,
    /// Partitions assigned since the consumer thread last looked, with the next offset they
    /// start at (`None`: nothing of them was ever applied, they start at the beginning).
    pub(crate) assigned: Mutex<Vec<PartitionStart>>,
    /// Whether the read-committed end of a partition (its last stable offset) measures lag.
    pub(crate) read_committed: bool,
    /// Partitions whose reset is durable: the poll loop assigns them again from offset 0.
    pub(crate) resets: PartitionResets,
    /// librdkafka repeats an error every few milliseconds while a broker stays away: each
    /// kind is logged once per period, with the count held back.
    pub(crate) errors: Quieted,
    /// The partitions assigned here, as the writer sees them.
    pub(crate) fence: Arc<crate::fence::Fence>,
    /// How long a revocation waits for the apply loop ([`REVOKE_TIMEOUT`]).
    pub(crate) revoke_timeout: Duration,
}

/// How often one kind of Kafka client error is logged while it repeats.
pub(crate) const KAFKA_ERROR_LOG_EVERY: Duration = Duration::from_secs(30);

/// A partition assigned by the group, with the next offset it starts at (`None`: from its
/// beginning).
pub(crate) type PartitionStart = ((String, i32), Option<i64>);

/// Partitions whose reset is durable, handed from the apply loop to the poll loop.
pub(crate) type PartitionResets = Arc<Mutex<Vec<(String, i32)>>>;

impl ClientContext for TandemConsumerContext {
    fn stats(&self, statistics: Statistics) {
        let now = Timestamp::from_system_time(std::time::SystemTime::now());
        let reachable = statistics
            .brokers
            .values()
            .any(|broker| broker.nodeid >= 0 && broker.state == "UP");
        self.status.update(|snapshot| {
            for (topic, stats) in &statistics.topics {
                for (partition, partition_stats) in &stats.partitions {
                    if *partition < 0 {
                        continue;
                    }
                    let position = snapshot
                        .partitions
                        .entry((topic.clone(), *partition))
                        .or_default();
                    // A read-committed consumer reads up to the last stable offset: an open
                    // transaction's messages are not lag it could catch up on yet.
                    let end = if self.read_committed && partition_stats.ls_offset >= 0 {
                        partition_stats.ls_offset
                    } else {
                        partition_stats.hi_offset
                    };
                    if end >= 0 {
                        position.high_watermark = Some(end);
                    }
                    if partition_stats.lo_offset >= 0 {
                        position.low_watermark = Some(partition_stats.lo_offset);
                    }
                }
            }
            match (reachable, snapshot.broker_reachable) {
                (true, false) => {
                    if let Some(since) = snapshot.broker_unreachable_since.take() {
                        info!(unreachable_since = %since, "Kafka brokers reachable again");
                    }
                    snapshot.broker_reachable = true;
                }
                (false, true) | (false, false) if snapshot.broker_unreachable_since.is_none() => {
                    warn!("no Kafka broker is reachable; ingestion is paused until one is");
                    snapshot.broker_reachable = false;
                    snapshot.broker_unreachable_since = Some(now);
                }
                _ => {}
            }
        });
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.errors.warn_about(&error.to_string(), |suppressed| {
            warn!(%error, reason, suppressed, "Kafka client error (the same error is logged at most every 30 s; `suppressed` counts those held back)");
        });
        let now = Timestamp::from_system_time(std::time::SystemTime::now());
        self.status.update(|snapshot| {
            snapshot.last_kafka_error = Some((now, format!("{error}: {reason}")));
        });
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        librdkafka_log(&self.errors, level, facility, message);
    }
}

/// One of librdkafka's own log lines, at its level; errors and warnings at most once per
/// period per kind (a connection refused every second while a broker is away is one line per
/// 30 s, with the count of those held back).
pub(crate) fn librdkafka_log(
    quieted: &Quieted,
    level: rdkafka::config::RDKafkaLogLevel,
    facility: &str,
    message: &str,
) {
    use rdkafka::config::RDKafkaLogLevel as Level;
    // One kind of line: its facility and its text before the parenthesis where librdkafka
    // puts what changes from one repeat to the next ("(after 0ms in state CONNECT, 3
    // identical error(s) suppressed)"); another broker or another failure is another kind.
    let kind = || {
        let text = message.split(" (").next().unwrap_or(message);
        format!("librdkafka {facility} {text}")
    };
    match level {
        Level::Emerg | Level::Alert | Level::Critical | Level::Error => quieted.warn_about(
            &kind(),
            |suppressed| error!(target: "librdkafka", facility, suppressed, "{message}"),
        ),
        Level::Warning => quieted.warn_about(
            &kind(),
            |suppressed| warn!(target: "librdkafka", facility, suppressed, "{message}"),
        ),
        Level::Notice | Level::Info => info!(target: "librdkafka", facility, "{message}"),
        Level::Debug => debug!(target: "librdkafka", facility, "{message}"),
    }
}

impl ConsumerContext for TandemConsumerContext {
    fn rebalance(
        &self,
        base_consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            base_consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let partitions: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|element| (element.topic().to_owned(), element.partition()))
            .collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.position_at_stored_offsets(tpl, &partitions);
                let result = if cooperative {
                    base_consumer.incremental_assign(tpl)
                } else {
                    base_consumer.assign(tpl)
                };
                if let Err(error) = result {
                    error!(%error, "assigning partitions failed; librdkafka will retry the rebalance");
                    return;
                }
                self.fence.assign(&partitions);
                // Paused (disk nearly full, a re-evaluation): the new partitions must not
                // fetch either.
                if self.status.snapshot().holds_fetching() {
                    if let Err(error) = base_consumer.pause(tpl) {
                        error!(%error, "cannot pause newly assigned partitions");
                    }
                }
                self.status.update(|snapshot| {
                    snapshot.assigned.extend(partitions.iter().cloned());
                });
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.hand_over(&partitions);
                let result = if cooperative {
                    base_consumer.incremental_unassign(tpl)
                } else {
                    base_consumer.unassign()
                };
                if let Err(error) = result {
                    error!(%error, "unassigning revoked partitions failed");
                }
            }
            other => {
                let code: RDKafkaErrorCode = other.into();
                error!(error = %code, "rebalance failed; releasing the assignment");
                self.hand_over(&partitions);
                self.fence.revoke_all();
                if let Err(error) = base_consumer.unassign() {
                    error!(%error, "unassigning after a failed rebalance failed");
                }
            }
        }
    }
}

impl TandemConsumerContext {
    /// Sets each partition's start to the stored next offset, or the beginning if none.
    fn position_at_stored_offsets(
        &self,
        tpl: &mut TopicPartitionList,
        partitions: &[(String, i32)],
    ) {
        for (topic, partition) in partitions {
            let next_offset = match self.store.next_offset(topic, *partition) {
                Ok(next) => next,
                Err(error) => {
                    // Starting from the beginning is safe: the apply loop skips every offset
                    // it has already applied, and event ids are deduplicated.
                    error!(topic, partition, %error, "cannot read the stored offset; reading the partition from the beginning");
                    None
                }
            };
            let offset = match next_offset {
                Some(next) => Offset::Offset(next.0),
                None => Offset::Beginning,
            };
            info!(topic, partition, ?offset, "partition assigned");
            if let Err(error) = tpl.set_partition_offset(topic, *partition, offset) {
                error!(topic, partition, %error, "cannot set the start offset of an assigned partition");
            }
            lock(&self.assigned)
                .push(((topic.clone(), *partition), next_offset.map(|next| next.0)));
            self.status.update(|snapshot| {
                snapshot
                    .partitions
                    .entry((topic.clone(), *partition))
                    .or_default()
                    .next_offset = next_offset.map(|next| next.0);
            });
        }
    }

    /// The revocation handshake: waits until the apply loop has committed every batch sent
    /// before, so nothing of these partitions is written after they are given up. It blocks
    /// the consumer thread, which is the point: librdkafka lets the partitions go only once
    /// the callback returns. If the apply loop does not confirm in time, the fence closes
    /// anyway, and batches of the partitions still on their way are refused.
    pub(crate) fn hand_over(&self, partitions: &[(String, i32)]) {
        if partitions.is_empty() {
            return;
        }
        info!(partitions = ?partitions, "partitions revoked; waiting for in-flight batches to commit");
        let deadline = Instant::now() + self.revoke_timeout;
        let (done_tx, done_rx) = bounded(1);
        let command = ApplyCommand::Revoke {
            partitions: partitions.to_vec(),
            done: done_tx,
        };
        // Sending waits too when the apply loop is behind: within the same deadline.
        let confirmed = match self.apply_tx.send_deadline(command, deadline) {
            Ok(()) => done_rx.recv_deadline(deadline).is_ok(),
            // The apply loop is gone: nothing of the partitions can be committed any more.
            Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => true,
            Err(crossbeam_channel::SendTimeoutError::Timeout(_)) => false,
        };
        if !confirmed {
            error!(partitions = ?partitions, timeout = ?self.revoke_timeout, "the apply loop did not confirm the revocation in time; the partitions are fenced: batches of them still on their way are refused, not committed");
        }
        // Waits for a commit under way; every commit after sees the partitions revoked.
        self.fence.revoke(partitions);
        lock(&self.revoked).extend(partitions.iter().cloned());
        self.status.update(|snapshot| {
            for partition in partitions {
                snapshot.assigned.remove(partition);
                snapshot.stopped_partitions.remove(partition);
            }
        });
    }

    /// Partitions revoked since the last call.
    pub(crate) fn take_revoked(&self) -> Vec<(String, i32)> {
        std::mem::take(&mut *lock(&self.revoked))
    }

    /// Partitions assigned since the last call, with their start.
    pub(crate) fn take_assigned(&self) -> Vec<PartitionStart> {
        std::mem::take(&mut *lock(&self.assigned))
    }

    /// Partitions reset since the last call.
    pub(crate) fn take_resets(&self) -> Vec<(String, i32)> {
        std::mem::take(&mut *lock(&self.resets))
    }
}

/// The rebalance callback and the poll loop run on the same thread, one after the other: a
/// poisoned lock only means a panic elsewhere already stops the daemon.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
