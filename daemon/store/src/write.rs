//! The writer's side: the planner's view of committed state, and the atomic commit of a batch.

use std::collections::BTreeMap;

use rocksdb::{IteratorMode, WriteBatch, WriteOptions};
use serde::{Deserialize, Serialize};
use tandem_core::apply::Plan;
use tandem_core::feed::RereadChange;
use tandem_core::{
    ApplyState, ChangeEvent, DecodeError, Outcome, RecordStatus, Status, System, Timestamp,
};

use crate::batch::OrderedBatch;
use crate::codec::{decode_value, encode_value};
use crate::error::{Error, Result};
use crate::feed::{ControlRequest, RereadRow};
use crate::keys::{self, Coordinates};
use crate::read::DeadLetterRow;
use crate::{cf, Store};

const APPLY_STATE_KEY: &[u8] = b"apply_state";

/// The offset Kafka should deliver next for a partition: one past the last applied message.
///
/// This is what is stored and what the consumer seeks to; the conversion from the offset of
/// the last applied message happens only in [`NextOffset::after`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NextOffset(pub i64);

impl NextOffset {
    /// The next offset after applying the message at `last_applied`.
    pub fn after(last_applied: i64) -> NextOffset {
        NextOffset(last_applied + 1)
    }

    /// Whether a message at `offset` was already applied.
    pub fn covers(self, offset: i64) -> bool {
        offset < self.0
    }
}

/// One consumed message as it goes into the log, in the order the planner saw it.
#[derive(Clone, Copy, Debug)]
pub struct LoggedMessage<'a> {
    /// Where it was read.
    pub coordinates: &'a Coordinates,
    /// Which of the message's events this is (a vendor message may carry several).
    pub part: u32,
    /// The system of its topic.
    pub system: System,
    /// What the log keeps: the canonical event for a decoded event (the raw value for the
    /// canonical format), the raw value for a dead letter (empty for a null value).
    pub payload: &'a [u8],
    /// The decoded event, if it decoded.
    pub event: Option<&'a ChangeEvent>,
    /// Why it did not decode, if it did not.
    pub dead_letter: Option<&'a DecodeError>,
}

impl<'a> LoggedMessage<'a> {
    /// The first (or only) event of a message as read, with the outcome of decoding it.
    pub fn new(
        coordinates: &'a Coordinates,
        system: System,
        payload: &'a [u8],
        decoded: &'a std::result::Result<ChangeEvent, DecodeError>,
    ) -> Self {
        LoggedMessage {
            coordinates,
            part: 0,
            system,
            payload,
            event: decoded.as_ref().ok(),
            dead_letter: decoded.as_ref().err(),
        }
    }
}

/// Everything one batch writes.
pub struct Commit<'a> {
    /// The messages of the batch, one per outcome of the plan.
    pub messages: &'a [LoggedMessage<'a>],
    /// The planner's decisions.
    pub plan: &'a Plan,
    /// Next offsets of the partitions the batch advanced.
    pub offsets: &'a [(&'a str, i32, NextOffset)],
    /// Wall-clock time of the commit, kept with dead letters.
    pub committed_at: Timestamp,
    /// Whether violations go to the outbox of the violations topic.
    pub publish_violations: bool,
}

/// What a commit wrote, for logs and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Messages recorded in the event log.
    pub logged: usize,
    /// Messages recorded as dead letters.
    pub dead_lettered: usize,
    /// Records whose row or status changed.
    pub records_changed: usize,
}

/// First byte of a history value: whether the event changed state.
const HISTORY_APPLIED: u8 = 1;
const HISTORY_STALE: u8 = 2;

impl Store {
    /// The apply state after the last committed batch.
    pub fn apply_state(&self) -> Result<ApplyState> {
        let bytes = self
            .db
            .get_cf(self.cf(cf::META), APPLY_STATE_KEY)
            .map_err(Error::rocksdb("read of the apply state"))?;
        match bytes {
            None => Ok(ApplyState::default()),
            Some(bytes) => decode_value(&bytes, cf::META),
        }
    }

    /// The next offset of one partition, if anything of it was ever applied.
    pub fn next_offset(&self, topic: &str, partition: i32) -> Result<Option<NextOffset>> {
        let bytes = self
            .db
            .get_cf(
                self.cf(cf::OFFSETS),
                keys::encode_partition(topic, partition),
            )
            .map_err(Error::rocksdb("read of an offset"))?;
        bytes
            .map(|bytes| decode_value(&bytes, cf::OFFSETS))
            .transpose()
    }

    /// Every stored next offset, by topic and partition.
    pub fn next_offsets(&self) -> Result<BTreeMap<(String, i32), NextOffset>> {
        let mut offsets = BTreeMap::new();
        for item in self
            .db
            .iterator_cf(self.cf(cf::OFFSETS), IteratorMode::Start)
        {
            let (key, value) = item.map_err(Error::rocksdb("scan of offsets"))?;
            offsets.insert(
                keys::decode_partition(&key)?,
                decode_value(&value, cf::OFFSETS)?,
            );
        }
        Ok(offsets)
    }

    /// Dead letters not yet confirmed delivered to the dead-letter topic, oldest first.
    pub fn undelivered_dead_letters(
        &self,
        limit: usize,
    ) -> Result<Vec<(Coordinates, DeadLetterRow)>> {
        let mut undelivered = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(cf::DLQ_OUTBOX), IteratorMode::Start)
            .take(limit)
        {
            let (key, _) = item.map_err(Error::rocksdb("scan of the dead-letter outbox"))?;
            let coordinates = keys::decode_coordinates(&key, cf::DLQ_OUTBOX)?;
            let row = self
                .db
                .get_cf(self.cf(cf::DEAD_LETTERS), &key)
                .map_err(Error::rocksdb("read of a dead letter"))?
                .ok_or_else(|| Error::CorruptValue {
                    column_family: cf::DLQ_OUTBOX,
                    detail: format!("outbox entry {coordinates} has no dead letter"),
                })?;
            undelivered.push((coordinates, decode_value(&row, cf::DEAD_LETTERS)?));
        }
        Ok(undelivered)
    }

    /// Records that dead letters reached the dead-letter topic.
    pub fn mark_dead_letters_delivered(&self, delivered: &[Coordinates]) -> Result<()> {
        let mut batch = OrderedBatch::default();
        for coordinates in delivered {
            batch.delete_cf(cf::DLQ_OUTBOX, keys::encode_coordinates(coordinates));
        }
        self.write(batch, "write of dead-letter deliveries")
    }

    pub(crate) fn write(&self, batch: OrderedBatch, operation: &'static str) -> Result<()> {
        let _guard = self.lock_writes();
        self.write_locked(batch, operation)
    }

    /// Holds off other writers while a read-modify-write runs.
    pub(crate) fn lock_writes(&self) -> std::sync::MutexGuard<'_, ()> {
        self.write_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes with the lock already held by the caller: published to the changelog first
    /// when the store replicates.
    pub(crate) fn write_locked(&self, batch: OrderedBatch, operation: &'static str) -> Result<()> {
        self.refuse_after_failure(operation)?;
        if let Some(changelog) = self.changelog.get() {
            return self.write_published(&**changelog, batch, operation);
        }
        let mut batch = batch.into_write_batch(self);
        let had_position = self.changelog_position().is_some();
        if had_position {
            // State no changelog holds: no standby may take this store for a copy any more.
            batch.delete_cf(self.cf(cf::META), crate::changelog::POSITION_KEY);
        }
        self.write_batch(batch, operation)?;
        if had_position {
            self.position.store(
                crate::changelog::NO_POSITION,
                std::sync::atomic::Ordering::Release,
            );
        }
        Ok(())
    }

    fn refuse_after_failure(&self, operation: &'static str) -> Result<()> {
        match self.write_failure.get() {
            Some(first) => Err(Error::WritesStopped {
                operation,
                first: first.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Writes one RocksDB batch, unless writes have stopped.
    pub(crate) fn write_batch(&self, batch: WriteBatch, operation: &'static str) -> Result<()> {
        self.refuse_after_failure(operation)?;
        let mut options = WriteOptions::default();
        options.set_sync(self.sync_writes);
        self.db.write_opt(batch, &options).map_err(|source| {
            let _ = self.write_failure.set(format!("{operation}: {source}"));
            Error::RocksDb { operation, source }
        })
    }

    /// The first write error, if writes have stopped.
    pub fn write_failure(&self) -> Option<&str> {
        self.write_failure.get().map(String::as_str)
    }

    /// Writes one batch atomically: log, records, indexes, aggregates and offsets.
    pub fn commit(&self, commit: &Commit<'_>) -> Result<CommitStats> {
        assert_eq!(
            commit.messages.len(),
            commit.plan.outcomes.len(),
            "invariant: the plan has exactly one outcome per message of the batch"
        );
        let mut batch = OrderedBatch::default();
        let mut stats = CommitStats::default();
        for (message, outcome) in commit.messages.iter().zip(&commit.plan.outcomes) {
            match outcome {
                Outcome::Applied | Outcome::Stale => {
                    let event = message
                        .event
                        .expect("invariant: applied and stale outcomes come from decoded events");
                    self.log_event(&mut batch, message, event, *outcome);
                    stats.logged += 1;
                }
                Outcome::DeadLettered => {
                    let error = message
                        .dead_letter
                        .expect("invariant: a dead-lettered outcome comes with its decode error");
                    let key = keys::encode_coordinates(message.coordinates);
                    let row = DeadLetterRow {
                        system: message.system,
                        reason: error.reason,
                        detail: error.detail.clone(),
                        payload: message.payload.to_vec(),
                        dead_lettered_at: commit.committed_at,
                    };
                    batch.put_cf(cf::DEAD_LETTERS, key.clone(), encode_value(&row));
                    batch.put_cf(cf::DLQ_OUTBOX, key, []);
                    stats.dead_lettered += 1;
                }
                Outcome::Duplicate
                | Outcome::UnmappedEntity
                | Outcome::Skipped
                | Outcome::Position => {}
            }
        }
        self.write_ownership(
            &mut batch,
            &commit.plan.violations,
            &commit.plan.writers,
            &commit.plan.transitions,
            &commit.plan.compensations,
            commit.publish_violations,
        )?;
        for change in &commit.plan.join_keys {
            batch.put_cf(
                cf::JOIN_KEYS,
                keys::encode_native(change.system, &change.entity, &change.native_id),
                change.join_key.as_bytes(),
            );
        }
        for change in &commit.plan.records {
            let record_key = keys::encode_record(&change.entity, &change.join_key);
            let after_status = change
                .after
                .as_ref()
                .map(|row| row.status.clone())
                .unwrap_or_default();
            if after_status != change.before {
                for (column_family, key) in
                    index_entries(&change.entity, &change.join_key, &change.before)
                {
                    batch.delete_cf(column_family, key);
                }
                for (column_family, key) in
                    index_entries(&change.entity, &change.join_key, &after_status)
                {
                    batch.put_cf(column_family, key, []);
                }
            }
            match &change.after {
                Some(row) => batch.put_cf(cf::RECORDS, record_key, encode_value(&**row)),
                None => batch.delete_cf(cf::RECORDS, record_key),
            }
            stats.records_changed += 1;
        }
        for (topic, partition, next_offset) in commit.offsets {
            batch.put_cf(
                cf::OFFSETS,
                keys::encode_partition(topic, *partition),
                encode_value(next_offset),
            );
        }
        self.write_feed(&mut batch, commit)?;
        batch.put_cf(cf::META, APPLY_STATE_KEY, encode_value(&commit.plan.state));
        self.write(batch, "commit of a batch")?;
        Ok(stats)
    }

    /// Re-read rows, snapshot membership and snapshot requests of a batch.
    fn write_feed(&self, batch: &mut OrderedBatch, commit: &Commit<'_>) -> Result<()> {
        for reference in &commit.plan.references {
            batch.put_cf(cf::REFERENCES, keys::encode_reference(reference), []);
        }
        for member in &commit.plan.partition_members {
            batch.put_cf(
                cf::PARTITION_MEMBERS,
                keys::encode_partition_member(
                    &member.topic,
                    member.partition,
                    member.system,
                    &member.entity,
                    &member.native_id,
                ),
                [],
            );
        }
        for member in &commit.plan.snapshot_members {
            batch.put_cf(
                cf::SNAPSHOT_MEMBERS,
                keys::encode_snapshot_member(
                    member.system,
                    &member.entity,
                    &member.snapshot_id,
                    &member.native_id,
                ),
                [],
            );
        }
        for request in &commit.plan.snapshot_requests {
            let value = ControlRequest {
                request: request.clone(),
                key: Vec::new(),
            };
            batch.put_cf(
                cf::CONTROL_OUTBOX,
                Store::control_key(request),
                encode_value(&value),
            );
        }
        // Requests and resolutions in order: a record may be both within one batch.
        let mut rows: BTreeMap<Vec<u8>, Option<RereadRow>> = BTreeMap::new();
        let mut queue_deletes = Vec::new();
        for change in &commit.plan.rereads {
            match change {
                RereadChange::Request {
                    system,
                    entity,
                    native_id,
                    reason,
                    since,
                } => {
                    let row = RereadRow {
                        reason: *reason,
                        since: *since,
                        recorded_at: commit.committed_at,
                        requested_at: None,
                    };
                    rows.insert(keys::encode_native(*system, entity, native_id), Some(row));
                }
                RereadChange::Resolved {
                    system,
                    entity,
                    native_id,
                } => {
                    let key = keys::encode_native(*system, entity, native_id);
                    let previous = match rows.get(&key) {
                        Some(row) => row.clone(),
                        None => self.reread(*system, entity, native_id)?,
                    };
                    if let Some(previous) = previous {
                        queue_deletes.push(keys::encode_reread_queue(
                            previous.since,
                            *system,
                            entity,
                            native_id,
                        ));
                    }
                    rows.insert(key, None);
                }
            }
        }
        for key in queue_deletes {
            batch.delete_cf(cf::REREAD_QUEUE, key);
        }
        for (key, row) in rows {
            match row {
                Some(row) => {
                    let (system, entity, native_id) = keys::decode_native(&key)?;
                    batch.put_cf(
                        cf::REREAD_QUEUE,
                        keys::encode_reread_queue(row.since, system, &entity, &native_id),
                        [],
                    );
                    batch.put_cf(cf::REREADS, key, encode_value(&row));
                }
                None => batch.delete_cf(cf::REREADS, key),
            }
        }
        Ok(())
    }

    fn log_event(
        &self,
        batch: &mut OrderedBatch,
        message: &LoggedMessage<'_>,
        event: &ChangeEvent,
        outcome: Outcome,
    ) {
        batch.put_cf(
            cf::DEDUPE,
            keys::encode_event_id(message.system, &event.event_id),
            keys::encode_coordinates(message.coordinates),
        );
        // The event log is kept per native record: the history key orders it by event time,
        // the value is whether it changed state, then the message exactly as received.
        let mut logged = Vec::with_capacity(message.payload.len() + 1);
        logged.push(if outcome == Outcome::Stale {
            HISTORY_STALE
        } else {
            HISTORY_APPLIED
        });
        logged.extend_from_slice(message.payload);
        batch.put_cf(
            cf::HISTORY,
            keys::encode_history(
                &event.entity,
                message.system,
                &event.id,
                event.occurred_at,
                message.coordinates,
                message.part,
            ),
            logged,
        );
    }
}

/// The index entries a record status owns, as (column family, key).
fn index_entries(
    entity: &str,
    join_key: &str,
    status: &RecordStatus,
) -> Vec<(&'static str, Vec<u8>)> {
    let mut entries = Vec::new();
    let Some(current) = status.status else {
        return entries;
    };
    if current != Status::InSync {
        entries.push((
            cf::DIVERGENCES,
            keys::encode_divergence(entity, current, join_key),
        ));
    }
    if current == Status::Mismatch {
        for field in &status.differing_fields {
            entries.push((
                cf::FIELD_MISMATCHES,
                keys::encode_field_mismatch(entity, field, join_key),
            ));
        }
    }
    if let (true, Some(since)) = (current.is_divergence(), status.since) {
        entries.push((
            cf::DIVERGENCE_AGE,
            keys::encode_divergence_age(entity, since, join_key),
        ));
    }
    if let Some(due) = status.due_at {
        entries.push((
            cf::PENDING_DUE,
            keys::encode_pending_due(due, entity, join_key),
        ));
    }
    entries
}
