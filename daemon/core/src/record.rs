//! A record as tandem holds it: the join key's native records on each side, and its status.
//!
//! A record is `(entity, join key)`. Each side lists every native record that has claimed the
//! key, deleted ones included, so that history, duplicates and deletes stay visible.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::event::{ActorKind, Fields};
use crate::mapping::EntityMapping;
use crate::system::System;
use crate::time::Timestamp;

/// The status of a record: exactly one at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Both sides exist and every mapped field is equal.
    InSync,
    /// The sides differ, but the latest change is younger than the grace period.
    Pending,
    /// Both sides exist and mapped fields differ.
    Mismatch,
    /// The source has the record, the target does not.
    MissingInTarget,
    /// The target has the record, the source does not.
    MissingInSource,
    /// Two live records on one side claim the join key.
    Duplicate,
    /// A change to one side may have been lost (a version skipped, a partial update without
    /// a full image, a gap announced by the feed, a `seq` jump on its partition): tandem
    /// cannot know the record's state until it is read again.
    Unverified,
}

impl Status {
    /// How many statuses there are.
    pub const COUNT: usize = 7;

    /// Every status, in report order.
    pub const ALL: [Status; Status::COUNT] = [
        Status::InSync,
        Status::Pending,
        Status::Mismatch,
        Status::MissingInTarget,
        Status::MissingInSource,
        Status::Duplicate,
        Status::Unverified,
    ];

    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Status::InSync => "in_sync",
            Status::Pending => "pending",
            Status::Mismatch => "mismatch",
            Status::MissingInTarget => "missing_in_target",
            Status::MissingInSource => "missing_in_source",
            Status::Duplicate => "duplicate",
            Status::Unverified => "unverified",
        }
    }

    /// Position in [`Status::ALL`], used for counters and store keys.
    pub const fn index(self) -> usize {
        match self {
            Status::InSync => 0,
            Status::Pending => 1,
            Status::Mismatch => 2,
            Status::MissingInTarget => 3,
            Status::MissingInSource => 4,
            Status::Duplicate => 5,
            Status::Unverified => 6,
        }
    }

    /// Whether the record counts as divergent (pending is lag, not divergence; unverified
    /// counts, because nobody can vouch for it).
    pub const fn is_divergence(self) -> bool {
        !matches!(self, Status::InSync | Status::Pending)
    }

    /// Parses a wire name.
    pub fn parse(input: &str) -> Option<Status> {
        Status::ALL
            .into_iter()
            .find(|status| status.as_str() == input)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// One native record on one side, as last seen.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SideRecord {
    /// The native id in its system.
    pub native_id: String,
    /// Field values after the latest applied change.
    pub fields: Fields,
    /// Whether the record is deleted (or merged away) in its system.
    pub deleted: bool,
    /// The highest version applied, if the feed carries versions.
    pub version: Option<u64>,
    /// Event time of the latest applied change.
    pub last_change_at: Timestamp,
    /// The event that made the latest applied change.
    pub last_event_id: String,
    /// For a record merged away: the survivor's native id.
    #[serde(default)]
    pub merged_into: Option<String>,
    /// Set while changes to this record may have been lost; cleared by a full image.
    #[serde(default)]
    pub unverified: Option<Unverified>,
    /// Whether the latest applied change broke the ownership rule (a `non_owner_write`).
    #[serde(default)]
    pub non_owner_write: bool,
    /// Event time of the newest full image applied (create, full update, snapshot): an older
    /// partial update is wholly superseded by it.
    #[serde(default)]
    pub full_image_at: Option<Timestamp>,
    /// When a reading (a snapshot image) found the record different from what tandem held:
    /// it changed at some time tandem never saw, at the latest then. The reverse delta counts
    /// it as a change at that time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revealed_change_at: Option<Timestamp>,
    /// The kind of writer of the latest change, if the event said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_actor: Option<ActorKind>,
    /// Set when the record came under this join key from another one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rekeyed: Option<Rekey>,
}

/// Why a native record's state cannot be trusted, and since when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unverified {
    /// What made it untrustworthy.
    pub reason: UnverifiedReason,
    /// Event time of the change that revealed it.
    pub since: Timestamp,
}

/// What can make a native record's state untrustworthy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnverifiedReason {
    /// A partial update carried a version more than one past the stored one.
    VersionSkip,
    /// A partial update arrived for a record tandem holds no full image of.
    PartialWithoutImage,
    /// The feed announced that changes to this record were lost.
    Gap,
    /// Events were lost on the partition this record's changes arrive on (a `seq` jump):
    /// any record there may have missed a change.
    SeqHole,
    /// A partial update without a version arrived older than the record's last change. Its
    /// fields may still be current (the newer change may have touched others), and without a
    /// time per field tandem cannot tell: the record is read again.
    OutOfOrder,
    /// Offsets of the partition this record's changes arrive on were gone from the broker
    /// (retention, `DeleteRecords`, a re-created topic) before tandem read them.
    OffsetsLost,
}

impl UnverifiedReason {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            UnverifiedReason::VersionSkip => "version_skip",
            UnverifiedReason::PartialWithoutImage => "partial_without_image",
            UnverifiedReason::Gap => "gap",
            UnverifiedReason::SeqHole => "seq_hole",
            UnverifiedReason::OutOfOrder => "out_of_order",
            UnverifiedReason::OffsetsLost => "offsets_lost",
        }
    }
}

/// What the indexes and aggregates know about a record: enough to undo its old entries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordStatus {
    /// The status, or `None` when no live record exists on either side (not counted).
    pub status: Option<Status>,
    /// When the sides started to differ (event time), for any status but in-sync.
    pub since: Option<Timestamp>,
    /// Target names of the fields that differ (mismatch and pending).
    pub differing_fields: Vec<String>,
    /// When a pending record stops being pending unless something changes.
    pub due_at: Option<Timestamp>,
    /// Why the record diverges, where tandem knows.
    #[serde(default)]
    pub cause: Option<Cause>,
}

/// Why a divergent record diverges: a fixed vocabulary (`schemas/causes.md`), decided from
/// what the record's event history left in its sides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// The sides differ, but the last change is younger than the grace period.
    Lag,
    /// The source changed later than the target's last change and the target never got it
    /// (or never got the record at all).
    MissedChange,
    /// The target's latest change was made by someone other than the sync layer or the
    /// repair jobs, after the source's latest change.
    OverwrittenInTarget,
    /// A source value the field's `map` has no entry for.
    UnmappedValue,
    /// Deleted (or merged away) in the source, live in the target.
    DeletedInSourceOnly,
    /// Deleted (or merged away) in the target, live in the source.
    DeletedInTargetOnly,
    /// Two live records on one side claim the join key.
    Duplicate,
    /// A native id was created again for a different join key.
    IdReused,
    /// A native record's join key changed (join keys are immutable).
    JoinKeyChanged,
    /// A reference field points at a record other than the one the source's reference is
    /// joined to, or at nothing tandem knows.
    BrokenReference,
    /// The latest change to one side was written by someone not allowed to write there.
    NonOwnerWrite,
    /// None of the above can be told from the history (an unverified record, a sync-layer
    /// write with a wrong value, a record only the target ever had).
    Unknown,
}

impl Cause {
    /// Every cause, in the order of the vocabulary.
    pub const ALL: [Cause; 12] = [
        Cause::Lag,
        Cause::MissedChange,
        Cause::OverwrittenInTarget,
        Cause::UnmappedValue,
        Cause::DeletedInSourceOnly,
        Cause::DeletedInTargetOnly,
        Cause::Duplicate,
        Cause::IdReused,
        Cause::JoinKeyChanged,
        Cause::BrokenReference,
        Cause::NonOwnerWrite,
        Cause::Unknown,
    ];

    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Cause::Lag => "lag",
            Cause::MissedChange => "missed_change",
            Cause::OverwrittenInTarget => "overwritten_in_target",
            Cause::UnmappedValue => "unmapped_value",
            Cause::DeletedInSourceOnly => "deleted_in_source_only",
            Cause::DeletedInTargetOnly => "deleted_in_target_only",
            Cause::Duplicate => "duplicate",
            Cause::IdReused => "id_reused",
            Cause::JoinKeyChanged => "join_key_changed",
            Cause::BrokenReference => "broken_reference",
            Cause::NonOwnerWrite => "non_owner_write",
            Cause::Unknown => "unknown",
        }
    }

    /// The cause named `input`, if any.
    pub fn parse(input: &str) -> Option<Cause> {
        Cause::ALL.into_iter().find(|cause| cause.as_str() == input)
    }

    /// The cause of a record's divergence, given its comparison and its status after grace.
    /// The first rule that applies decides:
    ///
    /// 1. pending: `lag`; duplicate: `duplicate`; unverified: `unknown` (its reason says more);
    /// 2. a live side re-keyed: `id_reused` (created again under another key) or
    ///    `join_key_changed`;
    /// 3. a live side whose latest change broke the ownership rule: `non_owner_write`;
    /// 4. missing on one side: `deleted_in_<side>_only` if that side holds a deleted record,
    ///    else `missed_change` for a record the target never got, `unknown` for one only the
    ///    target ever had;
    /// 5. mismatch: `unmapped_value` if a differing field's source value has no map entry,
    ///    `broken_reference` if a differing field is a reference, `overwritten_in_target` if
    ///    the target's latest change came from neither sync nor repair and is not older than
    ///    the source's, `missed_change` if the source changed after the target, else
    ///    `unknown`.
    pub fn of(
        mapping: &EntityMapping,
        row: &RecordRow,
        comparison: &Comparison,
        status: Option<Status>,
    ) -> Option<Cause> {
        let status = status.filter(|status| *status != Status::InSync)?;
        match status {
            Status::Pending => return Some(Cause::Lag),
            Status::Duplicate => return Some(Cause::Duplicate),
            Status::Unverified => return Some(Cause::Unknown),
            _ => {}
        }
        let (source, target) = (row.live(System::Source), row.live(System::Target));
        let live_sides = || source.into_iter().chain(target);
        if let Some(rekey) = live_sides().find_map(|side| side.rekeyed.as_ref()) {
            return Some(if rekey.recreated {
                Cause::IdReused
            } else {
                Cause::JoinKeyChanged
            });
        }
        if live_sides().any(|side| side.non_owner_write) {
            return Some(Cause::NonOwnerWrite);
        }
        let holds_deleted = |sides: &[SideRecord]| sides.iter().any(|side| side.deleted);
        Some(match (status, source, target) {
            (Status::MissingInTarget, _, _) if holds_deleted(&row.target) => {
                Cause::DeletedInTargetOnly
            }
            (Status::MissingInTarget, _, _) => Cause::MissedChange,
            (Status::MissingInSource, _, _) if holds_deleted(&row.source) => {
                Cause::DeletedInSourceOnly
            }
            (Status::MissingInSource, _, _) => Cause::Unknown,
            (Status::Mismatch, Some(source), Some(target)) => {
                let is_reference = |name: &String| {
                    mapping
                        .fields
                        .iter()
                        .any(|field| field.target == *name && field.reference.is_some())
                };
                if !comparison.unmapped_fields.is_empty() {
                    Cause::UnmappedValue
                } else if comparison.differing_fields.iter().any(is_reference) {
                    Cause::BrokenReference
                } else if target
                    .last_actor
                    .is_some_and(|kind| !matches!(kind, ActorKind::Sync | ActorKind::Repair))
                    && target.last_change_at >= source.last_change_at
                {
                    Cause::OverwrittenInTarget
                } else if source.last_change_at > target.last_change_at {
                    Cause::MissedChange
                } else {
                    Cause::Unknown
                }
            }
            _ => Cause::Unknown,
        })
    }
}

/// How a native record came under its join key when it had another before.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rekey {
    /// The join key it had.
    pub from: String,
    /// Whether it came by a create (the native id was reused for another record) rather than
    /// by a change of the key on a live record.
    pub recreated: bool,
    /// Event time of the change.
    pub at: Timestamp,
}

/// Everything tandem holds about one `(entity, join key)`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RecordRow {
    /// Native records in the source that claim the key.
    pub source: Vec<SideRecord>,
    /// Native records in the target that claim the key.
    pub target: Vec<SideRecord>,
    /// The current evaluation.
    pub status: RecordStatus,
}

impl RecordRow {
    /// The native records of one side.
    pub fn side(&self, system: System) -> &[SideRecord] {
        match system {
            System::Source => &self.source,
            System::Target => &self.target,
        }
    }

    /// The native records of one side, mutable.
    pub fn side_mut(&mut self, system: System) -> &mut Vec<SideRecord> {
        match system {
            System::Source => &mut self.source,
            System::Target => &mut self.target,
        }
    }

    /// The first live (not deleted) native record of one side: the one compared.
    pub fn live(&self, system: System) -> Option<&SideRecord> {
        self.side(system).iter().find(|side| !side.deleted)
    }

    /// The live native record of one side when it is the only one (`None` for none, or a
    /// duplicate).
    pub fn sole_live(&self, system: System) -> Option<&SideRecord> {
        let mut live = self.side(system).iter().filter(|side| !side.deleted);
        match (live.next(), live.next()) {
            (Some(only), None) => Some(only),
            _ => None,
        }
    }

    /// The fields of [`RecordRow::live`], empty when the side has no live record.
    pub fn live_fields(&self, system: System) -> &Fields {
        static EMPTY: std::sync::OnceLock<Fields> = std::sync::OnceLock::new();
        self.live(system)
            .map_or_else(|| EMPTY.get_or_init(Fields::new), |side| &side.fields)
    }

    /// Whether any native record remains on either side.
    pub fn is_empty(&self) -> bool {
        self.source.is_empty() && self.target.is_empty()
    }
}

/// The pure comparison of a record's two sides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Comparison {
    /// The status ignoring the grace period, `None` if nothing is live.
    pub status: Option<Status>,
    /// Target names of the differing fields, when both sides exist.
    pub differing_fields: Vec<String>,
    /// Target names of the differing fields whose source value the field's `map` has no
    /// entry for.
    pub unmapped_fields: Vec<String>,
}

impl Comparison {
    fn of(status: Option<Status>) -> Self {
        Comparison {
            status,
            differing_fields: Vec::new(),
            unmapped_fields: Vec::new(),
        }
    }
}

/// Finds the join key of a native record: `(system, entity, native id)` to its key.
pub type Resolve<'r> = dyn FnMut(System, &str, &str) -> Option<String> + 'r;

impl Reference {
    /// Whether it looked up this native record.
    pub fn points_at(&self, system: System, entity: &str, native_id: &str) -> bool {
        self.system == system && self.entity == entity && self.native_id == native_id
    }
}

/// A record whose evaluation looked up another record through a `ref` field: when the
/// referenced native record comes under a (new) join key, the referencing record is
/// evaluated again.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Reference {
    /// The system of the referenced record.
    pub system: System,
    /// Its entity.
    pub entity: String,
    /// Its native id.
    pub native_id: String,
    /// The entity of the referencing record.
    pub from_entity: String,
    /// The join key of the referencing record.
    pub from_key: String,
}

/// The native id a reference value names: `None` for null or absent, `Err` for a value that
/// cannot be an id (an empty text, a list, ...).
pub fn reference_id(value: Option<&serde_json::Value>) -> Result<Option<String>, NotAnId> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(id)) if !id.is_empty() => Ok(Some(id.clone())),
        Some(serde_json::Value::Number(id)) => Ok(Some(id.to_string())),
        Some(_) => Err(NotAnId),
    }
}

/// A reference value that cannot name a record (an empty text, a list, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotAnId;

/// The native records a comparison of this row looks up through its `ref` fields (system,
/// entity, native id): for reading them ahead in one batch.
pub fn referenced_records(
    mapping: &EntityMapping,
    row: &RecordRow,
) -> Vec<(System, String, String)> {
    let mut found = Vec::new();
    for field in &mapping.fields {
        let Some(entity) = &field.reference else {
            continue;
        };
        for (system, name) in [
            (System::Source, field.source.first()),
            (System::Target, field.target.as_str()),
        ] {
            if let Ok(Some(id)) = reference_id(row.live_fields(system).get(name)) {
                found.push((system, entity.clone(), id));
            }
        }
    }
    found
}

/// Compares the two sides of a record field by field, through each field's rule: the
/// source's value (joined and mapped as configured) against the target's, with the rule's
/// normalizer. An absent field equals `null`. A reference field (`ref`) is equal when both
/// sides point at records joined under the same key (both null counts too); `resolve`
/// finds the join keys.
pub fn compare(mapping: &EntityMapping, row: &RecordRow, resolve: &mut Resolve<'_>) -> Comparison {
    let mut live_source = row.source.iter().filter(|side| !side.deleted);
    let mut live_target = row.target.iter().filter(|side| !side.deleted);
    let (first_source, second_source) = (live_source.next(), live_source.next());
    let (first_target, second_target) = (live_target.next(), live_target.next());
    if second_source.is_some() || second_target.is_some() {
        return Comparison::of(Some(Status::Duplicate));
    }
    if [first_source, first_target]
        .into_iter()
        .flatten()
        .any(|side| side.unverified.is_some())
    {
        return Comparison::of(Some(Status::Unverified));
    }
    let (source, target) = match (first_source, first_target) {
        (None, None) => return Comparison::of(None),
        (Some(_), None) => return Comparison::of(Some(Status::MissingInTarget)),
        (None, Some(_)) => return Comparison::of(Some(Status::MissingInSource)),
        (Some(source), Some(target)) => (source, target),
    };
    let mut comparison = Comparison::of(Some(Status::InSync));
    for field in &mapping.fields {
        if let Some(entity) = &field.reference {
            let key = |system: System,
                       fields: &crate::event::Fields,
                       name: &str,
                       resolve: &mut Resolve<'_>| {
                match reference_id(fields.get(name)).map_err(|_| ())? {
                    None => Ok(None),
                    Some(id) => resolve(system, entity, &id).map(Some).ok_or(()),
                }
            };
            let source_key = key(
                System::Source,
                &source.fields,
                field.source.first(),
                resolve,
            );
            let target_key = key(System::Target, &target.fields, &field.target, resolve);
            if !matches!((source_key, target_key), (Ok(left), Ok(right)) if left == right) {
                comparison.differing_fields.push(field.target.clone());
            }
            continue;
        }
        match field.matches(&source.fields, &target.fields) {
            Ok(true) => {}
            Ok(false) => comparison.differing_fields.push(field.target.clone()),
            Err(_) => {
                comparison.differing_fields.push(field.target.clone());
                comparison.unmapped_fields.push(field.target.clone());
            }
        }
    }
    if !comparison.differing_fields.is_empty() {
        comparison.status = Some(Status::Mismatch);
    }
    comparison
}

/// Applies the grace period to a comparison.
///
/// A mismatch or a missing side whose latest change (on either side) is younger than `grace`
/// at `now` is `pending`: the sync layer may simply not have caught up. A duplicate is
/// structural and an unverified record needs a re-read whatever its age: both are reported
/// at once.
pub fn with_grace(
    status: Option<Status>,
    row: &RecordRow,
    now: Timestamp,
    grace: Duration,
) -> (Option<Status>, Option<Timestamp>) {
    match status {
        Some(Status::Mismatch | Status::MissingInTarget | Status::MissingInSource) => {
            let latest_change = row
                .source
                .iter()
                .chain(&row.target)
                .map(|side| side.last_change_at)
                .max()
                .unwrap_or(Timestamp::MIN);
            let due_at = latest_change.saturating_add(grace);
            if now < due_at {
                (Some(Status::Pending), Some(due_at))
            } else {
                (status, None)
            }
        }
        other => (other, None),
    }
}
