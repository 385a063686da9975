//! How the two values of a field are compared: each rule turns a value into a normal form
//! (equal meanings, equal forms), and two values are equal when their forms are (within a
//! tolerance, for decimals). A value a rule cannot read keeps its raw form, so it equals only
//! the same raw value and never matches a readable one by accident.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime, PrimitiveDateTime, UtcOffset};

/// The names `compare` accepts.
pub const COMPARE_NAMES: [&str; 10] = [
    "exact",
    "trim",
    "casefold",
    "email",
    "phone",
    "decimal",
    "date",
    "timestamp",
    "bool",
    "set",
];

/// How precisely timestamps are compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Precision {
    /// Whole minutes.
    Minute,
    /// Whole seconds (the default: most CRMs store no less).
    Second,
    /// Milliseconds.
    Millisecond,
}

impl Precision {
    fn nanos(self) -> i128 {
        match self {
            Precision::Minute => 60_000_000_000,
            Precision::Second => 1_000_000_000,
            Precision::Millisecond => 1_000_000,
        }
    }

    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Precision::Minute => "minute",
            Precision::Second => "second",
            Precision::Millisecond => "millisecond",
        }
    }
}

/// A field's comparison rule, validated.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub enum Comparer {
    /// The JSON values must be equal.
    #[default]
    Exact,
    /// Strings are compared without surrounding whitespace.
    Trim,
    /// Strings are compared trimmed and case-folded.
    Casefold,
    /// E-mail addresses: trimmed, case-insensitive.
    Email,
    /// Phone numbers in E.164, read with a default region when they carry no country code.
    Phone {
        /// ISO 3166 alpha-2 region of numbers written without a country code.
        region: String,
    },
    /// Numbers that may arrive as strings, rounded to `scale` places if set, equal within
    /// `tolerance` if set.
    Decimal {
        /// Decimal places compared.
        scale: Option<u32>,
        /// The largest difference still equal.
        tolerance: Option<Decimal>,
    },
    /// Calendar dates; a time is first moved into `zone`.
    Date {
        /// The zone a date-time is read in, and a date without offset belongs to.
        zone: UtcOffset,
    },
    /// Instants, compared in UTC at `precision`; a time without offset is in `zone`.
    Timestamp {
        /// The zone of times written without an offset.
        zone: UtcOffset,
        /// How precisely they are compared.
        precision: Precision,
    },
    /// Booleans, also written as `"true"`, `"yes"`, `"1"`, 1 and their opposites.
    Bool,
    /// Multi-select values: order and repeats do not matter; a string is split at `separator`.
    Set {
        /// What separates the values of a string (`;` for Salesforce multi-select picklists).
        separator: String,
    },
}

impl Comparer {
    /// The rule's name.
    pub const fn name(&self) -> &'static str {
        match self {
            Comparer::Exact => "exact",
            Comparer::Trim => "trim",
            Comparer::Casefold => "casefold",
            Comparer::Email => "email",
            Comparer::Phone { .. } => "phone",
            Comparer::Decimal { .. } => "decimal",
            Comparer::Date { .. } => "date",
            Comparer::Timestamp { .. } => "timestamp",
            Comparer::Bool => "bool",
            Comparer::Set { .. } => "set",
        }
    }

    /// Whether values are strings compared as text (a value map applies to those only).
    pub const fn is_textual(&self) -> bool {
        matches!(
            self,
            Comparer::Exact | Comparer::Trim | Comparer::Casefold | Comparer::Email
        )
    }

    /// The normal form of a value. `null`, and for every rule but `exact` an empty or blank
    /// string, is `null`: CRMs write "no value" both ways.
    pub fn normalize(&self, value: &Value) -> Value {
        if value.is_null() {
            return Value::Null;
        }
        if let (false, Value::String(text)) = (matches!(self, Comparer::Exact), value) {
            if text.trim().is_empty() {
                return Value::Null;
            }
        }
        match self {
            Comparer::Exact => value.clone(),
            Comparer::Trim => map_text(value, |text| text.trim().to_owned()),
            Comparer::Casefold | Comparer::Email => {
                map_text(value, |text| caseless::default_case_fold_str(text.trim()))
            }
            Comparer::Phone { region } => map_text(value, |text| phone(text, region)),
            Comparer::Decimal { scale, .. } => match decimal(value) {
                Some(number) => {
                    let number = match scale {
                        Some(places) => number.round_dp(*places),
                        None => number,
                    };
                    Value::String(number.normalize().to_string())
                }
                None => raw(value),
            },
            Comparer::Date { zone } => match instant_or_date(value, *zone) {
                Some(Reading::Date(date)) => Value::String(date.to_string()),
                Some(Reading::Instant(instant)) => {
                    Value::String(instant.to_offset(*zone).date().to_string())
                }
                None => raw(value),
            },
            Comparer::Timestamp { zone, precision } => match instant_or_date(value, *zone) {
                Some(Reading::Instant(instant)) => timestamp(instant, *precision),
                Some(Reading::Date(date)) => {
                    timestamp(date.midnight().assume_offset(*zone), *precision)
                }
                None => raw(value),
            },
            Comparer::Bool => match boolean(value) {
                Some(flag) => Value::Bool(flag),
                None => raw(value),
            },
            Comparer::Set { separator } => {
                let mut items: Vec<String> = match value {
                    Value::Array(items) => items
                        .iter()
                        .filter(|item| !item.is_null())
                        .map(|item| match item {
                            Value::String(text) => text.trim().to_owned(),
                            other => other.to_string(),
                        })
                        .collect(),
                    Value::String(text) => text
                        .split(separator.as_str())
                        .map(|item| item.trim().to_owned())
                        .collect(),
                    other => vec![other.to_string()],
                };
                items.retain(|item| !item.is_empty());
                items.sort();
                items.dedup();
                if items.is_empty() {
                    Value::Null
                } else {
                    Value::Array(items.into_iter().map(Value::String).collect())
                }
            }
        }
    }

    /// Whether two values are equal under this rule.
    pub fn equal(&self, left: &Value, right: &Value) -> bool {
        // The same JSON value is equal under every rule; under `exact` nothing else is.
        if left == right {
            return true;
        }
        if matches!(self, Comparer::Exact) {
            return false;
        }
        if let Comparer::Decimal {
            tolerance: Some(tolerance),
            scale,
        } = self
        {
            if let (Some(left), Some(right)) = (decimal(left), decimal(right)) {
                let round =
                    |number: Decimal| scale.map_or(number, |places| number.round_dp(places));
                return round(left)
                    .checked_sub(round(right))
                    .is_some_and(|difference| difference.abs() <= *tolerance);
            }
        }
        self.normalize(left) == self.normalize(right)
    }
}

impl fmt::Display for Comparer {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// A value a rule cannot read: strings trimmed, anything else as it is.
fn raw(value: &Value) -> Value {
    match value {
        Value::String(text) => Value::String(text.trim().to_owned()),
        other => other.clone(),
    }
}

fn map_text(value: &Value, normal: impl Fn(&str) -> String) -> Value {
    match value {
        Value::String(text) => Value::String(normal(text)),
        other => other.clone(),
    }
}

/// A phone number in E.164, or the text without spaces if it is not a valid number.
fn phone(text: &str, region: &str) -> String {
    let country = phonenumber::country::Id::from_str(region).ok();
    match phonenumber::parse(country, text.trim()) {
        Ok(number) if phonenumber::is_valid(&number) => {
            number.format().mode(phonenumber::Mode::E164).to_string()
        }
        _ => text.split_whitespace().collect(),
    }
}

/// A number from a JSON number or a string holding one (`"1200.50"`, `" 12 "`, `"1e3"`).
fn decimal(value: &Value) -> Option<Decimal> {
    let text = match value {
        Value::Number(number) => number.to_string(),
        Value::String(text) => text.trim().to_owned(),
        _ => return None,
    };
    if text.contains(['e', 'E']) {
        Decimal::from_scientific(&text).ok()
    } else {
        Decimal::from_str_exact(&text).ok()
    }
}

enum Reading {
    Date(Date),
    Instant(OffsetDateTime),
}

/// The rule that reads `value` as what it is, if it is a time: `"timestamp"` for an instant,
/// `"date"` for a calendar date.
pub fn time_rule_for(value: &Value) -> Option<&'static str> {
    match value {
        Value::String(_) => match instant_or_date(value, UtcOffset::UTC)? {
            Reading::Instant(_) => Some("timestamp"),
            Reading::Date(_) => Some("date"),
        },
        _ => None,
    }
}

/// An instant or a calendar date: RFC 3339, `YYYY-MM-DD HH:MM:SS[.fff]` or
/// `YYYY-MM-DDTHH:MM:SS[.fff]` in `zone`, `YYYY-MM-DD`, or epoch milliseconds.
fn instant_or_date(value: &Value, zone: UtcOffset) -> Option<Reading> {
    match value {
        Value::Number(number) => {
            let millis = number.as_i64()?;
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
                .ok()
                .map(Reading::Instant)
        }
        Value::String(text) => {
            let text = text.trim();
            if let Ok(instant) = OffsetDateTime::parse(text, &Rfc3339) {
                return Some(Reading::Instant(instant));
            }
            let local = format_description!(
                version = 2,
                "[year]-[month]-[day][first [T][ ]][hour]:[minute]:[second][optional [.[subsecond]]]"
            );
            if let Ok(local) = PrimitiveDateTime::parse(text, &local) {
                return Some(Reading::Instant(local.assume_offset(zone)));
            }
            let day = format_description!("[year]-[month]-[day]");
            Date::parse(text, &day).ok().map(Reading::Date)
        }
        _ => None,
    }
}

fn timestamp(instant: OffsetDateTime, precision: Precision) -> Value {
    let nanos = instant.unix_timestamp_nanos();
    let truncated = nanos - nanos.rem_euclid(precision.nanos());
    match OffsetDateTime::from_unix_timestamp_nanos(truncated)
        .ok()
        .and_then(|instant| instant.format(&Rfc3339).ok())
    {
        Some(text) => Value::String(text),
        None => Value::Null,
    }
}

fn boolean(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(flag) => Some(*flag),
        Value::Number(number) => match number.as_i64() {
            Some(1) => Some(true),
            Some(0) => Some(false),
            _ => None,
        },
        Value::String(text) => match text.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "y" | "1" | "on" => Some(true),
            "false" | "no" | "n" | "0" | "off" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// Reads a zone: `UTC`, `Z` or a fixed offset such as `+01:00` or `-05:00`.
pub fn parse_zone(text: &str) -> Result<UtcOffset, String> {
    if matches!(text, "UTC" | "utc" | "Z") {
        return Ok(UtcOffset::UTC);
    }
    let offset = format_description!("[offset_hour sign:mandatory]:[offset_minute]");
    UtcOffset::parse(text, &offset).map_err(|_| {
        format!("zone `{text}` is not a fixed offset: write `UTC` or an offset such as `+01:00` or `-05:00`")
    })
}

/// Reads a precision name.
pub fn parse_precision(text: &str) -> Result<Precision, String> {
    match text {
        "minute" => Ok(Precision::Minute),
        "second" => Ok(Precision::Second),
        "millisecond" => Ok(Precision::Millisecond),
        other => Err(format!(
            "precision `{other}` is not known: use minute, second or millisecond"
        )),
    }
}

/// Checks a phone region: an ISO 3166 alpha-2 code the phone number metadata knows.
pub fn check_region(region: &str) -> Result<(), String> {
    phonenumber::country::Id::from_str(region)
        .map(|_| ())
        .map_err(|_| format!("region `{region}` is not an ISO 3166 country code with phone numbering (e.g. US, GB, DE)"))
}

/// Reads a tolerance or any decimal setting.
pub fn parse_decimal(value: &Value) -> Option<Decimal> {
    decimal(value)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn decimal_rule(scale: Option<u32>, tolerance: Option<&str>) -> Comparer {
        Comparer::Decimal {
            scale,
            tolerance: tolerance.map(|text| Decimal::from_str_exact(text).unwrap()),
        }
    }

    #[test]
    fn each_rule_equates_what_it_should_and_nothing_else() {
        let cet = parse_zone("+01:00").unwrap();
        let cases: Vec<(Comparer, Value, Value, bool)> = vec![
            (Comparer::Exact, json!("Ada"), json!("Ada"), true),
            (Comparer::Exact, json!("Ada "), json!("Ada"), false),
            (Comparer::Exact, json!(""), Value::Null, false),
            (Comparer::Trim, json!(" Ada "), json!("Ada"), true),
            (Comparer::Trim, json!(""), Value::Null, true),
            (Comparer::Trim, json!("ada"), json!("Ada"), false),
            (Comparer::Casefold, json!("STRASSE"), json!("straße"), true),
            (Comparer::Casefold, json!("Ada"), json!("Adam"), false),
            (
                Comparer::Email,
                json!(" Ada@Example.COM"),
                json!("ada@example.com"),
                true,
            ),
            (
                Comparer::Email,
                json!("ada@example.com"),
                json!("ada@example.org"),
                false,
            ),
            (
                Comparer::Phone {
                    region: "US".to_owned(),
                },
                json!("(415) 555-2671"),
                json!("+1 415 555 2671"),
                true,
            ),
            (
                Comparer::Phone {
                    region: "GB".to_owned(),
                },
                json!("020 7946 0018"),
                json!("+44 20 7946 0018"),
                true,
            ),
            (
                Comparer::Phone {
                    region: "US".to_owned(),
                },
                json!("415 555 2671"),
                json!("+44 415 555 2671"),
                false,
            ),
            (
                decimal_rule(None, None),
                json!("1200.50"),
                json!(1200.5),
                true,
            ),
            (
                decimal_rule(None, None),
                json!("1200.50"),
                json!(120050),
                false,
            ),
            (
                decimal_rule(Some(2), None),
                json!(10.004),
                json!("10.00"),
                true,
            ),
            (
                decimal_rule(Some(2), None),
                json!(10.006),
                json!("10.00"),
                false,
            ),
            (
                decimal_rule(None, Some("0.01")),
                json!(99.99),
                json!("100"),
                true,
            ),
            (
                decimal_rule(None, Some("0.01")),
                json!(99.98),
                json!("100"),
                false,
            ),
            (decimal_rule(None, None), json!("n/a"), json!("n/a"), true),
            (decimal_rule(None, None), json!("n/a"), json!(0), false),
            (
                Comparer::Date { zone: cet },
                json!("2026-11-20T23:30:00Z"),
                json!("2026-11-21"),
                true,
            ),
            (
                Comparer::Date {
                    zone: UtcOffset::UTC,
                },
                json!("2026-11-20T23:30:00Z"),
                json!("2026-11-21"),
                false,
            ),
            (
                Comparer::Timestamp {
                    zone: UtcOffset::UTC,
                    precision: Precision::Second,
                },
                json!("2026-11-20T09:00:00.250+01:00"),
                json!("2026-11-20T08:00:00Z"),
                true,
            ),
            (
                Comparer::Timestamp {
                    zone: cet,
                    precision: Precision::Second,
                },
                json!("2026-11-20 09:00:00"),
                // Epoch milliseconds of 2026-11-20T08:00:00Z.
                json!(1_795_161_600_000_i64),
                true,
            ),
            (
                Comparer::Timestamp {
                    zone: UtcOffset::UTC,
                    precision: Precision::Second,
                },
                json!("2026-11-20 09:00:00"),
                json!(1_795_161_600_000_i64),
                false,
            ),
            (
                Comparer::Timestamp {
                    zone: cet,
                    precision: Precision::Millisecond,
                },
                json!("2026-11-20 09:00:00"),
                json!("2026-11-20T08:00:00.000Z"),
                true,
            ),
            (
                Comparer::Timestamp {
                    zone: UtcOffset::UTC,
                    precision: Precision::Millisecond,
                },
                json!("2026-11-20T08:00:00.001Z"),
                json!("2026-11-20T08:00:00Z"),
                false,
            ),
            (Comparer::Bool, json!("Yes"), json!(true), true),
            (Comparer::Bool, json!(0), json!("false"), true),
            (Comparer::Bool, json!("maybe"), json!(false), false),
            (
                Comparer::Set {
                    separator: ";".to_owned(),
                },
                json!("red;green; blue"),
                json!(["blue", "red", "green", "red"]),
                true,
            ),
            (
                Comparer::Set {
                    separator: ";".to_owned(),
                },
                json!("red;green"),
                json!(["red"]),
                false,
            ),
        ];
        for (rule, left, right, equal) in cases {
            assert_eq!(
                rule.equal(&left, &right),
                equal,
                "{rule:?}: {left} vs {right}"
            );
            assert_eq!(rule.equal(&right, &left), equal, "{rule:?} is symmetric");
        }
    }

    fn every_rule() -> Vec<Comparer> {
        vec![
            Comparer::Exact,
            Comparer::Trim,
            Comparer::Casefold,
            Comparer::Email,
            Comparer::Phone {
                region: "DE".to_owned(),
            },
            decimal_rule(None, None),
            decimal_rule(Some(2), None),
            decimal_rule(Some(2), Some("0.05")),
            Comparer::Date {
                zone: parse_zone("-05:00").unwrap(),
            },
            Comparer::Timestamp {
                zone: parse_zone("+01:00").unwrap(),
                precision: Precision::Second,
            },
            Comparer::Bool,
            Comparer::Set {
                separator: ";".to_owned(),
            },
        ]
    }

    /// Values of the shapes CRMs send: text of every kind, numbers, dates, phones, lists.
    fn crm_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|number| json!(number)),
            (-1e12f64..1e12).prop_map(|number| json!(number)),
            "\\PC{0,12}".prop_map(Value::String),
            "[ ]{0,2}[A-Za-zßİ]{1,6}@[a-z]{1,5}\\.[A-Za-z]{2,3}[ ]{0,2}".prop_map(Value::String),
            "[+]?[0-9 ()-]{5,16}".prop_map(Value::String),
            "-?[0-9]{1,9}(\\.[0-9]{1,6})?".prop_map(Value::String),
            "20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])( [01][0-9]:[0-5][0-9]:[0-5][0-9])?"
                .prop_map(Value::String),
            "(true|false|yes|no|Y|n|0|1|on|off)".prop_map(Value::String),
            prop::collection::vec("[a-z ]{0,5}", 0..4).prop_map(|items| json!(items)),
            "[a-z]{0,3}(;[a-z ]{0,3}){0,3}".prop_map(Value::String),
        ]
    }

    proptest::proptest! {
        #[test]
        fn normal_forms_are_fixed_points(value in crm_value()) {
            for rule in every_rule() {
                let once = rule.normalize(&value);
                proptest::prop_assert_eq!(&rule.normalize(&once), &once, "{:?} of {}", rule, value);
            }
        }

        #[test]
        fn a_value_equals_its_normal_form(value in crm_value()) {
            for rule in every_rule() {
                let normal = rule.normalize(&value);
                proptest::prop_assert!(rule.equal(&value, &normal), "{:?}: {} != {}", rule, value, normal);
            }
        }

        #[test]
        fn equality_is_symmetric(left in crm_value(), right in crm_value()) {
            for rule in every_rule() {
                proptest::prop_assert_eq!(rule.equal(&left, &right), rule.equal(&right, &left), "{:?}", rule);
            }
        }
    }

    #[test]
    fn settings_are_checked() {
        assert!(check_region("US").is_ok());
        assert!(check_region("XX").unwrap_err().contains("`XX`"));
        assert_eq!(parse_zone("-05:00").unwrap().whole_hours(), -5);
        assert!(parse_zone("Europe/Paris")
            .unwrap_err()
            .contains("fixed offset"));
        assert!(parse_precision("hour").is_err());
    }
}
