//! Backups on a real S3-compatible server (moto's) while tandem ingests a simulated run from
//! Apache Kafka: a backup taken mid-ingestion, the node lost, the store restored elsewhere,
//! and the daemon on the restored store reaches the simulator's ground truth with every
//! distinct event applied once.

use tandem_testkit as common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use tandem_sim::SimConfig;

use common::s3::S3Server;
use common::truth::assert_matches_truth;
use common::{free_port, tandem_binary, wait_for, Daemon, SimulatedRun};

const DEADLINE: Duration = Duration::from_secs(180);
const SECRET_VARIABLE: &str = "TANDEM_TEST_S3_SECRET";
const ADMIN_TOKEN: &str = "backup-admin-token";

fn tandem(arguments: &[&str]) -> std::process::Output {
    Command::new(tandem_binary())
        .args(arguments)
        .env(SECRET_VARIABLE, common::s3::SECRET_ACCESS_KEY)
        .env_remove("TANDEM_CONFIG")
        .env_remove("TANDEM_URL")
        .env("TANDEM_TOKEN", ADMIN_TOKEN)
        .output()
        .expect("the tandem binary runs")
}

fn text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn applied(daemon: &Daemon) -> u64 {
    let report = daemon.report();
    report.ingest.source.events_applied + report.ingest.target.events_applied
}

#[test]
fn a_store_restored_from_s3_after_the_node_is_lost_resumes_and_reaches_the_truth() {
    let run = SimulatedRun::start("backups", &SimConfig::sized(41, 2_500));
    let distinct = run.distinct;
    let s3 = S3Server::start("tandem-backups");

    let directory = tempfile::tempdir().unwrap();
    let port = free_port();
    // Small fsynced batches: ingestion is still going when the backup is taken.
    let config = run.config(directory.path(), port, 50, true);
    let listen = format!("listen = \"127.0.0.1:{port}\"");
    let mut toml = std::fs::read_to_string(&config).unwrap().replace(
        &listen,
        &format!("{listen}\nadmin_token = \"{ADMIN_TOKEN}\""),
    );
    toml.push_str(&s3.backup_toml("prod/tandem", SECRET_VARIABLE));
    std::fs::write(&config, &toml).unwrap();
    let config_arg = config.to_str().unwrap();
    let url = format!("http://127.0.0.1:{port}");

    let daemon = Daemon::start_with_env(
        &config,
        port,
        &directory.path().join("tandem.log"),
        &[(SECRET_VARIABLE, common::s3::SECRET_ACCESS_KEY)],
    );
    // The first backup is taken at start.
    let at_start: serde_json::Value = wait_for("the backup taken at start", DEADLINE, || {
        let listed: serde_json::Value = daemon.get("/v1/backups");
        (listed["backups"]
            .as_array()
            .is_some_and(|backups| !backups.is_empty()))
        .then_some(listed)
    });
    assert_eq!(at_start["configured"], true);
    assert_eq!(at_start["target"], "s3://tandem-backups/prod/tandem");

    wait_for("a quarter of the events applied", DEADLINE, || {
        (applied(&daemon) >= distinct / 4).then_some(())
    });
    let taken = tandem(&["backup", "now", "--url", &url, "--format", "json"]);
    assert!(taken.status.success(), "{}", text(&taken));
    let taken: serde_json::Value = serde_json::from_slice(&taken.stdout).unwrap();
    let in_backup = taken["events_applied"].as_u64().unwrap();
    assert!(
        in_backup >= distinct / 4 && in_backup < distinct,
        "the backup holds {in_backup} of {distinct} events: not mid-ingestion"
    );
    // Later table files are new, earlier ones are not sent again.
    assert!(taken["uploaded_bytes"].as_u64().unwrap() < taken["bytes"].as_u64().unwrap());

    // The age of the last good backup is exported: the newest backup's time.
    let metrics = ureq::get(&format!("{url}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let last_success: f64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("tandem_backup_last_success_timestamp_seconds "))
        .expect("the backup metric is exported")
        .parse()
        .unwrap();
    let created_at = time::OffsetDateTime::parse(
        taken["created_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!((last_success - created_at.unix_timestamp_nanos() as f64 / 1e9).abs() < 0.001);

    // The node is gone: the process killed, its disk with it.
    daemon.kill();
    std::fs::remove_dir_all(directory.path().join("store")).unwrap();

    // The objects the manifests name are in the bucket, once each (keys read from the
    // server's own listing).
    let keys = s3.keys("prod/tandem/");
    let manifests: Vec<&String> = keys
        .iter()
        .filter(|key| key.ends_with("/manifest.json"))
        .collect();
    assert_eq!(manifests.len(), 2, "{keys:?}");
    let listed = tandem(&["backup", "list", "--config", config_arg, "--format", "json"]);
    assert!(listed.status.success(), "{}", text(&listed));
    let ids: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[0], taken["id"].as_str().unwrap(), "newest first");
    let verified = tandem(&["backup", "verify", "--config", config_arg]);
    assert!(verified.status.success(), "{}", text(&verified));

    // Restored elsewhere, with the target and credentials of the configuration.
    let restored = directory.path().join("restored-store");
    let restore = tandem(&[
        "restore",
        "--config",
        config_arg,
        "--store",
        restored.to_str().unwrap(),
    ]);
    assert!(restore.status.success(), "{}", text(&restore));
    assert!(
        text(&restore).contains(&format!("restored backup {}", ids[0])),
        "{}",
        text(&restore)
    );

    // A daemon on the restored store starts from the backup's state and offsets: with the
    // broker holding everything, every distinct event is applied once and the report is the
    // simulator's truth.
    let restored_config = directory.path().join("restored.toml");
    std::fs::write(
        &restored_config,
        toml.replace(
            &format!("path = \"{}\"", directory.path().join("store").display()),
            &format!("path = \"{}\"", restored.display()),
        ),
    )
    .unwrap();
    let daemon = Daemon::start_with_env(
        &restored_config,
        port,
        &directory.path().join("restored.log"),
        &[(SECRET_VARIABLE, common::s3::SECRET_ACCESS_KEY)],
    );
    let first_report = daemon.report();
    let resumed_at =
        first_report.ingest.source.events_applied + first_report.ingest.target.events_applied;
    assert!(
        resumed_at >= in_backup,
        "the restored store starts with {resumed_at} events applied, the backup held {in_backup}"
    );
    let report = daemon.wait_for_applied(distinct, DEADLINE);
    assert_matches_truth(&daemon, &report, &run.scenario.truth);

    // A damaged object: verification names the file and fails.
    let manifest_key = format!("prod/tandem/backups/{}/manifest.json", ids[0]);
    assert!(keys.contains(&manifest_key), "{keys:?}");
    // The server serves objects to signed requests only: the manifest is read by an S3 client.
    let target = tandem_backup::Target::open(
        "s3://tandem-backups/prod/tandem",
        &tandem_backup::S3Settings {
            endpoint: Some(s3.endpoint.clone()),
            region: Some("us-east-1".to_owned()),
            allow_http: true,
            access_key_id: Some(common::s3::ACCESS_KEY_ID.to_owned()),
            secret_access_key: Some(common::s3::SECRET_ACCESS_KEY.to_owned()),
        },
    )
    .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let manifest = runtime
        .block_on(tandem_backup::manifest(&target, &ids[0]))
        .unwrap();
    let damaged = manifest
        .files
        .iter()
        .find(|file| file.name.ends_with(".sst"))
        .unwrap();
    let objects: BTreeSet<String> = keys
        .iter()
        .filter(|key| key.contains("/objects/"))
        .cloned()
        .collect();
    let object = format!("prod/tandem/objects/{}", damaged.sha256);
    assert!(objects.contains(&object), "{object} not in {objects:?}");
    s3.put_object(&object, b"not the table file");
    let verified = tandem(&[
        "backup", "verify", "--config", config_arg, "--backup", &ids[0],
    ]);
    assert_eq!(verified.status.code(), Some(1), "{}", text(&verified));
    assert!(
        text(&verified).contains(&damaged.name),
        "{}",
        text(&verified)
    );

    // The secret is in no log and no output.
    for log in ["tandem.log", "restored.log"] {
        let written = std::fs::read_to_string(directory.path().join(log)).unwrap();
        assert!(
            !written.contains(common::s3::SECRET_ACCESS_KEY),
            "{log} shows the secret"
        );
    }
    let checked = tandem(&["check-config", config_arg, "--format", "json"]);
    assert!(checked.status.success(), "{}", text(&checked));
    assert!(!text(&checked).contains(common::s3::SECRET_ACCESS_KEY));
}

/// A backup taken, then the node lost while the source changed, and retention deleted those
/// changes before the restored daemon came up: the restored daemon resumes at the backup's
/// offsets, finds them gone, and says so. Every record known on the partition is unverified,
/// never in sync (worked out by hand as in `broker_losses.rs`).
#[test]
fn a_restored_store_reports_what_the_broker_deleted_since_the_backup_as_lost() {
    use common::{contact_status, minute, produce_json, source_contact, target_contact};
    use common::{Broker, ContactConfig, Kafka, Topics};
    use tandem_core::Status;

    let topics = Topics::unique("restore-loss");
    let kafka = Kafka::start(&[
        (&topics.source, 1),
        (&topics.target, 1),
        (&topics.dead_letters, 1),
    ]);
    let directory = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut contacts = ContactConfig::new(kafka.bootstrap(), &topics, port);
    contacts.admin_token = Some(ADMIN_TOKEN.to_owned());
    let config = contacts.write(directory.path());
    let backups = directory.path().join("backups");
    let mut toml = std::fs::read_to_string(&config).unwrap();
    toml.push_str(&format!(
        "\n[backup]\ntarget = \"{}\"\ninterval = \"1h\"\n",
        backups.display()
    ));
    std::fs::write(&config, &toml).unwrap();
    let url = format!("http://127.0.0.1:{port}");

    // Three contacts copied right: source and target offsets 0-2.
    let email = |n: u32| format!("c{n}@x.io");
    let creates: Vec<serde_json::Value> = (1..=3)
        .map(|n| source_contact(&format!("s{n}"), n, "create", &minute(0), &email(n)))
        .collect();
    let copies: Vec<serde_json::Value> = (1..=3)
        .map(|n| target_contact(&format!("t{n}"), n, "create", &minute(1), &email(n)))
        .collect();
    produce_json(kafka.bootstrap(), &topics.source, &creates);
    produce_json(kafka.bootstrap(), &topics.target, &copies);
    let daemon = Daemon::start(&config, port, &directory.path().join("tandem.log"));
    daemon.wait_for_applied(6, DEADLINE);
    let taken = tandem(&["backup", "now", "--url", &url, "--format", "json"]);
    assert!(taken.status.success(), "{}", text(&taken));
    let taken: serde_json::Value = serde_json::from_slice(&taken.stdout).unwrap();
    assert_eq!(taken["events_applied"], 6);
    daemon.kill();
    std::fs::remove_dir_all(directory.path().join("store")).unwrap();

    // Meanwhile the source changes L1 and L2 (offsets 3-4), retention deletes them, and L4
    // is created and copied (source offset 5, target offset 3).
    produce_json(
        kafka.bootstrap(),
        &topics.source,
        &[
            source_contact("s-change-1", 1, "update", &minute(10), "new1@x.io"),
            source_contact("s-change-2", 2, "update", &minute(10), "new2@x.io"),
        ],
    );
    assert_eq!(kafka.delete_records(&topics.source, 0, 5), 5);
    produce_json(
        kafka.bootstrap(),
        &topics.source,
        &[source_contact("s4", 4, "create", &minute(11), &email(4))],
    );
    produce_json(
        kafka.bootstrap(),
        &topics.target,
        &[target_contact("t4", 4, "create", &minute(12), &email(4))],
    );

    let restored = directory.path().join("restored");
    let restore = tandem(&[
        "restore",
        "--from",
        backups.to_str().unwrap(),
        "--store",
        restored.to_str().unwrap(),
    ]);
    assert!(restore.status.success(), "{}", text(&restore));
    assert!(
        text(&restore).contains(&format!(
            "{} partition 0: consumption resumes at offset 3",
            topics.source
        )),
        "{}",
        text(&restore)
    );
    std::fs::write(
        &config,
        toml.replace(
            &format!("path = \"{}\"", directory.path().join("store").display()),
            &format!("path = \"{}\"", restored.display()),
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&config, port, &directory.path().join("restored.log"));
    // 6 from the backup, then L4 on both sides.
    let report = daemon.wait_for_applied(8, DEADLINE);
    let losses = &report.feed.source.lost_offsets;
    assert_eq!(losses.len(), 1, "{losses:?}");
    assert_eq!(
        (
            losses[0].first_offset,
            losses[0].last_offset,
            losses[0].count,
            losses[0].kind.as_str()
        ),
        (3, 4, Some(2), "deleted_before_read")
    );
    assert!(report.feed.target.lost_offsets.is_empty());
    for number in 1..=3 {
        assert_eq!(
            contact_status(&daemon, number),
            Some(Status::Unverified),
            "L{number}"
        );
    }
    assert_eq!(
        contact_status(&daemon, 4),
        Some(Status::InSync),
        "L4 came whole after the loss"
    );
}
