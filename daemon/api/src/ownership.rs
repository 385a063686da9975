//! `/v1/ownership`, `/v1/ownership/permit`, `/v1/violations` and `/v1/writers`: who owns
//! live work, who may write where, who broke the rule and who writes at all.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use tandem_core::event::{Actor, ActorKind};
use tandem_core::ownership::{self, actor_kind_name, Permit, Violation};
use tandem_core::{System, Timestamp};
use tandem_store::ViolationFilter;

use crate::{blocking, now, present, ApiContext, ApiError, DEFAULT_LIMIT, MAX_LIMIT};

/// The owner and epoch of one entity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntityOwner {
    /// The entity.
    pub entity: String,
    /// The system that owns live work.
    pub owner: System,
    /// Its epoch; grows at every flip.
    pub epoch: u64,
}

/// `GET /v1/ownership`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnershipView {
    /// Every configured entity.
    pub entities: Vec<EntityOwner>,
    /// Besides sync and repair actors, who may write into each system while it is fenced.
    pub allowed: BTreeMap<System, Vec<String>>,
    /// What a write without an actor into a fenced system is: `report` or `violation`.
    pub unattributed_writes: ownership::Unattributed,
}

/// `GET /v1/violations`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViolationList {
    /// Oldest first.
    pub items: Vec<Violation>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// One writer of one system in `GET /v1/writers`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriterView {
    /// The writer's kind, or `unknown` when the feed does not say who wrote.
    pub kind: String,
    /// The writer's id, if known.
    pub id: Option<String>,
    /// Writes counted.
    pub writes: u64,
    /// Of those, violations.
    pub violations: u64,
    /// Writes per entity.
    pub entities: BTreeMap<String, u64>,
    /// Whether it wrote into this system while the system was fenced for that entity.
    pub into_fenced: bool,
    /// Event time of its latest write.
    pub last_seen: Timestamp,
}

/// `GET /v1/writers`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WritersView {
    /// Counts start at the beginning of this UTC day; `None` when no `since` was asked for:
    /// every write counted since the store began.
    pub since: Option<Timestamp>,
    /// Per system, writers into the fenced system first, then by writes.
    pub systems: BTreeMap<System, Vec<WriterView>>,
}

fn bad_request(error: impl Into<String>, hint: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, error, hint)
}

/// `since`: an RFC 3339 time, or a duration back from now (`24h`, `7d`).
pub(crate) fn parse_since(text: &str) -> Result<Timestamp, ApiError> {
    // A bound far out in time is still a bound: the year 9999 lists nothing, the year 1 all.
    if let Ok(at) = Timestamp::parse_rfc3339_saturating(text) {
        return Ok(at);
    }
    let duration = humantime::parse_duration(text).map_err(|_| {
        bad_request(
            format!("`since` is `{text}`, neither an RFC 3339 time nor a duration"),
            "e.g. since=2026-11-20T00:00:00Z or since=24h",
        )
    })?;
    let nanos = i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX);
    Ok(Timestamp::from_unix_nanos(
        now().unix_nanos().saturating_sub(nanos),
    ))
}

fn parse_system(text: &str) -> Result<System, ApiError> {
    System::ALL
        .into_iter()
        .find(|system| system.as_str() == text)
        .ok_or_else(|| bad_request(format!("unknown system `{text}`"), "use source or target"))
}

fn parse_actor(text: &str) -> Result<(ActorKind, Option<String>), ApiError> {
    tandem_core::event::parse_actor(text)
        .map(|actor| (actor.kind, actor.id))
        .map_err(|error| bad_request(error, "write `kind` or `kind:id`, e.g. integration:webform"))
}

fn known_entity(context: &ApiContext, entity: &str) -> Result<(), ApiError> {
    if context.mapping.entity(entity).is_none() {
        return Err(bad_request(
            format!("unknown entity `{entity}`"),
            format!(
                "configured entities: {}",
                crate::known_entities(&context.mapping)
            ),
        ));
    }
    Ok(())
}

pub(crate) async fn get_ownership(
    State(context): State<Arc<ApiContext>>,
) -> Result<Json<OwnershipView>, ApiError> {
    blocking(move || {
        let state = context
            .store
            .read()
            .apply_state()
            .map_err(ApiError::internal)?;
        let policy = &context.ownership;
        Ok(Json(OwnershipView {
            entities: context
                .mapping
                .entities()
                .map(|entity| {
                    let now = policy.of(&state.ownership, &entity.name);
                    EntityOwner {
                        entity: entity.name.clone(),
                        owner: now.owner,
                        epoch: now.epoch,
                    }
                })
                .collect(),
            allowed: policy
                .allowed
                .iter()
                .map(|(system, rules)| (*system, rules.iter().map(ToString::to_string).collect()))
                .collect(),
            unattributed_writes: policy.unattributed,
        }))
    })
    .await
}

#[derive(Debug, Deserialize)]
pub(crate) struct PermitQuery {
    system: Option<String>,
    entity: Option<String>,
    actor: Option<String>,
    epoch: Option<u64>,
}

pub(crate) async fn get_permit(
    State(context): State<Arc<ApiContext>>,
    query: Result<Query<PermitQuery>, QueryRejection>,
) -> Result<Json<Permit>, ApiError> {
    let hint =
        "parameters: system (source or target), entity, actor (kind or kind:id), epoch (optional)";
    let Query(query) = query.map_err(|rejection| bad_request(rejection.body_text(), hint))?;
    let (Some(system), Some(entity), Some(actor)) = (
        present("system", query.system)?,
        present("entity", query.entity)?,
        present("actor", query.actor)?,
    ) else {
        return Err(bad_request("system, entity and actor are required", hint));
    };
    let system = parse_system(&system)?;
    known_entity(&context, &entity)?;
    let (kind, id) = parse_actor(&actor)?;
    let actor = Actor {
        kind,
        id,
        epoch: query.epoch,
    };
    blocking(move || {
        let state = context
            .store
            .read()
            .apply_state()
            .map_err(ApiError::internal)?;
        Ok(Json(context.ownership.permit(
            &state.ownership,
            system,
            &entity,
            &actor,
        )))
    })
    .await
}

#[derive(Debug, Deserialize)]
pub(crate) struct ViolationQuery {
    since: Option<String>,
    actor: Option<String>,
    entity: Option<String>,
    system: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

pub(crate) async fn get_violations(
    State(context): State<Arc<ApiContext>>,
    query: Result<Query<ViolationQuery>, QueryRejection>,
) -> Result<Json<ViolationList>, ApiError> {
    let Query(query) = query.map_err(|rejection| {
        bad_request(
            rejection.body_text(),
            "parameters: since, actor, entity, system, limit (1 to 1000), cursor",
        )
    })?;
    let mut filter = ViolationFilter::default();
    if let Some(since) = present("since", query.since)? {
        filter.since = Some(parse_since(&since)?);
    }
    if let Some(actor) = present("actor", query.actor)? {
        filter.actor = Some(parse_actor(&actor)?);
    }
    if let Some(entity) = present("entity", query.entity)? {
        known_entity(&context, &entity)?;
        filter.entity = Some(entity);
    }
    if let Some(system) = present("system", query.system)? {
        filter.system = Some(parse_system(&system)?);
    }
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(bad_request(
            format!("limit must be between 1 and {MAX_LIMIT}"),
            "page through larger sets with `cursor`",
        ));
    }
    let cursor = match present("cursor", query.cursor)? {
        None => None,
        Some(text) => Some(URL_SAFE_NO_PAD.decode(text).map_err(|_| {
            bad_request(
                "invalid cursor",
                "pass back the `next_cursor` of the previous page unchanged",
            )
        })?),
    };
    blocking(move || {
        let page = context
            .store
            .read()
            .violations(&filter, limit, cursor.as_deref())
            .map_err(ApiError::internal)?;
        Ok(Json(ViolationList {
            items: page.items,
            next_cursor: page
                .next_cursor
                .map(|cursor| URL_SAFE_NO_PAD.encode(cursor)),
        }))
    })
    .await
}

#[derive(Debug, Deserialize)]
pub(crate) struct WritersQuery {
    since: Option<String>,
}

pub(crate) async fn get_writers(
    State(context): State<Arc<ApiContext>>,
    query: Result<Query<WritersQuery>, QueryRejection>,
) -> Result<Json<WritersView>, ApiError> {
    let Query(query) =
        query.map_err(|rejection| bad_request(rejection.body_text(), "parameters: since"))?;
    let since = present("since", query.since)?
        .map(|text| parse_since(&text))
        .transpose()?;
    let since_day = ownership::day_of(since.unwrap_or(Timestamp::MIN));
    blocking(move || {
        let snapshot = context.store.read();
        let state = snapshot.apply_state().map_err(ApiError::internal)?;
        let counts = snapshot.writers(since_day).map_err(ApiError::internal)?;
        let mut systems: BTreeMap<System, BTreeMap<(String, String), WriterView>> = BTreeMap::new();
        for (key, count) in counts {
            let kind = key
                .kind
                .map(actor_kind_name)
                .unwrap_or("unknown")
                .to_owned();
            let fenced = context.ownership.of(&state.ownership, &key.entity).owner != key.system;
            let writer = systems
                .entry(key.system)
                .or_default()
                .entry((kind.clone(), key.id.clone()))
                .or_insert_with(|| WriterView {
                    kind,
                    id: (!key.id.is_empty()).then(|| key.id.clone()),
                    writes: 0,
                    violations: 0,
                    entities: BTreeMap::new(),
                    into_fenced: false,
                    last_seen: count.last_seen,
                });
            writer.writes += count.writes;
            writer.violations += count.violations;
            *writer.entities.entry(key.entity.clone()).or_default() += count.writes;
            writer.into_fenced |= fenced;
            writer.last_seen = writer.last_seen.max(count.last_seen);
        }
        let systems = systems
            .into_iter()
            .map(|(system, writers)| {
                let mut writers: Vec<WriterView> = writers.into_values().collect();
                writers.sort_by(|left, right| {
                    (
                        right.violations > 0,
                        right.into_fenced,
                        right.violations,
                        right.writes,
                    )
                        .cmp(&(
                            left.violations > 0,
                            left.into_fenced,
                            left.violations,
                            left.writes,
                        ))
                        .then_with(|| (&left.kind, &left.id).cmp(&(&right.kind, &right.id)))
                });
                (system, writers)
            })
            .collect();
        Ok(Json(WritersView {
            since: since
                .map(|_| Timestamp::from_unix_nanos(since_day.saturating_mul(86_400_000_000_000))),
            systems,
        }))
    })
    .await
}
