//! What the batches in flight changed, and the store as the planner must see it: with those
//! batches on top, until each is durable.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use tandem_core::apply::{StateView, ViewResult};
use tandem_core::{Outcome, Plan, RecordRow, System};
use tandem_store::Store;

use crate::consumer::ConsumedMessage;

type RecordKey = (String, String);
type NativeKey = (System, String, String);
type EventKey = (System, String);
type MemberKey = (System, String, String, String);
type PartitionKey = (String, i32, System, String, String);
type ReferenceKey = tandem_core::Reference;

/// What the batches in flight changed, until the store has it.
#[derive(Default)]
pub(crate) struct InFlight {
    records: HashMap<RecordKey, (u64, Option<Arc<RecordRow>>)>,
    join_keys: HashMap<NativeKey, (u64, String)>,
    events: HashMap<EventKey, u64>,
    snapshot_members: HashMap<MemberKey, u64>,
    partition_members: HashMap<PartitionKey, u64>,
    references: HashMap<ReferenceKey, u64>,
    /// Per batch in flight, oldest first: the keys it wrote.
    batches: VecDeque<WrittenKeys>,
}

/// The keys one batch in flight wrote into the overlay.
struct WrittenKeys {
    seq: u64,
    records: Vec<RecordKey>,
    join_keys: Vec<NativeKey>,
    events: Vec<EventKey>,
    snapshot_members: Vec<MemberKey>,
    partition_members: Vec<PartitionKey>,
    references: Vec<ReferenceKey>,
}

impl InFlight {
    /// Batches in flight.
    pub(crate) fn len(&self) -> usize {
        self.batches.len()
    }

    /// Whether every batch is durable.
    pub(crate) fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// Takes note of what a planned batch writes, until it is durable.
    pub(crate) fn remember(&mut self, seq: u64, batch: &[ConsumedMessage], plan: &Plan) {
        let mut records = Vec::with_capacity(plan.records.len());
        for change in &plan.records {
            let key = (change.entity.clone(), change.join_key.clone());
            self.records
                .insert(key.clone(), (seq, change.after.clone()));
            records.push(key);
        }
        let mut join_keys = Vec::with_capacity(plan.join_keys.len());
        for change in &plan.join_keys {
            let key = (
                change.system,
                change.entity.clone(),
                change.native_id.clone(),
            );
            self.join_keys
                .insert(key.clone(), (seq, change.join_key.clone()));
            join_keys.push(key);
        }
        let mut events = Vec::new();
        for (message, outcome) in batch.iter().zip(&plan.outcomes) {
            if let (Outcome::Applied | Outcome::Stale, Some(event)) = (outcome, message.event()) {
                let key = (message.system, event.event_id.clone());
                self.events.insert(key.clone(), seq);
                events.push(key);
            }
        }
        let mut snapshot_members = Vec::with_capacity(plan.snapshot_members.len());
        for member in &plan.snapshot_members {
            let key = (
                member.system,
                member.entity.clone(),
                member.snapshot_id.clone(),
                member.native_id.clone(),
            );
            self.snapshot_members.insert(key.clone(), seq);
            snapshot_members.push(key);
        }
        let mut partition_members = Vec::with_capacity(plan.partition_members.len());
        for member in &plan.partition_members {
            let key = (
                member.topic.clone(),
                member.partition,
                member.system,
                member.entity.clone(),
                member.native_id.clone(),
            );
            self.partition_members.insert(key.clone(), seq);
            partition_members.push(key);
        }
        let mut references = Vec::with_capacity(plan.references.len());
        for reference in &plan.references {
            self.references.insert(reference.clone(), seq);
            references.push(reference.clone());
        }
        self.batches.push_back(WrittenKeys {
            seq,
            records,
            join_keys,
            events,
            snapshot_members,
            partition_members,
            references,
        });
    }

    /// Forgets what the oldest batch wrote, unless a later batch wrote the same key.
    pub(crate) fn settle(&mut self, seq: u64) {
        let Some(oldest) = self.batches.pop_front() else {
            return;
        };
        assert_eq!(
            oldest.seq, seq,
            "invariant: batches become durable in the order they were sent"
        );
        for key in oldest.records {
            if self
                .records
                .get(&key)
                .is_some_and(|(written_by, _)| *written_by == seq)
            {
                self.records.remove(&key);
            }
        }
        for key in oldest.join_keys {
            if self
                .join_keys
                .get(&key)
                .is_some_and(|(written_by, _)| *written_by == seq)
            {
                self.join_keys.remove(&key);
            }
        }
        for key in oldest.events {
            if self.events.get(&key) == Some(&seq) {
                self.events.remove(&key);
            }
        }
        for key in oldest.snapshot_members {
            if self.snapshot_members.get(&key) == Some(&seq) {
                self.snapshot_members.remove(&key);
            }
        }
        for key in oldest.partition_members {
            if self.partition_members.get(&key) == Some(&seq) {
                self.partition_members.remove(&key);
            }
        }
        for key in oldest.references {
            if self.references.get(&key) == Some(&seq) {
                self.references.remove(&key);
            }
        }
    }
}

/// The store as the planner must see it: with the batches in flight on top.
pub(crate) struct OverlayView<'a> {
    pub(crate) store: &'a Store,
    pub(crate) in_flight: &'a InFlight,
}

impl StateView for OverlayView<'_> {
    fn event_seen(&self, system: System, event_id: &str) -> ViewResult<bool> {
        if self
            .in_flight
            .events
            .contains_key(&(system, event_id.to_owned()))
        {
            return Ok(true);
        }
        self.store.event_seen(system, event_id)
    }

    fn join_key(
        &self,
        system: System,
        entity: &str,
        native_id: &str,
    ) -> ViewResult<Option<String>> {
        let key = (system, entity.to_owned(), native_id.to_owned());
        match self.in_flight.join_keys.get(&key) {
            Some((_, join_key)) => Ok(Some(join_key.clone())),
            None => self.store.join_key(system, entity, native_id),
        }
    }

    fn native_ids(&self, system: System, entity: &str) -> ViewResult<Vec<String>> {
        let mut ids = self.store.native_ids(system, entity)?;
        ids.extend(
            self.in_flight
                .join_keys
                .keys()
                .filter(|(key_system, key_entity, _)| *key_system == system && key_entity == entity)
                .map(|(_, _, native_id)| native_id.clone()),
        );
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    fn partition_members(
        &self,
        topic: &str,
        partition: i32,
    ) -> ViewResult<Vec<(System, String, String)>> {
        let mut members = self.store.partition_members(topic, partition)?;
        members.extend(
            self.in_flight
                .partition_members
                .keys()
                .filter(|key| key.0 == topic && key.1 == partition)
                .map(|key| (key.2, key.3.clone(), key.4.clone())),
        );
        members.sort_unstable();
        members.dedup();
        Ok(members)
    }

    fn referencing(
        &self,
        system: System,
        entity: &str,
        native_id: &str,
    ) -> ViewResult<Vec<(String, String)>> {
        let mut found = self.store.referencing(system, entity, native_id)?;
        found.extend(
            self.in_flight
                .references
                .keys()
                .filter(|reference| reference.points_at(system, entity, native_id))
                .map(|reference| (reference.from_entity.clone(), reference.from_key.clone())),
        );
        found.sort_unstable();
        found.dedup();
        Ok(found)
    }

    fn snapshot_member(
        &self,
        system: System,
        entity: &str,
        snapshot_id: &str,
        native_id: &str,
    ) -> ViewResult<bool> {
        let key = (
            system,
            entity.to_owned(),
            snapshot_id.to_owned(),
            native_id.to_owned(),
        );
        if self.in_flight.snapshot_members.contains_key(&key) {
            return Ok(true);
        }
        self.store
            .snapshot_member(system, entity, snapshot_id, native_id)
    }

    fn is_unverified(&self, system: System, entity: &str, native_id: &str) -> ViewResult<bool> {
        // A record a batch in flight wrote is as that batch left it.
        if let Some(join_key) = self.join_key(system, entity, native_id)? {
            if let Some((_, row)) = self.in_flight.records.get(&(entity.to_owned(), join_key)) {
                return Ok(row.as_deref().is_some_and(|row| {
                    row.side(system)
                        .iter()
                        .any(|side| side.native_id == native_id && side.unverified.is_some())
                }));
            }
        }
        self.store.is_unverified(system, entity, native_id)
    }

    fn record(&self, entity: &str, join_key: &str) -> ViewResult<Option<RecordRow>> {
        match self
            .in_flight
            .records
            .get(&(entity.to_owned(), join_key.to_owned()))
        {
            Some((_, row)) => Ok(row.as_deref().cloned()),
            None => self.store.record(entity, join_key),
        }
    }
}
