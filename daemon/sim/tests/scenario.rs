//! Sanity of the simulator itself: determinism, and that faults produce the divergence kinds
//! the daemon's tests rely on.

use tandem_sim::{generate, SimConfig, SimSystem};

#[test]
fn the_same_seed_gives_the_same_run() {
    let config = SimConfig::sized(7, 200);
    let first = generate(&config);
    let second = generate(&config);
    assert_eq!(first.truth, second.truth);
    assert_eq!(first.messages.len(), second.messages.len());
    assert!(first
        .messages
        .iter()
        .zip(&second.messages)
        .all(|(a, b)| a.payload == b.payload));
}

#[test]
fn faults_produce_every_kind_of_divergence() {
    let scenario = generate(&SimConfig::demo(1));
    let mut totals = std::collections::BTreeMap::new();
    for entity in scenario.truth.entities.values() {
        assert_eq!(entity.records, entity.by_status.values().sum::<u64>());
        for (status, count) in &entity.by_status {
            *totals.entry(*status).or_insert(0) += count;
        }
    }
    for status in [
        "in_sync",
        "pending",
        "mismatch",
        "missing_in_target",
        "missing_in_source",
        "duplicate",
    ] {
        assert!(
            totals[status] > 0,
            "no {status} record in the demo run: {totals:?}"
        );
    }
    assert!(
        totals["in_sync"] > totals["mismatch"] * 10,
        "most records are in sync: {totals:?}"
    );
    assert!(scenario.truth.duplicates_dropped.values().sum::<u64>() > 0);
    assert!(scenario.truth.stale_versions.values().sum::<u64>() > 0);
    assert!(scenario.truth.dead_lettered.values().sum::<u64>() > 0);
    assert!(scenario
        .messages
        .iter()
        .any(|message| message.system == SimSystem::Target));
}

#[test]
fn without_faults_nothing_diverges() {
    let scenario = generate(&SimConfig::sized(3, 300).without_faults());
    for (name, entity) in &scenario.truth.entities {
        for (status, count) in &entity.by_status {
            if !matches!(*status, "in_sync" | "pending" | "missing_in_source") {
                assert_eq!(*count, 0, "{name}: {status}");
            }
        }
    }
}
