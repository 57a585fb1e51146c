//! Committed offsets and group records: written as records to the internal,
//! compacted `__consumer_offsets` topic (so they are durable, and will
//! replicate with it), and materialized in the broker-wide RocksDB column
//! family `groups` for lookups.
//!
//! ## The group-commit writer
//!
//! Every write (offset commits, group records, group deletions) is queued to
//! one writer thread ([`OffsetStore::write`] returns a [`Pending`] at once, so
//! callers queue under the coordinator's lock and wait without it: writes
//! happen in the order they were validated). The writer takes everything
//! queued, then:
//!
//! 1. appends, per touched `__consumer_offsets` partition, one record batch
//!    holding the writes in queue order;
//! 2. fsyncs each touched partition once (one fsync covers every write of
//!    the batch, from every group), different partitions concurrently;
//! 3. applies all of them to RocksDB in one write batch, together with how
//!    far each partition has been applied;
//! 4. answers every waiter.
//!
//! A failed append, fsync or apply fails every write of the batch: none is
//! applied or acknowledged. A partition whose fsync failed is not written
//! again (its writes fail) until the broker restarts and recovers it: an
//! fsync error is not retried as if nothing happened.
//!
//! ## Loading
//!
//! On open every partition is replayed from where it was applied, so a crash
//! between append and apply loses nothing. A record that can't be parsed is
//! skipped (logged and counted in `tributary_group_records_skipped_total`),
//! as is a row of the column family that can't be parsed: bad input never
//! stops a broker from starting. A replay position past the log end (the
//! topic was deleted and re-created) restarts from the log start.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use bytes::Bytes;
use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tributary_proto::batch::{self, BatchBuilder, Batches, Compression, Record};

use crate::error::{Error, Result};
use crate::log::FlushTicket;
use crate::metrics::group_metrics;
use crate::partition::Partition;
use crate::store::Store;
use crate::topics::{NewTopic, Topic, Topics};

pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
const CF: &str = "groups";
/// Most writes one group commit takes from the queue, and about the most
/// record bytes (a single larger write still goes, alone).
const MAX_BATCH_WRITES: usize = 4096;
const MAX_BATCH_BYTES: usize = 4 << 20;
/// Bytes one replay read asks for.
const REPLAY_READ_BYTES: usize = 1 << 20;

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

/// A group as the store holds it: its record, if one was written, and when
/// it last committed an offset.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoredGroup {
    pub record: Option<GroupRecord>,
    pub last_commit_ms: Option<i64>,
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

/// The three kinds of key the `groups` column family holds.
#[derive(Debug, PartialEq, Eq)]
enum Key<'a> {
    Offset { group: &'a str, topic: &'a str, partition: u32 },
    Group(&'a str),
    Applied(u32),
}

fn parse_key(key: &[u8]) -> Option<Key<'_>> {
    let key = std::str::from_utf8(key).ok()?;
    if let Some(rest) = key.strip_prefix("o\0") {
        let (group, rest) = rest.split_once('\0')?;
        let (topic, partition) = rest.rsplit_once('\0')?;
        let partition = partition.parse().ok()?;
        Some(Key::Offset { group, topic, partition })
    } else if let Some(group) = key.strip_prefix("g\0") {
        Some(Key::Group(group))
    } else {
        key.strip_prefix("a\0").and_then(|p| p.parse().ok()).map(Key::Applied)
    }
}

/// Why a record of `__consumer_offsets` can't be applied, if it can't.
fn check_record(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<(), String> {
    let key = key.ok_or("the record has no key")?;
    match (parse_key(key), value) {
        (Some(Key::Offset { .. }), Some(v)) => serde_json::from_slice::<Committed>(v)
            .map(|_| ())
            .map_err(|e| format!("unreadable committed offset: {e}")),
        (Some(Key::Group(_)), Some(v)) => serde_json::from_slice::<GroupRecord>(v)
            .map(|_| ())
            .map_err(|e| format!("unreadable group record: {e}")),
        (Some(Key::Offset { .. } | Key::Group(_)), None) => Ok(()),
        (Some(Key::Applied(_)), _) => Err("replay positions are not written as records".into()),
        (None, _) => Err("unknown key".into()),
    }
}

fn storage(e: impl std::fmt::Display) -> Error {
    Error::Storage(format!("group offsets: {e}"))
}

/// Records ready to be written: `(key, value)`, `None` being a tombstone.
pub struct Records(Vec<(Vec<u8>, Option<Vec<u8>>)>);

impl Records {
    /// The records of a commit of `offsets` by `group`.
    pub fn commit(group: &str, offsets: &[(String, u32, Committed)]) -> Result<Records> {
        offsets
            .iter()
            .map(|(t, p, c)| Ok((offset_key(group, t, *p), Some(serde_json::to_vec(c).map_err(storage)?))))
            .collect::<Result<Vec<_>>>()
            .map(Records)
    }

    /// The record of a group.
    pub fn group(group: &str, record: &GroupRecord) -> Result<Records> {
        let value = serde_json::to_vec(record).map_err(storage)?;
        Ok(Records(vec![(group_key(group), Some(value))]))
    }

    /// Tombstones for the committed offsets of `partitions` of `group`
    /// (Kafka's OffsetDelete).
    pub fn delete_offsets(group: &str, partitions: &[(String, u32)]) -> Records {
        Records(partitions.iter().map(|(t, p)| (offset_key(group, t, *p), None)).collect())
    }

    fn bytes(&self) -> usize {
        self.0.iter().map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len)).sum()
    }
}

/// A write queued to the group-commit writer: resolves once it is durable
/// and applied, or failed.
#[must_use = "a queued write is only known to be durable once its Pending resolves"]
pub struct Pending(oneshot::Receiver<Result<()>>);

impl Pending {
    /// Already resolved.
    pub(crate) fn ready(result: Result<()>) -> Pending {
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(result);
        Pending(rx)
    }

    fn stopped() -> Error {
        Error::Storage("group offsets: the group-commit writer stopped; restart the broker".into())
    }

    /// Waits without blocking the runtime.
    pub async fn wait(self) -> Result<()> {
        self.0.await.unwrap_or_else(|_| Err(Self::stopped()))
    }

    /// Waits on the current thread; never call it on a runtime thread.
    pub fn wait_blocking(self) -> Result<()> {
        self.0.blocking_recv().unwrap_or_else(|_| Err(Self::stopped()))
    }
}

enum Write {
    Records(Records),
    /// Tombstones for the group record and every offset of the group, as
    /// they are when the writer reaches it.
    DeleteGroup,
}

struct Op {
    group: String,
    topic: Arc<Topic>,
    write: Write,
    reply: oneshot::Sender<Result<()>>,
}

/// What the open store and its writer thread share.
struct Shared {
    store: Arc<Store>,
    partitions: u32,
    skipped: AtomicU64,
    /// Group commits done since open, and the fsyncs they did.
    batches: AtomicU64,
    fsyncs: AtomicU64,
    #[cfg(test)]
    faults: Faults,
}

/// What tests make the writer do.
#[cfg(test)]
#[derive(Default)]
struct Faults {
    /// While a test holds it, the writer waits after taking its first write
    /// (so the writes queued meanwhile go into one group commit).
    hold: parking_lot::Mutex<()>,
    /// The fsyncs of the next group commit fail.
    fail_sync: std::sync::atomic::AtomicBool,
}

pub struct OffsetStore {
    shared: Arc<Shared>,
    queue: Option<mpsc::Sender<Op>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl OffsetStore {
    /// Opens the store, replays what `__consumer_offsets` holds beyond what
    /// was applied, drops rows that can't be parsed, and starts the
    /// group-commit writer.
    pub fn open(store: Arc<Store>, topics: &Topics, partitions: u32) -> Result<OffsetStore> {
        store.create_cf(CF)?;
        let shared = Arc::new(Shared {
            store,
            partitions: partitions.max(1),
            skipped: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
            #[cfg(test)]
            faults: Faults::default(),
        });
        if let Ok(topic) = topics.get(OFFSETS_TOPIC) {
            for p in topic.partitions() {
                shared.replay(&p)?;
            }
        }
        shared.prune()?;
        let (tx, rx) = mpsc::channel();
        let writer_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("group-commit".into())
            .spawn(move || {
                // One thread per partition a group commit can touch, less the writer's own.
                let fsyncs = SyncPool::new(writer_shared.partitions.min(8) as usize - 1);
                Writer { shared: writer_shared, offline: HashMap::new(), fsyncs }.run(rx)
            })
            .map_err(storage)?;
        Ok(OffsetStore { shared, queue: Some(tx), writer: Some(writer) })
    }

    /// Creates `__consumer_offsets` if it doesn't exist. Blocking (creates
    /// files): call it off the async runtime, before queueing writes.
    pub fn ensure_topic(&self, topics: &Topics) -> Result<()> {
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
            partitions: self.shared.partitions,
            replication_factor: 1,
            configs,
        };
        match topics.create_internal(new, crate::now_ms()) {
            Ok(()) | Err(Error::TopicExists(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Whether `__consumer_offsets` exists (writes need it; see
    /// [`OffsetStore::ensure_topic`]).
    pub fn has_topic(&self, topics: &Topics) -> bool {
        topics.get(OFFSETS_TOPIC).is_ok()
    }

    /// The `__consumer_offsets` partition a group's records go to.
    pub fn partition_for(&self, group: &str) -> u32 {
        self.shared.partition_for(group)
    }

    /// Applies what a replica of `partition` holds past its replay position
    /// (a new coordinator catching up on the previous one's writes).
    pub fn replay_partition(&self, partition: &Partition) -> Result<()> {
        self.shared.replay(partition)
    }

    /// Records skipped since open because they could not be parsed.
    pub fn records_skipped(&self) -> u64 {
        self.shared.skipped.load(Ordering::Relaxed)
    }

    /// Group commits since open, and the fsyncs they did.
    pub fn group_commits(&self) -> (u64, u64) {
        (self.shared.batches.load(Ordering::Relaxed), self.shared.fsyncs.load(Ordering::Relaxed))
    }

    fn queue(&self, topics: &Topics, group: &str, write: Write) -> Pending {
        let Ok(topic) = topics.get(OFFSETS_TOPIC) else {
            return Pending::ready(Err(Error::Storage(format!(
                "group offsets: the internal topic {OFFSETS_TOPIC} does not exist; retry"
            ))));
        };
        let (reply, rx) = oneshot::channel();
        let op = Op { group: group.to_string(), topic, write, reply };
        match &self.queue {
            Some(q) if q.send(op).is_ok() => Pending(rx),
            _ => Pending::ready(Err(Pending::stopped())),
        }
    }

    /// Queues `records` of `group`. Never blocks: writes are done in the
    /// order they are queued.
    pub fn write(&self, topics: &Topics, group: &str, records: Records) -> Pending {
        if records.0.is_empty() {
            return Pending::ready(Ok(()));
        }
        self.queue(topics, group, Write::Records(records))
    }

    /// Queues tombstones for the group record and every offset of the group.
    pub fn delete_group(&self, topics: &Topics, group: &str) -> Pending {
        self.queue(topics, group, Write::DeleteGroup)
    }

    /// Every committed offset of a group: `(topic, partition, committed)`.
    pub fn offsets(&self, group: &str) -> Result<Vec<(String, u32, Committed)>> {
        let store = &self.shared.store;
        let cf = store.cf(CF)?;
        let prefix = offset_prefix(group);
        let mut out = Vec::new();
        for item in store.db().prefix_iterator_cf(&cf, &prefix) {
            let (k, v) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            let Some(Key::Offset { group: g, topic, partition }) = parse_key(&k) else {
                self.shared.skip_row(&k, "unreadable key");
                continue;
            };
            if g != group {
                // A group name with a NUL in it: another group's row.
                continue;
            }
            match serde_json::from_slice::<Committed>(&v) {
                Ok(committed) => out.push((topic.to_string(), partition, committed)),
                Err(e) => self.shared.skip_row(&k, &e.to_string()),
            }
        }
        Ok(out)
    }

    /// Every group that has a record or offsets.
    pub fn groups(&self) -> Result<BTreeMap<String, StoredGroup>> {
        let store = &self.shared.store;
        let cf = store.cf(CF)?;
        let mut out: BTreeMap<String, StoredGroup> = BTreeMap::new();
        for item in store.db().iterator_cf(&cf, rocksdb::IteratorMode::Start) {
            let (k, v) = item?;
            match parse_key(&k) {
                Some(Key::Group(group)) => match serde_json::from_slice::<GroupRecord>(&v) {
                    Ok(rec) => out.entry(group.to_string()).or_default().record = Some(rec),
                    Err(e) => self.shared.skip_row(&k, &e.to_string()),
                },
                Some(Key::Offset { group, .. }) => match serde_json::from_slice::<Committed>(&v) {
                    Ok(c) => {
                        let last = &mut out.entry(group.to_string()).or_default().last_commit_ms;
                        *last = (*last).max(Some(c.commit_ms));
                    }
                    Err(e) => self.shared.skip_row(&k, &e.to_string()),
                },
                Some(Key::Applied(_)) | None => {}
            }
        }
        Ok(out)
    }
}

impl Drop for OffsetStore {
    /// Lets the writer finish what is queued, then stops it.
    fn drop(&mut self) {
        self.queue.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl Shared {
    fn partition_for(&self, group: &str) -> u32 {
        crc32c::crc32c(group.as_bytes()) % self.partitions
    }

    fn count_skipped(&self) {
        self.skipped.fetch_add(1, Ordering::Relaxed);
        group_metrics().records_skipped.inc();
    }

    fn skip_row(&self, key: &[u8], why: &str) {
        tracing::warn!(key = %String::from_utf8_lossy(key).escape_debug(), why, "skipping a row of the groups column family that can't be parsed");
        self.count_skipped();
    }

    fn skip_record(&self, partition: &Partition, offset: i64, key: Option<&[u8]>, why: &str) {
        let key = key.map(|k| String::from_utf8_lossy(k).escape_debug().to_string()).unwrap_or_default();
        tracing::warn!(
            topic = %partition.topic,
            partition = partition.id,
            offset,
            key = %key,
            why,
            "skipping a record of {OFFSETS_TOPIC} that can't be parsed"
        );
        self.count_skipped();
    }

    /// Applies what `partition` holds past its replay position.
    fn replay(&self, partition: &Partition) -> Result<()> {
        let cf = self.store.cf(CF)?;
        let stored = self.store.db().get_cf(&cf, applied_key(partition.id))?;
        let stored = match stored.as_deref().map(<[u8; 8]>::try_from) {
            None => None,
            Some(Ok(bytes)) => Some(i64::from_be_bytes(bytes)),
            Some(Err(_)) => {
                self.skip_row(&applied_key(partition.id), "a replay position is 8 bytes");
                None
            }
        };
        let mut at = stored.unwrap_or(0);
        let mut moved = false;
        loop {
            let read = match partition.read(at, REPLAY_READ_BYTES) {
                Ok(r) => r,
                // Compacted or deleted below: start at the log start.
                Err(Error::OffsetOutOfRange { start, .. }) if at < start && !moved => {
                    at = start;
                    moved = true;
                    continue;
                }
                // Past the end: the log is not the one the position was
                // recorded for (the topic was deleted and re-created).
                Err(Error::OffsetOutOfRange { start, end, .. }) if at > end && !moved => {
                    tracing::warn!(
                        topic = %partition.topic,
                        partition = partition.id,
                        applied = at,
                        log_end = end,
                        "the replay position is past the log end (the topic was re-created?); replaying from the log start"
                    );
                    at = start;
                    moved = true;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if read.records.is_empty() {
                if moved || stored.is_some_and(|s| s != at) {
                    let mut w = WriteBatch::default();
                    w.put_cf(&cf, applied_key(partition.id), at.to_be_bytes());
                    self.store.write(w)?;
                }
                return Ok(());
            }
            moved = false;
            let mut w = WriteBatch::default();
            let mut pos = 0;
            for b in Batches::new(&read.records) {
                let (h, slice) = match b {
                    Ok(b) => b,
                    Err(e) => {
                        // Not a batch boundary we can step over: stop here.
                        // The log's own recovery truncates torn tails.
                        tracing::error!(topic = %partition.topic, partition = partition.id, offset = at, error = %e, "unreadable batch; the rest of the partition is not replayed");
                        self.count_skipped();
                        w.put_cf(&cf, applied_key(partition.id), at.to_be_bytes());
                        return self.store.write(w);
                    }
                };
                let bytes: Bytes = read.records.slice(pos..pos + slice.len());
                pos += slice.len();
                match batch::records(&bytes) {
                    Ok(records) => {
                        for r in records {
                            match r {
                                Ok(r) if r.offset >= at => self.replay_record(partition, &cf, &mut w, r),
                                Ok(_) => {}
                                Err(e) => {
                                    let why = format!("unreadable record: {e}");
                                    self.skip_record(partition, h.base_offset, None, &why);
                                }
                            }
                        }
                    }
                    Err(e) => {
                        self.skip_record(partition, h.base_offset, None, &format!("unreadable batch: {e}"))
                    }
                }
                at = h.next_offset();
            }
            w.put_cf(&cf, applied_key(partition.id), at.to_be_bytes());
            self.store.write(w)?;
        }
    }

    fn replay_record(
        &self,
        partition: &Partition,
        cf: &Arc<rocksdb::BoundColumnFamily<'_>>,
        w: &mut WriteBatch,
        r: Record,
    ) {
        if let Err(why) = check_record(r.key.as_deref(), r.value.as_deref()) {
            self.skip_record(partition, r.offset, r.key.as_deref(), &why);
            return;
        }
        if let Some(k) = r.key {
            match r.value {
                Some(v) => w.put_cf(cf, k, v),
                None => w.delete_cf(cf, k),
            }
        }
    }

    /// Deletes rows of the column family that can't be parsed (an older
    /// replay applied whatever it found); counts and logs each.
    fn prune(&self) -> Result<()> {
        let cf = self.store.cf(CF)?;
        let mut w = WriteBatch::default();
        let mut bad = 0;
        for item in self.store.db().iterator_cf(&cf, rocksdb::IteratorMode::Start) {
            let (k, v) = item?;
            let why = match parse_key(&k) {
                Some(Key::Applied(_)) if v.len() != 8 => "a replay position is 8 bytes".to_string(),
                Some(Key::Applied(_)) | None => continue,
                Some(_) => match check_record(Some(&k), Some(&v)) {
                    Ok(()) => continue,
                    Err(why) => why,
                },
            };
            self.skip_row(&k, &why);
            w.delete_cf(&cf, &k);
            bad += 1;
        }
        if bad > 0 {
            self.store.write(w)?;
        }
        Ok(())
    }
}

/// One `__consumer_offsets` partition a group commit appends to.
struct Target {
    topic: Arc<Topic>,
    partition: Arc<Partition>,
    builder: BatchBuilder,
}

/// A write of the batch that is going to disk, and whom to answer.
struct Planned {
    records: Records,
    reply: oneshot::Sender<Result<()>>,
}

/// The group-commit writer: the only thread that writes `__consumer_offsets`
/// and the `groups` column family after open.
struct Writer {
    shared: Arc<Shared>,
    /// Partitions (topic id, partition) whose fsync failed, and the error.
    offline: HashMap<(String, u32), String>,
    fsyncs: SyncPool,
}

/// How long a group commit waits for the in-sync replicas.
const REPLICATION_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Waits until `end` is below `partition`'s high watermark (the in-sync
/// replicas have the writes). With no other in-sync replica that is as soon
/// as the writes are durable.
fn wait_high_watermark(partition: &Partition, end: i64) -> Result<(), String> {
    let start = std::time::Instant::now();
    let mut pause = std::time::Duration::from_micros(200);
    while partition.high_watermark() < end {
        if start.elapsed() > REPLICATION_WAIT {
            return Err(format!(
                "{OFFSETS_TOPIC}-{}: the in-sync replicas did not confirm within {} s (leadership moved?)",
                partition.id,
                REPLICATION_WAIT.as_secs()
            ));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(std::time::Duration::from_millis(5));
    }
    Ok(())
}

impl Writer {
    fn run(mut self, queue: mpsc::Receiver<Op>) {
        while let Ok(first) = queue.recv() {
            #[cfg(test)]
            drop(self.shared.faults.hold.lock());
            let mut bytes = op_bytes(&first);
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH_WRITES && bytes < MAX_BATCH_BYTES {
                match queue.try_recv() {
                    Ok(op) => {
                        bytes += op_bytes(&op);
                        batch.push(op);
                    }
                    Err(_) => break,
                }
            }
            self.group_commit(batch);
        }
    }

    /// Writes `ops` with one append and one fsync per touched partition.
    fn group_commit(&mut self, ops: Vec<Op>) {
        let now = crate::now_ms();
        let shared = self.shared.clone();
        let cf = match shared.store.cf(CF) {
            Ok(cf) => cf,
            Err(e) => {
                let msg = e.to_string();
                for op in ops {
                    let _ = op.reply.send(Err(Error::Storage(msg.clone())));
                }
                return;
            }
        };
        let mut targets: Vec<Target> = Vec::new();
        let mut planned: Vec<Planned> = Vec::new();
        // Keys written earlier in this batch: true = a value, false = a tombstone.
        let mut pending_keys: HashMap<Vec<u8>, bool> = HashMap::new();
        for op in ops {
            let pid = shared.partition_for(&op.group);
            let partition = match op.topic.partition(pid) {
                Ok(p) => p,
                Err(e) => {
                    let _ = op.reply.send(Err(e));
                    continue;
                }
            };
            if let Some(why) = self.offline.get(&(op.topic.id.clone(), pid)) {
                let _ = op.reply.send(Err(Error::Storage(format!(
                    "group offsets: {OFFSETS_TOPIC}-{pid} is offline after a failed fsync ({why}); restart the broker"
                ))));
                continue;
            }
            let records = match op.write {
                Write::Records(r) => r,
                Write::DeleteGroup => match self.tombstones(&cf, &op.group, &pending_keys) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = op.reply.send(Err(e));
                        continue;
                    }
                },
            };
            let target = match targets.iter().position(|t| Arc::ptr_eq(&t.partition, &partition)) {
                Some(i) => &mut targets[i],
                None => {
                    targets.push(Target {
                        topic: op.topic.clone(),
                        partition,
                        builder: BatchBuilder::new(Compression::None, now),
                    });
                    targets.last_mut().expect("just pushed")
                }
            };
            for (k, v) in &records.0 {
                target.builder.append(now, Some(k), v.as_deref(), &[]);
                pending_keys.insert(k.clone(), v.is_some());
            }
            planned.push(Planned { records, reply: op.reply });
        }
        if planned.is_empty() {
            return;
        }
        let result = self.append_sync_apply(&cf, targets, &planned, now);
        self.shared.batches.fetch_add(1, Ordering::Relaxed);
        let m = group_metrics();
        m.commit_batches.inc();
        m.commit_writes.inc_by(planned.len() as u64);
        match result {
            Ok(()) => {
                for p in planned {
                    let _ = p.reply.send(Ok(()));
                }
            }
            Err(msg) => {
                tracing::error!(writes = planned.len(), error = %msg, "group commit failed; none of its writes was acknowledged");
                m.commit_failures.inc_by(planned.len() as u64);
                for p in planned {
                    let _ = p.reply.send(Err(Error::Storage(format!("group offsets: {msg}"))));
                }
            }
        }
    }

    /// Steps 1–3 of a group commit; the error says which step failed.
    fn append_sync_apply(
        &mut self,
        cf: &Arc<rocksdb::BoundColumnFamily<'_>>,
        targets: Vec<Target>,
        planned: &[Planned],
        now: i64,
    ) -> Result<(), String> {
        let mut tickets = Vec::new();
        let mut applied = Vec::new();
        let mut targets_end = Vec::new();
        for t in targets {
            let (topic, partition) = (&t.topic, &t.partition);
            let info = partition
                .append(&t.builder.build(), &topic.config(), now)
                .map_err(|e| format!("appending to {}-{}: {e}", partition.topic, partition.id))?;
            applied.push((partition.id, info.last_offset + 1));
            targets_end.push((partition.clone(), info.last_offset + 1));
            if let Some(ticket) = info.sync {
                tickets.push(((topic.id.clone(), partition.id), ticket));
            }
        }
        group_metrics().commit_fsyncs.inc_by(tickets.len() as u64);
        self.shared.fsyncs.fetch_add(tickets.len() as u64, Ordering::Relaxed);
        let mut failed = None;
        for (key, result) in self.sync(tickets) {
            if let Err(e) = result {
                failed.get_or_insert_with(|| format!("fsync of {OFFSETS_TOPIC}-{} failed: {e}", key.1));
                self.offline.insert(key, e.to_string());
            }
        }
        if let Some(msg) = failed {
            return Err(msg);
        }
        // Replicated: acknowledged only once the in-sync replicas have it,
        // so a coordinator failover never loses a commit.
        for t in &targets_end {
            wait_high_watermark(&t.0, t.1)?;
        }
        let mut w = WriteBatch::default();
        for p in planned {
            for (k, v) in &p.records.0 {
                match v {
                    Some(v) => w.put_cf(cf, k, v),
                    None => w.delete_cf(cf, k),
                }
            }
        }
        for (pid, next) in applied {
            w.put_cf(cf, applied_key(pid), next.to_be_bytes());
        }
        self.shared.store.write(w).map_err(|e| format!("applying to the groups column family: {e}"))
    }

    fn sync<K>(&self, tickets: Vec<(K, FlushTicket)>) -> Vec<(K, Result<()>)> {
        #[cfg(test)]
        if self.shared.faults.fail_sync.swap(false, Ordering::SeqCst) {
            // As a failed fsync: nothing is known to be on disk.
            return tickets
                .into_iter()
                .map(|(k, _)| (k, Err(Error::Storage("injected fsync failure".into()))))
                .collect();
        }
        self.fsyncs.sync_all(tickets)
    }

    /// Tombstones for everything `group` has, counting what earlier writes
    /// of this batch add.
    fn tombstones(
        &self,
        cf: &Arc<rocksdb::BoundColumnFamily<'_>>,
        group: &str,
        pending_keys: &HashMap<Vec<u8>, bool>,
    ) -> Result<Records> {
        let prefix = offset_prefix(group);
        let mut keys: Vec<Vec<u8>> = Vec::new();
        for item in self.shared.store.db().prefix_iterator_cf(cf, &prefix) {
            let (k, _) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            keys.push(k.to_vec());
        }
        keys.extend(
            pending_keys.iter().filter(|(k, live)| **live && k.starts_with(&prefix)).map(|(k, _)| k.clone()),
        );
        keys.sort();
        keys.dedup();
        keys.push(group_key(group));
        Ok(Records(keys.into_iter().map(|k| (k, None)).collect()))
    }
}

/// Threads that fsync for the writer, so the fsyncs of one group commit run
/// concurrently (the filesystem can then share one journal commit among
/// them instead of doing one after another).
struct SyncPool {
    jobs: Option<mpsc::Sender<(FlushTicket, mpsc::Sender<Result<()>>)>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl SyncPool {
    fn new(threads: usize) -> SyncPool {
        let (tx, rx) = mpsc::channel::<(FlushTicket, mpsc::Sender<Result<()>>)>();
        let rx = Arc::new(parking_lot::Mutex::new(rx));
        let threads = (0..threads)
            .filter_map(|i| {
                let rx = rx.clone();
                std::thread::Builder::new()
                    .name(format!("group-fsync-{i}"))
                    .spawn(move || loop {
                        let job = rx.lock().recv();
                        let Ok((ticket, done)) = job else { return };
                        let _ = done.send(ticket.sync());
                    })
                    .ok()
            })
            .collect();
        SyncPool { jobs: Some(tx), threads }
    }

    /// fsyncs every ticket: the first on this thread, the others on the pool.
    fn sync_all<K>(&self, tickets: Vec<(K, FlushTicket)>) -> Vec<(K, Result<()>)> {
        let mut it = tickets.into_iter();
        let Some((first_key, first)) = it.next() else { return Vec::new() };
        let mut waiting = Vec::new();
        let mut out = Vec::new();
        for (k, ticket) in it {
            let (done, result) = mpsc::channel();
            match &self.jobs {
                Some(jobs) if !self.threads.is_empty() => match jobs.send((ticket, done)) {
                    Ok(()) => waiting.push((k, result)),
                    Err(mpsc::SendError((ticket, _))) => out.push((k, ticket.sync())),
                },
                _ => out.push((k, ticket.sync())),
            }
        }
        out.push((first_key, first.sync()));
        for (k, result) in waiting {
            let r = result.recv().unwrap_or_else(|_| Err(Error::Storage("an fsync thread stopped".into())));
            out.push((k, r));
        }
        out
    }
}

impl Drop for SyncPool {
    fn drop(&mut self) {
        self.jobs.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn op_bytes(op: &Op) -> usize {
    match &op.write {
        Write::Records(r) => r.bytes(),
        Write::DeleteGroup => 0,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::groups::tests::{committed, standalone, Env};

    /// Writes one record straight into `__consumer_offsets`, bypassing the
    /// coordinator (as a produce to the internal topic could).
    fn append_raw(env: &Env, partition: u32, key: Option<&[u8]>, value: Option<&[u8]>) {
        let topic = env.topics().get(OFFSETS_TOPIC).unwrap();
        let p = topic.partition(partition).unwrap();
        let now = crate::now_ms();
        let mut b = BatchBuilder::new(Compression::None, now);
        b.append(now, key, value, &[]);
        let info = p.append(&b.build(), &topic.config(), now).unwrap();
        if let Some(ticket) = info.sync {
            ticket.sync().unwrap();
        }
    }

    /// Issue 7, defect 2: key `g<NUL>dashboards` with value `{{{` in
    /// `__consumer_offsets` made every later start fail ("loading groups:
    /// ... key must be a string").
    #[test]
    fn records_replay_cannot_parse_are_skipped_and_counted() {
        let mut env = Env::new(1, Duration::from_secs(3600));
        env.c().commit(env.topics(), &standalone("dashboards", 0, 7)).unwrap();
        env.c().commit(env.topics(), &standalone("billing", 0, 3)).unwrap();
        env.c().commit(env.topics(), &standalone("billing", 1, 9)).unwrap();
        // Then, before the next restart, records the coordinator didn't write.
        append_raw(&env, 0, Some(b"g\0dashboards"), Some(b"{{{"));
        append_raw(&env, 0, Some(&offset_key("billing", "t", 0)), Some(b"not json"));
        append_raw(&env, 0, Some(b"o\0billing\0t\0zero"), Some(br#"{"offset":1,"commit_ms":1}"#));
        append_raw(&env, 0, None, Some(b"no key"));
        // Would move the replay position if it were applied.
        append_raw(&env, 0, Some(&applied_key(0)), Some(&0i64.to_be_bytes()));
        append_raw(&env, 0, Some(b"something else"), Some(b"x"));

        env.restart().expect("the broker starts although __consumer_offsets holds records it can't parse");
        assert_eq!(env.c().offsets().records_skipped(), 6);
        assert_eq!(committed(env.c(), "dashboards", 0).unwrap(), 7);
        assert_eq!(committed(env.c(), "billing", 0).unwrap(), 3);
        assert_eq!(committed(env.c(), "billing", 1).unwrap(), 9);
        let listed: Vec<String> = env.c().list().groups.into_iter().map(|g| g.group_id).collect();
        assert_eq!(listed, ["billing", "dashboards"]);

        // Skipped once: the replay position moved past them.
        env.restart().unwrap();
        assert_eq!(env.c().offsets().records_skipped(), 0);
        assert_eq!(committed(env.c(), "billing", 0).unwrap(), 3);
        assert!(crate::metrics::Metrics::new().encode().contains("tributary_group_records_skipped_total"));
    }

    /// Rows of the `groups` column family that don't parse (written by a
    /// replay that didn't check them, or damaged) are skipped, not fatal.
    #[test]
    fn rows_of_the_groups_column_family_that_dont_parse_are_skipped() {
        let mut env = Env::new(1, Duration::from_secs(3600));
        env.c().commit(env.topics(), &standalone("ok", 0, 5)).unwrap();
        {
            let cf = env.store().cf(CF).unwrap();
            let db = env.store().db();
            db.put_cf(&cf, group_key("bad"), b"{{{").unwrap();
            db.put_cf(&cf, offset_key("ok", "t", 1), b"{{{").unwrap();
        }
        env.restart().expect("the broker starts although the groups column family holds rows it can't parse");
        let all = env.c().offsets().offsets("ok").unwrap();
        assert_eq!(all.len(), 1, "{all:?}");
        assert_eq!(committed(env.c(), "ok", 0).unwrap(), 5);
        assert_eq!(env.c().offsets().records_skipped(), 2);
    }

    /// Commits of many groups queued together are written by one group
    /// commit: one append and one fsync for all of them.
    #[test]
    fn commits_of_many_groups_queued_together_share_one_fsync() {
        let env = Env::new(1, Duration::from_secs(3600));
        let (c, topics) = (env.c(), env.topics());
        c.commit(topics, &standalone("warm-up", 0, 1)).unwrap();
        let before = c.offsets().group_commits();
        let pending: Vec<Pending> = {
            let _hold = c.offsets().shared.faults.hold.lock();
            (0..20).map(|i| c.start_commit(topics, &standalone(&format!("g{i}"), 0, i)).unwrap()).collect()
        };
        for p in pending {
            p.wait_blocking().unwrap();
        }
        let after = c.offsets().group_commits();
        assert_eq!((after.0 - before.0, after.1 - before.1), (1, 1), "20 commits: (group commits, fsyncs)");
        for i in 0..20 {
            assert_eq!(committed(c, &format!("g{i}"), 0).unwrap(), i);
        }
    }

    /// A group commit whose fsync fails answers every write in it with the
    /// error and applies none of them; the partition then takes no more
    /// writes (an fsync error is not retried as if nothing happened).
    #[test]
    fn a_failed_fsync_fails_every_commit_of_its_group_commit_and_applies_none() {
        let env = Env::new(1, Duration::from_secs(3600));
        let (c, topics) = (env.c(), env.topics());
        for i in 0..4 {
            c.commit(topics, &standalone(&format!("g{i}"), 0, 10)).unwrap();
        }
        let faults = &c.offsets().shared.faults;
        faults.fail_sync.store(true, Ordering::SeqCst);
        let pending: Vec<Pending> = {
            let _hold = faults.hold.lock();
            (0..4).map(|i| c.start_commit(topics, &standalone(&format!("g{i}"), 0, 20)).unwrap()).collect()
        };
        for p in pending {
            let e = p.wait_blocking().expect_err("a commit whose fsync failed is not acknowledged");
            assert!(e.to_string().contains("fsync"), "{e}");
        }
        for i in 0..4 {
            assert_eq!(
                committed(c, &format!("g{i}"), 0).unwrap(),
                10,
                "a commit whose fsync failed is not applied"
            );
        }
        let later = c.commit(topics, &standalone("g0", 0, 30)).expect_err("the partition is offline");
        assert!(later.to_string().contains("offline"), "{later}");
        assert_eq!(committed(c, "g0", 0).unwrap(), 10);
    }

    /// Issue 7, defect 2: deleting `__consumer_offsets` and committing once
    /// (which re-created it) left replay positions past the new, shorter
    /// logs' ends, and the next start failed. (The position is seeded here:
    /// internal topics can no longer be deleted.)
    #[test]
    fn a_replay_position_past_the_log_end_does_not_wedge_the_next_start() {
        let mut env = Env::new(8, Duration::from_secs(3600));
        let a = "alpha";
        let pa = env.c().offsets().partition_for(a);
        let b =
            (0..).map(|i| format!("beta-{i}")).find(|g| env.c().offsets().partition_for(g) != pa).unwrap();
        let pb = env.c().offsets().partition_for(&b);
        env.c().commit(env.topics(), &standalone(a, 0, 1)).unwrap();
        {
            // Positions recorded for the logs the deleted topic had.
            let cf = env.store().cf(CF).unwrap();
            env.store().db().put_cf(&cf, applied_key(pa), 50i64.to_be_bytes()).unwrap();
            env.store().db().put_cf(&cf, applied_key(pb), 5i64.to_be_bytes()).unwrap();
        }
        env.restart().expect("the broker starts although replay positions are past the logs' ends");
        assert_eq!(committed(env.c(), a, 0).unwrap(), 1);
        env.c().commit(env.topics(), &standalone(a, 0, 42)).unwrap();
        env.c().commit(env.topics(), &standalone(&b, 0, 7)).unwrap();
        env.restart().unwrap();
        assert_eq!(committed(env.c(), a, 0).unwrap(), 42);
        assert_eq!(committed(env.c(), &b, 0).unwrap(), 7);
    }
}
