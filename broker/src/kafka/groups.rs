//! FindCoordinator, OffsetCommit and OffsetFetch through `server::group`'s
//! shared calls: the same coordinator (the leader of the group's
//! `__consumer_offsets` partition) and the same committed offsets as gRPC
//! consumers, so a consumer that assigns partitions itself can commit and
//! resume through either door.
//!
//! Group *membership* through the Kafka protocol (JoinGroup, SyncGroup,
//! Heartbeat, LeaveGroup with client-side assignment) is not served yet:
//! those APIs are absent from ApiVersions. Commits from outside the
//! membership (generation -1, no member id) are what Kafka's "simple
//! consumer" sends; a commit naming a member is refused as it would be for
//! a member the coordinator does not know.

use std::sync::Arc;

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, FindCoordinatorRequest, FindCoordinatorResponse, OffsetCommitRequest, OffsetCommitResponse,
    OffsetFetchRequest, OffsetFetchResponse, TopicName,
};
use tributary_proto::v1;

use super::{errors, metadata::host_port, text};
use crate::error::Error;
use crate::server::group::GroupService;
use crate::BrokerState;

/// `key_type` 0: a consumer group (1 would be a transactional id).
const GROUP_KEY: i8 = 0;

/// (node id, host, port) of the group's coordinator, or the error code.
async fn coordinator(
    state: &Arc<BrokerState>,
    key_type: i8,
    group: &str,
) -> Result<(i32, String, i32), (i16, String)> {
    if key_type != GROUP_KEY {
        return Err((errors::COORDINATOR_NOT_AVAILABLE, "transaction coordinators do not exist yet".into()));
    }
    let found = GroupService::new(state.clone()).find_coordinator_inner(group).await;
    let found = found.map_err(|e| match e {
        Error::Unavailable(m) => (errors::COORDINATOR_NOT_AVAILABLE, m),
        e => (errors::code(&e), e.to_string()),
    })?;
    let md = state.cluster.metadata();
    let kafka = md.brokers.get(&found.node_id).map(|b| b.kafka_address.clone()).unwrap_or_default();
    let (host, port) = host_port(&kafka).ok_or_else(|| {
        (errors::COORDINATOR_NOT_AVAILABLE, format!("broker {} has no Kafka listener", found.node_id))
    })?;
    Ok((found.node_id, host, port))
}

pub async fn find_coordinator(
    state: &Arc<BrokerState>,
    req: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let mut resp = FindCoordinatorResponse::default();
    if version >= 4 {
        for key in req.coordinator_keys {
            let mut c = Coordinator::default();
            match coordinator(state, req.key_type, key.as_str()).await {
                Ok((id, host, port)) => {
                    c.node_id = BrokerId(id);
                    c.host = text(host);
                    c.port = port;
                }
                Err((code, message)) => {
                    c.node_id = BrokerId(-1);
                    c.error_code = code;
                    c.error_message = Some(text(message));
                }
            }
            c.key = key;
            resp.coordinators.push(c);
        }
        return resp;
    }
    match coordinator(state, req.key_type, req.key.as_str()).await {
        Ok((id, host, port)) => {
            resp.node_id = BrokerId(id);
            resp.host = text(host);
            resp.port = port;
        }
        Err((code, message)) => {
            resp.node_id = BrokerId(-1);
            resp.error_code = code;
            resp.error_message = Some(text(message));
        }
    }
    resp
}

pub async fn offset_commit(state: &Arc<BrokerState>, req: OffsetCommitRequest) -> OffsetCommitResponse {
    let entries: Vec<v1::OffsetEntry> = req
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| v1::OffsetEntry {
                topic: t.name.0.to_string(),
                partition: p.partition_index.max(0) as u32,
                offset: p.committed_offset,
                metadata: p.committed_metadata.as_ref().map(|m| m.to_string()).unwrap_or_default(),
            })
        })
        .collect();
    let shared = v1::CommitOffsetsRequest {
        group_id: req.group_id.0.to_string(),
        member_id: req.member_id.to_string(),
        generation: req.generation_id_or_member_epoch,
        group_instance_id: req.group_instance_id.as_ref().map(|s| s.to_string()).unwrap_or_default(),
        offsets: entries,
    };
    let code = match GroupService::new(state.clone()).commit_offsets_inner(shared).await {
        Ok(_) => errors::NONE,
        Err(Error::CommitRejected(_)) if req.member_id.is_empty() => errors::REBALANCE_IN_PROGRESS,
        Err(Error::CommitRejected(_) | Error::UnknownGroup(_)) => errors::UNKNOWN_MEMBER_ID,
        Err(e) => errors::code(&e),
    };
    let mut resp = OffsetCommitResponse::default();
    for t in req.topics {
        let mut out = OffsetCommitResponseTopic::default();
        out.name = t.name;
        for p in t.partitions {
            let mut part = OffsetCommitResponsePartition::default();
            part.partition_index = p.partition_index;
            part.error_code = code;
            out.partitions.push(part);
        }
        resp.topics.push(out);
    }
    resp
}

pub async fn offset_fetch(state: &Arc<BrokerState>, req: OffsetFetchRequest) -> OffsetFetchResponse {
    let group = req.group_id.0.to_string();
    let partitions: Vec<v1::TopicPartitions> = req
        .topics
        .iter()
        .flatten()
        .map(|t| v1::TopicPartitions {
            topic: t.name.0.to_string(),
            partitions: t.partition_indexes.iter().map(|p| (*p).max(0) as u32).collect(),
        })
        .collect();
    let shared = v1::FetchOffsetsRequest { group_id: group, partitions };
    let mut resp = OffsetFetchResponse::default();
    let committed = match GroupService::new(state.clone()).fetch_offsets_inner(shared).await {
        Ok(r) => r.offsets,
        // A group nobody committed for has no offsets, which is no error.
        Err(Error::UnknownGroup(_)) => Vec::new(),
        Err(e) => {
            resp.error_code = errors::code(&e);
            return resp;
        }
    };
    let asked: Vec<(TopicName, Vec<i32>)> = match req.topics {
        Some(topics) => topics.into_iter().map(|t| (t.name, t.partition_indexes)).collect(),
        None => {
            let mut all: Vec<(TopicName, Vec<i32>)> = Vec::new();
            for o in &committed {
                match all.iter_mut().find(|(n, _)| n.0.as_str() == o.topic) {
                    Some((_, ps)) => ps.push(o.partition as i32),
                    None => all.push((TopicName(text(o.topic.clone())), vec![o.partition as i32])),
                }
            }
            all
        }
    };
    for (name, indexes) in asked {
        let mut out = OffsetFetchResponseTopic::default();
        for index in indexes {
            let c = committed.iter().find(|o| o.topic == name.0.as_str() && o.partition as i32 == index);
            let mut part = OffsetFetchResponsePartition::default();
            part.partition_index = index;
            part.committed_offset = c.map_or(-1, |c| c.offset);
            part.committed_leader_epoch = -1;
            part.metadata = Some(text(c.map(|c| c.metadata.clone()).unwrap_or_default()));
            out.partitions.push(part);
        }
        out.name = name;
        resp.topics.push(out);
    }
    resp
}
