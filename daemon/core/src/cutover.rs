//! The second cutover as a state machine: `parallel_run` → `frozen` → `verified` → `flipped`
//! → `complete`, with `rollback` from `frozen`, `verified` or `flipped` back to the parallel
//! run. A flip and a rollback each move every entity's ownership epoch on by one, so writes
//! issued under the previous ownership are fenced.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ownership::{EntityOwnership, OwnershipPolicy, OwnershipState};
use crate::system::System;
use crate::time::Timestamp;

/// Where the cutover stands.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The source owns live work; the target is being repaired.
    #[default]
    ParallelRun,
    /// Every live write anywhere is a violation; the last changes drain.
    Frozen,
    /// The gates passed on one consistent snapshot.
    Verified,
    /// The target owns live work; rollback is still possible.
    Flipped,
    /// The target owns live work for good.
    Complete,
}

impl Phase {
    /// Every phase, in the order a cutover goes through them.
    pub const ALL: [Phase; 5] = [
        Phase::ParallelRun,
        Phase::Frozen,
        Phase::Verified,
        Phase::Flipped,
        Phase::Complete,
    ];

    /// Whether live writes are stopped everywhere: from the freeze until the flip or a
    /// rollback (verified included: the gates held on a state nobody may change any more).
    pub const fn is_frozen(self) -> bool {
        matches!(self, Phase::Frozen | Phase::Verified)
    }

    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Phase::ParallelRun => "parallel_run",
            Phase::Frozen => "frozen",
            Phase::Verified => "verified",
            Phase::Flipped => "flipped",
            Phase::Complete => "complete",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// A step of the cutover.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transition {
    /// Stop live writes everywhere and let the last changes drain.
    Freeze,
    /// Evaluate the gates; passes only if every gate is green.
    Verify,
    /// Give ownership to the target.
    Flip,
    /// Give ownership back to the source.
    Rollback,
    /// Make the flip permanent.
    Complete,
}

impl Transition {
    /// Every transition.
    pub const ALL: [Transition; 5] = [
        Transition::Freeze,
        Transition::Verify,
        Transition::Flip,
        Transition::Rollback,
        Transition::Complete,
    ];

    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Transition::Freeze => "freeze",
            Transition::Verify => "verify",
            Transition::Flip => "flip",
            Transition::Rollback => "rollback",
            Transition::Complete => "complete",
        }
    }

    /// The transition of a wire name.
    pub fn parse(text: &str) -> Option<Transition> {
        Transition::ALL
            .into_iter()
            .find(|transition| transition.as_str() == text)
    }

    /// The phase this transition leads to from `from`, or why it is not allowed.
    pub fn target(self, from: Phase) -> Result<Phase, String> {
        match (from, self) {
            (Phase::ParallelRun, Transition::Freeze) => Ok(Phase::Frozen),
            (Phase::Frozen, Transition::Verify) => Ok(Phase::Verified),
            (Phase::Verified, Transition::Flip) => Ok(Phase::Flipped),
            (Phase::Flipped, Transition::Complete) => Ok(Phase::Complete),
            (Phase::Frozen | Phase::Verified | Phase::Flipped, Transition::Rollback) => {
                Ok(Phase::ParallelRun)
            }
            (Phase::Complete, Transition::Rollback) => Err(
                "the cutover is complete, which is irreversible: there is nothing to roll back to"
                    .to_owned(),
            ),
            (Phase::ParallelRun, Transition::Rollback) => Err(
                "the parallel run is on: the source already owns live work, there is nothing to roll back"
                    .to_owned(),
            ),
            (from, transition) => {
                let expected = match from {
                    Phase::ParallelRun => "freeze",
                    Phase::Frozen => "verify or rollback",
                    Phase::Verified => "flip or rollback",
                    Phase::Flipped => "complete or rollback",
                    Phase::Complete => "nothing",
                };
                Err(format!(
                    "`{transition}` is not allowed while the cutover is `{from}`; allowed now: {expected}"
                ))
            }
        }
    }
}

impl fmt::Display for Transition {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// A cutover step as asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct StepOrder {
    /// The step.
    pub transition: Transition,
    /// Who asks, as they say.
    pub by: String,
    /// Who asks, as the API established it.
    pub caller: Option<Caller>,
    /// Why, in their words.
    pub reason: String,
    /// The readiness it was decided on (verify, flip), as JSON.
    pub evidence: Option<serde_json::Value>,
    /// The events applied over both systems in the state the evidence was measured on: the
    /// step is refused if any event has been applied since, so a step is always taken on the
    /// state its gates were measured on.
    pub measured_at_events: Option<u64>,
}

/// Who sent a request, as the API established it (unlike a `by`, which the caller writes).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    /// The token presented: `admin`, `read`, or `none` where the API asks for none.
    pub token: String,
    /// The client's address and port.
    pub address: String,
    /// The request's id: the `X-Request-Id` it sent (if usable) or the one the API gave it.
    pub request_id: String,
}

/// A transition as it happened: who, when, why, and the evidence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransitionRecord {
    /// The step taken.
    pub transition: Transition,
    /// The phase before.
    pub from: Phase,
    /// The phase after.
    pub to: Phase,
    /// Who asked, as they said (the `--by` of the CLI, or the API caller's `by`): a claim.
    pub by: String,
    /// Who asked, as the API established it: the token presented, the address, the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<Caller>,
    /// Why, in their words.
    pub reason: String,
    /// Wall-clock time of the transition.
    pub at: Timestamp,
    /// The owner of the entities after it (the target after a flip, the configured owner
    /// after a rollback); entities the configuration gives another owner are in `ownership`.
    pub owner: System,
    /// The highest epoch after it (a flip and a rollback give every entity the same one).
    pub epoch: u64,
    /// Every entity's owner and epoch after it.
    #[serde(default)]
    pub ownership: BTreeMap<String, EntityOwnership>,
    /// The readiness measured for it (verify, flip), as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<serde_json::Value>,
}

/// The cutover's state, kept with the apply state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CutoverState {
    /// Where it stands.
    pub phase: Phase,
    /// Wall-clock time it got there (none before the first transition).
    pub since: Option<Timestamp>,
    /// Every transition, oldest first.
    pub history: Vec<TransitionRecord>,
}

/// What a transition does to ownership: the owner and epoch each entity gets, or `None` for
/// steps that leave ownership alone. A flip gives every entity to the target; a rollback gives
/// each back to the owner the configuration gives it (the source, unless
/// `ownership.entities` had it cut over earlier), so rolling back the second cutover never
/// undoes an earlier one. Every entity gets the same new epoch, one above the highest now, so
/// writes issued under any earlier ownership are fenced.
pub fn ownership_after(
    transition: Transition,
    policy: &OwnershipPolicy,
    state: &OwnershipState,
    entities: &[String],
) -> Option<BTreeMap<String, EntityOwnership>> {
    if !matches!(transition, Transition::Flip | Transition::Rollback) {
        return None;
    }
    let epoch = entities
        .iter()
        .map(|entity| policy.of(state, entity).epoch)
        .max()
        .unwrap_or(crate::ownership::FIRST_EPOCH)
        + 1;
    Some(
        entities
            .iter()
            .map(|entity| {
                let owner = match transition {
                    Transition::Flip => System::Target,
                    _ => policy.configured_owner(entity),
                };
                (entity.clone(), EntityOwnership { owner, epoch })
            })
            .collect(),
    )
}

/// Applies a flip or a rollback to the ownership state.
pub fn apply_ownership(state: &mut OwnershipState, after: &BTreeMap<String, EntityOwnership>) {
    for (entity, ownership) in after {
        state.entities.insert(entity.clone(), *ownership);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_machine_moves_forward_and_rolls_back_only_where_allowed() {
        use Phase::*;
        use Transition::*;
        let allowed = [
            (ParallelRun, Freeze, Frozen),
            (Frozen, Verify, Verified),
            (Verified, Flip, Flipped),
            (Flipped, Transition::Complete, Phase::Complete),
            (Frozen, Rollback, ParallelRun),
            (Verified, Rollback, ParallelRun),
            (Flipped, Rollback, ParallelRun),
        ];
        for phase in [ParallelRun, Frozen, Verified, Flipped, Phase::Complete] {
            for transition in Transition::ALL {
                let expected = allowed
                    .iter()
                    .find(|(from, step, _)| *from == phase && *step == transition)
                    .map(|(_, _, to)| *to);
                assert_eq!(
                    transition.target(phase).ok(),
                    expected,
                    "{transition} from {phase}"
                );
            }
        }
        assert!(Rollback
            .target(Phase::Complete)
            .unwrap_err()
            .contains("irreversible"));
        assert!(Flip
            .target(Frozen)
            .unwrap_err()
            .contains("verify or rollback"));
    }

    #[test]
    fn a_flip_and_a_rollback_each_move_every_epoch_on() {
        // Tickets were cut over to the target before this cutover; deals and contacts were not.
        let policy = OwnershipPolicy {
            entities: [("ticket".to_owned(), System::Target)].into(),
            ..OwnershipPolicy::default()
        };
        let mut state = OwnershipState::default();
        let entities: Vec<String> = ["contact", "deal", "ticket"].map(str::to_owned).into();
        assert_eq!(
            ownership_after(Transition::Freeze, &policy, &state, &entities),
            None
        );
        let owners = |after: &BTreeMap<String, EntityOwnership>| -> Vec<(System, u64)> {
            after.values().map(|own| (own.owner, own.epoch)).collect()
        };
        let flipped = ownership_after(Transition::Flip, &policy, &state, &entities).unwrap();
        assert_eq!(
            owners(&flipped),
            [
                (System::Target, 2),
                (System::Target, 2),
                (System::Target, 2)
            ]
        );
        apply_ownership(&mut state, &flipped);
        assert_eq!(policy.of(&state, "deal").owner, System::Target);
        let rolled_back =
            ownership_after(Transition::Rollback, &policy, &state, &entities).unwrap();
        // Back to before the cutover: the tickets stay with the target, at the new epoch.
        assert_eq!(
            owners(&rolled_back),
            [
                (System::Source, 3),
                (System::Source, 3),
                (System::Target, 3)
            ]
        );
    }
}
