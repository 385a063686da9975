//! The planner's behaviour on hand-worked event sequences, and its laws under proptest.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use proptest::prelude::*;
use serde_json::{json, Value};
use tandem_core::apply::{unjoined_key, ViewResult};
use tandem_core::mapping::{FieldMapping, JoinSpec};
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
            let position = ((which % events.len()) + 1 + after).min(noisy.len());
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
