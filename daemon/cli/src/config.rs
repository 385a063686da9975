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

/// The whole configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// The compared entities.
    pub entities: Vec<EntityMapping>,
}

/// `[kafka]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Consumer group id.
    #[serde(default = "default_group_id")]
    pub group_id: String,
    /// Topic for messages that cannot be decoded.
    #[serde(default = "default_dead_letter_topic")]
    pub dead_letter_topic: String,
    /// Any librdkafka property, passed through. Values of secret properties
    /// (`sasl.password`, ...) are never shown; prefer `secret_properties` for them.
    #[serde(default, serialize_with = "serialize_redacted")]
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties whose values are secrets, read at start from a file
    /// (`{ file = "/run/secrets/kafka-password" }`, trailing newline ignored) or an environment
    /// variable (`{ env = "KAFKA_PASSWORD" }`). Their values are never printed.
    #[serde(default)]
    pub secret_properties: BTreeMap<String, SecretSource>,
    /// The values of `secret_properties`, read by [`Config::load`].
    #[serde(skip)]
    pub secrets: BTreeMap<String, Secret>,
    /// Larger messages are dead-lettered without parsing.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Messages per committed batch, at most.
    #[serde(default = "default_batch_max_messages")]
    pub batch_max_messages: usize,
    /// Longest wait before a partial batch is committed.
    #[serde(default = "default_batch_max_wait", with = "humantime_serde")]
    pub batch_max_wait: Duration,
    /// Static group membership: the consumer joins with a `group.instance.id` derived from
    /// the store's id, so a restart takes its partitions back at once instead of waiting for
    /// the old session to expire. `group.instance.id` under `[kafka.properties]` overrides
    /// the derived id.
    #[serde(default = "default_static_membership")]
    pub static_membership: bool,
}

/// Where a secret property's value comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum SecretSource {
    /// A file holding the value (its trailing newline is ignored).
    File(PathBuf),
    /// An environment variable holding the value.
    Env(String),
}

/// A secret value: its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The value, for the one place that needs it (the Kafka client's configuration).
    pub fn reveal(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("<redacted>")
    }
}

/// librdkafka properties whose values are secrets, by name (any property ending in
/// `password` or `secret` is one too).
const SECRET_PROPERTIES: &[&str] = &[
    "sasl.password",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.config",
    "sasl.jaas.config",
    "ssl.key.pem",
    "ssl.keystore.password",
    "ssl.key.password",
    "ssl.truststore.password",
];

/// Whether a librdkafka property's value is a secret.
pub fn is_secret_property(name: &str) -> bool {
    SECRET_PROPERTIES.contains(&name) || name.ends_with("password") || name.ends_with("secret")
}

/// Shows `properties` with the values of secret ones replaced.
fn serialize_redacted<S: serde::Serializer>(
    properties: &BTreeMap<String, String>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = serializer.serialize_map(Some(properties.len()))?;
    for (name, value) in properties {
        if is_secret_property(name) {
            map.serialize_entry(name, "<redacted>")?;
        } else {
            map.serialize_entry(name, value)?;
        }
    }
    map.end()
}

impl KafkaConfig {
    /// Reads every `secret_properties` value from its file or variable (`variable` looks one
    /// up); an error names the key and what is missing, never a value.
    fn read_secrets(
        &self,
        variable: impl Fn(&str) -> Option<String>,
    ) -> Result<BTreeMap<String, Secret>, String> {
        let mut secrets = BTreeMap::new();
        for (name, source) in &self.secret_properties {
            let key = format!("kafka.secret_properties.\"{name}\"");
            if self.properties.contains_key(name) {
                return Err(format!("key `{key}`: `{name}` is also under kafka.properties; keep it in one place (here, for a secret)"));
            }
            let value = match source {
                SecretSource::File(path) => std::fs::read_to_string(path).map_err(|error| {
                    format!("key `{key}`: cannot read {}: {error}", path.display())
                })?,
                SecretSource::Env(variable_name) => variable(variable_name).ok_or_else(|| {
                    format!("key `{key}`: the environment variable {variable_name} is not set")
                })?,
            };
            let value = value.trim_end_matches(['\r', '\n']).to_owned();
            if value.is_empty() {
                return Err(format!("key `{key}`: the value is empty"));
            }
            secrets.insert(name.clone(), Secret(value));
        }
        Ok(secrets)
    }

    /// Every librdkafka property: the plain ones and the secrets.
    pub fn all_properties(&self) -> BTreeMap<String, String> {
        let mut properties = self.properties.clone();
        for (name, secret) in &self.secrets {
            properties.insert(name.clone(), secret.reveal().to_owned());
        }
        properties
    }

    /// `text` with every secret value replaced (librdkafka's messages may quote a value).
    pub fn redact(&self, text: &str) -> String {
        let mut redacted = text.to_owned();
        let inline = self
            .properties
            .iter()
            .filter(|(name, _)| is_secret_property(name))
            .map(|(_, value)| value.as_str());
        for value in self.secrets.values().map(Secret::reveal).chain(inline) {
            if !value.is_empty() {
                redacted = redacted.replace(value, "<redacted>");
            }
        }
        redacted
    }
}

/// `[store]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// The RocksDB directory.
    pub path: PathBuf,
    /// Block cache size in MiB.
    #[serde(default = "default_cache_mib")]
    pub cache_mib: usize,
    /// fsync every batch (survives machine crashes without re-reading Kafka).
    #[serde(default)]
    pub sync_writes: bool,
    /// Ingestion pauses while the store's disk has less free space than this, in MiB.
    #[serde(default = "default_min_free_mib")]
    pub min_free_mib: u64,
}

/// `[api]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Listen address of the HTTP API.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Bearer token for changes (and reads). Prefer `admin_token_file`.
    #[serde(default, skip_serializing)]
    pub admin_token: Option<String>,
    /// A file holding the admin token (its trailing newline is ignored).
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
    /// Bearer token every read must carry, when set. Prefer `read_token_file`.
    #[serde(default, skip_serializing)]
    pub read_token: Option<String>,
    /// A file holding the read token.
    #[serde(default)]
    pub read_token_file: Option<PathBuf>,
    /// Tokens of one person or tool each (`[[api.tokens]]`): the audit names who asked.
    #[serde(default)]
    pub tokens: Vec<NamedTokenConfig>,
    /// A connection must send a complete request header within this time (the first request
    /// and each next one on a kept-alive connection), or it is closed.
    #[serde(default = "default_header_read_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Connections open at once; past it a connection is answered 503 and closed.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections open at once from one IP address; past it, likewise.
    #[serde(default = "default_max_connections_per_address")]
    pub max_connections_per_address: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: default_listen(),
            admin_token: None,
            admin_token_file: None,
            read_token: None,
            read_token_file: None,
            tokens: Vec::new(),
            header_read_timeout: default_header_read_timeout(),
            max_connections: default_max_connections(),
            max_connections_per_address: default_max_connections_per_address(),
        }
    }
}

/// One `[[api.tokens]]` entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedTokenConfig {
    /// Who holds it: letters, digits, `.`, `_`, `-` (the audit's `token`).
    pub name: String,
    /// `admin` (changes and reads) or `read`.
    pub role: TokenRole,
    /// The token. Prefer `token_file`.
    #[serde(default, skip_serializing)]
    pub token: Option<String>,
    /// A file holding the token.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

/// What a named token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenRole {
    /// Changes and reads.
    Admin,
    /// Reads.
    Read,
}

impl ApiConfig {
    /// The listener's limits.
    pub fn connection_limits(&self) -> tandem_api::serve::ConnectionLimits {
        tandem_api::serve::ConnectionLimits {
            header_read_timeout: self.header_read_timeout,
            max_connections: self.max_connections,
            max_connections_per_address: self.max_connections_per_address,
        }
    }
}

impl ApiConfig {
    /// The configured tokens, read from their files where given.
    pub fn tokens(&self) -> Result<AccessTokens, String> {
        // `key` names the inline key; its file is `<key>_file`.
        let token = |key: &str, inline: &Option<String>, file: &Option<PathBuf>| {
            let text = match (inline, file) {
                (Some(_), Some(_)) => {
                    return Err(format!(
                        "keys `{key}` and `{key}_file` are both set: keep one"
                    ))
                }
                (Some(text), None) => text.clone(),
                (None, Some(path)) => std::fs::read_to_string(path).map_err(|error| {
                    format!("key `{key}_file`: cannot read {}: {error}", path.display())
                })?,
                (None, None) => return Ok(None),
            };
            match Token::new(&text) {
                Some(token) if text.trim().len() >= 16 => Ok(Some(token)),
                _ => Err(format!("key `{key}`: a token needs at least 16 characters (e.g. `openssl rand -hex 32`)")),
            }
        };
        let mut tokens = AccessTokens {
            admin: token("api.admin_token", &self.admin_token, &self.admin_token_file)?,
            read: token("api.read_token", &self.read_token, &self.read_token_file)?,
            named: Vec::new(),
        };
        for (index, entry) in self.tokens.iter().enumerate() {
            let key = format!("api.tokens[{index}]");
            let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
            if entry.name.is_empty() || entry.name.len() > 64 || !entry.name.chars().all(plain) {
                return Err(format!("key `{key}.name`: `{}` is not a plain name: use letters, digits, `.`, `_` or `-` (at most 64)", entry.name.escape_debug()));
            }
            if ["admin", "read", "none"].contains(&entry.name.as_str()) {
                return Err(format!("key `{key}.name`: `{}` is the name of a shared token: give the person's or tool's name", entry.name));
            }
            if tokens.named.iter().any(|named| named.name == entry.name) {
                return Err(format!("key `{key}.name`: `{}` is given twice", entry.name));
            }
            let Some(value) = token(&format!("{key}.token"), &entry.token, &entry.token_file)?
            else {
                return Err(format!("key `{key}`: give `token_file` (or `token`)"));
            };
            tokens.named.push(NamedToken {
                name: entry.name.clone(),
                admin: entry.role == TokenRole::Admin,
                token: value,
            });
        }
        // A named token equal to another token would make the audit name the wrong holder
        // (the shared admin and read tokens may be equal: both name a role, not a person).
        let shared: Vec<&str> = tokens
            .admin
            .iter()
            .chain(&tokens.read)
            .map(Token::reveal)
            .collect();
        for (index, named) in tokens.named.iter().enumerate() {
            let earlier = tokens.named[..index]
                .iter()
                .map(|other| other.token.reveal());
            if shared
                .iter()
                .copied()
                .chain(earlier)
                .any(|other| other == named.token.reveal())
            {
                return Err(format!("key `api.tokens[{index}]`: its token is configured twice (for `{}` and another); give each person or tool a token of its own", named.name));
            }
        }
        Ok(tokens)
    }

    /// The token files every user of the machine can read: each a warning naming the key,
    /// the file, its mode and the fix.
    pub fn loose_token_files(&self) -> Vec<String> {
        let named =
            self.tokens.iter().enumerate().map(|(index, entry)| {
                (format!("api.tokens[{index}].token_file"), &entry.token_file)
            });
        [
            ("api.admin_token_file".to_owned(), &self.admin_token_file),
            ("api.read_token_file".to_owned(), &self.read_token_file),
        ]
        .into_iter()
        .chain(named)
        .filter_map(|(key, file)| {
            let path = file.as_ref()?;
            let mode = loose_mode(path)?;
            Some(format!(
                "key `{key}`: every user of the machine can read {} (mode {mode:o}): run `chmod 600 {}`",
                path.display(),
                path.display()
            ))
        })
        .collect()
    }

    /// The token the CLI sends: the admin token when configured, else the read token.
    pub fn client_token(&self) -> Option<String> {
        let tokens = self.tokens().ok()?;
        let named_admin = tokens
            .named
            .iter()
            .find(|named| named.admin)
            .map(|named| named.token.clone());
        let named_any = tokens.named.first().map(|named| named.token.clone());
        tokens
            .admin
            .or(named_admin)
            .or(tokens.read)
            .or(named_any)
            .map(|token| token.reveal().to_owned())
    }
}

/// `[systems]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemsConfig {
    /// The legacy system, owner of live work.
    pub source: SystemConfig,
    /// The new system, fenced and repaired.
    pub target: SystemConfig,
}

/// `[systems.source]` and `[systems.target]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemConfig {
    /// A human name, shown in reports.
    #[serde(default)]
    pub label: Option<String>,
    /// The change topics of this system.
    pub topics: Vec<String>,
    /// The format of this system's topics: `tandem.v1` (default), `salesforce-cdc`,
    /// `hubspot-webhooks`, `debezium`, `zendesk` or `pipedrive-v2`.
    #[serde(default)]
    pub format: Option<String>,
    /// Per-topic formats, overriding `format`.
    #[serde(default)]
    pub formats: BTreeMap<String, String>,
    /// Vendor object names (Salesforce `Account`, a Debezium table) to tandem entity names;
    /// an object not listed is the entity of its lowercase name.
    #[serde(default)]
    pub objects: BTreeMap<String, String>,
    /// Vendor writer ids (`client:SyncApp`, `app:123`, `user:42`, ...) to actors (`sync`,
    /// `repair`, `user`, `system`, `integration:<name>`).
    #[serde(default)]
    pub actors: BTreeMap<String, String>,
    /// A column of the rows that names who wrote each change (`last_modified_by`), for the
    /// `debezium` format: its value is mapped through `actors`, or read as an actor
    /// (`user:42`, `integration:webform`) when it is not listed there.
    #[serde(default)]
    pub actor_field: Option<String>,
    /// A Debezium connector that takes this system's re-read and snapshot requests as signals.
    #[serde(default)]
    pub debezium: Option<DebeziumConfig>,
    /// Salesforce Pub/Sub event schemas (files saved from `GetSchema`, or directories of
    /// them), which decode the field bitmaps of `salesforce-cdc` change events.
    #[serde(default)]
    pub salesforce_schemas: Vec<PathBuf>,
}

/// `[systems.<system>.debezium]`: where the system's Debezium connector takes signals.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebeziumConfig {
    /// The connector's signal topic (its `signal.kafka.topic`).
    pub signal_topic: String,
    /// The connector's logical name (its `topic.prefix`), the key of every signal.
    pub connector: String,
    /// Per entity, the table its records come from, as Debezium names it (`public.contacts`).
    pub collections: BTreeMap<String, String>,
    /// The key column of those tables.
    #[serde(default = "default_key_column")]
    pub key_column: String,
}

fn default_key_column() -> String {
    "id".to_owned()
}

impl SystemConfig {
    /// How each of this system's topics is decoded.
    fn format_settings(&self, system: System) -> Result<BTreeMap<String, FormatSettings>, String> {
        let parse = |key: String, name: &str| {
            Format::from_name(name).ok_or_else(|| {
                format!(
                    "key `{key}`: `{name}` is not a format (known formats: {})",
                    Format::names()
                )
            })
        };
        let default = match &self.format {
            Some(name) => parse(format!("systems.{system}.format"), name)?,
            None => Format::Canonical,
        };
        for topic in self.formats.keys() {
            if !self.topics.contains(topic) {
                return Err(format!("key `systems.{system}.formats`: `{topic}` is not one of `systems.{system}.topics`"));
            }
        }
        let mut actors = BTreeMap::new();
        for (identifier, actor) in &self.actors {
            let actor = tandem_formats::parse_actor(actor)
                .map_err(|error| format!("key `systems.{system}.actors.{identifier}`: {error}"))?;
            actors.insert(identifier.clone(), actor);
        }
        for (object, entity) in &self.objects {
            if entity.trim().is_empty() {
                return Err(format!(
                    "key `systems.{system}.objects.{object}` is empty: name the tandem entity"
                ));
            }
        }
        let event_schemas = Arc::new(
            EventSchemas::load(&self.salesforce_schemas)
                .map_err(|error| format!("key `systems.{system}.salesforce_schemas`: {error}"))?,
        );
        let mut settings = BTreeMap::new();
        for topic in &self.topics {
            let format = match self.formats.get(topic) {
                Some(name) => parse(format!("systems.{system}.formats.{topic}"), name)?,
                None => default,
            };
            settings.insert(
                topic.clone(),
                FormatSettings {
                    format,
                    objects: self.objects.clone(),
                    actors: actors.clone(),
                    actor_field: self.actor_field.clone(),
                    event_schemas: Arc::clone(&event_schemas),
                },
            );
        }
        Ok(settings)
    }
}

/// `[ownership]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnershipConfig {
    /// The system that owns live work: `source` (default) or `target`.
    #[serde(default)]
    pub owner: Option<System>,
    /// Entities owned by the other system from the start, e.g. `{ ticket = "target" }`.
    #[serde(default)]
    pub entities: BTreeMap<String, System>,
    /// Per system, who besides sync and repair actors may write there while it is fenced:
    /// `kind` or `kind:id`, e.g. `{ target = ["integration:billing-sync"] }`.
    #[serde(default)]
    pub allowed: BTreeMap<System, Vec<String>>,
    /// A write into the fenced system whose event names no actor: `report` (listed among the
    /// writers as unknown; default) or `violation`.
    #[serde(default)]
    pub unattributed_writes: Unattributed,
    /// Where violations are published as JSON (none: they are kept and listed only).
    #[serde(default)]
    pub violations_topic: Option<String>,
    /// Where commands undoing non-owner updates are published for the sync layer (none: no
    /// commands).
    #[serde(default)]
    pub commands_topic: Option<String>,
}

impl OwnershipConfig {
    /// The rules, checked against the mapped entities.
    pub fn policy(&self, entities: &[EntityMapping]) -> Result<OwnershipPolicy, String> {
        for entity in self.entities.keys() {
            if !entities.iter().any(|mapped| mapped.name == *entity) {
                return Err(format!("key `ownership.entities.{entity}`: `{entity}` is not one of the configured entities"));
            }
        }
        let mut allowed = BTreeMap::new();
        for (system, rules) in &self.allowed {
            let mut parsed = Vec::with_capacity(rules.len());
            for rule in rules {
                parsed.push(ActorRule::parse(rule).map_err(|error| {
                    format!("key `ownership.allowed.{system}`: {error} (write `kind` or `kind:id`, e.g. \"integration:billing-sync\")")
                })?);
            }
            allowed.insert(*system, parsed);
        }
        Ok(OwnershipPolicy {
            owner: self.owner.unwrap_or(System::Source),
            entities: self.entities.clone(),
            allowed,
            unattributed: self.unattributed_writes,
            compensate: self.commands_topic.is_some(),
        })
    }
}

/// `[cutover]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CutoverConfig {
    /// The date the second cutover must happen by: `2026-12-15` (UTC midnight) or RFC 3339.
    #[serde(default)]
    pub commit_date: Option<String>,
    /// The gates `verify` and `flip` need green.
    #[serde(default)]
    pub gates: GatesConfig,
    /// Rules watched after a flip.
    #[serde(default)]
    pub triggers: Vec<TriggerRule>,
}

/// `[cutover.gates]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatesConfig {
    /// Minimum parity of every entity (0 to 1).
    #[serde(default)]
    pub min_parity: Option<f64>,
    /// Minimum parity per entity.
    #[serde(default)]
    pub min_parity_by_entity: BTreeMap<String, f64>,
    /// At most this many records of an entity per status, e.g. `{ unverified = 0 }`.
    #[serde(default)]
    pub max_status: BTreeMap<String, u64>,
    /// Target fields per entity that must have no mismatch.
    #[serde(default)]
    pub critical_fields: BTreeMap<String, Vec<String>>,
    /// No ownership violation in this many hours.
    #[serde(default)]
    pub no_violations_hours: Option<u64>,
    /// At most this many messages not yet applied.
    #[serde(default)]
    pub max_lag: Option<i64>,
    /// A complete snapshot of both systems within this many hours.
    #[serde(default)]
    pub snapshot_within_hours: Option<u64>,
    /// Every gate green without a break for this many hours.
    #[serde(default)]
    pub sustained_hours: Option<u64>,
}

impl CutoverConfig {
    /// The rules, checked against the mapped entities.
    pub fn rules(&self, entities: &[EntityMapping]) -> Result<CutoverRules, String> {
        let known = |key: &str, entity: &str| {
            if entities.iter().any(|mapped| mapped.name == entity) {
                Ok(())
            } else {
                Err(format!(
                    "key `{key}`: `{entity}` is not one of the configured entities"
                ))
            }
        };
        let gates = &self.gates;
        let share = |key: &str, value: f64| {
            if (0.0..=1.0).contains(&value) {
                Ok(())
            } else {
                Err(format!(
                    "key `{key}` is {value}: give a share between 0 and 1 (0.999 is 99.9%)"
                ))
            }
        };
        if let Some(min) = gates.min_parity {
            share("cutover.gates.min_parity", min)?;
        }
        for (entity, min) in &gates.min_parity_by_entity {
            known(
                &format!("cutover.gates.min_parity_by_entity.{entity}"),
                entity,
            )?;
            share(
                &format!("cutover.gates.min_parity_by_entity.{entity}"),
                *min,
            )?;
        }
        let mut max_status = BTreeMap::new();
        for (name, max) in &gates.max_status {
            let status = Status::parse(name).filter(|status| *status != Status::InSync).ok_or_else(|| {
                format!("key `cutover.gates.max_status.{name}`: not a status (use pending, mismatch, missing_in_target, missing_in_source, duplicate, unverified)")
            })?;
            max_status.insert(status, *max);
        }
        for (entity, fields) in &gates.critical_fields {
            let key = format!("cutover.gates.critical_fields.{entity}");
            known(&key, entity)?;
            let mapped = entities.iter().find(|mapped| mapped.name == *entity);
            for field in fields {
                if !mapped
                    .is_some_and(|mapped| mapped.fields.iter().any(|rule| rule.target == *field))
                {
                    return Err(format!(
                        "key `{key}`: `{field}` is not a compared target field of {entity}"
                    ));
                }
            }
        }
        let commit_date = match &self.commit_date {
            None => None,
            Some(text) => {
                let full = if text.len() == 10 {
                    format!("{text}T00:00:00Z")
                } else {
                    text.clone()
                };
                Some(Timestamp::parse_rfc3339(&full).map_err(|_| {
                    format!("key `cutover.commit_date`: `{text}` is not a date (2026-12-15) or an RFC 3339 time")
                })?)
            }
        };
        for (index, trigger) in self.triggers.iter().enumerate() {
            let key = format!("cutover.triggers[{index}]");
            if trigger.name.trim().is_empty() {
                return Err(format!("key `{key}.name` is empty"));
            }
            if let Some(entity) = &trigger.entity {
                known(&format!("{key}.entity"), entity)?;
            }
            if let Some(max) = trigger.max_divergent_share {
                share(&format!("{key}.max_divergent_share"), max)?;
            }
            if trigger.max_divergent_share.is_none() && !trigger.any_violation {
                return Err(format!(
                    "key `{key}`: give `max_divergent_share` or `any_violation = true`"
                ));
            }
        }
        Ok(CutoverRules {
            gates: GateRules {
                min_parity: gates.min_parity,
                min_parity_by_entity: gates.min_parity_by_entity.clone(),
                max_status,
                critical_fields: {
                    // Fields marked `critical = true` in the entity rules, and the ones this
                    // section lists.
                    let mut critical = gates.critical_fields.clone();
                    for entity in entities {
                        for field in entity.fields.iter().filter(|field| field.critical) {
                            let listed = critical.entry(entity.name.clone()).or_default();
                            if !listed.contains(&field.target) {
                                listed.push(field.target.clone());
                            }
                        }
                    }
                    critical
                },
                no_violations_hours: gates.no_violations_hours,
                max_lag: gates.max_lag,
                snapshot_within_hours: gates.snapshot_within_hours,
                sustained_hours: gates.sustained_hours,
                commit_date,
            },
            triggers: self.triggers.clone(),
        })
    }
}

/// `[reconcile]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileConfig {
    /// How long the sides may differ before it is divergence rather than lag.
    #[serde(default = "default_grace", with = "humantime_serde")]
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
    #[serde(default = "default_reread_resend_after", with = "humantime_serde")]
    pub reread_resend_after: Duration,
    /// Topic for snapshot requests (after sequence holes); unset: they are only reported.
    #[serde(default)]
    pub control_topic: Option<String>,
    /// How often a summary of the report is kept for its history (`/v1/report/history`).
    #[serde(default = "default_history_interval", with = "humantime_serde")]
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
#[serde(deny_unknown_fields)]
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
        let mut config: Config = serde_path_to_error::deserialize(layered)
            .map_err(|error| fail(describe_deserialize_error(&error)))?;
        config.validate().map_err(&fail)?;
        config.kafka.secrets = config
            .kafka
            .read_secrets(|name| match environment {
                Environment::Process => std::env::var(name).ok(),
                Environment::Map(map) => map.get(name).cloned(),
            })
            .map_err(&fail)?;
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
            group_instance_id: store_id
                .filter(|_| self.kafka.static_membership)
                .map(|id| format!("tandem-{id}")),
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

/// A Debezium signal setup must name a table for every entity and a plain key column.
fn validate_debezium(
    system: System,
    debezium: &DebeziumConfig,
    entities: &[EntityMapping],
) -> Result<(), String> {
    let key = format!("systems.{system}.debezium");
    for (name, value) in [
        ("signal_topic", &debezium.signal_topic),
        ("connector", &debezium.connector),
    ] {
        if value.trim().is_empty() {
            return Err(format!("key `{key}.{name}` is empty"));
        }
    }
    let plain = |text: &str| {
        text.chars()
            .next()
            .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
            && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    if !plain(&debezium.key_column) {
        return Err(format!(
            "key `{key}.key_column`: `{}` is not a plain column name (letters, digits, _)",
            debezium.key_column
        ));
    }
    for entity in entities {
        match debezium.collections.get(&entity.name) {
            None => return Err(format!("key `{key}.collections`: entity `{}` has no table; name it (e.g. `{} = \"public.{}s\"`), so that its re-reads and snapshots reach the connector", entity.name, entity.name, entity.name)),
            Some(collection) if !collection.split('.').all(plain) => {
                return Err(format!("key `{key}.collections.{}`: `{collection}` is not a table name as Debezium writes it (`schema.table`)", entity.name))
            }
            Some(_) => {}
        }
    }
    for name in debezium.collections.keys() {
        if !entities.iter().any(|entity| &entity.name == name) {
            return Err(format!(
                "key `{key}.collections.{name}`: `{name}` is not a configured entity"
            ));
        }
    }
    Ok(())
}

/// One bootstrap server: `host:port`, `host` (port 9092), `[v6]:port`, optionally behind a
/// `protocol://` as librdkafka allows.
fn check_broker(entry: &str) -> Result<(), &'static str> {
    let entry = entry.split_once("://").map_or(entry, |(_, rest)| rest);
    let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
        let (host, rest) = rest.split_once(']').ok_or("has an unclosed `[`")?;
        if !rest.is_empty() && !rest.starts_with(':') {
            return Err("has text after the `]` of its address");
        }
        (host, rest.strip_prefix(':'))
    } else {
        match entry.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (entry, None),
        }
    };
    if host.is_empty() {
        return Err("names no host");
    }
    let host_characters = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':');
    if !host.chars().all(host_characters) {
        return Err("is not a host name or address");
    }
    if let Some(port) = port {
        match port.parse::<u32>() {
            Ok(1..=65535) => {}
            _ => return Err("has a port that is not between 1 and 65535"),
        }
    }
    Ok(())
}

/// A TOML syntax error by line and column, without quoting the line: it may hold a secret.
fn describe_toml_error(text: &str, error: &toml::de::Error) -> String {
    let position = error.span().map(|span| {
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.chars().rev().take_while(|c| *c != '\n').count() + 1;
        (line, column)
    });
    let message = error.message().trim_end();
    match position {
        Some((line, column)) => format!(
            "TOML syntax error at line {line}, column {column}: {message} (the line is not shown, as it may hold a secret)"
        ),
        None => format!("TOML syntax error: {message}"),
    }
}

/// Whether a configuration key holds a secret, so that no error shows its value.
fn is_secret_key(path: &str) -> bool {
    let last = path.rsplit('.').next().unwrap_or(path);
    ["token", "password", "secret"]
        .iter()
        .any(|word| last.contains(word))
}

/// Names the key of a deserialization error: `kafka.brokers`, not just "missing field".
fn describe_deserialize_error(error: &serde_path_to_error::Error<config::ConfigError>) -> String {
    let path = error.path().to_string();
    let mut inner = error.inner().to_string();
    if is_secret_key(&path) && (inner.contains("invalid type") || inner.contains("invalid value")) {
        return format!("key `{path}` has a value of the wrong kind (not shown, as it may be a secret): give a string");
    }
    if let Some(number) = between(
        &inner,
        "invalid value: string \"",
        "\", expected a duration",
    )
    .filter(|number| !number.is_empty() && number.chars().all(|c| c.is_ascii_digit() || c == '.'))
    {
        return format!("key `{path}`: {number} has no unit: write a duration such as \"{number}s\" or \"{number}m\"");
    }
    // The config crate appends " for key `...`" in its own spelling; the key is named below.
    if let Some(index) = inner.find(" for key `") {
        inner.truncate(index);
    }
    if let Some(key) = between(&inner, "missing configuration field \"", "\"") {
        return format!("required key `{key}` is missing");
    }
    if let Some(field) = between(&inner, "missing field `", "`") {
        let parent = if path == "." {
            String::new()
        } else {
            format!("{path}.")
        };
        return format!("required key `{parent}{field}` is missing");
    }
    if inner.starts_with("unknown field `") {
        let known = inner
            .split_once("expected ")
            .map(|(_, rest)| format!(" (known keys here: {})", rest.trim_start_matches("one of ")))
            .unwrap_or_default();
        return format!("unknown key `{path}`{known}");
    }
    if inner.ends_with("expected a duration") {
        inner.push_str(" (write a duration such as \"5m\", \"90s\" or \"1h 30m\")");
    }
    if path == "." {
        inner
    } else {
        format!("key `{path}`: {inner}")
    }
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let after = &text[text.find(start)? + start.len()..];
    Some(&after[..after.find(end)?])
}
