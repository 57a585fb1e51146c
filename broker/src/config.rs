//! Broker settings (flags and the `--config` TOML file) and per-topic
//! settings (the Kafka-style `retention.ms`-like keys), with their validation.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::error::{Error, Result};

/// Settings of one broker process. Every field has an embedded default, so a
/// broker runs with no file and no flag.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    pub node_id: i32,
    pub data_dir: PathBuf,
    /// gRPC listener.
    pub listen: SocketAddr,
    /// HTTP listener: /healthz, /readyz, /metrics.
    pub http_listen: SocketAddr,
    /// Address clients are told to connect to (Metadata); defaults to `listen`.
    pub advertised_address: Option<String>,
    /// Where other brokers and clients reach the HTTP port (the schema
    /// registry forwards writes there); defaults to `http_listen`, with the
    /// advertised host when `http_listen` binds every interface.
    pub http_advertised_address: Option<String>,
    /// Kafka-protocol listener. Unset: `127.0.0.1:9092` if that port is
    /// free (several brokers on one host cannot all have it; the ones that
    /// do not get it run without the Kafka listener and say so). Set: the
    /// broker does not start unless it can bind it.
    pub kafka_listen: Option<SocketAddr>,
    /// Where Kafka clients reach this broker (Metadata tells them);
    /// defaults to the Kafka listen address, with the advertised host when
    /// it binds every interface.
    pub kafka_advertised_address: Option<String>,
    /// Largest Kafka request a client may send (its size prefix); a larger
    /// one closes the connection (Kafka's `socket.request.max.bytes`).
    pub kafka_max_request_bytes: u32,
    /// How often segments are checked for retention and rolled by age.
    pub retention_check_interval_ms: u64,
    /// How often compacted topics are looked at by the log cleaner.
    pub cleaner_interval_ms: u64,
    /// RocksDB block cache shared by every partition's column family.
    pub block_cache_bytes: usize,
    /// Memtable budget shared by every column family (RocksDB write buffer
    /// manager), so memory stays bounded with thousands of partitions.
    pub write_buffer_bytes: usize,
    /// Partitions of the internal `__consumer_offsets` topic.
    pub offsets_topic_partitions: u32,
    /// Committed offsets of a group that has been empty this long are
    /// deleted (Kafka's `offsets.retention.minutes`).
    pub offsets_retention_minutes: f64,
    /// Largest fetch response, in bytes (a client's `max_bytes` above it is
    /// capped; one batch larger than it is still returned whole).
    pub fetch_max_bytes: u32,
    /// Emergency reserve: a file of this size kept in the data directory and
    /// removed when the disk fills, so the broker can still start, delete
    /// topics and run retention. 0 disables it.
    pub disk_reserve_bytes: u64,
    /// Topic config defaults, by Kafka-style key (`retention.ms` = "...").
    pub topic_defaults: BTreeMap<String, String>,
    /// `--peers`: `ID@HOST:PORT,...`, how this broker reaches the others
    /// (read only to form a new cluster; empty: a one-node cluster).
    pub peers: String,
    /// `--controllers`: the Raft voters (empty: the first three peers).
    pub controllers: String,
    /// The cluster's human name (mirroring and the audit call tiers by it).
    pub cluster_name: String,
    /// This broker's rack: replicas of a partition spread across racks.
    pub rack: String,
    /// The controller fences a broker it has not heard from for this long.
    pub broker_session_timeout_ms: u64,
    pub broker_heartbeat_interval_ms: u64,
    /// A follower not caught up for this long leaves the ISR.
    pub replica_lag_time_max_ms: u64,
    /// Replication factor of topics created without one.
    pub default_replication_factor: u32,
    /// acks=all waits at most this long for the ISR (unless the request
    /// gives a shorter timeout).
    pub replication_timeout_ms: u64,
    /// A REST proxy consumer instance not used for this long is closed
    /// (Confluent's `consumer.instance.timeout.ms`).
    pub rest_consumer_instance_timeout_ms: u64,
    /// Most REST proxy consumer instances one broker holds.
    pub rest_max_consumer_instances: usize,
    /// The audit's tier name for this cluster's own counts (empty: the
    /// cluster name).
    pub audit_tier: String,
    /// Width of the audit's count windows (`audit.window.ms`).
    pub audit_window_ms: u64,
    /// A window is closed (its counts final) this long after it ends
    /// (`audit.grace.ms`).
    pub audit_grace_ms: u64,
    /// How often this cluster's append counts are written to `__audit`
    /// and mirror links carry their source's `__audit` here.
    pub audit_publish_interval_ms: u64,
    /// How long audit counts are kept: `__audit` deletes records older
    /// than this (besides compacting), and brokers forget windows that
    /// ended this long ago (appends with older timestamps are not counted).
    pub audit_retention_ms: u64,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            node_id: 0,
            data_dir: PathBuf::from("./data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 7071)),
            advertised_address: None,
            http_advertised_address: None,
            kafka_listen: None,
            kafka_advertised_address: None,
            kafka_max_request_bytes: 100 << 20,
            retention_check_interval_ms: 30_000,
            cleaner_interval_ms: 15_000,
            block_cache_bytes: 64 << 20,
            write_buffer_bytes: 128 << 20,
            offsets_topic_partitions: 8,
            offsets_retention_minutes: 7.0 * 24.0 * 60.0,
            fetch_max_bytes: 50 << 20,
            disk_reserve_bytes: 64 << 20,
            topic_defaults: BTreeMap::new(),
            peers: String::new(),
            controllers: String::new(),
            cluster_name: "tributary".to_string(),
            rack: String::new(),
            broker_session_timeout_ms: 9000,
            broker_heartbeat_interval_ms: 1000,
            replica_lag_time_max_ms: 30_000,
            default_replication_factor: 1,
            replication_timeout_ms: 30_000,
            rest_consumer_instance_timeout_ms: 300_000,
            rest_max_consumer_instances: 1000,
            audit_tier: String::new(),
            audit_window_ms: 60_000,
            audit_grace_ms: 30_000,
            audit_publish_interval_ms: 5_000,
            audit_retention_ms: 7 * 24 * 3600 * 1000,
        }
    }
}

impl BrokerConfig {
    /// The tier this cluster's audit counts are tagged with.
    pub fn audit_tier(&self) -> &str {
        if self.audit_tier.is_empty() {
            &self.cluster_name
        } else {
            &self.audit_tier
        }
    }

    pub fn from_toml(text: &str) -> Result<Self, String> {
        let config: BrokerConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        // Defaults given in the file obey the same rules as a topic's own keys.
        TopicConfig::resolve(&TopicConfig::default(), &config.topic_defaults)
            .map_err(|e| format!("topic_defaults: {e}"))?;
        Ok(config)
    }

    /// Topic settings every topic starts from: built-ins overridden by
    /// `topic_defaults`.
    pub fn topic_defaults(&self) -> TopicConfig {
        TopicConfig::resolve(&TopicConfig::default(), &self.topic_defaults).unwrap_or_default()
    }

    pub fn advertised(&self) -> String {
        self.advertised_address.clone().unwrap_or_else(|| self.listen.to_string())
    }

    /// The Kafka listener's address when none is configured.
    pub const DEFAULT_KAFKA_LISTEN: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9092);

    /// The Kafka listener's address as clients reach it, given the address
    /// it bound.
    pub fn kafka_advertised(&self, bound: SocketAddr) -> String {
        if let Some(a) = &self.kafka_advertised_address {
            return a.clone();
        }
        if !bound.ip().is_unspecified() {
            return bound.to_string();
        }
        let advertised = self.advertised();
        let host = advertised.rsplit_once(':').map_or(advertised.as_str(), |(h, _)| h);
        format!("{host}:{}", bound.port())
    }

    /// The HTTP port's address as other hosts reach it.
    pub fn http_advertised(&self) -> String {
        if let Some(a) = &self.http_advertised_address {
            return a.clone();
        }
        if !self.http_listen.ip().is_unspecified() {
            return self.http_listen.to_string();
        }
        let advertised = self.advertised();
        let host = advertised.rsplit_once(':').map_or(advertised.as_str(), |(h, _)| h);
        format!("{host}:{}", self.http_listen.port())
    }
}

/// What to do with old data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanupPolicy {
    pub delete: bool,
    pub compact: bool,
}

/// Effective settings of one topic.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicConfig {
    pub cleanup_policy: CleanupPolicy,
    /// -1: keep forever.
    pub retention_ms: i64,
    /// -1: no size limit. Per partition.
    pub retention_bytes: i64,
    pub segment_bytes: u64,
    pub segment_ms: i64,
    pub delete_retention_ms: i64,
    pub min_compaction_lag_ms: i64,
    /// Largest batch accepted, in bytes.
    pub max_message_bytes: i64,
    /// fsync after this many records (1: every acknowledged produce is on disk).
    pub flush_messages: i64,
    /// fsync when the oldest unflushed record is this old.
    pub flush_ms: i64,
    pub index_interval_bytes: u64,
    pub min_insync_replicas: i64,
    /// Elect a replica that is not in sync when no in-sync one is left
    /// (available again, losing what only the in-sync ones held).
    pub unclean_leader_election: bool,
    /// Idempotent producers idle this long are forgotten.
    pub producer_id_expiration_ms: i64,
}

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig {
            cleanup_policy: CleanupPolicy { delete: true, compact: false },
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 3600 * 1000,
            delete_retention_ms: 24 * 3600 * 1000,
            min_compaction_lag_ms: 0,
            max_message_bytes: 1024 * 1024 + 12,
            flush_messages: i64::MAX,
            flush_ms: 1000,
            index_interval_bytes: 4096,
            min_insync_replicas: 1,
            unclean_leader_election: false,
            producer_id_expiration_ms: 24 * 3600 * 1000,
        }
    }
}

/// Every topic-level key the broker accepts, with a one-line meaning (shown by
/// error messages and the README's reference).
pub const TOPIC_KEYS: &[(&str, &str)] = &[
    ("cleanup.policy", "delete | compact | compact,delete"),
    ("retention.ms", "delete segments whose newest record is older than this; -1 keeps forever"),
    ("retention.bytes", "delete oldest segments while a partition is larger than this; -1 no limit"),
    ("segment.bytes", "roll to a new segment file at this size (1024 to 2147483647)"),
    ("segment.ms", "roll to a new segment file at this age"),
    ("delete.retention.ms", "how long a compacted topic keeps tombstones"),
    ("min.compaction.lag.ms", "records younger than this are never compacted"),
    ("max.message.bytes", "largest batch accepted"),
    ("flush.messages", "fsync after this many records; 1 makes every acknowledged record durable"),
    ("flush.ms", "fsync at least this often"),
    ("index.interval.bytes", "bytes between sparse offset-index entries"),
    ("min.insync.replicas", "replicas that must have a record before acks=all succeeds"),
    (
        "unclean.leader.election.enable",
        "true: with no in-sync replica left, elect one that is not (available again, losing what it lacks)",
    ),
    ("producer.id.expiration.ms", "idempotent producers idle this long are forgotten"),
];

/// Largest `segment.bytes`: index positions are 32-bit (Kafka's bound too).
pub const MAX_SEGMENT_BYTES: i64 = i32::MAX as i64;

fn parse_i64(key: &str, value: &str, min: i64) -> Result<i64> {
    let n: i64 = value.trim().parse().map_err(|_| Error::InvalidConfigValue {
        key: key.to_string(),
        value: value.to_string(),
        reason: "not an integer".into(),
    })?;
    if n < min {
        return Err(Error::InvalidConfigValue {
            key: key.to_string(),
            value: value.to_string(),
            reason: format!("must be at least {min}"),
        });
    }
    Ok(n)
}

fn parse_bool(key: &str, value: &str) -> Result<bool> {
    match value.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(Error::InvalidConfigValue {
            key: key.to_string(),
            value: value.to_string(),
            reason: "must be true or false".into(),
        }),
    }
}

fn parse_policy(value: &str) -> Result<CleanupPolicy> {
    let mut policy = CleanupPolicy { delete: false, compact: false };
    for part in value.split(',').map(str::trim) {
        match part {
            "delete" => policy.delete = true,
            "compact" => policy.compact = true,
            _ => {
                return Err(Error::InvalidConfigValue {
                    key: "cleanup.policy".into(),
                    value: value.into(),
                    reason: "must be delete, compact or compact,delete".into(),
                })
            }
        }
    }
    Ok(policy)
}

impl TopicConfig {
    /// `base` with `overrides` applied; the first invalid or unknown key fails
    /// the whole call.
    pub fn resolve(base: &TopicConfig, overrides: &BTreeMap<String, String>) -> Result<TopicConfig> {
        let mut c = base.clone();
        for (key, value) in overrides {
            let k = key.as_str();
            match k {
                "cleanup.policy" => c.cleanup_policy = parse_policy(value)?,
                "retention.ms" => c.retention_ms = parse_i64(k, value, -1)?,
                "retention.bytes" => c.retention_bytes = parse_i64(k, value, -1)?,
                "segment.bytes" => {
                    let n = parse_i64(k, value, 1024)?;
                    if n > MAX_SEGMENT_BYTES {
                        return Err(Error::InvalidConfigValue {
                            key: k.to_string(),
                            value: value.to_string(),
                            reason: format!("must be at most {MAX_SEGMENT_BYTES}"),
                        });
                    }
                    c.segment_bytes = n as u64;
                }
                "segment.ms" => c.segment_ms = parse_i64(k, value, 1)?,
                "delete.retention.ms" => c.delete_retention_ms = parse_i64(k, value, 0)?,
                "min.compaction.lag.ms" => c.min_compaction_lag_ms = parse_i64(k, value, 0)?,
                "max.message.bytes" => c.max_message_bytes = parse_i64(k, value, 0)?,
                "flush.messages" => c.flush_messages = parse_i64(k, value, 1)?,
                "flush.ms" => c.flush_ms = parse_i64(k, value, 0)?,
                "index.interval.bytes" => c.index_interval_bytes = parse_i64(k, value, 0)? as u64,
                "min.insync.replicas" => c.min_insync_replicas = parse_i64(k, value, 1)?,
                "unclean.leader.election.enable" => c.unclean_leader_election = parse_bool(k, value)?,
                "producer.id.expiration.ms" => c.producer_id_expiration_ms = parse_i64(k, value, 1)?,
                _ => return Err(Error::UnknownConfig(key.clone())),
            }
        }
        Ok(c)
    }

    /// All keys with their effective values, as strings.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        let policy = match (self.cleanup_policy.compact, self.cleanup_policy.delete) {
            (true, true) => "compact,delete",
            (true, false) => "compact",
            _ => "delete",
        };
        [
            ("cleanup.policy", policy.to_string()),
            ("retention.ms", self.retention_ms.to_string()),
            ("retention.bytes", self.retention_bytes.to_string()),
            ("segment.bytes", self.segment_bytes.to_string()),
            ("segment.ms", self.segment_ms.to_string()),
            ("delete.retention.ms", self.delete_retention_ms.to_string()),
            ("min.compaction.lag.ms", self.min_compaction_lag_ms.to_string()),
            ("max.message.bytes", self.max_message_bytes.to_string()),
            ("flush.messages", self.flush_messages.to_string()),
            ("flush.ms", self.flush_ms.to_string()),
            ("index.interval.bytes", self.index_interval_bytes.to_string()),
            ("min.insync.replicas", self.min_insync_replicas.to_string()),
            ("unclean.leader.election.enable", self.unclean_leader_election.to_string()),
            ("producer.id.expiration.ms", self.producer_id_expiration_ms.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// Kafka's topic name rules.
pub fn validate_topic_name(name: &str) -> Result<()> {
    let bad = |reason| Err(Error::InvalidTopicName { name: name.to_string(), reason });
    if name.is_empty() {
        return bad("must not be empty");
    }
    if name == "." || name == ".." {
        return bad("'.' and '..' are not allowed");
    }
    if name.len() > 249 {
        return bad("longer than 249 characters");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-') {
        return bad("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn overrides_apply_and_round_trip() {
        let c = TopicConfig::resolve(
            &TopicConfig::default(),
            &map(&[("cleanup.policy", "compact,delete"), ("retention.ms", "-1")]),
        )
        .unwrap();
        assert!(c.cleanup_policy.compact && c.cleanup_policy.delete);
        assert_eq!(c.retention_ms, -1);
        let again = TopicConfig::resolve(&TopicConfig::default(), &c.to_map()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn bad_values_and_keys_are_refused() {
        for (k, v) in [
            ("retention.ms", "soon"),
            ("retention.ms", "-2"),
            ("segment.bytes", "10"),
            ("segment.bytes", "2147483648"),
            ("segment.bytes", "5000000000"),
            ("cleanup.policy", "shred"),
            ("flush.messages", "0"),
        ] {
            let err = TopicConfig::resolve(&TopicConfig::default(), &map(&[(k, v)])).unwrap_err();
            assert!(err.to_string().contains(k), "{err}");
        }
        let err =
            TopicConfig::resolve(&TopicConfig::default(), &map(&[("retention.hours", "1")])).unwrap_err();
        assert!(matches!(err, Error::UnknownConfig(_)));
    }

    #[test]
    fn topic_names_follow_kafka_rules() {
        for ok in ["a", "orders.v1", "A_b-9", &"x".repeat(249)] {
            validate_topic_name(ok).unwrap();
        }
        for bad in ["", ".", "..", "has space", "slash/y", "ü", &"x".repeat(250)] {
            assert!(validate_topic_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn broker_file_is_checked() {
        let c =
            BrokerConfig::from_toml("node_id = 3\n[topic_defaults]\n\"retention.ms\" = \"1000\"\n").unwrap();
        assert_eq!(c.node_id, 3);
        assert_eq!(c.topic_defaults().retention_ms, 1000);
        assert!(BrokerConfig::from_toml("nodeid = 3").is_err());
        assert!(BrokerConfig::from_toml("[topic_defaults]\n\"retention.ms\" = \"x\"").is_err());
    }
}
