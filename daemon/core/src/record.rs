//! A record as tandem holds it: the join key's native records on each side, and its status.
//!
//! A record is `(entity, join key)`. Each side lists every native record that has claimed the
//! key, deleted ones included, so that history, duplicates and deletes stay visible.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::Fields;
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

/// Why a divergent record diverges.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// The latest change to one side was written by someone not allowed to write there.
    NonOwnerWrite,
}

impl Cause {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Cause::NonOwnerWrite => "non_owner_write",
        }
    }

    /// The cause of a row's divergence, from what its sides know.
    pub fn of(row: &RecordRow, status: Option<Status>) -> Option<Cause> {
        let divergent = status.is_some_and(Status::is_divergence);
        let written = row
            .source
            .iter()
            .chain(&row.target)
            .any(|side| !side.deleted && side.non_owner_write);
        (divergent && written).then_some(Cause::NonOwnerWrite)
    }
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
}

/// Compares the two sides of a record field by field, after the rename of the mapping.
///
/// Exact comparison: an absent field equals `null`, anything else must be the same JSON value.
pub fn compare(mapping: &EntityMapping, row: &RecordRow) -> Comparison {
    let mut live_source = row.source.iter().filter(|side| !side.deleted);
    let mut live_target = row.target.iter().filter(|side| !side.deleted);
    let (first_source, second_source) = (live_source.next(), live_source.next());
    let (first_target, second_target) = (live_target.next(), live_target.next());
    if second_source.is_some() || second_target.is_some() {
        return Comparison {
            status: Some(Status::Duplicate),
            differing_fields: Vec::new(),
        };
    }
    if [first_source, first_target]
        .into_iter()
        .flatten()
        .any(|side| side.unverified.is_some())
    {
        return Comparison {
            status: Some(Status::Unverified),
            differing_fields: Vec::new(),
        };
    }
    let (source, target) = match (first_source, first_target) {
        (None, None) => {
            return Comparison {
                status: None,
                differing_fields: Vec::new(),
            }
        }
        (Some(_), None) => {
            return Comparison {
                status: Some(Status::MissingInTarget),
                differing_fields: Vec::new(),
            }
        }
        (None, Some(_)) => {
            return Comparison {
                status: Some(Status::MissingInSource),
                differing_fields: Vec::new(),
            }
        }
        (Some(source), Some(target)) => (source, target),
    };
    let differing_fields: Vec<String> = mapping
        .fields
        .iter()
        .filter(|field| {
            let source_value = source.fields.get(&field.source).unwrap_or(&Value::Null);
            let target_value = target.fields.get(&field.target).unwrap_or(&Value::Null);
            source_value != target_value
        })
        .map(|field| field.target.clone())
        .collect();
    let status = if differing_fields.is_empty() {
        Status::InSync
    } else {
        Status::Mismatch
    };
    Comparison {
        status: Some(status),
        differing_fields,
    }
}

/// Applies the grace period to a comparison.
///
/// A mismatch or a missing side whose latest change (on either side) is younger than `grace`
/// at `now` is `pending`: the sync layer may simply not have caught up. A duplicate is
/// structural and an unverified record needs a re-read whatever its age: both are reported
/// at once.
pub fn with_grace(
    comparison: Comparison,
    row: &RecordRow,
    now: Timestamp,
    grace: Duration,
) -> (Option<Status>, Option<Timestamp>) {
    match comparison.status {
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
                (comparison.status, None)
            }
        }
        other => (other, None),
    }
}
