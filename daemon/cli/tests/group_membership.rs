//! tandem in its consumer group on Apache Kafka with the default session timeout (45 s): a
//! restarted daemon takes its partitions back at once (static membership, named after its
//! store), and a second daemon on a copy of the same store fences the first instead of both
//! consuming.

use tandem_testkit as common;

use std::time::{Duration, Instant};

use common::{
    contact_status, free_port, minute, produce_json, source_contact, target_contact, wait_for,
    Broker, ContactConfig, Daemon, Kafka, Topics,
};

const DEADLINE: Duration = Duration::from_secs(120);

/// Far below the 45 s a group waits for a dead member's session by default: a restart that
/// waited for it could not pass. `make bench` measures the figure itself.
const TAKES_PARTITIONS_BACK_WITHIN: Duration = Duration::from_secs(15);

fn email(number: u32) -> String {
    format!("c{number}@x.io")
}

#[test]
fn a_restarted_daemon_consumes_again_at_once_after_sigkill_and_sigterm() {
    let topics = Topics::unique("restart");
    let kafka = Kafka::start(&[
        (&topics.source, 2),
        (&topics.target, 2),
        (&topics.dead_letters, 1),
    ]);
    let directory = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut config = ContactConfig::new(kafka.bootstrap(), &topics, port);
    // A batch waits for more messages only while the store is busy with earlier ones: one
    // event on an idle daemon is applied at once, however long a batch may wait.
    config.batch_max_wait = "1h".to_owned();
    let config = config.write(directory.path());
    let log = directory.path().join("tandem.log");
    produce_json(
        kafka.bootstrap(),
        &topics.source,
        &[source_contact("s1", 1, "create", &minute(0), &email(1))],
    );
    let mut daemon = Daemon::start(&config, port, &log);
    let mut applied = 1;
    daemon.wait_for_applied(applied, DEADLINE);

    for (round, stop) in ["SIGKILL", "SIGTERM", "SIGKILL"].into_iter().enumerate() {
        match stop {
            "SIGKILL" => daemon.kill(),
            _ => assert!(daemon.terminate().success()),
        }
        let number = u32::try_from(round).unwrap() + 2;
        produce_json(
            kafka.bootstrap(),
            &topics.source,
            &[source_contact(
                &format!("s{number}"),
                number,
                "create",
                &minute(1),
                &email(number),
            )],
        );
        let restarted = Instant::now();
        daemon = Daemon::start(&config, port, &log);
        applied += 1;
        daemon.wait_for_applied(applied, DEADLINE);
        let took = restarted.elapsed();
        eprintln!("after {stop}: consuming again {took:?} after the restart");
        assert!(
            took < TAKES_PARTITIONS_BACK_WITHIN,
            "after {stop}, the restarted daemon applied its first event only {took:?} after it started: it waited for its old session to expire\n{}",
            daemon.log_tail()
        );
    }
}

#[test]
fn a_second_daemon_on_a_copy_of_the_store_fences_the_first() {
    let topics = Topics::unique("fencing");
    let kafka = Kafka::start(&[
        (&topics.source, 1),
        (&topics.target, 1),
        (&topics.dead_letters, 1),
    ]);
    let first_directory = tempfile::tempdir().unwrap();
    let first_port = free_port();
    let first_config =
        ContactConfig::new(kafka.bootstrap(), &topics, first_port).write(first_directory.path());
    produce_json(
        kafka.bootstrap(),
        &topics.source,
        &[source_contact("s1", 1, "create", &minute(0), &email(1))],
    );
    let first = Daemon::start(
        &first_config,
        first_port,
        &first_directory.path().join("tandem.log"),
    );
    first.wait_for_applied(1, DEADLINE);
    assert!(first.terminate().success());

    // Someone copies the store to another machine and starts a second daemon on it, while
    // the first runs again: both carry the same store id.
    let second_directory = tempfile::tempdir().unwrap();
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(first_directory.path().join("store"))
        .arg(second_directory.path().join("store"))
        .status()
        .unwrap();
    assert!(copied.success());
    let first = Daemon::start(
        &first_config,
        first_port,
        &first_directory.path().join("tandem.log"),
    );
    wait_for("the first daemon to consume", DEADLINE, || {
        (first.report().ingest.assigned_partitions == 2).then_some(())
    });
    let second_port = free_port();
    let second_config =
        ContactConfig::new(kafka.bootstrap(), &topics, second_port).write(second_directory.path());
    let second = Daemon::start(
        &second_config,
        second_port,
        &second_directory.path().join("tandem.log"),
    );

    // The newcomer takes the group membership over; the first is fenced and stops ingesting.
    let stopped = wait_for("the first daemon to be fenced", DEADLINE, || {
        first.report().ingest.stopped
    });
    assert!(stopped.contains("group.instance.id"), "{stopped}");
    assert_eq!(first.readiness(), 503);
    produce_json(
        kafka.bootstrap(),
        &topics.target,
        &[target_contact("t1", 1, "create", &minute(1), &email(1))],
    );
    second.wait_for_applied(2, DEADLINE);
    assert_eq!(
        contact_status(&second, 1),
        Some(tandem_core::Status::InSync)
    );
    let first_report = first.report();
    assert_eq!(
        first_report.ingest.source.events_applied + first_report.ingest.target.events_applied,
        1,
        "the fenced daemon applies nothing more"
    );
}
