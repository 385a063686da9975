//! Divergent records (a table or CSV written page by page) and one record in full.

use super::*;

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
