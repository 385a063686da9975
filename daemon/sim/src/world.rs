//! The simulation: a timeline of user actions in the source, the sync layer's delayed copies
//! into the target, target users writing where they should not, and the connectors' faults.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::catalog::{SimEntity, ENTITIES, LEGACY_ID_FIELD};
use crate::truth::{FinalStates, GroundTruth, SideState};
use crate::{Scenario, SimConfig, SimMessage, SimSystem};

const NANOS: i64 = 1_000_000_000;

/// A message before it becomes a [`SimMessage`]: system, key, payload.
type Message = (SimSystem, String, Vec<u8>);

enum Action {
    SourceCreate {
        entity: usize,
        serial: u64,
    },
    SourceUpdate {
        entity: usize,
        id: String,
    },
    SourceDelete {
        entity: usize,
        id: String,
    },
    TargetEdit {
        entity: usize,
        source_id: String,
    },
    TargetOnlyCreate {
        entity: usize,
        serial: u64,
    },
    SyncCreate {
        entity: usize,
        source_id: String,
        image: Map<String, Value>,
    },
    SyncUpdate {
        entity: usize,
        source_id: String,
        changes: Map<String, Value>,
        full: bool,
    },
    SyncDelete {
        entity: usize,
        source_id: String,
    },
}

/// One event emitted by a system's connector.
struct Emitted {
    system: SimSystem,
    entity: usize,
    native_id: String,
    occurred_at: i64,
    body: Value,
}

pub(crate) struct World<'a> {
    config: &'a SimConfig,
    rng: ChaCha8Rng,
    queue: BinaryHeap<Reverse<(i64, u64)>>,
    actions: BTreeMap<u64, Action>,
    next_action: u64,
    source: BTreeMap<(usize, String), SideState>,
    target: BTreeMap<(usize, String), SideState>,
    /// The sync layer's own map: source record to the target records it created.
    links: BTreeMap<(usize, String), Vec<String>>,
    emitted: Vec<Emitted>,
    next_target_id: u64,
    next_event_id: u64,
}

fn rfc3339(nanos: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos))
        .expect("simulated times are within the supported range")
        .format(&Rfc3339)
        .expect("a UTC time formats as RFC 3339")
}

fn id_prefix(entity: &SimEntity) -> &'static str {
    match entity.name {
        "contact" => "C",
        "company" => "A",
        _ => "O",
    }
}

impl<'a> World<'a> {
    pub(crate) fn run(config: &'a SimConfig) -> Scenario {
        let mut world = World {
            config,
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            queue: BinaryHeap::new(),
            actions: BTreeMap::new(),
            next_action: 0,
            source: BTreeMap::new(),
            target: BTreeMap::new(),
            links: BTreeMap::new(),
            emitted: Vec::new(),
            next_target_id: 5_000_000,
            next_event_id: 0,
        };
        world.schedule_users();
        while let Some(Reverse((at, key))) = world.queue.pop() {
            let action = world
                .actions
                .remove(&key)
                .expect("every queued key has an action");
            world.perform(at, action);
        }
        world.into_scenario()
    }

    fn start(&self) -> i64 {
        self.config.start_unix_seconds * NANOS
    }

    fn schedule(&mut self, at: i64, action: Action) {
        let key = self.next_action;
        self.next_action += 1;
        self.actions.insert(key, action);
        self.queue.push(Reverse((at, key)));
    }

    fn random_time(&mut self, from: i64, to: i64) -> i64 {
        if to <= from {
            return from;
        }
        self.rng.random_range(from..to)
    }

    /// The sync layer copies a source change after a delay, unless it drops it; returns when.
    fn sync_later(&mut self, at: i64, copy: Action) -> Option<i64> {
        if self.rng.random_bool(self.config.sync_drop_rate) {
            return None;
        }
        let when = at + self.sync_delay();
        self.schedule(when, copy);
        Some(when)
    }

    fn sync_delay(&mut self) -> i64 {
        self.rng
            .random_range(NANOS..=self.config.max_sync_delay_seconds.max(1) * NANOS)
    }

    fn schedule_users(&mut self) {
        let end = self.start() + self.config.duration_seconds * NANOS;
        let mut serial = 0;
        let mut total = 0usize;
        for (entity_index, entity) in ENTITIES.iter().enumerate() {
            let count = self.config.records.get(entity.name).copied().unwrap_or(0);
            total += count;
            for _ in 0..count {
                serial += 1;
                let created =
                    self.random_time(self.start(), self.start() + (end - self.start()) * 85 / 100);
                self.schedule(
                    created,
                    Action::SourceCreate {
                        entity: entity_index,
                        serial,
                    },
                );
            }
        }
        let target_only =
            (total as f64 * self.config.target_only_per_thousand / 1000.0).round() as u64;
        for _ in 0..target_only {
            serial += 1;
            let entity = self.rng.random_range(0..ENTITIES.len());
            let at = self.random_time(self.start(), end);
            self.schedule(at, Action::TargetOnlyCreate { entity, serial });
        }
    }

    /// Records a change of `record` (entity index, native id) as an event of its system;
    /// `fields` is the written image and whether it is partial.
    fn emit(
        &mut self,
        system: SimSystem,
        record: (usize, &str),
        op: &str,
        at: i64,
        fields: Option<(Map<String, Value>, bool)>,
        actor: (&str, &str),
    ) {
        let (entity, native_id) = record;
        let state = match system {
            SimSystem::Source => &mut self.source,
            SimSystem::Target => &mut self.target,
        }
        .get_mut(&(entity, native_id.to_owned()))
        .expect("a record exists before its event is emitted");
        state.version += 1;
        state.last_change = state.last_change.max(at);
        let version = state.version;
        self.next_event_id += 1;
        let mut body = json!({
            "event_id": format!("{}-{:016x}-{}", system.as_str(), self.rng.random::<u64>(), self.next_event_id),
            "entity": ENTITIES[entity].name,
            "id": native_id,
            "op": op,
            "occurred_at": rfc3339(at),
            "version": version,
            "actor": {"kind": actor.0, "id": actor.1},
        });
        if system == SimSystem::Source {
            body["external_id"] = json!(native_id);
        }
        if let Some((fields, partial)) = fields {
            body["fields"] = Value::Object(fields);
            body["partial"] = json!(partial);
        }
        self.emitted.push(Emitted {
            system,
            entity,
            native_id: native_id.to_owned(),
            occurred_at: at,
            body,
        });
    }

    fn perform(&mut self, at: i64, action: Action) {
        match action {
            Action::SourceCreate { entity, serial } => self.source_create(at, entity, serial),
            Action::SourceUpdate { entity, id } => self.source_update(at, entity, id),
            Action::SourceDelete { entity, id } => {
                let Some(state) = self.source.get_mut(&(entity, id.clone())) else {
                    return;
                };
                state.deleted = true;
                self.emit(
                    SimSystem::Source,
                    (entity, &id),
                    "delete",
                    at,
                    None,
                    ("user", "crm-user"),
                );
                self.sync_later(
                    at,
                    Action::SyncDelete {
                        entity,
                        source_id: id,
                    },
                );
            }
            Action::TargetEdit { entity, source_id } => self.target_edit(at, entity, source_id),
            Action::TargetOnlyCreate { entity, serial } => {
                let target_id = self.new_target_id();
                let mut fields = Map::new();
                for field in ENTITIES[entity].fields {
                    fields.insert(field.target.to_owned(), field.value(&mut self.rng, serial));
                }
                fields.insert(LEGACY_ID_FIELD.to_owned(), json!(format!("X-{serial:06}")));
                self.target
                    .insert((entity, target_id.clone()), SideState::new(fields.clone()));
                self.emit(
                    SimSystem::Target,
                    (entity, &target_id),
                    "create",
                    at,
                    Some((fields, false)),
                    ("integration", "webform"),
                );
            }
            Action::SyncCreate {
                entity,
                source_id,
                image,
            } => {
                let target_id = self.new_target_id();
                let mut fields = self.sync_copy(entity, &image);
                fields.insert(LEGACY_ID_FIELD.to_owned(), json!(source_id));
                self.target
                    .insert((entity, target_id.clone()), SideState::new(fields.clone()));
                self.links
                    .entry((entity, source_id))
                    .or_default()
                    .push(target_id.clone());
                self.emit(
                    SimSystem::Target,
                    (entity, &target_id),
                    "create",
                    at,
                    Some((fields, false)),
                    ("sync", "sync-layer"),
                );
            }
            Action::SyncUpdate {
                entity,
                source_id,
                changes,
                full,
            } => {
                for target_id in self.live_links(entity, &source_id) {
                    let copied = self.sync_copy(entity, &changes);
                    let state = self
                        .target
                        .get_mut(&(entity, target_id.clone()))
                        .expect("linked records exist");
                    let written = if full {
                        let legacy = state
                            .fields
                            .get(LEGACY_ID_FIELD)
                            .cloned()
                            .unwrap_or(Value::Null);
                        state.fields = copied;
                        state.fields.insert(LEGACY_ID_FIELD.to_owned(), legacy);
                        state.fields.clone()
                    } else {
                        for (name, value) in &copied {
                            state.fields.insert(name.clone(), value.clone());
                        }
                        copied
                    };
                    self.emit(
                        SimSystem::Target,
                        (entity, &target_id),
                        "update",
                        at,
                        Some((written, !full)),
                        ("sync", "sync-layer"),
                    );
                }
            }
            Action::SyncDelete { entity, source_id } => {
                for target_id in self.live_links(entity, &source_id) {
                    if let Some(state) = self.target.get_mut(&(entity, target_id.clone())) {
                        state.deleted = true;
                    }
                    self.emit(
                        SimSystem::Target,
                        (entity, &target_id),
                        "delete",
                        at,
                        None,
                        ("sync", "sync-layer"),
                    );
                }
            }
        }
    }

    fn new_target_id(&mut self) -> String {
        self.next_target_id += 1;
        self.next_target_id.to_string()
    }

    fn live_links(&self, entity: usize, source_id: &str) -> Vec<String> {
        self.links
            .get(&(entity, source_id.to_owned()))
            .map(|ids| {
                ids.iter()
                    .filter(|id| {
                        self.target
                            .get(&(entity, (*id).clone()))
                            .is_some_and(|state| !state.deleted)
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The sync layer's copy of source values into target field names, mangling a share.
    fn sync_copy(
        &mut self,
        entity: usize,
        source_values: &Map<String, Value>,
    ) -> Map<String, Value> {
        let mut copied = Map::new();
        for field in ENTITIES[entity].fields {
            if let Some(value) = source_values.get(field.source) {
                let written = if self.rng.random_bool(self.config.sync_mangle_rate) {
                    field.mangle(value)
                } else {
                    value.clone()
                };
                copied.insert(field.target.to_owned(), written);
            }
        }
        copied
    }

    fn source_create(&mut self, at: i64, entity: usize, serial: u64) {
        let id = format!("{}-{serial:06}", id_prefix(&ENTITIES[entity]));
        let mut image = Map::new();
        for field in ENTITIES[entity].fields {
            image.insert(field.source.to_owned(), field.value(&mut self.rng, serial));
        }
        self.source
            .insert((entity, id.clone()), SideState::new(image.clone()));
        self.emit(
            SimSystem::Source,
            (entity, &id),
            "create",
            at,
            Some((image.clone(), false)),
            ("user", "crm-user"),
        );
        let copy = Action::SyncCreate {
            entity,
            source_id: id.clone(),
            image: image.clone(),
        };
        if let Some(copied_at) = self.sync_later(at, copy) {
            if self.rng.random_bool(self.config.sync_duplicate_rate) {
                let second = self.sync_delay();
                self.schedule(
                    copied_at + second,
                    Action::SyncCreate {
                        entity,
                        source_id: id.clone(),
                        image,
                    },
                );
            }
        }
        let end = self.start() + self.config.duration_seconds * NANOS;
        let max_updates = (self.config.updates_per_record * 2.0).round() as u64;
        let updates = self.rng.random_range(0..=max_updates);
        let mut last = at;
        for _ in 0..updates {
            let when = self.random_time(at + NANOS, end);
            last = last.max(when);
            self.schedule(
                when,
                Action::SourceUpdate {
                    entity,
                    id: id.clone(),
                },
            );
        }
        if self.rng.random_bool(self.config.target_edit_rate) {
            let when = self.random_time(
                at + self.config.max_sync_delay_seconds * NANOS * 3,
                end + NANOS,
            );
            self.schedule(
                when,
                Action::TargetEdit {
                    entity,
                    source_id: id.clone(),
                },
            );
        }
        if self.rng.random_bool(self.config.delete_rate) {
            let when = self.random_time(last + NANOS, end + 2 * NANOS);
            self.schedule(when, Action::SourceDelete { entity, id });
        }
    }

    fn source_update(&mut self, at: i64, entity: usize, id: String) {
        let Some(state) = self.source.get(&(entity, id.clone())) else {
            return;
        };
        if state.deleted {
            return;
        }
        let fields = ENTITIES[entity].fields;
        let changed_count = self.rng.random_range(1..=2);
        let mut changes = Map::new();
        let serial = self.next_event_id;
        for field in fields.choose_multiple(&mut self.rng, changed_count) {
            changes.insert(field.source.to_owned(), field.value(&mut self.rng, serial));
        }
        let state = self
            .source
            .get_mut(&(entity, id.clone()))
            .expect("checked above");
        for (name, value) in &changes {
            state.fields.insert(name.clone(), value.clone());
        }
        let image = state.fields.clone();
        let partial = self.rng.random_bool(self.config.partial_update_rate);
        let sent = if partial {
            changes.clone()
        } else {
            image.clone()
        };
        self.emit(
            SimSystem::Source,
            (entity, &id),
            "update",
            at,
            Some((sent, partial)),
            ("user", "crm-user"),
        );
        let (copied, full) = if partial {
            (changes, false)
        } else {
            (image, true)
        };
        self.sync_later(
            at,
            Action::SyncUpdate {
                entity,
                source_id: id,
                changes: copied,
                full,
            },
        );
    }

    fn target_edit(&mut self, at: i64, entity: usize, source_id: String) {
        let Some(target_id) = self.live_links(entity, &source_id).into_iter().next() else {
            return;
        };
        let field = *ENTITIES[entity]
            .fields
            .choose(&mut self.rng)
            .expect("entities have fields");
        let state = self
            .target
            .get_mut(&(entity, target_id.clone()))
            .expect("linked records exist");
        let current = state
            .fields
            .get(field.target)
            .cloned()
            .unwrap_or(Value::Null);
        let edited = field.mangle(&current);
        state.fields.insert(field.target.to_owned(), edited.clone());
        let mut changes = Map::new();
        changes.insert(field.target.to_owned(), edited);
        self.emit(
            SimSystem::Target,
            (entity, &target_id),
            "update",
            at,
            Some((changes, true)),
            ("user", "target-user"),
        );
    }

    fn into_scenario(mut self) -> Scenario {
        let final_states = FinalStates {
            source: std::mem::take(&mut self.source),
            target: std::mem::take(&mut self.target),
        };
        let grace_nanos = self.config.grace_seconds * NANOS;
        let newest_event = self
            .emitted
            .iter()
            .map(|event| event.occurred_at)
            .max()
            .unwrap_or(0);
        let mut truth = GroundTruth::compute(&final_states, newest_event, grace_nanos);
        for event in &self.emitted {
            *truth
                .events_applied
                .entry(event.system.as_str())
                .or_default() += 1;
        }
        let stream: Vec<Message> = self
            .emitted
            .iter()
            .map(|event| {
                (
                    event.system,
                    event.native_id.clone(),
                    serde_json::to_vec(&event.body).expect("JSON values encode"),
                )
            })
            .collect();
        let mut next_of_record: Vec<Option<usize>> = vec![None; self.emitted.len()];
        let mut later: std::collections::HashMap<(SimSystem, usize, &str), usize> =
            std::collections::HashMap::new();
        for (index, event) in self.emitted.iter().enumerate().rev() {
            next_of_record[index] = later.insert(
                (event.system, event.entity, event.native_id.as_str()),
                index,
            );
        }
        let mut inserts: Vec<(usize, Message)> = Vec::new();
        for (index, event) in self.emitted.iter().enumerate() {
            if self.rng.random_bool(self.config.redelivery_rate) {
                let position = index + 1 + self.rng.random_range(0..50);
                inserts.push((position, stream[index].clone()));
                *truth
                    .duplicates_dropped
                    .entry(event.system.as_str())
                    .or_default() += 1;
            }
            if self.rng.random_bool(self.config.stale_replay_rate) {
                // Versions grow with each event of a record, so its next event is newer.
                let newer = next_of_record[index].map(|next| next - index - 1);
                if let Some(offset) = newer {
                    let mut stale = event.body.clone();
                    stale["event_id"] = json!(format!("{}-replay-{index}", event.system.as_str()));
                    let position = index + offset + 2 + self.rng.random_range(0..20);
                    inserts.push((
                        position,
                        (
                            event.system,
                            event.native_id.clone(),
                            serde_json::to_vec(&stale).expect("JSON values encode"),
                        ),
                    ));
                    *truth
                        .events_applied
                        .entry(event.system.as_str())
                        .or_default() += 1;
                    *truth
                        .stale_versions
                        .entry(event.system.as_str())
                        .or_default() += 1;
                }
            }
        }
        let poison_count =
            (self.emitted.len() as f64 * self.config.poison_per_thousand / 1000.0).round() as usize;
        let poison_kinds: [(&str, &[u8]); 6] = [
            ("invalid_json", b"{\"event_id\": \"broken"),
            ("schema_violation", b"{\"event_id\":\"p\",\"entity\":\"contact\",\"id\":\"C-1\",\"occurred_at\":\"2026-11-20T08:00:00Z\"}"),
            ("schema_violation", b"{\"event_id\":\"p\",\"entity\":\"contact\",\"id\":\"C-1\",\"op\":\"upsert\",\"occurred_at\":\"2026-11-20T08:00:00Z\"}"),
            ("invalid_utf8", b"{\"event_id\": \"\xff\xfe\"}"),
            ("empty", b""),
            ("schema_violation", b"[1, 2, 3]"),
        ];
        for number in 0..poison_count {
            let (reason, payload) = poison_kinds[number % poison_kinds.len()];
            let system = if self.rng.random_bool(0.5) {
                SimSystem::Source
            } else {
                SimSystem::Target
            };
            let position = self.rng.random_range(0..=stream.len());
            inserts.push((
                position,
                (system, format!("poison-{number}"), payload.to_vec()),
            ));
            *truth.dead_lettered.entry(reason).or_default() += 1;
        }
        if let Some(size) = self.config.oversized_message_bytes {
            let padding = "x".repeat(size);
            let payload = json!({"event_id": "oversized", "entity": "contact", "id": "C-big", "op": "create",
                "occurred_at": rfc3339(self.start()), "fields": {"Notes": padding}});
            inserts.push((
                stream.len(),
                (
                    SimSystem::Source,
                    "C-big".to_owned(),
                    serde_json::to_vec(&payload).expect("JSON values encode"),
                ),
            ));
            *truth.dead_lettered.entry("too_large").or_default() += 1;
        }
        // Merge the inserts in: each goes before the original message at its position
        // (after all of them if past the end); ties keep their order.
        inserts.sort_by_key(|(position, _)| *position);
        let mut merged = Vec::with_capacity(stream.len() + inserts.len());
        let mut pending = inserts.into_iter().peekable();
        for (index, message) in stream.into_iter().enumerate() {
            while let Some((_, insert)) = pending.next_if(|(position, _)| *position <= index) {
                merged.push(insert);
            }
            merged.push(message);
        }
        merged.extend(pending.map(|(_, insert)| insert));
        let stream = merged;
        Scenario {
            messages: stream
                .into_iter()
                .map(|(system, key, payload)| SimMessage {
                    system,
                    key,
                    payload,
                })
                .collect(),
            truth,
            final_states,
            grace_nanos,
        }
    }
}
