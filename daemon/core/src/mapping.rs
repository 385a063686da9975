//! How records of the two systems correspond: per entity, where each side carries the join
//! key, and which source field maps to which target field.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::ChangeEvent;
use crate::system::System;

/// Where one system's records carry the join key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum JoinKeySource {
    /// The event envelope's `external_id`.
    ExternalId,
    /// The record's native `id`.
    NativeId,
    /// A named field of the record, e.g. the target's `legacy_id`.
    Field(String),
}

impl JoinKeySource {
    /// The join key an event carries, if it carries one.
    ///
    /// A field holding a string or a number is a key; an absent, null or empty value is not,
    /// and the record keeps the key it had (join keys are immutable).
    pub fn key_in(&self, event: &ChangeEvent) -> Option<String> {
        match self {
            JoinKeySource::ExternalId => event
                .external_id
                .as_ref()
                .filter(|key| !key.is_empty())
                .cloned(),
            JoinKeySource::NativeId => Some(event.id.clone()),
            JoinKeySource::Field(name) => match event.fields.as_ref()?.get(name)? {
                Value::String(text) if !text.is_empty() => Some(text.clone()),
                Value::Number(number) => Some(number.to_string()),
                _ => None,
            },
        }
    }
}

impl FromStr for JoinKeySource {
    type Err = String;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        match input {
            "external_id" => Ok(JoinKeySource::ExternalId),
            "id" => Ok(JoinKeySource::NativeId),
            other => match other.strip_prefix("field:") {
                Some(name) if !name.trim().is_empty() => Ok(JoinKeySource::Field(name.to_owned())),
                _ => Err(format!(
                    "`{other}` is not a join key location: use \"external_id\", \"id\" or \"field:<name>\""
                )),
            },
        }
    }
}

impl TryFrom<String> for JoinKeySource {
    type Error = String;

    fn try_from(input: String) -> Result<Self, Self::Error> {
        input.parse()
    }
}

impl From<JoinKeySource> for String {
    fn from(source: JoinKeySource) -> String {
        source.to_string()
    }
}

impl fmt::Display for JoinKeySource {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JoinKeySource::ExternalId => formatter.write_str("external_id"),
            JoinKeySource::NativeId => formatter.write_str("id"),
            JoinKeySource::Field(name) => write!(formatter, "field:{name}"),
        }
    }
}

/// Where each system carries the join key of an entity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinSpec {
    /// Where the source carries it.
    pub source: JoinKeySource,
    /// Where the target carries it.
    pub target: JoinKeySource,
}

impl JoinSpec {
    /// The location for one system.
    pub fn for_system(&self, system: System) -> &JoinKeySource {
        match system {
            System::Source => &self.source,
            System::Target => &self.target,
        }
    }
}

/// One compared field: its name in the source and in the target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldMapping {
    /// The field name in the source system.
    pub source: String,
    /// The field name in the target system; reports use this name.
    pub target: String,
}

/// How one entity is joined and compared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntityMapping {
    /// The entity name, as carried by events (`contact`, `deal`, ...).
    pub name: String,
    /// Where each side carries the join key.
    pub join: JoinSpec,
    /// The compared fields.
    #[serde(default)]
    pub fields: Vec<FieldMapping>,
}

/// A mapping that cannot be used, naming the entity and field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    /// Two `[[entities]]` blocks share a name.
    #[error("entity `{entity}` is mapped twice: keep one [[entities]] block per entity")]
    DuplicateEntity {
        /// The repeated name.
        entity: String,
    },
    /// An entity has an empty name.
    #[error("entity #{position} has an empty name")]
    EmptyEntityName {
        /// 1-based position in the list.
        position: usize,
    },
    /// A field name is empty.
    #[error("entity `{entity}`: field #{position} has an empty {side} name")]
    EmptyFieldName {
        /// The entity.
        entity: String,
        /// 1-based position in the entity's field list.
        position: usize,
        /// `source` or `target`.
        side: System,
    },
    /// Two field rules write the same target field.
    #[error("entity `{entity}`: target field `{field}` is mapped twice")]
    DuplicateTargetField {
        /// The entity.
        entity: String,
        /// The repeated target field.
        field: String,
    },
}

/// Every configured entity, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    entities: BTreeMap<String, EntityMapping>,
}

impl Mapping {
    /// Validates a list of entity mappings.
    pub fn try_new(entities: Vec<EntityMapping>) -> Result<Self, MappingError> {
        let mut by_name = BTreeMap::new();
        for (index, entity) in entities.into_iter().enumerate() {
            if entity.name.trim().is_empty() {
                return Err(MappingError::EmptyEntityName {
                    position: index + 1,
                });
            }
            let mut target_fields = BTreeSet::new();
            for (field_index, field) in entity.fields.iter().enumerate() {
                for (side, name) in [
                    (System::Source, &field.source),
                    (System::Target, &field.target),
                ] {
                    if name.trim().is_empty() {
                        return Err(MappingError::EmptyFieldName {
                            entity: entity.name.clone(),
                            position: field_index + 1,
                            side,
                        });
                    }
                }
                if !target_fields.insert(field.target.as_str()) {
                    return Err(MappingError::DuplicateTargetField {
                        entity: entity.name.clone(),
                        field: field.target.clone(),
                    });
                }
            }
            if by_name.contains_key(&entity.name) {
                return Err(MappingError::DuplicateEntity {
                    entity: entity.name,
                });
            }
            by_name.insert(entity.name.clone(), entity);
        }
        Ok(Mapping { entities: by_name })
    }

    /// The mapping of one entity, if it is configured.
    pub fn entity(&self, name: &str) -> Option<&EntityMapping> {
        self.entities.get(name)
    }

    /// Every configured entity, by name.
    pub fn entities(&self) -> impl Iterator<Item = &EntityMapping> {
        self.entities.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entity(name: &str, fields: &[(&str, &str)]) -> EntityMapping {
        EntityMapping {
            name: name.to_owned(),
            join: JoinSpec {
                source: JoinKeySource::ExternalId,
                target: JoinKeySource::Field("legacy_id".to_owned()),
            },
            fields: fields
                .iter()
                .map(|(source, target)| FieldMapping {
                    source: (*source).to_owned(),
                    target: (*target).to_owned(),
                })
                .collect(),
        }
    }

    #[test]
    fn join_key_sources_parse_and_print() {
        for text in ["external_id", "id", "field:legacy_id"] {
            let parsed: JoinKeySource = text.parse().unwrap();
            assert_eq!(parsed.to_string(), text);
        }
        assert!("field:".parse::<JoinKeySource>().is_err());
        assert!("legacy_id"
            .parse::<JoinKeySource>()
            .unwrap_err()
            .contains("field:<name>"));
    }

    #[test]
    fn duplicate_entities_and_fields_are_refused() {
        let twice = Mapping::try_new(vec![entity("contact", &[]), entity("contact", &[])]);
        assert_eq!(
            twice.unwrap_err(),
            MappingError::DuplicateEntity {
                entity: "contact".to_owned()
            }
        );
        let field_twice = Mapping::try_new(vec![entity(
            "deal",
            &[("Amount", "amount"), ("Amount__c", "amount")],
        )]);
        assert!(field_twice
            .unwrap_err()
            .to_string()
            .contains("`amount` is mapped twice"));
    }

    #[test]
    fn join_keys_come_from_the_configured_place() {
        let event: ChangeEvent = serde_json::from_str(
            r#"{"event_id":"e","entity":"contact","id":"T-1","op":"update","occurred_at":"2026-11-20T08:00:00Z",
                "external_id":"X","fields":{"legacy_id":42,"blank":""}}"#,
        )
        .unwrap();
        assert_eq!(
            JoinKeySource::ExternalId.key_in(&event).as_deref(),
            Some("X")
        );
        assert_eq!(
            JoinKeySource::NativeId.key_in(&event).as_deref(),
            Some("T-1")
        );
        assert_eq!(
            JoinKeySource::Field("legacy_id".to_owned())
                .key_in(&event)
                .as_deref(),
            Some("42")
        );
        assert_eq!(
            JoinKeySource::Field("blank".to_owned()).key_in(&event),
            None
        );
        assert_eq!(
            JoinKeySource::Field("absent".to_owned()).key_in(&event),
            None
        );
    }
}
