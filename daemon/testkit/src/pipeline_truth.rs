//! The pipeline's ground truth, in SQL over both CRMs: the new CRM's tables are linked into
//! the legacy database with `postgres_fdw`, and one query per entity joins both sides on the
//! join key (a full outer join) and compares each mapped column by its configured rule. It
//! is written here from the configuration's rules, independently of tandem's code.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use postgres::Client;
use serde_json::Value;
use tandem_api::report::{DivergenceList, Report};
use tandem_core::Status;

use crate::kafka::Kafka;
use crate::pipeline::{wait_until_applied, Crms, STAGES};
use crate::pipeline_workload::Workload;
use crate::postgres::Postgres;
use crate::Daemon;

/// How long the pipeline may take to settle after a stage.
const DEADLINE: Duration = Duration::from_secs(180);
/// The pipeline's entities.
const ENTITIES: [&str; 3] = ["company", "contact", "deal"];

/// Links the new CRM's database into the legacy one as the schema `new_crm_link`.
pub fn link(legacy: &mut Client, postgres: &Postgres) {
    legacy
        .batch_execute(&format!(
            "CREATE EXTENSION postgres_fdw;
             CREATE SERVER new_crm FOREIGN DATA WRAPPER postgres_fdw
                 OPTIONS (host '127.0.0.1', port '{}', dbname 'new_crm');
             CREATE USER MAPPING FOR postgres SERVER new_crm OPTIONS (user 'postgres');
             CREATE SCHEMA new_crm_link;
             IMPORT FOREIGN SCHEMA public FROM SERVER new_crm INTO new_crm_link;",
            postgres.port()
        ))
        .expect(
            "the new CRM is linked into the legacy database (postgresql-contrib's postgres_fdw)",
        );
}

/// Every record's expected status: (entity, join key) → (status, differing target fields).
pub type Truth = BTreeMap<(String, String), (String, BTreeSet<String>)>;

/// The status of a joined row and its differing fields, as SQL.
fn record_sql(entity: &str, source: &str, target: &str, comparisons: &[(&str, String)]) -> String {
    let differences: Vec<String> = comparisons
        .iter()
        .map(|(field, distinct)| format!("CASE WHEN {distinct} THEN '{field}' END"))
        .collect();
    format!(
        "SELECT '{entity}', coalesce(s.key, t.key),
                CASE WHEN s.key IS NULL THEN 'missing_in_source'
                     WHEN t.key IS NULL THEN 'missing_in_target'
                     WHEN cardinality(d.fields) = 0 THEN 'in_sync'
                     ELSE 'mismatch' END,
                CASE WHEN s.key IS NULL OR t.key IS NULL THEN ARRAY[]::text[] ELSE d.fields END
         FROM (SELECT id::text AS key, * FROM {source}) s
         FULL OUTER JOIN (SELECT coalesce(legacy_id, 'unjoined:target:' || hs_object_id) AS key, *
                          FROM new_crm_link.{target}) t ON s.key = t.key
         CROSS JOIN LATERAL (SELECT array_remove(ARRAY[{}]::text[], NULL) AS fields) d",
        differences.join(", ")
    )
}

/// A `ref` field: the target must point at the company joined to the one the source points at.
fn reference(source_column: &str, target_column: &str) -> String {
    format!(
        "s.{source_column}::text IS DISTINCT FROM
             (SELECT c.legacy_id FROM new_crm_link.companies c WHERE c.hs_object_id = t.{target_column})"
    )
}

/// Computes the truth now.
pub fn truth(legacy: &mut Client) -> Truth {
    let stage_map: String = STAGES
        .iter()
        .map(|(legacy, new)| format!("WHEN '{legacy}' THEN '{new}' "))
        .collect();
    let queries = [
        record_sql(
            "company",
            "accounts",
            "companies",
            &[
                ("name", "s.name IS DISTINCT FROM t.name".to_owned()),
                ("domain", "s.website IS DISTINCT FROM t.domain".to_owned()),
                (
                    "numberofemployees",
                    "s.employees IS DISTINCT FROM t.numberofemployees".to_owned(),
                ),
            ],
        ),
        record_sql(
            "contact",
            "contacts",
            "contacts",
            &[
                (
                    "firstname",
                    "s.first_name IS DISTINCT FROM t.firstname".to_owned(),
                ),
                (
                    "lastname",
                    "s.last_name IS DISTINCT FROM t.lastname".to_owned(),
                ),
                ("email", "s.email IS DISTINCT FROM t.email".to_owned()),
                ("jobtitle", "s.title IS DISTINCT FROM t.jobtitle".to_owned()),
                (
                    "associatedcompanyid",
                    reference("account_id", "associatedcompanyid"),
                ),
            ],
        ),
        record_sql(
            "deal",
            "opportunities",
            "deals",
            &[
                ("dealname", "s.name IS DISTINCT FROM t.dealname".to_owned()),
                // compare = "decimal", scale = 2: equal as numbers at two decimals.
                (
                    "amount",
                    "round(s.amount, 2) IS DISTINCT FROM round(t.amount, 2)".to_owned(),
                ),
                // map: the legacy stage as the new CRM calls it.
                (
                    "dealstage",
                    format!("(CASE s.stage {stage_map}END) IS DISTINCT FROM t.dealstage"),
                ),
                (
                    "associatedcompanyid",
                    reference("account_id", "associatedcompanyid"),
                ),
            ],
        ),
    ];
    let mut truth = Truth::new();
    for query in queries {
        for row in legacy.query(&query, &[]).expect("the truth query") {
            let (entity, key, status, fields): (String, String, String, Vec<String>) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            truth.insert((entity, key), (status, fields.into_iter().collect()));
        }
    }
    truth
}

/// Records per entity and status.
pub fn counts(truth: &Truth) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut counts: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for ((entity, _), (status, _)) in truth {
        *counts
            .entry(entity.clone())
            .or_default()
            .entry(status.clone())
            .or_default() += 1;
    }
    counts
}

/// Every divergence tandem lists: (entity, join key) → (status, differing fields).
pub fn listed(daemon: &Daemon) -> Truth {
    let mut listed = Truth::new();
    for entity in ENTITIES {
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/v1/divergences?entity={entity}&limit=1000");
            if let Some(cursor) = &cursor {
                path.push_str(&format!("&cursor={cursor}"));
            }
            let page: DivergenceList = daemon.get(&path);
            for item in page.items {
                listed.insert(
                    (item.entity, item.join_key),
                    (
                        item.status.as_str().to_owned(),
                        item.fields.into_iter().collect(),
                    ),
                );
            }
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
    }
    listed
}

/// Waits until tandem has applied everything the databases hold, healed what it asked
/// Debezium to read again, and let the grace period pass; then asserts that the report's
/// counts, every divergence and the violations equal what SQL and the workload say, and
/// returns the report.
pub fn check_against_sql(
    stage: &str,
    kafka: &Kafka,
    daemon: &Daemon,
    crms: &mut Crms,
    workload: &Workload,
) -> Report {
    static CHECKPOINT: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);
    let checkpoint = CHECKPOINT.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
    wait_until_applied(kafka, daemon, crms, checkpoint);
    let started = std::time::Instant::now();
    let report = loop {
        let report = daemon.report();
        let open = |status: Status| -> u64 {
            report
                .entities
                .values()
                .map(|entity| entity.by_status[&status])
                .sum()
        };
        let settled = open(Status::Pending) == 0
            && open(Status::Unverified) == 0
            && report.feed.rereads_outstanding == 0
            && report.feed.source.needs_snapshot.is_empty()
            && report.feed.target.needs_snapshot.is_empty();
        if settled {
            break report;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "{stage}: tandem did not settle: pending {}, unverified {}, re-reads {}, feed {:#?}\n{}",
            open(Status::Pending),
            open(Status::Unverified),
            report.feed.rereads_outstanding,
            report.feed.source,
            daemon.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let expected = truth(&mut crms.legacy);
    let expected_counts = counts(&expected);
    for entity in ENTITIES {
        let reported = &report.entities[entity];
        let mut reported_counts: BTreeMap<String, u64> = reported
            .by_status
            .iter()
            .filter(|(_, count)| **count > 0)
            .map(|(status, count)| (status.as_str().to_owned(), *count))
            .collect();
        reported_counts.retain(|_, count| *count > 0);
        let expected_entity = expected_counts.get(entity).cloned().unwrap_or_default();
        assert_eq!(
            reported_counts, expected_entity,
            "{stage}: the counts of {entity} differ from SQL"
        );
    }
    let divergent: Truth = expected
        .into_iter()
        .filter(|(_, (status, _))| status != "in_sync")
        .collect();
    let listed = listed(daemon);
    let missing: Vec<_> = divergent
        .iter()
        .filter(|(key, value)| listed.get(*key) != Some(value))
        .collect();
    let extra: Vec<_> = listed
        .iter()
        .filter(|(key, _)| !divergent.contains_key(*key))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{stage}: the divergences differ from SQL\nexpected but not listed so: {missing:?}\nlisted but not expected: {extra:?}"
    );
    // The violations are exactly the rogue integration's writes into the fenced new CRM.
    let mut found: Vec<(String, String, String)> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = "/v1/violations?limit=1000".to_owned();
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let page: Value = daemon.get(&path);
        for violation in page["items"].as_array().expect("a list") {
            found.push((
                violation["entity"].as_str().unwrap_or_default().to_owned(),
                violation["join_key"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                violation["native_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            ));
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let mut expected_violations = workload.rogue_writes.clone();
    found.sort();
    expected_violations.sort();
    assert_eq!(found, expected_violations, "{stage}: the violations");
    eprintln!(
        "{stage}: equal to SQL: {} records, {} divergent, {} violations",
        report.totals.records,
        divergent.len(),
        found.len()
    );
    report
}
