//! The store's side of feed completeness: snapshot membership, the re-read queue, and the
//! control outbox of snapshot requests.
//!
//! The apply loop writes re-read rows and snapshot requests with the batch that raised them.
//! The request forwarder only marks rows of the episode it sent (a row resolved or reopened
//! meanwhile is left alone) and deletes delivered control messages.

use rocksdb::IteratorMode;

use crate::batch::OrderedBatch;
use serde::{Deserialize, Serialize};
use tandem_core::feed::SnapshotRequest;
use tandem_core::record::UnverifiedReason;
use tandem_core::{System, Timestamp};

use crate::codec::{decode_value, encode_value};
use crate::error::{Error, Result};
use crate::keys;
use crate::{cf, Store};

/// A native record waiting to be read again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RereadRow {
    /// Why its state cannot be trusted.
    pub reason: UnverifiedReason,
    /// Event time since when.
    pub since: Timestamp,
    /// Wall-clock time the row was written (a new episode starts a new row).
    pub recorded_at: Timestamp,
    /// Wall-clock time of the last request sent for this episode, if any.
    pub requested_at: Option<Timestamp>,
}

/// Which native record a re-read is for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RereadTarget {
    /// Its system.
    pub system: System,
    /// Its entity.
    pub entity: String,
    /// Its native id.
    pub native_id: String,
}

/// A round of the re-read queue.
#[derive(Clone, Debug, Default)]
pub struct DueRereads {
    /// Records due for a request, oldest first.
    pub due: Vec<(RereadTarget, RereadRow)>,
    /// Where the next round continues (`None`: start again from the oldest).
    pub resume_after: Option<Vec<u8>>,
}

/// A snapshot request waiting to be published on the control topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlRequest {
    /// The request.
    pub request: SnapshotRequest,
    /// Its outbox key, to clear it once delivered.
    #[serde(skip)]
    pub key: Vec<u8>,
}

impl Store {
    /// The re-read row of a native record, if it waits for one.
    pub fn reread(
        &self,
        system: System,
        entity: &str,
        native_id: &str,
    ) -> Result<Option<RereadRow>> {
        self.db
            .get_cf(
                self.cf(cf::REREADS),
                keys::encode_native(system, entity, native_id),
            )
            .map_err(Error::rocksdb("read of a re-read row"))?
            .map(|bytes| decode_value(&bytes, cf::REREADS))
            .transpose()
    }

    /// Records waiting for a re-read that are due for a request: never requested in their
    /// current episode, or requested before `resend_before`. Oldest first, at most `limit`.
    pub fn due_rereads(
        &self,
        resend_before: Timestamp,
        limit: usize,
    ) -> Result<Vec<(RereadTarget, RereadRow)>> {
        Ok(self
            .due_rereads_from(None, resend_before, limit, usize::MAX)?
            .due)
    }

    /// Like [`Store::due_rereads`], but walking the queue from just after `cursor` and looking
    /// at no more than `max_examined` rows; also returns where to continue (`None`: the end
    /// of the queue was reached). The forwarder goes round the queue this way, so rows
    /// requested recently at its head cannot starve the rows behind them.
    pub fn due_rereads_from(
        &self,
        cursor: Option<&[u8]>,
        resend_before: Timestamp,
        limit: usize,
        max_examined: usize,
    ) -> Result<DueRereads> {
        let mut due = Vec::new();
        let start = match cursor {
            Some(cursor) => {
                let mut after = cursor.to_vec();
                after.push(0);
                after
            }
            None => Vec::new(),
        };
        let queue = self.db.iterator_cf(
            self.cf(cf::REREAD_QUEUE),
            IteratorMode::From(&start, rocksdb::Direction::Forward),
        );
        let mut last_examined: Option<Vec<u8>> = None;
        for (examined, item) in queue.enumerate() {
            let (key, _) = item.map_err(Error::rocksdb("scan of the re-read queue"))?;
            if due.len() >= limit || examined >= max_examined {
                return Ok(DueRereads {
                    due,
                    resume_after: last_examined,
                });
            }
            last_examined = Some(key.to_vec());
            let (_, system, entity, native_id) = keys::decode_reread_queue(&key)?;
            let Some(row) = self.reread(system, &entity, &native_id)? else {
                continue;
            };
            if row
                .requested_at
                .is_some_and(|requested| requested >= resend_before)
            {
                continue;
            }
            due.push((
                RereadTarget {
                    system,
                    entity,
                    native_id,
                },
                row,
            ));
        }
        Ok(DueRereads {
            due,
            resume_after: None,
        })
    }

    /// Notes that re-reads were requested at `requested_at`, for rows still waiting.
    ///
    /// Runs in the forwarder, concurrently with commits: a row resolved meanwhile must not be
    /// brought back, so each row is re-read and only rewritten if it is the same episode.
    pub fn mark_rereads_requested(
        &self,
        sent: &[(RereadTarget, RereadRow)],
        requested_at: Timestamp,
    ) -> Result<()> {
        let _guard = self.lock_writes();
        let mut batch = OrderedBatch::default();
        for (target, row) in sent {
            let key = keys::encode_native(target.system, &target.entity, &target.native_id);
            let Some(current) = self.reread(target.system, &target.entity, &target.native_id)?
            else {
                continue;
            };
            if current.recorded_at != row.recorded_at {
                continue;
            }
            let updated = RereadRow {
                requested_at: Some(requested_at),
                ..current
            };
            batch.put_cf(cf::REREADS, key, encode_value(&updated));
        }
        self.write_locked(batch, "write of re-read requests")
    }

    /// Snapshot requests not yet delivered to the control topic.
    pub fn pending_control_requests(&self, limit: usize) -> Result<Vec<ControlRequest>> {
        let mut pending = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(cf::CONTROL_OUTBOX), IteratorMode::Start)
            .take(limit)
        {
            let (key, value) = item.map_err(Error::rocksdb("scan of the control outbox"))?;
            let mut request: ControlRequest = decode_value(&value, cf::CONTROL_OUTBOX)?;
            request.key = key.to_vec();
            pending.push(request);
        }
        Ok(pending)
    }

    /// Clears delivered snapshot requests.
    pub fn mark_control_delivered(&self, delivered: &[ControlRequest]) -> Result<()> {
        let mut batch = OrderedBatch::default();
        for request in delivered {
            batch.delete_cf(cf::CONTROL_OUTBOX, request.key.clone());
        }
        self.write(batch, "write of control deliveries")
    }

    pub(crate) fn control_key(request: &SnapshotRequest) -> Vec<u8> {
        keys::encode_control(request.requested_at, request.system, &request.entity)
    }
}
