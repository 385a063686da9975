//! A backup's manifest: what the backup holds and how to check it. It is written last, so a
//! backup without one is incomplete and is neither listed nor restored.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The manifest format written by this build.
pub const MANIFEST_FORMAT: u32 = 1;

/// One backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The manifest format.
    pub format: u32,
    /// The backup's id: its UTC time, so ids sort as backups were taken.
    pub id: String,
    /// When the checkpoint was taken.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The id of the store it copies.
    pub store_id: String,
    /// The store's layout version.
    pub schema_version: u32,
    /// The tandem release that took it.
    pub tandem_version: String,
    /// Events applied to the store when it was taken.
    pub events_applied: u64,
    /// Where consumption resumes after a restore: the next offset of every partition.
    pub offsets: Vec<PartitionOffset>,
    /// Every file of the checkpoint.
    pub files: Vec<FileEntry>,
    /// Bytes of all files.
    pub bytes: u64,
    /// Bytes this backup uploaded (the rest were in the target already).
    pub uploaded_bytes: u64,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
}

/// A backup as listings show it (`GET /v1/backups`, `tandem backup list --format json`):
/// its manifest without the file list, which is for restores and verification.
#[derive(Clone, Debug, Serialize)]
pub struct Summary<'a> {
    /// The backup's id.
    pub id: &'a str,
    /// When the checkpoint was taken.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The id of the store it copies.
    pub store_id: &'a str,
    /// The store's layout version.
    pub schema_version: u32,
    /// The tandem release that took it.
    pub tandem_version: &'a str,
    /// Events applied to the store when it was taken.
    pub events_applied: u64,
    /// Where consumption resumes after a restore.
    pub offsets: &'a [PartitionOffset],
    /// How many files it holds.
    pub files: usize,
    /// Bytes of all files.
    pub bytes: u64,
    /// Bytes this backup uploaded.
    pub uploaded_bytes: u64,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
}

impl Manifest {
    /// What a listing shows of it.
    pub fn summary(&self) -> Summary<'_> {
        Summary {
            id: &self.id,
            created_at: self.created_at,
            store_id: &self.store_id,
            schema_version: self.schema_version,
            tandem_version: &self.tandem_version,
            events_applied: self.events_applied,
            offsets: &self.offsets,
            files: self.files.len(),
            bytes: self.bytes,
            uploaded_bytes: self.uploaded_bytes,
            duration_ms: self.duration_ms,
        }
    }
}

/// The next offset of one partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionOffset {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The next offset to consume.
    pub next_offset: i64,
}

/// One file of the checkpoint, stored once per content under `objects/<sha256>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Its name in the store directory.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// SHA-256 of its content, in lower-case hex.
    pub sha256: String,
}

/// A backup id for an instant: `20261207T170102.123Z`.
pub(crate) fn id_at(at: OffsetDateTime) -> String {
    let format = time::macros::format_description!(
        "[year][month][day]T[hour][minute][second].[subsecond digits:3]Z"
    );
    at.to_offset(time::UtcOffset::UTC)
        .format(&format)
        .expect("invariant: a UTC time formats with a fixed description")
}

/// Whether `id` can name a backup (and a folder of the target): what [`id_at`] writes.
pub(crate) fn is_backup_id(id: &str) -> bool {
    id.len() == 20
        && id.bytes().enumerate().all(|(at, byte)| match at {
            8 => byte == b'T',
            15 => byte == b'.',
            19 => byte == b'Z',
            _ => byte.is_ascii_digit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_as_time_goes_and_are_recognised() {
        let earlier = id_at(time::macros::datetime!(2026-12-07 09:05:01.5 UTC));
        let later = id_at(time::macros::datetime!(2026-12-07 10:00:00 +01:00));
        // Hand-worked: 10:00 at +01:00 is 09:00 UTC, before 09:05:01.5 UTC.
        assert_eq!(earlier, "20261207T090501.500Z");
        assert_eq!(later, "20261207T090000.000Z");
        assert!(later < earlier);
        assert!(is_backup_id(&earlier));
        for not_an_id in [
            "",
            "latest",
            "../20261207T090501.500Z",
            "20261207T090501.500",
            "2026120XT090501.500Z",
        ] {
            assert!(!is_backup_id(not_an_id), "{not_an_id}");
        }
    }
}
