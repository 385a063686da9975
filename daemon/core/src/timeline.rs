//! What each native record held over time, and from when the sides of a record have differed.
//!
//! A record's `since` is the event time from which its sides have truly differed without a
//! break. Changes do not arrive in event-time order across the two systems: while one topic
//! lags, tandem applies the other's later changes first, and the moment the sides started to
//! differ in consumption order can be earlier or later than the truth. So each native record
//! keeps, besides its current values and the time each was set, the values it held before
//! ([`Earlier`]), and `since` is found by walking the record's change times back from now:
//! the state of both sides as of each time is compared with the same rules as the current
//! one, and the walk stops at the latest time they agreed.
//!
//! Earlier values are let go once nothing can need them: every change of a native record on
//! one system arrives in its own order (one partition), so nothing older than the older of
//! the two sides' latest changes can still arrive, and the latest time up to then at which
//! the sides agreed is final: no future difference starts before it. What was held only
//! before it is dropped, and `history_from` says from when the rest is complete. A native
//! record keeps at most [`MAX_EARLIER`] earlier values; past that the oldest go, and a record
//! whose sides never agreed for good since then is dated, at the latest, from the oldest
//! value kept.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::{ChangeEvent, Op};
use crate::mapping::EntityMapping;
use crate::record::{compare, RecordRow, RecordStatus, Resolve, Resolved, SideRecord, Status};
use crate::system::System;
use crate::time::Timestamp;

/// The most earlier values one native record keeps.
pub const MAX_EARLIER: usize = 256;

/// A value a native record held before its current one, and from when.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Earlier {
    /// Event time from which it held the value.
    pub at: Timestamp,
    /// What it held.
    pub held: Held,
}

/// What a native record held: one field's value, or whether it was deleted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Held {
    /// Native field `name` held `value` (`None`: absent).
    Field {
        /// The native field name.
        name: String,
        /// Its value.
        value: Option<Value>,
    },
    /// The record was deleted (`true`) or live (`false`).
    Deleted(bool),
}

/// Notes that native field `name` held its current value (set at `at`) until now.
pub(crate) fn note_field(side: &mut SideRecord, name: &str, at: Timestamp) {
    let value = side.fields.get(name).cloned();
    insert(
        side,
        Earlier {
            at,
            held: Held::Field {
                name: name.to_owned(),
                value,
            },
        },
    );
}

/// Notes that the record was deleted (or live) as `was_deleted` says until `changed_at`,
/// when its presence changed.
pub(crate) fn note_presence(side: &mut SideRecord, was_deleted: bool, changed_at: Timestamp) {
    if let Some(at) = side.presence_at {
        insert(
            side,
            Earlier {
                at,
                held: Held::Deleted(was_deleted),
            },
        );
    }
    side.presence_at = Some(changed_at);
}

/// Starts the history of a native record that came under another join key: under it, the
/// record exists from `moved_at` on.
pub(crate) fn start_over(side: &mut SideRecord, moved_at: Timestamp) {
    side.earlier.clear();
    side.history_from = None;
    side.presence_at = Some(moved_at);
}

/// Starts the history of a native record stored before histories were kept: complete from
/// its latest change on, live or deleted as it is since ever.
pub(crate) fn adopt(side: &mut SideRecord) {
    side.history_from = Some(latest_change(side));
    side.presence_at = Some(Timestamp::MIN);
}

fn insert(side: &mut SideRecord, earlier: Earlier) {
    let position = side.earlier.partition_point(|held| held.at <= earlier.at);
    side.earlier.insert(position, earlier);
}

/// Puts the values of an event older than the record's current state into its history: they
/// held from the event's time until the value now current was set. Returns whether anything
/// was kept. Only fields whose current value was set after the event are concerned.
pub fn insert_stale(side: &mut SideRecord, event: &ChangeEvent) -> bool {
    let floor = history_floor(side);
    let writes_fields = matches!(
        event.op,
        Op::Create | Op::Update | Op::Snapshot | Op::Undelete
    );
    if !writes_fields
        || side.presence_at.is_none()
        || floor.is_some_and(|floor| event.occurred_at < floor)
    {
        return false;
    }
    let mut kept = false;
    // A record first seen after the event (through a later change that overtook it)
    // existed, live, from the event on.
    let first_known = side
        .earlier
        .iter()
        .filter(|earlier| matches!(earlier.held, Held::Deleted(_)))
        .map(|earlier| earlier.at)
        .chain(side.presence_at)
        .min();
    if first_known.is_some_and(|first| event.occurred_at < first) {
        insert(
            side,
            Earlier {
                at: event.occurred_at,
                held: Held::Deleted(false),
            },
        );
        kept = true;
    }
    for (name, value) in event.fields.iter().flatten() {
        // A field tandem never had a value for (the record was first seen through a partial
        // change) takes the event's value; one set at or before the event keeps its own.
        let set_after = side
            .field_changes
            .get(name)
            .is_none_or(|change| change.0 > event.occurred_at);
        if !set_after {
            continue;
        }
        let held_then = side
            .earlier
            .iter()
            .rev()
            .find(|earlier| {
                earlier.at <= event.occurred_at
                    && matches!(&earlier.held, Held::Field { name: held, .. } if held == name)
            })
            .and_then(|earlier| match &earlier.held {
                Held::Field { value, .. } => value.as_ref(),
                Held::Deleted(_) => None,
            });
        // A value the history already has for that time (a re-sent or older copy) adds
        // nothing.
        if held_then != Some(value) {
            insert(
                side,
                Earlier {
                    at: event.occurred_at,
                    held: Held::Field {
                        name: name.clone(),
                        value: Some(value.clone()),
                    },
                },
            );
            kept = true;
        }
    }
    kept
}

/// The time from which a native record's history is complete: `None` when it is complete
/// from the record's first appearance. A record stored before histories were kept knows
/// only its present.
fn history_floor(side: &SideRecord) -> Option<Timestamp> {
    match side.presence_at {
        None => Some(latest_change(side)),
        Some(_) => side.history_from,
    }
}

/// The newest time anything about the native record is known from.
fn latest_change(side: &SideRecord) -> Timestamp {
    side.field_changes
        .values()
        .map(|change| change.0)
        .chain(side.presence_at)
        .fold(side.last_change_at, Timestamp::max)
}

/// Every time at which the native record's state changed, at or after `floor`.
fn change_times(side: &SideRecord, floor: Timestamp, times: &mut Vec<Timestamp>) {
    let own = side
        .field_changes
        .values()
        .map(|change| change.0)
        .chain(side.presence_at)
        .chain(side.earlier.iter().map(|earlier| earlier.at));
    times.extend(own.filter(|at| *at >= floor));
    if side.field_changes.is_empty() || side.presence_at.is_none() {
        times.push(side.last_change_at.max(floor));
    }
}

/// The native record as it was at `at` (`None`: it did not exist yet), trusted: a doubt is
/// about the present.
fn side_as_of(side: &SideRecord, at: Timestamp) -> Option<SideRecord> {
    let held_at = |wanted: &dyn Fn(&Held) -> bool| {
        side.earlier
            .iter()
            .rev()
            .find(|earlier| earlier.at <= at && wanted(&earlier.held))
            .map(|earlier| &earlier.held)
    };
    let deleted = match side.presence_at {
        Some(changed) if changed > at => match held_at(&|held| matches!(held, Held::Deleted(_))) {
            Some(Held::Deleted(deleted)) => *deleted,
            _ => return None,
        },
        _ => side.deleted,
    };
    let mut names: Vec<&String> = side
        .fields
        .keys()
        .chain(side.field_changes.keys())
        .chain(
            side.earlier
                .iter()
                .filter_map(|earlier| match &earlier.held {
                    Held::Field { name, .. } => Some(name),
                    Held::Deleted(_) => None,
                }),
        )
        .collect();
    names.sort_unstable();
    names.dedup();
    let mut fields = crate::event::Fields::new();
    for name in names {
        // When the current value was set; a field with no time never had a value.
        let current_from = if side.field_changes.is_empty() {
            Some(side.last_change_at)
        } else {
            side.field_changes.get(name).map(|change| change.0)
        };
        let value = if current_from.is_some_and(|from| from <= at) {
            side.fields.get(name)
        } else {
            match held_at(&|held| matches!(held, Held::Field { name: held, .. } if held == name)) {
                Some(Held::Field { value, .. }) => value.as_ref(),
                _ => None,
            }
        };
        if let Some(value) = value {
            fields.insert(name.clone(), value.clone());
        }
    }
    Some(SideRecord {
        fields,
        deleted,
        version: side.version,
        last_change_at: at,
        ..SideRecord::new(side.native_id.clone())
    })
}

/// Both sides as they were at `at`.
fn row_as_of(row: &RecordRow, at: Timestamp) -> RecordRow {
    let sides_of = |system: System| {
        row.side(system)
            .iter()
            .chain(departed(row, system))
            .filter_map(|side| side_as_of(side, at))
            .collect()
    };
    RecordRow {
        source: sides_of(System::Source),
        target: sides_of(System::Target),
        status: RecordStatus::default(),
        departed: Vec::new(),
    }
}

/// The native records of one system that left the record.
fn departed(row: &RecordRow, system: System) -> impl Iterator<Item = &SideRecord> {
    row.departed
        .iter()
        .filter(move |(departed_system, _)| *departed_system == system)
        .map(|(_, side)| side)
}

/// Every native record the record's history holds: current and departed.
fn every_side(row: &RecordRow) -> impl Iterator<Item = &SideRecord> {
    row.source
        .iter()
        .chain(&row.target)
        .chain(row.departed.iter().map(|(_, side)| side))
}

/// The floor of the whole record: the latest of its native records'.
fn row_floor(row: &RecordRow) -> Option<Timestamp> {
    every_side(row).filter_map(history_floor).max()
}

/// Compares a record's sides as they were at given times, looking each reference up once.
struct Judge<'j, 'r> {
    entity: &'j EntityMapping,
    resolve: &'j mut Resolve<'r>,
    resolved: HashMap<(System, String, String), Option<Resolved>>,
}

impl<'j, 'r> Judge<'j, 'r> {
    fn new(entity: &'j EntityMapping, resolve: &'j mut Resolve<'r>) -> Self {
        Judge {
            entity,
            resolve,
            resolved: HashMap::new(),
        }
    }

    /// The record's status at `at`, as its history tells it.
    fn status_at(&mut self, row: &RecordRow, at: Timestamp) -> Option<Status> {
        let resolve = &mut *self.resolve;
        let resolved = &mut self.resolved;
        let mut cached = |system: System, entity: &str, native_id: &str| {
            resolved
                .entry((system, entity.to_owned(), native_id.to_owned()))
                .or_insert_with(|| resolve(system, entity, native_id))
                .clone()
        };
        compare(self.entity, &row_as_of(row, at), &mut cached).status
    }

    /// Whether the sides differed at `at` (a doubt or a duplicate counts).
    fn differs_at(&mut self, row: &RecordRow, at: Timestamp) -> bool {
        !matches!(self.status_at(row, at), None | Some(Status::InSync))
    }
}

/// From when the sides of a record that differs now have differed without a break (event
/// time), judged with the current rules and references as they resolve now. `previous` is
/// the `since` found before, kept for a record stored before histories were kept.
pub fn differing_since(
    entity: &EntityMapping,
    row: &RecordRow,
    previous: Option<Timestamp>,
    resolve: &mut Resolve<'_>,
) -> Option<Timestamp> {
    let floor = row_floor(row);
    let mut times = Vec::new();
    for side in every_side(row) {
        change_times(side, floor.unwrap_or(Timestamp::MIN), &mut times);
    }
    // The state at the floor itself is known, even between two changes.
    times.extend(floor);
    times.sort_unstable_by(|left, right| right.cmp(left));
    times.dedup();
    let (&newest, older) = times.split_first()?;
    let mut judge = Judge::new(entity, resolve);
    let mut since = newest;
    for &at in older {
        if !judge.differs_at(row, at) {
            return Some(since);
        }
        since = at;
    }
    // Below the floor the values are let go, but a native record that joined the key after
    // the history was let go (its changes arrive on a partition of their own, late) brings
    // its own older times, and a duplicate needs nothing but which native records were
    // live: the record was one from as far back as that holds without a break.
    if let Some(floor) = floor {
        let mut below = Vec::new();
        for side in every_side(row) {
            change_times(side, Timestamp::MIN, &mut below);
        }
        below.retain(|at| *at < floor);
        below.sort_unstable_by(|left, right| right.cmp(left));
        below.dedup();
        for at in below {
            if judge.status_at(row, at) != Some(Status::Duplicate) {
                break;
            }
            since = at;
        }
    }
    // Nothing existed before the oldest change, or the sides agreed just before the floor
    // (where the history was let go): the difference started there. A record stored before
    // histories were kept knows only its present: it keeps the `since` it had.
    let adopted = every_side(row).any(|side| side.presence_at == Some(Timestamp::MIN));
    match previous {
        Some(previous) if adopted && previous <= since => Some(previous),
        _ => Some(since),
    }
}

/// Lets go of the earlier values no `since` can need any more.
///
/// Changes still to come are newer than the older of the two sides' latest changes (each
/// side's changes of a record arrive in order), so the states up to then are final. The
/// latest of those at which the sides agreed is where any future difference starts at the
/// earliest: from the next change on (or from the settled time, if earlier), the history
/// is all a `since` can need, and what was held only before is dropped.
pub fn let_go(entity: &EntityMapping, row: &mut RecordRow, resolve: &mut Resolve<'_>) {
    let latest = |system: System| {
        row.side(system)
            .iter()
            .chain(departed(row, system))
            .map(latest_change)
            .max()
    };
    // One side has never been seen: anything it sends may be older than all of the other.
    let settled = latest(System::Source)
        .zip(latest(System::Target))
        .map(|(source, target)| source.min(target));
    let droppable = |settled: Timestamp| {
        every_side(row)
            .any(|side| (0..side.earlier.len()).any(|index| successor(side, index) <= settled))
            || row
                .departed
                .iter()
                .any(|(_, side)| side.presence_at.is_none_or(|left| left <= settled))
    };
    let cut = settled
        .filter(|settled| droppable(*settled))
        .and_then(|settled| {
            let floor = row_floor(row).unwrap_or(Timestamp::MIN);
            let mut times = vec![settled];
            for side in every_side(row) {
                change_times(side, floor, &mut times);
            }
            times.sort_unstable_by(|left, right| right.cmp(left));
            times.dedup();
            let mut judge = Judge::new(entity, resolve);
            // The latest settled time at which the sides agreed, and the change after it.
            let agreed = times
                .iter()
                .position(|at| *at <= settled && !judge.differs_at(row, *at))?;
            let next_change = agreed
                .checked_sub(1)
                .map_or(Timestamp::MAX, |next| times[next]);
            Some(next_change.min(settled))
        });
    if let Some(cut) = cut {
        // A native record that left by the cut is part of no state from the cut on.
        let before = row.departed.len();
        row.departed
            .retain(|(_, side)| side.presence_at.is_none_or(|left| left > cut));
        let departed_dropped = row.departed.len() != before;
        let departed = row.departed.iter_mut().map(|(_, side)| side);
        for side in row.source.iter_mut().chain(&mut row.target).chain(departed) {
            if drop_before(side, cut) || departed_dropped {
                side.history_from = side.history_from.max(Some(cut));
            }
        }
    }
    let departed = row.departed.iter_mut().map(|(_, side)| side);
    for side in row.source.iter_mut().chain(&mut row.target).chain(departed) {
        if side.earlier.len() > MAX_EARLIER {
            // The oldest go; the history is complete from when the last of them stopped
            // being held.
            let excess = side.earlier.len() - MAX_EARLIER;
            let complete_from = (0..excess).map(|index| successor(side, index)).max();
            side.earlier.drain(..excess);
            side.history_from = side.history_from.max(complete_from);
        }
    }
}

/// Drops the earlier values a native record no longer held at `cut` (the next value was set
/// by then); returns whether any went.
fn drop_before(side: &mut SideRecord, cut: Timestamp) -> bool {
    let successors: Vec<Timestamp> = (0..side.earlier.len())
        .map(|index| successor(side, index))
        .collect();
    let mut index = 0;
    let before = side.earlier.len();
    side.earlier.retain(|_| {
        let keep = successors[index] > cut;
        index += 1;
        keep
    });
    side.earlier.len() != before
}

/// When the value of earlier entry `index` stopped being held: the next value of the same
/// field (or presence) was set.
fn successor(side: &SideRecord, index: usize) -> Timestamp {
    let entry = &side.earlier[index];
    let same_slot = |other: &Held| match (&entry.held, other) {
        (Held::Field { name, .. }, Held::Field { name: other, .. }) => name == other,
        (Held::Deleted(_), Held::Deleted(_)) => true,
        _ => false,
    };
    side.earlier[index + 1..]
        .iter()
        .find(|later| same_slot(&later.held))
        .map(|later| later.at)
        .unwrap_or_else(|| match &entry.held {
            // A field that never had a value since holds this one still.
            Held::Field { name, .. } => side
                .field_changes
                .get(name)
                .map_or(Timestamp::MAX, |change| change.0),
            Held::Deleted(_) => side.presence_at.unwrap_or(Timestamp::MIN),
        })
}
