//! `[ownership]` and `[cutover]`: who owns live writes, the gates and the triggers.

use super::*;

/// `[ownership]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OwnershipConfig {
    /// The system that owns live work: `source` (default) or `target`.
    #[serde(default)]
    pub owner: Option<System>,
    /// Entities owned by the other system from the start, e.g. `{ ticket = "target" }`.
    #[serde(default)]
    pub entities: BTreeMap<String, System>,
    /// Per system, who besides sync and repair actors may write there while it is fenced:
    /// `kind` or `kind:id`, e.g. `{ target = ["integration:billing-sync"] }`.
    #[serde(default)]
    pub allowed: BTreeMap<System, Vec<String>>,
    /// A write into the fenced system whose event names no actor: `report` (listed among the
    /// writers as unknown; default) or `violation`.
    #[serde(default)]
    pub unattributed_writes: Unattributed,
    /// Where violations are published as JSON (none: they are kept and listed only).
    #[serde(default)]
    pub violations_topic: Option<String>,
    /// Where commands undoing non-owner updates are published for the sync layer (none: no
    /// commands).
    #[serde(default)]
    pub commands_topic: Option<String>,
}

impl OwnershipConfig {
    /// The rules, checked against the mapped entities.
    pub fn policy(&self, entities: &[EntityMapping]) -> Result<OwnershipPolicy, String> {
        for entity in self.entities.keys() {
            if !entities.iter().any(|mapped| mapped.name == *entity) {
                return Err(format!("key `ownership.entities.{entity}`: `{entity}` is not one of the configured entities"));
            }
        }
        let mut allowed = BTreeMap::new();
        for (system, rules) in &self.allowed {
            let mut parsed = Vec::with_capacity(rules.len());
            for rule in rules {
                parsed.push(ActorRule::parse(rule).map_err(|error| {
                    format!("key `ownership.allowed.{system}`: {error} (write `kind` or `kind:id`, e.g. \"integration:billing-sync\")")
                })?);
            }
            allowed.insert(*system, parsed);
        }
        Ok(OwnershipPolicy {
            owner: self.owner.unwrap_or(System::Source),
            entities: self.entities.clone(),
            allowed,
            unattributed: self.unattributed_writes,
            compensate: self.commands_topic.is_some(),
        })
    }
}

/// `[cutover]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CutoverConfig {
    /// The date the second cutover must happen by: `2026-12-15` (UTC midnight) or RFC 3339.
    #[serde(default)]
    pub commit_date: Option<String>,
    /// The gates `verify` and `flip` need green.
    #[serde(default)]
    pub gates: GatesConfig,
    /// Rules watched after a flip.
    #[serde(default)]
    pub triggers: Vec<TriggerRule>,
}

/// `[cutover.gates]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GatesConfig {
    /// Minimum parity of every entity (0 to 1).
    #[serde(default)]
    pub min_parity: Option<f64>,
    /// Minimum parity per entity.
    #[serde(default)]
    pub min_parity_by_entity: BTreeMap<String, f64>,
    /// At most this many records of an entity per status, e.g. `{ unverified = 0 }`.
    #[serde(default)]
    pub max_status: BTreeMap<String, u64>,
    /// Target fields per entity that must have no mismatch.
    #[serde(default)]
    pub critical_fields: BTreeMap<String, Vec<String>>,
    /// No ownership violation in this many hours.
    #[serde(default)]
    pub no_violations_hours: Option<u64>,
    /// At most this many messages not yet applied.
    #[serde(default)]
    pub max_lag: Option<i64>,
    /// A complete snapshot of both systems within this many hours.
    #[serde(default)]
    pub snapshot_within_hours: Option<u64>,
    /// Every gate green without a break for this many hours.
    #[serde(default)]
    pub sustained_hours: Option<u64>,
}

impl CutoverConfig {
    /// The rules, checked against the mapped entities.
    pub fn rules(&self, entities: &[EntityMapping]) -> Result<CutoverRules, String> {
        let known = |key: &str, entity: &str| {
            if entities.iter().any(|mapped| mapped.name == entity) {
                Ok(())
            } else {
                Err(format!(
                    "key `{key}`: `{entity}` is not one of the configured entities"
                ))
            }
        };
        let gates = &self.gates;
        let share = |key: &str, value: f64| {
            if (0.0..=1.0).contains(&value) {
                Ok(())
            } else {
                Err(format!(
                    "key `{key}` is {value}: give a share between 0 and 1 (0.999 is 99.9%)"
                ))
            }
        };
        if let Some(min) = gates.min_parity {
            share("cutover.gates.min_parity", min)?;
        }
        for (entity, min) in &gates.min_parity_by_entity {
            known(
                &format!("cutover.gates.min_parity_by_entity.{entity}"),
                entity,
            )?;
            share(
                &format!("cutover.gates.min_parity_by_entity.{entity}"),
                *min,
            )?;
        }
        let mut max_status = BTreeMap::new();
        for (name, max) in &gates.max_status {
            let status = Status::parse(name).filter(|status| *status != Status::InSync).ok_or_else(|| {
                format!("key `cutover.gates.max_status.{name}`: not a status (use pending, mismatch, missing_in_target, missing_in_source, duplicate, unverified)")
            })?;
            max_status.insert(status, *max);
        }
        for (entity, fields) in &gates.critical_fields {
            let key = format!("cutover.gates.critical_fields.{entity}");
            known(&key, entity)?;
            let mapped = entities.iter().find(|mapped| mapped.name == *entity);
            for field in fields {
                if !mapped
                    .is_some_and(|mapped| mapped.fields.iter().any(|rule| rule.target == *field))
                {
                    return Err(format!(
                        "key `{key}`: `{field}` is not a compared target field of {entity}"
                    ));
                }
            }
        }
        let commit_date = match &self.commit_date {
            None => None,
            Some(text) => {
                let full = if text.len() == 10 {
                    format!("{text}T00:00:00Z")
                } else {
                    text.clone()
                };
                Some(Timestamp::parse_rfc3339(&full).map_err(|_| {
                    format!("key `cutover.commit_date`: `{text}` is not a date (2026-12-15) or an RFC 3339 time")
                })?)
            }
        };
        for (index, trigger) in self.triggers.iter().enumerate() {
            let key = format!("cutover.triggers[{index}]");
            if trigger.name.trim().is_empty() {
                return Err(format!("key `{key}.name` is empty"));
            }
            if let Some(entity) = &trigger.entity {
                known(&format!("{key}.entity"), entity)?;
            }
            if let Some(max) = trigger.max_divergent_share {
                share(&format!("{key}.max_divergent_share"), max)?;
            }
            if trigger.max_divergent_share.is_none() && !trigger.any_violation {
                return Err(format!(
                    "key `{key}`: give `max_divergent_share` or `any_violation = true`"
                ));
            }
        }
        Ok(CutoverRules {
            gates: GateRules {
                min_parity: gates.min_parity,
                min_parity_by_entity: gates.min_parity_by_entity.clone(),
                max_status,
                critical_fields: {
                    // Fields marked `critical = true` in the entity rules, and the ones this
                    // section lists.
                    let mut critical = gates.critical_fields.clone();
                    for entity in entities {
                        for field in entity.fields.iter().filter(|field| field.critical) {
                            let listed = critical.entry(entity.name.clone()).or_default();
                            if !listed.contains(&field.target) {
                                listed.push(field.target.clone());
                            }
                        }
                    }
                    critical
                },
                no_violations_hours: gates.no_violations_hours,
                max_lag: gates.max_lag,
                snapshot_within_hours: gates.snapshot_within_hours,
                sustained_hours: gates.sustained_hours,
                commit_date,
            },
            triggers: self.triggers.clone(),
        })
    }
}
