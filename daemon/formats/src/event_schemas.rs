//! Salesforce Pub/Sub API event schemas, kept to decode the field bitmaps of change events.
//!
//! A Pub/Sub API change event names its changed, nulled and diff fields with bitmaps
//! (`"0x650004E0"`): bit *i* of the top-level bitmap is the *i*-th field of the event's Avro
//! schema, and `"<position>-0x<bits>"` names the components of the compound field at that
//! position (bit *j* is the *j*-th field of its record). Only the schema the event was written
//! with can decode them, and Salesforce adds fields to a schema as the org changes, so a schema
//! is found by the event's schema id, never by its name: a bitmap read with another version of
//! the schema would name the wrong fields.
//!
//! The schemas are files the operator saves from the Pub/Sub API's `GetSchema` (see
//! `schemas/formats/salesforce-cdc.md`): either the response itself (`schemaId`/`schema_id`
//! and `schemaJson`/`schema_json`) or the Avro schema alone in a file named after its schema id.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use apache_avro::schema::{Name, RecordSchema, ResolvedSchema, Schema};
use serde_json::Value;

/// The event schemas of one system, by schema id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventSchemas {
    by_id: BTreeMap<String, EventSchema>,
}

/// The field layout of one event schema: what each bitmap position names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct EventSchema {
    /// The schema's record name (`AccountChangeEvent`).
    name: String,
    /// The top-level fields in schema order, each with its components when it is a compound
    /// field (a record such as `Address`), in their order.
    fields: Vec<(String, Vec<String>)>,
    /// Where the schema was read from, for messages.
    source: PathBuf,
}

/// Why a bitmap could not be decoded with a schema.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Unfit(pub(crate) String);

impl EventSchemas {
    /// Reads every schema in `paths`: each a schema file, or a directory whose `*.json` and
    /// `*.avsc` files are schemas. An error names the file and what is wrong with it.
    pub fn load(paths: &[PathBuf]) -> Result<EventSchemas, String> {
        let mut schemas = EventSchemas::default();
        for path in paths {
            let metadata = std::fs::metadata(path)
                .map_err(|error| format!("cannot read `{}`: {error}", path.display()))?;
            if !metadata.is_dir() {
                schemas.add_file(path)?;
                continue;
            }
            let entries = std::fs::read_dir(path)
                .map_err(|error| format!("cannot list `{}`: {error}", path.display()))?;
            let mut files = Vec::new();
            for entry in entries {
                let entry =
                    entry.map_err(|error| format!("cannot list `{}`: {error}", path.display()))?;
                let file = entry.path();
                let schema_file = file
                    .extension()
                    .is_some_and(|extension| extension == "json" || extension == "avsc");
                if schema_file && file.is_file() {
                    files.push(file);
                }
            }
            if files.is_empty() {
                return Err(format!(
                    "`{}` holds no schema files (`*.json` or `*.avsc`)",
                    path.display()
                ));
            }
            files.sort();
            for file in files {
                schemas.add_file(&file)?;
            }
        }
        Ok(schemas)
    }

    fn add_file(&mut self, path: &Path) -> Result<(), String> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| format!("cannot read `{}`: {error}", path.display()))?;
        let stem = path
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (id, schema) = parse_schema_file(&text, &stem)
            .map_err(|error| format!("`{}`: {error}", path.display()))?;
        let schema = EventSchema {
            source: path.to_owned(),
            ..schema
        };
        if let Some(known) = self.by_id.get(&id) {
            if known.fields != schema.fields || known.name != schema.name {
                return Err(format!(
                    "`{}` and `{}` both give schema id `{id}` but differ: keep the one `GetSchema` returns for that id",
                    known.source.display(),
                    path.display()
                ));
            }
            return Ok(());
        }
        self.by_id.insert(id, schema);
        Ok(())
    }

    /// The schema with this id, if it was loaded.
    pub(crate) fn get(&self, schema_id: &str) -> Option<&EventSchema> {
        self.by_id.get(schema_id)
    }

    /// A set of one schema given as text, for tests and tools.
    pub fn from_text(schema_id: &str, text: &str) -> Result<EventSchemas, String> {
        let (id, schema) = parse_schema_file(text, schema_id)?;
        let mut schemas = EventSchemas::default();
        schemas.by_id.insert(id, schema);
        Ok(schemas)
    }
}

/// A schema file: a `GetSchema` response (`schemaId` and `schemaJson`, in the protobuf JSON
/// spelling or the field names of `pubsub_api.proto`) or a bare Avro schema whose id is `stem`.
fn parse_schema_file(text: &str, stem: &str) -> Result<(String, EventSchema), String> {
    let value: Value = serde_json::from_str(text).map_err(|error| format!("not JSON: {error}"))?;
    let member = |names: [&str; 2]| names.iter().find_map(|name| value.get(name));
    let (id, avro) = match member(["schemaJson", "schema_json"]) {
        Some(Value::String(avro)) => {
            let id = match member(["schemaId", "schema_id"]) {
                Some(Value::String(id)) if !id.trim().is_empty() => id.clone(),
                _ => {
                    return Err(
                        "a `GetSchema` response must carry its `schemaId` next to `schemaJson`"
                            .to_owned(),
                    )
                }
            };
            (id, avro.clone())
        }
        Some(_) => return Err("`schemaJson` must be the schema as a JSON string".to_owned()),
        None if stem.trim().is_empty() => {
            return Err("name the file after the schema id (`<schema id>.avsc`)".to_owned())
        }
        None => (stem.to_owned(), text.to_owned()),
    };
    let schema =
        Schema::parse_str(&avro).map_err(|error| format!("not an Avro schema: {error}"))?;
    let resolved = ResolvedSchema::try_from(&schema)
        .map_err(|error| format!("not an Avro schema: {error}"))?;
    let Schema::Record(record) = &schema else {
        return Err("the schema is not a record: expected a change event schema such as `AccountChangeEvent`".to_owned());
    };
    let names = resolved.get_names();
    let fields = record
        .fields
        .iter()
        .map(|field| {
            let components = compound_record(&field.schema, names)
                .map(|inner| inner.fields.iter().map(|part| part.name.clone()).collect())
                .unwrap_or_default();
            (field.name.clone(), components)
        })
        .collect();
    Ok((
        id,
        EventSchema {
            name: record.name.name.clone(),
            fields,
            source: PathBuf::new(),
        },
    ))
}

/// The record of a compound field: its type, or the record in its union with null, followed
/// through a reference to a record named earlier (Salesforce defines `Address` once).
fn compound_record<'s>(
    schema: &'s Schema,
    names: &'s std::collections::HashMap<Name, &'s Schema>,
) -> Option<&'s RecordSchema> {
    match schema {
        Schema::Record(record) => Some(record),
        Schema::Ref { name } => match names.get(name) {
            Some(Schema::Record(record)) => Some(record),
            _ => None,
        },
        Schema::Union(union) => union
            .variants()
            .iter()
            .find_map(|variant| compound_record(variant, names)),
        _ => None,
    }
}

impl EventSchema {
    /// The record name of the schema (`AccountChangeEvent`).
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The field names the bitmaps of one header list stand for: `Field` for a top-level bit,
    /// `Compound.Component` for a bit of a compound's bitmap.
    ///
    /// A top-level bit on a compound field stands for the whole compound: its parts are named
    /// by the element for its position when there is one (Salesforce sets both when every
    /// part changed), else every part is.
    pub(crate) fn decode(&self, bitmaps: &[String]) -> Result<Vec<String>, Unfit> {
        // The positions that have an element of their own.
        let detailed: Vec<usize> = bitmaps
            .iter()
            .filter_map(|bitmap| bitmap.split_once('-')?.0.parse().ok())
            .collect();
        let mut names = Vec::new();
        for bitmap in bitmaps {
            match bitmap.split_once('-') {
                None => {
                    for position in bits(bitmap)? {
                        let (name, components) = self.fields.get(position).ok_or_else(|| {
                            Unfit(format!(
                                "bit {position} of \"{bitmap}\" is past the {} fields of schema `{}`",
                                self.fields.len(),
                                self.name
                            ))
                        })?;
                        if components.is_empty() {
                            names.push(name.clone());
                        } else if !detailed.contains(&position) {
                            names.extend(components.iter().map(|part| format!("{name}.{part}")));
                        }
                    }
                }
                Some((parent, nested)) => {
                    let position: usize = parent.parse().map_err(|_| {
                        Unfit(format!("\"{bitmap}\" does not start with a field position"))
                    })?;
                    let (compound, components) = self.fields.get(position).ok_or_else(|| {
                        Unfit(format!(
                            "\"{bitmap}\" names field {position}, past the {} fields of schema `{}`",
                            self.fields.len(),
                            self.name
                        ))
                    })?;
                    if components.is_empty() {
                        return Err(Unfit(format!(
                            "\"{bitmap}\" names the components of `{compound}`, which schema `{}` does not give as a compound field",
                            self.name
                        )));
                    }
                    for bit in bits(nested)? {
                        let component = components.get(bit).ok_or_else(|| {
                            Unfit(format!(
                                "bit {bit} of \"{bitmap}\" is past the {} components of `{compound}`",
                                components.len()
                            ))
                        })?;
                        names.push(format!("{compound}.{component}"));
                    }
                }
            }
        }
        Ok(names)
    }
}

/// The positions of the set bits of a `0x` hexadecimal bitmap, least significant first: the
/// last hexadecimal digit holds bits 0 to 3.
fn bits(bitmap: &str) -> Result<Vec<usize>, Unfit> {
    let digits = bitmap
        .strip_prefix("0x")
        .or_else(|| bitmap.strip_prefix("0X"))
        .filter(|digits| !digits.is_empty())
        .ok_or_else(|| Unfit(format!("\"{bitmap}\" is not a `0x` bitmap")))?;
    let mut positions = Vec::new();
    for (place, digit) in digits.chars().rev().enumerate() {
        let value = digit
            .to_digit(16)
            .ok_or_else(|| Unfit(format!("\"{bitmap}\" is not a `0x` bitmap")))?;
        for bit in 0..4 {
            if value & (1 << bit) != 0 {
                positions.push(place * 4 + bit);
            }
        }
    }
    Ok(positions)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of a Salesforce change event schema, cut to a few fields: the header at 0,
    /// `Address` defined once and referred to by name for the second address.
    pub(crate) const ACCOUNT_SCHEMA: &str = r#"{
      "type": "record", "name": "AccountChangeEvent", "namespace": "com.sforce.eventbus",
      "fields": [
        {"name": "ChangeEventHeader", "type": {"type": "record", "name": "ChangeEventHeader",
          "fields": [{"name": "entityName", "type": "string"}]}},
        {"name": "Name", "type": ["null", "string"], "default": null},
        {"name": "Type", "type": ["null", "string"], "default": null},
        {"name": "BillingAddress", "type": ["null", {"type": "record", "name": "Address",
          "fields": [
            {"name": "Street", "type": ["null", "string"], "default": null},
            {"name": "City", "type": ["null", "string"], "default": null},
            {"name": "State", "type": ["null", "string"], "default": null}
          ]}], "default": null},
        {"name": "ShippingAddress", "type": ["null", "Address"], "default": null},
        {"name": "Phone", "type": ["null", "string"], "default": null},
        {"name": "LastModifiedDate", "type": ["null", "long"], "default": null}
      ]}"#;

    #[test]
    fn bits_count_from_the_last_digit() {
        // 0x0320 = 0b0011_0010_0000: bits 5, 8 and 9.
        assert_eq!(bits("0x0320"), Ok(vec![5, 8, 9]));
        assert_eq!(bits("0x1"), Ok(vec![0]));
        assert_eq!(bits("0x10"), Ok(vec![4]));
        assert!(bits("0x").is_err());
        assert!(bits("0xG").is_err());
    }

    #[test]
    fn bitmaps_name_top_level_fields_and_components_through_a_named_record() {
        let schemas = EventSchemas::from_text("sch-1", ACCOUNT_SCHEMA).unwrap();
        let schema = schemas.get("sch-1").unwrap();
        assert_eq!(schema.name(), "AccountChangeEvent");
        // 0x62 = bits 1, 5, 6: Name, Phone, LastModifiedDate.
        assert_eq!(
            schema.decode(&["0x62".to_owned()]),
            Ok(vec![
                "Name".to_owned(),
                "Phone".to_owned(),
                "LastModifiedDate".to_owned()
            ])
        );
        // 4-0x6: ShippingAddress (a reference to Address), bits 1 and 2: City and State.
        assert_eq!(
            schema.decode(&["0x40".to_owned(), "4-0x6".to_owned()]),
            Ok(vec![
                "LastModifiedDate".to_owned(),
                "ShippingAddress.City".to_owned(),
                "ShippingAddress.State".to_owned()
            ])
        );
    }

    #[test]
    fn a_compound_bit_is_its_parts() {
        let schemas = EventSchemas::from_text("sch-1", ACCOUNT_SCHEMA).unwrap();
        let schema = schemas.get("sch-1").unwrap();
        // Bit 3 alone (every part of BillingAddress nulled at once): every part.
        assert_eq!(
            schema.decode(&["0x8".to_owned()]),
            Ok(vec![
                "BillingAddress.Street".to_owned(),
                "BillingAddress.City".to_owned(),
                "BillingAddress.State".to_owned()
            ])
        );
        // Bit 3 with its own element: the element names the parts.
        assert_eq!(
            schema.decode(&["0x8".to_owned(), "3-0x2".to_owned()]),
            Ok(vec!["BillingAddress.City".to_owned()])
        );
    }

    #[test]
    fn a_bitmap_the_schema_cannot_hold_is_unfit() {
        let schemas = EventSchemas::from_text("sch-1", ACCOUNT_SCHEMA).unwrap();
        let schema = schemas.get("sch-1").unwrap();
        assert!(schema.decode(&["0x80".to_owned()]).is_err());
        assert!(schema.decode(&["1-0x1".to_owned()]).is_err());
        assert!(schema.decode(&["3-0x8".to_owned()]).is_err());
        assert!(schema.decode(&["9-0x1".to_owned()]).is_err());
    }

    #[test]
    fn a_get_schema_response_carries_its_id_and_a_bare_schema_takes_the_file_name() {
        let response = serde_json::json!({
            "schemaJson": ACCOUNT_SCHEMA,
            "schemaId": "bNSyZ-jsjV0_1o9wdKhQHQ"
        })
        .to_string();
        let (id, schema) = parse_schema_file(&response, "ignored").unwrap();
        assert_eq!(id, "bNSyZ-jsjV0_1o9wdKhQHQ");
        assert_eq!(schema.fields.len(), 7);
        let (id, _) = parse_schema_file(ACCOUNT_SCHEMA, "AbC-123").unwrap();
        assert_eq!(id, "AbC-123");
        assert!(parse_schema_file("{\"schemaJson\": \"{}\"}", "x")
            .unwrap_err()
            .contains("schemaId"));
        assert!(parse_schema_file("\"string\"", "x")
            .unwrap_err()
            .contains("not a record"));
        assert!(parse_schema_file("{", "x")
            .unwrap_err()
            .contains("not JSON"));
    }
}
