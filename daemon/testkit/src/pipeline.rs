//! A real CDC pipeline: two CRMs in PostgreSQL (the legacy one and the new one, with the
//! vendors' kind of column names; the new CRM's rows carry the legacy id), Debezium's
//! PostgreSQL connector (pgoutput) for each in Kafka Connect, Apache Kafka, and `tandem run`
//! with `format = "debezium"`. A sync job copies the legacy rows into the new CRM the way sync
//! layers do, with faults; users write into the legacy CRM, a repair job and a rogue
//! integration into the new one ([`crate::pipeline_workload`]). The ground truth is SQL over
//! both databases ([`crate::pipeline_truth`]), never tandem's code.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use postgres::Client;
use serde_json::{json, Value};

use crate::broker::Broker;
use crate::kafka::Kafka;
use crate::postgres::Postgres;
use crate::{wait_for, Daemon};

/// The legacy CRM: Salesforce-like tables, the writer in `last_modified_by`.
pub const LEGACY_SCHEMA: &str = r#"
CREATE TABLE accounts (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    website text,
    employees integer,
    last_modified_by text NOT NULL,
    checkpoint integer NOT NULL DEFAULT 0
);
CREATE TABLE contacts (
    id bigserial PRIMARY KEY,
    first_name text,
    last_name text,
    email text,
    title text,
    account_id bigint,
    last_modified_by text NOT NULL,
    checkpoint integer NOT NULL DEFAULT 0
);
CREATE TABLE opportunities (
    id bigserial PRIMARY KEY,
    name text,
    amount numeric(12, 2),
    stage text,
    account_id bigint,
    last_modified_by text NOT NULL,
    checkpoint integer NOT NULL DEFAULT 0
);
-- Deletes name their writer only with the full old row.
ALTER TABLE accounts REPLICA IDENTITY FULL;
ALTER TABLE opportunities REPLICA IDENTITY FULL;
-- contacts keeps PostgreSQL's default identity: a delete's `before` holds only the key.
CREATE TABLE debezium_signal (id varchar(64) PRIMARY KEY, type varchar(32) NOT NULL, data varchar(2048));
-- A marker written after a stage: seen on its topic, every change before it is in Kafka.
CREATE TABLE tandem_marker (id serial PRIMARY KEY, checkpoint integer NOT NULL);
"#;

/// The new CRM: HubSpot-like tables; each row carries the legacy id, the writer in
/// `hs_updated_by_user_id`.
pub const NEW_SCHEMA: &str = r#"
CREATE TABLE companies (
    hs_object_id bigserial PRIMARY KEY,
    name text,
    domain text,
    numberofemployees integer,
    legacy_id text,
    hs_updated_by_user_id text NOT NULL,
    checkpoint integer NOT NULL DEFAULT 0
);
CREATE TABLE contacts (
    hs_object_id bigserial PRIMARY KEY,
    firstname text,
    lastname text,
    email text,
    jobtitle text,
    associatedcompanyid bigint,
    legacy_id text,
    hs_updated_by_user_id text NOT NULL,
    checkpoint integer NOT NULL DEFAULT 0
);
CREATE TABLE deals (
    hs_object_id bigserial PRIMARY KEY,
    dealname text,
    amount numeric(14, 2),
    dealstage text,
    associatedcompanyid bigint,
    legacy_id text,
    hs_updated_by_user_id text NOT NULL,
    checkpoint integer NOT NULL DEFAULT 0
);
CREATE TABLE debezium_signal (id varchar(64) PRIMARY KEY, type varchar(32) NOT NULL, data varchar(2048));
-- A marker written after a stage: seen on its topic, every change before it is in Kafka.
CREATE TABLE tandem_marker (id serial PRIMARY KEY, checkpoint integer NOT NULL);
"#;

/// The legacy CRM's deal stages and what the new CRM calls them.
pub const STAGES: [(&str, &str); 4] = [
    ("Prospecting", "appointmentscheduled"),
    ("Negotiation", "contractsent"),
    ("Closed Won", "closedwon"),
    ("Closed Lost", "closedlost"),
];

/// One CRM of the pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Crm {
    Legacy,
    New,
}

impl Crm {
    /// Its database.
    pub fn database(self) -> &'static str {
        match self {
            Crm::Legacy => "legacy_crm",
            Crm::New => "new_crm",
        }
    }

    /// Its connector's logical name (`topic.prefix`).
    pub fn connector(self) -> &'static str {
        match self {
            Crm::Legacy => "legacy",
            Crm::New => "newcrm",
        }
    }

    /// Its tables: company, contact, deal.
    pub fn tables(self) -> [&'static str; 3] {
        match self {
            Crm::Legacy => ["accounts", "contacts", "opportunities"],
            Crm::New => ["companies", "contacts", "deals"],
        }
    }

    /// The topic Debezium writes a table's changes to.
    pub fn topic(self, table: &str) -> String {
        format!("{}.public.{table}", self.connector())
    }

    /// Its connector's signal topic.
    pub fn signal_topic(self) -> String {
        format!("{}.signals", self.connector())
    }

    /// Its connector's notification topic.
    pub fn notification_topic(self) -> String {
        format!("{}.notifications", self.connector())
    }

    /// Every topic tandem reads for it.
    pub fn topics(self) -> Vec<String> {
        let mut topics: Vec<String> = self
            .tables()
            .iter()
            .map(|table| self.topic(table))
            .collect();
        topics.push(self.notification_topic());
        topics
    }
}

/// The Debezium connector's configuration for one CRM.
pub fn connector_config(crm: Crm, postgres: &Postgres, kafka: &Kafka) -> Value {
    let tables: Vec<String> = crm
        .tables()
        .iter()
        .map(|table| format!("public.{table}"))
        .chain([
            "public.debezium_signal".to_owned(),
            "public.tandem_marker".to_owned(),
        ])
        .collect();
    json!({
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        "database.hostname": "127.0.0.1",
        "database.port": postgres.port().to_string(),
        "database.user": "postgres",
        "database.password": "unused-trust-authentication",
        "database.dbname": crm.database(),
        "topic.prefix": crm.connector(),
        "plugin.name": "pgoutput",
        "slot.name": format!("tandem_{}", crm.connector()),
        "publication.name": format!("tandem_{}", crm.connector()),
        "publication.autocreate.mode": "filtered",
        "table.include.list": tables.join(","),
        "snapshot.mode": "initial",
        // Truncates reach tandem (Debezium skips them by default).
        "skipped.operations": "none",
        "decimal.handling.mode": "string",
        "signal.enabled.channels": "source,kafka",
        "signal.kafka.topic": crm.signal_topic(),
        "signal.kafka.bootstrap.servers": kafka.bootstrap(),
        "signal.data.collection": "public.debezium_signal",
        "notification.enabled.channels": "sink",
        "notification.sink.topic.name": crm.notification_topic(),
        // The slot's confirmed position follows the stream even when this database is idle.
        "heartbeat.interval.ms": "500",
        "exactly.once.support": "required",
        "topic.creation.default.replication.factor": "1",
        "topic.creation.default.partitions": "1",
    })
}

/// tandem's configuration of the pipeline.
pub fn tandem_config(directory: &Path, kafka: &Kafka, port: u16, admin_token: &str) -> PathBuf {
    let topics = |crm: Crm| {
        crm.topics()
            .iter()
            .map(|topic| format!("\"{topic}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let stage_map = STAGES
        .iter()
        .map(|(legacy, new)| format!("\"{legacy}\" = \"{new}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let text = format!(
        r#"[kafka]
brokers = "{brokers}"
group_id = "tandem-pipeline"
dead_letter_topic = "pipeline.dlq"
batch_max_wait = "20ms"

[store]
path = "{store}"

[api]
listen = "127.0.0.1:{port}"
admin_token = "{admin_token}"

[systems.source]
label = "Legacy CRM"
topics = [{source_topics}]
format = "debezium"
objects = {{ "public.accounts" = "company", "public.contacts" = "contact", "public.opportunities" = "deal" }}
actor_field = "last_modified_by"
actors = {{ "sync-job" = "sync", "repair-bot" = "repair" }}

[systems.source.debezium]
signal_topic = "{source_signals}"
connector = "legacy"
collections = {{ company = "public.accounts", contact = "public.contacts", deal = "public.opportunities" }}

[systems.target]
label = "New CRM"
topics = [{target_topics}]
format = "debezium"
objects = {{ "public.companies" = "company", "public.contacts" = "contact", "public.deals" = "deal" }}
actor_field = "hs_updated_by_user_id"
actors = {{ "sync-job" = "sync", "repair-bot" = "repair" }}

[systems.target.debezium]
signal_topic = "{target_signals}"
connector = "newcrm"
collections = {{ company = "public.companies", contact = "public.contacts", deal = "public.deals" }}
key_column = "hs_object_id"

[reconcile]
grace = "1s"
idle_clock = true
reread_max_ids_per_minute = 1000000
reread_resend_after = "20s"

[ownership]
owner = "source"

[[entities]]
name = "company"
join = {{ source = "id", target = "field:legacy_id" }}
fields = [
  {{ source = "name", target = "name" }},
  {{ source = "website", target = "domain" }},
  {{ source = "employees", target = "numberofemployees" }},
]

[[entities]]
name = "contact"
join = {{ source = "id", target = "field:legacy_id" }}
fields = [
  {{ source = "first_name", target = "firstname" }},
  {{ source = "last_name", target = "lastname" }},
  {{ source = "email", target = "email" }},
  {{ source = "title", target = "jobtitle" }},
  {{ source = "account_id", target = "associatedcompanyid", ref = "company" }},
]

[[entities]]
name = "deal"
join = {{ source = "id", target = "field:legacy_id" }}
fields = [
  {{ source = "name", target = "dealname" }},
  {{ source = "amount", target = "amount", compare = "decimal", scale = 2 }},
  {{ source = "stage", target = "dealstage", map = {{ {stage_map} }} }},
  {{ source = "account_id", target = "associatedcompanyid", ref = "company" }},
]
"#,
        brokers = kafka.bootstrap(),
        store = directory.join("store").display(),
        source_topics = topics(Crm::Legacy),
        target_topics = topics(Crm::New),
        source_signals = Crm::Legacy.signal_topic(),
        target_signals = Crm::New.signal_topic(),
    );
    let path = directory.join("tandem.toml");
    std::fs::write(&path, text).expect("the test directory is writable");
    path
}

/// The topics the pipeline needs before anything starts (Debezium creates its table topics).
pub fn create_topics(kafka: &Kafka) {
    for crm in [Crm::Legacy, Crm::New] {
        kafka.create_topics(&[(&crm.signal_topic(), 1), (&crm.notification_topic(), 1)]);
    }
    kafka.create_topics(&[("pipeline.dlq", 1)]);
}

/// Both CRMs' databases, created with their schemas.
pub struct Crms {
    pub legacy: Client,
    pub new: Client,
}

impl Crms {
    pub fn create(postgres: &Postgres) -> Crms {
        postgres.create_database(Crm::Legacy.database());
        postgres.create_database(Crm::New.database());
        let mut legacy = postgres.client(Crm::Legacy.database());
        let mut new = postgres.client(Crm::New.database());
        legacy
            .batch_execute(LEGACY_SCHEMA)
            .expect("the legacy schema");
        new.batch_execute(NEW_SCHEMA).expect("the new CRM's schema");
        crate::pipeline_truth::link(&mut legacy, postgres);
        Crms { legacy, new }
    }

    pub fn client(&mut self, crm: Crm) -> &mut Client {
        match crm {
            Crm::Legacy => &mut self.legacy,
            Crm::New => &mut self.new,
        }
    }
}

/// Waits until every change written so far to the CRM's database is committed to Kafka: a
/// marker row written now appears on its topic (Debezium reads the log in order and Connect
/// commits its transactions in order), and returns the change topics' end offsets then.
pub fn wait_emitted(
    kafka: &Kafka,
    crms: &mut Crms,
    crm: Crm,
    checkpoint: i32,
) -> BTreeMap<String, i64> {
    crms.client(crm)
        .execute(
            "INSERT INTO tandem_marker (checkpoint) VALUES ($1)",
            &[&checkpoint],
        )
        .expect("a marker");
    let topic = crm.topic("tandem_marker");
    wait_for(
        &format!("marker {checkpoint} on {topic}"),
        Duration::from_secs(120),
        || {
            crate::read_json_messages_now(kafka, &topic)
                .iter()
                .any(|message| message["after"]["checkpoint"] == json!(checkpoint))
                .then_some(())
        },
    );
    crm.topics()
        .into_iter()
        .filter(|topic| kafka.topic_exists(topic))
        .map(|topic| {
            let end = kafka.watermarks(&topic, 0).1;
            (format!("{topic}/0"), end)
        })
        .collect()
}

/// Waits until every change written so far to both CRMs is in tandem's store.
pub fn wait_until_applied(kafka: &Kafka, daemon: &Daemon, crms: &mut Crms, checkpoint: i32) {
    let mut ends = wait_emitted(kafka, crms, Crm::Legacy, checkpoint);
    ends.extend(wait_emitted(kafka, crms, Crm::New, checkpoint));
    wait_for(
        "tandem to apply every message",
        Duration::from_secs(120),
        || {
            let positions = applied_positions(daemon)?;
            ends.iter()
                .all(|(partition, end)| positions.get(partition).copied().unwrap_or(0) >= *end)
                .then_some(())
        },
    );
}

/// tandem's next offsets, from the view of any record (the view carries them).
fn applied_positions(daemon: &Daemon) -> Option<BTreeMap<String, i64>> {
    let page: Value = daemon.get("/v1/divergences?limit=1");
    let item = page["items"].get(0).cloned();
    let (entity, key) = match item {
        Some(item) => (
            item["entity"].as_str()?.to_owned(),
            item["join_key"].as_str()?.to_owned(),
        ),
        None => {
            // Nothing diverges: any record will do; companies are never deleted.
            ("company".to_owned(), "1".to_owned())
        }
    };
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build(),
    );
    let mut response = agent
        .get(&format!("{}/v1/records/{entity}/{key}", daemon.url))
        .call()
        .ok()?;
    let view: Value = response.body_mut().read_json().ok()?;
    serde_json::from_value(view.get("as_of")?.clone()).ok()
}
