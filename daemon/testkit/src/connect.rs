//! Kafka Connect for tests: one distributed worker (exactly-once source support on) with
//! Debezium's PostgreSQL connector in its plugin path, from the jars `scripts/setup.sh`
//! resolved with Maven into `~/.cache/tandem/connect-<version>-debezium-<version>`.
//! Connectors are created and watched through Connect's REST API. Like the broker, the worker
//! is [`Supervised`].

use std::ffi::OsStr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::broker::Broker;
use crate::kafka::Kafka;
use crate::supervised::Supervised;
use crate::{free_port, wait_for};

/// The Kafka Connect release the tests run (the one Debezium is built against).
pub const CONNECT_VERSION: &str = "4.3.2";
/// The Debezium release.
pub const DEBEZIUM_VERSION: &str = "3.6.1.Final";

/// Where `make test` installs Connect and Debezium, unless `TANDEM_CONNECT_HOME` points
/// elsewhere.
pub fn connect_home() -> PathBuf {
    if let Some(path) = std::env::var_os("TANDEM_CONNECT_HOME") {
        return PathBuf::from(path);
    }
    crate::cache_dir().join(format!(
        "connect-{CONNECT_VERSION}-debezium-{DEBEZIUM_VERSION}"
    ))
}

/// A running Kafka Connect worker.
pub struct KafkaConnect {
    process: Option<Supervised>,
    url: String,
    directory: tempfile::TempDir,
    agent: ureq::Agent,
}

impl KafkaConnect {
    /// Starts a distributed worker on `kafka` and waits until its REST API lists the
    /// Debezium connector.
    pub fn start(kafka: &Kafka) -> KafkaConnect {
        let home = connect_home();
        assert!(
            home.join("libs").is_dir() && home.join("plugins").is_dir(),
            "Kafka Connect {CONNECT_VERSION} with Debezium {DEBEZIUM_VERSION} is not installed in {}: run `make test` (scripts/setup.sh resolves it with Maven) or set TANDEM_CONNECT_HOME",
            home.display()
        );
        let directory = tempfile::Builder::new()
            .prefix("tandem-connect-")
            .tempdir()
            .expect("a temporary directory for Kafka Connect");
        let port = free_port();
        let group = format!("connect-{port}");
        let worker = format!(
            "bootstrap.servers={bootstrap}\n\
             group.id={group}\n\
             listeners=http://127.0.0.1:{port}\n\
             key.converter=org.apache.kafka.connect.json.JsonConverter\n\
             value.converter=org.apache.kafka.connect.json.JsonConverter\n\
             key.converter.schemas.enable=false\n\
             value.converter.schemas.enable=false\n\
             config.storage.topic={group}.configs\n\
             offset.storage.topic={group}.offsets\n\
             status.storage.topic={group}.status\n\
             config.storage.replication.factor=1\n\
             offset.storage.replication.factor=1\n\
             status.storage.replication.factor=1\n\
             offset.flush.interval.ms=500\n\
             exactly.once.source.support=enabled\n\
             plugin.path={plugins}\n\
             plugin.discovery=service_load\n",
            bootstrap = kafka.bootstrap(),
            plugins = home.join("plugins").display(),
        );
        std::fs::write(directory.path().join("worker.properties"), worker)
            .expect("the worker's directory is writable");
        std::fs::write(
            directory.path().join("log4j2.properties"),
            format!(
                "status = error\nappender.file.type = File\nappender.file.name = file\n\
                 appender.file.fileName = {}\nappender.file.layout.type = PatternLayout\n\
                 appender.file.layout.pattern = [%d] %p %m (%c)%n\nrootLogger.level = warn\n\
                 rootLogger.appenderRef.file.ref = file\n\
                 logger.debezium.name = io.debezium\nlogger.debezium.level = info\n",
                directory.path().join("connect.log").display()
            ),
        )
        .expect("the worker's directory is writable");
        let mut connect = KafkaConnect {
            process: None,
            url: format!("http://127.0.0.1:{port}"),
            directory,
            agent: ureq::Agent::new_with_config(
                ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(30)))
                    .build(),
            ),
        };
        connect.launch();
        connect
    }

    /// Starts the worker on its directory and waits until its REST API lists Debezium.
    fn launch(&mut self) {
        let home = connect_home();
        let directory = &self.directory;
        let arguments = [
            "-Xms64m".to_owned(),
            "-Xmx768m".to_owned(),
            "-XX:+UseSerialGC".to_owned(),
            format!(
                "-Dlog4j2.configurationFile={}",
                directory.path().join("log4j2.properties").display()
            ),
            "-cp".to_owned(),
            format!("{}/libs/*", home.display()),
            "org.apache.kafka.connect.cli.ConnectDistributed".to_owned(),
            directory
                .path()
                .join("worker.properties")
                .display()
                .to_string(),
        ];
        self.process = Some(Supervised::spawn(
            None,
            OsStr::new("java"),
            arguments,
            "KILL",
            &directory.path().join("connect.stderr"),
        ));
        let started = Instant::now();
        loop {
            let plugins = self.get("/connector-plugins");
            if plugins.to_string().contains("PostgresConnector") {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "Kafka Connect did not list Debezium's connector within 120 s:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Kills the worker (SIGKILL), as a crash of its machine would.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop();
        }
    }

    /// Starts the worker again after [`KafkaConnect::kill`]: it rejoins its group and its
    /// connectors resume from their committed offsets.
    pub fn restart(&mut self) {
        assert!(self.process.is_none(), "restart follows kill");
        self.launch();
    }

    fn get(&self, path: &str) -> Value {
        self.agent
            .get(&format!("{}{path}", self.url))
            .call()
            .ok()
            .and_then(|mut response| response.body_mut().read_json().ok())
            .unwrap_or(Value::Null)
    }

    /// Creates (or reconfigures) connector `name` and waits until it and its task run.
    pub fn put_connector(&self, name: &str, config: &Value) {
        let mut response = self
            .agent
            .put(&format!("{}/connectors/{name}/config", self.url))
            .send_json(config)
            .unwrap_or_else(|error| panic!("PUT connector {name}: {error}"));
        let status = response.status().as_u16();
        assert!(
            status == 200 || status == 201,
            "PUT connector {name}: HTTP {status}: {}",
            response.body_mut().read_to_string().unwrap_or_default()
        );
        self.wait_running(name);
    }

    /// Waits until connector `name` and its tasks are RUNNING; fails with the task's trace if
    /// one failed.
    pub fn wait_running(&self, name: &str) {
        wait_for(
            &format!("connector {name} to run"),
            Duration::from_secs(120),
            || {
                let status = self.get(&format!("/connectors/{name}/status"));
                let tasks = status["tasks"].as_array().cloned().unwrap_or_default();
                if let Some(failed) = tasks.iter().find(|task| task["state"] == "FAILED") {
                    panic!("connector {name} failed: {}", failed["trace"]);
                }
                (status["connector"]["state"] == "RUNNING"
                    && !tasks.is_empty()
                    && tasks.iter().all(|task| task["state"] == "RUNNING"))
                .then_some(())
            },
        );
    }

    /// Stops connector `name` (its tasks end; its offsets stay).
    pub fn stop_connector(&self, name: &str) {
        let response = self
            .agent
            .put(&format!("{}/connectors/{name}/stop", self.url))
            .send_empty()
            .unwrap_or_else(|error| panic!("stopping connector {name}: {error}"));
        assert!(response.status().is_success(), "stopping connector {name}");
        wait_for(
            &format!("connector {name} to stop"),
            Duration::from_secs(60),
            || {
                (self.get(&format!("/connectors/{name}/status"))["connector"]["state"] == "STOPPED")
                    .then_some(())
            },
        );
    }

    /// Resumes a stopped connector and waits until it runs.
    pub fn resume_connector(&self, name: &str) {
        let response = self
            .agent
            .put(&format!("{}/connectors/{name}/resume", self.url))
            .send_empty()
            .unwrap_or_else(|error| panic!("resuming connector {name}: {error}"));
        assert!(response.status().is_success(), "resuming connector {name}");
        self.wait_running(name);
    }

    /// The end of the worker's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let mut text = String::new();
        for name in ["connect.log", "connect.stderr"] {
            let content =
                std::fs::read_to_string(self.directory.path().join(name)).unwrap_or_default();
            let lines: Vec<&str> = content.lines().collect();
            text.push_str(&lines[lines.len().saturating_sub(30)..].join("\n"));
            text.push('\n');
        }
        text
    }
}
