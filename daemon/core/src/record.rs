//! A record as tandem holds it: the join key's native records on each side, and its status.
//!
//! A record is `(entity, join key)`. Each side lists every native record that has claimed the
//! key, deleted ones included, so that history, duplicates and deletes stay visible.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::event::{ActorKind, Fields};
use crate::mapping::{EntityMapping, FieldMapping};
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
    /// Per native field: when its value last changed, and the kind of writer that changed
    /// it. A field a write left as it was keeps its earlier change. Empty in stores written
    /// before it was kept: the record's own times stand in until its fields change.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub field_changes: BTreeMap<String, FieldChange>,
    /// The writer (`kind:id`, or `kind`) of the create that brought the record into its
    /// system, when the event said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// When `deleted` took its current value (the record appeared, was deleted or came
    /// back). `None` in stores written before it was kept: then only the present is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_at: Option<Timestamp>,
    /// What the record held before its current values, oldest first, while it may still
    /// decide from when the sides differ ([`crate::timeline`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier: Vec<crate::timeline::Earlier>,
    /// The time from which `earlier` is complete, once older values were let go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_from: Option<Timestamp>,
}

/// When one field's value last changed, the kind of writer that changed it (`None`: the
/// event named none), and, for a value a snapshot revealed, the time after which it changed:
/// then the first time is when it was read, and the change happened at some time between
/// the two (after the value tandem held before was set).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldChange(
    pub Timestamp,
    pub Option<ActorKind>,
    #[serde(default)] pub Option<Timestamp>,
);

impl FieldChange {
    /// The earliest time the value may have been set: the event's time, or for a revealed
    /// value, the time after which it changed.
    pub fn earliest(&self) -> Timestamp {
        self.2.unwrap_or(self.0)
    }
}

impl SideRecord {
    /// A native record tandem knows nothing about yet but its id: live, without fields, never
    /// changed.
    pub fn new(native_id: String) -> Self {
        SideRecord {
            native_id,
            fields: Fields::new(),
            deleted: false,
            version: None,
            last_change_at: Timestamp::MIN,
            last_event_id: String::new(),
            merged_into: None,
            unverified: None,
            non_owner_write: false,
            full_image_at: None,
            revealed_change_at: None,
            last_actor: None,
            rekeyed: None,
            field_changes: BTreeMap::new(),
            created_by: None,
            presence_at: None,
            earlier: Vec::new(),
            history_from: None,
        }
    }

    /// When the value of native field `name` last changed and who changed it; for a record
    /// stored before field changes were kept, the record's own last change.
    pub fn field_change(&self, name: &str) -> FieldChange {
        match self.field_changes.get(name) {
            Some(change) => *change,
            None if self.field_changes.is_empty() => {
                FieldChange(self.last_change_at, self.last_actor, None)
            }
            // Never written: no time at all.
            None => FieldChange(Timestamp::MIN, None, None),
        }
    }
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
    /// For `sync_wrote_wrong_value` and `unknown` mismatches: the documented mapping-error
    /// patterns the wrong values follow, as `<target field>=<pattern>` (sorted). The report
    /// and the listings name the cause `mapping_error` when one of them is a suspected
    /// mapping error of its field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wrong_value_patterns: Vec<String>,
}

/// Why a divergent record diverges: a fixed vocabulary (`schemas/causes.md`), decided from
/// what the record's event history left in its sides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// The sides differ, but the last change is younger than the grace period.
    Lag,
    /// The source changed a field after the target's value of it was written, and the target
    /// never got the change (or never got the record at all).
    MissedChange,
    /// A differing field was last written in the target by someone other than the sync
    /// layer or the repair jobs, after the source's value of it.
    OverwrittenInTarget,
    /// The sync layer's latest write of a differing field is not what the source held then:
    /// a wrong value, or an older one copied late.
    SyncWroteWrongValue,
    /// A wrong value of the sync layer (or of a writer the history cannot tell) that follows
    /// one of the report's suspected mapping errors for its field (decided where the
    /// suspected errors are known: the report and the listings).
    MappingError,
    /// A source value the field's `map` has no entry for.
    UnmappedValue,
    /// Deleted (or merged away) in the source, live in the target.
    DeletedInSourceOnly,
    /// Deleted (or merged away) in the target, live in the source.
    DeletedInTargetOnly,
    /// Live in the target, which created it, and never in the source.
    CreatedInTargetOnly,
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
    /// Unverified: the feed announced lost changes (a `gap` event).
    UnverifiedGap,
    /// Unverified: events were lost on the record's partition (a `seq` jump).
    UnverifiedSeqHole,
    /// Unverified: a partial update skipped a version.
    UnverifiedVersionSkip,
    /// Unverified: a partial update arrived for a record tandem holds no full image of.
    UnverifiedPartialWithoutImage,
    /// Unverified: an older partial update without a version arrived late.
    UnverifiedOutOfOrder,
    /// Unverified: the broker deleted offsets of the record's partition before tandem read
    /// them.
    UnverifiedOffsetsLost,
    /// Unverified: a `ref` field points at a record that is unverified (a lost change may
    /// have moved it under another key); healed by that record's re-read.
    UnverifiedReference,
    /// None of the above can be told from the history (a value no writer's history
    /// explains, for example one a snapshot revealed).
    Unknown,
}

/// The causes one differing field's history can give, from the most telling.
const FIELD_CAUSES: [Cause; 4] = [
    Cause::OverwrittenInTarget,
    Cause::MissedChange,
    Cause::SyncWroteWrongValue,
    Cause::Unknown,
];

impl Cause {
    /// Every cause, in the order of the vocabulary.
    pub const ALL: [Cause; 22] = [
        Cause::Lag,
        Cause::MissedChange,
        Cause::OverwrittenInTarget,
        Cause::SyncWroteWrongValue,
        Cause::MappingError,
        Cause::UnmappedValue,
        Cause::DeletedInSourceOnly,
        Cause::DeletedInTargetOnly,
        Cause::CreatedInTargetOnly,
        Cause::Duplicate,
        Cause::IdReused,
        Cause::JoinKeyChanged,
        Cause::BrokenReference,
        Cause::NonOwnerWrite,
        Cause::UnverifiedGap,
        Cause::UnverifiedSeqHole,
        Cause::UnverifiedVersionSkip,
        Cause::UnverifiedPartialWithoutImage,
        Cause::UnverifiedOutOfOrder,
        Cause::UnverifiedOffsetsLost,
        Cause::UnverifiedReference,
        Cause::Unknown,
    ];

    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Cause::Lag => "lag",
            Cause::MissedChange => "missed_change",
            Cause::OverwrittenInTarget => "overwritten_in_target",
            Cause::SyncWroteWrongValue => "sync_wrote_wrong_value",
            Cause::MappingError => "mapping_error",
            Cause::UnmappedValue => "unmapped_value",
            Cause::DeletedInSourceOnly => "deleted_in_source_only",
            Cause::DeletedInTargetOnly => "deleted_in_target_only",
            Cause::CreatedInTargetOnly => "created_in_target_only",
            Cause::Duplicate => "duplicate",
            Cause::IdReused => "id_reused",
            Cause::JoinKeyChanged => "join_key_changed",
            Cause::BrokenReference => "broken_reference",
            Cause::NonOwnerWrite => "non_owner_write",
            Cause::UnverifiedGap => "unverified_gap",
            Cause::UnverifiedSeqHole => "unverified_seq_hole",
            Cause::UnverifiedVersionSkip => "unverified_version_skip",
            Cause::UnverifiedPartialWithoutImage => "unverified_partial_without_image",
            Cause::UnverifiedOutOfOrder => "unverified_out_of_order",
            Cause::UnverifiedOffsetsLost => "unverified_offsets_lost",
            Cause::UnverifiedReference => "unverified_reference",
            Cause::Unknown => "unknown",
        }
    }

    /// The cause named `input`, if any.
    pub fn parse(input: &str) -> Option<Cause> {
        Cause::ALL.into_iter().find(|cause| cause.as_str() == input)
    }

    /// Whether a record or field of this cause whose value follows a suspected mapping error
    /// of its field is that mapping error: a wrong value the sync layer wrote, or one whose
    /// writer the history cannot tell.
    pub const fn may_be_mapping_error(self) -> bool {
        matches!(self, Cause::SyncWroteWrongValue | Cause::Unknown)
    }

    /// The cause of an unverified record, by what made it so.
    pub const fn of_doubt(reason: UnverifiedReason) -> Cause {
        match reason {
            UnverifiedReason::Gap => Cause::UnverifiedGap,
            UnverifiedReason::SeqHole => Cause::UnverifiedSeqHole,
            UnverifiedReason::VersionSkip => Cause::UnverifiedVersionSkip,
            UnverifiedReason::PartialWithoutImage => Cause::UnverifiedPartialWithoutImage,
            UnverifiedReason::OutOfOrder => Cause::UnverifiedOutOfOrder,
            UnverifiedReason::OffsetsLost => Cause::UnverifiedOffsetsLost,
        }
    }

    /// The cause of a record's divergence, given its comparison and its status after grace.
    /// The first rule that applies decides:
    ///
    /// 1. pending: `lag`; duplicate: `duplicate`; unverified: `unverified_<reason>` (of the
    ///    source's live record first), or `unverified_reference` when only a record a `ref`
    ///    field points at is;
    /// 2. a live side re-keyed: `id_reused` (created again under another key) or
    ///    `join_key_changed`;
    /// 3. a live side whose latest change broke the ownership rule: `non_owner_write`;
    /// 4. missing on one side: `deleted_in_<side>_only` if that side holds a deleted record,
    ///    else `missed_change` for a record the target never got, `created_in_target_only`
    ///    for one only the target ever had;
    /// 5. mismatch: `unmapped_value` if a differing field's source value has no map entry,
    ///    `broken_reference` if a differing field is a reference, else the most telling of
    ///    the differing fields' causes ([`Cause::of_field`]): `overwritten_in_target`, then
    ///    `missed_change`, then `sync_wrote_wrong_value`, then `unknown`.
    pub fn of(
        mapping: &EntityMapping,
        row: &RecordRow,
        comparison: &Comparison,
        status: Option<Status>,
    ) -> Option<Cause> {
        let status = status.filter(|status| *status != Status::InSync)?;
        let (source, target) = (row.live(System::Source), row.live(System::Target));
        let live_sides = || source.into_iter().chain(target);
        match status {
            Status::Pending => return Some(Cause::Lag),
            Status::Duplicate => return Some(Cause::Duplicate),
            Status::Unverified => {
                return Some(
                    match live_sides().find_map(|side| side.unverified.as_ref()) {
                        Some(doubt) => Cause::of_doubt(doubt.reason),
                        None if !comparison.doubtful_references.is_empty() => {
                            Cause::UnverifiedReference
                        }
                        None => Cause::Unknown,
                    },
                )
            }
            _ => {}
        }
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
            (Status::MissingInSource, _, _) => Cause::CreatedInTargetOnly,
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
                } else {
                    mapping
                        .fields
                        .iter()
                        .filter(|rule| comparison.differing_fields.contains(&rule.target))
                        .map(|rule| Cause::of_field(rule, source, target))
                        .min_by_key(|cause| FIELD_CAUSES.iter().position(|known| known == cause))
                        .unwrap_or(Cause::Unknown)
                }
            }
            _ => Cause::Unknown,
        })
    }

    /// What one differing field's history says, from when its values last changed on each
    /// side and who wrote the target's: `overwritten_in_target` when a writer other than the
    /// sync layer or a repair job set the target's value no earlier than the source's last
    /// change; `missed_change` when the source's value changed after the target's was set;
    /// `sync_wrote_wrong_value` when the sync layer set the target's value after the
    /// source's last change (so the source already held what it should have copied);
    /// `unknown` otherwise (a repair job's write, a value of no known writer, or a source
    /// value a snapshot revealed whose change may have come before or after the target's).
    pub fn of_field(rule: &FieldMapping, source: &SideRecord, target: &SideRecord) -> Cause {
        // The source's value was set at some time in [earliest, latest] (one instant for an
        // event; for a value a snapshot revealed, between the value held before and the
        // reading).
        let (source_earliest, source_latest) = rule
            .source
            .names()
            .iter()
            .map(|name| source.field_change(name))
            .fold(
                (Timestamp::MIN, Timestamp::MIN),
                |(earliest, latest), change| {
                    (earliest.max(change.earliest()), latest.max(change.0))
                },
            );
        let FieldChange(target_at, writer, _) = target.field_change(&rule.target);
        match writer {
            Some(kind)
                if !matches!(kind, ActorKind::Sync | ActorKind::Repair)
                    && target_at >= source_latest =>
            {
                Cause::OverwrittenInTarget
            }
            _ if source_earliest > target_at => Cause::MissedChange,
            Some(ActorKind::Sync) if target_at >= source_latest => Cause::SyncWroteWrongValue,
            _ => Cause::Unknown,
        }
    }
}

/// What a divergence's cause rests on, so that a data steward can route it without opening
/// the record: the field that decided it, what the target should hold, when each side's
/// value was set and by whom, the pattern of a mapping error, the writer of a record only
/// the target has, the start of a doubt.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CauseDetail {
    /// The differing target field whose history decided the cause.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// For `mapping_error`: the suspected pattern its value follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// What the target should hold: the source's value through the field's rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<serde_json::Value>,
    /// When the source's value was set (or read, if a snapshot revealed it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_set_at: Option<Timestamp>,
    /// When the target's value was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_written_at: Option<Timestamp>,
    /// The kind of writer of the target's value (`sync`, `user`, ...), if the event said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_writer: Option<String>,
    /// For `created_in_target_only`: who created the record (`kind:id`), if the event said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// For an unverified record: since when (event time of what revealed the doubt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unverified_since: Option<Timestamp>,
}

impl CauseDetail {
    /// The detail of `cause` for a record (`pattern`: the suspected pattern of a
    /// `mapping_error`, as `<target field>=<pattern>`). `None` for causes that need none.
    pub fn of(
        mapping: &EntityMapping,
        row: &RecordRow,
        cause: Cause,
        pattern: Option<&str>,
    ) -> Option<CauseDetail> {
        let (source, target) = (row.live(System::Source), row.live(System::Target));
        match cause {
            Cause::CreatedInTargetOnly => Some(CauseDetail {
                created_by: target.and_then(|side| side.created_by.clone()),
                ..CauseDetail::default()
            }),
            cause if cause.as_str().starts_with("unverified_") => {
                let doubt = source
                    .into_iter()
                    .chain(target)
                    .find_map(|side| side.unverified.as_ref())?;
                Some(CauseDetail {
                    unverified_since: Some(doubt.since),
                    ..CauseDetail::default()
                })
            }
            Cause::OverwrittenInTarget
            | Cause::MissedChange
            | Cause::SyncWroteWrongValue
            | Cause::MappingError => {
                let (source, target) = (source?, target?);
                let (field, pattern) = match pattern.and_then(|found| found.split_once('=')) {
                    Some((field, pattern)) => (Some(field), Some(pattern)),
                    None => (None, None),
                };
                let rule = mapping.fields.iter().find(|rule| {
                    let field_cause = Cause::of_field(rule, source, target);
                    field.is_none_or(|field| rule.target == field)
                        && row.status.differing_fields.contains(&rule.target)
                        && (field_cause == cause
                            || (cause == Cause::MappingError && field_cause.may_be_mapping_error()))
                })?;
                let source_set_at = rule
                    .source
                    .names()
                    .iter()
                    .map(|name| source.field_change(name).0)
                    .max()
                    .filter(|at| *at != Timestamp::MIN);
                let FieldChange(written_at, writer, _) = target.field_change(&rule.target);
                Some(CauseDetail {
                    field: Some(rule.target.clone()),
                    pattern: pattern.map(str::to_owned),
                    expected: rule.expected_target(&source.fields).ok(),
                    source_set_at,
                    target_written_at: Some(written_at).filter(|at| *at != Timestamp::MIN),
                    target_writer: writer
                        .map(|kind| crate::ownership::actor_kind_name(kind).to_owned()),
                    ..CauseDetail::default()
                })
            }
            _ => None,
        }
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
    /// Native records that claimed the key until they came under another one, as they were
    /// then (deleted from that time on): never compared, only the record's history
    /// ([`crate::timeline`]) until nothing can need them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub departed: Vec<(System, SideRecord)>,
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
    /// Target names of the `ref` fields that point (on either side) at a record whose state
    /// cannot be trusted: they cannot be vouched for, and the record is unverified.
    pub doubtful_references: Vec<String>,
}

impl Comparison {
    fn of(status: Option<Status>) -> Self {
        Comparison {
            status,
            differing_fields: Vec::new(),
            unmapped_fields: Vec::new(),
            doubtful_references: Vec::new(),
        }
    }
}

/// Finds the join key of a native record, `(system, entity, native id)`, and whether its state
/// can be trusted.
pub type Resolve<'r> = dyn FnMut(System, &str, &str) -> Option<Resolved> + 'r;

/// What a reference resolves to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The join key of the referenced native record.
    pub join_key: String,
    /// Whether the referenced native record is unverified: a lost change may have moved it
    /// under another key, so a reference to it cannot be vouched for.
    pub unverified: bool,
}

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
            let mut doubtful = false;
            let mut key =
                |system: System, fields: &crate::event::Fields, name: &str| match reference_id(
                    fields.get(name),
                )
                .map_err(|_| ())?
                {
                    None => Ok(None),
                    Some(id) => match resolve(system, entity, &id) {
                        Some(resolved) => {
                            doubtful |= resolved.unverified;
                            Ok(Some(resolved.join_key))
                        }
                        None => Err(()),
                    },
                };
            let source_key = key(System::Source, &source.fields, field.source.first());
            let target_key = key(System::Target, &target.fields, &field.target);
            if doubtful {
                comparison.doubtful_references.push(field.target.clone());
            } else if !matches!((source_key, target_key), (Ok(left), Ok(right)) if left == right) {
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
    if !comparison.doubtful_references.is_empty() {
        // Like a record whose own state cannot be trusted: nothing is vouched for.
        comparison.status = Some(Status::Unverified);
        comparison.differing_fields.clear();
        comparison.unmapped_fields.clear();
    } else if !comparison.differing_fields.is_empty() {
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
