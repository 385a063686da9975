//! Compares what the daemon reports with the simulator's ground truth, exactly.

use std::collections::BTreeMap;

use tandem_api::report::{DivergenceEntry, DivergenceList, Report};
use tandem_core::Status;
use tandem_sim::{GroundTruth, Scenario};

use crate::Daemon;

/// Visits every divergent and pending record the API lists, walking its pages of
/// `page_size`.
fn each_listed(daemon: &Daemon, page_size: usize, mut visit: impl FnMut(DivergenceEntry)) {
    for filter in ["", "&status=pending"] {
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/v1/divergences?limit={page_size}{filter}");
            if let Some(cursor) = &cursor {
                path.push_str(&format!("&cursor={cursor}"));
            }
            let page: DivergenceList = daemon.get(&path);
            page.items.into_iter().for_each(&mut visit);
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
    }
}

/// Every divergent and pending record the API lists, by (entity, join key).
pub fn listed_records(daemon: &Daemon) -> BTreeMap<(String, String), (String, Vec<String>)> {
    let mut listed = BTreeMap::new();
    // A small page size makes the test walk many pages and cursors.
    each_listed(daemon, 37, |item| {
        let mut fields = item.fields;
        fields.sort();
        let previous = listed.insert(
            (item.entity, item.join_key),
            (item.status.to_string(), fields),
        );
        assert!(previous.is_none(), "a record was listed twice while paging");
    });
    listed
}

/// The cause of every divergent and pending record the API lists, by (entity, join key)
/// (`none` for a record listed without one).
pub fn listed_causes(daemon: &Daemon) -> BTreeMap<(String, String), String> {
    let mut listed = BTreeMap::new();
    each_listed(daemon, 500, |item| {
        let cause = item.cause.map_or("none", |cause| cause.as_str());
        listed.insert((item.entity, item.join_key), cause.to_owned());
    });
    listed
}

/// The truth's cause of every record that is not in sync, by (entity, join key).
fn expected_causes(truth: &GroundTruth) -> BTreeMap<(String, String), String> {
    truth
        .entities
        .iter()
        .flat_map(|(entity, entity_truth)| {
            entity_truth.not_in_sync.iter().map(move |(key, record)| {
                ((entity.to_string(), key.clone()), record.cause.to_owned())
            })
        })
        .collect()
}

/// How many of the truth's divergent and pending records the daemon lists with the truth's
/// cause, of how many, and the most frequent disagreements (`listed -> truth` with an
/// example record, and counts).
pub fn cause_agreement(daemon: &Daemon, truth: &GroundTruth) -> (u64, u64, Vec<(String, u64)>) {
    let listed = listed_causes(daemon);
    let expected = expected_causes(truth);
    let mut confusions: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let mut right = 0;
    for (key, cause) in &expected {
        match listed.get(key) {
            Some(found) if found == cause => right += 1,
            found => {
                let confusion =
                    format!("{} -> {cause}", found.map_or("not listed", String::as_str));
                let count = confusions.entry(confusion).or_default();
                if count.0 == 0 {
                    count.1 = format!("{} {}", key.0, key.1);
                }
                count.0 += 1;
            }
        }
    }
    let mut confusions: Vec<(String, u64)> = confusions
        .into_iter()
        .map(|(confusion, (count, example))| (format!("{confusion} (e.g. {example})"), count))
        .collect();
    confusions.sort_by_key(|confusion| std::cmp::Reverse(confusion.1));
    (right, expected.len() as u64, confusions)
}

/// How many of the records the daemon lists as differing (any status but `unverified`,
/// whose time is when the doubt arose) carry the simulator's `since`, of how many, with up
/// to five disagreements (`entity key: listed <time>, truth <time>`). The truth walks every
/// event the systems emitted, so it is only for a run that delivers them all.
pub fn since_agreement(daemon: &Daemon, scenario: &Scenario) -> (u64, u64, Vec<String>) {
    let mut right = 0;
    let mut total = 0;
    let mut wrong = Vec::new();
    each_listed(daemon, 500, |item| {
        if item.status == Status::Unverified {
            return;
        }
        total += 1;
        let listed = item.since.map(|since| since.unix_nanos());
        let truth = scenario.differing_since(&item.entity, &item.join_key);
        if listed == truth {
            right += 1;
        } else if wrong.len() < 5 {
            let show = |nanos: Option<i64>| {
                nanos.map_or("none".to_owned(), |nanos| {
                    tandem_core::Timestamp::from_unix_nanos(nanos).to_rfc3339()
                })
            };
            wrong.push(format!(
                "{} {} ({}): listed {}, truth {}",
                item.entity,
                item.join_key,
                item.status,
                show(listed),
                show(truth)
            ));
        }
    });
    (right, total, wrong)
}

/// Asserts that the report and the divergence listing equal the ground truth, causes
/// included.
pub fn assert_matches_truth(daemon: &Daemon, report: &Report, truth: &GroundTruth) {
    // Which wrong values are mapping errors depends on the suspected mapping errors, which
    // the daemon looks for again at most every few seconds until ingestion has caught up:
    // compare a report of the caught-up daemon.
    let caught_up;
    let report = if report.ingest.caught_up {
        report
    } else {
        caught_up = crate::wait_for(
            "ingestion to catch up",
            std::time::Duration::from_secs(60),
            || {
                let report = daemon.report();
                report.ingest.caught_up.then_some(report)
            },
        );
        &caught_up
    };
    assert_complete_report_matches_truth(daemon, report, truth);
}

/// [`assert_matches_truth`] for a report known to cover every event, from a daemon that does
/// not ingest (a standby whose copy reached the active instance's changelog position).
pub fn assert_complete_report_matches_truth(daemon: &Daemon, report: &Report, truth: &GroundTruth) {
    let mut differences = count_differences(report, truth);
    differences.extend(status_differences(daemon, report, truth));
    differences.extend(cause_differences(daemon, report, truth));
    assert!(
        differences.is_empty(),
        "the daemon differs from the ground truth:\n{}",
        differences.join("\n")
    );
}

/// Where the records' statuses (counts per entity and the full divergence listing) differ
/// from the truth.
pub fn status_differences(daemon: &Daemon, report: &Report, truth: &GroundTruth) -> Vec<String> {
    let mut differences = Vec::new();
    for (entity, expected) in &truth.entities {
        let Some(actual) = report.entities.get(*entity) else {
            differences.push(format!("entity {entity} missing from the report"));
            continue;
        };
        let actual_by_status: BTreeMap<&str, u64> = actual
            .by_status
            .iter()
            .map(|(status, count)| (status.as_str(), *count))
            .collect();
        if actual_by_status != expected.by_status {
            differences.push(format!(
                "{entity}: records by status {actual_by_status:?}, truth {:?}",
                expected.by_status
            ));
        }
        if actual.mismatched_fields != expected.mismatched_fields {
            differences.push(format!(
                "{entity}: mismatched fields {:?}, truth {:?}",
                actual.mismatched_fields, expected.mismatched_fields
            ));
        }
    }
    let expected: BTreeMap<(String, String), (String, Vec<String>)> = truth
        .entities
        .iter()
        .flat_map(|(entity, entity_truth)| {
            entity_truth.not_in_sync.iter().map(move |(key, record)| {
                (
                    (entity.to_string(), key.clone()),
                    (record.status.to_owned(), record.fields.clone()),
                )
            })
        })
        .collect();
    let listed = listed_records(daemon);
    if listed != expected {
        let missing: Vec<_> = expected
            .iter()
            .filter(|(key, value)| listed.get(*key) != Some(value))
            .take(10)
            .collect();
        let extra: Vec<_> = listed
            .iter()
            .filter(|(key, value)| expected.get(*key) != Some(value))
            .take(10)
            .collect();
        differences.push(format!(
            "divergence listing differs from the ground truth; expected but not listed: {missing:?}; listed but not expected: {extra:?}"
        ));
    }
    differences
}

/// Where the ingest counters differ from the truth.
pub fn count_differences(report: &Report, truth: &GroundTruth) -> Vec<String> {
    let mut differences = Vec::new();
    let by_system =
        |counts: &BTreeMap<&str, u64>, system: &str| counts.get(system).copied().unwrap_or(0);
    for (system, ingest) in [
        ("source", &report.ingest.source),
        ("target", &report.ingest.target),
    ] {
        for (what, actual, expected) in [
            (
                "events applied",
                ingest.events_applied,
                by_system(&truth.events_applied, system),
            ),
            (
                "duplicates dropped",
                ingest.duplicates_dropped,
                by_system(&truth.duplicates_dropped, system),
            ),
            (
                "stale versions",
                ingest.stale_versions,
                by_system(&truth.stale_versions, system),
            ),
        ] {
            if actual != expected {
                differences.push(format!("{system}: {what} {actual}, truth {expected}"));
            }
        }
    }
    let dead_letters: BTreeMap<&str, u64> = report
        .ingest
        .dead_lettered_by_reason
        .iter()
        .map(|(reason, count)| (reason.as_str(), *count))
        .filter(|(_, count)| *count > 0)
        .collect();
    if dead_letters != truth.dead_lettered {
        differences.push(format!(
            "dead letters by reason {dead_letters:?}, truth {:?}",
            truth.dead_lettered
        ));
    }
    differences
}

/// Where the divergence causes (per record in the listing, and counted per entity in the
/// report) differ from the truth.
pub fn cause_differences(daemon: &Daemon, report: &Report, truth: &GroundTruth) -> Vec<String> {
    let mut differences = Vec::new();
    let listed = listed_causes(daemon);
    let expected = expected_causes(truth);
    let wrong: Vec<_> = expected
        .iter()
        .filter(|(key, cause)| listed.get(*key) != Some(cause))
        .map(|(key, cause)| format!("{key:?}: listed {:?}, truth {cause}", listed.get(key)))
        .take(10)
        .collect();
    if !wrong.is_empty() {
        differences.push(format!(
            "causes differ from the ground truth: {}",
            wrong.join("; ")
        ));
    }
    for (entity, expected) in &truth.entities {
        let Some(actual) = report.entities.get(*entity) else {
            continue;
        };
        let actual: BTreeMap<&str, u64> = actual
            .by_cause
            .iter()
            .map(|(cause, count)| (cause.as_str(), *count))
            .collect();
        if actual != expected.by_cause {
            differences.push(format!(
                "{entity}: records by cause {actual:?}, truth {:?}",
                expected.by_cause
            ));
        }
    }
    differences
}
