//! Fault injection for the storage engine's tests: an in-memory file system
//! ([`FaultFs`]) and index store ([`MemIndexStore`]) that can fail chosen
//! operations and simulate a power loss.
//!
//! Power loss follows what a real disk promises: file bytes survive only if
//! a completed fsync of that file covered them, and a created, renamed or
//! removed directory entry only if a completed fsync of its directory came
//! after. Everything else is dropped by [`FaultFs::power_loss`]. The index
//! store keeps writes made durable (and every write before one, as RocksDB's
//! WAL does) and, on [`MemIndexStore::power_loss`], any prefix of the
//! others. Models: RocksDB's FaultInjectionTestFS, TigerBeetle's simulated
//! storage.
//!
//! Directories are simplified: `create_dir_all` is durable at once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::fs::{LogFile, LogFs};
use super::index_store::{IndexOp, IndexStore};
use crate::error::{Error, Result};

/// An operation a fault can be attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultOp {
    Create,
    Write,
    SetLen,
    Sync,
    Rename,
    Remove,
    SyncDir,
    /// [`MemIndexStore`] writes.
    IndexWrite,
}

/// "The `nth` next `op` (on a path containing `path`) fails with `errno`";
/// `sticky` keeps failing every one after it too.
#[derive(Debug, Clone)]
struct Rule {
    op: FaultOp,
    path: Option<String>,
    countdown: u64,
    errno: i32,
    sticky: bool,
}

#[derive(Default)]
struct Rules {
    rules: Vec<Rule>,
    /// Operations seen, by kind (for tests that enumerate failure points).
    counts: HashMap<FaultOp, u64>,
}

impl Rules {
    fn add(&mut self, op: FaultOp, path: Option<&str>, nth: u64, errno: i32, sticky: bool) {
        self.rules.push(Rule { op, path: path.map(str::to_string), countdown: nth.max(1), errno, sticky });
    }

    /// Counts an operation and says whether it must fail.
    fn hit(&mut self, op: FaultOp, path: &Path) -> Option<i32> {
        *self.counts.entry(op).or_default() += 1;
        let text = path.to_string_lossy();
        let mut fired = None;
        self.rules.retain_mut(|r| {
            if r.op != op || r.path.as_deref().is_some_and(|p| !text.contains(p)) {
                return true;
            }
            if r.countdown > 1 {
                r.countdown -= 1;
                return true;
            }
            fired = Some(r.errno);
            r.sticky
        });
        fired
    }
}

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

#[derive(Default)]
struct Inode {
    data: Vec<u8>,
    /// What a completed fsync covered.
    durable: Vec<u8>,
}

type InodeRef = Arc<Mutex<Inode>>;

#[derive(Default)]
struct FsState {
    live: BTreeMap<PathBuf, InodeRef>,
    /// The namespace as the last directory fsyncs left it.
    durable: BTreeMap<PathBuf, InodeRef>,
    dirs: BTreeSet<PathBuf>,
    /// Bumped at each power loss: handles from before it stop working.
    generation: u64,
    /// Bytes the "disk" holds; writes past it fail with ENOSPC.
    capacity: Option<u64>,
}

impl FsState {
    fn used(&self) -> u64 {
        self.live.values().map(|i| i.lock().data.len() as u64).sum()
    }
}

struct Shared {
    state: Mutex<FsState>,
    rules: Mutex<Rules>,
    /// Delay every fsync of a path containing the string.
    slow_sync: Mutex<Option<(String, Duration)>>,
}

impl Shared {
    fn check(&self, op: FaultOp, path: &Path) -> io::Result<()> {
        match self.rules.lock().hit(op, path) {
            Some(e) => Err(errno(e)),
            None => Ok(()),
        }
    }
}

/// The in-memory, fault-injecting file system. Cheap to clone (shared).
#[derive(Clone)]
pub struct FaultFs {
    shared: Arc<Shared>,
}

impl Default for FaultFs {
    fn default() -> Self {
        Self::new()
    }
}

impl FaultFs {
    pub fn new() -> FaultFs {
        FaultFs {
            shared: Arc::new(Shared {
                state: Mutex::new(FsState::default()),
                rules: Mutex::new(Rules::default()),
                slow_sync: Mutex::new(None),
            }),
        }
    }

    /// The `nth` next `op` fails with `errno` (e.g. `libc::EIO`).
    pub fn fail_nth(&self, op: FaultOp, nth: u64, errno: i32) {
        self.shared.rules.lock().add(op, None, nth, errno, false);
    }

    /// The `nth` next `op` and every one after it fail.
    pub fn fail_from(&self, op: FaultOp, nth: u64, errno: i32) {
        self.shared.rules.lock().add(op, None, nth, errno, true);
    }

    /// Like `fail_nth`, only for paths containing `path`.
    pub fn fail_nth_on(&self, op: FaultOp, path: &str, nth: u64, errno: i32) {
        self.shared.rules.lock().add(op, Some(path), nth, errno, false);
    }

    /// Removes every pending fault.
    pub fn heal(&self) {
        self.shared.rules.lock().rules.clear();
    }

    /// How many operations of a kind were attempted so far.
    pub fn count(&self, op: FaultOp) -> u64 {
        self.shared.rules.lock().counts.get(&op).copied().unwrap_or(0)
    }

    /// Limits the bytes all files may hold together (None: no limit).
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.shared.state.lock().capacity = bytes;
    }

    pub fn used_bytes(&self) -> u64 {
        self.shared.state.lock().used()
    }

    /// Every fsync of a path containing `path` sleeps `delay` first.
    pub fn slow_sync(&self, path: &str, delay: Duration) {
        *self.shared.slow_sync.lock() = Some((path.to_string(), delay));
    }

    /// Power loss: drops every byte and directory entry that no completed
    /// fsync covered. Open handles stop working.
    pub fn power_loss(&self) {
        let mut st = self.shared.state.lock();
        st.generation += 1;
        let survivors: BTreeMap<PathBuf, InodeRef> = st
            .durable
            .iter()
            .map(|(p, inode)| {
                let durable = inode.lock().durable.clone();
                (p.clone(), Arc::new(Mutex::new(Inode { data: durable.clone(), durable })))
            })
            .collect();
        st.live = survivors.clone();
        st.durable = survivors;
    }

    /// The current bytes of a file (for tests that corrupt or inspect).
    pub fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
        self.shared.state.lock().live.get(path).map(|i| i.lock().data.clone())
    }

    /// Replaces a file's bytes, as durable (a test's "the disk holds this").
    pub fn write_file(&self, path: &Path, data: &[u8]) {
        let mut st = self.shared.state.lock();
        let inode = Arc::new(Mutex::new(Inode { data: data.to_vec(), durable: data.to_vec() }));
        st.live.insert(path.to_path_buf(), inode.clone());
        st.durable.insert(path.to_path_buf(), inode);
    }

    fn handle(&self, path: &Path, inode: InodeRef) -> Arc<dyn LogFile> {
        let generation = self.shared.state.lock().generation;
        Arc::new(FaultFile { shared: self.shared.clone(), path: path.to_path_buf(), inode, generation })
    }
}

struct FaultFile {
    shared: Arc<Shared>,
    path: PathBuf,
    inode: InodeRef,
    generation: u64,
}

impl FaultFile {
    fn alive(&self) -> io::Result<()> {
        if self.shared.state.lock().generation != self.generation {
            return Err(io::Error::other("file handle from before a simulated power loss"));
        }
        Ok(())
    }
}

impl LogFile for FaultFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.alive()?;
        let inode = self.inode.lock();
        let start = (pos as usize).min(inode.data.len());
        let n = buf.len().min(inode.data.len() - start);
        buf[..n].copy_from_slice(&inode.data[start..start + n]);
        Ok(n)
    }

    fn write_all_at(&self, data: &[u8], pos: u64) -> io::Result<()> {
        self.alive()?;
        self.shared.check(FaultOp::Write, &self.path)?;
        let (capacity, used) = {
            let st = self.shared.state.lock();
            (st.capacity, st.used())
        };
        let mut inode = self.inode.lock();
        let end = pos as usize + data.len();
        let grow = end.saturating_sub(inode.data.len()) as u64;
        // A full disk takes what fits, then fails: a torn write.
        let fits = match capacity {
            Some(cap) if used + grow > cap => {
                let room = cap.saturating_sub(used) as usize;
                Some((inode.data.len() + room).saturating_sub(pos as usize).min(data.len()))
            }
            _ => None,
        };
        let n = fits.unwrap_or(data.len());
        if inode.data.len() < pos as usize + n {
            inode.data.resize(pos as usize + n, 0);
        }
        inode.data[pos as usize..pos as usize + n].copy_from_slice(&data[..n]);
        if fits.is_some() {
            return Err(errno(libc::ENOSPC));
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.alive()?;
        self.shared.check(FaultOp::SetLen, &self.path)?;
        self.inode.lock().data.resize(len as usize, 0);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        self.alive()?;
        let delay = self.shared.slow_sync.lock().clone();
        if let Some((p, d)) = delay {
            if self.path.to_string_lossy().contains(&p) {
                std::thread::sleep(d);
            }
        }
        self.shared.check(FaultOp::Sync, &self.path)?;
        let mut inode = self.inode.lock();
        inode.durable = inode.data.clone();
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        self.alive()?;
        Ok(self.inode.lock().data.len() as u64)
    }
}

impl LogFs for FaultFs {
    fn create(&self, path: &Path) -> io::Result<Arc<dyn LogFile>> {
        self.shared.check(FaultOp::Create, path)?;
        let inode: InodeRef = Default::default();
        {
            let mut st = self.shared.state.lock();
            if !path.parent().is_some_and(|d| st.dirs.contains(d)) {
                return Err(io::Error::from(io::ErrorKind::NotFound));
            }
            st.live.insert(path.to_path_buf(), inode.clone());
        }
        Ok(self.handle(path, inode))
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn LogFile>> {
        let inode = self.shared.state.lock().live.get(path).cloned();
        match inode {
            Some(inode) => Ok(self.handle(path, inode)),
            None => Err(io::Error::from(io::ErrorKind::NotFound)),
        }
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.shared.check(FaultOp::Rename, from)?;
        let mut st = self.shared.state.lock();
        let inode = st.live.remove(from).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        st.live.insert(to.to_path_buf(), inode);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.shared.check(FaultOp::Remove, path)?;
        let mut st = self.shared.state.lock();
        st.live.remove(path).map(|_| ()).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.shared.check(FaultOp::SyncDir, dir)?;
        let mut st = self.shared.state.lock();
        let FsState { live, durable, dirs, .. } = &mut *st;
        durable.retain(|p, _| p.parent() != Some(dir) && p.parent().is_some_and(|d| dirs.contains(d)));
        for (p, inode) in live.iter() {
            if p.parent() == Some(dir) {
                durable.insert(p.clone(), inode.clone());
            }
        }
        Ok(())
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.shared.state.lock();
        for d in dir.ancestors() {
            if !d.as_os_str().is_empty() {
                st.dirs.insert(d.to_path_buf());
            }
        }
        Ok(())
    }

    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.shared.state.lock();
        st.live.retain(|p, _| !p.starts_with(dir));
        st.dirs.retain(|d| !d.starts_with(dir));
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let st = self.shared.state.lock();
        if !st.dirs.contains(dir) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        let files = st.live.keys().filter(|p| p.parent() == Some(dir));
        let subdirs = st.dirs.iter().filter(|d| d.parent() == Some(dir));
        Ok(files
            .chain(subdirs)
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }

    fn exists(&self, path: &Path) -> bool {
        let st = self.shared.state.lock();
        st.live.contains_key(path) || st.dirs.contains(path)
    }
}

type Cf = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Default)]
struct MemState {
    live: HashMap<String, Cf>,
    durable: HashMap<String, Cf>,
    /// Writes not yet made durable, oldest first.
    unsynced: Vec<(String, Vec<IndexOp>)>,
}

fn apply(cfs: &mut HashMap<String, Cf>, cf: &str, ops: &[IndexOp]) {
    let map = cfs.entry(cf.to_string()).or_default();
    for op in ops {
        match op {
            IndexOp::Put(k, v) => {
                map.insert(k.clone(), v.clone());
            }
            IndexOp::Delete(k) => {
                map.remove(k);
            }
            IndexOp::DeleteRange(from, to) => {
                if from < to {
                    let doomed: Vec<_> =
                        map.range(from.clone()..to.clone()).map(|(k, _)| k.clone()).collect();
                    for k in doomed {
                        map.remove(&k);
                    }
                }
            }
        }
    }
}

/// The in-memory index store that forgets what was not synced.
#[derive(Clone, Default)]
pub struct MemIndexStore {
    state: Arc<Mutex<MemState>>,
    rules: Arc<Mutex<Rules>>,
}

impl MemIndexStore {
    pub fn new() -> MemIndexStore {
        MemIndexStore::default()
    }

    /// The `nth` next write fails (as RocksDB's does with a full disk).
    pub fn fail_nth_write(&self, nth: u64) {
        self.rules.lock().add(FaultOp::IndexWrite, None, nth, libc::ENOSPC, false);
    }

    /// Every write from the `nth` next on fails (RocksDB read-only after a
    /// background error).
    pub fn fail_writes_from(&self, nth: u64) {
        self.rules.lock().add(FaultOp::IndexWrite, None, nth, libc::EIO, true);
    }

    pub fn heal(&self) {
        self.rules.lock().rules.clear();
    }

    pub fn writes(&self) -> u64 {
        self.rules.lock().counts.get(&FaultOp::IndexWrite).copied().unwrap_or(0)
    }

    /// Power loss: keeps what was durable plus the first `keep_unsynced`
    /// writes after it (a WAL loses a suffix, never a write in the middle).
    pub fn power_loss(&self, keep_unsynced: usize) {
        let mut st = self.state.lock();
        let mut kept = st.durable.clone();
        let unsynced = std::mem::take(&mut st.unsynced);
        for (cf, ops) in unsynced.iter().take(keep_unsynced) {
            apply(&mut kept, cf, ops);
        }
        st.live = kept.clone();
        st.durable = kept;
    }

    /// Writes since the last durable one.
    pub fn unsynced_writes(&self) -> usize {
        self.state.lock().unsynced.len()
    }
}

impl IndexStore for MemIndexStore {
    fn get(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.state.lock().live.get(cf).and_then(|m| m.get(key).cloned()))
    }

    fn range(
        &self,
        cf: &str,
        from: &[u8],
        to: &[u8],
        reverse: bool,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        if from >= to {
            return Ok(());
        }
        // Copy out so `visit` runs without the lock.
        let entries: Vec<(Vec<u8>, Vec<u8>)> = {
            let st = self.state.lock();
            let Some(map) = st.live.get(cf) else { return Ok(()) };
            let range = map.range(from.to_vec()..to.to_vec());
            if reverse {
                range.rev().map(|(k, v)| (k.clone(), v.clone())).collect()
            } else {
                range.map(|(k, v)| (k.clone(), v.clone())).collect()
            }
        };
        for (k, v) in entries {
            if !visit(&k, &v) {
                break;
            }
        }
        Ok(())
    }

    fn write(&self, cf: &str, ops: &[IndexOp], durable: bool) -> Result<()> {
        // Worded as RocksDB words its errors.
        match self.rules.lock().hit(FaultOp::IndexWrite, Path::new(cf)) {
            Some(libc::ENOSPC) => {
                return Err(Error::DiskFull("rocksdb: IO error: No space left on device (injected)".into()))
            }
            Some(_) => return Err(Error::Storage("rocksdb: IO error: Input/output error (injected)".into())),
            None => {}
        }
        let mut st = self.state.lock();
        apply(&mut st.live, cf, ops);
        if durable {
            let pending = std::mem::take(&mut st.unsynced);
            for (c, o) in &pending {
                apply(&mut st.durable, c, o);
            }
            apply(&mut st.durable, cf, ops);
        } else {
            st.unsynced.push((cf.to_string(), ops.to_vec()));
        }
        Ok(())
    }
}
