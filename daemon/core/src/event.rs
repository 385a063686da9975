//! The canonical change event `tandem.change.v1` and its decoder.
//!
//! Every input format ends up as a [`ChangeEvent`]. Decoding never panics: a payload that is
//! empty, too large, not UTF-8, not JSON, or not a valid event becomes a [`DecodeError`] whose
//! [`DeadLetterReason`] is the label counted in the report and sent with the dead letter.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::time::Timestamp;

/// The field values of a record image: field name to JSON value.
pub type Fields = BTreeMap<String, Value>;

/// The name of the canonical format, as used in configuration and headers.
pub const CANONICAL_FORMAT: &str = "tandem.change.v1";

/// What happened to the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// The record was created.
    Create,
    /// The record changed; `fields` holds the full image, or only the changes if `partial`.
    Update,
    /// The record was deleted.
    Delete,
    /// A deleted record was restored.
    Undelete,
    /// The record was merged into `merged_into` and no longer exists on its own.
    Merge,
    /// A full image read by a snapshot run, not a change.
    Snapshot,
    /// The emitting feed lost changes to this record.
    Gap,
    /// The end of a snapshot run: `snapshot_id` and the number of `records` it sent.
    SnapshotEnd,
    /// The end of a source transaction: `transaction_id` and how many events (`records`) of
    /// `entity` it holds. Fewer seen once grace has passed means events were lost.
    TransactionEnd,
}

impl Op {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Undelete => "undelete",
            Op::Merge => "merge",
            Op::Snapshot => "snapshot",
            Op::Gap => "gap",
            Op::SnapshotEnd => "snapshot_end",
            Op::TransactionEnd => "transaction_end",
        }
    }
}

/// Who made a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    /// A person using the system.
    User,
    /// An integration (email marketing, billing, forms, ...).
    Integration,
    /// The sync layer that copies the owner's changes across.
    Sync,
    /// The repair team's batch jobs.
    Repair,
    /// The system itself (automations, workflows).
    System,
}

/// The writer of a change, as reported by the emitting system.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// What kind of writer it is.
    pub kind: ActorKind,
    /// The writer's identity within its kind, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The ownership epoch the writer was given (from `/v1/ownership/permit`); a write with an
    /// epoch older than the entity's current one is a `fenced_write`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}

/// One change to one record in one system.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChangeEvent {
    /// Unique id of this event; a repeated id is a re-delivery and is dropped.
    pub event_id: String,
    /// Object type: `contact`, `company`, `deal`, ...
    pub entity: String,
    /// The record's native id in the emitting system (empty for `snapshot_end`, and for a
    /// `gap` that cannot name the records it lost: every record of the entity on that
    /// partition becomes unverified and the entity needs a snapshot).
    #[serde(
        default,
        deserialize_with = "string_or_integer",
        skip_serializing_if = "String::is_empty"
    )]
    pub id: String,
    /// What happened.
    pub op: Op,
    /// When it happened in the emitting system.
    pub occurred_at: Timestamp,
    /// The immutable join key carried by the record, if the system has one.
    #[serde(
        default,
        deserialize_with = "optional_string_or_integer",
        skip_serializing_if = "Option::is_none"
    )]
    pub external_id: Option<String>,
    /// Field values after the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<Fields>,
    /// Whether `fields` holds only the changed fields.
    #[serde(default, deserialize_with = "bool_or_null")]
    pub partial: bool,
    /// Per-record version; an older version never overwrites newer state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Per-stream sequence number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Who made the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<Actor>,
    /// For `merge`: the native id of the surviving record.
    #[serde(
        default,
        deserialize_with = "optional_string_or_integer",
        skip_serializing_if = "Option::is_none"
    )]
    pub merged_into: Option<String>,
    /// For `snapshot` and `snapshot_end`: the snapshot run the image belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// For `snapshot_end`: how many records the run sent; for `transaction_end`: how many
    /// events of the entity the transaction holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<u64>,
    /// The source transaction the change belongs to, if the feed says (Debezium's
    /// `transaction.id`); counted against the transaction's `transaction_end`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_id: Option<String>,
    /// The format of the event, if the producer names it; only `tandem.change.v1` is read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
}

/// Why a message could not become a change event; the label used in counts and headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterReason {
    /// The message had no value, or an empty one.
    Empty,
    /// The value is larger than the configured limit.
    TooLarge,
    /// The value is not valid UTF-8.
    InvalidUtf8,
    /// The value is not well-formed JSON.
    InvalidJson,
    /// The value is JSON but not a valid change event.
    SchemaViolation,
    /// The event names a format version this tandem does not read.
    UnsupportedSchema,
}

impl DeadLetterReason {
    /// Every reason, in a stable order.
    pub const ALL: [DeadLetterReason; 6] = [
        DeadLetterReason::Empty,
        DeadLetterReason::TooLarge,
        DeadLetterReason::InvalidUtf8,
        DeadLetterReason::InvalidJson,
        DeadLetterReason::SchemaViolation,
        DeadLetterReason::UnsupportedSchema,
    ];

    /// The label used in the report, metrics and dead-letter headers.
    pub const fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::Empty => "empty",
            DeadLetterReason::TooLarge => "too_large",
            DeadLetterReason::InvalidUtf8 => "invalid_utf8",
            DeadLetterReason::InvalidJson => "invalid_json",
            DeadLetterReason::SchemaViolation => "schema_violation",
            DeadLetterReason::UnsupportedSchema => "unsupported_schema",
        }
    }
}

impl fmt::Display for DeadLetterReason {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// A message that is not a valid change event, with a human-readable explanation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct DecodeError {
    /// The counted label.
    pub reason: DeadLetterReason,
    /// What exactly is wrong, for the operator reading the dead letter.
    pub detail: String,
}

impl DecodeError {
    pub fn new(reason: DeadLetterReason, detail: impl Into<String>) -> Self {
        DecodeError {
            reason,
            detail: detail.into(),
        }
    }
}

/// Decodes one Kafka message value in the canonical format.
///
/// `max_bytes` is the size limit; larger values are rejected before any parsing.
pub fn decode(payload: Option<&[u8]>, max_bytes: usize) -> Result<ChangeEvent, DecodeError> {
    let bytes = match payload {
        None => {
            return Err(DecodeError::new(
                DeadLetterReason::Empty,
                "the message has no value (null or tombstone)",
            ))
        }
        Some(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => {
            return Err(DecodeError::new(
                DeadLetterReason::Empty,
                "the message value is empty",
            ))
        }
        Some(bytes) => bytes,
    };
    if bytes.len() > max_bytes {
        return Err(DecodeError::new(
            DeadLetterReason::TooLarge,
            format!(
                "the message value is {} bytes, over the limit of {max_bytes} bytes (kafka.max_message_bytes)",
                bytes.len()
            ),
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|error| {
        DecodeError::new(
            DeadLetterReason::InvalidUtf8,
            format!("the message value is not UTF-8: {error}"),
        )
    })?;
    // serde would also fill the struct from a JSON array by position; the contract is an object.
    if !text.trim_start().starts_with('{') {
        return Err(match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => DecodeError::new(
                DeadLetterReason::SchemaViolation,
                format!("not a {CANONICAL_FORMAT} event: the value is not a JSON object"),
            ),
            Err(error) => classify_json_error(text, error),
        });
    }
    let event: ChangeEvent = match serde_json::from_str(text) {
        Ok(event) => event,
        Err(error) => return Err(classify_json_error(text, error)),
    };
    validate(&event)?;
    Ok(event)
}

/// Turns a serde error into a reason, naming the field at fault when the JSON was well formed.
fn classify_json_error(text: &str, error: serde_json::Error) -> DecodeError {
    use serde_json::error::Category;
    match error.classify() {
        Category::Syntax | Category::Eof | Category::Io => DecodeError::new(
            DeadLetterReason::InvalidJson,
            format!("not well-formed JSON: {error}"),
        ),
        Category::Data => {
            // Decode again with path tracking to name the offending field; this costs nothing on
            // the valid path, which is the only one that has to be fast.
            let deserializer = &mut serde_json::Deserializer::from_str(text);
            let detail = match serde_path_to_error::deserialize::<_, ChangeEvent>(deserializer) {
                Err(tracked) if tracked.path().to_string() != "." => {
                    format!("field `{}`: {}", tracked.path(), tracked.inner())
                }
                _ => error.to_string(),
            };
            DecodeError::new(
                DeadLetterReason::SchemaViolation,
                format!("not a {CANONICAL_FORMAT} event: {detail}"),
            )
        }
    }
}

/// The rules serde cannot express; every decoded event, whatever its format, passes them.
pub fn validate(event: &ChangeEvent) -> Result<(), DecodeError> {
    let schema_error = |detail: String| {
        Err(DecodeError::new(
            DeadLetterReason::SchemaViolation,
            format!("not a {CANONICAL_FORMAT} event: {detail}"),
        ))
    };
    if let Some(schema) = event
        .schema
        .as_deref()
        .filter(|schema| *schema != CANONICAL_FORMAT)
    {
        return Err(DecodeError::new(
            DeadLetterReason::UnsupportedSchema,
            format!("the event is in format `{schema}`; this tandem reads `{CANONICAL_FORMAT}`: upgrade tandem or have the producer emit {CANONICAL_FORMAT}"),
        ));
    }
    for (name, value) in [("event_id", &event.event_id), ("entity", &event.entity)] {
        if value.trim().is_empty() {
            return schema_error(format!("field `{name}` must not be empty"));
        }
    }
    // A `gap` without an id says the feed lost changes to records it cannot name.
    if !matches!(event.op, Op::SnapshotEnd | Op::TransactionEnd | Op::Gap)
        && event.id.trim().is_empty()
    {
        return schema_error("field `id` is required and must not be empty".to_owned());
    }
    if matches!(event.op, Op::SnapshotEnd)
        && (event.snapshot_id.is_none() || event.records.is_none())
    {
        return schema_error("a `snapshot_end` event needs `snapshot_id` and `records`".to_owned());
    }
    if event.op == Op::TransactionEnd
        && (event.transaction_id.as_deref().is_none_or(str::is_empty) || event.records.is_none())
    {
        return schema_error(
            "a `transaction_end` event needs `transaction_id` and `records`".to_owned(),
        );
    }
    if event.op == Op::Merge && event.merged_into.as_deref().is_none_or(str::is_empty) {
        return schema_error("a `merge` event needs `merged_into`".to_owned());
    }
    if event.partial && event.fields.is_none() && matches!(event.op, Op::Update) {
        return schema_error("a partial `update` needs `fields`".to_owned());
    }
    Ok(())
}

/// Accepts a JSON string or integer as a string: many systems use numeric ids.
struct StringOrIntegerVisitor;

impl<'de> serde::de::Visitor<'de> for StringOrIntegerVisitor {
    type Value = Option<String>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a string or an integer")
    }

    fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Self::Value, E> {
        Ok(Some(value.to_owned()))
    }

    fn visit_string<E: serde::de::Error>(self, value: String) -> Result<Self::Value, E> {
        Ok(Some(value))
    }

    fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Self::Value, E> {
        Ok(Some(value.to_string()))
    }

    fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<Self::Value, E> {
        Ok(Some(value.to_string()))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

fn string_or_integer<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    deserializer
        .deserialize_any(StringOrIntegerVisitor)?
        .ok_or_else(|| serde::de::Error::custom("expected a string or an integer, found null"))
}

fn optional_string_or_integer<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    deserializer.deserialize_any(StringOrIntegerVisitor)
}

fn bool_or_null<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(deserializer)?.unwrap_or(false))
}

/// Parses an actor as written in configuration: `sync`, `repair`, `user`, `system`,
/// `integration`, optionally followed by `:<id>` (`integration:mailchimp`, `user:42`).
pub fn parse_actor(text: &str) -> Result<Actor, String> {
    let (kind, id) = match text.split_once(':') {
        Some((kind, id)) if !id.trim().is_empty() => (kind, Some(id.trim().to_owned())),
        Some(_) => return Err(format!("actor `{text}` has an empty id after `:`")),
        None => (text, None),
    };
    let kind = match kind.trim() {
        "sync" => ActorKind::Sync,
        "repair" => ActorKind::Repair,
        "user" => ActorKind::User,
        "system" => ActorKind::System,
        "integration" => ActorKind::Integration,
        other => {
            return Err(format!(
                "actor kind `{other}` is not one of sync, repair, user, system, integration"
            ))
        }
    };
    Ok(Actor {
        kind,
        id,
        epoch: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 1024 * 1024;

    fn decode_text(text: &str) -> Result<ChangeEvent, DecodeError> {
        decode(Some(text.as_bytes()), LIMIT)
    }

    #[test]
    fn decodes_a_full_event() {
        let event = decode_text(
            r#"{"event_id":"e-1","entity":"contact","id":"003A","op":"update",
                "occurred_at":"2026-11-20T08:00:00Z","external_id":"L-9",
                "fields":{"Email":"a@example.com","Age":41},"partial":true,"version":3,"seq":17,
                "actor":{"kind":"integration","id":"mailchimp"},"future_field":{"x":1}}"#,
        )
        .unwrap();
        assert_eq!(event.event_id, "e-1");
        assert_eq!(event.op, Op::Update);
        assert_eq!(event.external_id.as_deref(), Some("L-9"));
        assert!(event.partial);
        assert_eq!(event.version, Some(3));
        assert_eq!(
            event.actor,
            Some(Actor {
                kind: ActorKind::Integration,
                id: Some("mailchimp".to_owned()),
                epoch: None,
            })
        );
        let fields = event.fields.unwrap();
        assert_eq!(fields["Email"], Value::from("a@example.com"));
        assert_eq!(fields["Age"], Value::from(41));
    }

    #[test]
    fn integer_ids_become_strings() {
        let event = decode_text(
            r#"{"event_id":"e","entity":"ticket","id":4711,"op":"delete","occurred_at":"2026-11-20T08:00:00Z","external_id":12}"#,
        )
        .unwrap();
        assert_eq!(event.id, "4711");
        assert_eq!(event.external_id.as_deref(), Some("12"));
        assert_eq!(event.fields, None);
        assert!(!event.partial);
    }

    #[test]
    fn each_kind_of_bad_input_has_its_reason() {
        let cases: [(Option<&[u8]>, DeadLetterReason); 9] = [
            (None, DeadLetterReason::Empty),
            (Some(b"   "), DeadLetterReason::Empty),
            (Some(b"{\"event_id\": \xff}"), DeadLetterReason::InvalidUtf8),
            (Some(b"{\"event_id\": "), DeadLetterReason::InvalidJson),
            (Some(b"not json"), DeadLetterReason::InvalidJson),
            (Some(b"[1,2]"), DeadLetterReason::SchemaViolation),
            (
                Some(br#"["e-1","contact","1","create","2026-11-20T08:00:00Z"]"#),
                DeadLetterReason::SchemaViolation,
            ),
            (Some(b"[1,"), DeadLetterReason::InvalidJson),
            (Some(b"null"), DeadLetterReason::SchemaViolation),
        ];
        for (payload, expected) in cases {
            let error = decode(payload, LIMIT).unwrap_err();
            assert_eq!(error.reason, expected, "payload {payload:?}: {error}");
        }
    }

    #[test]
    fn schema_violations_name_the_field() {
        let missing_op = decode_text(
            r#"{"event_id":"e","entity":"contact","id":"1","occurred_at":"2026-11-20T08:00:00Z"}"#,
        )
        .unwrap_err();
        assert_eq!(missing_op.reason, DeadLetterReason::SchemaViolation);
        assert!(
            missing_op.detail.contains("missing field `op`"),
            "{missing_op}"
        );

        let unknown_op = decode_text(
            r#"{"event_id":"e","entity":"contact","id":"1","op":"upsert","occurred_at":"2026-11-20T08:00:00Z"}"#,
        )
        .unwrap_err();
        assert!(unknown_op.detail.contains("field `op`"), "{unknown_op}");
        assert!(unknown_op.detail.contains("upsert"), "{unknown_op}");

        let bad_time = decode_text(
            r#"{"event_id":"e","entity":"contact","id":"1","op":"create","occurred_at":"yesterday"}"#,
        )
        .unwrap_err();
        assert!(
            bad_time.detail.contains("field `occurred_at`"),
            "{bad_time}"
        );

        let bad_actor = decode_text(
            r#"{"event_id":"e","entity":"contact","id":"1","op":"create","occurred_at":"2026-11-20T08:00:00Z","actor":{"kind":"robot"}}"#,
        )
        .unwrap_err();
        assert!(
            bad_actor.detail.contains("field `actor.kind`"),
            "{bad_actor}"
        );

        let null_id = decode_text(
            r#"{"event_id":"e","entity":"contact","id":null,"op":"create","occurred_at":"2026-11-20T08:00:00Z"}"#,
        )
        .unwrap_err();
        assert!(null_id.detail.contains("field `id`"), "{null_id}");

        let empty_event_id = decode_text(
            r#"{"event_id":" ","entity":"contact","id":"1","op":"create","occurred_at":"2026-11-20T08:00:00Z"}"#,
        )
        .unwrap_err();
        assert!(empty_event_id
            .detail
            .contains("`event_id` must not be empty"));

        let merge_without_survivor = decode_text(
            r#"{"event_id":"e","entity":"contact","id":"1","op":"merge","occurred_at":"2026-11-20T08:00:00Z"}"#,
        )
        .unwrap_err();
        assert!(merge_without_survivor.detail.contains("merged_into"));
    }

    #[test]
    fn a_future_format_is_refused_with_its_own_reason() {
        let future = decode_text(
            r#"{"schema":"tandem.change.v2","event_id":"e","entity":"contact","id":"1","op":"create","occurred_at":"2026-11-20T08:00:00Z"}"#,
        )
        .unwrap_err();
        assert_eq!(future.reason, DeadLetterReason::UnsupportedSchema);
        assert!(future.detail.contains("tandem.change.v2"), "{future}");
        let current = decode_text(
            r#"{"schema":"tandem.change.v1","event_id":"e","entity":"contact","id":"1","op":"create","occurred_at":"2026-11-20T08:00:00Z"}"#,
        );
        assert!(current.is_ok());
    }

    #[test]
    fn snapshot_end_needs_its_run_and_count_but_no_id() {
        let end = decode_text(
            r#"{"event_id":"e","entity":"contact","op":"snapshot_end","snapshot_id":"r1","records":20,"occurred_at":"2026-11-20T08:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(
            (end.op, end.records, end.id.as_str()),
            (Op::SnapshotEnd, Some(20), "")
        );
        let without_count = decode_text(
            r#"{"event_id":"e","entity":"contact","op":"snapshot_end","snapshot_id":"r1","occurred_at":"2026-11-20T08:00:00Z"}"#,
        )
        .unwrap_err();
        assert!(without_count.detail.contains("records"), "{without_count}");
        let update_without_id = decode_text(
            r#"{"event_id":"e","entity":"contact","op":"update","occurred_at":"2026-11-20T08:00:00Z"}"#,
        )
        .unwrap_err();
        assert!(
            update_without_id.detail.contains("field `id`"),
            "{update_without_id}"
        );
    }

    #[test]
    fn oversized_messages_are_rejected_before_parsing() {
        let error = decode(Some(&[b'{'; 100]), 99).unwrap_err();
        assert_eq!(error.reason, DeadLetterReason::TooLarge);
        assert!(error.detail.contains("100 bytes"));
    }

    #[test]
    fn null_optional_fields_are_absent() {
        let event = decode_text(
            r#"{"event_id":"e","entity":"contact","id":"1","op":"create","occurred_at":"2026-11-20T08:00:00Z",
                "external_id":null,"fields":null,"partial":null,"version":null,"actor":null}"#,
        )
        .unwrap();
        assert_eq!(event.external_id, None);
        assert_eq!(event.fields, None);
        assert!(!event.partial);
    }
}
