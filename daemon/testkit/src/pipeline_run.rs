//! The pipeline's stages, shared by its test (`make test`, a short run) and `make pipeline`
//! (a longer run to watch): after each behaviour a connector may show, tandem's report equals
//! what SQL over both databases says ([`crate::pipeline_truth::check_against_sql`]).

use tandem_api::report::Report;

use crate::connect::KafkaConnect;
use crate::kafka::Kafka;
use crate::pipeline::{connector_config, create_topics, tandem_config, wait_emitted, Crm, Crms};
use crate::pipeline_truth::check_against_sql;
use crate::pipeline_workload::{SyncFaults, SyncJob, Workload};
use crate::postgres::Postgres;
use crate::{free_port, Daemon};

/// The admin token of the pipeline's daemon.
pub const ADMIN: &str = "admin-token-of-the-pipeline-run";

/// How much the simulated people write.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    /// Companies, contacts and deals of the legacy CRM at the start.
    pub companies: usize,
    pub contacts: usize,
    pub deals: usize,
    /// Changes users make in a round.
    pub changes: usize,
    /// Writes of the web form (and fixes of the repair job) in a round.
    pub rogue: usize,
}

impl Sizes {
    /// A few hundred records: `make test`.
    pub fn short() -> Sizes {
        Sizes {
            companies: 40,
            contacts: 200,
            deals: 150,
            changes: 40,
            rogue: 5,
        }
    }

    /// Thousands of records: `make pipeline`.
    pub fn long() -> Sizes {
        Sizes {
            companies: 300,
            contacts: 3_000,
            deals: 2_000,
            changes: 600,
            rogue: 40,
        }
    }
}

/// Everything the pipeline runs on, kept alive for the caller.
pub struct Pipeline {
    pub kafka: Kafka,
    pub postgres: Postgres,
    pub connect: KafkaConnect,
    pub crms: Crms,
    pub workload: Workload,
    pub daemon: Daemon,
    pub directory: tempfile::TempDir,
}

/// Runs every stage; `observe` sees each stage's name and report once it equals SQL.
pub fn run(sizes: Sizes, mut observe: impl FnMut(&str, &Report)) -> Pipeline {
    let mut stage =
        |name: &str, kafka: &Kafka, daemon: &Daemon, crms: &mut Crms, workload: &Workload| {
            let report = check_against_sql(name, kafka, daemon, crms, workload);
            observe(name, &report);
            report
        };
    let kafka = Kafka::start(&[]);
    create_topics(&kafka);
    let postgres = Postgres::start();
    let mut crms = Crms::create(&postgres);
    let mut workload = Workload::new(2026);
    let mut sync = SyncJob::new(
        12,
        SyncFaults {
            skip_rate: 0.1,
            shift_rate: 0.1,
            cents_rate: 0.15,
        },
    );
    // The migration: the legacy CRM's data, copied by the sync layer with its faults, and a
    // web form already writing into the new CRM.
    workload.create_legacy(
        &mut crms.legacy,
        sizes.companies,
        sizes.contacts,
        sizes.deals,
    );
    sync.run_once(&mut crms);
    workload.rogue(&mut crms.new, sizes.rogue * 2);

    let directory = tempfile::tempdir().expect("a temporary directory");
    let port = free_port();
    let config = tandem_config(directory.path(), &kafka, port, ADMIN);
    let mut daemon = Daemon::start(&config, port, &directory.path().join("tandem.log"));
    daemon.token = Some(ADMIN.to_owned());

    // 1. The connectors' initial snapshots (`op: r`) while users and the sync layer keep
    //    writing. What the web form wrote before the connectors existed is state the snapshots
    //    show, not writes a change stream carries: it is no violation (tandem judges writes).
    let mut connect = KafkaConnect::start(&kafka);
    for crm in [Crm::Legacy, Crm::New] {
        connect.put_connector(crm.connector(), &connector_config(crm, &postgres, &kafka));
    }
    workload.change_legacy(&mut crms.legacy, sizes.changes);
    sync.run_once(&mut crms);
    for crm in [Crm::Legacy, Crm::New] {
        // A marker streams after the snapshot, which ends before streaming starts.
        wait_emitted(&kafka, &mut crms, crm, 0);
    }
    workload.rogue_writes.clear();
    for _ in 0..3 {
        workload.change_legacy(&mut crms.legacy, sizes.changes);
        sync.run_once(&mut crms);
        workload.rogue(&mut crms.new, sizes.rogue);
        workload.repair(&mut crms, sizes.rogue);
    }
    stage(
        "initial snapshot with live changes",
        &kafka,
        &daemon,
        &mut crms,
        &workload,
    );

    // 2. The Connect worker is killed mid-stream and restarted: the connectors resume from
    //    their committed offsets; nothing is applied twice.
    workload.change_legacy(&mut crms.legacy, sizes.changes);
    connect.kill();
    workload.change_legacy(&mut crms.legacy, sizes.changes);
    sync.run_once(&mut crms);
    connect.restart();
    for crm in [Crm::Legacy, Crm::New] {
        connect.wait_running(crm.connector());
    }
    sync.run_once(&mut crms);
    let report = stage("connector restart", &kafka, &daemon, &mut crms, &workload);
    assert_eq!(report.ingest.dead_lettered, 0, "every real message decodes");

    // 3. A primary key change (delete of the old key, create of the new one), and a column
    //    added to a table mid-stream.
    crms.legacy
        .batch_execute(
            "UPDATE contacts SET id = id + 1000000, last_modified_by = 'user:ann'
                 WHERE id IN (SELECT id FROM contacts ORDER BY id LIMIT 3);
             ALTER TABLE contacts ADD COLUMN phone text;
             UPDATE contacts SET phone = '+1 555 0100', last_modified_by = 'user:bo'
                 WHERE id IN (SELECT id FROM contacts ORDER BY id DESC LIMIT 5);",
        )
        .expect("the statement runs");
    workload.change_legacy(&mut crms.legacy, sizes.changes);
    sync.run_once(&mut crms);
    stage(
        "primary key change and a new column",
        &kafka,
        &daemon,
        &mut crms,
        &workload,
    );

    // 4. The sync layer stops for a while, then catches up.
    for _ in 0..2 {
        workload.change_legacy(&mut crms.legacy, sizes.changes);
        workload.rogue(&mut crms.new, sizes.rogue);
    }
    stage("sync layer stopped", &kafka, &daemon, &mut crms, &workload);
    sync.run_once(&mut crms);
    stage(
        "sync layer caught up",
        &kafka,
        &daemon,
        &mut crms,
        &workload,
    );

    // 5. Events lost: while tandem is stopped, the legacy contacts change and the broker
    //    deletes those events. tandem finds the loss, asks Debezium (signals) for a blocking
    //    snapshot of the table and to read the unverified contacts again, and heals.
    assert!(daemon.terminate().success());
    workload.change_legacy(&mut crms.legacy, sizes.changes);
    sync.run_once(&mut crms);
    let topic = Crm::Legacy.topic("contacts");
    let ends = wait_emitted(&kafka, &mut crms, Crm::Legacy, 1000);
    kafka.delete_records(&topic, 0, ends[&format!("{topic}/0")]);
    let mut daemon = Daemon::start(&config, port, &directory.path().join("tandem.log"));
    daemon.token = Some(ADMIN.to_owned());
    let report = stage(
        "events lost and healed by Debezium",
        &kafka,
        &daemon,
        &mut crms,
        &workload,
    );
    let losses = &report.feed.source.lost_offsets;
    assert!(
        losses
            .iter()
            .any(|loss| loss.topic == topic && loss.healed_at.is_some()),
        "the loss was found and healed: {losses:?}"
    );
    let completed = report.feed.source.snapshots["contact"]
        .last_completed
        .as_ref()
        .expect("the blocking snapshot completed");
    assert_eq!(
        completed.records,
        crms.legacy
            .query_one("SELECT count(*) FROM contacts", &[])
            .expect("a count")
            .get::<_, i64>(0) as u64,
        "the run ended with the table's rows"
    );

    // 6. TRUNCATE: the whole table is emptied without naming its rows.
    crms.legacy
        .batch_execute("TRUNCATE opportunities")
        .expect("the statement runs");
    sync.run_once(&mut crms);
    workload.create_legacy(&mut crms.legacy, 0, 0, 5);
    sync.run_once(&mut crms);
    stage("truncate", &kafka, &daemon, &mut crms, &workload);

    Pipeline {
        kafka,
        postgres,
        connect,
        crms,
        workload,
        daemon,
        directory,
    }
}
