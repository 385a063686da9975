//! What the simulated CRMs hold: entities, their fields in each system, how values are made,
//! and how a buggy sync layer mangles them.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

/// One mapped field: its name in the source (legacy) and in the target (new) CRM.
#[derive(Clone, Copy, Debug)]
pub struct SimField {
    /// Source field name.
    pub source: &'static str,
    /// Target field name.
    pub target: &'static str,
    kind: FieldKind,
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
    },
    SimField {
        source: "LastName",
        target: "lastname",
        kind: FieldKind::LastName,
    },
    SimField {
        source: "Email",
        target: "email",
        kind: FieldKind::Email,
    },
    SimField {
        source: "Phone",
        target: "phone",
        kind: FieldKind::Phone,
    },
    SimField {
        source: "Title",
        target: "jobtitle",
        kind: FieldKind::Title,
    },
];

const COMPANY_FIELDS: &[SimField] = &[
    SimField {
        source: "Name",
        target: "name",
        kind: FieldKind::Company,
    },
    SimField {
        source: "Website",
        target: "domain",
        kind: FieldKind::Domain,
    },
    SimField {
        source: "Industry",
        target: "industry",
        kind: FieldKind::Industry,
    },
    SimField {
        source: "NumberOfEmployees",
        target: "numberofemployees",
        kind: FieldKind::Employees,
    },
];

const DEAL_FIELDS: &[SimField] = &[
    SimField {
        source: "Name",
        target: "dealname",
        kind: FieldKind::DealName,
    },
    SimField {
        source: "Amount",
        target: "amount",
        kind: FieldKind::Amount,
    },
    SimField {
        source: "StageName",
        target: "dealstage",
        kind: FieldKind::Stage,
    },
    SimField {
        source: "CloseDate",
        target: "closedate",
        kind: FieldKind::CloseDate,
    },
];

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
            (_, Value::String(text)) => json!(format!("{} ", text.to_uppercase())),
            (_, _) => json!("?"),
        }
    }
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
            toml.push_str(&format!(
                "  {{ source = \"{}\", target = \"{}\" }},\n",
                field.source, field.target
            ));
        }
        toml.push_str("]\n\n");
    }
    toml
}
