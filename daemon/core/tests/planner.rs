//! The planner's behaviour on hand-worked event sequences, and its laws under proptest.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use proptest::prelude::*;
use serde_json::{json, Value};
use tandem_core::apply::{unjoined_key, ViewResult};
use tandem_core::feed::RereadChange;
use tandem_core::mapping::{FieldMapping, JoinSpec};
use tandem_core::record::UnverifiedReason;
use tandem_core::{
    ApplyState, ChangeEvent, EntityMapping, EntitySummary, Input, JoinKeySource, Mapping, Outcome,
    Planner, RecordRow, StateView, Status, System, Timestamp,
};

const GRACE: Duration = Duration::from_secs(300);

/// A committed state held in maps: the smallest shell that executes a plan.
#[derive(Clone, Default, Debug, PartialEq)]
struct MemoryState {
    seen: HashSet<(System, String)>,
    join_keys: HashMap<(System, String, String), String>,
    records: BTreeMap<(String, String), RecordRow>,
    snapshot_members: HashSet<(System, String, String, String)>,
    partition_members: BTreeSet<(String, i32, System, String, String)>,
    rereads: BTreeMap<(System, String, String), UnverifiedReason>,
    snapshot_requests: Vec<(System, String)>,
    apply: ApplyState,
}

impl StateView for MemoryState {
    fn event_seen(&self, system: System, event_id: &str) -> ViewResult<bool> {
        Ok(self.seen.contains(&(system, event_id.to_owned())))
    }

    fn join_key(
        &self,
        system: System,
        entity: &str,
        native_id: &str,
    ) -> ViewResult<Option<String>> {
        Ok(self
            .join_keys
            .get(&(system, entity.to_owned(), native_id.to_owned()))
            .cloned())
    }

    fn record(&self, entity: &str, join_key: &str) -> ViewResult<Option<RecordRow>> {
        Ok(self
            .records
            .get(&(entity.to_owned(), join_key.to_owned()))
            .cloned())
    }

    fn native_ids(&self, system: System, entity: &str) -> ViewResult<Vec<String>> {
        Ok(self
            .join_keys
            .keys()
            .filter(|(key_system, key_entity, _)| *key_system == system && key_entity == entity)
            .map(|(_, _, native_id)| native_id.clone())
            .collect())
    }

    fn partition_members(
        &self,
        topic: &str,
        partition: i32,
    ) -> ViewResult<Vec<(System, String, String)>> {
        Ok(self
            .partition_members
            .iter()
            .filter(|member| member.0 == topic && member.1 == partition)
            .map(|member| (member.2, member.3.clone(), member.4.clone()))
            .collect())
    }

    fn snapshot_member(
        &self,
        system: System,
        entity: &str,
        snapshot_id: &str,
        native_id: &str,
    ) -> ViewResult<bool> {
        Ok(self.snapshot_members.contains(&(
            system,
            entity.to_owned(),
            snapshot_id.to_owned(),
            native_id.to_owned(),
        )))
    }
}

impl MemoryState {
    /// Applies one batch and commits its plan; returns the outcomes.
    fn apply_batch(&mut self, mapping: &Mapping, batch: &[(System, ChangeEvent)]) -> Vec<Outcome> {
        self.apply_batch_at(mapping, batch, None)
    }

    fn apply_batch_at(
        &mut self,
        mapping: &Mapping,
        batch: &[(System, ChangeEvent)],
        clock_floor: Option<Timestamp>,
    ) -> Vec<Outcome> {
        let mut planner = Planner::new(mapping, GRACE, &*self, self.apply.clone());
        for (system, event) in batch {
            planner
                .apply(Input::Event {
                    system: *system,
                    event,
                    partition: Some((system.as_str(), 0)),
                })
                .unwrap();
        }
        if let Some(floor) = clock_floor {
            planner.advance_clock(floor);
        }
        let due: Vec<_> = self
            .records
            .iter()
            .filter(|(_, row)| row.status.due_at.is_some_and(|due| due <= planner.clock()))
            .map(|(key, _)| key.clone())
            .collect();
        for (entity, join_key) in due {
            planner.reevaluate(&entity, &join_key).unwrap();
        }
        let plan = planner.finish();
        for ((system, event), outcome) in batch.iter().zip(&plan.outcomes) {
            if outcome.is_recorded() {
                self.seen.insert((*system, event.event_id.clone()));
            }
        }
        for change in plan.join_keys {
            self.join_keys.insert(
                (change.system, change.entity, change.native_id),
                change.join_key,
            );
        }
        for change in plan.records {
            let key = (change.entity, change.join_key);
            match change.after {
                Some(row) => self
                    .records
                    .insert(key, std::sync::Arc::unwrap_or_clone(row)),
                None => self.records.remove(&key),
            };
        }
        for member in plan.partition_members {
            self.partition_members.insert((
                member.topic,
                member.partition,
                member.system,
                member.entity,
                member.native_id,
            ));
        }
        for member in plan.snapshot_members {
            self.snapshot_members.insert((
                member.system,
                member.entity,
                member.snapshot_id,
                member.native_id,
            ));
        }
        for change in plan.rereads {
            match change {
                RereadChange::Request {
                    system,
                    entity,
                    native_id,
                    reason,
                    ..
                } => {
                    self.rereads.insert((system, entity, native_id), reason);
                }
                RereadChange::Resolved {
                    system,
                    entity,
                    native_id,
                } => {
                    self.rereads.remove(&(system, entity, native_id));
                }
            }
        }
        self.snapshot_requests.extend(
            plan.snapshot_requests
                .into_iter()
                .map(|request| (request.system, request.entity)),
        );
        self.apply = plan.state;
        plan.outcomes
    }

    fn status(&self, entity: &str, join_key: &str) -> Option<Status> {
        self.records
            .get(&(entity.to_owned(), join_key.to_owned()))
            .and_then(|row| row.status.status)
    }

    fn summary(&self, entity: &str) -> EntitySummary {
        self.apply
            .summaries
            .get(entity)
            .cloned()
            .unwrap_or_default()
    }

    /// Recounts every stored row: what the maintained summaries must equal.
    fn recount(&self) -> BTreeMap<String, EntitySummary> {
        let mut summaries: BTreeMap<String, EntitySummary> = BTreeMap::new();
        for ((entity, _), row) in &self.records {
            let summary = summaries.entry(entity.clone()).or_default();
            if let Some(status) = row.status.status {
                summary.by_status[status.index()] += 1;
                if status == Status::Mismatch {
                    for field in &row.status.differing_fields {
                        *summary.mismatched_fields.entry(field.clone()).or_default() += 1;
                    }
                }
            }
        }
        for entity in self.apply.summaries.keys() {
            summaries.entry(entity.clone()).or_default();
        }
        summaries
    }
}

fn contact_mapping() -> Mapping {
    Mapping::try_new(vec![EntityMapping {
        name: "contact".to_owned(),
        join: JoinSpec {
            source: JoinKeySource::ExternalId,
            target: JoinKeySource::Field("legacy_id".to_owned()),
        },
        fields: vec![
            FieldMapping {
                source: "Email".to_owned(),
                target: "email".to_owned(),
            },
            FieldMapping {
                source: "LastName".to_owned(),
                target: "lastname".to_owned(),
            },
        ],
    }])
    .unwrap()
}

/// Minutes after 2026-11-20T08:00:00Z.
fn at(minutes: i64) -> Timestamp {
    Timestamp::from_unix_nanos((1_795_161_600 + minutes * 60) * 1_000_000_000)
}

fn event(value: Value) -> ChangeEvent {
    serde_json::from_value(value).unwrap()
}

fn source_create(
    event_id: &str,
    id: &str,
    minute: i64,
    email: &str,
    last: &str,
) -> (System, ChangeEvent) {
    (
        System::Source,
        event(
            json!({"event_id": event_id, "entity": "contact", "id": id, "op": "create",
            "occurred_at": at(minute).to_rfc3339(), "external_id": id,
            "fields": {"Email": email, "LastName": last}}),
        ),
    )
}

fn target_create(
    event_id: &str,
    id: &str,
    legacy: &str,
    minute: i64,
    email: &str,
    last: &str,
) -> (System, ChangeEvent) {
    (
        System::Target,
        event(
            json!({"event_id": event_id, "entity": "contact", "id": id, "op": "create",
            "occurred_at": at(minute).to_rfc3339(),
            "fields": {"legacy_id": legacy, "email": email, "lastname": last}}),
        ),
    )
}

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

/// An update of record `L<number>` (source id `L<n>`, target id `T<n>`) carrying `seq`.
fn seq_event(
    system: System,
    event_id: &str,
    number: u32,
    seq: u64,
    minute: i64,
) -> (System, ChangeEvent) {
    let key = format!("L{number}");
    let email = format!("{key}@x.io");
    let value = match system {
        System::Source => {
            json!({"event_id": event_id, "entity": "contact", "id": key, "op": "update",
            "seq": seq, "external_id": key, "occurred_at": at(minute).to_rfc3339(),
            "fields": {"Email": email}})
        }
        System::Target => {
            json!({"event_id": event_id, "entity": "contact", "id": format!("T{number}"),
            "op": "update", "seq": seq, "occurred_at": at(minute).to_rfc3339(),
            "fields": {"email": email, "legacy_id": key}})
        }
    };
    (system, event(value))
}

fn source_snapshot(event_id: &str, number: u32, minute: i64) -> (System, ChangeEvent) {
    let key = format!("L{number}");
    (
        System::Source,
        event(
            json!({"event_id": event_id, "entity": "contact", "id": key, "op": "snapshot",
        "snapshot_id": "run-1", "external_id": key, "occurred_at": at(minute).to_rfc3339(),
        "fields": {"Email": format!("{key}@x.io")}}),
        ),
    )
}

fn snapshot_end(event_id: &str, records: u64, minute: i64) -> (System, ChangeEvent) {
    (
        System::Source,
        event(
            json!({"event_id": event_id, "entity": "contact", "op": "snapshot_end",
        "snapshot_id": "run-1", "records": records, "occurred_at": at(minute).to_rfc3339()}),
        ),
    )
}

/// Two records in sync on both sides, then a hole in the source partition while L3 arrives.
fn state_with_a_seq_hole(mapping: &Mapping) -> MemoryState {
    let mut state = MemoryState::default();
    state.apply_batch(
        mapping,
        &[
            seq_event(System::Source, "s1", 1, 1, 0),
            seq_event(System::Source, "s2", 2, 2, 0),
            seq_event(System::Target, "t1", 1, 1, 0),
            seq_event(System::Target, "t2", 2, 2, 0),
            // Events 3 and 4 of the source partition were lost (say, the delete of L2).
            seq_event(System::Source, "s5", 3, 5, 1),
        ],
    );
    state
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

// ---------------------------------------------------------------------------------------------
// Laws

/// A generated change: which record, which system, what happened.
#[derive(Clone, Debug)]
struct Step {
    system: System,
    record: u8,
    op: u8,
    email: u8,
    partial: bool,
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        (any::<bool>(), 0u8..4, 0u8..5, 0u8..3, any::<bool>()).prop_map(
            |(source, record, op, email, partial)| Step {
                system: if source {
                    System::Source
                } else {
                    System::Target
                },
                record,
                op,
                email,
                partial,
            },
        ),
        1..40,
    )
}

/// Turns steps into events with per-record increasing versions and event times.
fn events_of(steps: &[Step]) -> Vec<(System, ChangeEvent)> {
    let mut versions: HashMap<(System, u8), u64> = HashMap::new();
    steps
        .iter()
        .enumerate()
        .map(|(index, step)| {
            let version = versions.entry((step.system, step.record)).or_default();
            *version += 1;
            let legacy = format!("L{}", step.record);
            let (id, email_field, fields) = match step.system {
                System::Source => (legacy.clone(), "Email", json!({"LastName": "Same"})),
                System::Target => (
                    format!("T{}", step.record),
                    "email",
                    json!({"legacy_id": legacy, "lastname": "Same"}),
                ),
            };
            let mut fields = fields.as_object().unwrap().clone();
            fields.insert(
                email_field.to_owned(),
                json!(format!("e{}@x.io", step.email)),
            );
            let op = ["create", "update", "update", "delete", "undelete"][step.op as usize];
            let partial = step.partial && op == "update";
            if partial {
                fields.retain(|name, _| name == email_field);
            }
            let mut value = json!({"event_id": format!("ev{index}"), "entity": "contact", "id": id,
                "op": op, "occurred_at": at(index as i64).to_rfc3339(), "version": *version,
                "partial": partial, "fields": fields});
            if step.system == System::Source {
                value["external_id"] = json!(legacy);
            }
            (step.system, event(value))
        })
        .collect()
}

fn run_in_batches(events: &[(System, ChangeEvent)], cuts: &[usize]) -> MemoryState {
    let mapping = contact_mapping();
    let mut state = MemoryState::default();
    let mut start = 0;
    for cut in cuts.iter().copied().chain([events.len()]) {
        let end = cut.clamp(start, events.len());
        state.apply_batch(&mapping, &events[start..end]);
        start = end;
    }
    state
}

/// The state a user can observe: rows, summaries and clock, without the dedupe bookkeeping.
type Observable = (
    BTreeMap<(String, String), RecordRow>,
    BTreeMap<String, EntitySummary>,
    Timestamp,
);

fn observable(state: &MemoryState) -> Observable {
    (
        state.records.clone(),
        state.apply.summaries.clone(),
        state.apply.clock,
    )
}

proptest! {
    #[test]
    fn batching_does_not_change_the_outcome(steps in steps(), cuts in prop::collection::vec(0usize..40, 0..6)) {
        let events = events_of(&steps);
        let mut sorted_cuts = cuts.clone();
        sorted_cuts.sort_unstable();
        let one_batch = run_in_batches(&events, &[]);
        let many_batches = run_in_batches(&events, &sorted_cuts);
        prop_assert_eq!(observable(&one_batch), observable(&many_batches));
        prop_assert_eq!(&one_batch.apply.counters, &many_batches.apply.counters);
    }

    #[test]
    fn replay_is_idempotent(steps in steps()) {
        let mapping = contact_mapping();
        let events = events_of(&steps);
        let mut state = MemoryState::default();
        state.apply_batch(&mapping, &events);
        let after_first = state.clone();
        let outcomes = state.apply_batch(&mapping, &events);
        prop_assert!(outcomes.iter().all(|outcome| *outcome == Outcome::Duplicate));
        prop_assert_eq!(observable(&after_first), observable(&state));
        prop_assert_eq!(state.apply.counters.source.events_applied + state.apply.counters.target.events_applied,
            events.len() as u64);
    }

    #[test]
    fn duplicates_and_stale_versions_never_change_the_outcome(
        steps in steps(),
        resend in prop::collection::vec((0usize..40, 0usize..40, any::<bool>()), 0..15),
    ) {
        let mapping = contact_mapping();
        let events = events_of(&steps);
        let mut clean = MemoryState::default();
        clean.apply_batch(&mapping, &events);

        // Insert re-deliveries (same event id) and stale copies (older version, new event id)
        // after the event they repeat; event time is not advanced past the original's clock.
        let mut noisy = events.clone();
        for (index, (which, after, stale)) in resend.iter().enumerate() {
            let original = &events[which % events.len()];
            // After the original as it stands in `noisy` now (earlier inserts moved it).
            let original_position = noisy
                .iter()
                .position(|(system, event)| *system == original.0 && event.event_id == original.1.event_id)
                .expect("every original event is in the noisy sequence");
            let position = (original_position + 1 + after).min(noisy.len());
            let mut copy = original.clone();
            if *stale {
                let Some(version) = copy.1.version.filter(|version| *version > 1) else { continue };
                // Only stale once a newer version of the same native record has been applied.
                let newer_exists = noisy[..position].iter().any(|(system, event)| {
                    *system == copy.0 && event.id == copy.1.id && event.version.unwrap_or(0) >= version
                });
                if !newer_exists { continue }
                copy.1.version = Some(version - 1);
                copy.1.event_id = format!("stale-{index}");
            }
            noisy.insert(position, copy);
        }
        let mut state = MemoryState::default();
        state.apply_batch(&mapping, &noisy);
        prop_assert_eq!(&clean.records, &state.records);
        prop_assert_eq!(&clean.apply.summaries, &state.apply.summaries);
    }

    #[test]
    fn maintained_summaries_equal_a_recount(steps in steps(), cuts in prop::collection::vec(0usize..40, 0..6)) {
        let events = events_of(&steps);
        let mut sorted_cuts = cuts.clone();
        sorted_cuts.sort_unstable();
        let state = run_in_batches(&events, &sorted_cuts);
        prop_assert_eq!(state.recount(), state.apply.summaries.clone());
    }

    #[test]
    fn partial_updates_compose_like_one_merged_image(emails in prop::collection::vec(0u8..5, 1..10)) {
        let mapping = contact_mapping();
        let mut with_partials = MemoryState::default();
        let mut batch = vec![source_create("c", "L1", 0, "first@x.io", "Ada")];
        for (index, email) in emails.iter().enumerate() {
            batch.push((System::Source, event(json!({"event_id": format!("p{index}"), "entity": "contact",
                "id": "L1", "op": "update", "partial": true, "occurred_at": at(index as i64 + 1).to_rfc3339(),
                "fields": {"Email": format!("e{email}@x.io")}}))));
        }
        with_partials.apply_batch(&mapping, &batch);
        let last = emails.last().unwrap();
        let fields = &with_partials.records[&("contact".to_owned(), "L1".to_owned())].source[0].fields;
        prop_assert_eq!(fields["Email"].clone(), json!(format!("e{last}@x.io")));
        prop_assert_eq!(fields["LastName"].clone(), json!("Ada"));
        prop_assert_eq!(fields.len(), 2);
    }
}
