//! Batches planned but not yet durable, and the state as the next batch must be planned on:
//! the committed state with those batches laid over it.
//!
//! A shell that writes batches while it plans the next ones keeps each plan here until the
//! plan is durable. The law this module keeps (`tests/laws.rs`): planning a batch over a
//! pending plan gives the plan that planning it after that plan was committed gives.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::{DueRecord, Plan, StateView, ViewResult};
use crate::record::RecordRow;
use crate::system::System;
use crate::time::Timestamp;
use crate::Reference;

type RecordKey = (String, String);
type NativeKey = (System, String, String);
type EventKey = (System, String);
type MemberKey = (System, String, String, String);
type PartitionKey = (String, i32, System, String, String);

/// What the plans not yet durable write, newest first per key.
#[derive(Debug, Default)]
pub struct Pending {
    records: HashMap<RecordKey, (u64, Option<Arc<RecordRow>>)>,
    join_keys: HashMap<NativeKey, (u64, String)>,
    events: HashMap<EventKey, u64>,
    snapshot_members: HashMap<MemberKey, u64>,
    partition_members: HashMap<PartitionKey, u64>,
    references: HashMap<Reference, u64>,
    /// Per pending plan, oldest first: the keys it wrote.
    plans: VecDeque<WrittenKeys>,
}

/// The keys one pending plan wrote.
#[derive(Debug)]
struct WrittenKeys {
    seq: u64,
    records: Vec<RecordKey>,
    join_keys: Vec<NativeKey>,
    events: Vec<EventKey>,
    snapshot_members: Vec<MemberKey>,
    partition_members: Vec<PartitionKey>,
    references: Vec<Reference>,
}

/// Writes `entries` (each value marked with the plan that wrote it) and lists their keys.
fn write<K: Clone + Eq + std::hash::Hash, V>(
    map: &mut HashMap<K, V>,
    entries: impl IntoIterator<Item = (K, V)>,
) -> Vec<K> {
    entries
        .into_iter()
        .map(|(key, value)| {
            map.insert(key.clone(), value);
            key
        })
        .collect()
}

/// Removes the keys the settled plan `seq` wrote, unless a later plan wrote them again.
fn forget<K: Eq + std::hash::Hash, V>(
    map: &mut HashMap<K, V>,
    keys: Vec<K>,
    seq: u64,
    written_by: impl Fn(&V) -> u64,
) {
    for key in keys {
        if map.get(&key).is_some_and(|value| written_by(value) == seq) {
            map.remove(&key);
        }
    }
}

impl Pending {
    /// Plans not yet durable.
    pub fn len(&self) -> usize {
        self.plans.len()
    }

    /// Whether every plan is durable.
    pub fn is_empty(&self) -> bool {
        self.plans.is_empty()
    }

    /// Lays `plan` over the state, until [`Pending::settle`] says it is durable. `events` has
    /// one entry per input of the batch, in input order: the system and id of the event it
    /// carried, or `None` for an input that is no event. `seq` numbers plans in the order
    /// they are made.
    pub fn remember<'e>(
        &mut self,
        seq: u64,
        events: impl IntoIterator<Item = Option<(System, &'e str)>>,
        plan: &Plan,
    ) {
        let records = write(
            &mut self.records,
            plan.records.iter().map(|change| {
                (
                    (change.entity.clone(), change.join_key.clone()),
                    (seq, change.after.clone()),
                )
            }),
        );
        let join_keys = write(
            &mut self.join_keys,
            plan.join_keys.iter().map(|change| {
                (
                    (
                        change.system,
                        change.entity.clone(),
                        change.native_id.clone(),
                    ),
                    (seq, change.join_key.clone()),
                )
            }),
        );
        let events = write(
            &mut self.events,
            events
                .into_iter()
                .zip(&plan.outcomes)
                .filter(|(_, outcome)| outcome.is_recorded())
                .filter_map(|(event, _)| event)
                .map(|(system, event_id)| ((system, event_id.to_owned()), seq)),
        );
        let snapshot_members = write(
            &mut self.snapshot_members,
            plan.snapshot_members.iter().map(|member| {
                (
                    (
                        member.system,
                        member.entity.clone(),
                        member.snapshot_id.clone(),
                        member.native_id.clone(),
                    ),
                    seq,
                )
            }),
        );
        let partition_members = write(
            &mut self.partition_members,
            plan.partition_members.iter().map(|member| {
                (
                    (
                        member.topic.clone(),
                        member.partition,
                        member.system,
                        member.entity.clone(),
                        member.native_id.clone(),
                    ),
                    seq,
                )
            }),
        );
        let references = write(
            &mut self.references,
            plan.references
                .iter()
                .map(|reference| (reference.clone(), seq)),
        );
        self.plans.push_back(WrittenKeys {
            seq,
            records,
            join_keys,
            events,
            snapshot_members,
            partition_members,
            references,
        });
    }

    /// The oldest pending plan, `seq`, is durable: the committed state holds what it wrote.
    ///
    /// # Panics
    ///
    /// When `seq` is not the oldest pending plan: plans become durable in the order they
    /// were made.
    pub fn settle(&mut self, seq: u64) {
        let Some(oldest) = self.plans.pop_front() else {
            return;
        };
        assert_eq!(
            oldest.seq, seq,
            "invariant: plans become durable in the order they were made"
        );
        forget(&mut self.records, oldest.records, seq, |value| value.0);
        forget(&mut self.join_keys, oldest.join_keys, seq, |value| value.0);
        forget(&mut self.events, oldest.events, seq, |value| *value);
        forget(
            &mut self.snapshot_members,
            oldest.snapshot_members,
            seq,
            |value| *value,
        );
        forget(
            &mut self.partition_members,
            oldest.partition_members,
            seq,
            |value| *value,
        );
        forget(&mut self.references, oldest.references, seq, |value| *value);
    }

    /// The committed state `base` with the pending plans laid over it.
    pub fn over<'a, V: StateView>(&'a self, base: &'a V) -> Overlay<'a, V> {
        Overlay {
            base,
            pending: self,
        }
    }
}

/// The committed state with the pending plans laid over it: what the next batch is planned on.
#[derive(Debug)]
pub struct Overlay<'a, V> {
    base: &'a V,
    pending: &'a Pending,
}

/// `found` and `more`, sorted, each once.
fn merged<T: Ord>(mut found: Vec<T>, more: impl Iterator<Item = T>) -> Vec<T> {
    found.extend(more);
    found.sort_unstable();
    found.dedup();
    found
}

impl<V: StateView> StateView for Overlay<'_, V> {
    fn event_seen(&self, system: System, event_id: &str) -> ViewResult<bool> {
        if self
            .pending
            .events
            .contains_key(&(system, event_id.to_owned()))
        {
            return Ok(true);
        }
        self.base.event_seen(system, event_id)
    }

    fn join_key(
        &self,
        system: System,
        entity: &str,
        native_id: &str,
    ) -> ViewResult<Option<String>> {
        let key = (system, entity.to_owned(), native_id.to_owned());
        match self.pending.join_keys.get(&key) {
            Some((_, join_key)) => Ok(Some(join_key.clone())),
            None => self.base.join_key(system, entity, native_id),
        }
    }

    fn native_ids(&self, system: System, entity: &str) -> ViewResult<Vec<String>> {
        let pending = self
            .pending
            .join_keys
            .keys()
            .filter(|(key_system, key_entity, _)| *key_system == system && key_entity == entity)
            .map(|(_, _, native_id)| native_id.clone());
        Ok(merged(self.base.native_ids(system, entity)?, pending))
    }

    fn partition_members(
        &self,
        topic: &str,
        partition: i32,
    ) -> ViewResult<Vec<(System, String, String)>> {
        let pending = self
            .pending
            .partition_members
            .keys()
            .filter(|key| key.0 == topic && key.1 == partition)
            .map(|key| (key.2, key.3.clone(), key.4.clone()));
        Ok(merged(
            self.base.partition_members(topic, partition)?,
            pending,
        ))
    }

    fn referencing(
        &self,
        system: System,
        entity: &str,
        native_id: &str,
    ) -> ViewResult<Vec<(String, String)>> {
        let pending = self
            .pending
            .references
            .keys()
            .filter(|reference| reference.points_at(system, entity, native_id))
            .map(|reference| (reference.from_entity.clone(), reference.from_key.clone()));
        Ok(merged(
            self.base.referencing(system, entity, native_id)?,
            pending,
        ))
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
        if self.pending.snapshot_members.contains_key(&key) {
            return Ok(true);
        }
        self.base
            .snapshot_member(system, entity, snapshot_id, native_id)
    }

    fn is_unverified(&self, system: System, entity: &str, native_id: &str) -> ViewResult<bool> {
        // A record a pending plan wrote is as that plan left it.
        if let Some(join_key) = self.join_key(system, entity, native_id)? {
            if let Some((_, row)) = self.pending.records.get(&(entity.to_owned(), join_key)) {
                return Ok(row.as_deref().is_some_and(|row| {
                    row.side(system)
                        .iter()
                        .any(|side| side.native_id == native_id && side.unverified.is_some())
                }));
            }
        }
        self.base.is_unverified(system, entity, native_id)
    }

    fn due_records(&self, up_to: Timestamp, limit: usize) -> ViewResult<Vec<DueRecord>> {
        // A pending plan's row replaces the committed one: the committed list may name rows
        // a pending plan settled or moved, so it is read as far as they could reach.
        let superseded = self.pending.records.len();
        let mut due: Vec<DueRecord> = self
            .base
            .due_records(up_to, limit.saturating_add(superseded))?
            .into_iter()
            .filter(|(_, entity, join_key)| {
                !self
                    .pending
                    .records
                    .contains_key(&(entity.clone(), join_key.clone()))
            })
            .collect();
        due.extend(
            self.pending
                .records
                .iter()
                .filter_map(|((entity, join_key), (_, row))| {
                    let due_at = row.as_deref()?.status.due_at?;
                    (due_at <= up_to).then(|| (due_at, entity.clone(), join_key.clone()))
                }),
        );
        due.sort_unstable();
        due.truncate(limit);
        Ok(due)
    }

    fn record(&self, entity: &str, join_key: &str) -> ViewResult<Option<RecordRow>> {
        match self
            .pending
            .records
            .get(&(entity.to_owned(), join_key.to_owned()))
        {
            Some((_, row)) => Ok(row.as_deref().cloned()),
            None => self.base.record(entity, join_key),
        }
    }
}
