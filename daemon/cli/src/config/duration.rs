//! Durations in the configuration: `"5m"`, `"90s"`, `"1h 30m"`, as humantime reads them. The
//! errors are written here whole (a number without its unit says which unit to add), so the
//! key's error is passed on as it is, never read back from text.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};

pub(super) fn serialize<S: Serializer>(
    duration: &Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&humantime::format_duration(*duration))
}

pub(super) fn deserialize<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Duration, D::Error> {
    deserializer.deserialize_any(DurationVisitor)
}

struct DurationVisitor;

/// A number given without its unit.
fn no_unit<E: de::Error>(number: impl fmt::Display) -> E {
    E::custom(format!(
        "{number} has no unit: write a duration such as \"{number}s\" or \"{number}m\""
    ))
}

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a duration such as \"5m\", \"90s\" or \"1h 30m\"")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
        let trimmed = text.trim();
        if !trimmed.is_empty() && trimmed.chars().all(|c| c.is_ascii_digit() || c == '.') {
            return Err(no_unit(trimmed));
        }
        humantime::parse_duration(trimmed).map_err(|error| {
            E::custom(format!(
                "`{text}` is not a duration ({error}): write one such as \"5m\", \"90s\" or \"1h 30m\""
            ))
        })
    }

    fn visit_u64<E: de::Error>(self, number: u64) -> Result<Duration, E> {
        Err(no_unit(number))
    }

    fn visit_i64<E: de::Error>(self, number: i64) -> Result<Duration, E> {
        Err(no_unit(number))
    }

    fn visit_f64<E: de::Error>(self, number: f64) -> Result<Duration, E> {
        Err(no_unit(number))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::value::{Error, U64Deserializer};
    use serde::de::IntoDeserializer;

    #[test]
    fn durations_read_as_humantime_and_a_bare_number_asks_for_its_unit() {
        let read = |text: &str| deserialize(IntoDeserializer::<Error>::into_deserializer(text));
        assert_eq!(read("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(read("90s"), Ok(Duration::from_secs(90)));
        let error = read("5").unwrap_err().to_string();
        assert_eq!(
            error,
            "5 has no unit: write a duration such as \"5s\" or \"5m\""
        );
        assert!(read("5 parsecs")
            .unwrap_err()
            .to_string()
            .contains("is not a duration"));
        let number: U64Deserializer<Error> = 5_u64.into_deserializer();
        assert!(deserialize(number)
            .unwrap_err()
            .to_string()
            .contains("has no unit"));
    }
}
