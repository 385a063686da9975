//! Event time: the instant a change happened in the emitting system, at nanosecond precision.
//!
//! tandem orders and ages changes by event time (`occurred_at`), never by the time it happened
//! to read them. Human-readable formats (JSON, the API) carry RFC 3339 strings; compact formats
//! (the store) carry the integer, so a stored row never depends on a text parser.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// An instant in UTC, as nanoseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

/// Why a text could not be read as a [`Timestamp`].
#[derive(Debug, thiserror::Error)]
#[error("`{input}` is not an RFC 3339 time with an offset (e.g. 2026-11-20T08:00:00Z): {reason}")]
pub struct TimestampError {
    input: String,
    reason: String,
}

impl Timestamp {
    /// The earliest representable instant; used as "never" in comparisons.
    pub const MIN: Timestamp = Timestamp(i64::MIN);

    /// The latest representable instant; used as "not yet" in comparisons.
    pub const MAX: Timestamp = Timestamp(i64::MAX);

    /// Builds a timestamp from nanoseconds since the Unix epoch.
    pub const fn from_unix_nanos(nanos: i64) -> Self {
        Timestamp(nanos)
    }

    /// Nanoseconds since the Unix epoch.
    pub const fn unix_nanos(self) -> i64 {
        self.0
    }

    /// Milliseconds since the Unix epoch, rounded towards negative infinity.
    pub const fn unix_millis(self) -> i64 {
        self.0.div_euclid(1_000_000)
    }

    /// Builds a timestamp from milliseconds since the Unix epoch, saturating at the range ends.
    pub const fn from_unix_millis(millis: i64) -> Self {
        Timestamp(millis.saturating_mul(1_000_000))
    }

    /// Reads an RFC 3339 time, such as `2026-11-20T08:00:00.123+01:00`.
    pub fn parse_rfc3339(input: &str) -> Result<Self, TimestampError> {
        let parsed = OffsetDateTime::parse(input, &Rfc3339).map_err(|error| TimestampError {
            input: input.to_owned(),
            reason: error.to_string(),
        })?;
        let nanos = i64::try_from(parsed.unix_timestamp_nanos()).map_err(|_| TimestampError {
            input: input.to_owned(),
            reason: "outside the years 1677 to 2262".to_owned(),
        })?;
        Ok(Timestamp(nanos))
    }

    /// Reads an RFC 3339 time as a bound: a time before 1677 or after 2262 is the earliest or
    /// the latest time there is, which bounds every event the same way.
    pub fn parse_rfc3339_saturating(input: &str) -> Result<Self, TimestampError> {
        let parsed = OffsetDateTime::parse(input, &Rfc3339).map_err(|error| TimestampError {
            input: input.to_owned(),
            reason: error.to_string(),
        })?;
        let nanos = parsed.unix_timestamp_nanos();
        Ok(Timestamp(i64::try_from(nanos).unwrap_or(if nanos < 0 {
            i64::MIN
        } else {
            i64::MAX
        })))
    }

    /// Formats as RFC 3339 in UTC (`Z`), with only as many fractional digits as needed.
    pub fn to_rfc3339(self) -> String {
        let datetime = OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0))
            .expect("invariant: every i64 nanosecond count is within time's supported range");
        datetime
            .format(&Rfc3339)
            .expect("invariant: a UTC datetime in years 1677..2262 always formats as RFC 3339")
    }

    /// This instant moved forward by `duration`, saturating at the end of the range.
    pub fn saturating_add(self, duration: Duration) -> Self {
        let nanos = i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_add(nanos))
    }

    /// How long after `earlier` this instant is; zero if it is not after it.
    pub fn duration_since(self, earlier: Timestamp) -> Duration {
        let nanos = self.0.saturating_sub(earlier.0);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(0))
    }

    /// Converts a wall-clock reading, saturating at the range ends.
    pub fn from_system_time(system_time: std::time::SystemTime) -> Self {
        match system_time.duration_since(std::time::UNIX_EPOCH) {
            Ok(after) => Timestamp(i64::try_from(after.as_nanos()).unwrap_or(i64::MAX)),
            Err(before) => Timestamp(
                i64::try_from(before.duration().as_nanos())
                    .map(|nanos| -nanos)
                    .unwrap_or(i64::MIN),
            ),
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.to_rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.serialize_str(&self.to_rfc3339())
        } else {
            serializer.serialize_i64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TimestampVisitor;

        impl Visitor<'_> for TimestampVisitor {
            type Value = Timestamp;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("an RFC 3339 time string")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<Timestamp, E> {
                Timestamp::parse_rfc3339(value).map_err(E::custom)
            }

            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Timestamp, E> {
                Ok(Timestamp(value))
            }

            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Timestamp, E> {
                i64::try_from(value)
                    .map(Timestamp)
                    .map_err(|_| E::custom("timestamp out of range"))
            }
        }

        if deserializer.is_human_readable() {
            deserializer.deserialize_str(TimestampVisitor)
        } else {
            deserializer.deserialize_i64(TimestampVisitor)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_offsets_into_utc() {
        let with_offset = Timestamp::parse_rfc3339("2026-11-20T09:00:00+01:00").unwrap();
        let utc = Timestamp::parse_rfc3339("2026-11-20T08:00:00Z").unwrap();
        assert_eq!(with_offset, utc);
        // 2026-11-20T08:00:00Z is 1_795_161_600 seconds after the epoch (worked out with `date -d`).
        assert_eq!(utc.unix_nanos(), 1_795_161_600 * 1_000_000_000);
        assert_eq!(utc.to_rfc3339(), "2026-11-20T08:00:00Z");
    }

    #[test]
    fn keeps_fractional_seconds() {
        let parsed = Timestamp::parse_rfc3339("2026-11-20T08:00:00.000000123Z").unwrap();
        assert_eq!(parsed.unix_nanos() % 1_000_000_000, 123);
        assert_eq!(parsed.to_rfc3339(), "2026-11-20T08:00:00.000000123Z");
    }

    #[test]
    fn rejects_times_without_offset() {
        let error = Timestamp::parse_rfc3339("2026-11-20 08:00:00").unwrap_err();
        assert!(error.to_string().contains("2026-11-20 08:00:00"));
    }

    #[test]
    fn durations_saturate_instead_of_wrapping() {
        let start = Timestamp::from_unix_nanos(1_000);
        assert_eq!(
            Timestamp::from_unix_nanos(500).duration_since(start),
            Duration::ZERO
        );
        assert_eq!(
            start.saturating_add(Duration::from_secs(1)).unix_nanos(),
            1_000_001_000
        );
        assert_eq!(
            Timestamp::from_unix_nanos(i64::MAX - 1).saturating_add(Duration::from_secs(1)),
            Timestamp::from_unix_nanos(i64::MAX)
        );
    }
}
