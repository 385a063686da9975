//! Zendesk events in the envelopes that carry them besides webhooks:
//!
//! - the **Amazon EventBridge** event (`version`, `id`, `detail-type`, `source`, `time`,
//!   `resources`, `detail`): from Zendesk's events connector, `detail` holds a *Support event*
//!   (`ticket_event`, `user_event` or `organization_event`); from a webhook relayed into an
//!   event bus, `detail` is the webhook event itself (`type` `zen:event-type:...`);
//! - the **Integration Services** (ZIS) trigger payload (`account_id`, `integration_key`,
//!   `subdomain`, `input`): `input` holds the same Support event;
//! - a Support event alone (`{"ticket_event": {...}}`).
//!
//! A Support event is `{"meta": {"occurred_at", "sequence": {"id", "position"}, "actor_id"},
//! "type": "Status Changed", "previous", "current", "ticket": {...}}` (or `user`,
//! `organization`). It says what the matching webhook says, so it is read as one: its type in
//! the webhook spelling (`Status Changed` is `ticket.status_changed`), its object as the
//! `detail`, `previous` and `current` as the `event`. Its id is its place in the sequence of
//! events one action caused, which every channel delivering it repeats.

use serde_json::{Map, Value};

use super::{join, webhook, webhook_type, Channel, Resource, WEBHOOK_TYPE_PREFIX};
use crate::support::{id, object, optional, optional_id, required, string};
use crate::FormatSettings;
use tandem_core::event::ChangeEvent;

/// The members that hold a Support event, the member of its object, and what it is about.
const SUPPORT_EVENTS: [(&str, &str, Resource); 3] = [
    ("ticket_event", "ticket", Resource::Ticket),
    ("user_event", "user", Resource::User),
    ("organization_event", "organization", Resource::Organization),
];

/// Members of a Support event that describe the change (the webhook's `event`).
const CHANGE_MEMBERS: [&str; 4] = ["current", "previous", "custom_field", "target_ticket_id"];

/// The events of a message in one of these envelopes; `None` if it is not in one.
pub(super) fn decode(
    settings: &FormatSettings,
    message: &Map<String, Value>,
) -> Result<Option<Vec<ChangeEvent>>, String> {
    if message.contains_key("detail-type") {
        let detail = object(required(message, "detail", "")?, ".detail")?;
        let envelope_id = optional_id(message, "id", "")?;
        return inner(settings, detail, envelope_id)
            .map(Some)
            .map_err(|error| format!("in the EventBridge event's `.detail`: {error}"));
    }
    let integration = ["integration_key", "subdomain", "account_id"]
        .iter()
        .any(|member| message.contains_key(*member));
    if message.contains_key("input") && integration {
        let input = object(required(message, "input", "")?, ".input")?;
        return support_event(settings, input, None)
            .map(Some)
            .map_err(|error| format!("in the Integration Services `.input`: {error}"));
    }
    if SUPPORT_EVENTS
        .iter()
        .any(|(member, _, _)| message.contains_key(*member))
    {
        return support_event(settings, message, None).map(Some);
    }
    Ok(None)
}

/// The `detail` of an EventBridge event: a webhook event or a Support event.
fn inner(
    settings: &FormatSettings,
    detail: &Map<String, Value>,
    envelope_id: Option<String>,
) -> Result<Vec<ChangeEvent>, String> {
    if let Some(event_type) = webhook_type(detail)? {
        return webhook(settings, detail, event_type, Channel::Webhook);
    }
    if SUPPORT_EVENTS
        .iter()
        .any(|(member, _, _)| detail.contains_key(*member))
    {
        return support_event(settings, detail, envelope_id);
    }
    Err(format!(
        "expected a Support event (`ticket_event`, `user_event` or `organization_event`) or a \
         webhook event (`type` \"{WEBHOOK_TYPE_PREFIX}...\")"
    ))
}

/// One Support event, read as the webhook it matches.
fn support_event(
    settings: &FormatSettings,
    holder: &Map<String, Value>,
    envelope_id: Option<String>,
) -> Result<Vec<ChangeEvent>, String> {
    let mut present = SUPPORT_EVENTS
        .iter()
        .filter(|(member, _, _)| holder.contains_key(*member));
    let (member, object_member, resource) = match (present.next(), present.next()) {
        (Some(&found), None) => found,
        (None, _) => {
            return Err(
                "holds none of `ticket_event`, `user_event` and `organization_event`".to_owned(),
            )
        }
        (Some(_), Some(_)) => {
            return Err(
                "holds more than one of `ticket_event`, `user_event` and `organization_event`"
                    .to_owned(),
            )
        }
    };
    let path = format!(".{member}");
    let event = object(required(holder, member, "")?, &path)?;
    let meta_path = join(&path, "meta");
    let meta = object(required(event, "meta", &path)?, &meta_path)?;
    let occurred_at = required(meta, "occurred_at", &meta_path)?.clone();
    // Every event one action causes shares the sequence id; the position tells them apart.
    let identity = match optional(meta, "sequence") {
        Some(sequence) => {
            let sequence_path = join(&meta_path, "sequence");
            let sequence = object(sequence, &sequence_path)?;
            format!(
                "{}:{}",
                id(sequence, "id", &sequence_path)?,
                id(sequence, "position", &sequence_path)?
            )
        }
        None => envelope_id.ok_or_else(|| {
            format!("`{meta_path}.sequence` is missing, and no envelope `id` names the event")
        })?,
    };
    let type_name = string(event, "type", &path)?;
    let action = action_name(&type_name, resource);
    let mut detail = object(
        required(event, object_member, &path)?,
        &join(&path, object_member),
    )?
    .clone();
    if let Some(actor) = optional(meta, "actor_id") {
        detail.entry("actor_id").or_insert_with(|| actor.clone());
    }
    let change: Map<String, Value> = CHANGE_MEMBERS
        .iter()
        .filter_map(|key| {
            event
                .get(*key)
                .map(|value| ((*key).to_owned(), value.clone()))
        })
        .collect();
    let event_type = format!("{WEBHOOK_TYPE_PREFIX}{}.{action}", resource.name());
    let mut message = Map::new();
    message.insert("type".to_owned(), Value::String(event_type.clone()));
    message.insert("id".to_owned(), Value::String(identity));
    message.insert("time".to_owned(), occurred_at);
    message.insert("detail".to_owned(), Value::Object(detail));
    message.insert("event".to_owned(), Value::Object(change));
    webhook(settings, &message, &event_type, Channel::SupportEvent).map_err(|error| {
        format!("`{path}` of type \"{type_name}\" (read as {event_type}): {error}")
    })
}

/// The webhook action of a Support event type: `Agent Assignment Changed` is
/// `agent_assignment_changed`, `Ticket Created` is `created`, `Ticket Form Changed` is
/// `form_changed`, `User Name Changed` is `name_changed`.
fn action_name(type_name: &str, resource: Resource) -> String {
    let words: Vec<String> = type_name
        .split(|character: char| !character.is_ascii_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    let words = match words.split_first() {
        Some((first, rest)) if first == resource.name() && !rest.is_empty() => rest,
        _ => &words[..],
    };
    words.join("_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn support_event_types_read_as_webhook_actions() {
        let cases = [
            (
                "Agent Assignment Changed",
                Resource::Ticket,
                "agent_assignment_changed",
            ),
            ("Ticket Created", Resource::Ticket, "created"),
            ("Ticket Form Changed", Resource::Ticket, "form_changed"),
            ("Marked As Spam", Resource::Ticket, "marked_as_spam"),
            (
                "Active Status Changed",
                Resource::User,
                "active_status_changed",
            ),
            ("User Created", Resource::User, "created"),
            ("Organization Created", Resource::Organization, "created"),
            (
                "Custom Field Changed",
                Resource::Organization,
                "custom_field_changed",
            ),
        ];
        for (type_name, resource, action) in cases {
            assert_eq!(action_name(type_name, resource), action, "{type_name}");
        }
    }
}
