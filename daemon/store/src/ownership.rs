//! Violations of the ownership rule and the writers report: kept per violation (by time) and
//! per writer, entity and day; violations also wait in an outbox for the violations topic.

use rocksdb::IteratorMode;
use tandem_core::cutover::TransitionRecord;
use tandem_core::event::ActorKind;
use tandem_core::ownership::{Compensation, Violation, WriterCount, WriterKey};
use tandem_core::{System, Timestamp};

use crate::batch::OrderedBatch;
use crate::codec::{decode_value, encode_value};
use crate::error::{Error, Result};
use crate::keys::{KeyReader, KeyWriter};
use crate::read::ReadSnapshot;
use crate::{cf, Store};

/// A violation waiting to be produced to the violations topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingViolation {
    /// Its key in the outbox.
    pub key: Vec<u8>,
    /// The violation.
    pub violation: Violation,
}

/// One page of violations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViolationPage {
    /// The violations, oldest first.
    pub items: Vec<Violation>,
    /// Pass back to get the next page; `None` on the last page.
    pub next_cursor: Option<Vec<u8>>,
}

/// Which violations a listing wants.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ViolationFilter {
    /// At or after this time.
    pub since: Option<Timestamp>,
    /// Only this entity.
    pub entity: Option<String>,
    /// Only this system.
    pub system: Option<System>,
    /// Only writers of this kind, and of this id when given.
    pub actor: Option<(ActorKind, Option<String>)>,
}

impl ViolationFilter {
    fn matches(&self, violation: &Violation) -> bool {
        self.entity
            .as_ref()
            .is_none_or(|entity| *entity == violation.entity)
            && self.system.is_none_or(|system| system == violation.system)
            && self.actor.as_ref().is_none_or(|(kind, id)| {
                violation.actor.as_ref().is_some_and(|actor| {
                    actor.kind == *kind
                        && id
                            .as_ref()
                            .is_none_or(|id| actor.id.as_deref() == Some(id.as_str()))
                })
            })
    }
}

fn violation_key(violation: &Violation) -> Vec<u8> {
    KeyWriter::new()
        .i64(violation.occurred_at.unix_nanos())
        .u8(violation.system.code())
        .str(&violation.event_id)
        .finish()
}

fn kind_name(kind: Option<ActorKind>) -> &'static str {
    kind.map(tandem_core::ownership::actor_kind_name)
        .unwrap_or("unknown")
}

fn writer_key(key: &WriterKey) -> Vec<u8> {
    KeyWriter::new()
        .u8(key.system.code())
        .str(kind_name(key.kind))
        .str(&key.id)
        .str(&key.entity)
        .i64(key.day)
        .finish()
}

fn decode_writer_key(bytes: &[u8]) -> Result<WriterKey> {
    let mut reader = KeyReader::new(bytes, "writers");
    let system = reader.system()?;
    let kind = match reader.str()?.as_str() {
        "unknown" => None,
        name => Some(
            tandem_core::event::parse_actor(name)
                .map_err(|_| Error::CorruptValue {
                    column_family: cf::WRITERS,
                    detail: format!("unknown actor kind `{name}`"),
                })?
                .kind,
        ),
    };
    let id = reader.str()?;
    let entity = reader.str()?;
    let day = reader.i64()?;
    reader.end()?;
    Ok(WriterKey {
        system,
        kind,
        id,
        entity,
        day,
    })
}

impl Store {
    /// Adds a batch's violations and writer counts to the commit being built. Counts are
    /// read-modify-write: commits run one at a time, in order, so the stored totals are those
    /// of every earlier batch.
    pub(crate) fn write_ownership(
        &self,
        batch: &mut OrderedBatch,
        violations: &[Violation],
        writers: &[(WriterKey, WriterCount)],
        transitions: &[TransitionRecord],
        compensations: &[Compensation],
        publish: bool,
    ) -> Result<()> {
        for violation in violations {
            let key = violation_key(violation);
            if publish {
                batch.put_cf(cf::VIOLATION_OUTBOX, key.clone(), []);
            }
            batch.put_cf(cf::VIOLATIONS, key, encode_value(violation));
        }
        for command in compensations {
            let key = KeyWriter::new()
                .u8(command.system.code())
                .str(&command.violation_event_id)
                .finish();
            batch.put_cf(cf::COMMAND_OUTBOX, key, encode_value(command));
        }
        for record in transitions {
            let key = KeyWriter::new()
                .i64(record.at.unix_nanos())
                .str(record.transition.as_str())
                .finish();
            batch.put_cf(cf::CUTOVER_OUTBOX, key, encode_value(record));
        }
        for (key, count) in writers {
            let encoded = writer_key(key);
            let mut total = match self
                .db
                .get_cf(self.cf(cf::WRITERS), &encoded)
                .map_err(Error::rocksdb("read of a writer count"))?
            {
                Some(bytes) => decode_value::<WriterCount>(&bytes, cf::WRITERS)?,
                None => WriterCount {
                    writes: 0,
                    violations: 0,
                    last_seen: count.last_seen,
                },
            };
            total.add(*count);
            batch.put_cf(cf::WRITERS, encoded, encode_value(&total));
        }
        Ok(())
    }

    /// Cutover transitions not yet published on the control topic, oldest first.
    pub fn pending_transitions(&self, limit: usize) -> Result<Vec<(Vec<u8>, TransitionRecord)>> {
        let mut pending = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(cf::CUTOVER_OUTBOX), IteratorMode::Start)
            .take(limit)
        {
            let (key, value) = item.map_err(Error::rocksdb("scan of the cutover outbox"))?;
            pending.push((key.to_vec(), decode_value(&value, cf::CUTOVER_OUTBOX)?));
        }
        Ok(pending)
    }

    /// Clears a transition the broker acknowledged.
    pub fn mark_transition_delivered(&self, key: &[u8]) -> Result<()> {
        let mut batch = OrderedBatch::default();
        batch.delete_cf(cf::CUTOVER_OUTBOX, key);
        self.write(batch, "write of a cutover delivery")
    }

    /// Compensation commands not yet published.
    pub fn pending_commands(&self, limit: usize) -> Result<Vec<(Vec<u8>, Compensation)>> {
        let mut pending = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(cf::COMMAND_OUTBOX), IteratorMode::Start)
            .take(limit)
        {
            let (key, value) = item.map_err(Error::rocksdb("scan of the command outbox"))?;
            pending.push((key.to_vec(), decode_value(&value, cf::COMMAND_OUTBOX)?));
        }
        Ok(pending)
    }

    /// Clears a command the broker acknowledged.
    pub fn mark_command_delivered(&self, key: &[u8]) -> Result<()> {
        let mut batch = OrderedBatch::default();
        batch.delete_cf(cf::COMMAND_OUTBOX, key);
        self.write(batch, "write of a command delivery")
    }

    /// Violations not yet produced to the violations topic, oldest first.
    pub fn pending_violations(&self, limit: usize) -> Result<Vec<PendingViolation>> {
        let mut pending = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(cf::VIOLATION_OUTBOX), IteratorMode::Start)
            .take(limit)
        {
            let (key, _) = item.map_err(Error::rocksdb("scan of the violations outbox"))?;
            let Some(bytes) = self
                .db
                .get_cf(self.cf(cf::VIOLATIONS), &key)
                .map_err(Error::rocksdb("read of a violation"))?
            else {
                continue;
            };
            pending.push(PendingViolation {
                key: key.to_vec(),
                violation: decode_value(&bytes, cf::VIOLATIONS)?,
            });
        }
        Ok(pending)
    }

    /// Clears violations the broker acknowledged.
    pub fn mark_violations_delivered(&self, keys: &[Vec<u8>]) -> Result<()> {
        let mut batch = OrderedBatch::default();
        for key in keys {
            batch.delete_cf(cf::VIOLATION_OUTBOX, key.clone());
        }
        self.write(batch, "write of violation deliveries")
    }
}

impl ReadSnapshot<'_> {
    /// Violations matching `filter`, oldest first, `limit` per page.
    pub fn violations(
        &self,
        filter: &ViolationFilter,
        limit: usize,
        cursor: Option<&[u8]>,
    ) -> Result<ViolationPage> {
        let start = match (cursor, filter.since) {
            (Some(cursor), _) => cursor.to_vec(),
            (None, Some(since)) => KeyWriter::new().i64(since.unix_nanos()).finish(),
            (None, None) => Vec::new(),
        };
        let mut items = Vec::new();
        for item in self.scan_column(cf::VIOLATIONS, Vec::new(), start) {
            let (key, value) = item?;
            if cursor.is_some_and(|cursor| &key[..] <= cursor) {
                continue;
            }
            let violation: Violation = decode_value(&value, cf::VIOLATIONS)?;
            if !filter.matches(&violation) {
                continue;
            }
            if items.len() == limit {
                let last = items.last().map(violation_key);
                return Ok(ViolationPage {
                    items,
                    next_cursor: last,
                });
            }
            items.push(violation);
        }
        Ok(ViolationPage {
            items,
            next_cursor: None,
        })
    }

    /// Every writer's counts per entity and day, from day `since_day` on.
    pub fn writers(&self, since_day: i64) -> Result<Vec<(WriterKey, WriterCount)>> {
        let mut writers = Vec::new();
        for item in self.scan_column(cf::WRITERS, Vec::new(), Vec::new()) {
            let (key, value) = item?;
            let key = decode_writer_key(&key)?;
            if key.day < since_day {
                continue;
            }
            writers.push((key, decode_value(&value, cf::WRITERS)?));
        }
        Ok(writers)
    }
}
