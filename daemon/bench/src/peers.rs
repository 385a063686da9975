//! (i) What users would pick instead of tandem, side by side with it on the same data.
//!
//! One contact per record in both systems: the legacy CRM's create and the new CRM's copy,
//! one in ten with its last name wrong (the failed-migration case).
//! - reladiff, the hash-bisection diff a data team runs today, diffs the mapped columns of
//!   the two final states, loaded into two DuckDB files.
//! - tandem reads the two million events that describe those states from Apache Kafka.
//! - Then 1,000 of the wrong copies are repaired in the new CRM: tandem's verdict follows
//!   their events, reladiff must diff both tables again.
//! - The Kafka Streams reconciler a Kafka team would write reads the same topics on the same
//!   broker, with tandem stopped.
//!
//! Every verdict is checked against the construction (which records differ), not against
//! another's.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientConfig, ClientContext};
use serde_json::{json, Value};

use tandem_testkit::{Broker, Kafka};

use crate::daemon_process::{free_port, DaemonProcess};

const SOURCE_TOPIC: &str = "bench.peer.source";
const TARGET_TOPIC: &str = "bench.peer.target";
const PARTITIONS: i32 = 16;
/// One record in this many has a wrong copy.
const WRONG_EVERY: usize = 10;
/// Wrong copies repaired after the first verdict.
const REPAIRS: usize = 1_000;
/// The mapped columns, as both final states hold them.
const COLUMNS: [&str; 3] = ["email", "first_name", "last_name"];
/// Longer than any phase takes: tandem stopped or lost events.
const DEADLINE: Duration = Duration::from_secs(1800);

/// What the phase measured.
pub(crate) struct PeerFigures {
    pub(crate) records: usize,
    pub(crate) reladiff_seconds: f64,
    pub(crate) tandem_seconds: f64,
    pub(crate) reladiff_again_seconds: f64,
    pub(crate) tandem_update_seconds: f64,
    pub(crate) tandem_peak_rss_mib: f64,
    /// Events the Kafka Streams reconciler read: the pair's and the repairs.
    pub(crate) streams_events: usize,
    pub(crate) streams: crate::streams::StreamsFigures,
}

/// One record's mapped values: (email, first name, last name in the legacy CRM, last name
/// in the new CRM).
fn values(number: usize, repaired: bool) -> [String; 4] {
    let last = format!("Last-{number}");
    let copied = if number % WRONG_EVERY == 0 && !(repaired && is_repaired(number)) {
        format!("Wrong-{number}")
    } else {
        last.clone()
    };
    [
        format!("c{number}@example.com"),
        format!("First-{number}"),
        last,
        copied,
    ]
}

/// The records whose wrong copy is repaired: the first [`REPAIRS`] wrong ones.
fn is_repaired(number: usize) -> bool {
    number % WRONG_EVERY == 0 && number / WRONG_EVERY < REPAIRS
}

fn wrong(records: usize, repaired: bool) -> u64 {
    let wrong = records.div_ceil(WRONG_EVERY);
    (if repaired {
        wrong - REPAIRS.min(wrong)
    } else {
        wrong
    }) as u64
}

/// Runs the phase on `records` records (at least 10 × [`REPAIRS`]).
pub(crate) fn side_by_side(binary: &str, records: usize) -> anyhow::Result<PeerFigures> {
    let records = records.max(WRONG_EVERY * REPAIRS);
    let bin = tandem_testkit::cache_dir().join("bench-python/bin");
    let (python, reladiff) = (bin.join("python"), bin.join("reladiff"));
    if !reladiff.is_file() {
        bail!(
            "{} is missing: run scripts/setup.sh bench (make bench does)",
            reladiff.display()
        );
    }
    let directory = tempfile::tempdir()?;

    // The final states, in DuckDB.
    let started = Instant::now();
    let legacy = directory.path().join("legacy.duckdb");
    let target = directory.path().join("target.duckdb");
    load_duckdb(&python, directory.path(), &legacy, records, |number| {
        let [email, first, last, _] = values(number, false);
        [email, first, last]
    })?;
    load_duckdb(&python, directory.path(), &target, records, |number| {
        let [email, first, _, copied] = values(number, false);
        [email, first, copied]
    })?;
    println!(
        "(i) loaded the two final states of {records} contacts into DuckDB in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let reladiff_seconds = run_reladiff(&reladiff, &legacy, &target, wrong(records, false))?;
    println!("(i) reladiff: full diff in {reladiff_seconds:.1} s");

    // The events, in Apache Kafka.
    let kafka = Kafka::start(&[
        (SOURCE_TOPIC, PARTITIONS),
        (TARGET_TOPIC, PARTITIONS),
        ("bench.dlq", 1),
    ]);
    let brokers = kafka.bootstrap().to_owned();
    let started = Instant::now();
    produce(
        &brokers,
        (0..records).flat_map(|number| {
            let [email, first, last, copied] = values(number, false);
            [
                (
                    SOURCE_TOPIC,
                    format!("R-{number}"),
                    json!({"event_id": format!("s{number}"), "entity": "contact",
                        "id": format!("R-{number}"), "external_id": format!("R-{number}"),
                        "op": "create", "occurred_at": "2026-11-20T08:00:00Z", "version": 1,
                        "fields": {"Email": email, "FirstName": first, "LastName": last}}),
                ),
                (
                    TARGET_TOPIC,
                    format!("T-{number}"),
                    json!({"event_id": format!("t{number}"), "entity": "contact",
                        "id": format!("T-{number}"), "op": "create",
                        "occurred_at": "2026-11-20T08:01:00Z", "version": 1,
                        "fields": {"legacy_id": format!("R-{number}"), "email": email,
                            "firstname": first, "lastname": copied}}),
                ),
            ]
        }),
    )?;
    println!(
        "(i) produced the {} events that describe them in {:.1} s",
        2 * records,
        started.elapsed().as_secs_f64()
    );
    let port = free_port()?;
    let config = config(directory.path(), &brokers, port)?;
    let started = Instant::now();
    let daemon = DaemonProcess::start(binary, &config, port, &directory.path().join("tandem.log"))?;
    // Asked every 50 ms: the report must not slow what it measures.
    wait_for_verdict(
        &daemon,
        (2 * records as u64, records as u64, wrong(records, false)),
        Duration::from_millis(50),
        started,
    )?;
    let tandem_seconds = started.elapsed().as_secs_f64();
    println!("(i) tandem: first complete verdict in {tandem_seconds:.1} s from its start");

    // 1,000 repairs, timed from the broker's acknowledgement of the last (as reladiff's run
    // again is timed from the moment the tables hold them).
    produce(
        &brokers,
        (0..records)
            .filter(|number| is_repaired(*number))
            .map(|number| {
                let [email, first, last, _] = values(number, true);
                (
                    TARGET_TOPIC,
                    format!("T-{number}"),
                    json!({"event_id": format!("t{number}-repair"), "entity": "contact",
                    "id": format!("T-{number}"), "op": "update",
                    "occurred_at": "2026-11-20T08:02:00Z", "version": 2,
                    "fields": {"legacy_id": format!("R-{number}"), "email": email,
                        "firstname": first, "lastname": last}}),
                )
            }),
    )?;
    let started = Instant::now();
    wait_for_verdict(
        &daemon,
        (
            2 * records as u64 + REPAIRS as u64,
            records as u64,
            wrong(records, true),
        ),
        Duration::from_millis(2),
        started,
    )?;
    let tandem_update_seconds = started.elapsed().as_secs_f64();
    println!(
        "(i) tandem: verdict after {REPAIRS} repairs in {:.0} ms from their acknowledgement",
        tandem_update_seconds * 1e3
    );
    let tandem_peak_rss_mib = daemon.peak_rss_mib()?;
    drop(daemon);

    let repaired = wrong(records, true);
    let streams = crate::streams::reconcile(
        &kafka,
        SOURCE_TOPIC,
        TARGET_TOPIC,
        &crate::streams::Verdict {
            in_sync: records as u64 - repaired,
            mismatch: repaired,
        },
        directory.path(),
        DEADLINE,
    )?;
    let streams_events = 2 * records + REPAIRS;
    println!(
        "(i) Kafka Streams: verdict on the {streams_events} events in {:.1} s",
        streams.seconds
    );
    drop(kafka);

    load_duckdb(&python, directory.path(), &target, records, |number| {
        let [email, first, _, copied] = values(number, true);
        [email, first, copied]
    })?;
    let reladiff_again_seconds = run_reladiff(&reladiff, &legacy, &target, wrong(records, true))?;
    println!("(i) reladiff: diff again in {reladiff_again_seconds:.1} s");
    Ok(PeerFigures {
        records,
        reladiff_seconds,
        tandem_seconds,
        reladiff_again_seconds,
        tandem_update_seconds,
        tandem_peak_rss_mib,
        streams_events,
        streams,
    })
}

/// One entity, its three mapped fields compared as they are; no grace, so that a verdict
/// is final as soon as both copies are read.
fn config(directory: &Path, brokers: &str, port: u16) -> anyhow::Result<PathBuf> {
    let path = directory.join("tandem.toml");
    std::fs::write(
        &path,
        format!(
            r#"[kafka]
brokers = "{brokers}"
group_id = "bench-peer"
dead_letter_topic = "bench.dlq"

[store]
path = "{store}"

[api]
listen = "127.0.0.1:{port}"

[systems.source]
topics = ["{SOURCE_TOPIC}"]

[systems.target]
topics = ["{TARGET_TOPIC}"]

[reconcile]
grace = "0s"
idle_clock = false

[log]
level = "warn"

[[entities]]
name = "contact"
join = {{ source = "external_id", target = "field:legacy_id" }}
fields = [
  {{ source = "Email", target = "email" }},
  {{ source = "FirstName", target = "firstname" }},
  {{ source = "LastName", target = "lastname" }},
]
"#,
            store = directory.join("store").display(),
        ),
    )?;
    Ok(path)
}

/// Waits until `applied` events are applied and the `records` contacts have their verdict:
/// `wrong` mismatched, the rest in sync, none pending. Asks `/v1/report` every `every`.
fn wait_for_verdict(
    daemon: &DaemonProcess,
    (applied, records, wrong): (u64, u64, u64),
    every: Duration,
    started: Instant,
) -> anyhow::Result<()> {
    let mut last_print = Instant::now();
    loop {
        let report = daemon.get_json("/v1/report")?;
        let done = crate::phases::applied(&report);
        let by_status = &report["entities"]["contact"]["by_status"];
        let count = |status: &str| by_status[status].as_u64().unwrap_or(0);
        if done == applied && count("mismatch") == wrong && count("in_sync") == records - wrong {
            return Ok(());
        }
        if done > applied {
            bail!("tandem applied {done} events, more than the {applied} produced");
        }
        if last_print.elapsed() > Duration::from_secs(10) {
            println!("(i) … tandem applied {done} of {applied} events");
            last_print = Instant::now();
        }
        if started.elapsed() > DEADLINE {
            bail!("tandem gave no complete verdict within {DEADLINE:?}: {by_status}");
        }
        std::thread::sleep(every);
    }
}

/// Writes one system's final state as CSV and loads it into the table `contacts` of a DuckDB
/// file, replacing what it held.
fn load_duckdb(
    python: &Path,
    directory: &Path,
    database: &Path,
    records: usize,
    row: impl Fn(usize) -> [String; 3],
) -> anyhow::Result<()> {
    let csv = directory.join("state.csv");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&csv)?);
    writeln!(file, "id,{}", COLUMNS.join(","))?;
    for number in 0..records {
        // The generated values hold no comma, quote or newline.
        writeln!(file, "R-{number},{}", row(number).join(","))?;
    }
    file.into_inner()?.sync_all()?;
    let script = "import duckdb, sys\n\
        con = duckdb.connect(sys.argv[1])\n\
        con.execute('CREATE OR REPLACE TABLE contacts AS SELECT * FROM read_csv(?, header = true, all_varchar = true)', [sys.argv[2]])\n\
        con.execute('ALTER TABLE contacts ADD PRIMARY KEY (id)')\n\
        con.close()\n";
    let output = Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(database)
        .arg(&csv)
        .output()
        .context("running DuckDB's Python module")?;
    if !output.status.success() {
        bail!(
            "loading {} into DuckDB failed: {}",
            database.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// reladiff's full diff of the mapped columns, timed; fails unless it found exactly `wrong`
/// updated rows and no row on one side only.
fn run_reladiff(reladiff: &Path, legacy: &Path, target: &Path, wrong: u64) -> anyhow::Result<f64> {
    let mut command = Command::new(reladiff);
    command
        .arg(format!("duckdb://{}", legacy.display()))
        .arg("contacts")
        .arg(format!("duckdb://{}", target.display()))
        .arg("contacts")
        .args(["--key-columns", "id"]);
    for column in COLUMNS {
        command.args(["--columns", column]);
    }
    command.args(["--stats", "--json"]);
    let started = Instant::now();
    let output = command.output().context("running reladiff")?;
    let seconds = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "reladiff failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // The JSON object may be folded over several lines.
    let text: String = stdout.lines().collect();
    let stats: Value = text
        .find('{')
        .zip(text.rfind('}'))
        .and_then(|(start, end)| serde_json::from_str(&text[start..=end]).ok())
        .with_context(|| format!("reladiff printed no JSON statistics: {stdout}"))?;
    let found = (
        stats["updated"].as_u64(),
        stats["exclusive_A"].as_u64(),
        stats["exclusive_B"].as_u64(),
    );
    if found != (Some(wrong), Some(0), Some(0)) {
        bail!("reladiff found {stats}, not {wrong} updated rows and none on one side only");
    }
    Ok(seconds)
}

/// Delivery failures, counted.
#[derive(Default)]
struct Failures(AtomicU64);

impl ClientContext for Failures {}

impl ProducerContext for Failures {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_err() {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Produces `events` (topic, key, value) and waits until the broker acknowledged every one.
fn produce(
    brokers: &str,
    events: impl Iterator<Item = (&'static str, String, Value)>,
) -> anyhow::Result<()> {
    let producer: BaseProducer<Failures> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("enable.idempotence", "true")
        .set("compression.type", "lz4")
        // As Java producers (Kafka Connect, Debezium) place keys: the Kafka Streams peer's
        // join needs the source topic partitioned as its repartition topics are.
        .set("partitioner", "murmur2_random")
        .create_with_context(Failures::default())?;
    for (topic, key, value) in events {
        let payload = serde_json::to_vec(&value)?;
        loop {
            let record = BaseRecord::<str, [u8]>::to(topic)
                .key(&key)
                .payload(&payload);
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    producer.poll(Duration::from_millis(5));
                }
                Err((error, _)) => return Err(error.into()),
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(120))?;
    let failed = producer.context().0.load(Ordering::Relaxed);
    if failed > 0 {
        bail!("the broker refused {failed} events");
    }
    Ok(())
}
