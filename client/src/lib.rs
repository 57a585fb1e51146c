//! Tributary's Rust client: a batching [`Producer`], a [`Consumer`] of
//! assigned partitions, and an [`Admin`] client for topics.
//!
//! All three talk gRPC to a broker (services `Log` and `Admin` of
//! `tributary.v1`). Records travel as record batches in the format of
//! [`tributary_proto::batch`]: the producer encodes records straight into a
//! batch per partition, the broker stores those bytes as they are, and the
//! consumer decodes them from the fetched buffer without copying.
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
//! How the pieces fit:
//! * `connection`: opening gRPC channels (window sizes,
//!   message limits) — the one place that knows transport settings.
//! * [`partitioner`]: murmur2 of the key (Kafka-compatible), sticky without.
//! * `accumulator`: per-partition batches and the completions records wait on.
//! * `sender`: the linger timer and the per-partition request loop;
//!   `split` re-encodes a batch too large for its topic.
//! * [`producer`], [`consumer`], [`admin`]: the public clients.
//! * [`error`]: the one error type, one actionable line each.

mod accumulator;
pub mod admin;
pub(crate) mod connection;
pub mod consumer;
pub mod error;
pub mod metadata;
pub mod partitioner;
pub mod producer;
pub(crate) mod sender;
mod split;

pub use accumulator::{DeliveryFuture, RecordMetadata};
pub use admin::Admin;
pub use consumer::{Consumer, ConsumerConfig, ConsumerRecord, FetchedBatches};
pub use error::{Error, Result};
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
