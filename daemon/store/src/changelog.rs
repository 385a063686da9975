//! Replication: every committed batch is first published to a changelog that a standby
//! replays, so that the standby's store is the active one's, batch for batch.
//!
//! The store does not know Kafka. It hands each batch's writes to a [`Changelog`] before
//! writing them, and writes them only once the changelog has them durably; the changelog's
//! position after the batch is written in the same RocksDB batch, so a store always knows
//! which changelog entry it holds last. A standby applies published writes with
//! [`Store::apply_replicated`], which checks that each one continues exactly the state it
//! has (the `previous` position the publisher had): a copy that is not exact stops instead
//! of drifting silently.

use std::sync::atomic::Ordering;

use crate::batch::OrderedBatch;
use crate::error::{Error, Result};
use crate::{cf, Store};

/// Where the changelog position is kept in the meta column family: one past the changelog
/// offset of the last batch this store holds (big-endian i64).
pub(crate) const POSITION_KEY: &[u8] = b"changelog_position";

/// What a store held when it published (or received) a batch: the batch continues it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Previous {
    /// The store held the changelog up to this position.
    Position(i64),
    /// The store held nothing at all: no event, no offset, no changelog entry.
    Empty,
    /// The store held state that came from no changelog (it ran before replication was on).
    Unknown,
}

impl Previous {
    /// The form a changelog message's header carries.
    pub fn header(self) -> String {
        match self {
            Previous::Position(position) => position.to_string(),
            Previous::Empty => "empty".to_owned(),
            Previous::Unknown => "unknown".to_owned(),
        }
    }

    /// The value of [`Previous::header`], or `None` if it is not one.
    pub fn from_header(header: &str) -> Option<Previous> {
        match header {
            "empty" => Some(Previous::Empty),
            "unknown" => Some(Previous::Unknown),
            number => number.parse().ok().map(Previous::Position),
        }
    }
}

impl std::fmt::Display for Previous {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Previous::Position(position) => write!(formatter, "changelog position {position}"),
            Previous::Empty => formatter.write_str("an empty store"),
            Previous::Unknown => formatter.write_str("a store with state from before replication"),
        }
    }
}

/// Why a batch was not published. Nothing of the batch is written then, and the store takes
/// no more writes: whether the changelog got the batch may be unknown, and only a restart
/// (which replays the changelog from the store's position) makes the two agree again.
#[derive(Debug, Clone)]
pub struct PublishError {
    /// Another instance took over: this one must never write again.
    pub fenced: bool,
    /// What happened, and what to do.
    pub message: String,
}

/// Where batches are published before they are written.
pub trait Changelog: Send + Sync {
    /// Publishes one batch's writes durably; `previous` is what the store held before it.
    /// Returns the changelog position after the batch.
    fn publish(&self, previous: Previous, writes: &[u8]) -> std::result::Result<i64, PublishError>;
}

impl Store {
    /// From now on every write is published to `changelog` before it is written (set once
    /// per process: an instance that stops being active exits). Returns what the store holds
    /// now, which the first published batch continues.
    pub fn publish_to(&self, changelog: std::sync::Arc<dyn Changelog>) -> Result<Previous> {
        let _guard = self.lock_writes();
        let previous = self.previous()?;
        if self.changelog.set(changelog).is_err() {
            panic!("invariant: a store publishes to one changelog per process");
        }
        Ok(previous)
    }

    /// The changelog position of the last batch this store holds, if it holds any.
    pub fn changelog_position(&self) -> Option<i64> {
        match self.position.load(Ordering::Acquire) {
            NO_POSITION => None,
            position => Some(position),
        }
    }

    /// What the store holds, as a batch published now would name it.
    pub fn previous(&self) -> Result<Previous> {
        if let Some(position) = self.changelog_position() {
            return Ok(Previous::Position(position));
        }
        let empty = self.holds_nothing()?;
        Ok(if empty {
            Previous::Empty
        } else {
            Previous::Unknown
        })
    }

    /// Whether nothing was ever written but the store's identity (schema version, id).
    fn holds_nothing(&self) -> Result<bool> {
        for name in cf::ALL {
            for item in self
                .db
                .iterator_cf(self.cf(name), rocksdb::IteratorMode::Start)
            {
                let (key, _) = item.map_err(Error::rocksdb("scan for any state"))?;
                if name == cf::META && crate::IDENTITY_KEYS.contains(&&*key) {
                    continue;
                }
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Writes a batch another instance published at changelog position `after` (one past
    /// its last changelog offset), if it continues exactly what this store holds.
    pub fn apply_replicated(&self, previous: Previous, writes: &[u8], after: i64) -> Result<()> {
        let _guard = self.lock_writes();
        let held = self.previous()?;
        if previous != held {
            return Err(Error::NotACopy {
                held: held.to_string(),
                previous: previous.to_string(),
            });
        }
        let batch = OrderedBatch::decode(writes).map_err(|detail| Error::CorruptValue {
            column_family: "changelog",
            detail,
        })?;
        self.write_unpublished(batch, after, "write of a replicated batch")
    }

    /// Writes `batch` with the changelog position `after`, without publishing it.
    pub(crate) fn write_unpublished(
        &self,
        batch: OrderedBatch,
        after: i64,
        operation: &'static str,
    ) -> Result<()> {
        let mut batch = batch.into_write_batch(self);
        batch.put_cf(self.cf(cf::META), POSITION_KEY, after.to_be_bytes());
        self.write_batch(batch, operation)?;
        self.position.store(after, Ordering::Release);
        Ok(())
    }

    /// Publishes `batch` to the changelog, then writes it with its position.
    pub(crate) fn write_published(
        &self,
        changelog: &dyn Changelog,
        mut batch: OrderedBatch,
        operation: &'static str,
    ) -> Result<()> {
        let previous = self.previous()?;
        let after = changelog
            .publish(previous, &batch.encode())
            .map_err(|failure| {
                let _ = self
                    .write_failure
                    .set(format!("{operation}: {}", failure.message));
                Error::Changelog {
                    operation,
                    fenced: failure.fenced,
                    message: failure.message,
                }
            })?;
        self.write_unpublished(batch, after, operation)
    }

    /// Reads the stored changelog position (at open).
    pub(crate) fn load_position(&self) -> Result<()> {
        let stored = self
            .db
            .get_cf(self.cf(cf::META), POSITION_KEY)
            .map_err(Error::rocksdb("read of the changelog position"))?;
        let position = match stored {
            None => NO_POSITION,
            Some(bytes) => <[u8; 8]>::try_from(bytes.as_slice())
                .map(i64::from_be_bytes)
                .map_err(|_| Error::CorruptValue {
                    column_family: cf::META,
                    detail: "the changelog position is not 8 bytes".to_owned(),
                })?,
        };
        self.position.store(position, Ordering::Release);
        Ok(())
    }
}

/// [`Store::changelog_position`] when the store holds no changelog entry.
pub(crate) const NO_POSITION: i64 = -1;

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tandem_core::Timestamp;

    use super::*;
    use crate::{StoreOptions, SummarySnapshot};

    /// A changelog that keeps what it is given, at positions 10, 20, 30...
    #[derive(Default)]
    struct Kept(Mutex<Vec<(Previous, Vec<u8>, i64)>>);

    impl Changelog for Kept {
        fn publish(&self, previous: Previous, writes: &[u8]) -> Result<i64, PublishError> {
            let mut kept = self.0.lock().unwrap();
            let after = 10 * (kept.len() as i64 + 1);
            kept.push((previous, writes.to_vec(), after));
            Ok(after)
        }
    }

    fn summary(seconds: i64) -> SummarySnapshot {
        SummarySnapshot {
            at: Timestamp::from_unix_nanos(seconds * 1_000_000_000),
            clock: None,
            entities: Default::default(),
        }
    }

    fn open(directory: &tempfile::TempDir) -> Store {
        Store::open(directory.path(), &StoreOptions::default()).unwrap()
    }

    #[test]
    fn a_standby_applying_the_published_batches_holds_what_the_active_store_holds() {
        let (active_dir, standby_dir) =
            (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (active, standby) = (open(&active_dir), open(&standby_dir));
        let kept = Arc::new(Kept::default());
        assert_eq!(active.publish_to(kept.clone()).unwrap(), Previous::Empty);
        active.record_summary(&summary(1)).unwrap();
        active.record_summary(&summary(2)).unwrap();
        assert_eq!(active.changelog_position(), Some(20));

        let published = kept.0.lock().unwrap().clone();
        assert_eq!(
            published
                .iter()
                .map(|(previous, _, after)| (*previous, *after))
                .collect::<Vec<_>>(),
            [(Previous::Empty, 10), (Previous::Position(10), 20)]
        );
        for (previous, writes, after) in &published {
            standby.apply_replicated(*previous, writes, *after).unwrap();
        }
        assert_eq!(standby.changelog_position(), Some(20));
        let all = |store: &Store| {
            store
                .summaries(Timestamp::from_unix_nanos(0), None, 10)
                .unwrap()
        };
        assert_eq!(all(&standby), vec![summary(1), summary(2)]);
        assert_eq!(all(&standby), all(&active));

        // A batch applied twice, or out of order, does not continue the copy: refused.
        let (previous, writes, after) = &published[0];
        let refused = standby
            .apply_replicated(*previous, writes, *after)
            .unwrap_err();
        assert!(matches!(refused, Error::NotACopy { .. }), "{refused}");
        assert_eq!(all(&standby).len(), 2);

        // The position survives a restart.
        drop(standby);
        assert_eq!(open(&standby_dir).changelog_position(), Some(20));
    }

    #[test]
    fn a_write_no_changelog_holds_makes_the_store_no_copy_of_any() {
        let directory = tempfile::tempdir().unwrap();
        let store = open(&directory);
        let kept = Arc::new(Kept::default());
        store.publish_to(kept).unwrap();
        store.record_summary(&summary(1)).unwrap();
        drop(store);
        // Opened again without replication, and written.
        let store = open(&directory);
        assert_eq!(store.previous().unwrap(), Previous::Position(10));
        store.record_summary(&summary(2)).unwrap();
        assert_eq!(store.changelog_position(), None);
        assert_eq!(store.previous().unwrap(), Previous::Unknown);
        drop(store);
        assert_eq!(open(&directory).previous().unwrap(), Previous::Unknown);
    }

    #[test]
    fn a_failed_publication_writes_nothing_and_stops_writes() {
        struct Fenced;
        impl Changelog for Fenced {
            fn publish(&self, _: Previous, _: &[u8]) -> Result<i64, PublishError> {
                Err(PublishError {
                    fenced: true,
                    message: "another instance took over".to_owned(),
                })
            }
        }
        let directory = tempfile::tempdir().unwrap();
        let store = open(&directory);
        store.publish_to(Arc::new(Fenced)).unwrap();
        let failed = store.record_summary(&summary(1)).unwrap_err();
        assert!(
            matches!(failed, Error::Changelog { fenced: true, .. }),
            "{failed}"
        );
        assert!(store
            .summaries(Timestamp::from_unix_nanos(0), None, 10)
            .unwrap()
            .is_empty());
        assert!(store
            .write_failure()
            .unwrap()
            .contains("another instance took over"));
    }
}
