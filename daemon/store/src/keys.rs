//! Every key layout of the store, and the codec they are built with.
//!
//! Keys are tuples encoded so that byte order equals tuple order: strings are escaped
//! (`0x00` becomes `0x00 0xFF`) and terminated by `0x00 0x01`, signed integers are big-endian
//! with the sign bit flipped. Nobody outside this module builds or parses a raw key.

use tandem_core::{Status, System, Timestamp};

use crate::error::{Error, Result};

/// Builds a key from its parts.
#[derive(Default)]
pub(crate) struct KeyWriter {
    bytes: Vec<u8>,
}

impl KeyWriter {
    pub(crate) fn new() -> Self {
        KeyWriter {
            bytes: Vec::with_capacity(64),
        }
    }

    pub(crate) fn str(mut self, value: &str) -> Self {
        for byte in value.bytes() {
            self.bytes.push(byte);
            if byte == 0 {
                self.bytes.push(0xFF);
            }
        }
        self.bytes.extend_from_slice(&[0x00, 0x01]);
        self
    }

    pub(crate) fn u8(mut self, value: u8) -> Self {
        self.bytes.push(value);
        self
    }

    pub(crate) fn i32(mut self, value: i32) -> Self {
        self.bytes
            .extend_from_slice(&((value as u32) ^ (1 << 31)).to_be_bytes());
        self
    }

    pub(crate) fn u32(mut self, value: u32) -> Self {
        self.bytes.extend_from_slice(&value.to_be_bytes());
        self
    }

    pub(crate) fn i64(mut self, value: i64) -> Self {
        self.bytes
            .extend_from_slice(&((value as u64) ^ (1 << 63)).to_be_bytes());
        self
    }

    pub(crate) fn finish(self) -> Vec<u8> {
        self.bytes
    }
}

/// Reads a key back into its parts, in the order they were written.
pub(crate) struct KeyReader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> KeyReader<'a> {
    pub(crate) fn new(bytes: &'a [u8], what: &'static str) -> Self {
        KeyReader { bytes, what }
    }

    fn corrupt(&self, detail: &str) -> Error {
        Error::CorruptKey {
            column_family: self.what,
            detail: detail.to_owned(),
        }
    }

    pub(crate) fn str(&mut self) -> Result<String> {
        let mut value = Vec::new();
        let mut index = 0;
        loop {
            match (self.bytes.get(index), self.bytes.get(index + 1)) {
                (Some(0x00), Some(0x01)) => break,
                (Some(0x00), Some(0xFF)) => {
                    value.push(0);
                    index += 2;
                }
                (Some(byte), _) => {
                    value.push(*byte);
                    index += 1;
                }
                (None, _) => return Err(self.corrupt("unterminated string")),
            }
        }
        self.bytes = &self.bytes[index + 2..];
        String::from_utf8(value).map_err(|_| self.corrupt("string is not UTF-8"))
    }

    pub(crate) fn u8(&mut self) -> Result<u8> {
        let (&first, rest) = self
            .bytes
            .split_first()
            .ok_or_else(|| self.corrupt("missing byte"))?;
        self.bytes = rest;
        Ok(first)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        if self.bytes.len() < N {
            return Err(self.corrupt("key too short"));
        }
        let (head, rest) = self.bytes.split_at(N);
        self.bytes = rest;
        Ok(head
            .try_into()
            .expect("invariant: split_at returned exactly N bytes"))
    }

    pub(crate) fn i32(&mut self) -> Result<i32> {
        Ok((u32::from_be_bytes(self.array()?) ^ (1 << 31)) as i32)
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(crate) fn is_at_end(&self) -> bool {
        self.bytes.is_empty()
    }

    pub(crate) fn i64(&mut self) -> Result<i64> {
        Ok((u64::from_be_bytes(self.array()?) ^ (1 << 63)) as i64)
    }

    pub(crate) fn system(&mut self) -> Result<System> {
        let code = self.u8()?;
        System::from_code(code).ok_or_else(|| self.corrupt("unknown system code"))
    }

    pub(crate) fn status(&mut self) -> Result<Status> {
        let code = self.u8()?;
        Status::ALL
            .get(usize::from(code))
            .copied()
            .ok_or_else(|| self.corrupt("unknown status code"))
    }

    pub(crate) fn timestamp(&mut self) -> Result<Timestamp> {
        Ok(Timestamp::from_unix_nanos(self.i64()?))
    }

    pub(crate) fn end(&self) -> Result<()> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(self.corrupt("trailing bytes"))
        }
    }
}

/// A Kafka position: topic, partition, offset. Used as the key of logged messages.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Coordinates {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: i32,
    /// Offset of the message.
    pub offset: i64,
}

impl std::fmt::Display for Coordinates {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "{}/{}@{}",
            self.topic, self.partition, self.offset
        )
    }
}

pub(crate) fn encode_partition(topic: &str, partition: i32) -> Vec<u8> {
    KeyWriter::new().str(topic).i32(partition).finish()
}

pub(crate) fn decode_partition(key: &[u8]) -> Result<(String, i32)> {
    let mut reader = KeyReader::new(key, "offsets");
    let parts = (reader.str()?, reader.i32()?);
    reader.end()?;
    Ok(parts)
}

pub(crate) fn encode_coordinates(coordinates: &Coordinates) -> Vec<u8> {
    KeyWriter::new()
        .str(&coordinates.topic)
        .i32(coordinates.partition)
        .i64(coordinates.offset)
        .finish()
}

pub(crate) fn decode_coordinates(key: &[u8], what: &'static str) -> Result<Coordinates> {
    let mut reader = KeyReader::new(key, what);
    let coordinates = Coordinates {
        topic: reader.str()?,
        partition: reader.i32()?,
        offset: reader.i64()?,
    };
    reader.end()?;
    Ok(coordinates)
}

pub(crate) fn encode_event_id(system: System, event_id: &str) -> Vec<u8> {
    KeyWriter::new().u8(system.code()).str(event_id).finish()
}

pub(crate) fn encode_native(system: System, entity: &str, native_id: &str) -> Vec<u8> {
    KeyWriter::new()
        .u8(system.code())
        .str(entity)
        .str(native_id)
        .finish()
}

/// Prefix of every history entry of one native record.
pub(crate) fn encode_history_prefix(entity: &str, system: System, native_id: &str) -> Vec<u8> {
    KeyWriter::new()
        .str(entity)
        .u8(system.code())
        .str(native_id)
        .finish()
}

/// A history entry: the native record, then event time and position for a stable order.
pub(crate) fn encode_history(
    entity: &str,
    system: System,
    native_id: &str,
    occurred_at: Timestamp,
    coordinates: &Coordinates,
    part: u32,
) -> Vec<u8> {
    let mut key = encode_history_prefix(entity, system, native_id);
    key.extend(
        KeyWriter::new()
            .i64(occurred_at.unix_nanos())
            .str(&coordinates.topic)
            .i32(coordinates.partition)
            .i64(coordinates.offset)
            .u32(part)
            .finish(),
    );
    key
}

pub(crate) fn decode_history(key: &[u8]) -> Result<(System, String, Timestamp, Coordinates)> {
    let mut reader = KeyReader::new(key, "history");
    let _entity = reader.str()?;
    let system = reader.system()?;
    let native_id = reader.str()?;
    let occurred_at = reader.timestamp()?;
    let coordinates = Coordinates {
        topic: reader.str()?,
        partition: reader.i32()?,
        offset: reader.i64()?,
    };
    // Schema version 2 wrote no part: one event per message.
    if !reader.is_at_end() {
        let _part = reader.u32()?;
    }
    reader.end()?;
    Ok((system, native_id, occurred_at, coordinates))
}

pub(crate) fn encode_entity_prefix(entity: &str) -> Vec<u8> {
    KeyWriter::new().str(entity).finish()
}

pub(crate) fn encode_record(entity: &str, join_key: &str) -> Vec<u8> {
    KeyWriter::new().str(entity).str(join_key).finish()
}

/// Divergent records by status: `entity, status, join key`.
pub(crate) fn encode_divergence(entity: &str, status: Status, join_key: &str) -> Vec<u8> {
    KeyWriter::new()
        .str(entity)
        .u8(status.index() as u8)
        .str(join_key)
        .finish()
}

pub(crate) fn encode_divergence_status_prefix(entity: &str, status: Status) -> Vec<u8> {
    KeyWriter::new()
        .str(entity)
        .u8(status.index() as u8)
        .finish()
}

pub(crate) fn decode_divergence(key: &[u8]) -> Result<(String, Status, String)> {
    let mut reader = KeyReader::new(key, "divergences");
    let parts = (reader.str()?, reader.status()?, reader.str()?);
    reader.end()?;
    Ok(parts)
}

/// Mismatched records by field: `entity, field, join key`.
pub(crate) fn encode_field_mismatch(entity: &str, field: &str, join_key: &str) -> Vec<u8> {
    KeyWriter::new()
        .str(entity)
        .str(field)
        .str(join_key)
        .finish()
}

pub(crate) fn encode_field_prefix(entity: &str, field: &str) -> Vec<u8> {
    KeyWriter::new().str(entity).str(field).finish()
}

pub(crate) fn decode_field_mismatch(key: &[u8]) -> Result<(String, String, String)> {
    let mut reader = KeyReader::new(key, "field_mismatches");
    let parts = (reader.str()?, reader.str()?, reader.str()?);
    reader.end()?;
    Ok(parts)
}

/// Divergent records by age: `entity, since, join key`; the first key is the oldest.
pub(crate) fn encode_divergence_age(entity: &str, since: Timestamp, join_key: &str) -> Vec<u8> {
    KeyWriter::new()
        .str(entity)
        .i64(since.unix_nanos())
        .str(join_key)
        .finish()
}

pub(crate) fn decode_divergence_age(key: &[u8]) -> Result<(String, Timestamp, String)> {
    let mut reader = KeyReader::new(key, "divergence_age");
    let parts = (reader.str()?, reader.timestamp()?, reader.str()?);
    reader.end()?;
    Ok(parts)
}

/// Pending records by the time their grace ends: `due, entity, join key`.
pub(crate) fn encode_pending_due(due: Timestamp, entity: &str, join_key: &str) -> Vec<u8> {
    KeyWriter::new()
        .i64(due.unix_nanos())
        .str(entity)
        .str(join_key)
        .finish()
}

pub(crate) fn decode_pending_due(key: &[u8]) -> Result<(Timestamp, String, String)> {
    let mut reader = KeyReader::new(key, "pending_due");
    let parts = (reader.timestamp()?, reader.str()?, reader.str()?);
    reader.end()?;
    Ok(parts)
}

/// A native record seen by a snapshot run: `system, entity, run, native id`.
pub(crate) fn encode_snapshot_member(
    system: System,
    entity: &str,
    snapshot_id: &str,
    native_id: &str,
) -> Vec<u8> {
    KeyWriter::new()
        .u8(system.code())
        .str(entity)
        .str(snapshot_id)
        .str(native_id)
        .finish()
}

/// Prefix of every native record of a system's entity in the join-key index.
pub(crate) fn encode_native_prefix(system: System, entity: &str) -> Vec<u8> {
    KeyWriter::new().u8(system.code()).str(entity).finish()
}

pub(crate) fn decode_native(key: &[u8]) -> Result<(System, String, String)> {
    let mut reader = KeyReader::new(key, "join_keys");
    let parts = (reader.system()?, reader.str()?, reader.str()?);
    reader.end()?;
    Ok(parts)
}

/// A native record on a topic-partition: `topic, partition, system, entity, native id`.
pub(crate) fn encode_partition_member(
    topic: &str,
    partition: i32,
    system: System,
    entity: &str,
    native_id: &str,
) -> Vec<u8> {
    let mut key = encode_partition(topic, partition);
    key.extend(
        KeyWriter::new()
            .u8(system.code())
            .str(entity)
            .str(native_id)
            .finish(),
    );
    key
}

pub(crate) fn decode_partition_member(key: &[u8]) -> Result<(System, String, String)> {
    let mut reader = KeyReader::new(key, "partition_members");
    let (_topic, _partition) = (reader.str()?, reader.i32()?);
    let parts = (reader.system()?, reader.str()?, reader.str()?);
    reader.end()?;
    Ok(parts)
}

/// A join key as stored in the join-key index.
pub(crate) fn decode_join_key(bytes: &[u8]) -> Result<String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| Error::CorruptValue {
        column_family: "join_keys",
        detail: "join key is not UTF-8".to_owned(),
    })
}

/// The prefix of the records referencing a native record: `system, entity, native id`.
pub(crate) fn encode_referenced(system: System, entity: &str, native_id: &str) -> Vec<u8> {
    KeyWriter::new()
        .u8(system.code())
        .str(entity)
        .str(native_id)
        .finish()
}

/// A record that looked up a native record through a `ref` field: the referenced record,
/// then `referencing entity, join key`.
pub(crate) fn encode_reference(reference: &tandem_core::Reference) -> Vec<u8> {
    let mut key = encode_referenced(reference.system, &reference.entity, &reference.native_id);
    key.extend(
        KeyWriter::new()
            .str(&reference.from_entity)
            .str(&reference.from_key)
            .finish(),
    );
    key
}

pub(crate) fn decode_reference(key: &[u8]) -> Result<(String, String)> {
    let mut reader = KeyReader::new(key, "references");
    let (_system, _entity, _native_id) = (reader.system()?, reader.str()?, reader.str()?);
    let parts = (reader.str()?, reader.str()?);
    reader.end()?;
    Ok(parts)
}

/// A record waiting for a re-read, in queue order: `since, system, entity, native id`.
pub(crate) fn encode_reread_queue(
    since: Timestamp,
    system: System,
    entity: &str,
    native_id: &str,
) -> Vec<u8> {
    KeyWriter::new()
        .i64(since.unix_nanos())
        .u8(system.code())
        .str(entity)
        .str(native_id)
        .finish()
}

pub(crate) fn decode_reread_queue(key: &[u8]) -> Result<(Timestamp, System, String, String)> {
    let mut reader = KeyReader::new(key, "reread_queue");
    let parts = (
        reader.timestamp()?,
        reader.system()?,
        reader.str()?,
        reader.str()?,
    );
    reader.end()?;
    Ok(parts)
}

/// A snapshot request in the control outbox: `requested at, system, entity`.
pub(crate) fn encode_control(requested_at: Timestamp, system: System, entity: &str) -> Vec<u8> {
    KeyWriter::new()
        .i64(requested_at.unix_nanos())
        .u8(system.code())
        .str(entity)
        .finish()
}

/// The smallest key strictly greater than every key starting with `prefix`.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return end;
        }
    }
    // Only reachable for an all-0xFF prefix, which no encoder produces.
    vec![0xFF; prefix.len() + 1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_layout_round_trips() {
        let coordinates = Coordinates {
            topic: "crm.source.changes".to_owned(),
            partition: 7,
            offset: 123_456,
        };
        assert_eq!(
            decode_coordinates(&encode_coordinates(&coordinates), "events").unwrap(),
            coordinates
        );
        assert_eq!(
            decode_partition(&encode_partition("t\0x", -1)).unwrap(),
            ("t\0x".to_owned(), -1)
        );
        let at = Timestamp::from_unix_nanos(-5);
        assert_eq!(
            decode_history(&encode_history(
                "deal",
                System::Target,
                "T-1",
                at,
                &coordinates,
                3
            ))
            .unwrap(),
            (System::Target, "T-1".to_owned(), at, coordinates.clone())
        );
        // Schema version 2 keys had no part; they still read.
        let version_2 = [
            encode_history_prefix("deal", System::Target, "T-1"),
            KeyWriter::new()
                .i64(at.unix_nanos())
                .str(&coordinates.topic)
                .i32(coordinates.partition)
                .i64(coordinates.offset)
                .finish(),
        ]
        .concat();
        assert_eq!(
            decode_history(&version_2).unwrap(),
            (System::Target, "T-1".to_owned(), at, coordinates.clone())
        );
        // Parts of one message sort in order, after the message's earlier offset.
        let key = |offset: i64, part: u32| {
            let coordinates = Coordinates {
                offset,
                ..coordinates.clone()
            };
            encode_history("deal", System::Target, "T-1", at, &coordinates, part)
        };
        assert!(key(1, 0) < key(1, 1) && key(1, 1) < key(2, 0));
        assert_eq!(
            decode_divergence(&encode_divergence("deal", Status::Duplicate, "L\u{1}")).unwrap(),
            ("deal".to_owned(), Status::Duplicate, "L\u{1}".to_owned())
        );
        assert_eq!(
            decode_field_mismatch(&encode_field_mismatch("deal", "amount", "L1")).unwrap(),
            ("deal".to_owned(), "amount".to_owned(), "L1".to_owned())
        );
        assert_eq!(
            decode_divergence_age(&encode_divergence_age("deal", at, "L1")).unwrap(),
            ("deal".to_owned(), at, "L1".to_owned())
        );
        assert_eq!(
            decode_pending_due(&encode_pending_due(at, "deal", "L1")).unwrap(),
            (at, "deal".to_owned(), "L1".to_owned())
        );
        assert_eq!(
            decode_native(&encode_native(System::Source, "deal", "O-1")).unwrap(),
            (System::Source, "deal".to_owned(), "O-1".to_owned())
        );
        assert!(encode_native(System::Source, "deal", "O-1")
            .starts_with(&encode_native_prefix(System::Source, "deal")));
        assert!(!encode_native(System::Source, "deals", "O-1")
            .starts_with(&encode_native_prefix(System::Source, "deal")));
        assert_eq!(
            decode_reread_queue(&encode_reread_queue(at, System::Target, "deal", "9")).unwrap(),
            (at, System::Target, "deal".to_owned(), "9".to_owned())
        );
    }

    #[test]
    fn corrupt_keys_are_errors_not_panics() {
        assert!(decode_partition(b"no terminator").is_err());
        assert!(decode_partition(&KeyWriter::new().str("t").finish()).is_err());
        let mut trailing = encode_partition("t", 1);
        trailing.push(9);
        assert!(decode_partition(&trailing).is_err());
        let bad_status = KeyWriter::new().str("e").u8(42).str("k").finish();
        assert!(decode_divergence(&bad_status).is_err());
    }

    #[test]
    fn prefix_end_bounds_the_prefix() {
        let prefix = encode_entity_prefix("contact");
        let inside = encode_record("contact", "\u{10FFFF}");
        let after = encode_entity_prefix("contacts");
        assert!(inside.as_slice() < prefix_end(&prefix).as_slice());
        assert!(after.as_slice() >= prefix_end(&prefix).as_slice());
    }

    proptest! {
        #[test]
        fn string_order_is_byte_order(left in ".*", right in ".*", left_tail in any::<i64>(), right_tail in any::<i64>()) {
            let left_key = KeyWriter::new().str(&left).i64(left_tail).finish();
            let right_key = KeyWriter::new().str(&right).i64(right_tail).finish();
            prop_assert_eq!((left.as_bytes(), left_tail).cmp(&(right.as_bytes(), right_tail)), left_key.cmp(&right_key));
        }

        #[test]
        fn integers_order_and_round_trip(left in any::<i64>(), right in any::<i64>(), small in any::<i32>()) {
            let left_key = KeyWriter::new().i64(left).finish();
            let right_key = KeyWriter::new().i64(right).finish();
            prop_assert_eq!(left.cmp(&right), left_key.cmp(&right_key));
            let both = KeyWriter::new().i32(small).i64(left).finish();
            let mut reader = KeyReader::new(&both, "test");
            prop_assert_eq!(reader.i32().unwrap(), small);
            prop_assert_eq!(reader.i64().unwrap(), left);
        }

        #[test]
        fn strings_round_trip(value in ".*", other in ".*") {
            let key = encode_record(&value, &other);
            let mut reader = KeyReader::new(&key, "records");
            prop_assert_eq!(reader.str().unwrap(), value);
            prop_assert_eq!(reader.str().unwrap(), other);
            prop_assert!(reader.end().is_ok());
        }
    }
}
