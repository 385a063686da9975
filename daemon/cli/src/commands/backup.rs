//! `tandem backup now|list|verify` and `tandem restore`: `now` asks the running daemon (it
//! holds the store); the others read the target itself, so they work with the daemon's
//! machine gone.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context};
use tandem_backup::{Manifest, Target as BackupTarget};

use tandem::config::{Config, Environment};
use tandem::render::{self, View};

use crate::{client, runtime, Target};

/// The longest a `backup now` may take before the command stops waiting (the backup goes on).
const BACKUP_NOW_TIMEOUT: Duration = Duration::from_secs(3600);

/// `tandem backup now`.
pub(crate) fn now(out: &mut impl Write, target: Target, format: View) -> anyhow::Result<ExitCode> {
    let client = client(&target)?.with_timeout(BACKUP_NOW_TIMEOUT);
    let (status, answer) = client.post("/v1/backups", &serde_json::json!({}))?;
    if status != 201 {
        return Err(anyhow!(
            "{} (HTTP {status}); {}",
            answer["error"].as_str().unwrap_or("the backup was refused"),
            answer["hint"].as_str().unwrap_or("")
        ));
    }
    match format {
        View::Json => render::json(out, &answer)?,
        View::Table => writeln!(
            out,
            "backup {} taken: {} files, {} ({} uploaded), {} events applied, {} ms",
            answer["id"].as_str().unwrap_or("?"),
            answer["files"],
            mib(answer["bytes"].as_u64().unwrap_or(0)),
            mib(answer["uploaded_bytes"].as_u64().unwrap_or(0)),
            answer["events_applied"],
            answer["duration_ms"],
        )?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `tandem backup list`.
pub(crate) fn list(
    out: &mut impl Write,
    from: Option<String>,
    target: Target,
    format: View,
) -> anyhow::Result<ExitCode> {
    let backups = open_target(from.as_deref(), &target)?;
    let manifests = runtime()?.block_on(tandem_backup::list(&backups))?;
    match format {
        View::Json => {
            for manifest in manifests.iter().rev() {
                serde_json::to_writer(&mut *out, &manifest.summary())?;
                writeln!(out)?;
            }
        }
        View::Table => {
            if manifests.is_empty() {
                writeln!(out, "{backups} holds no complete backup")?;
            }
            for manifest in manifests.iter().rev() {
                writeln!(out, "{}", describe(manifest))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `tandem backup verify`: exit 0 when every file reads back as its manifest says, 1 if not.
pub(crate) fn verify(
    out: &mut impl Write,
    from: Option<String>,
    backup: Option<String>,
    target: Target,
) -> anyhow::Result<ExitCode> {
    let backups = open_target(from.as_deref(), &target)?;
    let verification = runtime()?.block_on(tandem_backup::verify(&backups, backup.as_deref()))?;
    let manifest = &verification.manifest;
    if verification.problems.is_empty() {
        writeln!(
            out,
            "backup {} at {backups} is whole: {} files, {}, each read back with its size and SHA-256",
            manifest.id,
            manifest.files.len(),
            mib(manifest.bytes)
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "backup {} at {backups} is damaged: {} of {} files do not read back as the manifest says:",
        manifest.id,
        verification.problems.len(),
        manifest.files.len()
    )?;
    for problem in &verification.problems {
        writeln!(out, "  {problem}")?;
    }
    writeln!(
        out,
        "restore another backup (`tandem backup list`); the next backup sends the missing files again"
    )?;
    Ok(ExitCode::FAILURE)
}

/// `tandem restore`.
pub(crate) fn restore(
    out: &mut impl Write,
    from: Option<String>,
    backup: Option<String>,
    store: PathBuf,
    target: Target,
) -> anyhow::Result<ExitCode> {
    let backups = open_target(from.as_deref(), &target)?;
    let mut shown = 0;
    let manifest = runtime()?.block_on(tandem_backup::restore(
        &backups,
        backup.as_deref(),
        &store,
        |progress| {
            // A line per tenth of the bytes: a long restore shows that it moves.
            let tenth = progress.bytes.saturating_mul(10) / progress.of_bytes.max(1);
            if tenth > shown || progress.files == progress.of_files {
                shown = tenth;
                eprintln!(
                    "tandem: restored {} of {} files, {} of {}",
                    progress.files,
                    progress.of_files,
                    mib(progress.bytes),
                    mib(progress.of_bytes)
                );
            }
        },
    ))?;
    writeln!(
        out,
        "restored backup {} into {} (store {}, {} events applied, {} partitions)",
        manifest.id,
        store.display(),
        manifest.store_id,
        manifest.events_applied,
        manifest.offsets.len()
    )?;
    for offset in &manifest.offsets {
        writeln!(
            out,
            "  {} partition {}: consumption resumes at offset {}",
            offset.topic, offset.partition, offset.next_offset
        )?;
    }
    writeln!(
        out,
        "point store.path at {} and start tandem: it resumes at these offsets; what the broker no longer holds is reported as a hole",
        store.display()
    )?;
    Ok(ExitCode::SUCCESS)
}

/// The target from `--from`, or the configuration's `backup.target`.
fn open_target(from: Option<&str>, target: &Target) -> anyhow::Result<BackupTarget> {
    let config = match (&target.config, from) {
        (Some(path), _) => Some(Config::load(path, &Environment::Process)?),
        (None, None) => match Path::new("tandem.toml").is_file() {
            true => Some(Config::load(
                Path::new("tandem.toml"),
                &Environment::Process,
            )?),
            false => None,
        },
        (None, Some(_)) => None,
    };
    let backup = config.as_ref().and_then(|config| config.backup.as_ref());
    match (from, backup) {
        (Some(from), backup) => {
            let s3 = backup.map(|backup| backup.s3.settings()).unwrap_or_default();
            BackupTarget::open(from, &s3).context("--from")
        }
        (None, Some(backup)) => backup.open_target().map_err(|problem| anyhow!(problem)),
        (None, None) => Err(anyhow!(
            "no backup target: give --from <directory or s3://bucket/prefix>, or --config with a [backup] section"
        )),
    }
}

fn describe(manifest: &Manifest) -> String {
    format!(
        "{}  {}  {} files  {}  {} events applied  store {}",
        manifest.id,
        manifest
            .created_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        manifest.files.len(),
        mib(manifest.bytes),
        manifest.events_applied,
        manifest.store_id
    )
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}
