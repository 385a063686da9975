//! The smallest shell that executes a plan, and the events the planner tests are made of.
#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use serde_json::{json, Value};
use tandem_core::apply::{DueRecord, ViewResult};
use tandem_core::feed::{OffsetLoss, RereadChange};
use tandem_core::mapping::{FieldMapping, JoinSpec};
use tandem_core::record::UnverifiedReason;
use tandem_core::{
    ApplyState, ChangeEvent, EntityMapping, EntitySummary, Input, JoinKeySource, Mapping, Outcome,
    Plan, Planner, RecordRow, StateView, Status, System, Timestamp,
};

pub const GRACE: Duration = Duration::from_secs(300);

/// A committed state held in maps: the smallest shell that executes a plan.
#[derive(Clone, Default, Debug, PartialEq)]
pub struct MemoryState {
    pub seen: HashSet<(System, String)>,
    pub join_keys: HashMap<(System, String, String), String>,
    pub records: BTreeMap<(String, String), RecordRow>,
    pub snapshot_members: HashSet<(System, String, String, String)>,
    pub partition_members: BTreeSet<(String, i32, System, String, String)>,
    pub references: BTreeSet<tandem_core::Reference>,
    pub compensations: Vec<tandem_core::ownership::Compensation>,
    pub rereads: BTreeMap<(System, String, String), UnverifiedReason>,
    pub snapshot_requests: Vec<(System, String)>,
    pub apply: ApplyState,
    pub ownership: tandem_core::ownership::OwnershipPolicy,
}

impl StateView for MemoryState {
    fn due_records(&self, up_to: Timestamp, limit: usize) -> ViewResult<Vec<DueRecord>> {
        let mut due: Vec<DueRecord> = self
            .records
            .iter()
            .filter_map(|((entity, join_key), row)| {
                let due_at = row.status.due_at?;
                (due_at <= up_to).then(|| (due_at, entity.clone(), join_key.clone()))
            })
            .collect();
        due.sort_unstable();
        due.truncate(limit);
        Ok(due)
    }

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

    fn referencing(
        &self,
        system: System,
        entity: &str,
        native_id: &str,
    ) -> ViewResult<Vec<(String, String)>> {
        Ok(self
            .references
            .iter()
            .filter(|reference| reference.points_at(system, entity, native_id))
            .map(|reference| (reference.from_entity.clone(), reference.from_key.clone()))
            .collect())
    }

    fn is_unverified(&self, system: System, entity: &str, native_id: &str) -> ViewResult<bool> {
        let Some(join_key) = self.join_key(system, entity, native_id)? else {
            return Ok(false);
        };
        Ok(self
            .record(entity, &join_key)?
            .and_then(|row| {
                row.side(system)
                    .iter()
                    .find(|side| side.native_id == native_id)
                    .map(|side| side.unverified.is_some())
            })
            .unwrap_or(false))
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

/// Plans one batch on `view`, from `apply`, as the ingest shell does: its events, then the
/// feeds settled. Nothing is committed.
pub fn plan_on<V: StateView>(
    view: &V,
    apply: ApplyState,
    mapping: &Mapping,
    batch: &[(System, ChangeEvent)],
) -> Plan {
    let mut planner = Planner::new(mapping, GRACE, view, apply);
    plan_events(&mut planner, batch);
    planner.settle_feeds().unwrap();
    reevaluate_due(view, &mut planner);
    planner.finish()
}

/// Evaluates again the records of `view` whose grace ended on the planner's clock.
fn reevaluate_due<V: StateView>(view: &V, planner: &mut Planner<'_, V>) {
    for (_, entity, join_key) in view.due_records(planner.clock(), usize::MAX).unwrap() {
        planner.reevaluate(&entity, &join_key).unwrap();
    }
}

/// Hands the planner each event of `batch`, on its system's partition 0.
fn plan_events<V: StateView>(planner: &mut Planner<'_, V>, batch: &[(System, ChangeEvent)]) {
    for (system, event) in batch {
        planner
            .apply(Input::Event {
                system: *system,
                event,
                partition: Some((system.as_str(), 0)),
            })
            .unwrap();
    }
}

impl MemoryState {
    /// Applies one batch and commits its plan; returns the outcomes.
    pub fn apply_batch(
        &mut self,
        mapping: &Mapping,
        batch: &[(System, ChangeEvent)],
    ) -> Vec<Outcome> {
        self.apply_batch_at(mapping, batch, None)
    }

    pub fn apply_batch_at(
        &mut self,
        mapping: &Mapping,
        batch: &[(System, ChangeEvent)],
        clock_floor: Option<Timestamp>,
    ) -> Vec<Outcome> {
        let ownership = self.ownership.clone();
        let mut planner =
            Planner::new(mapping, GRACE, &*self, self.apply.clone()).with_ownership(&ownership);
        plan_events(&mut planner, batch);
        if let Some(floor) = clock_floor {
            planner.advance_clock(floor);
        }
        planner.settle_feeds().unwrap();
        reevaluate_due(&*self, &mut planner);
        let plan = planner.finish();
        self.commit(batch, plan)
    }

    /// Applies a batch of one offset loss and commits its plan.
    pub fn apply_loss(&mut self, mapping: &Mapping, loss: &OffsetLoss) -> Vec<Outcome> {
        let ownership = self.ownership.clone();
        let mut planner =
            Planner::new(mapping, GRACE, &*self, self.apply.clone()).with_ownership(&ownership);
        planner.apply(Input::OffsetsLost(loss)).unwrap();
        let plan = planner.finish();
        self.commit(&[], plan)
    }

    /// What the store does with a plan, in memory.
    pub fn commit(&mut self, batch: &[(System, ChangeEvent)], plan: Plan) -> Vec<Outcome> {
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
        self.references.extend(plan.references);
        self.compensations.extend(plan.compensations);
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

    pub fn status(&self, entity: &str, join_key: &str) -> Option<Status> {
        self.records
            .get(&(entity.to_owned(), join_key.to_owned()))
            .and_then(|row| row.status.status)
    }

    pub fn summary(&self, entity: &str) -> EntitySummary {
        self.apply
            .summaries
            .get(entity)
            .cloned()
            .unwrap_or_default()
    }

    /// Recounts every stored row: what the maintained summaries must equal.
    pub fn recount(&self) -> BTreeMap<String, EntitySummary> {
        let mut summaries: BTreeMap<String, EntitySummary> = BTreeMap::new();
        for ((entity, _), row) in &self.records {
            let summary = summaries.entry(entity.clone()).or_default();
            if let Some(status) = row.status.status {
                summary.by_status[status.index()] += 1;
                if let Some(cause) = row.status.cause {
                    *summary.by_cause.entry(cause).or_default() += 1;
                }
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

pub fn contact_mapping() -> Mapping {
    Mapping::try_new(vec![EntityMapping {
        name: "contact".to_owned(),
        join: JoinSpec {
            source: JoinKeySource::ExternalId,
            target: JoinKeySource::Field("legacy_id".to_owned()),
        },
        fields: vec![
            FieldMapping::exact("Email", "email"),
            FieldMapping::exact("LastName", "lastname"),
        ],
    }])
    .unwrap()
}

/// Minutes after 2026-11-20T08:00:00Z.
pub fn at(minutes: i64) -> Timestamp {
    Timestamp::from_unix_nanos((1_795_161_600 + minutes * 60) * 1_000_000_000)
}

pub fn event(value: Value) -> ChangeEvent {
    serde_json::from_value(value).unwrap()
}

pub fn source_create(
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

pub fn target_create(
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

/// An update of record `L<number>` (source id `L<n>`, target id `T<n>`) carrying `seq`.
pub fn seq_event(
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

pub fn source_snapshot(event_id: &str, number: u32, minute: i64) -> (System, ChangeEvent) {
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

pub fn snapshot_end(event_id: &str, records: u64, minute: i64) -> (System, ChangeEvent) {
    (
        System::Source,
        event(
            json!({"event_id": event_id, "entity": "contact", "op": "snapshot_end",
        "snapshot_id": "run-1", "records": records, "occurred_at": at(minute).to_rfc3339()}),
        ),
    )
}

/// Two records in sync on both sides, then a hole in the source partition while L3 arrives.
pub fn state_with_a_seq_hole(mapping: &Mapping) -> MemoryState {
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
