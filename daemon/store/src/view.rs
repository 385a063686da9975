//! The store as the planner reads it: the [`StateView`] of the last committed batch, and
//! the prefix scans the readers share.

use rocksdb::{Direction, IteratorMode};
use tandem_core::apply::{DueRecord, StateView, ViewResult};
use tandem_core::{RecordRow, System, Timestamp};

use crate::codec::decode_value;
use crate::error::{Error, Result};
use crate::{cf, keys, Store};

impl StateView for Store {
    fn native_ids(&self, system: System, entity: &str) -> ViewResult<Vec<String>> {
        let prefix = keys::encode_native_prefix(system, entity);
        let mut read_options = rocksdb::ReadOptions::default();
        read_options.set_iterate_upper_bound(keys::prefix_end(&prefix));
        let mut ids = Vec::new();
        for item in self.db.iterator_cf_opt(
            self.cf(cf::JOIN_KEYS),
            read_options,
            IteratorMode::From(&prefix, Direction::Forward),
        ) {
            let (key, _) = item.map_err(Error::rocksdb("scan of the join-key index"))?;
            ids.push(keys::decode_native(&key)?.2);
        }
        Ok(ids)
    }

    fn partition_members(
        &self,
        topic: &str,
        partition: i32,
    ) -> ViewResult<Vec<(System, String, String)>> {
        let prefix = keys::encode_partition(topic, partition);
        let mut read_options = rocksdb::ReadOptions::default();
        read_options.set_iterate_upper_bound(keys::prefix_end(&prefix));
        let mut members = Vec::new();
        for item in self.db.iterator_cf_opt(
            self.cf(cf::PARTITION_MEMBERS),
            read_options,
            IteratorMode::From(&prefix, Direction::Forward),
        ) {
            let (key, _) = item.map_err(Error::rocksdb("scan of partition members"))?;
            members.push(keys::decode_partition_member(&key)?);
        }
        Ok(members)
    }

    fn referencing(
        &self,
        system: System,
        entity: &str,
        native_id: &str,
    ) -> ViewResult<Vec<(String, String)>> {
        let prefix = keys::encode_referenced(system, entity, native_id);
        let mut read_options = rocksdb::ReadOptions::default();
        read_options.set_iterate_upper_bound(keys::prefix_end(&prefix));
        let mut found = Vec::new();
        for item in self.db.iterator_cf_opt(
            self.cf(cf::REFERENCES),
            read_options,
            IteratorMode::From(&prefix, Direction::Forward),
        ) {
            let (key, _) = item.map_err(Error::rocksdb("scan of the reference index"))?;
            found.push(keys::decode_reference(&key)?);
        }
        Ok(found)
    }

    fn is_unverified(&self, system: System, entity: &str, native_id: &str) -> ViewResult<bool> {
        // A native record waits for a re-read exactly while it is unverified.
        Ok(self.reread(system, entity, native_id)?.is_some())
    }

    fn snapshot_member(
        &self,
        system: System,
        entity: &str,
        snapshot_id: &str,
        native_id: &str,
    ) -> ViewResult<bool> {
        let found = self
            .db
            .get_pinned_cf(
                self.cf(cf::SNAPSHOT_MEMBERS),
                keys::encode_snapshot_member(system, entity, snapshot_id, native_id),
            )
            .map_err(Error::rocksdb("read of snapshot membership"))?;
        Ok(found.is_some())
    }

    fn event_seen(&self, system: System, event_id: &str) -> ViewResult<bool> {
        let found = self
            .db
            .get_pinned_cf(self.cf(cf::DEDUPE), keys::encode_event_id(system, event_id))
            .map_err(Error::rocksdb("read of the dedupe index"))?;
        Ok(found.is_some())
    }

    fn join_key(
        &self,
        system: System,
        entity: &str,
        native_id: &str,
    ) -> ViewResult<Option<String>> {
        let found = self
            .db
            .get_pinned_cf(
                self.cf(cf::JOIN_KEYS),
                keys::encode_native(system, entity, native_id),
            )
            .map_err(Error::rocksdb("read of the join-key index"))?;
        Ok(found
            .map(|bytes| keys::decode_join_key(&bytes))
            .transpose()?)
    }

    fn due_records(&self, up_to: Timestamp, limit: usize) -> ViewResult<Vec<DueRecord>> {
        let mut due = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(cf::PENDING_DUE), IteratorMode::Start)
        {
            let (key, _) = item.map_err(Error::rocksdb("scan of pending records"))?;
            let record = keys::decode_pending_due(&key)?;
            if record.0 > up_to || due.len() >= limit {
                break;
            }
            due.push(record);
        }
        Ok(due)
    }

    fn record(&self, entity: &str, join_key: &str) -> ViewResult<Option<RecordRow>> {
        let found = self
            .db
            .get_pinned_cf(self.cf(cf::RECORDS), keys::encode_record(entity, join_key))
            .map_err(Error::rocksdb("read of a record"))?;
        Ok(found
            .map(|bytes| decode_value(&bytes, cf::RECORDS))
            .transpose()?)
    }
}

/// One key and its value, as a scan returns them.
pub(crate) type KeyValue = (Box<[u8]>, Box<[u8]>);

/// Walks a column family forward from `start` while keys keep `prefix`.
pub(crate) fn scan_prefix<'a>(
    db: &'a rocksdb::DB,
    handle: &'a rocksdb::ColumnFamily,
    snapshot: &'a rocksdb::Snapshot<'a>,
    prefix: Vec<u8>,
    start: Vec<u8>,
) -> impl Iterator<Item = Result<KeyValue>> + 'a {
    let mut read_options = rocksdb::ReadOptions::default();
    read_options.set_snapshot(snapshot);
    read_options.set_iterate_upper_bound(keys::prefix_end(&prefix));
    db.iterator_cf_opt(
        handle,
        read_options,
        IteratorMode::From(&start, Direction::Forward),
    )
    .map(|item| item.map_err(Error::rocksdb("scan")))
}
