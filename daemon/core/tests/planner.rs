//! The planner's behaviour on hand-worked event sequences.

mod support;

use std::collections::BTreeMap;

use serde_json::json;
use tandem_core::apply::unjoined_key;
use tandem_core::{Outcome, Status, System};

use support::*;

#[test]
fn equal_sides_are_in_sync_and_counted() {
    let mapping = contact_mapping();
    let mut state = MemoryState::default();
    state.apply_batch(
        &mapping,
        &[
            source_create("s1", "L1", 0, "a@x.io", "Ada"),
            target_create("t1", "T1", "L1", 1, "a@x.io", "Ada"),
        ],
    );
    assert_eq!(state.status("contact", "L1"), Some(Status::InSync));
    let summary = state.summary("contact");
    assert_eq!(summary.records(), 1);
    assert_eq!(summary.count(Status::InSync), 1);
    assert_eq!(state.apply.counters.source.events_applied, 1);
    assert_eq!(state.apply.counters.target.events_applied, 1);
    assert_eq!(state.apply.clock, at(1));
}

#[test]
fn a_differing_field_is_pending_within_grace_then_a_mismatch() {
    let mapping = contact_mapping();
    let mut state = MemoryState::default();
    state.apply_batch(
        &mapping,
        &[
            source_create("s1", "L1", 0, "a@x.io", "Ada"),
            target_create("t1", "T1", "L1", 1, "a@x.io", "ADA"),
        ],
    );
    // Latest change at minute 1, grace 5 minutes: pending until minute 6.
    let row = &state.records[&("contact".to_owned(), "L1".to_owned())];
    assert_eq!(row.status.status, Some(Status::Pending));
    assert_eq!(row.status.differing_fields, vec!["lastname".to_owned()]);
    assert_eq!(row.status.due_at, Some(at(6)));
    // The sides have differed since minute 0, when only the source had the record.
    assert_eq!(row.status.since, Some(at(0)));
    assert!(state.summary("contact").mismatched_fields.is_empty());

    // Another record's event at minute 6 moves the clock to the due time.
    state.apply_batch(&mapping, &[source_create("s2", "L2", 6, "b@x.io", "Bo")]);
    let row = &state.records[&("contact".to_owned(), "L1".to_owned())];
    assert_eq!(row.status.status, Some(Status::Mismatch));
    assert_eq!(
        row.status.since,
        Some(at(0)),
        "since is when the sides began to differ"
    );
    let summary = state.summary("contact");
    assert_eq!(
        summary.mismatched_fields,
        BTreeMap::from([("lastname".to_owned(), 1)])
    );
    assert_eq!(
        summary.count(Status::Pending),
        1,
        "L2 is pending: its target copy is not there yet"
    );
}

#[test]
fn idle_clock_floor_expires_pending_records() {
    let mapping = contact_mapping();
    let mut state = MemoryState::default();
    state.apply_batch(&mapping, &[source_create("s1", "L1", 0, "a@x.io", "Ada")]);
    assert_eq!(state.status("contact", "L1"), Some(Status::Pending));
    state.apply_batch_at(&mapping, &[], Some(at(4)));
    assert_eq!(state.status("contact", "L1"), Some(Status::Pending));
    state.apply_batch_at(&mapping, &[], Some(at(5)));
    assert_eq!(state.status("contact", "L1"), Some(Status::MissingInTarget));
}

#[test]
fn missing_sides_and_duplicates() {
    let mapping = contact_mapping();
    let mut state = MemoryState::default();
    state.apply_batch(
        &mapping,
        &[
            source_create("s1", "L1", 0, "a@x.io", "Ada"),
            target_create("t2", "T2", "L2", 0, "b@x.io", "Bo"),
            source_create("s3", "L3", 0, "c@x.io", "Cy"),
            target_create("t3a", "T3a", "L3", 0, "c@x.io", "Cy"),
            target_create("t3b", "T3b", "L3", 0, "c@x.io", "Cy"),
        ],
    );
    state.apply_batch_at(&mapping, &[], Some(at(60)));
    assert_eq!(state.status("contact", "L1"), Some(Status::MissingInTarget));
    assert_eq!(state.status("contact", "L2"), Some(Status::MissingInSource));
    assert_eq!(state.status("contact", "L3"), Some(Status::Duplicate));
    let row = &state.records[&("contact".to_owned(), "L3".to_owned())];
    let target_ids: Vec<_> = row
        .target
        .iter()
        .map(|side| side.native_id.as_str())
        .collect();
    assert_eq!(target_ids, ["T3a", "T3b"]);

    // Deleting one duplicate resolves it.
    state.apply_batch(
        &mapping,
        &[(
            System::Target,
            event(
                json!({"event_id": "t3b-del", "entity": "contact", "id": "T3b",
            "op": "delete", "occurred_at": at(61).to_rfc3339()}),
            ),
        )],
    );
    assert_eq!(state.status("contact", "L3"), Some(Status::InSync));
}

#[test]
fn duplicate_event_ids_are_dropped_and_counted() {
    let mapping = contact_mapping();
    let mut state = MemoryState::default();
    let create = source_create("s1", "L1", 0, "a@x.io", "Ada");
    let mut resent = create.clone();
    // Same event id, different content: a re-delivery must not change anything.
    resent.1.fields = Some(BTreeMap::from([("Email".to_owned(), json!("other@x.io"))]));
    let outcomes = state.apply_batch(&mapping, &[create.clone(), resent.clone()]);
    assert_eq!(outcomes, [Outcome::Applied, Outcome::Duplicate]);
    let outcomes = state.apply_batch(&mapping, &[resent]);
    assert_eq!(outcomes, [Outcome::Duplicate]);
    assert_eq!(state.apply.counters.source.events_applied, 1);
    assert_eq!(state.apply.counters.source.duplicates_dropped, 2);
    let row = &state.records[&("contact".to_owned(), "L1".to_owned())];
    assert_eq!(row.source[0].fields["Email"], json!("a@x.io"));
}

#[test]
fn older_versions_never_overwrite() {
    let mapping = contact_mapping();
    let mut state = MemoryState::default();
    let update = |event_id: &str, version: u64, minute: i64, email: &str| {
        (
            System::Source,
            event(
                json!({"event_id": event_id, "entity": "contact", "id": "L1", "op": "update",
                "occurred_at": at(minute).to_rfc3339(), "external_id": "L1", "version": version,
                "fields": {"Email": email, "LastName": "Ada"}}),
            ),
        )
    };
    let outcomes = state.apply_batch(
        &mapping,
        &[
            update("v3", 3, 3, "three@x.io"),
            update("v2", 2, 2, "two@x.io"),
        ],
    );
    assert_eq!(outcomes, [Outcome::Applied, Outcome::Stale]);
    let outcomes = state.apply_batch(&mapping, &[update("v1", 1, 1, "one@x.io")]);
    assert_eq!(outcomes, [Outcome::Stale]);
    let row = &state.records[&("contact".to_owned(), "L1".to_owned())];
    assert_eq!(row.source[0].fields["Email"], json!("three@x.io"));
    assert_eq!(row.source[0].version, Some(3));
    assert_eq!(state.apply.counters.source.stale_versions, 2);
    assert_eq!(state.apply.counters.source.events_applied, 3);
}

#[test]
fn partial_updates_merge_onto_the_stored_image() {
    let mapping = contact_mapping();
    let mut state = MemoryState::default();
    state.apply_batch(
        &mapping,
        &[
            source_create("s1", "L1", 0, "a@x.io", "Ada"),
            target_create("t1", "T1", "L1", 0, "a@x.io", "Ada"),
            (
                System::Source,
                event(json!({"event_id": "s2", "entity": "contact", "id": "L1",
                "op": "update", "partial": true, "occurred_at": at(1).to_rfc3339(),
                "fields": {"Email": "new@x.io"}})),
            ),
            (
                System::Target,
                event(json!({"event_id": "t2", "entity": "contact", "id": "T1",
                "op": "update", "partial": true, "occurred_at": at(2).to_rfc3339(),
                "fields": {"email": "new@x.io"}})),
            ),
        ],
    );
    let row = &state.records[&("contact".to_owned(), "L1".to_owned())];
    assert_eq!(row.source[0].fields["LastName"], json!("Ada"));
    assert_eq!(row.source[0].fields["Email"], json!("new@x.io"));
    assert_eq!(
        row.target[0].fields["legacy_id"],
        json!("L1"),
        "the join key survives partial updates"
    );
    assert_eq!(row.status.status, Some(Status::InSync));
}

#[test]
fn records_deleted_on_both_sides_leave_the_counts() {
    let mapping = contact_mapping();
    let mut state = MemoryState::default();
    let delete = |system: System, event_id: &str, id: &str| {
        (
            system,
            event(
                json!({"event_id": event_id, "entity": "contact", "id": id, "op": "delete",
            "occurred_at": at(2).to_rfc3339()}),
            ),
        )
    };
    state.apply_batch(
        &mapping,
        &[
            source_create("s1", "L1", 0, "a@x.io", "Ada"),
            target_create("t1", "T1", "L1", 0, "a@x.io", "Ada"),
            delete(System::Source, "s2", "L1"),
        ],
    );
    state.apply_batch_at(&mapping, &[], Some(at(30)));
    assert_eq!(state.status("contact", "L1"), Some(Status::MissingInSource));
    state.apply_batch(&mapping, &[delete(System::Target, "t2", "T1")]);
    assert_eq!(state.status("contact", "L1"), None);
    assert_eq!(state.summary("contact").records(), 0);
    // The row stays, with both sides marked deleted, for the record's history.
    let row = &state.records[&("contact".to_owned(), "L1".to_owned())];
    assert!(row.source[0].deleted && row.target[0].deleted);

    // Undelete restores the source side.
    state.apply_batch(
        &mapping,
        &[(
            System::Source,
            event(json!({"event_id": "s3", "entity": "contact", "id": "L1",
            "op": "undelete", "occurred_at": at(40).to_rfc3339()})),
        )],
    );
    assert_eq!(state.status("contact", "L1"), Some(Status::Pending));
}

#[test]
fn a_record_without_join_key_is_unjoined_until_the_key_arrives() {
    let mapping = contact_mapping();
    let mut state = MemoryState::default();
    let unjoined = unjoined_key(System::Target, "T9");
    state.apply_batch(
        &mapping,
        &[
            source_create("s1", "L9", 0, "z@x.io", "Zed"),
            (
                System::Target,
                event(json!({"event_id": "t1", "entity": "contact", "id": "T9",
                "op": "create", "occurred_at": at(0).to_rfc3339(),
                "fields": {"email": "z@x.io", "lastname": "Zed"}})),
            ),
        ],
    );
    state.apply_batch_at(&mapping, &[], Some(at(30)));
    assert_eq!(
        state.status("contact", &unjoined),
        Some(Status::MissingInSource)
    );
    assert_eq!(state.status("contact", "L9"), Some(Status::MissingInTarget));
    assert_eq!(state.summary("contact").records(), 2);

    state.apply_batch(
        &mapping,
        &[(
            System::Target,
            event(json!({"event_id": "t2", "entity": "contact", "id": "T9",
            "op": "update", "partial": true, "occurred_at": at(31).to_rfc3339(),
            "fields": {"legacy_id": "L9"}})),
        )],
    );
    assert_eq!(state.status("contact", "L9"), Some(Status::InSync));
    assert!(!state
        .records
        .contains_key(&("contact".to_owned(), unjoined)));
    assert_eq!(state.summary("contact").records(), 1);
}

#[test]
fn unmapped_entities_are_counted_not_stored() {
    let mapping = contact_mapping();
    let mut state = MemoryState::default();
    let outcomes = state.apply_batch(
        &mapping,
        &[(
            System::Source,
            event(json!({"event_id": "x", "entity": "task", "id": "1",
            "op": "create", "occurred_at": at(0).to_rfc3339()})),
        )],
    );
    assert_eq!(outcomes, [Outcome::UnmappedEntity]);
    assert_eq!(state.apply.counters.source.unmapped_entities["task"], 1);
    assert!(state.records.is_empty());
}

#[test]
fn a_gated_step_is_refused_when_events_arrived_after_its_gates_were_measured() {
    use tandem_core::cutover::{StepOrder, Transition};
    use tandem_core::Planner;
    let mapping = contact_mapping();
    let mut state = MemoryState::default();
    state.apply_batch(
        &mapping,
        &[
            source_create("s1", "L1", 0, "a@x.io", "Ada"),
            target_create("t1", "T1", "L1", 1, "a@x.io", "Ada"),
        ],
    );
    let order = |transition, measured_at_events| StepOrder {
        transition,
        by: "release-manager".to_owned(),
        caller: None,
        reason: "rehearsal".to_owned(),
        evidence: None,
        measured_at_events,
    };
    let mut planner = Planner::new(&mapping, GRACE, &state, state.apply.clone());
    planner
        .transition(order(Transition::Freeze, None), at(2))
        .unwrap();
    // The gates were measured when one event had been applied; two have been since.
    let refusal = planner
        .transition(order(Transition::Verify, Some(1)), at(3))
        .unwrap_err();
    assert!(
        refusal.starts_with("1 events were applied after"),
        "{refusal}"
    );
    let record = planner
        .transition(order(Transition::Verify, Some(2)), at(3))
        .unwrap();
    assert_eq!(record.to, tandem_core::cutover::Phase::Verified);
}

#[test]
fn a_join_key_says_whether_it_stands_in_for_a_record_without_one() {
    use tandem_core::apply::JoinKey;
    let stand_in = unjoined_key(System::Target, "T:9");
    assert_eq!(stand_in, "unjoined:target:T:9");
    assert_eq!(
        JoinKey::parse(&stand_in),
        JoinKey::Unjoined {
            system: System::Target,
            native_id: "T:9"
        }
    );
    assert_eq!(JoinKey::parse(&stand_in).to_string(), stand_in);
    for key in ["L1", "unjoined", "unjoined:elsewhere:T9"] {
        assert_eq!(JoinKey::parse(key), JoinKey::Joined(key));
        assert!(!JoinKey::parse(key).is_unjoined());
    }
}
