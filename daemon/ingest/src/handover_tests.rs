//! The apply loop and the writer at a rebalance, without a broker: a revocation the apply loop
//! cannot confirm in time lets nothing of the revoked partition be committed after it, and a
//! re-evaluation confirms a revocation between two chunks instead of after its last one.
//!
//! The loop, the writer and the store are the real ones. Between the loop and the writer sits
//! a gate the test opens, standing in for a store that is slow to commit.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use tandem_core::mapping::{FieldMapping, JoinSpec};
use tandem_core::ownership::OwnershipPolicy;
use tandem_core::{EntityMapping, JoinKeySource, Mapping, Status, System};
use tandem_formats::{Format, FormatSettings};
use tandem_store::{Coordinates, NextOffset, Store, StoreOptions};

use crate::apply::ApplyLoop;
use crate::consumer::{ApplyCommand, ConsumedMessage, ControlRequest, TandemConsumerContext};
use crate::fence::Fence;
use crate::status::IngestStatus;
use crate::writer::{run_writer, WriteJob, WriterLink};
use crate::{IngestMetrics, IngestSettings};

const SOURCE_TOPIC: &str = "crm.source";
const TARGET_TOPIC: &str = "crm.target";

/// Long enough for anything that is going to happen here; reaching it fails the test.
const PATIENCE: Duration = Duration::from_secs(30);

/// `contact`, joined by the source's external id and the target's `legacy_id`; the source's
/// `Email` compared with the target field `target_email`.
fn mapping(target_email: &str) -> Mapping {
    Mapping::try_new(vec![EntityMapping {
        name: "contact".to_owned(),
        join: JoinSpec {
            source: JoinKeySource::ExternalId,
            target: JoinKeySource::Field("legacy_id".to_owned()),
        },
        fields: vec![FieldMapping::exact("Email", target_email)],
    }])
    .unwrap()
}

fn settings(store_path: &std::path::Path) -> IngestSettings {
    IngestSettings {
        brokers: "127.0.0.1:9".to_owned(),
        group_id: "tandem-test".to_owned(),
        group_instance_id: None,
        properties: BTreeMap::new(),
        topics: [
            (SOURCE_TOPIC.to_owned(), System::Source),
            (TARGET_TOPIC.to_owned(), System::Target),
        ]
        .into(),
        formats: BTreeMap::new(),
        ownership: OwnershipPolicy::default(),
        violations_topic: None,
        commands_topic: None,
        dead_letter_topic: "crm.dead-letters".to_owned(),
        max_message_bytes: 1 << 20,
        batch_max_messages: 100,
        batch_max_wait: Duration::from_millis(100),
        // Sides that differ are a divergence at once: no record waits for the clock.
        grace: Duration::ZERO,
        idle_clock: false,
        reread_topic: None,
        reread_max_ids_per_minute: 60,
        reread_batch_max_ids: 100,
        reread_resend_after: Duration::from_secs(600),
        control_topic: None,
        debezium_signals: BTreeMap::new(),
        store_path: store_path.to_owned(),
        min_free_bytes: 0,
        output_transactional_id: None,
    }
}

/// One canonical change event read at `topic`/`partition`/`offset`.
fn message(
    topic: &str,
    partition: i32,
    offset: i64,
    event: serde_json::Value,
) -> Vec<ConsumedMessage> {
    let system = if topic == SOURCE_TOPIC {
        System::Source
    } else {
        System::Target
    };
    let payload = serde_json::to_vec(&event).unwrap();
    ConsumedMessage::split(
        Coordinates {
            topic: topic.to_owned(),
            partition,
            offset,
        },
        system,
        &FormatSettings::new(Format::Canonical),
        None,
        Some(&payload),
        1 << 20,
    )
}

/// The source's contact `id` carrying the join key `key`.
fn source_contact(
    partition: i32,
    offset: i64,
    id: &str,
    key: &str,
    email: &str,
) -> Vec<ConsumedMessage> {
    message(
        SOURCE_TOPIC,
        partition,
        offset,
        serde_json::json!({
            "event_id": format!("source-{id}"),
            "entity": "contact",
            "id": id,
            "op": "create",
            "occurred_at": "2024-05-01T10:00:00Z",
            "external_id": key,
            "fields": { "Email": email },
        }),
    )
}

/// The target's contact `id` for the join key `key`, with both of its e-mail fields.
fn target_contact(
    offset: i64,
    id: &str,
    key: &str,
    email: &str,
    email_address: &str,
) -> Vec<ConsumedMessage> {
    message(
        TARGET_TOPIC,
        0,
        offset,
        serde_json::json!({
            "event_id": format!("target-{id}"),
            "entity": "contact",
            "id": id,
            "op": "create",
            "occurred_at": "2024-05-01T10:00:01Z",
            "fields": { "legacy_id": key, "email": email, "email_address": email_address },
        }),
    )
}

/// A running apply loop and writer, with the gate between them.
struct Running {
    commands_tx: Sender<ApplyCommand>,
    control_tx: Sender<ControlRequest>,
    /// Each job that reaches the gate.
    arrived_rx: Receiver<u64>,
    /// Opens the gate for good (sending or dropping).
    open_tx: Option<Sender<()>>,
    status: Arc<IngestStatus>,
    threads: Vec<JoinHandle<()>>,
    apply: JoinHandle<crate::Result<()>>,
}

/// Starts the loop on `store` with `mapping`. The first `pass_first` jobs go through the
/// gate; the others wait until it opens. `commands` are queued before the loop starts.
fn start(
    store: &Store,
    directory: &std::path::Path,
    mapping: Mapping,
    fence: &Arc<Fence>,
    pass_first: usize,
    commands: Vec<ApplyCommand>,
) -> Running {
    let settings = settings(directory);
    let status = Arc::new(IngestStatus::new(settings.topics.clone()));
    let registry = prometheus::Registry::new();
    let metrics = IngestMetrics::register(&registry).unwrap();
    let (dead_letter_tx, _) = bounded(1);
    let (jobs_tx, gate_rx) = bounded::<WriteJob>(1);
    let (writer_jobs_tx, writer_jobs_rx) = bounded::<WriteJob>(1);
    let (written_tx, written_rx) = unbounded();
    let (arrived_tx, arrived_rx) = unbounded();
    let (open_tx, open_rx) = bounded::<()>(1);
    let gate = std::thread::spawn(move || {
        let mut open = false;
        for (index, job) in gate_rx.into_iter().enumerate() {
            let _ = arrived_tx.send(job.seq);
            if index >= pass_first && !open {
                // Opened by a message or by the sender's drop.
                let _ = open_rx.recv();
                open = true;
            }
            if writer_jobs_tx.send(job).is_err() {
                return;
            }
        }
    });
    let writer_store = store.clone();
    let writer_fence = fence.clone();
    let writer = std::thread::spawn(move || {
        run_writer(
            writer_store,
            writer_jobs_rx,
            written_tx,
            writer_fence,
            false,
        )
    });
    let apply_loop = ApplyLoop::try_new(
        store.clone(),
        Arc::new(mapping),
        settings,
        status.clone(),
        metrics,
        dead_letter_tx,
        WriterLink {
            jobs_tx,
            written_rx,
            fence: fence.clone(),
        },
    )
    .unwrap();
    let (commands_tx, commands_rx) = bounded(4);
    for command in commands {
        commands_tx.send(command).unwrap();
    }
    let (control_tx, control_rx) = bounded(1);
    let apply = std::thread::spawn(move || apply_loop.run(commands_rx, control_rx));
    Running {
        commands_tx,
        control_tx,
        arrived_rx,
        open_tx: Some(open_tx),
        status,
        threads: vec![gate, writer],
        apply,
    }
}

impl Running {
    fn open_gate(&mut self) {
        self.open_tx.take();
    }

    /// Closes the consumer's and the API's channels, as at a stop, and waits for every thread.
    fn stop(mut self) {
        self.open_gate();
        drop(self.commands_tx);
        drop(self.control_tx);
        self.apply
            .join()
            .expect("the apply loop does not panic")
            .expect("the apply loop does not fail");
        for thread in self.threads {
            thread.join().expect("the gate and the writer do not panic");
        }
    }
}

/// A store whose rules are those of `mapping`, holding these batches.
fn loaded(
    directory: &std::path::Path,
    mapping: Mapping,
    batches: Vec<Vec<ConsumedMessage>>,
) -> (Store, Arc<Fence>) {
    let store = Store::open(&directory.join("store"), &StoreOptions::default()).unwrap();
    let fence = Arc::new(Fence::default());
    fence.assign(&[
        (SOURCE_TOPIC.to_owned(), 0),
        (SOURCE_TOPIC.to_owned(), 1),
        (TARGET_TOPIC.to_owned(), 0),
    ]);
    let commands = batches.into_iter().map(ApplyCommand::Batch).collect();
    start(&store, directory, mapping, &fence, usize::MAX, commands).stop();
    (store, fence)
}

fn status_of(store: &Store, key: &str) -> Option<Status> {
    store
        .read()
        .record("contact", key)
        .unwrap()
        .and_then(|row| row.status.status)
}

fn next_offset(store: &Store, topic: &str, partition: i32) -> Option<i64> {
    store
        .next_offset(topic, partition)
        .unwrap()
        .map(|NextOffset(next)| next)
}

#[test]
fn a_revocation_confirmed_too_late_lets_nothing_of_the_partition_be_committed() {
    let directory = tempfile::tempdir().unwrap();
    let (store, fence) = loaded(directory.path(), mapping("email"), Vec::new());
    let running = start(
        &store,
        directory.path(),
        mapping("email"),
        &fence,
        0,
        Vec::new(),
    );
    // A batch of both source partitions is planned and on its way to the store, which is
    // slow: it waits at the gate.
    let mut batch = source_contact(0, 0, "s1", "k1", "a@x.io");
    batch.extend(source_contact(1, 0, "s2", "k2", "b@x.io"));
    running
        .commands_tx
        .send(ApplyCommand::Batch(batch))
        .unwrap();
    running
        .arrived_rx
        .recv_timeout(PATIENCE)
        .expect("the batch reaches the writer");

    // Partition 0 is revoked. The apply loop waits for the batch to be durable before it
    // confirms, so the handshake times out.
    let consumer = TandemConsumerContext {
        store: store.clone(),
        apply_tx: running.commands_tx.clone(),
        status: running.status.clone(),
        revoked: Mutex::new(Vec::new()),
        assigned: Mutex::new(Vec::new()),
        read_committed: true,
        resets: Arc::default(),
        errors: crate::quiet::Quieted::new(Duration::from_secs(30)),
        fence: fence.clone(),
        revoke_timeout: Duration::from_millis(200),
    };
    let revoked = (SOURCE_TOPIC.to_owned(), 0);
    consumer.hand_over(std::slice::from_ref(&revoked));
    assert!(!fence.is_assigned(SOURCE_TOPIC, 0));
    assert_eq!(consumer.take_revoked(), vec![revoked]);
    drop(consumer);
    // A batch of the revoked partition read before the consumer let it go comes late.
    let mut late = source_contact(0, 1, "s3", "k3", "c@x.io");
    late.extend(source_contact(1, 1, "s4", "k4", "d@x.io"));
    running.commands_tx.send(ApplyCommand::Batch(late)).unwrap();

    // The store catches up; everything queued is handled before the loop stops.
    running.stop();

    // Nothing of the revoked partition was committed: neither its offsets nor its records.
    assert_eq!(next_offset(&store, SOURCE_TOPIC, 0), None);
    assert_eq!(status_of(&store, "k1"), None);
    assert_eq!(status_of(&store, "k3"), None);
    // Everything of the partition still assigned was, once each.
    assert_eq!(next_offset(&store, SOURCE_TOPIC, 1), Some(2));
    assert_eq!(status_of(&store, "k2"), Some(Status::MissingInTarget));
    assert_eq!(status_of(&store, "k4"), Some(Status::MissingInTarget));
    let state = store.apply_state().unwrap();
    assert_eq!(state.counters.source.events_applied, 2);
}

#[test]
fn a_reevaluation_confirms_a_revocation_before_it_finishes_and_still_evaluates_every_record() {
    let directory = tempfile::tempdir().unwrap();
    // Under the first rules (`Email` against `email`): k1 in sync, k2 a mismatch, k3 only in
    // the source.
    let (store, fence) = loaded(
        directory.path(),
        mapping("email"),
        vec![[
            source_contact(0, 0, "s1", "k1", "a@x.io"),
            source_contact(0, 1, "s2", "k2", "b@x.io"),
            source_contact(0, 2, "s3", "k3", "c@x.io"),
            target_contact(0, "t1", "k1", "a@x.io", "old-a@x.io"),
            target_contact(1, "t2", "k2", "old-b@x.io", "b@x.io"),
        ]
        .into_iter()
        .flatten()
        .collect()],
    );
    assert_eq!(status_of(&store, "k1"), Some(Status::InSync));
    assert_eq!(status_of(&store, "k2"), Some(Status::Mismatch));

    // The rules change (`Email` against `email_address`): the loop evaluates the stored
    // records again before anything else. A batch of two partitions and the revocation of one
    // of them are already waiting.
    let mut batch = source_contact(0, 3, "s9", "k9", "i@x.io");
    batch.extend(source_contact(1, 0, "s8", "k8", "h@x.io"));
    let (done_tx, done_rx) = bounded(1);
    let revoked = (SOURCE_TOPIC.to_owned(), 1);
    let mut running = start(
        &store,
        directory.path(),
        mapping("email_address"),
        &fence,
        // The batch that forgets the old rules goes through; the chunks wait at the gate, so
        // the re-evaluation cannot finish before the gate opens.
        1,
        vec![
            ApplyCommand::Batch(batch),
            ApplyCommand::Revoke {
                partitions: vec![revoked.clone()],
                done: done_tx,
            },
        ],
    );
    done_rx
        .recv_timeout(PATIENCE)
        .expect("the revocation is confirmed while the re-evaluation runs");
    let snapshot = running.status.snapshot();
    assert!(
        snapshot.reevaluation.is_some() && snapshot.last_reevaluation.is_none(),
        "the revocation was confirmed during the re-evaluation"
    );
    assert!(
        snapshot.holds_fetching(),
        "consumption is paused during a re-evaluation"
    );
    fence.revoke(std::slice::from_ref(&revoked));

    running.open_gate();
    let deadline = Instant::now() + PATIENCE;
    let finished = loop {
        if let Some(finished) = running.status.snapshot().last_reevaluation {
            break finished;
        }
        assert!(
            Instant::now() < deadline,
            "the re-evaluation did not finish"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    running.stop();

    // Every record was evaluated under the new rules: k1 and k2 changed places.
    assert_eq!((finished.done, finished.total, finished.changed), (3, 3, 2));
    assert_eq!(status_of(&store, "k1"), Some(Status::Mismatch));
    assert_eq!(status_of(&store, "k2"), Some(Status::InSync));
    assert_eq!(status_of(&store, "k3"), Some(Status::MissingInTarget));
    assert_eq!(
        store.apply_state().unwrap().rules,
        Some(mapping("email_address").fingerprint())
    );
    // The held batch was applied after it, without the revoked partition's message.
    assert_eq!(status_of(&store, "k9"), Some(Status::MissingInTarget));
    assert_eq!(next_offset(&store, SOURCE_TOPIC, 0), Some(4));
    assert_eq!(status_of(&store, "k8"), None);
    assert_eq!(next_offset(&store, SOURCE_TOPIC, 1), None);
}
