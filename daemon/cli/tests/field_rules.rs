//! Field rules end to end, through a real broker process and the real binary: a column
//! shift, an e-mail in capitals and an amount sent as text are mismatches under exact rules;
//! the report states the shift once as a suspected mapping error; the repair team's export
//! has both values and the cause; then the mapping is fixed and the restarted daemon
//! evaluates the stored records again, without reading Kafka again, and they are in sync.
//! Every expected value below is worked out by hand from the events.

use tandem_testkit as common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use tandem_api::report::Report;

use common::{free_port, wait_for, Broker, Daemon, Kafka, Topics};

const DEADLINE: Duration = Duration::from_secs(120);
const ADMIN: &str = "admin-token-for-reevaluation-0123";

/// Minutes after 2026-11-02T09:00:00Z, as an event time.
fn at(minute: i64) -> String {
    tandem_core::Timestamp::from_unix_millis(1_793_610_000_000 + minute * 60_000).to_rfc3339()
}

fn write_config(directory: &Path, brokers: &str, topics: &Topics, port: u16, fields: &str) {
    std::fs::write(
        directory.join("tandem.toml"),
        format!(
            r#"[kafka]
brokers = "{brokers}"
dead_letter_topic = "{dlq}"
batch_max_wait = "20ms"

[store]
path = "{store}"

[api]
listen = "127.0.0.1:{port}"
admin_token = "{ADMIN}"
read_token = "{ADMIN}"

[systems.source]
topics = ["{source}"]

[systems.target]
topics = ["{target}"]

[reconcile]
grace = "1m"
idle_clock = false
history_interval = "1s"

[[entities]]
name = "contact"
join = {{ source = "external_id", target = "field:legacy_id" }}
fields = [
{fields}
]

[[entities]]
name = "account"
join = {{ source = "external_id", target = "field:legacy_id" }}
fields = [{{ source = "Name", target = "name" }}]
"#,
            dlq = topics.dead_letters,
            store = directory.join("store").display(),
            source = topics.source,
            target = topics.target,
        ),
    )
    .unwrap();
}

/// The source's contact `n` and the sync layer's copy of it one minute later.
fn pair(n: i64, source: Value, target: Value) -> (Value, Value) {
    let key = format!("L{n}");
    (
        json!({"event_id": format!("s{n}"), "entity": "contact", "id": key, "op": "create",
            "occurred_at": at(n * 2), "external_id": key, "fields": source,
            "actor": {"kind": "user"}}),
        json!({"event_id": format!("t{n}"), "entity": "contact", "id": format!("T{n}"), "op": "create",
            "occurred_at": at(n * 2 + 1), "fields": target, "actor": {"kind": "sync"}}),
    )
}

fn tandem(daemon: &Daemon, args: &[&str]) -> std::process::Output {
    Command::new(common::tandem_binary())
        .args(args)
        .args(["--url", &daemon.url])
        .env("TANDEM_TOKEN", ADMIN)
        .output()
        .expect("the CLI runs")
}

#[test]
fn field_rules_patterns_exports_and_reevaluation() {
    let topics = Topics::unique("field-rules");
    let broker = Kafka::start(&[
        (&topics.source, 1),
        (&topics.target, 1),
        (&topics.dead_letters, 1),
    ]);
    // L1-L3: the sync layer writes the title into `company`; L1's e-mail in capitals, L3's
    // amount as text. L4 and L10 (a one-person company: title and company agree) are copied
    // right; L10, twenty minutes later, moves the clock past grace.
    let pairs = [
        pair(
            1,
            json!({"Email": "a1@x.io", "Title": "CTO", "Company": "Acme", "Amount": 12.5}),
            json!({"email": "A1@X.IO", "company": "CTO", "amount": 12.5, "legacy_id": "L1"}),
        ),
        pair(
            2,
            json!({"Email": "a2@x.io", "Title": "CFO", "Company": "Bolt", "Amount": 20}),
            json!({"email": "a2@x.io", "company": "CFO", "amount": 20, "legacy_id": "L2"}),
        ),
        pair(
            3,
            json!({"Email": "a3@x.io", "Title": "CEO", "Company": "Core", "Amount": 7.25}),
            json!({"email": "a3@x.io", "company": "CEO", "amount": "7.25", "legacy_id": "L3"}),
        ),
        pair(
            4,
            json!({"Email": "a4@x.io", "Title": "Owner", "Company": "Owner", "Amount": 3}),
            json!({"email": "a4@x.io", "company": "Owner", "amount": 3, "legacy_id": "L4"}),
        ),
        pair(
            10,
            json!({"Email": "a5@x.io", "Title": "Founder", "Company": "Founder", "Amount": 1}),
            json!({"email": "a5@x.io", "company": "Founder", "amount": 1, "legacy_id": "L10"}),
        ),
    ];
    let (mut sources, mut targets): (Vec<Value>, Vec<Value>) = pairs.into_iter().unzip();
    // One account, in sync, whose rules never change.
    sources.push(
        json!({"event_id": "a1", "entity": "account", "id": "A1", "external_id": "A1",
        "op": "create", "occurred_at": at(0), "fields": {"Name": "Acme"}}),
    );
    targets.push(json!({"event_id": "a2", "entity": "account", "id": "TA1", "op": "create",
        "occurred_at": at(1), "fields": {"name": "Acme", "legacy_id": "A1"}, "actor": {"kind": "sync"}}));
    // And one created and deleted on both sides: stored, but no record any more (not counted).
    sources.push(
        json!({"event_id": "a3", "entity": "account", "id": "A2", "external_id": "A2",
        "op": "create", "occurred_at": at(0), "fields": {"Name": "Gone"}}),
    );
    sources.push(
        json!({"event_id": "a4", "entity": "account", "id": "A2", "external_id": "A2",
        "op": "delete", "occurred_at": at(2)}),
    );
    targets.push(json!({"event_id": "a5", "entity": "account", "id": "TA2", "op": "create",
        "occurred_at": at(1), "fields": {"name": "Gone", "legacy_id": "A2"}, "actor": {"kind": "sync"}}));
    targets.push(
        json!({"event_id": "a6", "entity": "account", "id": "TA2", "op": "delete",
        "occurred_at": at(3), "actor": {"kind": "sync"}}),
    );
    common::produce_json(broker.bootstrap(), &topics.source, &sources);
    common::produce_json(broker.bootstrap(), &topics.target, &targets);

    let directory = tempfile::tempdir().unwrap();
    let config = directory.path().join("tandem.toml");
    let log = directory.path().join("tandem.log");
    let port = free_port();
    write_config(
        directory.path(),
        broker.bootstrap(),
        &topics,
        port,
        r#"{ source = "Email", target = "email" },
{ source = "Company", target = "company" },
{ source = "Amount", target = "amount" },"#,
    );
    let mut daemon = Daemon::start(&config, port, &log);
    daemon.token = Some(ADMIN.to_owned());
    let report = daemon.wait_for_applied(16, DEADLINE);
    assert_eq!(report.entities["account"].records, 1);
    let contact = &report.entities["contact"];
    assert_eq!(contact.records, 5);
    assert_eq!(
        contact.mismatched_fields,
        [("amount", 1), ("company", 3), ("email", 1)]
            .into_iter()
            .map(|(field, count)| (field.to_owned(), count))
            .collect()
    );
    // The column shift is stated once: all three company mismatches hold the title.
    let report: Report = wait_for("the suspected mapping error", DEADLINE, || {
        let report = daemon.report();
        (!report.suspected_mapping_errors.is_empty()).then_some(report)
    });
    let suspected: Vec<(&str, &str, &str, u64, u64)> = report
        .suspected_mapping_errors
        .iter()
        .map(|found| {
            (
                found.entity.as_str(),
                found.field.as_str(),
                found.pattern.as_str(),
                found.matching,
                found.examined,
            )
        })
        .collect();
    assert_eq!(
        suspected,
        [("contact", "company", "column_shift:Title", 3, 3)]
    );
    // The sync layer wrote each copy after the source's change, so each wrong value is its
    // own; all three companies follow the suspected column shift: three mapping errors.
    assert_eq!(
        report.entities["contact"]
            .by_cause
            .iter()
            .map(|(cause, count)| (cause.as_str(), *count))
            .collect::<Vec<_>>(),
        [("mapping_error", 3)]
    );

    // The history keeps summaries; the newest one counts what was applied.
    let by_status = |pairs: &[(tandem_core::Status, u64)]| {
        pairs
            .iter()
            .copied()
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let summary = wait_for("a summary of the applied events", DEADLINE, || {
        let history: tandem_api::history::ReportHistory =
            daemon.get("/v1/report/history?entity=contact&since=1h");
        history
            .items
            .last()
            .and_then(|item| item.entities.get("contact").cloned())
            .filter(|counts| counts.records == 5)
    });
    assert_eq!(
        summary.by_status,
        by_status(&[
            (tandem_core::Status::InSync, 2),
            (tandem_core::Status::Mismatch, 3)
        ])
    );
    assert!((summary.parity - 0.4).abs() < 1e-9);
    let output = tandem(&daemon, &["report", "--history", "--entity", "contact"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("contact: parity"), "{stdout}");

    // A spot-check of four: both in-sync records, and two mismatches with the company
    // marked unequal.
    let sample: tandem_api::spotcheck::Spotcheck = daemon.get("/v1/spotcheck?entity=contact&n=4");
    assert_eq!(sample.records.len(), 4);
    let mut in_sync: Vec<&str> = sample
        .records
        .iter()
        .filter(|record| record.status == tandem_core::Status::InSync)
        .map(|record| record.join_key.as_str())
        .collect();
    in_sync.sort_unstable();
    assert_eq!(in_sync, ["L10", "L4"]);
    for record in &sample.records {
        let company = record
            .fields
            .iter()
            .find(|field| field.field == "company")
            .unwrap();
        assert_eq!(
            company.equal,
            record.status == tandem_core::Status::InSync,
            "{}",
            record.join_key
        );
        // The same cause as the listings: the column shift is a suspected mapping error.
        assert_eq!(
            record.cause.map(|cause| cause.as_str()),
            (record.status != tandem_core::Status::InSync).then_some("mapping_error"),
            "{}",
            record.join_key
        );
    }

    // A listing of the first page says that there is more (three company mismatches).
    for (limit, cut) in [("2", true), ("3", false)] {
        let listed = tandem(
            &daemon,
            &[
                "divergences",
                "--entity",
                "contact",
                "--field",
                "company",
                "--limit",
                limit,
            ],
        );
        assert!(listed.status.success());
        let said = String::from_utf8_lossy(&listed.stderr);
        assert_eq!(
            said.contains(&format!(
                "the first {limit} records are shown and there are more"
            )),
            cut,
            "--limit {limit}: {said}"
        );
    }

    // The repair team's export of the company mismatches: both values and the cause.
    let output = tandem(
        &daemon,
        &[
            "divergences",
            "--entity",
            "contact",
            "--status",
            "mismatch",
            "--field",
            "company",
            "--all",
            "--format",
            "csv",
            "--limit",
            "2",
        ],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut reader = csv::Reader::from_reader(output.stdout.as_slice());
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    let column = |name: &str| header.iter().position(|field| field == name).unwrap();
    let rows: Vec<(String, String, String, String, String, Value)> = reader
        .records()
        .map(|row| {
            let row = row.unwrap();
            (
                row[column("join_key")].to_owned(),
                row[column("target_ids")].to_owned(),
                row[column("source_value")].to_owned(),
                row[column("target_value")].to_owned(),
                row[column("cause")].to_owned(),
                serde_json::from_str(&row[column("cause_detail")]).unwrap(),
            )
        })
        .collect();
    // Each one's detail: the company the sync layer should have copied, set by the user at
    // minute 2n, written wrong by the sync layer at minute 2n + 1, in the suspected pattern.
    let row = |n: i64, source: &str, held: &str| {
        (
            format!("L{n}"),
            format!("T{n}"),
            source.to_owned(),
            held.to_owned(),
            "mapping_error".to_owned(),
            json!({"field": "company", "pattern": "column_shift:Title", "expected": source,
                "source_set_at": at(n * 2), "target_written_at": at(n * 2 + 1),
                "target_writer": "sync"}),
        )
    };
    assert_eq!(
        rows,
        [
            row(1, "Acme", "CTO"),
            row(2, "Bolt", "CFO"),
            row(3, "Core", "CEO"),
        ]
    );

    // The mapping is fixed: the company comes from Title, e-mails compare as addresses,
    // amounts as decimals. The restart evaluates the five stored contacts again, and not the
    // account, whose rules did not change.
    assert!(daemon.terminate().success());
    write_config(
        directory.path(),
        broker.bootstrap(),
        &topics,
        port,
        r#"{ source = "Email", target = "email", compare = "email" },
{ source = "Title", target = "company" },
{ source = "Amount", target = "amount", compare = "decimal", scale = 2, critical = true },"#,
    );
    let mut daemon = Daemon::start(&config, port, &log);
    daemon.token = Some(ADMIN.to_owned());
    let report: Report = wait_for("the re-evaluation at start", DEADLINE, || {
        let report = daemon.report();
        report.last_reevaluation.clone().map(|_| report)
    });
    let done = report.last_reevaluation.as_ref().unwrap();
    assert_eq!((done.done, done.total, done.changed), (5, 5, 3));
    assert!(
        done.reason.contains("rules of contact changed"),
        "{}",
        done.reason
    );
    let contact = &report.entities["contact"];
    assert_eq!(contact.by_status[&tandem_core::Status::InSync], 5);
    assert_eq!(contact.critical_fields, ["amount"]);
    // Nothing was read from Kafka again.
    assert_eq!(
        (
            report.ingest.source.events_applied,
            report.ingest.target.events_applied
        ),
        (8, 8)
    );
    // The suspected mapping errors are recomputed at most every 5 s while data changes.
    wait_for("no suspected mapping error any more", DEADLINE, || {
        daemon
            .report()
            .suspected_mapping_errors
            .is_empty()
            .then_some(())
    });
    let sample: tandem_api::spotcheck::Spotcheck = daemon.get("/v1/spotcheck?entity=contact&n=5");
    assert_eq!(sample.critical_fields_covered, ["amount"]);
    assert!(sample
        .records
        .iter()
        .all(|record| record.fields.iter().all(|field| field.equal)));

    // On request, through the CLI: nothing changes any more. Six records: the deleted
    // account's row is evaluated but is no record.
    let output = tandem(
        &daemon,
        &["reevaluate", "--reason", "checking the new rules"],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("re-evaluated 6 of 6 records (100.0%), 0 changed"),
        "{stdout}"
    );
}
