//! The ground truth: the status every record must have, computed from the simulator's model of
//! both CRMs' final states with the simulator's own comparison.
//!
//! The rules, written down independently of the daemon: a record is a join key (the source id,
//! which the target keeps in `legacy_id`). No live record on either side: not counted. More
//! than one live target record: `duplicate`. One side only: `missing_in_target` /
//! `missing_in_source`. Both: every mapped field must agree by its rule (absent counts as
//! null): the same JSON value, the source's stage through the stage map (a stage with no entry
//! never agrees), the same instant for times, and references to companies joined under the
//! same key (an id tandem never saw resolves to nothing and never agrees); else `mismatch`
//! with the differing target fields. Anything but in sync or
//! duplicate is `pending` while the newest change to any of the key's records (deletes
//! included) is younger than the grace period at the clock, the newest event time.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::catalog::{
    instant, Judgement, SimField, ALLOWED_TARGET_WRITER, COMPANY, ENTITIES, LEGACY_ID_FIELD,
};
use crate::SimSystem;

/// One record of one CRM in the simulator's model.
#[derive(Clone, Debug)]
pub(crate) struct SideState {
    pub(crate) fields: Map<String, Value>,
    pub(crate) deleted: bool,
    pub(crate) version: u64,
    pub(crate) last_change: i64,
    /// The writer of the latest change, `kind:id` (`user:crm-user`, `sync:sync-layer`, ...).
    pub(crate) last_actor: String,
    /// Created again under this native id for another record, after a delete.
    pub(crate) reused: bool,
    /// Per field: when its value last changed and who changed it (`kind:id`).
    pub(crate) field_set: BTreeMap<String, (i64, String)>,
    /// The fields as of the latest emitted change, to tell which ones the next one changes.
    pub(crate) emitted_fields: Map<String, Value>,
}

impl SideState {
    pub(crate) fn new(fields: Map<String, Value>) -> Self {
        SideState {
            fields,
            deleted: false,
            version: 0,
            last_change: i64::MIN,
            last_actor: String::new(),
            reused: false,
            field_set: BTreeMap::new(),
            emitted_fields: Map::new(),
        }
    }

    /// Notes the fields whose values a change at `at` by `actor` set (absent counts as null).
    pub(crate) fn note_field_changes(&mut self, at: i64, actor: &str) {
        let names: Vec<String> = self
            .fields
            .keys()
            .chain(self.emitted_fields.keys())
            .cloned()
            .collect();
        for name in names {
            let now = self.fields.get(&name).unwrap_or(&Value::Null);
            let before = self.emitted_fields.get(&name).unwrap_or(&Value::Null);
            if now != before || !self.field_set.contains_key(&name) {
                self.field_set.insert(name, (at, actor.to_owned()));
            }
        }
        self.emitted_fields = self.fields.clone();
    }

    /// When field `name`'s value was set, and by whom (never: the earliest time, nobody).
    fn field_set(&self, name: &str) -> (i64, &str) {
        self.field_set
            .get(name)
            .map_or((i64::MIN, ""), |(at, actor)| (*at, actor.as_str()))
    }
}

/// The expected state of one record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordTruth {
    /// The expected status name.
    pub status: &'static str,
    /// The differing target fields, sorted (for a mismatch, or a pending record that differs).
    pub fields: Vec<String>,
    /// Why it diverges (schemas/causes.md), from the simulator's record of who wrote what.
    pub cause: &'static str,
}

/// The expected counts of one entity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EntityTruth {
    /// Records counted.
    pub records: u64,
    /// Records per status name (every status present).
    pub by_status: BTreeMap<&'static str, u64>,
    /// Mismatched records per differing target field.
    pub mismatched_fields: BTreeMap<String, u64>,
    /// Every counted record that is not in sync, by join key.
    pub not_in_sync: BTreeMap<String, RecordTruth>,
    /// Records that are not in sync, per cause.
    pub by_cause: BTreeMap<&'static str, u64>,
}

/// What a correct reconciliation reports after consuming the whole run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroundTruth {
    /// The reconciliation clock: the newest event time, in nanoseconds.
    pub clock_unix_nanos: i64,
    /// Per entity.
    pub entities: BTreeMap<&'static str, EntityTruth>,
    /// Distinct events per system (`source`, `target`).
    pub events_applied: BTreeMap<&'static str, u64>,
    /// Re-deliveries per system.
    pub duplicates_dropped: BTreeMap<&'static str, u64>,
    /// Stale replays per system.
    pub stale_versions: BTreeMap<&'static str, u64>,
    /// Garbage messages per expected dead-letter reason.
    pub dead_lettered: BTreeMap<&'static str, u64>,
    /// The patterns at least half of a field's mismatches share (schemas: suspected mapping
    /// errors), per entity and target field.
    pub suspected_mapping_errors: Vec<SuspectedTruth>,
}

/// A systematic mapping error a correct reconciliation suspects.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SuspectedTruth {
    /// The entity.
    pub entity: &'static str,
    /// The target field.
    pub field: &'static str,
    /// `column_shift:<source field>`, `scaled:<factor>`, `time_shift:<±HH:MM>`,
    /// `number_as_text`, `case_or_spaces` or `untranslated_reference`.
    pub pattern: String,
    /// Mismatches of the field that follow it.
    pub matching: u64,
    /// Mismatches of the field.
    pub examined: u64,
}

/// Every status a report lists. `unverified` is about what tandem can know, not about the
/// systems: with every change delivered, no record is unverified.
const STATUSES: [&str; 7] = [
    "in_sync",
    "pending",
    "mismatch",
    "missing_in_target",
    "missing_in_source",
    "duplicate",
    "unverified",
];

/// Both CRMs' records at the end of the run, by (entity index, native id).
#[derive(Clone, Debug, Default)]
pub(crate) struct FinalStates {
    pub(crate) source: BTreeMap<(usize, String), SideState>,
    pub(crate) target: BTreeMap<(usize, String), SideState>,
}

impl FinalStates {
    /// The join key of a company by system and native id, as tandem's join index has it once
    /// it has seen the company (deleted ones included): the source id, or the target's
    /// legacy id. `None`: no such company.
    pub(crate) fn company_key(&self, system: SimSystem, id: &str) -> Option<String> {
        match system {
            SimSystem::Source => self
                .source
                .contains_key(&(COMPANY, id.to_owned()))
                .then(|| id.to_owned()),
            SimSystem::Target => self
                .target
                .get(&(COMPANY, id.to_owned()))?
                .fields
                .get(LEGACY_ID_FIELD)?
                .as_str()
                .map(str::to_owned),
        }
    }
}

impl GroundTruth {
    pub(crate) fn compute(states: &FinalStates, clock: i64, grace: i64) -> GroundTruth {
        let (source, target) = (&states.source, &states.target);
        let resolve = |system: SimSystem, id: &str| states.company_key(system, id);
        let mut truth = GroundTruth {
            clock_unix_nanos: clock,
            ..GroundTruth::default()
        };
        for (entity_index, entity) in ENTITIES.iter().enumerate() {
            // Every native record, grouped by join key.
            let mut keys: BTreeMap<String, (Vec<&SideState>, Vec<&SideState>)> = BTreeMap::new();
            for ((index, id), state) in source {
                if *index == entity_index {
                    keys.entry(id.clone()).or_default().0.push(state);
                }
            }
            for ((index, _), state) in target {
                if *index != entity_index {
                    continue;
                }
                let key = match state.fields.get(LEGACY_ID_FIELD) {
                    Some(Value::String(key)) => key.clone(),
                    other => {
                        panic!("simulated target records always carry a legacy id, got {other:?}")
                    }
                };
                keys.entry(key).or_default().1.push(state);
            }
            let mut entity_truth = EntityTruth {
                by_status: STATUSES.iter().map(|status| (*status, 0)).collect(),
                ..EntityTruth::default()
            };
            // Per target field, the patterns of each of its mismatches.
            let mut field_patterns: BTreeMap<&'static str, Vec<Vec<String>>> = BTreeMap::new();
            // The records the sync layer wrote wrong values into, with the patterns they follow.
            let mut wrong_values: Vec<(String, Vec<(&'static str, String)>)> = Vec::new();
            let suspected_before = truth.suspected_mapping_errors.len();
            for (key, (sources, targets)) in keys {
                let live_sources: Vec<_> = sources.iter().filter(|state| !state.deleted).collect();
                let live_targets: Vec<_> = targets.iter().filter(|state| !state.deleted).collect();
                let mut differing = Vec::new();
                let (mut unmapped, mut broken_reference) = (false, false);
                let underlying = match (live_sources.len(), live_targets.len()) {
                    (0, 0) => continue,
                    (_, targets) if targets > 1 => "duplicate",
                    (sources, _) if sources > 1 => "duplicate",
                    (1, 0) => "missing_in_target",
                    (0, 1) => "missing_in_source",
                    _ => {
                        for field in entity.fields {
                            let source_value = live_sources[0]
                                .fields
                                .get(field.source)
                                .unwrap_or(&Value::Null);
                            let target_value = live_targets[0]
                                .fields
                                .get(field.target)
                                .unwrap_or(&Value::Null);
                            match field.judge(source_value, target_value, &resolve) {
                                Judgement::Equal => continue,
                                Judgement::Differs => {}
                                Judgement::Unmapped => unmapped = true,
                            }
                            broken_reference |= field.is_company_ref();
                            differing.push(field.target.to_owned());
                        }
                        if differing.is_empty() {
                            "in_sync"
                        } else {
                            "mismatch"
                        }
                    }
                };
                let newest_change = sources
                    .iter()
                    .chain(&targets)
                    .map(|state| state.last_change)
                    .max()
                    .unwrap_or(i64::MIN);
                let status = match underlying {
                    "in_sync" | "duplicate" => underlying,
                    _ if clock < newest_change.saturating_add(grace) => "pending",
                    _ => underlying,
                };
                entity_truth.records += 1;
                *entity_truth
                    .by_status
                    .get_mut(status)
                    .expect("every status is listed") += 1;
                if status == "mismatch" {
                    for field in &differing {
                        *entity_truth
                            .mismatched_fields
                            .entry(field.clone())
                            .or_default() += 1;
                    }
                    for field in entity.fields {
                        if differing.iter().any(|name| name == field.target) {
                            field_patterns
                                .entry(field.target)
                                .or_default()
                                .push(patterns_of(
                                    field,
                                    &live_sources[0].fields,
                                    live_targets[0].fields.get(field.target),
                                ));
                        }
                    }
                }
                if status != "in_sync" {
                    differing.sort();
                    // Each differing field's own cause, when both sides are live.
                    let field_causes: Vec<(&SimField, &'static str)> =
                        match (live_sources.first(), live_targets.first()) {
                            (Some(source), Some(target)) => entity
                                .fields
                                .iter()
                                .filter(|field| differing.iter().any(|name| name == field.target))
                                .map(|field| (field, field_cause(field, source, target)))
                                .collect(),
                            _ => Vec::new(),
                        };
                    let cause = match cause_of(status, &sources, &targets) {
                        "mismatch" if unmapped => "unmapped_value",
                        "mismatch" if broken_reference => "broken_reference",
                        "mismatch" => mismatch_cause(&field_causes),
                        cause => cause,
                    };
                    if cause == "sync_wrote_wrong_value" {
                        let mut followed = Vec::new();
                        for (field, _) in field_causes
                            .iter()
                            .filter(|(_, cause)| *cause == "sync_wrote_wrong_value")
                        {
                            for pattern in patterns_of(
                                field,
                                &live_sources[0].fields,
                                live_targets[0].fields.get(field.target),
                            ) {
                                followed.push((field.target, pattern));
                            }
                        }
                        wrong_values.push((key.clone(), followed));
                    }
                    *entity_truth.by_cause.entry(cause).or_default() += 1;
                    entity_truth.not_in_sync.insert(
                        key,
                        RecordTruth {
                            status,
                            fields: differing,
                            cause,
                        },
                    );
                }
            }
            for (field, mismatches) in field_patterns {
                let examined = mismatches.len() as u64;
                if examined < 3 {
                    continue;
                }
                let mut counts: BTreeMap<String, u64> = BTreeMap::new();
                for pattern in mismatches.into_iter().flatten() {
                    *counts.entry(pattern).or_default() += 1;
                }
                for (pattern, matching) in counts {
                    if matching * 2 >= examined {
                        truth.suspected_mapping_errors.push(SuspectedTruth {
                            entity: entity.name,
                            field,
                            pattern,
                            matching,
                            examined,
                        });
                    }
                }
            }
            // A wrong value that follows a suspected mapping error of its field is that error.
            let suspected = &truth.suspected_mapping_errors[suspected_before..];
            for (key, followed) in wrong_values {
                let systematic = followed.iter().any(|(field, pattern)| {
                    suspected
                        .iter()
                        .any(|error| error.field == *field && error.pattern == *pattern)
                });
                if !systematic {
                    continue;
                }
                let record = entity_truth
                    .not_in_sync
                    .get_mut(&key)
                    .expect("the record was listed above");
                record.cause = "mapping_error";
                *entity_truth
                    .by_cause
                    .get_mut("sync_wrote_wrong_value")
                    .expect("the record was counted above") -= 1;
                *entity_truth.by_cause.entry("mapping_error").or_default() += 1;
            }
            entity_truth.by_cause.retain(|_, count| *count > 0);
            truth.entities.insert(entity.name, entity_truth);
        }
        truth
    }
}

/// Why a record that is not in sync diverges, by the documented rules (schemas/causes.md)
/// applied to the simulator's own model. The simulated configuration ([`crate::ownership_toml`])
/// has the source own every entity, so a write into the target by anyone but the sync layer
/// and the allowed enrichment integration breaks the rule.
fn cause_of(status: &str, sources: &[&SideState], targets: &[&SideState]) -> &'static str {
    let live_source = sources.iter().find(|state| !state.deleted);
    let live_target = targets.iter().find(|state| !state.deleted);
    match status {
        "pending" => return "lag",
        "duplicate" => return "duplicate",
        _ => {}
    }
    if live_target.is_some_and(|target| target.reused) {
        return "id_reused";
    }
    let allowed = format!("{}:{}", ALLOWED_TARGET_WRITER.0, ALLOWED_TARGET_WRITER.1);
    let fenced_write = live_target
        .is_some_and(|target| !sync_or_repair(&target.last_actor) && target.last_actor != allowed);
    if fenced_write {
        return "non_owner_write";
    }
    match (status, live_source, live_target) {
        ("missing_in_target", _, _) if targets.iter().any(|state| state.deleted) => {
            "deleted_in_target_only"
        }
        ("missing_in_target", _, _) => "missed_change",
        ("missing_in_source", _, _) if sources.iter().any(|state| state.deleted) => {
            "deleted_in_source_only"
        }
        ("missing_in_source", _, _) => "created_in_target_only",
        // The field rules decide first (the caller knows them).
        ("mismatch", Some(_), Some(_)) => "mismatch",
        _ => "unknown",
    }
}

/// Whether a writer (`kind:id`) is the sync layer or a repair job.
fn sync_or_repair(actor: &str) -> bool {
    matches!(actor.split(':').next(), Some("sync" | "repair"))
}

/// A mismatch no field rule explains, by what the differing fields' histories say
/// ([`field_cause`]), the most telling first: a field overwritten in the target, a change the
/// target missed, a wrong value written by the sync layer, else unknown.
fn mismatch_cause(field_causes: &[(&SimField, &'static str)]) -> &'static str {
    [
        "overwritten_in_target",
        "missed_change",
        "sync_wrote_wrong_value",
    ]
    .into_iter()
    .find(|cause| field_causes.iter().any(|(_, found)| found == cause))
    .unwrap_or("unknown")
}

/// Why one field differs, from who set each side's value when: the target's value was set by
/// a writer other than the sync layer or a repair job no earlier than the source's
/// (overwritten in the target); the source's value was set after the target's (a change the
/// target missed: the sync layer dropped it, or has not copied it); the sync layer set the
/// target's value after the source's (so it wrote something other than what the source held:
/// a mangled value, or an older one copied late); else unknown.
fn field_cause(field: &SimField, source: &SideState, target: &SideState) -> &'static str {
    let (source_at, _) = source.field_set(field.source);
    let (target_at, writer) = target.field_set(field.target);
    if !writer.is_empty() && !sync_or_repair(writer) && target_at >= source_at {
        "overwritten_in_target"
    } else if source_at > target_at {
        "missed_change"
    } else if writer.starts_with("sync:") {
        "sync_wrote_wrong_value"
    } else {
        "unknown"
    }
}

/// The documented patterns one mismatch follows, against what the field's rule expects
/// (the source's value, or its stage through the map: a stage with no entry follows none):
/// the target holds another source field's value (compared without surrounding spaces), the
/// expected number times 100, 1000, 0.01 or 0.001, the expected time shifted by a whole
/// quarter hour up to 14 hours, the expected number as text, or the expected text in another
/// case or with other surrounding spaces. A reference follows one only: it holds the source's
/// own id (compared without surrounding spaces).
fn patterns_of(field: &SimField, source: &Map<String, Value>, held: Option<&Value>) -> Vec<String> {
    let mut found = Vec::new();
    let Some(held) = held.filter(|held| !held.is_null()) else {
        return found;
    };
    let text = |value: &Value| match value {
        Value::String(text) => Some(text.trim().to_owned()),
        _ => None,
    };
    let own = source.get(field.source).unwrap_or(&Value::Null);
    if field.is_company_ref() {
        if text(own).is_some() && text(own) == text(held) {
            found.push("untranslated_reference".to_owned());
        }
        return found;
    }
    let Some(expected) = field.expected(own) else {
        return found;
    };
    for (name, value) in source {
        let same = match (value, held) {
            (Value::String(_), Value::String(_)) => text(value) == text(held),
            (value, held) => value == held,
        };
        if name != field.source && !value.is_null() && same {
            found.push(format!("column_shift:{name}"));
        }
    }
    if let (Some(want), Some(have)) = (expected.as_f64(), held.as_f64()) {
        for (factor, name) in [
            (100.0, "100"),
            (1000.0, "1000"),
            (0.01, "0.01"),
            (0.001, "0.001"),
        ] {
            if want != 0.0
                && want != have
                && (want * factor - have).abs() < 1e-9 * have.abs().max(1.0)
            {
                found.push(format!("scaled:{name}"));
            }
        }
    }
    if let (Some(want), Some(have)) = (instant(&expected), instant(held)) {
        let shift = have - want;
        if shift != 0 && shift % 900 == 0 && shift.abs() <= 14 * 3600 {
            let minutes = shift.abs() / 60;
            let sign = if shift > 0 { '+' } else { '-' };
            found.push(format!(
                "time_shift:{sign}{:02}:{:02}",
                minutes / 60,
                minutes % 60
            ));
        }
    }
    if let (Some(want), Value::String(have)) = (expected.as_f64(), held) {
        if have.trim().parse::<f64>() == Ok(want) {
            found.push("number_as_text".to_owned());
        }
    }
    if let (Value::String(want), Value::String(have)) = (&expected, held) {
        if want.trim().to_lowercase() == have.trim().to_lowercase() {
            found.push("case_or_spaces".to_owned());
        }
    }
    found
}
