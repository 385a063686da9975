//! The request forwarder: asks the systems' connectors to re-read unverified records (on
//! `reconcile.reread_topic`) and to run snapshots (on `reconcile.control_topic`), or, for a
//! system whose connector is Debezium, sends both as Debezium signals ([`crate::signals`]).
//!
//! CRM API quotas are tight, so re-reads are targeted (a list of ids), batched per system,
//! entity and reason, and rate-limited per system by a token bucket of
//! `reconcile.reread_max_ids_per_minute`. A record whose request got no answer is asked for
//! again after `reconcile.reread_resend_after`. Requests are at least once: one may repeat
//! after a restart, and a connector answers a repeat with one more full image.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime};

use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde::Serialize;
use tandem_core::record::UnverifiedReason;
use tandem_core::{System, Timestamp};
use tandem_store::{ControlRequest, RereadRow, RereadTarget, Store};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, info_span, warn};

use crate::deliveries::{begin_round, end_round, Deliveries, RoundEnd};
use crate::signals::DebeziumSignals;
use crate::IngestSettings;

/// Where one system's requests go.
enum Destination<'a> {
    /// tandem's own request messages, on this topic.
    Topic(&'a str),
    /// Debezium signals to the system's connector.
    Debezium(&'a DebeziumSignals),
}

/// What one produced message stands for.
pub(crate) enum Sent {
    /// A batch of re-read requests.
    Rereads(Vec<(RereadTarget, RereadRow)>),
    /// One snapshot request.
    Control(ControlRequest),
    /// One violation of the ownership rule, by its outbox key.
    Violation(Vec<u8>),
    /// One cutover step, by its outbox key.
    Transition(Vec<u8>),
    /// One compensation command, by its outbox key.
    Command(Vec<u8>),
}

/// The message asking a connector to send full images of some records again.
#[derive(Serialize)]
struct RereadMessage<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    system: System,
    entity: &'a str,
    ids: Vec<&'a str>,
    reason: UnverifiedReason,
    requested_at: Timestamp,
}

/// The message asking a connector for a full snapshot of one entity.
#[derive(Serialize)]
struct SnapshotMessage<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    system: System,
    entity: &'a str,
    reason: &'a str,
    requested_at: Timestamp,
}

/// Ids a system may still be asked for, refilled continuously.
struct TokenBucket {
    tokens: f64,
    capacity: f64,
    refilled_at: Instant,
}

impl TokenBucket {
    fn new(per_minute: u32) -> Self {
        TokenBucket {
            tokens: f64::from(per_minute),
            capacity: f64::from(per_minute),
            refilled_at: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let elapsed = self.refilled_at.elapsed().as_secs_f64();
        self.refilled_at = Instant::now();
        self.tokens = (self.tokens + elapsed * self.capacity / 60.0).min(self.capacity);
    }

    fn take(&mut self) -> bool {
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Rows of the re-read queue looked at per round, at most.
const MAX_EXAMINED_PER_ROUND: usize = 5_000;

pub(crate) struct RequestForwarder {
    pub(crate) store: Store,
    pub(crate) producer: BaseProducer<Deliveries<Sent>>,
    pub(crate) settings: IngestSettings,
    /// Whether rounds run in transactions (replication: a new active instance fences them).
    pub(crate) transactional: bool,
}

/// Sleeps up to `duration`, returning early when cancelled.
fn cancel_wait(cancel: &CancellationToken, duration: Duration) -> bool {
    let deadline = Instant::now() + duration;
    while Instant::now() < deadline {
        if cancel.is_cancelled() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cancel.is_cancelled()
}

fn now() -> Timestamp {
    Timestamp::from_system_time(SystemTime::now())
}

impl RequestForwarder {
    pub(crate) fn run(self, cancel: CancellationToken) {
        let _span = info_span!("requests").entered();
        let mut buckets: BTreeMap<System, TokenBucket> = System::ALL
            .into_iter()
            .map(|system| {
                (
                    system,
                    TokenBucket::new(self.settings.reread_max_ids_per_minute),
                )
            })
            .collect();
        let mut rereads_in_flight: BTreeSet<RereadTarget> = BTreeSet::new();
        let mut cursor: Option<Vec<u8>> = None;
        let mut control_in_flight: BTreeSet<Vec<u8>> = BTreeSet::new();
        let mut violations_in_flight: BTreeSet<Vec<u8>> = BTreeSet::new();
        loop {
            let stopping = cancel.is_cancelled();
            if !begin_round(&self.producer, self.transactional) {
                return;
            }
            if !stopping {
                let signals = !self.settings.debezium_signals.is_empty();
                if self.settings.reread_topic.is_some() || signals {
                    if let Err(error) =
                        self.send_rereads(&mut buckets, &mut rereads_in_flight, &mut cursor)
                    {
                        error!(%error, "cannot read the re-read queue");
                    }
                }
                if self.settings.control_topic.is_some() || signals {
                    if let Err(error) = self.send_control(&mut control_in_flight) {
                        error!(%error, "cannot read the control outbox");
                    }
                }
                if let Some(topic) = &self.settings.control_topic {
                    if let Err(error) = self.send_transitions(topic, &mut violations_in_flight) {
                        error!(%error, "cannot read the cutover outbox");
                    }
                }
                if let Some(topic) = &self.settings.commands_topic {
                    if let Err(error) = self.send_commands(topic, &mut violations_in_flight) {
                        error!(%error, "cannot read the command outbox");
                    }
                }
                if let Some(topic) = &self.settings.violations_topic {
                    if let Err(error) = self.send_violations(topic, &mut violations_in_flight) {
                        error!(%error, "cannot read the violations outbox");
                    }
                }
            }
            match end_round(&self.producer, self.transactional, stopping) {
                RoundEnd::Settle => self.settle(
                    &mut rereads_in_flight,
                    &mut control_in_flight,
                    &mut violations_in_flight,
                ),
                RoundEnd::Discarded => {
                    rereads_in_flight.clear();
                    control_in_flight.clear();
                    violations_in_flight.clear();
                }
                RoundEnd::Stop => return,
            }
            if stopping {
                return;
            }
            if rereads_in_flight.is_empty()
                && control_in_flight.is_empty()
                && violations_in_flight.is_empty()
            {
                // Nothing awaits a delivery report: look again shortly, or stop.
                let _ = cancel_wait(&cancel, Duration::from_millis(500));
            }
        }
    }

    /// Where `system`'s re-read (or, with `snapshot`, snapshot) requests go, if anywhere.
    fn destination(&self, system: System, snapshot: bool) -> Option<Destination<'_>> {
        if let Some(signals) = self.settings.debezium_signals.get(&system) {
            return Some(Destination::Debezium(signals));
        }
        let topic = if snapshot {
            &self.settings.control_topic
        } else {
            &self.settings.reread_topic
        };
        topic.as_deref().map(Destination::Topic)
    }

    fn send_rereads(
        &self,
        buckets: &mut BTreeMap<System, TokenBucket>,
        in_flight: &mut BTreeSet<RereadTarget>,
        cursor: &mut Option<Vec<u8>>,
    ) -> tandem_store::Result<()> {
        for bucket in buckets.values_mut() {
            bucket.refill();
        }
        let budget: f64 = buckets.values().map(|bucket| bucket.tokens.floor()).sum();
        if budget < 1.0 {
            return Ok(());
        }
        let resend_before = Timestamp::from_system_time(
            SystemTime::now()
                .checked_sub(self.settings.reread_resend_after)
                .unwrap_or(SystemTime::UNIX_EPOCH),
        );
        let round = self.store.due_rereads_from(
            cursor.as_deref(),
            resend_before,
            (budget as usize + in_flight.len()).min(10_000),
            MAX_EXAMINED_PER_ROUND,
        )?;
        *cursor = round.resume_after;
        let due = round.due;
        let mut groups: BTreeMap<
            (System, String, UnverifiedReason),
            Vec<(RereadTarget, RereadRow)>,
        > = BTreeMap::new();
        for (target, row) in due {
            if in_flight.contains(&target) || self.destination(target.system, false).is_none() {
                continue;
            }
            let Some(bucket) = buckets.get_mut(&target.system) else {
                continue;
            };
            if !bucket.take() {
                continue;
            }
            groups
                .entry((target.system, target.entity.clone(), row.reason))
                .or_default()
                .push((target, row));
        }
        let requested_at = now();
        for ((system, entity, reason), items) in groups {
            let Some(destination) = self.destination(system, false) else {
                continue;
            };
            for chunk in items.chunks(self.settings.reread_batch_max_ids.max(1)) {
                let ids: Vec<&str> = chunk
                    .iter()
                    .map(|(target, _)| target.native_id.as_str())
                    .collect();
                let (topic, key, payload) = match destination {
                    Destination::Topic(topic) => {
                        let message = RereadMessage {
                            kind: "reread",
                            system,
                            entity: &entity,
                            ids,
                            reason,
                            requested_at,
                        };
                        let payload = serde_json::to_vec(&message)
                            .expect("invariant: request messages are plain data");
                        (topic, format!("{system}/{entity}"), payload)
                    }
                    Destination::Debezium(signals) => match signals.reread(&entity, &ids) {
                        Ok(payload) => (signals.topic.as_str(), signals.connector.clone(), payload),
                        Err(error) => {
                            warn!(%error, %system, %entity, "cannot ask Debezium to re-read these records; they stay unverified until a snapshot");
                            continue;
                        }
                    },
                };
                let record =
                    BaseRecord::with_opaque_to(topic, Box::new(Sent::Rereads(chunk.to_vec())))
                        .key(&key)
                        .payload(&payload);
                match self.producer.send(record) {
                    Ok(()) => in_flight.extend(chunk.iter().map(|(target, _)| target.clone())),
                    Err((error, _)) => {
                        warn!(%error, %system, %entity, "cannot queue a re-read request; retrying later");
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    fn send_control(&self, in_flight: &mut BTreeSet<Vec<u8>>) -> tandem_store::Result<()> {
        for request in self.store.pending_control_requests(100)? {
            if in_flight.contains(&request.key) {
                continue;
            }
            let (system, entity) = (request.request.system, &request.request.entity);
            let (topic, key, payload) = match self.destination(system, true) {
                None => continue,
                Some(Destination::Topic(topic)) => {
                    let message = SnapshotMessage {
                        kind: "snapshot",
                        system,
                        entity,
                        reason: &request.request.reason,
                        requested_at: request.request.requested_at,
                    };
                    let payload = serde_json::to_vec(&message)
                        .expect("invariant: request messages are plain data");
                    (topic, format!("{system}/{entity}"), payload)
                }
                Some(Destination::Debezium(signals)) => match signals.snapshot(entity) {
                    Ok(payload) => (signals.topic.as_str(), signals.connector.clone(), payload),
                    Err(error) => {
                        warn!(%error, %system, %entity, "cannot ask Debezium for a snapshot; run one of the entity's table by hand");
                        continue;
                    }
                },
            };
            let outbox_key = request.key.clone();
            let record = BaseRecord::with_opaque_to(topic, Box::new(Sent::Control(request)))
                .key(&key)
                .payload(&payload);
            match self.producer.send(record) {
                Ok(()) => {
                    in_flight.insert(outbox_key);
                }
                Err((error, _)) => {
                    warn!(%error, "cannot queue a snapshot request; retrying later");
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Produces an outbox's pending items that are not in flight yet; stops at the first
    /// that cannot be queued (the next round retries).
    fn send_outbox<T>(
        &self,
        topic: &str,
        pending: Vec<(Vec<u8>, T)>,
        in_flight: &mut BTreeSet<Vec<u8>>,
        what: &str,
        message: impl Fn(&T) -> (String, Vec<u8>),
        sent: impl Fn(Vec<u8>) -> Sent,
    ) {
        for (key, item) in pending {
            if in_flight.contains(&key) {
                continue;
            }
            let (message_key, payload) = message(&item);
            let record = BaseRecord::with_opaque_to(topic, Box::new(sent(key.clone())))
                .key(&message_key)
                .payload(&payload);
            match self.producer.send(record) {
                Ok(()) => {
                    in_flight.insert(key);
                }
                Err((error, _)) => {
                    warn!(%error, "cannot queue a {what}; retrying later");
                    return;
                }
            }
        }
    }

    fn send_transitions(
        &self,
        topic: &str,
        in_flight: &mut BTreeSet<Vec<u8>>,
    ) -> tandem_store::Result<()> {
        let pending = self.store.pending_transitions(100)?;
        self.send_outbox(
            topic,
            pending,
            in_flight,
            "cutover step",
            |record| {
                let mut message =
                    serde_json::to_value(record).expect("invariant: transitions are plain data");
                message["type"] = serde_json::json!("cutover");
                ("cutover".to_owned(), message.to_string().into_bytes())
            },
            Sent::Transition,
        );
        Ok(())
    }

    fn send_commands(
        &self,
        topic: &str,
        in_flight: &mut BTreeSet<Vec<u8>>,
    ) -> tandem_store::Result<()> {
        let pending = self.store.pending_commands(500)?;
        self.send_outbox(
            topic,
            pending,
            in_flight,
            "compensation command",
            |command| {
                (
                    format!(
                        "{}/{}/{}",
                        command.system, command.entity, command.native_id
                    ),
                    serde_json::to_vec(command).expect("invariant: commands are plain data"),
                )
            },
            Sent::Command,
        );
        Ok(())
    }

    fn send_violations(
        &self,
        topic: &str,
        in_flight: &mut BTreeSet<Vec<u8>>,
    ) -> tandem_store::Result<()> {
        let pending = self
            .store
            .pending_violations(500)?
            .into_iter()
            .map(|pending| (pending.key, pending.violation))
            .collect();
        self.send_outbox(
            topic,
            pending,
            in_flight,
            "violation",
            |violation| {
                (
                    format!(
                        "{}/{}/{}",
                        violation.system, violation.entity, violation.join_key
                    ),
                    serde_json::to_vec(violation).expect("invariant: violations are plain data"),
                )
            },
            Sent::Violation,
        );
        Ok(())
    }

    fn settle(
        &self,
        rereads_in_flight: &mut BTreeSet<RereadTarget>,
        control_in_flight: &mut BTreeSet<Vec<u8>>,
        violations_in_flight: &mut BTreeSet<Vec<u8>>,
    ) {
        for (sent, outcome) in self.producer.context().take() {
            match (sent, outcome) {
                (Sent::Command(key), Ok(())) => {
                    violations_in_flight.remove(&key);
                    if let Err(error) = self.store.mark_command_delivered(&key) {
                        error!(%error, "cannot clear a published command; it will be published again");
                    }
                }
                (Sent::Command(key), Err(error)) => {
                    violations_in_flight.remove(&key);
                    warn!(%error, "a compensation command was not delivered; retrying");
                }
                (Sent::Transition(key), Ok(())) => {
                    violations_in_flight.remove(&key);
                    if let Err(error) = self.store.mark_transition_delivered(&key) {
                        error!(%error, "cannot clear a published cutover step; it will be published again");
                    }
                }
                (Sent::Transition(key), Err(error)) => {
                    violations_in_flight.remove(&key);
                    warn!(%error, "a cutover step was not delivered to the control topic; retrying");
                }
                (Sent::Violation(key), Ok(())) => {
                    violations_in_flight.remove(&key);
                    if let Err(error) = self
                        .store
                        .mark_violations_delivered(std::slice::from_ref(&key))
                    {
                        error!(%error, "cannot clear a published violation; it will be published again");
                    }
                }
                (Sent::Violation(key), Err(error)) => {
                    violations_in_flight.remove(&key);
                    warn!(%error, "a violation was not delivered to the violations topic; retrying");
                }
                (Sent::Rereads(items), Ok(())) => {
                    for (target, _) in &items {
                        rereads_in_flight.remove(target);
                    }
                    if let Err(error) = self.store.mark_rereads_requested(&items, now()) {
                        error!(%error, "cannot note sent re-read requests; they will be sent again");
                    } else {
                        info!(ids = items.len(), "re-read requested");
                    }
                }
                (Sent::Rereads(items), Err(error)) => {
                    for (target, _) in &items {
                        rereads_in_flight.remove(target);
                    }
                    warn!(%error, ids = items.len(), "a re-read request was not delivered; retrying");
                }
                (Sent::Control(request), Ok(())) => {
                    control_in_flight.remove(&request.key);
                    info!(system = %request.request.system, entity = %request.request.entity, reason = %request.request.reason, "snapshot requested");
                    if let Err(error) = self
                        .store
                        .mark_control_delivered(std::slice::from_ref(&request))
                    {
                        error!(%error, "cannot clear a delivered snapshot request; it will be sent again");
                    }
                }
                (Sent::Control(request), Err(error)) => {
                    control_in_flight.remove(&request.key);
                    warn!(%error, "a snapshot request was not delivered; retrying");
                }
            }
        }
    }
}
