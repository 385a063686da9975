//! One owner at a time, through a real Kafka-protocol broker into the real `tandem` binary:
//! integrations writing into the fenced target are violations attributed to them, listed,
//! published and at the top of the writers report; sync, repair and allowed writers are not;
//! a write carrying an old epoch is fenced; every endpoint refuses a missing or wrong token.

use tandem_testkit as common;

use std::path::Path;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};
use tandem_api::ownership::{OwnershipView, ViolationList, WritersView};
use tandem_core::ownership::{Permit, ViolationKind};
use tandem_core::System;

use common::{free_port, wait_for, Broker, Daemon, Kafka, Topics};

const DEADLINE: Duration = Duration::from_secs(120);
const ADMIN: &str = "admin-token-0123456789abcdef";
const READ: &str = "read-token-0123456789abcdef";

/// Minutes after 2026-11-02T09:00:00Z, as RFC 3339.
fn at(minute: i64) -> String {
    tandem_core::Timestamp::from_unix_millis(1_793_610_000_000 + minute * 60_000).to_rfc3339()
}

fn contact(event_id: &str, id: &str, minute: i64, fields: Value, actor: Option<Value>) -> Value {
    let mut event = json!({"event_id": event_id, "entity": "contact", "id": id, "op": "update",
        "partial": true, "occurred_at": at(minute), "fields": fields});
    if let Some(actor) = actor {
        event["actor"] = actor;
    }
    event
}

fn write_config(
    directory: &Path,
    brokers: &str,
    topics: &Topics,
    violations: &str,
    port: u16,
) -> std::path::PathBuf {
    let path = directory.join("tandem.toml");
    let admin_file = directory.join("admin.token");
    std::fs::write(&admin_file, format!("{ADMIN}\n")).unwrap();
    std::fs::write(
        &path,
        format!(
            r#"[kafka]
brokers = "{brokers}"
dead_letter_topic = "{dlq}"
batch_max_wait = "20ms"

[store]
path = "{store}"

[api]
listen = "127.0.0.1:{port}"
admin_token_file = "{admin_file}"
read_token = "{READ}"

[systems.source]
topics = ["{source}"]

[systems.target]
topics = ["{target}"]

[reconcile]
grace = "5m"
idle_clock = false

[ownership]
owner = "source"
allowed = {{ target = ["integration:billing"] }}
violations_topic = "{violations}"
commands_topic = "{violations}.commands"

[[entities]]
name = "contact"
join = {{ source = "external_id", target = "field:legacy_id" }}
fields = [{{ source = "Email", target = "email" }}]
"#,
            dlq = topics.dead_letters,
            store = directory.join("store").display(),
            admin_file = admin_file.display(),
            source = topics.source,
            target = topics.target,
        ),
    )
    .unwrap();
    path
}

/// Reads every message of the violations topic.
fn published(brokers: &str, topic: &str, expected: usize) -> Vec<Value> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "violations-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("a consumer");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).unwrap();
    let mut seen = Vec::new();
    wait_for(
        &format!("{expected} violations on {topic}"),
        DEADLINE,
        || {
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
                seen.push(serde_json::from_slice(message.payload().unwrap()).unwrap());
            }
            (seen.len() >= expected).then_some(())
        },
    );
    seen
}

/// The HTTP status of a request with an optional bearer token.
fn status(method: &str, url: &str, token: Option<&str>) -> u16 {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build(),
    );
    let response = match method {
        "GET" => {
            let mut request = agent.get(url);
            if let Some(token) = token {
                request = request.header("Authorization", &format!("Bearer {token}"));
            }
            request.call()
        }
        _ => {
            let mut request = agent.post(url);
            if let Some(token) = token {
                request = request.header("Authorization", &format!("Bearer {token}"));
            }
            request.send_empty()
        }
    };
    response.expect("the daemon answers").status().as_u16()
}

/// Worked out by hand. The source owns contacts. In the target: the sync layer creates T1, T2
/// and T3 (allowed); the webform integration updates T1 three times (3 violations); the billing
/// integration, allowed into the target, updates T2; user bob updates T3 (1 violation); the
/// sync layer writes T2 with epoch 0, older than the current epoch 1 (1 fenced write); a write
/// with no actor is listed as an unknown writer. 5 violations in all.
#[test]
fn writers_into_the_fenced_target_are_violations_attributed_to_them() {
    let topics = Topics::unique("ownership");
    let violations_topic = "ownership.violations";
    let broker = Kafka::start(&[
        (&topics.source, 1),
        (&topics.target, 1),
        (&topics.dead_letters, 1),
        (violations_topic, 1),
        (&format!("{violations_topic}.commands"), 1),
    ]);
    let user = json!({"kind": "user", "id": "ann"});
    let sync = json!({"kind": "sync", "id": "bridge"});
    let source: Vec<Value> = (1..=3)
        .map(|n| {
            let mut event = contact(
                &format!("s{n}"),
                &format!("L{n}"),
                n,
                json!({"Email": format!("{n}@x.io")}),
                Some(user.clone()),
            );
            event["op"] = json!("create");
            event["partial"] = json!(false);
            event["external_id"] = json!(format!("L{n}"));
            event
        })
        .collect();
    let mut target: Vec<Value> = (1..=3)
        .map(|n| {
            let mut event = contact(
                &format!("t{n}"),
                &format!("T{n}"),
                10 + n,
                json!({"email": format!("{n}@x.io"), "legacy_id": format!("L{n}")}),
                Some(sync.clone()),
            );
            event["op"] = json!("create");
            event["partial"] = json!(false);
            event
        })
        .collect();
    let webform = json!({"kind": "integration", "id": "webform"});
    for n in 0..3 {
        target.push(contact(
            &format!("w{n}"),
            "T1",
            20 + n,
            json!({"email": format!("form{n}@x.io")}),
            Some(webform.clone()),
        ));
    }
    target.push(contact(
        "b1",
        "T2",
        30,
        json!({"email": "2@x.io"}),
        Some(json!({"kind": "integration", "id": "billing"})),
    ));
    target.push(contact(
        "u1",
        "T3",
        31,
        json!({"email": "bob@x.io"}),
        Some(json!({"kind": "user", "id": "bob"})),
    ));
    target.push(contact(
        "e1",
        "T2",
        32,
        json!({"email": "2@x.io"}),
        Some(json!({"kind": "sync", "id": "bridge", "epoch": 0})),
    ));
    target.push(contact("n1", "T3", 33, json!({"email": "3@x.io"}), None));
    // The records exist in both systems before anyone writes into the target: a compensation
    // command needs the owner's record to take the values from.
    let later_writes = target.split_off(3);
    common::produce_json(broker.bootstrap(), &topics.source, &source);
    common::produce_json(broker.bootstrap(), &topics.target, &target);

    let directory = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(
        directory.path(),
        broker.bootstrap(),
        &topics,
        violations_topic,
        port,
    );
    let mut daemon = Daemon::start(&config, port, &directory.path().join("tandem.log"));
    daemon.token = Some(READ.to_owned());
    daemon.wait_for_applied((source.len() + target.len()) as u64, DEADLINE);
    common::produce_json(broker.bootstrap(), &topics.target, &later_writes);
    daemon.wait_for_applied(
        (source.len() + target.len() + later_writes.len()) as u64,
        DEADLINE,
    );

    // The violations, as listed: kind, writer, record and fields.
    let list: ViolationList = daemon.get("/v1/violations");
    let summary: Vec<(ViolationKind, String, String, String, Vec<String>)> = list
        .items
        .iter()
        .map(|violation| {
            let actor = violation.actor.as_ref().unwrap();
            (
                violation.kind,
                format!("{:?}:{}", actor.kind, actor.id.clone().unwrap_or_default()),
                violation.join_key.clone(),
                violation.native_id.clone(),
                violation.fields.clone(),
            )
        })
        .collect();
    let email = vec!["email".to_owned()];
    assert_eq!(
        summary,
        vec![
            (
                ViolationKind::NonOwnerWrite,
                "Integration:webform".to_owned(),
                "L1".to_owned(),
                "T1".to_owned(),
                email.clone()
            ),
            (
                ViolationKind::NonOwnerWrite,
                "Integration:webform".to_owned(),
                "L1".to_owned(),
                "T1".to_owned(),
                email.clone()
            ),
            (
                ViolationKind::NonOwnerWrite,
                "Integration:webform".to_owned(),
                "L1".to_owned(),
                "T1".to_owned(),
                email.clone()
            ),
            (
                ViolationKind::NonOwnerWrite,
                "User:bob".to_owned(),
                "L3".to_owned(),
                "T3".to_owned(),
                email.clone()
            ),
            (
                ViolationKind::FencedWrite,
                "Sync:bridge".to_owned(),
                "L2".to_owned(),
                "T2".to_owned(),
                email
            ),
        ]
    );
    assert!(list
        .items
        .iter()
        .all(|violation| violation.system == System::Target
            && violation.owner == System::Source
            && violation.epoch == 1));
    let webform_only: ViolationList =
        daemon.get("/v1/violations?actor=integration:webform&entity=contact");
    assert_eq!(webform_only.items.len(), 3);
    let later: ViolationList = daemon.get(&format!("/v1/violations?since={}", at(31)));
    assert_eq!(later.items.len(), 2, "bob's and the fenced write");
    let paged: ViolationList = daemon.get("/v1/violations?limit=2");
    assert_eq!(paged.items.len(), 2);
    let rest: ViolationList = daemon.get(&format!(
        "/v1/violations?limit=10&cursor={}",
        paged.next_cursor.unwrap()
    ));
    assert_eq!(rest.items, list.items[2..]);

    // T1 differs from the source because of the webform's writes: that is its cause. T3 was
    // put back to the source's value by the last, unattributed write: in sync again.
    let divergences: tandem_api::report::DivergenceList = daemon.get("/v1/divergences");
    let causes: Vec<(String, String, Option<String>)> = divergences
        .items
        .iter()
        .map(|item| {
            (
                item.join_key.clone(),
                item.status.to_string(),
                item.cause.map(|cause| cause.as_str().to_owned()),
            )
        })
        .collect();
    assert_eq!(
        causes,
        vec![(
            "L1".to_owned(),
            "mismatch".to_owned(),
            Some("non_owner_write".to_owned())
        )]
    );

    // The same five on the violations topic.
    let messages = published(broker.bootstrap(), violations_topic, 5);
    let mut events: Vec<&str> = messages
        .iter()
        .map(|message| message["event_id"].as_str().unwrap())
        .collect();
    events.sort_unstable();
    assert_eq!(events, ["e1", "u1", "w0", "w1", "w2"]);

    // A command for the sync layer per non-owner update: set the field back to the owner's
    // value (the fenced write gets none: its writer is allowed, only its epoch is old).
    let commands = published(
        broker.bootstrap(),
        &format!("{violations_topic}.commands"),
        4,
    );
    let mut restores: Vec<(String, String, Value)> = commands
        .iter()
        .map(|command| {
            assert_eq!(command["type"], "restore_fields");
            assert_eq!(command["system"], "target");
            (
                command["violation_event_id"].as_str().unwrap().to_owned(),
                command["native_id"].as_str().unwrap().to_owned(),
                command["set"].clone(),
            )
        })
        .collect();
    restores.sort_by(|left, right| left.0.cmp(&right.0));
    assert_eq!(
        restores,
        vec![
            ("u1".to_owned(), "T3".to_owned(), json!({"email": "3@x.io"})),
            ("w0".to_owned(), "T1".to_owned(), json!({"email": "1@x.io"})),
            ("w1".to_owned(), "T1".to_owned(), json!({"email": "1@x.io"})),
            ("w2".to_owned(), "T1".to_owned(), json!({"email": "1@x.io"})),
        ]
    );

    // The writers report: the webform first; every target writer listed with its writes.
    let writers: WritersView = daemon.get("/v1/writers");
    let target_writers: Vec<(String, u64, u64, bool)> = writers.systems[&System::Target]
        .iter()
        .map(|writer| {
            (
                format!("{}:{}", writer.kind, writer.id.clone().unwrap_or_default()),
                writer.writes,
                writer.violations,
                writer.into_fenced,
            )
        })
        .collect();
    assert_eq!(
        target_writers,
        vec![
            ("integration:webform".to_owned(), 3, 3, true),
            ("sync:bridge".to_owned(), 4, 1, true),
            ("user:bob".to_owned(), 1, 1, true),
            ("integration:billing".to_owned(), 1, 0, true),
            ("unknown:".to_owned(), 1, 0, true),
        ]
    );
    // Without `since`, every write since the store began, and the answer says so (no date).
    assert_eq!(writers.since, None);
    let today: WritersView = daemon.get("/v1/writers?since=2026-11-20T13:45:00Z");
    assert_eq!(
        today.since.map(|since| since.to_rfc3339()),
        Some("2026-11-20T00:00:00Z".to_owned())
    );
    let mut command = std::process::Command::new(common::tandem_binary());
    command.args(["writers", "--url", &daemon.url]);
    if let Some(token) = &daemon.token {
        command.env("TANDEM_TOKEN", token);
    }
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.starts_with("every write since the store began"),
        "{stdout}"
    );
    let source_writers = &writers.systems[&System::Source];
    assert_eq!(source_writers.len(), 1);
    assert_eq!(
        (source_writers[0].writes, source_writers[0].into_fenced),
        (3, false)
    );

    // Ownership and permits.
    let ownership: OwnershipView = daemon.get("/v1/ownership");
    assert_eq!(ownership.entities.len(), 1);
    assert_eq!(
        (ownership.entities[0].owner, ownership.entities[0].epoch),
        (System::Source, 1)
    );
    for (system, actor, allowed) in [
        ("target", "integration:webform", false),
        ("target", "integration:billing", true),
        ("target", "sync", true),
        ("source", "user:ann", true),
    ] {
        let permit: Permit = daemon.get(&format!(
            "/v1/ownership/permit?system={system}&entity=contact&actor={actor}"
        ));
        assert_eq!(
            (permit.allowed, permit.epoch),
            (allowed, 1),
            "{actor} into {system}: {}",
            permit.reason
        );
    }

    // Every endpoint refuses a missing or wrong token; probes stay open.
    let url = &daemon.url;
    for path in [
        "/v1/report",
        "/v1/divergences",
        "/v1/records/contact/L1",
        "/v1/ownership",
        "/v1/ownership/permit?system=target&entity=contact&actor=sync",
        "/v1/violations",
        "/v1/writers",
        "/v1/cutover",
        "/v1/cutover/readiness",
        "/v1/delta?since=24h",
        "/metrics",
    ] {
        let endpoint = format!("{url}{path}");
        assert_eq!(
            status("GET", &endpoint, None),
            401,
            "{path} without a token"
        );
        assert_eq!(
            status("GET", &endpoint, Some("not-the-token-000000")),
            401,
            "{path} with a wrong token"
        );
        assert_eq!(
            status("GET", &endpoint, Some(READ)),
            200,
            "{path} with the read token"
        );
        assert_eq!(
            status("GET", &endpoint, Some(ADMIN)),
            200,
            "{path} with the admin token"
        );
    }
    for path in ["/healthz", "/readyz"] {
        assert_eq!(
            status("GET", &format!("{url}{path}"), None),
            200,
            "{path} is open"
        );
    }
    // A change needs the admin token; a method a path does not have is told as such, whoever asks.
    assert_eq!(
        status("POST", &format!("{url}/v1/reevaluate"), Some(READ)),
        401
    );
    for token in [None, Some(READ), Some(ADMIN)] {
        assert_eq!(status("POST", &format!("{url}/v1/report"), token), 405);
    }
    let metrics = ureq::get(&format!("{url}/metrics"))
        .header("Authorization", &format!("Bearer {READ}"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    common::assert_promtool_accepts_metrics(&metrics);
    assert!(
        metrics.contains("tandem_auth_failures_total{reason=\"missing\"} 11"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tandem_auth_failures_total{reason=\"wrong\"} 12"),
        "{metrics}"
    );
    assert!(
        !daemon.log_tail().contains(READ) && !daemon.log_tail().contains(ADMIN),
        "tokens are never logged"
    );
}
