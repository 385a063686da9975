//! From when a record has differed: hand-worked timelines, applied in the order a lagging or
//! reordering transport delivers them, against the times worked out by hand.

mod support;

use proptest::prelude::*;
use serde_json::{json, Value};
use support::*;
use tandem_core::{ChangeEvent, Mapping, Status, System, Timestamp};

/// One event of contact `id` in `system` at `minute`.
fn change(
    system: System,
    event_id: &str,
    id: &str,
    op: &str,
    minute: i64,
    fields: Value,
) -> (System, ChangeEvent) {
    let mut value = json!({"event_id": event_id, "entity": "contact", "id": id, "op": op,
        "occurred_at": at(minute).to_rfc3339()});
    if !fields.is_null() {
        value["fields"] = fields;
    }
    if system == System::Source {
        value["external_id"] = json!(id);
    }
    (system, event(value))
}

fn source(event_id: &str, op: &str, minute: i64, email: &str, last: &str) -> (System, ChangeEvent) {
    change(
        System::Source,
        event_id,
        "L1",
        op,
        minute,
        json!({"Email": email, "LastName": last}),
    )
}

fn target(event_id: &str, op: &str, minute: i64, email: &str, last: &str) -> (System, ChangeEvent) {
    change(
        System::Target,
        event_id,
        "T1",
        op,
        minute,
        json!({"email": email, "lastname": last, "legacy_id": "L1"}),
    )
}

/// Applies each batch in turn, then lets the clock pass every grace period, and returns L1's
/// status and since.
fn since_after(batches: &[&[(System, ChangeEvent)]]) -> (Option<Status>, Option<Timestamp>) {
    let mapping: Mapping = contact_mapping();
    let mut state = MemoryState::default();
    for batch in batches {
        state.apply_batch(&mapping, batch);
    }
    state.apply_batch_at(&mapping, &[], Some(at(1_000)));
    state
        .records
        .get(&("contact".to_owned(), "L1".to_owned()))
        .map_or((None, None), |row| (row.status.status, row.status.since))
}

/// The source changes the email at minute 10 and the sync copies it at 11; at 30 the source
/// changes the last name and the copy is lost. Truly, the sides differ from 30 on. The
/// target's topic lags: all of the source arrives first.
#[test]
fn a_lagging_target_topic_does_not_move_since_earlier() {
    let source_first = [
        source("s0", "create", 0, "a@x.io", "Ada"),
        source("s1", "update", 10, "b@x.io", "Ada"),
        source("s2", "update", 30, "b@x.io", "Lovelace"),
    ];
    let target_later = [
        target("t0", "create", 1, "a@x.io", "Ada"),
        target("t1", "update", 11, "b@x.io", "Ada"),
    ];
    let (status, since) = since_after(&[&source_first, &target_later]);
    assert_eq!(status, Some(Status::Mismatch));
    assert_eq!(since, Some(at(30)));
    // In one batch, and in event-time order, the answer is the same.
    let mut together: Vec<_> = source_first.iter().chain(&target_later).cloned().collect();
    assert_eq!(since_after(&[&together]).1, Some(at(30)));
    together.sort_by_key(|(_, event)| event.occurred_at);
    let one_by_one: Vec<&[(System, ChangeEvent)]> =
        together.iter().map(std::slice::from_ref).collect();
    assert_eq!(since_after(&one_by_one).1, Some(at(30)));
}

/// The email differs from 10 to 20 (copied late), the last name from 15 on (never copied): the
/// sides have differed without a break since 10, though no field that differs now did then.
#[test]
fn differences_in_different_fields_that_overlap_are_one_stretch() {
    let events = [
        source("s0", "create", 0, "a@x.io", "Ada"),
        target("t0", "create", 1, "a@x.io", "Ada"),
        source("s1", "update", 10, "b@x.io", "Ada"),
        source("s2", "update", 15, "b@x.io", "Lovelace"),
        target("t1", "update", 20, "b@x.io", "Ada"),
    ];
    // The target's changes first, then the source's.
    let (target_events, source_events): (Vec<_>, Vec<_>) = events
        .iter()
        .cloned()
        .partition(|(system, _)| *system == System::Target);
    let (status, since) = since_after(&[&target_events, &source_events]);
    assert_eq!(status, Some(Status::Mismatch));
    assert_eq!(since, Some(at(10)));
}

/// A copy that arrives before the change it copies: the sides differed from the target's
/// change at 11 until the source's at 10 arrived... in event time, they never differed after 11.
/// Then the source changes again at 40 and nothing copies it.
#[test]
fn a_copy_that_overtakes_its_change_leaves_no_difference_behind() {
    let (status, since) = since_after(&[
        &[
            source("s0", "create", 0, "a@x.io", "Ada"),
            target("t0", "create", 1, "a@x.io", "Ada"),
        ],
        &[target("t1", "update", 11, "b@x.io", "Ada")],
        &[source("s1", "update", 10, "b@x.io", "Ada")],
        &[source("s2", "update", 40, "c@x.io", "Ada")],
    ]);
    assert_eq!(status, Some(Status::Mismatch));
    assert_eq!(since, Some(at(40)));
}

/// The source's change at 20 overtakes its update at 10 (a stale event, dropped by version):
/// its values still count for the time between. The target copied 10 at 11 and never got 20.
#[test]
fn an_overtaken_change_still_counts_for_its_time() {
    let versioned = |mut change: (System, ChangeEvent), version: u64| {
        change.1.version = Some(version);
        change
    };
    let (status, since) = since_after(&[
        &[
            versioned(source("s0", "create", 0, "a@x.io", "Ada"), 1),
            versioned(target("t0", "create", 1, "a@x.io", "Ada"), 1),
        ],
        &[versioned(source("s2", "update", 20, "c@x.io", "Ada"), 3)],
        &[versioned(source("s1", "update", 10, "b@x.io", "Ada"), 2)],
        &[versioned(target("t1", "update", 11, "b@x.io", "Ada"), 2)],
    ]);
    assert_eq!(status, Some(Status::Mismatch));
    // Without the overtaken values, 10 to 11 would count too (a@ against b@ or c@).
    assert_eq!(since, Some(at(20)));
}

/// The target record is deleted at 9 and its id created again at once for another record:
/// L1 has been missing in the target since 9, not since the source created it.
#[test]
fn a_target_record_that_moves_to_another_key_leaves_at_the_move() {
    let (status, since) = since_after(&[
        &[
            source("s0", "create", 0, "a@x.io", "Ada"),
            target("t0", "create", 1, "a@x.io", "Ada"),
        ],
        &[
            change(System::Target, "t1", "T1", "delete", 9, Value::Null),
            change(
                System::Target,
                "t2",
                "T1",
                "create",
                9,
                json!({"email": "z@x.io", "lastname": "Zed", "legacy_id": "L9"}),
            ),
        ],
        &[source("s1", "update", 20, "b@x.io", "Ada")],
        &[source("s2", "update", 30, "c@x.io", "Ada")],
    ]);
    assert_eq!(status, Some(Status::MissingInTarget));
    assert_eq!(since, Some(at(9)));
}

/// A doubt dates an unverified record from when it arose; once a reading resolves it, the
/// record is dated from its history again. The source changed at 10 and nothing copied it;
/// a gap at 20 made it unverified; the snapshot at 30 shows what it held since 10.
#[test]
fn a_resolved_doubt_leaves_the_date_from_the_history() {
    let mapping = contact_mapping();
    let mut state = MemoryState::default();
    state.apply_batch(
        &mapping,
        &[
            source("s0", "create", 0, "a@x.io", "Ada"),
            target("t0", "create", 1, "a@x.io", "Ada"),
            source("s1", "update", 10, "b@x.io", "Ada"),
        ],
    );
    state.apply_batch(
        &mapping,
        &[change(System::Source, "g", "L1", "gap", 20, Value::Null)],
    );
    let key = ("contact".to_owned(), "L1".to_owned());
    let row = &state.records[&key];
    assert_eq!(
        (row.status.status, row.status.since),
        (Some(Status::Unverified), Some(at(20)))
    );
    state.apply_batch(&mapping, &[source("r", "snapshot", 30, "b@x.io", "Ada")]);
    state.apply_batch_at(&mapping, &[], Some(at(1_000)));
    let row = &state.records[&key];
    assert_eq!(
        (row.status.status, row.status.since),
        (Some(Status::Mismatch), Some(at(10)))
    );
}

/// A record the target first knew through a change that overtook its create.
#[test]
fn a_create_overtaken_by_a_later_change_still_dates_the_record() {
    let (status, since) = since_after(&[
        &[source("s0", "create", 0, "a@x.io", "Ada")],
        &[target("t1", "update", 11, "b@x.io", "Ada")],
        &[target("t0", "create", 1, "a@x.io", "Ada")],
        &[source("s1", "update", 10, "b@x.io", "Ada")],
        &[source("s2", "update", 40, "c@x.io", "Ada")],
    ]);
    assert_eq!(status, Some(Status::Mismatch));
    assert_eq!(since, Some(at(40)));
}

/// Earlier values are let go once nothing can need them: a record in sync whose sides both
/// moved past a change keeps nothing of what came before it.
#[test]
fn what_no_since_can_need_is_let_go() {
    let mapping = contact_mapping();
    let mut state = MemoryState::default();
    let mut batches = Vec::new();
    for step in 0..100 {
        let email = format!("e{step}@x.io");
        batches.push(vec![
            source(&format!("s{step}"), "update", step * 2, &email, "Ada"),
            target(&format!("t{step}"), "update", step * 2 + 1, &email, "Ada"),
        ]);
    }
    batches[0][0] = source("s0", "create", 0, "e0@x.io", "Ada");
    batches[0][1] = target("t0", "create", 1, "e0@x.io", "Ada");
    for batch in &batches {
        state.apply_batch(&mapping, batch);
    }
    let row = &state.records[&("contact".to_owned(), "L1".to_owned())];
    assert_eq!(row.status.status, Some(Status::InSync));
    let kept: usize = row
        .source
        .iter()
        .chain(&row.target)
        .map(|side| side.earlier.len())
        .sum();
    // The target's value before its copy at 199: a source change between 198 and 199 may
    // still arrive, and then the sides differed from it until 199. One value of two hundred.
    assert_eq!(kept, 1, "earlier values kept: {row:?}");
}

/// One generated change of L1: which side, what, and the values it leaves.
#[derive(Clone, Debug)]
struct Step {
    source: bool,
    op: u8,
    email: u8,
    last: u8,
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        (any::<bool>(), 0u8..4, 0u8..3, 0u8..2).prop_map(|(source, op, email, last)| Step {
            source,
            op,
            email,
            last,
        }),
        1..30,
    )
}

/// The events of the steps, one minute apart, each side's first one a create.
fn events_of(steps: &[Step]) -> Vec<(System, ChangeEvent)> {
    let mut created = [false, false];
    steps
        .iter()
        .enumerate()
        .map(|(minute, step)| {
            let side = usize::from(step.source);
            let op = match (created[side], step.op) {
                (false, _) | (true, 0) => "create",
                (true, 1 | 2) => "update",
                (true, _) => "delete",
            };
            created[side] = true;
            let email = format!("e{}@x.io", step.email);
            let last = format!("n{}", step.last);
            let id = format!("ev{minute}");
            match (step.source, op) {
                (true, "delete") => {
                    change(System::Source, &id, "L1", op, minute as i64, Value::Null)
                }
                (false, "delete") => {
                    change(System::Target, &id, "T1", op, minute as i64, Value::Null)
                }
                (true, _) => source(&id, op, minute as i64, &email, &last),
                (false, _) => target(&id, op, minute as i64, &email, &last),
            }
        })
        .collect()
}

/// The truth, worked out independently: both sides replayed in event time, compared after
/// every change; `since` is where the final stretch of differences began.
fn true_since(events: &[(System, ChangeEvent)]) -> Option<Timestamp> {
    // Per side: live or deleted, and the values.
    let mut sides: [Option<(bool, Value)>; 2] = [None, None];
    let mut since = None;
    for (system, event) in events {
        let side = &mut sides[usize::from(*system == System::Source)];
        match event.op {
            tandem_core::Op::Delete => {
                if let Some((deleted, _)) = side {
                    *deleted = true;
                }
            }
            op => {
                let fields = serde_json::to_value(event.fields.clone()).unwrap();
                let deleted = match side {
                    Some((deleted, _)) => *deleted && op != tandem_core::Op::Create,
                    None => false,
                };
                *side = Some((deleted, fields));
            }
        }
        let live = |side: &Option<(bool, Value)>| match side {
            Some((false, fields)) => Some(fields.clone()),
            _ => None,
        };
        let differs = match (live(&sides[1]), live(&sides[0])) {
            (None, None) => false,
            (Some(source), Some(target)) => {
                source["Email"] != target["email"] || source["LastName"] != target["lastname"]
            }
            _ => true,
        };
        since = match (differs, since) {
            (false, _) => None,
            (true, None) => Some(event.occurred_at),
            (true, kept) => kept,
        };
    }
    since
}

proptest! {
    /// However the two sides' topics interleave (each keeping its own order), and however
    /// the events are batched, `since` is where the sides truly began to differ.
    #[test]
    fn since_is_the_truth_whatever_the_interleaving(
        steps in steps(),
        picks in prop::collection::vec(any::<bool>(), 60),
        cuts in prop::collection::vec(0usize..30, 0..5),
    ) {
        let events = events_of(&steps);
        let expected = true_since(&events);
        let (mut source_events, mut target_events): (Vec<_>, Vec<_>) = events
            .iter()
            .cloned()
            .partition(|(system, _)| *system == System::Source);
        source_events.reverse();
        target_events.reverse();
        let mut delivered = Vec::new();
        for pick in picks.iter().copied().chain(std::iter::repeat(true)) {
            let (first, second) = if pick {
                (&mut source_events, &mut target_events)
            } else {
                (&mut target_events, &mut source_events)
            };
            let next = first.pop().or_else(|| second.pop());
            match next {
                Some(event) => delivered.push(event),
                None => break,
            }
        }
        let mut sorted_cuts = cuts.clone();
        sorted_cuts.sort_unstable();
        let mut batches: Vec<&[(System, ChangeEvent)]> = Vec::new();
        let mut start = 0;
        for cut in sorted_cuts.into_iter().chain([delivered.len()]) {
            let end = cut.clamp(start, delivered.len());
            batches.push(&delivered[start..end]);
            start = end;
        }
        let (status, since) = since_after(&batches);
        prop_assert_eq!(since, expected, "status {:?}, delivered {:?}", status, delivered
            .iter()
            .map(|(system, event)| format!("{system}:{:?}@{}", event.op, event.occurred_at))
            .collect::<Vec<_>>());
    }
}

/// A second target record of L1, created at 5 on a partition of its own, arrives after the
/// history up to 10 was let go (the sides agreed there as tandem knew them): the record has
/// been a duplicate since 5, as when everything arrives in one batch.
#[test]
fn a_duplicate_that_arrives_after_the_history_was_let_go_dates_from_its_creation() {
    let agreed = [
        source("s1", "create", 0, "a@x.io", "A"),
        target("t1", "create", 1, "a@x.io", "A"),
        source("s2", "update", 10, "b@x.io", "A"),
        target("t2", "update", 11, "b@x.io", "A"),
    ];
    let late = change(
        System::Target,
        "d1",
        "T2",
        "create",
        5,
        json!({"email": "b@x.io", "lastname": "A", "legacy_id": "L1"}),
    );
    let mut together = agreed.to_vec();
    together.push(late.clone());
    assert_eq!(
        since_after(&[&together]),
        (Some(Status::Duplicate), Some(at(5)))
    );
    assert_eq!(
        since_after(&[&agreed, &[late]]),
        (Some(Status::Duplicate), Some(at(5)))
    );
}
