//! `GET /v1/spotcheck?entity=&n=`: a sample of records for humans to check by hand in both
//! CRMs: uniform over the entity (up to the first 100,000 records in key order), covering every
//! critical field with a value on both sides, and holding in-sync records as well as
//! divergent ones, so that a checker also confirms what tandem calls in sync.

use std::collections::BTreeSet;
use std::hash::BuildHasher;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tandem_core::record::Cause;
use tandem_core::{EntityMapping, RecordRow, Status, System};

use crate::{blocking, ApiContext, ApiError};

/// Records looked at, at most.
const SCAN_LIMIT: usize = 100_000;
/// The largest sample.
const MAX_SAMPLE: usize = 500;

#[derive(Debug, Deserialize)]
pub(crate) struct SpotcheckQuery {
    entity: Option<String>,
    n: Option<usize>,
}

/// One field of a sampled record, as both systems hold it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpotcheckField {
    /// The target field.
    pub field: String,
    /// The source field (`A + B` for a joined list).
    pub source_field: String,
    /// The comparison rule.
    pub compare: String,
    /// Whether mismatches of it block the cutover.
    pub critical: bool,
    /// The source's value.
    pub source: Value,
    /// The target's value.
    pub target: Value,
    /// Whether tandem finds them equal.
    pub equal: bool,
}

/// One sampled record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpotcheckRecord {
    /// The join key.
    pub join_key: String,
    /// Its status.
    pub status: Status,
    /// Why it diverges, if it does.
    pub cause: Option<Cause>,
    /// Live native ids in the source (look these up there).
    pub source_ids: Vec<String>,
    /// Live native ids in the target.
    pub target_ids: Vec<String>,
    /// Every mapped field.
    pub fields: Vec<SpotcheckField>,
}

/// The answer of `GET /v1/spotcheck`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Spotcheck {
    /// The entity.
    pub entity: String,
    /// Records looked at to draw the sample.
    pub scanned: u64,
    /// The sample.
    pub records: Vec<SpotcheckRecord>,
    /// Critical fields that some sampled record holds on both sides.
    pub critical_fields_covered: Vec<String>,
    /// Critical fields no record looked at holds on both sides.
    pub critical_fields_uncovered: Vec<String>,
}

pub(crate) async fn get_spotcheck(
    State(context): State<Arc<ApiContext>>,
    query: Result<Query<SpotcheckQuery>, QueryRejection>,
) -> Result<Json<Spotcheck>, ApiError> {
    let hint =
        "parameters: entity (required, a configured entity), n (records, 1 to 500, default 20)";
    let Query(query) = query
        .map_err(|rejection| ApiError::new(StatusCode::BAD_REQUEST, rejection.body_text(), hint))?;
    let Some(entity) = query.entity else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "`entity` is required",
            hint,
        ));
    };
    let Some(mapping) = context.mapping.entity(&entity).cloned() else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("unknown entity `{entity}`"),
            hint,
        ));
    };
    let n = query.n.unwrap_or(20);
    if n == 0 || n > MAX_SAMPLE {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("n = {n} is out of range"),
            hint,
        ));
    }
    blocking(move || sample(&context, &mapping, n).map(Json)).await
}

fn sample(context: &ApiContext, mapping: &EntityMapping, n: usize) -> Result<Spotcheck, ApiError> {
    let snapshot = context.store.read();
    let suspected = crate::suspected_now(context, &snapshot)?;
    // Bottom-k by a per-request random hash of the join key: a uniform sample of what is
    // scanned, kept to 4n candidates.
    let hasher = std::collections::hash_map::RandomState::new();
    let mut candidates: Vec<(u64, String, RecordRow)> = Vec::new();
    let mut scanned = 0_u64;
    for item in snapshot.records_of(&mapping.name).take(SCAN_LIMIT) {
        let (join_key, row) = item.map_err(ApiError::internal)?;
        if row.status.status.is_none() {
            continue;
        }
        scanned += 1;
        candidates.push((hasher.hash_one(&join_key), join_key, row));
        if candidates.len() > 8 * n {
            candidates.sort_by_key(|candidate| candidate.0);
            candidates.truncate(4 * n);
        }
    }
    candidates.sort_by_key(|candidate| candidate.0);
    candidates.truncate(4 * n);

    let critical: Vec<&tandem_core::mapping::FieldMapping> = mapping
        .fields
        .iter()
        .filter(|field| field.critical)
        .collect();
    let holds = |row: &RecordRow, field: &tandem_core::mapping::FieldMapping| match (
        row.live(System::Source),
        row.live(System::Target),
    ) {
        (Some(source), Some(target)) => {
            !field.source_value(&source.fields).is_null()
                && target
                    .fields
                    .get(&field.target)
                    .is_some_and(|value| !value.is_null())
        }
        _ => false,
    };
    let mut chosen: BTreeSet<usize> = BTreeSet::new();
    let mut covered = Vec::new();
    let mut uncovered = Vec::new();
    // Every critical field once, from an in-sync record where one holds it.
    for field in &critical {
        let pick = candidates
            .iter()
            .enumerate()
            .filter(|(_, candidate)| holds(&candidate.2, field))
            .min_by_key(|(_, candidate)| candidate.2.status.status != Some(Status::InSync))
            .map(|(index, _)| index);
        match pick {
            Some(index) => {
                chosen.insert(index);
                covered.push(field.target.clone());
            }
            None => uncovered.push(field.target.clone()),
        }
    }
    // Then half in sync, half divergent, as far as the candidates allow.
    let in_sync =
        |candidate: &(u64, String, RecordRow)| candidate.2.status.status == Some(Status::InSync);
    for want_in_sync in [true, false] {
        let quota = if want_in_sync { n.div_ceil(2) } else { n };
        for (index, candidate) in candidates.iter().enumerate() {
            let have = chosen
                .iter()
                .filter(|chosen| in_sync(&candidates[**chosen]) == want_in_sync)
                .count();
            if chosen.len() >= n || have >= quota {
                break;
            }
            if in_sync(candidate) == want_in_sync {
                chosen.insert(index);
            }
        }
    }
    for (index, _) in candidates.iter().enumerate() {
        if chosen.len() >= n {
            break;
        }
        chosen.insert(index);
    }
    let records = chosen
        .into_iter()
        .map(|index| {
            let (_, join_key, row) = &candidates[index];
            let source = row.live_fields(System::Source);
            let target = row.live_fields(System::Target);
            let ids = |sides: &[tandem_core::SideRecord]| {
                sides
                    .iter()
                    .filter(|side| !side.deleted)
                    .map(|side| side.native_id.clone())
                    .collect()
            };
            SpotcheckRecord {
                join_key: join_key.clone(),
                status: row.status.status.unwrap_or(Status::InSync),
                cause: crate::listed_cause(&suspected, &mapping.name, row).0,
                source_ids: ids(&row.source),
                target_ids: ids(&row.target),
                fields: mapping
                    .fields
                    .iter()
                    .map(|field| SpotcheckField {
                        field: field.target.clone(),
                        source_field: field.source.to_string(),
                        compare: field.comparer.name().to_owned(),
                        critical: field.critical,
                        source: field.source_value(source),
                        target: target.get(&field.target).cloned().unwrap_or(Value::Null),
                        equal: match (row.live(System::Source), row.live(System::Target)) {
                            // References are resolved when records are evaluated.
                            (Some(_), Some(_)) if field.reference.is_some() => {
                                !row.status.differing_fields.contains(&field.target)
                            }
                            (Some(_), Some(_)) => field.matches(source, target) == Ok(true),
                            _ => false,
                        },
                    })
                    .collect(),
            }
        })
        .collect();
    Ok(Spotcheck {
        entity: mapping.name.clone(),
        scanned,
        records,
        critical_fields_covered: covered,
        critical_fields_uncovered: uncovered,
    })
}
