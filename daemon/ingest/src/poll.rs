//! The consumer thread's loop: polls, decodes and batches, keeps each assigned partition's
//! position, and never lets the broker move a partition past offsets tandem has not read
//! without recording the loss.
//!
//! `auto.offset.reset` is `error`: when a partition's position is no longer on the broker,
//! librdkafka stops fetching it and reports `AutoOffsetReset`, without saying which partition
//! (and `seek` is refused in that state). The loop then asks the broker for the log start and
//! end of every assigned partition and assigns them again:
//! - a position below the log start: the offsets in between were deleted (retention,
//!   `DeleteRecords`) before tandem read them. They become a [`Decoded::Lost`] part of the
//!   batch, committed with what it changes (unverified records, snapshot requests, the moved
//!   offset), and the partition restarts at the log start;
//! - a position beyond the log end: the topic was deleted and created again, and the stored
//!   state describes a log that no longer exists. The partition stays stopped until an
//!   operator resets it (`tandem partitions reset`);
//! - otherwise the partition restarts where it was.
//!
//! A partition read for the first time is checked too: offsets deleted before tandem ever read
//! it are a loss. And while idle, a partition whose position moved past what was delivered
//! (transaction markers, aborted transactions) is passed over, so that its lag reaches 0.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, RebalanceProtocol};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tandem_core::feed::{OffsetLoss, OffsetLossKind};
use tandem_core::{System, Timestamp};
use tandem_formats::{Format, FormatSettings};
use tandem_store::Coordinates;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::consumer::{ApplyCommand, ConsumedMessage, Decoded, TandemConsumerContext};
use crate::status::StoppedPartition;
use crate::IngestSettings;

/// How long one question about a partition's log start and end may take.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts at that question before tandem assumes the worst.
const WATERMARK_ATTEMPTS: usize = 3;
/// How often an idle consumer looks for positions that moved past what it delivered.
const POSITION_CHECK_EVERY: Duration = Duration::from_millis(500);
/// How often unreadable topics are checked again.
const ACCESS_CHECK_EVERY: Duration = Duration::from_secs(10);

type TandemConsumer = BaseConsumer<TandemConsumerContext>;

/// Polls, decodes and batches until cancelled, then flushes and closes the consumer. An
/// error librdkafka cannot recover from (this member was fenced, for one) ends it with the
/// error: the batches read before it are still applied.
pub(crate) fn run_consumer(
    consumer: TandemConsumer,
    settings: &IngestSettings,
    topic_systems: &BTreeMap<String, System>,
    cancel: &CancellationToken,
) -> crate::Result<()> {
    let mut state = PollState {
        settings,
        topic_systems,
        canonical: FormatSettings::new(Format::Canonical),
        batch: Vec::with_capacity(settings.batch_max_messages),
        batch_started: Instant::now(),
        paused: false,
        positions: BTreeMap::new(),
        last_position_check: Instant::now(),
        last_access_check: None,
    };
    let apply_tx = consumer.context().apply_tx.clone();
    state.check_access(&consumer);
    while !cancel.is_cancelled() {
        state.follow_pause(&consumer);
        // The apply loop has taken every batch sent: a batch waits for nothing but the
        // messages librdkafka already holds. Otherwise batches grow while it is busy, up to
        // their size or their wait.
        let apply_waiting = apply_tx.is_empty();
        let timeout = if state.batch.is_empty() {
            Duration::from_millis(100)
        } else if apply_waiting {
            Duration::ZERO
        } else {
            settings
                .batch_max_wait
                .saturating_sub(state.batch_started.elapsed())
        };
        let polled = consumer.poll(timeout);
        let drained = polled.is_none();
        // The rebalance callbacks ran inside `poll`: their partitions are followed before the
        // message it returned, which may be the first of a newly assigned partition.
        state.follow_rebalance(&consumer);
        state.resume_resets(&consumer);
        match polled {
            Some(Ok(message)) => state.take(&consumer, &message),
            Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset))) => {
                state.recover_out_of_range(&consumer)
            }
            Some(Err(KafkaError::MessageConsumptionFatal(code))) => {
                // The messages read but not yet handed over are dropped: a fenced member
                // writes nothing more, and whoever owns the partitions now reads them.
                let failure = fatal(code);
                error!(%failure, "the consumer cannot go on; ingestion stops (the API keeps serving)");
                return Err(failure);
            }
            Some(Err(error)) => state.note_error(&consumer, &error),
            None => state.pass_over_idle(&consumer),
        }
        if state
            .last_access_check
            .is_some_and(|at| at.elapsed() >= ACCESS_CHECK_EVERY)
        {
            state.check_access(&consumer);
        }
        let full = state.batch.len() >= settings.batch_max_messages;
        let waited = !state.batch.is_empty()
            && ((apply_waiting && drained)
                || state.batch_started.elapsed() >= settings.batch_max_wait);
        if (full || waited)
            && apply_tx
                .send(ApplyCommand::Batch(std::mem::take(&mut state.batch)))
                .is_err()
        {
            error!("the apply loop stopped; the consumer stops too");
            return Ok(());
        }
    }
    if !state.batch.is_empty() {
        let _ = apply_tx.send(ApplyCommand::Batch(state.batch));
    }
    info!("consumer stopping; leaving the consumer group");
    drop(consumer);
    Ok(())
}

/// What a fatal consumer error means for an operator.
fn fatal(code: RDKafkaErrorCode) -> crate::Error {
    let hint = match code {
        RDKafkaErrorCode::FencedInstanceId => {
            "another consumer joined the group with this one's group.instance.id: a second tandem on a copy of this store (or with the same group.instance.id under [kafka.properties]). Only one may consume; stop the other, or give each instance its own store"
        }
        _ => "restart tandem; if it happens again, the error names what librdkafka refused",
    };
    crate::Error::ConsumerFatal { code, hint }
}

/// What the loop keeps between polls.
struct PollState<'a> {
    settings: &'a IngestSettings,
    topic_systems: &'a BTreeMap<String, System>,
    canonical: FormatSettings,
    batch: Vec<ConsumedMessage>,
    batch_started: Instant,
    paused: bool,
    /// The next offset of each assigned partition: what the store holds, then what was read.
    /// `None` while a partition that was never applied starts from its beginning and nothing
    /// of it was read yet.
    positions: BTreeMap<(String, i32), Option<i64>>,
    last_position_check: Instant,
    /// When unreadable topics were last checked, while some are (`None`: all are readable).
    last_access_check: Option<Instant>,
}

impl PollState<'_> {
    /// The disk guard or a re-evaluation asks to pause: stop fetching, keep polling
    /// (heartbeats, rebalances).
    fn follow_pause(&mut self, consumer: &TandemConsumer) {
        let pause_wanted = consumer.context().status.snapshot().holds_fetching();
        // While paused, partitions assigned by a rebalance are paused too.
        if !pause_wanted && pause_wanted == self.paused {
            return;
        }
        if let Ok(assignment) = consumer.assignment() {
            let result = if pause_wanted {
                consumer.pause(&assignment)
            } else {
                consumer.resume(&assignment)
            };
            match result {
                Ok(()) => self.paused = pause_wanted,
                Err(error) => {
                    warn!(%error, pause_wanted, "cannot pause or resume the assigned partitions")
                }
            }
        }
    }

    /// Starts following newly assigned partitions; forgets revoked ones and drops their
    /// messages not yet sent to the apply loop (whoever owns them next reads them again).
    fn follow_rebalance(&mut self, consumer: &TandemConsumer) {
        let assigned = consumer.context().take_assigned();
        if !assigned.is_empty() {
            // Partitions came from the group: whatever refused the group before is over.
            consumer.context().status.update(|snapshot| {
                snapshot
                    .kafka_problems
                    .retain(|subject, _| !subject.starts_with("group "));
            });
        }
        for (key, start) in assigned {
            self.positions.insert(key, start);
        }
        let revoked = consumer.context().take_revoked();
        if revoked.is_empty() {
            return;
        }
        for key in &revoked {
            self.positions.remove(key);
        }
        let before = self.batch.len();
        self.batch.retain(|message| {
            !revoked.iter().any(|(topic, partition)| {
                message.coordinates.topic == *topic && message.coordinates.partition == *partition
            })
        });
        debug!(
            dropped = before - self.batch.len(),
            "dropped unapplied messages of revoked partitions"
        );
    }

    /// Partitions an operator reset (their topic was re-created) are read again from offset
    /// 0, if they are still assigned here.
    fn resume_resets(&mut self, consumer: &TandemConsumer) {
        let resets = consumer.context().take_resets();
        if resets.is_empty() {
            return;
        }
        let Ok(current) = consumer.assignment() else {
            error!("cannot read the assignment to resume reset partitions; restart tandem to resume them");
            return;
        };
        let mut restart = TopicPartitionList::new();
        for element in current.elements() {
            let key = (element.topic().to_owned(), element.partition());
            let start = match self.positions.get(&key).copied().flatten() {
                Some(next) => Offset::Offset(next),
                None => Offset::Beginning,
            };
            let _ = restart.add_partition_offset(&key.0, key.1, start);
        }
        for key in resets {
            if !self.positions.contains_key(&key) {
                info!(topic = %key.0, partition = key.1, "a reset partition was revoked meanwhile; its next owner reads it from offset 0");
                continue;
            }
            info!(topic = %key.0, partition = key.1, "reading a reset partition again from offset 0");
            self.positions.insert(key.clone(), Some(0));
            let added = match restart.find_partition(&key.0, key.1) {
                Some(_) => restart.set_partition_offset(&key.0, key.1, Offset::Offset(0)),
                None => restart.add_partition_offset(&key.0, key.1, Offset::Offset(0)),
            };
            if let Err(error) = added {
                error!(topic = %key.0, partition = key.1, %error, "cannot resume a reset partition; restart tandem to resume it");
            }
            consumer.context().status.update(|snapshot| {
                snapshot.stopped_partitions.remove(&key);
            });
        }
        self.reassign(consumer, &current, &restart);
    }

    /// Decodes a message into the batch.
    fn take(&mut self, consumer: &TandemConsumer, message: &rdkafka::message::BorrowedMessage<'_>) {
        let Some(system) = self.topic_systems.get(message.topic()).copied() else {
            warn!(
                topic = message.topic(),
                "message from a topic no system is configured for; skipped"
            );
            return;
        };
        let key = (message.topic().to_owned(), message.partition());
        if matches!(self.positions.get(&key), None | Some(None)) {
            self.check_first_read(consumer, &key, system, message.offset());
        }
        self.positions.insert(key, Some(message.offset() + 1));
        if self.batch.is_empty() {
            self.batch_started = Instant::now();
        }
        let format = self
            .settings
            .formats
            .get(message.topic())
            .unwrap_or(&self.canonical);
        self.batch.extend(ConsumedMessage::split(
            Coordinates {
                topic: message.topic().to_owned(),
                partition: message.partition(),
                offset: message.offset(),
            },
            system,
            format,
            message.key(),
            message.payload(),
            self.settings.max_message_bytes,
        ));
    }

    /// A partition that was never applied is read from its beginning: if the broker deleted
    /// its first offsets before that, tandem never saw them.
    fn check_first_read(
        &mut self,
        consumer: &TandemConsumer,
        (topic, partition): &(String, i32),
        system: System,
        first_offset: i64,
    ) {
        if first_offset == 0 {
            return;
        }
        let log_start = match watermarks(consumer, topic, *partition) {
            Ok((low, _)) => low.min(first_offset),
            Err(error) => {
                warn!(topic, partition, first_offset, %error, "cannot ask the broker where a partition read for the first time starts; counting every offset before the first one read as lost");
                first_offset
            }
        };
        if log_start > 0 {
            self.lost(
                topic,
                *partition,
                system,
                (0, log_start - 1),
                OffsetLossKind::DeletedBeforeFirstRead,
            );
        }
    }

    /// librdkafka stopped a partition whose position the broker no longer has (which one, it
    /// does not say): every assigned partition is checked against the broker's log and
    /// assigned again.
    fn recover_out_of_range(&mut self, consumer: &TandemConsumer) {
        let assignment = match consumer.assignment() {
            Ok(assignment) => assignment,
            Err(error) => {
                error!(%error, "a partition's position is gone from the broker, and the assignment cannot be read to find it; it is checked again at the next error");
                return;
            }
        };
        let mut restart = TopicPartitionList::new();
        for element in assignment.elements() {
            let key = (element.topic().to_owned(), element.partition());
            let Some(system) = self.topic_systems.get(&key.0).copied() else {
                continue;
            };
            let start = match self.positions.get(&key).copied().flatten() {
                None => Offset::Beginning,
                Some(next) => match watermarks(consumer, &key.0, key.1) {
                    Ok((low, _)) if next < low => {
                        self.lost(
                            &key.0,
                            key.1,
                            system,
                            (next, low - 1),
                            OffsetLossKind::DeletedBeforeRead,
                        );
                        self.positions.insert(key.clone(), Some(low));
                        Offset::Offset(low)
                    }
                    Ok((_, high)) if next > high => {
                        self.stop_partition(consumer, &key, next, high);
                        continue;
                    }
                    Ok(_) => Offset::Offset(next),
                    Err(error) => {
                        warn!(topic = %key.0, partition = key.1, %error, "cannot ask the broker where a partition's log starts and ends; it restarts where it was and is checked again at the next error");
                        Offset::Offset(next)
                    }
                },
            };
            if let Err(error) = restart.add_partition_offset(&key.0, key.1, start) {
                error!(topic = %key.0, partition = key.1, %error, "cannot restart a partition");
            }
        }
        self.reassign(consumer, &assignment, &restart);
    }

    /// Replaces the assignment with `restart` (the same partitions, from the given offsets).
    fn reassign(
        &self,
        consumer: &TandemConsumer,
        current: &TopicPartitionList,
        restart: &TopicPartitionList,
    ) {
        let result = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer
                .incremental_unassign(current)
                .and_then(|()| consumer.incremental_assign(restart)),
            RebalanceProtocol::Eager | RebalanceProtocol::None => consumer.assign(restart),
        };
        if let Err(error) = result {
            error!(%error, "cannot assign the partitions again after a position was gone from the broker");
            return;
        }
        if self.paused {
            if let Err(error) = consumer.pause(restart) {
                error!(%error, "cannot pause the partitions assigned again");
            }
        }
    }

    /// Adds a loss of `offsets` (first and last, inclusive) to the batch: committed with the
    /// state it changes and the partition's new position, just after `offsets.1`.
    fn lost(
        &mut self,
        topic: &str,
        partition: i32,
        system: System,
        (first_offset, last_offset): (i64, i64),
        kind: OffsetLossKind,
    ) {
        let loss = OffsetLoss {
            system,
            topic: topic.to_owned(),
            partition,
            first_offset,
            last_offset,
            kind,
            detected_at: Timestamp::from_system_time(std::time::SystemTime::now()),
            healed_at: None,
        };
        error!(
            topic,
            partition,
            first_offset,
            last_offset,
            count = loss.count().unwrap_or(0),
            kind = kind.as_str(),
            %system,
            "events lost: the broker no longer had these offsets when tandem came to read them; every record known on this partition is unverified and a snapshot of the {system} system was requested (answer it from its connector, see ops/runbooks/offsets-lost.md; keep topic retention longer than tandem's longest stop)"
        );
        if self.batch.is_empty() {
            self.batch_started = Instant::now();
        }
        self.batch.push(ConsumedMessage::position(
            Coordinates {
                topic: topic.to_owned(),
                partition,
                offset: last_offset,
            },
            system,
            Decoded::Lost(loss),
        ));
    }

    /// The stored position lies beyond the broker's log: the topic was deleted and created
    /// again. The partition is left unassigned here until an operator resets it.
    fn stop_partition(&self, consumer: &TandemConsumer, key: &(String, i32), next: i64, high: i64) {
        let (topic, partition) = (key.0.as_str(), key.1);
        let reason = format!(
            "the stored position {next} of {topic}/{partition} lies beyond the broker's log (which ends at {high}): the topic was probably deleted and created again, so the stored state no longer describes it. Check the topic, then run `tandem partitions reset --topic {topic} --partition {partition} --reason ...` to read it again from its start (its records become unverified and a snapshot is requested)"
        );
        error!(
            topic,
            partition,
            stored_next_offset = next,
            high_watermark = high,
            "ingestion of a partition stopped: {reason}"
        );
        consumer.context().status.update(|snapshot| {
            snapshot.stopped_partitions.insert(
                key.clone(),
                StoppedPartition {
                    stored_next_offset: next,
                    high_watermark: high,
                    since: Timestamp::from_system_time(std::time::SystemTime::now()),
                    reason,
                },
            );
        });
    }

    /// While idle: a partition whose position moved past the last message delivered (over
    /// transaction markers or aborted messages) is passed over up to that position.
    fn pass_over_idle(&mut self, consumer: &TandemConsumer) {
        if self.last_position_check.elapsed() < POSITION_CHECK_EVERY {
            return;
        }
        self.last_position_check = Instant::now();
        let Ok(positions) = consumer.position() else {
            return;
        };
        for element in positions.elements() {
            let Offset::Offset(position) = element.offset() else {
                continue;
            };
            let key = (element.topic().to_owned(), element.partition());
            let Some(system) = self.topic_systems.get(&key.0).copied() else {
                continue;
            };
            let tracked = match self.positions.get(&key) {
                Some(tracked) => *tracked,
                None => continue,
            };
            match tracked {
                Some(next) if position > next => {}
                None if position > 0 => self.check_first_read(consumer, &key, system, position),
                _ => continue,
            }
            self.positions.insert(key.clone(), Some(position));
            if self.batch.is_empty() {
                self.batch_started = Instant::now();
            }
            self.batch.push(ConsumedMessage::position(
                Coordinates {
                    topic: key.0,
                    partition: key.1,
                    offset: position - 1,
                },
                system,
                Decoded::PassedOver,
            ));
        }
    }

    fn note_error(&mut self, consumer: &TandemConsumer, error: &KafkaError) {
        consumer
            .context()
            .errors
            .warn_about(&format!("poll: {error}"), |suppressed| {
                warn!(%error, suppressed, "Kafka consumer error; retrying (the same error is logged at most every 30 s; `suppressed` counts those held back)");
            });
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::GroupAuthorizationFailed) {
            let group_id = &self.settings.group_id;
            let problem = format!("tandem's principal may not join the consumer group {group_id}: grant it READ on the group (or set kafka.group_id to a group it may use)");
            error!(subject = %format!("group {group_id}"), "{problem}");
            consumer.context().status.update(|snapshot| {
                snapshot
                    .kafka_problems
                    .insert(format!("group {group_id}"), problem);
            });
        }
        let access = matches!(
            error.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::UnknownTopicOrPartition
                    | RDKafkaErrorCode::UnknownTopic
                    | RDKafkaErrorCode::TopicAuthorizationFailed
                    | RDKafkaErrorCode::GroupAuthorizationFailed
            )
        );
        if access && self.last_access_check.is_none() {
            self.check_access(consumer);
        }
    }

    /// Asks the broker about every configured topic; the ones tandem cannot read go into the
    /// status, with what to do, until they can be read.
    fn check_access(&mut self, consumer: &TandemConsumer) {
        let mut problems = BTreeMap::new();
        for topic in self.topic_systems.keys() {
            match consumer.fetch_metadata(Some(topic), WATERMARK_TIMEOUT) {
                Ok(metadata) => {
                    let Some(found) = metadata.topics().first() else {
                        continue;
                    };
                    if let Some(code) = found.error() {
                        let code = RDKafkaErrorCode::from(code);
                        if let Some(problem) = access_problem(topic, code, &self.settings.group_id)
                        {
                            problems.insert(format!("topic {topic}"), problem);
                        }
                    }
                }
                Err(error) => debug!(topic, %error, "cannot read a topic's metadata"),
            }
        }
        for (subject, problem) in &problems {
            error!(%subject, "{problem}");
        }
        let recovered: Vec<String> = consumer
            .context()
            .status
            .snapshot()
            .kafka_problems
            .keys()
            .filter(|subject| subject.starts_with("topic ") && !problems.contains_key(*subject))
            .cloned()
            .collect();
        if !recovered.is_empty() {
            // librdkafka would only notice at its next metadata refresh (minutes): subscribing
            // again makes the group include the topic now.
            info!(topics = ?recovered, "topics are readable now; joining the group again to include them");
            let topics: Vec<&str> = self.topic_systems.keys().map(String::as_str).collect();
            if let Err(error) = consumer.subscribe(&topics) {
                error!(%error, "cannot subscribe again; the topics are included at librdkafka's next metadata refresh");
            }
        }
        self.last_access_check = (!problems.is_empty()).then(Instant::now);
        consumer.context().status.update(|snapshot| {
            snapshot
                .kafka_problems
                .retain(|subject, _| !subject.starts_with("topic "));
            snapshot.kafka_problems.extend(problems);
        });
    }
}

/// What to tell an operator about a topic the broker refuses.
fn access_problem(topic: &str, code: RDKafkaErrorCode, group_id: &str) -> Option<String> {
    match code {
        RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic => Some(format!(
            "topic {topic} does not exist: create it (tandem does not create the topics it reads), or correct its name under [systems] in the configuration"
        )),
        RDKafkaErrorCode::TopicAuthorizationFailed => Some(format!(
            "topic {topic} may not be read by tandem's principal: grant it DESCRIBE and READ on the topic (and READ on the consumer group {group_id})"
        )),
        _ => None,
    }
}

/// The partition's log start and end, asking the broker up to [`WATERMARK_ATTEMPTS`] times.
fn watermarks(consumer: &TandemConsumer, topic: &str, partition: i32) -> KafkaResult<(i64, i64)> {
    let mut attempt = 1;
    loop {
        match consumer.fetch_watermarks(topic, partition, WATERMARK_TIMEOUT) {
            Ok(watermarks) => return Ok(watermarks),
            Err(error) if attempt >= WATERMARK_ATTEMPTS => return Err(error),
            Err(error) => {
                debug!(topic, partition, attempt, %error, "cannot read a partition's watermarks; asking again");
                attempt += 1;
            }
        }
    }
}
