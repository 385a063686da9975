//! What Apache Kafka does to a topic that tandem must read right: transactions (events of an
//! aborted transaction are never applied; commit markers leave no lag and do not stop the
//! idle clock) and compaction (the offsets it removes are not lost events). Expected values
//! are worked out by hand from the events each test produces.

use tandem_testkit as common;

use std::time::Duration;

use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use serde_json::Value;
use tandem_core::Status;

use common::{
    contact_status, free_port, minute, produce_json, source_contact, target_contact, wait_for,
    Broker, ContactConfig, Daemon, Kafka, Topics,
};

const DEADLINE: Duration = Duration::from_secs(120);

fn email(number: u32) -> String {
    format!("c{number}@x.io")
}

/// Writes `events` (topic, event) in one transaction, committed or aborted.
fn transaction(
    producer: &ThreadedProducer<DefaultProducerContext>,
    events: &[(&str, Value)],
    commit: bool,
) {
    producer.begin_transaction().expect("a transaction begins");
    for (topic, event) in events {
        let payload = serde_json::to_vec(event).expect("JSON");
        producer
            .send(
                BaseRecord::<(), _>::to(topic)
                    .partition(0)
                    .payload(&payload),
            )
            .map_err(|(error, _)| error)
            .expect("the message is queued");
    }
    let timeout = Duration::from_secs(30);
    if commit {
        producer
            .commit_transaction(timeout)
            .expect("the transaction commits");
    } else {
        // The messages reach the broker's log first, so that tandem must skip them there (an
        // abort with messages still queued drops them in the client instead, and Apache Kafka
        // 4 can refuse an abort that overtakes its sends: INVALID_TXN_STATE).
        producer
            .flush(timeout)
            .expect("the transaction's messages reach the broker");
        producer
            .abort_transaction(timeout)
            .expect("the transaction aborts");
    }
}

#[test]
fn aborted_transactions_are_never_applied_and_markers_leave_no_lag() {
    let topics = Topics::unique("transactions");
    let kafka = Kafka::start(&[
        (&topics.source, 1),
        (&topics.target, 1),
        (&topics.dead_letters, 1),
    ]);
    // A connector with exactly-once delivery writes both systems' changes in transactions.
    let producer: ThreadedProducer<DefaultProducerContext> = kafka
        .client_config()
        .set("transactional.id", "crm-connector")
        .create()
        .expect("a transactional producer");
    producer
        .init_transactions(Duration::from_secs(30))
        .expect("transactions start");
    let (source, target) = (topics.source.as_str(), topics.target.as_str());
    let pair = |number: u32, time: i64| {
        [
            (
                source,
                source_contact(
                    &format!("s{number}"),
                    number,
                    "create",
                    &minute(time),
                    &email(number),
                ),
            ),
            (
                target,
                target_contact(
                    &format!("t{number}"),
                    number,
                    "create",
                    &minute(time),
                    &email(number),
                ),
            ),
        ]
    };
    transaction(&producer, &pair(1, 0), true);
    transaction(&producer, &pair(2, 0), true);
    // Aborted: L1's e-mail changed in the source, L5 created in the target. Never happened.
    transaction(
        &producer,
        &[
            (
                source,
                source_contact("s1-aborted", 1, "update", &minute(1), "aborted@x.io"),
            ),
            (
                target,
                target_contact("t5-aborted", 5, "create", &minute(1), &email(5)),
            ),
        ],
        false,
    );
    transaction(&producer, &pair(3, 2), true);
    // Last, L4 in the source only, now: pending until the grace period passes. With nothing
    // more to read, only the idle clock (which runs while tandem is caught up) can move it on.
    let now = tandem_core::Timestamp::from_system_time(std::time::SystemTime::now()).to_rfc3339();
    transaction(
        &producer,
        &[(source, source_contact("s4", 4, "create", &now, &email(4)))],
        true,
    );

    let directory = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut config = ContactConfig::new(kafka.bootstrap(), &topics, port);
    config.grace = "2s".to_owned();
    config.idle_clock = true;
    let daemon = Daemon::start(
        &config.write(directory.path()),
        port,
        &directory.path().join("tandem.log"),
    );
    let report = daemon.wait_for_applied(7, DEADLINE);
    assert_eq!(
        report.entities["contact"].records, 4,
        "L5 was aborted: {report:?}"
    );
    for number in 1..=3 {
        assert_eq!(
            contact_status(&daemon, number),
            Some(Status::InSync),
            "L{number}"
        );
    }
    // Five commit markers and one abort marker sit in the topics' offsets after the events:
    // caught up means lag 0 on both, not 1.
    let report = wait_for("lag 0 on both systems", DEADLINE, || {
        let report = daemon.report();
        (report.ingest.source.lag == Some(0) && report.ingest.target.lag == Some(0))
            .then_some(report)
    });
    assert!(report.ingest.caught_up);
    wait_for(
        "L4 to turn missing in the target on the idle clock",
        DEADLINE,
        || (contact_status(&daemon, 4) == Some(Status::MissingInTarget)).then_some(()),
    );
}

#[test]
fn offsets_removed_by_compaction_are_not_lost_events_and_tombstones_follow_the_format() {
    let topics = Topics::unique("compaction");
    let kafka = Kafka::start(&[(&topics.target, 1), (&topics.dead_letters, 1)]);
    // The source topic is compacted, and its segments roll fast enough for the cleaner to
    // compact all but the newest messages within seconds.
    kafka.create_topic(
        &topics.source,
        1,
        &[
            ("cleanup.policy", "compact"),
            ("segment.ms", "100"),
            ("min.cleanable.dirty.ratio", "0.001"),
            ("min.compaction.lag.ms", "0"),
        ],
    );
    let keyed = |key: &str, event: Option<Value>| (key.to_owned(), event);
    let mut messages = vec![
        keyed(
            "L1",
            Some(source_contact("s1", 1, "create", &minute(0), "first@x.io")),
        ),
        keyed(
            "L1",
            Some(source_contact(
                "s1-2",
                1,
                "update",
                &minute(1),
                "second@x.io",
            )),
        ),
        keyed(
            "L2",
            Some(source_contact("s2", 2, "create", &minute(1), &email(2))),
        ),
        keyed(
            "L1",
            Some(source_contact("s1-3", 1, "update", &minute(2), &email(1))),
        ),
        keyed(
            "L3",
            Some(source_contact("s3", 3, "create", &minute(2), &email(3))),
        ),
        keyed(
            "L3",
            Some(source_contact("s3-d", 3, "delete", &minute(3), &email(3))),
        ),
        // A tombstone lets compaction forget L3; in the canonical format it is a dead letter
        // (schemas/dead-letter.md: `empty`).
        keyed("L3", None),
    ];
    common::produce_keyed(kafka.bootstrap(), &topics.source, &messages);
    // Compaction needs closed segments: a message for L9 closes the previous one, again until
    // the cleaner has removed L1's older images (offsets 0 and 1).
    let mut filler = 0;
    wait_for("the cleaner to compact the source topic", DEADLINE, || {
        filler += 1;
        let image = source_contact(&format!("s9-{filler}"), 9, "create", &minute(4), &email(9));
        messages.push(keyed("L9", Some(image.clone())));
        common::produce_keyed(
            kafka.bootstrap(),
            &topics.source,
            &[keyed("L9", Some(image))],
        );
        let offsets = common::offsets_of(kafka.bootstrap(), &topics.source);
        (offsets.first().is_some_and(|first| *first > 1)).then_some(offsets)
    });
    let (log_start, _) = kafka.watermarks(&topics.source, 0);
    assert_eq!(log_start, 0, "compaction does not move the log start");
    let copies: Vec<Value> = [1, 2, 9]
        .into_iter()
        .map(|number| {
            target_contact(
                &format!("t{number}"),
                number,
                "create",
                &minute(5),
                &email(number),
            )
        })
        .collect();
    produce_json(kafka.bootstrap(), &topics.target, &copies);

    let directory = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = ContactConfig::new(kafka.bootstrap(), &topics, port).write(directory.path());
    let daemon = Daemon::start(&config, port, &directory.path().join("tandem.log"));
    // Whatever compaction kept of L1 ends in its last image, which the target holds.
    wait_for("every record in sync", DEADLINE, || {
        let in_sync = [1, 2, 9]
            .into_iter()
            .all(|number| contact_status(&daemon, number) == Some(Status::InSync));
        in_sync.then_some(())
    });
    let report = daemon.report();
    assert!(
        report.feed.source.lost_offsets.is_empty() && report.feed.source.needs_snapshot.is_empty(),
        "compaction lost nothing: {:?}",
        report.feed.source
    );
    assert_eq!(report.entities["contact"].by_status[&Status::Unverified], 0);
    // L3 was deleted (or, if compaction already removed its delete, never seen): either way,
    // not a live record. Its tombstone is a dead letter with the reason `empty`.
    assert_eq!(
        report
            .ingest
            .dead_lettered_by_reason
            .get(&tandem_core::DeadLetterReason::Empty),
        Some(&1),
        "{:?}",
        report.ingest.dead_lettered_by_reason
    );
    assert_eq!(
        report.entities["contact"].records, 3,
        "L1, L2, L9: {report:?}"
    );
}
