//! tandem's store: every RocksDB column family, key layout and atomic batch commit.
//!
//! The apply loop is the only writer. Each batch of Kafka messages becomes one `WriteBatch`
//! holding the event log entries, the changed records with their indexes, the aggregates and
//! the consumed offsets, written with the WAL on: after a crash the store is exactly the state
//! after some committed batch, and consumption resumes at that batch's offsets.
//! Readers (the API, the CLI) work on a RocksDB snapshot and never see half a batch.

mod batch;
mod changelog;
mod codec;
mod error;
mod feed;
mod keys;
mod ownership;
mod read;
mod summaries;
mod view;
mod write;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, Options, DB};

pub use changelog::{Changelog, Previous, PublishError};
pub use error::{Error, Result};
pub use feed::{ControlRequest, DueRereads, RereadRow, RereadTarget};
pub use keys::Coordinates;
pub use ownership::{PendingViolation, ViolationFilter, ViolationPage};
pub use read::{
    decode_record, DeadLetterRow, DivergenceFilter, DivergenceItem, DivergencePage, FieldValues,
    HistoryItem, ReadSnapshot,
};
pub use summaries::{EntityCounts, SummarySnapshot};
pub use write::{Commit, CommitStats, LoggedMessage, NextOffset};

/// The layout version of the store; bumped when a stored format changes incompatibly.
pub const SCHEMA_VERSION: u32 = 3;

/// Every column family, opened together. The names are part of the on-disk format.
pub(crate) mod cf {
    /// Schema version and the apply state (clock, counters, summaries).
    pub(crate) const META: &str = "meta";
    /// Next offset to consume per topic-partition.
    pub(crate) const OFFSETS: &str = "offsets";
    /// The event log: every recorded event, per native record in event-time order, with the
    /// message as received.
    pub(crate) const HISTORY: &str = "history";
    /// Event ids already recorded, per system.
    pub(crate) const DEDUPE: &str = "dedupe";
    /// Native record to join key.
    pub(crate) const JOIN_KEYS: &str = "join_keys";
    /// Join key to record row.
    pub(crate) const RECORDS: &str = "records";
    /// Index of records not in sync, by status.
    pub(crate) const DIVERGENCES: &str = "divergences";
    /// Index of mismatched records, by field.
    pub(crate) const FIELD_MISMATCHES: &str = "field_mismatches";
    /// Index of divergent records, by since.
    pub(crate) const DIVERGENCE_AGE: &str = "divergence_age";
    /// Index of pending records, by the end of their grace period.
    pub(crate) const PENDING_DUE: &str = "pending_due";
    /// Messages that could not be decoded, with the reason.
    pub(crate) const DEAD_LETTERS: &str = "dead_letters";
    /// Dead letters not yet confirmed delivered to the dead-letter topic.
    pub(crate) const DLQ_OUTBOX: &str = "dlq_outbox";
    /// Native records seen by snapshot runs.
    pub(crate) const SNAPSHOT_MEMBERS: &str = "snapshot_members";
    /// Native records waiting to be read again from their system.
    pub(crate) const REREADS: &str = "rereads";
    /// The same, ordered by since when they wait: the forwarder's queue.
    pub(crate) const REREAD_QUEUE: &str = "reread_queue";
    /// Snapshot requests not yet confirmed delivered to the control topic.
    pub(crate) const CONTROL_OUTBOX: &str = "control_outbox";
    /// Native records by the topic-partition their changes arrive on.
    pub(crate) const PARTITION_MEMBERS: &str = "partition_members";
    /// Writes that broke the ownership rule, by time.
    pub(crate) const VIOLATIONS: &str = "violations";
    /// Violations not yet confirmed delivered to the violations topic.
    pub(crate) const VIOLATION_OUTBOX: &str = "violation_outbox";
    /// Writes per writer, entity and day.
    pub(crate) const WRITERS: &str = "writers";
    /// Cutover transitions not yet confirmed published on the control topic.
    pub(crate) const CUTOVER_OUTBOX: &str = "cutover_outbox";
    /// Compensation commands not yet confirmed published on the commands topic.
    pub(crate) const COMMAND_OUTBOX: &str = "command_outbox";
    /// Summaries of the report, by the time they were taken.
    pub(crate) const REPORT_HISTORY: &str = "report_history";
    /// Records by the native records their `ref` fields looked up.
    pub(crate) const REFERENCES: &str = "references";

    pub(crate) const ALL: [&str; 24] = [
        META,
        OFFSETS,
        HISTORY,
        DEDUPE,
        JOIN_KEYS,
        RECORDS,
        DIVERGENCES,
        FIELD_MISMATCHES,
        DIVERGENCE_AGE,
        PENDING_DUE,
        DEAD_LETTERS,
        DLQ_OUTBOX,
        SNAPSHOT_MEMBERS,
        REREADS,
        REREAD_QUEUE,
        CONTROL_OUTBOX,
        PARTITION_MEMBERS,
        VIOLATIONS,
        VIOLATION_OUTBOX,
        WRITERS,
        CUTOVER_OUTBOX,
        COMMAND_OUTBOX,
        REPORT_HISTORY,
        REFERENCES,
    ];
}

const SCHEMA_VERSION_KEY: &[u8] = b"schema_version";
/// A random id given to the store when it is created; it names this store's consumer in
/// the group (`group.instance.id`), so a restart on the same store takes its partitions back
/// at once.
const STORE_ID_KEY: &[u8] = b"store_id";

/// The meta keys every store has from its creation: a store holding only these is empty.
pub(crate) const IDENTITY_KEYS: [&[u8]; 2] = [SCHEMA_VERSION_KEY, STORE_ID_KEY];

/// Tuning of the store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Block cache size in bytes, shared by all column families.
    pub cache_bytes: usize,
    /// Whether every batch is fsynced. Without it a process crash loses nothing (the WAL is
    /// in the OS cache); a machine crash may lose the last batches, which are then consumed
    /// again from Kafka because their offsets were lost with them.
    pub sync_writes: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_bytes: 256 * 1024 * 1024,
            sync_writes: false,
        }
    }
}

/// The open store. Cheap to clone: clones share one RocksDB instance.
#[derive(Clone)]
pub struct Store {
    db: Arc<DB>,
    path: PathBuf,
    sync_writes: bool,
    /// Serializes writes that must not interleave with a read-modify-write of another
    /// thread (the request forwarder marking re-read rows while batches commit).
    write_lock: Arc<std::sync::Mutex<()>>,
    /// The first write error, after which nothing is written any more: RocksDB refuses
    /// writes after a failed WAL append anyway, and some builds abort on the next attempt.
    write_failure: Arc<std::sync::OnceLock<String>>,
    /// See [`Store::id`].
    id: String,
    /// Where every write is published first, when the store replicates to a standby.
    changelog: Arc<std::sync::OnceLock<Arc<dyn Changelog>>>,
    /// See [`Store::changelog_position`] (`-1`: none).
    position: Arc<std::sync::atomic::AtomicI64>,
}

impl Store {
    /// Flushes the memtables and compacts every column family fully: a store just filled in
    /// bulk (a benchmark's fill) then reads as a settled store does.
    pub fn compact(&self) -> Result<()> {
        for name in cf::ALL {
            let handle = self.cf(name);
            self.db
                .flush_cf(handle)
                .map_err(Error::rocksdb("flush of a column family"))?;
            self.db
                .compact_range_cf(handle, None::<&[u8]>, None::<&[u8]>);
        }
        Ok(())
    }

    /// Opens (or creates) the store in `path`. A store it creates is private to the user the
    /// daemon runs as (directory mode 0700): it holds CRM records.
    pub fn open(path: &Path, options: &StoreOptions) -> Result<Store> {
        if !path.exists() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
                .map_err(|source| Error::CreateDirectory {
                    path: path.to_owned(),
                    source,
                })?;
        }
        let cache = Cache::new_lru_cache(options.cache_bytes);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_bloom_filter(10.0, false);
        table.set_cache_index_and_filter_blocks(true);
        let mut column_options = Options::default();
        column_options.set_block_based_table_factory(&table);
        column_options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        column_options.set_write_buffer_size(16 * 1024 * 1024);
        // Most lookups of the apply loop miss (new event ids, new records): a whole-key bloom
        // filter on the memtable answers those without walking the skip list.
        column_options.set_memtable_whole_key_filtering(true);
        column_options.set_memtable_prefix_bloom_ratio(0.05);

        let mut db_options = Options::default();
        db_options.create_if_missing(true);
        db_options.create_missing_column_families(true);
        db_options.set_max_background_jobs(2);
        db_options.set_keep_log_file_num(5);
        let descriptors = cf::ALL
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(*name, column_options.clone()));
        let db = DB::open_cf_descriptors(&db_options, path, descriptors);
        let store = Store::opened(db, path, options.sync_writes)?;
        store.check_schema_version()?;
        store.load_position()?;
        let id = store.read_or_create_id()?;
        Ok(Store { id, ..store })
    }

    /// The store around a database just opened (its id not read yet).
    fn opened(
        db: std::result::Result<DB, rocksdb::Error>,
        path: &Path,
        sync_writes: bool,
    ) -> Result<Store> {
        let db = db.map_err(|source| Error::Open {
            path: path.to_owned(),
            source,
        })?;
        Ok(Store {
            db: Arc::new(db),
            path: path.to_owned(),
            sync_writes,
            write_lock: Arc::new(std::sync::Mutex::new(())),
            write_failure: Arc::new(std::sync::OnceLock::new()),
            id: String::new(),
            changelog: Arc::default(),
            position: Arc::new(std::sync::atomic::AtomicI64::new(changelog::NO_POSITION)),
        })
    }

    /// Opens a store only to read it (a backup's checkpoint before it is uploaded, a restored
    /// store before it is used): nothing in `path` is changed, and a store of another schema
    /// version or without tandem's column families is refused.
    pub fn open_read_only(path: &Path) -> Result<Store> {
        let descriptors = cf::ALL
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(*name, Options::default()));
        let db = DB::open_cf_descriptors_read_only(&Options::default(), path, descriptors, false);
        let store = Store::opened(db, path, false)?;
        let found = store.stored_schema_version()?;
        if found != Some(SCHEMA_VERSION) {
            return Err(Error::SchemaVersion {
                path: path.to_owned(),
                found: found.unwrap_or(0),
                expected: SCHEMA_VERSION,
            });
        }
        store.load_position()?;
        let stored_id = store
            .db
            .get_cf(store.cf(cf::META), STORE_ID_KEY)
            .map_err(Error::rocksdb("read of the store id"))?;
        let id = match stored_id {
            Some(bytes) => String::from_utf8(bytes).map_err(|_| Error::CorruptValue {
                column_family: cf::META,
                detail: "the store id is not UTF-8".to_owned(),
            })?,
            None => String::new(),
        };
        Ok(Store { id, ..store })
    }

    /// Writes a consistent copy of the whole store, as of one instant, to `directory` (which
    /// must not exist; it must be on the store's file system, where immutable table files are
    /// hard links rather than copies). It is RocksDB's checkpoint: the memtables are flushed
    /// first and the write-ahead log that the column families still need is copied, so every
    /// column family reads as of the same committed batch. Writes go on meanwhile.
    pub fn checkpoint(&self, directory: &Path) -> Result<()> {
        let checkpoint = rocksdb::checkpoint::Checkpoint::new(&self.db)
            .map_err(Error::rocksdb("preparation of a checkpoint"))?;
        checkpoint
            .create_checkpoint(directory)
            .map_err(Error::rocksdb("checkpoint"))
    }

    /// The store's id, given when it was created (a UUID); copies of a store (a restored
    /// backup) carry the same one.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn read_or_create_id(&self) -> Result<String> {
        let meta = self.cf(cf::META);
        let stored = self
            .db
            .get_cf(meta, STORE_ID_KEY)
            .map_err(Error::rocksdb("read of the store id"))?;
        if let Some(bytes) = stored {
            return String::from_utf8(bytes).map_err(|_| Error::CorruptValue {
                column_family: cf::META,
                detail: "the store id is not UTF-8".to_owned(),
            });
        }
        let id = uuid::Uuid::new_v4().to_string();
        self.db
            .put_cf(meta, STORE_ID_KEY, id.as_bytes())
            .map_err(Error::rocksdb("write of the store id"))?;
        Ok(id)
    }

    /// The directory of the store.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn stored_schema_version(&self) -> Result<Option<u32>> {
        let stored = self
            .db
            .get_cf(self.cf(cf::META), SCHEMA_VERSION_KEY)
            .map_err(Error::rocksdb("read of the schema version"))?;
        stored
            .map(|bytes| {
                <[u8; 4]>::try_from(bytes.as_slice())
                    .map(u32::from_be_bytes)
                    .map_err(|_| Error::CorruptValue {
                        column_family: cf::META,
                        detail: "schema version is not 4 bytes".to_owned(),
                    })
            })
            .transpose()
    }

    fn check_schema_version(&self) -> Result<()> {
        let meta = self.cf(cf::META);
        match self.stored_schema_version()? {
            None => self
                .db
                .put_cf(meta, SCHEMA_VERSION_KEY, SCHEMA_VERSION.to_be_bytes())
                .map_err(Error::rocksdb("write of the schema version")),
            Some(found) => {
                if found == SCHEMA_VERSION {
                    Ok(())
                } else if found == 2 {
                    // Version 3 added the part of a message to history keys; version 2 keys
                    // (no part) still read, so upgrading only records the new version.
                    self.db
                        .put_cf(meta, SCHEMA_VERSION_KEY, SCHEMA_VERSION.to_be_bytes())
                        .map_err(Error::rocksdb("write of the schema version"))
                } else {
                    Err(Error::SchemaVersion {
                        path: self.path.clone(),
                        found,
                        expected: SCHEMA_VERSION,
                    })
                }
            }
        }
    }

    pub(crate) fn cf(&self, name: &'static str) -> &ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("invariant: every column family in cf::ALL is created at open")
    }

    /// Approximate size of the store on disk, in bytes (SST files and memtables).
    pub fn approximate_size_bytes(&self) -> u64 {
        cf::ALL
            .iter()
            .map(|name| {
                let handle = self.cf(name);
                let sst = self
                    .db
                    .property_int_value_cf(handle, "rocksdb.total-sst-files-size")
                    .ok()
                    .flatten()
                    .unwrap_or(0);
                let memtable = self
                    .db
                    .property_int_value_cf(handle, "rocksdb.cur-size-all-mem-tables")
                    .ok()
                    .flatten()
                    .unwrap_or(0);
                sst + memtable
            })
            .sum()
    }
}
