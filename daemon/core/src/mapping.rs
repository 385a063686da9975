//! How records of the two systems correspond: per entity, where each side carries the join
//! key, and which source field maps to which target field.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::compare::{self, Comparer};
use crate::event::{ChangeEvent, Fields};
use crate::system::System;

/// The version of the comparison and cause logic: moved on whenever a release changes how a
/// stored record evaluates, so that stores evaluated by an older release are evaluated again.
pub const RULES_VERSION: &str = "rules-4";

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

/// Where a field's value comes from in the source: one field, or several joined into one
/// target field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SourceFields {
    /// One source field.
    One(String),
    /// Source fields concatenated, in order, into one target field.
    Joined(Vec<String>),
}

impl SourceFields {
    /// The source field names.
    pub fn names(&self) -> &[String] {
        match self {
            SourceFields::One(name) => std::slice::from_ref(name),
            SourceFields::Joined(names) => names,
        }
    }

    /// The first (for one field, the only) source field name.
    pub fn first(&self) -> &str {
        self.names().first().map_or("", String::as_str)
    }
}

impl fmt::Display for SourceFields {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.names().join(" + "))
    }
}

impl From<&str> for SourceFields {
    fn from(name: &str) -> Self {
        SourceFields::One(name.to_owned())
    }
}

/// One compared field: where its value comes from in the source, its name in the target,
/// and how the two are compared (`schemas/field-rules.md`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldMapping {
    /// The source field, or a list of fields joined with `join` into the target field.
    pub source: SourceFields,
    /// The field name in the target system; reports use this name.
    pub target: String,
    /// The separator of a joined `source` list (default one space).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<String>,
    /// The comparison rule's name (`exact` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compare: Option<String>,
    /// `phone`: the ISO 3166 region of numbers written without a country code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// `decimal`: decimal places compared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<u32>,
    /// `decimal`: the largest difference still equal (a number or a decimal string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerance: Option<Value>,
    /// `date`, `timestamp`: the zone of values written without an offset (`UTC`, `+01:00`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// `timestamp`: `minute`, `second` (default) or `millisecond`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<String>,
    /// `set`: what separates the values of a string (default `;`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub separator: Option<String>,
    /// Source value to target value, for dropdowns and stages; a source value with no entry
    /// is a mismatch (`unmapped_value`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<BTreeMap<String, String>>,
    /// Mismatches of this field block a cutover.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub critical: bool,
    /// The field refers to a record of this entity (a deal's company).
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// The comparison rule, validated by [`Mapping::try_new`].
    #[serde(skip)]
    pub comparer: Comparer,
}

/// A source value a `map` has no entry for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unmapped(pub Value);

impl FieldMapping {
    /// An exact comparison of one source field with one target field.
    pub fn exact(source: &str, target: &str) -> Self {
        FieldMapping {
            source: source.into(),
            target: target.to_owned(),
            join: None,
            compare: None,
            region: None,
            scale: None,
            tolerance: None,
            zone: None,
            precision: None,
            separator: None,
            map: None,
            critical: false,
            reference: None,
            comparer: Comparer::Exact,
        }
    }

    /// The source's value for the target field, before the value map: one field's value, or
    /// the present parts of a joined list, as text, with the separator between them.
    pub fn source_value(&self, fields: &Fields) -> Value {
        match &self.source {
            SourceFields::One(name) => fields.get(name).cloned().unwrap_or(Value::Null),
            SourceFields::Joined(names) => {
                let parts: Vec<String> = names
                    .iter()
                    .filter_map(|name| match fields.get(name) {
                        None | Some(Value::Null) => None,
                        Some(Value::String(text)) if text.trim().is_empty() => None,
                        Some(Value::String(text)) => Some(text.trim().to_owned()),
                        Some(other) => Some(other.to_string()),
                    })
                    .collect();
                if parts.is_empty() {
                    Value::Null
                } else {
                    Value::String(parts.join(self.join.as_deref().unwrap_or(" ")))
                }
            }
        }
    }

    /// The value the target should hold, from the source's fields: the source value through
    /// the value map. `Err` names a source value the map has no entry for.
    pub fn expected_target(&self, source: &Fields) -> Result<Value, Unmapped> {
        let value = self.source_value(source);
        let Some(map) = &self.map else {
            return Ok(value);
        };
        match &value {
            Value::Null => Ok(Value::Null),
            Value::String(text) => map
                .get(text)
                .or_else(|| map.get(text.trim()))
                .map(|mapped| Value::String(mapped.clone()))
                .ok_or(Unmapped(value)),
            _ => Err(Unmapped(value)),
        }
    }

    /// Whether the target's field holds what the source's fields say it should.
    /// `Err` when the source value is unmapped (always a mismatch).
    pub fn matches(&self, source: &Fields, target: &Fields) -> Result<bool, Unmapped> {
        let held = target.get(&self.target).unwrap_or(&Value::Null);
        // The common rule, one field without a map, compares in place.
        if let (SourceFields::One(name), None) = (&self.source, &self.map) {
            let value = source.get(name).unwrap_or(&Value::Null);
            return Ok(self.comparer.equal(value, held));
        }
        let expected = self.expected_target(source)?;
        Ok(self.comparer.equal(&expected, held))
    }

    /// The source field and value that a target value comes back as, or `None` when the rule
    /// loses information on the way back (a joined list, a value map that sends two source
    /// values to one target value, or a target value the map cannot have produced).
    pub fn back_to_source(&self, target: &Fields) -> Option<(String, Value)> {
        let SourceFields::One(name) = &self.source else {
            return None;
        };
        let value = target.get(&self.target).cloned().unwrap_or(Value::Null);
        let Some(map) = &self.map else {
            return Some((name.clone(), value));
        };
        let Value::String(text) = &value else {
            return value.is_null().then(|| (name.clone(), Value::Null));
        };
        let mut sources = map.iter().filter(|(_, mapped)| *mapped == text);
        match (sources.next(), sources.next()) {
            (Some((source, _)), None) => Some((name.clone(), Value::String(source.clone()))),
            _ => None,
        }
    }

    /// Whether the rule loses information on the way back to the source (reports and the
    /// reverse delta say so).
    pub fn is_lossy(&self) -> bool {
        matches!(self.source, SourceFields::Joined(_))
            || self.map.as_ref().is_some_and(|map| {
                let targets: BTreeSet<&String> = map.values().collect();
                targets.len() < map.len()
            })
    }

    /// Checks the rule's settings and compiles its comparison; `Err` says what is wrong.
    fn compile(&mut self, entities: &BTreeSet<&str>) -> Result<(), String> {
        let name = self.compare.as_deref().unwrap_or("exact");
        let allowed: &[&str] = match name {
            "phone" => &["region"],
            "decimal" => &["scale", "tolerance"],
            "date" => &["zone"],
            "timestamp" => &["zone", "precision"],
            "set" => &["separator"],
            _ => &[],
        };
        for (setting, present) in [
            ("region", self.region.is_some()),
            ("scale", self.scale.is_some()),
            ("tolerance", self.tolerance.is_some()),
            ("zone", self.zone.is_some()),
            ("precision", self.precision.is_some()),
            ("separator", self.separator.is_some()),
        ] {
            if present && !allowed.contains(&setting) {
                return Err(format!(
                    "`{setting}` does not apply to compare = \"{name}\""
                ));
            }
        }
        let zone = || -> Result<time::UtcOffset, String> {
            self.zone
                .as_deref()
                .map_or(Ok(time::UtcOffset::UTC), compare::parse_zone)
        };
        self.comparer = match name {
            "exact" => Comparer::Exact,
            "trim" => Comparer::Trim,
            "casefold" => Comparer::Casefold,
            "email" => Comparer::Email,
            "phone" => {
                let region = self.region.clone().unwrap_or_default();
                if self.region.is_some() {
                    compare::check_region(&region)?;
                }
                Comparer::Phone { region }
            }
            "decimal" => {
                if self.scale.is_some_and(|scale| scale > 28) {
                    return Err("`scale` is at most 28 decimal places".to_owned());
                }
                let tolerance = match &self.tolerance {
                    None => None,
                    Some(value) => match compare::parse_decimal(value) {
                        Some(tolerance) if !tolerance.is_sign_negative() => Some(tolerance),
                        _ => {
                            return Err(format!(
                                "`tolerance` must be a number of zero or more, not {value}"
                            ))
                        }
                    },
                };
                Comparer::Decimal {
                    scale: self.scale,
                    tolerance,
                }
            }
            "date" => Comparer::Date { zone: zone()? },
            "timestamp" => Comparer::Timestamp {
                zone: zone()?,
                precision: self
                    .precision
                    .as_deref()
                    .map_or(Ok(compare::Precision::Second), compare::parse_precision)?,
            },
            "bool" => Comparer::Bool,
            "set" => Comparer::Set {
                separator: match self.separator.as_deref() {
                    Some("") => return Err("`separator` must not be empty".to_owned()),
                    Some(separator) => separator.to_owned(),
                    None => ";".to_owned(),
                },
            },
            other => {
                return Err(format!(
                    "unknown compare `{other}` (known: {})",
                    compare::COMPARE_NAMES.join(", ")
                ))
            }
        };
        match &self.source {
            SourceFields::Joined(names) if names.len() < 2 => {
                return Err(
                    "a `source` list joins two fields or more; name one field as a string"
                        .to_owned(),
                );
            }
            SourceFields::One(_) if self.join.is_some() => {
                return Err("`join` applies to a `source` list only".to_owned());
            }
            _ => {}
        }
        if self.map.is_some() && !self.comparer.is_textual() {
            return Err(format!(
                "a `map` applies to text values; compare = \"{name}\" does not compare text (use exact, trim, casefold or email)"
            ));
        }
        if let Some(entity) = &self.reference {
            if !entities.contains(entity.as_str()) {
                return Err(format!(
                    "`ref = \"{entity}\"` names no configured entity (configured: {})",
                    entities.iter().copied().collect::<Vec<_>>().join(", ")
                ));
            }
            if self.map.is_some() || matches!(self.source, SourceFields::Joined(_)) {
                return Err(
                    "a `ref` field holds a record id: it takes no `map` and no `source` list"
                        .to_owned(),
                );
            }
        }
        Ok(())
    }
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
    /// A field rule that cannot be used.
    #[error("entity `{entity}`, field `{field}`: {reason}")]
    InvalidRule {
        /// The entity.
        entity: String,
        /// The target field of the rule.
        field: String,
        /// What is wrong, and what to write instead.
        reason: String,
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
    /// Entities some `ref` field points at.
    referenced: BTreeSet<String>,
}

impl Mapping {
    /// Validates a list of entity mappings.
    pub fn try_new(entities: Vec<EntityMapping>) -> Result<Self, MappingError> {
        let names: Vec<String> = entities.iter().map(|entity| entity.name.clone()).collect();
        let known: BTreeSet<&str> = names.iter().map(String::as_str).collect();
        let mut by_name = BTreeMap::new();
        for (index, mut entity) in entities.into_iter().enumerate() {
            if entity.name.trim().is_empty() {
                return Err(MappingError::EmptyEntityName {
                    position: index + 1,
                });
            }
            let mut target_fields = BTreeSet::new();
            let entity_name = entity.name.clone();
            for (field_index, field) in entity.fields.iter_mut().enumerate() {
                field
                    .compile(&known)
                    .map_err(|reason| MappingError::InvalidRule {
                        entity: entity_name.clone(),
                        field: field.target.clone(),
                        reason,
                    })?;
                let sources = field
                    .source
                    .names()
                    .iter()
                    .map(|name| (System::Source, name));
                for (side, name) in sources.chain([(System::Target, &field.target)]) {
                    if name.trim().is_empty() {
                        return Err(MappingError::EmptyFieldName {
                            entity: entity_name.clone(),
                            position: field_index + 1,
                            side,
                        });
                    }
                }
                if !target_fields.insert(field.target.clone()) {
                    return Err(MappingError::DuplicateTargetField {
                        entity: entity_name.clone(),
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
        let referenced = by_name
            .values()
            .flat_map(|entity| &entity.fields)
            .filter_map(|field| field.reference.clone())
            .collect();
        Ok(Mapping {
            entities: by_name,
            referenced,
        })
    }

    /// Whether some `ref` field points at records of this entity: a record of it that comes
    /// under a (new) join key changes how references to it resolve.
    pub fn is_referenced(&self, entity: &str) -> bool {
        self.referenced.contains(entity)
    }

    /// The mapping of one entity, if it is configured.
    pub fn entity(&self, name: &str) -> Option<&EntityMapping> {
        self.entities.get(name)
    }

    /// Every configured entity, by name.
    pub fn entities(&self) -> impl Iterator<Item = &EntityMapping> {
        self.entities.values()
    }

    /// What the stored evaluations depend on: the entity rules as configured, and the version
    /// of the comparison and cause logic. Stored with the state; when it differs from the
    /// configuration's at start, every record is evaluated again.
    pub fn fingerprint(&self) -> String {
        let rules = serde_json::to_string(&self.entities)
            .unwrap_or_else(|error| format!("unserializable rules: {error}"));
        format!("{RULES_VERSION}:{rules}")
    }

    /// The fingerprint of each entity's rules, by entity.
    pub fn entity_fingerprints(&self) -> BTreeMap<String, String> {
        self.entities
            .iter()
            .map(|(name, entity)| {
                let rules = serde_json::to_string(entity)
                    .unwrap_or_else(|error| format!("unserializable rules: {error}"));
                (name.clone(), format!("{RULES_VERSION}:{rules}"))
            })
            .collect()
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
                .map(|(source, target)| FieldMapping::exact(source, target))
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

    /// An entity from TOML, the way the configuration file writes it.
    fn from_toml(name: &str, fields: &str) -> EntityMapping {
        let text = format!(
            "name = \"{name}\"\njoin = {{ source = \"external_id\", target = \"field:legacy_id\" }}\nfields = [\n{fields}\n]"
        );
        toml_entity(&text)
    }

    fn toml_entity(text: &str) -> EntityMapping {
        let value: toml::Value = toml::from_str(text).unwrap();
        value.try_into().unwrap()
    }

    #[test]
    fn field_rules_read_from_the_configuration_compile() {
        let deal = from_toml(
            "deal",
            r#"{ source = "Amount", target = "amount", compare = "decimal", scale = 2, tolerance = "0.01", critical = true },
               { source = "StageName", target = "dealstage", map = { "Closed Won" = "closedwon", "Closed Lost" = "closedlost" } },
               { source = ["FirstName", "LastName"], join = " ", target = "contact_name" },
               { source = "Phone", target = "phone", compare = "phone", region = "US" },
               { source = "CloseDate", target = "closedate", compare = "date", zone = "+01:00" },
               { source = "AccountId", target = "company", ref = "company" },
               { source = "Tags", target = "tags", compare = "set" }"#,
        );
        let company = from_toml("company", r#"{ source = "Name", target = "name" }"#);
        let mapping = Mapping::try_new(vec![deal, company]).unwrap();
        let deal = mapping.entity("deal").unwrap();
        let names: Vec<(&str, &str, bool, bool)> = deal
            .fields
            .iter()
            .map(|field| {
                (
                    field.target.as_str(),
                    field.comparer.name(),
                    field.critical,
                    field.is_lossy(),
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                ("amount", "decimal", true, false),
                ("dealstage", "exact", false, false),
                ("contact_name", "exact", false, true),
                ("phone", "phone", false, false),
                ("closedate", "date", false, false),
                ("company", "exact", false, false),
                ("tags", "set", false, false),
            ]
        );
        let fields: Fields = serde_json::from_value(serde_json::json!({
            "Amount": "1200.504", "StageName": "Closed Won", "FirstName": "Ada", "LastName": "Lovelace"
        }))
        .unwrap();
        let target: Fields = serde_json::from_value(serde_json::json!({
            "amount": 1200.5, "dealstage": "closedwon", "contact_name": "Ada Lovelace"
        }))
        .unwrap();
        for field in &deal.fields[..3] {
            assert_eq!(
                field.matches(&fields, &target),
                Ok(true),
                "{}",
                field.target
            );
        }
        // The joined rule cannot carry a value back; the map can, one to one.
        assert_eq!(deal.fields[2].back_to_source(&target), None);
        assert_eq!(
            deal.fields[1].back_to_source(&target),
            Some(("StageName".to_owned(), serde_json::json!("Closed Won")))
        );
        assert!(mapping.fingerprint().starts_with(RULES_VERSION));
    }

    #[test]
    fn invalid_field_rules_name_the_entity_and_the_field() {
        let company = || from_toml("company", r#"{ source = "Name", target = "name" }"#);
        let cases = [
            (
                r#"{ source = "Amount", target = "amount", compare = "decimel" }"#,
                "unknown compare `decimel`",
            ),
            (
                r#"{ source = "Phone", target = "phone", compare = "phone", region = "XX" }"#,
                "region `XX`",
            ),
            (
                r#"{ source = "Amount", target = "amount", compare = "decimal", map = { "1" = "one" } }"#,
                "a `map` applies to text values",
            ),
            (
                r#"{ source = "AccountId", target = "company", ref = "account" }"#,
                "`ref = \"account\"` names no configured entity",
            ),
            (
                r#"{ source = "Amount", target = "amount", region = "US" }"#,
                "`region` does not apply",
            ),
            (
                r#"{ source = "Amount", target = "amount", compare = "decimal", tolerance = -1 }"#,
                "`tolerance` must be a number of zero or more",
            ),
            (
                r#"{ source = "When", target = "when", compare = "timestamp", zone = "Europe/Paris" }"#,
                "not a fixed offset",
            ),
            (
                r#"{ source = ["FirstName"], target = "name" }"#,
                "joins two fields or more",
            ),
            (
                r#"{ source = "FirstName", join = " ", target = "name" }"#,
                "`join` applies to a `source` list only",
            ),
        ];
        for (rule, expected) in cases {
            let error = Mapping::try_new(vec![from_toml("deal", rule), company()])
                .unwrap_err()
                .to_string();
            assert!(error.starts_with("entity `deal`, field `"), "{error}");
            assert!(error.contains(expected), "{rule}: {error}");
        }
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
