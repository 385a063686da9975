//! The apply loop: the store's only writer. It turns each batch into a plan with the core
//! planner and commits the plan, the event log and the batch's offsets in one WriteBatch.
//!
//! It also runs the reconciliation clock. Event time drives it; while tandem is caught up
//! (lag 0 on every assigned partition) and no event arrives, the clock advances with wall
//! time from the last event time, so that a change the sync layer never copies turns from
//! `pending` into a divergence once the grace period has passed, even on a quiet stream.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use tandem_core::{ApplyState, Input, Mapping, Planner, System, Timestamp};
use tandem_store::{Commit, LoggedMessage, NextOffset, Store};
use tracing::{debug, info_span, warn};

use crate::consumer::{ApplyCommand, ConsumedMessage};
use crate::metrics::IngestMetrics;
use crate::status::IngestStatus;
use crate::{Error, IngestSettings, Result};

/// How often the loop wakes up when no batch arrives, to move the idle clock.
const TICK: Duration = Duration::from_secs(1);

/// At most this many pending records are re-evaluated per batch; the rest wait a batch.
const MAX_DUE_PER_BATCH: usize = 10_000;

/// The apply loop's state between batches.
pub(crate) struct ApplyLoop {
    pub(crate) store: Store,
    pub(crate) mapping: Arc<Mapping>,
    pub(crate) settings: IngestSettings,
    pub(crate) status: Arc<IngestStatus>,
    pub(crate) metrics: IngestMetrics,
    /// Wakes the dead-letter forwarder after a batch produced dead letters.
    pub(crate) dead_letter_tx: Sender<()>,
    state: ApplyState,
    next_offsets: BTreeMap<(String, i32), NextOffset>,
    /// The clock and the wall time of the last event applied, for the idle rule.
    last_event: (Timestamp, Instant),
}

impl ApplyLoop {
    pub(crate) fn try_new(
        store: Store,
        mapping: Arc<Mapping>,
        settings: IngestSettings,
        status: Arc<IngestStatus>,
        metrics: IngestMetrics,
        dead_letter_tx: Sender<()>,
    ) -> Result<Self> {
        let state = store.apply_state().map_err(Error::Store)?;
        let next_offsets = store.next_offsets().map_err(Error::Store)?;
        metrics.count(&Default::default(), &state.counters);
        status.update(|snapshot| {
            for ((topic, partition), next) in &next_offsets {
                snapshot
                    .partitions
                    .entry((topic.clone(), *partition))
                    .or_default()
                    .next_offset = Some(next.0);
            }
        });
        Ok(ApplyLoop {
            last_event: (state.clock, Instant::now()),
            store,
            mapping,
            settings,
            status,
            metrics,
            dead_letter_tx,
            state,
            next_offsets,
        })
    }

    /// Runs until the consumer side hangs up; an error stops ingestion.
    pub(crate) fn run(mut self, commands: Receiver<ApplyCommand>) -> Result<()> {
        let _span = info_span!("apply").entered();
        loop {
            match commands.recv_timeout(TICK) {
                Ok(ApplyCommand::Batch(batch)) => self.apply_batch(batch)?,
                Ok(ApplyCommand::Revoke { partitions, done }) => {
                    // Batches are applied in arrival order, so every batch sent before this
                    // command is committed by now.
                    debug!(partitions = ?partitions, "revocation confirmed");
                    let _ = done.send(());
                }
                Err(RecvTimeoutError::Timeout) => self.tick()?,
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
        }
    }

    /// The idle rule: while caught up, the clock follows wall time from the last event.
    fn idle_clock_floor(&self) -> Option<Timestamp> {
        if !self.settings.idle_clock || !self.status.snapshot().caught_up() {
            return None;
        }
        let (clock_at_last_event, wall_at_last_event) = self.last_event;
        if clock_at_last_event == Timestamp::MIN {
            return None;
        }
        Some(clock_at_last_event.saturating_add(wall_at_last_event.elapsed()))
    }

    fn tick(&mut self) -> Result<()> {
        let Some(floor) = self.idle_clock_floor() else {
            return Ok(());
        };
        let due = self.store.due_records(floor, 1).map_err(Error::Store)?;
        if due.is_empty() {
            return Ok(());
        }
        self.apply_batch(Vec::new())
    }

    fn apply_batch(&mut self, batch: Vec<ConsumedMessage>) -> Result<()> {
        let started = Instant::now();
        let batch = self.drop_replays(batch);
        let mut planner = Planner::new(
            &self.mapping,
            self.settings.grace,
            &self.store,
            self.state.clone(),
        );
        for message in &batch {
            let input = match &message.decoded {
                Ok(event) => Input::Event {
                    system: message.system,
                    event,
                },
                Err(error) => {
                    warn!(
                        topic = %message.coordinates.topic,
                        partition = message.coordinates.partition,
                        offset = message.coordinates.offset,
                        reason = %error.reason,
                        detail = %error.detail,
                        "message rejected; sending it to the dead-letter topic"
                    );
                    Input::DeadLetter {
                        system: message.system,
                        reason: error.reason,
                    }
                }
            };
            planner.apply(input).map_err(|source| Error::Plan {
                coordinates: message.coordinates.clone(),
                source,
            })?;
        }
        if let Some(floor) = self.idle_clock_floor() {
            planner.advance_clock(floor);
        }
        let due = self
            .store
            .due_records(planner.clock(), MAX_DUE_PER_BATCH)
            .map_err(Error::Store)?;
        for (entity, join_key) in &due {
            planner
                .reevaluate(entity, join_key)
                .map_err(|source| Error::Reevaluate {
                    entity: entity.clone(),
                    join_key: join_key.clone(),
                    source,
                })?;
        }
        let plan = planner.finish();

        let mut offsets: BTreeMap<(&str, i32), NextOffset> = BTreeMap::new();
        for message in &batch {
            let key = (
                message.coordinates.topic.as_str(),
                message.coordinates.partition,
            );
            let next = NextOffset::after(message.coordinates.offset);
            let entry = offsets.entry(key).or_insert(next);
            *entry = (*entry).max(next);
        }
        let offsets: Vec<(&str, i32, NextOffset)> = offsets
            .into_iter()
            .map(|((topic, partition), next)| (topic, partition, next))
            .collect();
        let logged: Vec<LoggedMessage<'_>> = batch
            .iter()
            .map(|message| LoggedMessage {
                coordinates: &message.coordinates,
                system: message.system,
                payload: &message.payload,
                event: message.decoded.as_ref().ok(),
                dead_letter: message.decoded.as_ref().err(),
            })
            .collect();
        let now = Timestamp::from_system_time(SystemTime::now());
        let stats = self
            .store
            .commit(&Commit {
                messages: &logged,
                plan: &plan,
                offsets: &offsets,
                committed_at: now,
            })
            .map_err(Error::Store)?;

        self.metrics
            .count(&self.state.counters, &plan.state.counters);
        if plan.state.clock > self.state.clock && !batch.is_empty() {
            self.last_event = (plan.state.clock, Instant::now());
        }
        let applied_systems: Vec<System> = System::ALL
            .into_iter()
            .filter(|system| {
                plan.state.counters.system(*system).events_applied
                    > self.state.counters.system(*system).events_applied
            })
            .collect();
        self.state = plan.state;
        for (topic, partition, next) in &offsets {
            self.next_offsets
                .insert(((*topic).to_owned(), *partition), *next);
        }
        self.status.update(|snapshot| {
            for (topic, partition, next) in &offsets {
                snapshot
                    .partitions
                    .entry(((*topic).to_owned(), *partition))
                    .or_default()
                    .next_offset = Some(next.0);
            }
            for system in &applied_systems {
                snapshot.last_applied_at.insert(*system, now);
            }
        });
        if stats.dead_lettered > 0 {
            let _ = self.dead_letter_tx.try_send(());
        }
        let elapsed = started.elapsed();
        self.metrics.observe_batch(elapsed.as_secs_f64());
        debug!(
            messages = batch.len(),
            logged = stats.logged,
            dead_lettered = stats.dead_lettered,
            records_changed = stats.records_changed,
            due = due.len(),
            clock = %self.state.clock,
            elapsed_ms = elapsed.as_secs_f64() * 1e3,
            "batch committed"
        );
        Ok(())
    }

    /// Drops messages the store already holds (a replay after a seek); notes offset jumps.
    fn drop_replays(&self, mut batch: Vec<ConsumedMessage>) -> Vec<ConsumedMessage> {
        let mut expected: BTreeMap<(String, i32), i64> = BTreeMap::new();
        batch.retain(|message| {
            let coordinates = &message.coordinates;
            let key = (coordinates.topic.clone(), coordinates.partition);
            let stored = self.next_offsets.get(&key).copied();
            if stored.is_some_and(|next| next.covers(coordinates.offset)) {
                debug!(%coordinates, "skipping a message applied before");
                return false;
            }
            let next_expected = expected.get(&key).copied().or(stored.map(|next| next.0));
            if next_expected.is_some_and(|next| coordinates.offset > next) {
                // Transaction markers and compaction leave such jumps; so does retention
                // deleting messages before tandem read them.
                debug!(%coordinates, expected = next_expected, "offsets skipped on the broker");
            }
            expected.insert(key, coordinates.offset + 1);
            true
        });
        batch
    }
}
