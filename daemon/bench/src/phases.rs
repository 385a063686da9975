//! The measured phases of the benchmark.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tandem_core::{Input, Mapping, Planner};
use tandem_sim::GroundTruth;
use tandem_store::{Commit, Coordinates, LoggedMessage, NextOffset, Store, StoreOptions};

use crate::daemon_process::{free_port, DaemonProcess};
use crate::{PARTITIONS, SOURCE_TOPIC, TARGET_TOPIC};

const BATCH: usize = 2_000;

fn consumer(brokers: &str, group: &str) -> anyhow::Result<BaseConsumer> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for topic in [SOURCE_TOPIC, TARGET_TOPIC] {
        for partition in 0..PARTITIONS {
            assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
        }
    }
    consumer.assign(&assignment)?;
    Ok(consumer)
}

/// (a) Reads every message and drops it: the broker's and librdkafka's ceiling.
pub(crate) fn consume_and_discard(brokers: &str, expected: usize) -> anyhow::Result<f64> {
    let consumer = consumer(brokers, "bench-discard")?;
    let mut seen = 0usize;
    let mut bytes = 0usize;
    let mut started = None;
    while seen < expected {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message?;
            started.get_or_insert_with(Instant::now);
            bytes += message.payload().map_or(0, <[u8]>::len);
            seen += 1;
        }
    }
    let seconds = started.map_or(0.0, |started| started.elapsed().as_secs_f64());
    println!(
        "(a) consumed and discarded {seen} messages ({:.0} MiB) in {seconds:.2} s",
        bytes as f64 / 1048576.0
    );
    Ok(seen as f64 / seconds)
}

/// (b) Consumes, decodes, and puts each event into RocksDB in batches with the WAL on.
pub(crate) fn durable_log(brokers: &str, expected: usize) -> anyhow::Result<f64> {
    let directory = tempfile::tempdir()?;
    let mut options = rocksdb::Options::default();
    options.create_if_missing(true);
    let db = rocksdb::DB::open(&options, directory.path())?;
    let consumer = consumer(brokers, "bench-log")?;
    let mut seen = 0usize;
    let mut started = None;
    let mut batch = rocksdb::WriteBatch::default();
    while seen < expected {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message?;
            started.get_or_insert_with(Instant::now);
            let payload = message.payload().unwrap_or_default();
            let decoded = tandem_core::event::decode(Some(payload), 1 << 20);
            let mut key = message.topic().as_bytes().to_vec();
            key.extend_from_slice(&message.partition().to_be_bytes());
            key.extend_from_slice(&message.offset().to_be_bytes());
            batch.put(&key, if decoded.is_ok() { payload } else { b"" });
            seen += 1;
            if batch.len() >= BATCH {
                db.write(std::mem::take(&mut batch))?;
            }
        }
    }
    db.write(batch)?;
    let seconds = started.map_or(0.0, |started| started.elapsed().as_secs_f64());
    println!("(b) logged {seen} messages durably in {seconds:.2} s");
    Ok(seen as f64 / seconds)
}

pub(crate) struct EndToEnd {
    pub(crate) rate: f64,
    pub(crate) p50: String,
    pub(crate) p90: String,
    pub(crate) p99: String,
    pub(crate) peak_rss_mib: f64,
    pub(crate) matches_truth: bool,
}

pub(crate) fn config(
    directory: &Path,
    brokers: &str,
    port: u16,
    source: &str,
    target: &str,
) -> anyhow::Result<std::path::PathBuf> {
    let path = directory.join("tandem.toml");
    std::fs::write(
        &path,
        format!(
            "[kafka]\nbrokers = \"{brokers}\"\ngroup_id = \"bench-tandem\"\ndead_letter_topic = \"bench.dlq\"\n\n[store]\npath = \"{}\"\n\n[api]\nlisten = \"127.0.0.1:{port}\"\n\n[systems.source]\ntopics = [\"{source}\"]\n\n[systems.target]\ntopics = [\"{target}\"]\n\n[reconcile]\nidle_clock = false\n\n[log]\nlevel = \"warn\"\n\n{}",
            directory.join("store").display(),
            tandem_sim::entities_toml()
        ),
    )?;
    Ok(path)
}

/// Events applied, both systems.
pub(crate) fn applied(report: &serde_json::Value) -> u64 {
    report["ingest"]["source"]["events_applied"]
        .as_u64()
        .unwrap_or(0)
        + report["ingest"]["target"]["events_applied"]
            .as_u64()
            .unwrap_or(0)
}

/// (c) The real daemon, from its first applied batch to its last.
pub(crate) fn tandem_end_to_end(
    binary: &str,
    brokers: &str,
    distinct: u64,
    truth: &GroundTruth,
) -> anyhow::Result<EndToEnd> {
    let directory = tempfile::tempdir()?;
    let port = free_port()?;
    let config = config(directory.path(), brokers, port, SOURCE_TOPIC, TARGET_TOPIC)?;
    let daemon = DaemonProcess::start(binary, &config, port, &directory.path().join("tandem.log"))?;
    let mut first = None;
    let mut last_print = Instant::now();
    let report = loop {
        let report = daemon.get_json("/v1/report")?;
        let done = applied(&report);
        if done > 0 {
            first.get_or_insert_with(Instant::now);
        }
        if done >= distinct {
            break report;
        }
        if last_print.elapsed() > Duration::from_secs(5) {
            println!("(c) … {done} of {distinct} events applied");
            last_print = Instant::now();
        }
        if first.is_none_or(|first: Instant| first.elapsed() < Duration::from_secs(1800)) {
            std::thread::sleep(Duration::from_millis(50));
        } else {
            bail!("tandem did not finish within 30 minutes");
        }
    };
    let seconds = first.map_or(0.0, |first| first.elapsed().as_secs_f64());
    let messages = distinct
        + report["ingest"]["source"]["duplicates_dropped"]
            .as_u64()
            .unwrap_or(0)
        + report["ingest"]["target"]["duplicates_dropped"]
            .as_u64()
            .unwrap_or(0)
        + report["ingest"]["dead_lettered"].as_u64().unwrap_or(0);
    println!(
        "(c) tandem applied {distinct} distinct events ({messages} messages) in {seconds:.2} s"
    );
    let mut matches_truth = true;
    for (entity, expected) in &truth.entities {
        for (status, count) in &expected.by_status {
            if report["entities"][*entity]["by_status"][*status].as_u64() != Some(*count) {
                matches_truth = false;
            }
        }
    }
    let metrics = daemon.get_text("/metrics")?;
    let (p50, p90, p99) = (
        quantile(&metrics, 0.5),
        quantile(&metrics, 0.9),
        quantile(&metrics, 0.99),
    );
    Ok(EndToEnd {
        rate: messages as f64 / seconds,
        p50,
        p90,
        p99,
        peak_rss_mib: daemon.peak_rss_mib()?,
        matches_truth,
    })
}

/// The upper bound of the histogram bucket holding quantile `q` of batch apply latency.
fn quantile(metrics: &str, q: f64) -> String {
    let buckets: Vec<(String, f64)> = metrics
        .lines()
        .filter_map(|line| line.strip_prefix("tandem_batch_apply_seconds_bucket{le=\""))
        .filter_map(|rest| {
            let (bound, count) = rest.split_once("\"} ")?;
            Some((bound.to_owned(), count.trim().parse().ok()?))
        })
        .collect();
    let total = buckets.last().map_or(0.0, |(_, count)| *count);
    buckets
        .iter()
        .find(|(_, count)| *count >= q * total)
        .map(|(bound, _)| match bound.parse::<f64>() {
            Ok(seconds) => format!("{:.1} ms", seconds * 1e3),
            Err(_) => bound.clone(),
        })
        .unwrap_or_else(|| "n/a".to_owned())
}

pub(crate) struct ReportLatency {
    pub(crate) records: u64,
    /// The store's size on disk with those records, settled (compacted), in bytes.
    pub(crate) store_bytes: u64,
    /// Backup, incremental backup and restore of that store.
    pub(crate) backup: BackupFigures,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) peak_rss_mib: f64,
    /// The re-evaluation of every stored record at start (the filled store was never
    /// evaluated with the configured rules): records, seconds, records per second.
    pub(crate) reevaluated: u64,
    pub(crate) reevaluation_seconds: f64,
    pub(crate) reevaluation_rate: f64,
}

/// (d) Fills a store with `records` records (both sides, one in ten differing in a field)
/// through the planner, starts the daemon, which evaluates every record again with the
/// configured rules before anything else (the fill did not record them), and times that and
/// `/v1/report`.
pub(crate) fn report_latency(
    binary: &str,
    brokers: &str,
    records: usize,
) -> anyhow::Result<ReportLatency> {
    let directory = tempfile::tempdir()?;
    let config_path = config(
        directory.path(),
        brokers,
        free_port()?,
        "bench.report.source",
        "bench.report.target",
    )?;
    let config = tandem::config::Config::load(
        &config_path,
        &tandem::config::Environment::Map(Default::default()),
    )?;
    let mapping: Mapping = config.mapping()?;
    let started = Instant::now();
    {
        let store = Store::open(&config.store.path, &StoreOptions::default())?;
        let entities = ["contact", "company", "deal"];
        let mut offset = 0i64;
        let mut next_record = 0usize;
        while next_record < records {
            let batch_records = (BATCH / 2).min(records - next_record);
            // Per record: the source's create, then the target's copy of every mapped field
            // (one in ten with one value changed).
            let payloads: Vec<(tandem_core::System, Vec<u8>)> = (0..batch_records)
                .flat_map(|index| {
                    let number = next_record + index;
                    let entity = entities[number % 3];
                    let rules = &mapping.entity(entity).expect("the sim's entities are mapped").fields;
                    let mut source = serde_json::Map::new();
                    let mut target = serde_json::Map::new();
                    for (position, rule) in rules.iter().enumerate() {
                        // Values each rule agrees on: a mapped stage, a time written in two
                        // zones, the record's company (the one numbered just before a deal),
                        // text otherwise.
                        let (value, copied) = if let Some((from, to)) =
                            rule.map.as_ref().and_then(|map| map.iter().next())
                        {
                            (serde_json::json!(from), serde_json::json!(to))
                        } else if rule.reference.is_some() {
                            let company = number.saturating_sub(1);
                            (serde_json::json!(format!("R-{company}")), serde_json::json!(format!("T-{company}")))
                        } else if rule.compare.as_deref() == Some("timestamp") {
                            (serde_json::json!("2026-11-20T03:00:00-05:00"), serde_json::json!("2026-11-20T08:00:00Z"))
                        } else {
                            let value = serde_json::json!(format!("{}-{number}", rule.source));
                            (value.clone(), value)
                        };
                        source.insert(rule.source.first().to_owned(), value);
                        let held = if number % 10 == 0 && position == 0 {
                            serde_json::json!("changed")
                        } else {
                            copied
                        };
                        target.insert(rule.target.clone(), held);
                    }
                    target.insert("legacy_id".to_owned(), serde_json::json!(format!("R-{number}")));
                    [
                        (tandem_core::System::Source, serde_json::json!({
                            "event_id": format!("fill-s{number}"), "entity": entity, "id": format!("R-{number}"),
                            "external_id": format!("R-{number}"), "op": "create", "occurred_at": "2026-11-20T08:00:00Z",
                            "fields": source
                        })),
                        (tandem_core::System::Target, serde_json::json!({
                            "event_id": format!("fill-t{number}"), "entity": entity, "id": format!("T-{number}"),
                            "op": "create", "occurred_at": "2026-11-20T08:01:00Z", "fields": target
                        })),
                    ]
                    .map(|(system, event)| (system, serde_json::to_vec(&event).expect("JSON values encode")))
                })
                .collect();
            let count = payloads.len();
            let events: Vec<_> = payloads
                .iter()
                .map(|(_, payload)| tandem_core::event::decode(Some(payload), 1 << 20))
                .collect();
            let coordinates: Vec<_> = (0..count as i64)
                .map(|index| Coordinates {
                    topic: "bench.fill".to_owned(),
                    partition: 0,
                    offset: offset + index,
                })
                .collect();
            let mut planner = Planner::new(
                &mapping,
                config.reconcile.grace,
                &store,
                store.apply_state()?,
            );
            for ((system, _), event) in payloads.iter().zip(&events) {
                let event = event.as_ref().map_err(|error| anyhow::anyhow!("{error}"))?;
                planner
                    .apply(Input::Event {
                        system: *system,
                        event,
                        partition: Some(("bench.fill", 0)),
                    })
                    .map_err(|error| anyhow::anyhow!("{error}"))?;
            }
            let plan = planner.finish();
            let logged: Vec<_> = (0..count)
                .map(|index| {
                    LoggedMessage::new(
                        &coordinates[index],
                        payloads[index].0,
                        &payloads[index].1,
                        &events[index],
                    )
                })
                .collect();
            offset += count as i64;
            next_record += batch_records;
            store.commit(&Commit {
                messages: &logged,
                plan: &plan,
                offsets: &[("bench.fill", 0, NextOffset(offset))],
                committed_at: tandem_core::Timestamp::from_unix_nanos(0),
                publish_violations: false,
            })?;
        }
    }
    println!(
        "(d) stored {records} records through the planner in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    {
        // A daemon restarted after a rules change finds a settled store, not one still
        // compacting a bulk fill: settle it first, so that (e) measures the re-evaluation.
        let compacting = Instant::now();
        Store::open(&config.store.path, &StoreOptions::default())?.compact()?;
        println!(
            "(d) compacted the filled store in {:.1} s",
            compacting.elapsed().as_secs_f64()
        );
    }
    let port = config.api.listen.port();
    let daemon = DaemonProcess::start(
        binary,
        &config_path,
        port,
        &directory.path().join("tandem.log"),
    )?;
    let first = loop {
        let report = daemon.get_json("/v1/report")?;
        if !report["last_reevaluation"].is_null() {
            break report;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let stored = first["totals"]["records"]
        .as_u64()
        .context("report without totals")?;
    let reevaluation = &first["last_reevaluation"];
    let reevaluated = reevaluation["done"].as_u64().unwrap_or(0);
    let reevaluation_seconds = match (
        reevaluation["started_at"]
            .as_str()
            .map(tandem_core::Timestamp::parse_rfc3339),
        reevaluation["finished_at"]
            .as_str()
            .map(tandem_core::Timestamp::parse_rfc3339),
    ) {
        (Some(Ok(started)), Some(Ok(finished))) => {
            (finished.unix_nanos() - started.unix_nanos()) as f64 / 1e9
        }
        _ => f64::NAN,
    };
    let mut latencies = Vec::new();
    for _ in 0..200 {
        let started = Instant::now();
        daemon.get_json("/v1/report")?;
        latencies.push(started.elapsed().as_secs_f64() * 1e3);
    }
    latencies.sort_by(f64::total_cmp);
    let peak_rss_mib = daemon.peak_rss_mib()?;
    drop(daemon);
    let (store_bytes, backup) = backup_figures(&config.store.path, directory.path())?;
    Ok(ReportLatency {
        records: stored,
        store_bytes,
        backup,
        p50_ms: latencies[latencies.len() / 2],
        p99_ms: latencies[latencies.len() * 99 / 100],
        peak_rss_mib,
        reevaluated,
        reevaluation_seconds,
        reevaluation_rate: reevaluated as f64 / reevaluation_seconds,
    })
}

/// (g) What backups cost for the store of (d): a full backup to a directory, a second one
/// with nothing changed (what incremental saves), and a restore, each file checked.
pub(crate) struct BackupFigures {
    pub(crate) full_seconds: f64,
    pub(crate) bytes: u64,
    pub(crate) files: usize,
    pub(crate) second_seconds: f64,
    pub(crate) second_uploaded_bytes: u64,
    pub(crate) restore_seconds: f64,
}

fn backup_figures(store_path: &Path, directory: &Path) -> anyhow::Result<(u64, BackupFigures)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let store = Store::open(store_path, &StoreOptions::default())?;
    let store_bytes = store.approximate_size_bytes();
    let target_dir = directory.join("backups");
    let target = tandem_backup::Target::open(
        target_dir.to_str().context("a UTF-8 temporary path")?,
        &Default::default(),
    )?;
    let backups = tandem_backup::Backups::new(store.clone(), target.clone(), 2);
    let started = Instant::now();
    let full = runtime.block_on(backups.run())?;
    let full_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let second = runtime.block_on(backups.run())?;
    let second_seconds = started.elapsed().as_secs_f64();
    drop(backups);
    drop(store);
    let restored = directory.join("restored");
    let started = Instant::now();
    runtime.block_on(tandem_backup::restore(&target, None, &restored, |_| {}))?;
    let restore_seconds = started.elapsed().as_secs_f64();
    Ok((
        store_bytes,
        BackupFigures {
            full_seconds,
            bytes: full.bytes,
            files: full.files.len(),
            second_seconds,
            second_uploaded_bytes: second.uploaded_bytes,
            restore_seconds,
        },
    ))
}
