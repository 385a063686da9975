//! Apache Kafka for tests: a single KRaft node (broker and controller in one process) on a
//! fresh directory and free loopback ports, from the jars `scripts/setup.sh` resolved with
//! Maven into `~/.cache/tandem/kafka-<version>/libs`.
//!
//! The broker is [`Supervised`]: no JVM outlives its test.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, TopicPartitionList};

use crate::broker::Broker;
use crate::supervised::Supervised;
use crate::{free_port, wait_for};

/// The Apache Kafka release the tests run; `scripts/kafka/pom.xml` names the same.
pub const KAFKA_VERSION: &str = "4.4.0";

/// How long a broker may take to start (a JVM on a busy 2-core machine).
const START_DEADLINE: Duration = Duration::from_secs(90);

/// Where `make test` installs the broker's jars, unless `TANDEM_KAFKA_HOME` points elsewhere.
pub fn kafka_home() -> PathBuf {
    if let Some(path) = std::env::var_os("TANDEM_KAFKA_HOME") {
        return PathBuf::from(path);
    }
    crate::cache_dir().join(format!("kafka-{KAFKA_VERSION}"))
}

/// How clients reach the broker.
#[derive(Clone, Debug, Default)]
pub enum Security {
    /// PLAINTEXT on loopback.
    #[default]
    Plaintext,
    /// SASL/SCRAM-SHA-512 over TLS, with ACLs enforced; `admin` is a super user.
    ScramOverTls(Tls),
}

/// The TLS material of a `ScramOverTls` broker, made by the test (PEM files).
#[derive(Clone, Debug)]
pub struct Tls {
    /// The broker's certificate chain and private key, in one PEM file.
    pub broker_keystore_pem: PathBuf,
    /// The CA certificate clients trust.
    pub ca_pem: PathBuf,
    /// SCRAM users created when the storage is formatted: (name, password). `admin` must be
    /// among them: the broker's own inter-broker user.
    pub users: Vec<(String, String)>,
}

/// How to start a broker.
#[derive(Clone, Debug, Default)]
pub struct KafkaOptions {
    /// Listener security.
    pub security: Security,
    /// Extra `server.properties` lines.
    pub properties: Vec<(String, String)>,
}

/// A running Apache Kafka node.
pub struct Kafka {
    process: Option<Supervised>,
    bootstrap: String,
    directory: tempfile::TempDir,
    options: KafkaOptions,
}

impl Kafka {
    /// Starts a plaintext broker and creates `topics` (name, partitions).
    pub fn start(topics: &[(&str, i32)]) -> Kafka {
        let kafka = Kafka::start_with(KafkaOptions::default());
        kafka.create_topics(topics);
        kafka
    }

    /// Starts a broker with `options` on a fresh directory.
    pub fn start_with(options: KafkaOptions) -> Kafka {
        let home = kafka_home();
        assert!(
            home.join("libs").is_dir(),
            "Apache Kafka {KAFKA_VERSION} is not installed in {}: run `make test` (scripts/setup.sh resolves it with Maven) or set TANDEM_KAFKA_HOME",
            home.display()
        );
        let directory = tempfile::Builder::new()
            .prefix("tandem-kafka-")
            .tempdir()
            .expect("a temporary directory for the broker");
        let port = free_port();
        let controller_port = free_port();
        let bootstrap = format!("127.0.0.1:{port}");
        write_server_properties(directory.path(), port, controller_port, &options);
        write_log_config(directory.path());
        format_storage(directory.path(), &options);
        let mut kafka = Kafka {
            process: None,
            bootstrap,
            directory,
            options,
        };
        kafka.launch();
        kafka
    }

    /// The broker's directory (its configuration, data and `kafka.log`).
    pub fn directory(&self) -> &Path {
        self.directory.path()
    }

    /// Starts the JVM on the existing directory and waits until it serves metadata.
    fn launch(&mut self) {
        let home = kafka_home();
        let directory = self.directory.path();
        let classpath = format!("{}/libs/*", home.display());
        // `sh` starts the broker, then waits for its standard input to close (the test
        // process ended or dropped the handle) and kills it.
        let mut arguments = jvm_options(directory);
        arguments.extend(["-cp".to_owned(), classpath, "kafka.Kafka".to_owned()]);
        arguments.push(directory.join("server.properties").display().to_string());
        self.process = Some(Supervised::spawn(
            None,
            OsStr::new("java"),
            arguments,
            "KILL",
            &directory.join("kafka.stderr"),
        ));
        let admin_config = self.client_config();
        let started = std::time::Instant::now();
        loop {
            if let Some(status) = self.process.as_mut().and_then(Supervised::exited) {
                panic!(
                    "Apache Kafka exited at start ({status}):\n{}",
                    self.log_tail()
                );
            }
            let serves = admin_config
                .create::<BaseConsumer>()
                .ok()
                .and_then(|consumer| {
                    consumer
                        .fetch_metadata(None, Duration::from_millis(500))
                        .ok()
                })
                .is_some_and(|metadata| !metadata.brokers().is_empty());
            if serves {
                return;
            }
            assert!(
                started.elapsed() < START_DEADLINE,
                "Apache Kafka on {} did not serve metadata within {START_DEADLINE:?}:\n{}",
                self.bootstrap,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the broker (SIGKILL): an outage, or a crash. [`Kafka::restart`] brings it back
    /// on the same ports and data.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop();
        }
    }

    /// Starts the broker again after [`Kafka::kill`], on the same ports and data.
    pub fn restart(&mut self) {
        assert!(self.process.is_none(), "restart follows kill");
        self.launch();
    }

    /// A client configuration reaching this broker with its admin identity.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        if let Security::ScramOverTls(tls) = &self.options.security {
            let password = tls
                .users
                .iter()
                .find(|(name, _)| name == "admin")
                .map(|(_, password)| password.clone())
                .expect("a SCRAM broker has an admin user");
            config
                .set("security.protocol", "SASL_SSL")
                .set("sasl.mechanism", "SCRAM-SHA-512")
                .set("sasl.username", "admin")
                .set("sasl.password", &password)
                .set("ssl.ca.location", tls.ca_pem.display().to_string());
        }
        config
    }

    fn admin(&self) -> AdminClient<DefaultClientContext> {
        self.client_config()
            .create()
            .expect("an admin client for the test broker")
    }

    /// Creates topics with default settings.
    pub fn create_topics(&self, topics: &[(&str, i32)]) {
        for (name, partitions) in topics {
            self.create_topic(name, *partitions, &[]);
        }
    }

    /// Creates a topic with topic-level configuration (`cleanup.policy`, `segment.bytes`, ...)
    /// and waits until every partition has a leader.
    pub fn create_topic(&self, name: &str, partitions: i32, config: &[(&str, &str)]) {
        let admin = self.admin();
        let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        for (key, value) in config {
            topic = topic.set(key, value);
        }
        let results = block_on(admin.create_topics(
            [&topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        ))
        .unwrap_or_else(|error| panic!("creating topic {name}: {error}"));
        for result in results {
            if let Err((topic, error)) = result {
                panic!("creating topic {topic}: {error}");
            }
        }
        let consumer: BaseConsumer = self.client_config().create().expect("a metadata client");
        wait_for(
            &format!("leaders for the {partitions} partitions of {name}"),
            Duration::from_secs(30),
            || {
                let metadata = consumer
                    .fetch_metadata(Some(name), Duration::from_secs(1))
                    .ok()?;
                let topic = metadata.topics().first()?;
                (topic.error().is_none()
                    && topic.partitions().len() == partitions as usize
                    && topic
                        .partitions()
                        .iter()
                        .all(|partition| partition.leader() >= 0 && partition.error().is_none()))
                .then_some(())
            },
        );
    }

    /// Deletes a topic.
    pub fn delete_topic(&self, name: &str) {
        let admin = self.admin();
        let results = block_on(admin.delete_topics(
            &[name],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        ))
        .unwrap_or_else(|error| panic!("deleting topic {name}: {error}"));
        for result in results {
            if let Err((topic, error)) = result {
                panic!("deleting topic {topic}: {error}");
            }
        }
    }

    /// Whether the broker knows `topic`.
    pub fn topic_exists(&self, topic: &str) -> bool {
        let consumer: BaseConsumer = self.client_config().create().expect("a metadata client");
        consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .ok()
            .and_then(|metadata| {
                metadata
                    .topics()
                    .first()
                    .map(|found| found.error().is_none())
            })
            .unwrap_or(false)
    }

    /// Deletes every message of `topic`/`partition` below `before` (Kafka's `DeleteRecords`,
    /// what retention does), and returns the partition's new log start offset.
    pub fn delete_records(&self, topic: &str, partition: i32, before: i64) -> i64 {
        let admin = self.admin();
        let mut offsets = TopicPartitionList::new();
        offsets
            .add_partition_offset(topic, partition, rdkafka::Offset::Offset(before))
            .expect("a valid offset");
        let result = block_on(admin.delete_records(
            &offsets,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        ))
        .unwrap_or_else(|error| panic!("deleting records of {topic}/{partition}: {error}"));
        let element = result
            .find_partition(topic, partition)
            .expect("DeleteRecords answers for the partition");
        if let Err(error) = element.error() {
            panic!("deleting records of {topic}/{partition}: {error}");
        }
        element.offset().to_raw().expect("a log start offset")
    }

    /// The partition's (log start, high watermark).
    pub fn watermarks(&self, topic: &str, partition: i32) -> (i64, i64) {
        let consumer: BaseConsumer = self.client_config().create().expect("a metadata client");
        consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .unwrap_or_else(|error| panic!("watermarks of {topic}/{partition}: {error}"))
    }

    /// Runs one of Kafka's command-line tools (a main class) against this broker, with the
    /// admin identity in a client properties file; panics with its output if it fails.
    pub fn tool(&self, main_class: &str, arguments: &[&str]) -> String {
        let properties = self.directory.path().join("admin-client.properties");
        let mut text = String::new();
        if let Security::ScramOverTls(tls) = &self.options.security {
            let password = &tls
                .users
                .iter()
                .find(|(name, _)| name == "admin")
                .expect("a SCRAM broker has an admin user")
                .1;
            text.push_str(&format!(
                "security.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\n\
                 sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username=\"admin\" password=\"{password}\";\n\
                 ssl.truststore.type=PEM\nssl.truststore.location={}\n",
                tls.ca_pem.display()
            ));
        }
        std::fs::write(&properties, text).expect("the broker directory is writable");
        let output = Command::new("java")
            .args(["-Xmx256m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"])
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                self.directory.path().join("log4j2.properties").display()
            ))
            .args(["-cp", &format!("{}/libs/*", kafka_home().display())])
            .arg(main_class)
            .args(["--bootstrap-server", &self.bootstrap])
            .arg("--command-config")
            .arg(&properties)
            .args(arguments)
            .output()
            .expect("java runs");
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success(),
            "{main_class} {arguments:?} failed: {printed}"
        );
        printed
    }

    /// The end of the broker's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let mut text = String::new();
        for name in ["kafka.log", "kafka.stderr"] {
            let content =
                std::fs::read_to_string(self.directory.path().join(name)).unwrap_or_default();
            let lines: Vec<&str> = content.lines().collect();
            text.push_str(&lines[lines.len().saturating_sub(30)..].join("\n"));
            text.push('\n');
        }
        text
    }
}

impl Broker for Kafka {
    fn bootstrap(&self) -> &str {
        &self.bootstrap
    }
}

/// Small heap, one GC thread, the quick JIT tier: a broker for tests, started often.
fn jvm_options(directory: &Path) -> Vec<String> {
    vec![
        "-Xms64m".to_owned(),
        "-Xmx512m".to_owned(),
        "-XX:+UseSerialGC".to_owned(),
        "-XX:TieredStopAtLevel=1".to_owned(),
        "-Djava.awt.headless=true".to_owned(),
        format!(
            "-Dlog4j2.configurationFile={}",
            directory.join("log4j2.properties").display()
        ),
    ]
}

fn write_server_properties(
    directory: &Path,
    port: u16,
    controller_port: u16,
    options: &KafkaOptions,
) {
    let (listener_name, listener_protocol) = match options.security {
        Security::Plaintext => ("PLAINTEXT", "PLAINTEXT"),
        Security::ScramOverTls(_) => ("SASL_SSL", "SASL_SSL"),
    };
    let mut text = format!(
        "process.roles=broker,controller\n\
         node.id=1\n\
         controller.quorum.voters=1@127.0.0.1:{controller_port}\n\
         listeners={listener_name}://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}\n\
         advertised.listeners={listener_name}://127.0.0.1:{port}\n\
         controller.listener.names=CONTROLLER\n\
         listener.security.protocol.map={listener_name}:{listener_protocol},CONTROLLER:PLAINTEXT\n\
         inter.broker.listener.name={listener_name}\n\
         log.dirs={data}\n\
         auto.create.topics.enable=false\n\
         num.partitions=1\n\
         offsets.topic.replication.factor=1\n\
         offsets.topic.num.partitions=4\n\
         transaction.state.log.replication.factor=1\n\
         transaction.state.log.min.isr=1\n\
         transaction.state.log.num.partitions=4\n\
         share.coordinator.state.topic.replication.factor=1\n\
         share.coordinator.state.topic.min.isr=1\n\
         group.initial.rebalance.delay.ms=0\n\
         num.network.threads=2\n\
         num.io.threads=2\n\
         background.threads=2\n\
         log.cleaner.threads=1\n\
         log.cleaner.backoff.ms=1000\n\
         log.retention.check.interval.ms=1000\n",
        data = directory.join("data").display(),
    );
    if let Security::ScramOverTls(tls) = &options.security {
        text.push_str(&format!(
            "sasl.enabled.mechanisms=SCRAM-SHA-512\n\
             sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512\n\
             listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username=\"admin\" password=\"{admin}\";\n\
             ssl.keystore.type=PEM\n\
             ssl.keystore.location={keystore}\n\
             ssl.truststore.type=PEM\n\
             ssl.truststore.location={ca}\n\
             ssl.endpoint.identification.algorithm=\n\
             authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer\n\
             super.users=User:admin;User:ANONYMOUS\n\
             allow.everyone.if.no.acl.found=false\n",
            admin = tls
                .users
                .iter()
                .find(|(name, _)| name == "admin")
                .map(|(_, password)| password.as_str())
                .expect("a SCRAM broker has an admin user"),
            keystore = tls.broker_keystore_pem.display(),
            ca = tls.ca_pem.display(),
        ));
    }
    for (key, value) in &options.properties {
        text.push_str(&format!("{key}={value}\n"));
    }
    std::fs::write(directory.join("server.properties"), text)
        .expect("the broker directory is writable");
}

/// Warnings and errors of the broker go to `kafka.log` in its directory.
fn write_log_config(directory: &Path) {
    let text = format!(
        "status = error\n\
         appender.file.type = File\n\
         appender.file.name = file\n\
         appender.file.fileName = {}\n\
         appender.file.layout.type = PatternLayout\n\
         appender.file.layout.pattern = [%d] %p %m (%c)%n\n\
         rootLogger.level = warn\n\
         rootLogger.appenderRef.file.ref = file\n",
        directory.join("kafka.log").display()
    );
    std::fs::write(directory.join("log4j2.properties"), text)
        .expect("the broker directory is writable");
}

/// `kafka.tools.StorageTool format`: a new cluster id, the SCRAM users of the options.
fn format_storage(directory: &Path, options: &KafkaOptions) {
    let cluster_id =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes());
    let mut command = Command::new("java");
    command
        .args(jvm_options(directory))
        .args(["-cp", &format!("{}/libs/*", kafka_home().display())])
        .args(["kafka.tools.StorageTool", "format"])
        // `=`: a base64 id may start with `-`, which the tool would take for an option.
        .arg(format!("--cluster-id={cluster_id}"))
        .arg("--config")
        .arg(directory.join("server.properties"));
    if let Security::ScramOverTls(tls) = &options.security {
        for (name, password) in &tls.users {
            command
                .arg("--add-scram")
                .arg(format!("SCRAM-SHA-512=[name={name},password={password}]"));
        }
    }
    let output = command.output().expect("java runs the storage tool");
    assert!(
        output.status.success(),
        "formatting the broker's storage failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs an admin future to completion: rdkafka's admin client resolves its futures from its
/// own thread, so a current-thread runtime only has to wait.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime")
        .block_on(future)
}

/// Writes `text` into `path` with mode 0600 (keys, passwords).
pub fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .expect("the test directory is writable");
    file.write_all(text.as_bytes())
        .expect("the test directory is writable");
}
