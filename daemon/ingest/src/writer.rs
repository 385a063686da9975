//! The writer thread: commits planned batches to the store while the apply loop plans the
//! next one, so planning and RocksDB's memtable inserts run on both cores.
//!
//! Batches are written one at a time, in order, each as one atomic WriteBatch with its offsets:
//! pipelining changes when a batch is planned, never what a committed batch contains.
//!
//! Each commit happens under the [`Fence`]: a batch with offsets of a partition no longer
//! assigned is refused, and so is every later batch planned in the same epoch, because it was
//! planned on top of the refused one. The apply loop starts a new epoch once it has reloaded
//! its state from the store.

use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use tandem_core::{IngestCounters, Plan, Timestamp};
use tandem_store::{Commit, CommitStats, LoggedMessage, NextOffset, Store};
use tracing::{info, info_span, warn};

use crate::consumer::{ConsumedMessage, Decoded};
use crate::fence::{spans, Fence};
use crate::{Error, Result};

/// A planned batch on its way to the store.
pub(crate) struct WriteJob {
    /// Position in the apply loop's sequence of batches.
    pub(crate) seq: u64,
    /// The apply loop's epoch when it planned the batch: it starts a new one each time it
    /// reloads its state after a refusal.
    pub(crate) epoch: u64,
    pub(crate) messages: Vec<ConsumedMessage>,
    pub(crate) plan: Plan,
    pub(crate) offsets: Vec<(String, i32, NextOffset)>,
    /// Counters before this batch, to count the metrics once it is durable.
    pub(crate) counters_before: IngestCounters,
    /// When the batch reached the apply loop.
    pub(crate) started: Instant,
    /// Pending records re-evaluated with it.
    pub(crate) due: usize,
}

/// A batch that is durable.
pub(crate) struct Written {
    pub(crate) job: WriteJob,
    pub(crate) stats: CommitStats,
    pub(crate) committed_at: Timestamp,
}

/// What became of a batch.
pub(crate) enum WriteOutcome {
    /// It is durable.
    Committed(Written),
    /// Nothing of it was written: it carries messages of a partition no longer assigned, or
    /// was planned on top of a batch that did.
    Refused(WriteJob),
}

/// The apply loop's ends of the writer thread, and the fence it commits under.
pub(crate) struct WriterLink {
    pub(crate) jobs_tx: Sender<WriteJob>,
    pub(crate) written_rx: Receiver<Result<WriteOutcome>>,
    pub(crate) fence: Arc<Fence>,
}

/// Commits jobs in order until the job channel closes or a commit fails; refuses those the
/// fence stops.
pub(crate) fn run_writer(
    store: Store,
    jobs: Receiver<WriteJob>,
    done: Sender<Result<WriteOutcome>>,
    fence: Arc<Fence>,
    publish_violations: bool,
) {
    let _span = info_span!("writer").entered();
    // The latest epoch a batch was refused in: its later batches are refused too.
    let mut refused_epoch: Option<u64> = None;
    for job in jobs {
        if refused_epoch.is_some_and(|epoch| job.epoch <= epoch) {
            info!(
                seq = job.seq,
                epoch = job.epoch,
                messages = job.messages.len(),
                "batch refused: it was planned on top of a refused batch; its messages of partitions still assigned are planned again"
            );
            if done.send(Ok(WriteOutcome::Refused(job))).is_err() {
                return;
            }
            continue;
        }
        let committed_at = Timestamp::from_system_time(std::time::SystemTime::now());
        let logged: Vec<LoggedMessage<'_>> = job
            .messages
            .iter()
            .map(|message| LoggedMessage {
                coordinates: &message.coordinates,
                part: message.part,
                system: message.system,
                payload: &message.payload,
                event: message.event(),
                dead_letter: match &message.decoded {
                    Decoded::Rejected(error) => Some(error),
                    Decoded::Event(_)
                    | Decoded::Skipped
                    | Decoded::PassedOver
                    | Decoded::Lost(_) => None,
                },
            })
            .collect();
        let offsets: Vec<(&str, i32, NextOffset)> = job
            .offsets
            .iter()
            .map(|(topic, partition, next)| (topic.as_str(), *partition, *next))
            .collect();
        // Held until the commit is done: a revocation waits for it, and a commit after the
        // revocation sees it.
        let fence_held = fence.hold();
        let unassigned = fence_held.unassigned(&job.offsets);
        if !unassigned.is_empty() {
            drop(fence_held);
            drop(logged);
            let spans = spans(&job.messages);
            for partition in &unassigned {
                let span = spans.get(partition);
                warn!(
                    topic = %partition.0,
                    partition = partition.1,
                    first_offset = span.map(|span| span.first_offset),
                    last_offset = span.map(|span| span.last_offset),
                    seq = job.seq,
                    epoch = job.epoch,
                    "batch refused: its partition was revoked before it could be committed (the apply loop did not confirm the revocation in time); nothing of the batch is written, its messages of this partition are left to the partition's new owner and the others are planned again"
                );
            }
            refused_epoch = Some(job.epoch);
            if done.send(Ok(WriteOutcome::Refused(job))).is_err() {
                return;
            }
            continue;
        }
        let result = store.commit(&Commit {
            messages: &logged,
            plan: &job.plan,
            offsets: &offsets,
            committed_at,
            publish_violations,
        });
        drop(fence_held);
        drop(logged);
        let outcome = result.map_err(Error::Store).map(|stats| {
            WriteOutcome::Committed(Written {
                job,
                stats,
                committed_at,
            })
        });
        let failed = outcome.is_err();
        if done.send(outcome).is_err() || failed {
            return;
        }
    }
}
