//! Lost events on hand-worked sequences: unverified records, sequence holes, snapshot runs.

mod support;

use serde_json::json;
use tandem_core::apply::unjoined_key;
use tandem_core::feed::{OffsetLoss, OffsetLossKind};
use tandem_core::record::UnverifiedReason;
use tandem_core::{Outcome, Status, System};

use support::*;

#[test]
fn a_partial_update_without_an_image_is_unverified_until_a_full_image() {
    let mapping = contact_mapping();
    let mut state = MemoryState::default();
    state.apply_batch(
        &mapping,
        &[
            target_create("t1", "T1", "L1", 0, "a@x.io", "Ada"),
            // The source's create was lost; its first event is a partial update that
            // happens to match the target.
            (System::Source, event(json!({"event_id": "s2", "entity": "contact", "id": "L1",
                "op": "update", "partial": true, "external_id": "L1", "version": 2,
                "occurred_at": at(1).to_rfc3339(), "fields": {"Email": "a@x.io", "LastName": "Ada"}}))),
        ],
    );
    assert_eq!(
        state.status("contact", "L1"),
        Some(Status::Unverified),
        "matching fields prove nothing"
    );
    assert_eq!(
        state
            .rereads
            .get(&(System::Source, "contact".to_owned(), "L1".to_owned())),
        Some(&UnverifiedReason::PartialWithoutImage)
    );
    state.apply_batch(
        &mapping,
        &[(
            System::Source,
            event(json!({"event_id": "s3", "entity": "contact", "id": "L1",
            "op": "snapshot", "snapshot_id": "r1", "external_id": "L1", "version": 2,
            "occurred_at": at(2).to_rfc3339(), "fields": {"Email": "a@x.io", "LastName": "Ada"}})),
        )],
    );
    assert_eq!(
        state.status("contact", "L1"),
        Some(Status::InSync),
        "a full image heals"
    );
    assert!(state.rereads.is_empty(), "the re-read is no longer needed");
}

#[test]
fn a_skipped_version_and_a_gap_make_records_unverified() {
    let mapping = contact_mapping();
    let mut state = MemoryState::default();
    let mut create = source_create("s1", "L1", 0, "a@x.io", "Ada");
    create.1.version = Some(1);
    state.apply_batch(
        &mapping,
        &[
            create,
            target_create("t1", "T1", "L1", 0, "a@x.io", "Ada"),
            source_create("s9", "L9", 0, "z@x.io", "Zed"),
            target_create("t9", "T9", "L9", 0, "z@x.io", "Zed"),
        ],
    );
    assert_eq!(state.status("contact", "L1"), Some(Status::InSync));
    state.apply_batch(
        &mapping,
        &[
            (
                System::Source,
                event(json!({"event_id": "s3", "entity": "contact", "id": "L1",
                "op": "update", "partial": true, "version": 3,
                "occurred_at": at(3).to_rfc3339(), "fields": {"LastName": "Ada"}})),
            ),
            (
                System::Target,
                event(json!({"event_id": "g9", "entity": "contact", "id": "T9",
                "op": "gap", "occurred_at": at(3).to_rfc3339()})),
            ),
            (
                System::Target,
                event(json!({"event_id": "g5", "entity": "contact", "id": "T5",
                "op": "gap", "occurred_at": at(3).to_rfc3339()})),
            ),
        ],
    );
    assert_eq!(
        state.status("contact", "L1"),
        Some(Status::Unverified),
        "version 2 was lost"
    );
    assert_eq!(
        state.status("contact", "L9"),
        Some(Status::Unverified),
        "the feed lost changes to T9"
    );
    assert_eq!(
        state.status("contact", &unjoined_key(System::Target, "T5")),
        Some(Status::Unverified),
        "a gap on an unknown record makes it known, and unknown"
    );
    assert_eq!(state.rereads.len(), 3);
    assert_eq!(state.summary("contact").count(Status::Unverified), 3);
}

#[test]
fn without_versions_the_later_event_time_wins() {
    let mapping = contact_mapping();
    let mut state = MemoryState::default();
    let outcomes = state.apply_batch(
        &mapping,
        &[
            source_create("s2", "L1", 5, "new@x.io", "Ada"),
            // Delivered late, happened earlier: it must not overwrite.
            source_create("s1", "L1", 1, "old@x.io", "Ada"),
        ],
    );
    assert_eq!(outcomes, [Outcome::Applied, Outcome::Stale]);
    let row = &state.records[&("contact".to_owned(), "L1".to_owned())];
    assert_eq!(row.source[0].fields["Email"], json!("new@x.io"));
}

#[test]
fn a_seq_hole_asks_for_a_snapshot_which_finds_what_was_deleted() {
    let mapping = contact_mapping();
    let mut state = state_with_a_seq_hole(&mapping);
    assert_eq!(
        state.snapshot_requests,
        [(System::Source, "contact".to_owned())]
    );
    let stream = &state.apply.feed.streams["source/0"];
    assert_eq!((stream.missing, stream.open_since), (2, Some(at(1))));
    // The lost events could have been about any record of that partition.
    assert_eq!(state.status("contact", "L1"), Some(Status::Unverified));
    assert_eq!(state.status("contact", "L2"), Some(Status::Unverified));
    assert_eq!(
        state
            .rereads
            .get(&(System::Source, "contact".to_owned(), "L2".to_owned())),
        Some(&UnverifiedReason::SeqHole)
    );

    // The snapshot run contains L1 and L3 only.
    state.apply_batch(
        &mapping,
        &[
            source_snapshot("r1", 1, 2),
            source_snapshot("r3", 3, 2),
            snapshot_end("end", 2, 3),
        ],
    );
    state.apply_batch_at(&mapping, &[], Some(at(30)));
    assert_eq!(state.status("contact", "L2"), Some(Status::MissingInSource));
    assert_eq!(state.status("contact", "L1"), Some(Status::InSync));
    let status = &state.apply.feed.snapshots[&System::Source]["contact"];
    let completed = status.last_completed.as_ref().unwrap();
    assert_eq!(
        (
            completed.records,
            completed.marked_missing,
            completed.completed_at
        ),
        (2, 1, at(3))
    );
    assert!(state.apply.feed.needs_snapshot.is_empty());
    assert_eq!(
        state.apply.feed.streams["source/0"].open_since, None,
        "the hole is healed"
    );
}

/// Offsets 5 to 9 of the source's partition were deleted by the broker before tandem read
/// them: like a `seq` hole, any record of that partition may have missed a change.
fn source_loss(detected_minute: i64) -> OffsetLoss {
    OffsetLoss {
        system: System::Source,
        topic: "source".to_owned(),
        partition: 0,
        first_offset: 5,
        last_offset: 9,
        kind: OffsetLossKind::DeletedBeforeRead,
        detected_at: at(detected_minute),
        healed_at: None,
    }
}

#[test]
fn offsets_the_broker_deleted_make_the_partitions_records_unverified_until_a_later_snapshot() {
    let mapping = contact_mapping();
    let mut state = MemoryState::default();
    state.apply_batch(
        &mapping,
        &[
            seq_event(System::Source, "s1", 1, 1, 0),
            seq_event(System::Source, "s2", 2, 2, 0),
            seq_event(System::Target, "t1", 1, 1, 0),
            seq_event(System::Target, "t2", 2, 2, 0),
        ],
    );
    assert_eq!(state.status("contact", "L2"), Some(Status::InSync));

    let outcomes = state.apply_loss(&mapping, &source_loss(2));
    assert_eq!(outcomes, [Outcome::Position], "the loss is no message");
    for key in ["L1", "L2"] {
        assert_eq!(
            state.status("contact", key),
            Some(Status::Unverified),
            "{key}"
        );
        assert_eq!(
            state
                .rereads
                .get(&(System::Source, "contact".to_owned(), key.to_owned())),
            Some(&UnverifiedReason::OffsetsLost)
        );
    }
    assert!(
        !state
            .rereads
            .contains_key(&(System::Target, "contact".to_owned(), "T1".to_owned())),
        "the target's partition lost nothing"
    );
    assert_eq!(
        state.snapshot_requests,
        [(System::Source, "contact".to_owned())]
    );
    let losses = &state.apply.feed.offset_losses;
    assert_eq!(losses.len(), 1);
    assert_eq!(
        (
            losses[0].count(),
            losses[0].detected_at,
            losses[0].healed_at
        ),
        (Some(5), at(2), None)
    );

    // A snapshot that started before tandem found the loss cannot cover it.
    state.apply_batch(
        &mapping,
        &[
            source_snapshot("r1", 1, 1),
            source_snapshot("r2", 2, 1),
            snapshot_end("end", 2, 1),
        ],
    );
    assert_eq!(state.apply.feed.offset_losses[0].healed_at, None);
    assert!(!state.apply.feed.needs_snapshot.is_empty());

    // One started after it does: L2 is not in it (its delete was among the lost offsets).
    let later = |event_id: &str, number: u32| {
        let (system, mut event) = source_snapshot(event_id, number, 3);
        event.snapshot_id = Some("run-2".to_owned());
        (system, event)
    };
    let first = later("r1b", 1);
    let (system, mut end) = snapshot_end("end2", 1, 4);
    end.snapshot_id = Some("run-2".to_owned());
    state.apply_batch(&mapping, &[first, (system, end)]);
    state.apply_batch_at(&mapping, &[], Some(at(30)));
    assert_eq!(state.status("contact", "L1"), Some(Status::InSync));
    assert_eq!(state.status("contact", "L2"), Some(Status::MissingInSource));
    assert_eq!(state.apply.feed.offset_losses[0].healed_at, Some(at(4)));
    assert!(state.apply.feed.needs_snapshot.is_empty());
}

/// Debezium names no run: every snapshot of a table uses one id, and ends with a count.
#[test]
fn a_snapshot_id_used_again_after_its_end_starts_a_new_run() {
    let mapping = contact_mapping();
    let mut state = MemoryState::default();
    state.apply_batch(
        &mapping,
        &[
            source_snapshot("r1", 1, 1),
            source_snapshot("r2", 2, 1),
            snapshot_end("end", 2, 1),
        ],
    );
    let status = &state.apply.feed.snapshots[&System::Source]["contact"];
    assert_eq!(
        status.last_completed.as_ref().map(|run| run.records),
        Some(2)
    );
    // Later, L2 is deleted without its event reaching tandem; the next run (same id) holds
    // L1 only. Its image of L1 counts again, and L2 is found missing.
    state.apply_batch(
        &mapping,
        &[
            source_snapshot("r1-again", 1, 10),
            snapshot_end("end-again", 1, 10),
        ],
    );
    state.apply_batch_at(&mapping, &[], Some(at(30)));
    let status = &state.apply.feed.snapshots[&System::Source]["contact"];
    let completed = status.last_completed.as_ref().unwrap();
    assert_eq!(
        (
            completed.records,
            completed.marked_missing,
            completed.completed_at
        ),
        (1, 1, at(10))
    );
    assert!(status.running.is_empty());
    assert_eq!(
        state.status("contact", "L2"),
        None,
        "L2 is gone from the source, and was never in the target"
    );
}

#[test]
fn events_of_unmapped_entities_still_count_in_the_sequence() {
    let mapping = contact_mapping();
    let mut state = MemoryState::default();
    let task = |event_id: &str, seq: u64| {
        (
            System::Source,
            event(json!({"event_id": event_id, "entity": "task", "id": "K1",
            "op": "create", "seq": seq, "occurred_at": at(0).to_rfc3339()})),
        )
    };
    state.apply_batch(
        &mapping,
        &[
            seq_event(System::Source, "s1", 1, 1, 0),
            task("k2", 2),
            task("k3", 3),
            seq_event(System::Source, "s4", 2, 4, 0),
        ],
    );
    assert!(
        state
            .apply
            .feed
            .streams
            .values()
            .all(|stream| stream.missing == 0),
        "no hole: 2 and 3 were tasks"
    );
    assert!(state.snapshot_requests.is_empty());
}

#[test]
fn an_incomplete_snapshot_concludes_nothing() {
    let mapping = contact_mapping();
    let mut state = state_with_a_seq_hole(&mapping);
    state.apply_batch(
        &mapping,
        &[source_snapshot("r1", 1, 2), snapshot_end("end", 3, 3)],
    );
    assert_eq!(
        state.status("contact", "L2"),
        Some(Status::Unverified),
        "nothing is concluded"
    );
    let status = &state.apply.feed.snapshots[&System::Source]["contact"];
    let run = &status.running["run-1"];
    assert_eq!(
        (run.seen, run.end.as_ref().map(|end| end.expected)),
        (1, Some(3)),
        "it waits for 2 more"
    );
    assert!(status.last_completed.is_none());
    assert!(
        state.apply.feed.streams["source/0"].open_since.is_some(),
        "the hole stays open"
    );

    // A run that delivered more distinct records than its end announces is refused.
    let mut other = state_with_a_seq_hole(&mapping);
    other.apply_batch(
        &mapping,
        &[
            source_snapshot("r1", 1, 2),
            source_snapshot("r2", 2, 2),
            source_snapshot("r3", 3, 2),
            snapshot_end("end", 2, 3),
        ],
    );
    let status = &other.apply.feed.snapshots[&System::Source]["contact"];
    assert!(status.last_completed.is_none());
    let refused = status.last_incomplete.as_ref().unwrap();
    assert_eq!((refused.expected, refused.received), (2, 3));
}

#[test]
fn a_snapshot_end_read_before_its_images_waits_for_them() {
    let mapping = contact_mapping();
    let mut state = state_with_a_seq_hole(&mapping);
    // The end travels on another partition and is read first.
    state.apply_batch(&mapping, &[snapshot_end("end", 2, 3)]);
    assert!(state.apply.feed.snapshots[&System::Source]["contact"]
        .last_completed
        .is_none());
    state.apply_batch(&mapping, &[source_snapshot("r1", 1, 2)]);
    assert!(state.apply.feed.snapshots[&System::Source]["contact"]
        .last_completed
        .is_none());
    state.apply_batch(&mapping, &[source_snapshot("r3", 3, 2)]);
    let completed = state.apply.feed.snapshots[&System::Source]["contact"]
        .last_completed
        .clone()
        .unwrap();
    assert_eq!((completed.records, completed.marked_missing), (2, 1));
    state.apply_batch_at(&mapping, &[], Some(at(30)));
    assert_eq!(state.status("contact", "L2"), Some(Status::MissingInSource));
}

#[test]
fn a_record_changed_after_the_snapshot_started_is_not_missing() {
    let mapping = contact_mapping();
    let mut state = state_with_a_seq_hole(&mapping);
    state.apply_batch(
        &mapping,
        &[
            source_snapshot("r1", 1, 2),
            // L2 changes while the snapshot runs; the run had already passed it.
            seq_event(System::Source, "s6", 2, 6, 4),
            snapshot_end("end", 1, 5),
        ],
    );
    state.apply_batch_at(&mapping, &[], Some(at(30)));
    assert_ne!(state.status("contact", "L2"), Some(Status::MissingInSource));
    // L3 was last seen before the run and is not in it: gone from the source, and since
    // the target never had it, the record leaves the counts.
    assert_eq!(state.status("contact", "L3"), None);
    assert!(state.records[&("contact".to_owned(), "L3".to_owned())].source[0].deleted);
}

/// A target contact created in source transaction `transaction`.
fn in_transaction(
    event_id: &str,
    id: &str,
    minute: i64,
    transaction: &str,
) -> (System, tandem_core::ChangeEvent) {
    let (system, mut event) =
        target_create(event_id, id, &id.replace('T', "L"), minute, "a@x.io", "Ada");
    event.transaction_id = Some(transaction.to_owned());
    (system, event)
}

fn transaction_end(
    event_id: &str,
    transaction: &str,
    records: u64,
    minute: i64,
) -> (System, tandem_core::ChangeEvent) {
    (
        System::Target,
        event(
            json!({"event_id": event_id, "entity": "contact", "op": "transaction_end",
            "transaction_id": transaction, "records": records, "occurred_at": at(minute).to_rfc3339()}),
        ),
    )
}

/// Moves the clock to `minute` with a source record of its own.
fn tick(minute: i64) -> (System, tandem_core::ChangeEvent) {
    source_create(
        &format!("tick-{minute}"),
        &format!("L-tick-{minute}"),
        minute,
        "t@x.io",
        "Tick",
    )
}

#[test]
fn a_transaction_whose_events_all_arrive_is_forgotten_whichever_comes_first() {
    let mapping = contact_mapping();
    let mut state = MemoryState::default();
    // Transaction A: both events, then its end. Transaction B: its end before its event.
    state.apply_batch(
        &mapping,
        &[
            source_create("s1", "L1", 0, "a@x.io", "Ada"),
            source_create("s2", "L2", 0, "a@x.io", "Ada"),
            source_create("s3", "L3", 0, "a@x.io", "Ada"),
            in_transaction("t1", "T1", 1, "A"),
            in_transaction("t2", "T2", 1, "A"),
            transaction_end("end-A", "A", 2, 1),
            transaction_end("end-B", "B", 1, 2),
        ],
    );
    assert_eq!(
        state.apply.feed.transactions.len(),
        1,
        "B is still counting"
    );
    state.apply_batch(&mapping, &[in_transaction("t3", "T3", 2, "B")]);
    assert!(state.apply.feed.transactions.is_empty());
    state.apply_batch(&mapping, &[tick(60)]);
    for key in ["L1", "L2", "L3"] {
        assert_eq!(state.status("contact", key), Some(Status::InSync), "{key}");
    }
    assert!(state.apply.feed.transactions_incomplete.is_empty());
    assert!(state.snapshot_requests.is_empty());
}

#[test]
fn a_transaction_short_of_its_events_after_grace_makes_the_entity_unverified() {
    let mapping = contact_mapping();
    let mut state = MemoryState::default();
    // The end announces 3 contact events; only 2 arrive. T9 is another target contact,
    // outside the transaction: the lost event could have been about it too.
    state.apply_batch(
        &mapping,
        &[
            source_create("s1", "L1", 0, "a@x.io", "Ada"),
            source_create("s2", "L2", 0, "a@x.io", "Ada"),
            source_create("s9", "L9", 0, "a@x.io", "Ada"),
            target_create("t9", "T9", "L9", 0, "a@x.io", "Ada"),
            in_transaction("t1", "T1", 1, "C"),
            in_transaction("t2", "T2", 1, "C"),
            transaction_end("end-C", "C", 3, 1),
        ],
    );
    // Within grace (5 minutes after the end) the missing event may still be in flight.
    state.apply_batch(&mapping, &[tick(5)]);
    assert_eq!(state.status("contact", "L1"), Some(Status::InSync));
    assert!(state.apply.feed.transactions_incomplete.is_empty());
    // Past grace it is lost: every target contact is unverified and the entity needs a snapshot.
    state.apply_batch(&mapping, &[tick(7)]);
    for key in ["L1", "L2", "L9"] {
        assert_eq!(
            state.status("contact", key),
            Some(Status::Unverified),
            "{key}"
        );
    }
    assert_eq!(
        state
            .apply
            .feed
            .transactions_incomplete
            .get(&System::Target),
        Some(&1)
    );
    assert_eq!(
        state.snapshot_requests,
        vec![(System::Target, "contact".to_owned())]
    );
    assert!(state.apply.feed.transactions.is_empty());
    assert_eq!(
        state
            .rereads
            .get(&(System::Target, "contact".to_owned(), "T9".to_owned())),
        Some(&UnverifiedReason::Gap)
    );
}

#[test]
fn a_gap_without_an_id_makes_every_record_of_the_entity_in_that_system_unverified() {
    let mapping = contact_mapping();
    let mut state = MemoryState::default();
    state.apply_batch(
        &mapping,
        &[
            source_create("s1", "L1", 0, "a@x.io", "Ada"),
            target_create("t1", "T1", "L1", 0, "a@x.io", "Ada"),
            source_create("s2", "L2", 0, "b@x.io", "Bea"),
        ],
    );
    state.apply_batch(
        &mapping,
        &[
            target_create("t2", "T2", "L2", 1, "b@x.io", "Bea"),
            (
                System::Target,
                event(
                    json!({"event_id": "overflow", "entity": "contact", "op": "gap",
                    "occurred_at": at(2).to_rfc3339()}),
                ),
            ),
        ],
    );
    // T1 was stored before, T2 arrived in the same batch as the gap: both are unverified.
    assert_eq!(state.status("contact", "L1"), Some(Status::Unverified));
    assert_eq!(state.status("contact", "L2"), Some(Status::Unverified));
    assert_eq!(
        state.snapshot_requests,
        vec![(System::Target, "contact".to_owned())]
    );
}

#[test]
fn an_older_partial_update_without_a_version_makes_the_record_unverified() {
    let mapping = contact_mapping();
    let mut state = MemoryState::default();
    // Two partial updates of T1 made at minutes 2 (email) and 3 (lastname), delivered newest
    // first. Dropping the older would keep the old email; applying it is right here, but in
    // general it could overwrite a newer value: tandem asks for the record again.
    state.apply_batch(
        &mapping,
        &[
            source_create("s1", "L1", 0, "new@x.io", "Lovelace"),
            target_create("t1", "T1", "L1", 0, "old@x.io", "Ada"),
            (
                System::Target,
                event(json!({"event_id": "t3", "entity": "contact", "id": "T1",
                "op": "update", "partial": true, "occurred_at": at(3).to_rfc3339(),
                "fields": {"lastname": "Lovelace"}})),
            ),
        ],
    );
    assert_eq!(
        state.status("contact", "L1"),
        Some(Status::Pending),
        "the email differs"
    );
    let outcomes = state.apply_batch(
        &mapping,
        &[(
            System::Target,
            event(json!({"event_id": "t2", "entity": "contact", "id": "T1",
            "op": "update", "partial": true, "occurred_at": at(2).to_rfc3339(),
            "fields": {"email": "new@x.io"}})),
        )],
    );
    assert_eq!(outcomes, [Outcome::Stale]);
    assert_eq!(state.status("contact", "L1"), Some(Status::Unverified));
    assert_eq!(
        state
            .rereads
            .get(&(System::Target, "contact".to_owned(), "T1".to_owned())),
        Some(&UnverifiedReason::OutOfOrder)
    );
    // An older full image is simply superseded.
    let outcomes = state.apply_batch(
        &mapping,
        &[target_create("t0", "T1", "L1", 1, "x@x.io", "X")],
    );
    assert_eq!(outcomes, [Outcome::Stale]);
}

#[test]
fn an_older_partial_update_is_superseded_by_a_newer_full_image() {
    let mapping = contact_mapping();
    let mut state = MemoryState::default();
    // A re-read answered with a full image (minute 5) before the webhook of minute 3 arrived.
    state.apply_batch(
        &mapping,
        &[
            source_create("s1", "L1", 0, "a@x.io", "Ada"),
            target_create("t5", "T1", "L1", 5, "a@x.io", "Ada"),
        ],
    );
    let outcomes = state.apply_batch(
        &mapping,
        &[(
            System::Target,
            event(json!({"event_id": "t3", "entity": "contact", "id": "T1",
            "op": "update", "partial": true, "occurred_at": at(3).to_rfc3339(),
            "fields": {"email": "old@x.io"}})),
        )],
    );
    assert_eq!(outcomes, [Outcome::Stale]);
    assert_eq!(state.status("contact", "L1"), Some(Status::InSync));
    assert!(state.rereads.is_empty());
}
