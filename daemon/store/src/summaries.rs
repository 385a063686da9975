//! The report's history: a summary of every entity's counts, snapshotted at an interval and
//! kept, for trends of parity and of each status.

use std::collections::BTreeMap;

use rocksdb::IteratorMode;

use crate::batch::OrderedBatch;
use serde::{Deserialize, Serialize};
use tandem_core::{Status, Timestamp};

use crate::codec::{decode_value, encode_value};
use crate::error::{Error, Result};
use crate::keys::{KeyReader, KeyWriter};
use crate::{cf, Store};

/// One entity's counts at one moment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EntityCounts {
    /// Records counted.
    pub records: u64,
    /// in_sync / records (1.0 without records).
    pub parity: f64,
    /// Records per status (statuses without records left out).
    pub by_status: BTreeMap<Status, u64>,
}

/// Every entity's counts at one moment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SummarySnapshot {
    /// Wall-clock time it was taken.
    pub at: Timestamp,
    /// The reconciliation clock then (event time).
    pub clock: Option<Timestamp>,
    /// Per entity.
    pub entities: BTreeMap<String, EntityCounts>,
}

impl Store {
    /// Keeps a summary snapshot.
    pub fn record_summary(&self, snapshot: &SummarySnapshot) -> Result<()> {
        let key = KeyWriter::new().i64(snapshot.at.unix_nanos()).finish();
        let mut batch = OrderedBatch::default();
        batch.put_cf(cf::REPORT_HISTORY, key, encode_value(snapshot));
        self.write(batch, "write of a report summary")
    }

    /// The time of the newest kept summary, if any.
    pub fn latest_summary_at(&self) -> Result<Option<Timestamp>> {
        let mut newest = self
            .db
            .iterator_cf(self.cf(cf::REPORT_HISTORY), IteratorMode::End);
        match newest.next() {
            None => Ok(None),
            Some(item) => {
                let (key, _) = item.map_err(Error::rocksdb("read of the report history"))?;
                let mut reader = KeyReader::new(&key, "report_history");
                let at = reader.i64()?;
                reader.end()?;
                Ok(Some(Timestamp::from_unix_nanos(at)))
            }
        }
    }

    /// Summaries taken at or after `since`, oldest first, at most `limit`; with `entity`,
    /// only that entity's counts.
    pub fn summaries(
        &self,
        since: Timestamp,
        entity: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SummarySnapshot>> {
        let start = KeyWriter::new().i64(since.unix_nanos()).finish();
        let mut found = Vec::new();
        for item in self.db.iterator_cf(
            self.cf(cf::REPORT_HISTORY),
            IteratorMode::From(&start, rocksdb::Direction::Forward),
        ) {
            if found.len() >= limit {
                break;
            }
            let (_, value) = item.map_err(Error::rocksdb("scan of the report history"))?;
            let mut snapshot: SummarySnapshot = decode_value(&value, cf::REPORT_HISTORY)?;
            if let Some(entity) = entity {
                snapshot.entities.retain(|name, _| name == entity);
            }
            found.push(snapshot);
        }
        Ok(found)
    }
}
