//! Aggregates maintained with every change, so that a report never scans records.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::event::DeadLetterReason;
use crate::feed::FeedState;
use crate::ownership::{OwnershipState, ViolationKind};
use crate::record::{Cause, RecordStatus, Status};
use crate::system::System;
use crate::time::Timestamp;

/// Record counts of one entity.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntitySummary {
    /// Records per status, indexed by [`Status::index`].
    pub by_status: [u64; Status::COUNT],
    /// Records in `mismatch` per differing target field.
    pub mismatched_fields: BTreeMap<String, u64>,
    /// Divergent records (pending included) per cause.
    #[serde(default)]
    pub by_cause: BTreeMap<Cause, u64>,
    /// Records whose cause may be a mapping error ([`Cause::may_be_mapping_error`]), per cause
    /// and set of patterns their wrong values follow ([`pattern_set_key`]; records following
    /// none are not counted): the report names those following a suspected mapping error
    /// `mapping_error`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub wrong_value_patterns: BTreeMap<String, u64>,
}

/// The key of a record's cause and pattern set in [`EntitySummary::wrong_value_patterns`]: a
/// JSON pair of the cause and the list of `<target field>=<pattern>`.
pub fn pattern_set_key(cause: Cause, patterns: &[String]) -> String {
    serde_json::to_string(&(cause, patterns)).expect("a cause and texts always serialize")
}

/// The cause and patterns of a [`pattern_set_key`].
pub fn parse_pattern_set_key(key: &str) -> Option<(Cause, Vec<String>)> {
    serde_json::from_str(key).ok()
}

impl EntitySummary {
    /// Records counted (any status).
    pub fn records(&self) -> u64 {
        self.by_status.iter().sum()
    }

    /// Records with one status.
    pub fn count(&self, status: Status) -> u64 {
        self.by_status[status.index()]
    }

    /// The share of counted records that are in sync; 1.0 when there are none.
    pub fn parity(&self) -> f64 {
        let records = self.records();
        if records == 0 {
            1.0
        } else {
            self.count(Status::InSync) as f64 / records as f64
        }
    }

    /// Moves one record's contribution from `before` to `after`.
    pub fn transition(&mut self, before: &RecordStatus, after: &RecordStatus) {
        self.remove(before);
        self.add(after);
    }

    fn add(&mut self, status: &RecordStatus) {
        let Some(current) = status.status else { return };
        self.by_status[current.index()] += 1;
        if let Some(cause) = status.cause {
            *self.by_cause.entry(cause).or_default() += 1;
        }
        if let Some(key) = status_pattern_key(status) {
            *self.wrong_value_patterns.entry(key).or_default() += 1;
        }
        if current == Status::Mismatch {
            for field in &status.differing_fields {
                *self.mismatched_fields.entry(field.clone()).or_default() += 1;
            }
        }
    }

    fn remove(&mut self, status: &RecordStatus) {
        let Some(current) = status.status else { return };
        let count = &mut self.by_status[current.index()];
        *count = count
            .checked_sub(1)
            .expect("invariant: a record's previous status was counted when it was stored");
        // Causes were counted from store schema 4 on; a store re-evaluated since counts all.
        if let Some(cause) = status.cause {
            if let Some(cause_count) = self.by_cause.get_mut(&cause) {
                *cause_count = cause_count.saturating_sub(1);
                if *cause_count == 0 {
                    self.by_cause.remove(&cause);
                }
            }
        }
        if let Some(key) = status_pattern_key(status) {
            if let Some(count) = self.wrong_value_patterns.get_mut(&key) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    self.wrong_value_patterns.remove(&key);
                }
            }
        }
        if current == Status::Mismatch {
            for field in &status.differing_fields {
                let field_count = self
                    .mismatched_fields
                    .get_mut(field)
                    .expect("invariant: a stored mismatch counted each of its differing fields");
                *field_count -= 1;
                if *field_count == 0 {
                    self.mismatched_fields.remove(field);
                }
            }
        }
    }
}

/// The key a record's status is counted under in [`EntitySummary::wrong_value_patterns`].
fn status_pattern_key(status: &RecordStatus) -> Option<String> {
    let cause = status.cause?;
    (cause.may_be_mapping_error() && !status.wrong_value_patterns.is_empty())
        .then(|| pattern_set_key(cause, &status.wrong_value_patterns))
}

/// Ingest counters of one system.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemCounters {
    /// Distinct events recorded (stale versions included: they are logged, not dropped).
    pub events_applied: u64,
    /// Re-deliveries of an `event_id` already seen, dropped.
    pub duplicates_dropped: u64,
    /// Events older than the stored version, logged but not applied to state.
    pub stale_versions: u64,
    /// Events for entities the configuration does not map, per entity, counted and skipped.
    pub unmapped_entities: BTreeMap<String, u64>,
    /// Messages sent to the dead-letter topic.
    pub dead_lettered: u64,
    /// Messages that carry nothing to apply (Debezium tombstones and transaction markers).
    #[serde(default)]
    pub skipped: u64,
    /// Writes that broke the ownership rule, per kind.
    #[serde(default)]
    pub violations: BTreeMap<ViolationKind, u64>,
}

/// Ingest counters of both systems, persisted with the data they count.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestCounters {
    /// Source counters.
    pub source: SystemCounters,
    /// Target counters.
    pub target: SystemCounters,
    /// Dead letters per reason label.
    pub dead_lettered_by_reason: BTreeMap<DeadLetterReason, u64>,
}

impl IngestCounters {
    /// The counters of one system.
    pub fn system(&self, system: System) -> &SystemCounters {
        match system {
            System::Source => &self.source,
            System::Target => &self.target,
        }
    }

    /// The counters of one system, mutable.
    pub fn system_mut(&mut self, system: System) -> &mut SystemCounters {
        match system {
            System::Source => &mut self.source,
            System::Target => &mut self.target,
        }
    }
}

/// The state the apply loop carries from batch to batch, committed with every batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApplyState {
    /// The reconciliation clock: the newest event time applied, moved on while idle.
    pub clock: Timestamp,
    /// Ingest counters.
    pub counters: IngestCounters,
    /// Record counts per entity.
    pub summaries: BTreeMap<String, EntitySummary>,
    /// Completeness of the feeds: sequence holes, snapshot needs and runs.
    #[serde(default)]
    pub feed: FeedState,
    /// Ownership changed since the configuration (flips and rollbacks).
    #[serde(default)]
    pub ownership: OwnershipState,
    /// The fingerprint of the entity rules every stored record was last evaluated with
    /// ([`crate::Mapping::fingerprint`]); when the configuration's differs, the records of
    /// the entities whose rules differ ([`ApplyState::entity_rules`]) are evaluated again.
    /// `None` while a re-evaluation runs.
    #[serde(default)]
    pub rules: Option<String>,
    /// The same per entity ([`crate::Mapping::entity_fingerprints`]): a change to one
    /// entity's rules evaluates only that entity's records again. An entity being
    /// re-evaluated is absent until its re-evaluation finishes.
    #[serde(default)]
    pub entity_rules: BTreeMap<String, String>,
}

impl Default for ApplyState {
    fn default() -> Self {
        ApplyState {
            clock: Timestamp::MIN,
            counters: IngestCounters::default(),
            summaries: BTreeMap::new(),
            feed: FeedState::default(),
            ownership: OwnershipState::default(),
            rules: None,
            entity_rules: BTreeMap::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: Status, fields: &[&str]) -> RecordStatus {
        RecordStatus {
            wrong_value_patterns: Vec::new(),
            status: Some(status),
            since: None,
            differing_fields: fields.iter().map(|field| (*field).to_owned()).collect(),
            due_at: None,
            cause: None,
        }
    }

    #[test]
    fn transitions_move_counts_and_field_counts() {
        let mut summary = EntitySummary::default();
        let absent = RecordStatus::default();
        summary.transition(&absent, &status(Status::Mismatch, &["email", "lastname"]));
        summary.transition(&absent, &status(Status::InSync, &[]));
        assert_eq!(summary.records(), 2);
        assert_eq!(summary.mismatched_fields["email"], 1);
        assert_eq!(summary.parity(), 0.5);

        summary.transition(
            &status(Status::Mismatch, &["email", "lastname"]),
            &status(Status::Mismatch, &["email"]),
        );
        assert_eq!(summary.mismatched_fields.get("lastname"), None);
        summary.transition(&status(Status::Mismatch, &["email"]), &absent);
        assert_eq!(summary.records(), 1);
        assert!(summary.mismatched_fields.is_empty());
        assert_eq!(summary.parity(), 1.0);
    }

    #[test]
    fn pending_fields_are_not_mismatch_counts() {
        let mut summary = EntitySummary::default();
        summary.transition(
            &RecordStatus::default(),
            &status(Status::Pending, &["email"]),
        );
        assert_eq!(summary.count(Status::Pending), 1);
        assert!(summary.mismatched_fields.is_empty());
    }
}
