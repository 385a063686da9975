//! `GET /v1/replication`, and the refusal of changes on an instance that is not active.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tandem_replica::Role;

use crate::{ApiContext, ApiError};

/// The instance's replication role, epoch and lag.
pub(crate) async fn get_replication(State(context): State<Arc<ApiContext>>) -> Response {
    match &context.replication {
        None => Json(json!({
            "configured": false,
            "role": "active",
            "hint": "add [replication] to the configuration of this instance and of a standby to run a hot standby"
        }))
        .into_response(),
        Some(replication) => {
            let mut view = serde_json::to_value(replication.view()).unwrap_or_default();
            view["configured"] = json!(true);
            Json(view).into_response()
        }
    }
}

/// A standby serves reads and refuses changes: its store is a copy, written only by the
/// active instance's changelog.
pub(crate) async fn refuse_changes_unless_active(
    State(context): State<Arc<ApiContext>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(replication) = &context.replication {
        let role = replication.role();
        if request.method() != Method::GET
            && request.method() != Method::HEAD
            && role != Role::Active
        {
            return ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "this instance is {}: it serves reads and refuses changes",
                    role.as_str()
                ),
                "send the change to the active instance (GET /v1/replication on each instance says which one is active)",
            )
            .into_response();
        }
    }
    next.run(request).await
}
