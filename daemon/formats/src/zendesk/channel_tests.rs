//! The Zendesk channels besides ticket webhooks and ticket exports: the EventBridge and
//! Integration Services envelopes, user and organization events, user and organization
//! exports and ticket metric events. Every message is a documented example (the fixtures under
//! `schemas/examples/formats/zendesk/` say where each is from); every expected event is worked
//! out by hand from `schemas/formats/zendesk.md`.

use serde_json::{json, Value};

use super::tests::{actor, decode_err, decode_ok, event, fields, images, settings};
use crate::{decode_message, parse_actor, FormatSettings};
use tandem_core::event::{ActorKind, ChangeEvent, Op};

fn example(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../schemas/examples/formats/zendesk")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn of(entity: &str, event: ChangeEvent) -> ChangeEvent {
    ChangeEvent {
        entity: entity.to_owned(),
        ..event
    }
}

#[test]
fn an_eventbridge_ticket_event_is_the_property_it_changed() {
    let decoded = decode_ok(&example("eventbridge-ticket-agent-assignment-changed.json"));
    // The event's own time (not the envelope's), in whole seconds; its id is its place in the
    // sequence of the action; the actor is `meta.actor_id`.
    assert_eq!(
        decoded,
        vec![ChangeEvent {
            external_id: Some("TEST1234".to_owned()),
            fields: fields(json!({"assignee_id": 235324})),
            partial: true,
            actor: actor(ActorKind::User, Some("20978392")),
            ..event(
                "zd:event:CE4A698AF24F35B3208649C6951E000E:1",
                "35436",
                Op::Update,
                "2019-05-25T01:23:45Z",
            )
        }]
    );
}

#[test]
fn an_integration_services_ticket_created_is_a_create_of_the_ticket_in_rest_spelling() {
    let decoded = decode_ok(&example("integration-services-ticket-created.json"));
    assert_eq!(
        decoded,
        vec![ChangeEvent {
            external_id: Some("41EA202E1-123".to_owned()),
            fields: fields(json!({
                "assignee_id": 313502247511_u64,
                "group_id": null,
                "priority": "urgent",
                "tags": ["my_tag1"],
                "requester_id": 323401287712_u64,
                "brand_id": 32040676813_u64,
                "id": 1001,
                "status": "new",
                "via": {"channel": "web"},
                "organization_id": 361454622831_u64,
                "external_id": "41EA202E1-123",
                "created_at": "2021-08-12T08:46:37Z",
                "type": "problem",
                "submitter_id": 323401287712_u64,
                "updated_at": "2021-08-12T08:46:37Z",
                "ticket_form_id": 37201638591_u64
            })),
            partial: true,
            // Created through the web form: a person, not named.
            actor: actor(ActorKind::User, None),
            ..event(
                "zd:event:C20565CD20591B5E81E2206E91ADFB2A:1",
                "1001",
                Op::Create,
                "2021-08-12T08:46:37Z",
            )
        }]
    );
}

#[test]
fn a_user_event_applies_the_user_and_the_changed_property() {
    let from_eventbridge = decode_ok(&example("eventbridge-user-active-status-changed.json"));
    assert_eq!(
        from_eventbridge,
        vec![of(
            "user",
            ChangeEvent {
                external_id: Some("SF12345".to_owned()),
                fields: fields(json!({
                    "id": 35436,
                    "external_id": "SF12345",
                    "role": "agent",
                    "email": "agent@example.com",
                    "created_at": "2020-01-20T22:55:29.465719851Z",
                    "updated_at": "2020-01-20T22:55:29.563482870Z",
                    "organization_id": 10002,
                    "default_group_id": 98738,
                    "active": false
                })),
                partial: true,
                ..event(
                    "zd:event:35D52F7D44640033CCCE4A5F1ADDB2AA:2",
                    "35436",
                    Op::Update,
                    "2020-01-20T22:55:29Z",
                )
            }
        )]
    );

    // The webhook quotes ids; they are numbers as in the REST API, and its "none" (an id
    // "0", an empty external id) is null, as the REST API writes it: no join key.
    let webhook = decode_ok(&example("webhook-user-active-changed.json"));
    let expected = vec![of(
        "user",
        ChangeEvent {
            fields: fields(json!({
                "created_at": "2099-07-04T05:27:58Z",
                "email": "johnny@example.com",
                "external_id": null,
                "default_group_id": null,
                "id": 6596848315901_u64,
                "organization_id": null,
                "role": "end-user",
                "updated_at": "2099-07-04T05:33:18Z",
                "active": false
            })),
            partial: true,
            ..event(
                "zd:webhook:2b24ef10-19d4-4740-93cf-8f98ec4776c0",
                "6596848315901",
                Op::Update,
                "2099-07-04T05:33:18Z",
            )
        },
    )];
    assert_eq!(webhook, expected);
    // The same webhook relayed into an EventBridge bus is the same event.
    assert_eq!(
        decode_ok(&example("eventbridge-webhook-relay.json")),
        expected
    );
}

#[test]
fn organization_events_create_and_a_custom_field_change_is_read_again() {
    assert_eq!(
        decode_ok(&example("webhook-organization-created.json")),
        vec![of(
            "organization",
            ChangeEvent {
                fields: fields(json!({
                    "created_at": "2099-07-07T03:44:13Z",
                    "id": 6607619104125_u64,
                    "name": "Acme",
                    "shared_comments": false,
                    "shared_tickets": false,
                    "updated_at": "2099-07-07T03:44:13Z",
                    "group_id": null,
                    "external_id": null
                })),
                partial: true,
                ..event(
                    "zd:webhook:a540ab78-88f2-49e1-93a7-16152a6f782c",
                    "6607619104125",
                    Op::Create,
                    "2099-07-07T03:44:13Z",
                )
            },
        )]
    );

    let decoded = decode_ok(&example(
        "eventbridge-organization-custom-field-changed.json",
    ));
    let update = of(
        "organization",
        ChangeEvent {
            external_id: Some("AU123".to_owned()),
            fields: fields(json!({
                "id": 12345,
                "external_id": "AU123",
                "name": "aws",
                "created_at": "2020-01-20T22:55:29.465719851Z",
                "updated_at": "2020-01-30T22:55:29.563482870Z",
                "shared_tickets": true,
                "shared_comments": true,
                "group_id": 98738
            })),
            partial: true,
            ..event(
                "zd:event:35D52F7D44640033CCCE4A5F1ADDB2AA:1",
                "12345",
                Op::Update,
                "2020-01-30T22:55:29Z",
            )
        },
    );
    let reread = of(
        "organization",
        ChangeEvent {
            external_id: Some("AU123".to_owned()),
            ..event(
                "zd:event:35D52F7D44640033CCCE4A5F1ADDB2AA:1:reread",
                "12345",
                Op::Gap,
                "2020-01-30T22:55:29Z",
            )
        },
    );
    assert_eq!(decoded, vec![update, reread]);
}

#[test]
fn users_and_organizations_map_to_the_configured_entities() {
    let mut settings: FormatSettings = settings();
    settings
        .objects
        .insert("user".to_owned(), "contact".to_owned());
    settings
        .objects
        .insert("organization".to_owned(), "company".to_owned());
    settings.actors.insert(
        "user:20978392".to_owned(),
        parse_actor("integration:helpdesk-sync").unwrap(),
    );
    let decode = |name: &str| {
        let bytes = serde_json::to_vec(&example(name)).unwrap();
        decode_message(&settings, None, Some(&bytes), 1 << 20).unwrap()
    };
    assert_eq!(
        decode("webhook-user-active-changed.json")[0].entity,
        "contact"
    );
    assert_eq!(decode("export-organizations.json")[0].entity, "company");
    let ticket = decode("eventbridge-ticket-agent-assignment-changed.json");
    assert_eq!(
        (ticket[0].entity.as_str(), ticket[0].actor.clone()),
        (
            "ticket",
            Some(parse_actor("integration:helpdesk-sync").unwrap())
        )
    );
}

#[test]
fn user_and_organization_exports_are_full_images_with_custom_fields_spread_out() {
    assert_eq!(
        images(&example("export-users.json")),
        vec![of(
            "user",
            ChangeEvent {
                external_id: Some("sai989sur98w9".to_owned()),
                fields: fields(json!({
                    "id": 35436,
                    "external_id": "sai989sur98w9",
                    "email": "johnny@example.com",
                    "name": "Johnny Agent",
                    "organization_id": 57542,
                    "role": "agent",
                    "created_at": "2009-07-20T22:55:29Z",
                    "updated_at": "2011-05-05T10:38:52Z",
                    "user_fields.user_date": "2012-07-23T00:00:00Z",
                    "user_fields.user_decimal": 5.1
                })),
                ..event(
                    "zd:user:35436:2011-05-05T10:38:52Z",
                    "35436",
                    Op::Update,
                    "2011-05-05T10:38:52Z",
                )
            },
        )]
    );
    assert_eq!(
        images(&example("export-organizations.json")),
        vec![of(
            "organization",
            ChangeEvent {
                external_id: Some("ABC198".to_owned()),
                fields: fields(json!({
                    "created_at": "2018-11-14T00:14:52Z",
                    "external_id": "ABC198",
                    "id": 4112492,
                    "name": "Groablet Enterprises",
                    "updated_at": "2018-11-14T00:54:22Z",
                    "organization_fields.region": "emea"
                })),
                ..event(
                    "zd:organization:4112492:2018-11-14T00:54:22Z",
                    "4112492",
                    Op::Update,
                    "2018-11-14T00:54:22Z",
                )
            },
        )]
    );
}

#[test]
fn metric_events_change_no_ticket_and_are_checked_for_their_shape() {
    // The ticket events export's documented example is a metric event; the metric events
    // export is a page of them. Both are read, and neither changes a ticket property.
    assert_eq!(
        decode_ok(&example("ticket-events-documented-example.json")),
        vec![]
    );
    assert_eq!(decode_ok(&example("ticket-metric-events.json")), vec![]);
    let mut no_time = example("ticket-metric-events.json");
    no_time["ticket_metric_events"][1]
        .as_object_mut()
        .unwrap()
        .remove("time");
    assert_eq!(
        decode_err(&no_time),
        "`.ticket_metric_events[1].time` is missing"
    );
}

#[test]
fn a_ticket_merged_without_its_target_is_read_again() {
    let mut message = example("eventbridge-ticket-agent-assignment-changed.json");
    message["detail"]["ticket_event"]["type"] = json!("Ticket Merged");
    let decoded = decode_ok(&message);
    assert_eq!(
        decoded
            .iter()
            .map(|event| (event.op, event.id.as_str()))
            .collect::<Vec<_>>(),
        vec![(Op::Gap, "35436")]
    );
}

#[test]
fn malformed_envelopes_name_the_part_at_fault() {
    let mut no_detail = example("eventbridge-user-active-status-changed.json");
    no_detail.as_object_mut().unwrap().remove("detail");
    assert_eq!(decode_err(&no_detail), "`.detail` is missing");

    let mut empty_detail = example("eventbridge-user-active-status-changed.json");
    empty_detail["detail"] = json!({"something": 1});
    assert!(decode_err(&empty_detail).starts_with(
        "in the EventBridge event's `.detail`: expected a Support event (`ticket_event`"
    ));

    let mut no_sequence = example("integration-services-ticket-created.json");
    no_sequence["input"]["ticket_event"]["meta"]
        .as_object_mut()
        .unwrap()
        .remove("sequence");
    assert_eq!(
        decode_err(&no_sequence),
        "in the Integration Services `.input`: `.ticket_event.meta.sequence` is missing, and no envelope `id` names the event"
    );

    let mut unknown_type = example("eventbridge-ticket-agent-assignment-changed.json");
    unknown_type["detail"]["ticket_event"]["type"] = json!("Teleported");
    assert!(decode_err(&unknown_type).contains(
        "`.ticket_event` of type \"Teleported\" (read as zen:event-type:ticket.teleported)"
    ));

    let mut nothing = example("integration-services-ticket-created.json");
    nothing["input"] = json!({});
    assert_eq!(
        decode_err(&nothing),
        "in the Integration Services `.input`: holds none of `ticket_event`, `user_event` and `organization_event`"
    );

    let mut two = example("eventbridge-ticket-agent-assignment-changed.json");
    two["detail"]["user_event"] = two["detail"]["ticket_event"].clone();
    assert!(decode_err(&two).contains("holds more than one of"));
}

#[test]
fn what_only_names_the_writer_or_an_sla_clock_does_not_cost_the_change() {
    // A Support event's ticket has no `subject`: a subject change it reports cannot be read
    // from it, so the ticket is read again rather than the event refused.
    let mut subject = example("integration-services-ticket-created.json");
    subject["input"]["ticket_event"]["type"] = json!("Subject Changed");
    let decoded = decode_ok(&subject);
    assert_eq!(
        decoded
            .iter()
            .map(|event| (event.op, event.id.as_str()))
            .collect::<Vec<_>>(),
        vec![(Op::Gap, "1001")]
    );

    // An empty `actor_id` names no writer; the change is still applied.
    let mut webhook = example("webhook-user-active-changed.json");
    webhook["detail"]["actor_id"] = json!("");
    let decoded = decode_ok(&webhook);
    assert_eq!(
        (decoded[0].op, decoded[0].actor.clone()),
        (Op::Update, None)
    );

    // A comment Support event changes no ticket property.
    let mut comment = example("integration-services-ticket-created.json");
    comment["input"]["ticket_event"]["type"] = json!("Comment Created");
    assert_eq!(decode_ok(&comment), vec![]);

    // An odd metric event among ticket events is passed over; the page's ticket event stays.
    let page = json!({"ticket_events": [
        {"id": 1, "ticket_id": 155, "metric": "reply_time", "type": "breach"},
        {"id": 2, "ticket_id": 155, "timestamp": 1772611200, "updater_id": 7, "via": "Web form",
         "event_type": "Audit",
         "child_events": [{"id": 3, "event_type": "Change", "status": "pending",
                           "previous_value": "open"}]}
    ]});
    let decoded = decode_ok(&page);
    assert_eq!(
        decoded
            .iter()
            .map(|event| (event.event_id.as_str(), event.fields.clone()))
            .collect::<Vec<_>>(),
        vec![("zd:ticket_event:2", fields(json!({"status": "pending"})))]
    );
}
