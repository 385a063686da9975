//! The planner's part in feed completeness: sequence holes, snapshot runs, their completion.

use crate::apply::{Planner, StateView, ViewResult};
use crate::event::ChangeEvent;
use std::collections::BTreeMap;

use crate::feed::{
    CompletedSnapshot, IncompleteSnapshot, OffsetLoss, RereadChange, SnapshotEnd, SnapshotRequest,
    SnapshotRun, TransactionCount, MAX_OPEN_TRANSACTIONS, TRANSACTION_END_WAIT,
};
use crate::mapping::EntityMapping;
use crate::record::{Unverified, UnverifiedReason};
use crate::system::System;
use crate::time::Timestamp;

impl<V: StateView> Planner<'_, V> {
    /// Notes the event's `seq`. A hole makes every entity of the system need a snapshot and
    /// every record known on that partition unverified, because the lost events could have
    /// been about any of them.
    pub(super) fn observe_seq(
        &mut self,
        system: System,
        event: &ChangeEvent,
        topic: &str,
        partition: i32,
        seq: u64,
    ) -> ViewResult<()> {
        let missing = self
            .state
            .feed
            .observe_seq(system, topic, partition, seq, event.occurred_at);
        if missing == 0 {
            return Ok(());
        }
        let reason =
            format!("seq hole on {topic}/{partition}: {missing} events missing before seq {seq}");
        self.require_snapshots(system, &reason, event.occurred_at);
        self.mark_partition_unverified(
            topic,
            partition,
            UnverifiedReason::SeqHole,
            event.occurred_at,
        )
    }

    /// Offsets the broker no longer had: like a `seq` hole, the lost messages could have been
    /// about any record of the partition, or about records tandem never saw. The loss is
    /// dated no earlier than the clock, so that only a snapshot started after tandem found it
    /// can heal it (the lost events' own times are unknown).
    pub(super) fn offsets_lost(&mut self, loss: &OffsetLoss) -> ViewResult<()> {
        let at = loss.detected_at.max(self.state.clock);
        let reason = format!(
            "offsets {}..={} of {}/{} were gone from the broker before tandem read them ({})",
            loss.first_offset,
            loss.last_offset,
            loss.topic,
            loss.partition,
            loss.kind.as_str()
        );
        self.require_snapshots(loss.system, &reason, at);
        self.state.feed.remember_offset_loss(OffsetLoss {
            detected_at: at,
            healed_at: None,
            ..loss.clone()
        });
        self.mark_partition_unverified(
            &loss.topic,
            loss.partition,
            UnverifiedReason::OffsetsLost,
            at,
        )
    }

    /// Every entity of `system` needs a snapshot started after `at`; a new need is requested.
    fn require_snapshots(&mut self, system: System, reason: &str, at: Timestamp) {
        for entity in self.mapping.entities() {
            if self.state.feed.require_snapshot(system, &entity.name, at) {
                self.snapshot_requests.push(SnapshotRequest {
                    system,
                    entity: entity.name.clone(),
                    reason: reason.to_owned(),
                    requested_at: at,
                });
            }
        }
    }

    /// A `gap` that names no record: the feed lost changes to records of `entity` it cannot
    /// name (a Salesforce GAP_OVERFLOW, a Debezium truncate).
    pub(super) fn entity_gap(
        &mut self,
        system: System,
        entity: &EntityMapping,
        event: &ChangeEvent,
    ) -> ViewResult<()> {
        let reason = format!(
            "the feed lost changes to unnamed records (event {})",
            event.event_id
        );
        self.lost_unnamed(system, entity, reason, event.occurred_at)
    }

    /// Changes to unnamed records of an entity were lost: the entity needs a snapshot, and
    /// every record of it in that system is unverified until it is read again.
    fn lost_unnamed(
        &mut self,
        system: System,
        entity: &EntityMapping,
        reason: String,
        at: Timestamp,
    ) -> ViewResult<()> {
        if self.state.feed.require_snapshot(system, &entity.name, at) {
            self.snapshot_requests.push(SnapshotRequest {
                system,
                entity: entity.name.clone(),
                reason,
                requested_at: at,
            });
        }
        let mut members: Vec<(System, String, String)> = self
            .view
            .native_ids(system, &entity.name)?
            .into_iter()
            .map(|native_id| (system, entity.name.clone(), native_id))
            .collect();
        // Records first seen in this batch are not in the view yet.
        members.extend(
            self.join_keys
                .iter()
                .filter(|((member_system, member_entity, _), key)| {
                    *member_system == system && *member_entity == entity.name && key.is_some()
                })
                .map(|((_, _, native_id), _)| (system, entity.name.clone(), native_id.clone())),
        );
        self.mark_unverified(members, UnverifiedReason::Gap, at)
    }

    /// Counts a distinct event in its source transaction; a transaction whose end announced
    /// exactly this many is complete and forgotten.
    pub(super) fn count_in_transaction(
        &mut self,
        system: System,
        entity: &EntityMapping,
        transaction: &str,
        at: Timestamp,
    ) {
        let counts = self.transaction_counts(system, entity, transaction, at);
        counts.seen += 1;
        if counts
            .end
            .is_some_and(|(expected, _)| counts.seen >= expected)
        {
            self.forget_transaction(system, &entity.name, transaction);
        }
    }

    /// Notes what a transaction's end announced; it is checked once grace has passed.
    pub(super) fn end_transaction(
        &mut self,
        system: System,
        entity: &EntityMapping,
        event: &ChangeEvent,
    ) {
        let (Some(transaction), Some(expected)) = (&event.transaction_id, event.records) else {
            return;
        };
        if !self.is_counting(system, &entity.name, transaction)
            && self
                .state
                .feed
                .transactions_unchecked_until
                .get(&system)
                .is_some_and(|until| {
                    event.occurred_at <= until.saturating_add(TRANSACTION_END_WAIT)
                })
        {
            // Its events may have been counted in an entry dropped since: nothing to check.
            return;
        }
        let counts = self.transaction_counts(system, entity, transaction, event.occurred_at);
        counts.end = Some((expected, event.occurred_at));
        if counts.seen >= expected {
            self.forget_transaction(system, &entity.name, transaction);
        }
    }

    /// Transactions whose end came more than grace ago on the clock with events still
    /// missing lost them; transactions whose end never came are dropped after an hour.
    pub(super) fn settle_transactions(&mut self) -> ViewResult<()> {
        let clock = self.state.clock;
        let grace = self.grace;
        let mut short = Vec::new();
        let mut abandoned = Vec::new();
        for (system, entities) in &self.state.feed.transactions {
            for (entity, open) in entities {
                for (transaction, counts) in open {
                    match counts.end {
                        Some((expected, ended_at)) if ended_at.saturating_add(grace) <= clock => {
                            let missing = expected.saturating_sub(counts.seen);
                            short.push((
                                *system,
                                entity.clone(),
                                transaction.clone(),
                                missing,
                                expected,
                            ));
                        }
                        None if counts.first_seen.saturating_add(TRANSACTION_END_WAIT) <= clock => {
                            abandoned.push((
                                *system,
                                entity.clone(),
                                transaction.clone(),
                                counts.first_seen,
                            ));
                        }
                        _ => {}
                    }
                }
            }
        }
        for (system, entity, transaction, first_seen) in abandoned {
            self.forget_transaction(system, &entity, &transaction);
            self.note_unchecked(system, first_seen);
        }
        for (system, entity_name, transaction, missing, expected) in short {
            self.forget_transaction(system, &entity_name, &transaction);
            *self
                .state
                .feed
                .transactions_incomplete
                .entry(system)
                .or_default() += 1;
            let Some(entity) = self.mapping.entity(&entity_name) else {
                continue;
            };
            let reason = format!(
                "transaction {transaction} lost {missing} of its {expected} events of {entity_name}"
            );
            self.lost_unnamed(system, entity, reason, clock)?;
        }
        Ok(())
    }

    fn is_counting(&self, system: System, entity: &str, transaction: &str) -> bool {
        self.state
            .feed
            .transactions
            .get(&system)
            .and_then(|entities| entities.get(entity))
            .is_some_and(|open| open.contains_key(transaction))
    }

    fn transaction_counts(
        &mut self,
        system: System,
        entity: &EntityMapping,
        transaction: &str,
        at: Timestamp,
    ) -> &mut TransactionCount {
        if !self.is_counting(system, &entity.name, transaction) {
            let open: usize = self
                .state
                .feed
                .transactions
                .get(&system)
                .map(|entities| entities.values().map(BTreeMap::len).sum())
                .unwrap_or(0);
            if open >= MAX_OPEN_TRANSACTIONS {
                self.drop_oldest_transaction(system);
            }
        }
        self.state
            .feed
            .transactions
            .entry(system)
            .or_default()
            .entry(entity.name.clone())
            .or_default()
            .entry(transaction.to_owned())
            .or_insert(TransactionCount {
                seen: 0,
                first_seen: at,
                end: None,
            })
    }

    fn drop_oldest_transaction(&mut self, system: System) {
        let oldest = self
            .state
            .feed
            .transactions
            .get(&system)
            .and_then(|entities| {
                entities
                    .iter()
                    .flat_map(|(entity, open)| {
                        open.iter().map(move |(transaction, counts)| {
                            (counts.first_seen, entity.clone(), transaction.clone())
                        })
                    })
                    .min()
            });
        if let Some((first_seen, entity, transaction)) = oldest {
            self.forget_transaction(system, &entity, &transaction);
            self.note_unchecked(system, first_seen);
        }
    }

    fn note_unchecked(&mut self, system: System, first_seen: Timestamp) {
        let until = self
            .state
            .feed
            .transactions_unchecked_until
            .entry(system)
            .or_insert(first_seen);
        *until = (*until).max(first_seen);
    }

    fn forget_transaction(&mut self, system: System, entity: &str, transaction: &str) {
        if let Some(entities) = self.state.feed.transactions.get_mut(&system) {
            if let Some(open) = entities.get_mut(entity) {
                open.remove(transaction);
                if open.is_empty() {
                    entities.remove(entity);
                }
            }
            if entities.is_empty() {
                self.state.feed.transactions.remove(&system);
            }
        }
    }

    fn mark_partition_unverified(
        &mut self,
        topic: &str,
        partition: i32,
        reason: UnverifiedReason,
        at: Timestamp,
    ) -> ViewResult<()> {
        let mut members = self.view.partition_members(topic, partition)?;
        members.extend(
            self.partition_members
                .iter()
                .filter(|member| member.topic == topic && member.partition == partition)
                .map(|member| {
                    (
                        member.system,
                        member.entity.clone(),
                        member.native_id.clone(),
                    )
                }),
        );
        self.mark_unverified(members, reason, at)
    }

    /// Marks native records unverified (those not deleted and not already unverified) and
    /// asks for them to be read again.
    fn mark_unverified(
        &mut self,
        mut members: Vec<(System, String, String)>,
        reason: UnverifiedReason,
        at: Timestamp,
    ) -> ViewResult<()> {
        members.sort_unstable();
        members.dedup();
        for (system, entity_name, native_id) in members {
            if self.mapping.entity(&entity_name).is_none() {
                continue;
            }
            let Some(join_key) = self.current_join_key(system, &entity_name, &native_id)? else {
                continue;
            };
            let record = self.working_record(&entity_name, &join_key)?;
            let Some(side) = record
                .row
                .side_mut(system)
                .iter_mut()
                .find(|side| side.native_id == native_id)
            else {
                continue;
            };
            if side.deleted || side.unverified.is_some() {
                continue;
            }
            side.unverified = Some(Unverified { reason, since: at });
            record.dirty = true;
            self.request_reread(RereadChange::Request {
                system,
                entity: entity_name,
                native_id,
                reason,
                since: at,
            })?;
        }
        Ok(())
    }

    /// Counts a snapshot image in its run, once per native record; completes the run if
    /// its end already announced this count.
    pub(super) fn count_in_snapshot(
        &mut self,
        system: System,
        entity: &EntityMapping,
        event: &ChangeEvent,
    ) -> ViewResult<()> {
        let Some(snapshot_id) = event.snapshot_id.clone() else {
            return Ok(());
        };
        let members = self
            .state
            .feed
            .snapshot_status(system, &entity.name)
            .members_of(&snapshot_id);
        if self.is_snapshot_member(system, &entity.name, &members, &event.id)? {
            return Ok(());
        }
        self.snapshot_members
            .insert((system, entity.name.clone(), members, event.id.clone()));
        let run = self
            .state
            .feed
            .snapshot_status(system, &entity.name)
            .running
            .entry(snapshot_id.clone())
            .or_insert(SnapshotRun {
                started_at: event.occurred_at,
                seen: 0,
                end: None,
            });
        run.started_at = run.started_at.min(event.occurred_at);
        run.seen += 1;
        self.settle_snapshot(system, entity, &snapshot_id)
    }

    fn is_snapshot_member(
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
        Ok(self.snapshot_members.contains(&key)
            || self
                .view
                .snapshot_member(system, entity, snapshot_id, native_id)?)
    }

    /// Reads the end of a snapshot run; the run completes once all its records arrived.
    pub(super) fn end_snapshot(
        &mut self,
        system: System,
        entity: &EntityMapping,
        event: &ChangeEvent,
    ) -> ViewResult<()> {
        let snapshot_id = event
            .snapshot_id
            .clone()
            .expect("invariant: the decoder refuses a snapshot_end without snapshot_id");
        let expected = event
            .records
            .expect("invariant: the decoder refuses a snapshot_end without records");
        let run = self
            .state
            .feed
            .snapshot_status(system, &entity.name)
            .running
            .entry(snapshot_id.clone())
            .or_insert(SnapshotRun {
                started_at: event.occurred_at,
                seen: 0,
                end: None,
            });
        run.end = Some(SnapshotEnd {
            expected,
            ended_at: event.occurred_at,
        });
        self.settle_snapshot(system, entity, &snapshot_id)
    }

    /// Completes an ended run whose count is reached; refuses one that got more records than
    /// announced; leaves one still waiting for records.
    ///
    /// Complete: every live record of the system's entity the run did not contain, and that
    /// did not change since it started, is missing in that system.
    fn settle_snapshot(
        &mut self,
        system: System,
        entity: &EntityMapping,
        snapshot_id: &str,
    ) -> ViewResult<()> {
        let status = self.state.feed.snapshot_status(system, &entity.name);
        let members = status.members_of(snapshot_id);
        let Some(run) = status.running.get(snapshot_id) else {
            return Ok(());
        };
        let Some(end) = run.end.clone() else {
            return Ok(());
        };
        if run.seen < end.expected {
            return Ok(());
        }
        let run = status
            .running
            .remove(snapshot_id)
            .expect("invariant: the run was found just above");
        *status.ended_runs.entry(snapshot_id.to_owned()).or_default() += 1;
        if run.seen > end.expected {
            status.last_incomplete = Some(IncompleteSnapshot {
                snapshot_id: snapshot_id.to_owned(),
                ended_at: end.ended_at,
                expected: end.expected,
                received: run.seen,
            });
            return Ok(());
        }
        let snapshot_id = snapshot_id.to_owned();
        let expected = end.expected;
        let mut native_ids = self.view.native_ids(system, &entity.name)?;
        native_ids.extend(
            self.changed_join_keys
                .keys()
                .filter(|(key_system, key_entity, _)| {
                    *key_system == system && *key_entity == entity.name
                })
                .map(|(_, _, native_id)| native_id.clone()),
        );
        native_ids.sort_unstable();
        native_ids.dedup();
        let mut marked_missing = 0;
        for native_id in native_ids {
            if self.is_snapshot_member(system, &entity.name, &members, &native_id)? {
                continue;
            }
            let Some(join_key) = self.current_join_key(system, &entity.name, &native_id)? else {
                continue;
            };
            let record = self.working_record(&entity.name, &join_key)?;
            let Some(side) = record
                .row
                .side_mut(system)
                .iter_mut()
                .find(|side| side.native_id == native_id)
            else {
                continue;
            };
            if side.deleted || side.last_change_at >= run.started_at {
                continue;
            }
            // Gone at some time before the run's end that nobody saw: at the latest then.
            crate::timeline::note_presence(side, false, end.ended_at);
            side.deleted = true;
            let was_unverified = side.unverified.take().is_some();
            record.dirty = true;
            if was_unverified {
                self.request_reread(RereadChange::Resolved {
                    system,
                    entity: entity.name.clone(),
                    native_id: native_id.clone(),
                })?;
            }
            marked_missing += 1;
        }
        self.state
            .feed
            .snapshot_status(system, &entity.name)
            .last_completed = Some(CompletedSnapshot {
            snapshot_id,
            started_at: run.started_at,
            completed_at: end.ended_at,
            records: expected,
            marked_missing,
        });
        self.state
            .feed
            .snapshot_completed(system, &entity.name, run.started_at, end.ended_at);
        Ok(())
    }
}
