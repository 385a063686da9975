//! Owners, writers and violations.

use super::*;

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
