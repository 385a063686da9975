//! The readers' side: consistent queries on a RocksDB snapshot, for the API and the CLI.

use std::collections::BTreeMap;

use rocksdb::Snapshot;
use serde::{Deserialize, Serialize};
use tandem_core::{ApplyState, DeadLetterReason, RecordRow, Status, System, Timestamp};

use crate::codec::decode_value;
use crate::error::{Error, Result};
use crate::keys::{self, Coordinates};
use crate::keys::{KeyReader, KeyWriter};
use crate::view::{scan_prefix, KeyValue};
use crate::{cf, Store};

/// A message that could not be decoded, kept with its reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterRow {
    /// The system of its topic.
    pub system: System,
    /// The counted reason.
    pub reason: DeadLetterReason,
    /// The explanation.
    pub detail: String,
    /// The original value.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// When it was dead-lettered (wall clock).
    pub dead_lettered_at: Timestamp,
}

/// Which divergent records to list.
#[derive(Clone, Debug, Default)]
pub struct DivergenceFilter {
    /// Only these entities, in this order; callers pass the configured entities.
    pub entities: Vec<String>,
    /// Only this status. Without it: every divergent status (pending excluded, it is lag).
    pub status: Option<Status>,
    /// Only mismatches of this target field.
    pub field: Option<String>,
}

/// One divergent record in a listing; also the API's wire type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DivergenceItem {
    /// The entity.
    pub entity: String,
    /// The join key.
    pub join_key: String,
    /// The status.
    pub status: Status,
    /// The differing target fields (mismatch, and pending records that differ in fields).
    pub fields: Vec<String>,
    /// Since when the sides differ.
    pub since: Option<Timestamp>,
    /// Why it diverges (`schemas/causes.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<tandem_core::record::Cause>,
    /// Native ids of the live records on the source side.
    pub source_ids: Vec<String>,
    /// Native ids of the live records on the target side.
    pub target_ids: Vec<String>,
    /// The values of each differing field on both sides (filled by the API, which knows
    /// the field rules).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub values: BTreeMap<String, FieldValues>,
    /// What the cause rests on (filled by the API, which knows the suspected mapping errors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause_detail: Option<tandem_core::record::CauseDetail>,
}

/// One field's values on both sides.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FieldValues {
    /// The source's value (the joined text for a joined list), `null` if absent.
    pub source: serde_json::Value,
    /// The target's value, `null` if absent.
    pub target: serde_json::Value,
}

/// A page of divergent records.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DivergencePage {
    /// The records of this page.
    pub items: Vec<DivergenceItem>,
    /// Pass back to get the next page; `None` on the last page.
    pub next_cursor: Option<Vec<u8>>,
}

/// One event in a record's history; also the API's wire type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryItem {
    /// The system it came from.
    pub system: System,
    /// The native record.
    pub native_id: String,
    /// Its event time.
    pub occurred_at: Timestamp,
    /// Where it was read.
    pub topic: String,
    /// Partition it was read from.
    pub partition: i32,
    /// Offset it was read at.
    pub offset: i64,
    /// Whether it changed state (`false`: older than the stored version).
    pub applied: bool,
    /// The event as received.
    pub event: serde_json::Value,
}

/// A consistent view of the store as of one committed batch.
pub struct ReadSnapshot<'a> {
    store: &'a Store,
    snapshot: Snapshot<'a>,
}

impl Store {
    /// Takes a snapshot for a consistent series of reads.
    pub fn read(&self) -> ReadSnapshot<'_> {
        ReadSnapshot {
            store: self,
            snapshot: self.db.snapshot(),
        }
    }
}

impl Store {
    /// The join keys of many native records at once (one batched read; for a re-evaluation
    /// that resolves the references of thousands of records).
    pub fn join_keys_many(
        &self,
        natives: &[(System, String, String)],
    ) -> Result<Vec<Option<String>>> {
        let mut keys: Vec<(usize, Vec<u8>)> = natives
            .iter()
            .enumerate()
            .map(|(index, (system, entity, native_id))| {
                (index, keys::encode_native(*system, entity, native_id))
            })
            .collect();
        keys.sort_by(|left, right| left.1.cmp(&right.1));
        let values = self.db.batched_multi_get_cf(
            self.cf(cf::JOIN_KEYS),
            keys.iter().map(|(_, key)| key),
            true,
        );
        let mut found = vec![None; natives.len()];
        for ((index, _), value) in keys.iter().zip(values) {
            let value = value.map_err(Error::rocksdb("read of the join-key index"))?;
            found[*index] = value
                .map(|bytes| keys::decode_join_key(&bytes))
                .transpose()?;
        }
        Ok(found)
    }
}

impl ReadSnapshot<'_> {
    fn get(&self, column_family: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.snapshot
            .get_cf(self.store.cf(column_family), key)
            .map_err(Error::rocksdb("snapshot read"))
    }

    pub(crate) fn scan_column(
        &self,
        column_family: &'static str,
        prefix: Vec<u8>,
        start: Vec<u8>,
    ) -> impl Iterator<Item = Result<KeyValue>> + '_ {
        self.scan(column_family, prefix, start)
    }

    fn scan(
        &self,
        column_family: &'static str,
        prefix: Vec<u8>,
        start: Vec<u8>,
    ) -> impl Iterator<Item = Result<KeyValue>> + '_ {
        scan_prefix(
            &self.store.db,
            self.store.cf(column_family),
            &self.snapshot,
            prefix,
            start,
        )
    }

    /// Clock, counters and summaries.
    pub fn apply_state(&self) -> Result<ApplyState> {
        match self.get(cf::META, b"apply_state")? {
            None => Ok(ApplyState::default()),
            Some(bytes) => decode_value(&bytes, cf::META),
        }
    }

    /// Next offsets of every partition ever applied.
    pub fn next_offsets(&self) -> Result<Vec<(String, i32, i64)>> {
        self.scan(cf::OFFSETS, Vec::new(), Vec::new())
            .map(|item| {
                let (key, value) = item?;
                let (topic, partition) = keys::decode_partition(&key)?;
                let next: crate::NextOffset = decode_value(&value, cf::OFFSETS)?;
                Ok((topic, partition, next.0))
            })
            .collect()
    }

    /// When the oldest current divergence of an entity began.
    pub fn oldest_divergence(&self, entity: &str) -> Result<Option<Timestamp>> {
        let prefix = keys::encode_entity_prefix(entity);
        match self.scan(cf::DIVERGENCE_AGE, prefix.clone(), prefix).next() {
            None => Ok(None),
            Some(item) => {
                let (key, _) = item?;
                Ok(Some(keys::decode_divergence_age(&key)?.1))
            }
        }
    }

    /// Since when the longest-waiting re-read waits (event time), if any waits.
    pub fn oldest_reread(&self) -> Result<Option<Timestamp>> {
        match self.scan(cf::REREAD_QUEUE, Vec::new(), Vec::new()).next() {
            None => Ok(None),
            Some(item) => {
                let (key, _) = item?;
                Ok(Some(keys::decode_reread_queue(&key)?.0))
            }
        }
    }

    /// The re-read row of a native record, if it waits for one.
    pub fn reread(
        &self,
        system: System,
        entity: &str,
        native_id: &str,
    ) -> Result<Option<crate::RereadRow>> {
        self.get(cf::REREADS, &keys::encode_native(system, entity, native_id))?
            .map(|bytes| decode_value(&bytes, cf::REREADS))
            .transpose()
    }

    /// The join key a native record belongs to.
    pub fn join_key(
        &self,
        system: System,
        entity: &str,
        native_id: &str,
    ) -> Result<Option<String>> {
        self.get(
            cf::JOIN_KEYS,
            &keys::encode_native(system, entity, native_id),
        )?
        .map(|bytes| keys::decode_join_key(&bytes))
        .transpose()
    }

    /// The stored row of a record.
    pub fn record(&self, entity: &str, join_key: &str) -> Result<Option<RecordRow>> {
        self.get(cf::RECORDS, &keys::encode_record(entity, join_key))?
            .map(|bytes| decode_value(&bytes, cf::RECORDS))
            .transpose()
    }

    /// Every record of an entity, in join-key order, still encoded (decode with
    /// [`decode_record`] where it suits, e.g. on several threads).
    pub fn encoded_records_of<'b>(
        &'b self,
        entity: &str,
    ) -> impl Iterator<Item = Result<(String, Vec<u8>)>> + 'b {
        let prefix = KeyWriter::new().str(entity).finish();
        self.scan(cf::RECORDS, prefix.clone(), prefix).map(|item| {
            let (key, value) = item?;
            let mut reader = KeyReader::new(&key, "records");
            let _entity = reader.str()?;
            let join_key = reader.str()?;
            reader.end()?;
            Ok((join_key, value.to_vec()))
        })
    }

    /// Every record of an entity, in join-key order.
    pub fn records_of<'b>(
        &'b self,
        entity: &str,
    ) -> impl Iterator<Item = Result<(String, RecordRow)>> + 'b {
        self.encoded_records_of(entity).map(|item| {
            let (join_key, bytes) = item?;
            Ok((join_key, decode_record(&bytes)?))
        })
    }

    /// Every event of a record's native records, from both systems, in event-time order.
    pub fn history(&self, entity: &str, row: &RecordRow) -> Result<Vec<HistoryItem>> {
        let mut items = Vec::new();
        for system in System::ALL {
            for side in row.side(system) {
                let prefix = keys::encode_history_prefix(entity, system, &side.native_id);
                for item in self.scan(cf::HISTORY, prefix.clone(), prefix) {
                    let (key, value) = item?;
                    let (system, native_id, occurred_at, coordinates) = keys::decode_history(&key)?;
                    let (outcome, payload) =
                        value.split_first().ok_or_else(|| Error::CorruptValue {
                            column_family: cf::HISTORY,
                            detail: format!("empty history entry at {coordinates}"),
                        })?;
                    let event = serde_json::from_slice(payload).unwrap_or(serde_json::Value::Null);
                    items.push(HistoryItem {
                        system,
                        native_id,
                        occurred_at,
                        topic: coordinates.topic,
                        partition: coordinates.partition,
                        offset: coordinates.offset,
                        applied: *outcome != 2,
                        event,
                    });
                }
            }
        }
        items.sort_by(|left, right| {
            (
                left.occurred_at,
                left.system,
                &left.topic,
                left.partition,
                left.offset,
            )
                .cmp(&(
                    right.occurred_at,
                    right.system,
                    &right.topic,
                    right.partition,
                    right.offset,
                ))
        });
        Ok(items)
    }

    /// A dead letter, by the coordinates it was read at.
    pub fn dead_letter(&self, coordinates: &Coordinates) -> Result<Option<DeadLetterRow>> {
        self.get(cf::DEAD_LETTERS, &keys::encode_coordinates(coordinates))?
            .map(|bytes| decode_value(&bytes, cf::DEAD_LETTERS))
            .transpose()
    }

    /// A page of divergent records, in (entity, status or field, join key) order.
    ///
    /// `cursor` is the `next_cursor` of the previous page. Every divergent record is reachable;
    /// nothing is sampled.
    pub fn divergences(
        &self,
        filter: &DivergenceFilter,
        cursor: Option<&[u8]>,
        limit: usize,
    ) -> Result<DivergencePage> {
        let mut items = Vec::new();
        let mut last_key: Option<Vec<u8>> = None;
        // Whether an entry past the page exists: only then is there a next page (a full last
        // page has no cursor, so a client never asks for an empty one).
        let mut more = false;
        'entities: for entity in &filter.entities {
            let prefixes: Vec<(&'static str, Vec<u8>)> = match (&filter.field, filter.status) {
                (Some(field), _) => vec![(
                    cf::FIELD_MISMATCHES,
                    keys::encode_field_prefix(entity, field),
                )],
                (None, Some(status)) => vec![(
                    cf::DIVERGENCES,
                    keys::encode_divergence_status_prefix(entity, status),
                )],
                (None, None) => Status::ALL
                    .into_iter()
                    .filter(|status| status.is_divergence())
                    .map(|status| {
                        (
                            cf::DIVERGENCES,
                            keys::encode_divergence_status_prefix(entity, status),
                        )
                    })
                    .collect(),
            };
            for (column_family, prefix) in prefixes {
                let start = match cursor {
                    Some(cursor) if cursor >= prefix.as_slice() => {
                        if cursor >= keys::prefix_end(&prefix).as_slice() {
                            continue;
                        }
                        let mut after = cursor.to_vec();
                        after.push(0);
                        after
                    }
                    _ => prefix.clone(),
                };
                for item in self.scan(column_family, prefix.clone(), start) {
                    if items.len() >= limit {
                        more = true;
                        break 'entities;
                    }
                    let (key, _) = item?;
                    let join_key = if column_family == cf::FIELD_MISMATCHES {
                        keys::decode_field_mismatch(&key)?.2
                    } else {
                        keys::decode_divergence(&key)?.2
                    };
                    let row =
                        self.record(entity, &join_key)?
                            .ok_or_else(|| Error::CorruptValue {
                                column_family,
                                detail: format!(
                                    "index entry for `{entity}` `{join_key}` has no record"
                                ),
                            })?;
                    items.push(divergence_item(entity, join_key, &row)?);
                    last_key = Some(key.to_vec());
                }
            }
        }
        let next_cursor = if more { last_key } else { None };
        Ok(DivergencePage { items, next_cursor })
    }
}

fn divergence_item(entity: &str, join_key: String, row: &RecordRow) -> Result<DivergenceItem> {
    let status = row.status.status.ok_or_else(|| Error::CorruptValue {
        column_family: cf::RECORDS,
        detail: format!("indexed record `{entity}` `{join_key}` has no status"),
    })?;
    let live_ids = |system: System| {
        row.side(system)
            .iter()
            .filter(|side| !side.deleted)
            .map(|side| side.native_id.clone())
            .collect()
    };
    Ok(DivergenceItem {
        entity: entity.to_owned(),
        join_key,
        status,
        fields: row.status.differing_fields.clone(),
        since: row.status.since,
        cause: row.status.cause,
        source_ids: live_ids(System::Source),
        target_ids: live_ids(System::Target),
        values: BTreeMap::new(),
        cause_detail: None,
    })
}

/// Decodes a record row read by [`ReadSnapshot::encoded_records_of`].
pub fn decode_record(bytes: &[u8]) -> Result<RecordRow> {
    decode_value(bytes, cf::RECORDS)
}
