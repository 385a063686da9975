//! What tandem knows about the completeness of the feeds: sequence holes per partition,
//! entities that need a snapshot, snapshot runs, and re-read requests.
//!
//! Change feeds lose events. A `seq` that jumps within a partition is a hole: changes to
//! unknown records were lost, so the system's entities need a full snapshot. A snapshot run
//! (`snapshot` images ended by `snapshot_end`) heals them: once its count is complete, records
//! it did not contain and that did not change since it started are missing in that system.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::record::UnverifiedReason;
use crate::system::System;
use crate::time::Timestamp;

/// The sequence numbers seen on one topic-partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamSeq {
    /// The system of the topic.
    pub system: System,
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The highest `seq` seen.
    pub last_seq: u64,
    /// Events known to be missing, over the stream's whole life.
    pub missing: u64,
    /// Since when a hole is open (until a snapshot of the system completes).
    pub open_since: Option<Timestamp>,
    /// When the latest hole opened: only a snapshot started after it heals the stream.
    #[serde(default)]
    pub last_hole_at: Option<Timestamp>,
}

/// One snapshot run in progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRun {
    /// The earliest event time of its images: changes after it are newer than the run.
    pub started_at: Timestamp,
    /// Distinct records it has sent so far.
    pub seen: u64,
    /// Its `snapshot_end`, once read. Images travel on other partitions than the end, so
    /// the end may come first: the run completes when `seen` reaches the announced count.
    #[serde(default)]
    pub end: Option<SnapshotEnd>,
}

/// What a `snapshot_end` announced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotEnd {
    /// Records the run sent.
    pub expected: u64,
    /// Event time of the end.
    pub ended_at: Timestamp,
}

/// The last run of a snapshot that completed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompletedSnapshot {
    /// Its id.
    pub snapshot_id: String,
    /// When it started (event time).
    pub started_at: Timestamp,
    /// Event time of its `snapshot_end`.
    pub completed_at: Timestamp,
    /// Records it contained.
    pub records: u64,
    /// Live records it did not contain, now marked missing in that system.
    pub marked_missing: u64,
}

/// A run that received more distinct records than its end announced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncompleteSnapshot {
    /// Its id.
    pub snapshot_id: String,
    /// Event time of its `snapshot_end`.
    pub ended_at: Timestamp,
    /// Records the end announced.
    pub expected: u64,
    /// Records received.
    pub received: u64,
}

/// Snapshots of one system and entity.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotStatus {
    /// Runs started and not ended, by id.
    pub running: BTreeMap<String, SnapshotRun>,
    /// The latest complete run.
    pub last_completed: Option<CompletedSnapshot>,
    /// The latest run that ended incomplete (its absences are not trusted).
    pub last_incomplete: Option<IncompleteSnapshot>,
    /// Runs that ended, per snapshot id. A connector that reuses one id for its runs of a
    /// table (Debezium) starts a new run after each end: its images are counted afresh.
    #[serde(default)]
    pub ended_runs: BTreeMap<String, u64>,
}

impl SnapshotStatus {
    /// The name a run's images are counted under: the snapshot id, and from the second run
    /// of one id on, the id with its run number.
    pub fn members_of(&self, snapshot_id: &str) -> String {
        match self.ended_runs.get(snapshot_id).copied().unwrap_or(0) {
            0 => snapshot_id.to_owned(),
            ended => format!("{snapshot_id}#{ended}"),
        }
    }
}

/// Feed completeness, carried in the apply state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedState {
    /// Sequence tracking per `topic/partition`.
    pub streams: BTreeMap<String, StreamSeq>,
    /// Entities that need a full snapshot, per system, with since when.
    pub needs_snapshot: BTreeMap<System, BTreeMap<String, Timestamp>>,
    /// Snapshot runs per system and entity.
    pub snapshots: BTreeMap<System, BTreeMap<String, SnapshotStatus>>,
    /// Native records waiting for a re-read.
    pub rereads_outstanding: u64,
    /// Source transactions being counted, per system, entity and transaction id.
    #[serde(default)]
    pub transactions: BTreeMap<System, BTreeMap<String, BTreeMap<String, TransactionCount>>>,
    /// Per system, the newest first-seen time of a transaction dropped from counting (too
    /// many open, or no end within an hour): an end at or before it cannot be checked.
    #[serde(default)]
    pub transactions_unchecked_until: BTreeMap<System, Timestamp>,
    /// Transactions found short of their announced events, per system.
    #[serde(default)]
    pub transactions_incomplete: BTreeMap<System, u64>,
    /// Offsets the broker no longer had when tandem came to read them, oldest first (at most
    /// [`MAX_OFFSET_LOSSES`]; the oldest healed ones go first).
    #[serde(default)]
    pub offset_losses: Vec<OffsetLoss>,
}

/// At most this many offset losses are remembered; beyond, the oldest healed one is dropped
/// (an open one is only dropped when every remembered loss is open).
pub const MAX_OFFSET_LOSSES: usize = 1000;

/// A range of a partition's offsets that tandem never read because the broker no longer had
/// them: retention or `DeleteRecords` removed them first, or the topic was deleted and
/// created again. Whatever those messages said is lost to tandem.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetLoss {
    /// The system of the topic.
    pub system: System,
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The first offset tandem did not read (for a re-created topic: the stored position in
    /// the log that is gone).
    pub first_offset: i64,
    /// The last offset tandem did not read, inclusive (for a re-created topic: the same as
    /// `first_offset`; how much the old log held beyond it is unknown).
    pub last_offset: i64,
    /// How the offsets were lost.
    pub kind: OffsetLossKind,
    /// When tandem found out (wall clock, never earlier than the reconciliation clock then).
    pub detected_at: Timestamp,
    /// When a complete snapshot of the system healed what the loss made unknown.
    #[serde(default)]
    pub healed_at: Option<Timestamp>,
}

impl OffsetLoss {
    /// Offsets in the range: messages lost, at most (compaction and transaction markers may
    /// have held some of them). Unknown for a re-created topic, whose range only names the
    /// stored position in the log that is gone.
    pub fn count(&self) -> Option<u64> {
        match self.kind {
            OffsetLossKind::TopicRecreated => None,
            OffsetLossKind::DeletedBeforeRead | OffsetLossKind::DeletedBeforeFirstRead => {
                u64::try_from(self.last_offset - self.first_offset + 1).ok()
            }
        }
    }
}

/// How offsets came to be lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OffsetLossKind {
    /// The partition's log start moved past offsets tandem had not applied yet (retention,
    /// `DeleteRecords`, a size limit) while it was stopped or behind.
    DeletedBeforeRead,
    /// The partition's first messages were deleted before tandem first read it.
    DeletedBeforeFirstRead,
    /// The topic was deleted and created again: the stored offsets described another log,
    /// and an operator told tandem to read the new one from its start.
    TopicRecreated,
}

impl OffsetLossKind {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            OffsetLossKind::DeletedBeforeRead => "deleted_before_read",
            OffsetLossKind::DeletedBeforeFirstRead => "deleted_before_first_read",
            OffsetLossKind::TopicRecreated => "topic_recreated",
        }
    }
}

/// The events of one source transaction and one entity seen so far, and what its end announced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionCount {
    /// Distinct events seen.
    pub seen: u64,
    /// Event time of the first thing seen of it (event or end).
    pub first_seen: Timestamp,
    /// What the end announced, with its time, once it arrived.
    pub end: Option<(u64, Timestamp)>,
}

/// At most this many transactions are counted at once per system; beyond, the oldest are
/// dropped (and their ends, if they come, are not checked).
pub const MAX_OPEN_TRANSACTIONS: usize = 1000;
/// A transaction whose end has not come this long (event time) after it was first seen is
/// dropped: its feed may have no transaction topic configured.
pub const TRANSACTION_END_WAIT: std::time::Duration = std::time::Duration::from_secs(3600);

impl FeedState {
    /// Remembers an offset loss, dropping the oldest healed one (or the oldest) beyond
    /// [`MAX_OFFSET_LOSSES`].
    pub fn remember_offset_loss(&mut self, loss: OffsetLoss) {
        self.offset_losses.push(loss);
        if self.offset_losses.len() > MAX_OFFSET_LOSSES {
            let oldest = self
                .offset_losses
                .iter()
                .position(|loss| loss.healed_at.is_some())
                .unwrap_or(0);
            self.offset_losses.remove(oldest);
        }
    }

    /// Takes note of an event's `seq` on its partition; returns how many events are missing
    /// before it (0 when none), opening a hole if so.
    pub fn observe_seq(
        &mut self,
        system: System,
        topic: &str,
        partition: i32,
        seq: u64,
        occurred_at: Timestamp,
    ) -> u64 {
        let stream = self
            .streams
            .entry(format!("{topic}/{partition}"))
            .or_insert_with(|| StreamSeq {
                system,
                topic: topic.to_owned(),
                partition,
                last_seq: seq.saturating_sub(1),
                missing: 0,
                open_since: None,
                last_hole_at: None,
            });
        // Re-deliveries and reordering show lower numbers: they fill nothing and open nothing.
        if seq <= stream.last_seq {
            return 0;
        }
        let missing = seq - stream.last_seq - 1;
        stream.last_seq = seq;
        if missing > 0 {
            stream.missing += missing;
            stream.open_since.get_or_insert(occurred_at);
            stream.last_hole_at = Some(
                stream
                    .last_hole_at
                    .map_or(occurred_at, |last| last.max(occurred_at)),
            );
        }
        missing
    }

    /// Marks an entity of a system as needing a snapshot taken after `hole_at`; returns
    /// whether the need is new. The need remembers the latest hole: a snapshot started
    /// before it cannot cover what that hole lost.
    pub fn require_snapshot(&mut self, system: System, entity: &str, hole_at: Timestamp) -> bool {
        let entities = self.needs_snapshot.entry(system).or_default();
        match entities.get_mut(entity) {
            Some(latest) => {
                *latest = (*latest).max(hole_at);
                false
            }
            None => {
                entities.insert(entity.to_owned(), hole_at);
                true
            }
        }
    }

    /// The status of one system's entity, created if absent.
    pub fn snapshot_status(&mut self, system: System, entity: &str) -> &mut SnapshotStatus {
        self.snapshots
            .entry(system)
            .or_default()
            .entry(entity.to_owned())
            .or_default()
    }

    /// A completed snapshot that started after the entity's latest hole satisfies its need;
    /// once a system needs none, the holes that opened before the run are closed.
    pub fn snapshot_completed(
        &mut self,
        system: System,
        entity: &str,
        started_at: Timestamp,
        completed_at: Timestamp,
    ) {
        let Some(entities) = self.needs_snapshot.get_mut(&system) else {
            return;
        };
        if entities
            .get(entity)
            .is_some_and(|latest_hole| *latest_hole <= started_at)
        {
            entities.remove(entity);
        }
        if !entities.is_empty() {
            return;
        }
        self.needs_snapshot.remove(&system);
        for stream in self
            .streams
            .values_mut()
            .filter(|stream| stream.system == system)
        {
            if stream.last_hole_at.is_none_or(|last| last <= started_at) {
                stream.open_since = None;
            }
        }
        for loss in self
            .offset_losses
            .iter_mut()
            .filter(|loss| loss.system == system && loss.healed_at.is_none())
        {
            if loss.detected_at <= started_at {
                loss.healed_at = Some(completed_at);
            }
        }
    }
}

/// A change to the set of records waiting to be read again from their system.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RereadChange {
    /// This native record needs a re-read.
    Request {
        /// Its system.
        system: System,
        /// Its entity.
        entity: String,
        /// Its native id.
        native_id: String,
        /// Why.
        reason: UnverifiedReason,
        /// Since when (event time).
        since: Timestamp,
    },
    /// This native record is trustworthy again (a full image arrived, or it was deleted).
    Resolved {
        /// Its system.
        system: System,
        /// Its entity.
        entity: String,
        /// Its native id.
        native_id: String,
    },
}

/// A request for a full snapshot, for the control topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRequest {
    /// The system to snapshot.
    pub system: System,
    /// The entity to snapshot.
    pub entity: String,
    /// Why (e.g. "seq hole on crm.source.changes/3: 12 events missing").
    pub reason: String,
    /// Event time of the detection.
    pub requested_at: Timestamp,
}

/// A native record whose changes arrive on a topic-partition (for marking it when the
/// partition loses events).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartitionMember {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The record's system.
    pub system: System,
    /// Its entity.
    pub entity: String,
    /// Its native id.
    pub native_id: String,
}

/// A record of a system seen by a snapshot run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotMember {
    /// Its system.
    pub system: System,
    /// Its entity.
    pub entity: String,
    /// The run.
    pub snapshot_id: String,
    /// The native id.
    pub native_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jump_in_seq_opens_a_hole_and_a_snapshot_closes_it() {
        let mut feed = FeedState::default();
        let at = Timestamp::from_unix_nanos(1_000);
        assert_eq!(
            feed.observe_seq(System::Source, "t", 0, 7, at),
            0,
            "the first seq seen is the start"
        );
        assert_eq!(feed.observe_seq(System::Source, "t", 0, 8, at), 0);
        assert_eq!(
            feed.observe_seq(System::Source, "t", 0, 12, at),
            3,
            "9, 10 and 11 are missing"
        );
        assert_eq!(
            feed.observe_seq(System::Source, "t", 0, 10, at),
            0,
            "a late arrival fills nothing"
        );
        assert_eq!(
            feed.observe_seq(System::Source, "t", 1, 1, at),
            0,
            "partitions are separate"
        );
        let stream = &feed.streams["t/0"];
        assert_eq!(
            (stream.last_seq, stream.missing, stream.open_since),
            (12, 3, Some(at))
        );

        assert!(feed.require_snapshot(System::Source, "contact", at));
        assert!(feed.require_snapshot(System::Source, "deal", at));
        assert!(!feed.require_snapshot(System::Source, "deal", at));
        let later = Timestamp::from_unix_nanos(5_000);
        feed.snapshot_completed(System::Source, "contact", later, later);
        assert!(
            feed.streams["t/0"].open_since.is_some(),
            "deal still needs a snapshot"
        );
        feed.snapshot_completed(
            System::Source,
            "deal",
            Timestamp::from_unix_nanos(500),
            later,
        );
        assert!(
            feed.streams["t/0"].open_since.is_some(),
            "a snapshot started before the hole heals nothing"
        );
        feed.snapshot_completed(System::Source, "deal", later, later);
        assert!(feed.streams["t/0"].open_since.is_none());
        assert_eq!(
            feed.streams["t/0"].missing, 3,
            "the count of lost events stays"
        );
    }
}
