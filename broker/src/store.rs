//! The broker's one RocksDB instance.
//!
//! RocksDB holds indexes and state, never record bytes. Each partition has a
//! column family of its own (`p/<topic>-<partition>`), created and dropped with
//! the partition; the broker-wide `meta` column family holds topic metadata.
//! All column families share one block cache and one write-buffer manager so
//! memory stays bounded however many partitions the broker carries.

use std::path::Path;
use std::sync::Arc;

use rocksdb::{
    BlockBasedOptions, BoundColumnFamily, Cache, ColumnFamilyDescriptor, MultiThreaded, Options, WriteBatch,
    WriteBufferManager, WriteOptions,
};

use crate::error::{Error, Result};
use crate::log::index_store::{IndexOp, IndexStore};

type Db = rocksdb::DBWithThreadMode<MultiThreaded>;

const META_CF: &str = "meta";
const PARTITION_CF_PREFIX: &str = "p/";

pub struct Store {
    db: Db,
    cf_options: Options,
    _cache: Cache,
    _write_buffers: WriteBufferManager,
}

impl Store {
    pub fn open(dir: &Path, block_cache_bytes: usize, write_buffer_bytes: usize) -> Result<Arc<Store>> {
        std::fs::create_dir_all(dir)?;
        let cache = Cache::new_lru_cache(block_cache_bytes);
        let write_buffers =
            WriteBufferManager::new_write_buffer_manager_with_cache(write_buffer_bytes, false, cache.clone());
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_bloom_filter(10.0, false);

        let mut cf_options = Options::default();
        cf_options.set_block_based_table_factory(&table);
        // Small memtables: a partition's index grows by ~20 bytes per 4 KiB of
        // log, so even busy partitions need little; the shared manager caps
        // the sum.
        cf_options.set_write_buffer_size(4 << 20);

        let mut db_options = cf_options.clone();
        db_options.create_if_missing(true);
        db_options.create_missing_column_families(true);
        db_options.set_write_buffer_manager(&write_buffers);
        // With many column families the WAL could only be recycled once every
        // one of them flushed; cap it so idle partitions get flushed.
        db_options.set_max_total_wal_size(64 << 20);
        db_options.set_max_open_files(512);
        db_options.set_keep_log_file_num(4);

        let mut names = Db::list_cf(&db_options, dir).unwrap_or_default();
        for required in ["default", META_CF] {
            if !names.iter().any(|n| n == required) {
                names.push(required.to_string());
            }
        }
        let descriptors =
            names.iter().map(|n| ColumnFamilyDescriptor::new(n, cf_options.clone())).collect::<Vec<_>>();
        let db = Db::open_cf_descriptors(&db_options, dir, descriptors)?;
        Ok(Arc::new(Store { db, cf_options, _cache: cache, _write_buffers: write_buffers }))
    }

    pub fn partition_cf_name(dir_name: &str) -> String {
        format!("{PARTITION_CF_PREFIX}{dir_name}")
    }

    /// Every partition column family's name.
    pub fn partition_cfs(&self, dir: &Path) -> Vec<String> {
        Db::list_cf(&Options::default(), dir)
            .unwrap_or_default()
            .into_iter()
            .filter(|n| n.starts_with(PARTITION_CF_PREFIX))
            .collect()
    }

    pub fn has_cf(&self, name: &str) -> bool {
        self.db.cf_handle(name).is_some()
    }

    pub fn create_cf(&self, name: &str) -> Result<()> {
        if self.db.cf_handle(name).is_none() {
            self.db.create_cf(name, &self.cf_options)?;
        }
        Ok(())
    }

    pub fn drop_cf(&self, name: &str) -> Result<()> {
        if self.db.cf_handle(name).is_some() {
            self.db.drop_cf(name)?;
        }
        Ok(())
    }

    pub fn cf(&self, name: &str) -> Result<Arc<BoundColumnFamily<'_>>> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| Error::Storage(format!("column family {name} is gone (partition deleted?)")))
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Writes with the WAL but without fsync: survives a process crash, and
    /// everything written this way can be rebuilt from the segment files.
    pub fn write(&self, batch: WriteBatch) -> Result<()> {
        self.db.write(batch)?;
        Ok(())
    }

    /// Writes and fsyncs the WAL: for metadata that cannot be rebuilt.
    pub fn write_durable(&self, batch: WriteBatch) -> Result<()> {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(batch, &opts)?;
        Ok(())
    }

    /// Makes every write so far durable.
    pub fn sync(&self) -> Result<()> {
        self.db.flush_wal(true)?;
        Ok(())
    }

    pub fn meta_put(&self, key: &str, value: &[u8]) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.put_cf(&self.cf(META_CF)?, key.as_bytes(), value);
        self.write_durable(batch)
    }

    pub fn meta_delete(&self, key: &str) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.delete_cf(&self.cf(META_CF)?, key.as_bytes());
        self.write_durable(batch)
    }

    /// Every `(key, value)` in `meta` whose key starts with `prefix`.
    pub fn meta_scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let cf = self.cf(META_CF)?;
        let mut out = Vec::new();
        for item in self.db.prefix_iterator_cf(&cf, prefix.as_bytes()) {
            let (k, v) = item?;
            if !k.starts_with(prefix.as_bytes()) {
                break;
            }
            out.push((String::from_utf8_lossy(&k).into_owned(), v.to_vec()));
        }
        Ok(out)
    }
}

/// Partition indexes live in the partition's column family.
impl IndexStore for Store {
    fn get(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(&self.cf(cf)?, key)?)
    }

    fn range(
        &self,
        cf: &str,
        from: &[u8],
        to: &[u8],
        reverse: bool,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        let handle = self.cf(cf)?;
        let mut it = self.db.raw_iterator_cf(&handle);
        if reverse {
            it.seek_for_prev(to);
            // `to` is exclusive.
            if it.key() == Some(to) {
                it.prev();
            }
        } else {
            it.seek(from);
        }
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if k < from || k >= to || !visit(k, v) {
                break;
            }
            if reverse {
                it.prev();
            } else {
                it.next();
            }
        }
        it.status()?;
        Ok(())
    }

    fn write(&self, cf: &str, ops: &[IndexOp], durable: bool) -> Result<()> {
        let handle = self.cf(cf)?;
        let mut batch = WriteBatch::default();
        for op in ops {
            match op {
                IndexOp::Put(k, v) => batch.put_cf(&handle, k, v),
                IndexOp::Delete(k) => batch.delete_cf(&handle, k),
                IndexOp::DeleteRange(from, to) => batch.delete_range_cf(&handle, from, to),
            }
        }
        if durable {
            self.write_durable(batch)
        } else {
            Store::write(self, batch)
        }
    }
}
