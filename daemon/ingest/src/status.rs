//! What the ingest side knows right now, shared with the API: assignment, watermarks,
//! applied offsets, broker health. Everything here is live and lost on restart; everything
//! that must survive a restart is in the store.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::RwLock;

use serde::Serialize;
use tandem_core::{System, Timestamp};

/// One partition's position, as far as the ingest side knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PartitionPosition {
    /// The broker's high watermark, from the consumer's statistics.
    pub high_watermark: Option<i64>,
    /// The broker's low watermark, from the consumer's statistics.
    pub low_watermark: Option<i64>,
    /// The next offset to apply, from the store.
    pub next_offset: Option<i64>,
}

impl PartitionPosition {
    /// Messages on the broker not yet applied; `None` until the high watermark is known.
    pub fn lag(&self) -> Option<i64> {
        let high = self.high_watermark?;
        let next = self
            .next_offset
            .or(self.low_watermark)
            .unwrap_or(0)
            .max(self.low_watermark.unwrap_or(0));
        Some((high - next).max(0))
    }
}

/// The ingest side's live state.
#[derive(Clone, Debug, Default, Serialize)]
pub struct IngestSnapshot {
    /// Partitions currently assigned to this instance.
    pub assigned: BTreeSet<(String, i32)>,
    /// Position per partition ever seen.
    pub partitions: BTreeMap<(String, i32), PartitionPosition>,
    /// The system of each configured topic.
    pub topic_systems: BTreeMap<String, System>,
    /// Wall-clock time of the last committed batch that applied events, per system.
    pub last_applied_at: BTreeMap<System, Timestamp>,
    /// Whether the consumer currently reaches at least one broker.
    pub broker_reachable: bool,
    /// Since when the brokers are unreachable, if they are.
    pub broker_unreachable_since: Option<Timestamp>,
    /// The last Kafka error, with when it happened.
    pub last_kafka_error: Option<(Timestamp, String)>,
    /// Set when ingestion stopped for good, with the reason.
    pub stopped: Option<String>,
    /// Set while ingestion is paused (disk nearly full), with the reason.
    pub paused: Option<String>,
    /// Partitions whose ingestion stopped until an operator acts (their stored offset lies
    /// beyond the broker's log: the topic was deleted and created again).
    pub stopped_partitions: BTreeMap<(String, i32), StoppedPartition>,
    /// What the broker refuses tandem, by subject (`topic <name>`, `group <id>`): a topic
    /// that does not exist or may not be read, a group that may not be joined; each with what
    /// to do.
    pub kafka_problems: BTreeMap<String, String>,
    /// Set while stored records are evaluated again.
    pub reevaluation: Option<Reevaluation>,
    /// The latest re-evaluation that finished.
    pub last_reevaluation: Option<Reevaluation>,
}

/// A partition whose stored position no longer exists on the broker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StoppedPartition {
    /// The next offset the store holds for it.
    pub stored_next_offset: i64,
    /// The broker's high watermark, below that offset.
    pub high_watermark: i64,
    /// Since when (wall clock).
    pub since: Timestamp,
    /// What happened and what to do.
    pub reason: String,
}

/// A re-evaluation of stored records (of the entities whose rules changed, or of every entity
/// on request):
/// how far it is.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Reevaluation {
    /// Why it runs.
    pub reason: String,
    /// Records evaluated so far (records deleted on both sides are evaluated, not counted).
    pub done: u64,
    /// Records when it started: the report's count over the entities evaluated.
    pub total: u64,
    /// Records whose status, fields or cause changed.
    pub changed: u64,
    /// Wall-clock start.
    pub started_at: Timestamp,
    /// Records per second so far.
    pub rate: f64,
    /// Seconds left at that rate, while it runs.
    pub eta_seconds: Option<f64>,
    /// Wall-clock end, once finished.
    pub finished_at: Option<Timestamp>,
}

impl IngestSnapshot {
    /// Whether the consumer keeps its partitions from fetching: the disk is nearly full, or a
    /// re-evaluation runs (the apply loop holds what is read meanwhile until it is over).
    pub fn holds_fetching(&self) -> bool {
        self.paused.is_some() || self.reevaluation.is_some()
    }

    /// Sum of lag over a system's assigned partitions.
    /// `None` while a watermark is unknown, or when none of the system's partitions is
    /// assigned (then nothing is known about it).
    pub fn lag(&self, system: System) -> Option<i64> {
        let mut total = 0;
        let mut assigned = 0;
        for (topic, partition) in &self.assigned {
            if self.topic_systems.get(topic) != Some(&system) {
                continue;
            }
            let position = self.partitions.get(&(topic.clone(), *partition))?;
            total += position.lag()?;
            assigned += 1;
        }
        (assigned > 0).then_some(total)
    }

    /// Whether every assigned partition is known to be fully applied. Watermarks from an
    /// unreachable broker are stale, so nothing counts as caught up while none is reachable,
    /// nor while a partition's ingestion is stopped.
    pub fn caught_up(&self) -> bool {
        !self.assigned.is_empty()
            && self.stopped_partitions.is_empty()
            && self.broker_reachable
            && System::ALL
                .iter()
                .all(|system| self.lag(*system) == Some(0))
    }
}

/// Shared, lock-protected [`IngestSnapshot`]. Writers hold the lock for microseconds.
#[derive(Debug, Default)]
pub struct IngestStatus {
    inner: RwLock<IngestSnapshot>,
}

impl IngestStatus {
    /// A status for the given topic-to-system map.
    pub fn new(topic_systems: BTreeMap<String, System>) -> Self {
        IngestStatus {
            inner: RwLock::new(IngestSnapshot {
                topic_systems,
                ..IngestSnapshot::default()
            }),
        }
    }

    /// A copy of the current state.
    pub fn snapshot(&self) -> IngestSnapshot {
        self.inner
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub(crate) fn update(&self, change: impl FnOnce(&mut IngestSnapshot)) {
        let mut guard = self
            .inner
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        change(&mut guard);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_high_watermark_minus_next_offset_over_assigned_partitions() {
        let mut snapshot = IngestSnapshot {
            topic_systems: BTreeMap::from([
                ("src".to_owned(), System::Source),
                ("tgt".to_owned(), System::Target),
            ]),
            ..IngestSnapshot::default()
        };
        snapshot.assigned.insert(("src".to_owned(), 0));
        snapshot.assigned.insert(("src".to_owned(), 1));
        snapshot.assigned.insert(("tgt".to_owned(), 0));
        let position = |high, low, next| PartitionPosition {
            high_watermark: high,
            low_watermark: low,
            next_offset: next,
        };
        snapshot
            .partitions
            .insert(("src".to_owned(), 0), position(Some(10), Some(0), Some(4)));
        snapshot
            .partitions
            .insert(("src".to_owned(), 1), position(Some(7), Some(2), None));
        snapshot
            .partitions
            .insert(("tgt".to_owned(), 0), position(Some(3), Some(0), Some(3)));
        // 10 - 4, plus 7 - 2 (nothing applied yet: counted from the low watermark).
        assert_eq!(snapshot.lag(System::Source), Some(11));
        assert_eq!(snapshot.lag(System::Target), Some(0));
        assert!(!snapshot.caught_up());
        snapshot
            .partitions
            .insert(("src".to_owned(), 0), position(Some(10), Some(0), Some(10)));
        snapshot
            .partitions
            .insert(("src".to_owned(), 1), position(Some(7), Some(2), Some(7)));
        assert!(
            !snapshot.caught_up(),
            "no broker reachable: watermarks may be stale"
        );
        snapshot.broker_reachable = true;
        assert!(snapshot.caught_up());
        snapshot
            .partitions
            .insert(("src".to_owned(), 2), position(None, None, None));
        snapshot.assigned.insert(("src".to_owned(), 2));
        assert_eq!(
            snapshot.lag(System::Source),
            None,
            "unknown until the watermark is known"
        );
    }
}
