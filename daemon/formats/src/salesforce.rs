//! Salesforce Change Data Capture: change events as a Streaming API (CometD) client receives
//! them, or as a Pub/Sub API client has them after decoding the Avro payload.
//!
//! One change event names one or more records (`ChangeEventHeader.recordIds`: Salesforce merges
//! identical changes to several records of one object into one event); it becomes one canonical
//! event per record, each with the same fields. The shapes read, outermost first:
//!
//! - a CometD (Bayeux) message: `{"channel": "/data/AccountChangeEvent", "data": {...}}`;
//! - its `data`: `{"schema": "...", "payload": {...}, "event": {"replayId": 7, "EventUuid": "..."}}`;
//! - a Pub/Sub client's event: `{"id": "<uuid>", "replayId": 7, "payload": {...}}`, or the
//!   `ConsumerEvent` itself: `{"event": {"id": "<uuid>", "payload": {...}}, "replay_id": ...}`;
//! - the bare decoded record: `{"ChangeEventHeader": {...}, "Name": "Acme", ...}`, optionally
//!   with the event's `id` and `replay_id` (or `replayId`) next to the fields.
//!
//! A JSON array of such events is read too, ordered by `sequenceNumber` within each transaction.
//! `schemas/formats/salesforce-cdc.md` maps every part to the canonical event.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::event_schemas::EventSchema;
use super::support::{self, kind};
use super::FormatSettings;
use tandem_core::event::{Actor, ActorKind, ChangeEvent, Fields, Op};
use tandem_core::Timestamp;

/// The change types a header may carry, for error messages.
const CHANGE_TYPES: &str =
    "CREATE, UPDATE, DELETE, UNDELETE, GAP_CREATE, GAP_UPDATE, GAP_DELETE, GAP_UNDELETE, GAP_OVERFLOW";

/// The header member that holds the change metadata; everything else in the record is a field.
const HEADER: &str = "ChangeEventHeader";

/// Members that carry the event's identity when it sits next to the record fields (a Pub/Sub
/// client's decoded record); no Salesforce field has these names.
const ENVELOPE_MEMBERS: [&str; 6] = [
    "id",
    "replayId",
    "replay_id",
    "schemaId",
    "schema_id",
    "schema",
];

/// The client id Salesforce sets for changes made in its own user interface.
const SALESFORCE_UI_CLIENT: &str = "SfdcInternalAPI";

pub(super) fn decode(settings: &FormatSettings, value: &Value) -> Result<Vec<ChangeEvent>, String> {
    match value {
        Value::Array(items) if items.is_empty() => {
            Err("the message is an empty array, expected one or more change events".to_owned())
        }
        Value::Array(items) => {
            let mut decoded = Vec::with_capacity(items.len());
            for (index, item) in items.iter().enumerate() {
                decoded.push(decode_event(settings, item, &format!("[{index}]"))?);
            }
            Ok(in_commit_order(decoded))
        }
        value => Ok(decode_event(settings, value, "")?.events),
    }
}

/// One change event, decoded.
struct Decoded {
    transaction_key: Option<String>,
    sequence_number: Option<u64>,
    events: Vec<ChangeEvent>,
}

/// The events of several change events, each transaction's changes in `sequenceNumber` order
/// at the place of the transaction's first change; otherwise in message order.
fn in_commit_order(decoded: Vec<Decoded>) -> Vec<ChangeEvent> {
    let mut firsts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut keys = Vec::with_capacity(decoded.len());
    for (index, one) in decoded.iter().enumerate() {
        let group = match one.transaction_key.as_deref() {
            None => index,
            Some(key) => *firsts.entry(key).or_insert(index),
        };
        keys.push((group, one.sequence_number, index));
    }
    let mut keyed: Vec<_> = keys.into_iter().zip(decoded).collect();
    keyed.sort_by_key(|(key, _)| *key);
    keyed.into_iter().flat_map(|(_, one)| one.events).collect()
}

/// The path of `key` inside the object at `path` ("" is the message itself).
fn at(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// A member that is present and not null.
fn member<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    map.get(key).filter(|value| !value.is_null())
}

fn required<'a>(map: &'a Map<String, Value>, key: &str, path: &str) -> Result<&'a Value, String> {
    member(map, key).ok_or_else(|| format!("`{}` is missing", at(path, key)))
}

fn object<'a>(value: &'a Value, path: &str) -> Result<&'a Map<String, Value>, String> {
    value
        .as_object()
        .ok_or_else(|| format!("`{path}` is {}, expected an object", kind(value)))
}

fn text(map: &Map<String, Value>, key: &str, path: &str) -> Result<String, String> {
    match required(map, key, path)? {
        Value::String(text) if !text.trim().is_empty() => Ok(text.clone()),
        Value::String(_) => Err(format!("`{}` is an empty string", at(path, key))),
        other => Err(format!(
            "`{}` is {}, expected a string",
            at(path, key),
            kind(other)
        )),
    }
}

/// An optional string member; an empty string counts as absent (Salesforce leaves
/// `changeOrigin` empty for changes that are not made through an API).
fn optional_text(
    map: &Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<String>, String> {
    match member(map, key) {
        None => Ok(None),
        Some(Value::String(text)) if text.trim().is_empty() => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(other) => Err(format!(
            "`{}` is {}, expected a string",
            at(path, key),
            kind(other)
        )),
    }
}

fn optional_id(map: &Map<String, Value>, key: &str, path: &str) -> Result<Option<String>, String> {
    member(map, key)
        .map(|value| support::id_text(value, &at(path, key)))
        .transpose()
}

/// Where the record sits in the message, and the event identity found around it.
struct Located<'a> {
    record: &'a Map<String, Value>,
    path: String,
    /// Whether the record's object also holds the event's identity (`id`, `replay_id`).
    shares_envelope: bool,
    uuid: Option<String>,
    /// The replay id, or why it could not be read: that matters only when it is the identity.
    replay_id: Replay,
    /// The Pub/Sub schema id the event was written with (`schema_id`, `schemaId`), which
    /// decodes its field bitmaps.
    schema_id: Option<String>,
}

fn locate<'a>(value: &'a Value, path: &str) -> Result<Located<'a>, String> {
    let root = match value {
        Value::Object(map) => map,
        other => {
            let what = if path.is_empty() {
                "the message".to_owned()
            } else {
                format!("`{path}`")
            };
            return Err(format!(
                "{what} is {}, expected a change event object",
                kind(other)
            ));
        }
    };
    // A CometD (Bayeux) message carries the event in `data`, next to its `channel`.
    let (level, path) = match member(root, "data") {
        Some(data) if !root.contains_key(HEADER) => {
            let path = at(path, "data");
            (object(data, &path)?, path)
        }
        _ => (root, path.to_owned()),
    };
    if level.contains_key(HEADER) {
        return Ok(Located {
            record: level,
            uuid: optional_id(level, "id", &path)?,
            replay_id: replay_id(level, &path),
            schema_id: schema_id(level, &path),
            path,
            shares_envelope: true,
        });
    }
    if let Some(payload) = member(level, "payload") {
        // CometD `data` (identity in `event`), or a Pub/Sub client's event (identity beside it).
        let record_path = at(&path, "payload");
        let record = match payload {
            Value::Object(record) => record,
            other => {
                return Err(format!(
                    "`{record_path}` is {}, expected the decoded change event object (Avro payloads must be decoded before they are produced)",
                    kind(other)
                ))
            }
        };
        let (mut uuid, mut replay) = (optional_id(level, "id", &path)?, replay_id(level, &path));
        if let Some(event) = member(level, "event") {
            let event_path = at(&path, "event");
            let event = object(event, &event_path)?;
            uuid = uuid.or(optional_id(event, "EventUuid", &event_path)?);
            replay = either(replay, || replay_id(event, &event_path));
        }
        return Ok(Located {
            record,
            path: record_path,
            shares_envelope: false,
            uuid,
            replay_id: replay,
            schema_id: schema_id(level, &path),
        });
    }
    if let Some(event) = member(level, "event") {
        if event
            .as_object()
            .is_some_and(|event| member(event, "payload").is_some())
        {
            // A Pub/Sub `ConsumerEvent`: `{"event": {"id", "schema_id", "payload"}, "replay_id"}`.
            let mut located = locate(event, &at(&path, "event"))?;
            located.replay_id = either(located.replay_id, || replay_id(level, &path));
            located.schema_id = located.schema_id.or_else(|| schema_id(level, &path));
            return Ok(located);
        }
    }
    Err(format!(
        "`{}` is missing: expected a change event with the header beside the record fields, under `payload` (CometD event, Pub/Sub client), `data.payload` (CometD message) or `event.payload` (Pub/Sub ConsumerEvent)",
        at(&path, HEADER)
    ))
}

/// A replay id, or why it could not be read.
type Replay = Result<Option<String>, String>;

/// The first replay id found; an unreadable one counts only if no other is found.
fn either(first: Replay, second: impl FnOnce() -> Replay) -> Replay {
    match first {
        Ok(Some(replay)) => Ok(Some(replay)),
        Ok(None) => second(),
        Err(error) => match second() {
            Ok(Some(replay)) => Ok(Some(replay)),
            _ => Err(error),
        },
    }
}

fn replay_id(map: &Map<String, Value>, path: &str) -> Replay {
    match optional_id(map, "replayId", path)? {
        Some(replay) => Ok(Some(replay)),
        None => optional_id(map, "replay_id", path),
    }
}

/// The schema id beside the record; one that cannot be read is no schema id, since it only
/// decodes bitmaps, and an update whose bitmaps cannot be decoded is still read safely.
fn schema_id(map: &Map<String, Value>, path: &str) -> Option<String> {
    ["schema_id", "schemaId"]
        .into_iter()
        .find_map(|key| optional_id(map, key, path).ok().flatten())
}

/// What `changeType` says happened.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Change {
    Create,
    Update,
    Delete,
    Undelete,
    /// `GAP_CREATE`, `GAP_UPDATE`, ...: the change happened but its data was not captured.
    Gap,
    /// `GAP_OVERFLOW`: changes beyond 100,000 in one transaction, records not named.
    Overflow,
}

fn change_type(header: &Map<String, Value>, path: &str) -> Result<Change, String> {
    let value = text(header, "changeType", path)?;
    let path = at(path, "changeType");
    match value.as_str() {
        "CREATE" => Ok(Change::Create),
        "UPDATE" => Ok(Change::Update),
        "DELETE" => Ok(Change::Delete),
        "UNDELETE" => Ok(Change::Undelete),
        "GAP_CREATE" | "GAP_UPDATE" | "GAP_DELETE" | "GAP_UNDELETE" => Ok(Change::Gap),
        "GAP_OVERFLOW" => Ok(Change::Overflow),
        "SNAPSHOT" => Err(format!(
            "`{path}` is \"SNAPSHOT\", which Salesforce reserves for future use and does not document"
        )),
        other => Err(format!("`{path}` is \"{other}\", expected one of {CHANGE_TYPES}")),
    }
}

/// A header list (`changedFields`, `nulledFields`, `diffFields`) as the event gives it: field
/// names (CometD, or a producer that decoded the bitmaps) or Pub/Sub field bitmaps.
struct FieldList {
    items: Vec<String>,
    bitmaps: bool,
}

/// The fields a header list names, once its bitmaps are decoded.
enum Listed {
    /// The field names.
    Names(Vec<String>),
    /// Bitmaps that no loaded schema decodes: which fields they name cannot be known.
    Unknown,
}

impl Listed {
    /// The names, or nothing when they are unknown.
    fn known(&self) -> Option<&[String]> {
        match self {
            Listed::Names(names) => Some(names),
            Listed::Unknown => None,
        }
    }
}

/// A header list; absent is `None`.
fn field_list(
    header: &Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<FieldList>, String> {
    let path = at(path, key);
    let items = match member(header, key) {
        None => return Ok(None),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(format!(
                "`{path}` is {}, expected an array of field names or bitmaps",
                kind(other)
            ))
        }
    };
    let mut names = Vec::with_capacity(items.len());
    let mut bitmaps = 0;
    for (index, item) in items.iter().enumerate() {
        match item {
            Value::String(name) if is_bitmap(name) => {
                bitmaps += 1;
                names.push(name.clone());
            }
            Value::String(name) if !name.trim().is_empty() => names.push(name.clone()),
            Value::String(_) => {
                return Err(format!(
                    "`{path}[{index}]` is an empty string, expected a field name"
                ))
            }
            other => {
                return Err(format!(
                    "`{path}[{index}]` is {}, expected a field name",
                    kind(other)
                ))
            }
        }
    }
    if bitmaps > 0 && bitmaps < names.len() {
        return Err(format!(
            "`{path}` mixes field names and field bitmaps: expected all names or all bitmaps"
        ));
    }
    Ok(Some(FieldList {
        items: names,
        bitmaps: bitmaps > 0,
    }))
}

/// The field names of a list, decoding bitmaps with the event's schema. Bitmaps are decoded
/// only with the schema of the event's own schema id, of this entity's change event: another
/// version of the schema would name the wrong fields.
fn resolve(list: FieldList, schema: Option<&EventSchema>, entity_name: &str) -> Listed {
    if !list.bitmaps {
        return Listed::Names(list.items);
    }
    let Some(schema) = schema.filter(|schema| schema.name() == change_event_name(entity_name))
    else {
        return Listed::Unknown;
    };
    match schema.decode(&list.items) {
        Ok(names) => Listed::Names(names.into_iter().filter(|name| name != HEADER).collect()),
        Err(_) => Listed::Unknown,
    }
}

/// The change event of an object: `AccountChangeEvent`, `Employee__ChangeEvent` for the
/// custom object `Employee__c`.
fn change_event_name(entity_name: &str) -> String {
    match entity_name.strip_suffix("__c") {
        Some(base) => format!("{base}__ChangeEvent"),
        None => format!("{entity_name}ChangeEvent"),
    }
}

/// A Pub/Sub API field bitmap: `0x650004E0`, or `4-0x10` for the components of a compound field.
fn is_bitmap(text: &str) -> bool {
    let hex = text.split_once('-').map_or(text, |(position, hex)| {
        if !position.is_empty() && position.bytes().all(|byte| byte.is_ascii_digit()) {
            hex
        } else {
            text
        }
    });
    hex.strip_prefix("0x")
        .or_else(|| hex.strip_prefix("0X"))
        .is_some_and(|digits| {
            !digits.is_empty() && digits.bytes().all(|byte| byte.is_ascii_hexdigit())
        })
}

/// The API and the client id in `changeOrigin`:
/// `com/salesforce/api/<API_Name>/<API_Version>;client=<Client_ID>`.
struct Origin {
    api: Option<String>,
    client: Option<String>,
}

fn parse_origin(origin: Option<&str>) -> Origin {
    let Some(origin) = origin else {
        return Origin {
            api: None,
            client: None,
        };
    };
    let mut parts = origin.split(';');
    let api = parts
        .next()
        .and_then(|head| head.trim().strip_prefix("com/salesforce/api/"))
        .and_then(|rest| rest.split('/').next())
        .filter(|api| !api.is_empty())
        .map(str::to_owned);
    // The documented examples end the client id with a `/` (`client=SfdcInternalAPI/`).
    let client = parts
        .find_map(|part| part.trim().strip_prefix("client="))
        .map(|client| client.trim().trim_end_matches('/').trim())
        .filter(|client| !client.is_empty())
        .map(str::to_owned);
    Origin { api, client }
}

/// The writer of the change: identifiers most specific first, and the fallback reading.
fn actor(settings: &FormatSettings, origin: &Origin, commit_user: Option<&str>) -> Option<Actor> {
    let mut identifiers = Vec::with_capacity(3);
    if let Some(client) = &origin.client {
        identifiers.push(format!("client:{client}"));
    }
    if let Some(user) = commit_user {
        identifiers.push(format!("user:{user}"));
    }
    if let Some(api) = &origin.api {
        identifiers.push(format!("api:{api}"));
    }
    let user = || Actor {
        kind: ActorKind::User,
        id: commit_user.map(str::to_owned),
        epoch: None,
    };
    let fallback = match origin.client.as_deref() {
        Some(client) if client != SALESFORCE_UI_CLIENT => Some(Actor {
            kind: ActorKind::Integration,
            id: Some(client.to_owned()),
            epoch: None,
        }),
        Some(_) => Some(user()),
        None => commit_user.map(|_| user()),
    };
    settings.actor(&identifiers, fallback)
}

/// A field value sent as a unified diff (CometD: `{"diff": "--- \n+++ <hash>\n..."}`).
fn is_diff(value: &Value) -> bool {
    value
        .as_object()
        .is_some_and(|map| map.len() == 1 && map.get("diff").is_some_and(Value::is_string))
}

/// The record field of a compound field's component, as the object documents it:
/// `Name.LastName` is `LastName`, `BillingAddress.City` is `BillingCity`, `Address.City`
/// (Lead) is `City`, a custom `Site__c.Latitude` is `Site__Latitude__s`. Other standard
/// compounds keep the dotted name the header uses.
fn component_field(compound: &str, component: &str) -> String {
    if compound == "Name" {
        component.to_owned()
    } else if let Some(base) = compound.strip_suffix("__c") {
        match component.strip_suffix("__s") {
            Some(component) => format!("{base}__{component}__s"),
            None => format!("{base}__{component}__s"),
        }
    } else if let Some(prefix) = compound.strip_suffix("Address") {
        format!("{prefix}{component}")
    } else {
        format!("{compound}.{component}")
    }
}

/// Whether a member of a nested object is a compound field's component (`Street`,
/// `LastName`), not something else such as an Avro union wrapper (`{"string": "..."}`).
fn is_component(component: &str) -> bool {
    component.starts_with(|first: char| first.is_ascii_uppercase()) && !component.contains('.')
}

/// The fields of a record and whether some changed value could not be read from the event
/// (sent as a diff, or not sent at all), so the record must be read again.
#[derive(Default)]
struct Image {
    fields: Fields,
    reread: bool,
}

impl Image {
    /// Puts a field in the image, unless its value is a diff.
    fn put(&mut self, name: String, value: &Value, is_diff_field: bool) {
        if is_diff_field || is_diff(value) {
            self.reread = true;
        } else {
            self.fields.insert(name, value.clone());
        }
    }

    /// Puts every component of a compound field in the image.
    fn put_compound(
        &mut self,
        compound: &str,
        parts: &Map<String, Value>,
        path: &str,
        diff: &[String],
    ) -> Result<(), String> {
        for (component, value) in parts {
            if !is_component(component) {
                return Err(format!(
                    "`{}` is not a compound field's component (expected a name such as `Street` or `LastName`)",
                    at(path, component)
                ));
            }
            let listed = diff
                .iter()
                .any(|name| name.split_once('.') == Some((compound, component)));
            self.put(component_field(compound, component), value, listed);
        }
        Ok(())
    }
}

/// The record's fields: every field in the body (CREATE, UNDELETE).
fn full_image(
    body: &Map<String, Value>,
    path: &str,
    skip: &[&str],
    diff: &[String],
) -> Result<Image, String> {
    let mut image = Image::default();
    for (name, value) in body {
        if name == HEADER || skip.contains(&name.as_str()) {
            continue;
        }
        let listed = diff.contains(name);
        match value {
            Value::Object(parts) if !listed && !is_diff(value) => {
                image.put_compound(name, parts, &at(path, name), diff)?;
            }
            value => image.put(name.clone(), value, listed),
        }
    }
    Ok(image)
}

/// The fields of an update whose bitmaps no loaded schema decodes: what the body proves. In a
/// Pub/Sub event every field the update did not change is null, so a value that is not null
/// is the field's new value (or, for an enriched field, its current one); a null proves
/// nothing, since it may be a field the update set to null. Nulled fields the header names
/// are null; when they cannot be named, or some value may be a diff whose field cannot be
/// named, the record is read again.
fn proven_image(
    body: &Map<String, Value>,
    path: &str,
    skip: &[&str],
    nulled: &Listed,
    diff: &Listed,
) -> Result<Image, String> {
    let mut image = Image::default();
    let Some(diff) = diff.known() else {
        // Any text value may be a diff: none can be trusted as the field's value.
        image.reread = true;
        return Ok(image);
    };
    for (name, value) in body {
        if name == HEADER || skip.contains(&name.as_str()) || value.is_null() {
            continue;
        }
        let listed = diff.contains(name);
        match value {
            Value::Object(parts) if !listed && !is_diff(value) => {
                let set: Map<String, Value> = parts
                    .iter()
                    .filter(|(_, part)| !part.is_null())
                    .map(|(component, part)| (component.clone(), part.clone()))
                    .collect();
                image.put_compound(name, &set, &at(path, name), diff)?;
            }
            value => image.put(name.clone(), value, listed),
        }
    }
    match nulled.known() {
        Some(nulled) => {
            for name in nulled {
                let field = match name.split_once('.') {
                    Some((compound, component)) => component_field(compound, component),
                    None => name.clone(),
                };
                image.put(field, &Value::Null, false);
            }
        }
        None => image.reread = true,
    }
    Ok(image)
}

/// The record's fields: only those the header names as changed or nulled (UPDATE).
fn changed_image(
    body: &Map<String, Value>,
    path: &str,
    header_path: &str,
    changed: &[String],
    nulled: &[String],
    diff: &[String],
) -> Result<Image, String> {
    let mut image = Image::default();
    let nulled_only = nulled.iter().filter(|name| !changed.contains(name));
    for name in changed.iter().chain(nulled_only) {
        let is_nulled = nulled.contains(name);
        let listed = diff.contains(name);
        match name.split_once('.') {
            None if is_nulled => image.put(name.clone(), &Value::Null, false),
            None => match body.get(name.as_str()) {
                None => image.reread = true,
                Some(value) => match value {
                    Value::Object(parts) if !listed && !is_diff(value) => {
                        image.put_compound(name, parts, &at(path, name), diff)?;
                    }
                    value => image.put(name.clone(), value, listed),
                },
            },
            Some((compound, component)) => {
                if compound.is_empty() || !is_component(component) {
                    return Err(format!(
                        "`{header_path}` names \"{name}\", expected `Field` or `CompoundField.ComponentField` (such as `BillingAddress.City`)"
                    ));
                }
                let field = component_field(compound, component);
                if is_nulled {
                    image.put(field, &Value::Null, false);
                    continue;
                }
                match body.get(compound) {
                    None => image.reread = true,
                    Some(Value::Null) => image.put(field, &Value::Null, listed),
                    Some(Value::Object(parts)) => match parts.get(component) {
                        None => image.reread = true,
                        Some(value) => image.put(field, value, listed),
                    },
                    Some(other) => {
                        let at_fault = at(path, compound);
                        let what = kind(other);
                        return Err(format!(
                            "`{at_fault}` is {what}, expected an object: the header names its component \"{name}\""
                        ));
                    }
                }
            }
        }
    }
    Ok(image)
}

fn decode_event(settings: &FormatSettings, value: &Value, path: &str) -> Result<Decoded, String> {
    let located = locate(value, path)?;
    let header_path = at(&located.path, HEADER);
    let header = object(
        required(located.record, HEADER, &located.path)?,
        &header_path,
    )?;

    let change = change_type(header, &header_path)?;
    let entity_name = text(header, "entityName", &header_path)?;
    let occurred_at: Timestamp = support::epoch_millis(
        required(header, "commitTimestamp", &header_path)?,
        &at(&header_path, "commitTimestamp"),
    )?;
    let commit_user = optional_text(header, "commitUser", &header_path)?;
    let origin = parse_origin(optional_text(header, "changeOrigin", &header_path)?.as_deref());
    let transaction_key = optional_text(header, "transactionKey", &header_path)?;
    let sequence_number = member(header, "sequenceNumber")
        .map(|value| support::unsigned(value, &at(&header_path, "sequenceNumber")))
        .transpose()?;
    let record_ids = record_ids(header, &header_path, change)?;
    let schema = located
        .schema_id
        .as_deref()
        .and_then(|schema_id| settings.event_schemas.get(schema_id));
    let listed = |key: &str| -> Result<Option<Listed>, String> {
        Ok(field_list(header, key, &header_path)?.map(|list| resolve(list, schema, &entity_name)))
    };
    let changed = listed("changedFields")?;
    let nulled = listed("nulledFields")?.unwrap_or(Listed::Names(Vec::new()));
    let diff = listed("diffFields")?.unwrap_or(Listed::Names(Vec::new()));

    // The event's identity: its UUID, else its place in its transaction (unique in the org),
    // else its replay id. Replay ids are unique only per channel and can repeat after an org
    // migration, so two changes could share one and the second would be dropped.
    let identity = match (&located.uuid, &located.replay_id, &transaction_key, sequence_number) {
        (Some(uuid), _, _, _) => uuid.clone(),
        (None, _, Some(transaction), Some(sequence)) => format!("tx:{transaction}:{sequence}"),
        (None, Ok(Some(replay)), _, _) => replay.clone(),
        (None, Err(error), _, _) => return Err(error.clone()),
        _ => {
            return Err(format!(
                "the event has no identity: expected its UUID (`event.EventUuid` or `id`), its replay id (`event.replayId`, `replayId` or `replay_id`), or `{header_path}.transactionKey` with `sequenceNumber`"
            ))
        }
    };
    let event_id = |suffix: &str| format!("sf:{identity}:{suffix}");

    let skip: &[&str] = if located.shares_envelope {
        &ENVELOPE_MEMBERS
    } else {
        &[]
    };
    let whole = |op: Op| -> Result<(Op, Option<Image>, bool), String> {
        let mut image = full_image(
            located.record,
            &located.path,
            skip,
            diff.known().unwrap_or_default(),
        )?;
        // Some fields were sent as diffs, but which cannot be known: read the record again.
        image.reread |= diff.known().is_none();
        Ok((op, Some(image), false))
    };
    let (op, image, partial) = match change {
        Change::Create => whole(Op::Create)?,
        Change::Undelete => whole(Op::Undelete)?,
        Change::Update => {
            let changed = changed.ok_or_else(|| {
                format!(
                    "`{}` is missing: an UPDATE must name its changed fields",
                    at(&header_path, "changedFields")
                )
            })?;
            let image = match (changed.known(), nulled.known(), diff.known()) {
                (Some(changed), Some(nulled), Some(diff)) => changed_image(
                    located.record,
                    &located.path,
                    &at(&header_path, "changedFields"),
                    changed,
                    nulled,
                    diff,
                )?,
                _ => proven_image(located.record, &located.path, skip, &nulled, &diff)?,
            };
            (Op::Update, Some(image), true)
        }
        Change::Delete => (Op::Delete, None, false),
        Change::Gap | Change::Overflow => (Op::Gap, None, false),
    };

    let entity = settings.entity(&entity_name);
    let actor = actor(settings, &origin, commit_user.as_deref());
    let event =
        |event_id: String, id: &str, op: Op, fields: Option<Fields>, partial: bool| ChangeEvent {
            event_id,
            entity: entity.clone(),
            id: id.to_owned(),
            op,
            occurred_at,
            external_id: None,
            fields,
            partial,
            version: None,
            seq: None,
            actor: actor.clone(),
            merged_into: None,
            snapshot_id: None,
            records: None,
            schema: None,
            transaction_id: None,
        };

    let mut events = Vec::with_capacity(record_ids.len().saturating_mul(2).max(1));
    if change == Change::Overflow {
        // The changes beyond the threshold name no records: the whole entity needs a snapshot.
        events.push(event(event_id("*"), "", Op::Gap, None, false));
    }
    let reread = image.as_ref().is_some_and(|image| image.reread);
    let fields = image.map(|image| image.fields);
    let mut seen: Vec<&str> = Vec::with_capacity(record_ids.len());
    for id in &record_ids {
        if seen.contains(&id.as_str()) {
            continue;
        }
        seen.push(id);
        if id.ends_with('*') {
            // A key prefix and `*` (`001*`): a field type conversion changed every record.
            events.push(event(event_id(id), "", Op::Gap, None, false));
            continue;
        }
        events.push(event(event_id(id), id, op, fields.clone(), partial));
        if reread {
            events.push(event(
                event_id(&format!("{id}:reread")),
                id,
                Op::Gap,
                None,
                false,
            ));
        }
    }
    Ok(Decoded {
        transaction_key,
        sequence_number,
        events,
    })
}

fn record_ids(
    header: &Map<String, Value>,
    path: &str,
    change: Change,
) -> Result<Vec<String>, String> {
    let path_ids = at(path, "recordIds");
    let items = match (member(header, "recordIds"), change) {
        // An overflow event names no records.
        (_, Change::Overflow) => return Ok(Vec::new()),
        (None, _) => return Err(format!("`{path_ids}` is missing")),
        (Some(Value::Array(items)), _) => items,
        (Some(other), _) => {
            return Err(format!(
                "`{path_ids}` is {}, expected an array of record ids",
                kind(other)
            ))
        }
    };
    if items.is_empty() {
        return Err(format!(
            "`{path_ids}` is empty, expected at least one record id"
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(index, item)| match item {
            Value::String(id) if !id.trim().is_empty() => Ok(id.clone()),
            Value::String(_) => Err(format!(
                "`{path_ids}[{index}]` is an empty string, expected a record id"
            )),
            other => Err(format!(
                "`{path_ids}[{index}]` is {}, expected a record id string",
                kind(other)
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{decode_message, parse_actor, Format};
    use tandem_core::event::DeadLetterReason;

    fn settings() -> FormatSettings {
        FormatSettings::new(Format::SalesforceCdc)
    }

    fn time(text: &str) -> Timestamp {
        Timestamp::parse_rfc3339(text).unwrap()
    }

    fn fields(value: Value) -> Option<Fields> {
        Some(serde_json::from_value(value).unwrap())
    }

    fn user(id: &str) -> Option<Actor> {
        Some(Actor {
            kind: ActorKind::User,
            id: Some(id.to_owned()),
            epoch: None,
        })
    }

    /// An expected event with no fields, no actor; tests fill in the rest.
    fn expected(event_id: &str, entity: &str, id: &str, op: Op, occurred_at: &str) -> ChangeEvent {
        ChangeEvent {
            event_id: event_id.to_owned(),
            entity: entity.to_owned(),
            id: id.to_owned(),
            op,
            occurred_at: time(occurred_at),
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

    fn error(value: Value) -> String {
        decode(&settings(), &value).unwrap_err()
    }

    #[test]
    fn a_cometd_message_creates_a_full_image_with_the_address_flattened() {
        let message = json!({
            "channel": "/data/AccountChangeEvent",
            "data": {
                "schema": "pQ7nG2xWkL0aZcRt5uVb1A",
                "payload": {
                    "ChangeEventHeader": {
                        "entityName": "Account",
                        "recordIds": ["001Hn00001ZxQ2aIAF"],
                        "changeType": "CREATE",
                        "changeOrigin": "com/salesforce/api/soap/60.0;client=SfdcInternalAPI/",
                        "transactionKey": "0000a1b2-77c1-4f21-9d3e-5a6b7c8d9e0f",
                        "sequenceNumber": 1,
                        "commitTimestamp": 1714156685000_u64,
                        "commitNumber": 1100670838951_u64,
                        "commitUser": "005Hn00000AbCdEIAV",
                        "changedFields": []
                    },
                    "Name": "Northwind Traders",
                    "BillingAddress": {
                        "Street": "1 Harbour Road",
                        "City": "Portland",
                        "State": "OR",
                        "PostalCode": "97201",
                        "Country": "United States"
                    },
                    "OwnerId": "005Hn00000AbCdEIAV",
                    "CreatedDate": "2024-04-26T18:38:05.000Z",
                    "NumberOfEmployees": 120
                },
                "event": {"replayId": 2210456}
            }
        });
        let mut want = expected(
            "sf:tx:0000a1b2-77c1-4f21-9d3e-5a6b7c8d9e0f:1:001Hn00001ZxQ2aIAF",
            "account",
            "001Hn00001ZxQ2aIAF",
            Op::Create,
            "2024-04-26T18:38:05Z",
        );
        want.fields = fields(json!({
            "Name": "Northwind Traders",
            "BillingStreet": "1 Harbour Road",
            "BillingCity": "Portland",
            "BillingState": "OR",
            "BillingPostalCode": "97201",
            "BillingCountry": "United States",
            "OwnerId": "005Hn00000AbCdEIAV",
            "CreatedDate": "2024-04-26T18:38:05.000Z",
            "NumberOfEmployees": 120
        }));
        // `SfdcInternalAPI` is Salesforce's own user interface: the committing user wrote it.
        want.actor = user("005Hn00000AbCdEIAV");
        assert_eq!(decode(&settings(), &message).unwrap(), vec![want]);
    }

    #[test]
    fn a_cometd_update_carries_only_the_changed_fields_and_nulls() {
        let event = json!({
            "schema": "pQ7nG2xWkL0aZcRt5uVb1A",
            "payload": {
                "ChangeEventHeader": {
                    "entityName": "Account",
                    "recordIds": ["001Hn00001ZxQ2aIAF"],
                    "changeType": "UPDATE",
                    "changeOrigin": "com/salesforce/api/rest/60.0;client=BillingSync",
                    "transactionKey": "0000c3d4-1111-2222-3333-444455556666",
                    "sequenceNumber": 1,
                    "commitTimestamp": 1700000000000_u64,
                    "commitNumber": 1100670840000_u64,
                    "commitUser": "005Hn00000IntGrAAB",
                    "changedFields": ["Phone", "Fax", "BillingAddress.City", "LastModifiedDate"]
                },
                "Phone": "+1 503 555 0100",
                "Fax": null,
                "BillingAddress": {"City": "Salem"},
                "LastModifiedDate": "2023-11-14T22:13:20.000Z"
            },
            "event": {"EventUuid": "5b1c7c0e-8f0a-4d3b-9a55-2f6a3e1d0c77", "replayId": 2210470}
        });
        let mut want = expected(
            "sf:5b1c7c0e-8f0a-4d3b-9a55-2f6a3e1d0c77:001Hn00001ZxQ2aIAF",
            "account",
            "001Hn00001ZxQ2aIAF",
            Op::Update,
            "2023-11-14T22:13:20Z",
        );
        want.fields = fields(json!({
            "Phone": "+1 503 555 0100",
            "Fax": null,
            "BillingCity": "Salem",
            "LastModifiedDate": "2023-11-14T22:13:20.000Z"
        }));
        want.partial = true;
        want.actor = Some(Actor {
            kind: ActorKind::Integration,
            id: Some("BillingSync".to_owned()),
            epoch: None,
        });
        assert_eq!(decode(&settings(), &event).unwrap(), vec![want]);
    }

    #[test]
    fn a_pub_sub_update_takes_only_the_changed_fields_from_the_full_record() {
        // A Pub/Sub client's event: every field is present, unchanged ones empty.
        let event = json!({
            "id": "9d7f1e2a-0c4b-4e8d-b1a2-33c4d5e6f708",
            "schemaId": "Xy2pQ8mRt4LkWz0aBc9DeF",
            "replayId": 18098167,
            "payload": {
                "ChangeEventHeader": {
                    "entityName": "Account",
                    "recordIds": ["0014H00002LbR7QQAV"],
                    "changeType": "UPDATE",
                    "changeOrigin": "com/salesforce/api/soap/58.0;client=SfdcInternalAPI/",
                    "transactionKey": "000046c7-a642-11e2-c29b-229c6786473e",
                    "sequenceNumber": 1,
                    "commitTimestamp": 1696444513000_u64,
                    "commitNumber": 11657372702432_u64,
                    "commitUser": "00558000000yFyDAAU",
                    "nulledFields": ["Website"],
                    "diffFields": [],
                    "changedFields": ["LastModifiedDate", "BillingAddress.State", "Website"]
                },
                "Name": null,
                "Type": null,
                "BillingAddress": {
                    "Street": null, "City": null, "State": "NV", "PostalCode": null,
                    "Country": null, "Latitude": null, "Longitude": null, "GeocodeAccuracy": null
                },
                "ShippingAddress": null,
                "Phone": null,
                "Website": null,
                "LastModifiedDate": 1696444513000_u64
            }
        });
        let mut want = expected(
            "sf:9d7f1e2a-0c4b-4e8d-b1a2-33c4d5e6f708:0014H00002LbR7QQAV",
            "account",
            "0014H00002LbR7QQAV",
            Op::Update,
            "2023-10-04T18:35:13Z",
        );
        want.fields = fields(json!({
            "LastModifiedDate": 1696444513000_u64,
            "BillingState": "NV",
            "Website": null
        }));
        want.partial = true;
        want.actor = user("00558000000yFyDAAU");
        assert_eq!(decode(&settings(), &event).unwrap(), vec![want]);
    }

    #[test]
    fn a_bare_decoded_record_with_its_replay_id_beside_the_fields() {
        let record = json!({
            "replay_id": "AAAAAAAGq8E=",
            "ChangeEventHeader": {
                "entityName": "Contact",
                "recordIds": ["003Hn00002QwErTIAZ"],
                "changeType": "CREATE",
                "changeOrigin": "",
                "transactionKey": "00007aa1-5e5e-4c4c-8b8b-0a0b0c0d0e0f",
                "sequenceNumber": 2,
                "commitTimestamp": 1714153779000_u64,
                "commitNumber": 1100638524517_u64,
                "commitUser": "0055f000005mc66AAA",
                "nulledFields": [],
                "diffFields": [],
                "changedFields": []
            },
            "Name": {"Salutation": "Ms.", "FirstName": "Ada", "LastName": "Lovelace"},
            "MailingAddress": {"City": "London", "Country": null},
            "Email": "ada@example.com",
            "Languages__c": null
        });
        let mut settings = settings();
        settings
            .objects
            .insert("Contact".to_owned(), "person".to_owned());
        let mut want = expected(
            "sf:tx:00007aa1-5e5e-4c4c-8b8b-0a0b0c0d0e0f:2:003Hn00002QwErTIAZ",
            "person",
            "003Hn00002QwErTIAZ",
            Op::Create,
            "2024-04-26T17:49:39Z",
        );
        want.fields = fields(json!({
            "Salutation": "Ms.",
            "FirstName": "Ada",
            "LastName": "Lovelace",
            "MailingCity": "London",
            "MailingCountry": null,
            "Email": "ada@example.com",
            "Languages__c": null
        }));
        want.actor = user("0055f000005mc66AAA");
        assert_eq!(decode(&settings, &record).unwrap(), vec![want]);
    }

    #[test]
    fn a_pub_sub_consumer_event_delete_carries_no_fields() {
        let consumer_event = json!({
            "event": {
                "id": "0e3a9a54-6a3b-4a7e-9d0c-1f2e3d4c5b6a",
                "schema_id": "Xy2pQ8mRt4LkWz0aBc9DeF",
                "payload": {
                    "ChangeEventHeader": {
                        "entityName": "Opportunity",
                        "recordIds": ["006Hn00000XyZ12IAB"],
                        "changeType": "DELETE",
                        "changeOrigin": "com/salesforce/api/bulkapi/59.0",
                        "transactionKey": "0000ffee-0000-1111-2222-333344445555",
                        "sequenceNumber": 1,
                        "commitTimestamp": 1718000000000_u64,
                        "commitNumber": 1200000000001_u64,
                        "commitUser": "005Hn00000LoAdRAAB",
                        "nulledFields": [],
                        "diffFields": [],
                        "changedFields": []
                    },
                    "Name": null,
                    "StageName": null,
                    "Amount": null
                }
            },
            "replay_id": "AAAAAAAHAAE="
        });
        let mut want = expected(
            "sf:0e3a9a54-6a3b-4a7e-9d0c-1f2e3d4c5b6a:006Hn00000XyZ12IAB",
            "opportunity",
            "006Hn00000XyZ12IAB",
            Op::Delete,
            "2024-06-10T06:13:20Z",
        );
        want.actor = user("005Hn00000LoAdRAAB");
        assert_eq!(decode(&settings(), &consumer_event).unwrap(), vec![want]);
    }

    fn header(change_type: &str, record_ids: Value) -> Value {
        json!({
            "entityName": "Account",
            "recordIds": record_ids,
            "changeType": change_type,
            "changeOrigin": "com/salesforce/api/soap/60.0;client=Astro",
            "transactionKey": "0000abcd-0000-0000-0000-00000000beef",
            "sequenceNumber": 1,
            "commitTimestamp": 1714149392000_u64,
            "commitNumber": 1100583868458_u64,
            "commitUser": "005Hn00000AsTrOAAA",
            "changedFields": []
        })
    }

    fn cometd(header: Value, fields: Value, replay_id: u64) -> Value {
        let mut payload = fields;
        payload["ChangeEventHeader"] = header;
        json!({"data": {"schema": "s1", "payload": payload, "event": {"replayId": replay_id}}, "channel": "/data/ChangeEvents"})
    }

    fn astro() -> Option<Actor> {
        Some(Actor {
            kind: ActorKind::Integration,
            id: Some("Astro".to_owned()),
            epoch: None,
        })
    }

    #[test]
    fn a_merged_delete_becomes_one_event_per_record() {
        let message = cometd(
            header("DELETE", json!(["001A", "001B", "001A"])),
            json!({}),
            77,
        );
        let mut first = expected(
            "sf:tx:0000abcd-0000-0000-0000-00000000beef:1:001A",
            "account",
            "001A",
            Op::Delete,
            "2024-04-26T16:36:32Z",
        );
        first.actor = astro();
        let mut second = expected(
            "sf:tx:0000abcd-0000-0000-0000-00000000beef:1:001B",
            "account",
            "001B",
            Op::Delete,
            "2024-04-26T16:36:32Z",
        );
        second.actor = astro();
        assert_eq!(decode(&settings(), &message).unwrap(), vec![first, second]);
    }

    #[test]
    fn a_merged_update_gives_every_record_the_same_fields() {
        let mut head = header("UPDATE", json!(["001A", "001B"]));
        head["changedFields"] = json!(["Rating", "LastModifiedDate"]);
        let message = cometd(
            head,
            json!({"Rating": "Hot", "LastModifiedDate": "2024-04-26T16:36:32.000Z"}),
            78,
        );
        let changed =
            fields(json!({"Rating": "Hot", "LastModifiedDate": "2024-04-26T16:36:32.000Z"}));
        let want: Vec<ChangeEvent> = ["001A", "001B"]
            .iter()
            .map(|id| {
                let mut event = expected(
                    &format!("sf:tx:0000abcd-0000-0000-0000-00000000beef:1:{id}"),
                    "account",
                    id,
                    Op::Update,
                    "2024-04-26T16:36:32Z",
                );
                event.fields = changed.clone();
                event.partial = true;
                event.actor = astro();
                event
            })
            .collect();
        assert_eq!(decode(&settings(), &message).unwrap(), want);
    }

    #[test]
    fn an_undelete_is_a_full_image() {
        let message = cometd(
            header("UNDELETE", json!(["001C"])),
            json!({"Name": "Restored Ltd", "ShippingAddress": {"City": "Austin"}, "Custom_Site__c": {"Latitude": 30.27, "Longitude": -97.74}}),
            79,
        );
        let mut want = expected(
            "sf:tx:0000abcd-0000-0000-0000-00000000beef:1:001C",
            "account",
            "001C",
            Op::Undelete,
            "2024-04-26T16:36:32Z",
        );
        want.fields = fields(json!({
            "Name": "Restored Ltd",
            "ShippingCity": "Austin",
            "Custom_Site__Latitude__s": 30.27,
            "Custom_Site__Longitude__s": -97.74
        }));
        want.actor = astro();
        assert_eq!(decode(&settings(), &message).unwrap(), vec![want]);
    }

    #[test]
    fn gap_events_make_each_named_record_unverified() {
        let message = cometd(header("GAP_UPDATE", json!(["001D", "001E"])), json!({}), 80);
        let mut first = expected(
            "sf:tx:0000abcd-0000-0000-0000-00000000beef:1:001D",
            "account",
            "001D",
            Op::Gap,
            "2024-04-26T16:36:32Z",
        );
        first.actor = astro();
        let mut second = expected(
            "sf:tx:0000abcd-0000-0000-0000-00000000beef:1:001E",
            "account",
            "001E",
            Op::Gap,
            "2024-04-26T16:36:32Z",
        );
        second.actor = astro();
        assert_eq!(decode(&settings(), &message).unwrap(), vec![first, second]);
        for change_type in ["GAP_CREATE", "GAP_DELETE", "GAP_UNDELETE"] {
            let events = decode(
                &settings(),
                &cometd(header(change_type, json!(["001D"])), json!({}), 81),
            )
            .unwrap();
            assert_eq!(
                events
                    .iter()
                    .map(|event| (event.op, event.id.as_str()))
                    .collect::<Vec<_>>(),
                [(Op::Gap, "001D")]
            );
        }
    }

    #[test]
    fn an_overflow_is_one_gap_for_the_whole_entity() {
        let message = cometd(header("GAP_OVERFLOW", json!([])), json!({}), 82);
        let mut want = expected(
            "sf:tx:0000abcd-0000-0000-0000-00000000beef:1:*",
            "account",
            "",
            Op::Gap,
            "2024-04-26T16:36:32Z",
        );
        want.actor = astro();
        assert_eq!(decode(&settings(), &message).unwrap(), vec![want.clone()]);
        // Overflow events may leave the record ids out altogether.
        let mut head = header("GAP_OVERFLOW", json!(null));
        head.as_object_mut().unwrap().remove("recordIds");
        assert_eq!(
            decode(&settings(), &cometd(head, json!({}), 82)).unwrap(),
            vec![want]
        );
    }

    #[test]
    fn a_wildcard_record_id_is_a_gap_for_the_whole_entity() {
        let mut head = header("UPDATE", json!(["001*"]));
        head["changedFields"] = json!(["Tier__c"]);
        let message = cometd(head, json!({"Tier__c": null}), 83);
        let mut want = expected(
            "sf:tx:0000abcd-0000-0000-0000-00000000beef:1:001*",
            "account",
            "",
            Op::Gap,
            "2024-04-26T16:36:32Z",
        );
        want.actor = astro();
        assert_eq!(decode(&settings(), &message).unwrap(), vec![want]);
    }

    #[test]
    fn a_value_sent_as_a_diff_is_left_out_and_the_record_read_again() {
        let mut head = header("UPDATE", json!(["001F"]));
        head["changedFields"] = json!(["Description", "LastModifiedDate"]);
        let cometd_event = cometd(
            head.clone(),
            json!({
                "Description": {"diff": "--- \n+++ 682b8747ccdb\n@@ -2,1 +2,1 @@\n-old line\n+new line\n"},
                "LastModifiedDate": "2024-04-26T16:36:32.000Z"
            }),
            84,
        );
        let mut update = expected(
            "sf:tx:0000abcd-0000-0000-0000-00000000beef:1:001F",
            "account",
            "001F",
            Op::Update,
            "2024-04-26T16:36:32Z",
        );
        update.fields = fields(json!({"LastModifiedDate": "2024-04-26T16:36:32.000Z"}));
        update.partial = true;
        update.actor = astro();
        let mut reread = expected(
            "sf:tx:0000abcd-0000-0000-0000-00000000beef:1:001F:reread",
            "account",
            "001F",
            Op::Gap,
            "2024-04-26T16:36:32Z",
        );
        reread.actor = astro();
        assert_eq!(
            decode(&settings(), &cometd_event).unwrap(),
            vec![update.clone(), reread.clone()]
        );

        // Pub/Sub: the diff is a plain string, named in `diffFields`.
        head["diffFields"] = json!(["Description"]);
        head["nulledFields"] = json!([]);
        let pub_sub = cometd(
            head,
            json!({
                "Description": "--- \n+++ 682b8747ccdb\n@@ -2,1 +2,1 @@\n-old line\n+new line\n",
                "LastModifiedDate": "2024-04-26T16:36:32.000Z",
                "Name": null
            }),
            84,
        );
        assert_eq!(decode(&settings(), &pub_sub).unwrap(), vec![update, reread]);
    }

    #[test]
    fn a_changed_field_the_event_does_not_carry_means_a_reread() {
        let mut head = header("UPDATE", json!(["001G"]));
        head["changedFields"] = json!(["Industry", "LastModifiedDate"]);
        let message = cometd(
            head,
            json!({"LastModifiedDate": "2024-04-26T16:36:32.000Z"}),
            85,
        );
        let events = decode(&settings(), &message).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(
            events[0].fields,
            fields(json!({"LastModifiedDate": "2024-04-26T16:36:32.000Z"}))
        );
        assert_eq!(
            (events[1].op, events[1].event_id.as_str()),
            (
                Op::Gap,
                "sf:tx:0000abcd-0000-0000-0000-00000000beef:1:001G:reread"
            )
        );
    }

    #[test]
    fn a_name_component_change_sets_only_that_field() {
        let message = json!({
            "schema": "c1",
            "payload": {
                "ChangeEventHeader": {
                    "entityName": "Contact",
                    "recordIds": ["003Hn00002QwErTIAZ"],
                    "changeType": "UPDATE",
                    "changeOrigin": "com/salesforce/api/soap/60.0;client=SfdcInternalAPI/",
                    "transactionKey": "00001234-aaaa-bbbb-cccc-ddddeeeeffff",
                    "sequenceNumber": 1,
                    "commitTimestamp": 1714153779000_u64,
                    "commitNumber": 1100638524600_u64,
                    "commitUser": "0055f000005mc66AAA",
                    "nulledFields": ["Name.Salutation"],
                    "changedFields": ["Name.LastName", "LastModifiedDate"]
                },
                "Name": {"LastName": "King", "Salutation": null},
                "LastModifiedDate": "2024-04-26T17:49:39.000Z"
            },
            "event": {"replayId": 90}
        });
        let mut want = expected(
            "sf:tx:00001234-aaaa-bbbb-cccc-ddddeeeeffff:1:003Hn00002QwErTIAZ",
            "contact",
            "003Hn00002QwErTIAZ",
            Op::Update,
            "2024-04-26T17:49:39Z",
        );
        want.fields = fields(json!({
            "LastName": "King",
            "Salutation": null,
            "LastModifiedDate": "2024-04-26T17:49:39.000Z"
        }));
        want.partial = true;
        want.actor = user("0055f000005mc66AAA");
        assert_eq!(decode(&settings(), &message).unwrap(), vec![want]);
    }

    #[test]
    fn the_actor_comes_from_the_client_then_the_user_then_the_api() {
        let event_with = |origin: Value, user: Value| {
            let mut head = header("DELETE", json!(["001H"]));
            head["changeOrigin"] = origin;
            head["commitUser"] = user;
            cometd(head, json!({}), 91)
        };
        let actor_of = |settings: &FormatSettings, message: &Value| {
            decode(settings, message).unwrap()[0].actor.clone()
        };
        let plain = settings();
        let mut mapped = settings();
        mapped
            .actors
            .insert("client:Astro".to_owned(), parse_actor("sync").unwrap());
        mapped
            .actors
            .insert("user:005Repair".to_owned(), parse_actor("repair").unwrap());
        mapped
            .actors
            .insert("api:apex".to_owned(), parse_actor("system").unwrap());

        let astro = event_with(
            json!("com/salesforce/api/soap/49.0;client=Astro"),
            json!("005Repair"),
        );
        // Without configuration the client id is an integration; with it, the client wins.
        assert_eq!(
            actor_of(&plain, &astro),
            Some(Actor {
                kind: ActorKind::Integration,
                id: Some("Astro".to_owned()),
                epoch: None,
            })
        );
        assert_eq!(
            actor_of(&mapped, &astro),
            Some(Actor {
                kind: ActorKind::Sync,
                id: None,
                epoch: None,
            })
        );

        // No client: the committing user, mapped or as a user.
        let by_user = event_with(json!(""), json!("005Repair"));
        assert_eq!(actor_of(&plain, &by_user), user("005Repair"));
        assert_eq!(
            actor_of(&mapped, &by_user),
            Some(Actor {
                kind: ActorKind::Repair,
                id: None,
                epoch: None,
            })
        );

        // The API comes last: a mapped user is more specific.
        let apex = event_with(json!("com/salesforce/api/apex/60.0"), json!("005Other"));
        assert_eq!(actor_of(&plain, &apex), user("005Other"));
        assert_eq!(
            actor_of(&mapped, &apex),
            Some(Actor {
                kind: ActorKind::System,
                id: None,
                epoch: None,
            })
        );

        // Salesforce's own user interface is the user, unless configuration says otherwise.
        let ui = event_with(
            json!("com/salesforce/api/soap/58.0;client=SfdcInternalAPI/"),
            json!("005Other"),
        );
        assert_eq!(actor_of(&plain, &ui), user("005Other"));
        mapped.actors.insert(
            "client:SfdcInternalAPI".to_owned(),
            parse_actor("user:ui").unwrap(),
        );
        assert_eq!(
            actor_of(&mapped, &ui),
            Some(Actor {
                kind: ActorKind::User,
                id: Some("ui".to_owned()),
                epoch: None,
            })
        );

        // Nothing known about the writer.
        let nobody = event_with(json!(null), json!(null));
        assert_eq!(actor_of(&plain, &nobody), None);
    }

    #[test]
    fn a_redelivered_event_has_the_same_ids_in_every_shape() {
        let mut head = header("UPDATE", json!(["001J", "001K"]));
        head["changedFields"] = json!(["Rating"]);
        let message = cometd(head, json!({"Rating": "Warm"}), 92);
        let ids = |value: &Value| {
            decode(&settings(), value)
                .unwrap()
                .into_iter()
                .map(|event| event.event_id)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            ids(&message),
            [
                "sf:tx:0000abcd-0000-0000-0000-00000000beef:1:001J",
                "sf:tx:0000abcd-0000-0000-0000-00000000beef:1:001K"
            ]
        );
        assert_eq!(ids(&message), ids(&message.clone()));
        // The same event without the Bayeux envelope.
        assert_eq!(ids(&message["data"]), ids(&message));
        // Without a replay id or UUID, the event's place in its transaction names it.
        let mut bare = message["data"]["payload"].clone();
        assert_eq!(
            ids(&bare),
            [
                "sf:tx:0000abcd-0000-0000-0000-00000000beef:1:001J",
                "sf:tx:0000abcd-0000-0000-0000-00000000beef:1:001K"
            ]
        );
        bare["ChangeEventHeader"]
            .as_object_mut()
            .unwrap()
            .remove("transactionKey");
        assert!(decode(&settings(), &bare)
            .unwrap_err()
            .contains("no identity"));
    }

    #[test]
    fn changes_of_one_transaction_come_in_sequence_order() {
        let change = |transaction: &str, sequence: u64, id: &str, replay: u64| {
            let mut head = header("CREATE", json!([id]));
            head["transactionKey"] = json!(transaction);
            head["sequenceNumber"] = json!(sequence);
            cometd(head, json!({"Name": id}), replay)
        };
        let batch = json!([
            change("tx-a", 2, "001A2", 10),
            change("tx-b", 1, "001B1", 11),
            change("tx-a", 1, "001A1", 9)
        ]);
        let order: Vec<String> = decode(&settings(), &batch)
            .unwrap()
            .into_iter()
            .map(|event| event.id)
            .collect();
        assert_eq!(order, ["001A1", "001A2", "001B1"]);
        assert!(error(json!([])).contains("empty array"));
        assert!(error(json!([change("tx-a", 1, "001A1", 9), 5])).contains("`[1]` is a number"));
    }

    #[test]
    fn malformed_events_name_the_part_at_fault() {
        let good = cometd(header("DELETE", json!(["001Z"])), json!({}), 93);
        let broken = |edit: &dyn Fn(&mut Value)| {
            let mut message = good.clone();
            edit(&mut message);
            error(message)
        };
        assert_eq!(
            broken(&|m| {
                m["data"]["payload"]["ChangeEventHeader"]
                    .as_object_mut()
                    .unwrap()
                    .remove("changeType");
            }),
            "`data.payload.ChangeEventHeader.changeType` is missing"
        );
        assert_eq!(
            broken(&|m| m["data"]["payload"]["ChangeEventHeader"]["changeType"] = json!("UPSERT")),
            format!("`data.payload.ChangeEventHeader.changeType` is \"UPSERT\", expected one of {CHANGE_TYPES}")
        );
        assert_eq!(
            broken(&|m| m["data"]["payload"]["ChangeEventHeader"]["recordIds"] = json!("001Z")),
            "`data.payload.ChangeEventHeader.recordIds` is a string, expected an array of record ids"
        );
        assert_eq!(
            broken(&|m| m["data"]["payload"]["ChangeEventHeader"]["recordIds"] = json!([])),
            "`data.payload.ChangeEventHeader.recordIds` is empty, expected at least one record id"
        );
        assert_eq!(
            broken(&|m| m["data"]["payload"]["ChangeEventHeader"]["commitTimestamp"] = json!(true)),
            "`data.payload.ChangeEventHeader.commitTimestamp` is a boolean, expected milliseconds since the epoch"
        );
        assert!(broken(
            &|m| m["data"]["payload"]["ChangeEventHeader"]["changeType"] = json!("SNAPSHOT")
        )
        .contains("reserves for future use"));
        assert_eq!(
            broken(&|m| m["data"]["payload"]["ChangeEventHeader"]["entityName"] = json!(4)),
            "`data.payload.ChangeEventHeader.entityName` is a number, expected a string"
        );
        assert_eq!(
            broken(&|m| m["data"]["payload"] = json!("T2JqAQQUYXZyby5zY2hlbWE=")),
            "`data.payload` is a string, expected the decoded change event object (Avro payloads must be decoded before they are produced)"
        );
        assert!(error(json!({"channel": "/data/AccountChangeEvent"}))
            .contains("`ChangeEventHeader` is missing"));
        assert_eq!(
            error(json!("hello")),
            "the message is a string, expected a change event object"
        );

        let update = |changed: Value, body: Value| {
            let mut head = header("UPDATE", json!(["001Z"]));
            head["changedFields"] = changed;
            error(cometd(head, body, 94))
        };
        assert_eq!(
            update(json!(["0x650004E0", "Name"]), json!({})),
            "`data.payload.ChangeEventHeader.changedFields` mixes field names and field bitmaps: expected all names or all bitmaps"
        );
        assert_eq!(
            update(json!(["BillingAddress.City"]), json!({"BillingAddress": "Salem"})),
            "`data.payload.BillingAddress` is a string, expected an object: the header names its component \"BillingAddress.City\""
        );
        assert_eq!(
            update(json!(["Name"]), json!({"Name": {"string": "Avro"}})),
            "`data.payload.Name.string` is not a compound field's component (expected a name such as `Street` or `LastName`)"
        );
        assert_eq!(
            update(json!([".City"]), json!({})),
            "`data.payload.ChangeEventHeader.changedFields` names \".City\", expected `Field` or `CompoundField.ComponentField` (such as `BillingAddress.City`)"
        );
        assert_eq!(
            update(json!([7]), json!({})),
            "`data.payload.ChangeEventHeader.changedFields[0]` is a number, expected a field name"
        );
        let mut head = header("UPDATE", json!(["001Z"]));
        head.as_object_mut().unwrap().remove("changedFields");
        assert_eq!(
            error(cometd(head, json!({}), 95)),
            "`data.payload.ChangeEventHeader.changedFields` is missing: an UPDATE must name its changed fields"
        );
    }

    #[test]
    fn decode_message_reads_the_bytes_and_names_the_format_in_errors() {
        let message = cometd(header("GAP_DELETE", json!(["001Y"])), json!({}), 96);
        let bytes = serde_json::to_vec(&message).unwrap();
        let events = decode_message(&settings(), None, Some(&bytes), 1 << 20).unwrap();
        let mut want = expected(
            "sf:tx:0000abcd-0000-0000-0000-00000000beef:1:001Y",
            "account",
            "001Y",
            Op::Gap,
            "2024-04-26T16:36:32Z",
        );
        want.actor = astro();
        assert_eq!(events, vec![want]);

        let error = decode_message(
            &settings(),
            None,
            Some(br#"{"data": {"payload": {"ChangeEventHeader": {}}}}"#),
            1 << 20,
        )
        .unwrap_err();
        assert_eq!(error.reason, DeadLetterReason::SchemaViolation);
        assert_eq!(
            error.detail,
            "not a salesforce-cdc message: `data.payload.ChangeEventHeader.changeType` is missing"
        );
    }

    // -----------------------------------------------------------------------------------------
    // Pub/Sub field bitmaps.

    /// Salesforce's documented enriched update (`cdc_enrich_event_example`, API 61.0) as a
    /// `ConsumerEvent`, and the schema that lays out its fields in the documented order.
    const BITMAP_EVENT: &str = include_str!(
        "../../../schemas/examples/formats/salesforce-cdc/pubsub-bitmap-update-enriched.json"
    );
    const ACCOUNT_SCHEMA: &str = include_str!(
        "../../../schemas/examples/formats/salesforce-cdc/schemas/account-schema-get-schema.json"
    );
    const ACCOUNT_SCHEMA_ID: &str = "Jzq8aH1nVcyK0pS1cQj5Vw";

    fn with_schemas() -> FormatSettings {
        let response: Value = serde_json::from_str(ACCOUNT_SCHEMA).unwrap();
        let schema = response["schemaJson"].as_str().unwrap();
        FormatSettings {
            event_schemas: std::sync::Arc::new(
                crate::EventSchemas::from_text(ACCOUNT_SCHEMA_ID, schema).unwrap(),
            ),
            ..settings()
        }
    }

    fn bitmap_event() -> Value {
        serde_json::from_str(BITMAP_EVENT).unwrap()
    }

    /// The documented update as Salesforce describes it: only `Fax` and `LastModifiedDate`
    /// changed (bits 7 and 22 of `0x400080`).
    fn documented_update(fields_: Value) -> ChangeEvent {
        ChangeEvent {
            fields: fields(fields_),
            partial: true,
            actor: user("005ZM000000M6o1YAC"),
            ..expected(
                "sf:3c4c1a4e-5d3f-4a4b-9e7b-8f2f0c1d2e3a:001ZM000001QkdOYAS",
                "account",
                "001ZM000001QkdOYAS",
                Op::Update,
                "2024-04-26T23:06:35Z",
            )
        }
    }

    #[test]
    fn a_bitmap_is_decoded_with_the_schema_of_the_events_schema_id() {
        let events = decode(&with_schemas(), &bitmap_event()).unwrap();
        assert_eq!(
            events,
            vec![documented_update(
                json!({"Fax": "4155551212", "LastModifiedDate": 1714172795000_u64})
            )]
        );
    }

    #[test]
    fn without_the_schema_an_update_applies_what_its_values_prove() {
        // Unchanged fields are null in a Pub/Sub event: every value that is not null is the
        // field's value now (the changed Fax and LastModifiedDate, and the enriched fields),
        // and with no nulled or diff fields nothing else can have changed.
        let proven = json!({
            "Fax": "4155551212",
            "LastModifiedDate": 1714172795000_u64,
            "Industry": "Biotechnology",
            "External_Account_ID__c": "1ABC",
            "BillingStreet": "415 Mission Street",
            "BillingCity": "San Francisco",
            "BillingState": "CA",
            "BillingPostalCode": "94105",
            "BillingCountry": "United States"
        });
        assert_eq!(
            decode(&settings(), &bitmap_event()).unwrap(),
            vec![documented_update(proven.clone())]
        );
        // A schema id that was not loaded, or a schema of another object, is no schema.
        let mut unknown = bitmap_event();
        unknown["event"]["schema_id"] = json!("another-version");
        assert_eq!(
            decode(&with_schemas(), &unknown).unwrap(),
            vec![documented_update(proven.clone())]
        );
        let mut contact = bitmap_event();
        contact["event"]["payload"]["ChangeEventHeader"]["entityName"] = json!("Contact");
        let events = decode(&with_schemas(), &contact).unwrap();
        assert_eq!(events[0].fields, fields(proven));
    }

    #[test]
    fn nulled_fields_the_schema_cannot_name_make_the_record_read_again() {
        let mut event = bitmap_event();
        let head = &mut event["event"]["payload"]["ChangeEventHeader"];
        // Phone (bit 6) set to null, BillingAddress.City (4-0x2) set to null.
        head["nulledFields"] = json!(["0x40", "4-0x2"]);
        head["changedFields"] = json!(["0x400040", "4-0x2"]);
        let mut decoded = event.clone();
        decoded["event"]["payload"]["BillingAddress"]["City"] = Value::Null;
        let reread = |events: &[ChangeEvent]| {
            events
                .iter()
                .filter(|event| event.op == Op::Gap)
                .map(|event| event.event_id.clone())
                .collect::<Vec<_>>()
        };

        let with = decode(&with_schemas(), &decoded).unwrap();
        assert_eq!(
            with,
            vec![documented_update(json!({
                "Phone": null,
                "LastModifiedDate": 1714172795000_u64,
                "BillingCity": null
            }))]
        );

        let without = decode(&settings(), &decoded).unwrap();
        assert_eq!(
            reread(&without),
            vec!["sf:3c4c1a4e-5d3f-4a4b-9e7b-8f2f0c1d2e3a:001ZM000001QkdOYAS:reread"]
        );
        let fields = without[0].fields.as_ref().unwrap();
        assert!(!fields.contains_key("Phone") && !fields.contains_key("BillingCity"));
        assert_eq!(fields["LastModifiedDate"], json!(1714172795000_u64));
    }

    #[test]
    fn a_compound_nulled_whole_nulls_every_part() {
        // Bit 4 (BillingAddress) without its own element: every part was set to null.
        let mut event = bitmap_event();
        let head = &mut event["event"]["payload"]["ChangeEventHeader"];
        head["nulledFields"] = json!(["0x10"]);
        head["changedFields"] = json!(["0x400010"]);
        let events = decode(&with_schemas(), &event).unwrap();
        assert_eq!(
            events,
            vec![documented_update(json!({
                "LastModifiedDate": 1714172795000_u64,
                "BillingStreet": null,
                "BillingCity": null,
                "BillingState": null,
                "BillingPostalCode": null,
                "BillingCountry": null,
                "BillingLatitude": null,
                "BillingLongitude": null,
                "BillingGeocodeAccuracy": null
            }))]
        );
    }

    #[test]
    fn diff_fields_the_schema_cannot_name_leave_only_a_reread() {
        let mut event = bitmap_event();
        let head = &mut event["event"]["payload"]["ChangeEventHeader"];
        // Description (bit 16) arrived as a diff.
        head["diffFields"] = json!(["0x10000"]);
        head["changedFields"] = json!(["0x410000"]);
        event["event"]["payload"]["Description"] = json!("--- \n+++ 8d3c\n@@ -1 +1 @@\n-a\n+b\n");

        let with = decode(&with_schemas(), &event).unwrap();
        assert_eq!(with.len(), 2);
        assert_eq!(
            with[0].fields,
            fields(json!({"LastModifiedDate": 1714172795000_u64}))
        );
        assert_eq!(with[1].op, Op::Gap);

        // Without the schema any text may be the diff: nothing is applied, all is read again.
        let without = decode(&settings(), &event).unwrap();
        assert_eq!(without.len(), 2);
        assert_eq!(without[0].fields, Some(Fields::new()));
        assert_eq!(without[1].op, Op::Gap);
    }

    #[test]
    fn a_merged_bitmap_update_gives_every_record_the_decoded_fields() {
        let mut event = bitmap_event();
        event["event"]["payload"]["ChangeEventHeader"]["recordIds"] =
            json!(["001ZM000001QkdOYAS", "001ZM000001QkdPYAS"]);
        let events = decode(&with_schemas(), &event).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].id, "001ZM000001QkdPYAS");
        for event in &events {
            assert_eq!(
                event.fields,
                fields(json!({"Fax": "4155551212", "LastModifiedDate": 1714172795000_u64}))
            );
        }
    }

    #[test]
    fn a_bitmap_past_the_schema_is_read_as_unknown_not_guessed() {
        let mut event = bitmap_event();
        // Bit 40 is past the schema's 29 fields: the event was written with another schema.
        event["event"]["payload"]["ChangeEventHeader"]["changedFields"] = json!(["0x10000000080"]);
        event["event"]["payload"]["ChangeEventHeader"]["nulledFields"] = json!(["0x10000000000"]);
        let events = decode(&with_schemas(), &event).unwrap();
        assert_eq!(events.last().map(|event| event.op), Some(Op::Gap));
        assert!(!events[0].fields.as_ref().unwrap().is_empty());
    }

    #[test]
    fn a_replay_id_or_schema_id_that_cannot_be_read_matters_only_when_it_is_needed() {
        // The UUID names the event: a replay id in a relay's own spelling (an object for the
        // protobuf bytes) does not cost the change, and an unreadable schema id is no schema.
        let mut odd = bitmap_event();
        odd["replay_id"] = json!({"type": "Buffer", "data": [0, 0, 22, 162]});
        odd["event"]["schema_id"] = json!(["not", "an", "id"]);
        let events = decode(&with_schemas(), &odd).unwrap();
        assert_eq!(
            events[0].event_id,
            "sf:3c4c1a4e-5d3f-4a4b-9e7b-8f2f0c1d2e3a:001ZM000001QkdOYAS"
        );
        assert!(events[0].fields.as_ref().unwrap().contains_key("Industry"));
        // Without the UUID or a transaction place, the replay id is the identity.
        let mut only_replay = odd.clone();
        only_replay["event"].as_object_mut().unwrap().remove("id");
        let head = only_replay["event"]["payload"]["ChangeEventHeader"]
            .as_object_mut()
            .unwrap();
        head.remove("transactionKey");
        assert!(decode(&with_schemas(), &only_replay)
            .unwrap_err()
            .starts_with("`replay_id` is an object"));
    }

    #[test]
    fn every_example_decodes() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../schemas/examples/formats/salesforce-cdc");
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path
                .extension()
                .is_some_and(|extension| extension == "json")
            {
                let bytes = std::fs::read(&path).unwrap();
                let events = decode_message(&settings(), None, Some(&bytes), 1 << 20)
                    .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
                assert!(!events.is_empty(), "{}", path.display());
                count += 1;
            }
        }
        assert!(count >= 4, "only {count} examples in {}", dir.display());
    }

    #[test]
    fn field_bitmaps_are_recognised() {
        for bitmap in ["0x650004E0", "4-0x10", "0X1f"] {
            assert!(is_bitmap(bitmap), "{bitmap}");
        }
        for name in [
            "Name",
            "BillingAddress.City",
            "0x",
            "a-0x10",
            "0xZZ",
            "Ox10",
        ] {
            assert!(!is_bitmap(name), "{name}");
        }
    }
}
