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

/// Every fault the simulator can inject leaves its mark in the ground truth: the cause of the
/// records it breaks, and the systematic ones as suspected mapping errors.
#[test]
fn each_injected_fault_shows_in_the_truth_with_its_cause() {
    let mut config = SimConfig::sized(11, 400).without_faults();
    config.sync_shift_rate = 0.3;
    config.sync_cents_rate = 0.3;
    config.sync_text_number_rate = 0.3;
    config.sync_zone_shift_rate = 0.3;
    config.sync_raw_reference_rate = 0.3;
    config.source_new_stage_rate = 0.05;
    config.source_merge_rate = 0.05;
    config.target_reuse_rate = 0.03;
    config.sync_duplicate_rate = 0.02;
    config.target_edit_rate = 0.03;
    config.target_enrichment_rate = 0.05;
    config.sync_drop_rate = 0.02;
    let truth = generate(&config).truth;
    let mut causes = std::collections::BTreeMap::new();
    for entity in truth.entities.values() {
        for (cause, count) in &entity.by_cause {
            *causes.entry(*cause).or_insert(0u64) += count;
        }
    }
    for cause in [
        "unmapped_value",
        "broken_reference",
        "deleted_in_source_only",
        "duplicate",
        "id_reused",
        "non_owner_write",
        "overwritten_in_target",
        "missed_change",
        "sync_wrote_wrong_value",
        "mapping_error",
    ] {
        assert!(
            causes.get(cause).copied().unwrap_or(0) > 0,
            "no {cause}: {causes:?}"
        );
    }
    let suspected: Vec<(&str, &str, &str)> = truth
        .suspected_mapping_errors
        .iter()
        .map(|error| (error.entity, error.field, error.pattern.as_str()))
        .collect();
    for expected in [
        ("contact", "jobtitle", "column_shift:LastName"),
        ("deal", "amount", "scaled:100"),
        ("company", "numberofemployees", "number_as_text"),
        ("deal", "notes_last_updated", "time_shift:-05:00"),
        ("deal", "associatedcompany", "untranslated_reference"),
    ] {
        assert!(
            suspected.contains(&expected),
            "{expected:?} in {suspected:?}"
        );
    }
    // The unmapped stages are the new stage, copied as it is.
    let deals = &truth.entities["deal"];
    assert!(deals
        .not_in_sync
        .values()
        .filter(|record| record.cause == "unmapped_value")
        .all(|record| record.fields.contains(&"dealstage".to_owned())));
}
