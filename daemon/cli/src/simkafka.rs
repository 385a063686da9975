//! Puts a simulated run on a Kafka-protocol broker: used by the demo, the tests and the
//! benchmarks, so all of them feed the daemon the same way.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{bail, Context};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientConfig, ClientContext};
use tandem_sim::{SimMessage, SimSystem};

/// Counts failed deliveries.
#[derive(Default)]
struct CountingContext {
    failed: AtomicU64,
}

impl ClientContext for CountingContext {}

impl ProducerContext for CountingContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_err() {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Produces every message to its system's topic and partition, in order, and waits
/// until the broker has acknowledged all of them. `progress` is called every 10,000 messages.
pub fn produce(
    brokers: &str,
    source_topic: &str,
    target_topic: &str,
    messages: &[SimMessage],
    mut progress: impl FnMut(usize),
) -> anyhow::Result<()> {
    let producer: BaseProducer<CountingContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "500000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("message.max.bytes", "10000000")
        .set("enable.idempotence", "true")
        .create_with_context(CountingContext::default())
        .context("creating the simulator's producer")?;
    for (index, message) in messages.iter().enumerate() {
        let topic = match message.system {
            SimSystem::Source => source_topic,
            SimSystem::Target => target_topic,
        };
        loop {
            let record = BaseRecord::to(topic)
                .partition(message.partition)
                .key(&message.key)
                .payload(&message.payload);
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    producer.poll(Duration::from_millis(10));
                }
                Err((error, _)) => bail!("producing message {index} to {topic}: {error}"),
            }
        }
        if index % 10_000 == 9_999 {
            producer.poll(Duration::ZERO);
            progress(index + 1);
        }
    }
    producer
        .flush(Duration::from_secs(120))
        .context("waiting for the broker to acknowledge the simulated messages")?;
    let failed = producer.context().failed.load(Ordering::Relaxed);
    if failed > 0 {
        bail!("{failed} simulated messages were not delivered");
    }
    progress(messages.len());
    Ok(())
}
