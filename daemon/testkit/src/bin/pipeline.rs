//! `make pipeline`: the real CDC pipeline to watch. Two PostgreSQL CRMs, Debezium in Kafka
//! Connect, Apache Kafka and `tandem run` (all started here, all stopped at the end), thousands
//! of records, and after each behaviour of the connectors (initial snapshot, restart, primary
//! key change, new column, sync layer stopped, events lost and healed, TRUNCATE) the check that
//! tandem's report equals SQL over both databases; then `tandem report`.

use std::process::Command;
use std::time::Instant;

use tandem_testkit::pipeline_run::{run, Sizes, ADMIN};

fn main() {
    let started = Instant::now();
    println!("tandem pipeline: Apache Kafka, PostgreSQL (legacy CRM, new CRM), Kafka Connect with Debezium, tandem; starting them...");
    let pipeline = run(Sizes::long(), |stage, report| {
        println!(
            "[{:>5.0} s] {stage}: {} records, {} divergent, parity {:.3}: every count and every divergence equals SQL over both databases ✔",
            started.elapsed().as_secs_f64(),
            report.totals.records,
            report.totals.divergent,
            report.totals.parity
        );
    });
    println!();
    let status = Command::new(tandem_testkit::tandem_binary())
        .args(["report", "--url", &pipeline.daemon.url])
        .env("TANDEM_TOKEN", ADMIN)
        .status()
        .expect("tandem report runs");
    if !status.success() {
        std::process::exit(1);
    }
    println!(
        "\nthe whole run took {:.0} s; everything it started stops now",
        started.elapsed().as_secs_f64()
    );
}
