//! The configuration: one TOML file, layered with `TANDEM_<SECTION>__<KEY>` environment
//! variables, deserialized into typed structs that reject unknown keys, validated once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tandem_api::auth::{AccessTokens, NamedToken, Token};
use tandem_api::cutover::CutoverRules;
use tandem_core::gates::{GateRules, TriggerRule};
use tandem_core::ownership::{ActorRule, OwnershipPolicy, Unattributed};
use tandem_core::{EntityMapping, Mapping, Status, System, Timestamp};
use tandem_formats::{EventSchemas, Format, FormatSettings};
use tandem_ingest::IngestSettings;
use tandem_store::StoreOptions;

mod api;
mod backup;
mod duration;
mod errors;
mod kafka;
mod ownership;
mod replication;
mod systems;

pub use api::{ApiConfig, NamedTokenConfig, StoreConfig, TokenRole};
pub use backup::{BackupConfig, S3Config};
use errors::{describe_deserialize_error, describe_toml_error};
use kafka::check_broker;
pub use kafka::{is_secret_property, KafkaConfig, Secret, SecretSource};
pub use ownership::{CutoverConfig, GatesConfig, OwnershipConfig};
pub use replication::ReplicationConfig;
use systems::validate_debezium;
pub use systems::{DebeziumConfig, SystemConfig, SystemsConfig};
/// The whole configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// The Kafka cluster.
    pub kafka: KafkaConfig,
    /// Local state.
    pub store: StoreConfig,
    /// The HTTP API.
    #[serde(default)]
    pub api: ApiConfig,
    /// The two systems and their topics.
    pub systems: SystemsConfig,
    /// How records are compared over time.
    #[serde(default)]
    pub reconcile: ReconcileConfig,
    /// Who owns live work.
    #[serde(default)]
    pub ownership: OwnershipConfig,
    /// The second cutover: gates and rollback triggers.
    #[serde(default)]
    pub cutover: CutoverConfig,
    /// Backups of the store; none without it.
    #[serde(default)]
    pub backup: Option<BackupConfig>,
    /// A hot standby through a changelog topic; none without it.
    #[serde(default)]
    pub replication: Option<ReplicationConfig>,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// The compared entities.
    pub entities: Vec<EntityMapping>,
}
/// `[reconcile]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReconcileConfig {
    /// How long the sides may differ before it is divergence rather than lag.
    #[serde(default = "default_grace", with = "crate::config::duration")]
    pub grace: Duration,
    /// Whether the clock follows wall time while tandem is idle and caught up.
    #[serde(default = "default_true")]
    pub idle_clock: bool,
    /// Topic for re-read requests of unverified records; unset: they are only reported.
    #[serde(default)]
    pub reread_topic: Option<String>,
    /// Re-read requests per system, at most this many ids per minute (API quotas are tight).
    #[serde(default = "default_reread_max_ids_per_minute")]
    pub reread_max_ids_per_minute: u32,
    /// Ids per re-read request message, at most.
    #[serde(default = "default_reread_batch_max_ids")]
    pub reread_batch_max_ids: usize,
    /// A re-read with no answer is requested again after this long.
    #[serde(
        default = "default_reread_resend_after",
        with = "crate::config::duration"
    )]
    pub reread_resend_after: Duration,
    /// Topic for snapshot requests (after sequence holes); unset: they are only reported.
    #[serde(default)]
    pub control_topic: Option<String>,
    /// How often a summary of the report is kept for its history (`/v1/report/history`).
    #[serde(default = "default_history_interval", with = "crate::config::duration")]
    pub history_interval: Duration,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        ReconcileConfig {
            grace: default_grace(),
            idle_clock: true,
            reread_topic: None,
            reread_max_ids_per_minute: default_reread_max_ids_per_minute(),
            reread_batch_max_ids: default_reread_batch_max_ids(),
            reread_resend_after: default_reread_resend_after(),
            control_topic: None,
            history_interval: default_history_interval(),
        }
    }
}

/// `[log]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogConfig {
    /// Default level filter (`RUST_LOG` overrides it).
    #[serde(default = "default_log_level")]
    pub level: String,
    /// `text` or `json`.
    #[serde(default)]
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: default_log_level(),
            format: LogFormat::Text,
        }
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

fn default_group_id() -> String {
    "tandem".to_owned()
}
fn default_static_membership() -> bool {
    true
}
fn default_dead_letter_topic() -> String {
    "tandem.dlq".to_owned()
}
fn default_max_message_bytes() -> usize {
    1024 * 1024
}
fn default_batch_max_messages() -> usize {
    2000
}
fn default_batch_max_wait() -> Duration {
    Duration::from_millis(50)
}
fn default_min_free_mib() -> u64 {
    512
}
fn default_cache_mib() -> usize {
    256
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
/// The permission bits of `path` when every user of the machine has any (its group may: a
/// Kubernetes secret is mounted readable by the pod's group): `None` otherwise, or for a
/// file that cannot be read.
fn loose_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o007 != 0).then_some(mode)
}

fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_connections() -> usize {
    1024
}
fn default_max_connections_per_address() -> usize {
    64
}
fn default_grace() -> Duration {
    Duration::from_secs(300)
}
fn default_reread_max_ids_per_minute() -> u32 {
    60
}
fn default_reread_batch_max_ids() -> usize {
    100
}
fn default_reread_resend_after() -> Duration {
    Duration::from_secs(3600)
}
fn default_history_interval() -> Duration {
    Duration::from_secs(300)
}
fn default_true() -> bool {
    true
}
fn default_log_level() -> String {
    "info".to_owned()
}

/// A configuration that cannot be used; says which file and which key.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration {file}: {problem}")]
pub struct ConfigError {
    /// The file (and whether environment overrides were involved).
    pub file: String,
    /// What is wrong, naming the key.
    pub problem: String,
}

/// Where environment overrides come from: the process, or a map (tests).
#[derive(Clone, Debug, Default)]
pub enum Environment {
    /// `std::env`.
    #[default]
    Process,
    /// A fixed map of variables.
    Map(HashMap<String, String>),
}
impl Config {
    /// Reads `path`, applies `TANDEM_*` overrides from `environment`, and validates.
    pub fn load(path: &Path, environment: &Environment) -> Result<Config, ConfigError> {
        let file_name = path.display().to_string();
        // Only `TANDEM_<SECTION>__<KEY>` variables are configuration: others that merely
        // start with TANDEM_ (TANDEM_URL, TANDEM_CONFIG, a Kubernetes service's
        // TANDEM_SERVICE_HOST) must not be read as keys.
        let overrides: HashMap<String, String> = match environment {
            Environment::Process => std::env::vars().collect(),
            Environment::Map(map) => map.clone(),
        }
        .into_iter()
        .filter(|(key, _)| key.starts_with("TANDEM_") && key.contains("__"))
        .collect();
        let mut overridden: Vec<String> = overrides.keys().cloned().collect();
        overridden.sort();
        let origin = if overridden.is_empty() {
            file_name.clone()
        } else {
            format!(
                "{file_name} (with environment overrides {})",
                overridden.join(", ")
            )
        };
        let fail = |problem: String| ConfigError {
            file: origin.clone(),
            problem,
        };
        if !path.is_file() {
            return Err(ConfigError {
                file: file_name,
                problem: "the file does not exist or is not readable; `tandem check-config` validates a file, ops/tandem.example.toml documents every key".to_owned(),
            });
        }
        // The config crate's TOML errors quote the offending line, which may hold a token:
        // the syntax is checked here first and reported by position only.
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError {
            file: file_name.clone(),
            problem: format!("cannot read the file: {error}"),
        })?;
        if let Err(error) = text.parse::<toml::Table>() {
            return Err(ConfigError {
                file: file_name,
                problem: describe_toml_error(&text, &error),
            });
        }
        // Values stay text until a key's type asks for a number or a boolean (a group id
        // `0123` stays `0123`); the topic lists are split on commas here.
        let mut overrides = overrides;
        let mut lists = Vec::new();
        for system in ["SOURCE", "TARGET"] {
            if let Some(topics) = overrides.remove(&format!("TANDEM_SYSTEMS__{system}__TOPICS")) {
                let topics: Vec<String> = topics
                    .split(',')
                    .map(|topic| topic.trim().to_owned())
                    .collect();
                lists.push((format!("systems.{}.topics", system.to_lowercase()), topics));
            }
        }
        let mut builder = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix("TANDEM")
                    .prefix_separator("_")
                    .separator("__")
                    .try_parsing(false)
                    .source(Some(overrides.into_iter().collect())),
            );
        for (key, topics) in lists {
            builder = builder
                .set_override(key, topics)
                .map_err(|error| fail(error.to_string()))?;
        }
        let layered = builder.build().map_err(|error| fail(error.to_string()))?;
        // Keys no setting takes are collected by their path rather than refused by serde,
        // so that the error can name the key and the keys its table has.
        let mut unknown = Vec::new();
        let mut track = serde_path_to_error::Track::new();
        let deserialized: Result<Config, _> = serde_ignored::deserialize(
            serde_path_to_error::Deserializer::new(layered, &mut track),
            |path| unknown.push(errors::key_path(&path)),
        );
        let mut config = match deserialized {
            Ok(config) => config,
            Err(error) => {
                let problem = describe_deserialize_error(&track.path().to_string(), &error);
                // A misspelled key is often why another is missing: name it first.
                return Err(fail(match unknown.first() {
                    Some(key) => format!("unknown key `{key}`; {problem}"),
                    None => problem,
                }));
            }
        };
        if let Some(key) = unknown.first() {
            return Err(fail(errors::unknown_key(key, &config)));
        }
        config
            .systems
            .source
            .load_event_schemas(System::Source)
            .map_err(&fail)?;
        config
            .systems
            .target
            .load_event_schemas(System::Target)
            .map_err(&fail)?;
        config.validate().map_err(&fail)?;
        config.kafka.secrets = config
            .kafka
            .read_secrets(|name| match environment {
                Environment::Process => std::env::var(name).ok(),
                Environment::Map(map) => map.get(name).cloned(),
            })
            .map_err(&fail)?;
        if let Some(backup) = &mut config.backup {
            backup
                .read_secret(|name| match environment {
                    Environment::Process => std::env::var(name).ok(),
                    Environment::Map(map) => map.get(name).cloned(),
                })
                .map_err(&fail)?;
        }
        config.check_kafka_properties().map_err(fail)?;
        Ok(config)
    }

    /// What is allowed but unwise about the files the configuration names: secrets and the
    /// store open to every user of the machine. Each warning names the key and the fix.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = self.api.loose_token_files();
        if let Some(mode) = loose_mode(&self.store.path) {
            warnings.push(format!(
                "key `store.path`: every user of the machine can open {} (mode {mode:o}), and it holds CRM records: run `chmod 700 {}`",
                self.store.path.display(),
                self.store.path.display()
            ));
        }
        warnings
    }

    /// Whether librdkafka takes every property as tandem will hand it over, consumer and
    /// producer alike. A refusal names the property; it shows no secret's value, and a
    /// misspelled `sasl.pasword` is refused without its value, as librdkafka's text of an
    /// unknown property carries only the name.
    pub fn check_kafka_properties(&self) -> Result<(), String> {
        let settings = self.ingest_settings(None);
        for config in [settings.consumer_config(), settings.producer_config()] {
            if let Err(error) = config.create_native_config() {
                return Err(match error {
                    rdkafka::error::KafkaError::ClientConfig(_, description, property, _) => {
                        // librdkafka quotes an invalid value: not for a secret property.
                        let description = if is_secret_property(&property)
                            && description.starts_with("Invalid value")
                        {
                            "invalid value (not shown: the property holds a secret)".to_owned()
                        } else {
                            description
                        };
                        format!(
                            "key `kafka.properties`, property `{property}`: {}; see librdkafka's CONFIGURATION.md for the properties and their values",
                            self.kafka.redact(&description)
                        )
                    }
                    other => format!(
                        "key `kafka.properties`: {}",
                        self.kafka.redact(&other.to_string())
                    ),
                });
            }
        }
        Ok(())
    }

    /// Cross-field rules that types cannot express.
    pub fn validate(&self) -> Result<(), String> {
        if self.kafka.brokers.trim().is_empty() {
            return Err("key `kafka.brokers` is empty: give the bootstrap servers, e.g. \"kafka-1:9092,kafka-2:9092\"".to_owned());
        }
        // Empty entries (a trailing comma) are skipped, as librdkafka skips them.
        for broker in self
            .kafka
            .brokers
            .split(',')
            .filter(|entry| !entry.trim().is_empty())
        {
            check_broker(broker.trim())
                .map_err(|problem| format!("key `kafka.brokers`: `{}` {problem}; write host:port entries separated by commas, e.g. \"kafka-1:9092,kafka-2:9092\"", broker.trim()))?;
        }
        if self.kafka.group_id.trim().is_empty() {
            return Err("key `kafka.group_id` is empty".to_owned());
        }
        if self.api.header_read_timeout.is_zero() {
            return Err(
                "key `api.header_read_timeout` must be more than zero, e.g. \"10s\"".to_owned(),
            );
        }
        if self.api.max_connections == 0 || self.api.max_connections_per_address == 0 {
            return Err("keys `api.max_connections` and `api.max_connections_per_address` must be at least 1".to_owned());
        }
        if self.api.max_connections_per_address > self.api.max_connections {
            return Err(format!(
                "key `api.max_connections_per_address` ({}) is more than `api.max_connections` ({}): lower it",
                self.api.max_connections_per_address, self.api.max_connections
            ));
        }
        if let Some(backup) = &self.backup {
            backup.validate()?;
        }
        if let Some(replication) = &self.replication {
            replication.validate()?;
        }
        if self.kafka.batch_max_messages == 0 {
            return Err("key `kafka.batch_max_messages` must be at least 1".to_owned());
        }
        if self.kafka.max_message_bytes < 1024 {
            return Err("key `kafka.max_message_bytes` must be at least 1024".to_owned());
        }
        let mut seen = BTreeSet::new();
        for (system, settings) in [
            (System::Source, &self.systems.source),
            (System::Target, &self.systems.target),
        ] {
            if settings.topics.is_empty() {
                return Err(format!("key `systems.{system}.topics` is empty: list the change topics of the {system} system"));
            }
            for topic in &settings.topics {
                if topic.trim().is_empty() {
                    return Err(format!(
                        "key `systems.{system}.topics` contains an empty topic name"
                    ));
                }
                if !seen.insert(topic.as_str()) {
                    return Err(format!("key `systems.{system}.topics`: topic `{topic}` is listed twice (a topic belongs to exactly one system)"));
                }
            }
            settings.format_settings(system)?;
            if let Some(debezium) = &settings.debezium {
                validate_debezium(system, debezium, &self.entities)?;
            }
        }
        for (key, topic) in [
            ("reconcile.reread_topic", &self.reconcile.reread_topic),
            ("reconcile.control_topic", &self.reconcile.control_topic),
            (
                "ownership.violations_topic",
                &self.ownership.violations_topic,
            ),
        ] {
            if let Some(topic) = topic
                .as_deref()
                .filter(|topic| seen.contains(topic) || *topic == self.kafka.dead_letter_topic)
            {
                return Err(format!("key `{key}`: `{topic}` is also a change or dead-letter topic; requests need a topic of their own"));
            }
        }
        if self.reconcile.reread_topic.is_some()
            && self.reconcile.reread_topic == self.reconcile.control_topic
        {
            return Err("keys `reconcile.reread_topic` and `reconcile.control_topic` name the same topic; give each its own".to_owned());
        }
        let output_topics: Vec<(&str, &String)> = [
            ("reconcile.reread_topic", &self.reconcile.reread_topic),
            ("reconcile.control_topic", &self.reconcile.control_topic),
            (
                "ownership.violations_topic",
                &self.ownership.violations_topic,
            ),
        ]
        .into_iter()
        .filter_map(|(key, topic)| topic.as_ref().map(|topic| (key, topic)))
        .collect();
        for (index, (key, topic)) in output_topics.iter().enumerate() {
            if let Some((other, _)) = output_topics[..index]
                .iter()
                .find(|(_, earlier)| earlier == topic)
            {
                return Err(format!(
                    "keys `{other}` and `{key}` name the same topic `{topic}`; give each its own"
                ));
            }
        }
        self.ownership.policy(&self.entities)?;
        self.api.tokens()?;
        self.cutover.rules(&self.entities)?;
        if self.reconcile.reread_resend_after < Duration::from_secs(1) {
            return Err("key `reconcile.reread_resend_after` must be at least 1s".to_owned());
        }
        if self.reconcile.reread_max_ids_per_minute == 0 || self.reconcile.reread_batch_max_ids == 0
        {
            return Err("keys `reconcile.reread_max_ids_per_minute` and `reconcile.reread_batch_max_ids` must be at least 1".to_owned());
        }
        if seen.contains(self.kafka.dead_letter_topic.as_str()) {
            return Err(format!(
                "key `kafka.dead_letter_topic`: `{}` is also a change topic; dead letters need a topic of their own",
                self.kafka.dead_letter_topic
            ));
        }
        if self.entities.is_empty() {
            return Err("key `entities` is empty: add at least one [[entities]] block".to_owned());
        }
        self.mapping()
            .map(|_| ())
            .map_err(|error| format!("key `entities`: {error}"))?;
        if self.reconcile.history_interval < std::time::Duration::from_secs(1) {
            return Err("key `reconcile.history_interval`: at least 1s (default 5m)".to_owned());
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(format!("key `log.level`: `{}` is not a level or filter (use error, warn, info, debug or trace)", self.log.level));
        }
        Ok(())
    }

    /// The validated entity mapping.
    pub fn mapping(&self) -> Result<Mapping, tandem_core::mapping::MappingError> {
        Mapping::try_new(self.entities.clone())
    }

    /// System labels for reports.
    pub fn labels(&self) -> BTreeMap<System, String> {
        BTreeMap::from([
            (
                System::Source,
                self.systems
                    .source
                    .label
                    .clone()
                    .unwrap_or_else(|| "source".to_owned()),
            ),
            (
                System::Target,
                self.systems
                    .target
                    .label
                    .clone()
                    .unwrap_or_else(|| "target".to_owned()),
            ),
        ])
    }

    /// The ingest side's settings.
    /// The settings of the ingest side; `store_id` names this store's consumer in the group
    /// when static membership is on.
    pub fn ingest_settings(&self, store_id: Option<&str>) -> IngestSettings {
        let mut topics = BTreeMap::new();
        for topic in &self.systems.source.topics {
            topics.insert(topic.clone(), System::Source);
        }
        for topic in &self.systems.target.topics {
            topics.insert(topic.clone(), System::Target);
        }
        let mut formats = BTreeMap::new();
        for (system, settings) in [
            (System::Source, &self.systems.source),
            (System::Target, &self.systems.target),
        ] {
            formats.extend(
                settings
                    .format_settings(system)
                    .expect("invariant: the configuration was validated at load"),
            );
        }
        IngestSettings {
            brokers: self.kafka.brokers.clone(),
            formats,
            group_id: self.kafka.group_id.clone(),
            group_instance_id: match self.replication_settings() {
                // Whichever instance is active is the one static member: a new active one
                // takes the partitions over at once instead of after the dead one's session.
                Some(replication) => Some(replication.transactional_id),
                None => store_id
                    .filter(|_| self.kafka.static_membership)
                    .map(|id| format!("tandem-{id}")),
            },
            properties: self.kafka.all_properties(),
            topics,
            dead_letter_topic: self.kafka.dead_letter_topic.clone(),
            max_message_bytes: self.kafka.max_message_bytes,
            batch_max_messages: self.kafka.batch_max_messages,
            batch_max_wait: self.kafka.batch_max_wait,
            grace: self.reconcile.grace,
            idle_clock: self.reconcile.idle_clock,
            reread_topic: self.reconcile.reread_topic.clone(),
            reread_max_ids_per_minute: self.reconcile.reread_max_ids_per_minute,
            reread_batch_max_ids: self.reconcile.reread_batch_max_ids,
            reread_resend_after: self.reconcile.reread_resend_after,
            control_topic: self.reconcile.control_topic.clone(),
            debezium_signals: [
                (System::Source, &self.systems.source),
                (System::Target, &self.systems.target),
            ]
            .into_iter()
            .filter_map(|(system, settings)| {
                let debezium = settings.debezium.as_ref()?;
                Some((
                    system,
                    tandem_ingest::DebeziumSignals {
                        topic: debezium.signal_topic.clone(),
                        connector: debezium.connector.clone(),
                        collections: debezium.collections.clone(),
                        key_column: debezium.key_column.clone(),
                    },
                ))
            })
            .collect(),
            ownership: self
                .ownership
                .policy(&self.entities)
                .expect("invariant: the configuration was validated at load"),
            violations_topic: self.ownership.violations_topic.clone(),
            commands_topic: self.ownership.commands_topic.clone(),
            store_path: self.store.path.clone(),
            min_free_bytes: self.store.min_free_mib.saturating_mul(1024 * 1024),
            output_transactional_id: self
                .replication_settings()
                .map(|replication| replication.transactional_id),
        }
    }

    /// The store's options.
    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            cache_bytes: self.store.cache_mib * 1024 * 1024,
            sync_writes: self.store.sync_writes,
        }
    }
}
