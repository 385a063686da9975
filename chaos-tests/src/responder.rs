//! The connectors' side of healing: reads tandem's re-read and snapshot requests and answers
//! them from the simulator's own account of both CRMs, as a real connector would from its API.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Deserialize;
use tandem_sim::{Scenario, SimMessage, SimSystem};
use tandem_testkit::Topics;

#[derive(Deserialize)]
struct Request {
    #[serde(rename = "type")]
    kind: String,
    system: String,
    entity: String,
    #[serde(default)]
    ids: Vec<String>,
}

/// Answers requests until stopped; counts the events it produced.
pub struct Responder {
    stop: Arc<AtomicBool>,
    /// Events produced so far.
    pub produced: Arc<AtomicU64>,
    /// Requests answered so far.
    pub answered: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

fn system_of(name: &str) -> Option<SimSystem> {
    match name {
        "source" => Some(SimSystem::Source),
        "target" => Some(SimSystem::Target),
        _ => None,
    }
}

/// Produces answer messages to the systems' topics and counts them.
pub fn produce_answers(
    bootstrap: &str,
    topics: &Topics,
    messages: &[SimMessage],
    produced: &AtomicU64,
) {
    if messages.is_empty() {
        return;
    }
    tandem::simkafka::produce(bootstrap, &topics.source, &topics.target, messages, |_| {})
        .expect("answers are produced");
    produced.fetch_add(messages.len() as u64, Ordering::SeqCst);
}

impl Responder {
    /// Starts answering what is on `reread_topic` and `control_topic` from the beginning.
    pub fn start(
        bootstrap: String,
        topics: Topics,
        reread_topic: String,
        control_topic: String,
        scenario: Arc<Scenario>,
        read_at: i64,
    ) -> Responder {
        let stop = Arc::new(AtomicBool::new(false));
        let produced = Arc::new(AtomicU64::new(0));
        let answered = Arc::new(AtomicU64::new(0));
        let (thread_stop, thread_produced, thread_answered) =
            (stop.clone(), produced.clone(), answered.clone());
        let thread = std::thread::spawn(move || {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("group.id", "chaos-responder")
                .set("enable.auto.commit", "false")
                .create()
                .expect("the responder's consumer");
            let mut assignment = TopicPartitionList::new();
            for topic in [&reread_topic, &control_topic] {
                assignment
                    .add_partition_offset(topic, 0, Offset::Beginning)
                    .expect("a valid assignment");
            }
            consumer
                .assign(&assignment)
                .expect("assigning the request topics");
            let mut number = 0u64;
            while !thread_stop.load(Ordering::SeqCst) {
                let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) else {
                    continue;
                };
                let Some(request) = message
                    .payload()
                    .and_then(|payload| serde_json::from_slice::<Request>(payload).ok())
                else {
                    continue;
                };
                let Some(system) = system_of(&request.system) else {
                    continue;
                };
                number += 1;
                let answers = match request.kind.as_str() {
                    "reread" => scenario.reread_answer(
                        system,
                        &request.entity,
                        &request.ids,
                        read_at,
                        &format!("answer-{number}"),
                    ),
                    "snapshot" => scenario.snapshot_run(
                        system,
                        &request.entity,
                        &format!("requested-{number}"),
                        read_at,
                    ),
                    _ => continue,
                };
                produce_answers(&bootstrap, &topics, &answers, &thread_produced);
                thread_answered.fetch_add(1, Ordering::SeqCst);
            }
        });
        Responder {
            stop,
            produced,
            answered,
            thread: Some(thread),
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
