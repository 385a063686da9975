//! The write fence: the partitions the consumer group assigned to this consumer, checked by
//! the writer under the same lock as its commit, so that nothing of a partition is committed
//! once the rebalance callback that revoked it has returned.
//!
//! The revocation handshake ([`crate::consumer`]) normally leaves the fence nothing to do:
//! every batch sent before the revocation is durable before the partitions are let go. When
//! the handshake times out (an apply loop stuck behind a slow store), batches of the revoked
//! partitions may still wait in the channel, be planned or be on their way to the store. The
//! callback then closes the fence on those partitions; it takes the lock to do so, so a commit
//! under way finishes first. From then on the apply loop drops their messages before planning,
//! and the writer refuses every batch already planned with one of them, together with the
//! batches planned after it (they were planned on top of it). The apply loop learns of the
//! refusal, reloads its state from the store and plans the refused batches' messages of the
//! partitions still assigned again. Dropping the others is safe: offsets are stored in the
//! same WriteBatch as what their messages changed, so whoever owns the partition now reads
//! them again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use tandem_store::NextOffset;
use tracing::warn;

use crate::consumer::{lock, ConsumedMessage};

/// The partitions assigned to this consumer, behind the lock the writer commits under.
#[derive(Debug, Default)]
pub(crate) struct Fence {
    assigned: Mutex<Assignment>,
    /// A copy of `assigned` for the apply loop, which drops messages of revoked partitions
    /// before planning: it must not wait for the writer's commit (that would stop it planning
    /// the next batch while the store writes this one). The writer's check under `assigned`
    /// is what guarantees nothing lands; this copy only spares planning work.
    view: Mutex<Arc<Assignment>>,
}

/// Partitions by topic: looked up per message without building a key.
#[derive(Clone, Debug, Default)]
struct Assignment(BTreeMap<String, BTreeSet<i32>>);

impl Assignment {
    fn contains(&self, topic: &str, partition: i32) -> bool {
        self.0
            .get(topic)
            .is_some_and(|partitions| partitions.contains(&partition))
    }
}

/// The fence held: no commit and no rebalance changes it meanwhile.
pub(crate) struct FenceGuard<'a> {
    assigned: MutexGuard<'a, Assignment>,
}

impl Fence {
    /// The group assigned these partitions (all of them, or more of them when the protocol is
    /// cooperative).
    pub(crate) fn assign(&self, partitions: &[(String, i32)]) {
        let mut assigned = lock(&self.assigned);
        for (topic, partition) in partitions {
            assigned
                .0
                .entry(topic.clone())
                .or_default()
                .insert(*partition);
        }
        self.publish(&assigned);
    }

    fn publish(&self, assigned: &Assignment) {
        *lock(&self.view) = Arc::new(assigned.clone());
    }

    /// These partitions are no longer this consumer's: nothing of them is committed any more.
    /// Waits for a commit under way.
    pub(crate) fn revoke(&self, partitions: &[(String, i32)]) {
        let mut assigned = lock(&self.assigned);
        for (topic, partition) in partitions {
            if let Some(partitions) = assigned.0.get_mut(topic) {
                partitions.remove(partition);
            }
        }
        self.publish(&assigned);
    }

    /// The consumer released its whole assignment.
    pub(crate) fn revoke_all(&self) {
        let mut assigned = lock(&self.assigned);
        assigned.0.clear();
        self.publish(&assigned);
    }

    /// Holds the fence, for a commit that must not race a revocation.
    pub(crate) fn hold(&self) -> FenceGuard<'_> {
        FenceGuard {
            assigned: lock(&self.assigned),
        }
    }

    /// Whether the partition is assigned to this consumer now (without waiting for a commit
    /// under way).
    pub(crate) fn is_assigned(&self, topic: &str, partition: i32) -> bool {
        self.current().contains(topic, partition)
    }

    fn current(&self) -> Arc<Assignment> {
        lock(&self.view).clone()
    }

    /// Drops the messages of partitions no longer assigned from `batch`, logging each
    /// partition's dropped offsets; `why` says where they were dropped.
    pub(crate) fn drop_revoked(&self, batch: &mut Vec<ConsumedMessage>, why: &str) {
        if batch.is_empty() {
            return;
        }
        let assigned = self.current();
        let (kept, dropped): (Vec<_>, Vec<_>) =
            std::mem::take(batch).into_iter().partition(|message| {
                assigned.contains(&message.coordinates.topic, message.coordinates.partition)
            });
        *batch = kept;
        let dropped = spans(&dropped);
        for ((topic, partition), span) in dropped {
            warn!(
                topic,
                partition,
                first_offset = span.first_offset,
                last_offset = span.last_offset,
                parts = span.parts,
                "messages of a partition no longer assigned dropped {why}: its revocation was not confirmed in time; the partition's new owner reads them again"
            );
        }
    }
}

impl FenceGuard<'_> {
    /// Whether the partition is assigned to this consumer.
    pub(crate) fn is_assigned(&self, topic: &str, partition: i32) -> bool {
        self.assigned.contains(topic, partition)
    }

    /// The partitions among a batch's offsets that are no longer assigned.
    pub(crate) fn unassigned(&self, offsets: &[(String, i32, NextOffset)]) -> Vec<(String, i32)> {
        offsets
            .iter()
            .filter(|(topic, partition, _)| !self.is_assigned(topic, *partition))
            .map(|(topic, partition, _)| (topic.clone(), *partition))
            .collect()
    }
}

/// The first and last offsets of a partition's messages in a batch, and how many parts.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Span {
    pub(crate) first_offset: i64,
    pub(crate) last_offset: i64,
    pub(crate) parts: usize,
}

impl Span {
    fn new(offset: i64) -> Span {
        Span {
            first_offset: offset,
            last_offset: offset,
            parts: 0,
        }
    }

    fn include(&mut self, offset: i64) {
        self.first_offset = self.first_offset.min(offset);
        self.last_offset = self.last_offset.max(offset);
        self.parts += 1;
    }
}

/// Per partition, the span of `messages` it holds.
pub(crate) fn spans(messages: &[ConsumedMessage]) -> BTreeMap<(String, i32), Span> {
    let mut spans: BTreeMap<(String, i32), Span> = BTreeMap::new();
    for message in messages {
        let coordinates = &message.coordinates;
        spans
            .entry((coordinates.topic.clone(), coordinates.partition))
            .or_insert_with(|| Span::new(coordinates.offset))
            .include(coordinates.offset);
    }
    spans
}
