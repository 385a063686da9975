//! The report's history: a summary of every entity's counts kept at an interval
//! (`reconcile.history_interval`), and `GET /v1/report/history?entity=&since=`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use tandem_core::{Status, Timestamp};
use tandem_store::{EntityCounts, SummarySnapshot};
use tracing::warn;

use crate::ownership::parse_since;
use crate::{blocking, current_report, now, ApiContext, ApiError};

/// Summaries returned at most per request.
const MAX_SUMMARIES: usize = 10_000;

/// Keeps a summary every `interval` (the first one at once if the newest kept is older than
/// the interval), until `cancel`.
pub async fn keep(
    context: Arc<ApiContext>,
    interval: Duration,
    cancel: tokio_util::sync::CancellationToken,
) {
    loop {
        let task_context = context.clone();
        let wait = tokio::task::spawn_blocking(move || keep_due(&task_context, interval)).await;
        let wait = match wait {
            Ok(Ok(wait)) => wait,
            Ok(Err(error)) => {
                warn!(%error, "could not keep a report summary; trying again at the next interval");
                interval
            }
            Err(_) => interval,
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Keeps a summary if the newest is at least `interval` old; returns how long to wait.
fn keep_due(context: &ApiContext, interval: Duration) -> Result<Duration, String> {
    let at = now();
    let interval_nanos = i64::try_from(interval.as_nanos()).unwrap_or(i64::MAX);
    if let Some(latest) = context
        .store
        .latest_summary_at()
        .map_err(|error| error.to_string())?
    {
        let age = at.unix_nanos().saturating_sub(latest.unix_nanos());
        if age < interval_nanos {
            return Ok(Duration::from_nanos(
                u64::try_from(interval_nanos - age).unwrap_or(0),
            ));
        }
    }
    let report = current_report(context).map_err(|error| error.to_string())?;
    let snapshot = SummarySnapshot {
        at,
        clock: report.clock,
        entities: report
            .entities
            .iter()
            .map(|(name, entity)| {
                (
                    name.clone(),
                    EntityCounts {
                        records: entity.records,
                        parity: entity.parity,
                        by_status: entity
                            .by_status
                            .iter()
                            .filter(|(_, count)| **count > 0)
                            .map(|(status, count)| (*status, *count))
                            .collect(),
                    },
                )
            })
            .collect(),
    };
    context
        .store
        .record_summary(&snapshot)
        .map_err(|error| error.to_string())?;
    Ok(interval)
}

#[derive(Debug, Deserialize)]
pub(crate) struct HistoryQuery {
    entity: Option<String>,
    since: Option<String>,
}

/// The answer of `GET /v1/report/history`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReportHistory {
    /// Summaries, oldest first.
    pub items: Vec<SummarySnapshot>,
}

impl ReportHistory {
    /// One entity's series: (time, records, parity, counts per status).
    pub fn series(&self, entity: &str) -> Vec<(Timestamp, u64, f64, BTreeMap<Status, u64>)> {
        self.items
            .iter()
            .filter_map(|item| {
                item.entities.get(entity).map(|counts| {
                    (
                        item.at,
                        counts.records,
                        counts.parity,
                        counts.by_status.clone(),
                    )
                })
            })
            .collect()
    }
}

pub(crate) async fn get_history(
    State(context): State<Arc<ApiContext>>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<ReportHistory>, ApiError> {
    let hint = "parameters: entity (a configured entity), since (RFC 3339 time or a duration back from now, such as 24h; default 7d)";
    let Query(query) = query
        .map_err(|rejection| ApiError::new(StatusCode::BAD_REQUEST, rejection.body_text(), hint))?;
    if let Some(entity) = &query.entity {
        if context.mapping.entity(entity).is_none() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("unknown entity `{entity}`"),
                hint,
            ));
        }
    }
    let since = parse_since(query.since.as_deref().unwrap_or("7d"))?;
    blocking(move || {
        let items = context
            .store
            .summaries(since, query.entity.as_deref(), MAX_SUMMARIES)
            .map_err(ApiError::internal)?;
        Ok(Json(ReportHistory { items }))
    })
    .await
}
