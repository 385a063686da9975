//! A real CDC pipeline: two CRMs in PostgreSQL (the legacy one and the new one, with the
//! vendors' kind of column names; the new CRM's rows carry the legacy id), Debezium's
//! PostgreSQL connector (pgoutput) for each in Kafka Connect, Apache Kafka, and `tandem run`
//! with `format = "debezium"`. A sync job copies the legacy rows into the new CRM the way sync
//! layers do, with faults; users write into the legacy CRM, a repair job and a rogue
//! integration into the new one. The ground truth is SQL over both databases
//! ([`crate::pipeline_truth`]), never tandem's code.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use postgres::Client;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
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

/// The sync layer's faults.
#[derive(Clone, Copy, Debug)]
pub struct SyncFaults {
    /// Share of changed rows it does not copy in a round (a later change copies the row).
    pub skip_rate: f64,
    /// Share of contacts whose job title it fills from the last name (a column shift).
    pub shift_rate: f64,
    /// Share of deals whose amount it writes in cents.
    pub cents_rate: f64,
}

/// A sync job: each round reads every legacy row, copies the ones that changed since it last
/// copied them into the new CRM by legacy id (update, or insert), and deletes the new rows
/// whose legacy row is gone. It writes as `sync-job`.
pub struct SyncJob {
    faults: SyncFaults,
    rng: ChaCha8Rng,
    /// Per legacy table and id, the row as last copied.
    copied: BTreeMap<(&'static str, i64), Vec<Option<String>>>,
}

impl SyncJob {
    pub fn new(seed: u64, faults: SyncFaults) -> SyncJob {
        SyncJob {
            faults,
            rng: ChaCha8Rng::seed_from_u64(seed),
            copied: BTreeMap::new(),
        }
    }

    /// One round; returns how many rows it wrote.
    pub fn run_once(&mut self, crms: &mut Crms) -> usize {
        let mut written = 0;
        for (legacy_table, new_table) in Crm::Legacy.tables().into_iter().zip(Crm::New.tables()) {
            let rows = legacy_rows(&mut crms.legacy, legacy_table);
            let mut present = BTreeSet::new();
            for (id, values) in rows {
                present.insert(id);
                let key = (legacy_table, id);
                if self.copied.get(&key) == Some(&values) {
                    continue;
                }
                if self.rng.random_bool(self.faults.skip_rate) {
                    continue;
                }
                self.copy(&mut crms.new, legacy_table, new_table, id, &values);
                self.copied.insert(key, values);
                written += 1;
            }
            let gone: Vec<i64> = self
                .copied
                .keys()
                .filter(|(table, id)| *table == legacy_table && !present.contains(id))
                .map(|(_, id)| *id)
                .collect();
            for id in gone {
                if self.rng.random_bool(self.faults.skip_rate) {
                    continue;
                }
                crms.new
                    .execute(
                        &format!("DELETE FROM {new_table} WHERE legacy_id = $1"),
                        &[&id.to_string()],
                    )
                    .expect("the sync job deletes");
                self.copied.remove(&(legacy_table, id));
                written += 1;
            }
        }
        written
    }

    fn copy(
        &mut self,
        new: &mut Client,
        legacy_table: &str,
        new_table: &str,
        id: i64,
        values: &[Option<String>],
    ) {
        let legacy_id = id.to_string();
        // References are translated through the new CRM's own rows, as a sync layer does.
        let company = |new: &mut Client, account: &Option<String>| -> Option<i64> {
            let account = account.as_ref()?;
            new.query_opt(
                "SELECT hs_object_id FROM companies WHERE legacy_id = $1",
                &[account],
            )
            .expect("the sync job reads companies")
            .map(|row| row.get(0))
        };
        let (columns, params): (&[&str], Vec<Box<dyn postgres::types::ToSql + Sync>>) =
            match legacy_table {
                "accounts" => (
                    &["name", "domain", "numberofemployees"],
                    vec![
                        Box::new(values[0].clone()),
                        Box::new(values[1].clone()),
                        Box::new(
                            values[2]
                                .as_ref()
                                .map(|text| text.parse::<i32>().expect("an integer")),
                        ),
                    ],
                ),
                "contacts" => {
                    let shifted = self.rng.random_bool(self.faults.shift_rate);
                    let title = if shifted {
                        values[1].clone()
                    } else {
                        values[3].clone()
                    };
                    (
                        &[
                            "firstname",
                            "lastname",
                            "email",
                            "jobtitle",
                            "associatedcompanyid",
                        ],
                        vec![
                            Box::new(values[0].clone()),
                            Box::new(values[1].clone()),
                            Box::new(values[2].clone()),
                            Box::new(title),
                            Box::new(company(new, &values[4])),
                        ],
                    )
                }
                _ => {
                    let cents = self.rng.random_bool(self.faults.cents_rate);
                    let amount = values[1].as_ref().map(|text| {
                        let amount: f64 = text.parse().expect("a decimal");
                        let amount = if cents { amount * 100.0 } else { amount };
                        format!("{amount:.2}")
                    });
                    let stage = values[2].as_ref().map(|stage| {
                        STAGES
                            .iter()
                            .find(|(legacy, _)| legacy == stage)
                            .map_or(stage.clone(), |(_, new)| (*new).to_owned())
                    });
                    (
                        &["dealname", "amount", "dealstage", "associatedcompanyid"],
                        vec![
                            Box::new(values[0].clone()),
                            Box::new(amount),
                            Box::new(stage),
                            Box::new(company(new, &values[3])),
                        ],
                    )
                }
            };
        let amount_cast = |column: &str| {
            if column == "amount" {
                "::text::numeric"
            } else {
                ""
            }
        };
        let assignments: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(index, column)| format!("{column} = ${}{}", index + 1, amount_cast(column)))
            .collect();
        let mut arguments: Vec<&(dyn postgres::types::ToSql + Sync)> =
            params.iter().map(|param| param.as_ref()).collect();
        arguments.push(&legacy_id);
        let updated = new
            .execute(
                &format!(
                    "UPDATE {new_table} SET {}, hs_updated_by_user_id = 'sync-job' WHERE legacy_id = ${}",
                    assignments.join(", "),
                    columns.len() + 1
                ),
                &arguments,
            )
            .expect("the sync job updates");
        if updated == 0 {
            let placeholders: Vec<String> = columns
                .iter()
                .enumerate()
                .map(|(index, column)| format!("${}{}", index + 1, amount_cast(column)))
                .collect();
            new.execute(
                &format!(
                    "INSERT INTO {new_table} ({}, legacy_id, hs_updated_by_user_id) VALUES ({}, ${}, 'sync-job')",
                    columns.join(", "),
                    placeholders.join(", "),
                    columns.len() + 1
                ),
                &arguments,
            )
            .expect("the sync job inserts");
        }
    }
}

/// Every row of a legacy table as text values in the order the sync job copies them.
fn legacy_rows(legacy: &mut Client, table: &str) -> Vec<(i64, Vec<Option<String>>)> {
    let query = match table {
        "accounts" => "SELECT id, name, website, employees::text FROM accounts ORDER BY id",
        "contacts" => "SELECT id, first_name, last_name, email, title, account_id::text FROM contacts ORDER BY id",
        _ => "SELECT id, name, amount::text, stage, account_id::text FROM opportunities ORDER BY id",
    };
    legacy
        .query(query, &[])
        .expect("the sync job reads the legacy CRM")
        .into_iter()
        .map(|row| {
            let id: i64 = row.get(0);
            let values = (1..row.len()).map(|index| row.get(index)).collect();
            (id, values)
        })
        .collect()
}

/// What the simulated people and integrations do, from one seed.
pub struct Workload {
    rng: ChaCha8Rng,
    /// Every write of the rogue integration into the new CRM: (entity, join key, native id).
    pub rogue_writes: Vec<(String, String, String)>,
}

const FIRST_NAMES: [&str; 6] = ["Ada", "Alan", "Grace", "Linus", "Barbara", "Edsger"];
const LAST_NAMES: [&str; 6] = [
    "Lovelace", "Turing", "Hopper", "Torvalds", "Liskov", "Dijkstra",
];
const TITLES: [&str; 4] = ["Engineer", "Buyer", "CFO", "Head of Sales"];

impl Workload {
    pub fn new(seed: u64) -> Workload {
        Workload {
            rng: ChaCha8Rng::seed_from_u64(seed),
            rogue_writes: Vec::new(),
        }
    }

    fn user(&mut self) -> &'static str {
        ["user:ann", "user:bo", "user:cy"][self.rng.random_range(0..3)]
    }

    /// Users create companies, contacts and deals in the legacy CRM.
    pub fn create_legacy(
        &mut self,
        legacy: &mut Client,
        companies: usize,
        contacts: usize,
        deals: usize,
    ) {
        for _ in 0..companies {
            let number: u32 = self.rng.random_range(1000..100_000);
            let user = self.user();
            legacy
                .execute(
                    "INSERT INTO accounts (name, website, employees, last_modified_by) VALUES ($1, $2, $3, $4)",
                    &[&format!("Company {number}"), &format!("company{number}.example"), &self.rng.random_range(1..5000_i32), &user],
                )
                .expect("a company");
        }
        let accounts = ids(legacy, "accounts");
        for _ in 0..contacts {
            let first = FIRST_NAMES[self.rng.random_range(0..FIRST_NAMES.len())];
            let last = LAST_NAMES[self.rng.random_range(0..LAST_NAMES.len())];
            let account = accounts[self.rng.random_range(0..accounts.len())];
            let user = self.user();
            let number: u32 = self.rng.random_range(1..1_000_000);
            legacy
                .execute(
                    "INSERT INTO contacts (first_name, last_name, email, title, account_id, last_modified_by) VALUES ($1, $2, $3, $4, $5, $6)",
                    &[&first, &last, &format!("{}.{number}@example.com", first.to_lowercase()), &TITLES[self.rng.random_range(0..TITLES.len())], &account, &user],
                )
                .expect("a contact");
        }
        for _ in 0..deals {
            let account = accounts[self.rng.random_range(0..accounts.len())];
            let stage = STAGES[self.rng.random_range(0..STAGES.len())].0;
            let user = self.user();
            let cents: i64 = self.rng.random_range(1_000..10_000_000);
            legacy
                .execute(
                    "INSERT INTO opportunities (name, amount, stage, account_id, last_modified_by) VALUES ($1, ($2::bigint / 100.0)::numeric(12,2), $3, $4, $5)",
                    &[&format!("Deal {}", self.rng.random_range(1..100_000)), &cents, &stage, &account, &user],
                )
                .expect("a deal");
        }
    }

    /// Users change and delete rows of the legacy CRM (companies are never deleted: contacts
    /// and deals point at them).
    pub fn change_legacy(&mut self, legacy: &mut Client, changes: usize) {
        for _ in 0..changes {
            let user = self.user();
            match self.rng.random_range(0..10) {
                0..=3 => {
                    let Some(id) = self.pick(legacy, "contacts") else {
                        continue;
                    };
                    let title = TITLES[self.rng.random_range(0..TITLES.len())];
                    legacy
                        .execute(
                            "UPDATE contacts SET title = $1, last_modified_by = $2 WHERE id = $3",
                            &[&title, &user, &id],
                        )
                        .expect("a contact update");
                }
                4..=5 => {
                    let Some(id) = self.pick(legacy, "opportunities") else {
                        continue;
                    };
                    let stage = STAGES[self.rng.random_range(0..STAGES.len())].0;
                    let cents: i64 = self.rng.random_range(1_000..10_000_000);
                    legacy
                        .execute("UPDATE opportunities SET stage = $1, amount = ($2::bigint / 100.0)::numeric(12,2), last_modified_by = $3 WHERE id = $4", &[&stage, &cents, &user, &id])
                        .expect("a deal update");
                }
                6 => {
                    let Some(id) = self.pick(legacy, "accounts") else {
                        continue;
                    };
                    let employees = self.rng.random_range(1..5000_i32);
                    legacy
                        .execute("UPDATE accounts SET employees = $1, last_modified_by = $2 WHERE id = $3", &[&employees, &user, &id])
                        .expect("a company update");
                }
                7 => {
                    let Some(id) = self.pick(legacy, "contacts") else {
                        continue;
                    };
                    legacy
                        .execute("DELETE FROM contacts WHERE id = $1", &[&id])
                        .expect("a contact delete");
                }
                8 => {
                    let Some(id) = self.pick(legacy, "opportunities") else {
                        continue;
                    };
                    legacy
                        .execute("DELETE FROM opportunities WHERE id = $1", &[&id])
                        .expect("a deal delete");
                }
                _ => self.create_legacy(legacy, 0, 1, 1),
            }
        }
    }

    /// The rogue integration: a web form that still writes into the new CRM, creating contacts
    /// (no legacy id) and changing e-mails of synced ones.
    pub fn rogue(&mut self, new: &mut Client, writes: usize) {
        for _ in 0..writes {
            if self.rng.random_bool(0.5) {
                let number: u32 = self.rng.random_range(1..1_000_000);
                let row = new
                    .query_one(
                        "INSERT INTO contacts (firstname, lastname, email, hs_updated_by_user_id) VALUES ('Web', 'Form', $1, 'integration:webform') RETURNING hs_object_id",
                        &[&format!("lead.{number}@example.com")],
                    )
                    .expect("a web form lead");
                let id: i64 = row.get(0);
                self.rogue_writes.push((
                    "contact".to_owned(),
                    format!("unjoined:target:{id}"),
                    id.to_string(),
                ));
            } else {
                let Some(row) = new
                    .query_opt("SELECT hs_object_id, legacy_id FROM contacts WHERE legacy_id IS NOT NULL ORDER BY random() LIMIT 1", &[])
                    .expect("a synced contact")
                else {
                    continue;
                };
                let (id, legacy_id): (i64, String) = (row.get(0), row.get(1));
                let number: u32 = self.rng.random_range(1..1_000_000);
                new.execute(
                    "UPDATE contacts SET email = $1, hs_updated_by_user_id = 'integration:webform' WHERE hs_object_id = $2",
                    &[&format!("form.{number}@example.com"), &id],
                )
                .expect("a web form update");
                self.rogue_writes
                    .push(("contact".to_owned(), legacy_id, id.to_string()));
            }
        }
    }

    /// The repair job fixes some job titles the sync layer shifted, in the new CRM.
    pub fn repair(&mut self, crms: &mut Crms, fixes: usize) {
        // The new CRM is linked into the legacy database (postgres_fdw) for the comparison.
        let rows = crms
            .legacy
            .query(
                "SELECT n.hs_object_id, l.title FROM new_crm_link.contacts n JOIN contacts l ON l.id::text = n.legacy_id WHERE n.jobtitle IS DISTINCT FROM l.title ORDER BY n.hs_object_id LIMIT $1",
                &[&(fixes as i64)],
            )
            .expect("the repair job finds shifted titles");
        for row in rows {
            let (id, title): (i64, Option<String>) = (row.get(0), row.get(1));
            crms.new
                .execute(
                    "UPDATE contacts SET jobtitle = $1, hs_updated_by_user_id = 'repair-bot' WHERE hs_object_id = $2",
                    &[&title, &id],
                )
                .expect("a repair");
        }
    }

    fn pick(&mut self, client: &mut Client, table: &str) -> Option<i64> {
        let ids = ids(client, table);
        (!ids.is_empty()).then(|| ids[self.rng.random_range(0..ids.len())])
    }
}

fn ids(client: &mut Client, table: &str) -> Vec<i64> {
    client
        .query(&format!("SELECT id FROM {table} ORDER BY id"), &[])
        .expect("ids")
        .into_iter()
        .map(|row| row.get(0))
        .collect()
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
