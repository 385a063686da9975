//! The store's error type: every variant says where, and what the operator can do.

use std::path::PathBuf;

/// Result of a store operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// RocksDB could not open the directory.
    #[error("cannot open the store at {path}: {source}; check that the directory is writable and that no other tandem process uses it")]
    Open {
        /// The store directory.
        path: PathBuf,
        /// RocksDB's error.
        source: rocksdb::Error,
    },
    /// The store's directory could not be created.
    #[error("cannot create the store directory {path}: {source}; check that its parent exists and is writable by the user tandem runs as")]
    CreateDirectory {
        /// The store directory.
        path: PathBuf,
        /// The file system's error.
        source: std::io::Error,
    },
    /// The store was written by an incompatible version of tandem.
    #[error("the store at {path} has schema version {found}, this tandem reads version {expected}: run the tandem version that wrote it, or start with an empty store.path and replay from Kafka")]
    SchemaVersion {
        /// The store directory.
        path: PathBuf,
        /// The version found.
        found: u32,
        /// The version this build reads.
        expected: u32,
    },
    /// A read or write failed.
    #[error(
        "store {operation} failed: {source}; if the disk is full, free space and restart tandem"
    )]
    RocksDb {
        /// What was being done.
        operation: &'static str,
        /// RocksDB's error.
        source: rocksdb::Error,
    },
    /// A write failed earlier; the store takes no more writes until tandem restarts.
    #[error("store {operation} refused: writes stopped after an earlier failure ({first}); free disk space or fix the error, then restart tandem (nothing is lost: consumption resumes at the last committed batch)")]
    WritesStopped {
        /// What was being done.
        operation: &'static str,
        /// The first failure.
        first: String,
    },
    /// A replicated batch does not continue what this store holds: it is not a copy of the
    /// store that published the batch.
    #[error("this store is not a copy of the active instance's: it holds {held}, the changelog's next batch continues {previous}; restore this instance's store from a backup the active instance took (tandem restore), or empty its store.path, then start it again")]
    NotACopy {
        /// What this store holds.
        held: String,
        /// What the batch continues.
        previous: String,
    },
    /// A batch could not be published to the changelog; nothing of it was written.
    #[error("store {operation} not written: {message}")]
    Changelog {
        /// What was being done.
        operation: &'static str,
        /// Whether another instance took over.
        fenced: bool,
        /// What happened, and what to do.
        message: String,
    },
    /// A stored key does not decode: the store is damaged or was written by other software.
    #[error("corrupt key in column family `{column_family}`: {detail}")]
    CorruptKey {
        /// The column family.
        column_family: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// A stored value does not decode.
    #[error("corrupt value in column family `{column_family}`: {detail}")]
    CorruptValue {
        /// The column family.
        column_family: &'static str,
        /// What is wrong with it.
        detail: String,
    },
}

impl Error {
    pub(crate) fn rocksdb(operation: &'static str) -> impl FnOnce(rocksdb::Error) -> Error {
        move |source| Error::RocksDb { operation, source }
    }
}
