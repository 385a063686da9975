//! Human tables, CSV and JSON for the CLI's outputs.

use std::io::Write;

use anyhow::Context;
use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{Cell, CellAlignment, Table};
use serde::Serialize;
use tandem_api::cutover::CutoverView;
use tandem_api::ownership::{OwnershipView, WritersView};
use tandem_api::report::{DivergenceEntry, RecordView, Report};
use tandem_core::gates::Readiness;
use tandem_core::ownership::Violation;
use tandem_core::{Status, Timestamp};

/// Output format of a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A readable table.
    Table,
    /// JSON, as the API returns it.
    Json,
    /// Comma-separated values with a header row.
    Csv,
}

/// Output format of a command that has no CSV form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum View {
    /// A readable table.
    Table,
    /// JSON, as the API returns it.
    Json,
}

fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    // On a terminal, wide columns wrap to its width; piped, rows stay whole (for grep).
    table.set_content_arrangement(comfy_table::ContentArrangement::Dynamic);
    table.set_header(header.iter().map(Cell::new));
    table
}

fn right(table: &mut Table, from_column: usize) {
    let columns = table.column_count();
    for index in from_column..columns {
        if let Some(column) = table.column_mut(index) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
}

/// A time to the second, for tables (JSON keeps full precision).
fn time(value: Option<Timestamp>) -> String {
    value
        .map(|time| {
            Timestamp::from_unix_nanos(
                time.unix_nanos() - time.unix_nanos().rem_euclid(1_000_000_000),
            )
            .to_rfc3339()
        })
        .unwrap_or_else(|| "-".to_owned())
}

/// Writes JSON, pretty-printed.
pub fn json<T: Serialize>(out: &mut impl Write, value: &T) -> anyhow::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value).context("writing JSON")?;
    writeln!(out)?;
    Ok(())
}

/// A row of a counts table: its label, records, parity and the records of every status.
fn counts_row(
    label: String,
    records: u64,
    parity: f64,
    counts: &std::collections::BTreeMap<Status, u64>,
) -> Vec<String> {
    let mut row = vec![
        label,
        records.to_string(),
        format!("{:.2}%", parity * 100.0),
    ];
    row.extend(
        Status::ALL
            .iter()
            .map(|status| counts.get(status).copied().unwrap_or(0).to_string()),
    );
    row
}

/// The report as a table, per entity, then ingest figures.
pub fn report_table(out: &mut impl Write, report: &Report) -> anyhow::Result<()> {
    let mut header = vec!["entity", "records", "parity"];
    header.extend(Status::ALL.iter().map(|status| status.as_str()));
    header.push("oldest divergence");
    let mut entities = table(&header);
    let mut add_row = |name: &str,
                       records: u64,
                       parity: f64,
                       counts: &std::collections::BTreeMap<Status, u64>,
                       oldest: String| {
        let mut row = counts_row(name.to_owned(), records, parity, counts);
        row.push(oldest);
        entities.add_row(row);
    };
    for (name, entity) in &report.entities {
        add_row(
            name,
            entity.records,
            entity.parity,
            &entity.by_status,
            time(entity.oldest_divergence_at),
        );
    }
    add_row(
        "TOTAL",
        report.totals.records,
        report.totals.parity,
        &report.totals.by_status,
        String::new(),
    );
    right(&mut entities, 1);
    writeln!(out, "{entities}")?;

    let mismatched: Vec<_> = report
        .entities
        .iter()
        .flat_map(|(entity, data)| {
            data.mismatched_fields
                .iter()
                .map(move |(field, count)| (entity, field, count))
        })
        .collect();
    if !mismatched.is_empty() {
        let mut fields = table(&["entity", "field", "mismatched records", "rule"]);
        for (entity, field, count) in mismatched {
            let data = &report.entities[entity];
            let mut marks = Vec::new();
            if data.critical_fields.contains(field) {
                marks.push("critical");
            }
            if data.lossy_fields.contains(field) {
                marks.push("lossy");
            }
            fields.add_row(vec![
                entity.clone(),
                field.clone(),
                count.to_string(),
                marks.join(", "),
            ]);
        }
        right(&mut fields, 2);
        writeln!(out, "{fields}")?;
    }
    let causes: Vec<_> = report
        .entities
        .iter()
        .flat_map(|(entity, data)| {
            data.by_cause
                .iter()
                .map(move |(cause, count)| (entity, cause, count))
        })
        .collect();
    if !causes.is_empty() {
        let mut table_of_causes = table(&["entity", "cause", "divergent records"]);
        for (entity, cause, count) in causes {
            table_of_causes.add_row(vec![
                entity.clone(),
                cause.as_str().to_owned(),
                count.to_string(),
            ]);
        }
        right(&mut table_of_causes, 2);
        writeln!(out, "{table_of_causes}")?;
    }

    for suspected in &report.suspected_mapping_errors {
        writeln!(
            out,
            "SUSPECTED MAPPING ERROR ({} of {} mismatches examined, {:.0}%): {}; e.g. {}",
            suspected.matching,
            suspected.examined,
            suspected.share * 100.0,
            suspected.description,
            suspected
                .examples
                .iter()
                .map(|example| format!(
                    "{} expected {} holds {}",
                    example.join_key, example.expected, example.target
                ))
                .collect::<Vec<_>>()
                .join("; ")
        )?;
    }

    let mut ingest = table(&[
        "system",
        "label",
        "events applied",
        "duplicates dropped",
        "stale versions",
        "dead-lettered",
        "lag",
        "last applied",
    ]);
    for (name, system) in [
        ("source", &report.ingest.source),
        ("target", &report.ingest.target),
    ] {
        ingest.add_row(vec![
            name.to_owned(),
            system.label.clone(),
            system.events_applied.to_string(),
            system.duplicates_dropped.to_string(),
            system.stale_versions.to_string(),
            system.dead_lettered.to_string(),
            system
                .lag
                .map(|lag| lag.to_string())
                .unwrap_or_else(|| "unknown".to_owned()),
            time(system.last_applied_at),
        ]);
    }
    right(&mut ingest, 2);
    writeln!(out, "{ingest}")?;
    let reasons: Vec<String> = report
        .ingest
        .dead_lettered_by_reason
        .iter()
        .map(|(reason, count)| format!("{reason} {count}"))
        .collect();
    writeln!(
        out,
        "clock {} · grace {}s · dead-lettered {}{} · {} partitions assigned, {}",
        time(report.clock),
        report.grace_seconds,
        report.ingest.dead_lettered,
        if reasons.is_empty() {
            String::new()
        } else {
            format!(" ({})", reasons.join(", "))
        },
        report.ingest.assigned_partitions,
        if report.ingest.caught_up {
            "caught up"
        } else {
            "catching up"
        },
    )?;
    feed_lines(out, report)?;
    if let Some(running) = &report.reevaluation {
        writeln!(
            out,
            "RE-EVALUATING ({}): {}; statuses mix old and new rules until it ends",
            running.reason,
            reevaluation_line(running)
        )?;
    }
    if let Some(since) = report.ingest.broker_unreachable_since {
        writeln!(out, "STALE: no Kafka broker reachable since {since}")?;
    }
    if let Some(paused) = &report.ingest.paused {
        writeln!(out, "PAUSED: {paused}")?;
    }
    if let Some(stopped) = &report.ingest.stopped {
        writeln!(out, "STOPPED: ingestion stopped: {stopped}")?;
    }
    for stopped in &report.ingest.stopped_partitions {
        writeln!(
            out,
            "STOPPED: {}/{}: {}",
            stopped.topic, stopped.partition, stopped.reason
        )?;
    }
    for (subject, problem) in &report.ingest.kafka_problems {
        writeln!(out, "KAFKA: {subject}: {problem}")?;
    }
    Ok(())
}

/// Lost events, snapshots and re-reads, when there is anything to say.
fn feed_lines(out: &mut impl Write, report: &Report) -> anyhow::Result<()> {
    for (name, feed) in [
        ("source", &report.feed.source),
        ("target", &report.feed.target),
    ] {
        for loss in &feed.lost_offsets {
            let state = match loss.healed_at {
                Some(at) => format!("healed by a snapshot at {at}"),
                None => "open: records of that partition are unverified until a snapshot completes"
                    .to_owned(),
            };
            let what = match loss.count {
                Some(count) => format!(
                    "offsets {}..={} ({count} messages at most) were gone from the broker before tandem read them",
                    loss.first_offset, loss.last_offset
                ),
                None => format!(
                    "the topic was re-created: events after offset {} of the old log were never read",
                    loss.first_offset
                ),
            };
            writeln!(
                out,
                "{name}: {}/{}: {what} ({}, found {}), {state}",
                loss.topic, loss.partition, loss.kind, loss.since
            )?;
        }
        for hole in &feed.holes {
            let state = match hole.open_since {
                Some(since) => format!("open since {since}: waiting for a snapshot"),
                None => "healed by a snapshot".to_owned(),
            };
            writeln!(
                out,
                "{name}: {} events lost on {}/{}, {state}",
                hole.missing, hole.topic, hole.partition
            )?;
        }
        if !feed.needs_snapshot.is_empty() {
            let entities: Vec<&str> = feed.needs_snapshot.keys().map(String::as_str).collect();
            writeln!(out, "{name}: snapshot needed for {}", entities.join(", "))?;
        }
        for (entity, status) in &feed.snapshots {
            if let Some(completed) = &status.last_completed {
                writeln!(
                    out,
                    "{name}: last complete snapshot of {entity} at {} ({} records, {} found missing)",
                    completed.completed_at, completed.records, completed.marked_missing
                )?;
            }
        }
    }
    if report.feed.rereads_outstanding > 0 {
        writeln!(
            out,
            "{} native records unverified (counted per system), waiting for a re-read (oldest since {})",
            report.feed.rereads_outstanding,
            time(report.feed.oldest_reread_since)
        )?;
    }
    Ok(())
}

/// The report as CSV: one row per entity and status.
pub fn report_csv(out: &mut impl Write, report: &Report) -> anyhow::Result<()> {
    let mut writer = csv::Writer::from_writer(out);
    safe_row(&mut writer, ["entity", "status", "records"])?;
    for (name, entity) in &report.entities {
        for (status, count) in &entity.by_status {
            safe_row(
                &mut writer,
                [name.as_str(), status.as_str(), &count.to_string()],
            )?;
        }
    }
    writer.flush()?;
    Ok(())
}

/// Writes one CSV row, every cell spreadsheet-safe: CRM values, ids and reasons are
/// untrusted, and a steward opens the export in a spreadsheet.
fn safe_row<W: Write, S: AsRef<str>>(
    writer: &mut csv::Writer<W>,
    cells: impl IntoIterator<Item = S>,
) -> csv::Result<()> {
    writer.write_record(
        cells
            .into_iter()
            .map(|cell| tandem_core::cell::spreadsheet_safe(cell.as_ref()).into_owned()),
    )
}

/// Divergent records as a table.
pub fn divergences(out: &mut impl Write, items: &[DivergenceEntry]) -> anyhow::Result<()> {
    let mut output = table(&[
        "entity",
        "join_key",
        "status",
        "cause",
        "fields",
        "since",
        "source_ids",
        "target_ids",
    ]);
    for item in items {
        output.add_row(vec![
            item.entity.clone(),
            item.join_key.clone(),
            item.status.to_string(),
            item.cause.map_or("", |cause| cause.as_str()).to_owned(),
            item.fields.join(" "),
            time(item.since),
            item.source_ids.join(" "),
            item.target_ids.join(" "),
        ]);
    }
    writeln!(out, "{output}")?;
    Ok(())
}

/// Divergent records as CSV, written page by page: one row per record, or with a field
/// chosen, that field's values on both sides.
pub struct DivergenceCsv {
    field: Option<String>,
    header_written: bool,
}

impl DivergenceCsv {
    /// A writer for the export of `field` (or of every differing field).
    pub fn new(field: Option<String>) -> Self {
        DivergenceCsv {
            field,
            header_written: false,
        }
    }

    /// Writes one page.
    pub fn write(&mut self, out: &mut impl Write, items: &[DivergenceEntry]) -> anyhow::Result<()> {
        let mut writer = csv::Writer::from_writer(out);
        if !self.header_written {
            self.header_written = true;
            let mut header = vec![
                "entity",
                "join_key",
                "status",
                "cause",
                "cause_detail",
                "fields",
                "since",
                "source_ids",
                "target_ids",
            ];
            header.extend(match &self.field {
                Some(_) => ["source_value", "target_value"],
                None => ["source_values", "target_values"],
            });
            safe_row(&mut writer, header)?;
        }
        let text = |value: &serde_json::Value| match value {
            serde_json::Value::String(text) => text.clone(),
            serde_json::Value::Null => String::new(),
            other => other.to_string(),
        };
        for item in items {
            let (source, target) = match &self.field {
                Some(field) => item
                    .values
                    .get(field)
                    .map(|values| (text(&values.source), text(&values.target)))
                    .unwrap_or_default(),
                None => {
                    let side = |pick: fn(&tandem_store::FieldValues) -> &serde_json::Value| {
                        serde_json::to_string(
                            &item
                                .values
                                .iter()
                                .map(|(name, values)| (name, pick(values)))
                                .collect::<std::collections::BTreeMap<_, _>>(),
                        )
                        .unwrap_or_default()
                    };
                    if item.values.is_empty() {
                        (String::new(), String::new())
                    } else {
                        (side(|values| &values.source), side(|values| &values.target))
                    }
                }
            };
            safe_row(
                &mut writer,
                [
                    item.entity.as_str(),
                    item.join_key.as_str(),
                    item.status.as_str(),
                    item.cause.map_or("", |cause| cause.as_str()),
                    &item
                        .cause_detail
                        .as_ref()
                        .map(|detail| serde_json::to_string(detail).unwrap_or_default())
                        .unwrap_or_default(),
                    &item.fields.join(" "),
                    &time(item.since),
                    &item.source_ids.join(" "),
                    &item.target_ids.join(" "),
                    &source,
                    &target,
                ],
            )?;
        }
        writer.flush()?;
        Ok(())
    }
}

/// One record: status, both sides field by field, then its history.
pub fn record_table(out: &mut impl Write, record: &RecordView) -> anyhow::Result<()> {
    writeln!(
        out,
        "{} {}: {}{}",
        record.entity,
        record.join_key,
        record
            .status
            .map(|status| status.to_string())
            .unwrap_or_else(|| "deleted on both sides".to_owned()),
        record
            .since
            .map(|since| format!(" since {since}"))
            .unwrap_or_default()
    )?;
    let ids = |sides: &[tandem_api::report::SideView]| {
        sides
            .iter()
            .map(|side| {
                let mut label = side.native_id.clone();
                if side.deleted {
                    label.push_str(" (deleted)");
                }
                if let Some(unverified) = &side.unverified {
                    let requested = side
                        .reread_requested_at
                        .map(|at| format!("requested {at}"))
                        .unwrap_or_else(|| "not requested yet".to_owned());
                    label.push_str(&format!(
                        " (unverified: {} since {}; re-read {requested})",
                        unverified.reason.as_str(),
                        unverified.since
                    ));
                }
                label
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    writeln!(
        out,
        "source: {}",
        if record.source.is_empty() {
            "-".to_owned()
        } else {
            ids(&record.source)
        }
    )?;
    writeln!(
        out,
        "target: {}",
        if record.target.is_empty() {
            "-".to_owned()
        } else {
            ids(&record.target)
        }
    )?;
    let mut diff = table(&["field", "source field", "source value", "target value", ""]);
    for field in &record.diff {
        diff.add_row(vec![
            field.field.clone(),
            field.source_field.clone(),
            field.source.to_string(),
            field.target.to_string(),
            if field.equal {
                "=".to_owned()
            } else {
                "DIFFERS".to_owned()
            },
        ]);
    }
    writeln!(out, "{diff}")?;
    let mut history = table(&[
        "occurred at",
        "system",
        "native id",
        "op",
        "event id",
        "position",
        "",
    ]);
    for entry in &record.history {
        history.add_row(vec![
            time(Some(entry.occurred_at)),
            entry.system.to_string(),
            entry.native_id.clone(),
            entry.event["op"].as_str().unwrap_or("?").to_owned(),
            entry.event["event_id"].as_str().unwrap_or("?").to_owned(),
            format!("{}/{}@{}", entry.topic, entry.partition, entry.offset),
            if entry.applied {
                String::new()
            } else {
                "stale, not applied".to_owned()
            },
        ]);
    }
    writeln!(out, "{history}")?;
    Ok(())
}

/// `tandem writers`: per system, every writer, the ones writing into the fenced system first.
pub fn writers_table(out: &mut impl Write, writers: &WritersView) -> anyhow::Result<()> {
    match writers.since {
        Some(since) => writeln!(out, "writes since {}", time(Some(since)))?,
        None => writeln!(out, "every write since the store began")?,
    }
    for (system, list) in &writers.systems {
        let mut table = table(&[
            "writer",
            "into fenced",
            "writes",
            "violations",
            "entities",
            "last seen",
        ]);
        for writer in list {
            let name = match &writer.id {
                Some(id) => format!("{}:{id}", writer.kind),
                None => writer.kind.clone(),
            };
            let entities = writer
                .entities
                .iter()
                .map(|(entity, writes)| format!("{entity} {writes}"))
                .collect::<Vec<_>>()
                .join(", ");
            table.add_row(vec![
                name,
                if writer.into_fenced { "yes" } else { "" }.to_owned(),
                writer.writes.to_string(),
                writer.violations.to_string(),
                entities,
                time(Some(writer.last_seen)),
            ]);
        }
        right(&mut table, 2);
        writeln!(out, "\n{system}\n{table}")?;
    }
    Ok(())
}

/// `tandem violations`: one line per violation.
pub fn violations(out: &mut impl Write, items: &[Violation], format: Format) -> anyhow::Result<()> {
    let header = [
        "at",
        "kind",
        "system",
        "entity",
        "join_key",
        "native_id",
        "actor",
        "op",
        "fields",
        "event_id",
    ];
    let rows = items.iter().map(|violation| {
        let actor = violation
            .actor
            .as_ref()
            .map(|actor| {
                let kind = tandem_core::ownership::actor_kind_name(actor.kind);
                match &actor.id {
                    Some(id) => format!("{kind}:{id}"),
                    None => kind.to_owned(),
                }
            })
            .unwrap_or_else(|| "unknown".to_owned());
        vec![
            violation.occurred_at.to_rfc3339(),
            violation.kind.to_string(),
            violation.system.to_string(),
            violation.entity.clone(),
            violation.join_key.clone(),
            violation.native_id.clone(),
            actor,
            violation.op.as_str().to_owned(),
            violation.fields.join(" "),
            violation.event_id.clone(),
        ]
    });
    match format {
        Format::Csv => {
            let mut writer = csv::Writer::from_writer(out);
            safe_row(&mut writer, header)?;
            for row in rows {
                safe_row(&mut writer, row)?;
            }
            writer.flush()?;
        }
        _ => {
            let mut table = table(&header);
            for row in rows {
                table.add_row(row);
            }
            writeln!(out, "{table}\n{} violations", items.len())?;
        }
    }
    Ok(())
}

/// `tandem ownership`: owner and epoch per entity, and who may write into the fenced system.
pub fn ownership_table(out: &mut impl Write, view: &OwnershipView) -> anyhow::Result<()> {
    let mut table = table(&["entity", "owner", "epoch"]);
    for entity in &view.entities {
        table.add_row(vec![
            entity.entity.clone(),
            entity.owner.to_string(),
            entity.epoch.to_string(),
        ]);
    }
    writeln!(out, "{table}")?;
    for (system, rules) in &view.allowed {
        writeln!(
            out,
            "also allowed into {system} while fenced: {}",
            rules.join(", ")
        )?;
    }
    writeln!(
        out,
        "sync and repair writers are always allowed; writes without an actor: {}",
        match view.unattributed_writes {
            tandem_core::ownership::Unattributed::Report => "listed as unknown writers",
            tandem_core::ownership::Unattributed::Violation => "violations",
        }
    )?;
    Ok(())
}

/// `tandem cutover status`: the phase, the steps allowed, the checklist of gates, the
/// triggers firing and the history.
pub fn cutover_status(
    out: &mut impl Write,
    view: &CutoverView,
    readiness: &Readiness,
) -> anyhow::Result<()> {
    writeln!(
        out,
        "cutover: {} (since {}); allowed now: {}",
        view.phase,
        time(view.since),
        view.allowed
            .iter()
            .map(|step| step.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    writeln!(out, "readiness: {}", readiness.verdict)?;
    let mut table = table(&["", "gate", "entity", "measured", "threshold", "since"]);
    for gate in &readiness.gates {
        table.add_row(vec![
            if gate.passed { "ok" } else { "FAIL" }.to_owned(),
            gate.gate.clone(),
            gate.entity.clone().unwrap_or_default(),
            gate.measured.clone(),
            gate.threshold.clone(),
            time(gate.since),
        ]);
    }
    writeln!(out, "{table}")?;
    if let Some(days) = readiness.commit_days_left {
        if days < 0 {
            writeln!(out, "the commit date passed {} days ago", -days)?;
        } else {
            writeln!(out, "{days} days left until the commit date")?;
        }
    }
    for trigger in &view.triggers_fired {
        writeln!(
            out,
            "ROLLBACK TRIGGER {}: {} -> {}",
            trigger.name, trigger.evidence, trigger.action
        )?;
    }
    for record in &view.history {
        writeln!(
            out,
            "{} {} {} -> {} by {}: {} (owner {}, epoch {})",
            time(Some(record.at)),
            record.transition,
            record.from,
            record.to,
            record.by,
            record.reason,
            record.owner,
            record.epoch
        )?;
    }
    Ok(())
}

/// The answer to a cutover step (taken, previewed or refused).
pub fn cutover_answer(
    out: &mut impl Write,
    status: u16,
    answer: &serde_json::Value,
) -> anyhow::Result<()> {
    if let Some(refusal) = answer["refusal"].as_str() {
        writeln!(out, "refused: {refusal}")?;
    } else if answer["allowed"].as_bool() == Some(true) {
        writeln!(
            out,
            "dry run: {} would take the cutover from {} to {}",
            answer["transition"].as_str().unwrap_or("?"),
            answer["from"].as_str().unwrap_or("?"),
            answer["to"].as_str().unwrap_or("?")
        )?;
    } else if status == 200 {
        writeln!(
            out,
            "{}: {} -> {} (owner {}, epoch {})",
            answer["transition"].as_str().unwrap_or("?"),
            answer["from"].as_str().unwrap_or("?"),
            answer["to"].as_str().unwrap_or("?"),
            answer["owner"].as_str().unwrap_or("?"),
            answer["epoch"]
        )?;
    } else {
        writeln!(
            out,
            "HTTP {status}: {} {}",
            answer["error"].as_str().unwrap_or(""),
            answer["hint"].as_str().unwrap_or("")
        )?;
    }
    if let Some(gates) = answer["readiness"]["gates"].as_array() {
        for gate in gates.iter().filter(|gate| gate["passed"] == false) {
            writeln!(
                out,
                "  FAIL {} {}: {} against {}",
                gate["gate"].as_str().unwrap_or(""),
                gate["entity"].as_str().unwrap_or(""),
                gate["measured"].as_str().unwrap_or(""),
                gate["threshold"].as_str().unwrap_or("")
            )?;
        }
    }
    Ok(())
}

/// One line of re-evaluation progress: done of total, changed, rate, ETA or duration.
pub fn reevaluation_line(progress: &tandem_ingest::Reevaluation) -> String {
    let share = if progress.total == 0 {
        100.0
    } else {
        progress.done as f64 * 100.0 / progress.total as f64
    };
    let tail = match (&progress.finished_at, progress.eta_seconds) {
        (Some(finished), _) => format!("finished at {finished}"),
        (None, Some(eta)) => format!("about {eta:.0} s left"),
        (None, None) => "starting".to_owned(),
    };
    format!(
        "re-evaluated {} of {} records ({share:.1}%), {} changed, {:.0} records/s, {tail}",
        progress.done, progress.total, progress.changed, progress.rate
    )
}

/// The trend of each entity: a sparkline of parity, then the kept summaries as rows (at most
/// the last 24), newest last.
pub fn history(
    out: &mut impl Write,
    history: &tandem_api::history::ReportHistory,
) -> anyhow::Result<()> {
    if history.items.is_empty() {
        writeln!(
            out,
            "no summaries kept in that period yet (one is kept every reconcile.history_interval, 5m by default)"
        )?;
        return Ok(());
    }
    let entities: std::collections::BTreeSet<&String> = history
        .items
        .iter()
        .flat_map(|item| item.entities.keys())
        .collect();
    for entity in entities {
        let series = history.series(entity);
        let bars = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
        let (low, high) = series
            .iter()
            .fold((1.0_f64, 0.0_f64), |(low, high), point| {
                (low.min(point.2), high.max(point.2))
            });
        let spark: String = series
            .iter()
            .map(|point| {
                let share = if high > low {
                    (point.2 - low) / (high - low)
                } else {
                    1.0
                };
                bars[((share * 7.0).round() as usize).min(7)]
            })
            .collect();
        writeln!(
            out,
            "{entity}: parity {spark}  {:.2}% .. {:.2}% over {} summaries",
            low * 100.0,
            high * 100.0,
            series.len()
        )?;
        let mut header = vec!["at", "records", "parity"];
        header.extend(Status::ALL.iter().map(|status| status.as_str()));
        let mut rows = table(&header);
        for (at, records, parity, by_status) in series.iter().rev().take(24).rev() {
            rows.add_row(counts_row(at.to_string(), *records, *parity, by_status));
        }
        right(&mut rows, 1);
        writeln!(out, "{rows}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_divergence_export_shows_crm_formulas_as_text() {
        let item = DivergenceEntry {
            entity: "contact".to_owned(),
            join_key: "=cmd|' /C calc'!A0".to_owned(),
            status: tandem_core::Status::Mismatch,
            fields: vec!["company".to_owned()],
            since: None,
            cause: None,
            source_ids: vec!["@L1".to_owned()],
            target_ids: vec!["-T1".to_owned()],
            values: [(
                "company".to_owned(),
                tandem_store::FieldValues {
                    source: serde_json::json!("+SUM(1,2)"),
                    target: serde_json::json!(-5),
                },
            )]
            .into_iter()
            .collect(),
            cause_detail: None,
        };
        let mut out = Vec::new();
        DivergenceCsv::new(Some("company".to_owned()))
            .write(&mut out, &[item])
            .unwrap();
        let mut reader = csv::Reader::from_reader(out.as_slice());
        let row = reader.records().next().unwrap().unwrap();
        let cells: Vec<&str> = row.iter().collect();
        assert_eq!(
            cells,
            [
                "contact",
                "'=cmd|' /C calc'!A0",
                "mismatch",
                "",
                "",
                "company",
                "-",
                "'@L1",
                "'-T1",
                "'+SUM(1,2)",
                "-5"
            ]
        );
    }
}
