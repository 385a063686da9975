//! `[systems]`: each system's topics, formats, object and actor mappings, its Debezium
//! connector.

use super::*;

/// `[systems]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SystemsConfig {
    /// The legacy system, owner of live work.
    pub source: SystemConfig,
    /// The new system, fenced and repaired.
    pub target: SystemConfig,
}

/// `[systems.source]` and `[systems.target]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
    /// The schemas `salesforce_schemas` names, read once when the configuration is loaded.
    #[serde(skip)]
    pub event_schemas: Arc<EventSchemas>,
}

/// `[systems.<system>.debezium]`: where the system's Debezium connector takes signals.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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

pub(super) fn default_key_column() -> String {
    "id".to_owned()
}

impl SystemConfig {
    /// Reads the event schemas `salesforce_schemas` names, once, for every topic to share.
    pub(super) fn load_event_schemas(&mut self, system: System) -> Result<(), String> {
        self.event_schemas = Arc::new(
            EventSchemas::load(&self.salesforce_schemas)
                .map_err(|error| format!("key `systems.{system}.salesforce_schemas`: {error}"))?,
        );
        Ok(())
    }

    /// How each of this system's topics is decoded.
    pub(super) fn format_settings(
        &self,
        system: System,
    ) -> Result<BTreeMap<String, FormatSettings>, String> {
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
                    event_schemas: Arc::clone(&self.event_schemas),
                },
            );
        }
        Ok(settings)
    }
}
/// A Debezium signal setup must name a table for every entity and a plain key column.
pub(super) fn validate_debezium(
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
