//! Small readers shared by the vendor decoders. Each names the path of the part at fault, so a
//! dead letter says exactly what was missing or unexpected.

use serde_json::{Map, Value};

use tandem_core::Timestamp;

/// A JSON object, or an error naming `path`.
pub(super) fn object<'a>(value: &'a Value, path: &str) -> Result<&'a Map<String, Value>, String> {
    value
        .as_object()
        .ok_or_else(|| format!("`{path}` is {}, expected an object", kind(value)))
}

/// A required member of an object (present and not null).
pub(super) fn required<'a>(
    map: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<&'a Value, String> {
    match map.get(key) {
        None | Some(Value::Null) => Err(format!("`{path}.{key}` is missing")),
        Some(value) => Ok(value),
    }
}

/// An optional member: absent and null are both `None`.
pub(super) fn optional<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    map.get(key).filter(|value| !value.is_null())
}

/// A required string member.
pub(super) fn string(map: &Map<String, Value>, key: &str, path: &str) -> Result<String, String> {
    match required(map, key, path)? {
        Value::String(text) => Ok(text.clone()),
        other => Err(format!(
            "`{path}.{key}` is {}, expected a string",
            kind(other)
        )),
    }
}

/// An optional string member; present but not a string is an error.
pub(super) fn optional_string(
    map: &Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<String>, String> {
    match optional(map, key) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(other) => Err(format!(
            "`{path}.{key}` is {}, expected a string",
            kind(other)
        )),
    }
}

/// An identifier given as a string or an integer, as a string.
pub(super) fn id_text(value: &Value, path: &str) -> Result<String, String> {
    match value {
        Value::String(text) if !text.trim().is_empty() => Ok(text.clone()),
        Value::String(_) => Err(format!("`{path}` is an empty string, expected an id")),
        Value::Number(number) if number.is_u64() || number.is_i64() => Ok(number.to_string()),
        other => Err(format!(
            "`{path}` is {}, expected a string or integer id",
            kind(other)
        )),
    }
}

/// A required identifier member (string or integer).
pub(super) fn id(map: &Map<String, Value>, key: &str, path: &str) -> Result<String, String> {
    id_text(required(map, key, path)?, &format!("{path}.{key}"))
}

/// An optional identifier member (string or integer).
pub(super) fn optional_id(
    map: &Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<String>, String> {
    optional(map, key)
        .map(|value| id_text(value, &format!("{path}.{key}")))
        .transpose()
}

/// A non-negative integer, also accepted as a decimal string (some vendors quote numbers).
pub(super) fn unsigned(value: &Value, path: &str) -> Result<u64, String> {
    match value {
        Value::Number(number) => number
            .as_u64()
            .ok_or_else(|| format!("`{path}` is {number}, expected a non-negative integer")),
        Value::String(text) => text
            .parse()
            .map_err(|_| format!("`{path}` is \"{text}\", expected a non-negative integer")),
        other => Err(format!("`{path}` is {}, expected an integer", kind(other))),
    }
}

/// Milliseconds since the Unix epoch, as a number or a decimal string.
pub(super) fn epoch_millis(value: &Value, path: &str) -> Result<Timestamp, String> {
    let millis = match value {
        Value::Number(number) => number.as_i64(),
        Value::String(text) => text.parse().ok(),
        _ => None,
    }
    .ok_or_else(|| {
        format!(
            "`{path}` is {}, expected milliseconds since the epoch",
            kind(value)
        )
    })?;
    // Beyond ±292 years the nanosecond clock overflows; no CRM event is that far out.
    if !(-9_000_000_000_000..=9_000_000_000_000).contains(&millis) {
        return Err(format!(
            "`{path}` ({millis}) is not a plausible time in milliseconds"
        ));
    }
    Ok(Timestamp::from_unix_millis(millis))
}

/// An RFC 3339 date-time string.
pub(super) fn rfc3339(value: &Value, path: &str) -> Result<Timestamp, String> {
    match value {
        Value::String(text) => Timestamp::parse_rfc3339(text)
            .map_err(|error| format!("`{path}` is \"{text}\", not an RFC 3339 time: {error}")),
        other => Err(format!(
            "`{path}` is {}, expected an RFC 3339 time string",
            kind(other)
        )),
    }
}

/// How a JSON value is described in errors.
pub(super) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
