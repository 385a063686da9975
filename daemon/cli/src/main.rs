//! `tandem`: the daemon and the operator's commands.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use tandem::client::ApiClient;
use tandem::config::{Config, ConfigError, Environment};
use tandem::daemon::{self, Ended, StartError};
use tandem::demo::{self, DemoOptions};
use tandem::logging;
use tandem::render::{self, Format, View};

mod commands;
use tokio_util::sync::CancellationToken;

/// The apply loop allocates per event (rows, field maps); mimalloc keeps that cheap and does
/// not contend between the apply and writer threads the way glibc's allocator does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Guards the parallel run after a CRM migration: compares both systems' change events and
/// reports every divergence.
#[derive(Parser)]
#[command(name = "tandem", version = tandem::VERSION, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the CLI finds a running daemon.
#[derive(clap::Args)]
struct Target {
    /// The daemon's address: http://127.0.0.1:8080, or 127.0.0.1:8080 for short.
    #[arg(long, env = "TANDEM_URL", global = true)]
    url: Option<String>,
    /// A configuration file whose api.listen names the daemon (default: ./tandem.toml if present).
    #[arg(long, env = "TANDEM_CONFIG", global = true)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run {
        /// The configuration file.
        #[arg(long, short, env = "TANDEM_CONFIG", default_value = "tandem.toml")]
        config: PathBuf,
    },
    /// Print the divergence report of a running daemon; `--history` shows the trend of parity
    /// and of each status per entity instead.
    Report {
        /// The trend from the kept summaries (`reconcile.history_interval`).
        #[arg(long)]
        history: bool,
        /// With --history: only this entity.
        #[arg(long)]
        entity: Option<String>,
        /// With --history: from this time (RFC 3339) or this long ago (24h, 7d).
        #[arg(long, default_value = "24h")]
        since: String,
        #[command(flatten)]
        target: Target,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Show one record: both sides, the field-by-field diff and its event history.
    Record {
        /// The entity, e.g. contact.
        entity: String,
        /// The join key.
        join_key: String,
        #[command(flatten)]
        target: Target,
        /// Output format (table or json).
        #[arg(long, value_enum, default_value = "table")]
        format: View,
    },
    /// List divergent records (for the repair team: --all --format csv exports every one).
    /// `--format json` prints the API's page as it answers it; with --all, one record per line.
    Divergences {
        /// Only this entity.
        #[arg(long)]
        entity: Option<String>,
        /// Only this status (pending, mismatch, missing_in_target, missing_in_source, duplicate, unverified).
        #[arg(long)]
        status: Option<String>,
        /// Only mismatches of this target field.
        #[arg(long)]
        field: Option<String>,
        /// Records per page.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Follow every page instead of printing the first.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        target: Target,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Who writes into each system: every writer with its writes per entity, the ones writing
    /// into the fenced system first.
    Writers {
        /// Count from this time (RFC 3339) or this long ago (24h, 7d); counts are per UTC day.
        #[arg(long)]
        since: Option<String>,
        #[command(flatten)]
        target: Target,
        /// Output format (table or json).
        #[arg(long, value_enum, default_value = "table")]
        format: View,
    },
    /// List violations of the ownership rule, oldest first. `--format json` prints the API's
    /// page as it answers it; with --all, one violation per line.
    Violations {
        /// From this time (RFC 3339) or this long ago (24h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// Only this writer: `kind` or `kind:id`.
        #[arg(long)]
        actor: Option<String>,
        /// Only this entity.
        #[arg(long)]
        entity: Option<String>,
        /// Only writes into this system.
        #[arg(long)]
        system: Option<String>,
        /// Follow every page instead of printing the first 1000.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        target: Target,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Show who owns each entity, at which epoch, and who may write into the fenced system.
    Ownership {
        #[command(flatten)]
        target: Target,
        /// Output format (table or json).
        #[arg(long, value_enum, default_value = "table")]
        format: View,
    },
    /// The second cutover: `status` prints the phase and the readiness checklist; the steps
    /// (freeze, verify, flip, rollback, complete) need the admin token and a reason.
    Cutover {
        /// status, freeze, verify, flip, rollback or complete.
        step: String,
        /// Why (kept in the history and published on the control topic).
        #[arg(long)]
        reason: Option<String>,
        /// Who asks (default: $USER).
        #[arg(long)]
        by: Option<String>,
        /// Only show what would happen and which gates fail.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        target: Target,
        /// Output format (table or json).
        #[arg(long, value_enum, default_value = "table")]
        format: View,
    },
    /// Evaluate every stored record again with the configured rules (after a mapping change
    /// the daemon does it by itself at start, for the entities whose rules changed); shows
    /// progress until it is done.
    Reevaluate {
        /// Why (logged and shown in the report).
        #[arg(long)]
        reason: String,
        /// Start it and return without waiting.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Operate on the consumed partitions: `reset` reads a partition whose stored position
    /// lies beyond the broker's log (its topic was deleted and created again) from offset 0
    /// again; its records become unverified and a snapshot is requested. Needs the admin
    /// token.
    Partitions {
        /// reset
        action: String,
        /// The topic.
        #[arg(long)]
        topic: String,
        /// The partition.
        #[arg(long)]
        partition: i32,
        /// Why (logged).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        target: Target,
    },
    /// The reverse delta: every record created or changed in one system since a time, mapped
    /// back into the other system's field names for an upsert there (JSON lines or CSV).
    Delta {
        /// The system whose changes to carry back.
        #[arg(long, default_value = "target")]
        system: String,
        /// An RFC 3339 time, a duration back from now (24h), or `flip` (the latest flip).
        #[arg(long)]
        since: String,
        /// Only this entity.
        #[arg(long)]
        entity: Option<String>,
        #[command(flatten)]
        target: Target,
        /// jsonl or csv.
        #[arg(long, default_value = "jsonl")]
        format: String,
    },
    /// Backups of the store: `now` asks the running daemon to take one; `list` and `verify`
    /// read the target (--from, or backup.target of --config) without a daemon.
    Backup {
        #[command(subcommand)]
        action: BackupAction,
    },
    /// Restore a backup into a new store directory (the daemon's machine may be gone): every
    /// file is checked against the backup's manifest; the daemon started on it resumes at
    /// the backup's offsets.
    Restore {
        /// The target: a directory or s3://bucket/prefix (default: backup.target of --config).
        #[arg(long)]
        from: Option<String>,
        /// The backup's id (default: the newest).
        #[arg(long)]
        backup: Option<String>,
        /// The directory to restore into; it must not exist or be empty.
        #[arg(long)]
        store: PathBuf,
        #[command(flatten)]
        target: Target,
    },
    /// Validate a configuration file (and TANDEM_* overrides) without starting anything.
    CheckConfig {
        /// The configuration file.
        file: PathBuf,
        /// Output format (table or json).
        #[arg(long, value_enum, default_value = "table")]
        format: View,
    },
    /// Print the canonical events one message value becomes (for checking a connector).
    ///
    /// Reads the message value from FILE (or standard input) and prints each canonical event
    /// as one JSON line. With --config and --topic, the topic's format, object and actor
    /// mappings come from the configuration.
    Decode {
        /// The message value; standard input if absent.
        file: Option<PathBuf>,
        /// The format: tandem.v1, salesforce-cdc, hubspot-webhooks, debezium, zendesk, pipedrive-v2.
        #[arg(long)]
        format: Option<String>,
        /// A file holding the message key (Debezium reads the native id from it).
        #[arg(long)]
        key: Option<PathBuf>,
        /// A configuration file to take the topic's settings from.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The topic whose settings apply (with --config).
        #[arg(long)]
        topic: Option<String>,
    },
    /// Print a shell's completion script: `tandem completions bash > /etc/bash_completion.d/tandem`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print a manual page (roff): `tandem man > tandem.1`, `tandem man cutover > tandem-cutover.1`.
    Man {
        /// A command whose page to print (its options); none: the overview.
        command: Option<String>,
    },
    /// Run an embedded broker, a simulated parallel run of two CRMs and the daemon.
    Demo {
        /// Seed of the simulation.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Address of the HTTP API (another free port is used if it is taken).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Keep the store and the generated configuration here instead of a temporary directory.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

/// `tandem backup ...`.
#[derive(Subcommand)]
enum BackupAction {
    /// Take a backup now (the running daemon takes it; needs the admin token).
    Now {
        #[command(flatten)]
        target: Target,
        /// Output format (table or json).
        #[arg(long, value_enum, default_value = "table")]
        format: View,
    },
    /// List the complete backups in the target, newest first.
    List {
        /// The target: a directory or s3://bucket/prefix (default: backup.target of --config).
        #[arg(long)]
        from: Option<String>,
        #[command(flatten)]
        target: Target,
        /// Output format (table, or json: one backup per line).
        #[arg(long, value_enum, default_value = "table")]
        format: View,
    },
    /// Read every file of a backup back and check it against the manifest (exit 1 if any
    /// differs or is missing).
    Verify {
        /// The target: a directory or s3://bucket/prefix (default: backup.target of --config).
        #[arg(long)]
        from: Option<String>,
        /// The backup's id (default: the newest).
        #[arg(long)]
        backup: Option<String>,
        #[command(flatten)]
        target: Target,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match execute(cli.command) {
        Ok(code) => code,
        // The reader went away (`| head`): what it wanted it has; nothing to report.
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            let usage = error.downcast_ref::<ConfigError>().is_some()
                || matches!(
                    error.downcast_ref::<StartError>(),
                    Some(StartError::Config(_))
                );
            eprintln!("tandem: {error:#}");
            if usage {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Tells, on stderr, that a listing shows its first page only.
fn say_cut(shown: impl std::fmt::Display, what: &str) {
    eprintln!(
        "tandem: the first {shown} {what} are shown and there are more: --all lists every one"
    );
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        let kind = cause
            .downcast_ref::<std::io::Error>()
            .map(std::io::Error::kind)
            .or_else(|| {
                cause
                    .downcast_ref::<serde_json::Error>()
                    .and_then(serde_json::Error::io_error_kind)
            })
            .or_else(
                || match cause.downcast_ref::<csv::Error>().map(csv::Error::kind) {
                    Some(csv::ErrorKind::Io(io)) => Some(io.kind()),
                    _ => None,
                },
            );
        kind == Some(std::io::ErrorKind::BrokenPipe)
    })
}

fn execute(command: Command) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match command {
        Command::Run { config } => run_daemon(&config),
        Command::Decode {
            file,
            format,
            key,
            config,
            topic,
        } => decode_command(&mut out, file, format, key, config, topic),
        Command::Writers {
            since,
            target,
            format,
        } => commands::ownership::writers(&mut out, since, target, format),
        Command::Violations {
            since,
            actor,
            entity,
            system,
            all,
            target,
            format,
        } => commands::ownership::violations(
            &mut out, since, actor, entity, system, all, target, format,
        ),
        Command::Cutover {
            step,
            reason,
            by,
            dry_run,
            target,
            format,
        } => commands::cutover::cutover(&mut out, step, reason, by, dry_run, target, format),
        Command::Partitions {
            action,
            topic,
            partition,
            reason,
            target,
        } => commands::cutover::partitions(&mut out, action, topic, partition, reason, target),
        Command::Reevaluate {
            reason,
            no_wait,
            target,
        } => commands::parity::reevaluate(&mut out, reason, no_wait, target),
        Command::Delta {
            system,
            since,
            entity,
            target,
            format,
        } => commands::ownership::delta(&mut out, system, since, entity, target, format),
        Command::Ownership { target, format } => {
            commands::ownership::ownership(&mut out, target, format)
        }
        Command::Report {
            history: true,
            entity,
            since,
            target,
            format,
        } => commands::parity::report_history(&mut out, entity, since, target, format),
        Command::Report { target, format, .. } => {
            commands::parity::report(&mut out, target, format)
        }
        Command::Record {
            entity,
            join_key,
            target,
            format,
        } => commands::parity::record(&mut out, entity, join_key, target, format),
        Command::Divergences {
            entity,
            status,
            field,
            limit,
            all,
            target,
            format,
        } => commands::parity::divergences(
            &mut out, entity, status, field, limit, all, target, format,
        ),
        Command::Backup { action } => match action {
            BackupAction::Now { target, format } => commands::backup::now(&mut out, target, format),
            BackupAction::List {
                from,
                target,
                format,
            } => commands::backup::list(&mut out, from, target, format),
            BackupAction::Verify {
                from,
                backup,
                target,
            } => commands::backup::verify(&mut out, from, backup, target),
        },
        Command::Restore {
            from,
            backup,
            store,
            target,
        } => commands::backup::restore(&mut out, from, backup, store, target),
        Command::CheckConfig { file, format } => {
            let config = Config::load(&file, &Environment::Process)?;
            let warnings = config.warnings();
            match format {
                View::Json => render::json(
                    &mut out,
                    &serde_json::json!({"valid": true, "config": config, "warnings": warnings}),
                )?,
                View::Table => {
                    describe_config(&mut out, &file, &config)?;
                    for warning in &warnings {
                        eprintln!("warning: {warning}");
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            // Generated whole first: clap_complete panics on a write error (a closed pipe).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "tandem", &mut script);
            out.write_all(&script)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { command } => {
            let mut tandem = Cli::command();
            tandem.build();
            let page = match &command {
                None => tandem,
                Some(name) => match tandem.find_subcommand(name) {
                    // The process ends after printing it: the name may live as long.
                    Some(sub) => sub.clone().name(format!("tandem-{name}").leak() as &str),
                    None => {
                        eprintln!("tandem: `{name}` is not a command; `tandem --help` lists them");
                        return Ok(ExitCode::from(2));
                    }
                },
            };
            clap_mangen::Man::new(page).render(&mut out)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo {
            seed,
            listen,
            data_dir,
        } => {
            let runtime = runtime()?;
            let outcome = runtime.block_on(async {
                let cancel = CancellationToken::new();
                daemon::cancel_on_signals(cancel.clone());
                demo::run(
                    DemoOptions {
                        seed,
                        listen,
                        data_dir,
                    },
                    cancel,
                )
                .await
            });
            runtime.shutdown_timeout(RUNTIME_SHUTDOWN_GRACE);
            outcome?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// How long the runtime waits, once the daemon returned, for blocking tasks still running:
/// only one that missed the stop deadline (ingestion's threads) can be, and it is left behind
/// rather than waited for without limit, as dropping the runtime would.
const RUNTIME_SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("tandem-runtime")
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn run_daemon(config_path: &Path) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path, &Environment::Process)?;
    logging::init(&config.log.level, config.log.format);
    tracing::info!(config = %config_path.display(), version = env!("CARGO_PKG_VERSION"), commit = env!("TANDEM_COMMIT"), "tandem starting");
    let stopping = daemon::Stopping::from_variables(|name| std::env::var(name).ok())?;
    let runtime = runtime()?;
    let ended = runtime.block_on(async {
        let cancel = CancellationToken::new();
        daemon::cancel_on_signals(cancel.clone());
        daemon::run_with(config, cancel, None, stopping).await
    });
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN_GRACE);
    let ended = ended?;
    Ok(match ended {
        Ended::Clean => ExitCode::SUCCESS,
        Ended::IngestFailed(_) => ExitCode::FAILURE,
    })
}

fn client(target: &Target) -> anyhow::Result<ApiClient> {
    let token = std::env::var("TANDEM_TOKEN")
        .ok()
        .filter(|token| !token.is_empty());
    if let Some(url) = &target.url {
        return Ok(ApiClient::new(&base_url(url)?).with_token(token));
    }
    let config_path = match &target.config {
        Some(path) => Some(path.clone()),
        None => Some(PathBuf::from("tandem.toml")).filter(|path| path.is_file()),
    };
    let Some(config_path) = config_path else {
        return Ok(ApiClient::new("http://127.0.0.1:8080").with_token(token));
    };
    let config = Config::load(&config_path, &Environment::Process)?;
    let mut address = config.api.listen;
    if address.ip().is_unspecified() {
        address.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    Ok(ApiClient::new(&format!("http://{address}"))
        .with_token(token.or_else(|| config.api.client_token())))
}

/// The daemon's base URL from `--url`: `host:port` means `http://host:port`.
fn base_url(url: &str) -> anyhow::Result<String> {
    let url = url.trim();
    match url.split_once("://") {
        None if !url.is_empty() => Ok(format!("http://{url}")),
        Some(("http", rest)) if !rest.is_empty() => Ok(url.to_owned()),
        Some(("https", _)) => Err(anyhow::anyhow!(
            "--url {url}: the command line speaks plain HTTP, as the daemon serves it; where TLS ends at a proxy in front of tandem, run the command where the daemon's own address (api.listen) can be reached"
        )),
        _ => Err(anyhow::anyhow!(
            "--url `{url}` is not an address of the daemon: give http://host:port or host:port (api.listen of its configuration)"
        )),
    }
}

/// `tandem decode`: exit 0 with one JSON line per event, or 1 with the dead-letter reason.
fn decode_command(
    out: &mut impl Write,
    file: Option<PathBuf>,
    format: Option<String>,
    key: Option<PathBuf>,
    config: Option<PathBuf>,
    topic: Option<String>,
) -> anyhow::Result<ExitCode> {
    use tandem_formats::{decode_message, Format as Wire, FormatSettings};
    let usage = |problem: String| {
        eprintln!("tandem: {problem}");
        Ok(ExitCode::from(2))
    };
    let mut settings = match (&config, &topic) {
        (Some(path), Some(topic)) => {
            let config = Config::load(path, &Environment::Process)?;
            match config.ingest_settings(None).formats.remove(topic) {
                Some(settings) => settings,
                None => {
                    return usage(format!(
                        "topic `{topic}` is not one of the topics configured in {}",
                        path.display()
                    ))
                }
            }
        }
        (None, None) => FormatSettings::new(Wire::Canonical),
        _ => {
            return usage(
                "--config and --topic go together: the topic names whose settings apply".to_owned(),
            )
        }
    };
    if let Some(name) = format {
        match Wire::from_name(&name) {
            Some(format) => settings.format = format,
            None => {
                return usage(format!(
                    "--format `{name}` is not a format (known formats: {})",
                    Wire::names()
                ))
            }
        }
    }
    let read = |path: &Path| {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    };
    let value = match &file {
        Some(path) => read(path)?,
        None => {
            let mut value = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut value)
                .context("cannot read the message value from standard input")?;
            value
        }
    };
    let key = key.as_deref().map(read).transpose()?;
    match decode_message(&settings, key.as_deref(), Some(&value), usize::MAX) {
        Ok(events) => {
            for event in &events {
                writeln!(out, "{}", serde_json::to_string(event)?)?;
            }
            if events.is_empty() {
                eprintln!("the message carries no event to apply; tandem reads it and skips it");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!(
                "tandem: the message would go to the dead-letter topic, reason {}: {}",
                error.reason, error.detail
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

fn describe_config(out: &mut impl Write, file: &Path, config: &Config) -> anyhow::Result<()> {
    writeln!(out, "{} is valid", file.display())?;
    writeln!(
        out,
        "  kafka: brokers {}, group {}, dead letters to {}",
        config.kafka.brokers, config.kafka.group_id, config.kafka.dead_letter_topic
    )?;
    for (name, system) in [
        ("source", &config.systems.source),
        ("target", &config.systems.target),
    ] {
        writeln!(
            out,
            "  {name}: {} <- {} (format {})",
            system.label.as_deref().unwrap_or(name),
            system.topics.join(", "),
            system.format.as_deref().unwrap_or("tandem.v1")
        )?;
        for (topic, format) in &system.formats {
            writeln!(out, "    topic {topic}: format {format}")?;
        }
    }
    writeln!(
        out,
        "  store: {}   api: http://{}   grace: {}",
        config.store.path.display(),
        config.api.listen,
        humantime::format_duration(config.reconcile.grace)
    )?;
    for entity in &config.entities {
        let critical = entity.fields.iter().filter(|field| field.critical).count();
        let lossy: Vec<&str> = entity
            .fields
            .iter()
            .filter(|field| field.is_lossy())
            .map(|field| field.target.as_str())
            .collect();
        writeln!(
            out,
            "  entity {}: join source {} = target {}; {} compared fields, {critical} critical{}",
            entity.name,
            entity.join.source,
            entity.join.target,
            entity.fields.len(),
            if lossy.is_empty() {
                String::new()
            } else {
                format!(", lossy on the way back: {}", lossy.join(", "))
            }
        )?;
    }
    Ok(())
}
