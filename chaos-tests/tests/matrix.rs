//! The short version of every chaos scenario, run by `make test`.

use std::time::Duration;

use tandem_chaos::{matrix, run, Scenario, Size};

fn check(name: &str) {
    let scenario: Scenario = matrix(Size::Short)
        .into_iter()
        .find(|scenario| scenario.name == name)
        .expect("the scenario exists");
    let outcome = run(&scenario, Duration::from_secs(240));
    assert!(
        outcome.problems.is_empty(),
        "{name}: {:#?}",
        outcome.problems
    );
    assert!(outcome.healed, "{name}: not healed");
    assert_eq!(outcome.false_in_sync, 0, "{name}: false parity");
    assert!(outcome.samples > 0, "{name}: nothing was sampled");
    eprintln!(
        "{name}: right cause {}; disagreements {:?}",
        outcome.right_cause_text(),
        outcome.cause_confusions
    );
    eprintln!(
        "{name}: exact since {}; disagreements {:?}",
        outcome.right_since_text(),
        outcome.since_disagreements
    );
    if scenario.delivers_every_event() {
        // Every event arrives, late or out of order maybe: the since-times are exact.
        assert_eq!(
            outcome.right_since.0,
            outcome.right_since.1,
            "{name}: since {}; disagreements: {:?}",
            outcome.right_since_text(),
            outcome.since_disagreements
        );
    }
    assert!(
        outcome.right_cause_share() >= 0.95,
        "{name}: right cause {} < 95%; disagreements (listed -> truth): {:?}",
        outcome.right_cause_text(),
        outcome.cause_confusions
    );
}

#[test]
fn drop_source() {
    check("drop-source");
}

#[test]
fn duplicate() {
    check("duplicate");
}

#[test]
fn reorder() {
    check("reorder");
}

#[test]
fn lag() {
    check("lag");
}

#[test]
fn delay() {
    check("delay");
}

#[test]
fn gap_events() {
    check("gap-events");
}

#[test]
fn seq_holes() {
    check("seq-holes");
}

#[test]
fn partial_drops() {
    check("partial-drops");
}

#[test]
fn broker_outage() {
    check("broker-outage");
}

#[test]
fn sigkill() {
    check("sigkill");
}

#[test]
fn node_loss() {
    check("node-loss");
}

#[test]
fn retention() {
    check("retention");
}

#[test]
fn rekeyed_references() {
    check("rekeyed-references");
}

#[test]
fn poison() {
    check("poison");
}

/// A control for the checker itself: with `seq` switched off and target edits lost in
/// transport, tandem cannot know what it missed, so it must report some records in sync that
/// are not. The sampling has to catch that, or its zero in every other scenario means nothing.
#[test]
fn the_checker_catches_undetectable_losses() {
    let mut scenario: Scenario = matrix(Size::Short)
        .into_iter()
        .find(|scenario| scenario.name == "drop-source")
        .expect("the scenario exists");
    scenario.name = "control-undetectable";
    scenario.sim.emit_seq = false;
    scenario.sim.target_edit_rate = 0.6;
    scenario.sim.transport.drop_rate = 0.5;
    scenario.sim.transport.drop_system = Some(tandem_sim::SimSystem::Target);
    let outcome = run(&scenario, Duration::from_secs(240));
    assert!(
        outcome.false_in_sync > 0,
        "the checker found no false in_sync among {} samples although losses were undetectable",
        outcome.samples
    );
}
