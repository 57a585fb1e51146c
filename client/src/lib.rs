//! Tributary's Rust client: a batching [`Producer`], a [`Consumer`] of
//! assigned partitions, a [`GroupConsumer`] that shares topics with the
//! other members of a consumer group, and an [`Admin`] client for topics and
//! groups.
//!
//! All of them talk gRPC to the brokers of a cluster (services `Log`,
//! `Group`, `Admin` and `Cluster` of `tributary.v1`), starting from a
//! bootstrap list (`HOST:PORT,HOST:PORT,...`, as Kafka's
//! `bootstrap.servers`: any broker that answers will do). Each partition's
//! produce and fetch requests go to its leader, group calls to the group's
//! coordinator, and when either moves the clients follow it (see "Riding
//! through a failover" below). Records travel as record batches in the format of
//! [`tributary_proto::batch`]: the producer encodes records straight into a
//! batch per partition, the broker stores those bytes as they are, and the
//! consumers decode them from the fetched buffer without copying.
//!
//! ```no_run
//! use tributary_client::{Producer, ProducerConfig, ProducerRecord};
//! # async fn demo() -> tributary_client::Result<()> {
//! let producer = Producer::connect(ProducerConfig::default()).await?;
//! let ack = producer.send(ProducerRecord::new("events", "hello").key("user-1")).await?;
//! let meta = ack.await?;
//! println!("stored at {}-{}@{}", meta.topic, meta.partition, meta.offset);
//! producer.close().await?;
//! # Ok(()) }
//! ```
//!
//! # Delivery guarantees
//!
//! * **The producer is idempotent by default**
//!   ([`ProducerConfig::enable_idempotence`]). At connect it gets a producer
//!   id from the broker and numbers every partition's records; a batch
//!   retried after its answer was lost (a connection cut after the broker
//!   appended) is recognised by the broker and stored once, at the offset it
//!   got the first time, and batches of a partition cannot be reordered by
//!   retries. A batch the broker calls out of sequence, or fenced by a newer
//!   epoch, fails without a retry and says so. It costs no extra round trip
//!   per batch (measured: within noise of the throughput without it). With
//!   `acks = 0` nothing is retried and idempotence does not apply.
//! * **Group consumers read at least once.** A member commits the position
//!   after the records `poll` already returned: at the auto-commit interval,
//!   before it gives partitions up in a rebalance, and on close. A member
//!   that dies between a poll and its next commit has those records read
//!   again by the partition's next owner; no record is skipped. Within a
//!   group each partition has one owner per generation; different groups
//!   each read everything. See [`group`].
//! * **A batch that cannot be read stops only its partition, and only
//!   there.** `poll` returns what came before it; the partition's position
//!   (and so every commit) stays at it, and polls report
//!   [`Error::CorruptRecord`] with topic, partition and offset until the
//!   application calls `skip_corrupt` or seeks. See [`consumer`].
//!
//!
//! # Riding through a failover
//!
//! When a broker dies or leadership moves, requests that went to the old
//! leader are answered NOT_LEADER (with a hint naming the new one, when the
//! broker knows it), LEADER_NOT_AVAILABLE, or not at all. The clients then
//! correct their metadata cache (from the hint, or by asking any broker
//! that answers — rate limited, so an error storm costs little) and retry
//! at the new leader after a short pause that grows while it lasts:
//! * the producer resends the same batch bytes, so sequence numbers and
//!   per-partition order stay intact and the broker recognises a batch it
//!   already had; it gives up only at `retries` or `delivery_timeout`;
//! * consumers fetch the partition again from the same position: nothing
//!   is skipped or read twice;
//! * group members find the coordinator again; heartbeats come sooner
//!   until one is answered, and a commit that cannot be confirmed is
//!   retried there and otherwise reported, never dropped.
//!
//! Errors retrying cannot fix (bad input, an unknown topic, a fenced
//! producer) still fail at once, with a message that says what to do.
//!
//! How the pieces fit:
//! * `connection`: opening gRPC channels (window sizes,
//!   message limits) — the one place that knows transport settings — and
//!   reading bootstrap lists.
//! * `cluster`: the metadata cache (brokers, leaders and epochs) and the
//!   connections to each broker, shared by everything one client does.
//! * [`partitioner`]: murmur2 of the key (Kafka-compatible), sticky without.
//! * `accumulator`: per-partition batches and the completions records wait on.
//! * `sender`: the linger timer and the per-partition request loop;
//!   `idempotence` the producer id and sequence rules it follows;
//!   `split` re-encodes a batch too large for its topic; `dispatch` merges
//!   the partitions' requests into one per leader.
//! * [`producer`], [`consumer`], [`admin`]: the public clients.
//! * [`group`]: the group consumer (membership, assignment, commits);
//!   `coordinator` finds the broker that coordinates a group.
//! * [`registry`]: a schema registry client (Confluent's REST API) with an
//!   id cache; [`avro`]: Avro values in Confluent's wire format.
//! * [`error`]: the one error type, one actionable line each.

mod accumulator;
pub mod admin;
pub mod audit;
pub mod avro;
pub(crate) mod cluster;
pub(crate) mod connection;
pub mod consumer;
pub(crate) mod coordinator;
pub(crate) mod dispatch;
pub mod error;
pub mod group;
pub(crate) mod idempotence;
pub mod metadata;
pub mod mirror;
pub mod partitioner;
pub mod producer;
pub mod registry;
pub(crate) mod sender;
mod split;

pub use accumulator::{DeliveryFuture, RecordMetadata};
pub use admin::{Admin, ResetTo};
pub use consumer::{Consumer, ConsumerConfig, ConsumerRecord, FetchedBatches};
pub use error::{Error, Result};
pub use group::{Assignor, GroupConfig, GroupConsumer, OffsetReset, RebalanceListener, TopicPartition};
pub use metadata::OffsetSpec;
pub use producer::{Acks, DeliveryReport, LatencySummary, Producer, ProducerConfig, ProducerRecord};
pub use tributary_proto;
pub use tributary_proto::batch::{Compression, Record, RecordHeader};

#[cfg(test)]
mod tests {
    use super::*;

    fn send_sync<T: Send + Sync + 'static>() {}
    fn send_static<T: Send + 'static>() {}

    #[test]
    fn handles_can_cross_tasks() {
        send_sync::<Producer>();
        send_sync::<Admin>();
        send_sync::<Error>();
        send_static::<Consumer>();
        send_static::<DeliveryFuture>();
        fn is_future<F: std::future::Future<Output = Result<RecordMetadata>>>() {}
        is_future::<DeliveryFuture>();
    }
}
