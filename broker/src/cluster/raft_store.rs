//! openraft's storage for the metadata quorum, in the broker's RocksDB.
//!
//! One column family, `raft`, holds the log (`l` + big-endian index ->
//! entry), the vote (`v`), the committed log id (`c`), the last purged log
//! id (`p`) and the latest snapshot (`s`: the whole [`MetadataState`] with
//! the log id and membership it covers). Log appends and votes are written
//! with fsync before openraft is told they are durable: a vote or an entry
//! acknowledged to a peer survives a power loss, which is what Raft's safety
//! rests on.
//!
//! The state machine lives in memory; the snapshot is its durable form.
//! After a restart it starts from the snapshot and openraft re-applies the
//! committed entries after it.

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, LogState, OptionalSend, RaftLogId, RaftLogReader,
    RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use parking_lot::Mutex;
use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::state::{MetadataState, Outcome};
use super::TypeConfig;
use crate::store::Store;

pub type NodeId = u64;
type StErr = StorageError<NodeId>;

pub const RAFT_CF: &str = "raft";
const LOG: u8 = b'l';
const VOTE: &[u8] = b"v";
const COMMITTED: &[u8] = b"c";
const PURGED: &[u8] = b"p";
const SNAPSHOT: &[u8] = b"s";

fn log_key(index: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = LOG;
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

fn io_err(e: impl std::fmt::Display) -> AnyError {
    AnyError::error(e.to_string())
}

/// The Raft log and vote.
#[derive(Clone)]
pub struct LogStore {
    store: Arc<Store>,
}

impl LogStore {
    pub fn open(store: Arc<Store>) -> crate::error::Result<LogStore> {
        store.create_cf(RAFT_CF)?;
        Ok(LogStore { store })
    }

    fn get<T: for<'de> Deserialize<'de>>(&self, key: &[u8]) -> Result<Option<T>, AnyError> {
        let cf = self.store.cf(RAFT_CF).map_err(io_err)?;
        match self.store.db().get_cf(&cf, key).map_err(io_err)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v).map(Some).map_err(io_err),
        }
    }

    fn put<T: Serialize>(&self, key: &[u8], value: &T) -> Result<(), AnyError> {
        let cf = self.store.cf(RAFT_CF).map_err(io_err)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(&cf, key, serde_json::to_vec(value).map_err(io_err)?);
        self.store.write_durable(batch).map_err(io_err)
    }

    fn last_entry(&self) -> Result<Option<Entry<TypeConfig>>, AnyError> {
        let cf = self.store.cf(RAFT_CF).map_err(io_err)?;
        let mut it = self.store.db().raw_iterator_cf(&cf);
        it.seek_for_prev(log_key(u64::MAX));
        match (it.key(), it.value()) {
            (Some(k), Some(v)) if k.first() == Some(&LOG) => {
                serde_json::from_slice(v).map(Some).map_err(io_err)
            }
            _ => {
                it.status().map_err(io_err)?;
                Ok(None)
            }
        }
    }

    fn delete_range(&self, from: u64, to: u64) -> Result<(), AnyError> {
        let cf = self.store.cf(RAFT_CF).map_err(io_err)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(&cf, log_key(from), log_key(to));
        self.store.write_durable(batch).map_err(io_err)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StErr> {
        use std::ops::Bound;
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        };
        let cf = self.store.cf(RAFT_CF).map_err(|e| StorageIOError::read_logs(io_err(e)))?;
        let mut it = self.store.db().raw_iterator_cf(&cf);
        it.seek(log_key(start));
        let mut out = Vec::new();
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if k.first() != Some(&LOG) || k.len() != 9 {
                break;
            }
            let index = u64::from_be_bytes(k[1..9].try_into().unwrap_or_default());
            if !range.contains(&index) {
                break;
            }
            let entry: Entry<TypeConfig> =
                serde_json::from_slice(v).map_err(|e| StorageIOError::read_logs(io_err(e)))?;
            out.push(entry);
            it.next();
        }
        it.status().map_err(|e| StorageIOError::read_logs(io_err(e)))?;
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StErr> {
        let purged: Option<LogId<NodeId>> = self.get(PURGED).map_err(StorageIOError::read_logs)?;
        let last = self.last_entry().map_err(StorageIOError::read_logs)?.map(|e| *e.get_log_id());
        Ok(LogState { last_purged_log_id: purged, last_log_id: last.or(purged) })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StErr> {
        self.put(VOTE, vote).map_err(|e| StorageIOError::write_vote(e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StErr> {
        self.get(VOTE).map_err(|e| StorageIOError::read_vote(e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StErr> {
        self.put(COMMITTED, &committed).map_err(|e| StorageIOError::write(e).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StErr> {
        Ok(self.get::<Option<LogId<NodeId>>>(COMMITTED).map_err(StorageIOError::read)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let cf = self.store.cf(RAFT_CF).map_err(|e| StorageIOError::write_logs(io_err(e)))?;
        let mut batch = WriteBatch::default();
        for entry in entries {
            let value = serde_json::to_vec(&entry).map_err(|e| StorageIOError::write_logs(io_err(e)))?;
            batch.put_cf(&cf, log_key(entry.get_log_id().index), value);
        }
        // fsynced before openraft may tell a peer the entries are stored.
        let result = self.store.write_durable(batch);
        let io = result.as_ref().map(|_| ()).map_err(|e| std::io::Error::other(e.to_string()));
        callback.log_io_completed(io);
        result.map_err(|e| StorageIOError::write_logs(io_err(e)).into())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StErr> {
        self.delete_range(log_id.index, u64::MAX).map_err(|e| StorageIOError::write_logs(e).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StErr> {
        // The purge point first: a crash between the two leaves entries
        // below it that are simply never read.
        self.put(PURGED, &Some(log_id)).map_err(StorageIOError::write_logs)?;
        self.delete_range(0, log_id.index + 1).map_err(|e| StorageIOError::write_logs(e).into())
    }
}

/// The snapshot as stored: everything the state machine is.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct StoredSnapshot {
    last_log_id: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
    state: MetadataState,
    snapshot_id: String,
}

/// The applied metadata, shared with the rest of the broker.
struct Applied {
    last_log_id: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
    state: MetadataState,
}

/// The metadata state machine.
#[derive(Clone)]
pub struct StateMachine {
    store: Arc<Store>,
    applied: Arc<Mutex<Applied>>,
    /// Every applied change is published here (replica manager, servers).
    published: watch::Sender<Arc<MetadataState>>,
    /// Log index of what `published` holds (set before it is published).
    version: Arc<std::sync::atomic::AtomicU64>,
}

impl StateMachine {
    /// Starts from the stored snapshot, if any.
    pub fn open(store: Arc<Store>) -> crate::error::Result<StateMachine> {
        store.create_cf(RAFT_CF)?;
        let cf = store.cf(RAFT_CF)?;
        let snap: StoredSnapshot = match store.db().get_cf(&cf, SNAPSHOT)? {
            Some(v) => serde_json::from_slice(&v)
                .map_err(|e| crate::error::Error::Storage(format!("unreadable metadata snapshot: {e}")))?,
            None => StoredSnapshot::default(),
        };
        drop(cf);
        let (published, _) = watch::channel(Arc::new(snap.state.clone()));
        Ok(StateMachine {
            store,
            applied: Arc::new(Mutex::new(Applied {
                last_log_id: snap.last_log_id,
                membership: snap.membership,
                state: snap.state,
            })),
            published,
            version: Arc::new(std::sync::atomic::AtomicU64::new(snap.last_log_id.map_or(0, |l| l.index))),
        })
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<MetadataState>> {
        self.published.subscribe()
    }

    pub fn current(&self) -> Arc<MetadataState> {
        self.published.borrow().clone()
    }

    /// The log index of the latest published metadata.
    pub fn version(&self) -> u64 {
        self.version.load(std::sync::atomic::Ordering::Acquire)
    }

    fn publish(&self, index: Option<LogId<NodeId>>, mut state: MetadataState) {
        let index = index.map_or(0, |l| l.index);
        state.applied_index = index;
        self.version.fetch_max(index, std::sync::atomic::Ordering::AcqRel);
        self.published.send_replace(Arc::new(state));
    }

    fn snapshot_now(&self) -> StoredSnapshot {
        let a = self.applied.lock();
        let id =
            a.last_log_id.map_or_else(|| "empty".to_string(), |l| format!("{}-{}", l.leader_id, l.index));
        StoredSnapshot {
            last_log_id: a.last_log_id,
            membership: a.membership.clone(),
            state: a.state.clone(),
            snapshot_id: id,
        }
    }

    fn save(&self, snap: &StoredSnapshot) -> Result<Vec<u8>, AnyError> {
        let bytes = serde_json::to_vec(snap).map_err(io_err)?;
        let cf = self.store.cf(RAFT_CF).map_err(io_err)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(&cf, SNAPSHOT, &bytes);
        self.store.write_durable(batch).map_err(io_err)?;
        Ok(bytes)
    }

    fn to_snapshot(snap: StoredSnapshot, bytes: Vec<u8>) -> Snapshot<TypeConfig> {
        Snapshot {
            meta: SnapshotMeta {
                last_log_id: snap.last_log_id,
                last_membership: snap.membership,
                snapshot_id: snap.snapshot_id,
            },
            snapshot: Box::new(Cursor::new(bytes)),
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StErr> {
        let snap = self.snapshot_now();
        let bytes = self.save(&snap).map_err(|e| StorageIOError::write_snapshot(None, e))?;
        Ok(Self::to_snapshot(snap, bytes))
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, openraft::BasicNode>), StErr> {
        let a = self.applied.lock();
        Ok((a.last_log_id, a.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        let snapshot = {
            let mut a = self.applied.lock();
            for entry in entries {
                a.last_log_id = Some(*entry.get_log_id());
                match entry.payload {
                    EntryPayload::Blank => out.push(Outcome::Done),
                    EntryPayload::Normal(ref cmd) => {
                        let r = a.state.apply(cmd);
                        if let Outcome::Refused(why) = &r {
                            tracing::debug!(command = ?cmd, %why, "metadata command refused");
                        }
                        out.push(r);
                    }
                    EntryPayload::Membership(ref m) => {
                        a.membership = StoredMembership::new(Some(*entry.get_log_id()), m.clone());
                        out.push(Outcome::Done);
                    }
                }
            }
            (a.last_log_id, a.state.clone())
        };
        self.publish(snapshot.0, snapshot.1);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StErr> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StErr> {
        let bytes = snapshot.into_inner();
        let snap: StoredSnapshot = serde_json::from_slice(&bytes)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), io_err(e)))?;
        self.save(&snap).map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), e))?;
        let state = {
            let mut a = self.applied.lock();
            a.last_log_id = meta.last_log_id;
            a.membership = meta.last_membership.clone();
            a.state = snap.state;
            (a.last_log_id, a.state.clone())
        };
        self.publish(state.0, state.1);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StErr> {
        let cf = self.store.cf(RAFT_CF).map_err(|e| StorageIOError::read_snapshot(None, io_err(e)))?;
        let Some(bytes) = self
            .store
            .db()
            .get_cf(&cf, SNAPSHOT)
            .map_err(|e| StorageIOError::read_snapshot(None, io_err(e)))?
        else {
            return Ok(None);
        };
        drop(cf);
        let snap: StoredSnapshot =
            serde_json::from_slice(&bytes).map_err(|e| StorageIOError::read_snapshot(None, io_err(e)))?;
        if snap.last_log_id.is_none() {
            return Ok(None);
        }
        Ok(Some(Self::to_snapshot(snap, bytes)))
    }
}
