//! Committed offsets and group records: written as records to the internal,
//! compacted `__consumer_offsets` topic (so they are durable, and will
//! replicate with it), and materialized in the broker-wide RocksDB column
//! family `groups` for lookups.
//!
//! A commit appends first, then applies to RocksDB together with how far
//! that partition of `__consumer_offsets` has been applied. On start every
//! partition is replayed from that point, so a crash between the two steps
//! loses nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};
use tributary_proto::batch::{self, BatchBuilder, Batches, Compression};

use crate::error::{Error, Result};
use crate::store::Store;
use crate::topics::{NewTopic, Topics};

pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
const CF: &str = "groups";

/// One committed offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    pub offset: i64,
    #[serde(default)]
    pub metadata: String,
    pub commit_ms: i64,
}

/// What survives of a group between restarts besides its offsets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub generation: i32,
    pub assignor: String,
    /// When the group last became empty (for offset expiry).
    pub empty_since_ms: Option<i64>,
}

fn offset_key(group: &str, topic: &str, partition: u32) -> Vec<u8> {
    format!("o\0{group}\0{topic}\0{partition:010}").into_bytes()
}

fn offset_prefix(group: &str) -> Vec<u8> {
    format!("o\0{group}\0").into_bytes()
}

fn group_key(group: &str) -> Vec<u8> {
    format!("g\0{group}").into_bytes()
}

fn applied_key(partition: u32) -> Vec<u8> {
    format!("a\0{partition:010}").into_bytes()
}

fn storage(e: impl std::fmt::Display) -> Error {
    Error::Storage(format!("group offsets: {e}"))
}

pub struct OffsetStore {
    store: Arc<Store>,
    partitions: u32,
    /// One writer at a time: keeps appends and their application in order.
    write: Mutex<()>,
}

impl OffsetStore {
    /// Opens the store and replays what `__consumer_offsets` holds beyond
    /// what was applied.
    pub fn open(store: Arc<Store>, topics: &Topics, partitions: u32) -> Result<OffsetStore> {
        store.create_cf(CF)?;
        let s = OffsetStore { store, partitions: partitions.max(1), write: Mutex::new(()) };
        if let Ok(topic) = topics.get(OFFSETS_TOPIC) {
            for p in topic.partitions() {
                s.replay(&p)?;
            }
        }
        Ok(s)
    }

    fn replay(&self, partition: &crate::partition::Partition) -> Result<()> {
        let cf = self.store.cf(CF)?;
        let mut at = match self.store.db().get_cf(&cf, applied_key(partition.id))? {
            Some(v) => i64::from_be_bytes(v.as_slice().try_into().map_err(storage)?),
            None => 0,
        };
        loop {
            let read = match partition.read(at, 1 << 20) {
                Ok(r) => r,
                // Compacted or deleted below: start at the log start.
                Err(Error::OffsetOutOfRange { start, end, .. }) if at < start && start < end => {
                    at = start;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if read.records.is_empty() {
                return Ok(());
            }
            let mut w = WriteBatch::default();
            let mut pos = 0;
            for b in Batches::new(&read.records) {
                let (h, slice) = b.map_err(storage)?;
                let bytes = read.records.slice(pos..pos + slice.len());
                pos += slice.len();
                for r in batch::records(&bytes).map_err(storage)? {
                    let r = r.map_err(storage)?;
                    if r.offset < at {
                        continue;
                    }
                    if let Some(k) = r.key {
                        match r.value {
                            Some(v) => w.put_cf(&cf, k, v),
                            None => w.delete_cf(&cf, k),
                        }
                    }
                }
                at = h.next_offset();
            }
            w.put_cf(&cf, applied_key(partition.id), at.to_be_bytes());
            self.store.write(w)?;
        }
    }

    fn ensure_topic(&self, topics: &Topics) -> Result<()> {
        if topics.get(OFFSETS_TOPIC).is_ok() {
            return Ok(());
        }
        let configs: BTreeMap<String, String> = [
            ("cleanup.policy", "compact"),
            // Every commit is on disk before the consumer hears "committed".
            ("flush.messages", "1"),
            ("segment.bytes", "104857600"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let new = NewTopic {
            name: OFFSETS_TOPIC.into(),
            partitions: self.partitions,
            replication_factor: 1,
            configs,
        };
        match topics.create_internal(new, crate::now_ms()) {
            Ok(()) | Err(Error::TopicExists(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The `__consumer_offsets` partition a group's records go to.
    pub fn partition_for(&self, group: &str) -> u32 {
        crc32c::crc32c(group.as_bytes()) % self.partitions
    }

    /// Appends `(key, value)` records (None: delete) for one group and applies
    /// them. Blocking: appends and fsyncs.
    fn write_records(
        &self,
        topics: &Topics,
        group: &str,
        records: &[(Vec<u8>, Option<Vec<u8>>)],
    ) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let _one_writer = self.write.lock();
        self.ensure_topic(topics)?;
        let topic = topics.get(OFFSETS_TOPIC)?;
        let partition = topic.partition(self.partition_for(group))?;
        let now = crate::now_ms();
        let mut b = BatchBuilder::new(Compression::None, now);
        for (k, v) in records {
            b.append(now, Some(k), v.as_deref(), &[]);
        }
        let data: Bytes = b.build();
        let info = partition.append(&data, &topic.config(), now)?;
        if let Some(ticket) = info.sync {
            ticket.sync()?;
        }
        let cf = self.store.cf(CF)?;
        let mut w = WriteBatch::default();
        for (k, v) in records {
            match v {
                Some(v) => w.put_cf(&cf, k, v),
                None => w.delete_cf(&cf, k),
            }
        }
        w.put_cf(&cf, applied_key(partition.id), (info.last_offset + 1).to_be_bytes());
        self.store.write(w)
    }

    pub fn commit(&self, topics: &Topics, group: &str, offsets: &[(String, u32, Committed)]) -> Result<()> {
        let records = offsets
            .iter()
            .map(|(t, p, c)| Ok((offset_key(group, t, *p), Some(serde_json::to_vec(c).map_err(storage)?))))
            .collect::<Result<Vec<_>>>()?;
        self.write_records(topics, group, &records)
    }

    pub fn put_group(&self, topics: &Topics, group: &str, record: &GroupRecord) -> Result<()> {
        let value = serde_json::to_vec(record).map_err(storage)?;
        self.write_records(topics, group, &[(group_key(group), Some(value))])
    }

    /// Tombstones for the group record and every offset of the group.
    pub fn delete_group(&self, topics: &Topics, group: &str) -> Result<()> {
        let mut records: Vec<(Vec<u8>, Option<Vec<u8>>)> =
            self.offsets(group)?.into_iter().map(|(t, p, _)| (offset_key(group, &t, p), None)).collect();
        records.push((group_key(group), None));
        self.write_records(topics, group, &records)
    }

    /// Every committed offset of a group: `(topic, partition, committed)`.
    pub fn offsets(&self, group: &str) -> Result<Vec<(String, u32, Committed)>> {
        let cf = self.store.cf(CF)?;
        let prefix = offset_prefix(group);
        let mut out = Vec::new();
        for item in self.store.db().prefix_iterator_cf(&cf, &prefix) {
            let (k, v) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            let rest = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            let Some((topic, partition)) = rest.rsplit_once('\0') else { continue };
            let Ok(partition) = partition.parse::<u32>() else { continue };
            let committed: Committed = serde_json::from_slice(&v).map_err(storage)?;
            out.push((topic.to_string(), partition, committed));
        }
        Ok(out)
    }

    /// Every group that has a record or offsets: `(group, record)`.
    pub fn groups(&self) -> Result<BTreeMap<String, Option<GroupRecord>>> {
        let cf = self.store.cf(CF)?;
        let mut out = BTreeMap::new();
        for item in self.store.db().iterator_cf(&cf, rocksdb::IteratorMode::Start) {
            let (k, v) = item?;
            let key = String::from_utf8_lossy(&k).into_owned();
            if let Some(group) = key.strip_prefix("g\0") {
                let rec: GroupRecord = serde_json::from_slice(&v).map_err(storage)?;
                out.insert(group.to_string(), Some(rec));
            } else if let Some(rest) = key.strip_prefix("o\0") {
                if let Some((group, _)) = rest.split_once('\0') {
                    out.entry(group.to_string()).or_insert(None);
                }
            }
        }
        Ok(out)
    }
}
