//! The lease: the member of the replication group the changelog partition is assigned to is
//! the active instance.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use tokio_util::sync::CancellationToken;

use crate::{Replication, ReplicationSettings, Role};

/// Creates the changelog topic if it is missing: one partition (its order is the order of
/// the batches), kept forever (a standby may need any part of it since the last backup).
pub(crate) fn ensure_topic(settings: &ReplicationSettings) -> Result<(), crate::Error> {
    let admin: AdminClient<DefaultClientContext> = settings
        .client()
        .create()
        .map_err(|error| crate::Error::Kafka(format!("cannot create an admin client: {error}")))?;
    let topic = NewTopic::new(&settings.topic, 1, TopicReplication::Fixed(-1))
        .set("retention.ms", "-1")
        .set("retention.bytes", "-1")
        .set("cleanup.policy", "delete");
    let created = futures::executor::block_on(admin.create_topics(
        [&topic],
        &AdminOptions::new().request_timeout(Some(Duration::from_secs(30))),
    ))
    .map_err(|error| {
        crate::Error::Kafka(format!(
            "cannot create the changelog topic `{}` (key `replication.topic`): {error}; create it with one partition and unlimited retention, or grant tandem CreateTopics",
            settings.topic
        ))
    })?;
    for result in created {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(crate::Error::Kafka(format!(
                    "cannot create the changelog topic `{name}` (key `replication.topic`): {code}; create it with one partition and unlimited retention, or grant tandem CreateTopics"
                )))
            }
        }
    }
    Ok(())
}

pub(crate) struct Lease {
    consumer: BaseConsumer,
    topic: String,
}

impl Lease {
    pub(crate) fn new(replication: Arc<Replication>) -> Result<Lease, crate::Error> {
        let settings = &replication.settings;
        let session = settings.session_timeout.as_millis().max(1000);
        let consumer: BaseConsumer = settings
            .client()
            .set("group.id", &settings.group_id)
            // The holder keeps the partition when another instance joins.
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", session.to_string())
            .set("heartbeat.interval.ms", (session / 5).max(100).to_string())
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "latest")
            .create()
            .map_err(|error| {
                crate::Error::Kafka(format!("cannot create the lease consumer: {error}"))
            })?;
        consumer.subscribe(&[&settings.topic]).map_err(|error| {
            crate::Error::Kafka(format!("cannot join the replication group: {error}"))
        })?;
        Ok(Lease {
            consumer,
            topic: settings.topic.clone(),
        })
    }

    fn held(&self) -> bool {
        self.consumer
            .assignment()
            .map(|assignment| {
                assignment
                    .elements_for_topic(&self.topic)
                    .iter()
                    .any(|element| element.partition() == 0)
            })
            .unwrap_or(false)
    }

    /// Polls the group (its heartbeats run meanwhile) until cancelled; takes over when the
    /// lease comes, steps down when it goes.
    pub(crate) fn run(self, replication: &Arc<Replication>, cancel: &CancellationToken) {
        let mut paused = false;
        while !replication.released.is_cancelled() {
            // The lease consumer never needs a message: whatever it fetches is dropped.
            let _ = self.consumer.poll(Duration::from_millis(100));
            let held = self.held();
            if held && !paused {
                if let Ok(assignment) = self.consumer.assignment() {
                    paused = self.consumer.pause(&assignment).is_ok();
                }
            }
            paused &= held;
            match (replication.role(), held) {
                (Role::Standby, true) => {
                    if let Err(reason) = replication.take_over(cancel) {
                        replication.step_down(format!("the takeover failed: {reason}"));
                    }
                }
                (Role::Active, false) => replication.lost_lease(),
                (Role::SteppedDown, _) => break,
                _ => {}
            }
        }
        // Leaving the group at once hands the lease over without waiting for the session.
        self.consumer.unsubscribe();
        let _ = self.consumer.poll(Duration::from_millis(100));
    }
}
