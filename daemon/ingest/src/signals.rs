//! tandem's requests as Debezium signals, for a system whose connector is Debezium.
//!
//! Debezium reads signals from a Kafka topic (`signal.enabled.channels` with `kafka`,
//! `signal.kafka.topic`); the message key is the connector's logical name (`topic.prefix`).
//! A re-read of some records becomes an incremental snapshot of their table restricted to
//! their keys (`additional-conditions`): Debezium sends their current rows as full images. A
//! snapshot request becomes a blocking snapshot of the table: Debezium pauses streaming, reads
//! every row, and ends each table's scan with a notification that tandem reads as the run's
//! end (`schemas/formats/debezium.md`).
//!
//! The keys come from the CRM's data, so they are written into the filter only as integers or
//! as SQL string literals with their quotes doubled; a key holding a control character is
//! refused.

use std::collections::BTreeMap;

use serde_json::json;

/// Where and how one system's Debezium connector takes signals.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DebeziumSignals {
    /// The connector's signal topic (`signal.kafka.topic`).
    pub topic: String,
    /// The connector's logical name (`topic.prefix`): the key of every signal.
    pub connector: String,
    /// Per tandem entity, the data collection (`schema.table`) its records come from.
    pub collections: BTreeMap<String, String>,
    /// The key column of those tables (the native id tandem reads from the message key).
    pub key_column: String,
}

/// Why a request cannot be written as a signal.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SignalError {
    /// The entity has no data collection under `collections`.
    #[error("entity {0} has no data collection under debezium.collections")]
    NoCollection(String),
    /// A key that cannot be written safely into a SQL filter.
    #[error("the key {0:?} holds a control character and cannot be put in a signal's filter")]
    UnsafeKey(String),
}

impl DebeziumSignals {
    /// An incremental snapshot of `ids` of `entity`'s table.
    pub(crate) fn reread(&self, entity: &str, ids: &[&str]) -> Result<Vec<u8>, SignalError> {
        let collection = self.collection(entity)?;
        let values = ids
            .iter()
            .map(|id| sql_value(id).ok_or_else(|| SignalError::UnsafeKey((*id).to_owned())))
            .collect::<Result<Vec<_>, _>>()?;
        let filter = format!(
            "\"{}\" IN ({})",
            self.key_column.replace('"', "\"\""),
            values.join(", ")
        );
        Ok(json!({
            "type": "execute-snapshot",
            "data": {
                "data-collections": [collection],
                "type": "INCREMENTAL",
                "additional-conditions": [{"data-collection": collection, "filter": filter}]
            }
        })
        .to_string()
        .into_bytes())
    }

    /// A blocking snapshot of `entity`'s table.
    pub(crate) fn snapshot(&self, entity: &str) -> Result<Vec<u8>, SignalError> {
        let collection = self.collection(entity)?;
        Ok(json!({
            "type": "execute-snapshot",
            "data": {"data-collections": [collection], "type": "BLOCKING"}
        })
        .to_string()
        .into_bytes())
    }

    fn collection(&self, entity: &str) -> Result<&str, SignalError> {
        self.collections
            .get(entity)
            .map(String::as_str)
            .ok_or_else(|| SignalError::NoCollection(entity.to_owned()))
    }
}

/// A key as a SQL value: an integer as it is, anything else as a string literal; `None` for a
/// key with a control character.
fn sql_value(id: &str) -> Option<String> {
    let digits = id.strip_prefix('-').unwrap_or(id);
    if !digits.is_empty() && digits.len() <= 18 && digits.bytes().all(|byte| byte.is_ascii_digit())
    {
        return Some(id.to_owned());
    }
    if id.chars().any(char::is_control) {
        return None;
    }
    Some(format!("'{}'", id.replace('\'', "''")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signals() -> DebeziumSignals {
        DebeziumSignals {
            topic: "legacy.signals".to_owned(),
            connector: "legacy".to_owned(),
            collections: BTreeMap::from([("contact".to_owned(), "public.contacts".to_owned())]),
            key_column: "id".to_owned(),
        }
    }

    fn parsed(bytes: Vec<u8>) -> serde_json::Value {
        serde_json::from_slice(&bytes).unwrap()
    }

    /// The shapes of Debezium's documentation for the Kafka signal channel.
    #[test]
    fn a_reread_is_an_incremental_snapshot_of_exactly_those_keys() {
        let signal = parsed(
            signals()
                .reread("contact", &["7", "-12", "O'Brien-3"])
                .unwrap(),
        );
        assert_eq!(
            signal,
            json!({"type": "execute-snapshot", "data": {
                "data-collections": ["public.contacts"], "type": "INCREMENTAL",
                "additional-conditions": [{"data-collection": "public.contacts",
                    "filter": "\"id\" IN (7, -12, 'O''Brien-3')"}]}})
        );
        let snapshot = parsed(signals().snapshot("contact").unwrap());
        assert_eq!(
            snapshot,
            json!({"type": "execute-snapshot", "data": {
                "data-collections": ["public.contacts"], "type": "BLOCKING"}})
        );
    }

    #[test]
    fn keys_that_could_break_out_of_the_filter_are_quoted_or_refused() {
        // An injection attempt stays one string literal.
        let signal = parsed(signals().reread("contact", &["1) OR (1=1"]).unwrap());
        assert_eq!(
            signal["data"]["additional-conditions"][0]["filter"],
            json!("\"id\" IN ('1) OR (1=1')")
        );
        let quoted = parsed(
            signals()
                .reread("contact", &["x'; DROP TABLE contacts; --"])
                .unwrap(),
        );
        assert_eq!(
            quoted["data"]["additional-conditions"][0]["filter"],
            json!("\"id\" IN ('x''; DROP TABLE contacts; --')")
        );
        assert_eq!(
            signals().reread("contact", &["a\nb"]),
            Err(SignalError::UnsafeKey("a\nb".to_owned()))
        );
        assert_eq!(
            signals().snapshot("deal"),
            Err(SignalError::NoCollection("deal".to_owned()))
        );
        // A number too long for a bigint is compared as text.
        assert_eq!(
            sql_value("1234567890123456789012"),
            Some("'1234567890123456789012'".to_owned())
        );
    }
}
