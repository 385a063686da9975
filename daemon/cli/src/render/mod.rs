//! Human tables, CSV and JSON for the CLI's outputs, one module per concern: the report
//! and its history, divergences and records, ownership, the cutover. This module holds what
//! they share.

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
    // On a terminal, wide columns wrap to its width; piped, rows stay whole (for grep),
    // unless `COLUMNS` asks for a width, as it does of other tools.
    table.set_content_arrangement(comfy_table::ContentArrangement::Dynamic);
    if let Some(width) = std::env::var("COLUMNS")
        .ok()
        .and_then(|columns| columns.trim().parse::<u16>().ok())
        .filter(|width| *width >= 20)
    {
        table.set_width(width);
    }
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

mod cutover;
mod ownership;
mod records;
mod report;

pub use cutover::{cutover_answer, cutover_status};
pub use ownership::{ownership_table, violations, writers_table};
pub use records::{divergences, record_table, DivergenceCsv};
pub use report::{history, reevaluation_line, report_csv, report_table};

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
