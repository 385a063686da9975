//! The dead-letter forwarder: publishes stored dead letters to the dead-letter topic.
//!
//! A dead letter is first written to the store in the same batch as the offsets that pass
//! it, so it cannot be lost; this thread then produces it (at least once) with the reason and
//! the original coordinates in headers, and clears it from the outbox once the broker has
//! acknowledged it. Undelivered dead letters are retried, also after a restart.

use std::collections::BTreeSet;
use std::time::Duration;

use crossbeam_channel::Receiver;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use tandem_store::{Coordinates, DeadLetterRow, Store};

use crate::deliveries::{begin_round, end_round, Deliveries, RoundEnd};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, info_span, warn};

/// Dead letters produced per round.
const ROUND: usize = 500;

/// The dead-letter producer's delivery reports, per original message.
pub(crate) type DeadLetterContext = Deliveries<Coordinates>;

pub(crate) struct DeadLetterForwarder {
    pub(crate) store: Store,
    pub(crate) producer: BaseProducer<DeadLetterContext>,
    pub(crate) topic: String,
    pub(crate) max_payload_bytes: usize,
    /// Whether rounds run in transactions (replication: a new active instance fences them).
    pub(crate) transactional: bool,
}

impl DeadLetterForwarder {
    pub(crate) fn run(self, wake_rx: Receiver<()>, cancel: CancellationToken) {
        let _span = info_span!("dead_letters", topic = %self.topic).entered();
        let mut in_flight: BTreeSet<Coordinates> = BTreeSet::new();
        loop {
            let stopping = cancel.is_cancelled();
            if !begin_round(&self.producer, self.transactional) {
                return;
            }
            match self.store.undelivered_dead_letters(ROUND) {
                Ok(pending) => {
                    for (coordinates, row) in pending {
                        if in_flight.contains(&coordinates) {
                            continue;
                        }
                        match self.produce(&coordinates, &row) {
                            Ok(()) => {
                                in_flight.insert(coordinates);
                            }
                            Err(error) => {
                                warn!(%coordinates, %error, "cannot queue a dead letter; retrying later");
                                break;
                            }
                        }
                    }
                }
                Err(error) => error!(%error, "cannot read the dead-letter outbox"),
            }
            match end_round(&self.producer, self.transactional, stopping) {
                RoundEnd::Settle => self.settle(&mut in_flight),
                RoundEnd::Discarded => in_flight.clear(),
                RoundEnd::Stop => return,
            }
            if stopping {
                if !in_flight.is_empty() {
                    info!(
                        undelivered = in_flight.len(),
                        "dead letters left in the outbox; they are sent after restart"
                    );
                }
                return;
            }
            if in_flight.is_empty() {
                let _ = wake_rx.recv_timeout(Duration::from_secs(1));
            }
        }
    }

    fn produce(&self, coordinates: &Coordinates, row: &DeadLetterRow) -> Result<(), KafkaError> {
        let truncated = row.payload.len() > self.max_payload_bytes;
        let payload = &row.payload[..row.payload.len().min(self.max_payload_bytes)];
        let partition = coordinates.partition.to_string();
        let offset = coordinates.offset.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "tandem.reason",
                value: Some(row.reason.as_str()),
            })
            .insert(Header {
                key: "tandem.detail",
                value: Some(row.detail.as_str()),
            })
            .insert(Header {
                key: "tandem.system",
                value: Some(row.system.as_str()),
            })
            .insert(Header {
                key: "tandem.topic",
                value: Some(coordinates.topic.as_str()),
            })
            .insert(Header {
                key: "tandem.partition",
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: "tandem.offset",
                value: Some(offset.as_str()),
            })
            .insert(Header {
                key: "tandem.truncated",
                value: Some(if truncated { "true" } else { "false" }),
            });
        let key = coordinates.to_string();
        let record = BaseRecord::with_opaque_to(&self.topic, Box::new(coordinates.clone()))
            .key(&key)
            .payload(payload)
            .headers(headers);
        self.producer.send(record).map_err(|(error, _)| {
            if let KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) = error {
                self.producer.poll(Duration::from_millis(100));
            }
            error
        })
    }

    fn settle(&self, in_flight: &mut BTreeSet<Coordinates>) {
        let reports = self.producer.context().take();
        let mut delivered = Vec::new();
        for (coordinates, outcome) in reports {
            in_flight.remove(&coordinates);
            match outcome {
                Ok(()) => delivered.push(coordinates),
                Err(error) => {
                    warn!(%coordinates, %error, "a dead letter was not delivered; retrying")
                }
            }
        }
        if delivered.is_empty() {
            return;
        }
        if let Err(error) = self.store.mark_dead_letters_delivered(&delivered) {
            error!(%error, "cannot clear delivered dead letters from the outbox; they will be sent again");
        } else {
            info!(count = delivered.len(), "dead letters delivered");
        }
    }
}
