//! `make bench`: tandem's durable end-to-end rate against two baselines measured in the same
//! run on the same broker and the same events: (a) consume and discard, (b) a minimal durable
//! log (consume, decode, one RocksDB put per event, WAL on). Then apply latency, `/v1/report`
//! latency with a million records stored, peak memory of the daemon, the time a restarted
//! daemon takes to consume again on Apache Kafka, how fresh its answers are under load, and
//! how soon it knows whether two CRMs agree next to what users would pick instead: reladiff,
//! the diff a data team runs today, and a Kafka Streams reconciler.

mod daemon_process;
mod freshness;
mod peers;
mod phases;
mod restart;
mod streams;

use std::time::Instant;

use anyhow::Context;
use rdkafka::mocking::MockCluster;
use tandem_sim::{generate, SimConfig};

/// The same allocator as the daemon, so the baselines are measured on equal terms.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SOURCE_TOPIC: &str = "bench.source.changes";
const TARGET_TOPIC: &str = "bench.target.changes";
const PARTITIONS: i32 = 64;
const TARGET_EVENTS: usize = 1_000_000;
const REPORT_RECORDS: usize = 1_000_000;
/// The pair diffed by reladiff and reconciled by tandem in (i).
const PEER_RECORDS: usize = 1_000_000;

fn main() -> anyhow::Result<()> {
    let tandem = std::env::var("TANDEM_BIN")
        .context("TANDEM_BIN must name the release `tandem` binary (make bench sets it)")?;
    if std::env::var_os("TANDEM_BENCH_ONLY_RESTART").is_some() {
        return restart_phase(&tandem);
    }
    if std::env::var_os("TANDEM_BENCH_ONLY_FRESHNESS").is_some() {
        return freshness_phase(&tandem);
    }
    if std::env::var_os("TANDEM_BENCH_ONLY_PEERS").is_some() {
        return peer_phase(&tandem);
    }
    println!("tandem bench: (a) to (e) on librdkafka's mock cluster, {TARGET_EVENTS} simulated events, {PARTITIONS} partitions per topic; (f), (h) and (i) on Apache Kafka\n");
    if std::env::var_os("TANDEM_BENCH_ONLY_REPORT").is_some() {
        // Profiling aid: only the store fill and report phase.
        let cluster = MockCluster::new(1)?;
        let report = phases::report_latency(&tandem, &cluster.bootstrap_servers(), REPORT_RECORDS)?;
        println!(
            "(d) /v1/report with {} records: p50 {:.2} ms",
            report.records, report.p50_ms
        );
        println!(
            "(e) re-evaluation: {} records in {:.1} s = {:.0} records/s",
            report.reevaluated, report.reevaluation_seconds, report.reevaluation_rate
        );
        print_store_and_backup(&report);
        return Ok(());
    }

    let cluster = MockCluster::new(1).context("starting the mock cluster")?;
    for topic in [SOURCE_TOPIC, TARGET_TOPIC] {
        cluster.create_topic(topic, PARTITIONS, 1)?;
    }
    cluster.create_topic("bench.dlq", 1, 1)?;
    let brokers = cluster.bootstrap_servers();

    // Few updates per record keeps each partition under the mock cluster's 5 MiB.
    let mut sim = SimConfig::sized(2026, 1);
    sim.partitions = PARTITIONS;
    sim.updates_per_record = 1.0;
    let per_record = {
        let probe = generate(&{
            let mut probe = sim.clone();
            for count in probe.records.values_mut() {
                *count = 2_000;
            }
            probe
        });
        probe.messages.len() as f64 / 6_000.0
    };
    // TANDEM_BENCH_EVENTS shrinks the run for quick comparisons while tuning.
    let target_events: usize = std::env::var("TANDEM_BENCH_EVENTS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(TARGET_EVENTS);
    let per_entity = (target_events as f64 / per_record / 3.0).round() as usize;
    for count in sim.records.values_mut() {
        *count = per_entity;
    }
    let started = Instant::now();
    let scenario = generate(&sim);
    let messages = scenario.messages.len();
    let distinct: u64 = scenario.truth.events_applied.values().sum();
    println!(
        "generated {messages} messages ({distinct} distinct events) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    tandem::simkafka::produce(
        &brokers,
        SOURCE_TOPIC,
        TARGET_TOPIC,
        &scenario.messages,
        |_| {},
    )?;
    println!(
        "produced them in {:.1} s\n",
        started.elapsed().as_secs_f64()
    );
    let truth = scenario.truth.clone();
    drop(scenario);

    let bare = phases::consume_and_discard(&brokers, messages)?;
    let log = phases::durable_log(&brokers, messages)?;
    let end_to_end = phases::tandem_end_to_end(&tandem, &brokers, distinct, &truth)?;
    let report = phases::report_latency(
        &tandem,
        &brokers,
        if target_events < TARGET_EVENTS {
            10_000
        } else {
            REPORT_RECORDS
        },
    )?;

    println!("\n== results ==");
    println!("(a) consume and discard      {:>10.0} messages/s", bare);
    println!("(b) minimal durable log      {:>10.0} messages/s  (decode + 1 RocksDB put per event, WAL on)", log);
    println!("(c) tandem end to end        {:>10.0} messages/s  (durable: log, indexes, records, aggregates, offsets)", end_to_end.rate);
    println!(
        "    c/a = {:.2}   c/b = {:.2}",
        end_to_end.rate / bare,
        end_to_end.rate / log
    );
    println!(
        "    batch apply latency       p50 ≤ {}  p90 ≤ {}  p99 ≤ {}  (histogram bucket bounds)",
        end_to_end.p50, end_to_end.p90, end_to_end.p99
    );
    println!(
        "    daemon peak RSS           {:.0} MiB",
        end_to_end.peak_rss_mib
    );
    println!(
        "    report equals ground truth: {}",
        if end_to_end.matches_truth {
            "yes"
        } else {
            "NO"
        }
    );
    println!("(d) /v1/report with {} records stored: p50 {:.2} ms  p99 {:.2} ms  (daemon peak RSS {:.0} MiB)", report.records, report.p50_ms, report.p99_ms, report.peak_rss_mib);
    println!(
        "(e) re-evaluation of every stored record: {} records in {:.1} s = {:.0} records/s  (aim: 500,000/s)",
        report.reevaluated, report.reevaluation_seconds, report.reevaluation_rate
    );
    print_store_and_backup(&report);
    drop(cluster);
    restart_phase(&tandem)?;
    freshness_phase(&tandem)?;
    peer_phase(&tandem)
}

/// (i) reladiff and Kafka Streams, side by side, on Apache Kafka.
fn peer_phase(tandem: &str) -> anyhow::Result<()> {
    // TANDEM_BENCH_PEER_RECORDS shrinks the pair while tuning.
    let records = std::env::var("TANDEM_BENCH_PEER_RECORDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(PEER_RECORDS);
    println!("\n(i) reladiff, Kafka Streams and tandem on a pair of {records} contacts, one in ten differing...");
    let peer = peers::side_by_side(tandem, records)?;
    println!(
        "(i) first complete verdict on {} contacts (one in ten differing): tandem from {} events {:.1} s, reladiff's full diff {:.1} s: tandem takes {:.2}× reladiff's time  (aim: < 1)",
        peer.records,
        2 * peer.records,
        peer.tandem_seconds,
        peer.reladiff_seconds,
        peer.tandem_seconds / peer.reladiff_seconds
    );
    println!(
        "(i) after 1,000 repairs: tandem's verdict {:.0} ms after the broker acknowledged them, reladiff's diff again {:.1} s: tandem {:.0}× sooner  (aim: ≥ 100×)",
        peer.tandem_update_seconds * 1e3,
        peer.reladiff_again_seconds,
        peer.reladiff_again_seconds / peer.tandem_update_seconds
    );
    let tandem_rate = (2 * peer.records) as f64 / peer.tandem_seconds;
    let streams_rate = peer.streams_events as f64 / peer.streams.seconds;
    println!(
        "(i) end to end on the same broker, from start to complete verdict: tandem {:.0} events/s (peak RSS {:.0} MiB), Kafka Streams (exactly-once v2, RocksDB) {:.0} events/s (peak RSS {:.0} MiB): tandem {:.2}× it  (aim: ≥ 2×)",
        tandem_rate,
        peer.tandem_peak_rss_mib,
        streams_rate,
        peer.streams.peak_rss_mib,
        tandem_rate / streams_rate
    );
    Ok(())
}

/// (h), on Apache Kafka.
fn freshness_phase(tandem: &str) -> anyhow::Result<()> {
    println!(
        "\n(h) freshness: produce acknowledged → visible in /v1/records, under a steady load..."
    );
    // TANDEM_BENCH_PROBES shortens the phase while tuning.
    let probes = std::env::var("TANDEM_BENCH_PROBES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(100);
    let figures = freshness::freshness(tandem, &[100, 10_000], probes)?;
    for figure in figures {
        println!(
            "(h) freshness at {:>6} events/s: p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms over {} probes  (aim at 10,000/s: p99 < 200 ms)",
            figure.rate, figure.p50_ms, figure.p99_ms, figure.max_ms, figure.probes
        );
    }
    Ok(())
}

/// (g): the store's size per record, and what backing it up and restoring it take.
fn print_store_and_backup(report: &phases::ReportLatency) {
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let backup = &report.backup;
    println!(
        "(g) store on disk with {} records: {:.0} MiB = {:.0} bytes per record (settled); daemon peak RSS / records = {:.0} bytes (fixed costs included)",
        report.records,
        mib(report.store_bytes),
        report.store_bytes as f64 / report.records.max(1) as f64,
        report.peak_rss_mib * 1024.0 * 1024.0 / report.records.max(1) as f64
    );
    println!(
        "(g) backup to a directory: {:.0} MiB in {} files in {:.1} s ({:.0} MiB/s); again with nothing changed: {:.2} s, {:.2} MiB sent; restore with every file checked: {:.1} s",
        mib(backup.bytes),
        backup.files,
        backup.full_seconds,
        mib(backup.bytes) / backup.full_seconds.max(1e-9),
        backup.second_seconds,
        mib(backup.second_uploaded_bytes),
        backup.restore_seconds
    );
}

/// (f), on Apache Kafka.
fn restart_phase(tandem: &str) -> anyhow::Result<()> {
    println!("\n(f) restart to consuming on Apache Kafka (default 45 s session timeout)...");
    let restart = restart::restart_to_consuming(tandem)?;
    let median = |values: &[f64]| {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() / 2]
    };
    let max = |values: &[f64]| values.iter().copied().fold(0.0, f64::max);
    println!(
        "(f) restart to first applied event: after SIGKILL median {:.2} s (max {:.2} s), after SIGTERM median {:.2} s (max {:.2} s); without static membership {:.1} s ({:.0}x slower)  (aim: < 5 s)",
        median(&restart.after_sigkill),
        max(&restart.after_sigkill),
        median(&restart.after_sigterm),
        max(&restart.after_sigterm),
        restart.without_static_membership,
        restart.without_static_membership / median(&restart.after_sigkill).max(1e-9)
    );
    Ok(())
}
