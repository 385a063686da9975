//! The follower: reads the changelog's committed batches and applies them to the store.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use tandem_store::Previous;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::{
    Replication, Role, CHUNKS_HEADER, CHUNK_HEADER, INSTANCE_HEADER, KIND_HEADER, PREVIOUS_HEADER,
};

/// How often the changelog's end is read for the lag.
const END_EVERY: Duration = Duration::from_secs(1);

pub(crate) struct Follower {
    replication: Arc<Replication>,
    consumer: BaseConsumer,
    pending: Pending,
}

impl Follower {
    pub(crate) fn new(replication: Arc<Replication>) -> Result<Follower, crate::Error> {
        let settings = &replication.settings;
        let consumer: BaseConsumer = settings
            .client()
            .set("group.id", format!("{}.follower", settings.group_id))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // Batches of aborted transactions (a fenced instance's last one) are never applied.
            .set("isolation.level", "read_committed")
            // A position the changelog no longer holds is an error, never a silent skip.
            .set("auto.offset.reset", "error")
            .set("enable.partition.eof", "false")
            .create()
            .map_err(|error| {
                crate::Error::Kafka(format!("cannot create the changelog follower: {error}"))
            })?;
        let start = match replication.store.changelog_position() {
            Some(position) => Offset::Offset(position),
            None => Offset::Beginning,
        };
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(&settings.topic, 0, start)
            .map_err(|error| crate::Error::Kafka(error.to_string()))?;
        consumer
            .assign(&assignment)
            .map_err(|error| crate::Error::Kafka(format!("cannot read the changelog: {error}")))?;
        Ok(Follower {
            replication,
            consumer,
            pending: None,
        })
    }

    /// Applies the changelog until the takeover marker it is told of, a stop, or a failure
    /// (`Err` with why: the copy cannot go on).
    pub(crate) fn run(mut self, cancel: &CancellationToken) -> Result<(), String> {
        let mut end_read = Instant::now() - END_EVERY;
        let mut applied = 0u64;
        loop {
            if cancel.is_cancelled() || self.replication.role() == Role::SteppedDown {
                return Ok(());
            }
            let stop_after = self.replication.stop_after.load(Ordering::Acquire);
            if stop_after >= 0 && self.replication.read_through.load(Ordering::Acquire) > stop_after
            {
                info!(batches = applied, position = ?self.replication.store.changelog_position(), "the changelog is replayed up to this instance's takeover");
                return Ok(());
            }
            if end_read.elapsed() >= END_EVERY {
                end_read = Instant::now();
                if let Ok((_, high)) = self.consumer.fetch_watermarks(
                    &self.replication.settings.topic,
                    0,
                    Duration::from_secs(5),
                ) {
                    self.replication.end_offset.store(high, Ordering::Release);
                    self.replication.observe();
                }
            }
            let Some(message) = self.consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let message = message.map_err(|error| {
                format!("the changelog cannot be read on ({error}): if its start was deleted, this standby cannot catch up; restore its store from a newer backup (tandem restore) and start it again")
            })?;
            if handle(&self.replication, &mut self.pending, &message)? {
                applied += 1;
            }
            self.replication
                .read_through
                .store(message.offset() + 1, Ordering::Release);
        }
    }
}

/// The chunks of the batch being read: its first offset, what it continues, the bytes.
type Pending = Option<(i64, Previous, Vec<u8>)>;

/// Applies one message; `Ok(true)` when it completed a batch.
fn handle(
    replication: &Replication,
    pending: &mut Pending,
    message: &BorrowedMessage<'_>,
) -> Result<bool, String> {
    let offset = message.offset();
    let header = |name: &str| -> Option<String> {
        message.headers().and_then(|headers| {
            headers
                .iter()
                .find(|header| header.key == name)
                .and_then(|header| header.value)
                .map(|value| String::from_utf8_lossy(value).into_owned())
        })
    };
    let malformed = |what: &str| {
        format!(
                "changelog message at offset {offset} is malformed ({what}): it was not written by this version of tandem; the copy stops here"
            )
    };
    match header(KIND_HEADER).as_deref() {
        Some("takeover") => {
            replication.epoch.store(offset, Ordering::Release);
            info!(
                epoch = offset,
                instance = header(INSTANCE_HEADER).unwrap_or_default(),
                "an instance took over the changelog"
            );
            replication.observe();
            Ok(false)
        }
        Some("batch") => {
            let number = |name: &str| {
                header(name)
                    .and_then(|value| value.parse::<u32>().ok())
                    .ok_or_else(|| malformed(name))
            };
            let chunk = number(CHUNK_HEADER)?;
            let chunks = number(CHUNKS_HEADER)?;
            let previous = header(PREVIOUS_HEADER)
                .as_deref()
                .and_then(Previous::from_header)
                .ok_or_else(|| malformed(PREVIOUS_HEADER))?;
            let payload = message.payload().unwrap_or_default();
            if chunk == 0 {
                *pending = Some((offset, previous, Vec::with_capacity(payload.len())));
            }
            let Some((first, continues, bytes)) = pending.as_mut() else {
                return Err(malformed("a chunk without the batch's first"));
            };
            if *continues != previous {
                return Err(malformed("chunks of two batches interleave"));
            }
            bytes.extend_from_slice(payload);
            if chunk + 1 < chunks {
                return Ok(false);
            }
            let (first, previous, bytes) = (*first, *continues, std::mem::take(bytes));
            *pending = None;
            replication
                .store
                .apply_replicated(previous, &bytes, offset + 1)
                .map_err(|error| error.to_string())?;
            debug!(
                first,
                last = offset,
                bytes = bytes.len(),
                "replicated batch applied"
            );
            if let Some(metrics) = &replication.metrics {
                metrics.applied(bytes.len());
            }
            Ok(true)
        }
        _ => Err(malformed(KIND_HEADER)),
    }
}
