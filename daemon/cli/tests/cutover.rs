//! The second cutover rehearsed end to end through a real Kafka-protocol broker and the real
//! `tandem` binary: freeze, a verify refused by a named gate, a repair, verify, flip, a write
//! with the old epoch fenced, rollback, the second attempt to complete, and a rollback refused.

use tandem_testkit as common;

use std::path::Path;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};
use tandem_api::cutover::CutoverView;
use tandem_api::ownership::{OwnershipView, ViolationList};
use tandem_core::cutover::Phase;
use tandem_core::gates::Readiness;
use tandem_core::ownership::ViolationKind;
use tandem_core::System;

use common::{free_port, wait_for, Broker, Daemon, Kafka, Topics};

const DEADLINE: Duration = Duration::from_secs(120);
const ADMIN: &str = "admin-token-0123456789abcdef";

fn at(minute: i64) -> String {
    tandem_core::Timestamp::from_unix_millis(1_793_610_000_000 + minute * 60_000).to_rfc3339()
}

/// Minutes from now, as an event time: the events of this test that come after a cutover
/// step are made after it (the rule in force when a write is made is the one it is judged by).
fn from_now(minutes: i64) -> String {
    let now = tandem_core::Timestamp::from_system_time(std::time::SystemTime::now());
    tandem_core::Timestamp::from_unix_millis(now.unix_millis() + minutes * 60_000).to_rfc3339()
}

/// The next millisecond: a write made just after a step, never within the step's millisecond
/// (these event times are kept to the millisecond, step times to the nanosecond).
fn just_after_now() -> String {
    let now = tandem_core::Timestamp::from_system_time(std::time::SystemTime::now());
    tandem_core::Timestamp::from_unix_millis(now.unix_millis() + 1).to_rfc3339()
}

fn event(event_id: &str, id: &str, op: &str, minute: i64, fields: Value, actor: Value) -> Value {
    json!({"event_id": event_id, "entity": "contact", "id": id, "op": op,
        "occurred_at": at(minute), "external_id": if id.starts_with('L') { json!(id) } else { Value::Null },
        "fields": fields, "actor": actor})
}

fn write_config(
    directory: &Path,
    brokers: &str,
    topics: &Topics,
    control: &str,
    port: u16,
) -> std::path::PathBuf {
    let path = directory.join("tandem.toml");
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
admin_token = "{ADMIN}"

[systems.source]
topics = ["{source}"]

[systems.target]
topics = ["{target}"]

[reconcile]
grace = "1s"
idle_clock = true
control_topic = "{control}"

[cutover.gates]
min_parity = 1.0
max_lag = 0

[[cutover.triggers]]
name = "write-into-the-fenced-source"
any_violation = true

[[entities]]
name = "contact"
join = {{ source = "external_id", target = "field:legacy_id" }}
fields = [{{ source = "Email", target = "email" }}]
"#,
            dlq = topics.dead_letters,
            store = directory.join("store").display(),
            source = topics.source,
            target = topics.target,
        ),
    )
    .unwrap();
    path
}

/// POSTs a cutover step with the admin token: (status, answer).
fn step(daemon: &Daemon, name: &str, dry_run: bool) -> (u16, Value) {
    let body = json!({"reason": format!("rehearsal: {name}"), "by": "release-manager", "dry_run": dry_run});
    let (status, answer) = daemon.post(&format!("/v1/cutover/{name}"), ADMIN, &body.to_string());
    (status, serde_json::from_str(&answer).unwrap())
}

fn phase(daemon: &Daemon) -> Phase {
    daemon.get::<CutoverView>("/v1/cutover").phase
}

#[test]
fn a_full_cutover_rehearsal() {
    let topics = Topics::unique("cutover");
    let control = "cutover.control";
    let broker = Kafka::start(&[
        (&topics.source, 1),
        (&topics.target, 1),
        (&topics.dead_letters, 1),
        (control, 1),
    ]);
    let user = json!({"kind": "user", "id": "ann"});
    let sync = json!({"kind": "sync", "id": "bridge"});
    // L1 is synced right; L2 arrived in the target with the wrong e-mail.
    common::produce_json(
        broker.bootstrap(),
        &topics.source,
        &[
            event(
                "s1",
                "L1",
                "create",
                1,
                json!({"Email": "a@x.io"}),
                user.clone(),
            ),
            event(
                "s2",
                "L2",
                "create",
                2,
                json!({"Email": "b@x.io"}),
                user.clone(),
            ),
        ],
    );
    common::produce_json(
        broker.bootstrap(),
        &topics.target,
        &[
            event(
                "t1",
                "T1",
                "create",
                3,
                json!({"email": "a@x.io", "legacy_id": "L1"}),
                sync.clone(),
            ),
            event(
                "t2",
                "T2",
                "create",
                4,
                json!({"email": "wrong@x.io", "legacy_id": "L2"}),
                sync.clone(),
            ),
        ],
    );
    let directory = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(directory.path(), broker.bootstrap(), &topics, control, port);
    let mut daemon = Daemon::start(&config, port, &directory.path().join("tandem.log"));
    daemon.token = Some(ADMIN.to_owned());
    daemon.wait_for_applied(4, DEADLINE);
    assert_eq!(phase(&daemon), Phase::ParallelRun);

    // A step that is not allowed yet is refused with the reason.
    let (status, answer) = step(&daemon, "flip", false);
    assert_eq!(status, 409);
    assert!(
        answer["refusal"]
            .as_str()
            .unwrap()
            .contains("allowed now: freeze"),
        "{answer}"
    );

    // A `dry_run` that is not `true` or `false` is refused, naming it; nothing is taken.
    let before = phase(&daemon);
    for value in ["abc", "1", "yes", ""] {
        let body = json!({"reason": "rehearsal: a typo", "by": "release-manager"});
        let (status, answer) = daemon.post(
            &format!("/v1/cutover/freeze?dry_run={value}"),
            ADMIN,
            &body.to_string(),
        );
        let answer: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(status, 400, "dry_run={value}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains("dry_run"),
            "{answer}"
        );
        assert_eq!(phase(&daemon), before, "dry_run={value} took the step");
    }

    let (status, answer) = step(&daemon, "freeze", false);
    assert_eq!(
        (status, answer["to"].as_str()),
        (200, Some("frozen")),
        "{answer}"
    );

    // While frozen, a live write in the owner is a violation too (the value is unchanged).
    let mut frozen_write = event(
        "s3",
        "L1",
        "update",
        5,
        json!({"Email": "a@x.io"}),
        user.clone(),
    );
    frozen_write["occurred_at"] = json!(just_after_now());
    common::produce_json(broker.bootstrap(), &topics.source, &[frozen_write]);
    daemon.wait_for_applied(5, DEADLINE);
    let violations: ViolationList = daemon.get("/v1/violations");
    assert_eq!(violations.items.len(), 1);
    assert_eq!(
        (violations.items[0].system, violations.items[0].kind),
        (System::Source, ViolationKind::NonOwnerWrite)
    );

    // Verify is refused, naming the parity gate of contacts; a dry run says the same.
    let (status, answer) = step(&daemon, "verify", true);
    assert_eq!(
        (status, answer["allowed"].as_bool()),
        (200, Some(false)),
        "{answer}"
    );
    let (status, answer) = step(&daemon, "verify", false);
    assert_eq!(status, 409, "{answer}");
    let refusal = answer["refusal"].as_str().unwrap();
    assert!(
        refusal.contains("min_parity (contact): 0.5000 against >= 1"),
        "{refusal}"
    );
    assert_eq!(phase(&daemon), Phase::Frozen);

    // The repair team fixes T2 (repair writes drain while frozen), then every gate goes green.
    let mut repair = event(
        "r1",
        "T2",
        "update",
        6,
        json!({"email": "b@x.io", "legacy_id": "L2"}),
        json!({"kind": "repair", "id": "fix-emails"}),
    );
    repair["occurred_at"] = json!(just_after_now());
    common::produce_json(broker.bootstrap(), &topics.target, &[repair]);
    daemon.wait_for_applied(6, DEADLINE);
    wait_for("every gate green", DEADLINE, || {
        let readiness: Readiness = daemon.get("/v1/cutover/readiness");
        (readiness.verdict == "safe").then_some(())
    });
    let (status, answer) = step(&daemon, "verify", false);
    assert_eq!(
        (status, answer["to"].as_str()),
        (200, Some("verified")),
        "{answer}"
    );
    assert!(
        answer["evidence"]["gates"]
            .as_array()
            .is_some_and(|gates| !gates.is_empty()),
        "the gate evidence is kept"
    );
    let (status, answer) = step(&daemon, "flip", false);
    assert_eq!(
        (status, answer["owner"].as_str(), answer["epoch"].as_u64()),
        (200, Some("target"), Some(2)),
        "{answer}"
    );
    let ownership: OwnershipView = daemon.get("/v1/ownership");
    assert_eq!(
        (ownership.entities[0].owner, ownership.entities[0].epoch),
        (System::Target, 2)
    );

    let view: CutoverView = daemon.get("/v1/cutover");
    assert!(view.triggers_fired.is_empty(), "{:?}", view.triggers_fired);

    // The sync layer still writes with the epoch it got before the flip: fenced.
    let flipped_at = just_after_now();
    let mut stale_epoch = event(
        "t3",
        "T1",
        "update",
        7,
        json!({"email": "a@x.io"}),
        json!({"kind": "sync", "id": "bridge", "epoch": 1}),
    );
    stale_epoch["occurred_at"] = json!(flipped_at);
    common::produce_json(broker.bootstrap(), &topics.target, &[stale_epoch]);
    daemon.wait_for_applied(7, DEADLINE);
    let fenced: ViolationList = daemon.get(&format!("/v1/violations?since={flipped_at}"));
    assert_eq!(fenced.items.len(), 1);
    assert_eq!(
        (fenced.items[0].kind, fenced.items[0].epoch),
        (ViolationKind::FencedWrite, 2)
    );

    // After the flip the target owns live work. Users change T1 and T2 and create T9 there;
    // someone still writes L2 in the source. Both writes into the fenced systems fire the
    // rollback trigger.
    let bob = json!({"kind": "user", "id": "bob"});
    let mut after_flip = vec![
        event(
            "t4",
            "T1",
            "update",
            0,
            json!({"email": "a2@x.io"}),
            bob.clone(),
        ),
        event(
            "t5",
            "T2",
            "update",
            0,
            json!({"email": "b3@x.io"}),
            bob.clone(),
        ),
        event(
            "t6",
            "T9",
            "create",
            0,
            json!({"email": "n@x.io", "legacy_id": "L9"}),
            bob.clone(),
        ),
    ];
    for event in &mut after_flip {
        event["occurred_at"] = json!(from_now(1));
    }
    common::produce_json(broker.bootstrap(), &topics.target, &after_flip);
    let mut late_source = event(
        "s4",
        "L2",
        "update",
        0,
        json!({"Email": "b2@x.io"}),
        user.clone(),
    );
    late_source["occurred_at"] = json!(from_now(1));
    common::produce_json(broker.bootstrap(), &topics.source, &[late_source]);
    daemon.wait_for_applied(11, DEADLINE);
    let view: CutoverView = daemon.get("/v1/cutover");
    let fired: Vec<(&str, Option<&str>)> = view
        .triggers_fired
        .iter()
        .map(|trigger| (trigger.name.as_str(), trigger.entity.as_deref()))
        .collect();
    assert_eq!(fired, [("write-into-the-fenced-source", Some("contact"))]);

    // The reverse delta since the flip, in the source's field names, keyed for an upsert:
    // worked out by hand from the three target changes above.
    let agent = ureq::Agent::new_with_defaults();
    let body = agent
        .get(&format!("{}/v1/delta?system=target&since=flip", daemon.url))
        .header("Authorization", &format!("Bearer {ADMIN}"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let rows: Vec<(String, String, Vec<String>, Value, bool, String)> = body
        .lines()
        .map(|line| {
            let row: Value = serde_json::from_str(line).unwrap();
            (
                row["join_key"].as_str().unwrap().to_owned(),
                row["native_id"].as_str().unwrap().to_owned(),
                serde_json::from_value(row["other_native_ids"].clone()).unwrap(),
                row["fields"].clone(),
                row["also_changed_in_other"].as_bool().unwrap(),
                row["action"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            (
                "L1".to_owned(),
                "T1".to_owned(),
                vec!["L1".to_owned()],
                json!({"Email": "a2@x.io"}),
                false,
                "upsert".to_owned()
            ),
            (
                "L2".to_owned(),
                "T2".to_owned(),
                vec!["L2".to_owned()],
                json!({"Email": "b3@x.io"}),
                true,
                "upsert".to_owned()
            ),
            (
                "L9".to_owned(),
                "T9".to_owned(),
                vec![],
                json!({"Email": "n@x.io"}),
                false,
                "upsert".to_owned()
            ),
        ]
    );
    let csv = agent
        .get(&format!(
            "{}/v1/delta?system=target&since=flip&format=csv",
            daemon.url
        ))
        .header("Authorization", &format!("Bearer {ADMIN}"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert_eq!(csv.lines().count(), 4, "a header and three rows:\n{csv}");

    // Roll back, then go through again and complete; a rollback after that is refused.
    let (status, answer) = step(&daemon, "rollback", false);
    assert_eq!(
        (status, answer["owner"].as_str(), answer["epoch"].as_u64()),
        (200, Some("source"), Some(3)),
        "{answer}"
    );
    // The repair team carries the target's changes back (L1, L9 into the source) and settles L2.
    let repair = json!({"kind": "repair", "id": "delta"});
    let mut carried = vec![
        event(
            "s5",
            "L1",
            "update",
            0,
            json!({"Email": "a2@x.io"}),
            repair.clone(),
        ),
        event(
            "s6",
            "L9",
            "create",
            0,
            json!({"Email": "n@x.io"}),
            repair.clone(),
        ),
        event(
            "s7",
            "L2",
            "update",
            0,
            json!({"Email": "b3@x.io"}),
            repair.clone(),
        ),
    ];
    for event in &mut carried {
        event["occurred_at"] = json!(from_now(2));
    }
    common::produce_json(broker.bootstrap(), &topics.source, &carried);
    daemon.wait_for_applied(14, DEADLINE);
    for name in ["freeze", "verify", "flip", "complete"] {
        if name == "verify" {
            wait_for("every gate green again", DEADLINE, || {
                let readiness: Readiness = daemon.get("/v1/cutover/readiness");
                (readiness.verdict == "safe").then_some(())
            });
        }
        let (status, answer) = step(&daemon, name, false);
        assert_eq!(status, 200, "{name}: {answer}");
    }
    assert_eq!(phase(&daemon), Phase::Complete);
    let (status, answer) = step(&daemon, "rollback", false);
    assert_eq!(status, 409);
    assert!(
        answer["refusal"].as_str().unwrap().contains("irreversible"),
        "{answer}"
    );

    // The history has every step, who took it and why; the control topic got each of them.
    let view: CutoverView = daemon.get("/v1/cutover");
    let steps: Vec<&str> = view
        .history
        .iter()
        .map(|record| record.transition.as_str())
        .collect();
    assert_eq!(
        steps,
        ["freeze", "verify", "flip", "rollback", "freeze", "verify", "flip", "complete"]
    );
    assert!(view
        .history
        .iter()
        .all(|record| record.by == "release-manager" && record.reason.starts_with("rehearsal: ")));
    assert_eq!(view.history.last().map(|record| record.epoch), Some(4));
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", "control-reader")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(control, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).unwrap();
    let mut published: Vec<String> = Vec::new();
    wait_for("8 cutover steps on the control topic", DEADLINE, || {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            let value: Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
            if value["type"] == "cutover" {
                published.push(value["transition"].as_str().unwrap().to_owned());
            }
        }
        (published.len() >= 8).then_some(())
    });
    assert_eq!(published, steps);
}
