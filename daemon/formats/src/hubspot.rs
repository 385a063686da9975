//! HubSpot webhook deliveries (Webhooks API v3, public and private apps).
//!
//! A delivery is a JSON array of subscription events; a single event object is accepted too.
//! Each event names its kind in `subscriptionType`, either in the legacy form
//! `<object>.<event>` (`contact.creation`, `deal.propertyChange`, ...) or in the generic form
//! `object.<event>` with the object type in `objectTypeId` (`0-1` for contacts, ...).
//!
//! HubSpot never sends a record image: a creation carries no properties and a property change
//! carries exactly one property. So a creation becomes a partial `create` with no fields, and
//! a record tandem first learns of this way stays unverified until a full image is read.
//! `schemas/formats/hubspot-webhooks.md` documents the mapping field by field.

use serde_json::{Map, Value};

use super::support;
use super::FormatSettings;
use tandem_core::event::{Actor, ActorKind, ChangeEvent, Fields, Op};
use tandem_core::Timestamp;

/// The event kinds, the part of `subscriptionType` after the last dot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Creation,
    PropertyChange,
    Deletion,
    PrivacyDeletion,
    Restore,
    Merge,
    AssociationChange,
    NewMessage,
}

const ACTIONS: &str =
    "creation, propertyChange, deletion, privacyDeletion, restore, merge, associationChange";

impl Action {
    fn parse(name: &str) -> Option<Action> {
        Some(match name {
            "creation" => Action::Creation,
            "propertyChange" => Action::PropertyChange,
            "deletion" => Action::Deletion,
            "privacyDeletion" => Action::PrivacyDeletion,
            "restore" => Action::Restore,
            "merge" => Action::Merge,
            "associationChange" => Action::AssociationChange,
            "newMessage" => Action::NewMessage,
            _ => return None,
        })
    }
}

/// Decodes one webhook delivery into its canonical events, in delivery order.
pub(super) fn decode(settings: &FormatSettings, value: &Value) -> Result<Vec<ChangeEvent>, String> {
    let mut events = Vec::new();
    match value {
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                decode_event(settings, item, &format!("$[{index}]"), &mut events)?;
            }
        }
        Value::Object(_) => decode_event(settings, value, "$", &mut events)?,
        other => {
            return Err(format!(
                "the message is {}, expected an array of webhook events or one event object",
                support::kind(other)
            ))
        }
    }
    Ok(events)
}

/// What every canonical event of one webhook event shares.
struct Common {
    /// `hs:<subscriptionId>:<eventId>`; each canonical event appends its record id.
    identity: String,
    occurred_at: Timestamp,
    actor: Option<Actor>,
}

impl Common {
    fn event(&self, entity: &str, id: &str, op: Op) -> ChangeEvent {
        ChangeEvent {
            event_id: format!("{}:{id}", self.identity),
            entity: entity.to_owned(),
            id: id.to_owned(),
            op,
            occurred_at: self.occurred_at,
            external_id: None,
            fields: None,
            partial: false,
            version: None,
            seq: None,
            actor: self.actor.clone(),
            merged_into: None,
            snapshot_id: None,
            records: None,
            schema: None,
            transaction_id: None,
        }
    }

    fn partial(&self, entity: &str, id: &str, op: Op, fields: Fields) -> ChangeEvent {
        ChangeEvent {
            fields: Some(fields),
            partial: true,
            ..self.event(entity, id, op)
        }
    }
}

/// The event's kind and the member that names it: `subscriptionType`, or `eventType`, its
/// name in HubSpot's earlier deliveries and documentation.
fn subscription_type(
    map: &Map<String, Value>,
    path: &str,
) -> Result<(&'static str, String), String> {
    let current = support::optional_string(map, "subscriptionType", path)?;
    let legacy = support::optional_string(map, "eventType", path)?;
    match (current, legacy) {
        (Some(current), Some(legacy)) if current != legacy => Err(format!(
            "`{path}.subscriptionType` is \"{current}\" but `{path}.eventType` is \"{legacy}\": expected one kind of event"
        )),
        (Some(current), _) => Ok(("subscriptionType", current)),
        (None, Some(legacy)) => Ok(("eventType", legacy)),
        (None, None) => Err(format!(
            "`{path}.subscriptionType` is missing (nor is there the legacy `eventType`)"
        )),
    }
}

fn decode_event(
    settings: &FormatSettings,
    item: &Value,
    path: &str,
    events: &mut Vec<ChangeEvent>,
) -> Result<(), String> {
    let map = support::object(item, path)?;
    let (kind_key, subscription_type) = subscription_type(map, path)?;
    let (object, action_name) = subscription_type
        .rsplit_once('.')
        .filter(|(object, action)| !object.trim().is_empty() && !action.is_empty())
        .ok_or_else(|| {
            format!(
                "`{path}.{kind_key}` is \"{subscription_type}\", expected `<object>.<event>` such as `contact.creation`"
            )
        })?;
    let action = Action::parse(action_name)
        .filter(|action| *action != Action::NewMessage || object == "conversation")
        .ok_or_else(|| {
            format!(
                "`{path}.{kind_key}` is \"{subscription_type}\": unknown event `{action_name}`, expected one of {ACTIONS}"
            )
        })?;
    // A new message in a conversation thread changes no record tandem compares.
    if action == Action::NewMessage {
        return Ok(());
    }

    // A delivery kept and replayed by a relay may lack its subscription: the event kind then
    // scopes the event id, which stays the same on every retry of that delivery.
    let scope = match support::optional_id(map, "subscriptionId", path)? {
        Some(subscription_id) => subscription_id,
        None => format!("type:{subscription_type}"),
    };
    let event_id = support::id(map, "eventId", path)?;
    let occurred_at = support::epoch_millis(
        support::required(map, "occurredAt", path)?,
        &format!("{path}.occurredAt"),
    )?;
    // Read for their shape only: they do not change what the event says.
    support::optional_id(map, "portalId", path)?;
    support::optional_id(map, "appId", path)?;
    if let Some(attempt) = support::optional(map, "attemptNumber") {
        support::unsigned(attempt, &format!("{path}.attemptNumber"))?;
    }
    let common = Common {
        identity: format!("hs:{scope}:{event_id}"),
        occurred_at,
        actor: actor(settings, map, path)?,
    };

    // The generic form names the object in `objectTypeId`, the legacy one in the type.
    let entity = || -> Result<String, String> {
        Ok(if object == "object" {
            entity_of_type_id(settings, &support::id(map, "objectTypeId", path)?)
        } else {
            settings.entity(object)
        })
    };
    match action {
        Action::Creation => {
            let id = support::id(map, "objectId", path)?;
            // No properties come with a creation: not a full image.
            events.push(common.partial(&entity()?, &id, Op::Create, Fields::new()));
        }
        Action::PropertyChange => {
            let id = support::id(map, "objectId", path)?;
            let name = support::string(map, "propertyName", path)?;
            if name.trim().is_empty() {
                return Err(format!(
                    "`{path}.propertyName` is an empty string, expected a property name"
                ));
            }
            let value = property_value(map, path)?;
            // HubSpot does not promise unique event ids: the property keeps two changes of
            // one operation apart.
            let mut event = common.partial(&entity()?, &id, Op::Update, Fields::new());
            event.event_id = format!("{}:{name}", event.event_id);
            event.fields = Some(Fields::from([(name, value)]));
            events.push(event);
        }
        Action::Deletion | Action::PrivacyDeletion => {
            let id = support::id(map, "objectId", path)?;
            events.push(common.event(&entity()?, &id, Op::Delete));
        }
        Action::Restore => {
            let id = support::id(map, "objectId", path)?;
            // A restore carries no properties: a record tandem knows keeps what it held, one
            // it never saw is unverified until it is read.
            events.push(common.partial(&entity()?, &id, Op::Undelete, Fields::new()));
        }
        Action::Merge => merge(map, path, &entity()?, &common, events)?,
        Action::AssociationChange => {
            events.push(association_change(settings, map, path, object, &common)?);
        }
        // Skipped before the event was read.
        Action::NewMessage => {}
    }
    Ok(())
}

/// The new value of a property: HubSpot sends every value as a string and clears a property
/// by setting it to "", so an empty, null or absent value is JSON null.
fn property_value(map: &Map<String, Value>, path: &str) -> Result<Value, String> {
    match support::optional(map, "propertyValue") {
        None => Ok(Value::Null),
        Some(Value::String(text)) if text.is_empty() => Ok(Value::Null),
        Some(value @ (Value::String(_) | Value::Number(_) | Value::Bool(_))) => Ok(value.clone()),
        Some(other) => Err(format!(
            "`{path}.propertyValue` is {}, expected a string",
            support::kind(other)
        )),
    }
}

/// A merge: every object merged away becomes a `merge` into the survivor, and the survivor,
/// whose properties the merge changed without saying how, becomes a `gap` so it is re-read.
///
/// The survivor is `newObjectId` when HubSpot made a new object of the merge, else
/// `primaryObjectId`; a primary that is not the survivor was merged away too.
fn merge(
    map: &Map<String, Value>,
    path: &str,
    entity: &str,
    common: &Common,
    events: &mut Vec<ChangeEvent>,
) -> Result<(), String> {
    let primary = support::id(map, "primaryObjectId", path)?;
    let merged_path = format!("{path}.mergedObjectIds");
    let merged = match support::required(map, "mergedObjectIds", path)? {
        Value::Array(ids) => ids
            .iter()
            .enumerate()
            .map(|(index, id)| support::id_text(id, &format!("{merged_path}[{index}]")))
            .collect::<Result<Vec<_>, _>>()?,
        other => {
            return Err(format!(
                "`{merged_path}` is {}, expected an array of object ids",
                support::kind(other)
            ))
        }
    };
    let survivor =
        support::optional_id(map, "newObjectId", path)?.unwrap_or_else(|| primary.clone());
    let mut gone: Vec<&String> = Vec::new();
    for id in merged.iter().chain(std::iter::once(&primary)) {
        if *id != survivor && !gone.contains(&id) {
            gone.push(id);
        }
    }
    for id in gone {
        events.push(ChangeEvent {
            merged_into: Some(survivor.clone()),
            ..common.event(entity, id, Op::Merge)
        });
    }
    events.push(common.event(entity, &survivor, Op::Gap));
    Ok(())
}

/// An association added or removed: a partial update of the from-object with one field,
/// `association:<type>:<toObjectId>`, holding `{"primary": bool}` while the association
/// exists and null once it is removed. An association is one member of a set, so it is a
/// field of its own rather than a value of a shared `associations` field.
fn association_change(
    settings: &FormatSettings,
    map: &Map<String, Value>,
    path: &str,
    object: &str,
    common: &Common,
) -> Result<ChangeEvent, String> {
    let generic = object == "object";
    let entity = if generic {
        entity_of_type_id(settings, &support::id(map, "fromObjectTypeId", path)?)
    } else {
        settings.entity(object)
    };
    let from = support::id(map, "fromObjectId", path)?;
    let to = support::id(map, "toObjectId", path)?;
    let kind = match support::optional_string(map, "associationType", path)? {
        Some(kind) if !kind.trim().is_empty() => kind,
        Some(_) => {
            return Err(format!(
                "`{path}.associationType` is an empty string, expected an association type"
            ))
        }
        // The generic form names the association by category and numeric type id.
        None if generic => {
            let type_id = support::id(map, "associationTypeId", path)?;
            match support::optional_string(map, "associationCategory", path)? {
                Some(category) if !category.trim().is_empty() => format!("{category}:{type_id}"),
                _ => type_id,
            }
        }
        None => return Err(format!("`{path}.associationType` is missing")),
    };
    let removed = boolean(map, "associationRemoved", path)?
        .ok_or_else(|| format!("`{path}.associationRemoved` is missing"))?;
    let primary = boolean(map, "isPrimaryAssociation", path)?.unwrap_or(false);
    let value = if removed {
        Value::Null
    } else {
        Value::Object(Map::from_iter([(
            "primary".to_owned(),
            Value::Bool(primary),
        )]))
    };
    let field = format!("association:{kind}:{to}");
    // One operation can link an object to several others under one event id: the
    // association keeps them apart.
    let mut event = common.partial(&entity, &from, Op::Update, Fields::new());
    event.event_id = format!("{}:{field}", event.event_id);
    event.fields = Some(Fields::from([(field, value)]));
    Ok(event)
}

/// An optional boolean member; present but not a boolean is an error.
fn boolean(map: &Map<String, Value>, key: &str, path: &str) -> Result<Option<bool>, String> {
    match support::optional(map, key) {
        None => Ok(None),
        Some(Value::Bool(flag)) => Ok(Some(*flag)),
        Some(other) => Err(format!(
            "`{path}.{key}` is {}, expected a boolean",
            support::kind(other)
        )),
    }
}

/// The entity of a generic event's `objectTypeId`: configuration may map the raw id
/// (`2-1234567` for a custom object); HubSpot's standard objects go by their legacy names, so
/// `object.creation` of `0-1` and `contact.creation` land on the same entity.
fn entity_of_type_id(settings: &FormatSettings, type_id: &str) -> String {
    if settings.objects.contains_key(type_id) {
        return settings.entity(type_id);
    }
    let name = match type_id {
        "0-1" => "contact",
        "0-2" => "company",
        "0-3" => "deal",
        "0-5" => "ticket",
        "0-7" => "product",
        "0-8" => "line_item",
        "0-14" => "quote",
        "0-27" => "task",
        "0-46" => "note",
        "0-47" => "meeting",
        "0-48" => "call",
        "0-49" => "email",
        other => other,
    };
    settings.entity(name)
}

/// How a `changeSource` is read when configuration maps none of the writer's identifiers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SourceKind {
    /// A person in HubSpot's own tools.
    User,
    /// An app or API client.
    Integration,
    /// HubSpot itself: workflows, calculated properties, sequences.
    System,
}

fn source_kind(change_source: &str) -> Option<SourceKind> {
    Some(match change_source {
        "CRM_UI" | "CRM_UI_BULK_ACTION" | "MOBILE_IOS" | "MOBILE_ANDROID" | "IMPORT"
        | "EXTENSION" => SourceKind::User,
        "INTEGRATION"
        | "API"
        | "INTEGRATIONS_PLATFORM"
        | "INTEGRATIONS_SYNC"
        | "SALESFORCE"
        | "EMAIL_INTEGRATION"
        | "GMAIL_INTEGRATION" => SourceKind::Integration,
        "AUTOMATION_PLATFORM"
        | "WORKFLOWS"
        | "CALCULATED"
        | "ANALYTICS"
        | "SEQUENCES"
        | "BOT"
        | "MIGRATION" => SourceKind::System,
        _ => return None,
    })
}

/// The writer a `sourceId` names: `userId:<id>` is a HubSpot user; an app is `appId:<id>`, or
/// a bare number when the change came from an integration.
enum Writer {
    User(String),
    App(String),
}

fn writer(source_id: &str, kind: Option<SourceKind>) -> Option<Writer> {
    match source_id.split_once(':') {
        Some((key, id)) => {
            let id = id.trim();
            if id.is_empty() {
                None
            } else if key.trim().eq_ignore_ascii_case("userId") {
                Some(Writer::User(id.to_owned()))
            } else if key.trim().eq_ignore_ascii_case("appId") {
                Some(Writer::App(id.to_owned()))
            } else {
                None
            }
        }
        None if kind == Some(SourceKind::Integration)
            && !source_id.is_empty()
            && source_id.bytes().all(|byte| byte.is_ascii_digit()) =>
        {
            Some(Writer::App(source_id.to_owned()))
        }
        None => None,
    }
}

/// The actor of a change from `changeSource` and `sourceId`.
///
/// Identifiers, most specific first: `user:<id>` or `app:<id>` (from `sourceId`), then
/// `source:<changeSource>:<sourceId>`, then `source:<changeSource>`.
fn actor(
    settings: &FormatSettings,
    map: &Map<String, Value>,
    path: &str,
) -> Result<Option<Actor>, String> {
    let change_source = support::optional_string(map, "changeSource", path)?
        .map(|text| text.trim().to_owned())
        .filter(|text| !text.is_empty());
    let source_id = match support::optional(map, "sourceId") {
        None => None,
        Some(Value::String(text)) => Some(text.trim().to_owned()).filter(|text| !text.is_empty()),
        Some(value) => Some(support::id_text(value, &format!("{path}.sourceId"))?),
    };
    let kind = change_source.as_deref().and_then(source_kind);
    let writer = source_id.as_deref().and_then(|id| writer(id, kind));

    let mut identifiers = Vec::new();
    match &writer {
        Some(Writer::User(id)) => identifiers.push(format!("user:{id}")),
        Some(Writer::App(id)) => identifiers.push(format!("app:{id}")),
        None => {}
    }
    if let Some(source) = &change_source {
        if let Some(source_id) = &source_id {
            identifiers.push(format!("source:{source}:{source_id}"));
        }
        identifiers.push(format!("source:{source}"));
    }

    let user_id = match &writer {
        Some(Writer::User(id)) => Some(id.clone()),
        _ => None,
    };
    let app_id = match &writer {
        Some(Writer::App(id)) => Some(id.clone()),
        _ => None,
    };
    let fallback = match kind {
        Some(SourceKind::User) => Some(Actor {
            kind: ActorKind::User,
            id: user_id,
            epoch: None,
        }),
        Some(SourceKind::Integration) => Some(Actor {
            kind: ActorKind::Integration,
            id: app_id,
            epoch: None,
        }),
        Some(SourceKind::System) => Some(Actor {
            kind: ActorKind::System,
            id: None,
            epoch: None,
        }),
        None => match writer {
            Some(Writer::User(id)) => Some(Actor {
                kind: ActorKind::User,
                id: Some(id),
                epoch: None,
            }),
            Some(Writer::App(id)) => Some(Actor {
                kind: ActorKind::Integration,
                id: Some(id),
                epoch: None,
            }),
            None => None,
        },
    };
    Ok(settings.actor(&identifiers, fallback))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::{decode_message, parse_actor, Format};
    use tandem_core::event::DeadLetterReason;

    fn settings() -> FormatSettings {
        FormatSettings::new(Format::HubspotWebhooks)
    }

    fn at(millis: i64) -> Timestamp {
        Timestamp::from_unix_millis(millis)
    }

    fn user(id: &str) -> Option<Actor> {
        Some(Actor {
            kind: ActorKind::User,
            id: Some(id.to_owned()),
            epoch: None,
        })
    }

    fn integration(id: Option<&str>) -> Option<Actor> {
        Some(Actor {
            kind: ActorKind::Integration,
            id: id.map(str::to_owned),
            epoch: None,
        })
    }

    /// A canonical event with every optional part empty, for the tests to fill in.
    fn expected(event_id: &str, entity: &str, id: &str, op: Op, millis: i64) -> ChangeEvent {
        ChangeEvent {
            event_id: event_id.to_owned(),
            entity: entity.to_owned(),
            id: id.to_owned(),
            op,
            occurred_at: at(millis),
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

    fn fields(pairs: &[(&str, Value)]) -> Option<Fields> {
        Some(
            pairs
                .iter()
                .map(|(name, value)| ((*name).to_owned(), value.clone()))
                .collect(),
        )
    }

    fn error(value: &Value) -> String {
        decode(&settings(), value).unwrap_err()
    }

    #[test]
    fn a_creation_is_a_partial_create_without_fields() {
        let delivery = json!([{
            "eventId": 1001, "subscriptionId": 2001, "portalId": 62515, "appId": 77,
            "occurredAt": 1_700_000_000_000_i64, "subscriptionType": "contact.creation",
            "attemptNumber": 0, "objectId": 512, "changeFlag": "CREATED",
            "changeSource": "CRM_UI", "sourceId": "userId:45678"
        }]);
        let events = decode(&settings(), &delivery).unwrap();
        assert_eq!(
            events,
            vec![ChangeEvent {
                fields: Some(Fields::new()),
                partial: true,
                actor: user("45678"),
                ..expected(
                    "hs:2001:1001:512",
                    "contact",
                    "512",
                    Op::Create,
                    1_700_000_000_000
                )
            }]
        );
    }

    #[test]
    fn property_changes_of_several_objects_keep_their_order_and_cleared_values_are_null() {
        let delivery = json!([
            {"eventId": 11, "subscriptionId": 5, "portalId": 1, "appId": 9, "occurredAt": 1000,
             "subscriptionType": "deal.propertyChange", "attemptNumber": 0, "objectId": 300,
             "propertyName": "amount", "propertyValue": "1250.50",
             "changeSource": "INTEGRATION", "sourceId": "9"},
            {"eventId": 12, "subscriptionId": 6, "portalId": 1, "appId": 9, "occurredAt": 1001,
             "subscriptionType": "contact.propertyChange", "attemptNumber": 0, "objectId": "41",
             "propertyName": "lastname", "propertyValue": ""},
            {"eventId": 13, "subscriptionId": 6, "portalId": 1, "appId": 9, "occurredAt": 999,
             "subscriptionType": "contact.propertyChange", "attemptNumber": 0, "objectId": 40,
             "propertyName": "phone", "propertyValue": null}
        ]);
        let events = decode(&settings(), &delivery).unwrap();
        assert_eq!(
            events,
            vec![
                ChangeEvent {
                    fields: fields(&[("amount", json!("1250.50"))]),
                    partial: true,
                    actor: integration(Some("9")),
                    ..expected("hs:5:11:300:amount", "deal", "300", Op::Update, 1000)
                },
                ChangeEvent {
                    fields: fields(&[("lastname", Value::Null)]),
                    partial: true,
                    ..expected("hs:6:12:41:lastname", "contact", "41", Op::Update, 1001)
                },
                ChangeEvent {
                    fields: fields(&[("phone", Value::Null)]),
                    partial: true,
                    ..expected("hs:6:13:40:phone", "contact", "40", Op::Update, 999)
                },
            ]
        );
    }

    #[test]
    fn deletions_privacy_deletions_and_restores() {
        let delivery = json!([
            {"eventId": 1, "subscriptionId": 10, "occurredAt": 5000,
             "subscriptionType": "company.deletion", "objectId": 70,
             "changeSource": "AUTOMATION_PLATFORM", "sourceId": "1234"},
            {"eventId": 2, "subscriptionId": 11, "occurredAt": 5001,
             "subscriptionType": "contact.privacyDeletion", "objectId": 71},
            {"eventId": 3, "subscriptionId": 12, "occurredAt": 5002,
             "subscriptionType": "ticket.restore", "objectId": 72,
             "changeSource": "CRM_UI", "sourceId": "userId:5"}
        ]);
        let system = Some(Actor {
            kind: ActorKind::System,
            id: None,
            epoch: None,
        });
        assert_eq!(
            decode(&settings(), &delivery).unwrap(),
            vec![
                ChangeEvent {
                    actor: system,
                    ..expected("hs:10:1:70", "company", "70", Op::Delete, 5000)
                },
                expected("hs:11:2:71", "contact", "71", Op::Delete, 5001),
                // No properties come with a restore: what tandem held stays, an unknown record
                // is unverified.
                ChangeEvent {
                    actor: user("5"),
                    fields: Some(Fields::new()),
                    partial: true,
                    ..expected("hs:12:3:72", "ticket", "72", Op::Undelete, 5002)
                },
            ]
        );
    }

    #[test]
    fn a_merge_retires_the_secondaries_and_re_reads_the_primary() {
        let delivery = json!([{
            "eventId": 400, "subscriptionId": 30, "portalId": 1, "appId": 2, "occurredAt": 9000,
            "subscriptionType": "contact.merge", "attemptNumber": 0, "objectId": 100,
            "changeSource": "CRM_UI", "sourceId": "userId:8",
            "primaryObjectId": 100, "mergedObjectIds": [101, 102], "newObjectId": 100,
            "numberOfPropertiesMoved": 4
        }]);
        let merged = |id: &str| ChangeEvent {
            merged_into: Some("100".to_owned()),
            actor: user("8"),
            ..expected(&format!("hs:30:400:{id}"), "contact", id, Op::Merge, 9000)
        };
        assert_eq!(
            decode(&settings(), &delivery).unwrap(),
            vec![
                merged("101"),
                merged("102"),
                ChangeEvent {
                    actor: user("8"),
                    ..expected("hs:30:400:100", "contact", "100", Op::Gap, 9000)
                },
            ]
        );
    }

    #[test]
    fn a_merge_into_a_new_object_retires_the_primary_too() {
        let delivery = json!({
            "eventId": 401, "subscriptionId": 31, "occurredAt": 9100,
            "subscriptionType": "company.merge", "objectId": 205,
            "primaryObjectId": "200", "mergedObjectIds": ["201", "200"], "newObjectId": "205"
        });
        let merged = |id: &str| ChangeEvent {
            merged_into: Some("205".to_owned()),
            ..expected(&format!("hs:31:401:{id}"), "company", id, Op::Merge, 9100)
        };
        assert_eq!(
            decode(&settings(), &delivery).unwrap(),
            vec![
                merged("201"),
                merged("200"),
                expected("hs:31:401:205", "company", "205", Op::Gap, 9100),
            ]
        );
    }

    #[test]
    fn association_changes_set_and_clear_one_field_per_associated_object() {
        let delivery = json!([
            {"eventId": 50, "subscriptionId": 40, "occurredAt": 7000,
             "subscriptionType": "contact.associationChange", "objectId": 1,
             "associationType": "CONTACT_TO_COMPANY", "fromObjectId": 1, "toObjectId": 900,
             "associationRemoved": false, "isPrimaryAssociation": true,
             "changeSource": "CRM_UI", "sourceId": "userId:3"},
            {"eventId": 51, "subscriptionId": 41, "occurredAt": 7001,
             "subscriptionType": "company.associationChange", "objectId": 900,
             "associationType": "COMPANY_TO_CONTACT", "fromObjectId": 900, "toObjectId": 1,
             "associationRemoved": true, "isPrimaryAssociation": false}
        ]);
        assert_eq!(
            decode(&settings(), &delivery).unwrap(),
            vec![
                ChangeEvent {
                    fields: fields(&[(
                        "association:CONTACT_TO_COMPANY:900",
                        json!({"primary": true})
                    )]),
                    partial: true,
                    actor: user("3"),
                    ..expected(
                        "hs:40:50:1:association:CONTACT_TO_COMPANY:900",
                        "contact",
                        "1",
                        Op::Update,
                        7000
                    )
                },
                ChangeEvent {
                    fields: fields(&[("association:COMPANY_TO_CONTACT:1", Value::Null)]),
                    partial: true,
                    ..expected(
                        "hs:41:51:900:association:COMPANY_TO_CONTACT:1",
                        "company",
                        "900",
                        Op::Update,
                        7001
                    )
                },
            ]
        );
    }

    #[test]
    fn generic_subscriptions_take_the_object_from_its_type_id() {
        let mut settings = settings();
        settings
            .objects
            .insert("2-7654321".to_owned(), "shipment".to_owned());
        settings
            .objects
            .insert("deal".to_owned(), "opportunity".to_owned());
        let delivery = json!([
            {"eventId": 1, "subscriptionId": 2, "occurredAt": 100,
             "subscriptionType": "object.propertyChange", "objectTypeId": "0-3", "objectId": 8,
             "propertyName": "dealstage", "propertyValue": "closedwon"},
            {"eventId": 3, "subscriptionId": 4, "occurredAt": 101,
             "subscriptionType": "object.creation", "objectTypeId": "2-7654321", "objectId": 9},
            {"eventId": 5, "subscriptionId": 6, "occurredAt": 102,
             "subscriptionType": "object.deletion", "objectTypeId": "0-999", "objectId": 10},
            {"eventId": 7, "subscriptionId": 8, "occurredAt": 103,
             "subscriptionType": "object.associationChange",
             "fromObjectTypeId": "0-1", "fromObjectId": 11, "toObjectTypeId": "0-2",
             "toObjectId": 12, "associationTypeId": 279, "associationCategory": "HUBSPOT_DEFINED",
             "associationRemoved": false}
        ]);
        assert_eq!(
            decode(&settings, &delivery).unwrap(),
            vec![
                ChangeEvent {
                    fields: fields(&[("dealstage", json!("closedwon"))]),
                    partial: true,
                    ..expected("hs:2:1:8:dealstage", "opportunity", "8", Op::Update, 100)
                },
                ChangeEvent {
                    fields: Some(Fields::new()),
                    partial: true,
                    ..expected("hs:4:3:9", "shipment", "9", Op::Create, 101)
                },
                expected("hs:6:5:10", "0-999", "10", Op::Delete, 102),
                ChangeEvent {
                    fields: fields(&[(
                        "association:HUBSPOT_DEFINED:279:12",
                        json!({"primary": false})
                    )]),
                    partial: true,
                    ..expected(
                        "hs:8:7:11:association:HUBSPOT_DEFINED:279:12",
                        "contact",
                        "11",
                        Op::Update,
                        103
                    )
                },
            ]
        );
    }

    #[test]
    fn configured_writers_win_over_the_reading_of_change_source() {
        let mut settings = settings();
        settings.actors = BTreeMap::from([
            ("app:31337".to_owned(), parse_actor("sync").unwrap()),
            ("user:42".to_owned(), parse_actor("repair").unwrap()),
            (
                "source:IMPORT".to_owned(),
                parse_actor("integration:bulk-import").unwrap(),
            ),
            (
                "source:AUTOMATION_PLATFORM:987".to_owned(),
                parse_actor("integration:lead-router").unwrap(),
            ),
        ]);
        let event = |source: &str, source_id: Value| {
            json!({"eventId": 1, "subscriptionId": 1, "occurredAt": 1,
                   "subscriptionType": "contact.propertyChange", "objectId": 1,
                   "propertyName": "email", "propertyValue": "a@example.com",
                   "changeSource": source, "sourceId": source_id})
        };
        let actor_of = |value: Value| decode(&settings, &value).unwrap().remove(0).actor;
        let named = |text: &str| Some(parse_actor(text).unwrap());

        // Mapped: the most specific identifier the configuration knows decides.
        assert_eq!(
            actor_of(event("INTEGRATION", json!("31337"))),
            named("sync")
        );
        assert_eq!(
            actor_of(event("IMPORT", json!("userId:42"))),
            named("repair")
        );
        assert_eq!(
            actor_of(event("IMPORT", json!("userId:43"))),
            named("integration:bulk-import")
        );
        assert_eq!(
            actor_of(event("AUTOMATION_PLATFORM", json!(987))),
            named("integration:lead-router")
        );
        // Not mapped: the fallback from changeSource and sourceId.
        assert_eq!(
            actor_of(event("INTEGRATION", json!("555"))),
            integration(Some("555"))
        );
        assert_eq!(actor_of(event("API", Value::Null)), integration(None));
        assert_eq!(actor_of(event("MOBILE_IOS", json!("userId:7"))), user("7"));
        assert_eq!(
            actor_of(event("CRM_UI", Value::Null)),
            Some(Actor {
                kind: ActorKind::User,
                id: None,
                epoch: None,
            })
        );
        assert_eq!(
            actor_of(event("WORKFLOWS", json!("userId:7"))),
            Some(Actor {
                kind: ActorKind::System,
                id: None,
                epoch: None,
            })
        );
        // An unknown source still names its user; a bare number is not read as an app there.
        assert_eq!(
            actor_of(event("MERGE_CONTACTS", json!("userId:9"))),
            user("9")
        );
        assert_eq!(actor_of(event("FORM", json!("123"))), None);
        assert_eq!(actor_of(event("", Value::Null)), None);
    }

    #[test]
    fn a_re_delivery_repeats_the_event_id() {
        let attempt = |number: u64| {
            json!([{"eventId": 3_400_564_480_u64, "subscriptionId": 3_329_277, "portalId": 4,
                    "appId": 5, "occurredAt": 1_742_077_073_905_i64,
                    "subscriptionType": "contact.creation", "attemptNumber": number,
                    "objectId": 106_314_056_576_u64, "changeSource": "INTEGRATION",
                    "sourceId": "5"}])
        };
        let first = decode(&settings(), &attempt(0)).unwrap();
        let retry = decode(&settings(), &attempt(3)).unwrap();
        assert_eq!(first, retry);
        assert_eq!(first[0].event_id, "hs:3329277:3400564480:106314056576");
    }

    #[test]
    fn conversation_messages_and_empty_deliveries_carry_nothing() {
        let delivery = json!([
            {"eventId": 1, "subscriptionId": 2, "occurredAt": 3, "objectId": 4,
             "subscriptionType": "conversation.newMessage", "messageId": "m-1",
             "messageType": "MESSAGE"},
            {"eventId": 5, "subscriptionId": 6, "occurredAt": 7, "objectId": 8,
             "subscriptionType": "conversation.creation"}
        ]);
        assert_eq!(
            decode(&settings(), &delivery).unwrap(),
            vec![ChangeEvent {
                fields: Some(Fields::new()),
                partial: true,
                ..expected("hs:6:5:8", "conversation", "8", Op::Create, 7)
            }]
        );
        assert_eq!(decode(&settings(), &json!([])).unwrap(), vec![]);
    }

    /// HubSpot's own batch example (the webhooks guide before `subscriptionType`) names the
    /// kind in `eventType`.
    #[test]
    fn the_legacy_event_type_names_the_kind() {
        let delivery: Value = serde_json::from_str(include_str!(
            "../../../schemas/examples/formats/hubspot-webhooks/legacy-event-type.json"
        ))
        .unwrap();
        let events = decode(&settings(), &delivery).unwrap();
        let summary: Vec<_> = events
            .iter()
            .map(|event| {
                (
                    event.event_id.as_str(),
                    event.entity.as_str(),
                    event.id.as_str(),
                    event.op,
                    event.occurred_at,
                    event.fields.clone(),
                )
            })
            .collect();
        let at = Timestamp::from_unix_nanos(1_462_216_307_945_000_000);
        assert_eq!(
            summary,
            vec![
                (
                    "hs:25:3816279340:1246965:lifecyclestage",
                    "contact",
                    "1246965",
                    Op::Update,
                    at,
                    Some(Fields::from([(
                        "lifecyclestage".to_owned(),
                        json!("subscriber")
                    )]))
                ),
                (
                    "hs:22:3816279480:1246978",
                    "contact",
                    "1246978",
                    Op::Create,
                    at,
                    Some(Fields::new())
                ),
            ]
        );
        // The same event under its current name is the same event.
        let mut renamed = delivery.clone();
        for event in renamed.as_array_mut().unwrap() {
            let kind = event.as_object_mut().unwrap().remove("eventType").unwrap();
            event["subscriptionType"] = kind;
        }
        assert_eq!(decode(&settings(), &renamed).unwrap(), events);
        // Both names present must agree.
        let mut both = delivery.clone();
        both[0]["subscriptionType"] = json!("contact.deletion");
        assert_eq!(
            decode(&settings(), &both).unwrap_err(),
            "`$[0].subscriptionType` is \"contact.deletion\" but `$[0].eventType` is \"contact.propertyChange\": expected one kind of event"
        );
    }

    #[test]
    fn without_a_subscription_id_retries_keep_one_event_id() {
        let delivery = |attempt: u64| {
            json!([{"objectId": 1246965, "propertyName": "lifecyclestage",
                    "propertyValue": "subscriber", "eventId": 3816279340_u64,
                    "portalId": 33, "occurredAt": 1462216307945_u64,
                    "subscriptionType": "contact.propertyChange", "attemptNumber": attempt},
                   {"objectId": 1246965, "eventId": 3816279340_u64, "portalId": 33,
                    "occurredAt": 1462216307945_u64, "subscriptionType": "contact.deletion",
                    "attemptNumber": attempt}])
        };
        let first = decode(&settings(), &delivery(0)).unwrap();
        let retry = decode(&settings(), &delivery(3)).unwrap();
        let ids = |events: &[ChangeEvent]| {
            events
                .iter()
                .map(|event| event.event_id.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            ids(&first),
            vec![
                "hs:type:contact.propertyChange:3816279340:1246965:lifecyclestage",
                "hs:type:contact.deletion:3816279340:1246965"
            ]
        );
        assert_eq!(first, retry);
    }

    #[test]
    fn malformed_events_name_the_part_at_fault() {
        let base = json!({"eventId": 1, "subscriptionId": 2, "occurredAt": 3, "objectId": 4,
                          "subscriptionType": "contact.propertyChange",
                          "propertyName": "email", "propertyValue": "x"});
        let with = |key: &str, value: Value| {
            let mut event = base.clone();
            event[key] = value;
            json!([{"eventId": 9, "subscriptionId": 9, "occurredAt": 9, "objectId": 9,
                    "subscriptionType": "contact.deletion"}, event])
        };
        let without = |key: &str| {
            let mut event = base.clone();
            event.as_object_mut().unwrap().remove(key);
            json!([event])
        };

        let cases = [
            (without("objectId"), "`$[0].objectId` is missing"),
            (without("subscriptionType"), "`$[0].subscriptionType` is missing"),
            (without("propertyName"), "`$[0].propertyName` is missing"),
            (
                with("occurredAt", json!("yesterday")),
                "`$[1].occurredAt` is a string, expected milliseconds since the epoch",
            ),
            (
                with("subscriptionType", json!("contact.upsert")),
                "`$[1].subscriptionType` is \"contact.upsert\": unknown event `upsert`, expected one of creation, propertyChange",
            ),
            (
                with("subscriptionType", json!("contact.newMessage")),
                "unknown event `newMessage`",
            ),
            (
                with("subscriptionType", json!("creation")),
                "`$[1].subscriptionType` is \"creation\", expected `<object>.<event>`",
            ),
            (with("eventId", json!(true)), "`$[1].eventId` is a boolean, expected a string or integer id"),
            (with("propertyValue", json!({"a": 1})), "`$[1].propertyValue` is an object, expected a string"),
            (with("changeSource", json!(5)), "`$[1].changeSource` is a number, expected a string"),
            (with("sourceId", json!(["userId:1"])), "`$[1].sourceId` is an array"),
            (with("attemptNumber", json!(-1)), "`$[1].attemptNumber` is -1, expected a non-negative integer"),
            (json!([1]), "`$[0]` is a number, expected an object"),
            (json!("contact.creation"), "the message is a string, expected an array"),
            (
                json!({"eventId": 1, "subscriptionId": 2, "occurredAt": 3,
                       "subscriptionType": "contact.merge", "primaryObjectId": 1,
                       "mergedObjectIds": 2}),
                "`$.mergedObjectIds` is a number, expected an array of object ids",
            ),
            (
                json!({"eventId": 1, "subscriptionId": 2, "occurredAt": 3,
                       "subscriptionType": "contact.merge", "primaryObjectId": 1,
                       "mergedObjectIds": [2, null]}),
                "`$.mergedObjectIds[1]` is null",
            ),
            (
                json!({"eventId": 1, "subscriptionId": 2, "occurredAt": 3,
                       "subscriptionType": "contact.associationChange", "fromObjectId": 1,
                       "toObjectId": 2, "associationType": "CONTACT_TO_COMPANY",
                       "associationRemoved": "no"}),
                "`$.associationRemoved` is a string, expected a boolean",
            ),
            (
                json!({"eventId": 1, "subscriptionId": 2, "occurredAt": 3,
                       "subscriptionType": "object.creation", "objectId": 4}),
                "`$.objectTypeId` is missing",
            ),
        ];
        for (value, message) in cases {
            let error = error(&value);
            assert!(error.contains(message), "{value}: {error}");
        }
    }

    #[test]
    fn decode_message_reads_a_delivery_from_bytes() {
        let bytes = br#"[{"eventId":7,"subscriptionId":8,"portalId":62515,"appId":1,
            "occurredAt":1700000000000,"subscriptionType":"deal.deletion","attemptNumber":1,
            "objectId":5150,"changeSource":"API","sourceId":"1"}]"#;
        let events = decode_message(&settings(), None, Some(bytes), 1 << 20).unwrap();
        assert_eq!(
            events,
            vec![ChangeEvent {
                actor: integration(Some("1")),
                ..expected("hs:8:7:5150", "deal", "5150", Op::Delete, 1_700_000_000_000)
            }]
        );

        let bad = br#"[{"eventId":7,"subscriptionId":8,"occurredAt":1,"subscriptionType":"deal.archive","objectId":1}]"#;
        let error = decode_message(&settings(), None, Some(bad), 1 << 20).unwrap_err();
        assert_eq!(error.reason, DeadLetterReason::SchemaViolation);
        assert!(
            error
                .detail
                .starts_with("not a hubspot-webhooks message: `$[0].subscriptionType`"),
            "{error}"
        );
    }

    #[test]
    fn the_documented_examples_decode() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../schemas/examples/formats/hubspot-webhooks");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            let events = decode_message(&settings(), None, Some(&bytes), 1 << 20)
                .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
            assert!(!events.is_empty(), "{}", path.display());
            seen += 1;
        }
        assert!((4..=8).contains(&seen), "{seen} examples");
    }

    #[test]
    fn odd_values_are_errors_not_panics() {
        for value in [
            json!(null),
            json!(true),
            json!([[]]),
            json!([{}]),
            json!({"subscriptionType": "."}),
            json!({"subscriptionType": "contact."}),
            json!({"eventId": 1, "subscriptionId": 2, "occurredAt": 1e300,
                   "subscriptionType": "contact.creation", "objectId": 1}),
            json!({"eventId": 1, "subscriptionId": 2, "occurredAt": i64::MIN,
                   "subscriptionType": "contact.creation", "objectId": 1}),
            json!({"eventId": 1, "subscriptionId": 2, "occurredAt": 3,
                   "subscriptionType": "contact.creation", "objectId": ""}),
            json!({"eventId": 1, "subscriptionId": 2, "occurredAt": 3,
                   "subscriptionType": "contact.propertyChange", "objectId": 1,
                   "propertyName": " "}),
        ] {
            assert!(decode(&settings(), &value).is_err(), "{value}");
        }
    }

    /// Values shaped like webhook events, with the members the decoder reads.
    fn event_like() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        const KEYS: [&str; 20] = [
            "eventId",
            "subscriptionId",
            "occurredAt",
            "subscriptionType",
            "objectId",
            "objectTypeId",
            "propertyName",
            "propertyValue",
            "changeSource",
            "sourceId",
            "primaryObjectId",
            "mergedObjectIds",
            "newObjectId",
            "fromObjectId",
            "toObjectId",
            "fromObjectTypeId",
            "associationType",
            "associationTypeId",
            "associationRemoved",
            "attemptNumber",
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(|number| json!(number)),
            "[a-zA-Z0-9:._ -]{0,10}".prop_map(Value::from),
            prop::sample::select(vec![
                "contact.creation",
                "deal.propertyChange",
                "company.deletion",
                "contact.merge",
                "ticket.restore",
                "contact.associationChange",
                "object.associationChange",
                "object.merge",
                "contact.privacyDeletion",
                "conversation.newMessage",
                "userId:7",
                "INTEGRATION",
                "CRM_UI",
                "0-1",
                "",
            ])
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 48, 12, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(prop::sample::select(KEYS.to_vec()), inner, 0..14)
                    .prop_map(|members| {
                        Value::Object(
                            members
                                .into_iter()
                                .map(|(key, value)| (key.to_owned(), value))
                                .collect(),
                        )
                    }),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn any_value_decodes_to_valid_events_or_an_error(value in event_like()) {
            if let Ok(events) = decode(&settings(), &value) {
                for event in &events {
                    proptest::prop_assert!(tandem_core::event::validate(event).is_ok(), "{event:?}");
                }
            }
        }
    }
}
