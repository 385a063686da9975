//! Pipedrive webhooks, version 2.0 (`pipedrive-v2`).
//!
//! One Kafka message is one webhook body: `meta` (what happened, to which record, by whom),
//! `data` (the record as it is now, `null` after a delete) and `previous` (the changed fields'
//! old values, or the last state for a delete). It becomes exactly one canonical event:
//!
//! - `create` → `create`, full image from `data`;
//! - `change` → `update`, full image from `data` (v2 sends the whole object, not a diff);
//! - `delete` → `delete`, or `merge` into `meta.merged_to_id` when the delete is the losing
//!   side of a merge (v2 has no `merged` action: a merge is a delete plus a change).
//!
//! Custom fields sit in `data.custom_fields`, keyed by field hash; each becomes a field named
//! `custom_fields.<hash>` with its value kept as sent (`{"type":"monetary",...}` objects too).
//! A version 1 body (`current`, `meta.v`, actions `added`/`updated`/`deleted`/`merged`) is
//! refused with a message telling the operator to configure the webhook as version 2.0.

use serde_json::{Map, Value};

use super::support::{self, kind};
use super::FormatSettings;
use tandem_core::event::{Actor, ActorKind, ChangeEvent, Fields, Op};
use tandem_core::Timestamp;

/// The only webhook version this decoder reads (`meta.version`).
const VERSION: &str = "2.0";

/// The member of `data` that holds custom field values keyed by field hash.
const CUSTOM_FIELDS: &str = "custom_fields";

/// Seconds since the epoch beyond which a `meta.timestamp` is not a plausible time.
const MAX_SECONDS: i64 = 9_000_000_000;

/// What the webhook says happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Create,
    Change,
    Delete,
}

pub(super) fn decode(settings: &FormatSettings, value: &Value) -> Result<Vec<ChangeEvent>, String> {
    let root = value.as_object().ok_or_else(|| {
        format!(
            "the message is {}, expected a Pipedrive webhook object with `meta` and `data`",
            kind(value)
        )
    })?;
    let meta = match root.get("meta") {
        Some(Value::Object(meta)) => meta,
        Some(Value::Null) | None => {
            reject_version_1(root, None)?;
            return Err("`meta` is missing".to_owned());
        }
        Some(other) => return Err(format!("`meta` is {}, expected an object", kind(other))),
    };
    check_version(root, meta)?;

    let action = match support::string(meta, "action", "meta")?.as_str() {
        "create" => Action::Create,
        "change" => Action::Change,
        "delete" => Action::Delete,
        other => {
            return Err(format!(
                "`meta.action` is \"{other}\", expected one of create, change, delete"
            ))
        }
    };
    let vendor_entity = support::string(meta, "entity", "meta")?;
    if vendor_entity.trim().is_empty() {
        return Err("`meta.entity` is an empty string, expected an object type".to_owned());
    }
    let event = support::id(meta, "id", "meta")?;
    let occurred_at = timestamp(
        support::required(meta, "timestamp", "meta")?,
        "meta.timestamp",
    )?;
    let user_id = writer_id(meta, "user_id")?;
    let change_source = match support::optional_string(meta, "change_source", "meta")? {
        Some(source) if !source.trim().is_empty() => Some(source),
        _ => None,
    };

    let data = match support::optional(root, "data") {
        None => None,
        Some(Value::Object(data)) => Some(data),
        Some(other) => return Err(format!("`data` is {}, expected an object", kind(other))),
    };
    let previous = match support::optional(root, "previous") {
        None => None,
        Some(Value::Object(previous)) => Some(previous),
        Some(other) => {
            return Err(format!(
                "`previous` is {}, expected an object or null",
                kind(other)
            ))
        }
    };

    let (op, fields, merged_into) =
        match action {
            Action::Create | Action::Change => {
                let data =
                    data.ok_or_else(|| {
                        format!(
                    "`data` is missing, expected the record's current state for a `{}` action",
                    if action == Action::Create { "create" } else { "change" }
                )
                    })?;
                let op = if action == Action::Create {
                    Op::Create
                } else {
                    Op::Update
                };
                (op, Some(flatten(data)?), None)
            }
            Action::Delete => match support::optional_id(meta, "merged_to_id", "meta")? {
                Some(survivor) => (Op::Merge, None, Some(survivor)),
                None => (Op::Delete, None, None),
            },
        };
    // Read for its type only: a change done by a merge is an ordinary update of the survivor.
    support::optional_id(meta, "merged_from_id", "meta")?;

    let id = record_id(
        meta,
        data,
        if action == Action::Delete {
            previous
        } else {
            None
        },
    )?;
    let actor = actor(settings, user_id.as_deref(), change_source.as_deref());

    Ok(vec![ChangeEvent {
        event_id: format!("pd:{event}:{vendor_entity}:{id}"),
        entity: settings.entity(&vendor_entity),
        id,
        op,
        occurred_at,
        external_id: None,
        fields,
        partial: false,
        version: None,
        seq: None,
        actor,
        merged_into,
        snapshot_id: None,
        records: None,
        schema: None,
        transaction_id: None,
    }])
}

/// Accepts `meta.version` "2.0" only; a version 1 body gets a message saying how to fix it.
fn check_version(root: &Map<String, Value>, meta: &Map<String, Value>) -> Result<(), String> {
    match support::optional(meta, "version") {
        Some(Value::String(version)) if version == VERSION => Ok(()),
        found => {
            reject_version_1(root, Some(meta))?;
            Err(match found {
                None => format!("`meta.version` is missing, expected \"{VERSION}\""),
                Some(Value::String(version)) => {
                    format!("`meta.version` is \"{version}\", expected \"{VERSION}\"")
                }
                Some(other) => {
                    format!(
                        "`meta.version` is {}, expected the string \"{VERSION}\"",
                        kind(other)
                    )
                }
            })
        }
    }
}

/// An error if the body has the marks of a version 1 webhook.
fn reject_version_1(
    root: &Map<String, Value>,
    meta: Option<&Map<String, Value>>,
) -> Result<(), String> {
    let v1_action = meta
        .and_then(|meta| meta.get("action"))
        .and_then(Value::as_str)
        .filter(|action| matches!(*action, "added" | "updated" | "deleted" | "merged"));
    let marked = root.contains_key("v")
        || root.contains_key("current")
        || root.contains_key("retry")
        || meta.is_some_and(|meta| meta.contains_key("v") || meta.contains_key("object"))
        || v1_action.is_some();
    if !marked {
        return Ok(());
    }
    let detail = match v1_action {
        Some(action) => format!(" (action \"{action}\")"),
        None => String::new(),
    };
    Err(format!(
        "this is a Pipedrive webhooks version 1 body{detail}; tandem reads version {VERSION} only: \
         configure the webhook in Pipedrive with version \"{VERSION}\""
    ))
}

/// `meta.timestamp`: documented as a 10-character (seconds) timestamp, sent as an RFC 3339
/// string in the examples; both are read, seconds as a number or a string of digits.
fn timestamp(value: &Value, path: &str) -> Result<Timestamp, String> {
    let seconds = match value {
        Value::String(text)
            if !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit()) =>
        {
            text.parse::<i64>().ok()
        }
        Value::String(_) => return support::rfc3339(value, path),
        Value::Number(number) if number.is_f64() => {
            return Err(format!(
                "`{path}` is {number}, expected whole seconds since the epoch"
            ))
        }
        Value::Number(number) => number.as_i64(),
        other => {
            return Err(format!(
                "`{path}` is {}, expected an RFC 3339 time or seconds since the epoch",
                kind(other)
            ))
        }
    };
    match seconds {
        Some(seconds) if (-MAX_SECONDS..=MAX_SECONDS).contains(&seconds) => {
            Ok(Timestamp::from_unix_millis(seconds.saturating_mul(1000)))
        }
        _ => Err(format!(
            "`{path}` ({value}) is not a plausible time in seconds since the epoch"
        )),
    }
}

/// An optional writer id (`meta.user_id`): string or integer; null and "" are absent.
fn writer_id(meta: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match support::optional(meta, key) {
        Some(Value::String(text)) if text.trim().is_empty() => Ok(None),
        _ => support::optional_id(meta, key, "meta"),
    }
}

/// The record id: `meta.entity_id`, `data.id` and (for a delete) `previous.id`, whichever are
/// present; they must all name the same record.
fn record_id(
    meta: &Map<String, Value>,
    data: Option<&Map<String, Value>>,
    previous: Option<&Map<String, Value>>,
) -> Result<String, String> {
    let mut found: Option<(String, &str)> = None;
    let candidates = [
        (Some(meta), "meta", "entity_id"),
        (data, "data", "id"),
        (previous, "previous", "id"),
    ];
    for (map, path, key) in candidates {
        let Some(map) = map else { continue };
        let Some(id) = support::optional_id(map, key, path)? else {
            continue;
        };
        match &found {
            None => found = Some((id, path)),
            Some((first, first_path)) if *first != id => {
                let first_key = if *first_path == "meta" {
                    "entity_id"
                } else {
                    "id"
                };
                return Err(format!(
                    "`{path}.{key}` is \"{id}\" but `{first_path}.{first_key}` is \"{first}\"; they must name the same record"
                ));
            }
            Some(_) => {}
        }
    }
    found
        .map(|(id, _)| id)
        .ok_or_else(|| "`meta.entity_id` is missing (and no `data.id` names the record)".to_owned())
}

/// The record's fields: every member of `data` as is, except `custom_fields`, whose members
/// become `custom_fields.<hash>`.
fn flatten(data: &Map<String, Value>) -> Result<Fields, String> {
    let mut fields: Fields = data
        .iter()
        .filter(|(name, _)| name.as_str() != CUSTOM_FIELDS)
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    match data.get(CUSTOM_FIELDS) {
        None | Some(Value::Null) => {}
        Some(Value::Object(custom)) => {
            for (key, value) in custom {
                let name = format!("{CUSTOM_FIELDS}.{key}");
                if fields.contains_key(&name) {
                    return Err(format!(
                        "`data.{CUSTOM_FIELDS}.{key}` clashes with the field `data.{name}`"
                    ));
                }
                fields.insert(name, value.clone());
            }
        }
        Some(other) => {
            return Err(format!(
                "`data.{CUSTOM_FIELDS}` is {}, expected an object keyed by field hash",
                kind(other)
            ))
        }
    }
    Ok(fields)
}

/// The writer: `user:<user_id>` then `source:<change_source>` through the configured map,
/// else `api` → an integration and anything else → a user, identified by the user id.
fn actor(
    settings: &FormatSettings,
    user_id: Option<&str>,
    change_source: Option<&str>,
) -> Option<Actor> {
    let mut identifiers = Vec::with_capacity(2);
    if let Some(user) = user_id {
        identifiers.push(format!("user:{user}"));
    }
    if let Some(source) = change_source {
        identifiers.push(format!("source:{source}"));
    }
    let fallback = match (change_source, user_id) {
        (None, None) => None,
        (Some("api"), _) => Some(Actor {
            kind: ActorKind::Integration,
            id: user_id.map(str::to_owned),
            epoch: None,
        }),
        _ => Some(Actor {
            kind: ActorKind::User,
            id: user_id.map(str::to_owned),
            epoch: None,
        }),
    };
    settings.actor(&identifiers, fallback)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::{decode_message, parse_actor, Format};
    use tandem_core::event::DeadLetterReason;

    fn settings() -> FormatSettings {
        FormatSettings::new(Format::PipedriveV2)
    }

    fn time(text: &str) -> Timestamp {
        Timestamp::parse_rfc3339(text).unwrap()
    }

    fn fields(value: Value) -> Option<Fields> {
        match value {
            Value::Object(map) => Some(map.into_iter().collect::<BTreeMap<_, _>>()),
            _ => panic!("test fields must be an object"),
        }
    }

    fn error(value: &Value) -> String {
        decode(&settings(), value).unwrap_err()
    }

    fn create_deal() -> Value {
        json!({
            "meta": {
                "action": "create",
                "entity": "deal",
                "company_id": "7001",
                "correlation_id": "c1d2e3f4-0000-4000-8000-000000000001",
                "entity_id": "101",
                "id": "5b8a3c1e-1111-4a2b-9c3d-000000000001",
                "is_bulk_edit": false,
                "timestamp": "2026-03-02T09:15:00.250Z",
                "type": "general",
                "user_id": "42",
                "version": "2.0",
                "webhook_id": "900",
                "webhook_owner_id": "42",
                "change_source": "app",
                "attempt": 1,
                "host": "acme.pipedrive.com",
                "permitted_user_ids": ["42", "43"]
            },
            "data": {
                "id": 101,
                "title": "Acme renewal",
                "value": 1200,
                "currency": "EUR",
                "status": "open",
                "stage_id": 2,
                "person_id": 31,
                "org_id": null,
                "custom_fields": {
                    "8f1c2a": {"type": "monetary", "value": 500, "currency": "EUR"},
                    "9d0e4b": {"type": "enum", "id": 17},
                    "a77f01": {"type": "set", "values": [{"id": 3}, {"id": 4}]},
                    "b3c9d2": null
                }
            },
            "previous": null
        })
    }

    #[test]
    fn create_is_a_full_image_with_flattened_custom_fields() {
        let events = decode(&settings(), &create_deal()).unwrap();
        assert_eq!(
            events,
            vec![ChangeEvent {
                event_id: "pd:5b8a3c1e-1111-4a2b-9c3d-000000000001:deal:101".to_owned(),
                entity: "deal".to_owned(),
                id: "101".to_owned(),
                op: Op::Create,
                occurred_at: time("2026-03-02T09:15:00.250Z"),
                external_id: None,
                fields: fields(json!({
                    "id": 101,
                    "title": "Acme renewal",
                    "value": 1200,
                    "currency": "EUR",
                    "status": "open",
                    "stage_id": 2,
                    "person_id": 31,
                    "org_id": null,
                    "custom_fields.8f1c2a": {"type": "monetary", "value": 500, "currency": "EUR"},
                    "custom_fields.9d0e4b": {"type": "enum", "id": 17},
                    "custom_fields.a77f01": {"type": "set", "values": [{"id": 3}, {"id": 4}]},
                    "custom_fields.b3c9d2": null
                })),
                partial: false,
                version: None,
                seq: None,
                actor: Some(Actor {
                    kind: ActorKind::User,
                    id: Some("42".to_owned()),
                    epoch: None,
                }),
                merged_into: None,
                snapshot_id: None,
                records: None,
                schema: None,
                transaction_id: None,
            }]
        );
    }

    #[test]
    fn change_is_a_full_image_not_the_previous_diff_and_keeps_nulled_fields() {
        let message = json!({
            "meta": {
                "action": "change", "entity": "person", "entity_id": "31",
                "id": "e0000000-0000-4000-8000-000000000031", "is_bulk_edit": false,
                "timestamp": "2026-03-02T10:00:00Z", "type": "general", "user_id": "42",
                "version": "2.0", "webhook_id": "900", "change_source": "app", "attempt": 1
            },
            "data": {
                "id": 31, "name": "Ada Lovelace", "owner_id": 42, "org_id": null,
                "emails": [{"label": "work", "value": "ada@example.com", "primary": true}],
                "job_title": null,
                "custom_fields": {"c0ffee": {"type": "text", "value": "VIP"}}
            },
            "previous": {"job_title": "Analyst", "org_id": 7}
        });
        let mut objects = settings();
        objects
            .objects
            .insert("person".to_owned(), "contact".to_owned());
        let events = decode(&objects, &message).unwrap();
        assert_eq!(
            events,
            vec![ChangeEvent {
                event_id: "pd:e0000000-0000-4000-8000-000000000031:person:31".to_owned(),
                entity: "contact".to_owned(),
                id: "31".to_owned(),
                op: Op::Update,
                occurred_at: time("2026-03-02T10:00:00Z"),
                external_id: None,
                fields: fields(json!({
                    "id": 31, "name": "Ada Lovelace", "owner_id": 42, "org_id": null,
                    "emails": [{"label": "work", "value": "ada@example.com", "primary": true}],
                    "job_title": null,
                    "custom_fields.c0ffee": {"type": "text", "value": "VIP"}
                })),
                partial: false,
                version: None,
                seq: None,
                actor: Some(Actor {
                    kind: ActorKind::User,
                    id: Some("42".to_owned()),
                    epoch: None,
                }),
                merged_into: None,
                snapshot_id: None,
                records: None,
                schema: None,
                transaction_id: None,
            }]
        );
    }

    #[test]
    fn a_lead_has_a_uuid_id_and_an_api_change_is_an_integration() {
        let message = json!({
            "data": {
                "id": "adf21080-0e10-11eb-879b-05d71fb426ec", "title": "Inbound lead",
                "owner_id": 55, "person_id": 12, "organization_id": null,
                "value": {"amount": 300, "currency": "USD"}, "is_archived": false,
                "custom_fields": {}
            },
            "previous": {"value": null},
            "meta": {
                "action": "change", "entity": "lead",
                "entity_id": "adf21080-0e10-11eb-879b-05d71fb426ec",
                "id": "0f9e8d7c-0000-4000-8000-00000000aaaa", "timestamp": "2026-03-02T11:30:00.000Z",
                "type": "application", "user_id": "55", "version": "2.0", "webhook_id": "901",
                "change_source": "api", "attempt": 1
            }
        });
        let events = decode(&settings(), &message).unwrap();
        assert_eq!(events.len(), 1);
        let event = &events[0];
        assert_eq!(
            event.event_id,
            "pd:0f9e8d7c-0000-4000-8000-00000000aaaa:lead:adf21080-0e10-11eb-879b-05d71fb426ec"
        );
        assert_eq!(event.entity, "lead");
        assert_eq!(event.id, "adf21080-0e10-11eb-879b-05d71fb426ec");
        assert_eq!(event.op, Op::Update);
        assert_eq!(event.occurred_at, time("2026-03-02T11:30:00Z"));
        assert_eq!(
            event.fields,
            fields(json!({
                "id": "adf21080-0e10-11eb-879b-05d71fb426ec", "title": "Inbound lead",
                "owner_id": 55, "person_id": 12, "organization_id": null,
                "value": {"amount": 300, "currency": "USD"}, "is_archived": false
            }))
        );
        assert!(!event.partial);
        assert_eq!(
            event.actor,
            Some(Actor {
                kind: ActorKind::Integration,
                id: Some("55".to_owned()),
                epoch: None,
            })
        );
    }

    fn delete_organization() -> Value {
        json!({
            "meta": {
                "action": "delete", "entity": "organization", "entity_id": "77",
                "id": "d0000000-0000-4000-8000-000000000077", "is_bulk_edit": true,
                "timestamp": "2026-03-03T08:00:00Z", "type": "general", "user_id": "42",
                "version": "2.0", "webhook_id": "900", "change_source": "app", "attempt": 1
            },
            "data": null,
            "previous": {"id": 77, "name": "Old Org Ltd", "owner_id": 42, "custom_fields": {}}
        })
    }

    #[test]
    fn delete_carries_no_fields() {
        let events = decode(&settings(), &delete_organization()).unwrap();
        assert_eq!(
            events,
            vec![ChangeEvent {
                event_id: "pd:d0000000-0000-4000-8000-000000000077:organization:77".to_owned(),
                entity: "organization".to_owned(),
                id: "77".to_owned(),
                op: Op::Delete,
                occurred_at: time("2026-03-03T08:00:00Z"),
                external_id: None,
                fields: None,
                partial: false,
                version: None,
                seq: None,
                actor: Some(Actor {
                    kind: ActorKind::User,
                    id: Some("42".to_owned()),
                    epoch: None,
                }),
                merged_into: None,
                snapshot_id: None,
                records: None,
                schema: None,
                transaction_id: None,
            }]
        );
    }

    #[test]
    fn a_merge_is_a_delete_with_merged_to_id_and_a_change_with_merged_from_id() {
        let loser = json!({
            "meta": {
                "action": "delete", "entity": "person", "entity_id": "32",
                "id": "m0000000-0000-4000-8000-000000000032", "timestamp": "2026-03-03T09:00:00Z",
                "user_id": "42", "version": "2.0", "change_source": "app", "merged_to_id": "31"
            },
            "data": null,
            "previous": {"id": 32, "name": "Ada L."}
        });
        let survivor = json!({
            "meta": {
                "action": "change", "entity": "person", "entity_id": "31",
                "id": "m0000000-0000-4000-8000-000000000031", "timestamp": "2026-03-03T09:00:00Z",
                "user_id": "42", "version": "2.0", "change_source": "app", "merged_from_id": "32"
            },
            "data": {"id": 31, "name": "Ada Lovelace"},
            "previous": {"name": "Ada"}
        });
        let merged = decode(&settings(), &loser).unwrap();
        assert_eq!(
            merged,
            vec![ChangeEvent {
                event_id: "pd:m0000000-0000-4000-8000-000000000032:person:32".to_owned(),
                entity: "person".to_owned(),
                id: "32".to_owned(),
                op: Op::Merge,
                occurred_at: time("2026-03-03T09:00:00Z"),
                external_id: None,
                fields: None,
                partial: false,
                version: None,
                seq: None,
                actor: Some(Actor {
                    kind: ActorKind::User,
                    id: Some("42".to_owned()),
                    epoch: None,
                }),
                merged_into: Some("31".to_owned()),
                snapshot_id: None,
                records: None,
                schema: None,
                transaction_id: None,
            }]
        );
        let updated = decode(&settings(), &survivor).unwrap();
        assert_eq!(updated.len(), 1);
        assert_eq!(updated[0].op, Op::Update);
        assert_eq!(updated[0].id, "31");
        assert_eq!(updated[0].merged_into, None);
        assert_eq!(
            updated[0].fields,
            fields(json!({"id": 31, "name": "Ada Lovelace"}))
        );
    }

    #[test]
    fn numeric_meta_ids_and_a_ten_digit_timestamp_are_read() {
        // The shape some integrations show: integers in `meta` and seconds since the epoch.
        let message = json!({
            "meta": {
                "action": "change", "entity": "deal", "version": "2.0", "company_id": 12882925,
                "user_id": 18487521, "id": 5501, "entity_id": 1, "webhook_id": 99,
                "attempt": 1, "timestamp": 1727447128, "change_source": "app"
            },
            "data": {"id": 1, "title": "test deal", "value": 2, "status": "open"},
            "previous": {"value": 1}
        });
        let events = decode(&settings(), &message).unwrap();
        assert_eq!(events[0].event_id, "pd:5501:deal:1");
        assert_eq!(events[0].id, "1");
        assert_eq!(events[0].occurred_at, time("2024-09-27T14:25:28Z"));
        assert_eq!(
            events[0].actor,
            Some(Actor {
                kind: ActorKind::User,
                id: Some("18487521".to_owned()),
                epoch: None,
            })
        );
        let mut quoted = message.clone();
        quoted["meta"]["timestamp"] = json!("1727447128");
        assert_eq!(
            decode(&settings(), &quoted).unwrap()[0].occurred_at,
            time("2024-09-27T14:25:28Z")
        );
    }

    #[test]
    fn a_retry_gives_the_same_event_id_and_another_event_another() {
        let first = create_deal();
        let mut retry = create_deal();
        retry["meta"]["attempt"] = json!(3);
        let mut other_webhook = create_deal();
        other_webhook["meta"]["webhook_id"] = json!("901");
        let mut next_event = create_deal();
        next_event["meta"]["id"] = json!("5b8a3c1e-1111-4a2b-9c3d-000000000002");
        let id = |message: &Value| decode(&settings(), message).unwrap()[0].event_id.clone();
        assert_eq!(id(&first), id(&retry));
        assert_eq!(id(&first), id(&other_webhook));
        assert_ne!(id(&first), id(&next_event));
    }

    #[test]
    fn configured_actors_win_most_specific_first() {
        let mut configured = settings();
        configured.actors.insert(
            "source:api".to_owned(),
            parse_actor("integration:zapier").unwrap(),
        );
        configured
            .actors
            .insert("user:42".to_owned(), parse_actor("sync").unwrap());

        // user:42 is mapped and is more specific than source:app.
        let by_user = decode(&configured, &create_deal()).unwrap();
        assert_eq!(
            by_user[0].actor,
            Some(Actor {
                kind: ActorKind::Sync,
                id: None,
                epoch: None,
            })
        );

        // Another user through the API: only source:api is mapped.
        let mut api = create_deal();
        api["meta"]["user_id"] = json!("99");
        api["meta"]["change_source"] = json!("api");
        assert_eq!(
            decode(&configured, &api).unwrap()[0].actor,
            Some(Actor {
                kind: ActorKind::Integration,
                id: Some("zapier".to_owned()),
                epoch: None,
            })
        );
        // Without configuration the same message falls back to an integration named by user.
        assert_eq!(
            decode(&settings(), &api).unwrap()[0].actor,
            Some(Actor {
                kind: ActorKind::Integration,
                id: Some("99".to_owned()),
                epoch: None,
            })
        );

        // An undocumented source is read as a user; no writer at all means no actor.
        let mut automation = create_deal();
        automation["meta"]["change_source"] = json!("automation");
        assert_eq!(
            decode(&settings(), &automation).unwrap()[0].actor,
            Some(Actor {
                kind: ActorKind::User,
                id: Some("42".to_owned()),
                epoch: None,
            })
        );
        let mut nobody = create_deal();
        nobody["meta"]["user_id"] = Value::Null;
        nobody["meta"]
            .as_object_mut()
            .unwrap()
            .remove("change_source");
        assert_eq!(decode(&settings(), &nobody).unwrap()[0].actor, None);
    }

    #[test]
    fn a_version_1_body_is_refused_with_the_fix() {
        let v1 = json!({
            "v": 1,
            "matches_filters": {"current": []},
            "meta": {
                "v": 1, "action": "updated", "object": "deal", "id": 9, "company_id": 1,
                "user_id": 2, "host": "acme.pipedrive.com", "timestamp": 1739827361,
                "change_source": "api", "is_bulk_update": false, "webhook_id": "3"
            },
            "current": {"id": 9, "title": "Deal"},
            "previous": {"id": 9, "title": "Old"},
            "retry": 0,
            "event": "updated.deal"
        });
        let message = error(&v1);
        assert!(message.contains("version 1"), "{message}");
        assert!(message.contains("action \"updated\""), "{message}");
        assert!(message.contains("version \"2.0\""), "{message}");
    }

    #[test]
    fn malformed_messages_name_the_part_at_fault() {
        let mut no_entity = create_deal();
        no_entity["meta"].as_object_mut().unwrap().remove("entity");
        assert_eq!(error(&no_entity), "`meta.entity` is missing");

        let mut bad_time = create_deal();
        bad_time["meta"]["timestamp"] = json!(true);
        assert_eq!(
            error(&bad_time),
            "`meta.timestamp` is a boolean, expected an RFC 3339 time or seconds since the epoch"
        );

        let mut bad_action = create_deal();
        bad_action["meta"]["action"] = json!("archive");
        assert_eq!(
            error(&bad_action),
            "`meta.action` is \"archive\", expected one of create, change, delete"
        );

        let mut mismatch = create_deal();
        mismatch["meta"]["entity_id"] = json!("102");
        assert_eq!(
            error(&mismatch),
            "`data.id` is \"101\" but `meta.entity_id` is \"102\"; they must name the same record"
        );

        let mut deleted_mismatch = delete_organization();
        deleted_mismatch["previous"]["id"] = json!(78);
        assert!(error(&deleted_mismatch).starts_with("`previous.id` is \"78\""));

        let mut no_data = create_deal();
        no_data["data"] = Value::Null;
        assert!(error(&no_data).starts_with("`data` is missing"));

        let mut bad_custom = create_deal();
        bad_custom["data"]["custom_fields"] = json!([1, 2]);
        assert_eq!(
            error(&bad_custom),
            "`data.custom_fields` is an array, expected an object keyed by field hash"
        );

        let mut future = create_deal();
        future["meta"]["version"] = json!("3.0");
        assert_eq!(
            error(&future),
            "`meta.version` is \"3.0\", expected \"2.0\""
        );

        let mut no_version = create_deal();
        no_version["meta"]
            .as_object_mut()
            .unwrap()
            .remove("version");
        assert_eq!(
            error(&no_version),
            "`meta.version` is missing, expected \"2.0\""
        );

        let mut no_event = create_deal();
        no_event["meta"].as_object_mut().unwrap().remove("id");
        assert_eq!(error(&no_event), "`meta.id` is missing");

        let mut far_future = create_deal();
        far_future["meta"]["timestamp"] = json!(1_727_447_128_000_i64);
        assert!(error(&far_future).contains("not a plausible time"));

        let mut fractional = create_deal();
        fractional["meta"]["timestamp"] = json!(1727447128.5);
        assert_eq!(
            error(&fractional),
            "`meta.timestamp` is 1727447128.5, expected whole seconds since the epoch"
        );

        let mut bad_iso = create_deal();
        bad_iso["meta"]["timestamp"] = json!("yesterday");
        assert!(error(&bad_iso).starts_with("`meta.timestamp` is \"yesterday\""));

        let mut bad_previous = create_deal();
        bad_previous["previous"] = json!("x");
        assert_eq!(
            error(&bad_previous),
            "`previous` is a string, expected an object or null"
        );

        assert_eq!(
            error(&json!([create_deal()])),
            "the message is an array, expected a Pipedrive webhook object with `meta` and `data`"
        );
        assert_eq!(error(&json!({"data": {"id": 1}})), "`meta` is missing");
    }

    #[test]
    fn decode_message_reads_bytes_and_prefixes_errors() {
        let bytes = serde_json::to_vec(&delete_organization()).unwrap();
        let events = decode_message(&settings(), None, Some(&bytes), 1 << 20).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].op, Op::Delete);
        assert_eq!(events[0].id, "77");

        let mut bad = delete_organization();
        bad["meta"]["action"] = json!("deleted");
        let bytes = serde_json::to_vec(&bad).unwrap();
        let failure = decode_message(&settings(), None, Some(&bytes), 1 << 20).unwrap_err();
        assert_eq!(failure.reason, DeadLetterReason::SchemaViolation);
        assert!(
            failure.detail.starts_with("not a pipedrive-v2 message: "),
            "{failure}"
        );
    }

    #[test]
    fn the_examples_decode() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../schemas/examples/formats/pipedrive-v2");
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            let events = decode_message(&settings(), None, Some(&bytes), 1 << 20)
                .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
            assert_eq!(events.len(), 1, "{}", path.display());
            count += 1;
        }
        assert!((4..=8).contains(&count), "{count} examples");
    }

    #[test]
    fn no_input_shape_panics() {
        // Every member of a valid message replaced by each kind of JSON value, and removed.
        let kinds = [
            Value::Null,
            json!(true),
            json!(-1),
            json!(1.5),
            json!(u64::MAX),
            json!(""),
            json!("2.0"),
            json!([]),
            json!({}),
        ];
        for base in [create_deal(), delete_organization()] {
            let paths: Vec<(String, Option<String>)> = base
                .as_object()
                .unwrap()
                .iter()
                .flat_map(|(top, value)| {
                    let mut paths = vec![(top.clone(), None)];
                    if let Value::Object(inner) = value {
                        paths.extend(inner.keys().map(|key| (top.clone(), Some(key.clone()))));
                    }
                    paths
                })
                .collect();
            for (top, inner) in paths {
                for replacement in kinds.iter().cloned().map(Some).chain([None]) {
                    let mut message = base.clone();
                    let root = message.as_object_mut().unwrap();
                    match (&inner, replacement) {
                        (None, Some(value)) => {
                            root.insert(top.clone(), value);
                        }
                        (None, None) => {
                            root.remove(&top);
                        }
                        (Some(key), replacement) => {
                            if let Some(Value::Object(map)) = root.get_mut(&top) {
                                match replacement {
                                    Some(value) => map.insert(key.clone(), value),
                                    None => map.remove(key),
                                };
                            }
                        }
                    }
                    let _ = decode(&settings(), &message);
                }
            }
        }
    }
}
