//! What the simulated CRMs hold: entities, their fields in each system, how values are made,
//! and how a buggy sync layer mangles them.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// One mapped field: its name in the source (legacy) and in the target (new) CRM.
#[derive(Clone, Copy, Debug)]
pub struct SimField {
    /// Source field name.
    pub source: &'static str,
    /// Target field name.
    pub target: &'static str,
    kind: FieldKind,
    /// The field's rule settings in tandem's configuration, beyond the names.
    rule: &'static str,
}

#[derive(Clone, Copy, Debug)]
enum FieldKind {
    FirstName,
    LastName,
    Email,
    Phone,
    Title,
    Company,
    Domain,
    Industry,
    Employees,
    DealName,
    Amount,
    Stage,
    CloseDate,
    /// The company a deal belongs to: a reference (`ref = "company"`).
    CompanyRef,
    /// A time with a zone offset (`compare = "timestamp"`).
    LastActivity,
}

/// How the simulator judges a mapped field, by the rules of tandem's configuration that
/// [`entities_toml`] writes (schemas/field-rules.md), implemented here on its own.
pub(crate) enum Judgement {
    Equal,
    Differs,
    /// The source value has no entry in the field's value map.
    Unmapped,
}

/// One simulated entity.
#[derive(Clone, Copy, Debug)]
pub struct SimEntity {
    /// Entity name in events.
    pub name: &'static str,
    /// Its mapped fields.
    pub fields: &'static [SimField],
}

const CONTACT_FIELDS: &[SimField] = &[
    SimField {
        source: "FirstName",
        target: "firstname",
        kind: FieldKind::FirstName,
        rule: "",
    },
    SimField {
        source: "LastName",
        target: "lastname",
        kind: FieldKind::LastName,
        rule: "",
    },
    SimField {
        source: "Email",
        target: "email",
        kind: FieldKind::Email,
        rule: "",
    },
    SimField {
        source: "Phone",
        target: "phone",
        kind: FieldKind::Phone,
        rule: "",
    },
    SimField {
        source: "Title",
        target: "jobtitle",
        kind: FieldKind::Title,
        rule: "",
    },
];

const COMPANY_FIELDS: &[SimField] = &[
    SimField {
        source: "Name",
        target: "name",
        kind: FieldKind::Company,
        rule: "",
    },
    SimField {
        source: "Website",
        target: "domain",
        kind: FieldKind::Domain,
        rule: "",
    },
    SimField {
        source: "Industry",
        target: "industry",
        kind: FieldKind::Industry,
        rule: "",
    },
    SimField {
        source: "NumberOfEmployees",
        target: "numberofemployees",
        kind: FieldKind::Employees,
        rule: "",
    },
];

const DEAL_FIELDS: &[SimField] = &[
    SimField {
        source: "Name",
        target: "dealname",
        kind: FieldKind::DealName,
        rule: "",
    },
    SimField {
        source: "Amount",
        target: "amount",
        kind: FieldKind::Amount,
        rule: "",
    },
    SimField {
        source: "StageName",
        target: "dealstage",
        kind: FieldKind::Stage,
        rule: STAGE_RULE,
    },
    SimField {
        source: "CloseDate",
        target: "closedate",
        kind: FieldKind::CloseDate,
        rule: "",
    },
    SimField {
        source: "AccountId",
        target: "associatedcompany",
        kind: FieldKind::CompanyRef,
        rule: r#"ref = "company""#,
    },
    SimField {
        source: "LastActivityDate",
        target: "notes_last_updated",
        kind: FieldKind::LastActivity,
        rule: r#"compare = "timestamp""#,
    },
];

/// The target's values for the source's deal stages: the value map of `dealstage`.
pub(crate) const STAGE_MAP: [(&str, &str); 6] = [
    ("Prospecting", "appointmentscheduled"),
    ("Qualification", "qualifiedtobuy"),
    ("Proposal", "presentationscheduled"),
    ("Negotiation", "decisionmakerboughtin"),
    ("Closed Won", "closedwon"),
    ("Closed Lost", "closedlost"),
];

/// A stage the legacy CRM gained after the mapping was written: the map has no entry for it,
/// and the sync layer copies it as it is.
pub(crate) const NEW_STAGE: &str = "Verbal Commit";

const STAGE_RULE: &str = r#"map = { "Prospecting" = "appointmentscheduled", "Qualification" = "qualifiedtobuy", "Proposal" = "presentationscheduled", "Negotiation" = "decisionmakerboughtin", "Closed Won" = "closedwon", "Closed Lost" = "closedlost" }"#;

/// The legacy CRM writes times in its own zone, UTC-5.
const LEGACY_OFFSET: &str = "-05:00";

/// Seconds since the epoch of an RFC 3339 time.
pub(crate) fn instant(value: &Value) -> Option<i64> {
    let parsed = OffsetDateTime::parse(value.as_str()?, &Rfc3339).ok()?;
    Some(parsed.unix_timestamp())
}

/// The same instant written in UTC, as the new CRM stores times.
pub(crate) fn in_utc(value: &Value) -> Value {
    match value
        .as_str()
        .and_then(|text| OffsetDateTime::parse(text, &Rfc3339).ok())
    {
        Some(parsed) => json!(parsed
            .to_offset(time::UtcOffset::UTC)
            .format(&Rfc3339)
            .expect("a UTC time formats as RFC 3339")),
        None => value.clone(),
    }
}

/// The legacy CRM's local wall-clock time labelled as UTC: off by the legacy zone's offset.
pub(crate) fn wall_clock_as_utc(value: &Value) -> Value {
    match value.as_str() {
        Some(text) if text.ends_with(LEGACY_OFFSET) => {
            json!(format!("{}Z", &text[..text.len() - LEGACY_OFFSET.len()]))
        }
        _ => value.clone(),
    }
}

/// The three simulated entities.
pub const ENTITIES: [SimEntity; 3] = [
    SimEntity {
        name: "contact",
        fields: CONTACT_FIELDS,
    },
    SimEntity {
        name: "company",
        fields: COMPANY_FIELDS,
    },
    SimEntity {
        name: "deal",
        fields: DEAL_FIELDS,
    },
];

/// The index of companies in [`ENTITIES`]: deals point at them.
pub(crate) const COMPANY: usize = 1;

/// The target field that holds the source id (the migration's join key).
pub const LEGACY_ID_FIELD: &str = "legacy_id";

const FIRST_NAMES: &[&str] = &[
    "Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken", "Radia", "Linus", "Margaret", "Donald",
];
const LAST_NAMES: &[&str] = &[
    "Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Thompson", "Perlman", "Torvalds",
    "Hamilton", "Knuth",
];
const TITLES: &[&str] = &[
    "CFO",
    "Head of Sales",
    "Engineer",
    "Buyer",
    "Office Manager",
    "CTO",
];
const INDUSTRIES: &[&str] = &[
    "Software",
    "Retail",
    "Manufacturing",
    "Finance",
    "Healthcare",
];
const STAGES: &[&str] = &[
    "Prospecting",
    "Qualification",
    "Proposal",
    "Negotiation",
    "Closed Won",
    "Closed Lost",
];

impl SimField {
    /// Whether the field points at a company (its values are native ids the world picks).
    pub(crate) fn is_company_ref(&self) -> bool {
        matches!(self.kind, FieldKind::CompanyRef)
    }

    /// Whether the field is the deal stage, with its value map.
    pub(crate) fn is_stage(&self) -> bool {
        matches!(self.kind, FieldKind::Stage)
    }

    /// What the target should hold for a source value by the field's rule: `None` when the
    /// value map has no entry for it. References are judged by [`SimField::judge`].
    pub(crate) fn expected(&self, source: &Value) -> Option<Value> {
        match (self.kind, source) {
            (FieldKind::Stage, Value::String(stage)) => STAGE_MAP
                .iter()
                .find(|(from, _)| from == stage)
                .map(|(_, to)| json!(to)),
            (FieldKind::Stage, Value::Null) => Some(Value::Null),
            (FieldKind::Stage, _) => None,
            _ => Some(source.clone()),
        }
    }

    /// The source value a target value comes back as (the reverse delta); `None` when the
    /// rule cannot say (a value no map entry sends there). References: the caller's.
    pub(crate) fn back_to_source(&self, target: &Value) -> Option<Value> {
        match (self.kind, target) {
            (FieldKind::Stage, Value::String(stage)) => STAGE_MAP
                .iter()
                .find(|(_, to)| to == stage)
                .map(|(from, _)| json!(from)),
            (FieldKind::Stage, Value::Null) => Some(Value::Null),
            (FieldKind::Stage, _) => None,
            _ => Some(target.clone()),
        }
    }

    /// Judges a record's field: `resolve` gives the join key of a company by system and
    /// native id (`None`: unknown).
    pub(crate) fn judge(
        &self,
        source: &Value,
        target: &Value,
        resolve: &dyn Fn(crate::SimSystem, &str) -> Option<String>,
    ) -> Judgement {
        let verdict = |equal: bool| {
            if equal {
                Judgement::Equal
            } else {
                Judgement::Differs
            }
        };
        match self.kind {
            FieldKind::CompanyRef => {
                let key = |system, value: &Value| match value {
                    Value::Null => Ok(None),
                    Value::String(id) if !id.is_empty() => resolve(system, id).map(Some).ok_or(()),
                    _ => Err(()),
                };
                let (left, right) = (
                    key(crate::SimSystem::Source, source),
                    key(crate::SimSystem::Target, target),
                );
                verdict(matches!((left, right), (Ok(left), Ok(right)) if left == right))
            }
            FieldKind::LastActivity => match (instant(source), instant(target)) {
                (Some(left), Some(right)) => verdict(left == right),
                _ => verdict(source == target),
            },
            _ => match self.expected(source) {
                Some(expected) => verdict(expected == *target),
                None => Judgement::Unmapped,
            },
        }
    }

    /// A fresh value for this field in the target's terms (a record created there).
    pub fn target_value(&self, rng: &mut ChaCha8Rng, serial: u64) -> Value {
        match self.kind {
            FieldKind::CompanyRef => Value::Null,
            FieldKind::LastActivity => in_utc(&self.value(rng, serial)),
            _ => {
                let value = self.value(rng, serial);
                self.expected(&value).unwrap_or(value)
            }
        }
    }

    /// A fresh value for this field.
    pub fn value(&self, rng: &mut ChaCha8Rng, serial: u64) -> Value {
        let pick =
            |rng: &mut ChaCha8Rng, list: &[&str]| list[rng.random_range(0..list.len())].to_owned();
        match self.kind {
            FieldKind::FirstName => json!(pick(rng, FIRST_NAMES)),
            FieldKind::LastName => json!(pick(rng, LAST_NAMES)),
            FieldKind::Email => json!(format!(
                "user{serial}.{}@example.com",
                rng.random_range(0..1000)
            )),
            FieldKind::Phone => json!(format!("+1415555{:04}", rng.random_range(0..10_000))),
            FieldKind::Title => json!(pick(rng, TITLES)),
            FieldKind::Company => json!(format!("Company {serial} {}", pick(rng, LAST_NAMES))),
            FieldKind::Domain => json!(format!("company{serial}.example")),
            FieldKind::Industry => json!(pick(rng, INDUSTRIES)),
            FieldKind::Employees => json!(rng.random_range(1..5_000)),
            FieldKind::DealName => json!(format!("Deal {serial}-{}", rng.random_range(0..100))),
            FieldKind::Amount => json!(rng.random_range(1..2_000) * 50),
            FieldKind::Stage => json!(pick(rng, STAGES)),
            FieldKind::CloseDate => json!(format!(
                "2027-{:02}-{:02}",
                rng.random_range(1..13),
                rng.random_range(1..29)
            )),
            // The world picks an existing company; on its own a field has none.
            FieldKind::CompanyRef => Value::Null,
            FieldKind::LastActivity => json!(format!(
                "2026-11-{:02}T{:02}:{:02}:00{LEGACY_OFFSET}",
                rng.random_range(1..29),
                rng.random_range(0..24),
                rng.random_range(0..60)
            )),
        }
    }

    /// What a buggy sync layer writes instead of `value`: always different from it.
    pub fn mangle(&self, value: &Value) -> Value {
        match (self.kind, value) {
            (FieldKind::Amount | FieldKind::Employees, Value::Number(number)) => {
                json!(number.as_i64().unwrap_or(0) * 100 + 1)
            }
            (FieldKind::Phone, Value::String(text)) => {
                json!(text.trim_start_matches('+').to_owned() + "0")
            }
            (FieldKind::Industry | FieldKind::Stage, _) => json!("UNMAPPED"),
            (FieldKind::LastActivity, _) if *value == json!("1999-01-01T00:00:00Z") => {
                json!("1999-01-02T00:00:00Z")
            }
            (FieldKind::LastActivity, _) => json!("1999-01-01T00:00:00Z"),
            (_, Value::String(text)) => json!(format!("{} ", text.to_uppercase())),
            (_, _) => json!("?"),
        }
    }
}

/// The writer allowed to write into the fenced target besides the sync layer: an enrichment
/// integration (kind, id). Its writes are no violations, but they still overwrite what the
/// sync layer copied.
pub const ALLOWED_TARGET_WRITER: (&str, &str) = ("integration", "enrichment");

/// The `[ownership]` table of a tandem configuration for these CRMs: the source owns every
/// entity, and [`ALLOWED_TARGET_WRITER`] may write into the target.
pub fn ownership_toml() -> String {
    format!(
        "[ownership]\nowner = \"source\"\nallowed = {{ target = [\"{}:{}\"] }}\n\n",
        ALLOWED_TARGET_WRITER.0, ALLOWED_TARGET_WRITER.1
    )
}

/// The `[[entities]]` blocks of a tandem configuration that maps these CRMs.
pub fn entities_toml() -> String {
    let mut toml = String::new();
    for entity in ENTITIES {
        toml.push_str(&format!(
            "[[entities]]\nname = \"{}\"\njoin = {{ source = \"external_id\", target = \"field:{LEGACY_ID_FIELD}\" }}\nfields = [\n",
            entity.name
        ));
        for field in entity.fields {
            let rule = if field.rule.is_empty() {
                String::new()
            } else {
                format!(", {}", field.rule)
            };
            toml.push_str(&format!(
                "  {{ source = \"{}\", target = \"{}\"{rule} }},\n",
                field.source, field.target
            ));
        }
        toml.push_str("]\n\n");
    }
    toml
}
