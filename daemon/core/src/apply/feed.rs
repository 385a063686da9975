//! The planner's part in feed completeness: sequence holes, snapshot runs, their completion.

use crate::apply::{Planner, StateView, ViewResult};
use crate::event::ChangeEvent;
use crate::feed::{
    CompletedSnapshot, IncompleteSnapshot, RereadChange, SnapshotEnd, SnapshotRequest, SnapshotRun,
};
use crate::mapping::EntityMapping;
use crate::record::{Unverified, UnverifiedReason};
use crate::system::System;

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
        for entity in self.mapping.entities() {
            if self
                .state
                .feed
                .require_snapshot(system, &entity.name, event.occurred_at)
            {
                self.snapshot_requests.push(SnapshotRequest {
                    system,
                    entity: entity.name.clone(),
                    reason: reason.clone(),
                    requested_at: event.occurred_at,
                });
            }
        }
        self.mark_partition_unverified(topic, partition, None, UnverifiedReason::SeqHole, event)
    }

    /// A `gap` that names no record: the feed lost changes to records of `entity` it cannot
    /// name. The entity needs a snapshot, and every record of it known on the partition the
    /// gap arrived on is unverified until re-read.
    pub(super) fn entity_gap(
        &mut self,
        system: System,
        entity: &EntityMapping,
        event: &ChangeEvent,
        partition: Option<(&str, i32)>,
    ) -> ViewResult<()> {
        if self
            .state
            .feed
            .require_snapshot(system, &entity.name, event.occurred_at)
        {
            let place = partition
                .map(|(topic, partition)| format!(" on {topic}/{partition}"))
                .unwrap_or_default();
            self.snapshot_requests.push(SnapshotRequest {
                system,
                entity: entity.name.clone(),
                reason: format!(
                    "the feed lost changes to unnamed records{place} (event {})",
                    event.event_id
                ),
                requested_at: event.occurred_at,
            });
        }
        match partition {
            Some((topic, partition)) => self.mark_partition_unverified(
                topic,
                partition,
                Some(&entity.name),
                UnverifiedReason::Gap,
                event,
            ),
            None => Ok(()),
        }
    }

    fn mark_partition_unverified(
        &mut self,
        topic: &str,
        partition: i32,
        only_entity: Option<&str>,
        reason: UnverifiedReason,
        event: &ChangeEvent,
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
        members.sort_unstable();
        members.dedup();
        for (system, entity_name, native_id) in members {
            if only_entity.is_some_and(|only| only != entity_name) {
                continue;
            }
            let Some(entity) = self.mapping.entity(&entity_name) else {
                continue;
            };
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
            side.unverified = Some(Unverified {
                reason,
                since: event.occurred_at,
            });
            super::track_since(entity, record, event.occurred_at);
            self.request_reread(RereadChange::Request {
                system,
                entity: entity_name,
                native_id,
                reason,
                since: event.occurred_at,
            });
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
        if self.is_snapshot_member(system, &entity.name, &snapshot_id, &event.id)? {
            return Ok(());
        }
        self.snapshot_members.insert((
            system,
            entity.name.clone(),
            snapshot_id.clone(),
            event.id.clone(),
        ));
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
            if self.is_snapshot_member(system, &entity.name, &snapshot_id, &native_id)? {
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
            side.deleted = true;
            let was_unverified = side.unverified.take().is_some();
            super::track_since(entity, record, end.ended_at);
            if was_unverified {
                self.request_reread(RereadChange::Resolved {
                    system,
                    entity: entity.name.clone(),
                    native_id: native_id.clone(),
                });
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
            .snapshot_completed(system, &entity.name, run.started_at);
        Ok(())
    }
}
