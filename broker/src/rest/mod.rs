//! Confluent's REST Proxy API on the broker's HTTP port, for teams without
//! a native client: produce in v2 (`/topics/...`, JSON, binary and Avro
//! embedded formats: [`v2`]) and v3 (`/v3/clusters/{id}/topics/{t}/records`,
//! one record per request: [`v3`]), and v2 consumer instances that are
//! real members of consumer groups ([`consumers`], [`instances`]). Avro
//! schemas are registered in, or looked up from, the embedded registry
//! ([`schemas`]).
//!
//! ## How records reach the log
//! The proxy is a client of its own cluster: it produces through the
//! project's [`tributary_client::Producer`] (acks = all, idempotent),
//! connected to this broker's gRPC port. Leadership routing, retries after
//! a failover and de-duplication of a retried batch are the client's, so
//! the proxy cannot diverge from what a native producer does, and records
//! without a partition are partitioned as the client partitions them
//! (key hash, sticky without a key). The producer is started on the first
//! request (the gRPC port is not serving while the broker starts) and is
//! shared by every request.
//!
//! Every request is checked completely (content type, size, topic,
//! partitions, schemas, every record's encoding) before the first record
//! is handed to the producer: a request that fails a check produces
//! nothing. Every produce goes through [`produce`], the one place where
//! the authorization check of the security work goes.

pub mod consumers;
pub mod instances;
pub mod schemas;
pub mod v2;
pub mod v3;

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::routing::{any, get, post};
use axum::Router;
use tokio::sync::OnceCell;
use tributary_client::{Producer, ProducerConfig, ProducerRecord, RecordMetadata};

use crate::confluent_error::{ConfluentError, Result};
use crate::BrokerState;

/// Largest request body: 10 000 records of several hundred bytes.
pub const MAX_BODY: usize = 8 << 20;
/// Most records one v2 request may carry: one request is one HTTP answer
/// the client waits for, and its records are held in memory until then.
pub const MAX_RECORDS: usize = 10_000;

/// One record's outcome: where it was stored, or why it was not.
pub type Outcome = Result<RecordMetadata, tributary_client::Error>;

/// The proxy's shared producer, started on first use.
#[derive(Default)]
pub struct Proxy {
    producer: OnceCell<Producer>,
}

impl Proxy {
    async fn producer(&self, state: &BrokerState) -> Result<Producer> {
        let p = self
            .producer
            .get_or_try_init(|| async {
                let config = ProducerConfig {
                    bootstrap: own_grpc_address(state),
                    // An HTTP request waits for its records; a short linger
                    // still lets concurrent requests share a batch.
                    linger: Duration::from_millis(1),
                    ..ProducerConfig::default()
                };
                Producer::connect(config).await
            })
            .await
            .map_err(|e| ConfluentError::unavailable(format!("starting the REST proxy's producer: {e}")))?;
        Ok(p.clone())
    }
}

/// Where this process reaches its own gRPC port (`listen` holds the bound
/// address; a wildcard bind is reached on loopback).
pub fn own_grpc_address(state: &BrokerState) -> String {
    let mut addr = state.config.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    addr.to_string()
}

pub fn routes() -> Router<Arc<BrokerState>> {
    Router::new()
        .route("/topics", get(v2::list_topics))
        .route("/topics/{topic}", get(v2::get_topic).post(v2::produce_to_topic))
        .route("/topics/{topic}/partitions/{partition}", post(v2::produce_to_partition))
        .route("/v3/clusters/{cluster}/topics/{topic}/records", post(v3::produce))
        .route("/consumers/{group}", post(consumers::create))
        .route("/consumers/{group}/instances/{instance}", any(consumers::instance_root))
        .route("/consumers/{group}/instances/{instance}/{*op}", any(consumers::instance_op))
}

/// Every produce of the REST proxy, v2 and v3: authorize (the security
/// work adds its check here), then hand the records to the producer and
/// wait for each one's outcome, in request order. Callers have checked
/// the whole request before: nothing is produced when this is not called.
pub async fn produce(state: &Arc<BrokerState>, records: Vec<ProducerRecord>) -> Result<Vec<Outcome>> {
    // Authorization goes here, before any record is buffered: every REST
    // produce passes through this function.
    let producer = state.rest.producer(state).await?;
    let mut pending = Vec::with_capacity(records.len());
    for r in records {
        pending.push(producer.send(r).await);
    }
    let mut out = Vec::with_capacity(pending.len());
    for p in pending {
        out.push(match p {
            Ok(delivery) => delivery.await,
            Err(e) => Err(e),
        });
    }
    Ok(out)
}

/// The number of partitions of `topic`; unknown and internal topics
/// (`__schemas`, `__consumer_offsets`: written only by the broker) are
/// not found.
pub fn partition_count(state: &BrokerState, topic: &str) -> Result<u32> {
    let md = state.cluster.metadata();
    md.topics
        .get(topic)
        .filter(|_| !crate::topics::is_internal(topic))
        .map(|t| t.partitions.len() as u32)
        .ok_or_else(|| ConfluentError::topic_not_found(topic))
}

/// Checks a record's explicit partition against the topic's count.
pub fn check_partition(topic: &str, partition: Option<i64>, count: u32) -> Result<Option<u32>> {
    match partition {
        None => Ok(None),
        Some(p) if (0..i64::from(count)).contains(&p) => Ok(Some(p as u32)),
        Some(p) => Err(ConfluentError::partition_not_found(topic, p)),
    }
}

async fn read_body(body: Body) -> Result<Bytes> {
    axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| ConfluentError::too_large(MAX_BODY))
}

/// The media type of a request, without parameters, lower case.
fn media_type(headers: &axum::http::HeaderMap) -> Option<String> {
    let v = headers.get(axum::http::header::CONTENT_TYPE)?.to_str().ok()?;
    Some(v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
}

/// A base64 string (the binary format's keys and values) as bytes.
fn decode_base64(v: &serde_json::Value, what: &str) -> Result<Bytes> {
    use base64::Engine;
    let text =
        v.as_str().ok_or_else(|| ConfluentError::unprocessable(format!("{what} must be a base64 string")))?;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map(Bytes::from)
        .map_err(|e| ConfluentError::unprocessable(format!("{what} is not valid base64: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn explicit_partitions_are_checked_against_the_topic() {
        assert_eq!(check_partition("t", None, 3), Ok(None));
        assert_eq!(check_partition("t", Some(2), 3), Ok(Some(2)));
        assert_eq!(check_partition("t", Some(3), 3).map_err(|e| e.code), Err(40402));
        assert_eq!(check_partition("t", Some(-1), 3).map_err(|e| e.code), Err(40402));
    }

    #[test]
    fn base64_values_decode_and_garbage_is_refused() {
        assert_eq!(decode_base64(&json!("aGVsbG8="), "value").map(|b| b.to_vec()), Ok(b"hello".to_vec()));
        assert_eq!(decode_base64(&json!("not base64!"), "value").map_err(|e| e.status), Err(422));
        assert_eq!(decode_base64(&json!(7), "value").map_err(|e| e.status), Err(422));
    }
}
