//! The harness of the process-level tests: a real broker process, the real `tandem` binary,
//! the simulator's messages and its ground truth. Used by the integration tests of the
//! `tandem` package and by the chaos suite.

pub mod broker;
pub mod connect;
pub mod kafka;
mod messages;
pub mod pipeline;
pub mod pipeline_run;
pub mod pipeline_truth;
pub mod pipeline_workload;
pub mod postgres;
pub mod s3;
mod supervised;
pub mod truth;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tandem_api::report::Report;

pub use broker::{Broker, MockBroker};
pub use kafka::{Kafka, KafkaOptions};
pub use messages::{
    json_messages, offsets_of, plaintext, produce_json, produce_keyed, produce_messages,
    read_changelog, read_json_messages, read_json_messages_now, ChangelogEntry, RawMessage,
};
pub use truth::assert_matches_truth;

/// A binary of the workspace. Test executables live in `target/<profile>/deps`, the
/// binaries one level up; `TANDEM_BIN_DIR` points elsewhere.
pub fn binary(name: &str) -> PathBuf {
    let directory = match std::env::var_os("TANDEM_BIN_DIR") {
        Some(directory) => PathBuf::from(directory),
        None => {
            let executable = std::env::current_exe().expect("the test knows its own executable");
            let mut directory = executable
                .parent()
                .expect("an executable lives in a directory")
                .to_path_buf();
            if directory.ends_with("deps") {
                directory.pop();
            }
            directory
        }
    };
    let path = directory.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the binaries first (`cargo build --bins`), or set TANDEM_BIN_DIR",
        path.display()
    );
    path
}

/// The `tandem` binary under test.
pub fn tandem_binary() -> PathBuf {
    binary("tandem")
}

/// Where `scripts/setup.sh` installs what the tests run: `$TANDEM_CACHE`, else
/// `~/.cache/tandem` (the same rule as the script's).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("TANDEM_CACHE").map_or_else(
        || {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default()
                .join(".cache/tandem")
        },
        PathBuf::from,
    )
}

/// A tool `scripts/setup.sh` installed under `$TANDEM_CACHE` or `~/.cache/tandem` (`make test`
/// runs it first).
pub fn installed_tool(relative: &str) -> PathBuf {
    let path = cache_dir().join(relative);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/setup.sh test (make test does)",
        path.display()
    );
    path
}

/// Runs `command` with `input` on its standard input; its whole output.
pub fn output_with_input(command: &mut Command, input: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the command runs");
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// `promtool check metrics` on a scrape of `/metrics`: Prometheus's own lints of names,
/// types, help texts and units. Fails the test with what promtool said.
pub fn assert_promtool_accepts_metrics(scrape: &str) {
    let mut promtool = Command::new(installed_tool("tools/bin/promtool"));
    promtool.args(["check", "metrics"]);
    let output = output_with_input(&mut promtool, scrape.as_bytes());
    assert!(
        output.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("the OS hands out a free loopback port")
        .port()
}

/// Polls `condition` until it returns `Some`, failing the test with `what` at the deadline.
pub fn wait_for<T>(what: &str, deadline: Duration, mut condition: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = condition() {
            return value;
        }
        assert!(
            started.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `condition` until it returns `Ok`, failing the test with `what` and the state it
/// last described (its `Err`) at the deadline.
pub fn wait_for_state<T>(
    what: &str,
    deadline: Duration,
    mut condition: impl FnMut() -> Result<T, String>,
) -> T {
    let started = Instant::now();
    loop {
        match condition() {
            Ok(value) => return value,
            Err(state) => assert!(
                started.elapsed() < deadline,
                "timed out after {deadline:?} waiting for {what}; last seen: {state}"
            ),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Topic names unique to one test.
#[derive(Clone, Debug)]
pub struct Topics {
    pub source: String,
    pub target: String,
    pub dead_letters: String,
}

impl Topics {
    pub fn unique(test: &str) -> Topics {
        Topics {
            source: format!("{test}.source.changes"),
            target: format!("{test}.target.changes"),
            dead_letters: format!("{test}.dlq"),
        }
    }
}

/// A daemon whose broker is not there (its API answers regardless), with these extra
/// `[api]` lines; its configuration file and port.
pub fn daemon_without_broker(directory: &Path, api: &str) -> (Daemon, PathBuf, u16) {
    let port = free_port();
    let config = write_config(
        directory,
        "127.0.0.1:9",
        &Topics::unique("no-broker"),
        port,
        100,
        false,
    );
    let listen = format!("listen = \"127.0.0.1:{port}\"");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(&listen, &format!("{listen}\n{api}"));
    std::fs::write(&config, text).unwrap();
    let daemon = Daemon::start(&config, port, &directory.join("tandem.log"));
    (daemon, config, port)
}

/// Writes a configuration for the simulator's CRMs and returns its path. Small batches
/// with `sync_writes` make ingestion slow enough to be interrupted on purpose.
pub fn write_config(
    directory: &Path,
    brokers: &str,
    topics: &Topics,
    port: u16,
    batch_max_messages: usize,
    sync_writes: bool,
) -> PathBuf {
    let path = directory.join("tandem.toml");
    let text = format!(
        r#"[kafka]
brokers = "{brokers}"
group_id = "tandem-test"
dead_letter_topic = "{dlq}"
max_message_bytes = 65536
batch_max_messages = {batch_max_messages}
batch_max_wait = "20ms"
[kafka.properties]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "500"

[store]
path = "{store}"
sync_writes = {sync_writes}

[api]
listen = "127.0.0.1:{port}"

[systems.source]
label = "Legacy CRM"
topics = ["{source}"]

[systems.target]
label = "New CRM"
topics = ["{target}"]

[reconcile]
grace = "5m"
idle_clock = false

[log]
level = "info"

{ownership}{entities}"#,
        ownership = tandem_sim::ownership_toml(),
        dlq = topics.dead_letters,
        store = directory.join("store").display(),
        source = topics.source,
        target = topics.target,
        entities = tandem_sim::entities_toml(),
    );
    std::fs::write(&path, text).expect("the test directory is writable");
    path
}

/// Replaces the `[kafka.properties]` of a configuration written by [`write_config`].
pub fn set_kafka_properties(config: &Path, properties: &[(&str, &str)]) {
    let text = std::fs::read_to_string(config).expect("the configuration was written");
    let start = text
        .find("[kafka.properties]\n")
        .expect("write_config writes [kafka.properties]");
    let end = start
        + text[start..]
            .find("\n\n")
            .expect("a blank line ends the section");
    let mut section = "[kafka.properties]\n".to_owned();
    for (key, value) in properties {
        section.push_str(&format!("\"{key}\" = \"{value}\"\n"));
    }
    let text = format!("{}{}{}", &text[..start], section.trim_end(), &text[end..]);
    std::fs::write(config, text).expect("the test directory is writable");
}

/// Adds re-read and snapshot request topics to a configuration written by [`write_config`].
pub fn add_request_topics(config: &Path, reread_topic: &str, control_topic: &str) {
    let text = std::fs::read_to_string(config).expect("the configuration was written");
    let text = text.replace(
        "[reconcile]\n",
        &format!(
            "[reconcile]\nreread_topic = \"{reread_topic}\"\ncontrol_topic = \"{control_topic}\"\nreread_max_ids_per_minute = 1000000\nreread_batch_max_ids = 500\nreread_resend_after = \"5s\"\n"
        ),
    );
    std::fs::write(config, text).expect("the test directory is writable");
}

/// A simulated run already on a fresh Apache Kafka broker.
pub struct SimulatedRun {
    pub broker: Kafka,
    pub topics: Topics,
    pub scenario: tandem_sim::Scenario,
    /// Distinct events: what `events_applied` must reach.
    pub distinct: u64,
}

impl SimulatedRun {
    /// Starts a broker with 4 partitions per system, generates the run and produces it.
    pub fn start(test: &str, sim: &tandem_sim::SimConfig) -> SimulatedRun {
        SimulatedRun::start_with(test, sim, KafkaOptions::default())
    }

    /// The same, on a broker started with `options`.
    pub fn start_with(
        test: &str,
        sim: &tandem_sim::SimConfig,
        options: KafkaOptions,
    ) -> SimulatedRun {
        let topics = Topics::unique(test);
        let broker = Kafka::start_with(options);
        broker.create_topics(&[
            (&topics.source, 4),
            (&topics.target, 4),
            (&topics.dead_letters, 1),
        ]);
        let scenario = tandem_sim::generate(sim);
        tandem::simkafka::produce(
            broker.bootstrap(),
            &topics.source,
            &topics.target,
            &scenario.messages,
            |_| {},
        )
        .expect("the simulated run is produced");
        let distinct = scenario.truth.events_applied.values().sum();
        SimulatedRun {
            broker,
            topics,
            scenario,
            distinct,
        }
    }

    /// Writes a daemon configuration for this run into `directory`.
    pub fn config(
        &self,
        directory: &Path,
        port: u16,
        batch_max_messages: usize,
        sync_writes: bool,
    ) -> PathBuf {
        write_config(
            directory,
            self.broker.bootstrap(),
            &self.topics,
            port,
            batch_max_messages,
            sync_writes,
        )
    }
}

/// A `tandem run` process.
pub struct Daemon {
    child: Child,
    pub url: String,
    log: PathBuf,
    /// The bearer token [`Daemon::get`] sends, if the daemon requires one.
    pub token: Option<String>,
}

impl Daemon {
    /// Starts `tandem run --config config` and waits until its API answers.
    pub fn start(config: &Path, port: u16, log: &Path) -> Daemon {
        let mut command = Command::new(tandem_binary());
        command.args(["run", "--config"]).arg(config);
        Daemon::spawn(command, port, log)
    }

    /// Starts `tandem run --config config` with extra environment variables.
    pub fn start_with_env(config: &Path, port: u16, log: &Path, env: &[(&str, &str)]) -> Daemon {
        let mut command = Command::new(tandem_binary());
        command.args(["run", "--config"]).arg(config);
        for (name, value) in env {
            command.env(name, value);
        }
        Daemon::spawn(command, port, log)
    }

    /// Starts the daemon unable to grow any file beyond `kib` KiB, as on a full disk: writes
    /// past it fail with EFBIG (SIGXFSZ is ignored, so they fail instead of killing it).
    pub fn start_with_file_size_limit(config: &Path, port: u16, log: &Path, kib: u64) -> Daemon {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!(
                "trap '' XFSZ; ulimit -f {kib}; exec \"$0\" run --config \"$1\""
            ))
            .arg(tandem_binary())
            .arg(config);
        Daemon::spawn(command, port, log)
    }

    fn spawn(mut command: Command, port: u16, log: &Path) -> Daemon {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("the test directory is writable");
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("the tandem binary starts");
        let daemon = Daemon {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log: log.to_owned(),
            token: None,
        };
        let client = ureq::Agent::new_with_defaults();
        let health = format!("{}/healthz", daemon.url);
        wait_for("the daemon's API", Duration::from_secs(60), || {
            client.get(&health).call().ok()
        });
        daemon
    }

    /// The current report.
    pub fn report(&self) -> Report {
        self.get("/v1/report")
    }

    /// GETs a JSON document from the API.
    pub fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        self.response(path)
            .body_mut()
            .read_json()
            .unwrap_or_else(|error| panic!("GET {path}: bad JSON: {error}"))
    }

    /// `/metrics` as text.
    pub fn metrics(&self) -> String {
        self.response("/metrics")
            .body_mut()
            .read_to_string()
            .unwrap_or_else(|error| panic!("GET /metrics: {error}"))
    }

    /// A successful answer to a GET of `path`, with the token if there is one.
    fn response(&self, path: &str) -> ureq::http::Response<ureq::Body> {
        let url = format!("{}{path}", self.url);
        let mut request = ureq::get(&url);
        if let Some(token) = &self.token {
            request = request.header("Authorization", &format!("Bearer {token}"));
        }
        request
            .call()
            .unwrap_or_else(|error| panic!("GET {url}: {error}\n{}", self.log_tail()))
    }

    /// Waits until `applied` distinct events are applied and returns that report.
    pub fn wait_for_applied(&self, applied: u64, deadline: Duration) -> Report {
        wait_for(&format!("{applied} applied events"), deadline, || {
            let report = self.report();
            let total = report.ingest.source.events_applied + report.ingest.target.events_applied;
            assert!(
                total <= applied,
                "more events applied ({total}) than distinct events exist ({applied})"
            );
            (total == applied).then_some(report)
        })
    }

    /// POSTs the JSON `body` to `path` with `token`: the status and the answer, whatever the
    /// status.
    pub fn post(&self, path: &str, token: &str, body: &str) -> (u16, String) {
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build(),
        );
        let url = format!("{}{path}", self.url);
        let mut response = agent
            .post(&url)
            .header("Authorization", &format!("Bearer {token}"))
            .header("Content-Type", "application/json")
            .send(body)
            .unwrap_or_else(|error| panic!("POST {url}: {error}\n{}", self.log_tail()));
        let answer = response
            .body_mut()
            .read_to_string()
            .unwrap_or_else(|error| panic!("POST {url}: {error}"));
        (response.status().as_u16(), answer)
    }

    /// The HTTP status of `/readyz`.
    pub fn readiness(&self) -> u16 {
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build(),
        );
        agent
            .get(&format!("{}/readyz", self.url))
            .call()
            .map(|response| response.status().as_u16())
            .unwrap_or(0)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the daemon exits on its own, within `deadline`.
    pub fn wait_exit(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let child = &mut self.child;
        let log = self.log.clone();
        wait_for("the daemon to exit", deadline, || {
            child.try_wait().unwrap_or_else(|error| {
                panic!(
                    "the daemon cannot be waited on: {error}\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
        })
    }

    /// SIGKILL: no chance to flush or commit anything.
    pub fn kill(mut self) {
        self.child.kill().expect("the daemon can be killed");
        self.child.wait().expect("the killed daemon is reaped");
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(status.success());
        let started = Instant::now();
        loop {
            if let Some(exit) = self.child.try_wait().expect("the daemon can be waited on") {
                return exit;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the daemon did not stop within 60 s of SIGTERM\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The end of the daemon's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The configuration of the hand-worked tests: one `contact` entity joined by the legacy id
/// (the source's `external_id`, the target's field `legacy_id`), e-mails compared as they are.
#[derive(Clone, Debug)]
pub struct ContactConfig {
    pub brokers: String,
    pub topics: Topics,
    pub port: u16,
    pub admin_token: Option<String>,
    pub control_topic: Option<String>,
    /// `reconcile.grace`, e.g. `5m`.
    pub grace: String,
    pub idle_clock: bool,
    /// `kafka.batch_max_wait`, e.g. `20ms`.
    pub batch_max_wait: String,
    /// Lines added to `[kafka]` (`group_id = ...`, `[kafka.properties]` must come last).
    pub kafka_lines: String,
}

impl ContactConfig {
    /// Defaults: grace 5 minutes, no idle clock, no admin token, no control topic, batches
    /// waiting 20 ms at most.
    pub fn new(brokers: &str, topics: &Topics, port: u16) -> ContactConfig {
        ContactConfig {
            brokers: brokers.to_owned(),
            topics: topics.clone(),
            port,
            admin_token: None,
            control_topic: None,
            grace: "5m".to_owned(),
            idle_clock: false,
            batch_max_wait: "20ms".to_owned(),
            kafka_lines: String::new(),
        }
    }

    /// Writes `tandem.toml` (the store in `store/`) into `directory` and returns its path.
    pub fn write(&self, directory: &Path) -> PathBuf {
        let path = directory.join("tandem.toml");
        let admin = self
            .admin_token
            .as_ref()
            .map(|token| format!("admin_token = \"{token}\"\n"))
            .unwrap_or_default();
        let control = self
            .control_topic
            .as_ref()
            .map(|topic| format!("control_topic = \"{topic}\"\n"))
            .unwrap_or_default();
        let text = format!(
            r#"[store]
path = "{store}"

[api]
listen = "127.0.0.1:{port}"
{admin}
[systems.source]
topics = ["{source}"]

[systems.target]
topics = ["{target}"]

[reconcile]
grace = "{grace}"
idle_clock = {idle_clock}
{control}
[[entities]]
name = "contact"
join = {{ source = "external_id", target = "field:legacy_id" }}
fields = [{{ source = "Email", target = "email" }}]

[kafka]
brokers = "{brokers}"
dead_letter_topic = "{dlq}"
batch_max_wait = "{batch_max_wait}"
{kafka_lines}
"#,
            store = directory.join("store").display(),
            port = self.port,
            source = self.topics.source,
            target = self.topics.target,
            grace = self.grace,
            idle_clock = self.idle_clock,
            brokers = self.brokers,
            dlq = self.topics.dead_letters,
            batch_max_wait = self.batch_max_wait,
            kafka_lines = self.kafka_lines,
        );
        std::fs::write(&path, text).expect("the test directory is writable");
        path
    }
}

/// A canonical `contact` event of the source system (`L<number>`, its `external_id` the
/// join key).
pub fn source_contact(
    event_id: &str,
    number: u32,
    op: &str,
    time: &str,
    email: &str,
) -> serde_json::Value {
    serde_json::json!({"event_id": event_id, "entity": "contact", "id": format!("L{number}"),
        "op": op, "external_id": format!("L{number}"), "occurred_at": time,
        "fields": {"Email": email}})
}

/// A canonical `contact` event of the target system (`T<number>`, carrying `legacy_id`
/// `L<number>`).
pub fn target_contact(
    event_id: &str,
    number: u32,
    op: &str,
    time: &str,
    email: &str,
) -> serde_json::Value {
    serde_json::json!({"event_id": event_id, "entity": "contact", "id": format!("T{number}"),
        "op": op, "occurred_at": time,
        "fields": {"email": email, "legacy_id": format!("L{number}")}})
}

/// Minutes after 2026-11-02T09:00:00Z, as RFC 3339: event times of the hand-worked tests.
pub fn minute(minutes: i64) -> String {
    tandem_core::Timestamp::from_unix_millis(1_793_610_000_000 + minutes * 60_000).to_rfc3339()
}

/// The status `/v1/records/contact/L<number>` reports; `None` for a record tandem does not
/// know (404) or that has no live side.
pub fn contact_status(daemon: &Daemon, number: u32) -> Option<tandem_core::Status> {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build(),
    );
    let url = format!("{}/v1/records/contact/L{number}", daemon.url);
    let mut response = agent
        .get(&url)
        .call()
        .unwrap_or_else(|error| panic!("GET {url}: {error}"));
    match response.status().as_u16() {
        404 => None,
        200 => {
            let view: serde_json::Value = response
                .body_mut()
                .read_json()
                .unwrap_or_else(|error| panic!("GET {url}: bad JSON: {error}"));
            serde_json::from_value(view["status"].clone()).expect("a record view has a status")
        }
        other => panic!("GET {url}: HTTP {other}\n{}", daemon.log_tail()),
    }
}
