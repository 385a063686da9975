//! A simulated parallel run of two CRMs, with its own ground truth.
//!
//! The legacy CRM (source) is in front of users; a sync layer copies each change into the new
//! CRM (target), late, and drops or mangles a share of them; users of the fenced target keep
//! writing into it now and then. Both systems emit `tandem.change.v1` events, and the
//! connectors re-deliver some and replay stale ones; a few messages are garbage.
//!
//! The ground truth is computed from the simulator's own model of both systems' final states
//! with its own comparison: it shares no code with the daemon, so a test that compares the
//! daemon's report with it checks the daemon against an independent account.

mod catalog;
mod positions;
mod stream;
mod truth;
mod world;

use std::collections::BTreeMap;

pub use catalog::{
    entities_toml, ownership_toml, SimEntity, SimField, ALLOWED_TARGET_WRITER, ENTITIES,
    LEGACY_ID_FIELD,
};
pub use stream::FaultCounts;
pub use truth::{EntityTruth, GroundTruth, RecordTruth, SuspectedTruth};

/// 2026-11-20T08:00:00Z, the default start of simulated time.
pub const DEFAULT_START_UNIX_SECONDS: i64 = 1_795_161_600;

/// Which CRM a message belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SimSystem {
    /// The legacy CRM.
    Source,
    /// The new CRM.
    Target,
}

impl SimSystem {
    /// `source` or `target`.
    pub fn as_str(self) -> &'static str {
        match self {
            SimSystem::Source => "source",
            SimSystem::Target => "target",
        }
    }
}

/// The shape of a simulated run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Seed of every random choice: the same config gives the same run.
    pub seed: u64,
    /// Records created in the source, per entity name.
    pub records: BTreeMap<&'static str, usize>,
    /// Average number of updates per source record.
    pub updates_per_record: f64,
    /// Share of updates whose events carry only the changed fields.
    pub partial_update_rate: f64,
    /// Share of source changes the sync layer never copies.
    pub sync_drop_rate: f64,
    /// Share of copied field values the sync layer writes wrong.
    pub sync_mangle_rate: f64,
    /// Share of creates the sync layer copies twice (a duplicate in the target).
    pub sync_duplicate_rate: f64,
    /// Share of contact creates the sync layer copies with the source's `LastName` in the
    /// target's `jobtitle` (a column shift: a systematic mapping error).
    pub sync_shift_rate: f64,
    /// Share of deal creates the sync layer copies with the amount in cents (×100).
    pub sync_cents_rate: f64,
    /// Share of company creates the sync layer copies with the employee count as text.
    pub sync_text_number_rate: f64,
    /// Share of deal creates the sync layer copies with the last-activity time's legacy
    /// wall-clock time labelled as UTC (a time-zone shift: a systematic mapping error).
    pub sync_zone_shift_rate: f64,
    /// Share of deal creates the sync layer copies with the source's company id instead of
    /// the target company's (an untranslated reference: a broken reference).
    pub sync_raw_reference_rate: f64,
    /// Share of deal stages set in the source to a stage the mapping does not know yet (an
    /// unmapped value; the sync layer copies it as it is).
    pub source_new_stage_rate: f64,
    /// Share of source records merged into another later (the sync layer does not merge
    /// in the target: a merge on one side only).
    pub source_merge_rate: f64,
    /// Share of synced records whose target record is deleted by a user and created again
    /// under the same native id for another record (an id reuse).
    pub target_reuse_rate: f64,
    /// Share of source records deleted later.
    pub delete_rate: f64,
    /// Share of synced records a target user edits afterwards.
    pub target_edit_rate: f64,
    /// Share of synced records the allowed enrichment integration
    /// ([`ALLOWED_TARGET_WRITER`]) rewrites a field of in the target afterwards: no violation,
    /// but the target no longer holds what the source has (overwritten in the target).
    pub target_enrichment_rate: f64,
    /// Records created directly in the target, with a legacy id the source never had, per
    /// thousand source records.
    pub target_only_per_thousand: f64,
    /// Share of events the connectors deliver twice (same event id).
    pub redelivery_rate: f64,
    /// Share of events re-sent later with their old version under a new event id.
    pub stale_replay_rate: f64,
    /// Garbage messages per thousand events.
    pub poison_per_thousand: f64,
    /// Size of the one oversized message added to the source stream, if any.
    pub oversized_message_bytes: Option<usize>,
    /// Start of simulated time (Unix seconds).
    pub start_unix_seconds: i64,
    /// Length of the simulated period of source activity, in seconds.
    pub duration_seconds: i64,
    /// Longest delay of the sync layer, in seconds.
    pub max_sync_delay_seconds: i64,
    /// The grace period the ground truth is computed with, in seconds.
    pub grace_seconds: i64,
    /// Partitions of each system's topic; the simulator assigns them (by native id).
    pub partitions: i32,
    /// Whether events carry a per-partition `seq`.
    pub emit_seq: bool,
    /// What the transport loses, announces, delays or reorders.
    pub transport: TransportFaults,
}

/// Faults between a connector and the topic: the events tandem never sees, or sees late.
#[derive(Clone, Debug, Default)]
pub struct TransportFaults {
    /// Share of events lost.
    pub drop_rate: f64,
    /// Only this system's events are lost (`None`: both).
    pub drop_system: Option<SimSystem>,
    /// Share of lost events the connector announces with a `gap` event.
    pub gap_instead_rate: f64,
    /// Share of events delivered at the very end of the stream.
    pub delay_rate: f64,
    /// Events are shuffled within consecutive windows of this many (0: in order).
    pub reorder_window: usize,
    /// This system's events all arrive after the other's (its topic lags by the whole run).
    pub lagging: Option<SimSystem>,
}

impl SimConfig {
    /// A small run with every kind of fault: a few thousand records.
    pub fn demo(seed: u64) -> Self {
        SimConfig {
            seed,
            records: BTreeMap::from([("contact", 2_000), ("company", 600), ("deal", 1_000)]),
            updates_per_record: 2.0,
            partial_update_rate: 0.5,
            sync_drop_rate: 0.02,
            sync_mangle_rate: 0.01,
            sync_duplicate_rate: 0.004,
            sync_shift_rate: 0.0,
            sync_cents_rate: 0.0,
            sync_text_number_rate: 0.0,
            sync_zone_shift_rate: 0.0,
            sync_raw_reference_rate: 0.0,
            source_new_stage_rate: 0.0,
            source_merge_rate: 0.0,
            target_reuse_rate: 0.0,
            delete_rate: 0.03,
            target_edit_rate: 0.01,
            target_enrichment_rate: 0.0,
            target_only_per_thousand: 4.0,
            redelivery_rate: 0.01,
            stale_replay_rate: 0.005,
            poison_per_thousand: 1.0,
            oversized_message_bytes: None,
            start_unix_seconds: DEFAULT_START_UNIX_SECONDS,
            duration_seconds: 4 * 3600,
            max_sync_delay_seconds: 30,
            grace_seconds: 300,
            partitions: 4,
            emit_seq: true,
            transport: TransportFaults::default(),
        }
    }

    /// The run `tandem demo` shows: [`SimConfig::demo`] with a sync layer that also makes
    /// systematic mapping errors (the report suspects them), new stages, merges, an
    /// enrichment integration and reused ids.
    pub fn demo_with_every_fault(seed: u64) -> Self {
        let mut config = SimConfig::demo(seed);
        config.sync_shift_rate = 0.2;
        config.sync_cents_rate = 0.2;
        config.sync_zone_shift_rate = 0.2;
        config.sync_raw_reference_rate = 0.1;
        config.source_new_stage_rate = 0.02;
        config.source_merge_rate = 0.02;
        config.target_enrichment_rate = 0.01;
        config.target_reuse_rate = 0.01;
        config
    }

    /// A run of `records` records per entity and the default fault rates.
    pub fn sized(seed: u64, records_per_entity: usize) -> Self {
        let mut config = SimConfig::demo(seed);
        for count in config.records.values_mut() {
            *count = records_per_entity;
        }
        config
    }

    /// The same run without any fault: every record ends in sync (or pending).
    pub fn without_faults(mut self) -> Self {
        self.sync_drop_rate = 0.0;
        self.sync_mangle_rate = 0.0;
        self.sync_duplicate_rate = 0.0;
        self.sync_shift_rate = 0.0;
        self.sync_cents_rate = 0.0;
        self.sync_text_number_rate = 0.0;
        self.sync_zone_shift_rate = 0.0;
        self.sync_raw_reference_rate = 0.0;
        self.source_new_stage_rate = 0.0;
        self.source_merge_rate = 0.0;
        self.target_reuse_rate = 0.0;
        self.target_edit_rate = 0.0;
        self.target_enrichment_rate = 0.0;
        self.target_only_per_thousand = 0.0;
        self.redelivery_rate = 0.0;
        self.stale_replay_rate = 0.0;
        self.poison_per_thousand = 0.0;
        self.oversized_message_bytes = None;
        self.transport = TransportFaults::default();
        self
    }
}

/// One Kafka message of the run.
#[derive(Clone, Debug)]
pub struct SimMessage {
    /// The CRM whose change topic it goes to.
    pub system: SimSystem,
    /// The partition of that topic.
    pub partition: i32,
    /// The message key (the native id): one record's events stay in one partition.
    pub key: String,
    /// The message value.
    pub payload: Vec<u8>,
}

/// A generated run: the messages of both systems in production order, and the truth.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Every message, in the order to produce them.
    pub messages: Vec<SimMessage>,
    /// What a correct reconciliation must report after consuming all of them, with the
    /// clock at the newest event time.
    pub truth: GroundTruth,
    /// The faults the messages carry.
    pub faults: FaultCounts,
    pub(crate) final_states: truth::FinalStates,
    pub(crate) grace_nanos: i64,
    pub(crate) positions: positions::Positions,
    pub(crate) newest_event: i64,
    pub(crate) partitions: i32,
}

/// One row of the reverse delta a correct reconciliation exports, from the simulator's own
/// final states.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeltaTruth {
    /// The entity.
    pub entity: &'static str,
    /// The join key (the target's legacy id).
    pub join_key: String,
    /// The target record's native id.
    pub native_id: String,
    /// Whether it was deleted in the target.
    pub deleted: bool,
    /// Its final fields in the source's names (mapped fields only).
    pub fields: serde_json::Map<String, serde_json::Value>,
    /// The live source records with that key.
    pub other_native_ids: Vec<String>,
    /// Whether the source record changed at or after the time too.
    pub also_changed_in_other: bool,
}

impl Scenario {
    /// The reverse delta of the target since `since_nanos` (event time): every target record
    /// whose last change is at or after it, mapped back into the source's field names.
    pub fn target_delta_since(&self, since_nanos: i64) -> Vec<DeltaTruth> {
        let mut rows = Vec::new();
        for ((entity, native_id), state) in &self.final_states.target {
            if state.last_change < since_nanos {
                continue;
            }
            let Some(join_key) = state
                .fields
                .get(LEGACY_ID_FIELD)
                .and_then(serde_json::Value::as_str)
            else {
                continue;
            };
            let spec = &ENTITIES[*entity];
            // Each field back in the source's terms; one the rules cannot carry back (a stage
            // no map entry sends there, a company with no live source record) is left out.
            let fields = spec
                .fields
                .iter()
                .filter_map(|field| {
                    let value = state.fields.get(field.target)?;
                    let back = if field.is_company_ref() {
                        match value {
                            serde_json::Value::Null => Some(serde_json::Value::Null),
                            serde_json::Value::String(id) => self
                                .final_states
                                .company_key(SimSystem::Target, id)
                                .filter(|key| {
                                    self.final_states
                                        .source
                                        .get(&(catalog::COMPANY, key.clone()))
                                        .is_some_and(|company| !company.deleted)
                                })
                                .map(serde_json::Value::String),
                            _ => None,
                        }
                    } else {
                        field.back_to_source(value)
                    };
                    back.map(|value| (field.source.to_owned(), value))
                })
                .collect();
            let source = self
                .final_states
                .source
                .get(&(*entity, join_key.to_owned()));
            rows.push(DeltaTruth {
                entity: spec.name,
                join_key: join_key.to_owned(),
                native_id: native_id.clone(),
                deleted: state.deleted,
                fields,
                other_native_ids: source
                    .filter(|source| !source.deleted)
                    .map(|_| vec![join_key.to_owned()])
                    .unwrap_or_default(),
                also_changed_in_other: source
                    .is_some_and(|source| source.last_change >= since_nanos),
            });
        }
        rows.sort_by(|left, right| {
            (left.entity, &left.join_key, &left.native_id).cmp(&(
                right.entity,
                &right.join_key,
                &right.native_id,
            ))
        });
        rows
    }

    /// The event time (nanoseconds) of the middle target change: half the changes are at or
    /// after it.
    pub fn median_target_change(&self) -> i64 {
        let mut times: Vec<i64> = self
            .final_states
            .target
            .values()
            .map(|state| state.last_change)
            .collect();
        times.sort_unstable();
        times.get(times.len() / 2).copied().unwrap_or(0)
    }

    /// Whether the systems truly differ on a record once tandem has applied each partition
    /// up to the given next offsets (`None`: unknown entity).
    pub fn differs_at(
        &self,
        entity: &str,
        join_key: &str,
        next_offsets: &BTreeMap<(SimSystem, i32), i64>,
    ) -> Option<bool> {
        self.positions.differs_at(entity, join_key, next_offsets)
    }

    /// From when (event time, Unix nanoseconds) the systems have truly differed on a record
    /// without a break, once the whole run happened (`None`: they agree). Lost events
    /// count: they happened, so only a run that delivers every event lets tandem know it.
    pub fn differing_since(&self, entity: &str, join_key: &str) -> Option<i64> {
        self.positions.differing_since(entity, join_key)
    }

    /// What a connector answers to a re-read request: each record as its system holds it
    /// now, a full image (or a delete, if it is gone), read at `read_at` (Unix nanoseconds).
    pub fn reread_answer(
        &self,
        system: SimSystem,
        entity: &str,
        native_ids: &[String],
        read_at: i64,
        event_prefix: &str,
    ) -> Vec<SimMessage> {
        positions::read_records(
            &self.final_states,
            system,
            entity,
            Some(native_ids),
            read_at,
            event_prefix,
            self.partitions,
        )
    }

    /// What a connector sends for a snapshot request: every live record of the entity,
    /// then the end of the run with its count.
    pub fn snapshot_run(
        &self,
        system: SimSystem,
        entity: &str,
        snapshot_id: &str,
        read_at: i64,
    ) -> Vec<SimMessage> {
        let images = positions::read_records(
            &self.final_states,
            system,
            entity,
            None,
            read_at,
            snapshot_id,
            self.partitions,
        );
        positions::as_snapshot_run(
            images,
            system,
            entity,
            snapshot_id,
            read_at,
            self.partitions,
        )
    }

    /// Every join key of the run, per entity (source ids and target legacy ids).
    pub fn join_keys(&self) -> Vec<(&'static str, String)> {
        let mut keys: Vec<(&'static str, String)> = self
            .final_states
            .source
            .keys()
            .map(|(entity, id)| (ENTITIES[*entity].name, id.clone()))
            .chain(
                self.final_states
                    .target
                    .iter()
                    .filter_map(
                        |((entity, _), state)| match state.fields.get(LEGACY_ID_FIELD) {
                            Some(serde_json::Value::String(key)) => {
                                Some((ENTITIES[*entity].name, key.clone()))
                            }
                            _ => None,
                        },
                    ),
            )
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// The newest event time of the run (Unix nanoseconds): answers are read after it.
    pub fn newest_event_unix_nanos(&self) -> i64 {
        self.newest_event
    }

    /// The truth with the reconciliation clock at `clock_unix_nanos` instead (a daemon whose
    /// clock moved on while idle); counts of events are the same.
    pub fn truth_at(&self, clock_unix_nanos: i64) -> GroundTruth {
        let mut truth =
            GroundTruth::compute(&self.final_states, clock_unix_nanos, self.grace_nanos);
        truth.events_applied = self.truth.events_applied.clone();
        truth.duplicates_dropped = self.truth.duplicates_dropped.clone();
        truth.stale_versions = self.truth.stale_versions.clone();
        truth.dead_lettered = self.truth.dead_lettered.clone();
        truth
    }
}

/// Generates a run.
pub fn generate(config: &SimConfig) -> Scenario {
    world::World::run(config)
}
