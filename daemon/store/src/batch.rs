//! The writes of one commit, sorted before they reach RocksDB.

use rocksdb::WriteBatch;

use crate::Store;

/// The writes of one commit, put into the RocksDB batch sorted by column family and key.
///
/// A memtable is a skip list; inserting keys in order lets each insert start from where the
/// previous one ended instead of searching from the top, which halves the cost of a commit
/// whose keys (event ids, join keys) are otherwise random. The sort is stable, so two writes
/// of one key keep their order.
#[derive(Default)]
pub(crate) struct OrderedBatch {
    writes: Vec<PendingWrite>,
}

/// One put (`value` is `Some`) or delete of an [`OrderedBatch`].
struct PendingWrite {
    column_family: &'static str,
    key: Vec<u8>,
    value: Option<Vec<u8>>,
}

impl OrderedBatch {
    pub(crate) fn put_cf(
        &mut self,
        column_family: &'static str,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) {
        self.writes.push(PendingWrite {
            column_family,
            key: key.into(),
            value: Some(value.into()),
        });
    }

    pub(crate) fn delete_cf(&mut self, column_family: &'static str, key: impl Into<Vec<u8>>) {
        self.writes.push(PendingWrite {
            column_family,
            key: key.into(),
            value: None,
        });
    }

    pub(crate) fn into_write_batch(mut self, store: &Store) -> WriteBatch {
        self.writes.sort_by(|left, right| {
            (left.column_family, &left.key).cmp(&(right.column_family, &right.key))
        });
        let mut batch = WriteBatch::default();
        for write in self.writes {
            let handle = store.cf(write.column_family);
            match write.value {
                Some(value) => batch.put_cf(handle, write.key, value),
                None => batch.delete_cf(handle, write.key),
            }
        }
        batch
    }
}
