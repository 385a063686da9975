//! (h) Freshness on Apache Kafka: how long a change takes from its produce acknowledgement until
//! `/v1/records` shows it, while a steady background load runs through the same daemon.
//!
//! A background thread produces full images of 10,000 source contacts at a fixed rate. Every
//! 100 ms the probe produces a change of one other contact with a value never used before,
//! waits for the broker's acknowledgement, then asks `/v1/records` every millisecond until the
//! value is there. The figure is the time between the acknowledgement and that answer: what
//! a user reading tandem sees of a change the broker already holds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{
    BaseProducer, BaseRecord, DefaultProducerContext, DeliveryResult, Producer, ProducerContext,
};
use rdkafka::{ClientConfig, ClientContext};

use tandem_testkit::{Broker, Kafka};

use crate::daemon_process::{free_port, DaemonProcess};

const SOURCE_TOPIC: &str = "bench.fresh.source";
const TARGET_TOPIC: &str = "bench.fresh.target";
const PARTITIONS: i32 = 16;
const BACKGROUND_RECORDS: u64 = 10_000;
const PROBE_EVERY: Duration = Duration::from_millis(100);
const WARM_UP: Duration = Duration::from_secs(2);
/// A probe not visible after this long fails the phase: tandem lost it or stopped.
const PROBE_DEADLINE: Duration = Duration::from_secs(30);

/// Latency percentiles of one steady rate, in milliseconds.
pub(crate) struct Freshness {
    pub(crate) rate: u64,
    pub(crate) probes: usize,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
}

/// Measures freshness at each of `rates` (events/s of background load), `probes` probes each.
pub(crate) fn freshness(
    binary: &str,
    rates: &[u64],
    probes: usize,
) -> anyhow::Result<Vec<Freshness>> {
    // Apache Kafka, as in production: librdkafka's mock cluster answers a fetch only when
    // `fetch.wait.max.ms` (500 ms) is over, even when a message arrived meanwhile.
    let kafka = Kafka::start(&[
        (SOURCE_TOPIC, PARTITIONS),
        (TARGET_TOPIC, PARTITIONS),
        ("bench.dlq", 1),
    ]);
    let brokers = kafka.bootstrap().to_owned();
    let directory = tempfile::tempdir()?;
    let port = free_port()?;
    let config =
        crate::phases::config(directory.path(), &brokers, port, SOURCE_TOPIC, TARGET_TOPIC)?;
    let daemon = DaemonProcess::start(binary, &config, port, &directory.path().join("tandem.log"))?;
    let probe_producer = producer(&brokers, "0", Acknowledgements::default())?;
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build(),
    );
    let mut version = 0u64;
    let mut figures = Vec::new();
    for &rate in rates {
        let background = Background::start(&brokers, rate)?;
        std::thread::sleep(WARM_UP);
        let mut latencies = Vec::with_capacity(probes);
        let mut next = Instant::now();
        for _ in 0..probes {
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
            next += PROBE_EVERY;
            version += 1;
            let value = format!("probe-{version}");
            let event = serde_json::json!({
                "event_id": format!("fresh-{version}"), "entity": "contact", "id": "FRESH-1",
                "external_id": "FRESH-1", "op": if version == 1 { "create" } else { "update" },
                "occurred_at": "2026-11-20T08:00:00Z", "version": version,
                "fields": { "FirstName": value }
            });
            let payload = serde_json::to_vec(&event)?;
            let record = BaseRecord::<str, [u8]>::to(SOURCE_TOPIC)
                .key("FRESH-1")
                .payload(&payload);
            probe_producer
                .send(record)
                .map_err(|(error, _)| error)
                .context("producing a probe")?;
            // Acknowledged: the delivery report, served within a millisecond of its arrival
            // (a flush would serve it up to 100 ms late).
            let sent = Instant::now();
            let acknowledged = loop {
                probe_producer.poll(Duration::from_millis(1));
                if let Some(result) = probe_producer.context().take() {
                    result
                        .map_err(|error| anyhow::anyhow!("the broker refused a probe: {error}"))?;
                    break Instant::now();
                }
                if sent.elapsed() > PROBE_DEADLINE {
                    bail!("probe {version} was not acknowledged within {PROBE_DEADLINE:?}");
                }
            };
            loop {
                let mut response = agent
                    .get(&format!("{}/v1/records/contact/FRESH-1", daemon.url))
                    .call()?;
                if response.status() == 200
                    && response.body_mut().read_to_string()?.contains(&value)
                {
                    break;
                }
                if acknowledged.elapsed() > PROBE_DEADLINE {
                    bail!("probe {version} was not visible within {PROBE_DEADLINE:?}");
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            latencies.push(acknowledged.elapsed().as_secs_f64() * 1e3);
        }
        let produced = background.stop()?;
        latencies.sort_by(f64::total_cmp);
        let figure = Freshness {
            rate,
            probes: latencies.len(),
            p50_ms: latencies[latencies.len() / 2],
            p99_ms: latencies[(latencies.len() * 99).div_ceil(100) - 1],
            max_ms: latencies[latencies.len() - 1],
        };
        println!(
            "(h) at {rate} events/s ({produced} produced meanwhile): {} probes, p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
            figure.probes, figure.p50_ms, figure.p99_ms, figure.max_ms
        );
        figures.push(figure);
    }
    Ok(figures)
}

/// An idempotent producer that waits `linger_ms` to fill a request.
fn producer<C: ProducerContext>(
    brokers: &str,
    linger_ms: &str,
    context: C,
) -> anyhow::Result<BaseProducer<C>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", linger_ms)
        .set("enable.idempotence", "true")
        .create_with_context(context)?)
}

/// The probe's delivery report, kept for the probe loop.
#[derive(Default)]
struct Acknowledgements(Mutex<Option<Result<(), String>>>);

impl Acknowledgements {
    fn take(&self) -> Option<Result<(), String>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

impl ClientContext for Acknowledgements {}

impl ProducerContext for Acknowledgements {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let outcome = result
            .as_ref()
            .map(|_| ())
            .map_err(|(error, _)| error.to_string());
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(outcome);
    }
}

/// The steady load: full images of the background contacts, `rate` per second.
struct Background {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<anyhow::Result<u64>>,
}

impl Background {
    fn start(brokers: &str, rate: u64) -> anyhow::Result<Background> {
        let producer = producer(brokers, "5", DefaultProducerContext)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut sent = 0u64;
            while !stopping.load(Ordering::Relaxed) {
                let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
                while sent < due {
                    let record_number = sent % BACKGROUND_RECORDS;
                    let id = format!("BG-{record_number}");
                    let payload = serde_json::to_vec(&serde_json::json!({
                        "event_id": format!("bg-{rate}-{sent}"), "entity": "contact", "id": id,
                        "external_id": id, "op": "snapshot", "occurred_at": "2026-11-20T08:00:00Z",
                        "fields": { "FirstName": format!("name-{sent}"), "LastName": "Background" }
                    }))?;
                    let record = BaseRecord::<str, [u8]>::to(SOURCE_TOPIC)
                        .key(&id)
                        .payload(&payload);
                    match producer.send(record) {
                        Ok(()) => sent += 1,
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                            producer.poll(Duration::from_millis(1));
                        }
                        Err((error, _)) => return Err(error.into()),
                    }
                }
                producer.poll(Duration::from_millis(1));
            }
            producer.flush(Duration::from_secs(30))?;
            Ok(sent)
        });
        Ok(Background { stop, thread })
    }

    /// Stops the load; how many events it produced.
    fn stop(self) -> anyhow::Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the background producer panicked"))?
    }
}
