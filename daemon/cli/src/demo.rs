//! `tandem demo`: an embedded broker, a simulated parallel run of two CRMs, and the daemon,
//! in one process. Nothing to install: the broker is librdkafka's mock cluster.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use rdkafka::mocking::MockCluster;
use tandem_api::report::Report;
use tandem_sim::{generate, Scenario, SimConfig};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::client::ApiClient;
use crate::config::{Config, Environment};
use crate::daemon;
use crate::render;

const SOURCE_TOPIC: &str = "crm.source.changes";
const TARGET_TOPIC: &str = "crm.target.changes";
const DEAD_LETTER_TOPIC: &str = "tandem.dlq";

/// What the demo runs.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Seed of the simulated run.
    pub seed: u64,
    /// Preferred API address; another free port is used if it is taken.
    pub listen: SocketAddr,
    /// Where to keep the store and the generated configuration (a temporary directory if unset).
    pub data_dir: Option<PathBuf>,
}

/// Runs the demo until Ctrl-C.
pub async fn run(options: DemoOptions, cancel: CancellationToken) -> anyhow::Result<()> {
    let mut out = std::io::stdout();
    let temporary = tempfile::Builder::new()
        .prefix("tandem-demo-")
        .tempdir()
        .context("creating a temporary directory")?;
    let data_dir = options
        .data_dir
        .clone()
        .unwrap_or_else(|| temporary.path().to_owned());
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;

    let log_path = data_dir.join("tandem.log");
    let log_file = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    crate::logging::init_to_file("info", log_file);
    writeln!(
        out,
        "tandem demo: a parallel run of a legacy CRM (source) and a new CRM (target)"
    )?;
    writeln!(out, "(the daemon's log goes to {})\n", log_path.display())?;
    writeln!(
        out,
        "1/4 starting an embedded Kafka-protocol broker (librdkafka's mock cluster)"
    )?;
    let cluster = MockCluster::new(1).context("starting the mock cluster")?;
    for (topic, partitions) in [(SOURCE_TOPIC, 4), (TARGET_TOPIC, 4), (DEAD_LETTER_TOPIC, 1)] {
        cluster
            .create_topic(topic, partitions, 1)
            .with_context(|| format!("creating topic {topic}"))?;
    }
    let brokers = cluster.bootstrap_servers();

    let mut sim = SimConfig::demo_with_every_fault(options.seed);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("system clock before 1970")?
        .as_secs() as i64;
    sim.start_unix_seconds = now - sim.duration_seconds;
    let scenario = generate(&sim);
    let records: usize = sim.records.values().sum();
    writeln!(
        out,
        "2/4 simulating {records} records over the last {} hours: {} change events; the sync layer drops {:.0}% of changes and mangles {:.0}% of values",
        sim.duration_seconds / 3600,
        scenario.messages.len(),
        sim.sync_drop_rate * 100.0,
        sim.sync_mangle_rate * 100.0
    )?;
    let messages = scenario.messages.clone();
    let producer_brokers = brokers.clone();
    tokio::task::spawn_blocking(move || {
        crate::simkafka::produce(
            &producer_brokers,
            SOURCE_TOPIC,
            TARGET_TOPIC,
            &messages,
            |_| {},
        )
    })
    .await
    .context("producer task")??;

    let listen = free_address(options.listen);
    let config_path = data_dir.join("tandem.toml");
    // Reads stay open; changes (cutover steps, re-evaluation) take this run's admin token,
    // which the commands of the tour read from the configuration file (kept to its owner).
    let admin_token = format!("demo-{}", uuid::Uuid::new_v4().simple());
    std::fs::write(
        &config_path,
        demo_config(&brokers, &data_dir.join("store"), listen, &admin_token),
    )
    .with_context(|| format!("writing {}", config_path.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&config_path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("making {} private", config_path.display()))?;
    }
    let config = Config::load(&config_path, &Environment::Map(Default::default()))?;
    writeln!(
        out,
        "3/4 starting the daemon with {}",
        config_path.display()
    )?;
    let (started_tx, started_rx) = oneshot::channel();
    let daemon_cancel = cancel.clone();
    let daemon =
        tokio::spawn(async move { daemon::run(config, daemon_cancel, Some(started_tx)).await });
    let address = started_rx.await.context("the daemon did not start")?;
    let url = format!("http://{address}");

    let expected: u64 = scenario.truth.events_applied.values().sum();
    let report = wait_until_applied(&url, expected, &cancel).await?;
    writeln!(out, "4/4 all {expected} distinct events applied\n")?;
    render::report_table(&mut out, &report)?;
    writeln!(out, "{}", truth_verdict(&scenario, &report))?;
    print_tour(&mut out, &url, &config_path, &scenario)?;
    out.flush()?;

    cancel.cancelled().await;
    writeln!(out, "\nstopping…")?;
    match daemon.await.context("daemon task")? {
        Ok(_) => writeln!(out, "tandem demo stopped cleanly")?,
        Err(error) => bail!("the daemon failed: {error}"),
    }
    drop(cluster);
    Ok(())
}

/// The preferred address if it is free, else a free port on loopback.
fn free_address(preferred: SocketAddr) -> SocketAddr {
    match TcpListener::bind(preferred) {
        Ok(listener) => listener.local_addr().unwrap_or(preferred),
        Err(_) => TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .unwrap_or(preferred),
    }
}

fn demo_config(
    brokers: &str,
    store: &std::path::Path,
    listen: SocketAddr,
    admin_token: &str,
) -> String {
    format!(
        r#"# Generated by `tandem demo`. Every key is documented in ops/tandem.example.toml.
[kafka]
brokers = "{brokers}"
group_id = "tandem-demo"
dead_letter_topic = "{DEAD_LETTER_TOPIC}"

[store]
path = "{store}"

[api]
listen = "{listen}"
admin_token = "{admin_token}"

[systems.source]
label = "Legacy CRM"
topics = ["{SOURCE_TOPIC}"]

[systems.target]
label = "New CRM"
topics = ["{TARGET_TOPIC}"]

[reconcile]
grace = "5m"

[log]
level = "info"

{ownership}{entities}"#,
        store = store.display(),
        ownership = tandem_sim::ownership_toml(),
        entities = tandem_sim::entities_toml()
    )
}

async fn wait_until_applied(
    url: &str,
    expected: u64,
    cancel: &CancellationToken,
) -> anyhow::Result<Report> {
    let client = std::sync::Arc::new(ApiClient::new(url));
    let started = Instant::now();
    loop {
        let fetch = client.clone();
        let report: Report =
            tokio::task::spawn_blocking(move || fetch.get("/v1/report", &[])).await??;
        let applied = report.ingest.source.events_applied + report.ingest.target.events_applied;
        if applied >= expected {
            return Ok(report);
        }
        if started.elapsed() > Duration::from_secs(300) {
            bail!("only {applied} of {expected} events applied after 5 minutes; see the log above");
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
            () = cancel.cancelled() => bail!("interrupted while the daemon was catching up"),
        }
    }
}

/// Compares the daemon's counts with the simulator's own account of both CRMs.
fn truth_verdict(scenario: &Scenario, report: &Report) -> String {
    let Some(clock) = report.clock else {
        return "the daemon has no clock yet; cannot compare with the ground truth".to_owned();
    };
    let truth = scenario.truth_at(clock.unix_nanos());
    let mut differences = Vec::new();
    for (entity, expected) in &truth.entities {
        let Some(actual) = report.entities.get(*entity) else {
            differences.push(format!("{entity}: missing from the report"));
            continue;
        };
        for (status, count) in &actual.by_status {
            let want = expected
                .by_status
                .get(status.as_str())
                .copied()
                .unwrap_or(0);
            if want != *count {
                differences.push(format!("{entity} {status}: daemon {count}, truth {want}"));
            }
        }
    }
    if differences.is_empty() {
        "✔ every count equals the simulator's ground truth (computed from its own model of both CRMs)".to_owned()
    } else {
        format!(
            "✘ differs from the simulator's ground truth: {}",
            differences.join("; ")
        )
    }
}

fn print_tour(
    out: &mut impl Write,
    url: &str,
    config_path: &std::path::Path,
    scenario: &Scenario,
) -> anyhow::Result<()> {
    let example = scenario
        .truth
        .entities
        .iter()
        .find_map(|(entity, truth)| {
            truth
                .not_in_sync
                .iter()
                .find(|(_, record)| record.status == "mismatch")
                .map(|(key, _)| (*entity, key.clone()))
        })
        .unwrap_or(("contact", "C-000001".to_owned()));
    let tandem = std::env::current_exe()
        .ok()
        .and_then(|path| path.to_str().map(str::to_owned))
        .unwrap_or_else(|| "tandem".to_owned());
    writeln!(
        out,
        r#"
The HTTP API is at {url}. Try, in another terminal:

  curl -s {url}/v1/report
  curl -s '{url}/v1/divergences?entity=deal&status=mismatch&limit=5'
  curl -s {url}/v1/records/{entity}/{key}
  curl -s {url}/metrics | grep tandem_

  {tandem} report --url {url}
  {tandem} record {entity} {key} --url {url}
  {tandem} divergences --entity contact --format csv --url {url}
  {tandem} check-config {config}

Changes take the admin token, which --config reads from the demo's configuration:

  {tandem} cutover status --config {config}
  {tandem} cutover freeze --dry-run --reason "a rehearsal" --config {config}
  {tandem} reevaluate --reason "trying it" --config {config}

Press Ctrl-C to stop."#,
        entity = example.0,
        key = example.1,
        config = config_path.display(),
    )?;
    Ok(())
}
