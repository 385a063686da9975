//! (i) The peer a Kafka team would write instead: a minimal Kafka Streams reconciler
//! (`daemon/bench/peers/kafka-streams`, exactly-once v2, RocksDB stores), reading the topics
//! tandem read, on the same broker, until its counts per status give the verdict tandem gave.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use tandem_testkit::{Broker, Kafka};

/// What the run measured.
pub(crate) struct StreamsFigures {
    pub(crate) seconds: f64,
    pub(crate) peak_rss_mib: f64,
}

/// The reconciler's verdict to wait for: counts per status.
pub(crate) struct Verdict {
    pub(crate) in_sync: u64,
    pub(crate) mismatch: u64,
}

/// Runs the reconciler on `source` and `target` from their beginning until its counts are
/// `verdict`; the time from its start.
pub(crate) fn reconcile(
    kafka: &Kafka,
    source: &str,
    target: &str,
    verdict: &Verdict,
    directory: &Path,
    deadline: Duration,
) -> anyhow::Result<StreamsFigures> {
    let home = tandem_testkit::cache_dir().join("bench-streams");
    let classes = home.join("build/classes");
    if !classes.is_dir() {
        bail!(
            "{} is missing: run scripts/setup.sh bench (make bench does)",
            classes.display()
        );
    }
    let counts_topic = "bench.peer.streams-counts";
    kafka.create_topics(&[(counts_topic, 1)]);
    let counts = counts_consumer(kafka.bootstrap(), counts_topic)?;
    let log_path = directory.join("streams.log");
    let started = Instant::now();
    let mut child = Command::new("java")
        .arg("-cp")
        .arg(format!(
            "{}:{}/*",
            classes.display(),
            home.join("libs").display()
        ))
        .arg("-Dorg.slf4j.simpleLogger.defaultLogLevel=warn")
        .arg("tandem.bench.StreamsReconciler")
        .arg(kafka.bootstrap())
        .arg("bench-peer-streams")
        .arg(source)
        .arg(target)
        .arg(counts_topic)
        .arg(directory.join("streams-state"))
        // One stream thread per core, as the machine has.
        .arg(
            std::thread::available_parallelism()
                .map_or(1, usize::from)
                .to_string(),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path)?)
        .spawn()
        .context("starting java (Java 17, which make setup installs)")?;
    let outcome = wait_for_counts(&mut child, &counts, verdict, started, deadline);
    let peak_rss_mib = crate::daemon_process::peak_rss_mib(child.id()).unwrap_or(0.0);
    let _ = child.kill();
    let _ = child.wait();
    match outcome {
        Ok(seconds) => Ok(StreamsFigures {
            seconds,
            peak_rss_mib,
        }),
        Err(error) => {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            bail!(
                "{error}\nthe reconciler's log ends:\n{}",
                lines[lines.len().saturating_sub(20)..].join("\n")
            )
        }
    }
}

/// Reads the counts topic (committed transactions only) from its beginning.
fn counts_consumer(brokers: &str, topic: &str) -> anyhow::Result<BaseConsumer> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "bench-peer-counts")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, 0, Offset::Beginning)?;
    consumer.assign(&assignment)?;
    Ok(consumer)
}

/// Follows the latest count of each status until they are `verdict`; seconds from `started`.
fn wait_for_counts(
    child: &mut Child,
    counts: &BaseConsumer,
    verdict: &Verdict,
    started: Instant,
    deadline: Duration,
) -> anyhow::Result<f64> {
    let mut latest: BTreeMap<String, u64> = BTreeMap::new();
    let mut last_print = Instant::now();
    loop {
        if let Some(message) = counts.poll(Duration::from_millis(20)) {
            let message = message?;
            let status = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
            let count = message
                .payload()
                .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
                .map_or(0, u64::from_be_bytes);
            latest.insert(status, count);
            let count = |status: &str| latest.get(status).copied().unwrap_or(0);
            if count("in_sync") == verdict.in_sync
                && count("mismatch") == verdict.mismatch
                && count("missing_in_source") == 0
                && count("missing_in_target") == 0
            {
                return Ok(started.elapsed().as_secs_f64());
            }
        }
        if let Some(status) = child.try_wait()? {
            bail!("the Kafka Streams reconciler exited ({status}) before its verdict");
        }
        if last_print.elapsed() > Duration::from_secs(10) {
            println!("(i) … Kafka Streams counts so far: {latest:?}");
            last_print = Instant::now();
        }
        if started.elapsed() > deadline {
            bail!("the Kafka Streams reconciler gave no complete verdict within {deadline:?}: {latest:?}");
        }
    }
}
