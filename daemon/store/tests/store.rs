//! The store on a temporary RocksDB: commits, reopen, indexes, paging, history, versions.

use std::time::Duration;

use serde_json::json;
use tandem_core::mapping::{FieldMapping, JoinSpec};
use tandem_core::record::UnverifiedReason;
use tandem_core::{
    ApplyState, ChangeEvent, DeadLetterReason, EntityMapping, Input, JoinKeySource, Mapping,
    Planner, StateView, Status, System, Timestamp,
};
use tandem_store::{
    Commit, Coordinates, DivergenceFilter, LoggedMessage, NextOffset, Store, StoreOptions,
};

fn mapping() -> Mapping {
    Mapping::try_new(vec![EntityMapping {
        name: "contact".to_owned(),
        join: JoinSpec {
            source: JoinKeySource::ExternalId,
            target: JoinKeySource::Field("legacy_id".to_owned()),
        },
        fields: vec![FieldMapping::exact("Email", "email")],
    }])
    .unwrap()
}

/// 2026-11-20T08:00:00Z plus `minutes`.
fn at(minutes: i64) -> Timestamp {
    Timestamp::from_unix_nanos((1_795_161_600 + minutes * 60) * 1_000_000_000)
}

struct Message {
    coordinates: Coordinates,
    system: System,
    payload: Vec<u8>,
    decoded: Result<ChangeEvent, tandem_core::DecodeError>,
}

fn message(system: System, offset: i64, payload: serde_json::Value) -> Message {
    let payload = serde_json::to_vec(&payload).unwrap();
    Message {
        coordinates: Coordinates {
            topic: format!("{system}.changes"),
            partition: 0,
            offset,
        },
        system,
        decoded: tandem_core::event::decode(Some(&payload), 1 << 20),
        payload,
    }
}

fn contact(
    system: System,
    offset: i64,
    event_id: &str,
    id: &str,
    key: &str,
    minute: i64,
    email: &str,
) -> Message {
    let value = match system {
        System::Source => {
            json!({"event_id": event_id, "entity": "contact", "id": id, "op": "create",
            "occurred_at": at(minute).to_rfc3339(), "external_id": key, "fields": {"Email": email}})
        }
        System::Target => {
            json!({"event_id": event_id, "entity": "contact", "id": id, "op": "create",
            "occurred_at": at(minute).to_rfc3339(), "fields": {"legacy_id": key, "email": email}})
        }
    };
    message(system, offset, value)
}

/// Plans and commits one batch the way the apply loop does.
fn apply(store: &Store, mapping: &Mapping, messages: &[Message], clock_floor: Option<Timestamp>) {
    let state = store.apply_state().unwrap();
    let mut planner = Planner::new(mapping, Duration::from_secs(300), store, state);
    for message in messages {
        let input = match &message.decoded {
            Ok(event) => Input::Event {
                system: message.system,
                event,
                partition: Some((
                    message.coordinates.topic.as_str(),
                    message.coordinates.partition,
                )),
            },
            Err(error) => Input::DeadLetter {
                system: message.system,
                reason: error.reason,
            },
        };
        planner.apply(input).unwrap();
    }
    if let Some(floor) = clock_floor {
        planner.advance_clock(floor);
    }
    for (_, entity, join_key) in store.due_records(planner.clock(), 10_000).unwrap() {
        planner.reevaluate(&entity, &join_key).unwrap();
    }
    let plan = planner.finish();
    let logged: Vec<_> = messages
        .iter()
        .map(|message| {
            LoggedMessage::new(
                &message.coordinates,
                message.system,
                &message.payload,
                &message.decoded,
            )
        })
        .collect();
    let mut offsets: Vec<(&str, i32, NextOffset)> = Vec::new();
    for message in messages {
        offsets.retain(|(topic, _, _)| *topic != message.coordinates.topic);
        offsets.push((
            &message.coordinates.topic,
            0,
            NextOffset::after(message.coordinates.offset),
        ));
    }
    store
        .commit(&Commit {
            messages: &logged,
            plan: &plan,
            offsets: &offsets,
            committed_at: at(0),
            publish_violations: false,
        })
        .unwrap();
}

#[test]
fn a_store_it_creates_is_private_to_its_user() {
    use std::os::unix::fs::PermissionsExt;
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("data").join("tandem");
    let _store = Store::open(&path, &StoreOptions::default()).unwrap();
    for created in [&path, &path.parent().unwrap().to_path_buf()] {
        let mode = std::fs::metadata(created).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{} has mode {mode:o}", created.display());
    }
}

#[test]
fn a_committed_batch_survives_reopen() {
    let directory = tempfile::tempdir().unwrap();
    let mapping = mapping();
    {
        let store = Store::open(directory.path(), &StoreOptions::default()).unwrap();
        apply(
            &store,
            &mapping,
            &[
                contact(System::Source, 0, "s0", "L1", "L1", 0, "a@x.io"),
                contact(System::Target, 0, "t0", "T1", "L1", 1, "a@x.io"),
                contact(System::Source, 1, "s1", "L2", "L2", 2, "b@x.io"),
            ],
            Some(at(60)),
        );
    }
    let store = Store::open(directory.path(), &StoreOptions::default()).unwrap();
    let state = store.apply_state().unwrap();
    assert_eq!(state.counters.source.events_applied, 2);
    assert_eq!(state.counters.target.events_applied, 1);
    assert_eq!(state.clock, at(60));
    let summary = &state.summaries["contact"];
    assert_eq!(summary.count(Status::InSync), 1);
    assert_eq!(summary.count(Status::MissingInTarget), 1);
    assert_eq!(
        store.next_offset("source.changes", 0).unwrap(),
        Some(NextOffset(2))
    );
    assert_eq!(
        store.next_offset("target.changes", 0).unwrap(),
        Some(NextOffset(1))
    );
    assert_eq!(store.next_offset("target.changes", 1).unwrap(), None);
    assert!(store.event_seen(System::Source, "s1").unwrap());
    assert!(!store.event_seen(System::Target, "s1").unwrap());
    assert_eq!(
        store
            .join_key(System::Target, "contact", "T1")
            .unwrap()
            .as_deref(),
        Some("L1")
    );
    let snapshot = store.read();
    assert_eq!(snapshot.oldest_divergence("contact").unwrap(), Some(at(2)));
}

#[test]
fn indexes_follow_status_changes() {
    let directory = tempfile::tempdir().unwrap();
    let store = Store::open(directory.path(), &StoreOptions::default()).unwrap();
    let mapping = mapping();
    apply(
        &store,
        &mapping,
        &[
            contact(System::Source, 0, "s0", "L1", "L1", 0, "a@x.io"),
            contact(System::Target, 0, "t0", "T1", "L1", 0, "WRONG@x.io"),
            contact(System::Source, 1, "s1", "L2", "L2", 0, "b@x.io"),
        ],
        None,
    );
    let pending_filter = DivergenceFilter {
        entities: vec!["contact".to_owned()],
        status: Some(Status::Pending),
        field: None,
    };
    let pending = store.read().divergences(&pending_filter, None, 10).unwrap();
    assert_eq!(pending.items.len(), 2);
    assert!(
        store.read().oldest_divergence("contact").unwrap().is_none(),
        "pending is not divergence"
    );

    // Ten minutes later, both are past grace.
    apply(&store, &mapping, &[], Some(at(10)));
    let all = DivergenceFilter {
        entities: vec!["contact".to_owned()],
        status: None,
        field: None,
    };
    let page = store.read().divergences(&all, None, 10).unwrap();
    let listed: Vec<_> = page
        .items
        .iter()
        .map(|item| (item.join_key.as_str(), item.status))
        .collect();
    assert_eq!(
        listed,
        [("L1", Status::Mismatch), ("L2", Status::MissingInTarget)]
    );
    assert_eq!(page.items[0].fields, ["email"]);
    assert_eq!(page.next_cursor, None);
    let by_field = DivergenceFilter {
        field: Some("email".to_owned()),
        ..all.clone()
    };
    assert_eq!(
        store
            .read()
            .divergences(&by_field, None, 10)
            .unwrap()
            .items
            .len(),
        1
    );
    assert!(store
        .read()
        .divergences(&pending_filter, None, 10)
        .unwrap()
        .items
        .is_empty());

    // Fixing the target removes L1 from every index.
    apply(
        &store,
        &mapping,
        &[message(
            System::Target,
            1,
            json!({"event_id": "t1", "entity": "contact", "id": "T1",
            "op": "update", "partial": true, "occurred_at": at(11).to_rfc3339(),
            "fields": {"email": "a@x.io"}}),
        )],
        None,
    );
    let page = store.read().divergences(&all, None, 10).unwrap();
    assert_eq!(page.items.len(), 1);
    assert!(store
        .read()
        .divergences(&by_field, None, 10)
        .unwrap()
        .items
        .is_empty());
    assert_eq!(
        store.read().oldest_divergence("contact").unwrap(),
        Some(at(0))
    );
}

#[test]
fn paging_visits_every_divergent_record_once() {
    let directory = tempfile::tempdir().unwrap();
    let store = Store::open(directory.path(), &StoreOptions::default()).unwrap();
    let mapping = mapping();
    let messages: Vec<_> = (0..23)
        .map(|index| {
            let key = format!("L{index:02}");
            if index % 3 == 0 {
                contact(
                    System::Target,
                    index,
                    &format!("t{index}"),
                    &format!("T{index}"),
                    &key,
                    0,
                    "x@x.io",
                )
            } else {
                contact(
                    System::Source,
                    index,
                    &format!("s{index}"),
                    &key,
                    &key,
                    0,
                    "x@x.io",
                )
            }
        })
        .collect();
    apply(&store, &mapping, &messages, Some(at(60)));
    let filter = DivergenceFilter {
        entities: vec!["contact".to_owned()],
        ..DivergenceFilter::default()
    };
    let mut seen = Vec::new();
    let mut cursor: Option<Vec<u8>> = None;
    loop {
        let page = store
            .read()
            .divergences(&filter, cursor.as_deref(), 5)
            .unwrap();
        assert!(page.items.len() <= 5);
        seen.extend(page.items.into_iter().map(|item| item.join_key));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let mut expected: Vec<String> = (0..23).map(|index| format!("L{index:02}")).collect();
    // Listed by status (missing_in_target before missing_in_source), then by key.
    expected.sort_by_key(|key| (key[1..].parse::<u32>().unwrap() % 3 == 0, key.clone()));
    assert_eq!(seen, expected);
    // A page that holds the last record has no cursor: 23 records in one page of 23, and the
    // second of pages of 15 and 8.
    let whole = store.read().divergences(&filter, None, 23).unwrap();
    assert_eq!((whole.items.len(), whole.next_cursor), (23, None));
    let first = store.read().divergences(&filter, None, 15).unwrap();
    let second = store
        .read()
        .divergences(&filter, first.next_cursor.as_deref(), 8)
        .unwrap();
    assert_eq!((second.items.len(), second.next_cursor), (8, None));
}

#[test]
fn history_and_dead_letters_are_kept() {
    let directory = tempfile::tempdir().unwrap();
    let store = Store::open(directory.path(), &StoreOptions::default()).unwrap();
    let mapping = mapping();
    let poison = Message {
        coordinates: Coordinates {
            topic: "source.changes".to_owned(),
            partition: 0,
            offset: 2,
        },
        system: System::Source,
        payload: b"{not json".to_vec(),
        decoded: tandem_core::event::decode(Some(b"{not json"), 1 << 20),
    };
    apply(
        &store,
        &mapping,
        &[
            contact(System::Target, 0, "t0", "T1", "L1", 5, "a@x.io"),
            contact(System::Source, 0, "s0", "L1", "L1", 1, "a@x.io"),
            message(
                System::Source,
                1,
                json!({"event_id": "s1", "entity": "contact", "id": "L1",
                "op": "update", "partial": true, "version": 0, "occurred_at": at(3).to_rfc3339(),
                "fields": {"Email": "b@x.io"}, "extra_field": [1, 2]}),
            ),
            poison,
        ],
        None,
    );
    let snapshot = store.read();
    let row = snapshot.record("contact", "L1").unwrap().unwrap();
    let history = snapshot.history("contact", &row).unwrap();
    let order: Vec<_> = history
        .iter()
        .map(|item| (item.system, item.occurred_at))
        .collect();
    assert_eq!(
        order,
        [
            (System::Source, at(1)),
            (System::Source, at(3)),
            (System::Target, at(5))
        ]
    );
    assert_eq!(
        history[1].event["extra_field"],
        json!([1, 2]),
        "unknown fields are kept in the log"
    );

    let state = store.apply_state().unwrap();
    assert_eq!(
        state.counters.dead_lettered_by_reason[&DeadLetterReason::InvalidJson],
        1
    );
    let outbox = store.undelivered_dead_letters(10).unwrap();
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0].0.offset, 2);
    assert_eq!(outbox[0].1.payload, b"{not json");
    store
        .mark_dead_letters_delivered(&[outbox[0].0.clone()])
        .unwrap();
    assert!(store.undelivered_dead_letters(10).unwrap().is_empty());
    assert!(
        snapshot.dead_letter(&outbox[0].0).unwrap().is_some(),
        "the dead letter itself stays"
    );
}

#[test]
fn a_snapshot_does_not_see_later_commits() {
    let directory = tempfile::tempdir().unwrap();
    let store = Store::open(directory.path(), &StoreOptions::default()).unwrap();
    let mapping = mapping();
    let before = store.read();
    apply(
        &store,
        &mapping,
        &[contact(System::Source, 0, "s0", "L1", "L1", 0, "a@x.io")],
        None,
    );
    assert_eq!(before.apply_state().unwrap(), ApplyState::default());
    assert!(before.record("contact", "L1").unwrap().is_none());
    assert!(store.read().record("contact", "L1").unwrap().is_some());
}

fn set_schema_version(directory: &std::path::Path, version: u32) -> Option<u32> {
    let mut options = rocksdb::Options::default();
    options.create_missing_column_families(true);
    let db = rocksdb::DB::open_cf(
        &options,
        directory,
        [
            "meta",
            "offsets",
            "history",
            "dedupe",
            "join_keys",
            "records",
            "divergences",
            "field_mismatches",
            "divergence_age",
            "pending_due",
            "dead_letters",
            "dlq_outbox",
            "snapshot_members",
            "rereads",
            "reread_queue",
            "control_outbox",
            "partition_members",
            "violations",
            "violation_outbox",
            "writers",
            "cutover_outbox",
            "command_outbox",
            "report_history",
            "references",
        ],
    )
    .unwrap();
    let meta = db.cf_handle("meta").unwrap();
    let before = db
        .get_cf(meta, b"schema_version")
        .unwrap()
        .map(|bytes| u32::from_be_bytes(bytes.as_slice().try_into().unwrap()));
    db.put_cf(meta, b"schema_version", version.to_be_bytes())
        .unwrap();
    before
}

#[test]
fn an_unknown_schema_version_is_refused() {
    let directory = tempfile::tempdir().unwrap();
    drop(Store::open(directory.path(), &StoreOptions::default()).unwrap());
    // A store written by a future version.
    assert_eq!(set_schema_version(directory.path(), 99), Some(3));
    let error = Store::open(directory.path(), &StoreOptions::default())
        .err()
        .unwrap();
    let message = error.to_string();
    assert!(message.contains("schema version 99"), "{message}");
    assert!(message.contains("reads version 3"), "{message}");

    // Version 2 (history keys without the part of a message) reads as is and is upgraded.
    set_schema_version(directory.path(), 2);
    drop(Store::open(directory.path(), &StoreOptions::default()).unwrap());
    assert_eq!(set_schema_version(directory.path(), 3), Some(3));
}

#[test]
fn rereads_queue_until_a_full_image_arrives() {
    let directory = tempfile::tempdir().unwrap();
    let store = Store::open(directory.path(), &StoreOptions::default()).unwrap();
    let mapping = mapping();
    // A partial update of a record tandem never saw in full, and a seq hole on the target.
    apply(
        &store,
        &mapping,
        &[
            message(
                System::Source,
                0,
                json!({"event_id": "s0", "entity": "contact", "id": "L1",
                "op": "update", "partial": true, "external_id": "L1",
                "occurred_at": at(1).to_rfc3339(), "fields": {"Email": "a@x.io"}}),
            ),
            message(
                System::Target,
                0,
                json!({"event_id": "t0", "entity": "contact", "id": "T1",
                "op": "create", "seq": 1, "occurred_at": at(1).to_rfc3339(),
                "fields": {"legacy_id": "L1", "email": "a@x.io"}}),
            ),
            message(
                System::Target,
                1,
                json!({"event_id": "t1", "entity": "contact", "id": "T2",
                "op": "create", "seq": 4, "occurred_at": at(2).to_rfc3339(),
                "fields": {"legacy_id": "L2", "email": "b@x.io"}}),
            ),
        ],
        None,
    );
    // Oldest first: the source's partial update, then the target record on the partition
    // that lost events 2 and 3.
    let due = store.due_rereads(at(0), 10).unwrap();
    let waiting: Vec<_> = due
        .iter()
        .map(|(target, row)| {
            (
                target.system,
                target.native_id.as_str(),
                row.reason,
                row.since,
            )
        })
        .collect();
    assert_eq!(
        waiting,
        [
            (
                System::Source,
                "L1",
                UnverifiedReason::PartialWithoutImage,
                at(1)
            ),
            (System::Target, "T1", UnverifiedReason::SeqHole, at(2)),
        ]
    );
    assert_eq!(store.apply_state().unwrap().feed.rereads_outstanding, 2);

    // Once requested, it is not due again until the resend time passes.
    store.mark_rereads_requested(&due, at(10)).unwrap();
    assert!(store.due_rereads(at(10), 10).unwrap().is_empty());
    assert_eq!(store.due_rereads(at(11), 10).unwrap().len(), 2);
    // Round by round, one at a time: the second round continues after the first.
    let first = store.due_rereads_from(None, at(11), 1, 10).unwrap();
    assert_eq!(first.due.len(), 1);
    let second = store
        .due_rereads_from(first.resume_after.as_deref(), at(11), 1, 10)
        .unwrap();
    assert_eq!(second.due.len(), 1);
    assert_ne!(first.due[0].0, second.due[0].0);
    assert!(
        second.resume_after.is_none(),
        "the end of the queue was reached"
    );

    let control = store.pending_control_requests(10).unwrap();
    assert_eq!(
        control.len(),
        1,
        "the target's seq hole asks for a contact snapshot"
    );
    assert_eq!(
        (
            control[0].request.system,
            control[0].request.entity.as_str()
        ),
        (System::Target, "contact")
    );
    store.mark_control_delivered(&control).unwrap();
    assert!(store.pending_control_requests(10).unwrap().is_empty());

    // The connector answers with a full image: the row and its queue entry go.
    apply(
        &store,
        &mapping,
        &[message(
            System::Source,
            1,
            json!({"event_id": "s1", "entity": "contact", "id": "L1",
            "op": "snapshot", "external_id": "L1", "occurred_at": at(3).to_rfc3339(),
            "fields": {"Email": "a@x.io"}}),
        )],
        None,
    );
    assert!(store
        .reread(System::Source, "contact", "L1")
        .unwrap()
        .is_none());
    let still: Vec<_> = store
        .due_rereads(at(99), 10)
        .unwrap()
        .into_iter()
        .map(|(target, _)| target.native_id)
        .collect();
    assert_eq!(still, ["T1"]);
    assert_eq!(store.apply_state().unwrap().feed.rereads_outstanding, 1);
    let mut ids = store.native_ids(System::Target, "contact").unwrap();
    ids.sort();
    assert_eq!(ids, ["T1", "T2"]);
}
