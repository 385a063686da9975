//! The wire types of the API: what `/v1/report`, `/v1/divergences` and `/v1/records` return.
//!
//! They are (de)serializable so that the CLI reads exactly what the daemon writes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tandem_core::feed::SnapshotStatus;
use tandem_core::ownership::ViolationKind;
use tandem_core::record::{Cause, Unverified};
use tandem_core::summary::SystemCounters;
use tandem_core::{
    ApplyState, DeadLetterReason, EntitySummary, Fields, Mapping, SideRecord, Status, System,
    Timestamp,
};
use tandem_ingest::{IngestSnapshot, Reevaluation};

/// `GET /v1/report`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Wall-clock time the report was made.
    pub generated_at: Timestamp,
    /// The reconciliation clock (event time) the statuses were evaluated at.
    pub clock: Option<Timestamp>,
    /// The grace period, in seconds.
    pub grace_seconds: u64,
    /// Per configured entity.
    pub entities: BTreeMap<String, EntityReport>,
    /// Every entity together.
    pub totals: Totals,
    /// Consumption per system.
    pub ingest: IngestReport,
    /// Completeness of the feeds: holes, snapshots, re-reads.
    pub feed: FeedReport,
    /// Set while stored records are evaluated again (an entity's rules changed, or it was
    /// asked for): the statuses are a mix of old and new rules until it finishes.
    #[serde(default)]
    pub reevaluation: Option<Reevaluation>,
    /// The latest re-evaluation that finished since the daemon started.
    #[serde(default)]
    pub last_reevaluation: Option<Reevaluation>,
    /// Patterns most mismatches of a field share (the target holds another source field,
    /// amounts scaled by 100, times shifted by a zone offset, ...), per entity and field,
    /// from a sample of up to 2,000 mismatches per field (in `GET /v1/report` only).
    #[serde(default)]
    pub suspected_mapping_errors: Vec<tandem_core::patterns::SuspectedMappingError>,
}

/// What tandem knows about lost events and how they are being healed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeedReport {
    /// The source's feed.
    pub source: SystemFeed,
    /// The target's feed.
    pub target: SystemFeed,
    /// Native records waiting to be read again.
    pub rereads_outstanding: u64,
    /// Since when (event time) the longest-waiting one waits.
    pub oldest_reread_since: Option<Timestamp>,
}

/// One system's feed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SystemFeed {
    /// Partitions where `seq` jumped: events known to be lost.
    pub holes: Vec<Hole>,
    /// Offsets the broker no longer had when tandem came to read them (retention,
    /// `DeleteRecords`, a re-created topic), oldest first.
    #[serde(default)]
    pub lost_offsets: Vec<LostOffsets>,
    /// Entities that need a full snapshot, with since when.
    pub needs_snapshot: BTreeMap<String, Timestamp>,
    /// Snapshot runs per entity.
    pub snapshots: BTreeMap<String, SnapshotStatus>,
    /// Source transactions being counted against their announced events.
    #[serde(default)]
    pub transactions_open: u64,
    /// Source transactions found short of their announced events (events lost).
    #[serde(default)]
    pub transactions_incomplete: u64,
}

/// A partition whose `seq` jumped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hole {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Events known to be missing, in total.
    pub missing: u64,
    /// Since when a hole is open; null once a snapshot healed it.
    pub open_since: Option<Timestamp>,
}

/// A range of a partition's offsets tandem never read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostOffsets {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// First offset not read.
    pub first_offset: i64,
    /// Last offset not read (inclusive).
    pub last_offset: i64,
    /// Offsets in the range (messages lost, at most); null for a re-created topic, where it is
    /// unknown.
    pub count: Option<u64>,
    /// `deleted_before_read`, `deleted_before_first_read` or `topic_recreated`.
    pub kind: String,
    /// When tandem found out.
    pub since: Timestamp,
    /// When a complete snapshot of the system healed it; null while open.
    pub healed_at: Option<Timestamp>,
}

/// Counts of one entity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EntityReport {
    /// Records counted (both sides considered; deleted on both sides not counted).
    pub records: u64,
    /// Records per status; every status is present.
    pub by_status: BTreeMap<Status, u64>,
    /// in_sync / records (1.0 when there are no records).
    pub parity: f64,
    /// Mismatched records per differing target field.
    pub mismatched_fields: BTreeMap<String, u64>,
    /// When the oldest current divergence began (pending excluded).
    pub oldest_divergence_at: Option<Timestamp>,
    /// Divergent records (pending included) per cause.
    #[serde(default)]
    pub by_cause: BTreeMap<Cause, u64>,
    /// The sync layer's wrong values per set of patterns they follow (not on the wire: the
    /// report answer turns those following a suspected mapping error into `mapping_error`).
    #[serde(skip)]
    pub wrong_value_patterns: BTreeMap<String, u64>,
    /// Target fields marked critical: their mismatches block a cutover.
    #[serde(default)]
    pub critical_fields: Vec<String>,
    /// Target fields whose rule loses information on the way back to the source (a joined
    /// list, a value map sending several values to one).
    #[serde(default)]
    pub lossy_fields: Vec<String>,
}

/// Counts over every entity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    /// Records counted.
    pub records: u64,
    /// Records per status.
    pub by_status: BTreeMap<Status, u64>,
    /// in_sync / records.
    pub parity: f64,
    /// Records in a divergent status (pending excluded).
    pub divergent: u64,
}

/// Consumption of one system.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SystemIngest {
    /// The configured label.
    pub label: String,
    /// Distinct events recorded.
    pub events_applied: u64,
    /// Re-deliveries dropped.
    pub duplicates_dropped: u64,
    /// Events older than the stored version (logged, not applied).
    pub stale_versions: u64,
    /// Messages of this system sent to the dead-letter topic.
    pub dead_lettered: u64,
    /// Messages read that carry nothing to apply (Debezium tombstones, transaction markers).
    #[serde(default)]
    pub messages_skipped: u64,
    /// Writes into this system that broke the ownership rule, per kind.
    #[serde(default)]
    pub violations: BTreeMap<ViolationKind, u64>,
    /// Events of entities the configuration does not map, per entity.
    pub unmapped_entities: BTreeMap<String, u64>,
    /// Sum over assigned partitions of (high watermark − next offset); null while unknown.
    pub lag: Option<i64>,
    /// Wall-clock time of the last batch that applied events of this system.
    pub last_applied_at: Option<Timestamp>,
}

/// Consumption of both systems and the daemon's freshness.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IngestReport {
    /// The source.
    pub source: SystemIngest,
    /// The target.
    pub target: SystemIngest,
    /// Messages sent to the dead-letter topic.
    pub dead_lettered: u64,
    /// Dead letters per reason.
    pub dead_lettered_by_reason: BTreeMap<DeadLetterReason, u64>,
    /// Partitions assigned to this instance.
    pub assigned_partitions: usize,
    /// Whether every assigned partition is fully applied.
    pub caught_up: bool,
    /// Whether a Kafka broker is reachable.
    pub broker_reachable: bool,
    /// Since when no broker is reachable: the report is stale from then on.
    pub broker_unreachable_since: Option<Timestamp>,
    /// Set when ingestion stopped for good, with the reason.
    pub stopped: Option<String>,
    /// Set while ingestion is paused (disk nearly full), with the reason.
    pub paused: Option<String>,
    /// Partitions whose ingestion is stopped until an operator resets them.
    #[serde(default)]
    pub stopped_partitions: Vec<StoppedPartitionReport>,
    /// What the broker refuses tandem, by subject (`topic <name>`, `group <id>`), with what
    /// to do.
    #[serde(default)]
    pub kafka_problems: BTreeMap<String, String>,
}

/// A partition whose stored position lies beyond the broker's log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoppedPartitionReport {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The next offset the store holds.
    pub stored_next_offset: i64,
    /// The broker's high watermark.
    pub high_watermark: i64,
    /// Since when (wall clock).
    pub since: Timestamp,
    /// What happened and what to do.
    pub reason: String,
}

/// What the report reads from one store snapshot.
#[derive(Clone, Debug, Default)]
pub struct StoredFacts {
    /// Clock, counters, summaries, feed state.
    pub state: ApplyState,
    /// Per entity, when its oldest current divergence began.
    pub oldest_divergence: BTreeMap<String, Option<Timestamp>>,
    /// Since when the longest-waiting re-read waits.
    pub oldest_reread_since: Option<Timestamp>,
}

/// Builds the report from a store snapshot's facts and the live ingest state.
pub fn build_report(
    mapping: &Mapping,
    labels: &BTreeMap<System, String>,
    grace_seconds: u64,
    stored: &StoredFacts,
    ingest: &IngestSnapshot,
    generated_at: Timestamp,
) -> Report {
    let state = &stored.state;
    let empty = EntitySummary::default();
    let mut entities = BTreeMap::new();
    let mut total_by_status = [0u64; Status::COUNT];
    for entity in mapping.entities() {
        let summary = state.summaries.get(&entity.name).unwrap_or(&empty);
        for status in Status::ALL {
            total_by_status[status.index()] += summary.count(status);
        }
        entities.insert(
            entity.name.clone(),
            EntityReport {
                records: summary.records(),
                by_status: by_status(&summary.by_status),
                parity: summary.parity(),
                mismatched_fields: summary.mismatched_fields.clone(),
                oldest_divergence_at: stored
                    .oldest_divergence
                    .get(&entity.name)
                    .copied()
                    .flatten(),
                by_cause: summary.by_cause.clone(),
                wrong_value_patterns: summary.wrong_value_patterns.clone(),
                critical_fields: entity
                    .fields
                    .iter()
                    .filter(|field| field.critical)
                    .map(|field| field.target.clone())
                    .collect(),
                lossy_fields: entity
                    .fields
                    .iter()
                    .filter(|field| field.is_lossy())
                    .map(|field| field.target.clone())
                    .collect(),
            },
        );
    }
    let total_summary = EntitySummary {
        by_status: total_by_status,
        ..EntitySummary::default()
    };
    let divergent = Status::ALL
        .into_iter()
        .filter(|status| status.is_divergence())
        .map(|status| total_summary.count(status))
        .sum();
    let system_ingest = |system: System| {
        let counters: &SystemCounters = state.counters.system(system);
        SystemIngest {
            label: labels
                .get(&system)
                .cloned()
                .unwrap_or_else(|| system.to_string()),
            events_applied: counters.events_applied,
            duplicates_dropped: counters.duplicates_dropped,
            stale_versions: counters.stale_versions,
            messages_skipped: counters.skipped,
            violations: counters.violations.clone(),
            dead_lettered: counters.dead_lettered,
            unmapped_entities: counters.unmapped_entities.clone(),
            lag: ingest.lag(system),
            last_applied_at: ingest.last_applied_at.get(&system).copied(),
        }
    };
    let system_feed = |system: System| SystemFeed {
        holes: state
            .feed
            .streams
            .values()
            .filter(|stream| stream.system == system && stream.missing > 0)
            .map(|stream| Hole {
                topic: stream.topic.clone(),
                partition: stream.partition,
                missing: stream.missing,
                open_since: stream.open_since,
            })
            .collect(),
        lost_offsets: state
            .feed
            .offset_losses
            .iter()
            .filter(|loss| loss.system == system)
            .map(|loss| LostOffsets {
                topic: loss.topic.clone(),
                partition: loss.partition,
                first_offset: loss.first_offset,
                last_offset: loss.last_offset,
                count: loss.count(),
                kind: loss.kind.as_str().to_owned(),
                since: loss.detected_at,
                healed_at: loss.healed_at,
            })
            .collect(),
        needs_snapshot: state
            .feed
            .needs_snapshot
            .get(&system)
            .cloned()
            .unwrap_or_default(),
        snapshots: state
            .feed
            .snapshots
            .get(&system)
            .cloned()
            .unwrap_or_default(),
        transactions_open: state
            .feed
            .transactions
            .get(&system)
            .map(|entities| entities.values().map(|open| open.len() as u64).sum())
            .unwrap_or(0),
        transactions_incomplete: state
            .feed
            .transactions_incomplete
            .get(&system)
            .copied()
            .unwrap_or(0),
    };
    Report {
        generated_at,
        clock: (state.clock != Timestamp::MIN).then_some(state.clock),
        grace_seconds,
        entities,
        totals: Totals {
            records: total_summary.records(),
            by_status: by_status(&total_by_status),
            parity: total_summary.parity(),
            divergent,
        },
        ingest: IngestReport {
            source: system_ingest(System::Source),
            target: system_ingest(System::Target),
            dead_lettered: state.counters.dead_lettered_by_reason.values().sum(),
            dead_lettered_by_reason: state.counters.dead_lettered_by_reason.clone(),
            assigned_partitions: ingest.assigned.len(),
            caught_up: ingest.caught_up(),
            broker_reachable: ingest.broker_reachable,
            broker_unreachable_since: ingest.broker_unreachable_since,
            stopped: ingest.stopped.clone(),
            paused: ingest.paused.clone(),
            stopped_partitions: ingest
                .stopped_partitions
                .iter()
                .map(|((topic, partition), stopped)| StoppedPartitionReport {
                    topic: topic.clone(),
                    partition: *partition,
                    stored_next_offset: stopped.stored_next_offset,
                    high_watermark: stopped.high_watermark,
                    since: stopped.since,
                    reason: stopped.reason.clone(),
                })
                .collect(),
            kafka_problems: ingest.kafka_problems.clone(),
        },
        feed: FeedReport {
            source: system_feed(System::Source),
            target: system_feed(System::Target),
            rereads_outstanding: state.feed.rereads_outstanding,
            oldest_reread_since: stored.oldest_reread_since,
        },
        reevaluation: ingest.reevaluation.clone(),
        last_reevaluation: ingest.last_reevaluation.clone(),
        suspected_mapping_errors: Vec::new(),
    }
}

fn by_status(counts: &[u64; Status::COUNT]) -> BTreeMap<Status, u64> {
    Status::ALL
        .into_iter()
        .map(|status| (status, counts[status.index()]))
        .collect()
}

/// `GET /v1/divergences`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DivergenceList {
    /// The records of this page.
    pub items: Vec<DivergenceEntry>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// One divergent record: entity, join key, status, differing fields, since, native ids.
pub type DivergenceEntry = tandem_store::DivergenceItem;

/// `GET /v1/records/{entity}/{join_key}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordView {
    /// The entity.
    pub entity: String,
    /// The join key.
    pub join_key: String,
    /// The status; null when deleted on both sides.
    pub status: Option<Status>,
    /// Since when the sides differ.
    pub since: Option<Timestamp>,
    /// When a pending record stops being pending.
    pub pending_until: Option<Timestamp>,
    /// Source records claiming the key (deleted ones included).
    pub source: Vec<SideView>,
    /// Target records claiming the key (deleted ones included).
    pub target: Vec<SideView>,
    /// The mapped fields, side by side (first live record of each side).
    pub diff: Vec<FieldDiff>,
    /// Every event of these native records, from both systems, in event-time order.
    pub history: Vec<HistoryEntry>,
    /// The view is as of these next offsets (`topic/partition`: next offset to apply), read
    /// with it from the same snapshot.
    pub as_of: BTreeMap<String, i64>,
}

/// One native record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SideView {
    /// Native id.
    pub native_id: String,
    /// Whether it is deleted in its system.
    pub deleted: bool,
    /// Highest applied version.
    pub version: Option<u64>,
    /// Event time of its latest applied change.
    pub last_change_at: Timestamp,
    /// The event of its latest applied change.
    pub last_event_id: String,
    /// For a merged record, the survivor.
    pub merged_into: Option<String>,
    /// Why its state cannot be trusted, if it cannot.
    pub unverified: Option<Unverified>,
    /// When a re-read of it was last requested (wall clock), while it waits for one.
    pub reread_requested_at: Option<Timestamp>,
    /// Its fields.
    pub fields: Fields,
    /// Per field: when its value last changed and who changed it (schemas/causes.md).
    #[serde(default)]
    pub field_history: BTreeMap<String, FieldHistory>,
    /// The writer of its create (`kind:id`), when the event said.
    #[serde(default)]
    pub created_by: Option<String>,
}

/// When one field's value last changed, and who changed it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FieldHistory {
    /// Event time of the change; for a value a snapshot revealed, when it was read.
    pub changed_at: Timestamp,
    /// The kind of writer (`sync`, `user`, ...), when the event said.
    pub writer: Option<String>,
    /// For a value a snapshot revealed: the time after which it changed (null: an event's
    /// change, at `changed_at`).
    pub revealed_after: Option<Timestamp>,
}

impl From<&SideRecord> for SideView {
    fn from(side: &SideRecord) -> Self {
        SideView {
            native_id: side.native_id.clone(),
            deleted: side.deleted,
            version: side.version,
            last_change_at: side.last_change_at,
            last_event_id: side.last_event_id.clone(),
            merged_into: side.merged_into.clone(),
            unverified: side.unverified.clone(),
            field_history: side
                .field_changes
                .iter()
                .map(|(name, change)| {
                    (
                        name.clone(),
                        FieldHistory {
                            changed_at: change.0,
                            writer: change.1.map(|kind| {
                                tandem_core::ownership::actor_kind_name(kind).to_owned()
                            }),
                            revealed_after: change.2,
                        },
                    )
                })
                .collect(),
            created_by: side.created_by.clone(),
            reread_requested_at: None,
            fields: side.fields.clone(),
        }
    }
}

/// One mapped field compared.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FieldDiff {
    /// Target field name.
    pub field: String,
    /// Source field name (`A + B` for a joined list).
    pub source_field: String,
    /// Source value (null if absent; the joined text for a joined list).
    pub source: serde_json::Value,
    /// What the target should hold: the source value through the field's value map.
    #[serde(default)]
    pub expected: serde_json::Value,
    /// Target value (null if absent).
    pub target: serde_json::Value,
    /// Whether they are equal under the field's rule.
    pub equal: bool,
    /// The source value has no entry in the field's value map.
    #[serde(default)]
    pub unmapped: bool,
    /// The field's comparison rule.
    #[serde(default)]
    pub compare: String,
    /// Mismatches of the field block a cutover.
    #[serde(default)]
    pub critical: bool,
    /// The rule loses information on the way back to the source.
    #[serde(default)]
    pub lossy: bool,
}

/// One event of a record's history: system, native id, event time, position, whether it
/// changed state, and the event as received.
pub type HistoryEntry = tandem_store::HistoryItem;
