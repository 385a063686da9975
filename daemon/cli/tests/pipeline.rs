//! The real CDC pipeline end to end: two PostgreSQL CRMs, Debezium's connector in Kafka
//! Connect (exactly-once source support on), Apache Kafka, and `tandem run` with the
//! `debezium` format. After each behaviour a connector may show (its initial snapshot while
//! users write, a restart, a primary key change, a column added, the sync layer stopped, events
//! lost and healed through Debezium signals, a TRUNCATE), tandem's report, every divergence
//! and the ownership violations must equal what SQL over both databases says
//! (`tandem_testkit::pipeline_run`).

use tandem_testkit as common;

use serde_json::Value;

use common::pipeline_run::{run, Sizes};

#[test]
fn the_report_equals_sql_over_both_crms_through_every_connector_behaviour() {
    let mut stages = Vec::new();
    let pipeline = run(Sizes::short(), |stage, _| stages.push(stage.to_owned()));
    assert_eq!(stages.len(), 7, "every stage was compared: {stages:?}");
    let (daemon, workload) = (&pipeline.daemon, &pipeline.workload);
    // Who wrote where, from the rows' last_modified_by / hs_updated_by_user_id columns.
    let writers: Value = daemon.get("/v1/writers");
    let writer = |system: &str, kind: &str, id: Option<&str>| {
        writers["systems"][system]
            .as_array()
            .expect("writers per system")
            .iter()
            .find(|writer| writer["kind"] == kind && writer["id"].as_str() == id)
            .cloned()
            .unwrap_or_else(|| panic!("no {kind} {id:?} writer in {system}: {writers}"))
    };
    let webform = writer("target", "integration", Some("webform"));
    assert_eq!(
        (&webform["into_fenced"], webform["violations"].as_u64()),
        (&Value::Bool(true), Some(workload.rogue_writes.len() as u64))
    );
    assert_eq!(writer("target", "sync", None)["violations"], 0);
    assert_eq!(writer("target", "repair", None)["violations"], 0);
    for user in ["ann", "bo", "cy"] {
        assert_eq!(writer("source", "user", Some(user))["into_fenced"], false);
    }
}
