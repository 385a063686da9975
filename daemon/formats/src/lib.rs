//! Vendor change-event formats and their decoding into the canonical [`ChangeEvent`].
//!
//! Every topic has a [`Format`]. A message in a vendor's shape becomes zero or more canonical
//! events: one Salesforce change event can name several records, a HubSpot webhook delivery is
//! an array, a Debezium tombstone carries nothing to apply. A message is decoded whole or not
//! at all: if any part of it cannot be understood, the whole message goes to the dead-letter
//! topic with a reason that names the format and the part at fault, so nothing is half-applied.
//!
//! Decoders are pure functions of the message key, the message value and the topic's
//! [`FormatSettings`] (vendor object names to tandem entities, vendor writer ids to actors).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde_json::Value;

pub use event_schemas::EventSchemas;
pub use tandem_core::event::parse_actor;
use tandem_core::event::{self, Actor, ChangeEvent, DeadLetterReason, DecodeError};

mod debezium;
mod event_schemas;
mod hubspot;
mod pipedrive;
mod salesforce;
mod support;
mod zendesk;

/// The shape of the messages on a topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Format {
    /// tandem's own `tandem.change.v1`.
    Canonical,
    /// Salesforce Change Data Capture: CometD JSON or the Pub/Sub API's decoded JSON.
    SalesforceCdc,
    /// HubSpot webhook deliveries: a JSON array of subscription events.
    HubspotWebhooks,
    /// Debezium change events, with or without the schema wrapper.
    Debezium,
    /// Zendesk incremental exports, ticket events and webhooks.
    Zendesk,
    /// Pipedrive webhooks, version 2.
    PipedriveV2,
}

impl Format {
    /// Every format, in a stable order.
    pub const ALL: [Format; 6] = [
        Format::Canonical,
        Format::SalesforceCdc,
        Format::HubspotWebhooks,
        Format::Debezium,
        Format::Zendesk,
        Format::PipedriveV2,
    ];

    /// The name used in configuration, the CLI and dead-letter details.
    pub const fn name(self) -> &'static str {
        match self {
            Format::Canonical => "tandem.v1",
            Format::SalesforceCdc => "salesforce-cdc",
            Format::HubspotWebhooks => "hubspot-webhooks",
            Format::Debezium => "debezium",
            Format::Zendesk => "zendesk",
            Format::PipedriveV2 => "pipedrive-v2",
        }
    }

    /// The format of a configured name, if there is one.
    pub fn from_name(name: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|format| {
            format.name() == name
                || (*format == Format::Canonical && name == event::CANONICAL_FORMAT)
        })
    }

    /// Every accepted name, for error messages.
    pub fn names() -> String {
        Format::ALL.map(Format::name).join(", ")
    }
}

impl fmt::Display for Format {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// How one topic's messages are decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormatSettings {
    /// The format of the topic.
    pub format: Format,
    /// Vendor object names (Salesforce `Account`, Debezium table `customers`, ...) to tandem
    /// entity names. A name not listed becomes the entity of its lowercase name.
    pub objects: BTreeMap<String, String>,
    /// Vendor writer identifiers (as each format documents them, e.g. `client:SyncApp`,
    /// `app:123`) to the actor they are.
    pub actors: BTreeMap<String, Actor>,
    /// A field of the record that names who wrote the change (`last_modified_by`, as
    /// Salesforce's `LastModifiedById` or HubSpot's `hs_updated_by_user_id` do), for formats
    /// that carry row images (Debezium). Its value is looked up in `actors`, or read as an
    /// actor (`user:42`, `integration:webform`) if it is not listed.
    pub actor_field: Option<String>,
    /// Salesforce Pub/Sub event schemas by schema id, which decode the field bitmaps of
    /// change events (`salesforce-cdc`).
    pub event_schemas: Arc<EventSchemas>,
}

impl FormatSettings {
    /// Settings of a topic in `format` with no object or actor mappings.
    pub fn new(format: Format) -> Self {
        FormatSettings {
            format,
            objects: BTreeMap::new(),
            actors: BTreeMap::new(),
            actor_field: None,
            event_schemas: Arc::default(),
        }
    }

    /// The tandem entity of a vendor object name.
    pub fn entity(&self, vendor_name: &str) -> String {
        match self.objects.get(vendor_name) {
            Some(entity) => entity.clone(),
            None => vendor_name.to_lowercase(),
        }
    }

    /// The actor of a change: the first of `identifiers` (most specific first) that the
    /// settings map, else the decoder's own reading of the vendor's fields.
    pub fn actor(&self, identifiers: &[String], otherwise: Option<Actor>) -> Option<Actor> {
        identifiers
            .iter()
            .find_map(|identifier| self.actors.get(identifier).cloned())
            .or(otherwise)
    }
}

/// Decodes one Kafka message of a topic into the canonical events it carries.
///
/// An empty list means the message carries nothing to apply (a Debezium tombstone or
/// transaction marker); it still counts as read.
pub fn decode_message(
    settings: &FormatSettings,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    max_bytes: usize,
) -> Result<Vec<ChangeEvent>, DecodeError> {
    if settings.format == Format::Canonical {
        return event::decode(payload, max_bytes).map(|event| vec![event]);
    }
    let format = settings.format;
    let value = match payload {
        // Debezium writes a tombstone (null value) after a delete so that log compaction can
        // drop the key; the delete itself came in the message before it.
        None if format == Format::Debezium => return Ok(Vec::new()),
        payload => parse_json(format, payload, max_bytes)?,
    };
    let events = match format {
        Format::Canonical => unreachable!("handled above"),
        Format::SalesforceCdc => salesforce::decode(settings, &value),
        Format::HubspotWebhooks => hubspot::decode(settings, &value),
        Format::Debezium => debezium::decode(settings, key, &value),
        Format::Zendesk => zendesk::decode(settings, &value),
        Format::PipedriveV2 => pipedrive::decode(settings, &value),
    }
    .map_err(|detail| {
        DecodeError::new(
            DeadLetterReason::SchemaViolation,
            format!("not a {format} message: {detail}"),
        )
    })?;
    for event in &events {
        event::validate(event).map_err(|error| {
            DecodeError::new(
                error.reason,
                format!(
                    "{format} message decoded to an invalid event: {}",
                    error.detail
                ),
            )
        })?;
    }
    Ok(events)
}

/// The checks every vendor format shares: present, within the size limit, UTF-8, JSON.
fn parse_json(
    format: Format,
    payload: Option<&[u8]>,
    max_bytes: usize,
) -> Result<Value, DecodeError> {
    let bytes = match payload {
        None => {
            return Err(DecodeError::new(
                DeadLetterReason::Empty,
                format!("the {format} message has no value (null or tombstone)"),
            ))
        }
        Some(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => {
            return Err(DecodeError::new(
                DeadLetterReason::Empty,
                format!("the {format} message value is empty"),
            ))
        }
        Some(bytes) => bytes,
    };
    if bytes.len() > max_bytes {
        return Err(DecodeError::new(
            DeadLetterReason::TooLarge,
            format!(
                "the {format} message value is {} bytes, over the limit of {max_bytes} bytes (kafka.max_message_bytes)",
                bytes.len()
            ),
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|error| {
        DecodeError::new(
            DeadLetterReason::InvalidUtf8,
            format!("the {format} message value is not UTF-8: {error}"),
        )
    })?;
    serde_json::from_str(text).map_err(|error| {
        DecodeError::new(
            DeadLetterReason::InvalidJson,
            format!("the {format} message is not well-formed JSON: {error}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_core::event::ActorKind;

    /// A number read from a vendor payload must read back the same from the event log, or
    /// equal values would compare unequal (found by fuzzing; needs exact float parsing).
    #[test]
    fn numbers_survive_the_trip_through_the_event_log() {
        let payload = br#"{"ticket": {"id": 41, "updated_at": "2026-03-03T12:00:00Z",
            "requester_id": 209700000000000000000000000000, "amount": 0.30000000000000004}}"#;
        let settings = FormatSettings::new(Format::Zendesk);
        let events = decode_message(&settings, None, Some(payload), 1 << 20).unwrap();
        assert_eq!(events.len(), 1);
        let logged = serde_json::to_vec(&events[0]).unwrap();
        let read_back = event::decode(Some(&logged), 1 << 20).unwrap();
        assert_eq!(read_back, events[0]);
        let fields = read_back.fields.unwrap();
        assert_eq!(fields["amount"].as_f64(), Some(0.1 + 0.2));
    }

    #[test]
    fn formats_and_actors_parse_from_their_configured_names() {
        for format in Format::ALL {
            assert_eq!(Format::from_name(format.name()), Some(format));
        }
        assert_eq!(
            Format::from_name("tandem.change.v1"),
            Some(Format::Canonical)
        );
        assert_eq!(Format::from_name("salesforce"), None);
        assert_eq!(
            parse_actor("integration:mailchimp"),
            Ok(Actor {
                kind: ActorKind::Integration,
                id: Some("mailchimp".to_owned()),
                epoch: None,
            })
        );
        assert_eq!(
            parse_actor("sync"),
            Ok(Actor {
                kind: ActorKind::Sync,
                id: None,
                epoch: None,
            })
        );
        assert!(parse_actor("robot").is_err());
        assert!(parse_actor("user:").is_err());
    }

    #[test]
    fn an_unlisted_object_is_its_lowercase_name_and_mapped_actors_win() {
        let mut settings = FormatSettings::new(Format::SalesforceCdc);
        settings
            .objects
            .insert("Opportunity".to_owned(), "deal".to_owned());
        settings
            .actors
            .insert("client:SyncLayer".to_owned(), parse_actor("sync").unwrap());
        assert_eq!(settings.entity("Opportunity"), "deal");
        assert_eq!(settings.entity("Account"), "account");
        let fallback = Some(parse_actor("user:7").unwrap());
        assert_eq!(
            settings.actor(
                &["client:Other".to_owned(), "client:SyncLayer".to_owned()],
                fallback.clone()
            ),
            Some(parse_actor("sync").unwrap())
        );
        assert_eq!(
            settings.actor(&["client:Other".to_owned()], fallback.clone()),
            fallback
        );
    }

    #[test]
    fn a_debezium_tombstone_is_read_and_skipped_and_other_formats_refuse_no_value() {
        let debezium = FormatSettings::new(Format::Debezium);
        assert_eq!(
            decode_message(&debezium, Some(b"{\"id\":1}"), None, 1024),
            Ok(Vec::new())
        );
        let hubspot = FormatSettings::new(Format::HubspotWebhooks);
        let error = decode_message(&hubspot, None, None, 1024).unwrap_err();
        assert_eq!(error.reason, DeadLetterReason::Empty);
        let error = decode_message(&hubspot, None, Some(&[b' '; 2000]), 1024).unwrap_err();
        assert_eq!(error.reason, DeadLetterReason::Empty);
        let error = decode_message(&hubspot, None, Some(&[b'['; 2000]), 1024).unwrap_err();
        assert_eq!(error.reason, DeadLetterReason::TooLarge);
        let error = decode_message(&hubspot, None, Some(b"[\xff]"), 1024).unwrap_err();
        assert_eq!(error.reason, DeadLetterReason::InvalidUtf8);
        let error = decode_message(&hubspot, None, Some(b"[{"), 1024).unwrap_err();
        assert_eq!(error.reason, DeadLetterReason::InvalidJson);
        assert!(
            error.detail.contains("hubspot-webhooks"),
            "{}",
            error.detail
        );
    }
}
