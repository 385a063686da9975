//! tandem's backups: the store, copied while it runs, to a directory or an S3-compatible
//! object store; listed, verified and restored.
//!
//! A backup is a RocksDB checkpoint (every column family as of one committed batch: state,
//! offsets and history from one instant), uploaded file by file to `objects/<sha256>` and
//! described by `backups/<id>/manifest.json`, written last. Files are stored once per
//! content, so a table file already uploaded by an earlier backup is not sent again: backups
//! are incremental while each one is complete on its own. Old backups are removed past
//! `keep`, then every object no remaining manifest names.
//!
//! One daemon writes to a target; readers (`tandem backup list|verify`, `tandem restore`)
//! may run anywhere, the daemon's machine being gone.

mod error;
mod manifest;
mod metrics;
mod target;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};
use tandem_store::Store;
use tokio::io::AsyncWriteExt;
use tracing::{info, warn};

pub use error::{Error, Result};
pub use manifest::{FileEntry, Manifest, PartitionOffset, Summary, MANIFEST_FORMAT};
pub use metrics::BackupMetrics;
pub use target::{S3Settings, Target};

/// Files uploaded or downloaded at once.
const CONCURRENCY: usize = 4;
/// Where checkpoints are made, inside the store's directory (the same file system, so table
/// files are hard links). RocksDB ignores names it did not write.
const CHECKPOINTS: &str = "backup-checkpoints";

/// The backups of one store.
pub struct Backups {
    store: Store,
    target: Target,
    keep: usize,
    metrics: Option<BackupMetrics>,
    /// SHA-256 of the store's immutable table files by name and size, so each is read once
    /// per process; held while a backup runs, so backups never overlap.
    hashes: tokio::sync::Mutex<HashMap<(String, u64), String>>,
}

impl Backups {
    /// Backups of `store` to `target`, keeping the `keep` newest.
    pub fn new(store: Store, target: Target, keep: usize) -> Backups {
        Backups {
            store,
            target,
            keep: keep.max(1),
            metrics: None,
            hashes: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Reports backups in `metrics`.
    pub fn with_metrics(self, metrics: BackupMetrics) -> Backups {
        Backups {
            metrics: Some(metrics),
            ..self
        }
    }

    /// The target.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Takes a backup now (after any backup already running) and removes what `keep` no
    /// longer covers.
    pub async fn run(&self) -> Result<Manifest> {
        let mut hashes = self.hashes.lock().await;
        let started = Instant::now();
        let outcome = self.run_locked(&mut hashes, started).await;
        if let Some(metrics) = &self.metrics {
            metrics.record(&outcome, started.elapsed());
        }
        match &outcome {
            Ok(manifest) => info!(
                backup = %manifest.id,
                target = %self.target,
                files = manifest.files.len(),
                bytes = manifest.bytes,
                uploaded_bytes = manifest.uploaded_bytes,
                events_applied = manifest.events_applied,
                duration_ms = manifest.duration_ms,
                "backup taken"
            ),
            Err(error) => {
                warn!(target = %self.target, %error, "backup failed; the next one is tried at the next interval (or `tandem backup now`)")
            }
        }
        outcome
    }

    async fn run_locked(
        &self,
        hashes: &mut HashMap<(String, u64), String>,
        started: Instant,
    ) -> Result<Manifest> {
        let created_at = time::OffsetDateTime::now_utc();
        let id = manifest::id_at(created_at);
        let checkpoints = self.store.path().join(CHECKPOINTS);
        let directory = checkpoints.join(&id);
        let store = self.store.clone();
        let checkpoint_dir = directory.clone();
        let taken = tokio::task::spawn_blocking(move || {
            take_checkpoint(&store, &checkpoints, &checkpoint_dir)
        })
        .await
        .expect("invariant: the checkpoint task does not panic");
        // The manifests already there, read once: what need not be sent again, and what
        // retention keeps.
        let outcome = match taken {
            Ok(contents) => match list(&self.target).await {
                Ok(earlier) => self
                    .upload(created_at, contents, &directory, hashes, started, &earlier)
                    .await
                    .map(|manifest| (manifest, earlier)),
                Err(error) => Err(error),
            },
            Err(error) => Err(error),
        };
        let removed = directory.clone();
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(removed)).await;
        let (manifest, mut kept) = outcome?;
        kept.push(manifest.clone());
        self.remove_old(kept).await?;
        Ok(manifest)
    }

    async fn upload(
        &self,
        created_at: time::OffsetDateTime,
        contents: Checkpointed,
        directory: &Path,
        hashes: &mut HashMap<(String, u64), String>,
        started: Instant,
        earlier: &[Manifest],
    ) -> Result<Manifest> {
        let id = &manifest::id_at(created_at);
        let present = referenced(earlier);
        let mut files = Vec::with_capacity(contents.files.len());
        for (name, size) in contents.files {
            let path = directory.join(&name);
            // Table files never change once written: one hash per file for the process.
            let key = (name.clone(), size);
            let sha256 = match hashes.get(&key) {
                Some(sha256) => sha256.clone(),
                None => {
                    let hashed = path.clone();
                    let sha256 = tokio::task::spawn_blocking(move || hash_file(&hashed))
                        .await
                        .expect("invariant: hashing does not panic")?;
                    if name.ends_with(".sst") {
                        hashes.insert(key, sha256.clone());
                    }
                    sha256
                }
            };
            files.push(FileEntry { name, size, sha256 });
        }
        // Each content once, even if two files share it.
        let mut to_send: Vec<(String, PathBuf, u64)> = files
            .iter()
            .filter(|file| !present.contains(&file.sha256))
            .map(|file| (file.sha256.clone(), directory.join(&file.name), file.size))
            .collect();
        to_send.sort();
        to_send.dedup_by(|a, b| a.0 == b.0);
        let uploaded_bytes = to_send.iter().map(|(_, _, size)| size).sum();
        let uploads = to_send
            .into_iter()
            .map(|(sha256, path, _)| self.upload_file(path, sha256));
        futures::stream::iter(uploads)
            .buffer_unordered(CONCURRENCY)
            .try_collect::<()>()
            .await?;
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            id: id.to_owned(),
            created_at,
            store_id: self.store.id().to_owned(),
            schema_version: tandem_store::SCHEMA_VERSION,
            tandem_version: env!("CARGO_PKG_VERSION").to_owned(),
            events_applied: contents.events_applied,
            offsets: contents.offsets,
            bytes: files.iter().map(|file| file.size).sum(),
            files,
            uploaded_bytes,
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        };
        let body = serde_json::to_vec_pretty(&manifest).expect("invariant: a manifest serializes");
        self.target
            .objects()
            .put(&self.target.manifest(id), PutPayload::from(body))
            .await
            .map_err(Error::objects(
                format!("writing the manifest of backup {id}"),
                &self.target,
            ))?;
        Ok(manifest)
    }

    async fn upload_file(&self, path: PathBuf, sha256: String) -> Result<()> {
        let location = self.target.object(&sha256);
        let mut source = tokio::fs::File::open(&path)
            .await
            .map_err(Error::io("cannot read the checkpoint file", &path))?;
        let mut writer =
            object_store::buffered::BufWriter::new(self.target.objects().clone(), location);
        let copied = tokio::io::copy(&mut source, &mut writer).await;
        let finished = match copied {
            Ok(_) => writer.shutdown().await,
            Err(error) => {
                let _ = writer.abort().await;
                Err(error)
            }
        };
        finished.map_err(|source| Error::Io {
            operation: "cannot upload the checkpoint file",
            path: path.clone(),
            source,
        })
    }

    /// Removes the backups past `keep` among `manifests` (every backup in the target,
    /// oldest first), then every object no remaining manifest names (among them what a
    /// failed backup uploaded).
    async fn remove_old(&self, manifests: Vec<Manifest>) -> Result<()> {
        let excess = manifests.len().saturating_sub(self.keep);
        for id in manifests[..excess].iter().map(|manifest| &manifest.id) {
            self.target
                .objects()
                .delete(&self.target.manifest(id))
                .await
                .map_err(Error::objects(
                    format!("removing backup {id}"),
                    &self.target,
                ))?;
            info!(backup = %id, target = %self.target, keep = self.keep, "old backup removed");
        }
        let referenced = referenced(&manifests[excess..]);
        let objects: Vec<_> = self
            .target
            .objects()
            .list(Some(&self.target.objects_folder()))
            .try_collect()
            .await
            .map_err(Error::objects("listing the stored files", &self.target))?;
        for object in objects {
            let unused = object
                .location
                .filename()
                .is_some_and(|sha256| !referenced.contains(sha256));
            if unused {
                self.target
                    .objects()
                    .delete(&object.location)
                    .await
                    .map_err(Error::objects(
                        "removing a file no backup uses",
                        &self.target,
                    ))?;
            }
        }
        Ok(())
    }
}

/// What a checkpoint holds.
struct Checkpointed {
    files: Vec<(String, u64)>,
    events_applied: u64,
    offsets: Vec<PartitionOffset>,
}

fn take_checkpoint(store: &Store, checkpoints: &Path, directory: &Path) -> Result<Checkpointed> {
    // A checkpoint left by a backup that was interrupted is of no use.
    if checkpoints.exists() {
        std::fs::remove_dir_all(checkpoints)
            .map_err(Error::io("cannot remove old checkpoints in", checkpoints))?;
    }
    std::fs::create_dir_all(checkpoints).map_err(Error::io(
        "cannot create the checkpoint folder",
        checkpoints,
    ))?;
    store.checkpoint(directory)?;
    let copy = Store::open_read_only(directory)?;
    let state = copy.apply_state()?;
    let offsets = copy
        .next_offsets()?
        .into_iter()
        .map(|((topic, partition), next)| PartitionOffset {
            topic,
            partition,
            next_offset: next.0,
        })
        .collect();
    drop(copy);
    let mut files = Vec::new();
    for entry in
        std::fs::read_dir(directory).map_err(Error::io("cannot list the checkpoint", directory))?
    {
        let entry = entry.map_err(Error::io("cannot list the checkpoint", directory))?;
        let metadata = entry
            .metadata()
            .map_err(Error::io("cannot read the checkpoint file", &entry.path()))?;
        // Reading the copy may leave RocksDB's info log; it is not part of the state.
        let name = entry.file_name().to_string_lossy().into_owned();
        if metadata.is_file() && !name.starts_with("LOG") && name != "LOCK" {
            files.push((name, metadata.len()));
        }
    }
    files.sort();
    Ok(Checkpointed {
        files,
        events_applied: state.counters.source.events_applied + state.counters.target.events_applied,
        offsets,
    })
}

fn hash_file(path: &Path) -> Result<String> {
    let mut file =
        std::fs::File::open(path).map_err(Error::io("cannot read the checkpoint file", path))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 1 << 20];
    loop {
        let read = std::io::Read::read(&mut file, &mut buffer)
            .map_err(Error::io("cannot read the checkpoint file", path))?;
        if read == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buffer[..read]);
    }
}

/// The ids of the complete backups in `target` (those with a manifest), oldest first: one
/// listing of the target's backups.
async fn backup_ids(target: &Target) -> Result<Vec<String>> {
    let folder = target.backups_folder();
    let listed: Vec<_> = match target.objects().list(Some(&folder)).try_collect().await {
        Ok(listed) => listed,
        Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
        Err(error) => return Err(Error::objects("listing the backups", target)(error)),
    };
    let mut ids: Vec<String> = listed
        .iter()
        .filter_map(|object| {
            let mut parts = object.location.prefix_match(&folder)?;
            let id = parts.next()?;
            let file = parts.next()?;
            (parts.next().is_none()
                && file.as_ref() == "manifest.json"
                && manifest::is_backup_id(id.as_ref()))
            .then(|| id.as_ref().to_owned())
        })
        .collect();
    ids.sort();
    Ok(ids)
}

/// The manifest of backup `id`.
pub async fn manifest(target: &Target, id: &str) -> Result<Manifest> {
    if !manifest::is_backup_id(id) {
        return Err(Error::NotFound {
            target: target.to_string(),
            which: format!(" named `{id}` (ids look like 20261207T170102.123Z)"),
        });
    }
    let body = match target.objects().get(&target.manifest(id)).await {
        Ok(found) => found.bytes().await.map_err(Error::objects(
            format!("reading the manifest of backup {id}"),
            target,
        ))?,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(Error::NotFound {
                target: target.to_string(),
                which: format!(" named {id}"),
            })
        }
        Err(error) => {
            return Err(Error::objects(
                format!("reading the manifest of backup {id}"),
                target,
            )(error))
        }
    };
    let manifest: Manifest = serde_json::from_slice(&body).map_err(|error| Error::Manifest {
        id: id.to_owned(),
        target: target.to_string(),
        detail: error.to_string(),
    })?;
    if manifest.format != MANIFEST_FORMAT || manifest.id != id {
        return Err(Error::Manifest {
            id: id.to_owned(),
            target: target.to_string(),
            detail: format!(
                "format {} naming backup {} (this tandem reads format {MANIFEST_FORMAT})",
                manifest.format, manifest.id
            ),
        });
    }
    Ok(manifest)
}

/// Every complete backup in `target`, oldest first.
pub async fn list(target: &Target) -> Result<Vec<Manifest>> {
    let mut manifests = Vec::new();
    for id in backup_ids(target).await? {
        manifests.push(manifest(target, &id).await?);
    }
    Ok(manifests)
}

/// The backup named `id`, or the newest.
pub async fn chosen(target: &Target, id: Option<&str>) -> Result<Manifest> {
    match id {
        Some(id) => manifest(target, id).await,
        None => match backup_ids(target).await?.pop() {
            Some(id) => manifest(target, &id).await,
            None => Err(Error::NotFound {
                target: target.to_string(),
                which: String::new(),
            }),
        },
    }
}

/// The contents `manifests` name.
fn referenced(manifests: &[Manifest]) -> BTreeSet<String> {
    manifests
        .iter()
        .flat_map(|manifest| manifest.files.iter().map(|file| file.sha256.clone()))
        .collect()
}

/// What a verification found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verification {
    /// The backup.
    pub manifest: Manifest,
    /// Each file missing or differing from the manifest, with how.
    pub problems: Vec<String>,
}

/// Reads every file of a backup back from the target and checks its size and checksum.
pub async fn verify(target: &Target, id: Option<&str>) -> Result<Verification> {
    let manifest = chosen(target, id).await?;
    let problems: Vec<Option<String>> = futures::stream::iter(&manifest.files)
        .map(|file| async move {
            match read_object(target, file, None).await {
                Ok(()) => Ok(None),
                Err(Mismatch::Problem(problem)) => Ok(Some(problem)),
                Err(Mismatch::Failed(error)) => Err(error),
            }
        })
        .buffered(CONCURRENCY)
        .try_collect()
        .await?;
    Ok(Verification {
        problems: problems.into_iter().flatten().collect(),
        manifest,
    })
}

enum Mismatch {
    Problem(String),
    Failed(Error),
}

/// Reads `file`'s object, checking it, and writes it to `destination` if given.
async fn read_object(
    target: &Target,
    file: &FileEntry,
    destination: Option<&Path>,
) -> std::result::Result<(), Mismatch> {
    let location = target.object(&file.sha256);
    let found = match target.objects().get(&location).await {
        Ok(found) => found,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(Mismatch::Problem(format!(
                "{} (sha256 {}) is missing from the target",
                file.name, file.sha256
            )))
        }
        Err(error) => {
            return Err(Mismatch::Failed(Error::objects(
                format!("reading {}", file.name),
                target,
            )(error)))
        }
    };
    let mut output = match destination {
        Some(path) => Some(tokio::fs::File::create(path).await.map_err(|error| {
            Mismatch::Failed(Error::io("cannot write the restored file", path)(error))
        })?),
        None => None,
    };
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut chunks = found.into_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|error| {
            Mismatch::Failed(Error::objects(format!("reading {}", file.name), target)(
                error,
            ))
        })?;
        hasher.update(&chunk);
        size += chunk.len() as u64;
        if let (Some(output), Some(path)) = (output.as_mut(), destination) {
            output.write_all(&chunk).await.map_err(|error| {
                Mismatch::Failed(Error::io("cannot write the restored file", path)(error))
            })?;
        }
    }
    let sha256 = hex::encode(hasher.finalize());
    if size != file.size || sha256 != file.sha256 {
        return Err(Mismatch::Problem(format!(
            "{} reads {size} bytes with sha256 {sha256}, the manifest says {} bytes with sha256 {}",
            file.name, file.size, file.sha256
        )));
    }
    if let (Some(output), Some(path)) = (output, destination) {
        output.sync_all().await.map_err(|error| {
            Mismatch::Failed(Error::io("cannot write the restored file", path)(error))
        })?;
    }
    Ok(())
}

/// Progress of a restore.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// Files written.
    pub files: usize,
    /// Of this many.
    pub of_files: usize,
    /// Bytes written.
    pub bytes: u64,
    /// Of this many.
    pub of_bytes: u64,
}

/// Restores backup `id` (the newest when `None`) from `target` into `store_path`, which must
/// not exist or be empty. Every file is checked against the manifest as it is written; the
/// restored store is opened once to prove it reads. On failure nothing is left in
/// `store_path`.
pub async fn restore(
    target: &Target,
    id: Option<&str>,
    store_path: &Path,
    mut progress: impl FnMut(Progress),
) -> Result<Manifest> {
    let manifest = chosen(target, id).await?;
    prepare_restore_directory(store_path)?;
    let outcome = restore_files(target, &manifest, store_path, &mut progress).await;
    if let Err(error) = outcome {
        remove_contents(store_path);
        return Err(error);
    }
    let path = store_path.to_owned();
    let opened = tokio::task::spawn_blocking(move || {
        Store::open_read_only(&path).map(|store| store.id().to_owned())
    })
    .await
    .expect("invariant: opening a store does not panic");
    match opened {
        Ok(store_id) if store_id == manifest.store_id => Ok(manifest),
        Ok(store_id) => {
            remove_contents(store_path);
            Err(Error::Damaged {
                id: manifest.id.clone(),
                target: target.to_string(),
                problem: format!(
                    "the restored store has id {store_id}, the manifest says {}",
                    manifest.store_id
                ),
            })
        }
        Err(error) => {
            remove_contents(store_path);
            Err(error.into())
        }
    }
}

async fn restore_files(
    target: &Target,
    manifest: &Manifest,
    store_path: &Path,
    progress: &mut impl FnMut(Progress),
) -> Result<()> {
    let mut done = Progress {
        files: 0,
        of_files: manifest.files.len(),
        bytes: 0,
        of_bytes: manifest.bytes,
    };
    let mut reads = futures::stream::iter(&manifest.files)
        .map(|file| async move {
            let destination = store_path.join(&file.name);
            read_object(target, file, Some(&destination))
                .await
                .map(|()| file.size)
        })
        .buffer_unordered(CONCURRENCY);
    while let Some(read) = reads.next().await {
        match read {
            Ok(size) => {
                done.files += 1;
                done.bytes += size;
                progress(done);
            }
            Err(Mismatch::Problem(problem)) => {
                return Err(Error::Damaged {
                    id: manifest.id.clone(),
                    target: target.to_string(),
                    problem,
                })
            }
            Err(Mismatch::Failed(error)) => return Err(error),
        }
    }
    std::fs::File::open(store_path)
        .and_then(|directory| directory.sync_all())
        .map_err(Error::io(
            "cannot sync the restored store directory",
            store_path,
        ))
}

fn prepare_restore_directory(path: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::read_dir(path) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(Error::RestoreTargetNotEmpty {
                    path: path.to_owned(),
                });
            }
            Ok(())
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(Error::io("cannot create the store directory", path)),
        Err(error) => Err(Error::io("cannot read the store directory", path)(error)),
    }
}

fn remove_contents(path: &Path) {
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Takes a backup every `interval` until `cancel` fires, the first one at once.
pub async fn keep_taking(
    backups: Arc<Backups>,
    interval: Duration,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = cancel.cancelled() => return,
        }
        tokio::select! {
            // A failure is logged and counted by `run`; the next tick tries again.
            _ = backups.run() => {}
            () = cancel.cancelled() => return,
        }
    }
}
