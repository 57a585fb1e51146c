//! Fetch and ListOffsets through `server::log`'s handlers: the same
//! long-poll (`max_wait_ms`, `min_bytes`), the same byte budgets (the
//! response's `max_bytes`, each partition's `partition_max_bytes`, the
//! broker's `fetch_max_bytes` cap) and the same reads up to the high
//! watermark.
//!
//! lz4 batches stored before the frame format are re-framed on the way out
//! (`batch::reframe_legacy_lz4`): Kafka clients read only lz4 frames.
//!
//! Without transactions every record is committed, so the last stable
//! offset is the high watermark and `read_committed` (librdkafka's default)
//! reads exactly what `read_uncommitted` does. Fetch sessions (KIP-227) are
//! declined (session id 0), which Kafka clients handle by sending full
//! fetches.

use std::sync::Arc;

use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{
    FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse, TopicName,
};
use tributary_proto::{batch, v1};

use super::{errors, text};
use crate::server::log::{list_offsets_blocking, LogService};
use crate::BrokerState;

/// `isolation_level` 1: read_committed.
const READ_COMMITTED: i8 = 1;

/// Whether the quorum knows this partition.
fn known(state: &BrokerState, topic: &str, partition: i32) -> bool {
    let md = state.cluster.metadata();
    partition >= 0 && md.topic(topic).is_some_and(|t| (partition as usize) < t.partitions.len())
}

fn empty_partition(index: i32, error_code: i16) -> PartitionData {
    let mut p = PartitionData::default();
    p.partition_index = index;
    p.error_code = error_code;
    p.high_watermark = -1;
    p.last_stable_offset = -1;
    p.log_start_offset = -1;
    p
}

pub async fn fetch(state: &Arc<BrokerState>, req: FetchRequest, version: i16) -> FetchResponse {
    let committed = req.isolation_level == READ_COMMITTED;
    // The answer keeps the request's order: (topic, partition, slot).
    let mut order: Vec<(String, i32)> = Vec::new();
    let mut answers: Vec<Option<PartitionData>> = Vec::new();
    let mut wanted = Vec::new();
    for t in &req.topics {
        let name = t.topic.0.to_string();
        for p in &t.partitions {
            order.push((name.clone(), p.partition));
            if known(state, &name, p.partition) {
                answers.push(None);
                wanted.push(v1::FetchPartition {
                    topic: name.clone(),
                    partition: p.partition as u32,
                    offset: p.fetch_offset,
                    max_bytes: p.partition_max_bytes.max(0) as u32,
                    current_leader_epoch: if version >= 9 { p.current_leader_epoch } else { -1 },
                    ..Default::default()
                });
            } else {
                answers.push(Some(empty_partition(p.partition, errors::UNKNOWN_TOPIC_OR_PARTITION)));
            }
        }
    }
    if !wanted.is_empty() {
        let shared = v1::FetchRequest {
            max_wait_ms: req.max_wait_ms.max(0) as u32,
            min_bytes: req.min_bytes.max(0) as u32,
            max_bytes: req.max_bytes.max(1) as u32,
            partitions: wanted,
            replica_id: -1,
            is_replica: false,
        };
        let fetched = LogService::new(state.clone()).fetch_inner(shared).await;
        let mut fetched: Vec<v1::FetchPartitionResponse> = match fetched {
            Ok(r) => r.partitions,
            Err(e) => {
                let code = errors::code(&e);
                for (slot, (_, index)) in answers.iter_mut().zip(&order) {
                    slot.get_or_insert_with(|| empty_partition(*index, code));
                }
                Vec::new()
            }
        };
        for (slot, (topic, index)) in answers.iter_mut().zip(&order) {
            if slot.is_some() {
                continue;
            }
            let found = fetched.iter().position(|r| r.topic == *topic && r.partition as i32 == *index);
            *slot = Some(match found.map(|i| fetched.swap_remove(i)) {
                Some(r) => partition_data(*index, r, committed),
                None => empty_partition(*index, errors::UNKNOWN_SERVER_ERROR),
            });
        }
    }
    let mut resp = FetchResponse::default();
    for ((topic, _), answer) in order.into_iter().zip(answers) {
        let Some(answer) = answer else { continue };
        if resp.responses.last().is_none_or(|t| t.topic.0.as_str() != topic) {
            let mut t = FetchableTopicResponse::default();
            t.topic = TopicName(text(topic.clone()));
            resp.responses.push(t);
        }
        if let Some(t) = resp.responses.last_mut() {
            t.partitions.push(answer);
        }
    }
    resp
}

fn partition_data(index: i32, r: v1::FetchPartitionResponse, committed: bool) -> PartitionData {
    let mut p = empty_partition(index, r.error.as_ref().map_or(errors::NONE, errors::partition_code));
    p.high_watermark = r.high_watermark;
    // No transactions: everything below the high watermark is stable.
    p.last_stable_offset = r.high_watermark;
    p.log_start_offset = r.log_start_offset;
    p.aborted_transactions = committed.then(Vec::new);
    // Batches from before the lz4 frame format, which Kafka clients cannot
    // read, go out re-framed; everything else untouched.
    p.records = Some(match batch::reframe_legacy_lz4(&r.records) {
        Some(reframed) => reframed.into(),
        None => r.records,
    });
    p
}

pub async fn list_offsets(state: &Arc<BrokerState>, req: ListOffsetsRequest) -> ListOffsetsResponse {
    let mut resp = ListOffsetsResponse::default();
    let mut wanted = Vec::new();
    for t in &req.topics {
        let name = t.name.0.to_string();
        let mut out = ListOffsetsTopicResponse::default();
        out.name = t.name.clone();
        for p in &t.partitions {
            let mut part = ListOffsetsPartitionResponse::default();
            part.partition_index = p.partition_index;
            part.timestamp = -1;
            part.offset = -1;
            if !known(state, &name, p.partition_index) {
                part.error_code = errors::UNKNOWN_TOPIC_OR_PARTITION;
            } else if p.timestamp < -2 {
                // -3 (max timestamp) and later specs come with versions
                // this broker does not advertise.
                part.error_code = errors::INVALID_REQUEST;
            } else {
                wanted.push(v1::ListOffsetsPartition {
                    topic: name.clone(),
                    partition: p.partition_index as u32,
                    timestamp: p.timestamp,
                });
            }
            out.partitions.push(part);
        }
        resp.topics.push(out);
    }
    if wanted.is_empty() {
        return resp;
    }
    let st = state.clone();
    let shared = v1::ListOffsetsRequest { partitions: wanted.clone() };
    let result = tokio::task::spawn_blocking(move || list_offsets_blocking(&st, shared))
        .await
        .unwrap_or_else(|e| Err(crate::error::Error::Storage(e.to_string())));
    for w in &wanted {
        let Some(part) = resp
            .topics
            .iter_mut()
            .filter(|t| t.name.0.as_str() == w.topic)
            .flat_map(|t| t.partitions.iter_mut())
            .find(|p| {
                p.partition_index == w.partition as i32 && p.error_code == errors::NONE && p.offset == -1
            })
        else {
            continue;
        };
        match &result {
            Ok(r) => match r.partitions.iter().find(|x| x.topic == w.topic && x.partition == w.partition) {
                Some(x) => match &x.error {
                    Some(e) => part.error_code = errors::partition_code(e),
                    None => {
                        part.offset = x.offset;
                        part.timestamp = x.timestamp;
                    }
                },
                None => part.error_code = errors::UNKNOWN_SERVER_ERROR,
            },
            Err(e) => part.error_code = errors::code(e),
        }
    }
    resp
}
