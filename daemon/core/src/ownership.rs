//! One owner at a time: which system owns live work per entity, who may still write into the
//! system that does not, and what a write that breaks the rule is.
//!
//! The owner of an entity takes live work; the other system is fenced. Only the sync layer,
//! the repair team's jobs and the writers the configuration allows may write into a fenced
//! system. Every other write there is a **violation** (`non_owner_write`). Ownership carries
//! an **epoch**, which grows at every flip: a write that names an older epoch than the
//! current one is a `fenced_write`, whoever made it, in whichever system.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::cutover::{CutoverState, Phase};
use crate::event::{Actor, ActorKind, ChangeEvent, Op};
use crate::system::System;
use crate::time::Timestamp;

/// The epoch of an entity no flip has touched yet.
pub const FIRST_EPOCH: u64 = 1;

/// A writer allowed into the fenced system: an actor kind, optionally one id of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorRule {
    /// The kind of writer.
    pub kind: ActorKind,
    /// The one writer of that kind; any writer of the kind when absent.
    pub id: Option<String>,
}

impl ActorRule {
    /// Parses `kind` or `kind:id`, e.g. `integration:billing-sync`.
    pub fn parse(text: &str) -> Result<ActorRule, String> {
        let actor = crate::event::parse_actor(text)?;
        Ok(ActorRule {
            kind: actor.kind,
            id: actor.id,
        })
    }

    /// Whether the rule covers the actor.
    pub fn matches(&self, actor: &Actor) -> bool {
        self.kind == actor.kind
            && self
                .id
                .as_ref()
                .is_none_or(|id| actor.id.as_deref() == Some(id.as_str()))
    }
}

impl fmt::Display for ActorRule {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(actor_kind_name(self.kind))?;
        if let Some(id) = &self.id {
            write!(formatter, ":{id}")?;
        }
        Ok(())
    }
}

/// The wire name of an actor kind.
pub const fn actor_kind_name(kind: ActorKind) -> &'static str {
    match kind {
        ActorKind::User => "user",
        ActorKind::Integration => "integration",
        ActorKind::Sync => "sync",
        ActorKind::Repair => "repair",
        ActorKind::System => "system",
    }
}

/// What a write into the fenced system without any actor means.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unattributed {
    /// Listed among the writers as `unknown`, not a violation: for feeds that never say who
    /// wrote (Debezium without an actor mapping), where every write would be one.
    #[default]
    Report,
    /// A violation like any other.
    Violation,
}

/// The ownership rules from the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnershipPolicy {
    /// The owner of every entity not listed in `entities`.
    pub owner: System,
    /// Entities owned by the other system from the start (tickets cut over before deals).
    pub entities: BTreeMap<String, System>,
    /// Besides sync and repair actors, who may write into each system while it is fenced.
    pub allowed: BTreeMap<System, Vec<ActorRule>>,
    /// What a write without an actor into a fenced system is.
    pub unattributed: Unattributed,
    /// Whether non-owner updates get a compensation command (a commands topic is set).
    pub compensate: bool,
}

impl Default for OwnershipPolicy {
    fn default() -> Self {
        OwnershipPolicy {
            owner: System::Source,
            entities: BTreeMap::new(),
            allowed: BTreeMap::new(),
            unattributed: Unattributed::Report,
            compensate: false,
        }
    }
}

/// The owner and epoch of one entity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntityOwnership {
    /// The system that owns live work.
    pub owner: System,
    /// Grows by one at every flip.
    pub epoch: u64,
}

/// Ownership as it stands, kept with the apply state: only entities whose ownership changed
/// since the configuration (by a flip) are listed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OwnershipState {
    /// Entities flipped or rolled back, with their current owner and epoch.
    #[serde(default)]
    pub entities: BTreeMap<String, EntityOwnership>,
    /// The second cutover.
    #[serde(default)]
    pub cutover: CutoverState,
}

/// Why a write is a violation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ViolationKind {
    /// A writer that is not allowed wrote into the fenced system.
    NonOwnerWrite,
    /// The write names an epoch older than the entity's current one.
    FencedWrite,
}

impl ViolationKind {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            ViolationKind::NonOwnerWrite => "non_owner_write",
            ViolationKind::FencedWrite => "fenced_write",
        }
    }
}

impl fmt::Display for ViolationKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// A write that broke the ownership rule; also the violations topic's and the API's wire type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// Why it is a violation.
    pub kind: ViolationKind,
    /// The system written into.
    pub system: System,
    /// The entity.
    pub entity: String,
    /// The record's join key (an `unjoined:` key if the record carries none yet).
    pub join_key: String,
    /// The record's native id in `system`.
    pub native_id: String,
    /// Who wrote, if the event says.
    pub actor: Option<Actor>,
    /// What the write did.
    pub op: Op,
    /// The fields it touched (none for a delete).
    pub fields: Vec<String>,
    /// When it happened.
    pub occurred_at: Timestamp,
    /// The event that carried it.
    pub event_id: String,
    /// The entity's owner at the time.
    pub owner: System,
    /// The entity's epoch at the time.
    pub epoch: u64,
}

/// The answer to "may this actor write this entity in this system now?".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permit {
    /// Whether the write is allowed.
    pub allowed: bool,
    /// The entity's owner.
    pub owner: System,
    /// The entity's current epoch; a writer should carry it as `actor.epoch`.
    pub epoch: u64,
    /// Why, in words.
    pub reason: String,
}

/// Whether an event is a write (a change made in the system), as opposed to a reading
/// (snapshot images) or a statement about the feed (gaps, ends of runs and transactions).
pub const fn is_write(op: Op) -> bool {
    matches!(
        op,
        Op::Create | Op::Update | Op::Delete | Op::Undelete | Op::Merge
    )
}

impl OwnershipPolicy {
    /// The owner and epoch of an entity now.
    pub fn of(&self, state: &OwnershipState, entity: &str) -> EntityOwnership {
        state
            .entities
            .get(entity)
            .copied()
            .unwrap_or_else(|| EntityOwnership {
                owner: self.configured_owner(entity),
                epoch: FIRST_EPOCH,
            })
    }

    /// The owner the configuration gives an entity (before any cutover step).
    pub fn configured_owner(&self, entity: &str) -> System {
        self.entities.get(entity).copied().unwrap_or(self.owner)
    }

    /// Whether an actor may write into `system` while `system` is fenced.
    fn allowed_in_fenced(&self, system: System, actor: &Actor) -> bool {
        matches!(actor.kind, ActorKind::Sync | ActorKind::Repair)
            || self
                .allowed
                .get(&system)
                .is_some_and(|rules| rules.iter().any(|rule| rule.matches(actor)))
    }

    /// The cutover phase and an entity's owner and epoch as they stood at `at`, from the
    /// cutover's history. A write is judged by the rule in force when it was made, not when
    /// tandem reads it: changes made before a freeze and still draining are not violations.
    /// (Transition times are tandem's clock, event times the CRM's: a write within clock skew
    /// of a step may be judged by either side of it.)
    pub fn in_effect(
        &self,
        state: &OwnershipState,
        entity: &str,
        at: Timestamp,
    ) -> (Phase, EntityOwnership) {
        let history = &state.cutover.history;
        match history.iter().rposition(|record| record.at <= at) {
            Some(index) if index + 1 < history.len() => {
                let record = &history[index];
                let ownership = record
                    .ownership
                    .get(entity)
                    .copied()
                    .unwrap_or(EntityOwnership {
                        owner: record.owner,
                        epoch: record.epoch,
                    });
                (record.to, ownership)
            }
            None if !history.is_empty() => (
                Phase::ParallelRun,
                EntityOwnership {
                    owner: self.configured_owner(entity),
                    epoch: FIRST_EPOCH,
                },
            ),
            _ => (state.cutover.phase, self.of(state, entity)),
        }
    }

    /// Judges one write by the rule in force when it was made: `None` if it is allowed.
    pub fn judge(
        &self,
        state: &OwnershipState,
        system: System,
        event: &ChangeEvent,
    ) -> Option<ViolationKind> {
        if !is_write(event.op) {
            return None;
        }
        let (phase, ownership) = self.in_effect(state, &event.entity, event.occurred_at);
        if event
            .actor
            .as_ref()
            .and_then(|actor| actor.epoch)
            .is_some_and(|epoch| epoch < ownership.epoch)
        {
            return Some(ViolationKind::FencedWrite);
        }
        // While frozen (or verified), both systems are fenced and only the sync layer and
        // repair jobs may write, to drain: the writers `allowed` lists are live writers too.
        let frozen = phase.is_frozen();
        if system == ownership.owner && !frozen {
            return None;
        }
        match &event.actor {
            Some(actor) if matches!(actor.kind, ActorKind::Sync | ActorKind::Repair) => None,
            Some(actor) if !frozen && self.allowed_in_fenced(system, actor) => None,
            Some(_) => Some(ViolationKind::NonOwnerWrite),
            None => match self.unattributed {
                Unattributed::Report => None,
                Unattributed::Violation => Some(ViolationKind::NonOwnerWrite),
            },
        }
    }

    /// Whether `actor` may write `entity` in `system` now.
    pub fn permit(
        &self,
        state: &OwnershipState,
        system: System,
        entity: &str,
        actor: &Actor,
    ) -> Permit {
        let EntityOwnership { owner, epoch } = self.of(state, entity);
        let (allowed, reason) = if actor.epoch.is_some_and(|carried| carried < epoch) {
            (
                false,
                format!("the actor carries epoch {} but {entity} is at epoch {epoch}: ownership changed since it was issued", actor.epoch.unwrap_or_default()),
            )
        } else if state.cutover.phase.is_frozen()
            && !matches!(actor.kind, ActorKind::Sync | ActorKind::Repair)
        {
            (
                false,
                format!("the cutover is {}: no live writes anywhere (only sync and repair) until it is flipped or rolled back", state.cutover.phase),
            )
        } else if system == owner {
            (true, format!("{system} owns {entity}"))
        } else if self.allowed_in_fenced(system, actor) {
            (
                true,
                format!("{system} is fenced for {entity}, but this actor is allowed to write there (sync, repair or ownership.allowed)"),
            )
        } else {
            (
                false,
                format!("{owner} owns {entity}: {system} is fenced and this actor is not allowed to write there"),
            )
        };
        Permit {
            allowed,
            owner,
            epoch,
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor(text: &str) -> Actor {
        crate::event::parse_actor(text).unwrap()
    }

    fn write(entity: &str, actor: Option<Actor>) -> ChangeEvent {
        let mut event: ChangeEvent = serde_json::from_value(serde_json::json!({
            "event_id": "e", "entity": entity, "id": "1", "op": "update",
            "occurred_at": "2026-11-20T08:00:00Z", "fields": {"a": 1}}))
        .unwrap();
        event.actor = actor;
        event
    }

    fn policy() -> OwnershipPolicy {
        OwnershipPolicy {
            owner: System::Source,
            entities: BTreeMap::from([("ticket".to_owned(), System::Target)]),
            allowed: BTreeMap::from([(
                System::Target,
                vec![ActorRule::parse("integration:billing").unwrap()],
            )]),
            unattributed: Unattributed::Report,
            compensate: false,
        }
    }

    #[test]
    fn only_unallowed_writers_into_the_fenced_system_violate() {
        let policy = policy();
        let state = OwnershipState::default();
        let cases = [
            (System::Source, "deal", Some("user:ann"), None),
            (System::Target, "deal", Some("sync:bridge"), None),
            (System::Target, "deal", Some("repair"), None),
            (System::Target, "deal", Some("integration:billing"), None),
            (
                System::Target,
                "deal",
                Some("integration:webform"),
                Some(ViolationKind::NonOwnerWrite),
            ),
            (
                System::Target,
                "deal",
                Some("user:bob"),
                Some(ViolationKind::NonOwnerWrite),
            ),
            (System::Target, "deal", None, None),
            // Tickets are owned by the target from the start: the source is fenced for them.
            (System::Target, "ticket", Some("user:bob"), None),
            (
                System::Source,
                "ticket",
                Some("user:ann"),
                Some(ViolationKind::NonOwnerWrite),
            ),
            // The billing integration is allowed into the target only.
            (
                System::Source,
                "ticket",
                Some("integration:billing"),
                Some(ViolationKind::NonOwnerWrite),
            ),
        ];
        for (system, entity, writer, expected) in cases {
            let event = write(entity, writer.map(actor));
            assert_eq!(
                policy.judge(&state, system, &event),
                expected,
                "{writer:?} writing {entity} in {system}"
            );
        }
    }

    #[test]
    fn from_the_freeze_to_the_flip_only_sync_and_repair_write_anywhere() {
        let policy = policy();
        for phase in [Phase::Frozen, Phase::Verified] {
            let mut state = OwnershipState::default();
            state.cutover.phase = phase;
            let cases = [
                (System::Source, "deal", "user:ann", false),
                (System::Source, "deal", "sync:bridge", true),
                (System::Target, "deal", "repair", true),
                // Allowed into the fenced target during the parallel run, not while frozen.
                (System::Target, "deal", "integration:billing", false),
                (System::Target, "ticket", "user:bob", false),
            ];
            for (system, entity, writer, allowed) in cases {
                let event = write(entity, Some(actor(writer)));
                let expected = (!allowed).then_some(ViolationKind::NonOwnerWrite);
                assert_eq!(
                    policy.judge(&state, system, &event),
                    expected,
                    "{writer} writing {entity} in {system} while {phase}"
                );
                let permit = policy.permit(&state, system, entity, &actor(writer));
                assert_eq!(permit.allowed, allowed, "{writer} permit while {phase}");
            }
        }
    }

    #[test]
    fn a_write_is_judged_by_the_rule_in_force_when_it_was_made() {
        use crate::cutover::{Transition, TransitionRecord};
        let policy = policy();
        let time = |text: &str| Timestamp::parse_rfc3339(text).unwrap();
        let record = |transition, from, to, at: &str, owner, epoch| TransitionRecord {
            transition,
            from,
            to,
            by: "ops".to_owned(),
            caller: None,
            reason: "rehearsal".to_owned(),
            at: time(at),
            owner,
            epoch,
            ownership: BTreeMap::new(),
            evidence: None,
        };
        // Frozen at 09:00, verified at 10:00, flipped at 11:00 (deals to the target, epoch 2).
        let mut state = OwnershipState::default();
        state.cutover.history = vec![
            record(
                Transition::Freeze,
                Phase::ParallelRun,
                Phase::Frozen,
                "2026-11-20T09:00:00Z",
                System::Source,
                1,
            ),
            record(
                Transition::Verify,
                Phase::Frozen,
                Phase::Verified,
                "2026-11-20T10:00:00Z",
                System::Source,
                1,
            ),
            record(
                Transition::Flip,
                Phase::Verified,
                Phase::Flipped,
                "2026-11-20T11:00:00Z",
                System::Target,
                2,
            ),
        ];
        state.cutover.phase = Phase::Flipped;
        state.entities.insert(
            "deal".to_owned(),
            EntityOwnership {
                owner: System::Target,
                epoch: 2,
            },
        );
        let judge = |system, writer: &str, at: &str| {
            let mut event = write("deal", Some(actor(writer)));
            event.occurred_at = time(at);
            policy.judge(&state, system, &event)
        };
        let violation = Some(ViolationKind::NonOwnerWrite);
        // A user's change in the source made before the freeze, read during the flip: fine.
        assert_eq!(
            judge(System::Source, "user:ann", "2026-11-20T08:59:00Z"),
            None
        );
        // Made while frozen or verified: a violation, in either system.
        assert_eq!(
            judge(System::Source, "user:ann", "2026-11-20T09:30:00Z"),
            violation
        );
        assert_eq!(
            judge(System::Target, "user:bob", "2026-11-20T10:30:00Z"),
            violation
        );
        // After the flip the target owns deals, the source is fenced.
        assert_eq!(
            judge(System::Target, "user:bob", "2026-11-20T11:30:00Z"),
            None
        );
        assert_eq!(
            judge(System::Source, "user:ann", "2026-11-20T11:30:00Z"),
            violation
        );
        // The sync layer's epoch-1 write is fenced only when made after the flip.
        let fenced = |at: &str| {
            let mut event = write("deal", Some(actor("sync:bridge")));
            event.actor.as_mut().unwrap().epoch = Some(1);
            event.occurred_at = time(at);
            policy.judge(&state, System::Target, &event)
        };
        assert_eq!(fenced("2026-11-20T10:59:00Z"), None);
        assert_eq!(
            fenced("2026-11-20T11:01:00Z"),
            Some(ViolationKind::FencedWrite)
        );
    }

    #[test]
    fn readings_are_not_writes_and_unattributed_writes_follow_the_policy() {
        let mut policy = policy();
        let state = OwnershipState::default();
        let mut snapshot = write("deal", Some(actor("user:bob")));
        snapshot.op = Op::Snapshot;
        assert_eq!(policy.judge(&state, System::Target, &snapshot), None);
        policy.unattributed = Unattributed::Violation;
        assert_eq!(
            policy.judge(&state, System::Target, &write("deal", None)),
            Some(ViolationKind::NonOwnerWrite)
        );
    }

    #[test]
    fn an_older_epoch_is_fenced_whoever_writes() {
        let policy = policy();
        let state = OwnershipState {
            cutover: CutoverState::default(),
            entities: BTreeMap::from([(
                "deal".to_owned(),
                EntityOwnership {
                    owner: System::Target,
                    epoch: 2,
                },
            )]),
        };
        let mut sync = actor("sync:bridge");
        sync.epoch = Some(1);
        assert_eq!(
            policy.judge(&state, System::Target, &write("deal", Some(sync.clone()))),
            Some(ViolationKind::FencedWrite)
        );
        sync.epoch = Some(2);
        assert_eq!(
            policy.judge(&state, System::Target, &write("deal", Some(sync))),
            None
        );
        // After the flip the source is fenced for deals.
        assert_eq!(
            policy.judge(
                &state,
                System::Source,
                &write("deal", Some(actor("user:ann")))
            ),
            Some(ViolationKind::NonOwnerWrite)
        );
    }

    #[test]
    fn permits_say_who_owns_and_why() {
        let policy = policy();
        let state = OwnershipState::default();
        let permit = policy.permit(&state, System::Target, "deal", &actor("user:bob"));
        assert_eq!(
            (permit.allowed, permit.owner, permit.epoch),
            (false, System::Source, 1)
        );
        assert!(permit.reason.contains("fenced"), "{}", permit.reason);
        let permit = policy.permit(
            &state,
            System::Target,
            "deal",
            &actor("integration:billing"),
        );
        assert!(permit.allowed);
        let permit = policy.permit(&state, System::Target, "ticket", &actor("user:bob"));
        assert_eq!((permit.allowed, permit.owner), (true, System::Target));
        let mut stale = actor("sync");
        stale.epoch = Some(0);
        assert!(
            !policy
                .permit(&state, System::Source, "deal", &stale)
                .allowed
        );
    }
}

/// One writer's writes to one entity of one system on one UTC day: the unit the writers report
/// adds up.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WriterKey {
    /// The system written into.
    pub system: System,
    /// The writer's kind; `None` for writes whose feed does not say who wrote.
    pub kind: Option<ActorKind>,
    /// The writer's id (empty if unknown).
    pub id: String,
    /// The entity.
    pub entity: String,
    /// Days since the Unix epoch (UTC) of the writes.
    pub day: i64,
}

/// What one writer did under a [`WriterKey`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriterCount {
    /// Writes.
    pub writes: u64,
    /// Of those, violations.
    pub violations: u64,
    /// Event time of the latest write.
    pub last_seen: Timestamp,
}

impl WriterCount {
    /// Adds another count of the same key.
    pub fn add(&mut self, other: WriterCount) {
        self.writes += other.writes;
        self.violations += other.violations;
        self.last_seen = self.last_seen.max(other.last_seen);
    }
}

/// The UTC day of a time, in days since the Unix epoch.
pub fn day_of(at: Timestamp) -> i64 {
    at.unix_nanos().div_euclid(86_400 * 1_000_000_000)
}

/// A command for the sync layer: set these fields of a record in the fenced system back to
/// the owner's values, undoing a `non_owner_write`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compensation {
    /// Always `restore_fields`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The system to write to (the fenced one).
    pub system: System,
    /// The entity.
    pub entity: String,
    /// The record's native id there.
    pub native_id: String,
    /// Its join key.
    pub join_key: String,
    /// Field (in that system's names) to the owner's value (null where the owner has none).
    pub set: BTreeMap<String, serde_json::Value>,
    /// The violation this undoes.
    pub violation_event_id: String,
    /// The epoch to write with.
    pub epoch: u64,
}
