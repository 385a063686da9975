//! The daemon: store, ingest threads and HTTP API wired together under one cancellation token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prometheus::Registry;
use tandem_api::ApiContext;
use tandem_ingest::{IngestMetrics, IngestStatus};
use tandem_store::Store;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::Config;

/// How long stopping may take once it is asked for: ingestion drains, the API finishes its
/// requests and the background tasks stop within it, all together. Whatever is still running
/// then is left behind; nothing is lost by that, because offsets are only stored with the
/// batches they cover.
pub const STOP_DEADLINE: Duration = Duration::from_secs(30);

/// The variable that shortens [`STOP_DEADLINE`] (`2s`, `500ms`): a test hook, left out of the
/// configuration on purpose, so that tests of the stop need not wait 30 s.
pub const STOP_DEADLINE_VARIABLE: &str = "TANDEM_TEST_STOP_DEADLINE";

/// The variable that, set to `1`, makes ingestion never finish draining, as a hung apply loop
/// would: a test hook that proves the deadline bounds the stop.
pub const INGEST_NEVER_DRAINS_VARIABLE: &str = "TANDEM_TEST_INGEST_NEVER_DRAINS";

/// How the daemon stops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stopping {
    /// See [`STOP_DEADLINE`].
    pub deadline: Duration,
    /// Test hook: waiting for ingestion's threads never returns.
    pub ingest_never_drains: bool,
}

impl Default for Stopping {
    fn default() -> Self {
        Stopping {
            deadline: STOP_DEADLINE,
            ingest_never_drains: false,
        }
    }
}

impl Stopping {
    /// The defaults, changed by the test hooks' variables found through `variable`.
    pub fn from_variables(variable: impl Fn(&str) -> Option<String>) -> anyhow::Result<Stopping> {
        let mut stopping = Stopping::default();
        if let Some(deadline) = variable(STOP_DEADLINE_VARIABLE) {
            stopping.deadline = humantime::parse_duration(&deadline).with_context(|| {
                format!("{STOP_DEADLINE_VARIABLE}={deadline:?} is not a duration (`2s`, `500ms`)")
            })?;
        }
        stopping.ingest_never_drains =
            variable(INGEST_NEVER_DRAINS_VARIABLE).is_some_and(|value| value == "1");
        Ok(stopping)
    }
}

/// Why the daemon could not start: a configuration problem (exit 2) or anything else (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Something the configuration must fix.
    #[error("{0}")]
    Config(String),
    /// Anything else.
    #[error(transparent)]
    Runtime(#[from] anyhow::Error),
}

/// How a daemon run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Stopped on request, everything drained.
    Clean,
    /// Ingestion failed; the API kept serving until the stop request.
    IngestFailed(String),
}

/// Runs the daemon until `cancel` fires. `started` receives the API's bound address.
pub async fn run(
    config: Config,
    cancel: CancellationToken,
    started: Option<oneshot::Sender<SocketAddr>>,
) -> Result<Ended, StartError> {
    run_with(config, cancel, started, Stopping::default()).await
}

/// [`run`], stopping as `stopping` says. Returns at most `stopping.deadline` after `cancel`
/// fired; a blocking task still running then (ingestion's threads) is left to the caller's
/// runtime, which must not wait for it without limit (`Runtime::shutdown_timeout`).
pub async fn run_with(
    config: Config,
    cancel: CancellationToken,
    started: Option<oneshot::Sender<SocketAddr>>,
    stopping: Stopping,
) -> Result<Ended, StartError> {
    let mapping = Arc::new(
        config
            .mapping()
            .map_err(|error| StartError::Config(format!("key `entities`: {error}")))?,
    );
    if config.replication.is_some() && config.backup.is_some() {
        // On a runtime of its own: the restore's futures are not all `Send`.
        let bootstrap_config = config.clone();
        tokio::task::spawn_blocking(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("a runtime for the restore")?
                .block_on(bootstrap_from_backup(&bootstrap_config))
        })
        .await
        .context("restore task")??;
    }
    let store_path = config.store.path.clone();
    let store_options = config.store_options();
    let store = tokio::task::spawn_blocking(move || Store::open(&store_path, &store_options))
        .await
        .context("store open task")?
        .with_context(|| {
            format!(
                "opening the store configured in `store.path` ({})",
                config.store.path.display()
            )
        })?;
    info!(path = %config.store.path.display(), "store open");

    let settings = config.ingest_settings(Some(store.id()));
    let settings_ownership = settings.ownership.clone();
    let tokens = config.api.tokens().map_err(StartError::Config)?;
    for warning in config.warnings() {
        warn!(%warning, "configuration allows more than it should");
    }
    let cutover_rules = config
        .cutover
        .rules(&config.entities)
        .map_err(StartError::Config)?;
    let status = Arc::new(IngestStatus::new(settings.topics.clone()));
    let registry = Registry::new_custom(None, None).context("metrics registry")?;
    register_process_metrics(&registry).context("registering process metrics")?;
    let metrics = IngestMetrics::register(&registry).context("registering ingest metrics")?;
    let replication = match config.replication_settings() {
        None => None,
        Some(settings) => {
            let replication_metrics = tandem_replica::ReplicationMetrics::register(&registry)
                .context("registering replication metrics")?;
            let start_store = store.clone();
            let start_cancel = cancel.clone();
            let started = tokio::task::spawn_blocking(move || {
                tandem_replica::Replication::start(
                    settings,
                    start_store,
                    Some(replication_metrics),
                    start_cancel,
                )
            })
            .await
            .context("replication start task")?;
            Some(
                started
                    .map_err(|error| StartError::Config(config.kafka.redact(&error.to_string())))?,
            )
        }
    };
    let listener = TcpListener::bind(config.api.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (key `api.listen`): is another process using the port?",
                config.api.listen
            )
        })?;
    let address = listener.local_addr().context("reading the API's address")?;

    let backups = match &config.backup {
        None => None,
        Some(backup) => Some(
            start_backups(backup, &store, &registry)
                .await
                .map_err(StartError::Config)?,
        ),
    };

    let context = Arc::new(
        ApiContext::try_new(
            store.clone(),
            mapping.clone(),
            config.labels(),
            config.reconcile.grace,
            status.clone(),
            registry,
            metrics.clone(),
        )
        .context("registering API metrics")?
        .with_ownership(settings_ownership)
        .with_tokens(tokens)
        .with_connection_limits(config.api.connection_limits())
        .with_cutover(cutover_rules, None)
        .with_backups(backups.clone())
        .with_replication(replication.clone()),
    );
    // Every task of the daemon is tracked, and waited for at the stop within the deadline.
    let tasks = TaskTracker::new();
    let api_cancel = cancel.clone();
    let api = tasks.spawn(tandem_api::serve(listener, context.clone(), async move {
        api_cancel.cancelled().await
    }));
    if let Some(started) = started {
        let _ = started.send(address);
    }

    // A standby serves reads and waits for the lease; nothing writes its store meanwhile
    // but the changelog it replays.
    if let Some(replication) = replication.clone() {
        let waiting = replication.clone();
        let promoted = tokio::select! {
            promoted = async move { waiting.promoted().await } => Some(promoted),
            () = cancel.cancelled() => None,
        };
        let ended = match promoted {
            Some(Ok(())) => None,
            Some(Err(reason)) => Some(Ended::IngestFailed(reason)),
            None => Some(Ended::Clean),
        };
        if let Some(ended) = ended {
            replication.release();
            cancel.cancel();
            let stop_by = Instant::now() + stopping.deadline;
            stop_api_and_tasks(api, tasks.clone(), stop_by, stopping.deadline).await;
            info!("tandem stopped");
            return Ok(ended);
        }
    }

    let ingest_cancel = cancel.child_token();
    let ingest = tandem_ingest::start(
        settings,
        store.clone(),
        mapping.clone(),
        status.clone(),
        metrics.clone(),
        ingest_cancel.clone(),
    )
    .map_err(|error| match error {
        // librdkafka's messages may quote a property's value, a secret among them.
        tandem_ingest::Error::Client { .. } | tandem_ingest::Error::Subscribe { .. } => {
            StartError::Config(config.kafka.redact(&error.to_string()))
        }
        other => StartError::Runtime(other.into()),
    })?;
    context.start_control(ingest.control());
    tasks.spawn(tandem_api::cutover::watch(
        context.clone(),
        std::time::Duration::from_secs(15),
        cancel.clone(),
    ));
    tasks.spawn(tandem_api::history::keep(
        context.clone(),
        config.reconcile.history_interval,
        cancel.clone(),
    ));
    if let (Some(backups), Some(backup)) = (backups, &config.backup) {
        // The first backup at start, then one every interval.
        tasks.spawn(tandem_backup::keep_taking(
            backups,
            backup.interval,
            cancel.clone(),
        ));
    }
    tasks.close();

    let ingest_never_drains = stopping.ingest_never_drains;
    let mut ingest_outcome = tokio::task::spawn_blocking(move || {
        let outcome = ingest.wait();
        if ingest_never_drains {
            warn!(
                hook = INGEST_NEVER_DRAINS_VARIABLE,
                "test hook: ingestion stopped, but its waiter pretends it never does"
            );
            loop {
                std::thread::park();
            }
        }
        outcome
    });
    let watched = replication.clone();
    let stepped_down = async move {
        match watched {
            Some(replication) => replication.stepped_down().await,
            None => std::future::pending().await,
        }
    };
    let finished = tokio::select! {
        outcome = &mut ingest_outcome => Some(outcome),
        () = cancel.cancelled() => None,
        reason = stepped_down => {
            // Another instance is active: stop at once, and let the supervisor start this
            // one again, as a standby.
            error!(%reason, "stepped down: stopping ingestion; restart tandem to follow the active instance as a standby");
            cancel.cancel();
            None
        }
    };
    let (outcome, stop_by) = match finished {
        Some(outcome) => (Some(outcome), None),
        None => {
            let stop_by = Instant::now() + stopping.deadline;
            match tokio::time::timeout_at(stop_by, ingest_outcome).await {
                Ok(outcome) => (Some(outcome), Some(stop_by)),
                Err(_) => {
                    warn!(deadline = ?stopping.deadline, "ingestion did not drain in time; exiting anyway (nothing is lost: offsets are only stored with applied batches)");
                    (None, Some(stop_by))
                }
            }
        }
    };
    let ended = match outcome.transpose().context("ingest task")? {
        None | Some(Ok(()))
            if replication.as_ref().is_some_and(|replication| {
                replication.role() == tandem_replica::Role::SteppedDown
            }) =>
        {
            Ended::IngestFailed("stepped down: another instance is active".to_owned())
        }
        None | Some(Ok(())) => Ended::Clean,
        Some(Err(failure)) if replication.is_some() => {
            // A replicated instance whose ingestion failed (its writes refused after a
            // changelog failure) leaves the lease to the standby and exits.
            let reason = failure.to_string();
            error!(%reason, "ingestion stopped; handing the lease over and exiting");
            cancel.cancel();
            Ended::IngestFailed(reason)
        }
        Some(Err(failure)) => {
            let reason = failure.to_string();
            error!(%reason, "ingestion stopped; the API keeps serving until tandem is stopped");
            cancel.cancelled().await;
            Ended::IngestFailed(reason)
        }
    };
    if let Some(replication) = &replication {
        // Nothing writes the store any more: the standby may take over at once.
        replication.release();
    }
    // Ingestion ended on its own (it failed): the deadline runs from the stop request.
    let stop_by = stop_by.unwrap_or_else(|| Instant::now() + stopping.deadline);
    stop_api_and_tasks(api, tasks.clone(), stop_by, stopping.deadline).await;
    info!("tandem stopped");
    Ok(ended)
}

/// Waits, until `stop_by`, for the API and the background tasks to stop.
async fn stop_api_and_tasks(
    api: tokio::task::JoinHandle<std::io::Result<()>>,
    tasks: TaskTracker,
    stop_by: Instant,
    deadline: Duration,
) {
    tasks.close();
    match tokio::time::timeout_at(stop_by, api).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(error))) => warn!(%error, "the HTTP API stopped with an error"),
        Ok(Err(error)) => warn!(%error, "the HTTP API task failed"),
        Err(_) => warn!(?deadline, "the HTTP API did not stop in time"),
    }
    if tokio::time::timeout_at(stop_by, tasks.wait())
        .await
        .is_err()
    {
        warn!(
            ?deadline,
            running = tasks.len(),
            "background tasks did not stop in time; exiting anyway"
        );
    }
}

/// A standby whose store directory is empty (a new node) starts from the newest backup,
/// then replays the changelog from the position inside it.
async fn bootstrap_from_backup(config: &Config) -> Result<(), StartError> {
    let Some(backup) = &config.backup else {
        return Ok(());
    };
    let path = &config.store.path;
    let empty = match std::fs::read_dir(path) {
        Ok(mut entries) => entries.next().is_none(),
        Err(error) => error.kind() == std::io::ErrorKind::NotFound,
    };
    if !empty {
        return Ok(());
    }
    let target = backup.open_target().map_err(StartError::Config)?;
    let restored = tandem_backup::restore(&target, None, path, |progress| {
        tracing::debug!(?progress, "restoring the newest backup")
    })
    .await;
    match restored {
        Ok(manifest) => {
            info!(target = %target, backup = %manifest.id, events_applied = manifest.events_applied, store = %path.display(), "the store was empty: restored the newest backup; the changelog is replayed from its position");
            Ok(())
        }
        Err(tandem_backup::Error::NotFound { .. }) => {
            info!(target = %target, "the store is empty and the backup target holds no backup: the changelog is replayed from its start");
            Ok(())
        }
        Err(error) => Err(StartError::Runtime(anyhow::anyhow!(
            "the store at {} is empty and the newest backup could not be restored: {error}; fix the target (key `backup.target`) or restore one with `tandem restore`",
            path.display()
        ))),
    }
}

/// Opens the backup target and reports the newest backup already there (so the age of the
/// last good backup survives a restart).
async fn start_backups(
    backup: &crate::config::BackupConfig,
    store: &Store,
    registry: &Registry,
) -> Result<Arc<tandem_backup::Backups>, String> {
    let target = backup.open_target()?;
    let metrics = tandem_backup::BackupMetrics::register(registry, backup.interval)
        .map_err(|error| format!("registering backup metrics: {error}"))?;
    match tandem_backup::chosen(&target, None).await {
        Ok(newest) => {
            metrics.found(&newest);
            info!(target = %target, newest = %newest.id, "backups on");
        }
        Err(tandem_backup::Error::NotFound { .. }) => {
            info!(target = %target, "backups on; the target holds none yet")
        }
        // Not fatal: the target may be back by the first backup, and its failure is logged,
        // counted and alerted on.
        Err(error) => {
            warn!(target = %target, %error, "backups on, but the target cannot be read now")
        }
    }
    Ok(Arc::new(
        tandem_backup::Backups::new(store.clone(), target, backup.keep).with_metrics(metrics),
    ))
}

/// Cancels `cancel` on SIGINT or SIGTERM. The handlers are installed before this returns
/// (call it inside the runtime): a signal that came before the task's first poll would
/// otherwise kill the process with no stop at all.
pub fn cancel_on_signals(cancel: CancellationToken) {
    use tokio::signal::unix::{signal, Signal, SignalKind};
    let listen = |kind: SignalKind, name: &str| -> Option<Signal> {
        signal(kind)
            .inspect_err(|error| warn!(%error, "cannot listen for {name}"))
            .ok()
    };
    let mut interrupt = listen(SignalKind::interrupt(), "SIGINT");
    let mut terminate = listen(SignalKind::terminate(), "SIGTERM");
    tokio::spawn(async move {
        tokio::select! {
            _ = received(interrupt.as_mut()) => info!("interrupt received; stopping"),
            _ = received(terminate.as_mut()) => info!("SIGTERM received; stopping"),
        }
        cancel.cancel();
    });
}

/// The next delivery of `signal`; never, for a signal that could not be listened for.
async fn received(signal: Option<&mut tokio::signal::unix::Signal>) -> Option<()> {
    match signal {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

/// The process's own figures (CPU, memory, open files, start time: `process_*`) and which
/// build is running (`tandem_build_info`, always 1).
fn register_process_metrics(registry: &Registry) -> prometheus::Result<()> {
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    let build = prometheus::IntGaugeVec::new(
        prometheus::Opts::new(
            "tandem_build_info",
            "The running build: its release and commit (always 1)",
        ),
        &["version", "commit"],
    )?;
    build
        .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("TANDEM_COMMIT")])
        .set(1);
    registry.register(Box::new(build))
}
