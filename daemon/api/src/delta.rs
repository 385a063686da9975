//! `GET /v1/delta`: every record created or changed in one system since a time, mapped back
//! into the other system's field names for an upsert there, streamed as JSON lines or CSV so
//! that a million rows never sit in memory at once.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tandem_core::cutover::Transition;
use tandem_core::delta::{delta_rows, DeltaRow};
use tandem_core::{System, Timestamp};
use tokio::sync::mpsc;

use crate::{present, ApiContext, ApiError};

/// A channel's receiving end as a body stream.
struct Chunks(mpsc::Receiver<Result<Vec<u8>, std::io::Error>>);

impl futures_core::Stream for Chunks {
    type Item = Result<Vec<u8>, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(context)
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct DeltaQuery {
    system: Option<String>,
    since: Option<String>,
    entity: Option<String>,
    format: Option<String>,
}

const CSV_HEADER: &str = "entity,join_key,action,native_id,other_native_ids,changed_at,also_changed_in_other,unverified,lossy_fields,fields\n";

fn csv_field(text: &str) -> String {
    let text = tandem_core::cell::spreadsheet_safe(text);
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.into_owned()
    }
}

fn csv_line(row: &DeltaRow) -> String {
    let fields = serde_json::to_string(&row.fields).unwrap_or_default();
    let action = match row.action {
        tandem_core::delta::DeltaAction::Upsert => "upsert",
        tandem_core::delta::DeltaAction::Delete => "delete",
    };
    [
        csv_field(&row.entity),
        csv_field(&row.join_key),
        action.to_owned(),
        csv_field(&row.native_id),
        csv_field(&row.other_native_ids.join(" ")),
        row.changed_at.to_rfc3339(),
        row.also_changed_in_other.to_string(),
        row.unverified.to_string(),
        csv_field(&row.lossy_fields.join(" ")),
        csv_field(&fields),
    ]
    .join(",")
        + "\n"
}

pub(crate) async fn get_delta(
    State(context): State<Arc<ApiContext>>,
    caller: Option<axum::Extension<tandem_core::cutover::Caller>>,
    query: Result<Query<DeltaQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let hint = "parameters: system (source or target: the system whose changes to carry back), since (an RFC 3339 time, a duration like 24h, or `flip` for the latest flip), entity, format (jsonl or csv)";
    let bad = |error: String| ApiError::new(StatusCode::BAD_REQUEST, error, hint);
    let Query(query) = query.map_err(|rejection| bad(rejection.body_text()))?;
    let system = match present("system", query.system)?.as_deref() {
        Some("source") => System::Source,
        Some("target") | None => System::Target,
        Some(other) => return Err(bad(format!("unknown system `{other}`"))),
    };
    let csv = match present("format", query.format)?.as_deref() {
        None | Some("jsonl") => false,
        Some("csv") => true,
        Some(other) => return Err(bad(format!("unknown format `{other}`"))),
    };
    let entities: Vec<String> = match present("entity", query.entity)? {
        Some(entity) if context.mapping.entity(&entity).is_none() => {
            return Err(bad(format!("unknown entity `{entity}`")))
        }
        Some(entity) => vec![entity],
        None => context
            .mapping
            .entities()
            .map(|entity| entity.name.clone())
            .collect(),
    };
    let since_text =
        present("since", query.since)?.ok_or_else(|| bad("`since` is required".to_owned()))?;
    let since = if since_text == "flip" {
        let state = context
            .store
            .read()
            .apply_state()
            .map_err(ApiError::internal)?;
        state
            .ownership
            .cutover
            .history
            .iter()
            .rev()
            .find(|record| record.transition == Transition::Flip)
            .map(|record| record.at)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::CONFLICT,
                    "there was no flip yet",
                    "give `since` a time or a duration (24h): `flip` names the latest flip",
                )
            })?
    } else {
        crate::ownership::parse_since(&since_text)?
    };
    crate::audit(
        caller.as_deref(),
        "delta export",
        &format!(
            "{system} since {since} ({}), entities {}",
            if csv { "csv" } else { "jsonl" },
            entities.join(" ")
        ),
    );
    let (sender, receiver) = mpsc::channel::<Result<Vec<u8>, std::io::Error>>(16);
    tokio::task::spawn_blocking(move || {
        stream_rows(&context, system, since, &entities, csv, &sender)
    });
    let content_type = if csv {
        "text/csv"
    } else {
        "application/x-ndjson"
    };
    Ok((
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(Chunks(receiver)),
    )
        .into_response())
}

/// Writes the rows in chunks of about 64 KiB; stops when the client goes away.
fn stream_rows(
    context: &ApiContext,
    system: System,
    since: Timestamp,
    entities: &[String],
    csv: bool,
    sender: &mpsc::Sender<Result<Vec<u8>, std::io::Error>>,
) {
    let snapshot = context.store.read();
    let mut chunk = Vec::with_capacity(64 * 1024);
    if csv {
        chunk.extend_from_slice(CSV_HEADER.as_bytes());
    }
    for entity_name in entities {
        let Some(entity) = context.mapping.entity(entity_name) else {
            continue;
        };
        for item in snapshot.records_of(entity_name) {
            let (join_key, row) = match item {
                Ok(item) => item,
                Err(error) => {
                    tracing::error!(%error, "the delta export stopped: the store could not be read");
                    let _ = sender.blocking_send(Err(std::io::Error::other(error.to_string())));
                    return;
                }
            };
            // A reference becomes the other system's id of the record joined to the one
            // it points at.
            let mut translate = |referenced: &str, native_id: &str| {
                let key = snapshot.join_key(system, referenced, native_id).ok()??;
                let row = snapshot.record(referenced, &key).ok()??;
                row.sole_live(system.other())
                    .map(|only| only.native_id.clone())
            };
            for delta in delta_rows(entity, &join_key, &row, system, since, &mut translate) {
                if csv {
                    chunk.extend_from_slice(csv_line(&delta).as_bytes());
                } else {
                    let _ = serde_json::to_writer(&mut chunk, &delta);
                    chunk.push(b'\n');
                }
            }
            if chunk.len() >= 64 * 1024
                && sender
                    .blocking_send(Ok(std::mem::take(&mut chunk)))
                    .is_err()
            {
                return;
            }
        }
    }
    if !chunk.is_empty() {
        let _ = sender.blocking_send(Ok(chunk));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_cells_show_crm_formulas_as_text_and_quote_separators() {
        assert_eq!(csv_field("=1+2"), "'=1+2");
        assert_eq!(csv_field("=a,b"), "\"'=a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("L-1"), "L-1");
    }
}
