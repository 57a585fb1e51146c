//! The topics this broker holds: their metadata (persisted in RocksDB's
//! `meta` column family) and their partitions.
//!
//! Admin changes are validated whole before anything is touched, then
//! applied; they are serialised by one lock so two admin calls never
//! interleave. Crash safety: a topic exists once its metadata record is
//! written (fsynced). Partition state is tied to the topic's id: each
//! partition's column family is `p/<topic>-<partition>@<topic id>`, and its
//! directory holds a `.topic-id` marker, so a topic deleted and re-created
//! under the same name never sees its predecessor's state. Column families
//! and directories of topics that no longer exist are leftovers of an
//! interrupted create or delete and are removed on start — only those the
//! broker knows it created (partition column families, directories with a
//! marker).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::config::{validate_topic_name, TopicConfig};
use crate::error::{Error, Result};
use crate::log::fs::LogFs;
use crate::log::index::PartitionIndex;
use crate::log::PartitionLog;
use crate::partition::Partition;
use crate::store::Store;

/// Most partitions one topic may have; a guard against typos.
pub const MAX_PARTITIONS: u32 = 10_000;

/// A topic's persisted metadata.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TopicRecord {
    name: String,
    id: String,
    partitions: u32,
    replication_factor: u32,
    configs: BTreeMap<String, String>,
    /// The partitions this broker hosts; absent: all of them (topics from
    /// before replication).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hosted: Option<Vec<u32>>,
}

pub struct Topic {
    pub name: String,
    pub id: String,
    overrides: RwLock<BTreeMap<String, String>>,
    config: RwLock<Arc<TopicConfig>>,
    /// Hosted partitions by id (with replication, a broker holds only the
    /// partitions it has a replica of).
    partitions: RwLock<BTreeMap<u32, Arc<Partition>>>,
    /// The topic's partition count (hosted or not).
    count: RwLock<u32>,
    replication: RwLock<u32>,
}

impl Topic {
    pub fn config(&self) -> Arc<TopicConfig> {
        self.config.read().clone()
    }

    pub fn overrides(&self) -> BTreeMap<String, String> {
        self.overrides.read().clone()
    }

    /// The hosted partitions, by id.
    pub fn partitions(&self) -> Vec<Arc<Partition>> {
        self.partitions.read().values().cloned().collect()
    }

    pub fn partition_count(&self) -> u32 {
        *self.count.read()
    }

    pub fn replication_factor(&self) -> u32 {
        *self.replication.read()
    }

    pub fn partition(&self, id: u32) -> Result<Arc<Partition>> {
        let parts = self.partitions.read();
        parts.get(&id).cloned().ok_or_else(|| Error::UnknownPartition {
            topic: self.name.clone(),
            partition: id,
            count: self.partition_count(),
        })
    }

    fn record(&self) -> TopicRecord {
        TopicRecord {
            name: self.name.clone(),
            id: self.id.clone(),
            partitions: self.partition_count(),
            replication_factor: self.replication_factor(),
            configs: self.overrides(),
            hosted: Some(self.partitions.read().keys().copied().collect()),
        }
    }
}

/// A topic to create.
pub struct NewTopic {
    pub name: String,
    pub partitions: u32,
    /// 0: the broker default (1).
    pub replication_factor: u32,
    pub configs: BTreeMap<String, String>,
}

/// The marker file in a partition directory: the id of its topic.
const TOPIC_ID_FILE: &str = ".topic-id";

/// Internal topics (`__` names) are written only by the brokers.
pub fn is_internal(name: &str) -> bool {
    name.starts_with("__")
}

pub struct Topics {
    store: Arc<Store>,
    fs: Arc<dyn LogFs>,
    data_dir: PathBuf,
    defaults: TopicConfig,
    map: RwLock<HashMap<String, Arc<Topic>>>,
    admin: Mutex<()>,
}

fn meta_key(name: &str) -> String {
    format!("topic/{name}")
}

pub fn new_topic_id() -> String {
    // Unique enough for telling a re-created topic from its predecessor.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{:032x}", nanos ^ (u128::from(std::process::id()) << 96))
}

impl Topics {
    /// Loads every topic and recovers its partitions' logs.
    pub fn load(
        store: Arc<Store>,
        fs: Arc<dyn LogFs>,
        data_dir: &Path,
        defaults: TopicConfig,
        now_ms: i64,
    ) -> Result<Topics> {
        let topics = Topics {
            store,
            fs,
            data_dir: data_dir.to_path_buf(),
            defaults,
            map: RwLock::new(HashMap::new()),
            admin: Mutex::new(()),
        };
        topics.fs.create_dir_all(data_dir)?;
        let mut expected = HashSet::new();
        for (_, value) in topics.store.meta_scan("topic/")? {
            let record: TopicRecord = serde_json::from_slice(&value)
                .map_err(|e| Error::Storage(format!("unreadable topic metadata: {e}")))?;
            let config = TopicConfig::resolve(&topics.defaults, &record.configs)?;
            let mut partitions = BTreeMap::new();
            let hosted = record.hosted.clone().unwrap_or_else(|| (0..record.partitions).collect());
            for p in hosted {
                let (partition, cf) = topics.open_partition(&record.name, &record.id, p, &config, now_ms)?;
                expected.insert(cf);
                expected.insert(Partition::dir_name(&record.name, p));
                partitions.insert(p, partition);
            }
            tracing::info!(topic = %record.name, partitions = record.partitions, "loaded topic");
            topics.map.write().insert(
                record.name.clone(),
                Arc::new(Topic {
                    name: record.name,
                    id: record.id,
                    overrides: RwLock::new(record.configs),
                    config: RwLock::new(Arc::new(config)),
                    partitions: RwLock::new(partitions),
                    count: RwLock::new(record.partitions),
                    replication: RwLock::new(record.replication_factor),
                }),
            );
        }
        topics.remove_orphans(&expected)?;
        Ok(topics)
    }

    /// Opens (creating if new) one partition; returns it and its column
    /// family's name.
    fn open_partition(
        &self,
        topic: &str,
        topic_id: &str,
        p: u32,
        config: &TopicConfig,
        now_ms: i64,
    ) -> Result<(Arc<Partition>, String)> {
        let dir_name = Partition::dir_name(topic, p);
        let dir = self.data_dir.join(&dir_name);
        // Topics created before ids were part of the name keep their
        // column family.
        let legacy = Store::partition_cf_name(&dir_name);
        let cf = if self.store.has_cf(&legacy) {
            legacy
        } else {
            Store::partition_cf_name(&format!("{dir_name}@{topic_id}"))
        };
        self.store.create_cf(&cf)?;
        if !self.fs.exists(&dir) {
            self.fs.create_dir_all(&dir)?;
            // The directory's own entry must survive a power loss too.
            self.fs.sync_dir(&self.data_dir)?;
        }
        self.write_marker(&dir, topic_id)?;
        let index = PartitionIndex::new(self.store.clone(), cf.clone());
        let log = PartitionLog::open(self.fs.clone(), dir, topic.to_string(), p, index, config, now_ms)?;
        Ok((Partition::new(log, self.fs.clone()), cf))
    }

    /// Records which topic a partition directory belongs to (durably: the
    /// orphan clean-up trusts it).
    fn write_marker(&self, dir: &Path, topic_id: &str) -> Result<()> {
        let path = dir.join(TOPIC_ID_FILE);
        if self.marker(dir).as_deref() == Some(topic_id) {
            return Ok(());
        }
        let f = self.fs.create(&path)?;
        f.write_all_at(topic_id.as_bytes(), 0)?;
        f.sync()?;
        self.fs.sync_dir(dir)?;
        Ok(())
    }

    fn marker(&self, dir: &Path) -> Option<String> {
        let f = self.fs.open(&dir.join(TOPIC_ID_FILE)).ok()?;
        let bytes = crate::log::fs::read_exact_or_eof(&*f, 0, 64).ok()?;
        String::from_utf8(bytes).ok()
    }

    fn remove_orphans(&self, expected: &HashSet<String>) -> Result<()> {
        for cf in self.store.partition_cfs(&self.data_dir.join(crate::STORE_DIR)) {
            if !expected.contains(&cf) {
                tracing::warn!(column_family = %cf, "dropping column family of a deleted topic");
                self.store.drop_cf(&cf)?;
            }
        }
        for name in self.fs.list(&self.data_dir)? {
            let path = self.data_dir.join(&name);
            if expected.contains(&name) || !self.fs.exists(&path.join(TOPIC_ID_FILE)) {
                // Not a partition directory this broker made: leave it alone.
                continue;
            }
            tracing::warn!(dir = %path.display(), "removing data of a deleted topic");
            self.fs.remove_dir_all(&path)?;
        }
        Ok(())
    }

    pub fn defaults(&self) -> &TopicConfig {
        &self.defaults
    }

    pub fn get(&self, name: &str) -> Result<Arc<Topic>> {
        self.map.read().get(name).cloned().ok_or_else(|| Error::UnknownTopic(name.to_string()))
    }

    pub fn partition(&self, topic: &str, partition: u32) -> Result<Arc<Partition>> {
        self.get(topic)?.partition(partition)
    }

    /// Every topic, sorted by name.
    pub fn list(&self) -> Vec<Arc<Topic>> {
        let mut all: Vec<_> = self.map.read().values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    fn validate_new(&self, t: &NewTopic, internal: bool) -> Result<TopicConfig> {
        validate_topic_name(&t.name)?;
        if !internal && is_internal(&t.name) {
            return Err(Error::InvalidTopicName {
                name: t.name.clone(),
                reason: "names starting with '__' are reserved for internal topics",
            });
        }
        if self.map.read().contains_key(&t.name) {
            return Err(Error::TopicExists(t.name.clone()));
        }
        if t.partitions == 0 || t.partitions > MAX_PARTITIONS {
            return Err(Error::InvalidPartitions(format!(
                "topic '{}' asks for {} partitions; give 1 to {MAX_PARTITIONS}",
                t.name, t.partitions
            )));
        }
        if t.replication_factor > 1 {
            return Err(Error::InvalidReplicationFactor(format!(
                "topic '{}' asks for replication factor {} but this local topic has one broker",
                t.name, t.replication_factor
            )));
        }
        TopicConfig::resolve(&self.defaults, &t.configs)
    }

    /// Creates topics; all or nothing with respect to validation.
    pub fn create(&self, new: Vec<NewTopic>, validate_only: bool, now_ms: i64) -> Result<Vec<String>> {
        let _admin = self.admin.lock();
        let mut seen = HashSet::new();
        let mut checked = Vec::with_capacity(new.len());
        for t in new {
            if !seen.insert(t.name.clone()) {
                return Err(Error::InvalidRequest(format!("topic '{}' is named twice", t.name)));
            }
            let config = self.validate_new(&t, false)?;
            checked.push((t, config));
        }
        if validate_only {
            return Ok(checked.into_iter().map(|(t, _)| t.name).collect());
        }
        let mut created = Vec::new();
        for (t, config) in checked {
            created.push(self.create_checked(t, config, now_ms)?);
        }
        Ok(created)
    }

    /// Creates an internal topic (such as `__consumer_offsets`).
    pub fn create_internal(&self, t: NewTopic, now_ms: i64) -> Result<()> {
        let _admin = self.admin.lock();
        let config = self.validate_new(&t, true)?;
        self.create_checked(t, config, now_ms).map(|_| ())
    }

    fn create_checked(&self, t: NewTopic, config: TopicConfig, now_ms: i64) -> Result<String> {
        {
            let id = new_topic_id();
            let mut partitions = BTreeMap::new();
            for p in 0..t.partitions {
                partitions.insert(p, self.open_partition(&t.name, &id, p, &config, now_ms)?.0);
            }
            let topic = Arc::new(Topic {
                name: t.name.clone(),
                id,
                overrides: RwLock::new(t.configs),
                config: RwLock::new(Arc::new(config)),
                partitions: RwLock::new(partitions),
                count: RwLock::new(t.partitions),
                replication: RwLock::new(t.replication_factor.max(1)),
            });
            self.persist(&topic)?;
            self.map.write().insert(t.name.clone(), topic);
            tracing::info!(topic = %t.name, partitions = t.partitions, "created topic");
            Ok(t.name)
        }
    }

    fn persist(&self, topic: &Topic) -> Result<()> {
        let value = serde_json::to_vec(&topic.record()).map_err(|e| Error::Storage(e.to_string()))?;
        self.store.meta_put(&meta_key(&topic.name), &value)
    }

    /// Deletes topics and their data; every name must exist and none may
    /// be internal.
    ///
    /// Order: fence each partition (an append in progress finishes, then
    /// nothing more runs on it, in-flight fsync tickets included), delete
    /// the files (that needs no free space, so it works on a full disk),
    /// then the metadata, then the column families.
    pub fn delete(&self, names: &[String]) -> Result<Vec<String>> {
        let _admin = self.admin.lock();
        for n in names {
            self.get(n)?;
            if is_internal(n) {
                return Err(Error::InternalTopic(n.clone()));
            }
        }
        let mut deleted = Vec::new();
        for n in names {
            let topic = self.get(n)?;
            for p in topic.partitions() {
                p.fence("the topic is being deleted");
                let dir = self.data_dir.join(Partition::dir_name(n, p.id));
                if self.fs.exists(&dir) {
                    self.fs.remove_dir_all(&dir)?;
                }
            }
            self.store.meta_delete(&meta_key(n))?;
            self.map.write().remove(n);
            for p in topic.partitions() {
                let dir_name = Partition::dir_name(n, p.id);
                for cf in [
                    Store::partition_cf_name(&format!("{dir_name}@{}", topic.id)),
                    Store::partition_cf_name(&dir_name),
                ] {
                    // Left behind on failure: dropped at the next start.
                    if let Err(e) = self.store.drop_cf(&cf) {
                        tracing::warn!(column_family = %cf, error = %e, "dropping a deleted partition's index");
                    }
                }
            }
            tracing::info!(topic = %n, "deleted topic");
            deleted.push(n.clone());
        }
        Ok(deleted)
    }

    /// Sets and removes config overrides; returns the resulting overrides.
    pub fn alter_configs(
        &self,
        name: &str,
        set: BTreeMap<String, String>,
        delete: &[String],
        validate_only: bool,
    ) -> Result<BTreeMap<String, String>> {
        let _admin = self.admin.lock();
        let topic = self.get(name)?;
        if is_internal(name) {
            return Err(Error::InternalTopic(name.to_string()));
        }
        let mut overrides = topic.overrides();
        for k in delete {
            if !crate::config::TOPIC_KEYS.iter().any(|(key, _)| key == k) {
                return Err(Error::UnknownConfig(k.clone()));
            }
            overrides.remove(k);
        }
        overrides.extend(set);
        let config = TopicConfig::resolve(&self.defaults, &overrides)?;
        if validate_only {
            return Ok(overrides);
        }
        *topic.overrides.write() = overrides.clone();
        *topic.config.write() = Arc::new(config);
        self.persist(&topic)?;
        Ok(overrides)
    }

    /// Grows a topic to `total` partitions.
    pub fn create_partitions(&self, name: &str, total: u32, validate_only: bool, now_ms: i64) -> Result<u32> {
        let _admin = self.admin.lock();
        let topic = self.get(name)?;
        if is_internal(name) {
            return Err(Error::InternalTopic(name.to_string()));
        }
        let current = topic.partition_count();
        if total < current {
            return Err(Error::InvalidPartitions(format!(
                "topic '{name}' has {current} partitions; the count can only grow (asked for {total})"
            )));
        }
        if total == current {
            return Err(Error::InvalidPartitions(format!("topic '{name}' already has {current} partitions")));
        }
        if total > MAX_PARTITIONS {
            return Err(Error::InvalidPartitions(format!("at most {MAX_PARTITIONS} partitions per topic")));
        }
        if validate_only {
            return Ok(total);
        }
        let config = topic.config();
        let mut added = Vec::new();
        for p in current..total {
            added.push((p, self.open_partition(name, &topic.id, p, &config, now_ms)?.0));
        }
        topic.partitions.write().extend(added);
        *topic.count.write() = total;
        self.persist(&topic)?;
        Ok(total)
    }

    /// Makes this broker host `hosted` partitions of the quorum's `record`:
    /// creates the local topic (or replaces a local one with another id: a
    /// topic deleted and re-created while this broker was away), opens
    /// missing partitions, and takes the configs and counts. Idempotent.
    pub fn ensure_hosted(
        &self,
        record: &crate::cluster::state::TopicRecord,
        hosted: &[u32],
        now_ms: i64,
    ) -> Result<()> {
        let _admin = self.admin.lock();
        if let Ok(existing) = self.get(&record.name) {
            if existing.id != record.id {
                drop(_admin);
                self.delete_local(&record.name)?;
                return self.ensure_hosted(record, hosted, now_ms);
            }
        }
        let config = TopicConfig::resolve(&self.defaults, &record.configs)?;
        let topic = match self.get(&record.name) {
            Ok(t) => t,
            Err(_) => {
                let t = Arc::new(Topic {
                    name: record.name.clone(),
                    id: record.id.clone(),
                    overrides: RwLock::new(record.configs.clone()),
                    config: RwLock::new(Arc::new(config.clone())),
                    partitions: RwLock::new(BTreeMap::new()),
                    count: RwLock::new(record.partitions.len() as u32),
                    replication: RwLock::new(record.replication_factor()),
                });
                self.map.write().insert(record.name.clone(), t.clone());
                tracing::info!(topic = %record.name, "hosting topic");
                t
            }
        };
        let mut changed = false;
        if *topic.overrides.read() != record.configs {
            *topic.overrides.write() = record.configs.clone();
            *topic.config.write() = Arc::new(config.clone());
            changed = true;
        }
        let count = record.partitions.len() as u32;
        if *topic.count.read() != count || *topic.replication.read() != record.replication_factor() {
            *topic.count.write() = count;
            *topic.replication.write() = record.replication_factor();
            changed = true;
        }
        for p in hosted {
            if topic.partitions.read().contains_key(p) {
                continue;
            }
            let partition = self.open_partition(&record.name, &record.id, *p, &config, now_ms)?.0;
            topic.partitions.write().insert(*p, partition);
            changed = true;
        }
        if changed {
            self.persist(&topic)?;
        }
        Ok(())
    }

    /// Removes this broker's replica of one partition (a reassignment moved
    /// it elsewhere): fenced, files and index gone.
    pub fn remove_partition(&self, name: &str, id: u32) -> Result<()> {
        let _admin = self.admin.lock();
        let Ok(topic) = self.get(name) else { return Ok(()) };
        let Some(p) = topic.partitions.write().remove(&id) else { return Ok(()) };
        p.fence("the replica moved to another broker");
        let dir_name = Partition::dir_name(name, id);
        let dir = self.data_dir.join(&dir_name);
        if self.fs.exists(&dir) {
            self.fs.remove_dir_all(&dir)?;
        }
        self.persist(&topic)?;
        for cf in [
            Store::partition_cf_name(&format!("{dir_name}@{}", topic.id)),
            Store::partition_cf_name(&dir_name),
        ] {
            if let Err(e) = self.store.drop_cf(&cf) {
                tracing::warn!(column_family = %cf, error = %e, "dropping a moved partition's index");
            }
        }
        tracing::info!(topic = %name, partition = id, "removed a replica that moved elsewhere");
        Ok(())
    }

    /// Deletes a topic's local data (the quorum deleted it, or re-created
    /// it under a new id). Same order as [`Topics::delete`].
    pub fn delete_local(&self, name: &str) -> Result<()> {
        let _admin = self.admin.lock();
        let Ok(topic) = self.get(name) else { return Ok(()) };
        for p in topic.partitions() {
            p.fence("the topic is being deleted");
            let dir = self.data_dir.join(Partition::dir_name(name, p.id));
            if self.fs.exists(&dir) {
                self.fs.remove_dir_all(&dir)?;
            }
        }
        self.store.meta_delete(&meta_key(name))?;
        self.map.write().remove(name);
        for p in topic.partitions() {
            let dir_name = Partition::dir_name(name, p.id);
            for cf in [
                Store::partition_cf_name(&format!("{dir_name}@{}", topic.id)),
                Store::partition_cf_name(&dir_name),
            ] {
                if let Err(e) = self.store.drop_cf(&cf) {
                    tracing::warn!(column_family = %cf, error = %e, "dropping a deleted partition's index");
                }
            }
        }
        tracing::info!(topic = %name, "deleted local replicas of topic");
        Ok(())
    }

    /// Checks a topic to create against the quorum's metadata: name,
    /// partition count, replication factor (at most the live brokers) and
    /// configs. Returns the resolved replication factor.
    pub fn validate_spec(
        &self,
        t: &NewTopic,
        internal: bool,
        exists: bool,
        live_brokers: u32,
        default_rf: u32,
    ) -> Result<u32> {
        validate_topic_name(&t.name)?;
        if !internal && is_internal(&t.name) {
            return Err(Error::InvalidTopicName {
                name: t.name.clone(),
                reason: "names starting with '__' are reserved for internal topics",
            });
        }
        if exists {
            return Err(Error::TopicExists(t.name.clone()));
        }
        if t.partitions == 0 || t.partitions > MAX_PARTITIONS {
            return Err(Error::InvalidPartitions(format!(
                "topic '{}' asks for {} partitions; give 1 to {MAX_PARTITIONS}",
                t.name, t.partitions
            )));
        }
        let rf = if t.replication_factor == 0 {
            default_rf.min(live_brokers).max(1)
        } else {
            t.replication_factor
        };
        if rf > live_brokers {
            return Err(Error::InvalidReplicationFactor(format!(
                "topic '{}' asks for replication factor {rf} but the cluster has {live_brokers} live broker(s)",
                t.name
            )));
        }
        let config = TopicConfig::resolve(&self.defaults, &t.configs)?;
        if config.min_insync_replicas > i64::from(rf) {
            return Err(Error::InvalidConfigValue {
                key: "min.insync.replicas".into(),
                value: config.min_insync_replicas.to_string(),
                reason: format!("must not exceed the replication factor ({rf})"),
            });
        }
        Ok(rf)
    }

    /// Clean shutdown of every partition log.
    pub fn close_all(&self) {
        for topic in self.list() {
            for p in topic.partitions() {
                if let Err(e) = p.with_log(|log| log.close()) {
                    tracing::error!(topic = %p.topic, partition = p.id, error = %e, "closing partition");
                }
            }
        }
        if let Err(e) = self.store.sync() {
            tracing::error!(error = %e, "syncing the store");
        }
    }
}
