//! The apply loop: plans each batch with the core planner and hands the plan to the writer
//! thread, which commits it, the event log and the batch's offsets in one WriteBatch.
//!
//! While a batch is being written the loop already plans the next one. It reads through an
//! overlay of the batches still in flight, so it sees their effects before the store does;
//! an overlay entry is dropped once its batch is durable. A revocation waits until every
//! batch in flight is durable before it is confirmed.
//!
//! When the writer refuses a batch (its partition was revoked although the revocation was not
//! confirmed in time, see [`crate::fence`]), the loop reloads its state from the store and
//! plans the refused batches' messages of the partitions still assigned again.
//!
//! The loop also runs the reconciliation clock. Event time drives it; while tandem is caught
//! up (lag 0 on every assigned partition) and no event arrives, the clock advances with wall
//! time from the last event time, so that a change the sync layer never copies turns from
//! `pending` into a divergence once the grace period has passed, even on a quiet stream.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender, TryRecvError};
use tandem_core::apply::pending::{Overlay, Pending};
use tandem_core::feed::{OffsetLoss, OffsetLossKind};
use tandem_core::StateView;
use tandem_core::{ApplyState, Input, Mapping, Planner, Reference, System, Timestamp};
use tandem_store::{NextOffset, Store};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn};

use crate::consumer::{ApplyCommand, ConsumedMessage, ControlRequest, Decoded, PartitionResets};
use crate::disk::DiskGuard;
use crate::fence::Fence;
use crate::metrics::IngestMetrics;
use crate::status::IngestStatus;
use crate::writer::{WriteJob, WriteOutcome, WriterLink};
use crate::{Error, IngestSettings, Result};
use tandem_core::cutover::{StepOrder, TransitionRecord};

/// Records evaluated per committed chunk during a re-evaluation.
const REEVALUATION_CHUNK: usize = 20_000;
/// How often a re-evaluation logs its progress.
const REEVALUATION_LOG_EVERY: Duration = Duration::from_secs(5);

/// How often the loop wakes up when no batch arrives, to move the idle clock.
const TICK: Duration = Duration::from_secs(1);

/// Batches planned but not yet durable, at most: one being written, one waiting.
const MAX_IN_FLIGHT: usize = 2;

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
    jobs_tx: Sender<WriteJob>,
    written_rx: Receiver<Result<WriteOutcome>>,
    /// The partitions assigned here; the writer commits under it.
    fence: Arc<Fence>,
    /// Starts anew each time the state is reloaded after a refused batch: the writer refuses
    /// the batches of an epoch after its first refusal.
    epoch: u64,
    /// Whether the writer refused a batch of this epoch: the state is reloaded once the
    /// batches in flight are back.
    refused: bool,
    /// The messages of the refused batches, in order, to plan again.
    replan: Vec<ConsumedMessage>,
    /// Batches the consumer sent during a re-evaluation, planned once it is over.
    held: Vec<Vec<ConsumedMessage>>,
    /// Fires at the stop: a re-evaluation under way gives up (it starts over at the next start).
    cancel: CancellationToken,
    /// The state after the last planned batch (written or in flight).
    state: ApplyState,
    next_offsets: BTreeMap<(String, i32), NextOffset>,
    in_flight: Pending,
    next_seq: u64,
    /// The clock and the wall time of the last event applied, for the idle rule.
    last_event: (Timestamp, Instant),
    disk: DiskGuard,
    /// Partitions whose reset is durable, for the consumer to read again from offset 0.
    resets: PartitionResets,
}

impl ApplyLoop {
    pub(crate) fn try_new(
        store: Store,
        mapping: Arc<Mapping>,
        settings: IngestSettings,
        status: Arc<IngestStatus>,
        metrics: IngestMetrics,
        dead_letter_tx: Sender<()>,
        writer: WriterLink,
    ) -> Result<Self> {
        let (settings_store_path, settings_min_free) =
            (settings.store_path.clone(), settings.min_free_bytes);
        let state = store.apply_state().map_err(Error::Store)?;
        let next_offsets = store.next_offsets().map_err(Error::Store)?;
        metrics.count_up_to(&state.counters);
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
            jobs_tx: writer.jobs_tx,
            written_rx: writer.written_rx,
            fence: writer.fence,
            epoch: 0,
            refused: false,
            replan: Vec::new(),
            held: Vec::new(),
            cancel: CancellationToken::new(),
            state,
            next_offsets,
            in_flight: Pending::default(),
            next_seq: 0,
            disk: DiskGuard::new(settings_store_path, settings_min_free),
            resets: PartitionResets::default(),
        })
    }

    /// Hands reset partitions to the poll loop through `resets`.
    pub(crate) fn with_resets(self, resets: PartitionResets) -> Self {
        ApplyLoop { resets, ..self }
    }

    /// Gives up a re-evaluation under way when `cancel` fires.
    pub(crate) fn with_cancel(self, cancel: CancellationToken) -> Self {
        ApplyLoop { cancel, ..self }
    }

    /// Runs until the consumer's channel closes; an error stops ingestion. Cutover steps and
    /// re-evaluations come on a channel of their own, held by the API, so that it never keeps
    /// the loop alive at shutdown. Before the first batch, the stored records of every entity
    /// whose rules changed since the store was last evaluated are evaluated again.
    pub(crate) fn run(
        mut self,
        commands: Receiver<ApplyCommand>,
        mut control: Receiver<ControlRequest>,
    ) -> Result<()> {
        let _span = info_span!("apply").entered();
        let written_rx = self.written_rx.clone();
        match startup_reevaluation(&self.state, &self.mapping) {
            Startup::UpToDate => {}
            Startup::RecordRules => {
                self.state.rules = Some(self.mapping.fingerprint());
                self.state.entity_rules = self.mapping.entity_fingerprints();
                self.plan_batch(Vec::new())?;
                self.drain()?;
            }
            Startup::Reevaluate { reason, only } => self.reevaluate(reason, only, &commands)?,
        }
        loop {
            // Durable batches first: their overlay entries can go and their offsets show.
            while let Ok(written) = written_rx.try_recv() {
                self.settle(Ok(written))?;
            }
            // A refused batch: the state is reloaded, and what is still ours planned again.
            if self.refused {
                self.drain()?;
            }
            select! {
                recv(commands) -> command => match command {
                    Ok(ApplyCommand::Batch(batch)) => self.plan_batch(batch)?,
                    Ok(ApplyCommand::Revoke { partitions, done }) => {
                        self.drain()?;
                        debug!(partitions = ?partitions, "revocation confirmed: every batch before it is durable");
                        let _ = done.send(());
                    }
                    Err(_) => return self.drain(),
                },
                recv(control) -> request => match request {
                    Ok(ControlRequest::Step { order, reply }) => self.cutover(order, reply)?,
                    Ok(ControlRequest::Reevaluate { reason }) => {
                        self.reevaluate(reason, None, &commands)?
                    }
                    Ok(ControlRequest::ResetPartition { loss, reason, reply }) => {
                        let outcome = self.reset_partition(loss, &reason)?;
                        let _ = reply.send(outcome);
                    }
                    // The API is gone (shutting down): stop listening.
                    Err(_) => control = crossbeam_channel::never(),
                },
                recv(written_rx) -> written => self.settle(written)?,
                default(TICK) => self.tick()?,
            }
        }
    }

    /// The store as the planner sees it: with the batches in flight laid over it.
    fn view(&self) -> Overlay<'_, Store> {
        self.in_flight.over(&self.store)
    }

    /// A planner starting from the current state, with the configured rules.
    fn planner<'s>(&'s self, view: &'s Overlay<'s, Store>) -> Planner<'s, Overlay<'s, Store>> {
        Planner::new(&self.mapping, self.settings.grace, view, self.state.clone())
            .with_ownership(&self.settings.ownership)
    }

    /// Waits until every batch in flight is durable, or refused and planned again.
    fn drain(&mut self) -> Result<()> {
        loop {
            while !self.in_flight.is_empty() {
                let written = self.written_rx.recv();
                self.settle(written)?;
            }
            if !self.refused {
                return Ok(());
            }
            self.replan_refused()?;
        }
    }

    /// After the writer refused a batch, and with it every later one of the epoch (all of
    /// them back, none in flight): reloads the state from the store, which holds exactly the
    /// batches before the refused one, starts a new epoch and plans the refused batches'
    /// messages of the partitions still assigned again.
    fn replan_refused(&mut self) -> Result<()> {
        let messages = std::mem::take(&mut self.replan);
        self.refused = false;
        self.epoch += 1;
        self.in_flight = Pending::default();
        self.state = self.store.apply_state().map_err(Error::Store)?;
        self.next_offsets = self.store.next_offsets().map_err(Error::Store)?;
        warn!(
            epoch = self.epoch,
            messages = messages.len(),
            "the writer refused batches of a revoked partition: state reloaded from the store; planning their messages of partitions still assigned again"
        );
        self.plan_batch(messages)
    }

    /// Takes note that a batch is durable (live status, metrics, overlay), or that it was
    /// refused.
    fn settle(
        &mut self,
        written: std::result::Result<Result<WriteOutcome>, crossbeam_channel::RecvError>,
    ) -> Result<()> {
        let written = match written.map_err(|_| Error::Panicked { thread: "writer" })?? {
            WriteOutcome::Committed(written) => written,
            WriteOutcome::Refused(job) => {
                self.in_flight.settle(job.seq);
                // Every batch in flight is of the current epoch: the state is only reloaded
                // once none is.
                self.refused = true;
                self.replan.extend(job.messages);
                return Ok(());
            }
        };
        let job = &written.job;
        self.in_flight.settle(job.seq);
        self.metrics.count_up_to(&job.plan.state.counters);
        let applied_systems: Vec<System> = System::ALL
            .into_iter()
            .filter(|system| {
                job.plan.state.counters.system(*system).events_applied
                    > job.counters_before.system(*system).events_applied
            })
            .collect();
        self.status.update(|snapshot| {
            for (topic, partition, next) in &job.offsets {
                snapshot
                    .partitions
                    .entry((topic.clone(), *partition))
                    .or_default()
                    .next_offset = Some(next.0);
            }
            for system in &applied_systems {
                snapshot
                    .last_applied_at
                    .insert(*system, written.committed_at);
            }
        });
        if written.stats.dead_lettered > 0 {
            let _ = self.dead_letter_tx.try_send(());
        }
        let elapsed = job.started.elapsed();
        self.metrics.observe_batch(elapsed.as_secs_f64());
        debug!(
            messages = job.messages.len(),
            logged = written.stats.logged,
            dead_lettered = written.stats.dead_lettered,
            records_changed = written.stats.records_changed,
            due = job.due,
            clock = %job.plan.state.clock,
            elapsed_ms = elapsed.as_secs_f64() * 1e3,
            "batch committed"
        );
        Ok(())
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

    /// Reads the disk guard and tells the consumer whether to pause.
    pub(crate) fn watch_disk(&mut self) {
        let paused = self.disk.check().map(str::to_owned);
        if self.status.snapshot().paused != paused {
            self.status.update(|snapshot| snapshot.paused = paused);
        }
    }

    /// A second without messages. Records due on the clock (the idle floor's, with the idle
    /// rule) get a batch of their own. Without the idle rule the clock stands still, but a
    /// batch re-evaluates at most `MAX_DUE_PER_BATCH` records: the rest wait for no message.
    fn tick(&mut self) -> Result<()> {
        self.watch_disk();
        let floor = self
            .idle_clock_floor()
            .map_or(self.state.clock, |floor| floor.max(self.state.clock));
        let due = self
            .view()
            .due_records(floor, 1)
            .map_err(|source| Error::Due { source })?;
        if due.is_empty() {
            return Ok(());
        }
        self.plan_batch(Vec::new())
    }

    /// Takes a cutover step in a batch of its own, and answers once it is durable.
    fn cutover(
        &mut self,
        order: StepOrder,
        reply: Sender<std::result::Result<TransitionRecord, String>>,
    ) -> Result<()> {
        let transition = order.transition;
        let mut outcome = None;
        let epoch = self.epoch;
        self.plan_batch_with(Vec::new(), Some((order, &mut outcome)))?;
        self.drain()?;
        let mut outcome = outcome.unwrap_or_else(|| Err("the step was not planned".to_owned()));
        if self.epoch != epoch {
            // The step's batch came after a refused one, so it was refused too.
            outcome = Err("a rebalance refused the batches in flight before the step was durable; nothing changed: take the step again".to_owned());
        }
        match &outcome {
            Ok(record) => {
                let caller = record.caller.clone().unwrap_or_default();
                info!(
                    transition = %record.transition,
                    from = %record.from,
                    to = %record.to,
                    by = ?record.by,
                    token = %caller.token,
                    address = %caller.address,
                    request_id = %caller.request_id,
                    reason = ?record.reason,
                    owner = %record.owner,
                    epoch = record.epoch,
                    "cutover step taken"
                )
            }
            Err(refusal) => warn!(%transition, %refusal, "cutover step refused"),
        }
        let _ = reply.send(outcome);
        Ok(())
    }

    /// Records that a re-created topic's partition is read again from offset 0, in a batch of
    /// its own (the loss, its unverified records and snapshot requests, the stored position
    /// set to 0), then hands the partition back to the consumer.
    /// The inner `Err` says why the reset was not made.
    fn reset_partition(
        &mut self,
        loss: OffsetLoss,
        reason: &str,
    ) -> Result<std::result::Result<(), String>> {
        let key = (loss.topic.clone(), loss.partition);
        warn!(
            topic = %loss.topic,
            partition = loss.partition,
            stored_next_offset = loss.first_offset,
            // Debug formatting escapes newlines and control characters: the reason is the
            // operator's text and must not forge log lines.
            reason = ?reason,
            "partition reset by an operator: reading the re-created topic again from offset 0; records known on it are unverified and a snapshot was requested"
        );
        let system = loss.system;
        let reset = ConsumedMessage::position(
            tandem_store::Coordinates {
                topic: loss.topic.clone(),
                partition: loss.partition,
                // The position after this part is offset 0.
                offset: -1,
            },
            system,
            Decoded::Lost(loss),
        );
        let epoch = self.epoch;
        self.plan_batch(vec![reset])?;
        self.drain()?;
        if self.epoch != epoch && !self.fence.is_assigned(&key.0, key.1) {
            return Ok(Err(format!(
                "{}/{} was revoked before its reset was durable: reset it on the instance it is assigned to now",
                key.0, key.1
            )));
        }
        crate::consumer::lock(&self.resets).push(key);
        Ok(Ok(()))
    }

    /// Evaluates the stored records of `only` (`None`: every entity) again with the current
    /// rules, in chunks committed like batches (unchanged records are not rewritten), then
    /// records the rules' fingerprints in the state. Consumption is paused meanwhile; the API
    /// keeps answering from the store and shows the progress. Between chunks the consumer is
    /// answered (see [`ApplyLoop::answer_consumer`]), so a revocation waits for one chunk at
    /// most, and a stop ends it. Interrupted by a stop or a crash, it starts over at the next
    /// start (a record evaluated twice evaluates the same).
    fn reevaluate(
        &mut self,
        reason: String,
        only: Option<Vec<String>>,
        commands: &Receiver<ApplyCommand>,
    ) -> Result<()> {
        self.drain()?;
        let started = Instant::now();
        let started_at = Timestamp::from_system_time(std::time::SystemTime::now());
        let entities: Vec<String> = self
            .mapping
            .entities()
            .map(|entity| entity.name.clone())
            .filter(|name| only.as_ref().is_none_or(|only| only.contains(name)))
            .collect();
        let total: u64 = entities
            .iter()
            .filter_map(|name| self.state.summaries.get(name))
            .map(tandem_core::EntitySummary::records)
            .sum();
        info!(%reason, records = total, entities = ?entities, "evaluating stored records again");
        let mut progress = crate::status::Reevaluation {
            reason,
            done: 0,
            total,
            changed: 0,
            started_at,
            rate: 0.0,
            eta_seconds: None,
            finished_at: None,
        };
        self.status
            .update(|snapshot| snapshot.reevaluation = Some(progress.clone()));
        // Until it finishes, the store does not claim these entities were evaluated with any
        // rules: a crash or a configuration change meanwhile re-evaluates them at next start.
        self.state.rules = None;
        match &only {
            Some(entities) => {
                for entity in entities {
                    self.state.entity_rules.remove(entity);
                }
            }
            None => self.state.entity_rules.clear(),
        }
        self.plan_batch(Vec::new())?;
        self.drain()?;
        let mut last_log = Instant::now();
        let store = self.store.clone();
        let clock = self.state.clock;
        // Every batch in flight from here on is a chunk without messages: no revocation can
        // refuse one, so each chunk evaluated is committed.
        let interrupted = std::thread::scope(|scope| -> Result<bool> {
            // One thread reads the next chunk from the store while the chunk before is
            // evaluated; a chunk waits at most one ahead.
            let (chunks, received) = crossbeam_channel::bounded::<ReadChunk>(1);
            let reader_entities = entities.clone();
            let reader_store = store.clone();
            std::thread::Builder::new()
                .name("tandem-reeval-read".to_owned())
                .spawn_scoped(scope, move || {
                    for entity in reader_entities {
                        let snapshot = reader_store.read();
                        let mut rows = snapshot.encoded_records_of(&entity).peekable();
                        while rows.peek().is_some() {
                            let chunk: std::result::Result<Vec<_>, _> =
                                rows.by_ref().take(REEVALUATION_CHUNK).collect();
                            let failed = chunk.is_err();
                            if chunks.send((entity.clone(), chunk)).is_err() || failed {
                                return;
                            }
                        }
                    }
                })
                .expect("invariant: the OS can start a thread");
            for (entity, encoded) in received {
                if self.answer_consumer(commands) {
                    return Ok(true);
                }
                let encoded = encoded.map_err(Error::Store)?;
                let Some(rules) = self.mapping.entity(&entity).cloned() else {
                    continue;
                };
                let chunk_started = Instant::now();
                // Decoding and comparing take the time: both cores do it, and only the
                // records whose evaluation changes go through a planner. Rows without a live
                // record on either side are evaluated too, but not counted: `total` is the
                // summaries' count of records, so `done` never passes it.
                let (chunk, references, count) =
                    changed_rows(&rules, &store, encoded, clock, self.settings.grace)?;
                let view = self.view();
                let mut planner = self.planner(&view);
                planner.add_references(references);
                for (join_key, row) in chunk {
                    planner.reevaluate_row(&entity, join_key, row);
                }
                let plan = planner.finish();
                progress.changed += plan.records.len() as u64;
                progress.done += count;
                self.submit(Vec::new(), plan, chunk_started, 0)?;
                let elapsed = started.elapsed().as_secs_f64().max(1e-9);
                progress.rate = progress.done as f64 / elapsed;
                progress.eta_seconds = Some(
                    progress.total.saturating_sub(progress.done) as f64 / progress.rate.max(1e-9),
                );
                self.status
                    .update(|snapshot| snapshot.reevaluation = Some(progress.clone()));
                if last_log.elapsed() >= REEVALUATION_LOG_EVERY {
                    last_log = Instant::now();
                    info!(
                        done = progress.done,
                        total = progress.total,
                        changed = progress.changed,
                        rate = progress.rate.round(),
                        eta_seconds = progress.eta_seconds.map(f64::round),
                        "re-evaluation under way"
                    );
                }
            }
            Ok(false)
        })?;
        if interrupted {
            self.drain()?;
            info!(
                done = progress.done,
                total = progress.total,
                changed = progress.changed,
                "re-evaluation interrupted by the stop; it starts over at the next start (until it finishes, the store does not claim its rules)"
            );
            self.status.update(|snapshot| snapshot.reevaluation = None);
            return self.plan_held();
        }
        // The fingerprint goes into the state with the next (empty) batch.
        self.state.rules = Some(self.mapping.fingerprint());
        self.state.entity_rules = self.mapping.entity_fingerprints();
        self.plan_batch(Vec::new())?;
        self.drain()?;
        progress.eta_seconds = None;
        progress.finished_at = Some(Timestamp::from_system_time(std::time::SystemTime::now()));
        info!(
            records = progress.done,
            changed = progress.changed,
            rate = progress.rate.round(),
            seconds = started.elapsed().as_secs_f64(),
            "re-evaluation finished"
        );
        self.status.update(|snapshot| {
            snapshot.reevaluation = None;
            snapshot.last_reevaluation = Some(progress);
        });
        self.plan_held()
    }

    /// Between two chunks of a re-evaluation, takes what the consumer sent meanwhile, so that
    /// a revocation is confirmed at once and a stop is noticed; `true` when the re-evaluation
    /// must stop (the stop was asked for, or the consumer is gone).
    ///
    /// Batches are held, in order, until the re-evaluation is over: their events must not
    /// change records it evaluates from its snapshot. Consumption is paused meanwhile, so only
    /// the few read before the pause are held. A revocation drops the held messages of its
    /// partitions and is confirmed: nothing of them was planned, and the chunks in flight carry
    /// no messages, so nothing of them can be written.
    fn answer_consumer(&mut self, commands: &Receiver<ApplyCommand>) -> bool {
        loop {
            match commands.try_recv() {
                Ok(ApplyCommand::Batch(batch)) => self.held.push(batch),
                Ok(ApplyCommand::Revoke { partitions, done }) => {
                    let mut dropped = 0;
                    for batch in &mut self.held {
                        let before = batch.len();
                        batch.retain(|message| {
                            !partitions.iter().any(|(topic, partition)| {
                                message.coordinates.topic == *topic
                                    && message.coordinates.partition == *partition
                            })
                        });
                        dropped += before - batch.len();
                    }
                    debug!(partitions = ?partitions, dropped, "revocation confirmed during a re-evaluation: the held messages of its partitions are dropped");
                    let _ = done.send(());
                }
                Err(TryRecvError::Empty) => return self.cancel.is_cancelled(),
                Err(TryRecvError::Disconnected) => return true,
            }
        }
    }

    /// Plans the batches held during a re-evaluation, in the order they came.
    fn plan_held(&mut self) -> Result<()> {
        for batch in std::mem::take(&mut self.held) {
            self.plan_batch(batch)?;
        }
        Ok(())
    }

    fn plan_batch(&mut self, batch: Vec<ConsumedMessage>) -> Result<()> {
        self.plan_batch_with(batch, None)
    }

    #[allow(clippy::type_complexity)]
    fn plan_batch_with(
        &mut self,
        batch: Vec<ConsumedMessage>,
        transition: Option<(
            StepOrder,
            &mut Option<std::result::Result<TransitionRecord, String>>,
        )>,
    ) -> Result<()> {
        let started = Instant::now();
        self.watch_disk();
        let mut batch = batch;
        self.fence.drop_revoked(&mut batch, "before planning");
        let batch = self.drop_replays(batch);
        let view = self.view();
        let mut planner = self.planner(&view);
        if let Some((order, outcome)) = transition {
            let at = Timestamp::from_system_time(std::time::SystemTime::now());
            *outcome = Some(planner.transition(order, at));
        }
        for message in &batch {
            let input = match &message.decoded {
                Decoded::Skipped => Input::Skipped {
                    system: message.system,
                },
                Decoded::PassedOver => Input::PassedOver,
                Decoded::Lost(loss) => Input::OffsetsLost(loss),
                Decoded::Event(event) => Input::Event {
                    system: message.system,
                    event,
                    partition: Some((
                        message.coordinates.topic.as_str(),
                        message.coordinates.partition,
                    )),
                },
                Decoded::Rejected(error) => {
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
        planner
            .settle_feeds()
            .map_err(|source| Error::Settle { source })?;
        // The store's pending index with the batches in flight laid over it: a record one of
        // them wrote is due as that batch left it.
        let due = view
            .due_records(planner.clock(), MAX_DUE_PER_BATCH)
            .map_err(|source| Error::Due { source })?;
        for (_, entity, join_key) in &due {
            planner
                .reevaluate(entity, join_key)
                .map_err(|source| Error::Reevaluate {
                    entity: entity.clone(),
                    join_key: join_key.clone(),
                    source,
                })?;
        }
        let plan = planner.finish();
        for violation in &plan.violations {
            let actor = violation.actor.as_ref();
            warn!(
                kind = %violation.kind,
                system = %violation.system,
                entity = %violation.entity,
                join_key = %violation.join_key,
                native_id = %violation.native_id,
                actor_kind = actor.map_or("unknown", |actor| tandem_core::ownership::actor_kind_name(actor.kind)),
                actor_id = actor.and_then(|actor| actor.id.as_deref()).unwrap_or(""),
                event_id = %violation.event_id,
                owner = %violation.owner,
                epoch = violation.epoch,
                "ownership violated: re-point this writer at the owning system, allow it under ownership.allowed, or give it the current epoch"
            );
        }

        self.submit(batch, plan, started, due.len())
    }

    /// Hands a plan (and the messages it was made from) to the writer thread.
    fn submit(
        &mut self,
        batch: Vec<ConsumedMessage>,
        plan: tandem_core::Plan,
        started: Instant,
        due: usize,
    ) -> Result<()> {
        let mut offsets: BTreeMap<(String, i32), NextOffset> = BTreeMap::new();
        for message in &batch {
            let key = (
                message.coordinates.topic.clone(),
                message.coordinates.partition,
            );
            let next = NextOffset::after(message.coordinates.offset);
            let entry = offsets.entry(key).or_insert(next);
            *entry = (*entry).max(next);
        }
        if plan.state.clock > self.state.clock && !batch.is_empty() {
            self.last_event = (plan.state.clock, Instant::now());
        }
        // At most MAX_IN_FLIGHT batches ahead of the store: bounded memory, bounded overlay.
        while self.in_flight.len() >= MAX_IN_FLIGHT {
            let written = self.written_rx.recv();
            self.settle(written)?;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let events = batch
            .iter()
            .map(|message| Some((message.system, message.event()?.event_id.as_str())));
        self.in_flight.remember(seq, events, &plan);
        for (key, next) in &offsets {
            self.next_offsets.insert(key.clone(), *next);
        }
        let counters_before = std::mem::replace(&mut self.state, plan.state.clone()).counters;
        let job = WriteJob {
            seq,
            epoch: self.epoch,
            messages: batch,
            plan,
            offsets: offsets
                .into_iter()
                .map(|((topic, partition), next)| (topic, partition, next))
                .collect(),
            counters_before,
            started,
            due,
        };
        self.jobs_tx
            .send(job)
            .map_err(|_| Error::Panicked { thread: "writer" })
    }

    /// Drops messages the store already holds (a replay after a seek); notes offset jumps.
    fn drop_replays(&self, mut batch: Vec<ConsumedMessage>) -> Vec<ConsumedMessage> {
        let mut expected: BTreeMap<(String, i32), i64> = BTreeMap::new();
        batch.retain(|message| {
            let coordinates = &message.coordinates;
            let key = (coordinates.topic.clone(), coordinates.partition);
            if is_reset(message) {
                // The stored position described the topic before it was re-created.
                expected.insert(key, 0);
                return true;
            }
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

/// Whether a part resets its partition to offset 0 (a re-created topic).
fn is_reset(message: &ConsumedMessage) -> bool {
    matches!(&message.decoded, Decoded::Lost(loss) if loss.kind == OffsetLossKind::TopicRecreated)
}

/// What to do at start about the stored evaluations.
#[derive(Debug, PartialEq)]
enum Startup {
    /// They were made with the configured rules.
    UpToDate,
    /// Entities were only removed from the configuration: record the rules, nothing to
    /// evaluate.
    RecordRules,
    /// Evaluate these entities' records again (`None`: every entity).
    Reevaluate {
        reason: String,
        only: Option<Vec<String>>,
    },
}

/// Compares the rules the store was evaluated with against the configured ones.
fn startup_reevaluation(state: &ApplyState, mapping: &Mapping) -> Startup {
    if state.rules.as_ref() == Some(&mapping.fingerprint()) {
        return Startup::UpToDate;
    }
    if state.entity_rules.is_empty() {
        return Startup::Reevaluate {
            reason: "the store was last evaluated by an earlier release, or never".to_owned(),
            only: None,
        };
    }
    // The entities whose records were last evaluated with other rules, or whose
    // re-evaluation did not finish (it forgets their rules before it starts).
    let changed: Vec<String> = mapping
        .entity_fingerprints()
        .into_iter()
        .filter(|(name, rules)| state.entity_rules.get(name) != Some(rules))
        .map(|(name, _)| name)
        .collect();
    if changed.is_empty() {
        return Startup::RecordRules;
    }
    Startup::Reevaluate {
        reason: format!(
            "the rules of {} changed since the store was last evaluated (or their re-evaluation was interrupted)",
            changed.join(", ")
        ),
        only: Some(changed),
    }
}

/// A chunk of one entity's stored records, still encoded, as the re-evaluation reads them.
type ReadChunk = (
    String,
    std::result::Result<Vec<(String, Vec<u8>)>, tandem_store::Error>,
);

/// The rows of a chunk whose evaluation changed, and the references every row looked up.
/// The rows whose evaluation changed, the references they hold, and how many of the rows
/// evaluated are counted records (a live record on either side: what the summaries count).
type ChangedRows = (Vec<(String, tandem_core::RecordRow)>, Vec<Reference>, u64);

/// The stored rows of one entity whose evaluation at `clock` differs from the stored one,
/// decoded and evaluated on two threads (a record's references are looked up in the store,
/// and recorded for every row: a rule may have gained a `ref`).
fn changed_rows(
    rules: &tandem_core::EntityMapping,
    store: &Store,
    encoded: Vec<(String, Vec<u8>)>,
    clock: Timestamp,
    grace: Duration,
) -> Result<ChangedRows> {
    let evaluate_part = |part: &[(String, Vec<u8>)]| -> Result<ChangedRows> {
        let mut changed = Vec::new();
        let mut references = Vec::new();
        let mut counted = 0;
        let rows = part
            .iter()
            .map(|(join_key, bytes)| Ok((join_key, tandem_store::decode_record(bytes)?)))
            .collect::<std::result::Result<Vec<_>, tandem_store::Error>>()
            .map_err(Error::Store)?;
        // The join keys every reference of the part needs, read in one sorted batch.
        let mut wanted: Vec<(System, String, String)> = rows
            .iter()
            .flat_map(|(_, row)| tandem_core::record::referenced_records(rules, row))
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        let found = store.join_keys_many(&wanted).map_err(Error::Store)?;
        for (join_key, row) in rows {
            counted += u64::from(row.status.status.is_some());
            let mut resolve = |system: System, entity: &str, native_id: &str| {
                references.push(Reference {
                    system,
                    entity: entity.to_owned(),
                    native_id: native_id.to_owned(),
                    from_entity: rules.name.clone(),
                    from_key: join_key.clone(),
                });
                let read_ahead = wanted.binary_search_by(|(known_system, known_entity, id)| {
                    (*known_system, known_entity.as_str(), id.as_str())
                        .cmp(&(system, entity, native_id))
                });
                let join_key = match read_ahead {
                    Ok(index) => found[index].clone(),
                    Err(_) => StateView::join_key(store, system, entity, native_id)
                        .ok()
                        .flatten(),
                }?;
                // Unreadable: doubtful, never a false in_sync.
                let unverified =
                    StateView::is_unverified(store, system, entity, native_id).unwrap_or(true);
                Some(tandem_core::record::Resolved {
                    join_key,
                    unverified,
                })
            };
            let after = tandem_core::apply::evaluate(rules, &row, clock, grace, &mut resolve);
            if tandem_core::apply::evaluation_changes(&after, &row) {
                changed.push((join_key.clone(), row));
            }
        }
        Ok((changed, references, counted))
    };
    let (left, right) = encoded.split_at(encoded.len() / 2);
    std::thread::scope(|scope| {
        let other = scope.spawn(|| evaluate_part(right));
        let (mut changed, mut references, counted) = evaluate_part(left)?;
        let (more_changed, more_references, more_counted) =
            other.join().map_err(|_| Error::Panicked {
                thread: "re-evaluation",
            })??;
        changed.extend(more_changed);
        references.extend(more_references);
        Ok((changed, references, counted + more_counted))
    })
}

#[cfg(test)]
mod tests {
    use tandem_core::mapping::{FieldMapping, JoinSpec};
    use tandem_core::{EntityMapping, JoinKeySource};

    use super::*;

    fn mapping(contact_email: &str) -> Mapping {
        let entity = |name: &str, fields| EntityMapping {
            name: name.to_owned(),
            join: JoinSpec {
                source: JoinKeySource::ExternalId,
                target: JoinKeySource::Field("legacy_id".to_owned()),
            },
            fields,
        };
        Mapping::try_new(vec![
            entity("contact", vec![FieldMapping::exact("Email", contact_email)]),
            entity("deal", vec![FieldMapping::exact("Amount", "amount")]),
        ])
        .unwrap()
    }

    /// The state after a finished evaluation with `mapping`.
    fn evaluated_with(mapping: &Mapping) -> ApplyState {
        ApplyState {
            rules: Some(mapping.fingerprint()),
            entity_rules: mapping.entity_fingerprints(),
            ..ApplyState::default()
        }
    }

    fn only(entities: &[&str]) -> Option<Option<Vec<String>>> {
        Some(Some(
            entities.iter().map(|name| (*name).to_owned()).collect(),
        ))
    }

    fn reevaluates(startup: Startup) -> Option<Option<Vec<String>>> {
        match startup {
            Startup::Reevaluate { only, .. } => Some(only),
            _ => None,
        }
    }

    #[test]
    fn only_the_entities_whose_rules_changed_are_evaluated_again() {
        let before = mapping("email");
        let state = evaluated_with(&before);
        assert_eq!(startup_reevaluation(&state, &before), Startup::UpToDate);
        // contact's target field was renamed: contact only.
        let after = mapping("email_address");
        assert_eq!(
            reevaluates(startup_reevaluation(&state, &after)),
            only(&["contact"])
        );
    }

    #[test]
    fn a_store_without_per_entity_rules_is_evaluated_whole() {
        let current = mapping("email");
        let earlier_release = ApplyState {
            rules: Some("rules-2:[...]".to_owned()),
            ..ApplyState::default()
        };
        assert_eq!(
            reevaluates(startup_reevaluation(&earlier_release, &current)),
            Some(None)
        );
        assert_eq!(
            reevaluates(startup_reevaluation(&ApplyState::default(), &current)),
            Some(None)
        );
    }

    #[test]
    fn an_interrupted_reevaluation_is_done_again_even_after_a_revert() {
        // contact's re-evaluation under new rules started (it forgets contact's rules and the
        // whole fingerprint first) and was cut short; then the configuration went back to the
        // rules the store had before. The contacts committed meanwhile were evaluated with the
        // other rules: they are evaluated again.
        let before = mapping("email");
        let mut state = evaluated_with(&before);
        state.rules = None;
        state.entity_rules.remove("contact");
        assert_eq!(
            reevaluates(startup_reevaluation(&state, &before)),
            only(&["contact"])
        );
    }

    #[test]
    fn removing_an_entity_evaluates_nothing() {
        let with_deal = mapping("email");
        let mut state = evaluated_with(&with_deal);
        state
            .entity_rules
            .insert("ticket".to_owned(), "rules-3:{...}".to_owned());
        state.rules = Some("another fingerprint".to_owned());
        assert_eq!(
            startup_reevaluation(&state, &with_deal),
            Startup::RecordRules
        );
    }
}
