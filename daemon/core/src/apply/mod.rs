//! The planner: applies a batch of events to a view of the current state and returns the plan
//! of every change, for the store to write in one atomic batch.
//!
//! The planner does no I/O. It reads through a [`StateView`] (the store, in production; a map,
//! in tests), keeps its own overlay so later events of a batch see earlier ones, and decides
//! deduplication, order, completeness, join-key moves, record status, aggregate counts,
//! sequence holes, snapshot runs and re-read requests.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

mod feed;
pub mod pending;

use crate::cutover::{self, Phase, StepOrder, TransitionRecord};
use crate::event::{ChangeEvent, DeadLetterReason, Op};
use crate::feed::{OffsetLoss, PartitionMember, RereadChange, SnapshotMember, SnapshotRequest};
use crate::mapping::{EntityMapping, Mapping};
use crate::ownership::{
    self, Compensation, EntityOwnership, OwnershipPolicy, Unattributed, Violation, ViolationKind,
    WriterCount, WriterKey,
};
use crate::record::{
    compare, reference_id, referenced_records, with_grace, Cause, RecordRow, RecordStatus,
    Reference, Rekey, Resolved, SideRecord, Status, Unverified, UnverifiedReason,
};
use crate::side;
use crate::summary::ApplyState;
use crate::system::System;
use crate::time::Timestamp;

/// An error of the view the planner reads from (a store read failed).
pub type ViewError = Box<dyn std::error::Error + Send + Sync>;

/// Result of a view read.
pub type ViewResult<T> = Result<T, ViewError>;

/// Read access to the state as of the last committed batch.
pub trait StateView {
    /// Whether an event id was already recorded for this system.
    fn event_seen(&self, system: System, event_id: &str) -> ViewResult<bool>;
    /// The join key a native record currently belongs to.
    fn join_key(&self, system: System, entity: &str, native_id: &str)
        -> ViewResult<Option<String>>;
    /// The stored record of a join key.
    fn record(&self, entity: &str, join_key: &str) -> ViewResult<Option<RecordRow>>;
    /// Every native id of a system's entity that has a join key (for snapshot completion).
    fn native_ids(&self, system: System, entity: &str) -> ViewResult<Vec<String>>;
    /// Every native record whose changes arrived on a topic-partition.
    fn partition_members(
        &self,
        topic: &str,
        partition: i32,
    ) -> ViewResult<Vec<(System, String, String)>>;
    /// The records (entity, join key) whose evaluation looked up this native record through
    /// a `ref` field.
    fn referencing(
        &self,
        system: System,
        entity: &str,
        native_id: &str,
    ) -> ViewResult<Vec<(String, String)>>;
    /// Whether a native record is unverified (waits for a re-read), as of the last batch.
    fn is_unverified(&self, system: System, entity: &str, native_id: &str) -> ViewResult<bool>;
    /// Whether a snapshot run already contained a native record.
    fn snapshot_member(
        &self,
        system: System,
        entity: &str,
        snapshot_id: &str,
        native_id: &str,
    ) -> ViewResult<bool>;
    /// The pending records whose grace ends at or before `up_to`: (end of grace, entity,
    /// join key), in that order, at most `limit`.
    fn due_records(&self, up_to: Timestamp, limit: usize) -> ViewResult<Vec<DueRecord>>;
}

/// A pending record whose grace ends: when, its entity and its join key.
pub type DueRecord = (Timestamp, String, String);

/// One message of a batch, as the planner sees it.
#[derive(Clone, Copy, Debug)]
pub enum Input<'a> {
    /// A decoded change event read from one of `system`'s topics.
    Event {
        /// The system whose topic it came from.
        system: System,
        /// The event.
        event: &'a ChangeEvent,
        /// The topic and partition it was read from (for `seq` holes), if known.
        partition: Option<(&'a str, i32)>,
    },
    /// A message that decoded to no events: it is read and counted, nothing more.
    Skipped {
        /// The system whose topic it came from.
        system: System,
    },
    /// A message that could not be decoded and goes to the dead-letter topic.
    DeadLetter {
        /// The system whose topic it came from.
        system: System,
        /// Why it was rejected.
        reason: DeadLetterReason,
    },
    /// The consumer moved past offsets that hold nothing for tandem (transaction markers,
    /// messages of aborted transactions): only the partition's position changes.
    PassedOver,
    /// Offsets the broker no longer had when tandem came to read them: every record known on
    /// the partition becomes unverified and the system's entities need a snapshot.
    OffsetsLost(&'a OffsetLoss),
}

/// What became of one input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Recorded and applied to state.
    Applied,
    /// Recorded, but older than the stored version, so state was left alone.
    Stale,
    /// A re-delivery of an event already recorded; dropped.
    Duplicate,
    /// An entity the configuration does not map; counted and skipped.
    UnmappedEntity,
    /// Not decodable; goes to the dead-letter topic.
    DeadLettered,
    /// Read, but carrying nothing to apply.
    Skipped,
    /// No message at all: a position passed over, or offsets the broker no longer had.
    Position,
}

impl Outcome {
    /// Whether the event belongs in the event log and the record history.
    pub const fn is_recorded(self) -> bool {
        matches!(self, Outcome::Applied | Outcome::Stale)
    }
}

/// A native record that now belongs to a different join key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinKeyChange {
    /// The system of the native record.
    pub system: System,
    /// The entity.
    pub entity: String,
    /// The native id.
    pub native_id: String,
    /// The join key it belongs to now.
    pub join_key: String,
}

/// A record whose row or status changed.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordChange {
    /// The entity.
    pub entity: String,
    /// The join key.
    pub join_key: String,
    /// The status before the batch, to remove its index entries.
    pub before: RecordStatus,
    /// The row after the batch; `None` when no native record claims the key any more.
    /// Shared, because the shell may keep it (a cache of rows being written) and write it.
    pub after: Option<Arc<RecordRow>>,
}

/// Everything a batch changes, to be written atomically with the batch's offsets.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// One outcome per input, in input order.
    pub outcomes: Vec<Outcome>,
    /// Native records that joined a (different) key.
    pub join_keys: Vec<JoinKeyChange>,
    /// Records that changed, in key order.
    pub records: Vec<RecordChange>,
    /// Clock, counters, summaries and feed state after the batch.
    pub state: ApplyState,
    /// Native records that need, or no longer need, a re-read.
    pub rereads: Vec<RereadChange>,
    /// Native records seen by snapshot runs.
    pub snapshot_members: Vec<SnapshotMember>,
    /// Snapshots to ask the systems for.
    pub snapshot_requests: Vec<SnapshotRequest>,
    /// Native records first seen on a topic-partition.
    pub partition_members: Vec<PartitionMember>,
    /// Writes that broke the ownership rule, in input order.
    pub violations: Vec<Violation>,
    /// Writes per writer, entity and day, to add to the writers report.
    pub writers: Vec<(WriterKey, WriterCount)>,
    /// Cutover transitions taken in this batch, to publish on the control topic.
    pub transitions: Vec<TransitionRecord>,
    /// Commands undoing non-owner writes, for the commands topic.
    pub compensations: Vec<Compensation>,
    /// References looked up by the evaluations of this batch.
    pub references: Vec<Reference>,
}

/// The join key given to a native record that carries none: it cannot match anything on the
/// other side, and is reported as missing there until a key arrives.
pub fn unjoined_key(system: System, native_id: &str) -> String {
    JoinKey::Unjoined { system, native_id }.to_string()
}

/// A record's join key as the planner reasons about it: the key both systems share, or the
/// stand-in for a native record whose events have not told its key yet. Stored and shown as
/// text: the stand-in as `unjoined:<system>:<native id>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinKey<'k> {
    /// A key from the record's fields (or external id).
    Joined(&'k str),
    /// A native record known only by its id so far.
    Unjoined {
        /// Its system.
        system: System,
        /// Its native id.
        native_id: &'k str,
    },
}

impl<'k> JoinKey<'k> {
    const UNJOINED: &'static str = "unjoined:";

    /// The join key a stored text stands for.
    pub fn parse(stored: &'k str) -> JoinKey<'k> {
        let unjoined = stored.strip_prefix(Self::UNJOINED).and_then(|rest| {
            let (system, native_id) = rest.split_once(':')?;
            let system = System::ALL
                .into_iter()
                .find(|candidate| candidate.as_str() == system)?;
            Some(JoinKey::Unjoined { system, native_id })
        });
        unjoined.unwrap_or(JoinKey::Joined(stored))
    }

    /// Whether it is the stand-in of a record without a key.
    pub fn is_unjoined(self) -> bool {
        matches!(self, JoinKey::Unjoined { .. })
    }
}

impl std::fmt::Display for JoinKey<'_> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JoinKey::Joined(key) => formatter.write_str(key),
            JoinKey::Unjoined { system, native_id } => {
                write!(formatter, "{}{system}:{native_id}", Self::UNJOINED)
            }
        }
    }
}

struct WorkingRecord {
    before: RecordStatus,
    row: RecordRow,
    /// Whether an event changed the row (a re-evaluation alone does not).
    dirty: bool,
    /// The references the stored evaluation looked up, so already in the index.
    indexed_references: Vec<(System, String, String)>,
}

impl WorkingRecord {
    fn stored(entity: &EntityMapping, row: RecordRow) -> Self {
        // A stored status that compared the sides (in sync, or fields differ) looked up
        // every reference the stored row holds, and the index has them.
        let compared =
            row.status.status == Some(Status::InSync) || !row.status.differing_fields.is_empty();
        let indexed_references = if compared {
            referenced_records(entity, &row)
        } else {
            Vec::new()
        };
        WorkingRecord {
            before: row.status.clone(),
            row,
            dirty: false,
            indexed_references,
        }
    }
}

/// Plans one batch. Create with [`Planner::new`], feed inputs, then [`Planner::finish`].
pub struct Planner<'a, V: StateView> {
    mapping: &'a Mapping,
    grace: Duration,
    view: &'a V,
    state: ApplyState,
    outcomes: Vec<Outcome>,
    seen_events: HashSet<(System, String)>,
    join_keys: HashMap<(System, String, String), Option<String>>,
    changed_join_keys: BTreeMap<(System, String, String), String>,
    records: HashMap<(String, String), WorkingRecord>,
    rereads: Vec<RereadChange>,
    snapshot_members: HashSet<(System, String, String, String)>,
    snapshot_requests: Vec<SnapshotRequest>,
    partition_members: BTreeSet<PartitionMember>,
    ownership: &'a OwnershipPolicy,
    violations: Vec<Violation>,
    writers: BTreeMap<WriterKey, WriterCount>,
    transitions: Vec<TransitionRecord>,
    compensations: Vec<Compensation>,
    references: BTreeSet<Reference>,
}

/// Ownership when the configuration says nothing: the source owns everything.
static DEFAULT_OWNERSHIP: OwnershipPolicy = OwnershipPolicy {
    owner: System::Source,
    entities: BTreeMap::new(),
    allowed: BTreeMap::new(),
    unattributed: Unattributed::Report,
    compensate: false,
};

impl<'a, V: StateView> Planner<'a, V> {
    /// Judges writes by these ownership rules (the default: the source owns everything).
    pub fn with_ownership(mut self, ownership: &'a OwnershipPolicy) -> Self {
        self.ownership = ownership;
        self
    }

    /// Starts a batch on top of `state`, the apply state after the last committed batch.
    pub fn new(mapping: &'a Mapping, grace: Duration, view: &'a V, state: ApplyState) -> Self {
        Planner {
            mapping,
            grace,
            view,
            state,
            outcomes: Vec::new(),
            seen_events: HashSet::new(),
            join_keys: HashMap::new(),
            changed_join_keys: BTreeMap::new(),
            records: HashMap::new(),
            rereads: Vec::new(),
            snapshot_members: HashSet::new(),
            snapshot_requests: Vec::new(),
            ownership: &DEFAULT_OWNERSHIP,
            violations: Vec::new(),
            writers: BTreeMap::new(),
            transitions: Vec::new(),
            compensations: Vec::new(),
            references: BTreeSet::new(),
            partition_members: BTreeSet::new(),
        }
    }

    /// The reconciliation clock so far.
    pub fn clock(&self) -> Timestamp {
        self.state.clock
    }

    /// Moves the clock forward to at least `floor` (the idle-stream rule of the shell).
    pub fn advance_clock(&mut self, floor: Timestamp) {
        self.state.clock = self.state.clock.max(floor);
    }

    /// Applies one input and returns its outcome.
    pub fn apply(&mut self, input: Input<'_>) -> ViewResult<Outcome> {
        let outcome = match input {
            Input::DeadLetter { system, reason } => {
                self.state.counters.system_mut(system).dead_lettered += 1;
                *self
                    .state
                    .counters
                    .dead_lettered_by_reason
                    .entry(reason)
                    .or_default() += 1;
                Outcome::DeadLettered
            }
            Input::Skipped { system } => {
                self.state.counters.system_mut(system).skipped += 1;
                Outcome::Skipped
            }
            Input::PassedOver => Outcome::Position,
            Input::OffsetsLost(loss) => {
                self.offsets_lost(loss)?;
                Outcome::Position
            }
            Input::Event {
                system,
                event,
                partition,
            } => self.apply_event(system, event, partition)?,
        };
        self.outcomes.push(outcome);
        Ok(outcome)
    }

    /// Takes a cutover step: checks it is allowed from the current phase, moves the phase
    /// and, for a flip or a rollback, every entity's owner and epoch. Returns the record kept
    /// in the history and published, or why the step is refused.
    pub fn transition(
        &mut self,
        order: StepOrder,
        at: Timestamp,
    ) -> Result<TransitionRecord, String> {
        let StepOrder {
            transition,
            by,
            caller,
            reason,
            evidence,
            measured_at_events,
        } = order;
        let from = self.state.ownership.cutover.phase;
        let to = transition.target(from)?;
        let applied =
            self.state.counters.source.events_applied + self.state.counters.target.events_applied;
        if let Some(measured) = measured_at_events.filter(|measured| *measured != applied) {
            return Err(format!(
                "{} events were applied after the gates were measured (on {measured} events, now {applied}): the evidence is out of date; look at GET /v1/cutover/readiness and ask again",
                applied.saturating_sub(measured)
            ));
        }
        let entities: Vec<String> = self
            .mapping
            .entities()
            .map(|entity| entity.name.clone())
            .collect();
        let policy = self.ownership;
        if let Some(after) =
            cutover::ownership_after(transition, policy, &self.state.ownership, &entities)
        {
            cutover::apply_ownership(&mut self.state.ownership, &after);
        }
        let ownership: BTreeMap<String, EntityOwnership> = entities
            .iter()
            .map(|entity| (entity.clone(), policy.of(&self.state.ownership, entity)))
            .collect();
        // The owner most entities have (the target after a flip, the configured owner
        // otherwise) and the highest epoch; `ownership` has every entity's own.
        let owner = match to {
            Phase::Flipped | Phase::Complete => System::Target,
            Phase::ParallelRun | Phase::Frozen | Phase::Verified => policy.owner,
        };
        let epoch = ownership
            .values()
            .map(|own| own.epoch)
            .max()
            .unwrap_or(ownership::FIRST_EPOCH);
        let record = TransitionRecord {
            transition,
            from,
            to,
            by,
            caller,
            reason,
            at,
            owner,
            epoch,
            ownership,
            evidence,
        };
        let cutover = &mut self.state.ownership.cutover;
        cutover.phase = to;
        cutover.since = Some(at);
        cutover.history.push(record.clone());
        self.transitions.push(record.clone());
        Ok(record)
    }

    /// Settles what the clock decides about the feeds: source transactions whose end came
    /// more than grace ago with events missing make their entity's records unverified.
    pub fn settle_feeds(&mut self) -> ViewResult<()> {
        self.settle_transactions()
    }

    /// Re-evaluates a stored record without an event: its pending period may have ended.
    pub fn reevaluate(&mut self, entity: &str, join_key: &str) -> ViewResult<()> {
        if self.mapping.entity(entity).is_some() {
            self.working_record(entity, join_key)?;
        }
        Ok(())
    }

    /// Re-evaluates a stored record read by the caller (a re-evaluation walks the store in
    /// order instead of looking each record up). The row must be the stored one.
    pub fn reevaluate_row(&mut self, entity: &str, join_key: String, row: RecordRow) {
        let Some(rules) = self.mapping.entity(entity) else {
            return;
        };
        self.records
            .entry((entity.to_owned(), join_key))
            .or_insert_with(|| WorkingRecord::stored(rules, row));
    }

    /// Adds references a re-evaluation looked up outside the planner (it evaluates every
    /// stored record, and passes only the changed ones to the planner).
    pub fn add_references(&mut self, references: impl IntoIterator<Item = Reference>) {
        self.references.extend(references);
    }

    /// Applies one event: counts it for its stream, drops what is not for a mapped entity or
    /// was seen before, handles the events that change no native record, then the change
    /// itself.
    fn apply_event(
        &mut self,
        system: System,
        event: &ChangeEvent,
        partition: Option<(&str, i32)>,
    ) -> ViewResult<Outcome> {
        // Every event of the stream counts for its sequence, mapped entity or not: the
        // stream numbers them all, so skipping some would look like a hole.
        if let (Some(seq), Some((topic, partition))) = (event.seq, partition) {
            self.observe_seq(system, event, topic, partition, seq)?;
        }
        let mapping = self.mapping;
        let Some(entity) = mapping.entity(&event.entity) else {
            *self
                .state
                .counters
                .system_mut(system)
                .unmapped_entities
                .entry(event.entity.clone())
                .or_default() += 1;
            return Ok(Outcome::UnmappedEntity);
        };
        if !self.first_sight_of(system, event)? {
            self.state.counters.system_mut(system).duplicates_dropped += 1;
            return Ok(Outcome::Duplicate);
        }
        self.state.counters.system_mut(system).events_applied += 1;
        self.state.clock = self.state.clock.max(event.occurred_at);
        match self.apply_control(system, entity, event)? {
            ControlStep::Done(outcome) => Ok(outcome),
            ControlStep::Change { verdict } => {
                self.apply_change(system, entity, event, partition, verdict)
            }
        }
    }

    /// Whether an event id is new (it is remembered from now on).
    fn first_sight_of(&mut self, system: System, event: &ChangeEvent) -> ViewResult<bool> {
        let event_key = (system, event.event_id.clone());
        if self.seen_events.contains(&event_key) || self.view.event_seen(system, &event.event_id)? {
            return Ok(false);
        }
        self.seen_events.insert(event_key);
        Ok(true)
    }

    /// The events that change no native record (a snapshot run's end, a transaction's end, a
    /// gap that names no record) and the bookkeeping every write gets (the ownership verdict,
    /// the transaction count).
    fn apply_control(
        &mut self,
        system: System,
        entity: &EntityMapping,
        event: &ChangeEvent,
    ) -> ViewResult<ControlStep> {
        if event.op == Op::SnapshotEnd {
            self.end_snapshot(system, entity, event)?;
            return Ok(ControlStep::Done(Outcome::Applied));
        }
        let verdict = if ownership::is_write(event.op) {
            self.judge_write(system, entity, event)?
        } else {
            None
        };
        if event.op == Op::TransactionEnd {
            self.end_transaction(system, entity, event);
            return Ok(ControlStep::Done(Outcome::Applied));
        }
        if let Some(transaction) = &event.transaction_id {
            self.count_in_transaction(system, entity, transaction, event.occurred_at);
        }
        if event.op == Op::Gap && event.id.is_empty() {
            self.entity_gap(system, entity, event)?;
            return Ok(ControlStep::Done(Outcome::Applied));
        }
        Ok(ControlStep::Change { verdict })
    }

    /// A change to one native record: a stale one is counted (and may need a re-read);
    /// otherwise the record's new state replaces the old one under its join key.
    fn apply_change(
        &mut self,
        system: System,
        entity: &EntityMapping,
        event: &ChangeEvent,
        partition: Option<(&str, i32)>,
        verdict: Option<ViolationKind>,
    ) -> ViewResult<Outcome> {
        let stored_key = self.current_join_key(system, &entity.name, &event.id)?;
        let current = match &stored_key {
            Some(join_key) => self
                .working_record(&entity.name, join_key)?
                .row
                .side(system)
                .iter()
                .find(|side| side.native_id == event.id)
                .cloned(),
            None => None,
        };
        if event.op == Op::Snapshot {
            self.count_in_snapshot(system, entity, event)?;
        }
        if let Some(stored) = current
            .as_ref()
            .filter(|stored| side::is_stale(stored, event))
        {
            self.state.counters.system_mut(system).stale_versions += 1;
            if let Some(join_key) = &stored_key {
                // What it held still tells from when the sides differ.
                let record = self.working_record(&entity.name, join_key)?;
                if let Some(side) = record
                    .row
                    .side_mut(system)
                    .iter_mut()
                    .find(|side| side.native_id == event.id)
                {
                    if crate::timeline::insert_stale(side, event) {
                        record.dirty = true;
                    }
                }
            }
            if let Some(join_key) = stored_key
                .as_ref()
                .filter(|_| needs_reread_when_stale(stored, event))
            {
                self.mark_out_of_order(system, entity, event, join_key)?;
            }
            self.learn_join_key(system, entity, event, stored_key.as_ref())?;
            return Ok(Outcome::Stale);
        }
        if let (None, Some((topic, partition))) = (&current, partition) {
            self.partition_members.insert(PartitionMember {
                topic: topic.to_owned(),
                partition,
                system,
                entity: entity.name.clone(),
                native_id: event.id.clone(),
            });
        }
        let was_deleted = current.as_ref().is_some_and(|side| side.deleted);
        let side = self.changed_side(system, entity, event, current, verdict)?;
        let join_key = entity
            .join
            .for_system(system)
            .key_in(event)
            .or_else(|| stored_key.clone())
            .unwrap_or_else(|| unjoined_key(system, &event.id));
        let placement = Placement {
            stored_key,
            join_key,
            was_deleted,
        };
        self.place_side(system, entity, event, side, placement)?;
        Ok(Outcome::Applied)
    }

    /// An older partial update without a version may carry a field the newer partial change
    /// did not touch: dropping it could keep a stale value and applying it could overwrite a
    /// newer one, so the record is marked unverified and read again.
    fn mark_out_of_order(
        &mut self,
        system: System,
        entity: &EntityMapping,
        event: &ChangeEvent,
        join_key: &str,
    ) -> ViewResult<()> {
        let record = self.working_record(&entity.name, join_key)?;
        let Some(side) = record
            .row
            .side_mut(system)
            .iter_mut()
            .find(|side| side.native_id == event.id)
        else {
            return Ok(());
        };
        side.unverified = Some(Unverified {
            reason: UnverifiedReason::OutOfOrder,
            since: event.occurred_at,
        });
        record.dirty = true;
        self.request_reread(RereadChange::Request {
            system,
            entity: entity.name.clone(),
            native_id: event.id.clone(),
            reason: UnverifiedReason::OutOfOrder,
            since: event.occurred_at,
        })
    }

    /// The native record after the change, with its ownership verdict; a doubt that starts or
    /// ends with it asks for a re-read or withdraws one.
    fn changed_side(
        &mut self,
        system: System,
        entity: &EntityMapping,
        event: &ChangeEvent,
        current: Option<SideRecord>,
        verdict: Option<ViolationKind>,
    ) -> ViewResult<SideRecord> {
        let was_unverified = current
            .as_ref()
            .is_some_and(|side| side.unverified.is_some());
        let mut side = side::apply(current, event);
        if ownership::is_write(event.op) {
            side.non_owner_write = verdict == Some(ViolationKind::NonOwnerWrite);
        }
        match (&side.unverified, was_unverified) {
            (Some(unverified), false) => self.request_reread(RereadChange::Request {
                system,
                entity: entity.name.clone(),
                native_id: event.id.clone(),
                reason: unverified.reason,
                since: unverified.since,
            })?,
            (None, true) => self.request_reread(RereadChange::Resolved {
                system,
                entity: entity.name.clone(),
                native_id: event.id.clone(),
            })?,
            _ => {}
        }
        Ok(side)
    }

    /// Puts the changed native record under `join_key`. Join keys are immutable: a native
    /// record that comes under another key was either created again for another record (its
    /// id reused) or re-keyed. Either way it leaves its old record, and its new record says
    /// so until it is deleted.
    fn place_side(
        &mut self,
        system: System,
        entity: &EntityMapping,
        event: &ChangeEvent,
        mut side: SideRecord,
        placement: Placement,
    ) -> ViewResult<()> {
        let Placement {
            stored_key,
            join_key,
            was_deleted,
        } = placement;
        if let Some(old_key) = stored_key.as_ref().filter(|old| **old != join_key) {
            if !JoinKey::parse(old_key).is_unjoined() {
                side.rekeyed = Some(Rekey {
                    from: old_key.clone(),
                    recreated: event.op == Op::Create || was_deleted,
                    at: event.occurred_at,
                });
            }
            let unjoined = JoinKey::parse(old_key).is_unjoined();
            let old_record = self.working_record(&entity.name, old_key)?;
            let sides = old_record.row.side_mut(system);
            if let Some(position) = sides
                .iter()
                .position(|existing| existing.native_id == event.id)
            {
                let mut departed = sides.remove(position);
                if !unjoined {
                    // Its old record keeps what it held there, gone from the move on.
                    if !departed.deleted {
                        crate::timeline::note_presence(&mut departed, false, event.occurred_at);
                        departed.deleted = true;
                    }
                    old_record.row.departed.push((system, departed));
                }
            }
            old_record.dirty = true;
            if !unjoined {
                // Under its new key it exists from the move on.
                crate::timeline::start_over(&mut side, event.occurred_at);
            }
        }
        if side.deleted {
            side.rekeyed = None;
        }
        if stored_key.as_ref() != Some(&join_key) {
            self.note_join_key(system, entity, &event.id, &join_key)?;
        }
        let record = self.working_record(&entity.name, &join_key)?;
        let sides = record.row.side_mut(system);
        match sides
            .iter_mut()
            .find(|existing| existing.native_id == event.id)
        {
            Some(existing) => *existing = side,
            None => sides.push(side),
        }
        record.dirty = true;
        Ok(())
    }

    /// Notes that a native record belongs to `join_key` now.
    fn note_join_key(
        &mut self,
        system: System,
        entity: &EntityMapping,
        native_id: &str,
        join_key: &str,
    ) -> ViewResult<()> {
        let native = (system, entity.name.clone(), native_id.to_owned());
        self.join_keys
            .insert(native.clone(), Some(join_key.to_owned()));
        self.changed_join_keys.insert(native, join_key.to_owned());
        if self.mapping.is_referenced(&entity.name) {
            // References to this record resolve differently now (they may have been
            // dangling): the records holding them are evaluated again with this batch.
            for (from_entity, from_key) in self.view.referencing(system, &entity.name, native_id)? {
                if self.mapping.entity(&from_entity).is_some() {
                    self.working_record(&from_entity, &from_key)?;
                }
            }
        }
        Ok(())
    }

    /// A record first seen through a change without its key (a delete that overtook its
    /// create) sits under an `unjoined:` key. An older event that carries the key tells it,
    /// stale as it is (join keys are immutable): the stored side moves under that key as it
    /// is, so that the record is counted, and references to it resolve.
    fn learn_join_key(
        &mut self,
        system: System,
        entity: &EntityMapping,
        event: &ChangeEvent,
        stored_key: Option<&String>,
    ) -> ViewResult<()> {
        let Some(old_key) = stored_key.filter(|key| JoinKey::parse(key).is_unjoined()) else {
            return Ok(());
        };
        let Some(join_key) = entity.join.for_system(system).key_in(event) else {
            return Ok(());
        };
        let old_record = self.working_record(&entity.name, old_key)?;
        let sides = old_record.row.side_mut(system);
        let Some(position) = sides.iter().position(|side| side.native_id == event.id) else {
            return Ok(());
        };
        let side = sides.remove(position);
        old_record.dirty = true;
        self.note_join_key(system, entity, &event.id, &join_key)?;
        let record = self.working_record(&entity.name, &join_key)?;
        let sides = record.row.side_mut(system);
        sides.retain(|existing| existing.native_id != event.id);
        sides.push(side);
        record.dirty = true;
        Ok(())
    }

    /// Queues a re-read change and keeps the count of records waiting for one. The records
    /// whose `ref` fields point at the native record are evaluated again with this batch: a
    /// reference to an unverified record cannot be vouched for, and one whose doubt is
    /// resolved can be again.
    fn request_reread(&mut self, change: RereadChange) -> ViewResult<()> {
        let outstanding = &mut self.state.feed.rereads_outstanding;
        let (system, entity, native_id) = match &change {
            RereadChange::Request {
                system,
                entity,
                native_id,
                ..
            } => {
                *outstanding += 1;
                (*system, entity.clone(), native_id.clone())
            }
            RereadChange::Resolved {
                system,
                entity,
                native_id,
            } => {
                *outstanding = outstanding.saturating_sub(1);
                (*system, entity.clone(), native_id.clone())
            }
        };
        self.rereads.push(change);
        if self.mapping.is_referenced(&entity) {
            for (from_entity, from_key) in self.view.referencing(system, &entity, &native_id)? {
                if self.mapping.entity(&from_entity).is_some() {
                    self.working_record(&from_entity, &from_key)?;
                }
            }
        }
        Ok(())
    }

    fn current_join_key(
        &mut self,
        system: System,
        entity: &str,
        native_id: &str,
    ) -> ViewResult<Option<String>> {
        let native = (system, entity.to_owned(), native_id.to_owned());
        if let Some(known) = self.join_keys.get(&native) {
            return Ok(known.clone());
        }
        let stored = self.view.join_key(system, entity, native_id)?;
        self.join_keys.insert(native, stored.clone());
        Ok(stored)
    }

    fn working_record(&mut self, entity: &str, join_key: &str) -> ViewResult<&mut WorkingRecord> {
        let key = (entity.to_owned(), join_key.to_owned());
        if !self.records.contains_key(&key) {
            let row = self.view.record(entity, join_key)?.unwrap_or_default();
            let rules = self
                .mapping
                .entity(entity)
                .expect("invariant: only mapped entities have working records");
            self.records
                .insert(key.clone(), WorkingRecord::stored(rules, row));
        }
        Ok(self
            .records
            .get_mut(&key)
            .expect("invariant: the working record was inserted just above"))
    }

    /// Evaluates every touched record at the final clock and returns the plan.
    pub fn finish(mut self) -> Plan {
        let clock = self.state.clock;
        let mut records = Vec::with_capacity(self.records.len());
        let mut touched: Vec<_> = self.records.into_iter().collect();
        touched.sort_by(|left, right| left.0.cmp(&right.0));
        // Whether the referenceable native records this batch touched are unverified after
        // it (the others as stored).
        let mut doubts: HashMap<(System, String, String), bool> = HashMap::new();
        for ((entity_name, _), working) in &touched {
            if !self.mapping.is_referenced(entity_name) {
                continue;
            }
            for system in [System::Source, System::Target] {
                for side in working.row.side(system) {
                    doubts.insert(
                        (system, entity_name.clone(), side.native_id.clone()),
                        side.unverified.is_some(),
                    );
                }
            }
        }
        for ((entity_name, join_key), mut working) in touched {
            let entity = self
                .mapping
                .entity(&entity_name)
                .expect("invariant: only mapped entities have working records");
            let join_keys = &self.join_keys;
            let doubts = &doubts;
            let view = self.view;
            let references = &mut self.references;
            let indexed = &working.indexed_references;
            let mut resolve = |system: System, referenced: &str, native_id: &str| {
                let known = indexed.iter().any(|(known_system, known_entity, id)| {
                    *known_system == system && known_entity == referenced && id == native_id
                });
                if !known {
                    references.insert(Reference {
                        system,
                        entity: referenced.to_owned(),
                        native_id: native_id.to_owned(),
                        from_entity: entity_name.clone(),
                        from_key: join_key.clone(),
                    });
                }
                let native = (system, referenced.to_owned(), native_id.to_owned());
                let join_key = match join_keys.get(&native) {
                    Some(known) => known.clone(),
                    // A store that cannot be read leaves the reference unresolved: a
                    // divergence reported, never a false in_sync.
                    None => view.join_key(system, referenced, native_id).ok().flatten(),
                }?;
                let unverified = match doubts.get(&native) {
                    Some(unverified) => *unverified,
                    // Unreadable: doubtful, never a false in_sync.
                    None => view
                        .is_unverified(system, referenced, native_id)
                        .unwrap_or(true),
                };
                Some(Resolved {
                    join_key,
                    unverified,
                })
            };
            let after = evaluate(entity, &working.row, clock, self.grace, &mut resolve);
            if working.dirty {
                crate::timeline::let_go(entity, &mut working.row, &mut resolve);
            }
            if after.status == Some(Status::InSync) {
                // Both sides agree under the new key: the re-keying has been carried across.
                for side in working.row.source.iter_mut().chain(&mut working.row.target) {
                    if side.rekeyed.take().is_some() {
                        working.dirty = true;
                    }
                }
            }
            match self.state.summaries.get_mut(&entity_name) {
                Some(summary) => summary.transition(&working.before, &after),
                None => self
                    .state
                    .summaries
                    .entry(entity_name.clone())
                    .or_default()
                    .transition(&working.before, &after),
            }
            if !working.dirty && after == working.before {
                continue;
            }
            working.row.status = after;
            let after_row = (!working.row.is_empty()).then(|| Arc::new(working.row));
            records.push(RecordChange {
                entity: entity_name,
                join_key,
                before: working.before,
                after: after_row,
            });
        }
        Plan {
            outcomes: self.outcomes,
            join_keys: self
                .changed_join_keys
                .into_iter()
                .map(|((system, entity, native_id), join_key)| JoinKeyChange {
                    system,
                    entity,
                    native_id,
                    join_key,
                })
                .collect(),
            records,
            state: self.state,
            rereads: self.rereads,
            snapshot_members: self
                .snapshot_members
                .into_iter()
                .map(|(system, entity, snapshot_id, native_id)| SnapshotMember {
                    system,
                    entity,
                    snapshot_id,
                    native_id,
                })
                .collect(),
            snapshot_requests: self.snapshot_requests,
            partition_members: self.partition_members.into_iter().collect(),
            violations: self.violations,
            writers: self.writers.into_iter().collect(),
            transitions: self.transitions,
            compensations: self.compensations,
            references: self.references.into_iter().collect(),
        }
    }
}

impl<V: StateView> Planner<'_, V> {
    /// Counts a write for its writer and, if it breaks the ownership rule, records the
    /// violation.
    fn judge_write(
        &mut self,
        system: System,
        entity: &EntityMapping,
        event: &ChangeEvent,
    ) -> ViewResult<Option<ViolationKind>> {
        let verdict = self.ownership.judge(&self.state.ownership, system, event);
        let key = WriterKey {
            system,
            kind: event.actor.as_ref().map(|actor| actor.kind),
            id: event
                .actor
                .as_ref()
                .and_then(|actor| actor.id.clone())
                .unwrap_or_default(),
            entity: entity.name.clone(),
            day: ownership::day_of(event.occurred_at),
        };
        self.writers
            .entry(key)
            .or_insert(WriterCount {
                writes: 0,
                violations: 0,
                last_seen: event.occurred_at,
            })
            .add(WriterCount {
                writes: 1,
                violations: u64::from(verdict.is_some()),
                last_seen: event.occurred_at,
            });
        let Some(kind) = verdict else {
            return Ok(None);
        };
        *self
            .state
            .counters
            .system_mut(system)
            .violations
            .entry(kind)
            .or_default() += 1;
        let join_key = match entity.join.for_system(system).key_in(event) {
            Some(key) => key,
            None => self
                .current_join_key(system, &entity.name, &event.id)?
                .unwrap_or_else(|| unjoined_key(system, &event.id)),
        };
        let (_, ownership) =
            self.ownership
                .in_effect(&self.state.ownership, &entity.name, event.occurred_at);
        self.violations.push(Violation {
            kind,
            system,
            entity: entity.name.clone(),
            join_key,
            native_id: event.id.clone(),
            actor: event.actor.clone(),
            op: event.op,
            fields: event
                .fields
                .as_ref()
                .map(|fields| fields.keys().cloned().collect())
                .unwrap_or_default(),
            occurred_at: event.occurred_at,
            event_id: event.event_id.clone(),
            owner: ownership.owner,
            epoch: ownership.epoch,
        });
        if self.ownership.compensate
            && kind == ViolationKind::NonOwnerWrite
            && event.op == Op::Update
        {
            self.compensate(system, entity, event, ownership)?;
        }
        Ok(Some(kind))
    }

    /// The command that sets the fields a non-owner write touched back to the owner's
    /// values, if the owner holds the record (mapped fields only).
    fn compensate(
        &mut self,
        system: System,
        entity: &EntityMapping,
        event: &ChangeEvent,
        ownership: EntityOwnership,
    ) -> ViewResult<()> {
        let owner = system.other();
        let Some(join_key) = self.current_join_key(system, &entity.name, &event.id)? else {
            return Ok(());
        };
        let record = self.working_record(&entity.name, &join_key)?;
        let Some(owner_side) = record.row.live(owner) else {
            return Ok(());
        };
        // The touched fields of the written record, set to what the owner's record says
        // through the field rules (a rule that cannot carry a value back is left out).
        let owner_fields = owner_side.fields.clone();
        let mut set = BTreeMap::new();
        for field in event.fields.iter().flat_map(|fields| fields.keys()) {
            for rule in &entity.fields {
                if let Some(referenced) = &rule.reference {
                    // A reference is set to the written system's id of the record joined to
                    // the one the owner's record points at.
                    let (owner_name, name) = match system {
                        System::Target => (rule.source.to_string(), rule.target.clone()),
                        System::Source => (rule.target.clone(), rule.source.to_string()),
                    };
                    if name != *field {
                        continue;
                    }
                    let value = owner_fields.get(&owner_name).unwrap_or(&Value::Null);
                    if let Some(value) = self.translate_reference(owner, referenced, value)? {
                        set.insert(name, value);
                    }
                    continue;
                }
                let owner_side = &owner_fields;
                match system {
                    System::Target if rule.target == *field => {
                        if let Ok(value) = rule.expected_target(owner_side) {
                            set.insert(field.clone(), value);
                        }
                    }
                    System::Source if rule.source.names().contains(field) => {
                        if let Some((name, value)) = rule.back_to_source(owner_side) {
                            set.insert(name, value);
                        }
                    }
                    _ => {}
                }
            }
        }
        if set.is_empty() {
            return Ok(());
        }
        self.compensations.push(Compensation {
            kind: "restore_fields".to_owned(),
            system,
            entity: entity.name.clone(),
            native_id: event.id.clone(),
            join_key,
            set,
            violation_event_id: event.event_id.clone(),
            epoch: ownership.epoch,
        });
        Ok(())
    }
}

impl<V: StateView> Planner<'_, V> {
    /// A reference held in `from` as the other system's id of the record joined to the one
    /// it points at; `None` when that record has no single live counterpart there.
    fn translate_reference(
        &mut self,
        from: System,
        entity: &str,
        value: &Value,
    ) -> ViewResult<Option<Value>> {
        let id = match reference_id(Some(value)) {
            Ok(Some(id)) => id,
            Ok(None) => return Ok(Some(Value::Null)),
            Err(_) => return Ok(None),
        };
        let Some(join_key) = self.current_join_key(from, entity, &id)? else {
            return Ok(None);
        };
        let stored;
        let row = match self.records.get(&(entity.to_owned(), join_key.clone())) {
            Some(working) => &working.row,
            None => match self.view.record(entity, &join_key)? {
                Some(row) => {
                    stored = row;
                    &stored
                }
                None => return Ok(None),
            },
        };
        Ok(row
            .sole_live(from.other())
            .map(|only| Value::String(only.native_id.clone())))
    }
}

/// What [`Planner::apply_control`] left to do.
enum ControlStep {
    /// The event is applied.
    Done(Outcome),
    /// The event changes a native record; a write's ownership verdict.
    Change { verdict: Option<ViolationKind> },
}

/// Where a changed native record goes: the key it was stored under, the key it belongs to
/// now, and whether it was deleted before the change.
struct Placement {
    stored_key: Option<String>,
    join_key: String,
    was_deleted: bool,
}

/// Whether a stale event needs the record read again: an older partial update without a
/// version, on a live and trusted record that no newer full image wholly supersedes, may carry
/// a field the newer partial change did not touch. An older full image or delete is
/// superseded, and so is an older partial update when a newer full image holds every field.
fn needs_reread_when_stale(stored: &SideRecord, event: &ChangeEvent) -> bool {
    event.partial
        && event.version.is_none()
        && stored.unverified.is_none()
        && !stored.deleted
        && stored
            .full_image_at
            .is_none_or(|image| image < event.occurred_at)
}

/// A record's evaluation at `clock`: status (grace applied), since when it differs, the
/// differing fields, when a pending period ends, and the cause.
pub fn evaluate(
    entity: &EntityMapping,
    row: &RecordRow,
    clock: Timestamp,
    grace: Duration,
    resolve: &mut crate::record::Resolve<'_>,
) -> RecordStatus {
    let comparison = compare(entity, row, resolve);
    let (status, due_at) = with_grace(comparison.status, row, clock, grace);
    let since = match status {
        None | Some(Status::InSync) => None,
        // A doubt dates from what revealed it.
        Some(Status::Unverified) if earliest_doubt(row).is_some() => earliest_doubt(row),
        Some(_) => crate::timeline::differing_since(entity, row, row.status.since, resolve)
            .or(row.status.since)
            .or(Some(clock)),
    };
    let cause = Cause::of(entity, row, &comparison, status);
    let wrong_value_patterns =
        if status == Some(Status::Mismatch) && cause.is_some_and(Cause::may_be_mapping_error) {
            crate::patterns::wrong_value_patterns(entity, row, &comparison.differing_fields)
        } else {
            Vec::new()
        };
    RecordStatus {
        status,
        since,
        differing_fields: comparison.differing_fields,
        due_at,
        cause,
        wrong_value_patterns,
    }
}

/// When the earliest doubt about one of the record's native records arose.
fn earliest_doubt(row: &RecordRow) -> Option<Timestamp> {
    row.source
        .iter()
        .chain(&row.target)
        .filter_map(|side| side.unverified.as_ref().map(|doubt| doubt.since))
        .min()
}

/// Whether evaluating a stored row again would change it (its status, or a re-keying to
/// clear): only those need a planner during a re-evaluation.
pub fn evaluation_changes(after: &RecordStatus, row: &RecordRow) -> bool {
    *after != row.status
        || (after.status == Some(Status::InSync)
            && row
                .source
                .iter()
                .chain(&row.target)
                .any(|side| side.rekeyed.is_some()))
}
