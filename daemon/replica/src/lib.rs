//! The hot standby: an exact copy of the active instance's store, kept by replaying the
//! batches the active one published, that takes over when the active one dies.
//!
//! - **The changelog.** A topic of one partition. The active instance publishes every store
//!   batch there in a Kafka transaction *before* writing it to its own store
//!   ([`Publisher`], installed with `Store::publish_to`). A batch larger than a message is
//!   split into chunks inside its transaction. Each batch names the changelog position the
//!   active store held before it (`previous`), so a follower can check that the batch
//!   continues exactly what it holds.
//! - **Leadership.** Every instance joins one consumer group on the changelog topic; the
//!   member the partition is assigned to is the active one (`cooperative-sticky`: a member
//!   that joins never takes it from the holder). When the holder dies, its session expires
//!   and the partition moves.
//! - **Fencing.** The active instance's producer has one transactional id for the whole
//!   deployment. A new active one initializes transactions with it, which makes the broker
//!   bump the producer epoch and abort the old one's open transaction: a returning old active
//!   can no longer commit a changelog batch, and because it writes nothing it did not publish,
//!   it can no longer write its store either. It stops writing and steps down.
//! - **Takeover.** The new active one commits a takeover marker, replays the changelog up to
//!   its own marker (everything committed before the fence), and only then writes. The
//!   marker's offset is the new epoch: broker-assigned, and larger for every later takeover.

mod follow;
mod lease;
mod metrics;
mod publish;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientConfig;
use serde::Serialize;
use tandem_store::Store;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub use metrics::ReplicationMetrics;
pub use publish::Publisher;

/// Header of every changelog message: `batch` or `takeover`.
const KIND_HEADER: &str = "tandem-kind";
/// Header of a batch: what the publishing store held before it (`Previous::header`).
const PREVIOUS_HEADER: &str = "tandem-previous";
/// Header of a batch's message: its chunk's index, from 0.
const CHUNK_HEADER: &str = "tandem-chunk";
/// Header of a batch's message: how many chunks the batch has.
const CHUNKS_HEADER: &str = "tandem-chunks";
/// Header of a takeover marker: the instance that took over.
const INSTANCE_HEADER: &str = "tandem-instance";

/// Everything replication needs, resolved from the configuration.
#[derive(Clone, Debug)]
pub struct ReplicationSettings {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// The user's librdkafka properties (security), passed to every client.
    pub properties: Vec<(String, String)>,
    /// The changelog topic (one partition; created if missing).
    pub topic: String,
    /// The consumer group whose member holding the changelog partition is the active one.
    pub group_id: String,
    /// The active instance's transactional id, the same for every instance.
    pub transactional_id: String,
    /// This instance's name, in logs, the takeover marker and `/v1/replication`.
    pub instance: String,
    /// How long after the active instance's last heartbeat a standby takes over.
    pub session_timeout: Duration,
}

impl ReplicationSettings {
    /// The settings every client starts from: the brokers and the user's properties.
    fn client(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }
}

/// What this instance is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// It follows the active one: it serves reads and refuses changes.
    Standby,
    /// It holds the lease and is catching up before it writes.
    Promoting,
    /// It ingests and writes.
    Active,
    /// Another instance took over, or its copy cannot continue: it writes nothing more.
    SteppedDown,
}

impl Role {
    /// The name used in the API and the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Standby => "standby",
            Role::Promoting => "promoting",
            Role::Active => "active",
            Role::SteppedDown => "stepped_down",
        }
    }

    /// Every role, for the metrics.
    pub const ALL: [Role; 4] = [
        Role::Standby,
        Role::Promoting,
        Role::Active,
        Role::SteppedDown,
    ];
}

/// Replication as `/v1/replication` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ReplicationView {
    /// The role now.
    pub role: Role,
    /// Why the instance stepped down, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// This instance's name.
    pub instance: String,
    /// The changelog topic.
    pub topic: String,
    /// The offset of the latest takeover marker seen (the active instance's epoch).
    pub epoch: Option<i64>,
    /// The changelog position the store holds (one past its last batch).
    pub position: Option<i64>,
    /// The changelog's end, as last read from the broker.
    pub end_offset: Option<i64>,
    /// Changelog messages not yet applied (standby), by the last read end.
    pub lag_messages: Option<i64>,
    /// When the role last changed (RFC 3339).
    pub since: String,
}

/// The live state shared by the threads, the API and the daemon.
pub struct Replication {
    settings: ReplicationSettings,
    store: Store,
    role: watch::Sender<Role>,
    reason: Mutex<Option<String>>,
    since: Mutex<time::OffsetDateTime>,
    epoch: AtomicI64,
    end_offset: AtomicI64,
    /// One past the last changelog offset the follower read (markers included).
    read_through: AtomicI64,
    /// The follower stops once it read past this offset (`-1`: it follows on).
    stop_after: AtomicI64,
    /// The lease was lost after it was held.
    lease_lost: AtomicBool,
    /// Fired when the instance may hand the lease over (its ingestion stopped).
    released: CancellationToken,
    metrics: Option<ReplicationMetrics>,
}

/// `-1` in the atomics: nothing known yet.
const NONE: i64 = -1;

/// Why replication could not start or go on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kafka client could not be created or failed for good.
    #[error("replication: {0}")]
    Kafka(String),
    /// The store could not be read or written.
    #[error("replication: {0}")]
    Store(#[from] tandem_store::Error),
}

impl Replication {
    /// Starts following the changelog and competing for the lease. The store must not be
    /// written by anything else until [`Replication::promoted`] says the instance is active.
    pub fn start(
        settings: ReplicationSettings,
        store: Store,
        metrics: Option<ReplicationMetrics>,
        cancel: CancellationToken,
    ) -> Result<Arc<Replication>, Error> {
        lease::ensure_topic(&settings)?;
        let replication = Arc::new(Replication {
            settings,
            store,
            role: watch::Sender::new(Role::Standby),
            reason: Mutex::new(None),
            since: Mutex::new(time::OffsetDateTime::now_utc()),
            epoch: AtomicI64::new(NONE),
            end_offset: AtomicI64::new(NONE),
            read_through: AtomicI64::new(NONE),
            stop_after: AtomicI64::new(NONE),
            lease_lost: AtomicBool::new(false),
            released: CancellationToken::new(),
            metrics,
        });
        replication.observe();
        info!(
            instance = %replication.settings.instance,
            topic = %replication.settings.topic,
            position = ?replication.store.changelog_position(),
            "standby: following the changelog until this instance holds the lease"
        );
        let follower = follow::Follower::new(replication.clone())?;
        let lease = lease::Lease::new(replication.clone())?;
        let ours = replication.clone();
        let follow_cancel = cancel.clone();
        std::thread::Builder::new()
            .name("tandem-follow".to_owned())
            .spawn(move || {
                if let Err(reason) = follower.run(&follow_cancel) {
                    ours.step_down(reason);
                }
            })
            .map_err(|error| Error::Kafka(format!("cannot start the follower thread: {error}")))?;
        let ours = replication.clone();
        std::thread::Builder::new()
            .name("tandem-lease".to_owned())
            .spawn(move || lease.run(&ours, &cancel))
            .map_err(|error| Error::Kafka(format!("cannot start the lease thread: {error}")))?;
        Ok(replication)
    }

    /// Hands the lease over: call it once nothing writes the store any more (ingestion
    /// stopped), so that a standby takes over at once instead of after the session timeout.
    pub fn release(&self) {
        self.released.cancel();
    }

    /// The role now.
    pub fn role(&self) -> Role {
        *self.role.borrow()
    }

    /// Waits until the instance is active (`Ok`) or stepped down (`Err` with why).
    pub async fn promoted(&self) -> Result<(), String> {
        let mut roles = self.role.subscribe();
        let role = roles
            .wait_for(|role| matches!(role, Role::Active | Role::SteppedDown))
            .await
            .map(|role| *role)
            .unwrap_or(Role::SteppedDown);
        match role {
            Role::Active => Ok(()),
            _ => Err(self.reason().unwrap_or_else(|| "stopped".to_owned())),
        }
    }

    /// Waits until the instance stepped down; returns why.
    pub async fn stepped_down(&self) -> String {
        let mut roles = self.role.subscribe();
        let _ = roles.wait_for(|role| *role == Role::SteppedDown).await;
        self.reason().unwrap_or_else(|| "stopped".to_owned())
    }

    fn reason(&self) -> Option<String> {
        self.reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// What `/v1/replication` shows.
    pub fn view(&self) -> ReplicationView {
        let known = |value: i64| (value != NONE).then_some(value);
        let position = self.store.changelog_position();
        let end_offset = known(self.end_offset.load(Ordering::Acquire));
        let role = self.role();
        let lag_messages = match role {
            Role::Active => Some(0),
            _ => end_offset.map(|end| (end - position.unwrap_or(0)).max(0)),
        };
        ReplicationView {
            role,
            reason: self.reason(),
            instance: self.settings.instance.clone(),
            topic: self.settings.topic.clone(),
            epoch: known(self.epoch.load(Ordering::Acquire)),
            position,
            end_offset,
            lag_messages,
            since: self
                .since
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
        }
    }

    fn set_role(&self, role: Role) {
        let changed = self.role.send_if_modified(|current| {
            // A stepped-down instance stays so until it is restarted.
            if *current == role || *current == Role::SteppedDown {
                return false;
            }
            *current = role;
            true
        });
        if changed {
            *self
                .since
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                time::OffsetDateTime::now_utc();
            self.observe();
        }
    }

    /// Writes nothing more: another instance took over, or this copy cannot continue.
    fn step_down(&self, reason: String) {
        if self.role() == Role::SteppedDown {
            return;
        }
        error!(instance = %self.settings.instance, %reason, "stepping down: this instance writes nothing more; restart it to follow the active instance as a standby");
        *self
            .reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(reason);
        self.set_role(Role::SteppedDown);
    }

    /// Refreshes the metrics from the state.
    fn observe(&self) {
        if let Some(metrics) = &self.metrics {
            metrics.observe(&self.view());
        }
    }

    /// Takes over: fences the previous active instance, replays everything it committed,
    /// then publishes every write of this store. Runs on the lease thread.
    fn take_over(self: &Arc<Self>, cancel: &CancellationToken) -> Result<(), String> {
        self.set_role(Role::Promoting);
        info!(instance = %self.settings.instance, "this instance holds the lease: fencing the previous active instance and replaying what it committed");
        let started = std::time::Instant::now();
        let publisher = Publisher::new(self.clone())?;
        let marker = publisher.mark_takeover()?;
        self.stop_after.store(marker, Ordering::Release);
        // The follower reads up to the marker: every batch committed before the fence.
        while self.read_through.load(Ordering::Acquire) <= marker {
            if cancel.is_cancelled() {
                return Err("stopped while taking over".to_owned());
            }
            if self.role() == Role::SteppedDown {
                return Err(self.reason().unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.epoch.store(marker, Ordering::Release);
        self.store
            .publish_to(Arc::new(publisher))
            .map_err(|error| format!("cannot start publishing: {error}"))?;
        self.set_role(Role::Active);
        info!(
            instance = %self.settings.instance,
            epoch = marker,
            position = ?self.store.changelog_position(),
            took_ms = started.elapsed().as_millis() as u64,
            "active: this instance ingests and publishes every batch to the changelog"
        );
        Ok(())
    }

    /// The lease was lost while active: writes are refused from now on.
    fn lost_lease(&self) {
        self.lease_lost.store(true, Ordering::Release);
        warn!(instance = %self.settings.instance, "the lease moved to another instance");
        self.step_down(
            "the lease moved to another instance (this one missed its session timeout)".to_owned(),
        );
    }
}
