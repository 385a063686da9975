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

use crate::catalog::{
    in_utc, wall_clock_as_utc, SimEntity, SimField, ALLOWED_TARGET_WRITER, COMPANY, ENTITIES,
    LEGACY_ID_FIELD, NEW_STAGE,
};
use crate::truth::{FinalStates, GroundTruth, SideState};
use crate::{Scenario, SimConfig, SimSystem};

pub(crate) const NANOS: i64 = 1_000_000_000;

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
        by: (&'static str, &'static str),
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
    SourceMerge {
        entity: usize,
        id: String,
    },
    TargetReuse {
        entity: usize,
        source_id: String,
        serial: u64,
    },
}

/// One event emitted by a system's connector, with the record's true state after it.
pub(crate) struct Emitted {
    pub(crate) system: SimSystem,
    pub(crate) entity: usize,
    pub(crate) native_id: String,
    pub(crate) occurred_at: i64,
    pub(crate) partition: i32,
    pub(crate) seq: u64,
    pub(crate) body: Value,
    pub(crate) state: SideState,
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
    /// The next `seq` of each connector stream (system and partition).
    next_seq: std::collections::HashMap<(SimSystem, i32), u64>,
    /// Source companies by creation time, for deals to point at.
    companies: Vec<(i64, String)>,
}

/// The partition a record's events go to: a stable hash of its native id.
pub(crate) fn partition_of(key: &str, partitions: i32) -> i32 {
    // FNV-1a: stable across runs and platforms, unlike the standard library's hasher.
    let mut hash: u32 = 0x811c_9dc5;
    for byte in key.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    (hash % partitions.max(1) as u32) as i32
}

pub(crate) fn rfc3339(nanos: i64) -> String {
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
            next_seq: std::collections::HashMap::new(),
            companies: Vec::new(),
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
        state.last_actor = format!("{}:{}", actor.0, actor.1);
        if fields.is_some() {
            let writer = state.last_actor.clone();
            state.note_field_changes(at, &writer);
        }
        let version = state.version;
        let state_after = state.clone();
        let partition = partition_of(native_id, self.config.partitions);
        let seq = self.next_seq.entry((system, partition)).or_insert(0);
        *seq += 1;
        let seq = *seq;
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
        if self.config.emit_seq {
            body["seq"] = json!(seq);
        }
        self.emitted.push(Emitted {
            system,
            entity,
            native_id: native_id.to_owned(),
            occurred_at: at,
            partition,
            seq,
            body,
            state: state_after,
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
            Action::TargetEdit {
                entity,
                source_id,
                by,
            } => self.target_edit(at, entity, source_id, by),
            Action::SourceMerge { entity, id } => self.source_merge(at, entity, id),
            Action::TargetReuse {
                entity,
                source_id,
                serial,
            } => self.target_reuse(at, entity, source_id, serial),
            Action::TargetOnlyCreate { entity, serial } => {
                let target_id = self.new_target_id();
                let mut fields = Map::new();
                for field in ENTITIES[entity].fields {
                    fields.insert(
                        field.target.to_owned(),
                        field.target_value(&mut self.rng, serial),
                    );
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
                // Systematic mapping errors of the sync layer, when the run has them.
                let name = ENTITIES[entity].name;
                if name == "contact"
                    && self.config.sync_shift_rate > 0.0
                    && self.rng.random_bool(self.config.sync_shift_rate)
                {
                    if let Some(last_name) = image.get("LastName") {
                        fields.insert("jobtitle".to_owned(), last_name.clone());
                    }
                }
                if name == "company"
                    && self.config.sync_text_number_rate > 0.0
                    && self.rng.random_bool(self.config.sync_text_number_rate)
                {
                    if let Some(count) = image.get("NumberOfEmployees").and_then(Value::as_i64) {
                        fields.insert("numberofemployees".to_owned(), json!(count.to_string()));
                    }
                }
                if name == "deal"
                    && self.config.sync_cents_rate > 0.0
                    && self.rng.random_bool(self.config.sync_cents_rate)
                {
                    if let Some(amount) = image.get("Amount").and_then(Value::as_i64) {
                        fields.insert("amount".to_owned(), json!(amount * 100));
                    }
                }
                if name == "deal"
                    && self.config.sync_zone_shift_rate > 0.0
                    && self.rng.random_bool(self.config.sync_zone_shift_rate)
                {
                    if let Some(time) = image.get("LastActivityDate") {
                        fields.insert("notes_last_updated".to_owned(), wall_clock_as_utc(time));
                    }
                }
                if name == "deal"
                    && self.config.sync_raw_reference_rate > 0.0
                    && self.rng.random_bool(self.config.sync_raw_reference_rate)
                {
                    if let Some(company) = image.get("AccountId").filter(|id| !id.is_null()) {
                        fields.insert("associatedcompany".to_owned(), company.clone());
                    }
                }
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
                    self.translate(field, value)
                };
                copied.insert(field.target.to_owned(), written);
            }
        }
        copied
    }

    /// The sync layer's own translation of a value into the target's terms: stages through
    /// its stage table (one it does not know is copied as it is), times into UTC, a company
    /// id into the id of the target company it created for it (none: null).
    fn translate(&self, field: &SimField, value: &Value) -> Value {
        if field.is_stage() {
            return field.expected(value).unwrap_or_else(|| value.clone());
        }
        if field.is_company_ref() {
            return match value.as_str() {
                Some(company) => self
                    .live_links(COMPANY, company)
                    .into_iter()
                    .next()
                    .map_or(Value::Null, Value::String),
                None => Value::Null,
            };
        }
        if field.target == "notes_last_updated" {
            return in_utc(value);
        }
        value.clone()
    }

    /// A value a source user writes: a company that exists (created long enough ago for the
    /// sync layer to have copied it), a stage the mapping may not know yet.
    fn source_value(&mut self, field: &SimField, serial: u64, at: i64) -> Value {
        if field.is_company_ref() {
            let settled = at - self.config.max_sync_delay_seconds * NANOS * 3;
            let old_enough = self
                .companies
                .partition_point(|(created, _)| *created <= settled);
            if old_enough == 0 {
                return Value::Null;
            }
            let (_, company) = &self.companies[self.rng.random_range(0..old_enough)];
            let live = self
                .source
                .get(&(COMPANY, company.clone()))
                .is_some_and(|state| !state.deleted);
            return if live { json!(company) } else { Value::Null };
        }
        if field.is_stage()
            && self.config.source_new_stage_rate > 0.0
            && self.rng.random_bool(self.config.source_new_stage_rate)
        {
            return json!(NEW_STAGE);
        }
        field.value(&mut self.rng, serial)
    }

    fn source_create(&mut self, at: i64, entity: usize, serial: u64) {
        let id = format!("{}-{serial:06}", id_prefix(&ENTITIES[entity]));
        let mut image = Map::new();
        for field in ENTITIES[entity].fields {
            let value = self.source_value(field, serial, at);
            image.insert(field.source.to_owned(), value);
        }
        if entity == COMPANY {
            self.companies.push((at, id.clone()));
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
        // Target-side actions come once the sync layer has surely copied the create.
        let synced = at + self.config.max_sync_delay_seconds * NANOS * 3;
        let edit_target = |world: &mut Self, by| {
            let when = world.random_time(synced, end + NANOS);
            let source_id = id.clone();
            world.schedule(
                when,
                Action::TargetEdit {
                    entity,
                    source_id,
                    by,
                },
            );
        };
        if self.rng.random_bool(self.config.target_edit_rate) {
            edit_target(self, ("user", "target-user"));
        }
        if self.config.target_enrichment_rate > 0.0
            && self.rng.random_bool(self.config.target_enrichment_rate)
        {
            edit_target(self, ALLOWED_TARGET_WRITER);
        }
        if self.config.target_reuse_rate > 0.0
            && self.rng.random_bool(self.config.target_reuse_rate)
        {
            let when = self.random_time(synced, end + NANOS);
            let source_id = id.clone();
            self.schedule(
                when,
                Action::TargetReuse {
                    entity,
                    source_id,
                    serial,
                },
            );
        }
        if self.rng.random_bool(self.config.delete_rate) {
            let when = self.random_time(last + NANOS, end + 2 * NANOS);
            self.schedule(when, Action::SourceDelete { entity, id });
        } else if self.config.source_merge_rate > 0.0
            && self.rng.random_bool(self.config.source_merge_rate)
        {
            let when = self.random_time(last + NANOS, end + 2 * NANOS);
            self.schedule(when, Action::SourceMerge { entity, id });
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
            let value = self.source_value(field, serial, at);
            changes.insert(field.source.to_owned(), value);
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

    /// The source merges a record into the entity's first record; the sync layer does not
    /// merge in the target.
    fn source_merge(&mut self, at: i64, entity: usize, id: String) {
        let Some(state) = self.source.get_mut(&(entity, id.clone())) else {
            return;
        };
        if state.deleted {
            return;
        }
        state.deleted = true;
        self.emit(
            SimSystem::Source,
            (entity, &id),
            "merge",
            at,
            None,
            ("user", "crm-user"),
        );
        if let Some(emitted) = self.emitted.last_mut() {
            emitted.body["merged_into"] =
                json!(format!("{}-{:06}", id_prefix(&ENTITIES[entity]), 1));
        }
    }

    /// A target user deletes a synced record and creates another record under the same
    /// native id, for a key the source does not have.
    fn target_reuse(&mut self, at: i64, entity: usize, source_id: String, serial: u64) {
        let Some(target_id) = self.live_links(entity, &source_id).into_iter().next() else {
            return;
        };
        self.target
            .get_mut(&(entity, target_id.clone()))
            .expect("linked records exist")
            .deleted = true;
        self.emit(
            SimSystem::Target,
            (entity, &target_id),
            "delete",
            at,
            None,
            ("user", "target-user"),
        );
        if let Some(links) = self.links.get_mut(&(entity, source_id)) {
            links.retain(|linked| *linked != target_id);
        }
        let state = self
            .target
            .get_mut(&(entity, target_id.clone()))
            .expect("linked records exist");
        state.deleted = false;
        state.reused = true;
        state.fields.insert(
            LEGACY_ID_FIELD.to_owned(),
            json!(format!("X-R-{serial:06}")),
        );
        let image = state.fields.clone();
        self.emit(
            SimSystem::Target,
            (entity, &target_id),
            "create",
            at,
            Some((image, false)),
            ("user", "target-user"),
        );
    }

    /// A writer in the target (a user, or the allowed integration) changes one field of a
    /// synced record.
    fn target_edit(
        &mut self,
        at: i64,
        entity: usize,
        source_id: String,
        by: (&'static str, &'static str),
    ) {
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
            by,
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
        let built = crate::stream::build(self.config, &self.emitted, &mut self.rng);
        truth.events_applied = built.counts.events_applied.clone();
        truth.duplicates_dropped = built.counts.duplicates_dropped.clone();
        truth.stale_versions = built.counts.stale_versions.clone();
        truth.dead_lettered = built.counts.dead_lettered.clone();
        Scenario {
            messages: built.messages,
            truth,
            faults: built.faults,
            positions: crate::positions::Positions::new(
                &self.emitted,
                built.offsets,
                &final_states,
                self.config.partitions,
            ),
            final_states,
            grace_nanos,
            newest_event,
            partitions: self.config.partitions,
        }
    }
}
