//! Cutover gates and rollback triggers: objective rules, decided before the crisis, measured
//! on one consistent snapshot.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::record::Status;
use crate::system::System;
use crate::time::Timestamp;

/// The gates a `verify` needs green, from the configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GateRules {
    /// Minimum parity of every entity (0 to 1).
    pub min_parity: Option<f64>,
    /// Minimum parity per entity, overriding `min_parity`.
    pub min_parity_by_entity: BTreeMap<String, f64>,
    /// At most this many records of every entity in each status.
    pub max_status: BTreeMap<Status, u64>,
    /// Target fields per entity that must have no mismatch at all.
    pub critical_fields: BTreeMap<String, Vec<String>>,
    /// No violation of the ownership rule in this many hours.
    pub no_violations_hours: Option<u64>,
    /// At most this many messages not yet applied, over both systems.
    pub max_lag: Option<i64>,
    /// A complete snapshot of both systems, for every entity, within this many hours.
    pub snapshot_within_hours: Option<u64>,
    /// Every other gate green without a break for this many hours.
    pub sustained_hours: Option<u64>,
    /// The date the second cutover must happen by.
    pub commit_date: Option<Timestamp>,
}

/// What the gates measure, from one snapshot.
#[derive(Clone, Debug, PartialEq)]
pub struct GateFacts {
    /// Per entity: parity, records per status, mismatches per target field.
    pub entities: BTreeMap<String, EntityFacts>,
    /// Messages not yet applied over both systems; `None` while unknown.
    pub lag: Option<i64>,
    /// Violations within `no_violations_hours`, and the time of the latest.
    pub recent_violations: (u64, Option<Timestamp>),
    /// The completion time of the latest full snapshot per system and entity.
    pub snapshots: BTreeMap<(System, String), Timestamp>,
    /// Now (wall clock).
    pub now: Timestamp,
    /// Since when every other gate has been green without a break, if it is.
    pub green_since: Option<Timestamp>,
}

/// One entity's counts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EntityFacts {
    /// in_sync / records.
    pub parity: f64,
    /// Records per status.
    pub by_status: BTreeMap<Status, u64>,
    /// Mismatched records per target field.
    pub mismatched_fields: BTreeMap<String, u64>,
}

/// One gate, measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GateResult {
    /// The gate: `min_parity`, `max_status:<status>`, `critical_field:<field>`,
    /// `no_violations`, `max_lag`, `snapshot_freshness`, `sustained`, `commit_date`.
    pub gate: String,
    /// The entity it is about, if one.
    pub entity: Option<String>,
    /// Whether it is green.
    pub passed: bool,
    /// What was measured.
    pub measured: String,
    /// What it must be.
    pub threshold: String,
    /// Since when it has had this result (kept while the daemon runs).
    pub since: Option<Timestamp>,
}

/// The answer of `GET /v1/cutover/readiness`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Readiness {
    /// `safe` when every gate is green, else `not_safe`.
    pub verdict: String,
    /// Every gate, measured.
    pub gates: Vec<GateResult>,
    /// Days left until the commit date (negative once past it), if one is set.
    pub commit_days_left: Option<i64>,
    /// When it was measured (wall clock).
    pub evaluated_at: Timestamp,
}

impl Readiness {
    /// Whether every gate is green.
    pub fn is_safe(&self) -> bool {
        self.gates.iter().all(|gate| gate.passed)
    }
}

fn result(
    gate: String,
    entity: Option<&str>,
    passed: bool,
    measured: String,
    threshold: String,
) -> GateResult {
    GateResult {
        gate,
        entity: entity.map(str::to_owned),
        passed,
        measured,
        threshold,
        since: None,
    }
}

const HOUR_NANOS: i64 = 3_600_000_000_000;

/// A configured number of hours in nanoseconds, saturating (a rule of a million years means
/// "always", not an overflow).
fn hours_nanos(hours: u64) -> i64 {
    i64::try_from(hours)
        .unwrap_or(i64::MAX)
        .saturating_mul(HOUR_NANOS)
}

/// Measures every configured gate. An entity that no parity rule (its own or the global one)
/// and no status limit covers must have parity 1 and no record in any divergent status: a
/// cutover is never declared safe by omission.
pub fn evaluate(rules: &GateRules, facts: &GateFacts) -> Readiness {
    let mut gates = Vec::new();
    for (entity, counts) in &facts.entities {
        let parity_rule = rules
            .min_parity_by_entity
            .get(entity)
            .copied()
            .or(rules.min_parity);
        let unconfigured = parity_rule.is_none() && rules.max_status.is_empty();
        let min_parity = parity_rule.or(unconfigured.then_some(1.0));
        if let Some(min) = min_parity {
            gates.push(result(
                "min_parity".to_owned(),
                Some(entity),
                counts.parity >= min,
                format!("{:.4}", counts.parity),
                format!(">= {min}"),
            ));
        }
        let max_status: BTreeMap<Status, u64> = if unconfigured {
            Status::ALL
                .into_iter()
                .filter(|status| *status != Status::InSync)
                .map(|status| (status, 0))
                .collect()
        } else {
            rules.max_status.clone()
        };
        for (status, max) in &max_status {
            let count = counts.by_status.get(status).copied().unwrap_or(0);
            gates.push(result(
                format!("max_status:{}", status.as_str()),
                Some(entity),
                count <= *max,
                count.to_string(),
                format!("<= {max}"),
            ));
        }
        for field in rules.critical_fields.get(entity).into_iter().flatten() {
            let count = counts.mismatched_fields.get(field).copied().unwrap_or(0);
            gates.push(result(
                format!("critical_field:{field}"),
                Some(entity),
                count == 0,
                count.to_string(),
                "0 mismatches".to_owned(),
            ));
        }
    }
    if let Some(hours) = rules.no_violations_hours {
        let (count, latest) = facts.recent_violations;
        gates.push(result(
            "no_violations".to_owned(),
            None,
            count == 0,
            match latest {
                Some(latest) => format!("{count} in the last {hours} h, latest {latest}"),
                None => format!("{count} in the last {hours} h"),
            },
            format!("none in {hours} h"),
        ));
    }
    if let Some(max) = rules.max_lag {
        gates.push(result(
            "max_lag".to_owned(),
            None,
            facts.lag.is_some_and(|lag| lag <= max),
            facts
                .lag
                .map_or_else(|| "unknown".to_owned(), |lag| lag.to_string()),
            format!("<= {max}"),
        ));
    }
    if let Some(hours) = rules.snapshot_within_hours {
        let oldest_allowed = facts.now.unix_nanos().saturating_sub(hours_nanos(hours));
        for entity in facts.entities.keys() {
            for system in System::ALL {
                let completed = facts.snapshots.get(&(system, entity.clone())).copied();
                gates.push(result(
                    format!("snapshot_freshness:{system}"),
                    Some(entity),
                    completed.is_some_and(|at| at.unix_nanos() >= oldest_allowed),
                    completed.map_or_else(
                        || "no complete snapshot".to_owned(),
                        |at| format!("completed {at}"),
                    ),
                    format!("within {hours} h"),
                ));
            }
        }
    }
    if let Some(hours) = rules.sustained_hours {
        let others_green = gates.iter().all(|gate| gate.passed);
        let needed = hours_nanos(hours);
        let held = facts
            .green_since
            .filter(|_| others_green)
            .map(|since| facts.now.unix_nanos().saturating_sub(since.unix_nanos()));
        gates.push(result(
            "sustained".to_owned(),
            None,
            held.is_some_and(|held| held >= needed),
            held.map_or_else(
                || "not green now".to_owned(),
                |held| format!("green for {:.1} h", held as f64 / HOUR_NANOS as f64),
            ),
            format!("green for {hours} h"),
        ));
    }
    let commit_days_left = rules
        .commit_date
        .map(|date| (date.unix_nanos() - facts.now.unix_nanos()).div_euclid(24 * HOUR_NANOS));
    if let (Some(date), Some(days)) = (rules.commit_date, commit_days_left) {
        gates.push(result(
            "commit_date".to_owned(),
            None,
            days >= 0,
            format!("{days} days left"),
            format!("by {date}"),
        ));
    }
    let verdict = if gates.iter().all(|gate| gate.passed) {
        "safe"
    } else {
        "not_safe"
    };
    Readiness {
        verdict: verdict.to_owned(),
        gates,
        commit_days_left,
        evaluated_at: facts.now,
    }
}

/// A rule that says a flip went wrong, from the configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerRule {
    /// Its name, as reported and alerted.
    pub name: String,
    /// The entity it watches; every entity when absent.
    #[serde(default)]
    pub entity: Option<String>,
    /// Fires when more than this share of the records is divergent (mismatched, missing,
    /// duplicate or unverified; pending is lag).
    #[serde(default)]
    pub max_divergent_share: Option<f64>,
    /// Fires on any violation of the ownership rule on the entity after the flip.
    #[serde(default)]
    pub any_violation: bool,
    /// Only within this many hours after the flip (always when absent).
    #[serde(default)]
    pub within_hours: Option<u64>,
}

/// A trigger that fired, with its evidence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FiredTrigger {
    /// The rule's name.
    pub name: String,
    /// The entity, if the rule names one.
    pub entity: Option<String>,
    /// What was measured.
    pub evidence: String,
    /// What to do.
    pub action: String,
}

/// The triggers that fire, given the facts, the violations per entity since the flip and the
/// time of the flip.
pub fn fired_triggers(
    rules: &[TriggerRule],
    facts: &GateFacts,
    violations_since_flip: &BTreeMap<String, u64>,
    flipped_at: Timestamp,
) -> Vec<FiredTrigger> {
    let action = "if the cause is not fixed at once, run `tandem cutover rollback --reason ...` and export the reverse delta".to_owned();
    let mut fired = Vec::new();
    for rule in rules {
        if let Some(hours) = rule.within_hours {
            let end = flipped_at.unix_nanos().saturating_add(hours_nanos(hours));
            if facts.now.unix_nanos() > end {
                continue;
            }
        }
        for (entity, counts) in &facts.entities {
            if rule.entity.as_ref().is_some_and(|only| only != entity) {
                continue;
            }
            if let Some(max) = rule.max_divergent_share {
                let records: u64 = counts.by_status.values().sum();
                let divergent: u64 = counts
                    .by_status
                    .iter()
                    .filter(|(status, _)| status.is_divergence())
                    .map(|(_, count)| count)
                    .sum();
                let share = if records == 0 {
                    0.0
                } else {
                    divergent as f64 / records as f64
                };
                if share > max {
                    fired.push(FiredTrigger {
                        name: rule.name.clone(),
                        entity: Some(entity.clone()),
                        evidence: format!(
                            "{divergent} of {records} {entity} records divergent ({:.1}% > {:.1}%)",
                            share * 100.0,
                            max * 100.0
                        ),
                        action: action.clone(),
                    });
                }
            }
            let violations = violations_since_flip.get(entity).copied().unwrap_or(0);
            if rule.any_violation && violations > 0 {
                fired.push(FiredTrigger {
                    name: rule.name.clone(),
                    entity: Some(entity.clone()),
                    evidence: format!("{violations} violations on {entity} since the flip"),
                    action: action.clone(),
                });
            }
        }
    }
    fired
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(hours: i64) -> Timestamp {
        Timestamp::from_unix_nanos(1_793_610_000_000_000_000 + hours * HOUR_NANOS)
    }

    /// 1,000 deals: 990 in sync, 6 mismatched (4 of them on `amount`), 4 unverified.
    fn facts() -> GateFacts {
        GateFacts {
            entities: BTreeMap::from([(
                "deal".to_owned(),
                EntityFacts {
                    parity: 0.99,
                    by_status: BTreeMap::from([
                        (Status::InSync, 990),
                        (Status::Mismatch, 6),
                        (Status::Unverified, 4),
                    ]),
                    mismatched_fields: BTreeMap::from([
                        ("amount".to_owned(), 4),
                        ("stage".to_owned(), 2),
                    ]),
                },
            )]),
            lag: Some(0),
            recent_violations: (0, None),
            snapshots: BTreeMap::from([
                ((System::Source, "deal".to_owned()), at(-10)),
                ((System::Target, "deal".to_owned()), at(-30)),
            ]),
            now: at(0),
            green_since: Some(at(-30)),
        }
    }

    fn verdicts(readiness: &Readiness) -> Vec<(String, bool)> {
        readiness
            .gates
            .iter()
            .map(|gate| (gate.gate.clone(), gate.passed))
            .collect()
    }

    #[test]
    fn every_configured_gate_is_measured_against_its_threshold() {
        let rules = GateRules {
            min_parity: Some(0.98),
            min_parity_by_entity: BTreeMap::new(),
            max_status: BTreeMap::from([(Status::Unverified, 5), (Status::Mismatch, 5)]),
            critical_fields: BTreeMap::from([(
                "deal".to_owned(),
                vec!["stage".to_owned(), "close".to_owned()],
            )]),
            no_violations_hours: Some(24),
            max_lag: Some(0),
            snapshot_within_hours: Some(24),
            sustained_hours: Some(24),
            commit_date: Some(at(24 * 10 + 1)),
        };
        let readiness = evaluate(&rules, &facts());
        let expected: Vec<(String, bool)> = [
            ("min_parity", true),
            ("max_status:mismatch", false),
            ("max_status:unverified", true),
            ("critical_field:stage", false),
            ("critical_field:close", true),
            ("no_violations", true),
            ("max_lag", true),
            ("snapshot_freshness:source", true),
            ("snapshot_freshness:target", false),
            // Other gates fail: not sustained, whatever `green_since` says.
            ("sustained", false),
            ("commit_date", true),
        ]
        .into_iter()
        .map(|(gate, passed)| (gate.to_owned(), passed))
        .collect();
        assert_eq!(verdicts(&readiness), expected);
        assert_eq!(readiness.verdict, "not_safe");
        assert_eq!(readiness.commit_days_left, Some(10));
    }

    #[test]
    fn without_rules_only_a_perfect_parity_is_safe() {
        let readiness = evaluate(&GateRules::default(), &facts());
        assert_eq!(readiness.verdict, "not_safe");
        let mut perfect = facts();
        perfect.entities.get_mut("deal").unwrap().parity = 1.0;
        perfect.entities.get_mut("deal").unwrap().by_status =
            BTreeMap::from([(Status::InSync, 1000)]);
        assert_eq!(evaluate(&GateRules::default(), &perfect).verdict, "safe");
    }

    #[test]
    fn an_entity_no_rule_covers_must_be_perfect() {
        // A parity rule for deals only: contacts, 999 of 1,000 in sync, get the strict default.
        let mut facts = facts();
        facts.entities.insert(
            "contact".to_owned(),
            EntityFacts {
                parity: 0.999,
                by_status: BTreeMap::from([(Status::InSync, 999), (Status::MissingInTarget, 1)]),
                mismatched_fields: BTreeMap::new(),
            },
        );
        let rules = GateRules {
            min_parity_by_entity: BTreeMap::from([("deal".to_owned(), 0.98)]),
            ..GateRules::default()
        };
        let readiness = evaluate(&rules, &facts);
        let failing: Vec<(String, Option<String>)> = readiness
            .gates
            .iter()
            .filter(|gate| !gate.passed)
            .map(|gate| (gate.gate.clone(), gate.entity.clone()))
            .collect();
        assert_eq!(
            failing,
            [
                ("min_parity".to_owned(), Some("contact".to_owned())),
                (
                    "max_status:missing_in_target".to_owned(),
                    Some("contact".to_owned())
                ),
            ]
        );
        let deal_gates: Vec<String> = readiness
            .gates
            .iter()
            .filter(|gate| gate.entity.as_deref() == Some("deal"))
            .map(|gate| format!("{} {}", gate.gate, gate.threshold))
            .collect();
        assert_eq!(deal_gates, ["min_parity >= 0.98"]);
    }

    #[test]
    fn hours_beyond_any_date_saturate() {
        let rules = GateRules {
            min_parity: Some(0.0),
            snapshot_within_hours: Some(u64::MAX),
            sustained_hours: Some(u64::MAX / 2),
            no_violations_hours: Some(u64::MAX),
            ..GateRules::default()
        };
        let readiness = evaluate(&rules, &facts());
        let freshness: Vec<bool> = readiness
            .gates
            .iter()
            .filter(|gate| gate.gate.starts_with("snapshot_freshness"))
            .map(|gate| gate.passed)
            .collect();
        // Any completed snapshot is within "forever"; green for 30 h is not green forever.
        assert_eq!(freshness, [true, true]);
        let sustained = readiness.gates.iter().find(|gate| gate.gate == "sustained");
        assert!(!sustained.unwrap().passed);
        let rule = TriggerRule {
            name: "forever".to_owned(),
            entity: None,
            max_divergent_share: Some(0.0),
            any_violation: false,
            within_hours: Some(u64::MAX),
        };
        assert_eq!(
            fired_triggers(&[rule], &facts(), &BTreeMap::new(), at(-1)).len(),
            1
        );
    }

    #[test]
    fn triggers_fire_on_their_share_or_any_violation_within_their_window() {
        let rules = vec![
            TriggerRule {
                name: "deals-broken".to_owned(),
                entity: Some("deal".to_owned()),
                max_divergent_share: Some(0.005),
                any_violation: false,
                within_hours: Some(48),
            },
            TriggerRule {
                name: "regulated".to_owned(),
                entity: None,
                max_divergent_share: None,
                any_violation: true,
                within_hours: None,
            },
        ];
        let violations = BTreeMap::from([("deal".to_owned(), 2)]);
        // 10 of 1,000 deals divergent: 1.0% > 0.5%.
        let fired = fired_triggers(&rules, &facts(), &violations, at(-1));
        let names: Vec<&str> = fired.iter().map(|trigger| trigger.name.as_str()).collect();
        assert_eq!(names, ["deals-broken", "regulated"]);
        assert!(
            fired[0].evidence.contains("10 of 1000"),
            "{}",
            fired[0].evidence
        );
        // Past its 48 hours, the share rule is quiet; the violation rule is not.
        let fired = fired_triggers(&rules, &facts(), &violations, at(-49));
        assert_eq!(fired.len(), 1);
        assert!(fired_triggers(&rules, &facts(), &BTreeMap::new(), at(-49)).is_empty());
    }
}
