//! The commands of the cutover and of partitions to reset.

use std::io::Write;
use std::process::ExitCode;

use tandem::render::{self, View};
use tandem_api::cutover::CutoverView;
use tandem_core::gates::Readiness;

use crate::{client, Target};

/// The cutover's status, or a step taken (or previewed).
pub(crate) fn cutover(
    mut out: &mut impl Write,
    step: String,
    reason: Option<String>,
    by: Option<String>,
    dry_run: bool,
    target: Target,
    format: View,
) -> anyhow::Result<ExitCode> {
    let api = client(&target)?;
    if step == "status" {
        let view: CutoverView = api.get("/v1/cutover", &[])?;
        let readiness: Readiness = api.get("/v1/cutover/readiness", &[])?;
        match format {
            View::Json => render::json(
                &mut out,
                &serde_json::json!({"cutover": view, "readiness": readiness}),
            )?,
            View::Table => render::cutover_status(&mut out, &view, &readiness)?,
        }
        return Ok(ExitCode::SUCCESS);
    }
    if tandem_core::cutover::Transition::parse(&step).is_none() {
        eprintln!("tandem: `{step}` is not a cutover step; use status, freeze, verify, flip, rollback or complete");
        return Ok(ExitCode::from(2));
    }
    let Some(reason) = reason.filter(|reason| !reason.trim().is_empty()) else {
        eprintln!("tandem: a cutover step needs --reason \"...\": it is kept in the history and published");
        return Ok(ExitCode::from(2));
    };
    let by = by
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "cli".to_owned());
    let (status, answer) = api.post(
        &format!("/v1/cutover/{step}"),
        &serde_json::json!({"reason": reason, "by": by, "dry_run": dry_run}),
    )?;
    if format == View::Json {
        render::json(&mut out, &answer)?;
    } else if matches!(status, 401 | 403) {
        // The daemon's own words say which token is missing and where it is set; only
        // a 401 is mended on this side (a 403: the daemon has no admin token at all).
        let mend = if status == 401 {
            "; give the admin token in TANDEM_TOKEN, or --config with api.admin_token"
        } else {
            ""
        };
        eprintln!(
            "tandem: {} (HTTP {status}): {}{mend}",
            answer["error"].as_str().unwrap_or("not authorized"),
            answer["hint"].as_str().unwrap_or("")
        );
    } else {
        render::cutover_answer(&mut out, status, &answer)?;
    }
    // A refused step fails, previewed or taken.
    let refused = answer["allowed"].as_bool() == Some(false);
    Ok(if status == 200 && !refused {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Resets a partition of a re-created topic.
pub(crate) fn partitions(
    out: &mut impl Write,
    action: String,
    topic: String,
    partition: i32,
    reason: String,
    target: Target,
) -> anyhow::Result<ExitCode> {
    if action != "reset" {
        eprintln!("tandem: unknown partitions action `{action}`: the only one is `reset`");
        return Ok(ExitCode::from(2));
    }
    let api = client(&target)?;
    let (status, answer) = api.post(
        "/v1/partitions/reset",
        &serde_json::json!({"topic": topic, "partition": partition, "reason": reason}),
    )?;
    if status != 200 {
        eprintln!(
            "tandem: reset refused (HTTP {status}): {}; {}",
            answer["error"].as_str().unwrap_or("no reason given"),
            answer["hint"].as_str().unwrap_or("")
        );
        return Ok(ExitCode::FAILURE);
    }
    writeln!(
        out,
        "{topic}/{partition} reset: read again from offset 0 (the old position was {}); its records are unverified until the requested snapshot completes",
        answer["old_next_offset"]
    )?;
    Ok(ExitCode::SUCCESS)
}
