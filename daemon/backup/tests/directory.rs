//! Backups to a directory of a store on a temporary RocksDB: incremental uploads, retention,
//! verification and restores, worked out by hand from the files each checkpoint holds.

use std::collections::BTreeSet;
use std::path::Path;

use tandem_backup::{Backups, Error, Target};
use tandem_store::{Store, StoreOptions};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Every file under `directory`, as paths relative to it.
fn files_under(directory: &Path) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut pending = vec![directory.to_owned()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                found.insert(path.strip_prefix(directory).unwrap().display().to_string());
            }
        }
    }
    found
}

/// The stored files of the target directory, by name, with their sizes.
fn object_sizes(target: &Path) -> std::collections::BTreeMap<String, u64> {
    std::fs::read_dir(target.join("objects"))
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            (name, entry.metadata().unwrap().len())
        })
        .collect()
}

/// The bytes of the distinct contents of `manifest` that are not in `present`.
fn bytes_not_in(manifest: &tandem_backup::Manifest, present: &BTreeSet<String>) -> u64 {
    let contents: BTreeSet<(&str, u64)> = manifest
        .files
        .iter()
        .filter(|file| !present.contains(&file.sha256))
        .map(|file| (file.sha256.as_str(), file.size))
        .collect();
    contents.iter().map(|(_, size)| size).sum()
}

#[test]
fn backups_are_incremental_kept_verified_and_restored() {
    let directory = tempfile::tempdir().unwrap();
    let store = Store::open(&directory.path().join("store"), &StoreOptions::default()).unwrap();
    let target_dir = directory.path().join("backups");
    let target = Target::open(target_dir.to_str().unwrap(), &Default::default()).unwrap();
    let backups = Backups::new(store.clone(), target.clone(), 1);
    let runtime = runtime();

    let first = runtime.block_on(backups.run()).unwrap();
    // Everything the first backup holds was sent, each content once: the target was empty.
    assert_eq!(first.uploaded_bytes, bytes_not_in(&first, &BTreeSet::new()));
    // What it says it sent is what the target's directory holds.
    let after_first = object_sizes(&target_dir);
    assert_eq!(first.uploaded_bytes, after_first.values().sum::<u64>());
    assert!(first.files.iter().any(|file| file.name.ends_with(".sst")));
    assert!(first.files.iter().any(|file| file.name == "CURRENT"));
    assert_eq!(first.store_id, store.id());

    let second = runtime.block_on(backups.run()).unwrap();
    assert!(second.id > first.id, "{} then {}", first.id, second.id);
    // Hand-worked: only content the first backup did not hold is sent again; its table files
    // are immutable and present, so none of them is.
    let before: BTreeSet<String> = first.files.iter().map(|file| file.sha256.clone()).collect();
    assert_eq!(second.uploaded_bytes, bytes_not_in(&second, &before));
    // And it is the size of the objects that were not in the directory before it.
    let sent: u64 = object_sizes(&target_dir)
        .iter()
        .filter(|(name, _)| !after_first.contains_key(*name))
        .map(|(_, size)| size)
        .sum();
    assert_eq!(second.uploaded_bytes, sent);
    // Nothing was written in between: the second checkpoint has the first one's tables.
    let tables = |manifest: &tandem_backup::Manifest| -> BTreeSet<String> {
        manifest
            .files
            .iter()
            .filter(|file| file.name.ends_with(".sst"))
            .map(|file| file.sha256.clone())
            .collect()
    };
    assert_eq!(tables(&second), tables(&first));
    assert!(second.uploaded_bytes < second.bytes);

    // keep = 1: the first backup is gone, and so is every object only it used.
    let listed = runtime.block_on(tandem_backup::list(&target)).unwrap();
    assert_eq!(
        listed.iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
        vec![second.id.clone()]
    );
    let objects: BTreeSet<String> = files_under(&target_dir.join("objects"));
    let expected: BTreeSet<String> = second
        .files
        .iter()
        .map(|file| file.sha256.clone())
        .collect();
    assert_eq!(objects, expected);

    let verified = runtime
        .block_on(tandem_backup::verify(&target, None))
        .unwrap();
    assert_eq!(verified.problems, Vec::<String>::new());

    // A restore into a directory that holds something is refused, and it stays as it was.
    let occupied = directory.path().join("occupied");
    std::fs::create_dir_all(&occupied).unwrap();
    std::fs::write(occupied.join("keep.txt"), "mine").unwrap();
    let refused = runtime.block_on(tandem_backup::restore(&target, None, &occupied, |_| {}));
    assert!(
        matches!(refused, Err(Error::RestoreTargetNotEmpty { .. })),
        "{refused:?}"
    );
    assert_eq!(
        files_under(&occupied),
        BTreeSet::from(["keep.txt".to_owned()])
    );

    // A restore copies the store: it opens, with the same id and the files of the manifest.
    let restored = directory.path().join("restored");
    let mut last = None;
    let manifest = runtime
        .block_on(tandem_backup::restore(
            &target,
            Some(&second.id),
            &restored,
            |progress| last = Some(progress),
        ))
        .unwrap();
    assert_eq!(manifest, second);
    let progress = last.unwrap();
    assert_eq!(
        (progress.files, progress.bytes),
        (second.files.len(), second.bytes)
    );
    let names: BTreeSet<String> = second.files.iter().map(|file| file.name.clone()).collect();
    assert_eq!(files_under(&restored), names);
    drop(store);
    let reopened = Store::open(&restored, &StoreOptions::default()).unwrap();
    assert_eq!(reopened.id(), second.store_id);
    drop(reopened);

    // One flipped byte in a stored file: verification names that file, a restore refuses the
    // backup and leaves nothing behind.
    let damaged = second
        .files
        .iter()
        .find(|file| file.name.ends_with(".sst"))
        .unwrap();
    let object = target_dir.join("objects").join(&damaged.sha256);
    let mut bytes = std::fs::read(&object).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&object, bytes).unwrap();
    let verified = runtime
        .block_on(tandem_backup::verify(&target, None))
        .unwrap();
    assert_eq!(verified.problems.len(), 1, "{:?}", verified.problems);
    assert!(
        verified.problems[0].starts_with(&damaged.name),
        "{:?}",
        verified.problems
    );
    let elsewhere = directory.path().join("elsewhere");
    let refused = runtime.block_on(tandem_backup::restore(&target, None, &elsewhere, |_| {}));
    assert!(matches!(refused, Err(Error::Damaged { .. })), "{refused:?}");
    assert_eq!(files_under(&elsewhere), BTreeSet::new());

    // An id that is not one, or names no backup, is told apart from a damaged backup.
    for id in ["../objects", "20200101T000000.000Z"] {
        let missing = runtime.block_on(tandem_backup::verify(&target, Some(id)));
        assert!(
            matches!(missing, Err(Error::NotFound { .. })),
            "{id}: {missing:?}"
        );
    }
}
