//! The cutover's status, checklist and the answer to a step.

use super::*;

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
