//! Produce and InitProducerId through `server::log`'s own handlers: the
//! same validation, the same append path, the same idempotent-producer
//! state (a Kafka producer's sequence numbers are checked against the same
//! per-partition window as the Rust client's).
//!
//! Kafka answers per partition, so each partition of a request goes through
//! the shared produce handler on its own (concurrently): one bad partition
//! does not fail the others. Transactions do not exist yet: a transactional
//! producer, and batches with the transactional or control bit, are refused
//! with a message saying so.

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    InitProducerIdRequest, InitProducerIdResponse, ProduceRequest, ProduceResponse, ProducerId,
};
use tributary_proto::batch::{BatchHeader, Batches};
use tributary_proto::v1;

use super::{errors, text};
use crate::server::log::LogService;
use crate::BrokerState;

/// `attributes` bit 4: the batch is part of a transaction.
const TRANSACTIONAL_BIT: i16 = 0x10;
/// `attributes` bit 5: a control batch (transaction markers).
const CONTROL_BIT: i16 = 0x20;

/// Why a partition's data is refused before it reaches the log, if it is.
fn refused_here(transactional: bool, records: &[u8]) -> Option<(i16, String)> {
    if transactional {
        return Some((
            errors::TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
            "transactions are not supported yet: produce without transactional.id".into(),
        ));
    }
    let txn_bits = |h: &BatchHeader| h.attributes & (TRANSACTIONAL_BIT | CONTROL_BIT) != 0;
    if Batches::new(records).filter_map(|b| b.ok()).any(|(h, _)| txn_bits(&h)) {
        return Some((
            errors::INVALID_RECORD,
            "transactional and control batches are not supported yet".into(),
        ));
    }
    None
}

/// One partition's answer.
fn partition_response(
    index: i32,
    outcome: Result<v1::PartitionProduceResponse, (i16, String)>,
) -> PartitionProduceResponse {
    let mut out = PartitionProduceResponse::default();
    out.index = index;
    out.base_offset = -1;
    out.log_append_time_ms = -1;
    out.log_start_offset = -1;
    match outcome {
        Ok(p) => match p.error {
            Some(e) => {
                out.error_code = errors::partition_code(&e);
                out.error_message = Some(text(e.message));
            }
            None => {
                out.base_offset = p.base_offset;
                out.log_start_offset = p.log_start_offset;
            }
        },
        Err((code, message)) => {
            out.error_code = code;
            out.error_message = Some(text(message));
        }
    }
    out
}

/// Produce; `Ok(None)` for acks=0 (Kafka sends no response then). An
/// acks=0 produce that failed anywhere is `Err`: the connection is closed,
/// as Kafka does, since that is the only way such a client learns to
/// refresh its metadata (a moved leader would otherwise drop its records
/// until the next periodic refresh).
pub async fn produce(
    state: &Arc<BrokerState>,
    req: ProduceRequest,
    _version: i16,
) -> Result<Option<ProduceResponse>, String> {
    let svc = LogService::new(state.clone());
    let transactional = req.transactional_id.is_some();
    let (acks, timeout_ms) = (i32::from(req.acks), req.timeout_ms.max(0) as u32);
    let mut work = Vec::new();
    for t in req.topic_data {
        let name = t.name.0.to_string();
        for p in t.partition_data {
            let records = p.records.unwrap_or_default();
            work.push((name.clone(), p.index, records));
        }
    }
    let one = |name: String, index: i32, records: Bytes| {
        let svc = &svc;
        async move {
            if index < 0 {
                return Err((
                    errors::UNKNOWN_TOPIC_OR_PARTITION,
                    format!("no partition {index} of '{name}'"),
                ));
            }
            if let Some(refusal) = refused_here(transactional, &records) {
                return Err(refusal);
            }
            let req = v1::ProduceRequest {
                acks,
                timeout_ms,
                topics: vec![v1::TopicProduceData {
                    name: name.clone(),
                    partitions: vec![v1::PartitionProduceData { partition: index as u32, records }],
                }],
            };
            match svc.produce_inner(req).await {
                Ok(resp) => resp
                    .topics
                    .into_iter()
                    .flat_map(|t| t.partitions)
                    .next()
                    .ok_or((errors::UNKNOWN_SERVER_ERROR, "no answer for the partition".to_string())),
                Err(e) => Err((errors::code(&e), e.to_string())),
            }
        }
    };
    let names: Vec<(String, i32)> = work.iter().map(|(n, i, _)| (n.clone(), *i)).collect();
    let outcomes = futures::future::join_all(work.into_iter().map(|(n, i, r)| one(n, i, r))).await;
    if acks == 0 {
        let failed = outcomes.iter().zip(&names).find_map(|(o, (name, index))| match o {
            Err((_, why)) => Some(format!("{name}-{index}: {why}")),
            Ok(p) => p.error.as_ref().map(|e| format!("{name}-{index}: {}", e.message)),
        });
        return match failed {
            Some(why) => {
                Err(format!("acks=0 produce failed ({why}); closing so the client refreshes its metadata"))
            }
            None => Ok(None),
        };
    }
    let mut resp = ProduceResponse::default();
    for ((name, index), outcome) in names.into_iter().zip(outcomes) {
        let part = partition_response(index, outcome);
        match resp.responses.iter_mut().find(|t| t.name.0.as_str() == name) {
            Some(t) => t.partition_responses.push(part),
            None => {
                let mut t = TopicProduceResponse::default();
                t.name = kafka_protocol::messages::TopicName(text(name));
                t.partition_responses.push(part);
                resp.responses.push(t);
            }
        }
    }
    Ok(Some(resp))
}

/// A producer id from the cluster's blocks, as the gRPC door hands out
/// (so ids never collide across doors). Epoch bumps (KIP-360) get a fresh
/// id, which Kafka clients accept.
pub async fn init_producer_id(
    state: &Arc<BrokerState>,
    req: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let mut resp = InitProducerIdResponse::default();
    resp.producer_id = ProducerId(-1);
    resp.producer_epoch = -1;
    if req.transactional_id.is_some() {
        resp.error_code = errors::TRANSACTIONAL_ID_AUTHORIZATION_FAILED;
        return resp;
    }
    match LogService::new(state.clone()).init_producer_id_inner().await {
        Ok(r) => {
            resp.producer_id = ProducerId(r.producer_id);
            resp.producer_epoch = r.producer_epoch as i16;
        }
        Err(e) => {
            tracing::warn!(error = %e, "InitProducerId from a Kafka client");
            resp.error_code = errors::code(&e);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_proto::batch::{BatchBuilder, Compression};

    #[test]
    fn transactional_and_control_batches_are_refused() {
        let mut b = BatchBuilder::new(Compression::None, 0);
        b.append(0, None, Some(b"v"), &[]);
        let plain = b.build().to_vec();
        assert_eq!(refused_here(false, &plain), None);
        assert_eq!(
            refused_here(true, &plain).map(|r| r.0),
            Some(errors::TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
        );
        for bit in [TRANSACTIONAL_BIT, CONTROL_BIT] {
            let mut marked = plain.clone();
            marked[22] |= bit as u8;
            assert_eq!(refused_here(false, &marked).map(|r| r.0), Some(errors::INVALID_RECORD));
        }
    }
}
