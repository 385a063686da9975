//! How `tandem run` stops on SIGTERM: within its stop deadline, even when ingestion never
//! finishes draining. The real binary, with no broker (nothing here needs one): the stop
//! deadline is shortened and the hung ingestion is made by the daemon's test hooks.

use tandem_testkit as common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{free_port, Daemon, Topics};
use tandem::daemon::{INGEST_NEVER_DRAINS_VARIABLE, STOP_DEADLINE_VARIABLE};

/// The stop deadline the tests give the daemon.
const DEADLINE: Duration = Duration::from_secs(2);

/// What the process may take beyond the deadline: the runtime's grace for tasks left behind
/// (1 s), the exit itself, and room for a loaded machine.
const MARGIN: Duration = Duration::from_secs(5);

/// A configuration whose broker is not there, and the log's path.
fn configuration(directory: &Path) -> (PathBuf, PathBuf, u16) {
    let port = free_port();
    let config = common::write_config(
        directory,
        "127.0.0.1:9",
        &Topics::unique("stop"),
        port,
        100,
        false,
    );
    (config, directory.join("tandem.log"), port)
}

// One test, two daemons one after the other: daemons started side by side may take each
// other's free port (their Kafka clients' connections use the same ephemeral range).
#[test]
fn the_stop_deadline_bounds_the_stop() {
    a_hung_ingestion_holds_the_process_no_longer_than_the_deadline();
    a_daemon_that_drains_stops_before_its_deadline();
}

/// Started from its own configuration: the log says this daemon serves the port.
fn assert_listening(log: &Path) {
    let text = std::fs::read_to_string(log).unwrap();
    assert!(
        text.contains("HTTP API listening"),
        "another process answered on the daemon's port:\n{text}"
    );
}

fn a_hung_ingestion_holds_the_process_no_longer_than_the_deadline() {
    let directory = tempfile::tempdir().unwrap();
    let (config, log, port) = configuration(directory.path());
    let deadline = format!("{}ms", DEADLINE.as_millis());
    let daemon = Daemon::start_with_env(
        &config,
        port,
        &log,
        &[
            (STOP_DEADLINE_VARIABLE, deadline.as_str()),
            (INGEST_NEVER_DRAINS_VARIABLE, "1"),
        ],
    );
    assert_listening(&log);
    let asked = Instant::now();
    // Fails the test if the process is still there 60 s after SIGTERM.
    let status = daemon.terminate();
    let took = asked.elapsed();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        status.success(),
        "a stop on request exits 0, drained or not: {status}\n{text}"
    );
    // The hook held ingestion: the deadline, not a drain, ended the wait for it.
    assert!(
        text.contains("ingestion did not drain in time"),
        "the daemon did not wait for a hung ingestion:\n{text}"
    );
    assert!(
        text.contains("tandem stopped"),
        "the daemon did not finish its stop:\n{text}"
    );
    assert!(
        took >= DEADLINE,
        "exited {took:?} after SIGTERM, before the {DEADLINE:?} a hung ingestion is waited for"
    );
    assert!(
        took < DEADLINE + MARGIN,
        "exited {took:?} after SIGTERM: more than the deadline ({DEADLINE:?}) and {MARGIN:?}\n{text}"
    );
}

fn a_daemon_that_drains_stops_before_its_deadline() {
    let directory = tempfile::tempdir().unwrap();
    let (config, log, port) = configuration(directory.path());
    // A deadline far beyond what a stop takes: reaching it would fail the test.
    let daemon = Daemon::start_with_env(&config, port, &log, &[(STOP_DEADLINE_VARIABLE, "50s")]);
    assert_listening(&log);
    let asked = Instant::now();
    let status = daemon.terminate();
    let took = asked.elapsed();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "exit status {status}\n{text}");
    assert!(
        !text.contains("did not drain in time") && !text.contains("did not stop in time"),
        "something waited for the deadline:\n{text}"
    );
    assert!(
        took < Duration::from_secs(20),
        "stopping took {took:?}\n{text}"
    );
}
