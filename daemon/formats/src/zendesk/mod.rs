//! Zendesk Support tickets as connectors put them on Kafka; users and organizations are in
//! `people`, and the EventBridge and Integration Services envelopes in `envelopes`.
//!
//! The ticket shapes read, told apart by their documented top-level members:
//!
//! - an incremental ticket export page, time based (`GET /api/v2/incremental/tickets.json`:
//!   `tickets`, `end_time`, `next_page`, `count`, `end_of_stream`) or cursor based
//!   (`/api/v2/incremental/tickets/cursor.json`: `tickets`, `after_cursor`, `after_url`,
//!   `before_cursor`, `before_url`, `end_of_stream`). Each ticket is a full image of its
//!   state: an `update` with `partial: false`, or a `delete` when its status is `deleted`
//!   (the export lists soft-deleted tickets with that status). An export is a reading, not a
//!   change, so tandem cannot tell a ticket it sees first from a new one.
//! - a ticket events export page (`/api/v2/incremental/ticket_events.json`: `ticket_events`).
//!   Each ticket event is one update of one ticket; its `Create` and `Change` child events
//!   name the properties it set, which become the fields of one partial event (a `create` if
//!   any child is a `Create`). Comments, notifications and the other child event types change
//!   no ticket property and are passed over.
//! - one record per message: a ticket (`{"id": ..., "updated_at": ...}` or
//!   `{"ticket": {...}}`) or one ticket event (`{"id", "ticket_id", "child_events", ...}`).
//! - a Zendesk event webhook (`type: "zen:event-type:ticket.*"`, `id`, `time`, `detail`,
//!   `event`, `subject`, `zendesk_event_version`).
//!
//! Field names are Zendesk's REST ticket properties. Custom field values become
//! `custom_fields.<field id>` in every shape, so a change to one custom field can be a partial
//! update; the webhook `detail` is brought to the REST spelling (`form_id` is
//! `ticket_form_id`, ids are numbers, `status`/`priority`/`type` are lower case), so a webhook
//! and an export of the same state compare equal. See `schemas/formats/zendesk.md`.

use serde_json::{Map, Number, Value};

use crate::support::{
    epoch_millis, id, kind, object, optional, optional_id, optional_string, required, rfc3339,
    string, unsigned,
};
use crate::FormatSettings;

mod envelopes;
mod people;
use tandem_core::event::{Actor, ActorKind, ChangeEvent, Fields, Op};
use tandem_core::Timestamp;

/// The vendor object every event is about.
const TICKET: &str = "ticket";
/// The prefix of every Zendesk event webhook type.
const WEBHOOK_TYPE_PREFIX: &str = "zen:event-type:";
/// The id Zendesk gives the system itself as the author of an update.
const SYSTEM_USER: &str = "-1";
/// The via channels of changes made through the REST API: `api` on ticket objects,
/// `web_service` in ticket events and webhooks.
const API_CHANNELS: [&str; 2] = ["api", "web_service"];
/// Members of a flattened `Create`/`Change` child event that describe the event, not a field.
const CHILD_EVENT_META: [&str; 7] = [
    "id",
    "via",
    "via_reference_id",
    "event_type",
    "previous_value",
    "added_tags",
    "removed_tags",
];
/// What a message must look like, for the error on one that matches no shape.
const EXPECTED: &str = "expected an incremental export page (`tickets`, `users`, \
    `organizations`), a ticket events page (`ticket_events`), a ticket metric events page \
    (`ticket_metric_events`), a ticket (`id` and `updated_at`, or `ticket`), a ticket event \
    (`ticket_id` and `child_events`), an event webhook (`type` \"zen:event-type:...\"), an \
    EventBridge event (`detail-type`, `detail`), an Integration Services payload (`input`) or a \
    Support event (`ticket_event`, `user_event`, `organization_event`)";

/// Decodes one Zendesk message into the changes it carries, in the order given.
pub(super) fn decode(settings: &FormatSettings, value: &Value) -> Result<Vec<ChangeEvent>, String> {
    let Some(message) = value.as_object() else {
        return Err(format!("the message is {}, {EXPECTED}", kind(value)));
    };
    if let Some(event_type) = webhook_type(message)? {
        return webhook(settings, message, event_type, Channel::Webhook);
    }
    if let Some(decoded) = envelopes::decode(settings, message)? {
        return Ok(decoded);
    }
    if message.contains_key("ticket_metric_events") {
        let events = array(
            required(message, "ticket_metric_events", "")?,
            ".ticket_metric_events",
        )?;
        for (index, event) in events.iter().enumerate() {
            let path = format!(".ticket_metric_events[{index}]");
            metric_event(object(event, &path)?, &path)?;
        }
        return Ok(Vec::new());
    }
    if message.contains_key("tickets") {
        let tickets = array(required(message, "tickets", "")?, ".tickets")?;
        return tickets
            .iter()
            .enumerate()
            .map(|(index, ticket)| {
                let path = format!(".tickets[{index}]");
                ticket_image(settings, object(ticket, &path)?, &path)
            })
            .collect();
    }
    if message.contains_key("ticket_events") {
        let events = array(required(message, "ticket_events", "")?, ".ticket_events")?;
        let mut decoded = Vec::new();
        for (index, event) in events.iter().enumerate() {
            let path = format!(".ticket_events[{index}]");
            decoded.extend(ticket_event(settings, object(event, &path)?, &path)?);
        }
        return Ok(decoded);
    }
    if message.contains_key("ticket") {
        let ticket = object(required(message, "ticket", "")?, ".ticket")?;
        return ticket_image(settings, ticket, ".ticket").map(|event| vec![event]);
    }
    if message.contains_key("child_events") || message.contains_key("ticket_id") {
        return Ok(ticket_event(settings, message, "")?.into_iter().collect());
    }
    if message.contains_key("id") && message.contains_key("updated_at") {
        return ticket_image(settings, message, "").map(|event| vec![event]);
    }
    if message.contains_key("users") || message.contains_key("organizations") {
        return people::export_page(settings, message);
    }
    let mut members: Vec<&str> = message.keys().map(String::as_str).take(8).collect();
    members.sort_unstable();
    Err(format!(
        "the message has members [{}], {EXPECTED}",
        members.join(", ")
    ))
}

// ---------------------------------------------------------------------------------------------
// Full ticket images: export pages and single tickets.

/// One ticket object read as its full state.
fn ticket_image(
    settings: &FormatSettings,
    ticket: &Map<String, Value>,
    path: &str,
) -> Result<ChangeEvent, String> {
    let id = id(ticket, "id", path)?;
    let occurred_at = rfc3339(
        required(ticket, "updated_at", path)?,
        &join(path, "updated_at"),
    )?;
    let external_id = external_id(ticket, path)?;
    let status = optional_string(ticket, "status", path)?;
    let deleted = status.is_some_and(|status| status.eq_ignore_ascii_case("deleted"));
    // A system update moves `generated_timestamp` but not `updated_at`: both together name
    // one state of the ticket, so the same state exported twice is one event.
    let mut event_id = format!("zd:ticket:{id}:{}", occurred_at.to_rfc3339());
    if let Some(generated) = optional(ticket, "generated_timestamp") {
        let generated = unsigned(generated, &join(path, "generated_timestamp"))?;
        event_id.push_str(&format!(":{generated}"));
    }
    // A ticket's `via` says how it was created, so it names the writer of this state only
    // while the ticket was never updated.
    let created_at = optional(ticket, "created_at")
        .map(|value| rfc3339(value, &join(path, "created_at")))
        .transpose()?;
    let channel = via_channel(ticket.get("via"), &join(path, "via"))?;
    let actor = match channel {
        Some(channel) if !deleted && created_at == Some(occurred_at) => settings.actor(
            &identifiers(None, Some(&channel)),
            fallback_actor(None, Some(&channel)),
        ),
        _ => None,
    };
    let (op, fields) = if deleted {
        (Op::Delete, None)
    } else {
        (Op::Update, Some(image_fields(ticket, path)?))
    };
    // Both times are whole seconds: two states within one second would share them. The
    // content tells them apart, and the same state exported twice still has the same id.
    event_id.push_str(&format!(":{:016x}", content_hash(fields.as_ref())));
    Ok(ChangeEvent {
        event_id,
        entity: settings.entity(TICKET),
        id,
        op,
        occurred_at,
        external_id,
        fields,
        partial: false,
        version: None,
        seq: None,
        actor,
        merged_into: None,
        snapshot_id: None,
        records: None,
        schema: None,
        transaction_id: None,
    })
}

/// A stable 64-bit FNV-1a hash of a field image (fields are ordered by name, so the same
/// image always serializes the same way).
fn content_hash(fields: Option<&Fields>) -> u64 {
    let bytes = serde_json::to_vec(&fields).expect("invariant: field images are plain JSON");
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Every property of a ticket, with its custom fields spread out as `custom_fields.<id>`.
fn image_fields(ticket: &Map<String, Value>, path: &str) -> Result<Fields, String> {
    let mut fields: Fields = ticket
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "custom_fields" | "fields"))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    // `fields` is Zendesk's older name of the same array; `custom_fields` wins when both exist.
    let custom = ["custom_fields", "fields"]
        .into_iter()
        .find(|name| ticket.contains_key(*name));
    if let Some(name) = custom {
        let path = join(path, name);
        let values = match ticket.get(name) {
            None | Some(Value::Null) => return Ok(fields),
            Some(values) => array(values, &path)?,
        };
        for (index, entry) in values.iter().enumerate() {
            let entry_path = format!("{path}[{index}]");
            let entry = object(entry, &entry_path)?;
            let field_id = id(entry, "id", &entry_path)?;
            let value = entry.get("value").cloned().unwrap_or(Value::Null);
            fields.insert(custom_field_name(&field_id), value);
        }
    }
    Ok(fields)
}

// ---------------------------------------------------------------------------------------------
// Ticket events (audits) from the ticket events export.

/// One ticket event: the properties one update set, or nothing if it set none.
fn ticket_event(
    settings: &FormatSettings,
    event: &Map<String, Value>,
    path: &str,
) -> Result<Option<ChangeEvent>, String> {
    // The export's documented example lists a ticket metric event (`metric`, `time`, no child
    // events): an SLA clock, not a change of the ticket.
    // Nothing is taken from it, so an odd one does not cost the page its ticket events.
    if event.contains_key("metric") && !event.contains_key("child_events") {
        return Ok(None);
    }
    let event_id = id(event, "id", path)?;
    let ticket_id = id(event, "ticket_id", path)?;
    let occurred_at = match optional(event, "created_at") {
        Some(created_at) => rfc3339(created_at, &join(path, "created_at"))?,
        None => epoch_seconds(
            required(event, "timestamp", path)?,
            &join(path, "timestamp"),
        )?,
    };
    let updater = optional_id(event, "updater_id", path)?;
    let channel = via_channel(event.get("via"), &join(path, "via"))?;
    let children_path = join(path, "child_events");
    let children = array(required(event, "child_events", path)?, &children_path)?;
    let mut creates = false;
    let mut fields = Fields::new();
    for (index, child) in children.iter().enumerate() {
        let child_path = format!("{children_path}[{index}]");
        let child = object(child, &child_path)?;
        match child_event_type(child, &child_path)?.as_str() {
            "Create" => {
                creates = true;
                child_fields(child, &child_path, &mut fields)?;
            }
            "Change" => child_fields(child, &child_path, &mut fields)?,
            // Comments, notifications, CCs, SLA and the other audit events set no property.
            _ => {}
        }
    }
    if fields.is_empty() {
        return Ok(None);
    }
    let external_id = match fields.get("external_id") {
        Some(value) => external_id_value(value, &join(path, "external_id"))?,
        None => None,
    };
    Ok(Some(ChangeEvent {
        event_id: format!("zd:ticket_event:{event_id}"),
        entity: settings.entity(TICKET),
        id: ticket_id,
        // The `Create` events name only the properties the creation set (the description,
        // for one, comes as a comment): a create, but not a full image.
        op: if creates { Op::Create } else { Op::Update },
        occurred_at,
        external_id,
        fields: Some(fields),
        partial: true,
        version: None,
        seq: None,
        actor: settings.actor(
            &identifiers(updater.as_deref(), channel.as_deref()),
            fallback_actor(updater.as_deref(), channel.as_deref()),
        ),
        merged_into: None,
        snapshot_id: None,
        records: None,
        schema: None,
        transaction_id: None,
    }))
}

/// A ticket metric event (`/api/v2/incremental/ticket_metric_events`): when an SLA metric
/// (reply time, resolution time, ...) started, paused, was met or breached. It changes no
/// ticket property, so it is checked for its documented shape and yields nothing.
fn metric_event(event: &Map<String, Value>, path: &str) -> Result<(), String> {
    id(event, "id", path)?;
    id(event, "ticket_id", path)?;
    string(event, "metric", path)?;
    string(event, "type", path)?;
    rfc3339(required(event, "time", path)?, &join(path, "time"))?;
    Ok(())
}

/// The `event_type` of a child event (`type` in the ticket audit spelling with `field_name`).
fn child_event_type(child: &Map<String, Value>, path: &str) -> Result<String, String> {
    if optional(child, "event_type").is_none() && child.contains_key("field_name") {
        return string(child, "type", path);
    }
    string(child, "event_type", path)
}

/// The properties a `Create` or `Change` child event sets: `field_name` and `value` in the
/// ticket audit spelling, else the child's own members other than its metadata.
fn child_fields(child: &Map<String, Value>, path: &str, fields: &mut Fields) -> Result<(), String> {
    if child.contains_key("field_name") {
        let name = match required(child, "field_name", path)? {
            Value::String(name) if !name.is_empty() => name.clone(),
            Value::Number(number) => number.to_string(),
            other => {
                return Err(format!(
                    "`{}` is {}, expected a field name",
                    join(path, "field_name"),
                    kind(other)
                ))
            }
        };
        let value = child.get("value").cloned().unwrap_or(Value::Null);
        fields.insert(property_name(&name), value);
        return Ok(());
    }
    let mut named = false;
    for (name, value) in child {
        if CHILD_EVENT_META.contains(&name.as_str()) {
            continue;
        }
        named = true;
        fields.insert(property_name(name), value.clone());
    }
    if !named {
        return Err(format!(
            "`{path}` names no ticket property (expected `field_name` and `value`, or a member \
             such as `status` besides {})",
            CHILD_EVENT_META.join(", ")
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Event webhooks.

/// What a webhook does to its ticket.
enum WebhookChange {
    /// A full image of the ticket from `detail`.
    Image(Op),
    /// Only the named properties changed.
    Partial(Fields),
    /// The ticket is gone.
    Delete,
    /// The ticket was merged into another.
    Merge(String),
    /// Nothing that tandem keeps changed (comments, CCs, SLAs, ...).
    Nothing,
    /// The ticket changed in a way the event does not say: read it again.
    Unknown,
}

/// The webhook event type, if the message is an event webhook.
fn webhook_type(message: &Map<String, Value>) -> Result<Option<&str>, String> {
    match message.get("type") {
        Some(Value::String(event_type)) if event_type.starts_with(WEBHOOK_TYPE_PREFIX) => {
            Ok(Some(event_type))
        }
        // A ticket has a `type` of its own (incident, question, ...); only a message that also
        // carries the webhook version must have a webhook type.
        Some(other) if message.contains_key("zendesk_event_version") => Err(format!(
            "`.type` is {}, expected a webhook event type \"{WEBHOOK_TYPE_PREFIX}ticket.*\"",
            describe(other)
        )),
        None if message.contains_key("zendesk_event_version") => {
            Err("`.type` is missing, expected a webhook event type".to_owned())
        }
        _ => Ok(None),
    }
}

/// Where a webhook-form event came from: its id is the webhook's event id, or the sequence
/// of a Support event (events connector, Integration Services).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Channel {
    Webhook,
    SupportEvent,
}

/// What a Zendesk event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resource {
    Ticket,
    User,
    Organization,
}

impl Resource {
    /// The vendor object name, which `objects` maps to an entity.
    fn name(self) -> &'static str {
        match self {
            Resource::Ticket => TICKET,
            Resource::User => "user",
            Resource::Organization => "organization",
        }
    }

    fn parse(name: &str) -> Option<Resource> {
        [Resource::Ticket, Resource::User, Resource::Organization]
            .into_iter()
            .find(|resource| resource.name() == name)
    }
}

/// One Zendesk event webhook (or an event in its form) about a ticket, user or organization.
fn webhook(
    settings: &FormatSettings,
    message: &Map<String, Value>,
    event_type: &str,
    channel: Channel,
) -> Result<Vec<ChangeEvent>, String> {
    let webhook_id = id(message, "id", "")?;
    let event_id = match channel {
        Channel::Webhook => format!("zd:webhook:{webhook_id}"),
        Channel::SupportEvent => format!("zd:event:{webhook_id}"),
    };
    // Exports and ticket events give whole seconds: so does tandem for webhooks, or a change
    // exported later within the same second would look older than the webhook's.
    let time = rfc3339(required(message, "time", "")?, ".time")?;
    let occurred_at =
        Timestamp::from_unix_nanos(time.unix_nanos() - time.unix_nanos().rem_euclid(1_000_000_000));
    let name = event_type
        .strip_prefix(WEBHOOK_TYPE_PREFIX)
        .unwrap_or_default();
    let Some((resource, action)) = name
        .split_once('.')
        .and_then(|(resource, action)| Some((Resource::parse(resource)?, action)))
    else {
        return Err(format!(
            "`.type` is \"{event_type}\": only ticket, user and organization events \
             ({WEBHOOK_TYPE_PREFIX}ticket.*, user.*, organization.*) are decoded in this format"
        ));
    };
    let detail = object(required(message, "detail", "")?, ".detail")?;
    let empty = Map::new();
    let event = match message.get("event") {
        None | Some(Value::Null) => &empty,
        Some(event) => object(event, ".event")?,
    };
    if resource != Resource::Ticket {
        return people::webhook(
            settings,
            people::Notice {
                resource,
                action,
                message,
                detail,
                event,
                event_id,
                occurred_at,
            },
        );
    }
    let change = webhook_change(action, event_type, detail, event)?;
    if matches!(change, WebhookChange::Nothing) {
        return Ok(Vec::new());
    }
    let id = match optional_id(detail, "id", ".detail")? {
        Some(id) => id,
        None => ticket_of_subject(message)?,
    };
    let mut external_id = external_id(detail, ".detail")?;
    if let WebhookChange::Partial(fields) = &change {
        if let Some(value) = fields.get("external_id") {
            external_id = external_id_value(value, ".event.current")?;
        }
    }
    let actor_id = actor_id(detail);
    // The detail's `via` is the ticket's: it says how the ticket was created, so it names the
    // writer only of the creation.
    let channel = if action == "created" {
        via_channel(detail.get("via"), ".detail.via")?
    } else {
        None
    };
    let actor = settings.actor(
        &identifiers(actor_id.as_deref(), channel.as_deref()),
        fallback_actor(actor_id.as_deref(), channel.as_deref()),
    );
    let (op, fields, partial, merged_into) = match change {
        // `detail` holds some twenty properties, not the custom fields: not a full image.
        WebhookChange::Image(op) => (op, Some(detail_image(detail)), true, None),
        WebhookChange::Partial(fields) => (Op::Update, Some(fields), true, None),
        WebhookChange::Delete => (Op::Delete, None, false, None),
        WebhookChange::Merge(target) => (Op::Merge, None, false, Some(target)),
        WebhookChange::Unknown => (Op::Gap, None, false, None),
        WebhookChange::Nothing => return Ok(Vec::new()),
    };
    Ok(vec![ChangeEvent {
        event_id,
        entity: settings.entity(TICKET),
        id,
        op,
        occurred_at,
        external_id,
        fields,
        partial,
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

/// The change a ticket webhook of type `zen:event-type:ticket.<action>` describes.
fn webhook_change(
    action: &str,
    event_type: &str,
    detail: &Map<String, Value>,
    event: &Map<String, Value>,
) -> Result<WebhookChange, String> {
    // (action, REST property, the `detail` member holding its new value)
    const PROPERTY_CHANGES: [(&str, &str, Option<&str>); 17] = [
        (
            "agent_assignment_changed",
            "assignee_id",
            Some("assignee_id"),
        ),
        ("brand_changed", "brand_id", Some("brand_id")),
        (
            "custom_status_changed",
            "custom_status_id",
            Some("custom_status"),
        ),
        ("description_changed", "description", Some("description")),
        ("external_id_changed", "external_id", Some("external_id")),
        ("form_changed", "ticket_form_id", Some("form_id")),
        ("group_assignment_changed", "group_id", Some("group_id")),
        (
            "organization_changed",
            "organization_id",
            Some("organization_id"),
        ),
        ("priority_changed", "priority", Some("priority")),
        ("requester_changed", "requester_id", Some("requester_id")),
        ("status_changed", "status", Some("status")),
        ("subject_changed", "subject", Some("subject")),
        ("submitter_changed", "submitter_id", Some("submitter_id")),
        ("tags_changed", "tags", Some("tags")),
        ("type_changed", "type", Some("type")),
        ("task_due_at_changed", "due_at", None),
        ("problem_link_changed", "problem_id", None),
    ];
    // Ticket events that change nothing tandem keeps: comments and attachments are not ticket
    // properties, the follower and CC events carry only the users added and removed, SLA,
    // schedule and CSAT events concern other resources.
    const IGNORED: [&str; 15] = [
        "comment_added",
        "comment_created",
        "comment_made_private",
        "comment_redacted",
        "attachment_linked_to_comment",
        "attachment_redacted_from_comment",
        "followers_changed",
        "email_ccs_changed",
        "ccs_changed",
        "sla_policy_changed",
        "ola_policy_changed",
        "schedule_changed",
        "next_sla_breach_changed",
        "csat_received",
        "csat_requested",
    ];
    match action {
        "created" => return Ok(WebhookChange::Image(Op::Create)),
        "undeleted" => return Ok(WebhookChange::Image(Op::Undelete)),
        // Marking a ticket as spam deletes it (and suspends its requester).
        "soft_deleted" | "permanently_deleted" | "marked_as_spam" => {
            return Ok(WebhookChange::Delete)
        }
        // A merge whose target is not named (a Support event may not carry it) leaves the
        // ticket's state unknown: it is read again rather than guessed.
        "merged" => {
            return Ok(match optional_id(event, "target_ticket_id", ".event")? {
                Some(target) => WebhookChange::Merge(target),
                None => WebhookChange::Unknown,
            });
        }
        "custom_field_changed" => {
            let field = object(
                required(event, "custom_field", ".event")?,
                ".event.custom_field",
            )?;
            let field_id = id(field, "id", ".event.custom_field")?;
            let value = match event.get("current") {
                Some(Value::Object(current)) => {
                    current.get("value").cloned().unwrap_or(Value::Null)
                }
                Some(current) => current.clone(),
                None => return Err("`.event.current` is missing".to_owned()),
            };
            let mut fields = Fields::new();
            fields.insert(custom_field_name(&field_id), value);
            return Ok(WebhookChange::Partial(fields));
        }
        _ => {}
    }
    if IGNORED.contains(&action) {
        return Ok(WebhookChange::Nothing);
    }
    let Some((_, property, detail_member)) = PROPERTY_CHANGES
        .iter()
        .find(|(known, _, _)| *known == action)
    else {
        return Err(format!(
            "`.type` is \"{event_type}\", not a ticket event type this decoder knows (created, \
             *_changed, merged, soft_deleted, permanently_deleted, undeleted, marked_as_spam, \
             comment and attachment events)"
        ));
    };
    // The tags event lists only the tags added and removed; the detail holds the whole list.
    let value = match (event.get("current"), detail_member) {
        (Some(current), _) if *property != "tags" => current.clone(),
        (_, Some(name)) if detail.contains_key(*name) => {
            detail.get(*name).cloned().unwrap_or(Value::Null)
        }
        // The event says the property changed but not to what (a Support event's ticket
        // holds fewer properties than a webhook's detail): read the ticket again.
        _ => return Ok(WebhookChange::Unknown),
    };
    let mut fields = Fields::new();
    fields.insert((*property).to_owned(), normalize(property, value));
    Ok(WebhookChange::Partial(fields))
}

/// The `actor_id` of a webhook's `detail`: it names only the writer, so an empty or
/// unreadable one is no actor rather than a reason to refuse the change.
fn actor_id(detail: &Map<String, Value>) -> Option<String> {
    optional_id(detail, "actor_id", ".detail")
        .ok()
        .flatten()
        .filter(|id| !id.trim().is_empty())
}

/// The `detail` of a ticket webhook in the REST spelling, without the event's `actor_id`.
fn detail_image(detail: &Map<String, Value>) -> Fields {
    detail
        .iter()
        .filter(|(name, _)| name.as_str() != "actor_id")
        .map(|(name, value)| {
            let name = match name.as_str() {
                "form_id" => "ticket_form_id",
                "custom_status" => "custom_status_id",
                other => other,
            };
            (name.to_owned(), normalize(name, value.clone()))
        })
        .collect()
}

/// A webhook value as the REST API gives it: webhooks quote ids (and write "none" as `"0"` or
/// `""`, where the REST API writes null), write enumerations in upper case and may give the
/// tags as one space-separated string.
fn normalize(property: &str, value: Value) -> Value {
    match (property, value) {
        ("status" | "priority" | "type", Value::String(text)) => Value::String(text.to_lowercase()),
        ("tags", Value::String(text)) => {
            Value::Array(text.split_whitespace().map(Value::from).collect())
        }
        ("external_id", Value::String(text)) if text.is_empty() => Value::Null,
        (property, Value::String(text))
            if property == "id" || (property.ends_with("_id") && property != "external_id") =>
        {
            if text.is_empty() || text == "0" {
                Value::Null
            } else {
                match text.parse::<u64>() {
                    Ok(number) => Value::Number(Number::from(number)),
                    Err(_) => Value::String(text),
                }
            }
        }
        (_, value) => value,
    }
}

/// The ticket id of a webhook `subject` such as `zen:ticket:35436`.
fn ticket_of_subject(message: &Map<String, Value>) -> Result<String, String> {
    let subject = string(message, "subject", "").map_err(|_| {
        "`.detail.id` is missing (and there is no `.subject` \"zen:ticket:<id>\")".to_owned()
    })?;
    subject
        .strip_prefix("zen:ticket:")
        .filter(|id| !id.trim().is_empty())
        .map(str::to_owned)
        .ok_or_else(|| format!("`.subject` is \"{subject}\", expected \"zen:ticket:<id>\""))
}

// ---------------------------------------------------------------------------------------------
// Writers.

/// The actor identifiers of a change, most specific first: `user:<id>`, `via:<channel>`.
fn identifiers(user: Option<&str>, channel: Option<&str>) -> Vec<String> {
    user.map(|user| format!("user:{user}"))
        .into_iter()
        .chain(channel.map(|channel| format!("via:{channel}")))
        .collect()
}

/// The writer as Zendesk's own fields tell it, when configuration maps none of them: the
/// system user, an API client, or a person.
fn fallback_actor(user: Option<&str>, channel: Option<&str>) -> Option<Actor> {
    if user == Some(SYSTEM_USER) {
        return Some(Actor {
            kind: ActorKind::System,
            id: None,
            epoch: None,
        });
    }
    let id = user.map(str::to_owned);
    match channel {
        Some(channel) if API_CHANNELS.contains(&channel) => Some(Actor {
            kind: ActorKind::Integration,
            id,
            epoch: None,
        }),
        _ if user.is_some() || channel.is_some() => Some(Actor {
            kind: ActorKind::User,
            id,
            epoch: None,
        }),
        _ => None,
    }
}

/// The channel of a `via`: an object with `channel` (tickets, webhooks) or the channel's name
/// (ticket events: "Web form", "Mail"), in lower case with `_` for spaces.
fn via_channel(via: Option<&Value>, path: &str) -> Result<Option<String>, String> {
    let channel = match via {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(channel)) => channel.as_str(),
        Some(Value::Object(via)) => match via.get("channel") {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::String(channel)) => channel.as_str(),
            Some(Value::Number(number)) => return Ok(Some(number.to_string())),
            Some(other) => {
                return Err(format!(
                    "`{path}.channel` is {}, expected a string",
                    kind(other)
                ))
            }
        },
        Some(other) => {
            return Err(format!(
                "`{path}` is {}, expected an object with `channel` or a channel name",
                kind(other)
            ))
        }
    };
    let channel: String = channel
        .trim()
        .chars()
        .map(|character| match character {
            ' ' | '-' => '_',
            other => other.to_ascii_lowercase(),
        })
        .collect();
    Ok((!channel.is_empty()).then_some(channel))
}

// ---------------------------------------------------------------------------------------------
// Readers.

/// The canonical external id of a ticket: its `external_id`, when it has one.
fn external_id(ticket: &Map<String, Value>, path: &str) -> Result<Option<String>, String> {
    match ticket.get("external_id") {
        None => Ok(None),
        Some(value) => external_id_value(value, &join(path, "external_id")),
    }
}

/// An `external_id` value: a string or number; null or empty means none.
fn external_id_value(value: &Value, path: &str) -> Result<Option<String>, String> {
    match value {
        Value::Null => Ok(None),
        Value::String(text) if text.trim().is_empty() => Ok(None),
        Value::String(text) => Ok(Some(text.clone())),
        Value::Number(number) => Ok(Some(number.to_string())),
        other => Err(format!("`{path}` is {}, expected a string", kind(other))),
    }
}

/// The field name of a property named in a child event: custom fields are named by their id.
fn property_name(name: &str) -> String {
    if !name.is_empty() && name.bytes().all(|byte| byte.is_ascii_digit()) {
        custom_field_name(name)
    } else {
        name.to_owned()
    }
}

/// The field name of a custom field.
fn custom_field_name(field_id: &str) -> String {
    format!("custom_fields.{field_id}")
}

/// Seconds since the Unix epoch, as a number or a decimal string.
fn epoch_seconds(value: &Value, path: &str) -> Result<Timestamp, String> {
    let seconds = match value {
        Value::Number(number) => number.as_i64(),
        Value::String(text) => text.parse().ok(),
        _ => None,
    }
    .ok_or_else(|| {
        format!(
            "`{path}` is {}, expected seconds since the epoch",
            describe(value)
        )
    })?;
    // Beyond ±285 years the nanosecond clock overflows; no ticket event is that far out.
    if !(-9_000_000_000..=9_000_000_000).contains(&seconds) {
        return Err(format!(
            "`{path}` ({seconds}) is not a plausible time in seconds"
        ));
    }
    epoch_millis(&Value::from(seconds.saturating_mul(1000)), path)
}

/// The path of `key` in the object at `path` (`.detail.id`; the message itself is `""`).
fn join(path: &str, key: &str) -> String {
    format!("{path}.{key}")
}

/// A JSON array, or an error naming `path`.
fn array<'a>(value: &'a Value, path: &str) -> Result<&'a Vec<Value>, String> {
    value
        .as_array()
        .ok_or_else(|| format!("`{path}` is {}, expected an array", kind(value)))
}

/// A value for an error message: short strings quoted, anything else by its kind.
fn describe(value: &Value) -> String {
    match value {
        Value::String(text) if text.chars().count() <= 80 => format!("\"{text}\""),
        other => kind(other).to_owned(),
    }
}

#[cfg(test)]
mod channel_tests;

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{decode_message, parse_actor, Format};

    pub(super) fn settings() -> FormatSettings {
        FormatSettings::new(Format::Zendesk)
    }

    pub(super) fn at(text: &str) -> Timestamp {
        Timestamp::parse_rfc3339(text).expect("test times are RFC 3339")
    }

    pub(super) fn fields(value: Value) -> Option<Fields> {
        match value {
            Value::Object(map) => Some(map.into_iter().collect()),
            other => panic!("test fields must be an object, got {other}"),
        }
    }

    /// An event with every optional part absent, for the tests to fill in.
    pub(super) fn event(event_id: &str, id: &str, op: Op, occurred_at: &str) -> ChangeEvent {
        ChangeEvent {
            event_id: event_id.to_owned(),
            entity: "ticket".to_owned(),
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

    pub(super) fn actor(kind: ActorKind, id: Option<&str>) -> Option<Actor> {
        Some(Actor {
            kind,
            id: id.map(str::to_owned),
            epoch: None,
        })
    }

    pub(super) fn decode_ok(value: &Value) -> Vec<ChangeEvent> {
        decode(&settings(), value).unwrap_or_else(|error| panic!("{error}"))
    }

    /// Decodes full images, checks that each id ends with a 16-digit content hash and removes
    /// it, so expectations can spell out the rest by hand.
    pub(super) fn images(value: &Value) -> Vec<ChangeEvent> {
        decode_ok(value)
            .into_iter()
            .map(|mut event| {
                let (rest, hash) = event.event_id.rsplit_once(':').unwrap();
                assert!(
                    hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()),
                    "{}",
                    event.event_id
                );
                event.event_id = rest.to_owned();
                event
            })
            .collect()
    }

    pub(super) fn decode_err(value: &Value) -> String {
        match decode(&settings(), value) {
            Ok(events) => panic!("expected an error, decoded {events:?}"),
            Err(error) => error,
        }
    }

    fn time_based_page() -> Value {
        json!({
            "tickets": [
                {
                    "id": 35436,
                    "url": "https://example.zendesk.com/api/v2/tickets/35436.json",
                    "external_id": "ahg35h3jh",
                    "created_at": "2026-03-02T09:15:00Z",
                    "updated_at": "2026-03-04T16:20:31Z",
                    "generated_timestamp": 1772641231,
                    "type": "incident",
                    "subject": "Printer on fire",
                    "status": "open",
                    "priority": "high",
                    "requester_id": 20978392,
                    "assignee_id": 235323,
                    "due_at": null,
                    "tags": ["enterprise"],
                    "custom_fields": [{"id": 27642, "value": "745"}, {"id": 27648, "value": null}],
                    "fields": [{"id": 27642, "value": "745"}, {"id": 27648, "value": null}],
                    "via": {"channel": "web"}
                },
                {
                    "id": 35437,
                    "external_id": null,
                    "created_at": "2026-03-01T08:00:00Z",
                    "updated_at": "2026-03-04T17:02:11Z",
                    "generated_timestamp": 1772643731,
                    "status": "deleted",
                    "subject": "Cheap watches",
                    "via": {"channel": "email"}
                }
            ],
            "count": 2,
            "end_of_stream": true,
            "end_time": 1772643731,
            "next_page": "https://example.zendesk.com/api/v2/incremental/tickets.json?start_time=1772643731"
        })
    }

    #[test]
    fn a_time_based_export_page_gives_full_images_and_deletes() {
        let expected = vec![
            ChangeEvent {
                external_id: Some("ahg35h3jh".to_owned()),
                fields: fields(json!({
                    "id": 35436,
                    "url": "https://example.zendesk.com/api/v2/tickets/35436.json",
                    "external_id": "ahg35h3jh",
                    "created_at": "2026-03-02T09:15:00Z",
                    "updated_at": "2026-03-04T16:20:31Z",
                    "generated_timestamp": 1772641231,
                    "type": "incident",
                    "subject": "Printer on fire",
                    "status": "open",
                    "priority": "high",
                    "requester_id": 20978392,
                    "assignee_id": 235323,
                    "due_at": null,
                    "tags": ["enterprise"],
                    "custom_fields.27642": "745",
                    "custom_fields.27648": null,
                    "via": {"channel": "web"}
                })),
                ..event(
                    "zd:ticket:35436:2026-03-04T16:20:31Z:1772641231",
                    "35436",
                    Op::Update,
                    "2026-03-04T16:20:31Z",
                )
            },
            event(
                "zd:ticket:35437:2026-03-04T17:02:11Z:1772643731",
                "35437",
                Op::Delete,
                "2026-03-04T17:02:11Z",
            ),
        ];
        assert_eq!(images(&time_based_page()), expected);
    }

    #[test]
    fn a_cursor_based_export_page_and_the_writer_of_a_ticket_never_updated() {
        let page = json!({
            "tickets": [{
                "id": 88,
                "created_at": "2026-03-04T11:40:00Z",
                "updated_at": "2026-03-04T11:40:00Z",
                "status": "new",
                "subject": "Order 5521 missing",
                "via": {"channel": "api", "source": {"from": {}, "to": {}, "rel": null}}
            }],
            "after_cursor": "MTc3MjYyNDQwMC4wfHw4OHw=",
            "after_url": "https://example.zendesk.com/api/v2/incremental/tickets/cursor.json?cursor=MTc3MjYyNDQwMC4wfHw4OHw=",
            "before_cursor": null,
            "before_url": null,
            "end_of_stream": true
        });
        let expected = ChangeEvent {
            fields: fields(json!({
                "id": 88,
                "created_at": "2026-03-04T11:40:00Z",
                "updated_at": "2026-03-04T11:40:00Z",
                "status": "new",
                "subject": "Order 5521 missing",
                "via": {"channel": "api", "source": {"from": {}, "to": {}, "rel": null}}
            })),
            actor: actor(ActorKind::Integration, None),
            ..event(
                "zd:ticket:88:2026-03-04T11:40:00Z",
                "88",
                Op::Update,
                "2026-03-04T11:40:00Z",
            )
        };
        assert_eq!(images(&page), vec![expected.clone()]);

        // Configuration names the channel's writer.
        let mut configured = settings();
        configured.actors.insert(
            "via:api".to_owned(),
            parse_actor("integration:order-sync").unwrap(),
        );
        let events = decode(&configured, &page).unwrap();
        assert_eq!(
            events[0].actor,
            actor(ActorKind::Integration, Some("order-sync"))
        );
    }

    #[test]
    fn an_export_redelivered_gives_the_same_event_ids_and_a_new_state_a_new_one() {
        let first = decode_ok(&time_based_page());
        let again = decode_ok(&time_based_page());
        assert_eq!(first, again);
        let mut later = time_based_page();
        later["tickets"][0]["updated_at"] = json!("2026-03-04T18:00:00Z");
        later["tickets"][0]["generated_timestamp"] = json!(1772647200);
        let changed = decode_ok(&later);
        assert!(
            changed[0]
                .event_id
                .starts_with("zd:ticket:35436:2026-03-04T18:00:00Z:1772647200:"),
            "{}",
            changed[0].event_id
        );
        assert_eq!(changed[1].event_id, first[1].event_id);
        // Two states within one second share both times: their content tells them apart.
        let mut same_second = time_based_page();
        same_second["tickets"][0]["status"] = json!("solved");
        assert_ne!(decode_ok(&same_second)[0].event_id, first[0].event_id);
        // A system update moves only `generated_timestamp`: still a new state.
        let mut system = time_based_page();
        system["tickets"][0]["generated_timestamp"] = json!(1772650000);
        assert_ne!(decode_ok(&system)[0].event_id, first[0].event_id);
    }

    #[test]
    fn a_ticket_alone_or_wrapped_is_the_same_event() {
        let ticket = json!({
            "id": 42,
            "external_id": "CRM-9",
            "created_at": "2026-03-01T08:00:00Z",
            "updated_at": "2026-03-03T12:00:00+01:00",
            "status": "solved",
            "via": {"channel": "web"}
        });
        let expected = ChangeEvent {
            external_id: Some("CRM-9".to_owned()),
            fields: fields(ticket.clone()),
            ..event(
                "zd:ticket:42:2026-03-03T11:00:00Z",
                "42",
                Op::Update,
                "2026-03-03T11:00:00Z",
            )
        };
        assert_eq!(images(&ticket), vec![expected.clone()]);
        let wrapped = json!({"ticket": ticket, "users": [{"id": 1}]});
        assert_eq!(images(&wrapped), vec![expected]);
    }

    fn ticket_events_page() -> Value {
        json!({
            "ticket_events": [
                {
                    "id": 926256957613_u64,
                    "ticket_id": 155,
                    "timestamp": 1772611200,
                    "created_at": "2026-03-04T08:00:00Z",
                    "updater_id": 20978392,
                    "via": "Web form",
                    "system": {"client": "Mozilla/5.0", "location": "Copenhagen, Denmark"},
                    "event_type": "Audit",
                    "child_events": [
                        {"id": 926256957614_u64, "via": "Web form", "via_reference_id": null,
                         "comment_present": true, "comment_public": true, "event_type": "Comment"},
                        {"id": 926256957615_u64, "via": "Web form", "via_reference_id": null,
                         "subject": "VPN drops every hour", "event_type": "Create"},
                        {"id": 926256957616_u64, "via": "Web form", "via_reference_id": null,
                         "status": "new", "event_type": "Create"},
                        {"id": 926256957617_u64, "via": "Web form", "via_reference_id": null,
                         "priority": null, "event_type": "Create"},
                        {"id": 926256957618_u64, "via": "Web form", "via_reference_id": null,
                         "tags": ["vpn"], "added_tags": ["vpn"], "removed_tags": [],
                         "event_type": "Create"}
                    ]
                },
                {
                    "id": 926256957700_u64,
                    "ticket_id": 155,
                    "timestamp": 1772614800,
                    "created_at": "2026-03-04T09:00:00Z",
                    "updater_id": 235323,
                    "via": "Web service",
                    "event_type": "Audit",
                    "child_events": [
                        {"id": 926256957701_u64, "via": "Web service", "via_reference_id": null,
                         "status": "pending", "previous_value": "new", "event_type": "Change"},
                        {"id": 926256957702_u64, "type": "Change", "field_name": "assignee_id",
                         "value": null, "previous_value": "235323"},
                        {"id": 926256957703_u64, "event_type": "Change",
                         "field_name": "360001234567", "value": "gold", "previous_value": "silver"},
                        {"id": 926256957704_u64, "via": "Web service", "event_type": "Notification",
                         "subject": "Your request was updated", "recipients": [20978392]}
                    ]
                },
                {
                    "id": 926256957800_u64,
                    "ticket_id": 155,
                    "timestamp": 1772618400,
                    "updater_id": -1,
                    "via": "Rule",
                    "event_type": "Audit",
                    "child_events": [
                        {"id": 926256957801_u64, "via": "Rule", "via_reference_id": 360000111,
                         "status": "solved", "previous_value": "pending", "event_type": "Change"}
                    ]
                },
                {
                    "id": 926256957900_u64,
                    "ticket_id": 155,
                    "timestamp": 1772618460,
                    "updater_id": 20978392,
                    "via": "Mail",
                    "event_type": "Audit",
                    "child_events": [
                        {"id": 926256957901_u64, "via": "Mail", "comment_present": true,
                         "comment_public": true, "event_type": "Comment"}
                    ]
                }
            ],
            "count": 4,
            "end_of_stream": true,
            "end_time": 1772618460,
            "next_page": "https://example.zendesk.com/api/v2/incremental/ticket_events.json?start_time=1772618460"
        })
    }

    #[test]
    fn a_ticket_events_page_gives_one_partial_event_per_update_that_sets_properties() {
        let expected = vec![
            ChangeEvent {
                fields: fields(json!({
                    "subject": "VPN drops every hour",
                    "status": "new",
                    "priority": null,
                    "tags": ["vpn"]
                })),
                partial: true,
                actor: actor(ActorKind::User, Some("20978392")),
                ..event(
                    "zd:ticket_event:926256957613",
                    "155",
                    Op::Create,
                    "2026-03-04T08:00:00Z",
                )
            },
            ChangeEvent {
                fields: fields(json!({
                    "status": "pending",
                    "assignee_id": null,
                    "custom_fields.360001234567": "gold"
                })),
                partial: true,
                actor: actor(ActorKind::Integration, Some("235323")),
                ..event(
                    "zd:ticket_event:926256957700",
                    "155",
                    Op::Update,
                    "2026-03-04T09:00:00Z",
                )
            },
            ChangeEvent {
                fields: fields(json!({"status": "solved"})),
                partial: true,
                actor: actor(ActorKind::System, None),
                ..event(
                    "zd:ticket_event:926256957800",
                    "155",
                    Op::Update,
                    "2026-03-04T10:00:00Z",
                )
            },
        ];
        assert_eq!(decode_ok(&ticket_events_page()), expected);
    }

    #[test]
    fn one_ticket_event_per_message() {
        let page = ticket_events_page();
        let events = decode_ok(&page["ticket_events"][1]);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event_id, "zd:ticket_event:926256957700");
        assert_eq!(events[0].fields, decode_ok(&page)[1].fields);
        // An update that only adds a comment sets no property.
        assert_eq!(decode_ok(&page["ticket_events"][3]), Vec::new());
    }

    #[test]
    fn ticket_event_actors_follow_configuration_first() {
        let mut configured = settings();
        configured
            .actors
            .insert("user:235323".to_owned(), parse_actor("sync").unwrap());
        configured.actors.insert(
            "via:rule".to_owned(),
            parse_actor("system:triggers").unwrap(),
        );
        let events = decode(&configured, &ticket_events_page()).unwrap();
        assert_eq!(events[0].actor, actor(ActorKind::User, Some("20978392")));
        assert_eq!(events[1].actor, actor(ActorKind::Sync, None));
        // `user:-1` is not mapped, so the channel's mapping applies.
        assert_eq!(events[2].actor, actor(ActorKind::System, Some("triggers")));
    }

    fn webhook(event_type: &str, event: Value) -> Value {
        json!({
            "type": format!("zen:event-type:ticket.{event_type}"),
            "account_id": 12514403,
            "id": "2b24ef10-19d4-4740-93cf-8f98ec4776c0",
            "time": "2026-03-04T10:15:02.218306624Z",
            "zendesk_event_version": "2022-11-06",
            "subject": "zen:ticket:5158",
            "detail": {
                "actor_id": "8447388090494",
                "assignee_id": "8447388090111",
                "brand_id": "8447346621310",
                "created_at": "2026-03-04T10:15:02Z",
                "custom_status": "8447320465790",
                "description": "The VPN drops every hour.",
                "external_id": "CRM-4471",
                "form_id": "8646151517822",
                "group_id": "8447320466430",
                "id": "5158",
                "is_public": true,
                "organization_id": null,
                "priority": "HIGH",
                "requester_id": "8447388090494",
                "status": "SOLVED",
                "subject": "VPN drops",
                "submitter_id": "8447388090494",
                "tags": ["vpn", "enterprise"],
                "type": "INCIDENT",
                "updated_at": "2026-03-04T10:15:02Z",
                "via": {"channel": "web_service"}
            },
            "event": event
        })
    }

    const WEBHOOK_ID: &str = "zd:webhook:2b24ef10-19d4-4740-93cf-8f98ec4776c0";
    /// The webhook's `time` (10:15:02.218306624), cut to the second like every other shape.
    const WEBHOOK_TIME: &str = "2026-03-04T10:15:02Z";

    #[test]
    fn a_created_webhook_is_a_create_with_the_detail_in_rest_spelling() {
        let message = webhook(
            "created",
            json!({"meta": {"sequence": {"id": "a1b2c3", "position": 1}}}),
        );
        let expected = ChangeEvent {
            external_id: Some("CRM-4471".to_owned()),
            fields: fields(json!({
                "assignee_id": 8447388090111_u64,
                "brand_id": 8447346621310_u64,
                "created_at": "2026-03-04T10:15:02Z",
                "custom_status_id": 8447320465790_u64,
                "description": "The VPN drops every hour.",
                "external_id": "CRM-4471",
                "ticket_form_id": 8646151517822_u64,
                "group_id": 8447320466430_u64,
                "id": 5158,
                "is_public": true,
                "organization_id": null,
                "priority": "high",
                "requester_id": 8447388090494_u64,
                "status": "solved",
                "subject": "VPN drops",
                "submitter_id": 8447388090494_u64,
                "tags": ["vpn", "enterprise"],
                "type": "incident",
                "updated_at": "2026-03-04T10:15:02Z",
                "via": {"channel": "web_service"}
            })),
            actor: actor(ActorKind::Integration, Some("8447388090494")),
            // `detail` holds some twenty properties and no custom fields: not a full image.
            partial: true,
            ..event(WEBHOOK_ID, "5158", Op::Create, WEBHOOK_TIME)
        };
        assert_eq!(decode_ok(&message), vec![expected]);
    }

    #[test]
    fn changed_webhooks_are_partial_updates_of_their_property() {
        let status = webhook(
            "status_changed",
            json!({"current": "SOLVED", "previous": "OPEN"}),
        );
        let expected = ChangeEvent {
            external_id: Some("CRM-4471".to_owned()),
            fields: fields(json!({"status": "solved"})),
            partial: true,
            actor: actor(ActorKind::User, Some("8447388090494")),
            ..event(WEBHOOK_ID, "5158", Op::Update, WEBHOOK_TIME)
        };
        assert_eq!(decode_ok(&status), vec![expected.clone()]);

        // A property cleared is a null field.
        let priority = webhook(
            "priority_changed",
            json!({"current": null, "previous": "HIGH"}),
        );
        assert_eq!(
            decode_ok(&priority),
            vec![ChangeEvent {
                fields: fields(json!({"priority": null})),
                ..expected.clone()
            }]
        );
        let assignee = webhook(
            "agent_assignment_changed",
            json!({"current": "8447388090111", "previous": "8447388090222"}),
        );
        assert_eq!(
            decode_ok(&assignee),
            vec![ChangeEvent {
                fields: fields(json!({"assignee_id": 8447388090111_u64})),
                ..expected.clone()
            }]
        );
        // The tags event lists what was added and removed; the detail has the whole list.
        let tags = webhook(
            "tags_changed",
            json!({"tags_added": ["enterprise"], "tags_removed": ["trial"]}),
        );
        assert_eq!(
            decode_ok(&tags),
            vec![ChangeEvent {
                fields: fields(json!({"tags": ["vpn", "enterprise"]})),
                ..expected.clone()
            }]
        );
        let custom = webhook(
            "custom_field_changed",
            json!({
                "current": {"value": "gold"},
                "previous": {"value": "silver"},
                "custom_field": {"id": "360001234567", "title": "Plan", "type": "tagger"}
            }),
        );
        assert_eq!(
            decode_ok(&custom),
            vec![ChangeEvent {
                fields: fields(json!({"custom_fields.360001234567": "gold"})),
                ..expected.clone()
            }]
        );
        let external = webhook(
            "external_id_changed",
            json!({"current": "CRM-4472", "previous": "CRM-4471"}),
        );
        assert_eq!(
            decode_ok(&external),
            vec![ChangeEvent {
                external_id: Some("CRM-4472".to_owned()),
                fields: fields(json!({"external_id": "CRM-4472"})),
                ..expected
            }]
        );
    }

    #[test]
    fn deletes_merges_restores_and_events_without_ticket_changes() {
        let base = ChangeEvent {
            external_id: Some("CRM-4471".to_owned()),
            actor: actor(ActorKind::User, Some("8447388090494")),
            ..event(WEBHOOK_ID, "5158", Op::Delete, WEBHOOK_TIME)
        };
        for deleting in ["soft_deleted", "permanently_deleted", "marked_as_spam"] {
            assert_eq!(decode_ok(&webhook(deleting, json!({}))), vec![base.clone()]);
        }
        let merged = webhook("merged", json!({"target_ticket_id": "5160"}));
        assert_eq!(
            decode_ok(&merged),
            vec![ChangeEvent {
                op: Op::Merge,
                merged_into: Some("5160".to_owned()),
                ..base.clone()
            }]
        );
        let undeleted = decode_ok(&webhook("undeleted", json!({})));
        assert_eq!(undeleted.len(), 1);
        assert_eq!(undeleted[0].op, Op::Undelete);
        // The webhook's `detail` lacks the custom fields: not a full image.
        assert!(undeleted[0].partial);
        assert_eq!(
            undeleted[0]
                .fields
                .as_ref()
                .and_then(|fields| fields.get("status")),
            Some(&json!("solved"))
        );
        let comment = webhook(
            "comment_added",
            json!({"comment": {"id": "9001", "body": "Thanks!", "is_public": true}}),
        );
        assert_eq!(decode_ok(&comment), Vec::new());
    }

    #[test]
    fn webhook_actors_follow_configuration_first() {
        let mut configured = settings();
        configured.actors.insert(
            "via:web_service".to_owned(),
            parse_actor("integration:crm-bridge").unwrap(),
        );
        let created = webhook("created", json!({}));
        let events = decode(&configured, &created).unwrap();
        assert_eq!(
            events[0].actor,
            actor(ActorKind::Integration, Some("crm-bridge"))
        );
        configured.actors.insert(
            "user:8447388090494".to_owned(),
            parse_actor("repair").unwrap(),
        );
        let events = decode(&configured, &created).unwrap();
        assert_eq!(events[0].actor, actor(ActorKind::Repair, None));
        // Without configuration the system user is the system.
        let mut by_system = webhook("status_changed", json!({"current": "CLOSED"}));
        by_system["detail"]["actor_id"] = json!("-1");
        assert_eq!(
            decode_ok(&by_system)[0].actor,
            actor(ActorKind::System, None)
        );
    }

    #[test]
    fn entity_names_follow_configuration() {
        let mut configured = settings();
        configured
            .objects
            .insert("ticket".to_owned(), "case".to_owned());
        let events = decode(&configured, &time_based_page()).unwrap();
        assert!(events.iter().all(|event| event.entity == "case"));
    }

    #[test]
    fn malformed_messages_name_the_part_at_fault() {
        let cases = [
            (
                json!({"tickets": [{"updated_at": "2026-03-04T10:00:00Z"}]}),
                "`.tickets[0].id` is missing",
            ),
            (
                json!({"tickets": {"id": 1}}),
                "`.tickets` is an object, expected an array",
            ),
            (
                json!({"ticket": {"id": 1, "updated_at": "yesterday"}}),
                "`.ticket.updated_at` is \"yesterday\", not an RFC 3339 time",
            ),
            (
                json!({"tickets": [{"id": 1, "updated_at": "2026-03-04T10:00:00Z",
                                     "custom_fields": [{"value": "x"}]}]}),
                "`.tickets[0].custom_fields[0].id` is missing",
            ),
            (
                json!({"ticket_events": [{"id": 7, "ticket_id": 155, "timestamp": 1772611200,
                                           "child_events": [{"id": 8, "status": "open"}]}]}),
                "`.ticket_events[0].child_events[0].event_type` is missing",
            ),
            (
                json!({"ticket_events": [{"id": 7, "ticket_id": 155, "timestamp": "soon",
                                           "child_events": []}]}),
                "`.ticket_events[0].timestamp` is \"soon\", expected seconds since the epoch",
            ),
            (
                json!({"id": 7, "ticket_id": 155, "created_at": "2026-03-04T10:00:00Z",
                       "child_events": [{"id": 8, "event_type": "Change", "via": "Mail"}]}),
                "`.child_events[0]` names no ticket property",
            ),
            (
                webhook("exploded", json!({})),
                "`.type` is \"zen:event-type:ticket.exploded\", not a ticket event type",
            ),
            (
                json!({"type": "zen:event-type:article.published", "id": "a-1",
                       "time": "2026-03-04T10:00:00Z", "detail": {"id": "77"}}),
                "only ticket, user and organization events",
            ),
            (
                json!({"type": "incident", "zendesk_event_version": "2022-11-06"}),
                "`.type` is \"incident\", expected a webhook event type",
            ),
            (
                webhook("merged", json!({"target_ticket_id": true})),
                "`.event.target_ticket_id` is a boolean",
            ),
            (
                json!({"subject": "Printer on fire"}),
                "the message has members [subject], expected an incremental export page",
            ),
            (json!([1, 2]), "the message is an array, expected"),
        ];
        for (message, expected) in cases {
            let error = decode_err(&message);
            assert!(
                error.contains(expected),
                "{error:?} should contain {expected:?}"
            );
        }
        let mut no_time = webhook("created", json!({}));
        no_time.as_object_mut().unwrap().remove("time");
        assert_eq!(decode_err(&no_time), "`.time` is missing");
    }

    #[test]
    fn a_message_is_decoded_whole_or_not_at_all() {
        let mut page = time_based_page();
        page["tickets"][1]["updated_at"] = json!(17);
        let error = decode_err(&page);
        assert!(
            error.starts_with("`.tickets[1].updated_at` is a number"),
            "{error}"
        );
    }

    #[test]
    fn the_framework_decodes_and_labels_zendesk_messages() {
        let bytes =
            serde_json::to_vec(&webhook("status_changed", json!({"current": "OPEN"}))).unwrap();
        let events = decode_message(&settings(), None, Some(&bytes), 1 << 20).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event_id, WEBHOOK_ID);
        assert_eq!(events[0].fields, fields(json!({"status": "open"})));

        let error =
            decode_message(&settings(), None, Some(br#"{"tickets": 3}"#), 1 << 20).unwrap_err();
        assert_eq!(
            error.detail,
            "not a zendesk message: `.tickets` is a number, expected an array"
        );
    }

    #[test]
    fn the_examples_decode() {
        let examples = [
            include_str!("../../../../schemas/examples/formats/zendesk/export-time-based.json"),
            include_str!("../../../../schemas/examples/formats/zendesk/export-cursor-based.json"),
            include_str!("../../../../schemas/examples/formats/zendesk/ticket-events.json"),
            include_str!("../../../../schemas/examples/formats/zendesk/ticket.json"),
            include_str!(
                "../../../../schemas/examples/formats/zendesk/webhook-ticket-created.json"
            ),
            include_str!(
                "../../../../schemas/examples/formats/zendesk/webhook-status-changed.json"
            ),
            include_str!("../../../../schemas/examples/formats/zendesk/webhook-soft-deleted.json"),
        ];
        for example in examples {
            let events =
                decode_message(&settings(), None, Some(example.as_bytes()), 1 << 20).unwrap();
            assert!(!events.is_empty());
        }
    }

    #[test]
    fn odd_inputs_are_errors_not_panics() {
        let odd = [
            json!(null),
            json!(1),
            json!("x"),
            json!({}),
            json!({"tickets": [null, 1, "x"]}),
            json!({"tickets": [{"id": -1, "updated_at": "2026-03-04T10:00:00Z",
                                 "generated_timestamp": -5}]}),
            json!({"tickets": [{"id": 1.5, "updated_at": "2026-03-04T10:00:00Z"}]}),
            json!({"ticket_events": [{"id": 1, "ticket_id": 2, "timestamp": i64::MAX,
                                       "child_events": []}]}),
            json!({"ticket_events": [{"id": 1, "ticket_id": 2, "timestamp": 1,
                                       "child_events": [{"event_type": "Change",
                                                         "field_name": {}}]}]}),
            json!({"type": "zen:event-type:", "id": "1", "time": "2026-03-04T10:00:00Z"}),
            json!({"type": "zen:event-type:ticket.created", "id": "1",
                   "time": "2026-03-04T10:00:00Z", "detail": {"via": 3}}),
            json!({"type": "zen:event-type:ticket.status_changed", "id": "1",
                   "time": "2026-03-04T10:00:00Z", "detail": {}, "event": []}),
            json!({"type": "zen:event-type:ticket.status_changed", "id": "1",
                   "time": "2026-03-04T10:00:00Z", "detail": {}, "subject": "zen:ticket:"}),
        ];
        for value in odd {
            assert!(
                decode(&settings(), &value).is_err(),
                "{value} should be an error"
            );
        }
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::*;

        const KEYS: [&str; 32] = [
            "tickets",
            "ticket_events",
            "ticket",
            "id",
            "ticket_id",
            "updated_at",
            "created_at",
            "generated_timestamp",
            "status",
            "external_id",
            "via",
            "channel",
            "custom_fields",
            "fields",
            "value",
            "child_events",
            "event_type",
            "field_name",
            "type",
            "time",
            "detail",
            "event",
            "current",
            "custom_field",
            "target_ticket_id",
            "subject",
            "zendesk_event_version",
            "timestamp",
            "updater_id",
            "actor_id",
            "tags",
            "priority",
        ];
        const TEXTS: [&str; 16] = [
            "",
            "open",
            "DELETED",
            "2026-03-04T10:00:00Z",
            "zen:event-type:ticket.created",
            "zen:event-type:ticket.status_changed",
            "zen:event-type:ticket.custom_field_changed",
            "zen:event-type:ticket.merged",
            "zen:event-type:user.created",
            "zen:ticket:5",
            "Create",
            "Change",
            "Web service",
            "-1",
            "123",
            "27642",
        ];

        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                any::<f64>().prop_map(|number| json!(number)),
                prop::sample::select(TEXTS.to_vec()).prop_map(Value::from),
            ];
            leaf.prop_recursive(5, 96, 8, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    prop::collection::btree_map(
                        prop::sample::select(KEYS.to_vec()).prop_map(str::to_owned),
                        inner,
                        0..8,
                    )
                    .prop_map(|members| Value::Object(members.into_iter().collect())),
                ]
            })
        }

        proptest! {
            #[test]
            fn never_panics_and_every_event_is_valid(value in json_value()) {
                if let Ok(events) = decode(&settings(), &value) {
                    for event in &events {
                        prop_assert!(tandem_core::event::validate(event).is_ok(), "{event:?}");
                    }
                }
            }
        }
    }
}
