//! The simulator's events through a real Kafka-protocol broker into the real `tandem`
//! binary: the report must equal the simulator's ground truth exactly.

use tandem_testkit as common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tandem_api::report::{RecordView, Report};
use tandem_sim::SimConfig;

use common::truth::assert_matches_truth;
use common::{free_port, wait_for, Broker, Daemon, SimulatedRun};

const DEADLINE: Duration = Duration::from_secs(180);

/// Reads every message of the dead-letter topic: (reason header, original coordinates).
fn dead_letters(bootstrap: &str, topic: &str, expected: usize) -> Vec<(String, String)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "dead-letter-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("a consumer of the dead-letter topic");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Beginning)
        .expect("a valid assignment");
    consumer
        .assign(&assignment)
        .expect("assigning the dead-letter partition");
    let mut seen = Vec::new();
    wait_for(
        &format!("{expected} dead letters on {topic}"),
        DEADLINE,
        || {
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
                let headers = message.headers().expect("dead letters carry headers");
                let header = |name: &str| {
                    headers
                        .iter()
                        .find(|header| header.key == name)
                        .and_then(|header| header.value)
                        .map(|value| String::from_utf8_lossy(value).into_owned())
                        .unwrap_or_else(|| panic!("dead letter without header {name}"))
                };
                seen.push((
                    header("tandem.reason"),
                    format!(
                        "{}/{}@{}",
                        header("tandem.topic"),
                        header("tandem.partition"),
                        header("tandem.offset")
                    ),
                ));
            }
            (seen.len() >= expected).then_some(())
        },
    );
    seen
}

#[test]
fn the_report_equals_the_ground_truth() {
    let mut sim = SimConfig::sized(11, 400);
    sim.oversized_message_bytes = Some(100_000);
    sim.poison_per_thousand = 3.0;
    // Systematic mapping errors (a column shift in contacts, amounts in cents and times
    // shifted by the legacy zone in deals, employee counts as text in companies, company ids
    // copied untranslated), stages the value map does not know, merges in the source only,
    // reused target ids.
    sim.sync_shift_rate = 0.2;
    sim.sync_cents_rate = 0.2;
    sim.sync_text_number_rate = 0.2;
    sim.sync_zone_shift_rate = 0.2;
    sim.sync_raw_reference_rate = 0.2;
    sim.source_new_stage_rate = 0.03;
    sim.source_merge_rate = 0.05;
    sim.target_reuse_rate = 0.03;
    // An allowed integration rewrites target fields: no violation, an overwrite.
    sim.target_enrichment_rate = 0.05;
    let run = SimulatedRun::start("truth", &sim);
    let (broker, topics, scenario) = (&run.broker, &run.topics, &run.scenario);

    let directory = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = run.config(directory.path(), port, 500, false);
    let daemon = Daemon::start(&config, port, &directory.path().join("tandem.log"));
    let report = daemon.wait_for_applied(run.distinct, DEADLINE);
    assert_matches_truth(&daemon, &report, &scenario.truth);
    let causes: std::collections::BTreeSet<&str> = scenario
        .truth
        .entities
        .values()
        .flat_map(|entity| entity.by_cause.keys().copied())
        .collect();
    for injected in [
        "id_reused",
        "unmapped_value",
        "broken_reference",
        "overwritten_in_target",
        "deleted_in_source_only",
        "missed_change",
        "non_owner_write",
        "duplicate",
        "sync_wrote_wrong_value",
        "mapping_error",
    ] {
        assert!(
            causes.contains(injected),
            "the run has no {injected}: {causes:?}"
        );
    }

    // The suspected mapping errors equal the simulator's (they are recomputed at most every
    // 5 s while data changes: the report may need one refresh after the last batch).
    let mut expected: Vec<(String, String, String, u64, u64)> = scenario
        .truth
        .suspected_mapping_errors
        .iter()
        .map(|suspected| {
            (
                suspected.entity.to_owned(),
                suspected.field.to_owned(),
                suspected.pattern.clone(),
                suspected.matching,
                suspected.examined,
            )
        })
        .collect();
    expected.sort();
    assert!(
        expected
            .iter()
            .any(|suspected| suspected.2 == "column_shift:LastName")
            && expected.iter().any(|suspected| suspected.2 == "scaled:100")
            && expected
                .iter()
                .any(|suspected| suspected.2 == "number_as_text")
            && expected
                .iter()
                .any(|suspected| suspected.2 == "time_shift:-05:00")
            && expected
                .iter()
                .any(|suspected| suspected.2 == "untranslated_reference"),
        "the injected faults are systematic enough to be suspected: {expected:?}"
    );
    let started = std::time::Instant::now();
    let reported = loop {
        let mut reported: Vec<(String, String, String, u64, u64)> = daemon
            .report()
            .suspected_mapping_errors
            .into_iter()
            .map(|found| {
                (
                    found.entity,
                    found.field,
                    found.pattern,
                    found.matching,
                    found.examined,
                )
            })
            .collect();
        reported.sort();
        if reported == expected || started.elapsed() > Duration::from_secs(30) {
            break reported;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(reported, expected);

    // An untranslated reference's examples show the id the target should hold: the target
    // record of the company the deal's source reference names (whose join key is that source
    // id), read from the record view.
    let report = daemon.report();
    let untranslated = report
        .suspected_mapping_errors
        .iter()
        .find(|found| found.pattern == "untranslated_reference")
        .expect("the untranslated references are suspected (checked above)");
    for example in &untranslated.examples {
        let company = example.target.as_str().expect("a source company id");
        let view: tandem_api::report::RecordView =
            daemon.get(&format!("/v1/records/company/{company}"));
        let live: Vec<&str> = view
            .target
            .iter()
            .filter(|side| !side.deleted)
            .map(|side| side.native_id.as_str())
            .collect();
        // A company deleted in the target since leaves nothing to hold: null.
        let should_hold = live
            .first()
            .map_or(serde_json::Value::Null, |id| serde_json::json!(id));
        assert_eq!(example.expected, should_hold, "{example:?}");
        assert_ne!(example.expected, example.target);
    }

    // A wrong value names its field, what the target should hold (the source's value: the
    // fields compared here have no value map) and the sync layer's write after the source's.
    let page: tandem_api::report::DivergenceList =
        daemon.get("/v1/divergences?entity=contact&status=mismatch&limit=1000");
    let mut detailed = 0;
    for item in &page.items {
        let expected_cause = &scenario.truth.entities["contact"].not_in_sync[&item.join_key].cause;
        if !matches!(*expected_cause, "sync_wrote_wrong_value" | "mapping_error") {
            continue;
        }
        let detail = item
            .cause_detail
            .as_ref()
            .expect("a wrong value has a detail");
        let field = detail.field.as_ref().expect("the field");
        assert!(item.fields.contains(field), "{item:?}");
        assert_eq!(detail.expected.as_ref(), Some(&item.values[field].source));
        assert_eq!(detail.target_writer.as_deref(), Some("sync"));
        assert!(detail.target_written_at >= detail.source_set_at, "{item:?}");
        if *expected_cause == "mapping_error" {
            let pattern = detail
                .pattern
                .as_ref()
                .expect("a mapping error names its pattern");
            assert!(
                report
                    .suspected_mapping_errors
                    .iter()
                    .any(|found| found.entity == "contact"
                        && found.field == *field
                        && found.pattern == *pattern),
                "{item:?}"
            );
        }
        detailed += 1;
    }
    assert!(detailed > 0, "the run has contacts with wrong values");

    // Who writes into the fenced target, counted from the produced messages themselves: the
    // sync layer (allowed), the webform integration and users editing the target (violations).
    let mut writes: BTreeMap<(String, String), std::collections::BTreeSet<String>> =
        BTreeMap::new();
    for message in &scenario.messages {
        if message.system != tandem_sim::SimSystem::Target || message.payload.len() > 65_536 {
            continue;
        }
        let Ok(event) = serde_json::from_slice::<serde_json::Value>(&message.payload) else {
            continue;
        };
        let (Some(kind), Some(event_id), Some(op)) = (
            event["actor"]["kind"].as_str(),
            event["event_id"].as_str(),
            event["op"].as_str(),
        ) else {
            continue;
        };
        if ["create", "update", "delete", "undelete", "merge"].contains(&op) {
            let id = event["actor"]["id"].as_str().unwrap_or_default().to_owned();
            writes
                .entry((kind.to_owned(), id))
                .or_default()
                .insert(event_id.to_owned());
        }
    }
    let mut expected: Vec<(String, String, u64, u64)> = writes
        .into_iter()
        .map(|((kind, id), events)| {
            let count = events.len() as u64;
            // The sync layer, repair jobs and the writer the configuration allows.
            let allowed = kind == "sync"
                || kind == "repair"
                || (kind.as_str(), id.as_str()) == tandem_sim::ALLOWED_TARGET_WRITER;
            let violations = if allowed { 0 } else { count };
            (kind, id, count, violations)
        })
        .collect();
    expected.sort();
    assert!(
        expected
            .iter()
            .any(|(kind, _, _, violations)| kind == "integration" && *violations > 0),
        "the simulation has an integration writing into the target: {expected:?}"
    );
    let writers: tandem_api::ownership::WritersView = daemon.get("/v1/writers");
    let target = &writers.systems[&tandem_core::System::Target];
    let mut reported: Vec<(String, String, u64, u64)> = target
        .iter()
        .map(|writer| {
            (
                writer.kind.clone(),
                writer.id.clone().unwrap_or_default(),
                writer.writes,
                writer.violations,
            )
        })
        .collect();
    assert!(
        target[0].violations > 0,
        "a violating writer is listed first: {reported:?}"
    );
    reported.sort();
    assert_eq!(reported, expected);

    // Lag comes from the consumer's statistics (every second): observe it reach zero.
    let caught_up = wait_for("lag 0 on both systems", DEADLINE, || {
        let report = daemon.report();
        (report.ingest.source.lag == Some(0) && report.ingest.target.lag == Some(0))
            .then_some(report)
    });
    assert!(caught_up.ingest.caught_up);
    assert_eq!(
        caught_up.ingest.assigned_partitions, 8,
        "4 source and 4 target partitions"
    );

    // Every dead letter reached the dead-letter topic with its reason and coordinates.
    let expected_dead: u64 = scenario.truth.dead_lettered.values().sum();
    let letters = dead_letters(
        broker.bootstrap(),
        &topics.dead_letters,
        expected_dead as usize,
    );
    let mut by_reason: BTreeMap<&str, u64> = BTreeMap::new();
    for (reason, coordinates) in &letters {
        *by_reason.entry(reason.as_str()).or_default() += 1;
        assert!(
            coordinates.starts_with(&topics.source) || coordinates.starts_with(&topics.target),
            "{coordinates}"
        );
    }
    assert_eq!(by_reason, scenario.truth.dead_lettered);

    // One record, through the API and the CLI: both sides, the diff and the history.
    let (entity, key) = scenario
        .truth
        .entities
        .iter()
        .find_map(|(entity, truth)| {
            truth
                .not_in_sync
                .iter()
                .find(|(_, record)| record.status == "mismatch")
                .map(|(key, record)| (*entity, key.clone(), record.fields.clone()))
        })
        .map(|(entity, key, _)| (entity, key))
        .expect("the run has a mismatch");
    let record: RecordView = daemon.get(&format!("/v1/records/{entity}/{key}"));
    assert_eq!(
        record.status.map(|status| status.to_string()).as_deref(),
        Some("mismatch")
    );
    let differing: Vec<_> = record
        .diff
        .iter()
        .filter(|field| !field.equal)
        .map(|field| field.field.clone())
        .collect();
    let mut expected_fields = scenario.truth.entities[entity].not_in_sync[&key]
        .fields
        .clone();
    expected_fields.sort();
    let mut differing_sorted = differing.clone();
    differing_sorted.sort();
    assert_eq!(differing_sorted, expected_fields);
    assert!(record
        .history
        .iter()
        .any(|entry| entry.system.as_str() == "source"));
    assert!(record
        .history
        .iter()
        .any(|entry| entry.system.as_str() == "target"));
    assert!(
        record
            .history
            .windows(2)
            .all(|pair| pair[0].occurred_at <= pair[1].occurred_at),
        "history is in event-time order"
    );

    let cli_json = Command::new(common::tandem_binary())
        .args(["report", "--format", "json", "--url", &daemon.url])
        .output()
        .unwrap();
    assert!(
        cli_json.status.success(),
        "{}",
        String::from_utf8_lossy(&cli_json.stderr)
    );
    let from_cli: Report = serde_json::from_slice(&cli_json.stdout).unwrap();
    assert_eq!(from_cli.entities, report.entities);

    let cli_record = Command::new(common::tandem_binary())
        .args(["record", entity, &key, "--url", &daemon.url])
        .output()
        .unwrap();
    assert!(cli_record.status.success());
    let text = String::from_utf8_lossy(&cli_record.stdout);
    assert!(
        text.contains("mismatch") && text.contains("DIFFERS"),
        "{text}"
    );

    let csv = Command::new(common::tandem_binary())
        .args([
            "divergences",
            "--all",
            "--limit",
            "50",
            "--format",
            "csv",
            "--url",
            &daemon.url,
        ])
        .output()
        .unwrap();
    assert!(csv.status.success());
    let rows = String::from_utf8_lossy(&csv.stdout).lines().count() - 1;
    let divergent: u64 = scenario
        .truth
        .entities
        .values()
        .flat_map(|truth| truth.not_in_sync.values())
        .filter(|record| record.status != "pending")
        .count() as u64;
    assert_eq!(
        rows as u64, divergent,
        "the CSV export lists every divergent record"
    );

    let metrics = ureq::get(&format!("{}/metrics", daemon.url))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let applied_source = scenario.truth.events_applied["source"];
    assert!(
        metrics.contains(&format!(
            "tandem_events_applied_total{{system=\"source\"}} {applied_source}"
        )),
        "{metrics}"
    );
    assert!(metrics.contains("tandem_batch_apply_seconds_bucket"));
    assert!(
        metrics.contains("tandem_rereads_outstanding 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tandem_seq_holes_open{system=\"source\"} 0"),
        "{metrics}"
    );
}

#[test]
fn kills_and_restarts_lose_nothing_and_apply_nothing_twice() {
    let run = SimulatedRun::start("crash", &SimConfig::sized(23, 2_500));
    let distinct = run.distinct;

    let directory = tempfile::tempdir().unwrap();
    let port = free_port();
    // Small fsynced batches: ingestion takes long enough to be interrupted several times.
    let config = run.config(directory.path(), port, 100, true);
    let log = directory.path().join("tandem.log");

    let mut interrupted_mid_ingestion = 0;
    for (round, share) in [0.1, 0.3, 0.5, 0.7].into_iter().enumerate() {
        let daemon = Daemon::start(&config, port, &log);
        let threshold = (distinct as f64 * share) as u64;
        let applied = wait_for(&format!("{threshold} applied events"), DEADLINE, || {
            let report = daemon.report();
            let applied = report.ingest.source.events_applied + report.ingest.target.events_applied;
            (applied >= threshold).then_some(applied)
        });
        if applied < distinct {
            interrupted_mid_ingestion += 1;
        }
        if round == 0 {
            let status = daemon.terminate();
            assert!(
                status.success(),
                "SIGTERM ends tandem with status 0, got {status}"
            );
        } else {
            daemon.kill();
        }
    }
    assert!(interrupted_mid_ingestion >= 3, "only {interrupted_mid_ingestion} of 4 stops happened during ingestion: the test needs more events to mean anything");

    let daemon = Daemon::start(&config, port, &log);
    let report = daemon.wait_for_applied(distinct, DEADLINE);
    assert_matches_truth(&daemon, &report, &run.scenario.truth);
}

#[test]
fn a_rebalance_mid_ingestion_loses_nothing() {
    let run = SimulatedRun::start("rebalance", &SimConfig::sized(31, 2_000));
    a_member_joins_and_leaves_mid_ingestion(&run, None);
}

/// The same with the consumer group protocol of KIP-848 (`group.protocol=consumer`, Kafka
/// 4): the broker computes the assignment and revokes partitions one by one, and the
/// handshake must hold all the same. Its session timeout is the broker's, made short here so
/// that the leaving member's partitions come back within the test.
#[test]
fn a_rebalance_mid_ingestion_loses_nothing_with_the_consumer_group_protocol() {
    let options = common::KafkaOptions {
        properties: vec![
            (
                "group.consumer.min.session.timeout.ms".to_owned(),
                "6000".to_owned(),
            ),
            (
                "group.consumer.session.timeout.ms".to_owned(),
                "6000".to_owned(),
            ),
            (
                "group.consumer.min.heartbeat.interval.ms".to_owned(),
                "500".to_owned(),
            ),
            (
                "group.consumer.heartbeat.interval.ms".to_owned(),
                "500".to_owned(),
            ),
        ],
        ..common::KafkaOptions::default()
    };
    let run = SimulatedRun::start_with("rebalance-848", &SimConfig::sized(37, 2_000), options);
    a_member_joins_and_leaves_mid_ingestion(&run, Some(&[("group.protocol", "consumer")]));
}

/// A second member of the same group takes partitions away mid-ingestion and leaves again:
/// the first hands them over only after committing what it applied of them, takes them back,
/// and ends with exactly the ground truth. `properties` replace the daemons' Kafka properties.
fn a_member_joins_and_leaves_mid_ingestion(
    run: &SimulatedRun,
    properties: Option<&[(&str, &str)]>,
) {
    let distinct = run.distinct;
    let config = |directory: &std::path::Path, port: u16, sync_writes: bool| {
        let config = run.config(directory, port, 100, sync_writes);
        if let Some(properties) = properties {
            common::set_kafka_properties(&config, properties);
        }
        config
    };

    let first_directory = tempfile::tempdir().unwrap();
    let first_port = free_port();
    let first_config = config(first_directory.path(), first_port, true);
    let first = Daemon::start(
        &first_config,
        first_port,
        &first_directory.path().join("tandem.log"),
    );
    wait_for("a fifth of the events applied", DEADLINE, || {
        let report = first.report();
        (report.ingest.source.events_applied + report.ingest.target.events_applied >= distinct / 5)
            .then_some(())
    });

    let second_directory = tempfile::tempdir().unwrap();
    let second_port = free_port();
    let second_config = config(second_directory.path(), second_port, false);
    let second = Daemon::start(
        &second_config,
        second_port,
        &second_directory.path().join("tandem.log"),
    );
    let shared = wait_for("the second member to get partitions", DEADLINE, || {
        let (mine, theirs) = (
            first.report().ingest.assigned_partitions,
            second.report().ingest.assigned_partitions,
        );
        (mine > 0 && theirs > 0 && mine + theirs == 8).then_some(mine)
    });
    assert!(shared < 8);
    // The broker says which protocol the group speaks.
    let groups = run
        .broker
        .tool("org.apache.kafka.tools.GroupsCommand", &["--list"]);
    let group_type = if properties
        .is_some_and(|properties| properties.contains(&("group.protocol", "consumer")))
    {
        "Consumer"
    } else {
        "Classic"
    };
    assert!(
        groups
            .lines()
            .any(|line| line.starts_with("tandem-test ") && line.contains(group_type)),
        "the group is not of type {group_type}:\n{groups}"
    );
    let applied_when_shared = {
        let report = first.report();
        report.ingest.source.events_applied + report.ingest.target.events_applied
    };
    assert!(
        applied_when_shared < distinct,
        "the rebalance happened after ingestion ended: the test needs more events"
    );

    // When the second member leaves, every partition returns to the first, which resumes at
    // its own stored offsets, and ends with exactly the ground truth.
    assert!(second.terminate().success());
    wait_for(
        "all partitions back with the first member",
        DEADLINE,
        || (first.report().ingest.assigned_partitions == 8).then_some(()),
    );
    let report = first.wait_for_applied(distinct, DEADLINE);
    assert_matches_truth(&first, &report, &run.scenario.truth);
}

/// entity, join key, native id, deleted, fields (upserts), other native ids, changed in both.
type DeltaRowSummary = (
    String,
    String,
    String,
    bool,
    Option<serde_json::Value>,
    Vec<String>,
    bool,
);

/// The reverse delta of a simulated run equals the simulator's own: every target record
/// changed since the middle of the run, its final fields in the source's names, keyed by its
/// legacy id, with the source records to update and whether they changed too.
#[test]
fn the_reverse_delta_equals_the_simulators() {
    let mut sim = SimConfig::sized(21, 120).without_faults();
    // Users edit the target and a webform creates records there: changes only the target has.
    sim.target_edit_rate = 0.05;
    sim.target_only_per_thousand = 20.0;
    let run = SimulatedRun::start("delta", &sim);
    let directory = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = run.config(directory.path(), port, 500, false);
    let daemon = Daemon::start(&config, port, &directory.path().join("tandem.log"));
    daemon.wait_for_applied(run.distinct, DEADLINE);

    let since = run.scenario.median_target_change();
    let expected = run.scenario.target_delta_since(since);
    assert!(
        expected.len() > 10,
        "the run changes enough of the target: {}",
        expected.len()
    );
    assert!(
        expected.iter().any(|row| row.other_native_ids.is_empty()),
        "some records exist only in the target"
    );
    let since_text = tandem_core::Timestamp::from_unix_nanos(since).to_rfc3339();
    let url = format!("{}/v1/delta?system=target&since={since_text}", daemon.url);
    let body = ureq::get(&url)
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let mut actual: Vec<DeltaRowSummary> = body
        .lines()
        .map(|line| {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            let deleted = row["action"] == "delete";
            (
                row["entity"].as_str().unwrap().to_owned(),
                row["join_key"].as_str().unwrap().to_owned(),
                row["native_id"].as_str().unwrap().to_owned(),
                deleted,
                (!deleted).then(|| row["fields"].clone()),
                serde_json::from_value(row["other_native_ids"].clone()).unwrap(),
                row["also_changed_in_other"].as_bool().unwrap(),
            )
        })
        .collect();
    actual.sort_by(|left, right| (&left.0, &left.1, &left.2).cmp(&(&right.0, &right.1, &right.2)));
    let mut expected: Vec<DeltaRowSummary> = expected
        .into_iter()
        .map(|row| {
            (
                row.entity.to_owned(),
                row.join_key,
                row.native_id,
                row.deleted,
                (!row.deleted).then_some(serde_json::Value::Object(row.fields)),
                row.other_native_ids,
                row.also_changed_in_other,
            )
        })
        .collect();
    expected
        .sort_by(|left, right| (&left.0, &left.1, &left.2).cmp(&(&right.0, &right.1, &right.2)));
    assert_eq!(actual.len(), expected.len(), "rows");
    for (actual, expected) in actual.iter().zip(&expected) {
        assert_eq!(actual, expected);
    }
}
