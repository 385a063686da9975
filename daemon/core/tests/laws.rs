//! The planner's laws under proptest: batching, replay, duplicates and stale versions,
//! summaries, partial updates, and planning over plans not yet durable.

mod support;

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;
use serde_json::json;
use tandem_core::apply::pending::Pending;
use tandem_core::{ChangeEvent, EntitySummary, Outcome, RecordRow, System, Timestamp};

use support::*;

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

/// The earlier values a record keeps, and from when its history is complete, depend on when
/// it was evaluated (once per batch): they are bookkeeping, and the `since` they decide is
/// compared.
fn observable(state: &MemoryState) -> Observable {
    let mut records = state.records.clone();
    for row in records.values_mut() {
        for side in row.source.iter_mut().chain(&mut row.target) {
            side.earlier.clear();
            side.history_from = None;
        }
    }
    (records, state.apply.summaries.clone(), state.apply.clock)
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

    /// The batches after the first cut are planned while none of them is durable, each over
    /// the ones before it; the last one is planned again after each earlier one becomes
    /// durable. Every time, its plan is the one planning it on the committed state gives,
    /// re-delivered events included.
    #[test]
    fn planning_over_pending_plans_equals_planning_after_their_commit(
        steps in steps(),
        cuts in prop::collection::vec(0usize..40, 1..5),
        resend in prop::collection::vec(0usize..40, 0..4),
    ) {
        let mapping = contact_mapping();
        let mut events = events_of(&steps);
        // Re-deliveries at the end: of events committed, pending or in the last batch.
        for which in resend {
            events.push(events[which % events.len()].clone());
        }
        let mut cuts = cuts;
        cuts.sort_unstable();
        let mut bounds = vec![0];
        bounds.extend(cuts.iter().map(|cut| (*cut).min(events.len())));
        bounds.push(events.len());
        let batches: Vec<&[(System, ChangeEvent)]> =
            bounds.windows(2).map(|pair| &events[pair[0]..pair[1]]).collect();
        let (last, pending_batches) = batches[1..].split_last().expect("at least two batches");

        let mut committed = MemoryState::default();
        committed.apply_batch(&mapping, batches[0]);
        let mut pending = Pending::default();
        let mut plans = Vec::new();
        let mut apply = committed.apply.clone();
        for (seq, batch) in pending_batches.iter().enumerate() {
            let plan = plan_on(&pending.over(&committed), apply, &mapping, batch);
            let ids = batch.iter().map(|(system, event)| Some((*system, event.event_id.as_str())));
            pending.remember(seq as u64, ids, &plan);
            apply = plan.state.clone();
            plans.push(plan);
        }
        // Where every pending plan was committed in turn.
        let mut all_committed = committed.clone();
        for (batch, plan) in pending_batches.iter().zip(&plans) {
            all_committed.commit(batch, plan.clone());
        }
        let expected = plan_on(&all_committed, all_committed.apply.clone(), &mapping, last);

        let overlaid = plan_on(&pending.over(&committed), apply.clone(), &mapping, last);
        prop_assert_eq!(&overlaid, &expected);
        for (seq, (batch, plan)) in pending_batches.iter().zip(plans).enumerate() {
            committed.commit(batch, plan);
            pending.settle(seq as u64);
            let overlaid = plan_on(&pending.over(&committed), apply.clone(), &mapping, last);
            prop_assert_eq!(&overlaid, &expected, "after plan {} became durable", seq);
        }
        prop_assert!(pending.is_empty());
    }
}
