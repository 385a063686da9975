//! The commands about ownership: owners, writers, violations, the reverse delta.

use std::io::Write;
use std::process::ExitCode;

use tandem::render::{self, Format, View};
use tandem_api::ownership::{OwnershipView, ViolationList, WritersView};

use crate::{client, say_cut, Target};

/// Every writer per system.
pub(crate) fn writers(
    mut out: &mut impl Write,
    since: Option<String>,
    target: Target,
    format: View,
) -> anyhow::Result<ExitCode> {
    let writers: WritersView =
        client(&target)?.get("/v1/writers", &[("since", since.as_deref())])?;
    match format {
        View::Json => render::json(&mut out, &writers)?,
        View::Table => render::writers_table(&mut out, &writers)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Violations of the ownership rule, a page or every page.
#[allow(clippy::too_many_arguments)]
pub(crate) fn violations(
    mut out: &mut impl Write,
    since: Option<String>,
    actor: Option<String>,
    entity: Option<String>,
    system: Option<String>,
    all: bool,
    target: Target,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let api = client(&target)?;
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = [
            ("limit", Some("1000")),
            ("since", since.as_deref()),
            ("actor", actor.as_deref()),
            ("entity", entity.as_deref()),
            ("system", system.as_deref()),
            ("cursor", cursor.as_deref()),
        ];
        if format == Format::Json && !all {
            // One page, exactly as the API answers it (with its cursor).
            let page: serde_json::Value = api.get("/v1/violations", &query)?;
            render::json(&mut out, &page)?;
            return Ok(ExitCode::SUCCESS);
        }
        let page: ViolationList = api.get("/v1/violations", &query)?;
        if format == Format::Json {
            for item in &page.items {
                serde_json::to_writer(&mut out, item)?;
                writeln!(out)?;
            }
        }
        items.extend(page.items);
        match page.next_cursor {
            Some(next) if all => cursor = Some(next),
            Some(_) => {
                say_cut(items.len(), "violations");
                break;
            }
            None => break,
        }
    }
    if format != Format::Json {
        render::violations(&mut out, &items, format)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The reverse delta, streamed as the API writes it.
pub(crate) fn delta(
    mut out: &mut impl Write,
    system: String,
    since: String,
    entity: Option<String>,
    target: Target,
    format: String,
) -> anyhow::Result<ExitCode> {
    client(&target)?.copy_to(
        "/v1/delta",
        &[
            ("system", Some(system.as_str())),
            ("since", Some(since.as_str())),
            ("format", Some(format.as_str())),
            ("entity", entity.as_deref()),
        ],
        &mut out,
    )?;
    Ok(ExitCode::SUCCESS)
}

/// The owner and epoch of each entity.
pub(crate) fn ownership(
    mut out: &mut impl Write,
    target: Target,
    format: View,
) -> anyhow::Result<ExitCode> {
    let view: OwnershipView = client(&target)?.get("/v1/ownership", &[])?;
    match format {
        View::Json => render::json(&mut out, &view)?,
        View::Table => render::ownership_table(&mut out, &view)?,
    }
    Ok(ExitCode::SUCCESS)
}
