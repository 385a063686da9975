//! How one event changes one native record: order, completeness, and the effect of each op.
//!
//! Order: with a `version` on both the event and the stored record, the higher version wins;
//! otherwise the later `occurred_at` wins, and on a tie the event read later wins (a feed
//! that cannot order two changes within one instant gives tandem no better rule).
//!
//! Completeness: a full image (create, snapshot, full update) makes the record's state
//! trustworthy. A partial update is only as good as the state it lands on: on a record tandem
//! holds no full image of, or after a skipped version, the record is unverified until a full
//! image arrives. A `gap` event makes it unverified outright. A delete is definitive.
//!
//! A `snapshot` image is a reading, not a change: it makes the record trustworthy but does
//! not move its time of last change.

use serde_json::Value;

use crate::event::{ChangeEvent, Fields, Op};
use crate::record::{FieldChange, SideRecord, Unverified, UnverifiedReason};

use crate::time::Timestamp;
use crate::timeline;

/// Whether `event` is older than what `stored` already reflects.
pub fn is_stale(stored: &SideRecord, event: &ChangeEvent) -> bool {
    match (event.version, stored.version) {
        (Some(incoming), Some(held)) => incoming < held,
        _ => event.occurred_at < stored.last_change_at,
    }
}

/// The native record after `event` (which is not stale and not a `snapshot_end`).
pub fn apply(current: Option<SideRecord>, event: &ChangeEvent) -> SideRecord {
    let first_sight = current.is_none();
    let mut side = current.unwrap_or_else(|| SideRecord {
        presence_at: Some(event.occurred_at),
        ..SideRecord::new(event.id.clone())
    });
    if !first_sight && side.presence_at.is_none() {
        timeline::adopt(&mut side);
    }
    let was_deleted = side.deleted;
    let unverified = |reason| {
        Some(Unverified {
            reason,
            since: event.occurred_at,
        })
    };
    match event.op {
        Op::Create | Op::Snapshot => {
            if event.op == Op::Snapshot
                && !event.partial
                && reveals_a_change(&side, first_sight, event)
            {
                side.revealed_change_at = side.revealed_change_at.max(Some(event.occurred_at));
            }
            side.deleted = false;
            side.merged_into = None;
            if event.op == Op::Create {
                side.created_by = event.actor.as_ref().map(|actor| {
                    let kind = crate::ownership::actor_kind_name(actor.kind);
                    match &actor.id {
                        Some(id) => format!("{kind}:{id}"),
                        None => kind.to_owned(),
                    }
                });
            }
            write_fields(&mut side, event, first_sight);
        }
        Op::Undelete => {
            side.deleted = false;
            side.merged_into = None;
            if event.fields.is_some() {
                write_fields(&mut side, event, first_sight);
            }
        }
        Op::Update => write_fields(&mut side, event, first_sight),
        Op::Delete => {
            side.deleted = true;
            side.unverified = None;
        }
        Op::Merge => {
            side.deleted = true;
            side.merged_into = event.merged_into.clone();
            side.unverified = None;
        }
        Op::Gap => {
            // The feed lost changes: whatever tandem holds may be out of date, and a record
            // first known through a gap exists but is unknown.
            side.unverified = side
                .unverified
                .take()
                .or_else(|| unverified(UnverifiedReason::Gap));
        }
        Op::SnapshotEnd | Op::TransactionEnd => {
            unreachable!(
                "invariant: snapshot_end and transaction_end events never reach a native record"
            )
        }
    }
    if side.deleted != was_deleted {
        timeline::note_presence(&mut side, was_deleted, event.occurred_at);
    }
    side.version = side.version.max(event.version);
    // A snapshot image is a reading, not a change: its time is when it was read, and it
    // neither restarts the grace period nor counts as a change during a snapshot run.
    if event.op != Op::Snapshot {
        side.last_change_at = side.last_change_at.max(event.occurred_at);
    }
    if crate::ownership::is_write(event.op) {
        side.last_actor = event.actor.as_ref().map(|actor| actor.kind);
    }
    side.last_event_id = event.event_id.clone();
    side
}

/// Whether a snapshot image shows a record other than the one tandem held: unknown before,
/// deleted, or with other field values.
fn reveals_a_change(held: &SideRecord, first_sight: bool, image: &ChangeEvent) -> bool {
    first_sight
        || held.deleted
        || match &image.fields {
            Some(fields) => *fields != held.fields,
            None => !held.fields.is_empty(),
        }
}

/// A full image replaces the fields and makes the record trustworthy; a partial one merges
/// onto them and keeps (or loses) trust depending on what it lands on.
fn write_fields(side: &mut SideRecord, event: &ChangeEvent, first_sight: bool) {
    if !first_sight && side.field_changes.is_empty() {
        // Stored before field changes were kept: what it holds changed at its last change.
        let held = FieldChange(side.last_change_at, side.last_actor, None);
        side.field_changes = side
            .fields
            .keys()
            .map(|name| (name.clone(), held))
            .collect();
    }
    if !event.partial {
        static EMPTY: std::sync::OnceLock<Fields> = std::sync::OnceLock::new();
        let image = match (&event.fields, event.op) {
            (Some(image), _) => image,
            // A create or snapshot without fields is an empty record; an update without
            // fields changes none.
            (None, Op::Create | Op::Snapshot) => EMPTY.get_or_init(Fields::new),
            (None, _) => return,
        };
        let removed: Vec<String> = side
            .fields
            .keys()
            .filter(|name| !image.contains_key(*name))
            .cloned()
            .collect();
        for name in removed {
            note_change(side, event, &name, None, first_sight);
        }
        for (name, value) in image {
            note_change(side, event, name, Some(value), first_sight);
        }
        side.fields = image.clone();
        side.unverified = None;
        side.full_image_at = side.full_image_at.max(Some(event.occurred_at));
        return;
    }
    let skipped = matches!((event.version, side.version), (Some(incoming), Some(held)) if incoming > held + 1);
    let reason = if first_sight {
        Some(UnverifiedReason::PartialWithoutImage)
    } else if skipped {
        Some(UnverifiedReason::VersionSkip)
    } else {
        None
    };
    if let (Some(reason), None) = (reason, &side.unverified) {
        side.unverified = Some(Unverified {
            reason,
            since: event.occurred_at,
        });
    }
    for (name, value) in event.fields.iter().flatten() {
        note_change(side, event, name, Some(value), first_sight);
        side.fields.insert(name.clone(), value.clone());
    }
}

/// Records when field `name` changed, if `event` gives it a value (`None`: absent) other than
/// the one held: the event's time and writer, or for a snapshot, the time it was read. The
/// value held before goes into the record's history.
fn note_change(
    side: &mut SideRecord,
    event: &ChangeEvent,
    name: &str,
    value: Option<&Value>,
    first_sight: bool,
) {
    let held = side.fields.get(name);
    let unchanged = match (held, value) {
        (Some(held), Some(value)) => held == value,
        (None, None) => true,
        (None, Some(value)) | (Some(value), None) => value.is_null(),
    };
    if unchanged && side.field_changes.contains_key(name) {
        return;
    }
    if !unchanged && !first_sight {
        timeline::note_field(side, name, side.field_change(name).0);
    }
    let change = if event.op == Op::Snapshot {
        // Changed after the value held before was set (or read), at some time tandem never
        // saw. When the broker deleted offsets tandem had not read, the change was in them:
        // a record's events keep their order on its partition, and every event before the
        // deleted ones was applied, so it came after the record's last applied change.
        let held = side
            .field_changes
            .get(name)
            .map_or(Timestamp::MIN, |held| held.0);
        let lost_after = match &side.unverified {
            Some(doubt) if doubt.reason == UnverifiedReason::OffsetsLost => side.last_change_at,
            _ => Timestamp::MIN,
        };
        FieldChange(event.occurred_at, None, Some(held.max(lost_after)))
    } else {
        FieldChange(
            event.occurred_at,
            event.actor.as_ref().map(|actor| actor.kind),
            None,
        )
    };
    side.field_changes.insert(name.to_owned(), change);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(
        op: &str,
        minute: i64,
        version: Option<u64>,
        partial: bool,
        fields: serde_json::Value,
    ) -> ChangeEvent {
        let mut value = json!({"event_id": format!("e-{minute}"), "entity": "contact", "id": "1", "op": op,
            "occurred_at": Timestamp::from_unix_nanos(minute * 60_000_000_000).to_rfc3339(),
            "partial": partial, "fields": fields});
        if let Some(version) = version {
            value["version"] = json!(version);
        }
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn order_is_by_version_then_by_event_time() {
        let stored = apply(None, &event("create", 10, Some(3), false, json!({"a": 1})));
        assert!(
            is_stale(&stored, &event("update", 20, Some(2), false, json!({}))),
            "a lower version loses even if later"
        );
        assert!(
            !is_stale(&stored, &event("update", 5, Some(4), false, json!({}))),
            "a higher version wins even if earlier"
        );
        let unversioned = apply(None, &event("create", 10, None, false, json!({"a": 1})));
        assert!(is_stale(
            &unversioned,
            &event("update", 9, None, false, json!({}))
        ));
        assert!(
            !is_stale(&unversioned, &event("update", 10, None, false, json!({}))),
            "a tie goes to the later read"
        );
    }

    #[test]
    fn partial_updates_are_only_trusted_on_a_complete_image() {
        let partial_first = apply(None, &event("update", 1, Some(2), true, json!({"a": 1})));
        assert_eq!(
            partial_first.unverified.as_ref().map(|u| u.reason),
            Some(UnverifiedReason::PartialWithoutImage)
        );

        let complete = apply(
            None,
            &event("create", 1, Some(1), false, json!({"a": 1, "b": 1})),
        );
        let next = apply(
            Some(complete.clone()),
            &event("update", 2, Some(2), true, json!({"a": 2})),
        );
        assert_eq!(next.unverified, None);
        assert_eq!(
            next.fields,
            serde_json::from_value(json!({"a": 2, "b": 1})).unwrap()
        );

        let skipped = apply(
            Some(complete),
            &event("update", 3, Some(3), true, json!({"a": 3})),
        );
        assert_eq!(
            skipped.unverified.as_ref().map(|u| u.reason),
            Some(UnverifiedReason::VersionSkip)
        );
        let still = apply(
            Some(skipped.clone()),
            &event("update", 4, Some(4), true, json!({"b": 4})),
        );
        assert_eq!(
            still.unverified, skipped.unverified,
            "the first reason and time are kept"
        );
        let healed = apply(
            Some(still),
            &event("snapshot", 5, Some(4), false, json!({"a": 3, "b": 4})),
        );
        assert_eq!(healed.unverified, None, "a full image heals");
    }

    #[test]
    fn a_snapshot_image_heals_without_being_a_change() {
        let changed = apply(None, &event("create", 1, Some(1), false, json!({"a": 1})));
        let read = apply(
            Some(changed),
            &event("snapshot", 9, Some(1), false, json!({"a": 1})),
        );
        assert_eq!(
            read.last_change_at,
            Timestamp::from_unix_nanos(60_000_000_000)
        );
        assert!(!is_stale(
            &read,
            &event("update", 5, Some(2), false, json!({}))
        ));
    }

    #[test]
    fn a_snapshot_that_finds_other_values_reveals_a_change_at_its_reading() {
        let changed = apply(None, &event("create", 1, None, false, json!({"a": 1})));
        let same = apply(
            Some(changed.clone()),
            &event("snapshot", 5, None, false, json!({"a": 1})),
        );
        assert_eq!(same.revealed_change_at, None);
        let other = apply(
            Some(same),
            &event("snapshot", 9, None, false, json!({"a": 2})),
        );
        assert_eq!(
            (other.revealed_change_at, other.last_change_at),
            (
                Some(Timestamp::from_unix_nanos(9 * 60_000_000_000)),
                changed.last_change_at
            )
        );
        let unknown = apply(None, &event("snapshot", 7, None, false, json!({"a": 1})));
        assert_eq!(
            unknown.revealed_change_at,
            Some(Timestamp::from_unix_nanos(7 * 60_000_000_000))
        );
    }

    #[test]
    fn a_full_image_after_a_skipped_version_is_trusted() {
        let complete = apply(None, &event("create", 1, Some(1), false, json!({"a": 1})));
        let jumped = apply(
            Some(complete),
            &event("update", 2, Some(5), false, json!({"a": 5})),
        );
        assert_eq!(jumped.unverified, None);
    }

    #[test]
    fn gaps_make_records_unverified_and_deletes_are_definitive() {
        let known = apply(None, &event("create", 1, None, false, json!({"a": 1})));
        let gapped = apply(Some(known), &event("gap", 2, None, false, json!(null)));
        assert_eq!(
            gapped.unverified.as_ref().map(|u| u.reason),
            Some(UnverifiedReason::Gap)
        );
        assert_eq!(gapped.fields["a"], json!(1), "a gap changes no field");
        let unknown = apply(None, &event("gap", 2, None, false, json!(null)));
        assert!(
            unknown.unverified.is_some() && !unknown.deleted,
            "a gap on an unknown record announces it exists"
        );
        let deleted = apply(Some(gapped), &event("delete", 3, None, false, json!(null)));
        assert!(deleted.deleted && deleted.unverified.is_none());
    }
}
