//! The disk guard: pauses ingestion before the store's disk is full, and resumes once space
//! is back. Writing into a full disk fails in the middle of a batch; stopping at a margin
//! keeps every write whole and the API up, saying why.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tracing::{info, warn};

/// How often the free space is read.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Reads the free space of a directory's filesystem, in bytes.
pub(crate) type SpaceProbe = Box<dyn Fn(&std::path::Path) -> std::io::Result<u64> + Send>;

pub(crate) struct DiskGuard {
    path: PathBuf,
    min_free_bytes: u64,
    probe: SpaceProbe,
    last_check: Option<Instant>,
    paused: Option<String>,
}

impl DiskGuard {
    pub(crate) fn new(path: PathBuf, min_free_bytes: u64) -> Self {
        DiskGuard::with_probe(
            path,
            min_free_bytes,
            Box::new(|path| fs4::available_space(path)),
        )
    }

    pub(crate) fn with_probe(path: PathBuf, min_free_bytes: u64, probe: SpaceProbe) -> Self {
        DiskGuard {
            path,
            min_free_bytes,
            probe,
            last_check: None,
            paused: None,
        }
    }

    /// Why ingestion must pause, if it must (reads the disk at most once a second).
    pub(crate) fn check(&mut self) -> Option<&str> {
        if self
            .last_check
            .is_some_and(|last| last.elapsed() < CHECK_EVERY)
        {
            return self.paused.as_deref();
        }
        self.last_check = Some(Instant::now());
        match (self.probe)(&self.path) {
            Ok(free) if free < self.min_free_bytes => {
                if self.paused.is_none() {
                    let reason = format!(
                        "disk nearly full: {} MiB free for {}, below store.min_free_mib ({} MiB); free space and ingestion resumes by itself",
                        free / (1024 * 1024),
                        self.path.display(),
                        self.min_free_bytes / (1024 * 1024)
                    );
                    warn!(%reason, "ingestion paused");
                    self.paused = Some(reason);
                }
            }
            Ok(free) => {
                if self.paused.take().is_some() {
                    info!(
                        free_mib = free / (1024 * 1024),
                        "disk space is back; ingestion resumes"
                    );
                }
            }
            Err(error) => {
                warn!(path = %self.path.display(), %error, "cannot read the free space of the store's disk")
            }
        }
        self.paused.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use super::*;

    #[test]
    fn pauses_below_the_margin_and_resumes_above_it() {
        let free = Arc::new(AtomicU64::new(10 << 30));
        let reading = free.clone();
        let mut guard = DiskGuard::with_probe(
            PathBuf::from("/var/lib/tandem"),
            1 << 30,
            Box::new(move |_| Ok(reading.load(Ordering::SeqCst))),
        );
        assert_eq!(guard.check(), None);
        free.store(100 << 20, Ordering::SeqCst);
        guard.last_check = None;
        let reason = guard.check().expect("paused below the margin").to_owned();
        assert!(
            reason.contains("100 MiB free") && reason.contains("store.min_free_mib"),
            "{reason}"
        );
        free.store(2 << 30, Ordering::SeqCst);
        assert!(guard.check().is_some(), "read at most once a second");
        guard.last_check = None;
        assert_eq!(guard.check(), None, "resumes once space is back");
    }
}
