//! From the events the connectors emitted to the messages on the topics: what the transport
//! does to them (drops, announced gaps, delays, reordering) and what the connectors add
//! (re-deliveries, stale replays, garbage). Also counts what a correct consumer must count.

use std::collections::{BTreeMap, HashMap, HashSet};

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use crate::catalog::ENTITIES;
use crate::world::{partition_of, rfc3339, Emitted};
use crate::{SimConfig, SimMessage, SimSystem};

/// What a message is, for counting.
#[derive(Clone)]
enum Kind {
    /// A valid event.
    Event {
        event_id: String,
        record: (SimSystem, usize, String),
        version: Option<u64>,
    },
    /// Garbage, with the reason tandem must give.
    Poison(&'static str),
}

#[derive(Clone)]
struct Pending {
    system: SimSystem,
    partition: i32,
    key: String,
    payload: Vec<u8>,
    seq: Option<u64>,
    kind: Kind,
}

/// What a correct consumer of the stream counts.
#[derive(Clone, Debug, Default)]
pub(crate) struct Counts {
    pub(crate) events_applied: BTreeMap<&'static str, u64>,
    pub(crate) duplicates_dropped: BTreeMap<&'static str, u64>,
    pub(crate) stale_versions: BTreeMap<&'static str, u64>,
    pub(crate) dead_lettered: BTreeMap<&'static str, u64>,
}

/// How many faults the stream carries, per kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Events lost without a trace.
    pub dropped: u64,
    /// Events lost and announced by a `gap` event.
    pub announced_gaps: u64,
    /// Events delivered at the end of the stream.
    pub delayed: u64,
    /// Windows of events shuffled.
    pub reordered_windows: u64,
    /// Events delivered twice.
    pub redelivered: u64,
    /// Old events replayed under a new id.
    pub stale_replays: u64,
    /// Garbage messages.
    pub poison: u64,
}

impl FaultCounts {
    /// Every fault, summed.
    pub fn total(&self) -> u64 {
        self.dropped
            + self.announced_gaps
            + self.delayed
            + self.reordered_windows
            + self.redelivered
            + self.stale_replays
            + self.poison
    }
}

/// The built stream.
pub(crate) struct Built {
    pub(crate) messages: Vec<SimMessage>,
    /// Per system and partition, the `seq` of the message at each offset.
    pub(crate) offsets: BTreeMap<(SimSystem, i32), Vec<Option<u64>>>,
    pub(crate) counts: Counts,
    pub(crate) faults: FaultCounts,
}

fn event_message(emitted: &Emitted, body: &Value) -> Pending {
    Pending {
        system: emitted.system,
        partition: emitted.partition,
        key: emitted.native_id.clone(),
        payload: serde_json::to_vec(body).expect("JSON values encode"),
        // The slot in the connector stream, whether or not the payload carries it.
        seq: Some(emitted.seq),
        kind: Kind::Event {
            event_id: body["event_id"].as_str().unwrap_or_default().to_owned(),
            record: (emitted.system, emitted.entity, emitted.native_id.clone()),
            version: body["version"].as_u64(),
        },
    }
}

/// Drops, gaps, delays and reordering between the connector and the topic.
fn transport(
    config: &SimConfig,
    emitted: &[Emitted],
    rng: &mut ChaCha8Rng,
    faults_seen: &mut FaultCounts,
) -> Vec<(usize, Pending)> {
    let faults = &config.transport;
    let mut kept = Vec::with_capacity(emitted.len());
    let mut delayed = Vec::new();
    for (index, event) in emitted.iter().enumerate() {
        let droppable = faults
            .drop_system
            .is_none_or(|system| system == event.system);
        if droppable && rng.random_bool(faults.drop_rate) {
            if rng.random_bool(faults.gap_instead_rate) {
                faults_seen.announced_gaps += 1;
                // The connector knows it lost the change and says so, in the change's slot.
                let mut gap = json!({
                    "event_id": format!("{}-gap-{index}", event.system.as_str()),
                    "entity": ENTITIES[event.entity].name,
                    "id": event.native_id,
                    "op": "gap",
                    "occurred_at": rfc3339(event.occurred_at),
                });
                if config.emit_seq {
                    gap["seq"] = json!(event.seq);
                }
                kept.push((index, event_message(event, &gap)));
            } else {
                faults_seen.dropped += 1;
            }
            continue;
        }
        let message = event_message(event, &event.body);
        if rng.random_bool(faults.delay_rate) {
            faults_seen.delayed += 1;
            delayed.push((index, message));
        } else {
            kept.push((index, message));
        }
    }
    kept.extend(delayed);
    if let Some(lagging) = faults.lagging {
        // A stable sort keeps each system's own order.
        kept.sort_by_key(|(index, _)| emitted[*index].system == lagging);
    }
    if faults.reorder_window > 1 {
        for window in kept.chunks_mut(faults.reorder_window) {
            window.shuffle(rng);
            faults_seen.reordered_windows += 1;
        }
    }
    kept
}

pub(crate) fn build(config: &SimConfig, emitted: &[Emitted], rng: &mut ChaCha8Rng) -> Built {
    let mut faults = FaultCounts::default();
    let stream = transport(config, emitted, rng, &mut faults);
    let mut inserts: Vec<(usize, Pending)> = Vec::new();
    for (position, (index, message)) in stream.iter().enumerate() {
        if rng.random_bool(config.redelivery_rate) {
            faults.redelivered += 1;
            inserts.push((position + 1 + rng.random_range(0..50), message.clone()));
        }
        if !rng.random_bool(config.stale_replay_rate) {
            continue;
        }
        let Kind::Event {
            record,
            version: Some(version),
            ..
        } = &message.kind
        else {
            continue;
        };
        // Replayed after a newer event of the same record, so tandem already holds newer.
        let newer = stream[position + 1..].iter().take(500).position(|(_, later)| {
            matches!(&later.kind, Kind::Event { record: other, version: Some(other_version), .. }
                if other == record && other_version > version)
        });
        if let Some(offset) = newer {
            let mut stale: Value = emitted[*index].body.clone();
            stale["event_id"] = json!(format!("{}-replay-{index}", message.system.as_str()));
            let mut replay = event_message(&emitted[*index], &stale);
            replay.seq = message.seq;
            faults.stale_replays += 1;
            inserts.push((position + offset + 2 + rng.random_range(0..20), replay));
        }
    }
    let poison_count =
        (emitted.len() as f64 * config.poison_per_thousand / 1000.0).round() as usize;
    let poison_kinds: [(&str, &[u8]); 9] = [
        ("invalid_json", b"{\"event_id\": \"broken"),
        ("schema_violation", b"{\"event_id\":\"p\",\"entity\":\"contact\",\"id\":\"C-1\",\"occurred_at\":\"2026-11-20T08:00:00Z\"}"),
        ("schema_violation", b"{\"event_id\":\"p\",\"entity\":\"contact\",\"id\":\"C-1\",\"op\":\"upsert\",\"occurred_at\":\"2026-11-20T08:00:00Z\"}"),
        ("invalid_utf8", b"{\"event_id\": \"\xff\xfe\"}"),
        ("empty", b""),
        ("schema_violation", b"[1, 2, 3]"),
        ("unsupported_schema", b"{\"schema\":\"tandem.change.v2\",\"event_id\":\"p\",\"entity\":\"contact\",\"id\":\"C-1\",\"op\":\"create\",\"occurred_at\":\"2026-11-20T08:00:00Z\"}"),
        ("schema_violation", b"{\"event_id\":null,\"entity\":\"contact\",\"id\":\"C-1\",\"op\":\"create\",\"occurred_at\":\"2026-11-20T08:00:00Z\"}"),
        ("schema_violation", b"{\"event_id\":\"p\",\"entity\":\"contact\",\"id\":\"C-1\",\"op\":\"update\",\"occurred_at\":\"2026-11-20T08:00:00Z\",\"version\":\"three\"}"),
    ];
    for number in 0..poison_count {
        let (reason, payload) = poison_kinds[number % poison_kinds.len()];
        faults.poison += 1;
        let system = if rng.random_bool(0.5) {
            SimSystem::Source
        } else {
            SimSystem::Target
        };
        let key = format!("poison-{number}");
        inserts.push((
            rng.random_range(0..=stream.len()),
            Pending {
                system,
                partition: partition_of(&key, config.partitions),
                key,
                payload: payload.to_vec(),
                seq: None,
                kind: Kind::Poison(reason),
            },
        ));
    }
    if let Some(size) = config.oversized_message_bytes {
        let payload = json!({"event_id": "oversized", "entity": "contact", "id": "C-big", "op": "create",
            "occurred_at": rfc3339(config.start_unix_seconds * 1_000_000_000), "fields": {"Notes": "x".repeat(size)}});
        inserts.push((
            stream.len(),
            Pending {
                system: SimSystem::Source,
                partition: partition_of("C-big", config.partitions),
                key: "C-big".to_owned(),
                payload: serde_json::to_vec(&payload).expect("JSON values encode"),
                seq: None,
                kind: Kind::Poison("too_large"),
            },
        ));
    }
    // Merge the inserts in: each goes before the message at its position (after all of
    // them if past the end); ties keep their order.
    inserts.sort_by_key(|(position, _)| *position);
    let mut merged = Vec::with_capacity(stream.len() + inserts.len());
    let mut pending = inserts.into_iter().peekable();
    for (position, (_, message)) in stream.into_iter().enumerate() {
        while let Some((_, insert)) = pending.next_if(|(at, _)| *at <= position) {
            merged.push(insert);
        }
        merged.push(message);
    }
    merged.extend(pending.map(|(_, insert)| insert));

    let counts = count(&merged);
    let mut offsets: BTreeMap<(SimSystem, i32), Vec<Option<u64>>> = BTreeMap::new();
    for message in &merged {
        offsets
            .entry((message.system, message.partition))
            .or_default()
            .push(message.seq);
    }
    Built {
        messages: merged
            .into_iter()
            .map(|message| SimMessage {
                system: message.system,
                partition: message.partition,
                key: message.key,
                payload: message.payload,
            })
            .collect(),
        offsets,
        counts,
        faults,
    }
}

/// Counts by the documented rules: an event id seen before is a duplicate; a version below
/// the highest seen for the record is stale (but still a distinct event); garbage is
/// dead-lettered with its reason.
fn count(messages: &[Pending]) -> Counts {
    let mut counts = Counts::default();
    let mut seen: HashSet<(SimSystem, &str)> = HashSet::new();
    let mut highest: HashMap<&(SimSystem, usize, String), u64> = HashMap::new();
    for message in messages {
        let system = message.system.as_str();
        match &message.kind {
            Kind::Poison(reason) => *counts.dead_lettered.entry(reason).or_default() += 1,
            Kind::Event {
                event_id,
                record,
                version,
            } => {
                if !seen.insert((message.system, event_id.as_str())) {
                    *counts.duplicates_dropped.entry(system).or_default() += 1;
                    continue;
                }
                *counts.events_applied.entry(system).or_default() += 1;
                if let Some(version) = version {
                    let held = highest.entry(record).or_insert(0);
                    if *version < *held {
                        *counts.stale_versions.entry(system).or_default() += 1;
                    }
                    *held = (*held).max(*version);
                }
            }
        }
    }
    counts
}
