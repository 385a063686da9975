//! The writer thread: commits planned batches to the store while the apply loop plans the
//! next one, so planning and RocksDB's memtable inserts run on both cores.
//!
//! Batches are written one at a time, in order, each as one atomic WriteBatch with its offsets:
//! pipelining changes when a batch is planned, never what a committed batch contains.

use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use tandem_core::{IngestCounters, Plan, Timestamp};
use tandem_store::{Commit, CommitStats, LoggedMessage, NextOffset, Store};
use tracing::info_span;

use crate::consumer::{ConsumedMessage, Decoded};
use crate::{Error, Result};

/// A planned batch on its way to the store.
pub(crate) struct WriteJob {
    /// Position in the apply loop's sequence of batches.
    pub(crate) seq: u64,
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

/// Commits jobs in order until the job channel closes or a commit fails.
pub(crate) fn run_writer(
    store: Store,
    jobs: Receiver<WriteJob>,
    done: Sender<Result<Written>>,
    publish_violations: bool,
) {
    let _span = info_span!("writer").entered();
    for job in jobs {
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
        let result = store.commit(&Commit {
            messages: &logged,
            plan: &job.plan,
            offsets: &offsets,
            committed_at,
            publish_violations,
        });
        drop(logged);
        let outcome = result.map_err(Error::Store).map(|stats| Written {
            job,
            stats,
            committed_at,
        });
        let failed = outcome.is_err();
        if done.send(outcome).is_err() || failed {
            return;
        }
    }
}
