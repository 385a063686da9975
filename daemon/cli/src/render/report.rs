//! The report, its CSV, its history and the re-evaluation line.

use super::*;

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
