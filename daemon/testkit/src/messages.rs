//! Producing to and reading from the tests' topics: JSON events, keyed messages and
//! tombstones, in order and acknowledged; what a topic holds, from its beginning.

use std::time::{Duration, Instant};

use crate::kafka::Kafka;
use crate::wait_for;

/// Every JSON message partition 0 of `topic` holds now (read committed), read from its
/// beginning to its end.
pub fn read_json_messages_now(kafka: &Kafka, topic: &str) -> Vec<serde_json::Value> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", format!("{topic}-now"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .expect("a consumer");
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, rdkafka::Offset::Beginning)
        .expect("a valid assignment");
    consumer
        .assign(&assignment)
        .expect("assigning the partition");
    let mut messages = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                if let Some(value) = message
                    .payload()
                    .and_then(|payload| serde_json::from_slice(payload).ok())
                {
                    messages.push(value);
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
            _ => {}
        }
    }
    messages
}

/// A message to produce: its key and its value (`None`: a tombstone).
pub type RawMessage = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Produces `messages` to partition 0 of `topic` with a producer of `config`, in order, and
/// waits for the broker's acknowledgements.
pub fn produce_messages(config: &rdkafka::ClientConfig, topic: &str, messages: &[RawMessage]) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let producer: BaseProducer = config.create().expect("a producer");
    for (key, value) in messages {
        let mut record = BaseRecord::<Vec<u8>, Vec<u8>>::to(topic).partition(0);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(value) = value {
            record = record.payload(value);
        }
        producer
            .send(record)
            .map_err(|(error, _)| error)
            .expect("the message is queued");
    }
    producer
        .flush(Duration::from_secs(30))
        .expect("the broker acknowledges every message");
}

/// JSON events as unkeyed messages.
pub fn json_messages(events: &[serde_json::Value]) -> Vec<RawMessage> {
    events
        .iter()
        .map(|event| {
            (
                None,
                Some(serde_json::to_vec(event).expect("events are JSON")),
            )
        })
        .collect()
}

/// A client configuration for a plaintext broker.
pub fn plaintext(brokers: &str) -> rdkafka::ClientConfig {
    let mut config = rdkafka::ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    config
}

/// Produces JSON events to partition 0 of `topic`, in order, and waits for the broker's
/// acknowledgements.
pub fn produce_json(brokers: &str, topic: &str, events: &[serde_json::Value]) {
    produce_messages(&plaintext(brokers), topic, &json_messages(events));
}

/// Reads `topic` from its beginning until `expected` messages arrived (at most `deadline`),
/// and returns their payloads as JSON.
pub fn read_json_messages(
    brokers: &str,
    topic: &str,
    expected: usize,
    deadline: Duration,
) -> Vec<serde_json::Value> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}-reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("a consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("the topic's metadata");
    let partitions = metadata
        .topics()
        .first()
        .map(|found| found.partitions().len())
        .unwrap_or(0);
    let mut assignment = rdkafka::TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(
                topic,
                i32::try_from(partition).expect("few partitions"),
                rdkafka::Offset::Beginning,
            )
            .expect("a valid assignment");
    }
    consumer
        .assign(&assignment)
        .expect("assigning the partitions");
    let mut seen = Vec::new();
    wait_for(&format!("{expected} messages on {topic}"), deadline, || {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            let payload = message.payload().unwrap_or_default();
            seen.push(
                serde_json::from_slice(payload)
                    .unwrap_or_else(|error| panic!("a JSON message on {topic}: {error}")),
            );
        }
        (seen.len() >= expected).then_some(())
    });
    seen
}

/// Produces keyed JSON messages (a `None` value is a tombstone) to partition 0 of `topic`, in
/// order, and waits for the broker's acknowledgements.
pub fn produce_keyed(brokers: &str, topic: &str, messages: &[(String, Option<serde_json::Value>)]) {
    let messages: Vec<RawMessage> = messages
        .iter()
        .map(|(key, value)| {
            (
                Some(key.clone().into_bytes()),
                value
                    .as_ref()
                    .map(|value| serde_json::to_vec(value).expect("events are JSON")),
            )
        })
        .collect();
    produce_messages(&plaintext(brokers), topic, &messages);
}

/// A consumer of partition 0 of `topic` from its beginning, that says when it reaches the
/// end (`PartitionEOF`); with `read_committed`, messages of aborted transactions are left out.
fn partition_zero_reader(
    brokers: &str,
    topic: &str,
    read_committed: bool,
) -> rdkafka::consumer::BaseConsumer {
    use rdkafka::consumer::Consumer;
    let isolation = if read_committed {
        "read_committed"
    } else {
        "read_uncommitted"
    };
    let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}-test-reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", isolation)
        .create()
        .expect("a consumer");
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, rdkafka::Offset::Beginning)
        .expect("a valid assignment");
    consumer
        .assign(&assignment)
        .expect("assigning the partition");
    consumer
}

/// Every message partition 0 of `topic` holds now, in order, mapped by `each`.
fn read_partition_zero<T>(
    brokers: &str,
    topic: &str,
    read_committed: bool,
    mut each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>) -> T,
) -> Vec<T> {
    let consumer = partition_zero_reader(brokers, topic, read_committed);
    let mut read = Vec::new();
    wait_for(
        &format!("the end of {topic}"),
        Duration::from_secs(30),
        || match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                read.push(each(&message));
                None
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => Some(()),
            _ => None,
        },
    );
    read
}

/// The offsets of the messages partition 0 of `topic` holds now, in order.
pub fn offsets_of(brokers: &str, topic: &str) -> Vec<i64> {
    use rdkafka::message::Message;
    read_partition_zero(brokers, topic, false, |message| message.offset())
}

/// One committed message of a replication changelog, as a test checks it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangelogEntry {
    /// Its offset.
    pub offset: i64,
    /// `batch` or `takeover` (the `tandem-kind` header).
    pub kind: String,
    /// The instance that wrote it (the `tandem-instance` header).
    pub instance: String,
}

/// Every committed message of the changelog `topic` (partition 0), read as a transactional
/// consumer reads it: messages of aborted transactions are left out.
pub fn read_changelog(brokers: &str, topic: &str) -> Vec<ChangelogEntry> {
    use rdkafka::message::{Headers, Message};
    read_partition_zero(brokers, topic, true, |message| {
        let header = |name: &str| {
            message
                .headers()
                .and_then(|headers| {
                    headers
                        .iter()
                        .find(|header| header.key == name)
                        .and_then(|header| header.value)
                        .map(|value| String::from_utf8_lossy(value).into_owned())
                })
                .unwrap_or_default()
        };
        ChangelogEntry {
            offset: message.offset(),
            kind: header("tandem-kind"),
            instance: header("tandem-instance"),
        }
    })
}
