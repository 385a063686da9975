//! What can go wrong with a backup or a restore, each saying what to do.

use std::path::PathBuf;

/// Result of a backup operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A backup, listing, verification or restore failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The target cannot be used as given.
    #[error("backup target `{target}` {problem}")]
    Target {
        /// The target as configured.
        target: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The object store answered with an error.
    #[error("{operation} at {target} failed: {source}; check that the target is reachable and that its credentials may list, read and write it")]
    Objects {
        /// What was being done.
        operation: String,
        /// The target.
        target: String,
        /// The object store's error.
        source: object_store::Error,
    },
    /// A local file could not be read or written.
    #[error("{operation} {path}: {source}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The file.
        path: PathBuf,
        /// The file system's error.
        source: std::io::Error,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] tandem_store::Error),
    /// The target holds no complete backup (of that id).
    #[error("{target} holds no complete backup{which}: run `tandem backup list --from {target}` to see what it holds")]
    NotFound {
        /// The target.
        target: String,
        /// ` named <id>` when one was asked for.
        which: String,
    },
    /// A backup's manifest does not read.
    #[error("the manifest of backup {id} at {target} is unreadable: {detail}; restore another backup (`tandem backup list`)")]
    Manifest {
        /// The backup.
        id: String,
        /// The target.
        target: String,
        /// What is wrong.
        detail: String,
    },
    /// A file of a backup is missing or differs from its manifest.
    #[error("backup {id} at {target}: {problem}; that backup cannot be restored: restore another one (`tandem backup list`) and run `tandem backup verify`")]
    Damaged {
        /// The backup.
        id: String,
        /// The target.
        target: String,
        /// Which file, and how.
        problem: String,
    },
    /// A restore was asked into a directory that holds something.
    #[error("cannot restore into {path}: it is not empty; restore into a new directory (then point store.path at it), or remove it first if it holds nothing of value")]
    RestoreTargetNotEmpty {
        /// The directory.
        path: PathBuf,
    },
    /// Backups are not configured.
    #[error("backups are not configured: set `backup.target` (a directory or s3://bucket/prefix) in the configuration")]
    NotConfigured,
}

impl Error {
    pub(crate) fn objects(
        operation: impl Into<String>,
        target: &crate::Target,
    ) -> impl FnOnce(object_store::Error) -> Error {
        let operation = operation.into();
        let target = target.to_string();
        move |source| Error::Objects {
            operation,
            target,
            source,
        }
    }

    pub(crate) fn io<'a>(
        operation: &'static str,
        path: &'a std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> Error + 'a {
        move |source| Error::Io {
            operation,
            path: path.to_owned(),
            source,
        }
    }
}
