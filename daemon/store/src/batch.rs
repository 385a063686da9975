//! The writes of one commit, sorted before they reach RocksDB.

use rocksdb::WriteBatch;

use crate::{cf, Store};

/// The writes of one commit, put into the RocksDB batch sorted by column family and key.
///
/// A memtable is a skip list; inserting keys in order lets each insert start from where the
/// previous one ended instead of searching from the top, which halves the cost of a commit
/// whose keys (event ids, join keys) are otherwise random. The sort is stable, so two writes
/// of one key keep their order.
#[derive(Debug, Default)]
pub(crate) struct OrderedBatch {
    writes: Vec<PendingWrite>,
}

/// One put (`value` is `Some`) or delete of an [`OrderedBatch`].
#[derive(Debug)]
struct PendingWrite {
    column_family: &'static str,
    key: Vec<u8>,
    value: Option<Vec<u8>>,
}

impl OrderedBatch {
    pub(crate) fn put_cf(
        &mut self,
        column_family: &'static str,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) {
        self.writes.push(PendingWrite {
            column_family,
            key: key.into(),
            value: Some(value.into()),
        });
    }

    pub(crate) fn delete_cf(&mut self, column_family: &'static str, key: impl Into<Vec<u8>>) {
        self.writes.push(PendingWrite {
            column_family,
            key: key.into(),
            value: None,
        });
    }

    /// Puts the writes in the order they reach RocksDB (by column family, then key).
    fn sort(&mut self) {
        self.writes.sort_by(|left, right| {
            (left.column_family, &left.key).cmp(&(right.column_family, &right.key))
        });
    }

    pub(crate) fn into_write_batch(mut self, store: &Store) -> WriteBatch {
        self.sort();
        let mut batch = WriteBatch::default();
        for write in self.writes {
            let handle = store.cf(write.column_family);
            match write.value {
                Some(value) => batch.put_cf(handle, write.key, value),
                None => batch.delete_cf(handle, write.key),
            }
        }
        batch
    }

    /// The writes as the changelog carries them, in the order they reach RocksDB.
    ///
    /// The layout is tandem's own, not RocksDB's batch format, whose column families are
    /// numbered in the order a store created them (two stores of different histories number
    /// them differently): a version byte, then per write the column family's index in
    /// `cf::ALL`, 1 for a put or 0 for a delete, the key and the value, each length-prefixed
    /// (u32, big-endian).
    pub(crate) fn encode(&mut self) -> Vec<u8> {
        self.sort();
        let size: usize = self
            .writes
            .iter()
            .map(|write| 10 + write.key.len() + write.value.as_ref().map_or(0, Vec::len))
            .sum();
        let mut encoded = Vec::with_capacity(1 + size);
        encoded.push(ENCODING_VERSION);
        for write in &self.writes {
            let index = cf::ALL
                .iter()
                .position(|name| *name == write.column_family)
                .expect("invariant: writes name column families of cf::ALL");
            encoded.push(index as u8);
            encoded.push(u8::from(write.value.is_some()));
            push_bytes(&mut encoded, &write.key);
            if let Some(value) = &write.value {
                push_bytes(&mut encoded, value);
            }
        }
        encoded
    }

    /// The writes of [`OrderedBatch::encode`]'s bytes; `Err` says what is wrong with them.
    pub(crate) fn decode(mut bytes: &[u8]) -> Result<OrderedBatch, String> {
        match bytes.split_first() {
            Some((&ENCODING_VERSION, rest)) => bytes = rest,
            Some((version, _)) => {
                return Err(format!(
                    "encoding version {version}, this tandem reads version {ENCODING_VERSION}"
                ))
            }
            None => return Err("no bytes".to_owned()),
        }
        let mut batch = OrderedBatch::default();
        while let Some((&index, rest)) = bytes.split_first() {
            let column_family = *cf::ALL
                .get(usize::from(index))
                .ok_or_else(|| format!("column family {index} does not exist"))?;
            let (&kind, rest) = rest
                .split_first()
                .ok_or("a write ends after its column family")?;
            let (key, rest) = take_bytes(rest)?;
            let (value, rest) = match kind {
                0 => (None, rest),
                1 => {
                    let (value, rest) = take_bytes(rest)?;
                    (Some(value.to_vec()), rest)
                }
                other => return Err(format!("write kind {other} is neither put nor delete")),
            };
            batch.writes.push(PendingWrite {
                column_family,
                key: key.to_vec(),
                value,
            });
            bytes = rest;
        }
        Ok(batch)
    }
}

/// The version of [`OrderedBatch::encode`]'s layout.
const ENCODING_VERSION: u8 = 1;

fn push_bytes(encoded: &mut Vec<u8>, bytes: &[u8]) {
    let length = u32::try_from(bytes.len()).expect("invariant: keys and values are under 4 GiB");
    encoded.extend_from_slice(&length.to_be_bytes());
    encoded.extend_from_slice(bytes);
}

fn take_bytes(bytes: &[u8]) -> Result<(&[u8], &[u8]), String> {
    let (length, rest) = bytes
        .split_first_chunk::<4>()
        .ok_or("a length is cut short")?;
    let length = u32::from_be_bytes(*length) as usize;
    if rest.len() < length {
        return Err(format!("{length} bytes announced, {} left", rest.len()));
    }
    Ok(rest.split_at(length))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_writes_decode_to_the_same_writes_in_rocksdb_order() {
        let mut batch = OrderedBatch::default();
        batch.put_cf(cf::RECORDS, b"b".to_vec(), b"row".to_vec());
        batch.delete_cf(cf::DEDUPE, b"gone".to_vec());
        batch.put_cf(cf::RECORDS, b"a".to_vec(), Vec::new());
        let encoded = batch.encode();
        // Hand-worked: version, then dedupe's delete (index 3), then records (index 5) a, b.
        let mut expected = vec![1, 3, 0, 0, 0, 0, 4];
        expected.extend_from_slice(b"gone");
        expected.extend_from_slice(&[5, 1, 0, 0, 0, 1, b'a', 0, 0, 0, 0]);
        expected.extend_from_slice(&[5, 1, 0, 0, 0, 1, b'b', 0, 0, 0, 3]);
        expected.extend_from_slice(b"row");
        assert_eq!(encoded, expected);
        let mut decoded = OrderedBatch::decode(&encoded).unwrap();
        assert_eq!(decoded.encode(), encoded);
    }

    #[test]
    fn damaged_changelog_bytes_are_refused_with_what_is_wrong() {
        assert!(OrderedBatch::decode(&[]).unwrap_err().contains("no bytes"));
        assert!(OrderedBatch::decode(&[2])
            .unwrap_err()
            .contains("version 2"));
        assert!(OrderedBatch::decode(&[1, 99, 1])
            .unwrap_err()
            .contains("column family 99"));
        assert!(OrderedBatch::decode(&[1, 5, 1, 0, 0, 0, 9, b'k'])
            .unwrap_err()
            .contains("9 bytes announced"));
        assert!(OrderedBatch::decode(&[1, 5, 7, 0, 0, 0, 0])
            .unwrap_err()
            .contains("kind 7"));
    }
}
