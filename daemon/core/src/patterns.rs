//! Systematic mapping errors: when most mismatches of one field share one pattern (the target
//! holds another source field's value, a number scaled by 100, a time shifted by one zone
//! offset, a number as text, a difference of case or spaces, a reference holding the source's
//! own id), the report states it once with its share and examples, instead of leaving
//! thousands of lines to a human.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::compare::{parse_decimal, Comparer};
use crate::event::Fields;
use crate::mapping::{EntityMapping, FieldMapping};
use crate::record::{Cause, RecordRow};
use crate::system::System;

/// A share of the examined mismatches above which a pattern is reported.
pub const MIN_SHARE: f64 = 0.5;
/// Fewer mismatches than this say nothing systematic.
pub const MIN_MISMATCHES: usize = 3;
/// Examples kept per pattern.
const EXAMPLES: usize = 3;

/// One suspected mapping error of one field.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SuspectedMappingError {
    /// The entity.
    pub entity: String,
    /// The target field.
    pub field: String,
    /// The pattern, machine-readable: `column_shift:<source field>`, `scaled:<factor>`,
    /// `time_shift:<±HH:MM>`, `number_as_text`, `case_or_spaces`, `untranslated_reference`.
    pub pattern: String,
    /// The pattern in words, with what to do.
    pub description: String,
    /// Mismatches examined that follow the pattern.
    pub matching: u64,
    /// Mismatches examined.
    pub examined: u64,
    /// `matching / examined`.
    pub share: f64,
    /// Some records that follow it.
    pub examples: Vec<PatternExample>,
}

/// One record that follows a pattern.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PatternExample {
    /// The record's join key.
    pub join_key: String,
    /// What the target should hold (the source's value through the rule).
    pub expected: Value,
    /// What it holds.
    pub target: Value,
}

/// The patterns one mismatch follows.
fn patterns_of(
    rule: &FieldMapping,
    source: &Fields,
    expected: &Value,
    held: &Value,
) -> Vec<String> {
    let mut found = Vec::new();
    if held.is_null() {
        return found;
    }
    if rule.reference.is_some() {
        // An id says nothing by its digits: the one pattern is the source's own id copied
        // across untranslated.
        if Comparer::Trim.equal(expected, held) {
            found.push("untranslated_reference".to_owned());
        }
        return found;
    }
    // Another source field's value landed here.
    for (name, value) in source {
        if rule.source.names().contains(name) || value.is_null() {
            continue;
        }
        if Comparer::Trim.equal(value, held) {
            found.push(format!("column_shift:{name}"));
        }
    }
    if let (Some(want), Some(have)) = (parse_decimal(expected), parse_decimal(held)) {
        if !want.is_zero() && want != have {
            for (factor, text) in [
                (Decimal::ONE_HUNDRED, "100"),
                (Decimal::ONE_THOUSAND, "1000"),
                (Decimal::new(1, 2), "0.01"),
                (Decimal::new(1, 3), "0.001"),
            ] {
                if want.checked_mul(factor) == Some(have) {
                    found.push(format!("scaled:{text}"));
                }
            }
        }
        if want == have && expected.is_number() && held.is_string() {
            found.push("number_as_text".to_owned());
        }
    }
    if let (Some(want), Some(have)) = (instant(expected), instant(held)) {
        let shift = have - want;
        let quarter = 15 * 60;
        if shift != 0 && shift % quarter == 0 && shift.abs() <= 14 * 3600 {
            let sign = if shift > 0 { '+' } else { '-' };
            let minutes = shift.abs() / 60;
            found.push(format!(
                "time_shift:{sign}{:02}:{:02}",
                minutes / 60,
                minutes % 60
            ));
        }
    }
    if expected.is_string() && held.is_string() && Comparer::Casefold.equal(expected, held) {
        found.push("case_or_spaces".to_owned());
    }
    found
}

/// The patterns the wrong values in a record follow, as `<target field>=<pattern>` (sorted):
/// for each differing field whose own history says the sync layer wrote it wrong, or cannot
/// say who wrote it ([`Cause::of_field`]: `sync_wrote_wrong_value`, `unknown`).
pub fn wrong_value_patterns(
    entity: &EntityMapping,
    row: &RecordRow,
    differing_fields: &[String],
) -> Vec<String> {
    let (Some(source), Some(target)) = (row.live(System::Source), row.live(System::Target)) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for rule in &entity.fields {
        if !differing_fields.contains(&rule.target)
            || !Cause::of_field(rule, source, target).may_be_mapping_error()
        {
            continue;
        }
        let Ok(expected) = rule.expected_target(&source.fields) else {
            continue;
        };
        let held = target.fields.get(&rule.target).unwrap_or(&Value::Null);
        for pattern in patterns_of(rule, &source.fields, &expected, held) {
            found.push(format!("{}={pattern}", rule.target));
        }
    }
    found.sort();
    found
}

/// Seconds since the epoch of an RFC 3339 text or epoch milliseconds.
fn instant(value: &Value) -> Option<i64> {
    let text = value.as_str()?;
    let parsed =
        time::OffsetDateTime::parse(text.trim(), &time::format_description::well_known::Rfc3339)
            .ok()?;
    Some(parsed.unix_timestamp())
}

fn describe(entity: &str, rule: &FieldMapping, pattern: &str, example: Option<&Value>) -> String {
    let field = &rule.target;
    match pattern.split_once(':') {
        Some(("column_shift", other)) => format!(
            "{entity}.{field} holds what the source has in `{other}`, not in `{}`: the sync layer maps the wrong column",
            rule.source
        ),
        Some(("scaled", factor)) => format!(
            "{entity}.{field} is the source's `{}` multiplied by {factor}: a unit or currency-minor-unit conversion in the sync layer",
            rule.source
        ),
        Some(("time_shift", offset)) => format!(
            "{entity}.{field} is the source's `{}` shifted by {offset}: a time-zone conversion in the sync layer (or set `zone` if the target stores local time)",
            rule.source
        ),
        _ if pattern == "untranslated_reference" => format!(
            "{entity}.{field} holds the source's own id from `{}`, not the id of the joined {} record in the target: the sync layer copies references without translating them",
            rule.source,
            rule.reference.as_deref().unwrap_or("referenced")
        ),
        _ if pattern == "number_as_text" => format!(
            "{entity}.{field} holds the source's number as text: set compare = \"decimal\" if that is acceptable, or fix the field type"
        ),
        // A time with spaces around it is read right by the rule for its kind.
        _ => match example.and_then(crate::compare::time_rule_for) {
            Some(time_rule) => format!(
                "{entity}.{field} differs from the source only in surrounding spaces: set compare = \"{time_rule}\", which reads the value as a {time_rule} whatever spaces surround it"
            ),
            None => format!(
                "{entity}.{field} differs from the source only in case or surrounding spaces: set compare = \"casefold\" (or \"trim\") if that is acceptable"
            ),
        },
    }
}

/// Finds the patterns that most mismatches of one field follow. `mismatches` holds, per
/// mismatched record, its join key and both sides' fields.
pub fn suspect(
    entity: &str,
    rule: &FieldMapping,
    mismatches: &[(String, Fields, Fields)],
) -> Vec<SuspectedMappingError> {
    if mismatches.len() < MIN_MISMATCHES {
        return Vec::new();
    }
    let mut counts: BTreeMap<String, (u64, Vec<PatternExample>)> = BTreeMap::new();
    for (join_key, source, target) in mismatches {
        let Ok(expected) = rule.expected_target(source) else {
            continue;
        };
        let held = target.get(&rule.target).cloned().unwrap_or(Value::Null);
        for pattern in patterns_of(rule, source, &expected, &held) {
            let entry = counts.entry(pattern).or_default();
            entry.0 += 1;
            if entry.1.len() < EXAMPLES {
                entry.1.push(PatternExample {
                    join_key: join_key.clone(),
                    expected: expected.clone(),
                    target: held.clone(),
                });
            }
        }
    }
    let examined = mismatches.len() as u64;
    let mut suspected: Vec<SuspectedMappingError> = counts
        .into_iter()
        .filter_map(|(pattern, (matching, examples))| {
            let share = matching as f64 / examined as f64;
            (share >= MIN_SHARE).then(|| SuspectedMappingError {
                entity: entity.to_owned(),
                field: rule.target.clone(),
                description: describe(
                    entity,
                    rule,
                    &pattern,
                    examples.first().map(|example| &example.expected),
                ),
                pattern,
                matching,
                examined,
                share,
                examples,
            })
        })
        .collect();
    suspected.sort_by(|left, right| {
        right
            .matching
            .cmp(&left.matching)
            .then(left.pattern.cmp(&right.pattern))
    });
    suspected
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn fields(value: Value) -> Fields {
        serde_json::from_value(value).unwrap()
    }

    /// `count` mismatches of which the first `following` follow `make`, the rest are noise.
    fn mismatches(
        count: usize,
        following: usize,
        make: impl Fn(usize) -> (Value, Value),
    ) -> Vec<(String, Fields, Fields)> {
        (0..count)
            .map(|index| {
                let (source, target) = if index < following {
                    make(index)
                } else {
                    (json!({"Title": "t", "Company": "c", "Amount": 1, "Close": "2026-01-01T00:00:00Z"}),
                     json!({"company": format!("noise-{index}"), "amount": 7, "closed": "2020-01-01T00:00:07Z"}))
                };
                (format!("K{index}"), fields(source), fields(target))
            })
            .collect()
    }

    #[test]
    fn a_column_shift_is_found_with_its_share_and_examples() {
        // 19 of 20 companies hold the contact's title: 95%.
        let rule = FieldMapping::exact("Company", "company");
        let rows = mismatches(20, 19, |index| {
            (
                json!({"Company": format!("Acme {index}"), "Title": format!("CTO {index}")}),
                json!({"company": format!("CTO {index}")}),
            )
        });
        let found = suspect("contact", &rule, &rows);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].pattern, "column_shift:Title");
        assert_eq!((found[0].matching, found[0].examined), (19, 20));
        assert!((found[0].share - 0.95).abs() < 1e-9);
        assert_eq!(found[0].examples.len(), 3);
        assert_eq!(found[0].examples[0].target, json!("CTO 0"));
        assert!(
            found[0].description.contains("`Title`"),
            "{}",
            found[0].description
        );
    }

    #[test]
    fn amounts_times_a_hundred_and_times_shifted_by_a_zone_are_found() {
        let amount = FieldMapping::exact("Amount", "amount");
        let rows = mismatches(10, 8, |index| {
            (
                json!({"Amount": 12.5 + index as f64}),
                json!({"amount": 1250 + 100 * index as i64}),
            )
        });
        let found = suspect("deal", &amount, &rows);
        assert_eq!(
            found
                .iter()
                .map(|found| found.pattern.as_str())
                .collect::<Vec<_>>(),
            ["scaled:100"]
        );
        assert_eq!(found[0].matching, 8);

        let close = FieldMapping::exact("Close", "closed");
        let rows = mismatches(4, 3, |index| {
            (
                json!({"Close": format!("2026-11-2{index}T09:00:00Z")}),
                json!({"closed": format!("2026-11-2{index}T08:00:00Z")}),
            )
        });
        let found = suspect("deal", &close, &rows);
        assert_eq!(
            found
                .iter()
                .map(|found| found.pattern.as_str())
                .collect::<Vec<_>>(),
            ["time_shift:-01:00"]
        );
    }

    #[test]
    fn scattered_mismatches_suggest_nothing() {
        let rule = FieldMapping::exact("Company", "company");
        let rows = mismatches(10, 4, |index| {
            (
                json!({"Company": "Acme", "Title": format!("CTO {index}")}),
                json!({"company": format!("CTO {index}")}),
            )
        });
        assert!(suspect("contact", &rule, &rows).is_empty());
        assert!(suspect("contact", &rule, &rows[..2]).is_empty());
    }

    #[test]
    fn numbers_as_text_and_case_differences_are_named() {
        let amount = FieldMapping::exact("Amount", "amount");
        let rows = mismatches(3, 3, |index| {
            (
                json!({"Amount": 10 + index}),
                json!({"amount": format!("{}", 10 + index)}),
            )
        });
        assert_eq!(suspect("deal", &amount, &rows)[0].pattern, "number_as_text");
        let name = FieldMapping::exact("Company", "company");
        let rows = mismatches(3, 3, |index| {
            (
                json!({"Company": format!("acme {index}")}),
                json!({"company": format!("ACME {index} ")}),
            )
        });
        let found = suspect("deal", &name, &rows);
        assert_eq!(found[0].pattern, "case_or_spaces");
        assert!(found[0].description.contains("compare = \"casefold\""));
    }

    #[test]
    fn a_time_with_spaces_around_it_is_told_the_rule_for_its_kind_not_casefold() {
        for (value, rule) in [
            ("2027-07-09", "date"),
            ("2026-11-26T09:47:00Z", "timestamp"),
        ] {
            let close = FieldMapping::exact("CloseDate", "closedate");
            let rows = mismatches(3, 3, |_| {
                (
                    json!({"CloseDate": value}),
                    json!({"closedate": format!("{value} ")}),
                )
            });
            let found = suspect("deal", &close, &rows);
            assert_eq!(found[0].pattern, "case_or_spaces");
            assert!(
                found[0]
                    .description
                    .contains(&format!("compare = \"{rule}\"")),
                "{}",
                found[0].description
            );
            assert!(!found[0].description.contains("casefold"));
        }
    }

    #[test]
    fn a_source_id_copied_into_a_reference_is_named_and_its_digits_are_not_read() {
        let mut company = FieldMapping::exact("AccountId", "company_id");
        company.reference = Some("company".to_owned());
        // Four of five deals hold the source's company id; the fifth holds a target id that
        // happens to be the source id times 100, which is not a pattern for an id.
        let rows = mismatches(5, 5, |index| {
            let source = 1000 + index as i64;
            let held = if index < 4 {
                json!(source.to_string())
            } else {
                json!(source * 100)
            };
            (
                json!({"AccountId": source.to_string()}),
                json!({"company_id": held}),
            )
        });
        let found = suspect("deal", &company, &rows);
        assert_eq!(
            found
                .iter()
                .map(|found| (found.pattern.as_str(), found.matching))
                .collect::<Vec<_>>(),
            [("untranslated_reference", 4)]
        );
        assert!(found[0].description.contains("without translating"));
    }
}
