//! The reverse delta: what changed in one system since a time, mapped back into the other
//! system's field names, keyed for an upsert there. If a second cutover fails, this is what
//! must be carried back to the source.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::mapping::EntityMapping;
use crate::record::{RecordRow, SideRecord};
use crate::system::System;
use crate::time::Timestamp;

/// What to do in the other system.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeltaAction {
    /// Create or update the record there with `fields`.
    Upsert,
    /// Delete it there.
    Delete,
}

/// One record to carry across.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeltaRow {
    /// The entity.
    pub entity: String,
    /// The join key to upsert by (an `unjoined:` key for a record that carries none).
    pub join_key: String,
    /// What to do.
    pub action: DeltaAction,
    /// The record's native id in the system that changed.
    pub native_id: String,
    /// The record's live native ids in the other system (empty: it must be created there).
    pub other_native_ids: Vec<String>,
    /// Its latest state, in the other system's field names (mapped fields only).
    pub fields: BTreeMap<String, Value>,
    /// Event time of its latest change.
    pub changed_at: Timestamp,
    /// The record also changed in the other system since then: carrying it across would
    /// overwrite that change; someone has to decide.
    pub also_changed_in_other: bool,
    /// tandem is not sure of the changed system's state (a change may have been lost).
    pub unverified: bool,
    /// Fields, in the other system's names, that changed but cannot be carried back: a joined
    /// list, a value map that sends several values to this one, an unmapped value. Someone
    /// has to set them by hand.
    pub lossy_fields: Vec<String>,
}

/// When a native record last changed as far as tandem knows: its latest change, or a later
/// snapshot reading that found it changed.
fn changed_at(side: &SideRecord) -> Timestamp {
    side.revealed_change_at
        .map_or(side.last_change_at, |revealed| {
            revealed.max(side.last_change_at)
        })
}

/// Finds, for a record of the changed system that a `ref` field points at (`entity`,
/// native id), the native id of the record joined to it in the other system.
pub type Translate<'t> = dyn FnMut(&str, &str) -> Option<String> + 't;

/// A reference carried across: the other system's id of the record it points at; `None`
/// when that record has no single live counterpart there.
fn translated(value: &Value, entity: &str, translate: &mut Translate<'_>) -> Option<Value> {
    match crate::record::reference_id(Some(value)).ok()? {
        None => Some(Value::Null),
        Some(id) => translate(entity, &id).map(Value::String),
    }
}

/// The rows of one record: one per native record of `changed` that changed at or after
/// `since`. A `ref` field carries the other system's id of the record it points at.
pub fn delta_rows(
    entity: &EntityMapping,
    join_key: &str,
    row: &RecordRow,
    changed: System,
    since: Timestamp,
    translate: &mut Translate<'_>,
) -> Vec<DeltaRow> {
    let other = changed.other();
    let other_side = row.side(other);
    let other_ids: Vec<String> = other_side
        .iter()
        .filter(|side| !side.deleted)
        .map(|side| side.native_id.clone())
        .collect();
    let also_changed = other_side.iter().any(|side| changed_at(side) >= since);
    row.side(changed)
        .iter()
        .filter(|side| changed_at(side) >= since)
        .map(|side| {
            let mut fields = BTreeMap::new();
            let mut lossy_fields = Vec::new();
            for rule in &entity.fields {
                if let Some(referenced) = &rule.reference {
                    let (from, to) = match changed {
                        System::Target => (rule.target.clone(), rule.source.to_string()),
                        System::Source => (rule.source.to_string(), rule.target.clone()),
                    };
                    if let Some(value) = side.fields.get(&from) {
                        match translated(value, referenced, translate) {
                            Some(value) => {
                                fields.insert(to, value);
                            }
                            None => lossy_fields.push(to),
                        }
                    }
                    continue;
                }
                match changed {
                    System::Target if side.fields.contains_key(&rule.target) => {
                        match rule.back_to_source(&side.fields) {
                            Some((name, value)) => {
                                fields.insert(name, value);
                            }
                            None => lossy_fields.push(rule.source.to_string()),
                        }
                    }
                    System::Source
                        if rule
                            .source
                            .names()
                            .iter()
                            .any(|name| side.fields.contains_key(name)) =>
                    {
                        match rule.expected_target(&side.fields) {
                            Ok(value) => {
                                fields.insert(rule.target.clone(), value);
                            }
                            Err(_) => lossy_fields.push(rule.target.clone()),
                        }
                    }
                    _ => {}
                }
            }
            DeltaRow {
                entity: entity.name.clone(),
                join_key: join_key.to_owned(),
                action: if side.deleted {
                    DeltaAction::Delete
                } else {
                    DeltaAction::Upsert
                },
                native_id: side.native_id.clone(),
                other_native_ids: other_ids.clone(),
                fields,
                changed_at: changed_at(side),
                also_changed_in_other: also_changed,
                unverified: side.unverified.is_some(),
                lossy_fields,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::{FieldMapping, JoinKeySource, JoinSpec};
    use crate::record::RecordStatus;

    fn side(id: &str, minute: i64, fields: Value, deleted: bool) -> SideRecord {
        SideRecord {
            fields: serde_json::from_value(fields).unwrap(),
            deleted,
            last_change_at: Timestamp::from_unix_millis(minute * 60_000),
            ..SideRecord::new(id.to_owned())
        }
    }

    fn contact() -> EntityMapping {
        EntityMapping {
            name: "contact".to_owned(),
            join: JoinSpec {
                source: JoinKeySource::ExternalId,
                target: JoinKeySource::Field("legacy_id".to_owned()),
            },
            fields: vec![
                FieldMapping::exact("Email", "email"),
                FieldMapping::exact("LastName", "lastname"),
            ],
        }
    }

    #[test]
    fn a_reference_comes_back_as_the_other_systems_id() {
        let mut entity = contact();
        let mut company = FieldMapping::exact("AccountId", "company_id");
        company.reference = Some("company".to_owned());
        entity.fields.push(company);
        let since = Timestamp::from_unix_millis(0);
        // Target company 9A is joined to source company 001A; 9Z has no live source record.
        let mut translate = |referenced: &str, id: &str| {
            assert_eq!(referenced, "company");
            (id == "9A").then(|| "001A".to_owned())
        };
        let rows = |fields: Value, translate: &mut Translate<'_>| {
            let row = RecordRow {
                source: Vec::new(),
                target: vec![side("T1", 1, fields, false)],
                status: RecordStatus::default(),
                departed: Vec::new(),
            };
            let delta = delta_rows(&entity, "L1", &row, System::Target, since, translate);
            (delta[0].fields.clone(), delta[0].lossy_fields.clone())
        };
        assert_eq!(
            rows(serde_json::json!({"company_id": "9A"}), &mut translate),
            (
                BTreeMap::from([("AccountId".to_owned(), serde_json::json!("001A"))]),
                Vec::new()
            )
        );
        assert_eq!(
            rows(serde_json::json!({"company_id": null}), &mut translate),
            (
                BTreeMap::from([("AccountId".to_owned(), Value::Null)]),
                Vec::new()
            )
        );
        assert_eq!(
            rows(serde_json::json!({"company_id": "9Z"}), &mut translate),
            (BTreeMap::new(), vec!["AccountId".to_owned()])
        );
    }

    #[test]
    fn target_changes_since_the_flip_come_back_in_source_names() {
        let since = Timestamp::from_unix_millis(10 * 60_000);
        let row = RecordRow {
            source: vec![side(
                "L1",
                12,
                serde_json::json!({"Email": "old@x.io"}),
                false,
            )],
            target: vec![
                side(
                    "T1",
                    11,
                    serde_json::json!({"email": "new@x.io", "lastname": "Ada", "legacy_id": "L1", "hs_score": 7}),
                    false,
                ),
                side("T9", 5, serde_json::json!({"email": "z@x.io"}), false),
            ],
            status: RecordStatus::default(),
            departed: Vec::new(),
        };
        let rows = delta_rows(
            &contact(),
            "L1",
            &row,
            System::Target,
            since,
            &mut |_, _| None,
        );
        assert_eq!(
            rows,
            vec![DeltaRow {
                entity: "contact".to_owned(),
                join_key: "L1".to_owned(),
                action: DeltaAction::Upsert,
                native_id: "T1".to_owned(),
                other_native_ids: vec!["L1".to_owned()],
                fields: BTreeMap::from([
                    ("Email".to_owned(), serde_json::json!("new@x.io")),
                    ("LastName".to_owned(), serde_json::json!("Ada")),
                ]),
                changed_at: Timestamp::from_unix_millis(11 * 60_000),
                also_changed_in_other: true,
                unverified: false,
                lossy_fields: Vec::new(),
            }]
        );
        // A record deleted in the target since then is deleted in the source; one that did
        // not change is not listed.
        let deleted = RecordRow {
            source: vec![side("L2", 1, serde_json::json!({}), false)],
            target: vec![side("T2", 15, serde_json::json!({}), true)],
            status: RecordStatus::default(),
            departed: Vec::new(),
        };
        let rows = delta_rows(
            &contact(),
            "L2",
            &deleted,
            System::Target,
            since,
            &mut |_, _| None,
        );
        assert_eq!(
            (rows.len(), rows[0].action, rows[0].also_changed_in_other),
            (1, DeltaAction::Delete, false)
        );
        assert!(delta_rows(
            &contact(),
            "L2",
            &deleted,
            System::Source,
            since,
            &mut |_, _| None
        )
        .is_empty());
    }

    #[test]
    fn a_change_only_a_snapshot_revealed_is_in_the_delta() {
        // T3's change after the flip was lost; a snapshot read at minute 20 found new values.
        let since = Timestamp::from_unix_millis(10 * 60_000);
        let mut revealed = side("T3", 4, serde_json::json!({"email": "c2@x.io"}), false);
        revealed.revealed_change_at = Some(Timestamp::from_unix_millis(20 * 60_000));
        let row = RecordRow {
            source: vec![side("L3", 2, serde_json::json!({"Email": "c@x.io"}), false)],
            target: vec![revealed],
            status: RecordStatus::default(),
            departed: Vec::new(),
        };
        let rows = delta_rows(
            &contact(),
            "L3",
            &row,
            System::Target,
            since,
            &mut |_, _| None,
        );
        assert_eq!(
            rows.iter()
                .map(|row| (row.native_id.as_str(), row.changed_at, row.fields.clone()))
                .collect::<Vec<_>>(),
            [(
                "T3",
                Timestamp::from_unix_millis(20 * 60_000),
                BTreeMap::from([("Email".to_owned(), serde_json::json!("c2@x.io"))])
            )]
        );
        // Before the reading, nothing said it changed.
        let later = Timestamp::from_unix_millis(21 * 60_000);
        assert!(delta_rows(
            &contact(),
            "L3",
            &row,
            System::Target,
            later,
            &mut |_, _| None
        )
        .is_empty());
    }
}
