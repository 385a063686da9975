//! Zendesk users and organizations: in a help-desk migration they are the contacts and the
//! companies. Their entities are the vendor objects `user` and `organization`, mapped through
//! `objects` like every other vendor object.
//!
//! - Event webhooks (`zen:event-type:user.*`, `zen:event-type:organization.*`) and the Support
//!   events read as them: `detail` holds some properties of the user or organization as they
//!   are after the event (ids quoted, as in ticket webhooks), so every event applies them as a
//!   partial update, and a `*_changed` event also sets its property from `event.current`.
//! - Incremental export pages (`/api/v2/incremental/users`, `.../organizations`, time or cursor
//!   based): each item is the full state of one user or organization.

use serde_json::{Map, Value};

use super::{
    actor_id, array, content_hash, external_id, external_id_value, fallback_actor, identifiers,
    join, normalize, Resource,
};
use crate::support::{id, kind, object, optional_id, required, rfc3339, string};
use crate::FormatSettings;
use tandem_core::event::{ChangeEvent, Fields, Op};
use tandem_core::Timestamp;

/// One webhook-form event about a user or an organization.
pub(super) struct Notice<'a> {
    pub(super) resource: Resource,
    /// The part of the type after the resource: `created`, `name_changed`, ...
    pub(super) action: &'a str,
    pub(super) message: &'a Map<String, Value>,
    pub(super) detail: &'a Map<String, Value>,
    pub(super) event: &'a Map<String, Value>,
    pub(super) event_id: String,
    pub(super) occurred_at: Timestamp,
}

/// The property a `<property>_changed` event sets from `event.current`, per resource.
fn property_of(resource: Resource, action: &str) -> Option<&'static str> {
    const USER: [(&str, &str); 15] = [
        ("active_changed", "active"),
        ("active_status_changed", "active"),
        ("alias_changed", "alias"),
        ("custom_role_changed", "custom_role_id"),
        ("default_group_changed", "default_group_id"),
        ("details_changed", "details"),
        ("external_id_changed", "external_id"),
        ("last_login_changed", "last_login_at"),
        ("name_changed", "name"),
        ("notes_changed", "notes"),
        ("only_private_comments_changed", "only_private_comments"),
        ("role_changed", "role"),
        ("suspended_changed", "suspended"),
        ("tags_changed", "tags"),
        ("time_zone_changed", "time_zone"),
    ];
    const ORGANIZATION: [(&str, &str); 3] = [
        ("external_id_changed", "external_id"),
        ("name_changed", "name"),
        ("tags_changed", "tags"),
    ];
    let table: &[(&str, &str)] = match resource {
        Resource::User => &USER,
        Resource::Organization => &ORGANIZATION,
        Resource::Ticket => return None,
    };
    table
        .iter()
        .find(|(known, _)| *known == action)
        .map(|(_, property)| *property)
}

/// The events of one webhook-form event about a user or an organization.
pub(super) fn webhook(
    settings: &FormatSettings,
    notice: Notice<'_>,
) -> Result<Vec<ChangeEvent>, String> {
    let Notice {
        resource,
        action,
        message,
        detail,
        event,
        event_id,
        occurred_at,
    } = notice;
    let id = match optional_id(detail, "id", ".detail")? {
        Some(id) => id,
        None => of_subject(message, resource)?,
    };
    let actor_id = actor_id(detail);
    let actor = actor_id.as_deref().and_then(|actor_id| {
        settings.actor(
            &identifiers(Some(actor_id), None),
            fallback_actor(Some(actor_id), None),
        )
    });
    let mut external_id = external_id(detail, ".detail")?;
    let mut fields: Fields = detail
        .iter()
        .filter(|(name, _)| name.as_str() != "actor_id")
        .map(|(name, value)| (name.clone(), normalize(name, value.clone())))
        .collect();
    if let (Some(property), Some(current)) = (property_of(resource, action), event.get("current")) {
        let value = normalize(property, current.clone());
        if property == "external_id" {
            external_id = external_id_value(&value, ".event.current")?;
        }
        fields.insert(property.to_owned(), value);
    }
    let event_of = |event_id: String, op: Op, fields: Option<Fields>| ChangeEvent {
        event_id,
        entity: settings.entity(resource.name()),
        id: id.clone(),
        op,
        occurred_at,
        external_id: external_id.clone(),
        partial: fields.is_some(),
        fields,
        version: None,
        seq: None,
        actor: actor.clone(),
        merged_into: None,
        snapshot_id: None,
        records: None,
        schema: None,
        transaction_id: None,
    };
    match action {
        // `detail` holds a handful of properties, not the custom fields: not a full image.
        "created" => return Ok(vec![event_of(event_id, Op::Create, Some(fields))]),
        "deleted" => return Ok(vec![event_of(event_id, Op::Delete, None)]),
        // The user it was merged into is not named: what it holds now must be read.
        "merged" => return Ok(vec![event_of(event_id, Op::Gap, None)]),
        // The custom field is named by an id that the REST API's `user_fields` and
        // `organization_fields` (keyed by name) do not carry: read the record again.
        "custom_field_changed" => {
            let reread = event_of(format!("{event_id}:reread"), Op::Gap, None);
            return Ok(vec![event_of(event_id, Op::Update, Some(fields)), reread]);
        }
        _ => {}
    }
    Ok(vec![event_of(event_id, Op::Update, Some(fields))])
}

/// The id of a webhook `subject` such as `zen:user:6596848315901`.
fn of_subject(message: &Map<String, Value>, resource: Resource) -> Result<String, String> {
    let name = resource.name();
    let subject = string(message, "subject", "").map_err(|_| {
        format!("`.detail.id` is missing (and there is no `.subject` \"zen:{name}:<id>\")")
    })?;
    subject
        .strip_prefix(&format!("zen:{name}:"))
        .filter(|id| !id.trim().is_empty())
        .map(str::to_owned)
        .ok_or_else(|| format!("`.subject` is \"{subject}\", expected \"zen:{name}:<id>\""))
}

/// The users or organizations of an incremental export page, each a full image.
pub(super) fn export_page(
    settings: &FormatSettings,
    message: &Map<String, Value>,
) -> Result<Vec<ChangeEvent>, String> {
    let mut events = Vec::new();
    for (member, resource) in [
        ("users", Resource::User),
        ("organizations", Resource::Organization),
    ] {
        let Some(items) = message.get(member) else {
            continue;
        };
        let path = format!(".{member}");
        for (index, item) in array(items, &path)?.iter().enumerate() {
            let path = format!("{path}[{index}]");
            events.push(image(settings, resource, object(item, &path)?, &path)?);
        }
    }
    Ok(events)
}

/// One user or organization read as its full state, its `user_fields` or
/// `organization_fields` spread out as `user_fields.<key>`.
fn image(
    settings: &FormatSettings,
    resource: Resource,
    item: &Map<String, Value>,
    path: &str,
) -> Result<ChangeEvent, String> {
    let custom = match resource {
        Resource::Organization => "organization_fields",
        _ => "user_fields",
    };
    let id = id(item, "id", path)?;
    let occurred_at = rfc3339(
        required(item, "updated_at", path)?,
        &join(path, "updated_at"),
    )?;
    let mut fields: Fields = item
        .iter()
        .filter(|(name, _)| name.as_str() != custom)
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    match item.get(custom) {
        None | Some(Value::Null) => {}
        Some(Value::Object(values)) => {
            for (key, value) in values {
                fields.insert(format!("{custom}.{key}"), value.clone());
            }
        }
        Some(other) => {
            return Err(format!(
                "`{}` is {}, expected an object of custom field values",
                join(path, custom),
                kind(other)
            ))
        }
    }
    // The same state exported twice is one event; two states in one second differ in content.
    let event_id = format!(
        "zd:{}:{id}:{}:{:016x}",
        resource.name(),
        occurred_at.to_rfc3339(),
        content_hash(Some(&fields))
    );
    Ok(ChangeEvent {
        event_id,
        entity: settings.entity(resource.name()),
        id,
        op: Op::Update,
        occurred_at,
        external_id: external_id(item, path)?,
        fields: Some(fields),
        partial: false,
        version: None,
        seq: None,
        actor: None,
        merged_into: None,
        snapshot_id: None,
        records: None,
        schema: None,
        transaction_id: None,
    })
}
