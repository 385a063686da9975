//! tandem's chaos suite: a matrix of fault scenarios, each run against the real broker process,
//! the real daemon binary and the simulator with its ground truth.
//!
//! Every scenario asserts three things: no record whose true states differ at the position
//! the daemon has applied is ever reported `in_sync` (sampled throughout ingestion); after
//! healing (re-reads answered, a snapshot run) the report equals the ground truth exactly;
//! and the counts (distinct events, dead letters) equal what was produced.

pub mod responder;
pub mod runner;
pub mod scenarios;

pub use runner::{run, Outcome};
pub use scenarios::{matrix, Disruption, Scenario, Size};

/// The results table, as Markdown.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut table = String::from(
        "| scenario | events | faults injected | detected | healed | false in_sync (samples) | right cause | exact since | time to converge |\n|---|---:|---:|---:|---|---:|---:|---:|---:|\n",
    );
    for outcome in outcomes {
        table.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} ({}) | {} | {} | {:.1} s |\n",
            outcome.name,
            outcome.messages,
            outcome.faults_injected,
            outcome.detected,
            if outcome.healed { "yes" } else { "NO" },
            outcome.false_in_sync,
            outcome.samples,
            outcome.right_cause_text(),
            outcome.right_since_text(),
            outcome.converge_seconds
        ));
    }
    table
}
