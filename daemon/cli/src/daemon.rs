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
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::Config;

/// How long ingestion may take to drain after a stop is requested.
const DRAIN_DEADLINE: Duration = Duration::from_secs(30);

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
    let mapping = Arc::new(
        config
            .mapping()
            .map_err(|error| StartError::Config(format!("key `entities`: {error}")))?,
    );
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
            start_backups(backup, &store, &registry, &cancel)
                .await
                .map_err(StartError::Config)?,
        ),
    };

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

    let context = Arc::new(
        ApiContext::try_new(
            store,
            mapping,
            config.labels(),
            config.reconcile.grace,
            status.clone(),
            registry,
            metrics,
        )
        .context("registering API metrics")?
        .with_ownership(settings_ownership)
        .with_tokens(tokens)
        .with_connection_limits(config.api.connection_limits())
        .with_cutover(cutover_rules, Some(ingest.control()))
        .with_backups(backups),
    );
    tokio::spawn(tandem_api::cutover::watch(
        context.clone(),
        std::time::Duration::from_secs(15),
        cancel.clone(),
    ));
    tokio::spawn(tandem_api::history::keep(
        context.clone(),
        config.reconcile.history_interval,
        cancel.clone(),
    ));
    let api_cancel = cancel.clone();
    let api = tokio::spawn(tandem_api::serve(listener, context, async move {
        api_cancel.cancelled().await
    }));
    if let Some(started) = started {
        let _ = started.send(address);
    }

    let mut ingest_outcome = tokio::task::spawn_blocking(move || ingest.wait());
    let finished = tokio::select! {
        outcome = &mut ingest_outcome => Some(outcome),
        () = cancel.cancelled() => None,
    };
    let outcome = match finished {
        Some(outcome) => Some(outcome),
        None => match tokio::time::timeout(DRAIN_DEADLINE, ingest_outcome).await {
            Ok(outcome) => Some(outcome),
            Err(_) => {
                warn!(deadline = ?DRAIN_DEADLINE, "ingestion did not drain in time; exiting anyway (nothing is lost: offsets are only stored with applied batches)");
                None
            }
        },
    };
    let ended = match outcome.transpose().context("ingest task")? {
        None | Some(Ok(())) => Ended::Clean,
        Some(Err(failure)) => {
            let reason = failure.to_string();
            error!(%reason, "ingestion stopped; the API keeps serving until tandem is stopped");
            cancel.cancelled().await;
            Ended::IngestFailed(reason)
        }
    };
    match tokio::time::timeout(DRAIN_DEADLINE, api).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(error))) => warn!(%error, "the HTTP API stopped with an error"),
        Ok(Err(error)) => warn!(%error, "the HTTP API task failed"),
        Err(_) => warn!("the HTTP API did not stop in time"),
    }
    info!("tandem stopped");
    Ok(ended)
}

/// Opens the backup target, reports the newest backup already there (so the age of the last
/// good backup survives a restart) and starts taking one every `backup.interval`.
async fn start_backups(
    backup: &crate::config::BackupConfig,
    store: &Store,
    registry: &Registry,
    cancel: &CancellationToken,
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
    let backups = Arc::new(
        tandem_backup::Backups::new(store.clone(), target, backup.keep).with_metrics(metrics),
    );
    tokio::spawn(tandem_backup::keep_taking(
        backups.clone(),
        backup.interval,
        cancel.clone(),
    ));
    Ok(backups)
}

/// Cancels `cancel` on SIGINT or SIGTERM.
pub fn cancel_on_signals(cancel: CancellationToken) {
    tokio::spawn(async move {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(error) => {
                    warn!(%error, "cannot listen for SIGTERM; use Ctrl-C");
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => info!("interrupt received; stopping"),
            _ = terminate => info!("SIGTERM received; stopping"),
        }
        cancel.cancel();
    });
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
