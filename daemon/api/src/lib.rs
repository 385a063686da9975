//! tandem's HTTP API: report, divergences, records, health, readiness and metrics.
//!
//! Every store read runs on the blocking pool against one RocksDB snapshot, so a response
//! never mixes two batches and the async runtime never waits on disk.

pub mod auth;
mod backups;
mod console;
pub mod cutover;
mod delta;
pub mod history;
mod metrics;
pub mod ownership;
mod replication;
pub mod report;
mod request_id;
pub mod serve;
pub mod spotcheck;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use prometheus::Registry;
use serde::Deserialize;
use serde_json::{json, Value};
use tandem_core::cutover::Caller;
use tandem_core::ownership::OwnershipPolicy;
use tandem_core::patterns::SuspectedMappingError;
use tandem_core::record::{Cause, CauseDetail};
use tandem_core::{Mapping, Status, System, Timestamp};
use tandem_ingest::{IngestMetrics, IngestSnapshot, IngestStatus};
use tandem_store::{DivergenceFilter, FieldValues, Store};
use tokio::net::TcpListener;
use tracing::error;

use crate::auth::{AccessTokens, AuthMetrics};
use crate::cutover::CutoverRules;
use crate::metrics::ReportGauges;
use crate::report::{
    build_report, DivergenceList, FieldDiff, RecordView, Report, SideView, StoredFacts,
};
use crate::serve::{ConnectionLimits, ConnectionMetrics};

/// Divergences returned per page when no `limit` is given.
pub(crate) const DEFAULT_LIMIT: usize = 100;
/// The largest `limit` accepted.
pub(crate) const MAX_LIMIT: usize = 1000;

/// What the handlers share.
pub struct ApiContext {
    /// The store, read through snapshots.
    pub store: Store,
    /// The configured entities.
    pub mapping: Arc<Mapping>,
    /// System labels from the configuration.
    pub labels: BTreeMap<System, String>,
    /// The grace period.
    pub grace: Duration,
    /// Live ingest state.
    pub status: Arc<IngestStatus>,
    /// The registry `/metrics` exposes.
    pub registry: Registry,
    /// Ingest metrics (the lag gauge is refreshed at scrape time).
    pub ingest_metrics: IngestMetrics,
    /// Ownership rules.
    pub ownership: OwnershipPolicy,
    /// Bearer tokens.
    pub tokens: AccessTokens,
    /// Gates and rollback triggers.
    pub cutover_rules: CutoverRules,
    /// Where cutover steps go (the running ingestion).
    pub cutover: cutover::Handle,
    /// How many connections the API takes, and how long it waits for a request.
    pub connection_limits: ConnectionLimits,
    /// The store's backups, when configured.
    pub backups: Option<Arc<tandem_backup::Backups>>,
    /// The hot standby's state, when replication is configured.
    pub replication: Option<Arc<tandem_replica::Replication>>,
    report_gauges: ReportGauges,
    auth_metrics: AuthMetrics,
    connection_metrics: ConnectionMetrics,
    gate_memory: cutover::Memory,
    cutover_metrics: prometheus::IntGauge,
    commit_date: prometheus::IntGauge,
    /// Suspected mapping errors: when, for which data (events applied, clock), what.
    patterns: std::sync::Mutex<Option<PatternCache>>,
}

type PatternCache = (std::time::Instant, String, Vec<SuspectedMappingError>);

impl ApiContext {
    /// Creates the context and registers the report gauges in `registry`.
    pub fn try_new(
        store: Store,
        mapping: Arc<Mapping>,
        labels: BTreeMap<System, String>,
        grace: Duration,
        status: Arc<IngestStatus>,
        registry: Registry,
        ingest_metrics: IngestMetrics,
    ) -> prometheus::Result<Self> {
        let report_gauges = ReportGauges::register(&registry)?;
        let auth_metrics = AuthMetrics::register(&registry)?;
        let connection_metrics = ConnectionMetrics::register(&registry)?;
        let cutover_metrics = prometheus::IntGauge::new(
            "tandem_rollback_triggers_fired",
            "Rollback triggers firing now (evaluated after a flip, every 15 s)",
        )?;
        registry.register(Box::new(cutover_metrics.clone()))?;
        let commit_date = prometheus::IntGauge::new(
            "tandem_commit_date_timestamp_seconds",
            "The cutover's commit date, in seconds since 1970 (compare with time()); no series without a date",
        )?;
        Ok(ApiContext {
            store,
            mapping,
            labels,
            grace,
            status,
            registry,
            ingest_metrics,
            ownership: OwnershipPolicy::default(),
            tokens: AccessTokens::default(),
            cutover_rules: CutoverRules::default(),
            cutover: std::sync::OnceLock::new(),
            replication: None,
            connection_limits: ConnectionLimits::default(),
            backups: None,
            report_gauges,
            auth_metrics,
            connection_metrics,
            gate_memory: std::sync::Mutex::default(),
            cutover_metrics,
            commit_date,
            patterns: std::sync::Mutex::default(),
        })
    }

    /// Judges and answers ownership questions by these rules.
    pub fn with_ownership(mut self, ownership: OwnershipPolicy) -> Self {
        self.ownership = ownership;
        self
    }

    /// Runs the cutover by these rules, taking steps through `handle`.
    pub fn with_cutover(
        mut self,
        rules: CutoverRules,
        handle: Option<tandem_ingest::ControlHandle>,
    ) -> Self {
        self.cutover_rules = rules;
        if let Some(date) = self.cutover_rules.gates.commit_date {
            // Only configured dates get a series, so "no date" never looks like "due today".
            self.commit_date
                .set(date.unix_nanos().div_euclid(1_000_000_000));
            let _ = self.registry.register(Box::new(self.commit_date.clone()));
        }
        if let Some(handle) = handle {
            self.start_control(handle);
        }
        self
    }

    /// Takes steps and other changes through `handle` from now on (once ingestion runs).
    pub fn start_control(&self, handle: tandem_ingest::ControlHandle) {
        let _ = self.cutover.set(handle);
    }

    /// Shows this replication state, and refuses changes unless the instance is active.
    pub fn with_replication(
        mut self,
        replication: Option<Arc<tandem_replica::Replication>>,
    ) -> Self {
        self.replication = replication;
        self
    }

    /// Requires these bearer tokens.
    pub fn with_tokens(mut self, tokens: AccessTokens) -> Self {
        self.tokens = tokens;
        self
    }

    /// Lists and takes backups through these.
    pub fn with_backups(mut self, backups: Option<Arc<tandem_backup::Backups>>) -> Self {
        self.backups = backups;
        self
    }
    /// Takes connections within these limits.
    pub fn with_connection_limits(mut self, limits: ConnectionLimits) -> Self {
        self.connection_limits = limits;
        self
    }
}

/// The API's routes.
pub fn router(context: Arc<ApiContext>) -> Router {
    Router::new()
        .route("/v1/report", get(get_report))
        .route("/v1/divergences", get(get_divergences))
        .route("/v1/records/{entity}/{*join_key}", get(get_record))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(get_ready))
        .route("/metrics", get(metrics::get_metrics))
        .route("/v1/ownership", get(ownership::get_ownership))
        .route("/v1/ownership/permit", get(ownership::get_permit))
        .route("/v1/violations", get(ownership::get_violations))
        .route("/v1/writers", get(ownership::get_writers))
        .route("/v1/delta", get(delta::get_delta))
        .route("/v1/cutover", get(cutover::get_cutover))
        .route("/v1/cutover/readiness", get(cutover::get_readiness))
        .route("/v1/cutover/{step}", axum::routing::post(cutover::post_step))
        .route("/v1/reevaluate", axum::routing::post(post_reevaluate))
        .route(
            "/v1/partitions/reset",
            axum::routing::post(post_partition_reset),
        )
        .route("/v1/report/history", get(history::get_history))
        .route("/v1/spotcheck", get(spotcheck::get_spotcheck))
        .route(
            "/v1/backups",
            get(backups::get_backups).post(backups::post_backup),
        )
        .route("/v1/replication", get(replication::get_replication))
        .merge(console::routes())
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no such endpoint",
                "see schemas/openapi.yaml: / (the console), /v1/report, /v1/divergences, /v1/records/{entity}/{join_key}, /v1/ownership, /v1/ownership/permit, /v1/violations, /v1/writers, /v1/cutover, /v1/cutover/readiness, POST /v1/cutover/{step}, POST /v1/reevaluate, POST /v1/partitions/reset, /v1/report/history, /v1/spotcheck, /v1/delta, /v1/backups, POST /v1/backups, /v1/replication, /healthz, /readyz, /metrics",
            )
        })
        // Only requests that reach an endpoint need a token: a wrong path or method is told
        // as such (404, 405) whoever asks.
        .route_layer(axum::middleware::from_fn_with_state(
            context.clone(),
            replication::refuse_changes_unless_active,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            context.clone(),
            auth::require_token,
        ))
        .method_not_allowed_fallback(|method: axum::http::Method, uri: axum::http::Uri| async move {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not allowed on {}", uri.path()),
                "see schemas/openapi.yaml for the methods of each endpoint: changes are POST, everything else GET",
            )
        })
        // Outermost: every answer has an id, refusals and wrong paths included.
        .layer(axum::middleware::from_fn(request_id::assign))
        .with_state(context)
}

/// Serves the API on `listener` until `shutdown` completes, within the context's connection
/// limits.
pub async fn serve(
    listener: TcpListener,
    context: Arc<ApiContext>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = context.connection_limits;
    let metrics = context.connection_metrics.clone();
    serve::serve_connections(listener, router(context), limits, metrics, shutdown).await
}

/// Logs a change or an export with who asked, as the API established it (the token, the
/// address, the request id), next to what was asked.
pub(crate) fn audit(caller: Option<&Caller>, what: &str, detail: &str) {
    let unknown = Caller::default();
    let caller = caller.unwrap_or(&unknown);
    tracing::info!(
        token = %caller.token,
        address = %caller.address,
        request_id = %caller.request_id,
        detail,
        "{what}"
    );
}

/// An error response: `{"error": ..., "hint": ...}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    error: String,
    hint: String,
}

impl ApiError {
    pub(crate) fn new(
        status: StatusCode,
        error: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        ApiError {
            status,
            error: error.into(),
            hint: hint.into(),
        }
    }

    pub(crate) fn internal(error: impl std::fmt::Display) -> Self {
        error!(%error, "request failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            error.to_string(),
            "the daemon's log has the details",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": self.error, "hint": self.hint})),
        )
            .into_response()
    }
}

/// Runs a store read on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(ApiError::internal)?
}

pub(crate) fn now() -> Timestamp {
    Timestamp::from_system_time(SystemTime::now())
}

/// Builds the report from one snapshot.
pub fn current_report(context: &ApiContext) -> Result<Report, tandem_store::Error> {
    let live = context.status.snapshot();
    report_of(context, &live, &context.store.read())
}

/// The report as of one store snapshot.
///
/// Callers read the live status before they take the store snapshot: the ingest side updates
/// the status only once what it reports is durable (a finished re-evaluation, applied
/// offsets), so the snapshot is at least as new as the status it is shown with.
pub(crate) fn report_of(
    context: &ApiContext,
    live: &IngestSnapshot,
    snapshot: &tandem_store::ReadSnapshot<'_>,
) -> Result<Report, tandem_store::Error> {
    report_and_state(context, live, snapshot).map(|(report, _)| report)
}

/// The report as of one store snapshot, with the stored state it was built from, so that a
/// caller that needs both (the cutover phase, the readiness) decodes the state once.
pub(crate) fn report_and_state(
    context: &ApiContext,
    live: &IngestSnapshot,
    snapshot: &tandem_store::ReadSnapshot<'_>,
) -> Result<(Report, tandem_core::summary::ApplyState), tandem_store::Error> {
    let mut stored = StoredFacts {
        state: snapshot.apply_state()?,
        oldest_reread_since: snapshot.oldest_reread()?,
        ..StoredFacts::default()
    };
    for entity in context.mapping.entities() {
        stored.oldest_divergence.insert(
            entity.name.clone(),
            snapshot.oldest_divergence(&entity.name)?,
        );
    }
    let report = build_report(
        &context.mapping,
        &context.labels,
        context.grace.as_secs(),
        &stored,
        live,
        now(),
    );
    Ok((report, stored.state))
}

/// Mismatches examined per field for systematic patterns.
const PATTERN_SAMPLE: usize = 2_000;
/// While ingestion catches up, the patterns are looked for again at most this often.
const PATTERN_REFRESH: Duration = Duration::from_secs(5);

/// Systematic mapping errors, from a sample of each field's mismatches; kept while the data
/// does not change, recomputed when it did (at most every [`PATTERN_REFRESH`] while
/// ingestion catches up).
fn suspected_mapping_errors(
    context: &ApiContext,
    snapshot: &tandem_store::ReadSnapshot<'_>,
    report: &Report,
) -> Result<Vec<SuspectedMappingError>, tandem_store::Error> {
    // What the patterns depend on: the events applied, the clock, and the mismatches per
    // field (a re-evaluation changes those without an event).
    let version = serde_json::to_string(&(
        report.ingest.source.events_applied + report.ingest.target.events_applied,
        report.clock,
        report
            .entities
            .iter()
            .map(|(name, entity)| (name, &entity.mismatched_fields))
            .collect::<Vec<_>>(),
    ))
    .unwrap_or_default();
    let mut cache = context
        .patterns
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((at, cached_version, found)) = &*cache {
        // While catching up the data changes with every batch: at most every
        // PATTERN_REFRESH. Once caught up, whenever it changed.
        if *cached_version == version
            || (at.elapsed() < PATTERN_REFRESH && !report.ingest.caught_up)
        {
            return Ok(found.clone());
        }
    }
    let mut found = Vec::new();
    for entity in context.mapping.entities() {
        let Some(counts) = report.entities.get(&entity.name) else {
            continue;
        };
        for rule in &entity.fields {
            let mismatched = counts
                .mismatched_fields
                .get(&rule.target)
                .copied()
                .unwrap_or(0);
            if mismatched < tandem_core::patterns::MIN_MISMATCHES as u64 {
                continue;
            }
            let filter = DivergenceFilter {
                entities: vec![entity.name.clone()],
                status: Some(Status::Mismatch),
                field: Some(rule.target.clone()),
            };
            let page = snapshot.divergences(&filter, None, PATTERN_SAMPLE)?;
            let mut rows = Vec::with_capacity(page.items.len());
            for item in page.items {
                let Some(row) = snapshot.record(&entity.name, &item.join_key)? else {
                    continue;
                };
                rows.push((
                    item.join_key,
                    row.live_fields(System::Source).clone(),
                    row.live_fields(System::Target).clone(),
                ));
            }
            let mut suspected = tandem_core::patterns::suspect(&entity.name, rule, &rows);
            if let Some(referenced) = &rule.reference {
                // An untranslated reference's example shows the id the target should hold:
                // the target's id of the record the source's reference is joined to.
                for example in suspected
                    .iter_mut()
                    .flat_map(|error| error.examples.iter_mut())
                {
                    example.expected =
                        translated_reference(snapshot, referenced, &example.expected)?;
                }
            }
            found.extend(suspected);
        }
    }
    *cache = Some((std::time::Instant::now(), version, found.clone()));
    Ok(found)
}

/// The target's native id of the record a source reference (`source_id`, of `entity`) is
/// joined to; null when there is none (or not exactly one).
fn translated_reference(
    snapshot: &tandem_store::ReadSnapshot<'_>,
    entity: &str,
    source_id: &Value,
) -> Result<Value, tandem_store::Error> {
    let Ok(Some(id)) = tandem_core::record::reference_id(Some(source_id)) else {
        return Ok(Value::Null);
    };
    let Some(join_key) = snapshot.join_key(System::Source, entity, &id)? else {
        return Ok(Value::Null);
    };
    Ok(snapshot
        .record(entity, &join_key)?
        .and_then(|row| {
            row.sole_live(System::Target)
                .map(|side| Value::String(side.native_id.clone()))
        })
        .unwrap_or(Value::Null))
}

/// The suspected mapping errors as `<target field>=<pattern>`, per entity.
fn suspected_patterns(
    suspected: &[SuspectedMappingError],
) -> BTreeMap<&str, std::collections::BTreeSet<String>> {
    let mut found: BTreeMap<&str, std::collections::BTreeSet<String>> = BTreeMap::new();
    for error in suspected {
        found
            .entry(error.entity.as_str())
            .or_default()
            .insert(format!("{}={}", error.field, error.pattern));
    }
    found
}

/// The suspected mapping errors of the data as it is now, as `<target field>=<pattern>` per
/// entity (computed, or cached while the data has not changed).
pub(crate) fn suspected_now(
    context: &ApiContext,
    snapshot: &tandem_store::ReadSnapshot<'_>,
) -> Result<BTreeMap<String, std::collections::BTreeSet<String>>, ApiError> {
    let report =
        report_of(context, &context.status.snapshot(), snapshot).map_err(ApiError::internal)?;
    let suspected =
        suspected_mapping_errors(context, snapshot, &report).map_err(ApiError::internal)?;
    Ok(suspected_patterns(&suspected)
        .into_iter()
        .map(|(entity, patterns)| (entity.to_owned(), patterns))
        .collect())
}

/// A record's cause as the listings show it: a wrong value that follows a suspected mapping
/// error of its field is that `mapping_error` (with the pattern, as `<field>=<pattern>`).
pub(crate) fn listed_cause<'r>(
    suspected: &BTreeMap<String, std::collections::BTreeSet<String>>,
    entity: &str,
    row: &'r tandem_core::RecordRow,
) -> (Option<Cause>, Option<&'r str>) {
    let pattern = suspected.get(entity).and_then(|patterns| {
        row.status
            .wrong_value_patterns
            .iter()
            .find(|pattern| patterns.contains(*pattern))
    });
    match (row.status.cause, pattern) {
        (Some(cause), Some(pattern)) if cause.may_be_mapping_error() => {
            (Some(Cause::MappingError), Some(pattern.as_str()))
        }
        (cause, _) => (cause, None),
    }
}

/// Counts as `mapping_error` the records whose wrong values follow a suspected mapping error
/// of their field (schemas/causes.md), moving them from `sync_wrote_wrong_value` or
/// `unknown`.
fn name_mapping_errors(report: &mut Report) {
    let suspected = suspected_patterns(&report.suspected_mapping_errors);
    for (name, entity) in &mut report.entities {
        let Some(patterns) = suspected.get(name.as_str()) else {
            continue;
        };
        let mut following: BTreeMap<Cause, u64> = BTreeMap::new();
        for (key, count) in &entity.wrong_value_patterns {
            let Some((cause, followed)) = tandem_core::summary::parse_pattern_set_key(key) else {
                continue;
            };
            if followed.iter().any(|pattern| patterns.contains(pattern)) {
                *following.entry(cause).or_default() += count;
            }
        }
        for (cause, count) in following {
            if let Some(counted) = entity.by_cause.get_mut(&cause) {
                *counted = counted.saturating_sub(count);
                if *counted == 0 {
                    entity.by_cause.remove(&cause);
                }
            }
            *entity.by_cause.entry(Cause::MappingError).or_default() += count;
        }
    }
}

/// The body of `POST /v1/reevaluate`.
#[derive(Debug, Deserialize)]
struct ReevaluateRequest {
    /// Why, for the log and the report.
    reason: String,
}

/// The body of an admin request, which must carry a reason (`what` names the request in
/// the refusal); a 400 with `hint` otherwise.
fn admin_request<T>(
    body: Result<Json<T>, axum::extract::rejection::JsonRejection>,
    hint: &str,
    reason: impl Fn(&T) -> &String,
    what: &str,
) -> Result<T, ApiError> {
    let Json(request) = body
        .map_err(|rejection| ApiError::new(StatusCode::BAD_REQUEST, rejection.body_text(), hint))?;
    if !readable(reason(&request)) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{what} needs a reason"),
            hint,
        ));
    }
    Ok(request)
}

/// Whether a reason has something to read: a character that is neither a space nor a control
/// character (a reason of tabs and escapes is no reason). The OpenAPI document states the same
/// rule as the pattern `[^\s\x00-\x1f\x7f-\x9f]`.
fn readable(reason: &str) -> bool {
    reason
        .chars()
        .any(|character| !character.is_whitespace() && !character.is_control())
}

/// The handle of the running ingest side, or a 503 when ingestion is not running.
fn running_control(context: &ApiContext) -> Result<tandem_ingest::ControlHandle, ApiError> {
    context.cutover.get().cloned().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ingestion is not running",
            "restart tandem",
        )
    })
}

/// The body of `POST /v1/partitions/reset`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartitionResetRequest {
    /// The topic.
    topic: String,
    /// The partition.
    partition: i32,
    /// Why (logged).
    reason: String,
}

/// Resets a partition whose ingestion stopped because its stored position lies beyond the
/// broker's log (a re-created topic): it is read again from offset 0, its records become
/// unverified and a snapshot is requested. Answers once the reset is durable.
async fn post_partition_reset(
    State(context): State<Arc<ApiContext>>,
    caller: Option<axum::Extension<Caller>>,
    body: Result<Json<PartitionResetRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let hint = "POST /v1/partitions/reset with {\"topic\": \"...\", \"partition\": 0, \"reason\": \"...\"}";
    let request = admin_request(
        body,
        hint,
        |request: &PartitionResetRequest| &request.reason,
        "a partition reset",
    )?;
    audit(
        caller.as_deref(),
        "partition reset asked",
        &format!(
            "{}/{}: {}",
            request.topic, request.partition, request.reason
        ),
    );
    let handle = running_control(&context)?;
    blocking(move || {
        let loss = handle
            .reset_partition(&request.topic, request.partition, request.reason.clone())
            .map_err(|error| control_error(error, "GET /readyz lists the stopped partitions"))?;
        Ok(Json(json!({
            "reset": true,
            "topic": loss.topic,
            "partition": loss.partition,
            "old_next_offset": loss.first_offset,
            "reason": request.reason,
            "next": "the partition is read again from offset 0; its records are unverified until the requested snapshot completes (GET /v1/report: feed)"
        })))
    })
    .await
}

/// The answer to a change the daemon did not make: 409 for a refusal (the request, in this
/// state), 503 when ingestion has stopped (the daemon: restart it).
pub(crate) fn control_error(error: tandem_ingest::ControlError, refused_hint: &str) -> ApiError {
    match error {
        tandem_ingest::ControlError::Refused(why) => {
            ApiError::new(StatusCode::CONFLICT, why, refused_hint)
        }
        tandem_ingest::ControlError::Stopped(why) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            why,
            "restart tandem; GET /readyz says why ingestion stopped",
        ),
    }
}

/// Starts a re-evaluation of every stored record; `/v1/report` shows its progress.
async fn post_reevaluate(
    State(context): State<Arc<ApiContext>>,
    caller: Option<axum::Extension<Caller>>,
    body: Result<Json<ReevaluateRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let hint = "POST /v1/reevaluate with {\"reason\": \"...\"}";
    let request = admin_request(
        body,
        hint,
        |request: &ReevaluateRequest| &request.reason,
        "a re-evaluation",
    )?;
    audit(caller.as_deref(), "re-evaluation asked", &request.reason);
    let handle = running_control(&context)?;
    let reason = request.reason;
    blocking(move || {
        handle
            .reevaluate(reason.clone())
            .map_err(|error| control_error(error, "see /readyz"))?;
        Ok((
            StatusCode::ACCEPTED,
            Json(json!({
                "accepted": true,
                "reason": reason,
                "progress": "GET /v1/report: `reevaluation` while it runs, `last_reevaluation` once done"
            })),
        ))
    })
    .await
}

/// `GET /v1/report`: the report with the suspected mapping errors, which only this answer
/// carries (gates, metrics and the history do not need them).
async fn get_report(State(context): State<Arc<ApiContext>>) -> Result<Json<Report>, ApiError> {
    blocking(move || {
        let live = context.status.snapshot();
        let snapshot = context.store.read();
        let mut report = report_of(&context, &live, &snapshot).map_err(ApiError::internal)?;
        report.suspected_mapping_errors =
            suspected_mapping_errors(&context, &snapshot, &report).map_err(ApiError::internal)?;
        name_mapping_errors(&mut report);
        Ok(report)
    })
    .await
    .map(Json)
}

#[derive(Debug, Deserialize)]
struct DivergenceQuery {
    entity: Option<String>,
    status: Option<String>,
    field: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

pub(crate) fn known_entities(mapping: &Mapping) -> String {
    mapping
        .entities()
        .map(|entity| entity.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A query parameter's value; an empty one (`?status=`) is refused rather than taken for
/// "absent" or for a value: a client that meant something else learns it at once.
pub(crate) fn present(name: &str, value: Option<String>) -> Result<Option<String>, ApiError> {
    match value {
        Some(text) if text.is_empty() => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("query parameter `{name}` is empty"),
            format!("give `{name}` a value, or leave it out"),
        )),
        value => Ok(value),
    }
}

async fn get_divergences(
    State(context): State<Arc<ApiContext>>,
    query: Result<Query<DivergenceQuery>, QueryRejection>,
) -> Result<Json<DivergenceList>, ApiError> {
    let Query(query) = query.map_err(|rejection| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            rejection.body_text(),
            "parameters: entity, status, field, limit (1 to 1000), cursor",
        )
    })?;
    let query = DivergenceQuery {
        entity: present("entity", query.entity)?,
        status: present("status", query.status)?,
        field: present("field", query.field)?,
        limit: query.limit,
        cursor: present("cursor", query.cursor)?,
    };
    let entities: Vec<String> = match &query.entity {
        Some(entity) if context.mapping.entity(entity).is_none() => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("unknown entity `{entity}`"),
                format!("configured entities: {}", known_entities(&context.mapping)),
            ))
        }
        Some(entity) => vec![entity.clone()],
        None => context
            .mapping
            .entities()
            .map(|entity| entity.name.clone())
            .collect(),
    };
    let status =
        match query.status.as_deref() {
            None | Some("") => None,
            Some(text) => match Status::parse(text) {
                Some(Status::InSync) => {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "in_sync records are not divergences",
                        "use GET /v1/report for in-sync counts",
                    ))
                }
                Some(status) => Some(status),
                None => return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("unknown status `{text}`"),
                    "use one of pending, mismatch, missing_in_target, missing_in_source, duplicate, unverified",
                )),
            },
        };
    if query.field.is_some() && status.is_some_and(|status| status != Status::Mismatch) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "`field` selects mismatches; it cannot be combined with another status",
            "drop `status`, or use status=mismatch",
        ));
    }
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("limit must be between 1 and {MAX_LIMIT}"),
            "page through larger sets with `cursor`",
        ));
    }
    let cursor = match &query.cursor {
        None => None,
        Some(text) => Some(URL_SAFE_NO_PAD.decode(text).map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid cursor",
                "pass back the `next_cursor` of the previous page unchanged",
            )
        })?),
    };
    let filter = DivergenceFilter {
        entities,
        status,
        field: query.field.clone(),
    };
    blocking(move || {
        let snapshot = context.store.read();
        let mut page = snapshot
            .divergences(&filter, cursor.as_deref(), limit)
            .map_err(ApiError::internal)?;
        let suspected = suspected_now(&context, &snapshot)?;
        for item in &mut page.items {
            let (Some(rules), Some(row)) = (
                context.mapping.entity(&item.entity),
                snapshot
                    .record(&item.entity, &item.join_key)
                    .map_err(ApiError::internal)?,
            ) else {
                continue;
            };
            let (cause, pattern) = listed_cause(&suspected, &item.entity, &row);
            item.cause = cause;
            item.cause_detail =
                cause.and_then(|cause| CauseDetail::of(rules, &row, cause, pattern));
            let source = row.live_fields(System::Source);
            let target = row.live_fields(System::Target);
            for rule in rules
                .fields
                .iter()
                .filter(|rule| item.fields.contains(&rule.target))
            {
                item.values.insert(
                    rule.target.clone(),
                    FieldValues {
                        source: rule.source_value(source),
                        target: target.get(&rule.target).cloned().unwrap_or(Value::Null),
                    },
                );
            }
        }
        Ok(Json(DivergenceList {
            items: page.items,
            next_cursor: page
                .next_cursor
                .map(|cursor| URL_SAFE_NO_PAD.encode(cursor)),
        }))
    })
    .await
}

async fn get_record(
    State(context): State<Arc<ApiContext>>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<RecordView>, ApiError> {
    let Path((entity, join_key)) = path.map_err(|rejection| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            rejection.body_text(),
            "percent-encode the entity and the join key as UTF-8",
        )
    })?;
    let Some(mapping) = context.mapping.entity(&entity).cloned() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("unknown entity `{entity}`"),
            format!("configured entities: {}", known_entities(&context.mapping)),
        ));
    };
    blocking(move || {
        let snapshot = context.store.read();
        let Some(row) = snapshot.record(&entity, &join_key).map_err(ApiError::internal)? else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no `{entity}` record with join key `{join_key}`"),
                "join keys are case-sensitive; GET /v1/divergences lists divergent records with their keys",
            ));
        };
        let history = snapshot
            .history(&entity, &row)
            .map_err(ApiError::internal)?;
        let diff = mapping
            .fields
            .iter()
            .map(|field| {
                let source_fields = row.live_fields(System::Source);
                let target_fields = row.live_fields(System::Target);
                let expected = field.expected_target(source_fields);
                FieldDiff {
                    field: field.target.clone(),
                    source_field: field.source.to_string(),
                    equal: field.matches(source_fields, target_fields) == Ok(true),
                    source: field.source_value(source_fields),
                    expected: match &expected {
                        Ok(value) => value.clone(),
                        Err(_) => Value::Null,
                    },
                    unmapped: expected.is_err(),
                    compare: field.comparer.name().to_owned(),
                    critical: field.critical,
                    lossy: field.is_lossy(),
                    target: target_fields.get(&field.target).cloned().unwrap_or(Value::Null),
                }
            })
            .collect();
        let as_of = snapshot
            .next_offsets()
            .map_err(ApiError::internal)?
            .into_iter()
            .map(|(topic, partition, next)| (format!("{topic}/{partition}"), next))
            .collect();
        let source = side_views(&snapshot, System::Source, &entity, &row.source)?;
        let target = side_views(&snapshot, System::Target, &entity, &row.target)?;
        Ok(Json(RecordView {
            entity,
            join_key,
            status: row.status.status,
            since: row.status.since,
            pending_until: row.status.due_at,
            source,
            target,
            diff,
            history,
            as_of,
        }))
    })
    .await
}

/// The native records of one side, with when a re-read of each was requested.
fn side_views(
    snapshot: &tandem_store::ReadSnapshot<'_>,
    system: System,
    entity: &str,
    sides: &[tandem_core::SideRecord],
) -> Result<Vec<SideView>, ApiError> {
    sides
        .iter()
        .map(|side| {
            let mut view = SideView::from(side);
            if side.unverified.is_some() {
                view.reread_requested_at = snapshot
                    .reread(system, entity, &side.native_id)
                    .map_err(ApiError::internal)?
                    .and_then(|row| row.requested_at);
            }
            Ok(view)
        })
        .collect()
}

async fn get_ready(State(context): State<Arc<ApiContext>>) -> Response {
    let snapshot = context.status.snapshot();
    let mut reasons = Vec::new();
    if let Some(stopped) = &snapshot.stopped {
        reasons.push(format!("ingestion stopped: {stopped}"));
    }
    if let Some(paused) = &snapshot.paused {
        reasons.push(format!("ingestion paused: {paused}"));
    }
    if snapshot.assigned.is_empty() {
        reasons.push("no partition is assigned to this instance yet".to_owned());
    }
    if let Some(since) = snapshot.broker_unreachable_since {
        reasons.push(format!(
            "no Kafka broker reachable since {since}; data is stale"
        ));
    }
    for ((topic, partition), stopped) in &snapshot.stopped_partitions {
        reasons.push(format!(
            "ingestion of {topic}/{partition} stopped: {}",
            stopped.reason
        ));
    }
    for (subject, problem) in &snapshot.kafka_problems {
        reasons.push(format!("{subject}: {problem}"));
    }
    if let Some(replication) = &context.replication {
        let role = replication.role();
        if role != tandem_replica::Role::Active {
            reasons.push(format!(
                "this instance is {} (replication): it serves reads, the active instance takes changes (GET /v1/replication)",
                role.as_str()
            ));
        }
    }
    // Lost events do not stop the daemon from serving (it says what it cannot vouch for),
    // so they are warnings: readiness gates traffic, and the API is how operators see them.
    let warnings = blocking(move || lost_event_warnings(&context))
        .await
        .unwrap_or_else(|error| vec![format!("cannot read the store: {}", error.error)]);
    let body = json!({
        "ready": reasons.is_empty(),
        "reasons": reasons,
        "warnings": warnings,
        "assigned_partitions": snapshot.assigned.len(),
        "caught_up": snapshot.caught_up(),
    });
    let status = if reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// The lost events not yet healed by a snapshot, one line each.
fn lost_event_warnings(context: &ApiContext) -> Result<Vec<String>, ApiError> {
    let state = context
        .store
        .read()
        .apply_state()
        .map_err(ApiError::internal)?;
    let mut warnings = Vec::new();
    for loss in state
        .feed
        .offset_losses
        .iter()
        .filter(|loss| loss.healed_at.is_none())
    {
        warnings.push(format!(
            "events lost on {}/{}: offsets {}..={} ({}) were gone from the broker before tandem read them; records known on that partition are unverified until a snapshot of the {} system completes",
            loss.topic,
            loss.partition,
            loss.first_offset,
            loss.last_offset,
            loss.kind.as_str(),
            loss.system
        ));
    }
    for stream in state
        .feed
        .streams
        .values()
        .filter(|stream| stream.open_since.is_some())
    {
        warnings.push(format!(
            "events lost on {}/{}: {} seq numbers missing; records known on that partition are unverified until a snapshot of the {} system completes",
            stream.topic, stream.partition, stream.missing, stream.system
        ));
    }
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::readable;

    /// The rule of the OpenAPI pattern `[^\s\x00-\x1f\x7f-\x9f]`, character by character.
    #[test]
    fn a_reason_of_spaces_and_control_characters_is_no_reason() {
        for blank in [
            "",
            " ",
            "\t\n",
            "\t\u{1c}\u{1f}",
            "\u{7f}\u{85}\u{a0}\u{3000}",
        ] {
            assert!(!readable(blank), "{blank:?}");
        }
        for reason in ["CAB-1234", " x ", "理由", "\u{feff}"] {
            assert!(readable(reason), "{reason:?}");
        }
    }
}
