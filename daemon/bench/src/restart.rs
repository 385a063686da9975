//! (f) Restart to consuming on Apache Kafka with its default 45 s session timeout: the time
//! from starting a stopped daemon again (after SIGKILL or SIGTERM) until it has applied an
//! event produced while it was down, with static group membership (the default) and, once,
//! without it: what a restart costs when the group waits for the old member's session.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use tandem_testkit::{
    free_port, minute, produce_json, source_contact, Broker, ContactConfig, Kafka, Topics,
};

use crate::daemon_process::DaemonProcess;

/// Restarts measured after each kind of stop.
const ROUNDS: usize = 5;

/// Seconds from each restart to its first applied event.
pub(crate) struct RestartFigures {
    pub(crate) after_sigkill: Vec<f64>,
    pub(crate) after_sigterm: Vec<f64>,
    pub(crate) without_static_membership: f64,
}

fn applied(daemon: &DaemonProcess) -> u64 {
    daemon
        .get_json("/v1/report")
        .map(|report| {
            report["ingest"]["source"]["events_applied"]
                .as_u64()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// Starts the daemon and returns it with the seconds until it applied `expected` events.
fn start_and_time(
    tandem: &str,
    config: &Path,
    port: u16,
    log: &Path,
    expected: u64,
) -> anyhow::Result<(DaemonProcess, f64)> {
    let started = Instant::now();
    let daemon = DaemonProcess::start(tandem, config, port, log)?;
    while applied(&daemon) < expected {
        if started.elapsed() > Duration::from_secs(120) {
            bail!(
                "the restarted daemon did not apply event {expected} within 120 s; see {}",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok((daemon, started.elapsed().as_secs_f64()))
}

pub(crate) fn restart_to_consuming(tandem: &str) -> anyhow::Result<RestartFigures> {
    let topics = Topics::unique("bench-restart");
    let kafka = Kafka::start(&[
        (&topics.source, 4),
        (&topics.target, 4),
        (&topics.dead_letters, 1),
    ]);
    let directory = tempfile::tempdir()?;
    let port = free_port();
    let mut config = ContactConfig::new(kafka.bootstrap(), &topics, port);
    let config_path = config.write(directory.path());
    let log = directory.path().join("tandem.log");
    let mut produced = 0u32;
    let mut produce_one = || {
        produced += 1;
        let number = produced;
        produce_json(
            kafka.bootstrap(),
            &topics.source,
            &[source_contact(
                &format!("s{number}"),
                number,
                "create",
                &minute(0),
                "c@x.io",
            )],
        );
        u64::from(number)
    };
    let expected = produce_one();
    let (mut daemon, _) = start_and_time(tandem, &config_path, port, &log, expected)?;
    let mut figures = RestartFigures {
        after_sigkill: Vec::new(),
        after_sigterm: Vec::new(),
        without_static_membership: 0.0,
    };
    for round in 0..2 * ROUNDS {
        let killed = round % 2 == 0;
        if killed {
            daemon.kill();
        } else {
            drop(daemon);
        }
        let expected = produce_one();
        let (restarted, seconds) = start_and_time(tandem, &config_path, port, &log, expected)?;
        daemon = restarted;
        if killed {
            figures.after_sigkill.push(seconds);
        } else {
            figures.after_sigterm.push(seconds);
        }
    }
    // The same store without static membership: a new member waits for the old one's session.
    daemon.kill();
    config.kafka_lines = "static_membership = false".to_owned();
    config.write(directory.path());
    let expected = produce_one();
    let (_daemon, seconds) = start_and_time(tandem, &config_path, port, &log, expected)?;
    figures.without_static_membership = seconds;
    Ok(figures)
}
