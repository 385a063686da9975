//! Runs one scenario: produce the simulated run with its faults, run the daemon through the
//! disruption while sampling for false parity, heal, and compare with the ground truth.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::seq::IndexedRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tandem_api::report::{RecordView, Report};
use tandem_sim::{generate, SimSystem, ENTITIES};
use tandem_testkit::truth::{
    cause_agreement, count_differences, since_agreement, status_differences,
};
use tandem_testkit::{free_port, Broker, Daemon, Kafka, Topics};

use crate::responder::{produce_answers, Responder};
use crate::scenarios::{Disruption, Scenario};

/// What a scenario showed.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// The scenario.
    pub name: String,
    /// Messages produced before healing.
    pub messages: u64,
    /// Faults injected (transport and connector faults, kills, outages).
    pub faults_injected: u64,
    /// What tandem noticed by the end of ingestion: duplicates, stale versions, dead letters,
    /// lost events (holes), unverified records awaiting a re-read, and broker outages that the
    /// report and `/readyz` called stale. A kill is not detected: the restart recovers from it.
    pub detected: u64,
    /// Whether the report equalled the ground truth after healing.
    pub healed: bool,
    /// Samples of `in_sync` records whose true states differed at the applied position.
    pub false_in_sync: u64,
    /// Records sampled during ingestion.
    pub samples: u64,
    /// Seconds from the start of healing to the ground truth.
    pub converge_seconds: f64,
    /// After healing: the truth's divergent and pending records listed with the truth's
    /// cause, and how many there are.
    pub right_causes: (u64, u64),
    /// After healing: the most frequent cause disagreements (`listed -> truth`, count).
    pub cause_confusions: Vec<(String, u64)>,
    /// After healing: the records listed as differing (unverified aside) whose `since` is
    /// the simulator's, and how many there are.
    pub right_since: (u64, u64),
    /// After healing: up to five records whose `since` is not the simulator's.
    pub since_disagreements: Vec<String>,
    /// Everything that went wrong.
    pub problems: Vec<String>,
}

impl Outcome {
    /// The share of divergences listed with the truth's cause (1.0 with none to judge).
    pub fn right_cause_share(&self) -> f64 {
        match self.right_causes {
            (_, 0) => 1.0,
            (right, total) => right as f64 / total as f64,
        }
    }

    /// The share for the results table, with the counts.
    pub fn right_cause_text(&self) -> String {
        share_text(self.right_causes)
    }

    /// The share of differing records listed with the simulator's `since`, with the counts.
    pub fn right_since_text(&self) -> String {
        share_text(self.right_since)
    }
}

fn share_text((right, total): (u64, u64)) -> String {
    let share = if total == 0 {
        1.0
    } else {
        right as f64 / total as f64
    };
    format!("{:.1}% ({right} of {total})", share * 100.0)
}

const SAMPLE_SIZE: usize = 15;

/// Samples one record: reported `in_sync` while its true states differ at the positions its
/// view was read from is a false parity.
fn check_in_sync(
    daemon: &Daemon,
    data: &tandem_sim::Scenario,
    topics: &Topics,
    entity: &str,
    key: &str,
    outcome: &mut Outcome,
) {
    let url = format!("{}/v1/records/{entity}/{key}", daemon.url);
    let Ok(mut response) = ureq::get(&url).call() else {
        return;
    };
    let Ok(view) = response.body_mut().read_json::<RecordView>() else {
        return;
    };
    outcome.samples += 1;
    if view.status.map(|status| status.as_str()) != Some("in_sync") {
        return;
    }
    if data.differs_at(entity, key, &positions(&view, topics)) == Some(true) {
        outcome.false_in_sync += 1;
        if outcome.problems.len() < 5 {
            outcome
                .problems
                .push(format!("false in_sync: {entity} {key}"));
        }
    }
}

fn wall_clock_nanos() -> i64 {
    tandem_core::Timestamp::from_system_time(std::time::SystemTime::now()).unix_nanos()
}

/// Distinct event ids among `messages` (what `events_applied` reaches when tandem reads all
/// of them).
fn distinct_events<'a>(messages: impl Iterator<Item = &'a tandem_sim::SimMessage>) -> u64 {
    let ids: std::collections::BTreeSet<String> = messages
        .filter_map(|message| {
            let value: serde_json::Value = serde_json::from_slice(&message.payload).ok()?;
            Some(value.get("event_id")?.as_str()?.to_owned())
        })
        .collect();
    ids.len() as u64
}

/// The first half of the run is read; the daemon stops; the second half arrives, and the
/// broker deletes the first half of it on every source partition before the daemon is back.
/// Returns the restarted daemon and the indexes (in `data.messages`) of the deleted messages.
fn stop_and_lose_unread_events(
    broker: &Kafka,
    daemon: Daemon,
    config: &std::path::Path,
    port: u16,
    log: &std::path::Path,
    topics: &Topics,
    data: &tandem_sim::Scenario,
) -> (Daemon, std::collections::BTreeSet<usize>) {
    let half = data.messages.len() / 2;
    let (first, second) = data.messages.split_at(half);
    tandem::simkafka::produce(
        broker.bootstrap(),
        &topics.source,
        &topics.target,
        first,
        |_| {},
    )
    .expect("the first half is produced");
    wait_for_caught_up(&daemon, distinct_events(first.iter()));
    daemon.terminate();
    tandem::simkafka::produce(
        broker.bootstrap(),
        &topics.source,
        &topics.target,
        second,
        |_| {},
    )
    .expect("the second half is produced");
    // The producer is idempotent and keeps each partition's order: the second half's
    // messages of a partition follow its first half's, offset by offset.
    let mut deleted = std::collections::BTreeSet::new();
    let partitions: std::collections::BTreeSet<i32> = data
        .messages
        .iter()
        .map(|message| message.partition)
        .collect();
    for partition in partitions {
        let of_partition = |messages: &[tandem_sim::SimMessage]| {
            messages
                .iter()
                .filter(|message| {
                    message.system == SimSystem::Source && message.partition == partition
                })
                .count()
        };
        let (read, unread) = (of_partition(first), of_partition(second));
        let lose = unread / 2;
        let before = i64::try_from(read + lose).expect("few messages");
        assert_eq!(
            broker.delete_records(&topics.source, partition, before),
            before
        );
        deleted.extend(
            data.messages
                .iter()
                .enumerate()
                .skip(half)
                .filter(|(_, message)| {
                    message.system == SimSystem::Source && message.partition == partition
                })
                .take(lose)
                .map(|(index, _)| index),
        );
    }
    (Daemon::start(config, port, log), deleted)
}

/// Waits until the daemon applied `applied` events and has read everything on the broker.
fn wait_for_caught_up(daemon: &Daemon, applied: u64) {
    tandem_testkit::wait_for(
        "the first half to be read",
        Duration::from_secs(120),
        || {
            let report = daemon.report();
            (self::applied(&report) >= applied && report.ingest.caught_up).then_some(())
        },
    );
}

fn applied(report: &Report) -> u64 {
    report.ingest.source.events_applied + report.ingest.target.events_applied
}

/// Maps a record view's `as_of` (`topic/partition` → next offset) to system and partition.
fn positions(view: &RecordView, topics: &Topics) -> BTreeMap<(SimSystem, i32), i64> {
    view.as_of
        .iter()
        .filter_map(|(key, next)| {
            let (topic, partition) = key.rsplit_once('/')?;
            let system = if topic == topics.source {
                SimSystem::Source
            } else if topic == topics.target {
                SimSystem::Target
            } else {
                return None;
            };
            Some(((system, partition.parse().ok()?), *next))
        })
        .collect()
}

/// Adds `[replication]` to a configuration written by `write_config`.
fn add_replication(config: &std::path::Path, instance: &str) {
    let mut text = std::fs::read_to_string(config).expect("the configuration was written");
    text.push_str(&format!(
        "\n[replication]\ninstance = \"{instance}\"\nsession_timeout = \"6s\"\n"
    ));
    std::fs::write(config, text).expect("the configuration is writable");
}

/// Run one scenario. `deadline` bounds each waiting phase.
pub fn run(scenario: &Scenario, deadline: Duration) -> Outcome {
    let mut outcome = Outcome {
        name: scenario.name.to_owned(),
        ..Outcome::default()
    };
    let data = Arc::new(generate(&scenario.sim));
    let topics = Topics::unique(scenario.name);
    let reread_topic = format!("{}.reread", scenario.name);
    let control_topic = format!("{}.control", scenario.name);
    let partitions = scenario.sim.partitions;
    let mut broker = Kafka::start(&[
        (&topics.source, partitions),
        (&topics.target, partitions),
        (&topics.dead_letters, 1),
        (&reread_topic, 1),
        (&control_topic, 1),
    ]);
    outcome.messages = data.messages.len() as u64;
    outcome.faults_injected = data.faults.total();
    let mut expected_main: u64 = data.truth.events_applied.values().sum();

    let directory = tempfile::tempdir().expect("a temporary directory");
    let port = free_port();
    let slow = matches!(scenario.disruption, Disruption::Kills(_));
    let config = tandem_testkit::write_config(
        directory.path(),
        broker.bootstrap(),
        &topics,
        port,
        if slow { 50 } else { 500 },
        slow,
    );
    tandem_testkit::add_request_topics(&config, &reread_topic, &control_topic);
    let log = directory.path().join("tandem.log");
    let standby_directory = tempfile::tempdir().expect("a temporary directory");
    let node_loss = matches!(scenario.disruption, Disruption::NodeLoss);
    if node_loss {
        add_replication(&config, "active");
    }
    let mut daemon = Daemon::start(&config, port, &log);
    let mut standby = node_loss.then(|| {
        let standby_port = free_port();
        let standby_config = tandem_testkit::write_config(
            standby_directory.path(),
            broker.bootstrap(),
            &topics,
            standby_port,
            500,
            false,
        );
        tandem_testkit::add_request_topics(&standby_config, &reread_topic, &control_topic);
        add_replication(&standby_config, "standby");
        Daemon::start(
            &standby_config,
            standby_port,
            &standby_directory.path().join("tandem.log"),
        )
    });
    // The run arrives while the daemon works, in chunks. With kills, slowly enough that
    // every kill (and the restart's rejoin of the consumer group, a few seconds) happens
    // while events are still arriving.
    let (chunks, pause) = match scenario.disruption {
        Disruption::Kills(kills) => (10 * (kills as usize + 1), Duration::from_millis(900)),
        _ => (20, Duration::from_millis(150)),
    };
    let mut deleted_by_broker = None;
    let producer = match scenario.disruption {
        Disruption::RetentionWhileStopped => {
            let (restarted, deleted) =
                stop_and_lose_unread_events(&broker, daemon, &config, port, &log, &topics, &data);
            daemon = restarted;
            outcome.faults_injected += deleted.len() as u64;
            deleted_by_broker = Some(deleted.len() as u64);
            expected_main = distinct_events(
                data.messages
                    .iter()
                    .enumerate()
                    .filter(|(index, _)| !deleted.contains(index))
                    .map(|(_, message)| message),
            );
            None
        }
        _ => {
            let (bootstrap, topics, data) =
                (broker.bootstrap().to_owned(), topics.clone(), data.clone());
            Some(std::thread::spawn(move || {
                let chunk = data.messages.len().div_ceil(chunks).max(1);
                for messages in data.messages.chunks(chunk) {
                    tandem::simkafka::produce(
                        &bootstrap,
                        &topics.source,
                        &topics.target,
                        messages,
                        |_| {},
                    )
                    .expect("the simulated run is produced");
                    std::thread::sleep(pause);
                }
            }))
        }
    };

    // Ingestion, with the disruption and sampling.
    let keys = data.join_keys();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut kills_done = 0;
    let mut outage_done = false;
    let mut node_lost = false;
    let mut outages_reported = 0;
    let started = Instant::now();
    let report = loop {
        let report = daemon.report();
        let done = applied(&report);
        for (entity, key) in keys.choose_multiple(&mut rng, SAMPLE_SIZE) {
            check_in_sync(&daemon, &data, &topics, entity, key, &mut outcome);
        }
        if done >= expected_main {
            // Everything is applied and every loss the stream shows is known: every record
            // is judged once, before anything heals.
            for (entity, key) in &keys {
                check_in_sync(&daemon, &data, &topics, entity, key, &mut outcome);
            }
            break report;
        }
        match scenario.disruption {
            Disruption::Kills(kills) if kills_done < kills => {
                let threshold = expected_main * u64::from(kills_done + 1) / u64::from(kills + 1);
                if done >= threshold {
                    daemon.kill();
                    daemon = Daemon::start(&config, port, &log);
                    kills_done += 1;
                    outcome.faults_injected += 1;
                }
            }
            Disruption::NodeLoss if !node_lost && done >= expected_main * 4 / 10 => {
                node_lost = true;
                outcome.faults_injected += 1;
                daemon.kill();
                std::fs::remove_dir_all(directory.path().join("store"))
                    .expect("the lost node's store is deleted");
                daemon = standby.take().expect("the standby runs");
            }
            Disruption::BrokerOutage(duration)
                if !outage_done && done >= expected_main * 3 / 10 =>
            {
                outage_done = true;
                outcome.faults_injected += 1;
                broker.kill();
                let outage = Instant::now();
                let mut reported_stale = false;
                while outage.elapsed() < duration {
                    let stale = daemon.report().ingest.broker_unreachable_since.is_some();
                    reported_stale |= stale && daemon.readiness() == 503;
                    std::thread::sleep(Duration::from_millis(200));
                }
                broker.restart();
                if reported_stale {
                    outages_reported += 1;
                } else {
                    outcome
                        .problems
                        .push("the outage was not reported by /readyz and the report".to_owned());
                }
            }
            _ => {}
        }
        if started.elapsed() > deadline {
            outcome.problems.push(format!(
                "ingestion did not finish: {done} of {expected_main} events applied"
            ));
            return outcome;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if let Some(producer) = producer {
        producer.join().expect("the producer thread finished");
    }
    outcome.detected = outages_reported
        + report.ingest.source.duplicates_dropped
        + report.ingest.target.duplicates_dropped
        + report.ingest.source.stale_versions
        + report.ingest.target.stale_versions
        + report.ingest.dead_lettered
        + report.feed.rereads_outstanding
        + [&report.feed.source, &report.feed.target]
            .iter()
            .flat_map(|feed| feed.holes.iter().map(|hole| hole.missing))
            .sum::<u64>()
        + [&report.feed.source, &report.feed.target]
            .iter()
            .flat_map(|feed| feed.lost_offsets.iter().filter_map(|loss| loss.count))
            .sum::<u64>();
    if let Some(deleted) = deleted_by_broker {
        let reported: u64 = report
            .feed
            .source
            .lost_offsets
            .iter()
            .filter_map(|loss| loss.count)
            .sum();
        if reported != deleted {
            outcome.problems.push(format!(
                "the broker deleted {deleted} unread messages; the report counts {reported} lost offsets"
            ));
        }
    }
    if node_loss && !node_lost {
        outcome
            .problems
            .push("the node was not lost during ingestion".to_owned());
    }
    if let Disruption::Kills(kills) = scenario.disruption {
        if kills_done < kills {
            outcome.problems.push(format!(
                "only {kills_done} of {kills} kills happened during ingestion"
            ));
        }
    }

    // Healing: the connectors answer requests, and run one full snapshot of everything.
    let healing = Instant::now();
    // Connectors read their answers now: a loss of offsets is dated when tandem found it
    // (wall clock), and only what was read after that can heal it.
    let read_at = (data.newest_event_unix_nanos()
        + (scenario.sim.grace_seconds + 60) * 1_000_000_000)
        .max(wall_clock_nanos() + 1_000_000_000);
    let responder = Responder::start(
        broker.bootstrap().to_owned(),
        topics.clone(),
        reread_topic,
        control_topic,
        data.clone(),
        read_at,
    );
    for system in [SimSystem::Source, SimSystem::Target] {
        for entity in ENTITIES {
            let run = data.snapshot_run(
                system,
                entity.name,
                &format!("full-{}-{}", system.as_str(), entity.name),
                read_at,
            );
            produce_answers(broker.bootstrap(), &topics, &run, &responder.produced);
        }
    }
    let mut last_differences = Vec::new();
    loop {
        let report = daemon.report();
        let expected_total = expected_main + responder.produced.load(Ordering::SeqCst);
        let settled = applied(&report) == expected_total
            && report.feed.rereads_outstanding == 0
            && report.feed.source.needs_snapshot.is_empty()
            && report.feed.target.needs_snapshot.is_empty();
        if settled {
            let clock = report
                .clock
                .map(|clock| clock.unix_nanos())
                .unwrap_or(i64::MIN);
            let truth = data.truth_at(clock);
            last_differences = status_differences(&daemon, &report, &truth);
            // Counters of the original stream; answers add only distinct, current events.
            last_differences.extend(
                count_differences(&report, &truth)
                    .into_iter()
                    .filter(|difference| !difference.contains("events applied")),
            );
            if last_differences.is_empty() {
                outcome.healed = true;
                outcome.converge_seconds = healing.elapsed().as_secs_f64();
                let (right, total, confusions) = cause_agreement(&daemon, &truth);
                outcome.right_causes = (right, total);
                outcome.cause_confusions = confusions;
                let (right, total, disagreements) = since_agreement(&daemon, &data);
                outcome.right_since = (right, total);
                outcome.since_disagreements = disagreements;
                break;
            }
        }
        if healing.elapsed() > deadline {
            outcome.problems.push(format!(
                "did not converge: applied {} of {expected_total}, {} re-reads outstanding; {}",
                applied(&report),
                report.feed.rereads_outstanding,
                last_differences.join("; ")
            ));
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    drop(responder);
    outcome
}
