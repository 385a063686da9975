//! Debezium change events, as written by Kafka Connect's JSON converter.
//!
//! A value is the Debezium envelope (`op`, `before`, `after`, `source`, `ts_ms`,
//! `transaction`), either bare (`schemas.enable=false`) or wrapped as
//! `{"schema": {...}, "payload": <envelope>}`. The Kafka message key holds the row's primary key
//! columns, with or without the same wrapper; it is the record's native id. One message is one
//! row change, so a message yields at most one canonical event.
//!
//! - `c` create, `u` update, `r` read (a snapshot image): `after` is the row's full image, except
//!   that a column Debezium could not read (PostgreSQL unchanged TOAST values, Oracle LOBs) holds
//!   the placeholder `__debezium_unavailable_value`: such columns are left out and the image is
//!   marked partial.
//! - `d` delete: no fields; `before` is not used.
//! - `t` truncate: the whole table was emptied and the rows cannot be named, so it becomes a `gap`
//!   without id for the table's entity: every record of it becomes unverified and a snapshot is
//!   requested.
//! - `m` (a PostgreSQL logical decoding message) and transaction `BEGIN` / `END` markers carry no
//!   row change and are skipped. A tombstone (null value) is skipped by the framework.
//!
//! The event id is built from the connector name, the table and the change's position in the
//! database log (PostgreSQL `lsn`, MySQL `file`/`pos`/`row`, SQL Server `change_lsn`/`commit_lsn`/
//! `event_serial_no`, Oracle `scn`/`commit_scn`/`rs_id`/`ssn`), then the op and the row id, so a
//! re-delivered or re-emitted change keeps its id. `schemas/formats/debezium.md` documents it all.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::support::{self, kind};
use super::FormatSettings;
use tandem_core::event::{ChangeEvent, Fields, Op};
use tandem_core::Timestamp;

/// What Debezium writes for a column value it could not read, with the default
/// `unavailable.value.placeholder`: the text, and the same bytes as a `bytea`/`BLOB` column
/// renders them under `binary.handling.mode` `bytes`/`base64` and `hex`.
const UNAVAILABLE: [&str; 3] = [
    "__debezium_unavailable_value",
    "X19kZWJleml1bV91bmF2YWlsYWJsZV92YWx1ZQ==",
    "5f5f646562657a69756d5f756e617661696c61626c655f76616c7565",
];

/// The `source` members that place a change in the database log, in the order they enter the
/// event id. Only those present are used; at least one must be.
const POSITION: [&str; 11] = [
    // PostgreSQL: the WAL position of the change.
    "lsn",
    // MySQL, MariaDB: binlog file, position of the rows event, row within the event.
    "file",
    "pos",
    "row",
    // SQL Server, Db2, Informix: the change's and its commit's LSN, and its number within them.
    "change_lsn",
    "commit_lsn",
    "event_serial_no",
    // Oracle: the change's and its commit's SCN, and its redo record.
    "scn",
    "commit_scn",
    "rs_id",
    "ssn",
];

/// The row operations, as `op` names them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RowOp {
    Create,
    Update,
    Delete,
    Read,
    Truncate,
}

impl RowOp {
    const fn letter(self) -> &'static str {
        match self {
            RowOp::Create => "c",
            RowOp::Update => "u",
            RowOp::Delete => "d",
            RowOp::Read => "r",
            RowOp::Truncate => "t",
        }
    }
}

/// Decodes one Debezium message: its key (the primary key columns) and its value (the envelope).
pub(super) fn decode(
    settings: &FormatSettings,
    key: Option<&[u8]>,
    value: &Value,
) -> Result<Vec<ChangeEvent>, String> {
    let outer = support::object(value, "value")?;
    // The JSON converter with `schemas.enable=true` wraps the envelope; a bare envelope always
    // has an `op` and never a `payload`.
    let (payload, root) = if outer.contains_key("payload") && !outer.contains_key("op") {
        match outer.get("payload") {
            // A null value written through the wrapper: a tombstone, nothing to apply.
            None | Some(Value::Null) => return Ok(Vec::new()),
            Some(payload) => (support::object(payload, "payload")?, "payload"),
        }
    } else {
        (outer, "value")
    };

    if !payload.contains_key("op") {
        if payload.contains_key("status") {
            return transaction_marker(settings, payload, root);
        }
        if payload.contains_key("aggregate_type") {
            return notification(settings, payload, root);
        }
        if payload.contains_key("tableChanges") || payload.contains_key("ddl") {
            return Err(format!(
                "`{root}` is a schema change event (it has `ddl`/`tableChanges` and no `op`): it carries no row changes; configure only the connector's table topics, not its schema change topic"
            ));
        }
    }
    let op = match support::string(payload, "op", root)?.as_str() {
        "c" => RowOp::Create,
        "u" => RowOp::Update,
        "d" => RowOp::Delete,
        "r" => RowOp::Read,
        "t" => RowOp::Truncate,
        // A logical decoding message (`pg_logical_emit_message`): not a row change.
        "m" => return Ok(Vec::new()),
        other => {
            return Err(format!(
                "`{root}.op` is \"{other}\", expected one of c, u, d, r, t, m"
            ))
        }
    };

    let source_path = format!("{root}.source");
    let source = support::object(support::required(payload, "source", root)?, &source_path)?;
    // The connector's logical name is documented as always present, but a producer writing
    // Debezium's envelope without it (a CDC tool's "debezium-json" output) still says which
    // table and row changed: it scopes the event id when present.
    let connector = optional_name(source, "name", &source_path)?;
    let table = non_empty_string(source, "table", &source_path)?;
    let database = optional_name(source, "db", &source_path)?;
    let schema = optional_name(source, "schema", &source_path)?;
    let occurred_at = occurred_at(payload, root, source, &source_path)?;
    let mut position = match position(source, &source_path) {
        Ok(position) => position,
        // An incremental snapshot reads rows outside the log (`lsn` is null): its reads are
        // told apart by their time below.
        Err(_) if op == RowOp::Read => "read".to_owned(),
        Err(error) => return Err(error),
    };
    if op == RowOp::Read {
        // A snapshot reads every row at one log position, and an idle database gives the next
        // snapshot the same position again: the time of the read tells the runs apart.
        position = format!("{position},at={}", occurred_at.unix_nanos());
    }
    for member in ["before", "after"] {
        match payload.get(member) {
            None | Some(Value::Null | Value::Object(_)) => {}
            Some(other) => {
                return Err(format!(
                    "`{root}.{member}` is {}, expected an object of column values or null (MongoDB's JSON-string documents are not decoded)",
                    kind(other)
                ))
            }
        }
    }

    let entity = entity(settings, database.as_deref(), schema.as_deref(), &table);
    let qualified = [database.as_deref(), schema.as_deref(), Some(table.as_str())]
        .into_iter()
        .flatten()
        .map(|part| escape(part, true))
        .collect::<Vec<_>>()
        .join(".");
    let event_prefix = format!(
        "dbz:{}:{qualified}:{position}:{}",
        escape(connector.as_deref().unwrap_or_default(), false),
        op.letter()
    );
    let transaction_id = transaction_of(payload, root)?;
    let actor = actor(settings, payload, connector.as_deref());

    if op == RowOp::Truncate {
        // The key is null: the change is to the whole table, whose rows cannot be named.
        return Ok(vec![ChangeEvent {
            event_id: event_prefix,
            entity,
            id: String::new(),
            op: Op::Gap,
            occurred_at,
            external_id: None,
            fields: None,
            partial: false,
            version: None,
            seq: None,
            actor,
            merged_into: None,
            snapshot_id: None,
            records: None,
            schema: None,
            transaction_id: transaction_id.clone(),
        }]);
    }

    let id = record_id(key)?;
    let (canonical_op, image) = match op {
        RowOp::Create => (Op::Create, Some(after_image(payload, root, op)?)),
        RowOp::Update => (Op::Update, Some(after_image(payload, root, op)?)),
        RowOp::Read => (Op::Snapshot, Some(after_image(payload, root, op)?)),
        // A truncate was answered above.
        RowOp::Delete | RowOp::Truncate => (Op::Delete, None),
    };
    let (fields, partial) = match image {
        Some((fields, partial)) => (Some(fields), partial),
        None => (None, false),
    };
    // The images of an initial or blocking snapshot form a run, which the connector's
    // notification ends with its count; an incremental snapshot's images (targeted re-reads)
    // are plain full images.
    // A run is ended by the notification naming its connector: without the name, no
    // notification can end it, so the images are plain full images.
    let snapshot_id = connector
        .as_deref()
        .filter(|_| op == RowOp::Read && is_run_image(source))
        .map(|connector| {
            snapshot_run_id(
                connector,
                &collection_name(schema.as_deref(), database.as_deref(), &table),
            )
        });
    Ok(vec![ChangeEvent {
        event_id: format!("{event_prefix}:{id}"),
        entity,
        id,
        op: canonical_op,
        occurred_at,
        external_id: None,
        fields,
        partial,
        version: None,
        seq: None,
        actor,
        merged_into: None,
        snapshot_id,
        records: None,
        schema: None,
        transaction_id,
    }])
}

/// Who made the change: the row's `actor_field` column (from `after`, or from `before` for a
/// delete under `REPLICA IDENTITY FULL`) when configured and present, mapped through `actors`,
/// else read as an actor (`user:42`); else the connector, if `actors` maps
/// `connector:<name>`.
fn actor(
    settings: &FormatSettings,
    payload: &Map<String, Value>,
    connector: Option<&str>,
) -> Option<tandem_core::event::Actor> {
    let written_by = settings.actor_field.as_ref().and_then(|field| {
        ["after", "before"].into_iter().find_map(|member| {
            match payload.get(member)?.get(field)? {
                Value::String(text) if !text.trim().is_empty() => Some(text.trim().to_owned()),
                Value::Number(number) => Some(number.to_string()),
                _ => None,
            }
        })
    });
    let from_column = written_by.and_then(|written_by| {
        settings
            .actor(std::slice::from_ref(&written_by), None)
            .or_else(|| crate::parse_actor(&written_by).ok())
    });
    from_column.or_else(|| {
        connector.and_then(|connector| settings.actor(&[format!("connector:{connector}")], None))
    })
}

/// Whether a snapshot image belongs to an initial or blocking snapshot (`source.snapshot` is
/// `first`, `true`, `last` or their `*_in_data_collection` forms), not an incremental one.
fn is_run_image(source: &Map<String, Value>) -> bool {
    match source.get("snapshot") {
        Some(Value::String(marker)) => !matches!(marker.as_str(), "incremental" | "false"),
        Some(Value::Bool(snapshot)) => *snapshot,
        _ => false,
    }
}

/// A data collection as Debezium's notifications name it: `schema.table` (PostgreSQL, SQL
/// Server, Oracle), else `database.table` (MySQL).
fn collection_name(schema: Option<&str>, database: Option<&str>, table: &str) -> String {
    match schema.or(database) {
        Some(container) => format!("{container}.{table}"),
        None => table.to_owned(),
    }
}

/// The snapshot run of one connector's table: Debezium snapshots a table once at a time and
/// names no run, so the run is the table's; a run ends with the count of the connector's
/// `TABLE_SCAN_COMPLETED` notification.
fn snapshot_run_id(connector: &str, collection: &str) -> String {
    format!(
        "dbz:{}:{}:snapshot",
        escape(connector, false),
        escape(collection, false)
    )
}

/// A notification of the connector's sink channel (`notification.enabled.channels=sink`). The
/// end of an initial or blocking snapshot's table scan (`aggregate_type` `Initial Snapshot`,
/// `type` `TABLE_SCAN_COMPLETED`, `status` `SUCCEEDED`) becomes the `snapshot_end` of that
/// table's run, with `total_rows_scanned` as its count; every other notification carries
/// nothing to apply.
fn notification(
    settings: &FormatSettings,
    payload: &Map<String, Value>,
    root: &str,
) -> Result<Vec<ChangeEvent>, String> {
    let aggregate = support::string(payload, "aggregate_type", root)?;
    let kind_of = support::string(payload, "type", root)?;
    if aggregate != "Initial Snapshot" || kind_of != "TABLE_SCAN_COMPLETED" {
        return Ok(Vec::new());
    }
    let data_path = format!("{root}.additional_data");
    let data = support::object(
        support::required(payload, "additional_data", root)?,
        &data_path,
    )?;
    if support::optional(data, "status").and_then(Value::as_str) != Some("SUCCEEDED") {
        // An aborted or failed scan proves nothing about the table.
        return Ok(Vec::new());
    }
    let connector = non_empty_string(data, "connector_name", &data_path)?;
    let collection = non_empty_string(data, "scanned_collection", &data_path)?;
    let rows = match support::required(data, "total_rows_scanned", &data_path)? {
        Value::String(text) => text.parse::<u64>().ok(),
        Value::Number(number) => number.as_u64(),
        _ => None,
    }
    .ok_or_else(|| format!("`{data_path}.total_rows_scanned` is not a count of rows"))?;
    let occurred_at = support::epoch_millis(
        support::required(payload, "timestamp", root)?,
        &format!("{root}.timestamp"),
    )?;
    let id = non_empty_string(payload, "id", root)?;
    Ok(vec![ChangeEvent {
        snapshot_id: Some(snapshot_run_id(&connector, &collection)),
        ..count_marker(
            format!("dbz:notification:{}", escape(&id, false)),
            collection_entity(settings, &collection),
            Op::SnapshotEnd,
            occurred_at,
            rows,
        )
    }])
}

/// An event that names no record and closes a set of a collection's events with their count:
/// a snapshot run's end or a transaction's end.
fn count_marker(
    event_id: String,
    entity: String,
    op: Op,
    occurred_at: tandem_core::Timestamp,
    records: u64,
) -> ChangeEvent {
    ChangeEvent {
        event_id,
        entity,
        id: String::new(),
        op,
        occurred_at,
        external_id: None,
        fields: None,
        partial: false,
        version: None,
        seq: None,
        actor: None,
        merged_into: None,
        snapshot_id: None,
        records: Some(records),
        schema: None,
        transaction_id: None,
    }
}

/// A transaction `BEGIN` or `END` marker, from the connector's transaction topic. A BEGIN
/// carries nothing to apply. An END becomes one `transaction_end` per data collection with the
/// number of events the transaction holds there, which tandem checks against the events it
/// read with that `transaction.id`.
fn transaction_marker(
    settings: &FormatSettings,
    payload: &Map<String, Value>,
    root: &str,
) -> Result<Vec<ChangeEvent>, String> {
    let status = support::string(payload, "status", root)?;
    let id = non_empty_string(payload, "id", root)?;
    match status.as_str() {
        "BEGIN" => return Ok(Vec::new()),
        "END" => {}
        other => {
            return Err(format!(
                "`{root}.status` is \"{other}\", expected BEGIN or END (a transaction marker), or the message needs an `op`"
            ))
        }
    }
    let Some(collections) = support::optional(payload, "data_collections") else {
        // Without per-collection counts there is nothing to check.
        return Ok(Vec::new());
    };
    let Value::Array(collections) = collections else {
        return Err(format!(
            "`{root}.data_collections` is {}, expected an array",
            kind(collections)
        ));
    };
    // An END without a time cannot be placed on the clock: nothing to check.
    let Some(ts_ms) = support::optional(payload, "ts_ms") else {
        return Ok(Vec::new());
    };
    let occurred_at = support::epoch_millis(ts_ms, &format!("{root}.ts_ms"))?;
    // Two tables can be one entity: their counts add up, as their row changes do.
    let mut per_entity: BTreeMap<String, (u64, Vec<String>)> = BTreeMap::new();
    for (index, collection) in collections.iter().enumerate() {
        let path = format!("{root}.data_collections[{index}]");
        let collection = support::object(collection, &path)?;
        let name = non_empty_string(collection, "data_collection", &path)?;
        let count = support::unsigned(
            support::required(collection, "event_count", &path)?,
            &format!("{path}.event_count"),
        )?;
        let entry = per_entity
            .entry(collection_entity(settings, &name))
            .or_default();
        entry.0 = entry.0.saturating_add(count);
        entry.1.push(escape(&name, false));
    }
    Ok(per_entity
        .into_iter()
        .map(|(entity, (count, names))| ChangeEvent {
            transaction_id: Some(id.clone()),
            ..count_marker(
                format!("dbz:tx:{}:{}", escape(&id, false), names.join(",")),
                entity,
                Op::TransactionEnd,
                occurred_at,
                count,
            )
        })
        .collect())
}

/// The `transaction.id` of a row change, if the connector provides transaction metadata.
fn transaction_of(payload: &Map<String, Value>, root: &str) -> Result<Option<String>, String> {
    match support::optional(payload, "transaction") {
        None => Ok(None),
        Some(Value::Object(transaction)) => {
            non_empty_string(transaction, "id", &format!("{root}.transaction")).map(Some)
        }
        Some(other) => Err(format!(
            "`{root}.transaction` is {}, expected an object or null",
            kind(other)
        )),
    }
}

/// The tandem entity of a transaction's data collection, as the connector names it
/// (PostgreSQL `schema.table`, MySQL `db.table`, SQL Server, Db2 and Oracle
/// `db.schema.table`): resolved like the entity of the collection's row changes.
fn collection_entity(settings: &FormatSettings, collection: &str) -> String {
    let parts: Vec<&str> = collection.split('.').collect();
    match parts.as_slice() {
        [database, schema, table] => entity(settings, Some(database), Some(schema), table),
        [first, table] => {
            // PostgreSQL's row changes try `db.schema.table` first: a single mapped name that
            // ends with this collection is theirs. Several (one per database) cannot be told
            // apart here; the next rules then apply.
            let suffix = format!(".{collection}");
            let mut longer = settings
                .objects
                .iter()
                .filter(|(name, _)| name.ends_with(&suffix) && name.matches('.').count() == 2);
            match (longer.next(), longer.next()) {
                (Some((_, entity)), None) => entity.clone(),
                _ => entity(settings, Some(first), None, table),
            }
        }
        _ => settings.entity(collection),
    }
}

/// The row image in `after`, without the columns Debezium could not read; `true` if any was left
/// out (the image is then partial).
fn after_image(
    payload: &Map<String, Value>,
    root: &str,
    op: RowOp,
) -> Result<(Fields, bool), String> {
    let Some(Value::Object(after)) = payload.get("after") else {
        return Err(format!(
            "`{root}.after` is missing: a `{}` event carries the row's new image",
            op.letter()
        ));
    };
    let mut fields = Fields::new();
    let mut partial = false;
    for (column, value) in after {
        if unavailable(value) {
            partial = true;
        } else {
            fields.insert(column.clone(), value.clone());
        }
    }
    Ok((fields, partial))
}

/// Whether a column value is Debezium's placeholder for a value it could not read.
fn unavailable(value: &Value) -> bool {
    match value {
        Value::String(text) => UNAVAILABLE.contains(&text.as_str()),
        // An unchanged TOAST array is a one-element list of the placeholder.
        Value::Array(items) => {
            matches!(items.as_slice(), [Value::String(text)] if UNAVAILABLE.contains(&text.as_str()))
        }
        _ => false,
    }
}

/// The row's native id, from the Kafka message key.
fn record_id(key: Option<&[u8]>) -> Result<String, String> {
    const MISSING: &str = "the message key is missing: a Debezium row change needs the row's primary key in the Kafka message key (for a table without a primary key, set the connector's `message.key.columns`)";
    let bytes = match key {
        Some(bytes) if !bytes.iter().all(u8::is_ascii_whitespace) => bytes,
        _ => return Err(MISSING.to_owned()),
    };
    let parsed: Value = serde_json::from_slice(bytes)
        .map_err(|error| format!("the message key is not well-formed JSON: {error}"))?;
    let (columns, path) = match &parsed {
        Value::Object(map)
            if map.len() == 2
                && matches!(map.get("schema"), Some(Value::Object(_) | Value::Null))
                && map.contains_key("payload") =>
        {
            (map.get("payload").unwrap_or(&Value::Null), "key.payload")
        }
        other => (other, "key"),
    };
    match columns {
        Value::Null => Err(MISSING.to_owned()),
        // A key reduced to its one column (e.g. by the `ExtractField$Key` transform).
        Value::String(_) | Value::Number(_) => key_value_text(columns, path),
        Value::Object(map) => {
            // Sorted by column name, whatever order the key's JSON had.
            let mut columns: Vec<(&String, &Value)> = map.iter().collect();
            columns.sort_by(|left, right| left.0.cmp(right.0));
            match columns.as_slice() {
                [] => Err(format!(
                    "`{path}` is an empty object, expected the primary key columns"
                )),
                [(name, value)] => key_value_text(value, &format!("{path}.{name}")),
                _ => {
                    let mut parts = Vec::with_capacity(columns.len());
                    for (name, value) in columns {
                        let text = key_value_text(value, &format!("{path}.{name}"))?;
                        parts.push(format!("{}={}", escape(name, false), escape(&text, false)));
                    }
                    Ok(parts.join(","))
                }
            }
        }
        other => Err(format!(
            "`{path}` is {}, expected an object of primary key columns",
            kind(other)
        )),
    }
}

/// One key column's value as text: strings as they are, numbers and booleans as JSON writes them,
/// structures (a variable-scale decimal) as compact JSON.
fn key_value_text(value: &Value, path: &str) -> Result<String, String> {
    match value {
        Value::String(text) if text.trim().is_empty() => {
            Err(format!("`{path}` is an empty string, expected a key value"))
        }
        Value::String(text) => Ok(text.clone()),
        Value::Null => Err(format!("`{path}` is null, expected a key value")),
        other => Ok(other.to_string()),
    }
}

/// The change's place in the database log, as `member=value` pairs.
fn position(source: &Map<String, Value>, path: &str) -> Result<String, String> {
    let mut parts = Vec::new();
    for member in POSITION {
        let text = match support::optional(source, member) {
            None => continue,
            Some(Value::String(text)) if !text.is_empty() => text.clone(),
            Some(Value::Number(number)) if number.is_i64() || number.is_u64() => number.to_string(),
            Some(other) => {
                return Err(format!(
                    "`{path}.{member}` is {}, expected a log position (string or integer)",
                    kind(other)
                ))
            }
        };
        parts.push(format!("{member}={}", escape(&text, false)));
    }
    if parts.is_empty() {
        return Err(format!(
            "`{path}` has no log position: none of lsn (PostgreSQL), file/pos/row (MySQL, MariaDB), change_lsn/commit_lsn/event_serial_no (SQL Server, Db2), scn/commit_scn (Oracle)"
        ));
    }
    Ok(parts.join(","))
}

/// The time of the change in the database: the source block's `ts_ns`, `ts_us` or `ts_ms`, the
/// most precise present; when it is absent or zero (MySQL snapshot reads of old versions), the
/// time the connector processed it (the envelope's own `ts_*`).
fn occurred_at(
    payload: &Map<String, Value>,
    root: &str,
    source: &Map<String, Value>,
    source_path: &str,
) -> Result<Timestamp, String> {
    for (map, path) in [(source, source_path), (payload, root)] {
        for (member, nanos_per_unit) in [("ts_ns", 1), ("ts_us", 1_000), ("ts_ms", 1_000_000)] {
            let Some(value) = support::optional(map, member) else {
                continue;
            };
            let count = match value {
                Value::Number(number) => number.as_i64(),
                Value::String(text) => text.parse().ok(),
                _ => None,
            }
            .ok_or_else(|| {
                format!(
                    "`{path}.{member}` is {}, expected an integer time",
                    kind(value)
                )
            })?;
            if count <= 0 {
                continue;
            }
            let nanos = count
                .checked_mul(nanos_per_unit)
                .ok_or_else(|| format!("`{path}.{member}` ({count}) is not a plausible time"))?;
            return Ok(Timestamp::from_unix_nanos(nanos));
        }
    }
    Err(format!(
        "`{source_path}.ts_ms` is missing: the message has no time of the change"
    ))
}

/// The tandem entity of a table: the first of `db.schema.table`, `schema.table`, `db.table` that
/// the settings map, else the table's own name (mapped, or lowercase).
fn entity(
    settings: &FormatSettings,
    database: Option<&str>,
    schema: Option<&str>,
    table: &str,
) -> String {
    let candidates = [
        database
            .zip(schema)
            .map(|(db, schema)| format!("{db}.{schema}.{table}")),
        schema.map(|schema| format!("{schema}.{table}")),
        database
            .filter(|_| schema.is_none())
            .map(|db| format!("{db}.{table}")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find_map(|name| settings.objects.get(&name).cloned())
        .unwrap_or_else(|| settings.entity(table))
}

/// A required string member that must not be empty.
fn non_empty_string(map: &Map<String, Value>, key: &str, path: &str) -> Result<String, String> {
    let text = support::string(map, key, path)?;
    if text.is_empty() {
        return Err(format!("`{path}.{key}` is an empty string"));
    }
    Ok(text)
}

/// An optional name (`db`, `schema`); empty counts as absent.
fn optional_name(
    map: &Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<String>, String> {
    Ok(support::optional_string(map, key, path)?.filter(|name| !name.is_empty()))
}

/// Escapes the characters that separate the parts of an event id or a composite key, so that
/// different parts never join to the same text.
fn escape(text: &str, dots: bool) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '%' => escaped.push_str("%25"),
            ':' => escaped.push_str("%3A"),
            ',' => escaped.push_str("%2C"),
            '=' => escaped.push_str("%3D"),
            '.' if dots => escaped.push_str("%2E"),
            other => escaped.push(other),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{decode_message, parse_actor, Format};
    use tandem_core::event::{Actor, ActorKind, DeadLetterReason};

    fn settings() -> FormatSettings {
        FormatSettings::new(Format::Debezium)
    }

    fn at(text: &str) -> Timestamp {
        Timestamp::parse_rfc3339(text).unwrap()
    }

    fn key_bytes(key: &Value) -> Vec<u8> {
        serde_json::to_vec(key).unwrap()
    }

    fn decode_with(
        settings: &FormatSettings,
        key: Option<Value>,
        value: &Value,
    ) -> Result<Vec<ChangeEvent>, String> {
        let bytes = key.as_ref().map(key_bytes);
        decode(settings, bytes.as_deref(), value)
    }

    fn one(key: Option<Value>, value: &Value) -> ChangeEvent {
        let mut events = decode_with(&settings(), key, value).unwrap();
        assert_eq!(events.len(), 1, "{events:?}");
        events.remove(0)
    }

    fn error(key: Option<Value>, value: &Value) -> String {
        decode_with(&settings(), key, value).unwrap_err()
    }

    fn fields(value: Value) -> Option<Fields> {
        Some(serde_json::from_value(value).unwrap())
    }

    /// A PostgreSQL `source` block.
    fn pg_source(lsn: u64, ts_ms: i64) -> Value {
        json!({
            "version": "2.7.0.Final", "connector": "postgresql", "name": "crm",
            "ts_ms": ts_ms, "snapshot": "false", "db": "crmdb",
            "sequence": "[\"24023119\",\"24023128\"]", "schema": "public", "table": "customers",
            "txId": 555, "lsn": lsn, "xmin": null
        })
    }

    fn pg_key(id: i64) -> Value {
        json!({
            "schema": {"type": "struct", "name": "crm.public.customers.Key", "optional": false,
                       "fields": [{"type": "int32", "optional": false, "field": "id"}]},
            "payload": {"id": id}
        })
    }

    fn event(event_id: &str, id: &str, op: Op, occurred_at: &str) -> ChangeEvent {
        ChangeEvent {
            event_id: event_id.to_owned(),
            entity: "customers".to_owned(),
            id: id.to_owned(),
            op,
            occurred_at: at(occurred_at),
            external_id: None,
            fields: None,
            partial: false,
            version: None,
            seq: None,
            actor: None,
            merged_into: None,
            snapshot_id: None,
            records: None,
            schema: None,
            transaction_id: None,
        }
    }

    #[test]
    fn a_create_with_the_schema_wrapper_is_a_full_image() {
        let value = json!({
            "schema": {"type": "struct", "name": "crm.public.customers.Envelope", "optional": false, "fields": []},
            "payload": {
                "before": null,
                "after": {"id": 1001, "first_name": "Anne", "email": "annek@noanswer.org", "birth_date": 7305, "phone": null},
                "source": pg_source(24_023_128, 1_732_089_600_123),
                "op": "c",
                "ts_ms": 1_732_089_600_456_i64,
                "transaction": null
            }
        });
        let mut expected = event(
            "dbz:crm:crmdb.public.customers:lsn=24023128:c:1001",
            "1001",
            Op::Create,
            "2024-11-20T08:00:00.123Z",
        );
        expected.fields = fields(json!({
            "id": 1001, "first_name": "Anne", "email": "annek@noanswer.org", "birth_date": 7305, "phone": null
        }));
        assert_eq!(one(Some(pg_key(1001)), &value), expected);
    }

    #[test]
    fn a_mysql_update_without_the_wrapper_is_a_full_image_with_nulled_columns() {
        let value = json!({
            "before": {"id": 1004, "first_name": "Anne", "last_name": "Kretchmar", "phone": "555-0100"},
            "after": {"id": 1004, "first_name": "Anne Marie", "last_name": "Kretchmar", "phone": null},
            "source": {
                "version": "2.7.0.Final", "connector": "mysql", "name": "shop", "ts_ms": 1_732_089_660_000_i64,
                "snapshot": "false", "db": "inventory", "table": "customers", "server_id": 223_344,
                "gtid": null, "file": "mysql-bin.000003", "pos": 484, "row": 0, "thread": 7,
                "query": "UPDATE customers SET first_name='Anne Marie', phone=NULL WHERE id=1004"
            },
            "op": "u",
            "ts_ms": 1_732_089_660_523_i64
        });
        let mut expected = event(
            "dbz:shop:inventory.customers:file=mysql-bin.000003,pos=484,row=0:u:1004",
            "1004",
            Op::Update,
            "2024-11-20T08:01:00Z",
        );
        expected.fields = fields(json!({
            "id": 1004, "first_name": "Anne Marie", "last_name": "Kretchmar", "phone": null
        }));
        assert_eq!(one(Some(json!({"id": 1004})), &value), expected);
    }

    #[test]
    fn rows_of_one_mysql_statement_get_their_own_ids() {
        let value = |row: u64, id: i64| {
            json!({
                "before": null, "after": {"id": id, "first_name": "X"}, "op": "c",
                "source": {"connector": "mysql", "name": "shop", "ts_ms": 1_732_089_660_000_i64, "db": "inventory",
                           "table": "customers", "file": "mysql-bin.000003", "pos": 900, "row": row}
            })
        };
        let first = one(Some(json!({"id": 1})), &value(0, 1));
        let second = one(Some(json!({"id": 2})), &value(1, 2));
        assert_eq!(
            first.event_id,
            "dbz:shop:inventory.customers:file=mysql-bin.000003,pos=900,row=0:c:1"
        );
        assert_eq!(
            second.event_id,
            "dbz:shop:inventory.customers:file=mysql-bin.000003,pos=900,row=1:c:2"
        );
    }

    #[test]
    fn an_unavailable_toast_value_makes_the_image_partial() {
        let value = json!({
            "before": {"id": 1},
            "after": {
                "id": 1, "first_name": "Anne Marie", "phone": null,
                "notes": "__debezium_unavailable_value",
                "tags": ["__debezium_unavailable_value"],
                "photo": "X19kZWJleml1bV91bmF2YWlsYWJsZV92YWx1ZQ=="
            },
            "source": pg_source(24_023_200, 1_732_089_720_000),
            "op": "u",
            "ts_ms": 1_732_089_720_100_i64
        });
        let mut expected = event(
            "dbz:crm:crmdb.public.customers:lsn=24023200:u:1",
            "1",
            Op::Update,
            "2024-11-20T08:02:00Z",
        );
        expected.fields = fields(json!({"id": 1, "first_name": "Anne Marie", "phone": null}));
        expected.partial = true;
        assert_eq!(one(Some(json!({"id": 1})), &value), expected);
    }

    #[test]
    fn a_delete_carries_no_fields() {
        let value = json!({
            "schema": {"type": "struct"},
            "payload": {
                "before": {"id": 1},
                "after": null,
                "source": pg_source(46_523_128, 1_732_089_780_000),
                "op": "d",
                "ts_ms": 1_732_089_780_461_i64
            }
        });
        let expected = event(
            "dbz:crm:crmdb.public.customers:lsn=46523128:d:1",
            "1",
            Op::Delete,
            "2024-11-20T08:03:00Z",
        );
        assert_eq!(one(Some(pg_key(1)), &value), expected);
        // REPLICA IDENTITY NOTHING: no `before` at all; the key still names the row.
        let without_before =
            json!({"after": null, "source": pg_source(46_523_128, 1_732_089_780_000), "op": "d"});
        assert_eq!(one(Some(pg_key(1)), &without_before), expected);
    }

    #[test]
    fn a_snapshot_read_is_an_image_of_the_tables_run() {
        let value = |ts_ms: i64| {
            json!({
                "before": null,
                "after": {"id": 7, "first_name": "Sally"},
                "source": {"connector": "postgresql", "name": "crm", "ts_ms": ts_ms, "snapshot": "first",
                           "db": "crmdb", "schema": "public", "table": "customers", "txId": 550, "lsn": 24_000_000},
                "op": "r",
                "ts_ms": 1_732_089_840_010_i64
            })
        };
        let mut expected = event(
            "dbz:crm:crmdb.public.customers:lsn=24000000,at=1732089840000000000:r:7",
            "7",
            Op::Snapshot,
            "2024-11-20T08:04:00Z",
        );
        expected.fields = fields(json!({"id": 7, "first_name": "Sally"}));
        // The run the connector's notification ends (`scanned_collection` "public.customers").
        expected.snapshot_id = Some("dbz:crm:public.customers:snapshot".to_owned());
        let first = one(Some(pg_key(7)), &value(1_732_089_840_000));
        assert_eq!(first, expected);
        // Re-delivered: the same id. A later snapshot at the same log position: a new one.
        assert_eq!(
            one(Some(pg_key(7)), &value(1_732_089_840_000)).event_id,
            first.event_id
        );
        let later = one(Some(pg_key(7)), &value(1_732_093_440_000));
        assert_eq!(
            later.event_id,
            "dbz:crm:crmdb.public.customers:lsn=24000000,at=1732093440000000000:r:7"
        );
    }

    #[test]
    fn an_incremental_snapshot_read_is_a_full_image_of_no_run() {
        let value = json!({
            "before": null, "after": {"id": 10, "email": "b@x.io"},
            "source": {"connector": "postgresql", "name": "legacy", "ts_ms": 1_796_608_447_029_i64,
                       "snapshot": "incremental", "db": "legacy", "schema": "public", "table": "contacts",
                       "txId": null, "lsn": null, "sequence": "[\"26394208\",\"26394208\"]"},
            "op": "r"
        });
        // An incremental read has no log position (`lsn` is null): its time tells it apart.
        let image = decode_with(&settings(), Some(pg_key(10)), &value)
            .expect("an incremental read decodes");
        assert_eq!(
            image[0].event_id,
            "dbz:legacy:legacy.public.contacts:read,at=1796608447029000000:r:10"
        );
        assert_eq!(image[0].op, Op::Snapshot);
        assert_eq!(image[0].snapshot_id, None);
        assert!(!image[0].partial);
    }

    /// Notifications as Debezium 3.6's sink channel writes them (captured from a PostgreSQL
    /// connector in the pipeline test).
    #[test]
    fn a_table_scan_notification_ends_the_tables_snapshot_run() {
        let completed = json!({"id": "0f5b0742-33ee-4e11-8182-762d859ff673", "type": "TABLE_SCAN_COMPLETED",
            "aggregate_type": "Initial Snapshot", "additional_data": {"scanned_collection": "public.contacts",
            "connector_name": "legacy", "total_rows_scanned": "2", "status": "SUCCEEDED",
            "data_collections": "public.contacts,public.debezium_signal"}, "timestamp": 1_796_608_416_424_i64});
        let events = decode_with(&settings(), None, &completed).unwrap();
        assert_eq!(events.len(), 1);
        let end = &events[0];
        assert_eq!(
            (
                end.op,
                end.entity.as_str(),
                end.snapshot_id.as_deref(),
                end.records
            ),
            (
                Op::SnapshotEnd,
                "contacts",
                Some("dbz:legacy:public.contacts:snapshot"),
                Some(2)
            )
        );
        assert_eq!(
            end.occurred_at,
            Timestamp::from_unix_millis(1_796_608_416_424)
        );
        // Starts, progress, completions of the whole snapshot, incremental scans (targeted
        // re-reads) and failed scans carry nothing to apply.
        let skipped = [
            json!({"id": "a", "type": "STARTED", "aggregate_type": "Initial Snapshot",
                "additional_data": {"connector_name": "legacy"}, "timestamp": 1}),
            json!({"id": "b", "type": "COMPLETED", "aggregate_type": "Initial Snapshot",
                "additional_data": {"connector_name": "legacy"}, "timestamp": 1}),
            json!({"id": "c", "type": "TABLE_SCAN_COMPLETED", "aggregate_type": "Incremental Snapshot",
                "additional_data": {"scanned_collection": "public.contacts", "connector_name": "legacy",
                "total_rows_scanned": "1", "status": "SUCCEEDED"}, "timestamp": 1}),
            json!({"id": "d", "type": "TABLE_SCAN_COMPLETED", "aggregate_type": "Initial Snapshot",
                "additional_data": {"scanned_collection": "public.contacts", "connector_name": "legacy",
                "total_rows_scanned": "0", "status": "FAILED"}, "timestamp": 1}),
        ];
        for notification in skipped {
            assert_eq!(
                decode_with(&settings(), None, &notification).unwrap(),
                [],
                "{notification}"
            );
        }
    }

    #[test]
    fn a_redelivered_change_keeps_its_event_id() {
        let value =
            json!({"after": {"id": 5}, "source": pg_source(1_000, 1_732_089_600_000), "op": "c"});
        let first = one(Some(pg_key(5)), &value);
        let again = one(Some(pg_key(5)), &value);
        assert_eq!(first.event_id, again.event_id);
        let next = one(
            Some(pg_key(5)),
            &json!({"after": {"id": 5}, "source": pg_source(1_008, 1_732_089_600_000), "op": "u"}),
        );
        assert_ne!(first.event_id, next.event_id);
    }

    #[test]
    fn a_truncate_is_a_gap_for_the_whole_table() {
        let value = json!({
            "schema": {"type": "struct"},
            "payload": {"source": pg_source(46_600_000, 1_732_089_600_000), "op": "t", "ts_ms": 1_732_089_600_961_i64}
        });
        let expected = event(
            "dbz:crm:crmdb.public.customers:lsn=46600000:t",
            "",
            Op::Gap,
            "2024-11-20T08:00:00Z",
        );
        // Debezium sends a truncate with a null key.
        assert_eq!(one(None, &value), expected);
    }

    #[test]
    fn messages_without_a_row_change_are_skipped() {
        let logical_message = json!({
            "source": {"connector": "postgresql", "name": "crm", "ts_ms": 1_732_089_600_000_i64, "db": "crmdb",
                       "schema": "", "table": "", "txId": 556, "lsn": 46_523_128},
            "op": "m", "ts_ms": 1_732_089_600_961_i64,
            "message": {"prefix": "audit", "content": "Ymfy"}
        });
        assert_eq!(
            decode_with(
                &settings(),
                Some(json!({"prefix": "audit"})),
                &logical_message
            ),
            Ok(vec![])
        );
        let begin = json!({"status": "BEGIN", "id": "571:53195829", "ts_ms": 1_486_500_577_125_i64,
                           "event_count": null, "data_collections": null});
        assert_eq!(
            decode_with(&settings(), Some(json!({"id": "571:53195829"})), &begin),
            Ok(vec![])
        );
        let end = json!({"schema": {"type": "struct"}, "payload": {
            "status": "END", "id": "571:53195832", "ts_ms": 1_486_500_577_691_i64, "event_count": 2,
            "data_collections": [{"data_collection": "s1.a", "event_count": 1}, {"data_collection": "s2.a", "event_count": 1}]
        }});
        let ends = decode_with(&settings(), None, &end).unwrap();
        let summary: Vec<_> = ends
            .iter()
            .map(|event| {
                (
                    event.event_id.as_str(),
                    event.entity.as_str(),
                    event.op,
                    event.transaction_id.as_deref(),
                    event.records,
                    event.occurred_at,
                )
            })
            .collect();
        let ended_at = Timestamp::from_unix_millis(1_486_500_577_691);
        // Both tables are the entity `a` (neither is mapped): one end with both counts.
        assert_eq!(
            summary,
            [(
                "dbz:tx:571%3A53195832:s1.a,s2.a",
                "a",
                Op::TransactionEnd,
                Some("571:53195832"),
                Some(2),
                ended_at
            )]
        );
        // An END without a time cannot be placed on the clock: nothing to check.
        let mut timeless = end.clone();
        timeless["payload"].as_object_mut().unwrap().remove("ts_ms");
        assert_eq!(decode_with(&settings(), None, &timeless), Ok(vec![]));
        let wrapped_tombstone = json!({"schema": null, "payload": null});
        assert_eq!(
            decode_with(&settings(), Some(pg_key(1)), &wrapped_tombstone),
            Ok(vec![])
        );
    }

    #[test]
    fn a_transaction_end_names_the_entity_its_row_changes_get() {
        let mut settings = settings();
        let cases = [
            // SQL Server names collections `db.schema.table`; rows try the same names in order.
            (
                vec![("dbo.customers", "contact")],
                "testDB.dbo.customers",
                "contact",
            ),
            (
                vec![
                    ("testDB.dbo.customers", "person"),
                    ("dbo.customers", "contact"),
                ],
                "testDB.dbo.customers",
                "person",
            ),
            // PostgreSQL says `schema.table`; its rows try `db.schema.table` first.
            (
                vec![("crmdb.public.x", "a"), ("public.x", "b")],
                "public.x",
                "a",
            ),
            (vec![("public.x", "b")], "public.x", "b"),
            // Two databases map the table: the END cannot tell which, `schema.table` decides.
            (
                vec![
                    ("one.public.x", "a"),
                    ("two.public.x", "c"),
                    ("public.x", "b"),
                ],
                "public.x",
                "b",
            ),
            // MySQL says `db.table`.
            (
                vec![("inventory.customers", "contact")],
                "inventory.customers",
                "contact",
            ),
            (
                vec![("customers", "contact")],
                "inventory.customers",
                "contact",
            ),
            (vec![], "inventory.Customers", "customers"),
        ];
        for (objects, collection, expected) in cases {
            settings.objects = objects
                .iter()
                .map(|(name, entity)| (name.to_string(), entity.to_string()))
                .collect();
            let end = json!({"status": "END", "id": "9", "ts_ms": 1_000, "event_count": 1,
                "data_collections": [{"data_collection": collection, "event_count": 1}]});
            let events = decode_with(&settings, None, &end).unwrap();
            assert_eq!(events[0].entity, expected, "{collection} with {objects:?}");
        }
    }

    #[test]
    fn a_composite_key_joins_its_columns_by_name() {
        let value = json!({
            "before": {"order_id": 7, "line_no": 2, "qty": 1},
            "after": {"order_id": 7, "line_no": 2, "qty": 3},
            "source": {"version": "2.7.0.Final", "connector": "sqlserver", "name": "erp", "ts_ms": 1_732_089_600_000_i64,
                       "snapshot": "false", "db": "sales", "sequence": null, "schema": "dbo", "table": "order_lines",
                       "change_lsn": "00000027:00000b00:0003", "commit_lsn": "00000027:00000b00:0005", "event_serial_no": 2},
            "op": "u",
            "ts_ms": 1_732_089_601_000_i64,
            "transaction": {"id": "00000027:00000b00:0005", "total_order": 1, "data_collection_order": 1}
        });
        let key = json!({"schema": {"type": "struct", "fields": []}, "payload": {"order_id": 7, "line_no": 2}});
        let expected = ChangeEvent {
            event_id: "dbz:erp:sales.dbo.order_lines:change_lsn=00000027%3A00000b00%3A0003,commit_lsn=00000027%3A00000b00%3A0005,event_serial_no=2:u:line_no=2,order_id=7".to_owned(),
            entity: "order_lines".to_owned(),
            id: "line_no=2,order_id=7".to_owned(),
            op: Op::Update,
            occurred_at: at("2024-11-20T08:00:00Z"),
            external_id: None,
            fields: fields(json!({"order_id": 7, "line_no": 2, "qty": 3})),
            partial: false,
            version: None,
            seq: None,
            actor: None,
            merged_into: None,
            snapshot_id: None,
            records: None,
            schema: None,
            // The transaction the change belongs to, counted against its END.
            transaction_id: Some("00000027:00000b00:0005".to_owned()),
        };
        assert_eq!(one(Some(key), &value), expected);
    }

    #[test]
    fn key_columns_are_written_as_text() {
        let value =
            json!({"after": {"code": "a"}, "source": pg_source(1, 1_732_089_600_000), "op": "c"});
        let id = |key: Value| one(Some(key), &value).id;
        assert_eq!(id(json!({"code": "AB-1"})), "AB-1");
        assert_eq!(
            id(json!({"schema": null, "payload": {"code": "AB-1"}})),
            "AB-1"
        );
        // A key reduced to its value by a transform.
        assert_eq!(id(json!(1001)), "1001");
        assert_eq!(id(json!("c9d2")), "c9d2");
        assert_eq!(
            id(json!({"region": "eu,west", "code": "a=b", "active": true})),
            "active=true,code=a%3Db,region=eu%2Cwest"
        );
    }

    #[test]
    fn a_row_change_needs_a_usable_key() {
        let value =
            json!({"after": {"id": 1}, "source": pg_source(1, 1_732_089_600_000), "op": "c"});
        for key in [
            None,
            Some(json!(null)),
            Some(json!({"schema": {"type": "struct"}, "payload": null})),
        ] {
            let message = error(key, &value);
            assert!(
                message.starts_with("the message key is missing"),
                "{message}"
            );
        }
        let not_json = decode(&settings(), Some(b"id=1"), &value).unwrap_err();
        assert!(
            not_json.starts_with("the message key is not well-formed JSON"),
            "{not_json}"
        );
        assert_eq!(
            error(Some(json!({"id": null})), &value),
            "`key.id` is null, expected a key value"
        );
        assert_eq!(
            error(Some(json!({"schema": {}, "payload": {}})), &value),
            "`key.payload` is an empty object, expected the primary key columns"
        );
        assert_eq!(
            error(Some(json!([1])), &value),
            "`key` is an array, expected an object of primary key columns"
        );
        assert_eq!(
            error(Some(json!({"id": " "})), &value),
            "`key.id` is an empty string, expected a key value"
        );
    }

    #[test]
    fn the_actor_column_names_the_writer_before_the_connector() {
        let mut settings = settings();
        settings.actor_field = Some("last_modified_by".to_owned());
        settings
            .actors
            .insert("sync-job".to_owned(), parse_actor("sync").unwrap());
        settings.actors.insert(
            "connector:crm".to_owned(),
            parse_actor("integration:crm").unwrap(),
        );
        let change = |op: &str, before: Value, after: Value| json!({"before": before, "after": after, "source": pg_source(7, 1_732_089_600_000), "op": op});
        let cases = [
            // Listed under `actors`.
            (
                change(
                    "u",
                    Value::Null,
                    json!({"id": 1, "last_modified_by": "sync-job"}),
                ),
                "sync",
            ),
            // Not listed, but an actor as written in configuration.
            (
                change(
                    "c",
                    Value::Null,
                    json!({"id": 1, "last_modified_by": "integration:webform"}),
                ),
                "integration:webform",
            ),
            // A delete names its writer in `before` (REPLICA IDENTITY FULL).
            (
                change(
                    "d",
                    json!({"id": 1, "last_modified_by": "user:ann"}),
                    Value::Null,
                ),
                "user:ann",
            ),
            // No column value: the connector's mapping.
            (
                change("u", Value::Null, json!({"id": 1, "last_modified_by": null})),
                "integration:crm",
            ),
            // Neither listed nor an actor: the connector's mapping too.
            (
                change(
                    "u",
                    Value::Null,
                    json!({"id": 1, "last_modified_by": "Jane Doe"}),
                ),
                "integration:crm",
            ),
        ];
        for (value, expected) in cases {
            let events = decode_with(&settings, Some(pg_key(1)), &value).unwrap();
            assert_eq!(
                events[0].actor,
                Some(parse_actor(expected).unwrap()),
                "{value}"
            );
        }
    }

    #[test]
    fn the_connector_is_the_actor_only_when_configured() {
        let value =
            json!({"after": {"id": 1}, "source": pg_source(1, 1_732_089_600_000), "op": "c"});
        assert_eq!(one(Some(pg_key(1)), &value).actor, None);
        let mut mapped = settings();
        mapped.actors.insert(
            "connector:crm".to_owned(),
            parse_actor("integration:legacy-crm").unwrap(),
        );
        let events = decode_with(&mapped, Some(pg_key(1)), &value).unwrap();
        assert_eq!(
            events[0].actor,
            Some(Actor {
                kind: ActorKind::Integration,
                id: Some("legacy-crm".to_owned()),
                epoch: None,
            })
        );
        let mut other = settings();
        other
            .actors
            .insert("connector:erp".to_owned(), parse_actor("sync").unwrap());
        assert_eq!(
            decode_with(&other, Some(pg_key(1)), &value).unwrap()[0].actor,
            None
        );
    }

    #[test]
    fn the_entity_is_the_most_qualified_mapped_table_name() {
        let value =
            json!({"after": {"id": 1}, "source": pg_source(1, 1_732_089_600_000), "op": "c"});
        let entity = |pairs: &[(&str, &str)]| {
            let mut settings = settings();
            for (vendor, entity) in pairs {
                settings
                    .objects
                    .insert((*vendor).to_owned(), (*entity).to_owned());
            }
            decode_with(&settings, Some(pg_key(1)), &value).unwrap()[0]
                .entity
                .clone()
        };
        assert_eq!(entity(&[]), "customers");
        assert_eq!(entity(&[("customers", "person")]), "person");
        assert_eq!(
            entity(&[("customers", "person"), ("public.customers", "contact")]),
            "contact"
        );
        assert_eq!(
            entity(&[
                ("public.customers", "contact"),
                ("crmdb.public.customers", "lead")
            ]),
            "lead"
        );
        let upper = json!({"after": {"ID": 1}, "op": "c", "source": {
            "connector": "oracle", "name": "ora", "ts_ms": 1_732_089_600_000_i64, "db": "ORCLPDB1",
            "schema": "CRM", "table": "CUSTOMERS", "scn": "774200482967", "commit_scn": "774200597370"}});
        let event = one(Some(json!({"ID": 1})), &upper);
        assert_eq!(event.entity, "customers");
        assert_eq!(
            event.event_id,
            "dbz:ora:ORCLPDB1.CRM.CUSTOMERS:scn=774200482967,commit_scn=774200597370:c:1"
        );
    }

    #[test]
    fn the_time_is_the_most_precise_time_of_the_change() {
        let value = |source_times: Value, payload_ts_ms: Value| {
            let mut source = json!({"connector": "postgresql", "name": "crm", "db": "crmdb", "schema": "public",
                                    "table": "customers", "lsn": 1});
            for (name, time) in source_times.as_object().unwrap() {
                source[name] = time.clone();
            }
            json!({"after": {"id": 1}, "source": source, "op": "c", "ts_ms": payload_ts_ms})
        };
        let time = |value: Value| one(Some(pg_key(1)), &value).occurred_at;
        assert_eq!(
            time(value(
                json!({"ts_ms": 1_732_089_600_123_i64, "ts_us": 1_732_089_600_123_456_i64,
                              "ts_ns": 1_732_089_600_123_456_789_i64}),
                json!(null)
            )),
            Timestamp::from_unix_nanos(1_732_089_600_123_456_789)
        );
        assert_eq!(
            time(value(
                json!({"ts_ms": 1_732_089_600_123_i64, "ts_us": 1_732_089_600_123_456_i64}),
                json!(null)
            )),
            Timestamp::from_unix_nanos(1_732_089_600_123_456_000)
        );
        // Older MySQL snapshots write 0: the connector's processing time stands in.
        assert_eq!(
            time(value(json!({"ts_ms": 0}), json!(1_732_089_600_456_i64))),
            at("2024-11-20T08:00:00.456Z")
        );
        assert_eq!(
            time(value(json!({"ts_ms": "1732089600123"}), json!(null))),
            at("2024-11-20T08:00:00.123Z")
        );
        assert_eq!(
            error(Some(pg_key(1)), &value(json!({}), json!(null))),
            "`value.source.ts_ms` is missing: the message has no time of the change"
        );
        assert_eq!(
            error(Some(pg_key(1)), &value(json!({"ts_ms": 1.5}), json!(null))),
            "`value.source.ts_ms` is a number, expected an integer time"
        );
        assert_eq!(
            error(
                Some(pg_key(1)),
                &value(json!({"ts_us": i64::MAX}), json!(null))
            ),
            format!(
                "`value.source.ts_us` ({}) is not a plausible time",
                i64::MAX
            )
        );
    }

    /// `source.name` is left out by producers that write Debezium's envelope themselves; what
    /// changed is still plain. The event id keeps an empty connector part, and a snapshot image
    /// belongs to no run, since no notification could name it.
    #[test]
    fn a_change_without_the_connector_name_is_still_decoded() {
        let key = br#"{"id": 7}"#;
        let message = |name: Option<&str>, op: &str, snapshot: &str| {
            let mut source = json!({"connector": "postgresql", "ts_ms": 1_732_089_600_000_i64,
                                    "snapshot": snapshot, "db": "crmdb", "schema": "public",
                                    "table": "customers", "lsn": 33});
            if let Some(name) = name {
                source["name"] = json!(name);
            }
            let value = json!({"before": null, "after": {"id": 7, "city": "Reno"}, "op": op,
                               "ts_ms": 1_732_089_600_100_i64, "source": source});
            let bytes = serde_json::to_vec(&value).unwrap();
            decode_message(&settings(), Some(key), Some(&bytes), 1 << 20).unwrap()
        };
        let unnamed = message(None, "c", "false");
        assert_eq!(unnamed.len(), 1);
        assert_eq!(
            unnamed[0].event_id,
            "dbz::crmdb.public.customers:lsn=33:c:7"
        );
        assert_eq!(unnamed[0].entity, "customers");
        assert_eq!(unnamed[0].op, Op::Create);
        // An empty name is no name: the same event.
        assert_eq!(message(Some(""), "c", "false"), unnamed);
        let named = message(Some("crm"), "r", "true");
        assert_eq!(
            named[0].snapshot_id.as_deref(),
            Some("dbz:crm:public.customers:snapshot")
        );
        assert_eq!(message(None, "r", "true")[0].snapshot_id, None);
    }

    #[test]
    fn malformed_messages_name_the_part_at_fault() {
        let source = pg_source(1, 1_732_089_600_000);
        let key = Some(pg_key(1));
        let cases = [
            (json!({"after": {"id": 1}, "source": source}), "`value.op` is missing"),
            (json!({"schema": {}, "payload": {"after": {"id": 1}, "source": source, "op": 3}}),
             "`payload.op` is a number, expected a string"),
            (json!({"after": {"id": 1}, "source": source, "op": "x"}),
             "`value.op` is \"x\", expected one of c, u, d, r, t, m"),
            (json!({"after": {"id": 1}, "op": "c"}), "`value.source` is missing"),
            (json!({"after": {"id": 1}, "source": "crm", "op": "c"}), "`value.source` is a string, expected an object"),
            (json!({"after": "{\"_id\": 1}", "source": source, "op": "c"}),
             "`value.after` is a string, expected an object of column values or null (MongoDB's JSON-string documents are not decoded)"),
            (json!({"after": null, "source": source, "op": "u"}),
             "`value.after` is missing: a `u` event carries the row's new image"),
            (json!({"after": {"id": 1}, "op": "c", "source": {"name": "crm", "ts_ms": 1, "table": "customers"}}),
             "`value.source` has no log position: none of lsn (PostgreSQL), file/pos/row (MySQL, MariaDB), change_lsn/commit_lsn/event_serial_no (SQL Server, Db2), scn/commit_scn (Oracle)"),
            (json!({"after": {"id": 1}, "op": "c", "source": {"name": "crm", "ts_ms": 1, "lsn": 1}}),
             "`value.source.table` is missing"),
            (json!({"after": {"id": 1}, "op": "c", "source": {"name": "crm", "ts_ms": 1, "lsn": 1.5, "table": "t"}}),
             "`value.source.lsn` is a number, expected a log position (string or integer)"),
            (json!({"payload": [1]}), "`payload` is an array, expected an object"),
            (json!([]), "`value` is an array, expected an object"),
            (json!({"status": "COMMIT", "id": "1"}),
             "`value.status` is \"COMMIT\", expected BEGIN or END (a transaction marker), or the message needs an `op`"),
            (json!({"status": "END"}), "`value.id` is missing"),
            (json!({"schema": {}, "payload": {"source": {}, "databaseName": "inventory", "ddl": "CREATE TABLE t (id INT)", "tableChanges": []}}),
             "`payload` is a schema change event (it has `ddl`/`tableChanges` and no `op`): it carries no row changes; configure only the connector's table topics, not its schema change topic"),
        ];
        for (value, expected) in cases {
            assert_eq!(error(key.clone(), &value), expected, "{value}");
        }
    }

    #[test]
    fn the_framework_decodes_keys_and_values_as_bytes() {
        let settings = settings();
        let key = br#"{"schema":{"type":"struct","fields":[{"type":"int32","optional":false,"field":"id"}]},"payload":{"id":1001}}"#;
        let value = br#"{"schema":{"type":"struct"},"payload":{"before":null,"after":{"id":1001,"email":"a@example.com"},
            "source":{"connector":"postgresql","name":"crm","ts_ms":1732089600000,"db":"crmdb","schema":"public","table":"customers","lsn":33},
            "op":"c","ts_ms":1732089600100}}"#;
        let events = decode_message(&settings, Some(key), Some(value), 1 << 20).unwrap();
        let mut expected = event(
            "dbz:crm:crmdb.public.customers:lsn=33:c:1001",
            "1001",
            Op::Create,
            "2024-11-20T08:00:00Z",
        );
        expected.fields = fields(json!({"id": 1001, "email": "a@example.com"}));
        assert_eq!(events, vec![expected]);
        // The tombstone after a delete.
        assert_eq!(
            decode_message(&settings, Some(key), None, 1 << 20).unwrap(),
            vec![]
        );
        let bad = decode_message(&settings, None, Some(value), 1 << 20).unwrap_err();
        assert_eq!(bad.reason, DeadLetterReason::SchemaViolation);
        assert!(
            bad.detail
                .starts_with("not a debezium message: the message key is missing"),
            "{}",
            bad.detail
        );
    }

    #[test]
    fn the_examples_decode() {
        let directory = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../schemas/examples/formats/debezium");
        let mut seen = 0;
        for entry in std::fs::read_dir(&directory).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !name.ends_with(".json") || name.ends_with(".key.json") {
                continue;
            }
            let value = std::fs::read(&path).unwrap();
            let key = std::fs::read(path.with_extension("key.json")).ok();
            let result = decode_message(&settings(), key.as_deref(), Some(&value), 1 << 20);
            assert!(result.is_ok(), "{name}: {result:?}");
            seen += 1;
        }
        assert!(seen >= 4, "{seen} examples");
    }

    #[test]
    fn odd_inputs_are_errors_not_panics() {
        let values = [
            json!(null),
            json!(1),
            json!("x"),
            json!({}),
            json!({"payload": {}}),
            json!({"op": null}),
            json!({"op": "c", "source": {"name": "n", "table": "t", "lsn": -1, "ts_ms": -5}}),
            json!({"op": "c", "source": {"name": "n", "table": "t", "lsn": 1, "ts_ns": i64::MIN}, "after": {}}),
            json!({"op": "r", "source": {"name": "n", "table": "t", "pos": u64::MAX, "ts_ms": i64::MAX}, "after": {"a": [[]]}}),
            json!({"op": "t", "source": {"name": "n", "table": "t", "row": 0, "ts_ms": "x"}}),
        ];
        let keys: [Option<&[u8]>; 5] = [
            None,
            Some(b""),
            Some(b"{}"),
            Some(b"{\"id\":{\"a\":[1]}}"),
            Some(b"\xff"),
        ];
        for value in &values {
            for key in keys {
                let _ = decode(&settings(), key, value);
            }
        }
    }
}
