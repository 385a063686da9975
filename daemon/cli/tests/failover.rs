//! The hot standby on Apache Kafka, checked against the simulator's ground truth: the active
//! instance's node is lost mid-ingestion and the standby takes over with nothing applied twice
//! and nothing lost; a new standby bootstraps from a backup plus the changelog; an old active
//! instance that comes back is fenced by the broker and writes nothing.

use tandem_testkit as common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tandem_sim::SimConfig;

use common::truth::{assert_complete_report_matches_truth, assert_matches_truth};
use common::{free_port, read_changelog, wait_for, Broker, Daemon, SimulatedRun};

const DEADLINE: Duration = Duration::from_secs(180);
const ADMIN_TOKEN: &str = "failover-admin-token";
/// The group id of `write_config`: the changelog topic's default name follows from it.
const CHANGELOG: &str = "tandem-test.changelog";

/// One instance of the deployment: its own store and port, the shared backups.
struct Instance {
    config: PathBuf,
    port: u16,
    log: PathBuf,
    store: PathBuf,
}

fn instance(run: &SimulatedRun, root: &Path, name: &str, backups: &Path) -> Instance {
    let directory = root.join(name);
    std::fs::create_dir_all(&directory).unwrap();
    let port = free_port();
    // Fsynced batches of 250: ingestion is still going when the node is lost.
    let config = run.config(&directory, port, 250, true);
    let listen = format!("listen = \"127.0.0.1:{port}\"");
    let mut toml = std::fs::read_to_string(&config).unwrap().replace(
        &listen,
        &format!("{listen}\nadmin_token = \"{ADMIN_TOKEN}\""),
    );
    toml.push_str(&format!(
        "\n[replication]\ninstance = \"{name}\"\nsession_timeout = \"6s\"\n\n[backup]\ntarget = \"{}\"\ninterval = \"1h\"\n",
        backups.display()
    ));
    std::fs::write(&config, toml).unwrap();
    Instance {
        config,
        port,
        log: directory.join("tandem.log"),
        store: directory.join("store"),
    }
}

impl Instance {
    fn start(&self) -> Daemon {
        Daemon::start(&self.config, self.port, &self.log)
    }
}

fn replication(daemon: &Daemon) -> serde_json::Value {
    daemon.get("/v1/replication")
}

fn wait_for_role(daemon: &Daemon, role: &str, deadline: Duration) -> serde_json::Value {
    wait_for(&format!("the role {role}"), deadline, || {
        let view = replication(daemon);
        (view["role"] == role).then_some(view)
    })
}

fn applied(daemon: &Daemon) -> u64 {
    let report = daemon.report();
    report.ingest.source.events_applied + report.ingest.target.events_applied
}

fn post(daemon: &Daemon, path: &str, body: &str) -> (u16, String) {
    daemon.post(path, ADMIN_TOKEN, body)
}

#[test]
fn the_standby_takes_over_when_the_active_node_is_lost_and_a_new_standby_catches_up() {
    let run = SimulatedRun::start("failover", &SimConfig::sized(43, 1_500));
    let distinct = run.distinct;
    let root = tempfile::tempdir().unwrap();
    let backups = root.path().join("backups");
    let a = instance(&run, root.path(), "a", &backups);
    let b = instance(&run, root.path(), "b", &backups);
    let c = instance(&run, root.path(), "c", &backups);

    let active = a.start();
    wait_for_role(&active, "active", DEADLINE);
    let standby = b.start();
    let view = wait_for_role(&standby, "standby", DEADLINE);
    assert_eq!(view["instance"], "b");

    // The standby serves reads and refuses changes.
    wait_for("the standby to apply a replicated batch", DEADLINE, || {
        (applied(&standby) > 0).then_some(())
    });
    let (status, body) = post(&standby, "/v1/reevaluate", r#"{"reason": "test"}"#);
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("standby"), "{body}");
    assert_ne!(standby.readiness(), 200);
    assert_eq!(active.readiness(), 200);
    // Both export the replication series the shipped alerts ask for, in a form promtool
    // accepts: the role is 1 for the role each instance has.
    let alerts = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ops/prometheus/alerts.yaml"),
    )
    .unwrap();
    for (daemon, role) in [(&active, "active"), (&standby, "standby")] {
        let metrics = daemon.metrics();
        common::assert_promtool_accepts_metrics(&metrics);
        assert!(
            metrics.contains(&format!("tandem_replication_role{{role=\"{role}\"}} 1")),
            "{metrics}"
        );
        for name in ["tandem_replication_role", "tandem_replication_lag_messages"] {
            assert!(alerts.contains(name), "the alerts no longer ask for {name}");
            assert!(
                metrics.contains(&format!("# TYPE {name} gauge")),
                "{metrics}"
            );
        }
    }

    wait_for("a quarter of the events applied", DEADLINE, || {
        (applied(&active) >= distinct / 4).then_some(())
    });
    // The node is gone: the process killed mid-ingestion, its disk with it.
    let killed_at_applied = applied(&active);
    active.kill();
    let killed = Instant::now();
    std::fs::remove_dir_all(&a.store).unwrap();
    assert!(
        killed_at_applied < distinct,
        "ingestion was over before the node was lost"
    );

    let taken_over = wait_for_role(&standby, "active", DEADLINE);
    let before = applied(&standby);
    wait_for("the new active instance to consume", DEADLINE, || {
        (applied(&standby) > before).then_some(())
    });
    let takeover = killed.elapsed();
    assert!(
        takeover < Duration::from_secs(30),
        "consuming again took {takeover:?} after the active instance died"
    );
    assert!(taken_over["epoch"].as_i64().unwrap() > 0);
    eprintln!("takeover: consuming again {takeover:?} after SIGKILL");

    // Nothing lost, nothing applied twice: every distinct event once (wait_for_applied fails
    // on more), and the simulator's truth.
    let report = standby.wait_for_applied(distinct, DEADLINE);
    assert_matches_truth(&standby, &report, &run.scenario.truth);

    // A new node: a backup of the new active one, then a standby with an empty disk that
    // starts from it and replays the changelog from the backup's position.
    let (status, body) = post(&standby, "/v1/backups", "{}");
    assert_eq!(status, 201, "{body}");
    let replacement = c.start();
    let caught_up = wait_for("the new standby to catch up", DEADLINE, || {
        let view = replication(&replacement);
        let active_view = replication(&standby);
        (view["role"] == "standby" && view["position"] == active_view["position"]).then_some(view)
    });
    assert!(caught_up["position"].as_i64().unwrap() > 0);
    let new_log = std::fs::read_to_string(&c.log).unwrap();
    assert!(new_log.contains("restored the newest backup"), "{new_log}");
    let copy = replacement.report();
    assert_eq!(
        copy.ingest.source.events_applied + copy.ingest.target.events_applied,
        distinct
    );
    // A standby's counters follow its store, which only the changelog writes: every
    // distinct event, as the simulator counts them.
    let metrics = replacement.metrics();
    let counted: u64 = metrics
        .lines()
        .filter(|line| line.starts_with("tandem_events_applied_total{"))
        .map(|line| line.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(counted, distinct, "{metrics}");
    // The copy holds the active instance's position, so its report covers every event.
    assert_complete_report_matches_truth(&replacement, &copy, &run.scenario.truth);
}

#[test]
fn an_old_active_instance_that_returns_is_fenced_and_writes_nothing() {
    let run = SimulatedRun::start("fenced", &SimConfig::sized(44, 1_200));
    let distinct = run.distinct;
    let root = tempfile::tempdir().unwrap();
    let backups = root.path().join("backups");
    let a = instance(&run, root.path(), "a", &backups);
    let b = instance(&run, root.path(), "b", &backups);

    let old = a.start();
    wait_for_role(&old, "active", DEADLINE);
    let new = b.start();
    wait_for_role(&new, "standby", DEADLINE);
    wait_for("some events applied", DEADLINE, || {
        (applied(&old) >= distinct / 5).then_some(())
    });

    // The active instance stalls (a long pause, a partitioned node): its session expires and
    // the standby takes over while the old one still believes it is active.
    let pid = old.pid();
    signal(pid, "STOP");
    let view = wait_for_role(&new, "active", DEADLINE);
    let epoch = view["epoch"].as_i64().unwrap();
    signal(pid, "CONT");

    // The old one finds out at its next write or heartbeat, steps down and exits.
    let mut old = old;
    let exit = old.wait_exit(DEADLINE);
    assert!(!exit.success(), "a fenced instance exits with a failure");
    let log = std::fs::read_to_string(&a.log).unwrap();
    assert!(log.contains("stepping down"), "{log}");

    // The broker's log of committed changelog messages: after the new epoch's marker, only
    // the new active instance wrote.
    let report = new.wait_for_applied(distinct, DEADLINE);
    assert_matches_truth(&new, &report, &run.scenario.truth);
    let changelog = read_changelog(run.broker.bootstrap(), CHANGELOG);
    let marker = changelog
        .iter()
        .find(|entry| entry.offset == epoch)
        .expect("the takeover marker is committed");
    assert_eq!(
        (marker.kind.as_str(), marker.instance.as_str()),
        ("takeover", "b")
    );
    let after: Vec<_> = changelog
        .iter()
        .filter(|entry| entry.offset > epoch)
        .collect();
    assert!(after.iter().any(|entry| entry.kind == "batch"));
    assert!(
        after.iter().all(|entry| entry.instance == "b"),
        "the fenced instance committed after the takeover: {after:?}"
    );

    // A cutover step taken on the active instance is a store write like any other: the
    // standby has it too.
    let (status, body) = post(
        &new,
        "/v1/cutover/freeze",
        r#"{"reason": "rehearsal", "by": "release-manager"}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        new.get::<serde_json::Value>("/v1/cutover")["phase"],
        "frozen"
    );

    // Started again on its stale store, it follows as a standby and catches up.
    let returned = a.start();
    let caught_up = wait_for(
        "the old instance to catch up as a standby",
        DEADLINE,
        || {
            let view = replication(&returned);
            (view["role"] == "standby" && view["position"] == replication(&new)["position"])
                .then_some(view)
        },
    );
    assert_eq!(caught_up["instance"], "a");
    assert_eq!(applied(&returned), distinct);
    assert_eq!(
        returned.get::<serde_json::Value>("/v1/cutover")["phase"],
        "frozen"
    );
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}
