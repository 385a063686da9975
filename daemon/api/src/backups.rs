//! `GET /v1/backups` lists the backups in the configured target; `POST /v1/backups` takes one
//! now (admin), after any backup already running.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};
use tandem_backup::Manifest;
use tandem_core::cutover::Caller;

use crate::{audit, ApiContext, ApiError};

fn failed(error: &tandem_backup::Error) -> ApiError {
    tracing::warn!(%error, "backup request failed");
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        error.to_string(),
        "the backup target did not answer as it should; the daemon's log has the details",
    )
}

/// `GET /v1/backups`: newest first.
pub(crate) async fn get_backups(
    State(context): State<Arc<ApiContext>>,
) -> Result<Json<Value>, ApiError> {
    let Some(backups) = &context.backups else {
        return Ok(Json(json!({"configured": false, "backups": []})));
    };
    let mut listed = tandem_backup::list(backups.target())
        .await
        .map_err(|error| failed(&error))?;
    listed.reverse();
    Ok(Json(json!({
        "configured": true,
        "target": backups.target().to_string(),
        "backups": listed.iter().map(Manifest::summary).collect::<Vec<_>>(),
    })))
}

/// `POST /v1/backups`: 201 with the backup taken.
pub(crate) async fn post_backup(
    State(context): State<Arc<ApiContext>>,
    caller: Option<axum::Extension<Caller>>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Some(backups) = context.backups.clone() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "backups are not configured",
            "set `backup.target` (a directory or s3://bucket/prefix) in the configuration and restart tandem",
        ));
    };
    audit(
        caller.as_deref(),
        "backup asked",
        &backups.target().to_string(),
    );
    // The backup goes on if the caller goes away: it is taken once asked.
    let taken = tokio::spawn(async move { backups.run().await })
        .await
        .map_err(ApiError::internal)?;
    let manifest = taken.map_err(|error| failed(&error))?;
    Ok((StatusCode::CREATED, Json(json!(manifest.summary()))))
}
