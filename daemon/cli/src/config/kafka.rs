//! `[kafka]`: the brokers, the client properties and the secrets among them.

use super::*;

/// `[kafka]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
    /// Longest wait before a partial batch is committed while earlier batches are still being
    /// applied (an idle daemon commits what it read at once).
    #[serde(default = "default_batch_max_wait", with = "crate::config::duration")]
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

impl SecretSource {
    /// Reads the secret configured under `key`; an error names the key, never the value.
    pub(super) fn read(
        &self,
        key: &str,
        variable: impl Fn(&str) -> Option<String>,
    ) -> Result<Secret, String> {
        let value = match self {
            SecretSource::File(path) => std::fs::read_to_string(path)
                .map_err(|error| format!("key `{key}`: cannot read {}: {error}", path.display()))?,
            SecretSource::Env(variable_name) => variable(variable_name).ok_or_else(|| {
                format!("key `{key}`: the environment variable {variable_name} is not set")
            })?,
        };
        let value = value.trim_end_matches(['\r', '\n']).to_owned();
        if value.is_empty() {
            return Err(format!("key `{key}`: the value is empty"));
        }
        Ok(Secret(value))
    }
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
pub(super) const SECRET_PROPERTIES: &[&str] = &[
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
pub(super) fn serialize_redacted<S: serde::Serializer>(
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
    pub(super) fn read_secrets(
        &self,
        variable: impl Fn(&str) -> Option<String>,
    ) -> Result<BTreeMap<String, Secret>, String> {
        let mut secrets = BTreeMap::new();
        for (name, source) in &self.secret_properties {
            let key = format!("kafka.secret_properties.\"{name}\"");
            if self.properties.contains_key(name) {
                return Err(format!("key `{key}`: `{name}` is also under kafka.properties; keep it in one place (here, for a secret)"));
            }
            secrets.insert(name.clone(), source.read(&key, &variable)?);
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
/// One bootstrap server: `host:port`, `host` (port 9092), `[v6]:port`, optionally behind a
/// `protocol://` as librdkafka allows.
pub(super) fn check_broker(entry: &str) -> Result<(), &'static str> {
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
