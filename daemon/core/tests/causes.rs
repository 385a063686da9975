//! Every divergence cause, each from a hand-worked event sequence: the history decides it.

mod support;

use serde_json::{json, Value};
use support::*;
use tandem_core::mapping::{FieldMapping, JoinSpec};
use tandem_core::ownership::ActorRule;
use tandem_core::record::{Cause, CauseDetail};
use tandem_core::{ChangeEvent, EntityMapping, JoinKeySource, Mapping, Status, System};

/// One event of contact `id` in `system`, with an actor.
fn write(
    system: System,
    event_id: &str,
    id: &str,
    op: &str,
    minute: i64,
    fields: Value,
    actor: &str,
) -> (System, ChangeEvent) {
    let mut value = json!({"event_id": event_id, "entity": "contact", "id": id, "op": op,
        "occurred_at": at(minute).to_rfc3339(), "actor": {"kind": actor}});
    if !fields.is_null() {
        value["fields"] = fields;
    }
    if system == System::Source {
        value["external_id"] = json!(id);
    }
    (system, event(value))
}

fn cause(state: &MemoryState, join_key: &str) -> (Option<Status>, Option<Cause>) {
    let row = &state.records[&("contact".to_owned(), join_key.to_owned())];
    (row.status.status, row.status.cause)
}

/// L1 created in the source by a user and copied by the sync layer at minute 1.
fn synced(state: &mut MemoryState, mapping: &Mapping) {
    state.apply_batch(
        mapping,
        &[
            write(
                System::Source,
                "s1",
                "L1",
                "create",
                0,
                json!({"Email": "a@x.io", "LastName": "Ada"}),
                "user",
            ),
            write(
                System::Target,
                "t1",
                "T1",
                "create",
                1,
                json!({"email": "a@x.io", "lastname": "Ada", "legacy_id": "L1"}),
                "sync",
            ),
        ],
    );
    assert_eq!(cause(state, "L1"), (Some(Status::InSync), None));
}

/// L1 synced, then `events`, evaluated at `minute` (or at the newest event's time).
fn synced_then(events: &[(System, ChangeEvent)], minute: Option<i64>) -> MemoryState {
    let mapping = contact_mapping();
    let mut state = MemoryState::default();
    synced(&mut state, &mapping);
    state.apply_batch_at(&mapping, events, minute.map(at));
    state
}

#[test]
fn a_difference_within_grace_is_lag() {
    let state = synced_then(
        &[write(
            System::Source,
            "s2",
            "L1",
            "update",
            10,
            json!({"Email": "a2@x.io", "LastName": "Ada"}),
            "user",
        )],
        None,
    );
    assert_eq!(
        cause(&state, "L1"),
        (Some(Status::Pending), Some(Cause::Lag))
    );
}

#[test]
fn a_source_change_the_target_never_got_is_a_missed_change() {
    // The user changes the e-mail at minute 10; no copy arrives; grace (5 min) passes.
    let mut state = synced_then(
        &[write(
            System::Source,
            "s2",
            "L1",
            "update",
            10,
            json!({"Email": "a2@x.io", "LastName": "Ada"}),
            "user",
        )],
        Some(20),
    );
    assert_eq!(
        cause(&state, "L1"),
        (Some(Status::Mismatch), Some(Cause::MissedChange))
    );
    // A record the target never got at all is a missed change too.
    state.apply_batch_at(
        &contact_mapping(),
        &[write(
            System::Source,
            "s3",
            "L2",
            "create",
            21,
            json!({"Email": "b@x.io"}),
            "user",
        )],
        Some(at(40)),
    );
    assert_eq!(
        cause(&state, "L2"),
        (Some(Status::MissingInTarget), Some(Cause::MissedChange))
    );
}

#[test]
fn a_target_value_changed_after_the_sync_wrote_it_is_overwritten_in_target() {
    let mapping = contact_mapping();
    let mut state = MemoryState::default();
    state.ownership.allowed.insert(
        System::Target,
        vec![ActorRule::parse("integration").unwrap()],
    );
    synced(&mut state, &mapping);
    // An integration allowed into the target edits the e-mail.
    state.apply_batch_at(
        &mapping,
        &[write(
            System::Target,
            "t2",
            "T1",
            "update",
            10,
            json!({"email": "typo@x.io", "lastname": "Ada", "legacy_id": "L1"}),
            "integration",
        )],
        Some(at(20)),
    );
    assert_eq!(
        cause(&state, "L1"),
        (Some(Status::Mismatch), Some(Cause::OverwrittenInTarget))
    );
}

fn row<'s>(state: &'s MemoryState, join_key: &str) -> &'s tandem_core::record::RecordRow {
    &state.records[&("contact".to_owned(), join_key.to_owned())]
}

#[test]
fn a_sync_write_with_a_wrong_value_says_so_with_the_pattern_it_follows() {
    let mapping = contact_mapping();
    let mut state = MemoryState::default();
    state.apply_batch_at(
        &mapping,
        &[
            write(
                System::Source,
                "s1",
                "L1",
                "create",
                0,
                json!({"Email": "a@x.io", "LastName": "Ada"}),
                "user",
            ),
            write(
                System::Target,
                "t1",
                "T1",
                "create",
                1,
                json!({"email": "A@X.IO", "lastname": "Ada", "legacy_id": "L1"}),
                "sync",
            ),
        ],
        Some(at(20)),
    );
    assert_eq!(
        cause(&state, "L1"),
        (Some(Status::Mismatch), Some(Cause::SyncWroteWrongValue))
    );
    // "A@X.IO" is "a@x.io" in other case: the one documented pattern it follows.
    assert_eq!(
        row(&state, "L1").status.wrong_value_patterns,
        ["email=case_or_spaces"]
    );
    let detail = CauseDetail::of(
        mapping.entity("contact").unwrap(),
        row(&state, "L1"),
        Cause::SyncWroteWrongValue,
        None,
    )
    .unwrap();
    assert_eq!(detail.field.as_deref(), Some("email"));
    assert_eq!(detail.expected, Some(json!("a@x.io")));
    assert_eq!(detail.source_set_at, Some(at(0)));
    assert_eq!(detail.target_written_at, Some(at(1)));
    assert_eq!(detail.target_writer.as_deref(), Some("sync"));
}

#[test]
fn an_older_value_the_sync_layer_copied_late_is_a_wrong_value_and_a_dropped_copy_a_missed_change() {
    // The user sets the last name to Byron (minute 3) and then to Curie (minute 5); the sync
    // layer copies Curie at minute 6 and then, late, Byron at minute 8.
    let state = synced_then(
        &[
            update(
                System::Source,
                "s2",
                3,
                json!({"LastName": "Byron"}),
                "user",
            ),
            update(
                System::Source,
                "s3",
                5,
                json!({"LastName": "Curie"}),
                "user",
            ),
            update(
                System::Target,
                "t2",
                6,
                json!({"lastname": "Curie"}),
                "sync",
            ),
            update(
                System::Target,
                "t3",
                8,
                json!({"lastname": "Byron"}),
                "sync",
            ),
        ],
        Some(20),
    );
    assert_eq!(
        cause(&state, "L1"),
        (Some(Status::Mismatch), Some(Cause::SyncWroteWrongValue))
    );
    let detail = CauseDetail::of(
        contact_mapping().entity("contact").unwrap(),
        row(&state, "L1"),
        Cause::SyncWroteWrongValue,
        None,
    )
    .unwrap();
    assert_eq!(detail.expected, Some(json!("Curie")));
    assert_eq!(detail.source_set_at, Some(at(5)));
    assert_eq!(detail.target_written_at, Some(at(8)));

    // The last name changes at minute 3 and the copy is dropped; the e-mail changes at
    // minute 5 and is copied at minute 6. The target's last change is the newer one, but
    // its last name was set at minute 1, before the source's.
    let state = synced_then(
        &[
            update(
                System::Source,
                "s2",
                3,
                json!({"LastName": "Byron"}),
                "user",
            ),
            update(System::Source, "s3", 5, json!({"Email": "b@x.io"}), "user"),
            update(System::Target, "t2", 6, json!({"email": "b@x.io"}), "sync"),
        ],
        Some(20),
    );
    assert_eq!(
        cause(&state, "L1"),
        (Some(Status::Mismatch), Some(Cause::MissedChange))
    );
}

#[test]
fn a_field_a_target_user_set_stays_overwritten_after_later_sync_copies_of_other_fields() {
    // A user of the target changes the e-mail at minute 4; the source changes the last name
    // at minute 6 and the sync layer copies it at minute 7: the target's last change is the
    // sync layer's, but the differing e-mail is the user's.
    let mapping = contact_mapping();
    let mut state = MemoryState::default();
    state
        .ownership
        .allowed
        .insert(System::Target, vec![ActorRule::parse("user").unwrap()]);
    synced(&mut state, &mapping);
    state.apply_batch_at(
        &mapping,
        &[
            update(
                System::Target,
                "t2",
                4,
                json!({"email": "typo@x.io"}),
                "user",
            ),
            update(
                System::Source,
                "s2",
                6,
                json!({"LastName": "Byron"}),
                "user",
            ),
            update(
                System::Target,
                "t3",
                7,
                json!({"lastname": "Byron"}),
                "sync",
            ),
        ],
        Some(at(20)),
    );
    assert_eq!(
        cause(&state, "L1"),
        (Some(Status::Mismatch), Some(Cause::OverwrittenInTarget))
    );
}

#[test]
fn a_record_only_the_target_ever_had_names_its_creator() {
    let mapping = contact_mapping();
    let mut state = MemoryState::default();
    let mut create = write(
        System::Target,
        "t9",
        "T9",
        "create",
        0,
        json!({"email": "x@x.io", "legacy_id": "X-1"}),
        "integration",
    );
    create.1.actor.as_mut().unwrap().id = Some("webform".to_owned());
    state.ownership.allowed.insert(
        System::Target,
        vec![ActorRule::parse("integration").unwrap()],
    );
    state.apply_batch_at(&mapping, &[create], Some(at(20)));
    assert_eq!(
        cause(&state, "X-1"),
        (
            Some(Status::MissingInSource),
            Some(Cause::CreatedInTargetOnly)
        )
    );
    let detail = CauseDetail::of(
        mapping.entity("contact").unwrap(),
        row(&state, "X-1"),
        Cause::CreatedInTargetOnly,
        None,
    )
    .unwrap();
    assert_eq!(detail.created_by.as_deref(), Some("integration:webform"));
}

#[test]
fn a_source_value_a_snapshot_revealed_is_no_proof_of_a_missed_change() {
    // The source's last name is read by a snapshot at minute 9 (not an event): when it changed
    // is unknown, so tandem does not claim the target missed it.
    let state = synced_then(
        &[(
            System::Source,
            event(
                json!({"event_id": "r1", "entity": "contact", "id": "L1", "external_id": "L1",
                "op": "snapshot", "occurred_at": at(9).to_rfc3339(),
                "fields": {"Email": "a@x.io", "LastName": "Byron"}}),
            ),
        )],
        Some(20),
    );
    assert_eq!(
        cause(&state, "L1"),
        (Some(Status::Mismatch), Some(Cause::Unknown))
    );

    // The source's last name is Byron from minute 5 (an event, not copied); a snapshot at
    // minute 9 reveals Curie: it changed after minute 5, after the target's copy of minute 1.
    let state = synced_then(
        &[
            update(
                System::Source,
                "s2",
                5,
                json!({"LastName": "Byron"}),
                "user",
            ),
            (
                System::Source,
                event(
                    json!({"event_id": "r1", "entity": "contact", "id": "L1", "external_id": "L1",
                    "op": "snapshot", "occurred_at": at(9).to_rfc3339(),
                    "fields": {"Email": "a@x.io", "LastName": "Curie"}}),
                ),
            ),
        ],
        Some(20),
    );
    assert_eq!(
        cause(&state, "L1"),
        (Some(Status::Mismatch), Some(Cause::MissedChange))
    );
}

/// A partial update of L1 (source) or T1 (target) at `minute`.
fn update(
    system: System,
    event_id: &str,
    minute: i64,
    fields: Value,
    actor: &str,
) -> (System, ChangeEvent) {
    let id = match system {
        System::Source => "L1",
        System::Target => "T1",
    };
    let (system, mut event) = write(system, event_id, id, "update", minute, fields, actor);
    event.partial = true;
    (system, event)
}

#[test]
fn a_source_value_the_map_does_not_know_is_unmapped() {
    let mut stage = FieldMapping::exact("StageName", "dealstage");
    stage.map = Some(
        [
            ("Closed Won", "closedwon"),
            ("Prospecting", "appointmentscheduled"),
        ]
        .into_iter()
        .map(|(from, to)| (from.to_owned(), to.to_owned()))
        .collect(),
    );
    let mapping = Mapping::try_new(vec![EntityMapping {
        name: "contact".to_owned(),
        join: JoinSpec {
            source: JoinKeySource::ExternalId,
            target: JoinKeySource::Field("legacy_id".to_owned()),
        },
        fields: vec![stage],
    }])
    .unwrap();
    let mut state = MemoryState::default();
    state.apply_batch_at(
        &mapping,
        &[
            write(
                System::Source,
                "s1",
                "L1",
                "create",
                0,
                json!({"StageName": "Closed Won"}),
                "user",
            ),
            write(
                System::Target,
                "t1",
                "T1",
                "create",
                1,
                json!({"dealstage": "closedwon", "legacy_id": "L1"}),
                "sync",
            ),
            write(
                System::Source,
                "s2",
                "L2",
                "create",
                0,
                json!({"StageName": "Negotiation"}),
                "user",
            ),
            write(
                System::Target,
                "t2",
                "T2",
                "create",
                1,
                json!({"dealstage": "negotiation", "legacy_id": "L2"}),
                "sync",
            ),
        ],
        Some(at(20)),
    );
    assert_eq!(cause(&state, "L1"), (Some(Status::InSync), None));
    assert_eq!(
        cause(&state, "L2"),
        (Some(Status::Mismatch), Some(Cause::UnmappedValue))
    );
}

#[test]
fn a_delete_on_one_side_only_says_which() {
    let mut state = synced_then(
        &[write(
            System::Target,
            "t2",
            "T1",
            "delete",
            10,
            Value::Null,
            "user",
        )],
        Some(20),
    );
    assert_eq!(
        cause(&state, "L1"),
        (
            Some(Status::MissingInTarget),
            Some(Cause::DeletedInTargetOnly)
        )
    );
    // The target record comes back; then the source merges L1 away (a merge on one side).
    state.apply_batch_at(
        &contact_mapping(),
        &[
            write(
                System::Target,
                "t3",
                "T1",
                "undelete",
                21,
                Value::Null,
                "sync",
            ),
            (
                System::Source,
                event(
                    json!({"event_id": "s2", "entity": "contact", "id": "L1", "op": "merge",
                    "merged_into": "L7", "external_id": "L1", "occurred_at": at(22).to_rfc3339()}),
                ),
            ),
        ],
        Some(at(40)),
    );
    assert_eq!(
        cause(&state, "L1"),
        (
            Some(Status::MissingInSource),
            Some(Cause::DeletedInSourceOnly)
        )
    );
}

#[test]
fn two_live_records_on_one_side_are_a_duplicate() {
    let state = synced_then(
        &[write(
            System::Target,
            "t2",
            "T1b",
            "create",
            2,
            json!({"email": "a@x.io", "lastname": "Ada", "legacy_id": "L1"}),
            "sync",
        )],
        None,
    );
    assert_eq!(
        cause(&state, "L1"),
        (Some(Status::Duplicate), Some(Cause::Duplicate))
    );
}

#[test]
fn a_native_id_created_again_for_another_key_is_id_reuse() {
    // The target deletes T1, then creates a new record with the same native id for L9.
    let state = synced_then(
        &[
            write(
                System::Target,
                "t2",
                "T1",
                "delete",
                10,
                Value::Null,
                "user",
            ),
            write(
                System::Target,
                "t3",
                "T1",
                "create",
                11,
                json!({"email": "z@x.io", "lastname": "Zed", "legacy_id": "L9"}),
                "user",
            ),
        ],
        Some(30),
    );
    assert_eq!(
        cause(&state, "L9"),
        (Some(Status::MissingInSource), Some(Cause::IdReused))
    );
    assert_eq!(
        cause(&state, "L1"),
        (Some(Status::MissingInTarget), Some(Cause::MissedChange))
    );
}

#[test]
fn a_join_key_changed_on_a_live_record_is_a_divergence() {
    // Someone edits the target's legacy_id of T1 from L1 to L2.
    let state = synced_then(
        &[write(
            System::Target,
            "t2",
            "T1",
            "update",
            10,
            json!({"email": "a@x.io", "lastname": "Ada", "legacy_id": "L2"}),
            "user",
        )],
        Some(30),
    );
    assert_eq!(
        cause(&state, "L2"),
        (Some(Status::MissingInSource), Some(Cause::JoinKeyChanged))
    );
}

#[test]
fn a_gap_names_the_doubt_until_the_record_is_read_again() {
    let state = synced_then(
        &[(
            System::Target,
            event(
                json!({"event_id": "g1", "entity": "contact", "id": "T1", "op": "gap",
                "occurred_at": at(5).to_rfc3339()}),
            ),
        )],
        None,
    );
    assert_eq!(
        cause(&state, "L1"),
        (Some(Status::Unverified), Some(Cause::UnverifiedGap))
    );
}

/// Contacts point at companies (`AccountId` / `company_id`, `ref = "company"`); both are
/// joined by external id / legacy_id.
fn reference_mapping() -> Mapping {
    let join = || JoinSpec {
        source: JoinKeySource::ExternalId,
        target: JoinKeySource::Field("legacy_id".to_owned()),
    };
    let mut company_ref = FieldMapping::exact("AccountId", "company_id");
    company_ref.reference = Some("company".to_owned());
    Mapping::try_new(vec![
        EntityMapping {
            name: "company".to_owned(),
            join: join(),
            fields: vec![FieldMapping::exact("Name", "name")],
        },
        EntityMapping {
            name: "contact".to_owned(),
            join: join(),
            fields: vec![company_ref],
        },
    ])
    .unwrap()
}

/// A company `op` (create or delete) at `minute` under join key `key`.
fn company_at(
    system: System,
    event_id: &str,
    id: &str,
    key: &str,
    op: &str,
    minute: i64,
) -> (System, ChangeEvent) {
    let mut value = json!({"event_id": event_id, "entity": "company", "id": id, "op": op,
        "occurred_at": at(minute).to_rfc3339()});
    if op != "delete" {
        value["fields"] = json!({"Name": key, "name": key, "legacy_id": key});
    }
    if system == System::Source {
        value["external_id"] = json!(key);
    }
    (system, event(value))
}

/// Contact L1 pointing at source company 001A (minute 1) and its sync copy T1 pointing at
/// target company 9A (minute 2).
fn contact_pointing_at_company() -> [(System, ChangeEvent); 2] {
    [
        write(
            System::Source,
            "s1",
            "L1",
            "create",
            1,
            json!({"AccountId": "001A"}),
            "user",
        ),
        write(
            System::Target,
            "t1",
            "T1",
            "create",
            2,
            json!({"company_id": "9A", "legacy_id": "L1"}),
            "sync",
        ),
    ]
}

#[test]
fn a_reference_to_another_record_than_the_joined_one_is_broken() {
    let mapping = reference_mapping();
    let company = |system, event_id, id, key| company_at(system, event_id, id, key, "create", 0);
    let mut state = MemoryState::default();
    state.apply_batch_at(
        &mapping,
        &[
            // Companies A-1 (source 001A / target 9A) and B-2 (source 001B / target 9B).
            company(System::Source, "c1", "001A", "A-1"),
            company(System::Target, "c2", "9A", "A-1"),
            company(System::Source, "c3", "001B", "B-2"),
            company(System::Target, "c4", "9B", "B-2"),
            // L1 points at A-1 on both sides; L2 at A-1 in the source, B-2 in the target;
            // L3 at A-1 in the source and at a target company tandem does not know.
            write(
                System::Source,
                "s1",
                "L1",
                "create",
                1,
                json!({"AccountId": "001A"}),
                "user",
            ),
            write(
                System::Target,
                "t1",
                "T1",
                "create",
                2,
                json!({"company_id": "9A", "legacy_id": "L1"}),
                "sync",
            ),
            write(
                System::Source,
                "s2",
                "L2",
                "create",
                1,
                json!({"AccountId": "001A"}),
                "user",
            ),
            write(
                System::Target,
                "t2",
                "T2",
                "create",
                2,
                json!({"company_id": "9B", "legacy_id": "L2"}),
                "sync",
            ),
            write(
                System::Source,
                "s3",
                "L3",
                "create",
                1,
                json!({"AccountId": "001A"}),
                "user",
            ),
            write(
                System::Target,
                "t3",
                "T3",
                "create",
                2,
                json!({"company_id": "9Z", "legacy_id": "L3"}),
                "sync",
            ),
        ],
        Some(at(30)),
    );
    assert_eq!(cause(&state, "L1"), (Some(Status::InSync), None));
    for broken in ["L2", "L3"] {
        assert_eq!(
            cause(&state, broken),
            (Some(Status::Mismatch), Some(Cause::BrokenReference)),
            "{broken}"
        );
    }
}

#[test]
fn a_reference_is_judged_again_when_the_record_it_points_at_arrives_or_changes_key() {
    let mapping = reference_mapping();
    let mut state = MemoryState::default();
    // The contacts arrive before the companies they point at (another partition, or a
    // lagging connector): the references cannot be resolved yet.
    state.apply_batch_at(&mapping, &contact_pointing_at_company(), Some(at(30)));
    assert_eq!(
        cause(&state, "L1"),
        (Some(Status::Mismatch), Some(Cause::BrokenReference))
    );
    // The companies arrive in a later batch: L1 is evaluated again without an event of its
    // own, and both sides point at the records joined under A-1.
    state.apply_batch_at(
        &mapping,
        &[
            company_at(System::Source, "c1", "001A", "A-1", "create", 0),
            company_at(System::Target, "c2", "9A", "A-1", "create", 0),
        ],
        Some(at(31)),
    );
    assert_eq!(cause(&state, "L1"), (Some(Status::InSync), None));
    // A target user deletes company 9A and creates another company under the same id: the
    // target's reference now points at the record joined under X-9, not A-1.
    state.apply_batch_at(
        &mapping,
        &[
            company_at(System::Target, "c3", "9A", "A-1", "delete", 40),
            company_at(System::Target, "c4", "9A", "X-9", "create", 41),
        ],
        Some(at(42)),
    );
    assert_eq!(
        cause(&state, "L1"),
        (Some(Status::Mismatch), Some(Cause::BrokenReference))
    );
}

#[test]
fn a_delete_that_overtook_its_create_still_learns_the_key_from_the_create() {
    let mapping = reference_mapping();
    let mut state = MemoryState::default();
    // The target's delete of company 9A arrives first: no key yet.
    state.apply_batch_at(
        &mapping,
        &[company_at(System::Target, "c3", "9A", "A-1", "delete", 5)],
        Some(at(6)),
    );
    // Then its older create, stale, with the key; the source's company and a contact
    // pointing at it on both sides.
    state.apply_batch_at(
        &mapping,
        &[[
            company_at(System::Target, "c2", "9A", "A-1", "create", 0),
            company_at(System::Source, "c1", "001A", "A-1", "create", 0),
        ]]
        .into_iter()
        .chain([contact_pointing_at_company()])
        .flatten()
        .collect::<Vec<_>>(),
        Some(at(30)),
    );
    assert_eq!(
        state.join_keys[&(System::Target, "company".to_owned(), "9A".to_owned())],
        "A-1"
    );
    // The company was deleted in the target only; the contact's reference is right.
    let company = &state.records[&("company".to_owned(), "A-1".to_owned())];
    assert_eq!(company.status.status, Some(Status::MissingInTarget));
    assert_eq!(company.status.cause, Some(Cause::DeletedInTargetOnly));
    assert_eq!(cause(&state, "L1"), (Some(Status::InSync), None));
}

#[test]
fn a_compensation_sets_a_reference_back_to_the_target_id_of_the_owners_company() {
    let mapping = reference_mapping();
    let mut state = MemoryState::default();
    state.ownership.compensate = true;
    state.apply_batch_at(
        &mapping,
        &[[
            company_at(System::Source, "c1", "001A", "A-1", "create", 0),
            company_at(System::Target, "c2", "9A", "A-1", "create", 0),
        ]]
        .into_iter()
        .chain([contact_pointing_at_company()])
        .flatten()
        .collect::<Vec<_>>(),
        Some(at(30)),
    );
    assert_eq!(cause(&state, "L1"), (Some(Status::InSync), None));
    // A target user re-points the contact: the command puts back 9A (the target company
    // joined to the source's 001A), not the source's own id.
    state.apply_batch_at(
        &mapping,
        &[write(
            System::Target,
            "t2",
            "T1",
            "update",
            40,
            json!({"company_id": "9Z", "legacy_id": "L1"}),
            "user",
        )],
        Some(at(41)),
    );
    assert_eq!(state.compensations.len(), 1);
    assert_eq!(
        state.compensations[0].set,
        std::collections::BTreeMap::from([("company_id".to_owned(), json!("9A"))])
    );
}

#[test]
fn a_write_that_broke_the_ownership_rule_says_so_first() {
    // The source owns contacts; a user edits the fenced target.
    let state = synced_then(
        &[write(
            System::Target,
            "t2",
            "T1",
            "update",
            10,
            json!({"email": "typo@x.io", "lastname": "Ada", "legacy_id": "L1"}),
            "user",
        )],
        Some(20),
    );
    assert_eq!(
        cause(&state, "L1"),
        (Some(Status::Mismatch), Some(Cause::NonOwnerWrite))
    );
}

#[test]
fn causes_have_stable_wire_names() {
    for cause in Cause::ALL {
        assert_eq!(Cause::parse(cause.as_str()), Some(cause));
        assert_eq!(serde_json::to_value(cause).unwrap(), json!(cause.as_str()));
    }
    assert_eq!(Cause::ALL.len(), 22);
}

#[test]
fn a_reference_to_an_unverified_record_is_not_vouched_for_until_it_is_read_again() {
    let mapping = reference_mapping();
    let mut state = MemoryState::default();
    // Company A-1 (source 001A / target 9A); contact L1 points at it on both sides: in sync.
    let mut events = vec![
        company_at(System::Source, "c1", "001A", "A-1", "create", 0),
        company_at(System::Target, "c2", "9A", "A-1", "create", 0),
    ];
    events.extend(contact_pointing_at_company());
    state.apply_batch_at(&mapping, &events, Some(at(20)));
    assert_eq!(cause(&state, "L1"), (Some(Status::InSync), None));

    // The target announces lost changes to 9A (a change of its key may be among them): the
    // contact's reference cannot be vouched for.
    state.apply_batch_at(
        &mapping,
        &[(
            System::Target,
            event(
                json!({"event_id": "g1", "entity": "company", "id": "9A", "op": "gap",
                "occurred_at": at(21).to_rfc3339()}),
            ),
        )],
        Some(at(40)),
    );
    assert_eq!(
        cause(&state, "L1"),
        (Some(Status::Unverified), Some(Cause::UnverifiedReference))
    );

    // The re-read shows 9A under another key, X-9: the contact's reference is broken now.
    state.apply_batch_at(
        &mapping,
        &[company_at(
            System::Target,
            "r1",
            "9A",
            "X-9",
            "snapshot",
            22,
        )],
        Some(at(40)),
    );
    assert_eq!(
        cause(&state, "L1"),
        (Some(Status::Mismatch), Some(Cause::BrokenReference))
    );
}
