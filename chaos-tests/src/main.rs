//! `make chaos`: the full scenario matrix; prints the results table and writes it to a file.

use std::time::Duration;

use tandem_chaos::{matrix, run, table, Size};

fn main() -> anyhow::Result<()> {
    let output = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "chaos-results.md".to_owned());
    let mut outcomes = Vec::new();
    for scenario in matrix(Size::Full) {
        println!("running {}: {}", scenario.name, scenario.description);
        let outcome = run(&scenario, Duration::from_secs(900));
        for problem in &outcome.problems {
            println!("  problem: {problem}");
        }
        outcomes.push(outcome);
    }
    let results = table(&outcomes);
    println!("\n{results}");
    std::fs::write(&output, &results)?;
    println!("written to {output}");
    let failed = outcomes
        .iter()
        .filter(|outcome| {
            !outcome.problems.is_empty() || !outcome.healed || outcome.false_in_sync > 0
        })
        .count();
    if failed > 0 {
        anyhow::bail!("{failed} scenarios failed");
    }
    Ok(())
}
