//! `/v1/cutover`: the second cutover's state, its readiness (every gate measured on one
//! snapshot), its steps (dry run or real, admin token), and the rollback triggers watched
//! after a flip.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use tandem_core::cutover::{self, Phase, StepOrder, Transition, TransitionRecord};
use tandem_core::gates::{
    evaluate, fired_triggers, EntityFacts, FiredTrigger, GateFacts, GateResult, GateRules,
    Readiness, TriggerRule,
};
use tandem_core::ownership::{EntityOwnership, OwnershipState};
use tandem_core::{System, Timestamp};
use tandem_ingest::ControlHandle;
use tandem_store::ViolationFilter;
use tracing::warn;

use crate::{blocking, now, ApiContext, ApiError};

/// The cutover's rules, from the configuration.
#[derive(Clone, Debug, Default)]
pub struct CutoverRules {
    /// The gates `verify` and `flip` need green.
    pub gates: GateRules,
    /// The rules watched after a flip.
    pub triggers: Vec<TriggerRule>,
}

/// What the gates remember between evaluations while the daemon runs.
#[derive(Debug, Default)]
pub(crate) struct GateMemory {
    since: BTreeMap<(String, Option<String>), (bool, Timestamp)>,
    green_since: Option<Timestamp>,
    fired: Vec<FiredTrigger>,
}

/// `GET /v1/cutover`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CutoverView {
    /// Where the cutover stands.
    pub phase: Phase,
    /// Since when (wall clock); null before the first step.
    pub since: Option<Timestamp>,
    /// The steps allowed now.
    pub allowed: Vec<Transition>,
    /// Every step taken, oldest first.
    pub history: Vec<TransitionRecord>,
    /// Rollback triggers firing now (evaluated after a flip).
    pub triggers_fired: Vec<FiredTrigger>,
}

/// The answer of a dry run, or of a refused step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepPreview {
    /// The step.
    pub transition: Transition,
    /// Whether it would be taken now.
    pub allowed: bool,
    /// The phase now.
    pub from: Phase,
    /// The phase it leads to, if allowed from here.
    pub to: Option<Phase>,
    /// Why it would be refused.
    pub refusal: Option<String>,
    /// The owner and epoch each entity would get (flip, rollback).
    pub ownership_after: Option<BTreeMap<String, EntityOwnership>>,
    /// The gates, for verify and flip.
    pub readiness: Option<Readiness>,
}

/// The body of a step.
#[derive(Clone, Debug, Deserialize)]
pub struct StepRequest {
    /// Why, in words: kept in the history and published.
    pub reason: String,
    /// Who asks.
    #[serde(default)]
    pub by: Option<String>,
    /// Only report what would happen.
    #[serde(default)]
    pub dry_run: bool,
}

/// Measures every gate from one snapshot, remembering since when each has held.
/// The report, the ownership and cutover state and the violations all come from the same
/// store snapshot; the third value is the number of events applied in it.
pub(crate) fn readiness(
    context: &ApiContext,
) -> Result<(Readiness, OwnershipState, u64), ApiError> {
    let live = context.status.snapshot();
    let snapshot = context.store.read();
    let (report, state) =
        crate::report_and_state(context, &live, &snapshot).map_err(ApiError::internal)?;
    let measured_at_events =
        state.counters.source.events_applied + state.counters.target.events_applied;
    let at = now();
    let rules = &context.cutover_rules.gates;
    let recent_violations = match rules.no_violations_hours {
        Some(hours) => {
            let since = Timestamp::from_unix_nanos(
                at.unix_nanos().saturating_sub(
                    i64::try_from(hours)
                        .unwrap_or(i64::MAX)
                        .saturating_mul(3_600_000_000_000),
                ),
            );
            let filter = ViolationFilter {
                since: Some(since),
                ..ViolationFilter::default()
            };
            let page = snapshot
                .violations(&filter, 100_000, None)
                .map_err(ApiError::internal)?;
            (
                page.items.len() as u64,
                page.items.last().map(|violation| violation.occurred_at),
            )
        }
        None => (0, None),
    };
    let mut snapshots = BTreeMap::new();
    for (system, feed) in [
        (System::Source, &report.feed.source),
        (System::Target, &report.feed.target),
    ] {
        for (entity, status) in &feed.snapshots {
            if let Some(completed) = &status.last_completed {
                snapshots.insert((system, entity.clone()), completed.completed_at);
            }
        }
    }
    let lag = match (report.ingest.source.lag, report.ingest.target.lag) {
        (Some(source), Some(target)) => Some(source + target),
        _ => None,
    };
    let mut memory = context
        .gate_memory
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let facts = GateFacts {
        entities: report
            .entities
            .iter()
            .map(|(entity, counts)| {
                (
                    entity.clone(),
                    EntityFacts {
                        parity: counts.parity,
                        by_status: counts.by_status.clone(),
                        mismatched_fields: counts.mismatched_fields.clone(),
                    },
                )
            })
            .collect(),
        lag,
        recent_violations,
        snapshots,
        now: at,
        green_since: memory.green_since,
    };
    let mut readiness = evaluate(rules, &facts);
    // Frozen: the last changes must have drained and grace passed before verifying.
    if matches!(
        state.ownership.cutover.phase,
        Phase::Frozen | Phase::Verified
    ) {
        let frozen_at = state
            .ownership
            .cutover
            .history
            .iter()
            .rev()
            .find(|record| record.transition == Transition::Freeze)
            .map(|record| record.at);
        readiness.gates.push(GateResult {
            gate: "drained".to_owned(),
            entity: None,
            passed: lag == Some(0),
            measured: lag.map_or_else(|| "lag unknown".to_owned(), |lag| format!("lag {lag}")),
            threshold: "lag 0 while frozen".to_owned(),
            since: None,
        });
        let grace_end = frozen_at.map(|at| at.saturating_add(context.grace));
        readiness.gates.push(GateResult {
            gate: "grace_after_freeze".to_owned(),
            entity: None,
            passed: grace_end.is_some_and(|end| end <= at),
            measured: frozen_at
                .map_or_else(|| "never frozen".to_owned(), |at| format!("frozen at {at}")),
            threshold: format!("{} s after the freeze", context.grace.as_secs()),
            since: None,
        });
    }
    // Since when each gate has had its result, and since when all have been green.
    for gate in &mut readiness.gates {
        let key = (gate.gate.clone(), gate.entity.clone());
        let entry = memory.since.entry(key).or_insert((gate.passed, at));
        if entry.0 != gate.passed {
            *entry = (gate.passed, at);
        }
        gate.since = Some(entry.1);
    }
    let safe = readiness.gates.iter().all(|gate| gate.passed);
    readiness.verdict = if safe { "safe" } else { "not_safe" }.to_owned();
    let others_green = readiness
        .gates
        .iter()
        .filter(|gate| gate.gate != "sustained")
        .all(|gate| gate.passed);
    memory.green_since = match (others_green, memory.green_since) {
        (true, Some(since)) => Some(since),
        (true, None) => Some(at),
        (false, _) => None,
    };
    // Rollback triggers, after a flip.
    memory.fired = match state
        .ownership
        .cutover
        .history
        .iter()
        .rev()
        .find(|record| record.transition == Transition::Flip)
        .filter(|_| state.ownership.cutover.phase == Phase::Flipped)
    {
        Some(flip) => {
            let filter = ViolationFilter {
                since: Some(flip.at),
                ..ViolationFilter::default()
            };
            let mut per_entity = BTreeMap::new();
            for violation in snapshot
                .violations(&filter, 100_000, None)
                .map_err(ApiError::internal)?
                .items
            {
                *per_entity.entry(violation.entity).or_default() += 1;
            }
            fired_triggers(
                &context.cutover_rules.triggers,
                &facts,
                &per_entity,
                flip.at,
            )
        }
        None => Vec::new(),
    };
    Ok((readiness, state.ownership, measured_at_events))
}

/// Re-measures the gates and watches the triggers every `period`, so that since-when and the
/// sustained window hold between requests; logs each trigger when it starts firing.
pub async fn watch(
    context: Arc<ApiContext>,
    period: std::time::Duration,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut firing: Vec<String> = Vec::new();
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
        let context = context.clone();
        let fired = tokio::task::spawn_blocking(move || {
            readiness(&context).map(|_| {
                let memory = context
                    .gate_memory
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                context
                    .cutover_metrics
                    .set(i64::try_from(memory.fired.len()).unwrap_or(i64::MAX));
                memory.fired.clone()
            })
        })
        .await;
        let Ok(Ok(fired)) = fired else { continue };
        for trigger in &fired {
            let key = format!(
                "{}/{}",
                trigger.name,
                trigger.entity.clone().unwrap_or_default()
            );
            if !firing.contains(&key) {
                warn!(trigger = %trigger.name, entity = ?trigger.entity, evidence = %trigger.evidence, action = %trigger.action, "rollback trigger fired");
            }
        }
        firing = fired
            .iter()
            .map(|trigger| {
                format!(
                    "{}/{}",
                    trigger.name,
                    trigger.entity.clone().unwrap_or_default()
                )
            })
            .collect();
    }
}

fn allowed_now(phase: Phase) -> Vec<Transition> {
    Transition::ALL
        .into_iter()
        .filter(|transition| transition.target(phase).is_ok())
        .collect()
}

pub(crate) async fn get_cutover(
    State(context): State<Arc<ApiContext>>,
) -> Result<Json<CutoverView>, ApiError> {
    blocking(move || {
        let (_, ownership, _) = readiness(&context)?;
        let state = ownership.cutover;
        let fired = context
            .gate_memory
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .fired
            .clone();
        Ok(Json(CutoverView {
            phase: state.phase,
            since: state.since,
            allowed: allowed_now(state.phase),
            history: state.history,
            triggers_fired: fired,
        }))
    })
    .await
}

pub(crate) async fn get_readiness(
    State(context): State<Arc<ApiContext>>,
) -> Result<Json<Readiness>, ApiError> {
    blocking(move || readiness(&context).map(|(readiness, _, _)| Json(readiness))).await
}

#[derive(Debug, Deserialize)]
pub(crate) struct StepQuery {
    dry_run: Option<bool>,
}

pub(crate) async fn post_step(
    State(context): State<Arc<ApiContext>>,
    caller: Option<axum::Extension<tandem_core::cutover::Caller>>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<StepQuery>, QueryRejection>,
    body: Result<Json<StepRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let hint = "POST /v1/cutover/{freeze|verify|flip|rollback|complete} with {\"reason\": \"...\", \"by\": \"...\"}; ?dry_run=true to preview";
    let Path(name) = path
        .map_err(|rejection| ApiError::new(StatusCode::BAD_REQUEST, rejection.body_text(), hint))?;
    let transition = Transition::parse(&name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no cutover step `{name}`"),
            hint,
        )
    })?;
    let request = crate::admin_request(
        body,
        hint,
        |request: &StepRequest| &request.reason,
        "a step",
    )?;
    // A `dry_run` that cannot be read is refused: taking the step for real on a typo would
    // be the one wrong reading.
    let Query(query) = query.map_err(|rejection| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("query parameter `dry_run`: {}", rejection.body_text()),
            "use ?dry_run=true to preview the step, or leave dry_run out to take it",
        )
    })?;
    let dry_run = request.dry_run || query.dry_run.unwrap_or(false);
    let caller = caller.map(|axum::Extension(caller)| caller);
    if !dry_run {
        crate::audit(
            caller.as_ref(),
            "cutover step asked",
            &format!(
                "{name} by {}: {}",
                request.by.as_deref().unwrap_or("api"),
                request.reason
            ),
        );
    }
    blocking(move || {
        let (readiness, ownership, measured_at_events) = readiness(&context)?;
        let state = &ownership.cutover;
        let mut entities: Vec<String> = context
            .mapping
            .entities()
            .map(|entity| entity.name.clone())
            .collect();
        entities.sort();
        let needs_gates = matches!(transition, Transition::Verify | Transition::Flip);
        let mut refusal = transition.target(state.phase).err();
        if refusal.is_none() && needs_gates && !readiness.is_safe() {
            let failing: Vec<String> = readiness
                .gates
                .iter()
                .filter(|gate| !gate.passed)
                .map(|gate| match &gate.entity {
                    Some(entity) => format!(
                        "{} ({entity}): {} against {}",
                        gate.gate, gate.measured, gate.threshold
                    ),
                    None => format!(
                        "{}: {} against {}",
                        gate.gate, gate.measured, gate.threshold
                    ),
                })
                .collect();
            refusal = Some(format!("gates not green: {}", failing.join("; ")));
        }
        let preview = StepPreview {
            transition,
            allowed: refusal.is_none(),
            from: state.phase,
            to: transition.target(state.phase).ok(),
            refusal: refusal.clone(),
            ownership_after: cutover::ownership_after(
                transition,
                &context.ownership,
                &ownership,
                &entities,
            ),
            readiness: needs_gates.then(|| readiness.clone()),
        };
        let preview_json = serde_json::to_value(&preview).map_err(ApiError::internal)?;
        if dry_run {
            return Ok((StatusCode::OK, Json(preview_json)));
        }
        if refusal.is_some() {
            return Ok((StatusCode::CONFLICT, Json(preview_json)));
        }
        let Some(handle) = context.cutover.get() else {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ingestion is not running",
                "restart tandem",
            ));
        };
        let evidence = needs_gates.then(|| serde_json::to_value(&readiness).unwrap_or_default());
        // A gated step is taken only on the state its gates were measured on.
        match handle.request(StepOrder {
            transition,
            by: request.by.unwrap_or_else(|| "api".to_owned()),
            caller,
            reason: request.reason,
            evidence,
            measured_at_events: needs_gates.then_some(measured_at_events),
        }) {
            Ok(record) => Ok((
                StatusCode::OK,
                Json(serde_json::to_value(&record).map_err(ApiError::internal)?),
            )),
            Err(error @ tandem_ingest::ControlError::Stopped(_)) => {
                Err(crate::control_error(error, "see /v1/cutover"))
            }
            Err(tandem_ingest::ControlError::Refused(refusal)) => {
                let mut preview = preview;
                preview.allowed = false;
                preview.refusal = Some(refusal);
                Ok((
                    StatusCode::CONFLICT,
                    Json(serde_json::to_value(&preview).map_err(ApiError::internal)?),
                ))
            }
        }
    })
    .await
}

/// The handle steps go through, and the rules, for [`ApiContext`].
pub(crate) type Handle = std::sync::OnceLock<ControlHandle>;
/// Shared gate memory.
pub(crate) type Memory = Mutex<GateMemory>;
