//! The commands about parity: the report and its history, divergences, one record, a
//! re-evaluation.

use std::io::Write;
use std::process::ExitCode;

use tandem::client::path_segment;
use tandem::render::{self, Format, View};
use tandem_api::report::{DivergenceEntry, DivergenceList, RecordView, Report};

use crate::{client, say_cut, Target};

/// Starts a re-evaluation and follows it to its end (unless told not to wait).
pub(crate) fn reevaluate(
    out: &mut impl Write,
    reason: String,
    no_wait: bool,
    target: Target,
) -> anyhow::Result<ExitCode> {
    let api = client(&target)?;
    let before: Report = api.get("/v1/report", &[])?;
    let (status, answer) = api.post("/v1/reevaluate", &serde_json::json!({"reason": reason}))?;
    if status != 202 {
        eprintln!(
            "tandem: re-evaluation refused (HTTP {status}): {}; {}",
            answer["error"].as_str().unwrap_or("no reason given"),
            answer["hint"].as_str().unwrap_or("")
        );
        return Ok(ExitCode::FAILURE);
    }
    writeln!(out, "re-evaluation started: {reason}")?;
    if no_wait {
        return Ok(ExitCode::SUCCESS);
    }
    let started_before = before
        .last_reevaluation
        .as_ref()
        .map(|done| done.started_at);
    loop {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let report: Report = api.get("/v1/report", &[])?;
        if let Some(running) = &report.reevaluation {
            writeln!(out, "{}", render::reevaluation_line(running))?;
            continue;
        }
        match report.last_reevaluation {
            Some(done) if Some(done.started_at) != started_before => {
                writeln!(out, "{}", render::reevaluation_line(&done))?;
                return Ok(ExitCode::SUCCESS);
            }
            _ => {}
        }
    }
}

/// The kept summaries: parity and each status over time.
pub(crate) fn report_history(
    mut out: &mut impl Write,
    entity: Option<String>,
    since: String,
    target: Target,
    format: Format,
) -> anyhow::Result<ExitCode> {
    if format == Format::Csv {
        eprintln!(
            "tandem: `report --history` has no CSV form: use --format table or --format json"
        );
        return Ok(ExitCode::from(2));
    }
    let history: tandem_api::history::ReportHistory = client(&target)?.get(
        "/v1/report/history",
        &[
            ("since", Some(since.as_str())),
            ("entity", entity.as_deref()),
        ],
    )?;
    match format {
        Format::Json => render::json(&mut out, &history)?,
        _ => render::history(&mut out, &history)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// The report as a table, CSV or JSON.
pub(crate) fn report(
    mut out: &mut impl Write,
    target: Target,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let report: Report = client(&target)?.get("/v1/report", &[])?;
    match format {
        Format::Table => render::report_table(&mut out, &report)?,
        Format::Json => render::json(&mut out, &report)?,
        Format::Csv => render::report_csv(&mut out, &report)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// One record: both sides, the field diff, the history.
pub(crate) fn record(
    mut out: &mut impl Write,
    entity: String,
    join_key: String,
    target: Target,
    format: View,
) -> anyhow::Result<ExitCode> {
    let path = format!(
        "/v1/records/{}/{}",
        path_segment(&entity),
        path_segment(&join_key)
    );
    let record: RecordView = client(&target)?.get(&path, &[])?;
    match format {
        View::Json => render::json(&mut out, &record)?,
        View::Table => render::record_table(&mut out, &record)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Divergent records, a page or every page.
#[allow(clippy::too_many_arguments)]
pub(crate) fn divergences(
    mut out: &mut impl Write,
    entity: Option<String>,
    status: Option<String>,
    field: Option<String>,
    limit: usize,
    all: bool,
    target: Target,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let api = client(&target)?;
    let limit = limit.to_string();
    // CSV and JSON lines are written page by page, so an export of every record
    // holds one page in memory; a table needs every row first to size its columns.
    let mut items: Vec<DivergenceEntry> = Vec::new();
    let mut csv = (format == Format::Csv).then(|| render::DivergenceCsv::new(field.clone()));
    let mut cursor: Option<String> = None;
    let mut rows = 0_u64;
    loop {
        let query = [
            ("limit", Some(limit.as_str())),
            ("entity", entity.as_deref()),
            ("status", status.as_deref()),
            ("field", field.as_deref()),
            ("cursor", cursor.as_deref()),
        ];
        if format == Format::Json && !all {
            // One page, exactly as the API answers it (with its cursor).
            let page: serde_json::Value = api.get("/v1/divergences", &query)?;
            render::json(&mut out, &page)?;
            return Ok(ExitCode::SUCCESS);
        }
        let page: DivergenceList = api.get("/v1/divergences", &query)?;
        let page_rows = page.items.len() as u64;
        rows += page_rows;
        match (&mut csv, format) {
            (Some(csv), _) => csv.write(&mut out, &page.items)?,
            (None, Format::Json) if all => {
                for item in &page.items {
                    serde_json::to_writer(&mut out, item)?;
                    writeln!(out)?;
                }
            }
            _ => items.extend(page.items),
        }
        if all && rows % 100_000 < page_rows && rows >= 100_000 {
            eprintln!("tandem: {rows} records exported so far");
        }
        match page.next_cursor {
            Some(next) if all => cursor = Some(next),
            Some(_) => {
                say_cut(rows, "records");
                break;
            }
            None => break,
        }
    }
    match (csv, format) {
        (Some(_), _) | (None, Format::Json) => {}
        (None, _) => render::divergences(&mut out, &items)?,
    }
    Ok(ExitCode::SUCCESS)
}
