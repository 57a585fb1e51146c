//! The key-value store under a partition's indexes, behind a seam.
//!
//! Production: the broker's RocksDB ([`crate::store::Store`]), one column
//! family per partition. Tests: [`super::fault::MemIndexStore`], which keeps
//! what was written in memory, forgets everything not yet synced when told
//! to "lose power" (as RocksDB does with WAL writes that were not fsynced),
//! and can fail writes the way a full disk or a RocksDB background error
//! does. RocksDB cannot take a Rust file system, so this is the seam where
//! its failures are injected.

use crate::error::Result;

/// One change in an index write; a write applies all of its ops or none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexOp {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    /// Deletes keys in `[from, to)`.
    DeleteRange(Vec<u8>, Vec<u8>),
}

pub trait IndexStore: Send + Sync {
    fn get(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Calls `visit` with the entries whose keys are in `[from, to)`,
    /// ascending (descending when `reverse`), until it returns false.
    fn range(
        &self,
        cf: &str,
        from: &[u8],
        to: &[u8],
        reverse: bool,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()>;

    /// Applies `ops` atomically. `durable`: also make it, and every write
    /// before it, survive a power loss (RocksDB: fsync the WAL).
    fn write(&self, cf: &str, ops: &[IndexOp], durable: bool) -> Result<()>;
}
