//! A store whose disk is nearly full: ingestion pauses before any write can fail, the API
//! stays up and says why, and once there is room again ingestion goes on without loss.

use std::time::Duration;

use tandem_sim::SimConfig;
use tandem_testkit::{assert_matches_truth, free_port, wait_for, Daemon, SimulatedRun};

const DEADLINE: Duration = Duration::from_secs(180);

#[test]
fn a_nearly_full_disk_pauses_ingestion_and_room_lets_it_finish() {
    let run = SimulatedRun::start("disk-full", &SimConfig::sized(41, 300));
    let directory = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = run.config(directory.path(), port, 200, false);
    let normal = std::fs::read_to_string(&config).unwrap();
    // Demand more free space than any disk has: the disk is "nearly full".
    std::fs::write(
        &config,
        normal.replace("[store]\n", "[store]\nmin_free_mib = 1099511627776\n"),
    )
    .unwrap();
    let log = directory.path().join("tandem.log");

    let daemon = Daemon::start(&config, port, &log);
    let report = wait_for("every partition assigned while paused", DEADLINE, || {
        let report = daemon.report();
        (report.ingest.paused.is_some() && report.ingest.assigned_partitions == 8).then_some(report)
    });
    let reason = report.ingest.paused.clone().unwrap();
    assert!(
        reason.contains("disk nearly full") && reason.contains("store.min_free_mib"),
        "{reason}"
    );
    assert_eq!(daemon.readiness(), 503, "not ready while paused");
    assert_eq!(
        report.ingest.source.events_applied + report.ingest.target.events_applied,
        0,
        "paused from the first assignment: nothing was fetched"
    );
    let metrics = ureq::get(&format!("{}/metrics", daemon.url))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(metrics.contains("tandem_ingest_running 0"), "{metrics}");
    daemon.kill();

    // Room again: the same store, the normal margin, and the run completes exactly.
    std::fs::write(&config, normal).unwrap();
    let daemon = Daemon::start(&config, port, &log);
    let report = daemon.wait_for_applied(run.distinct, DEADLINE);
    assert!(report.ingest.paused.is_none());
    assert_matches_truth(&daemon, &report, &run.scenario.truth);
}
