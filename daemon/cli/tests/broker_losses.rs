//! What the broker itself loses, on Apache Kafka: offsets deleted (retention,
//! `DeleteRecords`) before tandem read them, and a topic deleted and created again. None of
//! it may leave a record reported `in_sync` that tandem cannot vouch for; all of it shows in
//! the report, the metrics, `/readyz` and the log, and asks the connector for a snapshot.
//! Expected values are worked out by hand from the events each test produces.

use tandem_testkit as common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use tandem_api::report::{LostOffsets, Report};
use tandem_core::Status;

use common::{
    contact_status, free_port, minute, produce_json, read_json_messages, source_contact,
    target_contact, wait_for, Broker, ContactConfig, Daemon, Kafka, Topics,
};

const DEADLINE: Duration = Duration::from_secs(120);
const ADMIN: &str = "admin-token-for-partition-resets";

/// Now, as RFC 3339: a connector reads its snapshot images at the time it answers.
fn now() -> String {
    tandem_core::Timestamp::from_system_time(std::time::SystemTime::now()).to_rfc3339()
}

fn email(number: u32) -> String {
    format!("c{number}@x.io")
}

fn write_config(
    directory: &Path,
    kafka: &Kafka,
    topics: &Topics,
    control: &str,
    port: u16,
) -> PathBuf {
    let mut config = ContactConfig::new(kafka.bootstrap(), topics, port);
    config.admin_token = Some(ADMIN.to_owned());
    config.control_topic = Some(control.to_owned());
    config.write(directory)
}

fn start(topic_prefix: &str) -> (Kafka, Topics, String) {
    let topics = Topics::unique(topic_prefix);
    let control = format!("{topic_prefix}.control");
    let kafka = Kafka::start(&[
        (&topics.source, 1),
        (&topics.target, 1),
        (&topics.dead_letters, 1),
        (&control, 1),
    ]);
    (kafka, topics, control)
}

fn applied(report: &Report) -> u64 {
    report.ingest.source.events_applied + report.ingest.target.events_applied
}

fn readiness(daemon: &Daemon) -> (u16, Value) {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build(),
    );
    let mut response = agent
        .get(&format!("{}/readyz", daemon.url))
        .call()
        .expect("the daemon answers /readyz");
    let status = response.status().as_u16();
    (status, response.body_mut().read_json().expect("JSON"))
}

fn scrape_metrics(daemon: &Daemon) -> String {
    ureq::get(&format!("{}/metrics", daemon.url))
        .call()
        .expect("the daemon answers /metrics")
        .body_mut()
        .read_to_string()
        .expect("text")
}

/// The answer of the source's connector to a snapshot request: every live record as it is
/// now, then the end with their count.
fn source_snapshot(run: &str, records: &[(u32, String)]) -> Vec<Value> {
    let time = now();
    let mut events: Vec<Value> = records
        .iter()
        .map(|(number, email)| {
            let mut image = source_contact(
                &format!("{run}-{number}"),
                *number,
                "snapshot",
                &time,
                email,
            );
            image["snapshot_id"] = json!(run);
            image
        })
        .collect();
    events.push(
        json!({"event_id": format!("{run}-end"), "entity": "contact", "op": "snapshot_end",
        "snapshot_id": run, "records": records.len(), "occurred_at": time}),
    );
    events
}

#[test]
fn events_the_broker_deleted_while_tandem_was_stopped_are_a_hole_never_in_sync() {
    let (kafka, topics, control) = start("retention");
    let directory = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(directory.path(), &kafka, &topics, &control, port);
    let log = directory.path().join("tandem.log");

    // Six contacts, copied right: offsets 0-5 of each topic.
    let creates: Vec<Value> = (1..=6)
        .map(|n| source_contact(&format!("s{n}"), n, "create", &minute(0), &email(n)))
        .collect();
    let copies: Vec<Value> = (1..=6)
        .map(|n| target_contact(&format!("t{n}"), n, "create", &minute(1), &email(n)))
        .collect();
    produce_json(kafka.bootstrap(), &topics.source, &creates);
    produce_json(kafka.bootstrap(), &topics.target, &copies);
    let daemon = Daemon::start(&config, port, &log);
    daemon.wait_for_applied(12, DEADLINE);
    assert_eq!(contact_status(&daemon, 1), Some(Status::InSync));
    assert!(daemon.terminate().success());

    // While tandem is stopped, the source changes L1-L3 (offsets 6-8) and the sync layer
    // never copies the changes; retention deletes them before tandem is back. Then L7 is
    // created and copied (source offset 9, target offset 6): it comes after the loss.
    let changes: Vec<Value> = (1..=3)
        .map(|n| {
            source_contact(
                &format!("s-change-{n}"),
                n,
                "update",
                &minute(10),
                &format!("new{n}@x.io"),
            )
        })
        .collect();
    produce_json(kafka.bootstrap(), &topics.source, &changes);
    assert_eq!(kafka.delete_records(&topics.source, 0, 9), 9);
    produce_json(
        kafka.bootstrap(),
        &topics.source,
        &[source_contact("s7", 7, "create", &minute(11), &email(7))],
    );
    produce_json(
        kafka.bootstrap(),
        &topics.target,
        &[target_contact("t7", 7, "create", &minute(12), &email(7))],
    );

    let daemon = Daemon::start(&config, port, &log);
    let report = daemon.wait_for_applied(14, DEADLINE);
    assert_eq!(
        report.feed.source.lost_offsets.len(),
        1,
        "the deleted offsets are a loss: {:?}",
        report.feed.source.lost_offsets
    );
    assert_eq!(
        report.feed.source.lost_offsets,
        [LostOffsets {
            topic: topics.source.clone(),
            partition: 0,
            first_offset: 6,
            last_offset: 8,
            count: Some(3),
            kind: "deleted_before_read".to_owned(),
            since: report.feed.source.lost_offsets[0].since,
            healed_at: None,
        }]
    );
    assert!(
        report.feed.target.lost_offsets.is_empty(),
        "the target lost nothing"
    );
    // The changed records truly differ now: none of them may be in sync, nor may any record
    // tandem knew on that partition (any of them could have been in the deleted range).
    for number in 1..=6 {
        assert_eq!(
            contact_status(&daemon, number),
            Some(Status::Unverified),
            "L{number}"
        );
    }
    assert_eq!(
        contact_status(&daemon, 7),
        Some(Status::InSync),
        "L7 arrived whole after the loss, on both sides"
    );
    let contact = &report.entities["contact"];
    assert_eq!(
        (
            contact.by_status[&Status::Unverified],
            contact.by_status[&Status::InSync]
        ),
        (6, 1)
    );
    assert_eq!(
        report.feed.source.needs_snapshot.keys().collect::<Vec<_>>(),
        ["contact"]
    );

    // Everywhere an operator looks.
    let (code, ready) = readiness(&daemon);
    assert_eq!(code, 200, "a loss does not stop serving: {ready}");
    let warnings = ready["warnings"].as_array().expect("warnings");
    assert!(
        warnings
            .iter()
            .any(
                |warning| warning.as_str().is_some_and(|text| text.contains(&format!(
                    "events lost on {}/0: offsets 6..=8",
                    topics.source
                )))
            ),
        "{ready}"
    );
    let metrics = scrape_metrics(&daemon);
    assert!(
        metrics.contains("tandem_offset_losses_open{system=\"source\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tandem_lost_offsets{system=\"source\"} 3"),
        "{metrics}"
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    let line = logged
        .lines()
        .find(|line| line.contains("events lost"))
        .unwrap_or_else(|| panic!("no log line for the loss:\n{logged}"));
    assert!(
        !line.contains('\u{1b}'),
        "no colour codes in a log file: {line}"
    );
    for coordinate in [
        format!("topic=\"{}\"", topics.source),
        "partition=0".to_owned(),
        "first_offset=6".to_owned(),
        "last_offset=8".to_owned(),
    ] {
        assert!(
            line.contains(&coordinate),
            "{coordinate} missing in: {line}"
        );
    }
    let requests = read_json_messages(kafka.bootstrap(), &control, 1, DEADLINE);
    assert_eq!(
        (
            &requests[0]["type"],
            &requests[0]["system"],
            &requests[0]["entity"]
        ),
        (&json!("snapshot"), &json!("source"), &json!("contact"))
    );

    // The connector answers with the source as it is: L1-L3 changed, which the target never
    // got. The loss is healed, and the report says what is true.
    let mut records: Vec<(u32, String)> = (1..=3).map(|n| (n, format!("new{n}@x.io"))).collect();
    records.extend((4..=7).map(|n| (n, email(n))));
    produce_json(
        kafka.bootstrap(),
        &topics.source,
        &source_snapshot("snap-1", &records),
    );
    let report = wait_for("the snapshot to heal the loss", DEADLINE, || {
        let report = daemon.report();
        report.feed.source.lost_offsets[0]
            .healed_at
            .is_some()
            .then_some(report)
    });
    assert!(report.feed.source.needs_snapshot.is_empty());
    for number in 1..=3 {
        assert_eq!(
            contact_status(&daemon, number),
            Some(Status::Mismatch),
            "L{number}"
        );
    }
    for number in 4..=7 {
        assert_eq!(
            contact_status(&daemon, number),
            Some(Status::InSync),
            "L{number}"
        );
    }
    assert!(scrape_metrics(&daemon).contains("tandem_offset_losses_open{system=\"source\"} 0"));
}

#[test]
fn offsets_deleted_before_tandem_first_read_a_partition_are_a_loss_too() {
    let (kafka, topics, control) = start("first-read");
    // The source topic kept only its last two events by the time tandem was deployed.
    let creates: Vec<Value> = (1..=5)
        .map(|n| source_contact(&format!("s{n}"), n, "create", &minute(0), &email(n)))
        .collect();
    produce_json(kafka.bootstrap(), &topics.source, &creates);
    assert_eq!(kafka.delete_records(&topics.source, 0, 3), 3);
    let directory = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(directory.path(), &kafka, &topics, &control, port);
    let daemon = Daemon::start(&config, port, &directory.path().join("tandem.log"));
    let report = daemon.wait_for_applied(2, DEADLINE);
    let losses = &report.feed.source.lost_offsets;
    assert_eq!(losses.len(), 1, "{losses:?}");
    assert_eq!(
        (
            losses[0].first_offset,
            losses[0].last_offset,
            losses[0].count,
            losses[0].kind.as_str()
        ),
        (0, 2, Some(3), "deleted_before_first_read")
    );
    assert_eq!(
        report.feed.source.needs_snapshot.keys().collect::<Vec<_>>(),
        ["contact"]
    );
    let requests = read_json_messages(kafka.bootstrap(), &control, 1, DEADLINE);
    assert_eq!(requests[0]["system"], json!("source"));
}

#[test]
fn a_re_created_topic_stops_its_partition_until_an_operator_resets_it() {
    let (kafka, topics, control) = start("recreated");
    let directory = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(directory.path(), &kafka, &topics, &control, port);
    let log = directory.path().join("tandem.log");
    let creates: Vec<Value> = (1..=5)
        .map(|n| source_contact(&format!("s{n}"), n, "create", &minute(0), &email(n)))
        .collect();
    let copies: Vec<Value> = (1..=5)
        .map(|n| target_contact(&format!("t{n}"), n, "create", &minute(1), &email(n)))
        .collect();
    produce_json(kafka.bootstrap(), &topics.source, &creates);
    produce_json(kafka.bootstrap(), &topics.target, &copies);
    let daemon = Daemon::start(&config, port, &log);
    daemon.wait_for_applied(10, DEADLINE);
    assert!(daemon.terminate().success());

    // Someone deletes the source topic and creates it again; it holds two events now.
    kafka.delete_topic(&topics.source);
    wait_for("the topic to be gone", DEADLINE, || {
        (!kafka.topic_exists(&topics.source)).then_some(())
    });
    kafka.create_topics(&[(&topics.source, 1)]);
    let recreated = [
        source_contact("s-new-6", 6, "create", &minute(20), &email(6)),
        source_contact("s-new-7", 7, "create", &minute(20), &email(7)),
    ];
    produce_json(kafka.bootstrap(), &topics.source, &recreated);

    let mut daemon = Daemon::start(&config, port, &log);
    daemon.token = Some(ADMIN.to_owned());
    let report = wait_for("the partition to be stopped", DEADLINE, || {
        let report = daemon.report();
        (!report.ingest.stopped_partitions.is_empty()).then_some(report)
    });
    let stopped = &report.ingest.stopped_partitions[0];
    assert_eq!(
        (
            stopped.topic.as_str(),
            stopped.partition,
            stopped.stored_next_offset,
            stopped.high_watermark
        ),
        (topics.source.as_str(), 0, 5, 2)
    );
    assert!(
        stopped.reason.contains("tandem partitions reset"),
        "{}",
        stopped.reason
    );
    assert!(!report.ingest.caught_up);
    let (code, ready) = readiness(&daemon);
    assert_eq!(code, 503, "{ready}");
    assert!(
        ready["reasons"]
            .to_string()
            .contains("tandem partitions reset"),
        "{ready}"
    );
    assert_eq!(applied(&report), 10, "nothing of the new topic was applied");
    assert_eq!(
        contact_status(&daemon, 1),
        Some(Status::InSync),
        "the old state stands until reset"
    );

    // A reset of a partition that is not stopped is refused.
    let refused = Command::new(common::tandem_binary())
        .args([
            "partitions",
            "reset",
            "--topic",
            &topics.target,
            "--partition",
            "0",
        ])
        .args(["--reason", "not needed", "--url", &daemon.url])
        .env("TANDEM_TOKEN", ADMIN)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is not stopped"));

    let reset = Command::new(common::tandem_binary())
        .args([
            "partitions",
            "reset",
            "--topic",
            &topics.source,
            "--partition",
            "0",
        ])
        .args([
            "--reason",
            "the topic was re-created by the platform team",
            "--url",
            &daemon.url,
        ])
        .env("TANDEM_TOKEN", ADMIN)
        .output()
        .unwrap();
    assert!(
        reset.status.success(),
        "{}{}",
        String::from_utf8_lossy(&reset.stdout),
        String::from_utf8_lossy(&reset.stderr)
    );
    let report = daemon.wait_for_applied(12, DEADLINE);
    assert!(report.ingest.stopped_partitions.is_empty());
    let losses = &report.feed.source.lost_offsets;
    assert_eq!(losses.len(), 1, "{losses:?}");
    assert_eq!(
        (
            losses[0].first_offset,
            losses[0].count,
            losses[0].kind.as_str()
        ),
        (5, None, "topic_recreated")
    );
    // L1-L5 are not in the new topic: whatever happened to them between the old log's end
    // and the new one is unknown, so all five are unverified until a snapshot says otherwise.
    for number in 1..=5 {
        assert_eq!(
            contact_status(&daemon, number),
            Some(Status::Unverified),
            "L{number}"
        );
    }
    assert_eq!(readiness(&daemon).0, 200);
    assert_eq!(
        report.feed.source.needs_snapshot.keys().collect::<Vec<_>>(),
        ["contact"]
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("partition reset by an operator"),
        "{logged}"
    );
}

#[test]
fn events_the_broker_deletes_while_tandem_is_behind_are_either_applied_or_reported_lost() {
    let (kafka, topics, control) = start("behind");
    const MESSAGES: u32 = 20_000;
    const DELETED_BEFORE: i64 = 19_000;
    let creates: Vec<Value> = (1..=MESSAGES)
        .map(|n| source_contact(&format!("s{n}"), n, "create", &minute(0), &email(n)))
        .collect();
    produce_json(kafka.bootstrap(), &topics.source, &creates);
    let directory = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut config = ContactConfig::new(kafka.bootstrap(), &topics, port);
    config.control_topic = Some(control.clone());
    // tandem applies one message per fsynced batch and fetches a few at a time, so that it is
    // far behind the broker when retention strikes.
    config.kafka_lines = r#"batch_max_messages = 1
[kafka.properties]
"fetch.message.max.bytes" = "1024"
"queued.min.messages" = "5"
"queued.max.messages.kbytes" = "1""#
        .to_owned();
    let config_path = config.write(directory.path());
    let text = std::fs::read_to_string(&config_path)
        .unwrap()
        .replace("[store]\n", "[store]\nsync_writes = true\n");
    std::fs::write(&config_path, text).unwrap();
    let daemon = Daemon::start(&config_path, port, &directory.path().join("tandem.log"));
    wait_for("tandem to be under way", DEADLINE, || {
        (applied(&daemon.report()) >= 50).then_some(())
    });
    assert_eq!(
        kafka.delete_records(&topics.source, 0, DELETED_BEFORE),
        DELETED_BEFORE
    );
    let report = wait_for("tandem to reach the end", DEADLINE, || {
        let report = daemon.report();
        report.ingest.caught_up.then_some(report)
    });
    let lost: u64 = report
        .feed
        .source
        .lost_offsets
        .iter()
        .map(|loss| loss.count.expect("counted"))
        .sum();
    assert!(
        lost > 0,
        "tandem was behind: some of the deleted messages were unread; {:?}\n{}",
        report.ingest,
        daemon.log_tail()
    );
    // Every message is accounted for: applied (read before it was deleted) or reported lost.
    assert_eq!(
        report.ingest.source.events_applied + lost,
        u64::from(MESSAGES),
        "{:?}",
        report.feed.source.lost_offsets
    );
    let loss = &report.feed.source.lost_offsets[0];
    assert_eq!(loss.last_offset, DELETED_BEFORE - 1, "{loss:?}");
    assert_eq!(
        report.feed.source.needs_snapshot.keys().collect::<Vec<_>>(),
        ["contact"]
    );
}
