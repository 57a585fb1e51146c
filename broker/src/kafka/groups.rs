//! FindCoordinator, OffsetCommit and OffsetFetch through `server::group`'s
//! shared calls: the same coordinator (the leader of the group's
//! `__consumer_offsets` partition) and the same committed offsets as gRPC
//! consumers, so a consumer that assigns partitions itself can commit and
//! resume through either door.
//!
//! Membership (JoinGroup, SyncGroup, Heartbeat, LeaveGroup) is Kafka's
//! classic protocol with client-side assignment, in the coordinator's
//! Kafka-protocol group kind (`groups::client`): the leader member gets
//! everyone's subscription metadata and its SyncGroup assignment is what
//! members get. Commits from outside the membership (generation -1, no
//! member id) are what a consumer that assigns partitions itself sends.

use std::sync::Arc;

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, ConsumerProtocolAssignment, FindCoordinatorRequest, FindCoordinatorResponse, HeartbeatRequest,
    HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse,
    OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, SyncGroupRequest,
    SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::Decodable;
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
    // Kafka answers FindCoordinator with COORDINATOR_NOT_AVAILABLE whenever
    // it cannot name one (e.g. `__consumer_offsets` cannot be created yet:
    // too few live brokers), which clients retry quietly; librdkafka hands
    // any other code to the application as a consumer error.
    let found = found.map_err(|e| match e {
        Error::InvalidRequest(m) => (errors::INVALID_REQUEST, m),
        e => (errors::COORDINATOR_NOT_AVAILABLE, e.to_string()),
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
            t.partitions.iter().filter(|p| p.partition_index >= 0).map(|p| v1::OffsetEntry {
                topic: t.name.0.to_string(),
                partition: p.partition_index as u32,
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
        // A member of a group the coordinator does not know (it expired).
        Err(Error::UnknownGroup(_)) => errors::UNKNOWN_MEMBER_ID,
        Err(e) => errors::code(&e),
    };
    let mut resp = OffsetCommitResponse::default();
    for t in req.topics {
        let mut out = OffsetCommitResponseTopic::default();
        out.name = t.name;
        for p in t.partitions {
            let mut part = OffsetCommitResponsePartition::default();
            part.partition_index = p.partition_index;
            part.error_code = if p.partition_index < 0 { errors::UNKNOWN_TOPIC_OR_PARTITION } else { code };
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
            // A negative index names no partition (never partition 0).
            partitions: t.partition_indexes.iter().filter(|p| **p >= 0).map(|p| *p as u32).collect(),
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

/// The Kafka code for a refusal of the membership calls.
fn membership_code(e: &Error) -> i16 {
    match e {
        Error::InvalidRequest(m) if m.contains("session_timeout") => errors::INVALID_SESSION_TIMEOUT,
        Error::InvalidRequest(_) => errors::INCONSISTENT_GROUP_PROTOCOL,
        Error::UnknownGroup(_) => errors::UNKNOWN_MEMBER_ID,
        e => errors::code(e),
    }
}

fn opt(s: &Option<kafka_protocol::protocol::StrBytes>) -> String {
    s.as_ref().map(|s| s.to_string()).unwrap_or_default()
}

pub async fn join_group(
    state: &Arc<BrokerState>,
    req: JoinGroupRequest,
    version: i16,
    (host, client_id): (String, String),
) -> JoinGroupResponse {
    let join = crate::groups::client::ClientJoin {
        group_id: req.group_id.0.to_string(),
        member_id: req.member_id.to_string(),
        instance_id: opt(&req.group_instance_id),
        client_id,
        host,
        session_timeout_ms: req.session_timeout_ms.max(0) as u32,
        // v0 has no rebalance timeout: Kafka uses the session timeout.
        rebalance_timeout_ms: if version >= 1 { req.rebalance_timeout_ms } else { req.session_timeout_ms }
            .max(0) as u32,
        protocol_type: req.protocol_type.to_string(),
        protocols: req.protocols.iter().map(|p| (p.name.to_string(), p.metadata.to_vec())).collect(),
    };
    let mut resp = JoinGroupResponse::default();
    resp.generation_id = -1;
    match GroupService::new(state.clone()).join_client_inner(join).await {
        Ok(j) => {
            resp.member_id = text(j.member_id);
            if let Some(e) = j.error {
                resp.error_code = errors::partition_code(&e);
                return resp;
            }
            resp.generation_id = j.generation;
            resp.leader = text(j.leader);
            if version >= 7 {
                resp.protocol_type = Some(text(j.protocol_type));
            }
            resp.protocol_name = Some(text(j.protocol));
            resp.members = j
                .members
                .into_iter()
                .map(|(id, instance, metadata)| {
                    let mut m = JoinGroupResponseMember::default();
                    m.member_id = text(id);
                    if version >= 5 && !instance.is_empty() {
                        m.group_instance_id = Some(text(instance));
                    }
                    m.metadata = metadata.into();
                    m
                })
                .collect();
        }
        Err(e) => {
            tracing::info!(error = %e, "Kafka JoinGroup refused");
            resp.error_code = membership_code(&e);
        }
    }
    resp
}

/// The partitions in a Kafka consumer's assignment bytes (for `group
/// describe`); empty when they are not the consumer protocol's.
pub(crate) fn assigned_partitions(bytes: &[u8]) -> Vec<(String, u32)> {
    let mut buf = bytes::Bytes::copy_from_slice(bytes);
    let Some(version) = bytes.get(..2).map(|v| i16::from_be_bytes([v[0], v[1]])) else { return Vec::new() };
    let _ = bytes::Buf::get_i16(&mut buf);
    match ConsumerProtocolAssignment::decode(&mut buf, version.clamp(0, 3)) {
        Ok(a) => a
            .assigned_partitions
            .into_iter()
            .flat_map(|t| {
                let topic = t.topic.0.to_string();
                t.partitions.into_iter().filter(|p| *p >= 0).map(move |p| (topic.clone(), p as u32))
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

pub async fn sync_group(state: &Arc<BrokerState>, req: SyncGroupRequest, version: i16) -> SyncGroupResponse {
    let consumer = req.protocol_type.as_ref().is_none_or(|t| t.as_str() == "consumer");
    let assignments = req
        .assignments
        .iter()
        .map(|a| {
            let tps = if consumer { assigned_partitions(&a.assignment) } else { Vec::new() };
            (a.member_id.to_string(), a.assignment.to_vec(), tps)
        })
        .collect();
    let (group, member, instance) =
        (req.group_id.0.to_string(), req.member_id.to_string(), opt(&req.group_instance_id));
    let mut resp = SyncGroupResponse::default();
    match GroupService::new(state.clone())
        .sync_client_inner(&group, &member, &instance, req.generation_id, assignments)
        .await
    {
        Ok((Some(e), _)) => resp.error_code = errors::partition_code(&e),
        Ok((None, mine)) => {
            resp.assignment = mine.into();
            if version >= 5 {
                resp.protocol_type = req.protocol_type;
                resp.protocol_name = req.protocol_name;
            }
        }
        Err(e) => resp.error_code = membership_code(&e),
    }
    resp
}

pub async fn heartbeat(state: &Arc<BrokerState>, req: HeartbeatRequest) -> HeartbeatResponse {
    let shared = v1::HeartbeatRequest {
        group_id: req.group_id.0.to_string(),
        member_id: req.member_id.to_string(),
        generation: req.generation_id,
        group_instance_id: opt(&req.group_instance_id),
    };
    let mut resp = HeartbeatResponse::default();
    resp.error_code = match GroupService::new(state.clone()).heartbeat_inner(shared).await {
        Ok(r) => r.error.as_ref().map_or(errors::NONE, errors::partition_code),
        Err(e) => membership_code(&e),
    };
    resp
}

pub async fn leave_group(
    state: &Arc<BrokerState>,
    req: LeaveGroupRequest,
    version: i16,
) -> LeaveGroupResponse {
    let group = req.group_id.0.to_string();
    // v3+ names members (possibly several); earlier versions one member id.
    let leaving: Vec<(String, String)> = if version >= 3 {
        req.members.iter().map(|m| (m.member_id.to_string(), opt(&m.group_instance_id))).collect()
    } else {
        vec![(req.member_id.to_string(), String::new())]
    };
    let svc = GroupService::new(state.clone());
    let mut resp = LeaveGroupResponse::default();
    for (member_id, instance) in leaving {
        let shared = v1::LeaveGroupRequest {
            group_id: group.clone(),
            member_id: member_id.clone(),
            group_instance_id: instance.clone(),
        };
        let code = match svc.leave_inner(shared).await {
            Ok(()) => errors::NONE,
            Err(e) => membership_code(&e),
        };
        if version >= 3 {
            let mut m = MemberResponse::default();
            m.member_id = text(member_id);
            m.group_instance_id = (!instance.is_empty()).then(|| text(instance));
            m.error_code = code;
            resp.members.push(m);
        } else {
            resp.error_code = code;
        }
    }
    resp
}
