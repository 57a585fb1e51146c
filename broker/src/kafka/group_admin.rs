//! Group administration over the Kafka protocol: ListGroups, DescribeGroups,
//! DeleteGroups and OffsetDelete, over the coordinator's own calls (the
//! ones `tributary group list/describe/delete` use), so Kafka tools see
//! and manage the same groups as the CLI, of either kind.
//!
//! DescribeGroups shows a Kafka-protocol group as Kafka does (its members'
//! metadata and the leader's assignment bytes, passed through). A native
//! group, whose assignment the coordinator computes, is shown with no
//! protocol type (like ListGroups: Kafka tools cannot join it), its
//! assignor as the protocol, and its members' subscriptions and partitions
//! encoded as Kafka's consumer protocol, so tools that read them show what
//! each member owns.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, DeleteGroupsRequest, DeleteGroupsResponse,
    DescribeGroupsRequest, DescribeGroupsResponse, GroupId, ListGroupsRequest, ListGroupsResponse,
    OffsetDeleteRequest, OffsetDeleteResponse, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable};

use super::{errors, text};
use crate::error::Error;
use crate::groups::client::{GroupView, MemberView};
use crate::server::group::GroupService;
use crate::BrokerState;

/// `authorized_operations` when they are not known (no security yet).
const UNKNOWN_OPERATIONS: i32 = i32::MIN;
/// From v6 (KIP-1043) an unknown group is GROUP_ID_NOT_FOUND; before, it is
/// described as "Dead" with no error.
const NOT_FOUND_FROM: i16 = 6;

/// A consumer-protocol message with its version prefix, as members send it.
fn versioned<T: Encodable>(version: i16, msg: &T) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i16(version);
    // Encoding a message built here in version 0 cannot fail; an empty
    // answer would only hide the member's partitions.
    if msg.encode(&mut buf, version).is_err() {
        return Bytes::new();
    }
    buf.freeze()
}

/// A native member's subscription and partitions as Kafka's consumer
/// protocol (version 0) encodes them.
fn consumer_protocol(m: &MemberView) -> (Bytes, Bytes) {
    let mut sub = ConsumerProtocolSubscription::default();
    sub.topics = m.topics.iter().map(|t| text(t.clone())).collect();
    let mut by_topic: std::collections::BTreeMap<&str, Vec<i32>> = Default::default();
    for (t, p) in &m.assignment {
        by_topic.entry(t).or_default().push(*p as i32);
    }
    let mut assignment = ConsumerProtocolAssignment::default();
    assignment.assigned_partitions = by_topic
        .into_iter()
        .map(|(t, ps)| {
            let mut tp = TopicPartition::default();
            tp.topic = TopicName(text(t));
            tp.partitions = ps;
            tp
        })
        .collect();
    (versioned(0, &sub), versioned(0, &assignment))
}

/// The topics a Kafka consumer's subscription metadata names; empty when
/// the bytes are not the consumer protocol's.
pub(crate) fn subscribed_topics(bytes: &[u8]) -> Vec<String> {
    let Some(version) = bytes.get(..2).map(|v| i16::from_be_bytes([v[0], v[1]])) else { return Vec::new() };
    let mut buf = Bytes::copy_from_slice(&bytes[2..]);
    match ConsumerProtocolSubscription::decode(&mut buf, version.clamp(0, 3)) {
        Ok(s) => s.topics.into_iter().map(|t| t.to_string()).collect(),
        Err(_) => Vec::new(),
    }
}

/// A described group as Kafka answers it: members' metadata and
/// assignments only while Stable (Kafka's group summary).
fn described(id: GroupId, view: GroupView, version: i16) -> DescribedGroup {
    let mut g = DescribedGroup::default();
    g.group_id = id;
    let stable = view.state == "Stable";
    g.group_state = text(view.state);
    g.protocol_type = text(view.protocol_type);
    g.protocol_data = text(if stable { view.protocol } else { String::new() });
    g.authorized_operations = UNKNOWN_OPERATIONS;
    g.members = view
        .members
        .into_iter()
        .map(|m| {
            let (metadata, assignment) = match (stable, view.native) {
                (false, _) => (Bytes::new(), Bytes::new()),
                (true, true) => consumer_protocol(&m),
                (true, false) => (Bytes::from(m.metadata), Bytes::from(m.assignment_bytes)),
            };
            let mut out = DescribedGroupMember::default();
            out.member_id = text(m.member_id);
            if version >= 4 && !m.instance_id.is_empty() {
                out.group_instance_id = Some(text(m.instance_id));
            }
            out.client_id = text(m.client_id);
            out.client_host = text(m.host);
            out.member_metadata = metadata;
            out.member_assignment = assignment;
            out
        })
        .collect();
    g
}

/// An unknown group: "Dead" before v6, GROUP_ID_NOT_FOUND from it.
fn unknown(id: GroupId, version: i16) -> DescribedGroup {
    let mut g = DescribedGroup::default();
    g.authorized_operations = UNKNOWN_OPERATIONS;
    if version >= NOT_FOUND_FROM {
        g.error_code = errors::GROUP_ID_NOT_FOUND;
        g.error_message = Some(text(format!("group '{}' does not exist", id.0.as_str())));
    } else {
        g.group_state = text("Dead");
    }
    g.group_id = id;
    g
}

pub async fn describe_groups(
    state: &Arc<BrokerState>,
    req: DescribeGroupsRequest,
    version: i16,
) -> DescribeGroupsResponse {
    let svc = GroupService::new(state.clone());
    let mut resp = DescribeGroupsResponse::default();
    for id in req.groups {
        let g = match svc.describe_view_inner(id.0.as_str()).await {
            Ok(Some(view)) => described(id, view, version),
            Ok(None) => unknown(id, version),
            Err(e) => {
                let mut g = DescribedGroup::default();
                g.error_code = errors::code(&e);
                if version >= 6 {
                    g.error_message = Some(text(e.to_string()));
                }
                g.group_id = id;
                g.authorized_operations = UNKNOWN_OPERATIONS;
                g
            }
        };
        resp.groups.push(g);
    }
    resp
}

/// Deletes committed offsets of a group (Kafka's OffsetDelete): refused
/// per partition with GROUP_SUBSCRIBED_TO_TOPIC where a live member
/// subscribes to the topic; GROUP_ID_NOT_FOUND, NON_EMPTY_GROUP (members
/// of a non-consumer protocol) and NOT_COORDINATOR for the whole request.
pub async fn offset_delete(state: &Arc<BrokerState>, req: OffsetDeleteRequest) -> OffsetDeleteResponse {
    let asked: Vec<(String, u32)> = req
        .topics
        .iter()
        .flat_map(|t| {
            let name = t.name.0.to_string();
            t.partitions
                .iter()
                .filter(|p| p.partition_index >= 0)
                .map(move |p| (name.clone(), p.partition_index as u32))
        })
        .collect();
    let mut resp = OffsetDeleteResponse::default();
    let svc = GroupService::new(state.clone());
    let refused = match svc.delete_offsets_inner(req.group_id.0.to_string(), asked, subscribed_topics).await {
        Ok(refused) => refused,
        Err(e) => {
            resp.error_code = match e {
                Error::UnknownGroup(_) => errors::GROUP_ID_NOT_FOUND,
                e => errors::code(&e),
            };
            return resp;
        }
    };
    for t in req.topics {
        let mut out = OffsetDeleteResponseTopic::default();
        for p in t.partitions {
            let mut part = OffsetDeleteResponsePartition::default();
            part.partition_index = p.partition_index;
            part.error_code = if p.partition_index < 0 {
                errors::UNKNOWN_TOPIC_OR_PARTITION
            } else if refused.iter().any(|(n, i)| n == t.name.0.as_str() && *i as i32 == p.partition_index) {
                errors::GROUP_SUBSCRIBED_TO_TOPIC
            } else {
                errors::NONE
            };
            out.partitions.push(part);
        }
        out.name = t.name;
        resp.topics.push(out);
    }
    resp
}

/// The groups this broker coordinates (Kafka clients ask every broker and
/// merge, as with Kafka), filtered by state when the request names states.
/// Native groups are listed too, with no protocol type: Kafka tools show
/// them and their offsets but cannot join them.
pub fn list_groups(state: &Arc<BrokerState>, req: ListGroupsRequest) -> ListGroupsResponse {
    let mut resp = ListGroupsResponse::default();
    let wanted = |s: &str| {
        req.states_filter.is_empty() || req.states_filter.iter().any(|f| f.as_str().eq_ignore_ascii_case(s))
    };
    let mut groups = state.coordinator.list_protocol_types();
    groups.sort();
    for (id, group_state, protocol_type) in groups {
        if !wanted(&group_state) {
            continue;
        }
        let mut g = ListedGroup::default();
        g.group_id = GroupId(text(id));
        g.protocol_type = text(protocol_type);
        g.group_state = text(group_state);
        g.group_type = text("classic");
        resp.groups.push(g);
    }
    resp
}

/// Deletes each empty group and its committed offsets, on its coordinator
/// (GROUP_ID_NOT_FOUND, NON_EMPTY_GROUP and NOT_COORDINATOR per group, as
/// Kafka answers).
pub async fn delete_groups(state: &Arc<BrokerState>, req: DeleteGroupsRequest) -> DeleteGroupsResponse {
    let svc = GroupService::new(state.clone());
    let mut resp = DeleteGroupsResponse::default();
    for group in req.groups_names {
        let mut r = DeletableGroupResult::default();
        if let Err(e) = svc.delete_group_inner(group.0.to_string()).await {
            r.error_code = errors::code(&e);
        }
        r.group_id = group;
        resp.results.push(r);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_native_member_is_shown_in_the_consumer_protocol() {
        let m = MemberView {
            topics: vec!["orders".into()],
            assignment: vec![("orders".into(), 2), ("orders".into(), 0)],
            ..Default::default()
        };
        let (sub, assignment) = consumer_protocol(&m);
        assert_eq!(subscribed_topics(&sub), ["orders"]);
        let owned = super::super::groups::assigned_partitions(&assignment);
        assert_eq!(owned, [("orders".to_string(), 2), ("orders".to_string(), 0)]);
        assert!(subscribed_topics(b"\x00").is_empty(), "not the consumer protocol: nothing");
    }

    #[test]
    fn describe_shows_metadata_only_while_stable_and_unknown_groups_per_version() {
        let member = || MemberView {
            member_id: "m-1".into(),
            instance_id: "i-1".into(),
            client_id: "c".into(),
            host: "10.0.0.1".into(),
            metadata: b"meta".to_vec(),
            assignment_bytes: b"assigned".to_vec(),
            ..Default::default()
        };
        let view = |state| GroupView {
            state,
            protocol_type: "consumer".into(),
            protocol: "range".into(),
            native: false,
            members: vec![member()],
        };
        let g = described(GroupId(text("g")), view("Stable"), 5);
        assert_eq!(g.protocol_data.as_str(), "range");
        assert_eq!(&g.members[0].member_assignment[..], b"assigned");
        assert_eq!(g.members[0].group_instance_id.as_ref().map(|s| s.as_str()), Some("i-1"));
        let g = described(GroupId(text("g")), view("CompletingRebalance"), 3);
        assert_eq!(g.protocol_data.as_str(), "");
        assert!(g.members[0].member_metadata.is_empty() && g.members[0].group_instance_id.is_none());
        assert_eq!(unknown(GroupId(text("x")), 5).group_state.as_str(), "Dead");
        assert_eq!(unknown(GroupId(text("x")), 6).error_code, errors::GROUP_ID_NOT_FOUND);
    }
}
