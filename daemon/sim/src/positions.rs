//! The truth at a position, and the connectors' answers to tandem's requests.
//!
//! While tandem consumes, its view is only as far as the offsets it has applied. To judge a
//! record it reports `in_sync`, the simulator replays, per record, every event the systems
//! really emitted up to the `seq` those offsets correspond to (lost ones included: they
//! happened) and compares with its own rules.

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Map, Value};

use crate::catalog::{Judgement, COMPANY, ENTITIES, LEGACY_ID_FIELD};
use crate::truth::{FinalStates, SideState};
use crate::world::{partition_of, rfc3339, Emitted};
use crate::{SimMessage, SimSystem};

/// Per record, the true states after each event, and per partition, which `seq` each
/// offset holds.
#[derive(Clone, Debug, Default)]
pub(crate) struct Positions {
    timelines: HashMap<(SimSystem, usize, String), Vec<(u64, SideState)>>,
    offsets: BTreeMap<(SimSystem, i32), Vec<Option<u64>>>,
    /// Target native ids per (entity, legacy id), for every legacy id a target record ever
    /// had (a reused id moves it under another one).
    targets_of: HashMap<(usize, String), Vec<String>>,
    partitions: i32,
}

impl Positions {
    pub(crate) fn new(
        emitted: &[Emitted],
        offsets: BTreeMap<(SimSystem, i32), Vec<Option<u64>>>,
        states: &FinalStates,
        partitions: i32,
    ) -> Self {
        let mut timelines: HashMap<(SimSystem, usize, String), Vec<(u64, SideState)>> =
            HashMap::new();
        for event in emitted {
            timelines
                .entry((event.system, event.entity, event.native_id.clone()))
                .or_default()
                .push((event.seq, event.state.clone()));
        }
        let mut targets_of: HashMap<(usize, String), Vec<String>> = HashMap::new();
        let every_state = emitted
            .iter()
            .filter(|event| event.system == SimSystem::Target)
            .map(|event| ((event.entity, &event.native_id), &event.state))
            .chain(
                states
                    .target
                    .iter()
                    .map(|((entity, native_id), state)| ((*entity, native_id), state)),
            );
        for ((entity, native_id), state) in every_state {
            if let Some(Value::String(legacy)) = state.fields.get(LEGACY_ID_FIELD) {
                let ids = targets_of.entry((entity, legacy.clone())).or_default();
                if !ids.contains(native_id) {
                    ids.push(native_id.clone());
                }
            }
        }
        Positions {
            timelines,
            offsets,
            targets_of,
            partitions,
        }
    }

    /// The highest `seq` among the first `next_offset` messages of a partition.
    fn applied_seq(&self, system: SimSystem, partition: i32, next_offset: i64) -> Option<u64> {
        let messages = self.offsets.get(&(system, partition))?;
        let applied = usize::try_from(next_offset.max(0))
            .unwrap_or(0)
            .min(messages.len());
        messages[..applied].iter().flatten().copied().max()
    }

    /// The true state of a native record once its partition is applied up to `next_offset`.
    fn state_at(
        &self,
        system: SimSystem,
        entity: usize,
        native_id: &str,
        next_offset: i64,
    ) -> Option<&SideState> {
        let partition = partition_of(native_id, self.partitions);
        let applied = self.applied_seq(system, partition, next_offset)?;
        self.timelines
            .get(&(system, entity, native_id.to_owned()))?
            .iter()
            .take_while(|(seq, _)| *seq <= applied)
            .last()
            .map(|(_, state)| state)
    }

    /// Whether the two systems truly differ on a record at the given positions (next offset
    /// per system and partition; a partition absent has applied nothing).
    pub(crate) fn differs_at(
        &self,
        entity_name: &str,
        join_key: &str,
        next_offsets: &BTreeMap<(SimSystem, i32), i64>,
    ) -> Option<bool> {
        let entity = entity_index(entity_name)?;
        let at = |system: SimSystem, entity: usize, native_id: &str| {
            let offset = next_offsets
                .get(&(system, partition_of(native_id, self.partitions)))
                .copied()
                .unwrap_or(0);
            self.state_at(system, entity, native_id, offset)
        };
        Some(self.differs_with(entity, join_key, &at, &at))
    }

    /// From when (event time, nanoseconds) the two systems have differed on a record without
    /// a break, once every event is applied (`None`: they agree, or an unknown entity).
    /// References resolve as they do at the end. The state of each native record at a time
    /// is the one its latest event up to then left, lost events included: they happened.
    pub(crate) fn differing_since(&self, entity_name: &str, join_key: &str) -> Option<i64> {
        let entity = entity_index(entity_name)?;
        let timeline = |system: SimSystem, native_id: &str| {
            self.timelines
                .get(&(system, entity, native_id.to_owned()))
                .map(Vec::as_slice)
                .unwrap_or_default()
        };
        let native_ids = std::iter::once((SimSystem::Source, join_key.to_owned())).chain(
            self.targets_of
                .get(&(entity, join_key.to_owned()))
                .into_iter()
                .flatten()
                .map(|id| (SimSystem::Target, id.clone())),
        );
        let mut times: Vec<i64> = native_ids
            .flat_map(|(system, id)| {
                timeline(system, &id)
                    .iter()
                    .map(|(_, state)| state.last_change)
            })
            .collect();
        times.sort_unstable_by(|left, right| right.cmp(left));
        times.dedup();
        let finally = |system: SimSystem, entity: usize, native_id: &str| {
            self.state_at(system, entity, native_id, i64::MAX)
        };
        let differs_then = |time: i64| {
            let then = |system: SimSystem, entity: usize, native_id: &str| {
                let states = self
                    .timelines
                    .get(&(system, entity, native_id.to_owned()))?;
                states
                    .iter()
                    .rev()
                    .find(|(_, state)| state.last_change <= time)
                    .map(|(_, state)| state)
            };
            self.differs_with(entity, join_key, &then, &finally)
        };
        let (&newest, older) = times.split_first()?;
        if !differs_then(newest) {
            return None;
        }
        let mut since = newest;
        for &time in older {
            if !differs_then(time) {
                break;
            }
            since = time;
        }
        Some(since)
    }

    /// Whether the systems differ on a record when each native record is in the state
    /// `state_of` gives (`None`: not there yet), with references resolved through the
    /// states `resolve_in` gives.
    fn differs_with<'s>(
        &'s self,
        entity: usize,
        join_key: &str,
        state_of: &dyn Fn(SimSystem, usize, &str) -> Option<&'s SideState>,
        resolve_in: &dyn Fn(SimSystem, usize, &str) -> Option<&'s SideState>,
    ) -> bool {
        let live = |system: SimSystem, native_id: &str| {
            state_of(system, entity, native_id).filter(|state| !state.deleted)
        };
        let sources: Vec<&SideState> = live(SimSystem::Source, join_key).into_iter().collect();
        // The target records under this key then (one may have moved under another key
        // since, or only later).
        let targets: Vec<&SideState> = self
            .targets_of
            .get(&(entity, join_key.to_owned()))
            .into_iter()
            .flatten()
            .filter_map(|native_id| live(SimSystem::Target, native_id))
            .filter(|state| {
                state.fields.get(LEGACY_ID_FIELD).and_then(Value::as_str) == Some(join_key)
            })
            .collect();
        // A company as tandem's join index has it: known once any of its events is
        // applied, deleted or not.
        let resolve = |system: SimSystem, id: &str| {
            let state = resolve_in(system, COMPANY, id)?;
            match system {
                SimSystem::Source => Some(id.to_owned()),
                SimSystem::Target => state
                    .fields
                    .get(LEGACY_ID_FIELD)?
                    .as_str()
                    .map(str::to_owned),
            }
        };
        match (sources.as_slice(), targets.as_slice()) {
            ([source], [target]) => ENTITIES[entity].fields.iter().any(|field| {
                !matches!(
                    field.judge(
                        source.fields.get(field.source).unwrap_or(&Value::Null),
                        target.fields.get(field.target).unwrap_or(&Value::Null),
                        &resolve,
                    ),
                    Judgement::Equal
                )
            }),
            ([], []) => false,
            _ => true,
        }
    }
}

fn entity_index(entity_name: &str) -> Option<usize> {
    ENTITIES
        .iter()
        .position(|candidate| candidate.name == entity_name)
}

/// Full images of records as a connector reads them from its system now.
pub(crate) fn read_records(
    states: &FinalStates,
    system: SimSystem,
    entity_name: &str,
    native_ids: Option<&[String]>,
    read_at: i64,
    event_prefix: &str,
    partitions: i32,
) -> Vec<SimMessage> {
    let Some(entity) = ENTITIES
        .iter()
        .position(|candidate| candidate.name == entity_name)
    else {
        return Vec::new();
    };
    let records = match system {
        SimSystem::Source => &states.source,
        SimSystem::Target => &states.target,
    };
    let chosen: Vec<(&String, &SideState)> = match native_ids {
        Some(ids) => ids
            .iter()
            .filter_map(|id| {
                records
                    .get_key_value(&(entity, id.clone()))
                    .map(|((_, id), state)| (id, state))
            })
            .collect(),
        None => records
            .iter()
            .filter(|((record_entity, _), state)| *record_entity == entity && !state.deleted)
            .map(|((_, id), state)| (id, state))
            .collect(),
    };
    chosen
        .into_iter()
        .enumerate()
        .map(|(index, (native_id, state))| {
            let mut body = json!({
                "event_id": format!("{event_prefix}-{index}"),
                "entity": entity_name,
                "id": native_id,
                "occurred_at": rfc3339(read_at),
                "version": state.version,
            });
            if state.deleted {
                body["op"] = json!("delete");
                body["occurred_at"] = json!(rfc3339(state.last_change));
            } else {
                body["op"] = json!("snapshot");
                body["fields"] = Value::Object(state.fields.clone());
            }
            if system == SimSystem::Source {
                body["external_id"] = json!(native_id);
            }
            SimMessage {
                system,
                partition: partition_of(native_id, partitions),
                key: native_id.clone(),
                payload: serde_json::to_vec(&body).expect("JSON values encode"),
            }
        })
        .collect()
}

/// Adds a snapshot id to images and appends the end of the run (also for an empty entity:
/// the end with `records: 0` is what completes it).
pub(crate) fn as_snapshot_run(
    mut images: Vec<SimMessage>,
    system: SimSystem,
    entity_name: &str,
    snapshot_id: &str,
    ended_at: i64,
    partitions: i32,
) -> Vec<SimMessage> {
    for image in &mut images {
        let mut body: Map<String, Value> =
            serde_json::from_slice(&image.payload).expect("images are JSON objects");
        body.insert("snapshot_id".to_owned(), json!(snapshot_id));
        image.payload = serde_json::to_vec(&body).expect("JSON values encode");
    }
    let end = json!({"event_id": format!("{snapshot_id}-end"), "entity": entity_name, "op": "snapshot_end",
        "snapshot_id": snapshot_id, "records": images.len(), "occurred_at": rfc3339(ended_at)});
    images.push(SimMessage {
        system,
        partition: partition_of(entity_name, partitions),
        key: entity_name.to_owned(),
        payload: serde_json::to_vec(&end).expect("JSON values encode"),
    });
    images
}
