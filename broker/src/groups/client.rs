//! Kafka classic-protocol groups: the coordinator elects a leader member,
//! hands it every member's subscription metadata (opaque bytes, in the
//! protocol every member supports), and each member gets what the leader's
//! SyncGroup assigned it. The clients compute the assignment (range,
//! roundrobin, sticky, cooperative-sticky — whatever they implement).
//!
//! Membership, generations, session and rebalance timeouts, heartbeats,
//! leaving and commits are the native groups' own (`membership`,
//! `rebalance`, `expiry`, `commits`): a group is one kind or the other, told
//! apart by [`ClientGroup`] being set, and a member of the other kind is
//! refused while the group has members.

use super::membership::timeouts;
use super::*;

/// What makes a group a Kafka classic-protocol group.
pub(crate) struct ClientGroup {
    /// "consumer" for Kafka consumers (any string the members agree on).
    pub protocol_type: String,
    /// The protocol chosen at the last rebalance (an assignor's name).
    pub protocol: String,
    /// The leader's assignment of the current generation, per member;
    /// `None` until its SyncGroup arrives.
    assignments: Option<HashMap<String, Vec<u8>>>,
    /// The generation whose assignment is in: SyncGroup waits on it.
    synced: watch::Sender<i32>,
}

impl ClientGroup {
    fn new(protocol_type: String, generation: i32) -> ClientGroup {
        ClientGroup {
            protocol_type,
            protocol: String::new(),
            assignments: None,
            synced: watch::channel(generation).0,
        }
    }
}

/// One member's part of a leader's SyncGroup: (member id, the assignment
/// bytes it gets, the partitions they name where the caller could decode
/// them).
pub type MemberAssignment = (String, Vec<u8>, Vec<Tp>);

/// A Kafka JoinGroup, as the coordinator needs it.
pub struct ClientJoin {
    pub group_id: String,
    pub member_id: String,
    pub instance_id: String,
    pub client_id: String,
    pub host: String,
    pub session_timeout_ms: u32,
    pub rebalance_timeout_ms: u32,
    pub protocol_type: String,
    /// (protocol name, the member's metadata for it), in preference order.
    pub protocols: Vec<(String, Vec<u8>)>,
}

/// The JoinGroup answer; `members` (id, instance id, metadata) only for the
/// leader.
#[derive(Debug, Default)]
pub struct ClientJoined {
    pub error: Option<v1::PartitionError>,
    pub member_id: String,
    pub generation: i32,
    pub protocol_type: String,
    pub protocol: String,
    pub leader: String,
    pub members: Vec<(String, String, Vec<u8>)>,
}

/// Completes a client group's rebalance (called from `rebalance::complete`
/// after stragglers are gone and the generation is bumped): picks the
/// leader and the protocol; the assignment comes with the leader's sync.
pub(super) fn complete(g: &mut Group) {
    let leader = if g.members.contains_key(&g.leader) {
        g.leader.clone()
    } else {
        g.members.keys().next().cloned().unwrap_or_default()
    };
    let supported = |name: &str| g.members.values().all(|m| m.protocols.iter().any(|(n, _)| n == name));
    let chosen = g
        .members
        .get(&leader)
        .and_then(|m| m.protocols.iter().map(|(n, _)| n.clone()).find(|n| supported(n)))
        .unwrap_or_default();
    for m in g.members.values_mut() {
        m.assignment.clear();
        m.revoking.clear();
    }
    if let Some(c) = g.client.as_mut() {
        c.protocol = chosen.clone();
        c.assignments = None;
    }
    g.assignor = chosen;
    g.leader = leader;
    g.state = GroupState::Stable;
    tracing::info!(generation = g.generation, members = g.members.len(), protocol = %g.assignor, "Kafka-protocol group rebalanced");
    g.done.send_replace(g.generation);
}

fn refused(code: ErrorCode, message: impl Into<String>) -> ClientJoined {
    ClientJoined { error: error(code, message), ..Default::default() }
}

impl Coordinator {
    /// JoinGroup of a Kafka member: waits until the rebalance it is part of
    /// completes, like [`Coordinator::join`].
    pub async fn join_client(&self, topics: &Topics, req: ClientJoin) -> Result<ClientJoined> {
        if req.group_id.is_empty() {
            return Err(Error::InvalidRequest("group_id must not be empty".into()));
        }
        if req.protocols.is_empty() {
            return Err(Error::InvalidRequest("a member must offer at least one protocol".into()));
        }
        let (session, rebalance) = timeouts(req.session_timeout_ms, req.rebalance_timeout_ms)?;
        let (member_id, mut rx, started_gen, wait, record) = {
            let now = Instant::now();
            let mut groups = self.groups.lock();
            let g = groups
                .entry(req.group_id.clone())
                .or_insert_with(|| Group::new(0, assignor::RANGE.into(), None));
            if g.members.is_empty() {
                g.client = Some(ClientGroup::new(req.protocol_type.clone(), g.generation));
            }
            match &g.client {
                None => {
                    return Err(Error::InvalidRequest(format!(
                        "group '{}' has Tributary-protocol members (server-side assignment); a Kafka consumer cannot join it",
                        req.group_id
                    )))
                }
                Some(c) if c.protocol_type != req.protocol_type => {
                    return Err(Error::InvalidRequest(format!(
                        "group '{}' uses protocol type '{}', not '{}'",
                        req.group_id, c.protocol_type, req.protocol_type
                    )))
                }
                Some(_) => {}
            }
            let shared = g
                .members
                .values()
                .all(|m| m.protocols.iter().any(|(n, _)| req.protocols.iter().any(|(r, _)| r == n)));
            if !shared {
                return Err(Error::InvalidRequest(format!(
                    "group '{}': no protocol in common with the current members",
                    req.group_id
                )));
            }
            let member_id = if req.member_id.is_empty() {
                self.new_member_id(&req.client_id)
            } else if let Some(code) = g.member_error(&req.member_id, &req.instance_id) {
                return Ok(refused(
                    code,
                    format!("member '{}' is not in group '{}'", req.member_id, req.group_id),
                ));
            } else {
                req.member_id.clone()
            };
            let instance = (!req.instance_id.is_empty()).then(|| req.instance_id.clone());
            if let Some(old) = instance.as_ref().and_then(|i| g.instances.get(i)).cloned() {
                if old != member_id {
                    g.remove_member(&old);
                }
            }
            let member = Member {
                instance_id: instance.clone(),
                client_id: req.client_id.clone(),
                host: req.host.clone(),
                session_timeout: session,
                rebalance_timeout: rebalance,
                topics: Vec::new(),
                owned: Vec::new(),
                last_seen: now,
                rejoined: true,
                assignment: Vec::new(),
                revoking: Vec::new(),
                protocols: req.protocols.clone(),
            };
            g.members.insert(member_id.clone(), member);
            if let Some(inst) = instance {
                g.instances.insert(inst, member_id.clone());
            }
            g.empty_since_ms = None;
            let started_gen = g.generation;
            g.start_rebalance(now);
            if let Some(m) = g.members.get_mut(&member_id) {
                m.rejoined = true;
            }
            let wait = g.rebalance_deadline.map_or(rebalance, |d| d.saturating_duration_since(now));
            let rx = g.done.subscribe();
            let record = self.complete_if_ready(topics, &req.group_id, g);
            (member_id, rx, started_gen, wait, record)
        };
        // Kafka answers a JoinGroup only once a join phase completes. When
        // another rebalance starts right after the one this member waited
        // for (a member joining or leaving meanwhile), the member, still
        // waiting here, takes part in that one too, as Kafka counts a
        // pending JoinGroup as joined, instead of being told to join again.
        let deadline = tokio::time::Instant::now() + wait + Duration::from_secs(2);
        let (mut record, mut started_gen) = (record, started_gen);
        let groups = loop {
            if let Some(r) = record.take() {
                r.wait().await?;
            }
            let _ = tokio::time::timeout_at(deadline, rx.wait_for(|g| *g > started_gen)).await;
            let mut groups = self.groups.lock();
            let Some(g) = groups.get_mut(&req.group_id) else {
                return Ok(refused(ErrorCode::UnknownMemberId, "the group was removed while joining"));
            };
            if !g.members.contains_key(&member_id) {
                return Ok(refused(
                    ErrorCode::UnknownMemberId,
                    "removed from the group during the rebalance; join again",
                ));
            }
            if g.state == GroupState::Stable {
                break groups;
            }
            if tokio::time::Instant::now() >= deadline {
                let mut r =
                    refused(ErrorCode::RebalanceInProgress, "the rebalance has not completed; join again");
                r.member_id = member_id;
                return Ok(r);
            }
            if let Some(m) = g.members.get_mut(&member_id) {
                m.rejoined = true;
            }
            started_gen = g.generation;
            rx = g.done.subscribe();
            record = self.complete_if_ready(topics, &req.group_id, g);
        };
        let Some(g) = groups.get(&req.group_id) else {
            return Ok(refused(ErrorCode::UnknownMemberId, "the group was removed while joining"));
        };
        let (protocol_type, protocol) =
            g.client.as_ref().map(|c| (c.protocol_type.clone(), c.protocol.clone())).unwrap_or_default();
        let members = if g.leader == member_id {
            g.members
                .iter()
                .map(|(id, m)| {
                    let metadata = m
                        .protocols
                        .iter()
                        .find(|(n, _)| *n == protocol)
                        .map(|(_, d)| d.clone())
                        .unwrap_or_default();
                    (id.clone(), m.instance_id.clone().unwrap_or_default(), metadata)
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(ClientJoined {
            error: None,
            member_id,
            generation: g.generation,
            protocol_type,
            protocol,
            leader: g.leader.clone(),
            members,
        })
    }

    /// SyncGroup of a Kafka member: the leader brings the assignment (its
    /// partitions per member, decoded by the caller where it can, for
    /// `group describe`); everyone gets their part, waiting for the leader.
    pub async fn sync_client(
        &self,
        group_id: &str,
        member_id: &str,
        instance_id: &str,
        generation: i32,
        assignments: Vec<MemberAssignment>,
    ) -> Result<(Option<v1::PartitionError>, Vec<u8>)> {
        let answer = |g: &Group| -> Option<(Option<v1::PartitionError>, Vec<u8>)> {
            if let Some(code) = g.member_error(member_id, instance_id) {
                return Some((error(code, "not a member of the group; join again"), Vec::new()));
            }
            if g.state == GroupState::PreparingRebalance {
                return Some((
                    error(ErrorCode::RebalanceInProgress, "a rebalance is in progress; join again"),
                    Vec::new(),
                ));
            }
            if generation != g.generation {
                let why = format!("generation {generation} is not the group's current {}", g.generation);
                return Some((error(ErrorCode::IllegalGeneration, why), Vec::new()));
            }
            let c = g.client.as_ref()?;
            let mine = c.assignments.as_ref()?.get(member_id).cloned().unwrap_or_default();
            Some((None, mine))
        };
        let (mut rx, wait) = {
            let mut groups = self.groups.lock();
            let g = groups.get_mut(group_id).ok_or_else(|| Error::UnknownGroup(group_id.to_string()))?;
            if g.client.is_none() {
                return Err(Error::InvalidRequest(format!(
                    "group '{group_id}' is not a Kafka-protocol group"
                )));
            }
            if let Some(m) = g.members.get_mut(member_id) {
                m.last_seen = Instant::now();
            }
            let leads = g.leader == member_id && generation == g.generation && g.state == GroupState::Stable;
            if leads && g.client.as_ref().is_some_and(|c| c.assignments.is_none()) {
                let mut by_member = HashMap::new();
                for (id, bytes, tps) in assignments {
                    if let Some(m) = g.members.get_mut(&id) {
                        m.assignment = tps;
                    }
                    by_member.insert(id, bytes);
                }
                if let Some(c) = g.client.as_mut() {
                    c.assignments = Some(by_member);
                    c.synced.send_replace(generation);
                }
            }
            if let Some(done) = answer(g) {
                return Ok(done);
            }
            let wait = g.members.get(member_id).map_or(MIN_SESSION, |m| m.rebalance_timeout);
            match g.client.as_ref() {
                Some(c) => (c.synced.subscribe(), wait),
                None => {
                    return Err(Error::InvalidRequest(format!(
                        "group '{group_id}' is not a Kafka-protocol group"
                    )))
                }
            }
        };
        let _ = tokio::time::timeout(wait, rx.wait_for(|g| *g >= generation)).await;
        let groups = self.groups.lock();
        let g = groups.get(group_id).ok_or_else(|| Error::UnknownGroup(group_id.to_string()))?;
        Ok(answer(g).unwrap_or_else(|| {
            (
                error(ErrorCode::RebalanceInProgress, "the leader sent no assignment in time; join again"),
                Vec::new(),
            )
        }))
    }
}

/// Whether `g` (locked) is a Kafka-protocol group with members, for the
/// native join's refusal.
pub(super) fn has_client_members(g: &Group) -> bool {
    g.client.is_some() && !g.members.is_empty()
}

/// A group as Kafka's DescribeGroups shows it (either kind of group).
#[derive(Debug, Default)]
pub struct GroupView {
    /// Kafka's state name: a Kafka-protocol group whose leader has not
    /// sent its assignment yet is "CompletingRebalance".
    pub state: &'static str,
    /// The members' protocol type; empty for a native group.
    pub protocol_type: String,
    /// The chosen protocol (Kafka-protocol groups) or the server-side
    /// assignor (native groups).
    pub protocol: String,
    /// Whether the members are native (server-side assignment).
    pub native: bool,
    pub members: Vec<MemberView>,
}

/// One member of a [`GroupView`].
#[derive(Debug, Default)]
pub struct MemberView {
    pub member_id: String,
    pub instance_id: String,
    pub client_id: String,
    pub host: String,
    /// A Kafka member's metadata for the chosen protocol and the bytes the
    /// leader assigned it (empty for native members: see `topics` and
    /// `assignment`).
    pub metadata: Vec<u8>,
    pub assignment_bytes: Vec<u8>,
    /// A native member's subscription and assignment.
    pub topics: Vec<String>,
    pub assignment: Vec<Tp>,
}

impl Coordinator {
    /// The group as Kafka's DescribeGroups shows it; `None` when this
    /// broker knows no such group.
    pub fn describe_view(&self, group: &str) -> Option<GroupView> {
        let groups = self.groups.lock();
        let g = groups.get(group)?;
        let state = match (&g.client, g.state) {
            (Some(c), GroupState::Stable) if c.assignments.is_none() => "CompletingRebalance",
            (_, s) => s.name(),
        };
        let (protocol_type, protocol) = match &g.client {
            Some(c) => (c.protocol_type.clone(), c.protocol.clone()),
            None => (String::new(), g.assignor.clone()),
        };
        let members = g
            .members
            .iter()
            .map(|(id, m)| {
                let assigned = g.client.as_ref().and_then(|c| c.assignments.as_ref()?.get(id).cloned());
                MemberView {
                    member_id: id.clone(),
                    instance_id: m.instance_id.clone().unwrap_or_default(),
                    client_id: m.client_id.clone(),
                    host: m.host.clone(),
                    metadata: m
                        .protocols
                        .iter()
                        .find(|(n, _)| *n == protocol)
                        .map(|(_, d)| d.clone())
                        .unwrap_or_default(),
                    assignment_bytes: assigned.unwrap_or_default(),
                    topics: m.topics.clone(),
                    assignment: m.assignment.clone(),
                }
            })
            .collect();
        Some(GroupView { state, protocol_type, protocol, native: g.client.is_none(), members })
    }

    /// The topics the live members of `g` (locked) subscribe to: a native
    /// member's own list, a Kafka member's as `decode` reads it from its
    /// metadata for the chosen protocol.
    fn subscribed(g: &Group, decode: &dyn Fn(&[u8]) -> Vec<String>) -> std::collections::HashSet<String> {
        let protocol = g.client.as_ref().map(|c| c.protocol.as_str());
        g.members
            .values()
            .flat_map(|m| match protocol {
                None => m.topics.clone(),
                Some(p) => {
                    m.protocols.iter().find(|(n, _)| n == p).map(|(_, d)| decode(d)).unwrap_or_default()
                }
            })
            .collect()
    }

    /// Kafka's OffsetDelete: removes the committed offsets of `asked`,
    /// except those of a topic a live member subscribes to, which are
    /// returned (GROUP_SUBSCRIBED_TO_TOPIC). A group with members of a
    /// protocol other than "consumer" (whose subscriptions cannot be read)
    /// is refused as not empty, as Kafka does. Blocking.
    pub fn delete_offsets(
        &self,
        topics: &Topics,
        group: &str,
        asked: &[Tp],
        decode: &dyn Fn(&[u8]) -> Vec<String>,
    ) -> Result<Vec<Tp>> {
        self.offsets.ensure_topic(topics)?;
        let (write, refused) = {
            let groups = self.groups.lock();
            let g = groups.get(group).ok_or_else(|| Error::UnknownGroup(group.to_string()))?;
            let foreign = g.client.as_ref().is_some_and(|c| c.protocol_type != "consumer");
            if foreign && !g.members.is_empty() {
                return Err(Error::GroupNotEmpty(group.to_string(), g.members.len()));
            }
            let subscribed = Self::subscribed(g, decode);
            let (refused, deleted): (Vec<Tp>, Vec<Tp>) =
                asked.iter().cloned().partition(|(t, _)| subscribed.contains(t));
            let write = (!deleted.is_empty()).then(|| {
                self.offsets.write(topics, group, offsets::Records::delete_offsets(group, &deleted))
            });
            (write, refused)
        };
        if let Some(w) = write {
            w.wait_blocking()?;
        }
        Ok(refused)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{committed, standalone, Env};
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap()
    }

    fn client_join(group: &str, protocol_type: &str) -> ClientJoin {
        ClientJoin {
            group_id: group.into(),
            member_id: String::new(),
            instance_id: String::new(),
            client_id: "c".into(),
            host: "h".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 10_000,
            protocol_type: protocol_type.into(),
            // The "metadata" names the subscribed topic; `topic_of` reads it.
            protocols: vec![("range".into(), b"t".to_vec())],
        }
    }

    fn topic_of(bytes: &[u8]) -> Vec<String> {
        vec![String::from_utf8_lossy(bytes).into_owned()]
    }

    /// OffsetDelete keeps the offsets of a topic a live member subscribes
    /// to (either kind of member), deletes the others, and refuses a group
    /// whose members' subscriptions it cannot read.
    #[test]
    fn offsets_are_deleted_only_for_topics_no_live_member_subscribes_to() {
        let env = Env::new(1, Duration::from_secs(3600));
        let (c, topics) = (env.c(), env.topics());
        for p in [0, 1] {
            c.commit(topics, &standalone("native", p, 5)).unwrap();
            c.commit(topics, &standalone("kafka", p, 5)).unwrap();
        }
        let join = v1::JoinGroupRequest {
            group_id: "native".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 10_000,
            topics: vec!["t".into()],
            client_id: "native".into(),
            ..Default::default()
        };
        let joined = rt().block_on(c.join(topics, join, "h".into())).unwrap();
        let asked = [("t".to_string(), 0), ("gone".to_string(), 0)];
        let refused = c.delete_offsets(topics, "native", &asked, &topic_of).unwrap();
        assert_eq!(refused, [("t".to_string(), 0)]);
        assert_eq!(committed(c, "native", 0).unwrap(), 5, "kept while subscribed");
        let leave = v1::LeaveGroupRequest {
            group_id: "native".into(),
            member_id: joined.member_id,
            group_instance_id: String::new(),
        };
        c.leave(topics, &leave).unwrap();
        assert!(c.delete_offsets(topics, "native", &asked[..1], &topic_of).unwrap().is_empty());
        assert_eq!(committed(c, "native", 0).unwrap(), -1, "deleted once nobody subscribes");
        assert_eq!(committed(c, "native", 1).unwrap(), 5, "other partitions untouched");

        let rt = rt();
        let joined = rt.block_on(c.join_client(topics, client_join("kafka", "consumer"))).unwrap();
        assert!(joined.error.is_none(), "{joined:?}");
        let refused = c.delete_offsets(topics, "kafka", &asked[..1], &topic_of).unwrap();
        assert_eq!(refused, [("t".to_string(), 0)]);
        assert_eq!(committed(c, "kafka", 0).unwrap(), 5);
        let foreign = rt.block_on(c.join_client(topics, client_join("connect-group", "connect"))).unwrap();
        assert!(foreign.error.is_none(), "{foreign:?}");
        let r = c.delete_offsets(topics, "connect-group", &asked[..1], &topic_of);
        assert!(matches!(r, Err(Error::GroupNotEmpty(..))), "{r:?}");
        let unknown = c.delete_offsets(topics, "nobody", &asked[..1], &topic_of);
        assert!(matches!(unknown, Err(Error::UnknownGroup(_))), "{unknown:?}");
        // DescribeGroups' view: a Kafka group before its leader's sync.
        let view = c.describe_view("kafka").unwrap();
        assert_eq!(
            (view.state, view.protocol_type.as_str(), view.native),
            ("CompletingRebalance", "consumer", false)
        );
        assert_eq!(view.members[0].metadata, b"t");
        let view = c.describe_view("native").unwrap();
        assert_eq!((view.state, view.native), ("Empty", true));
    }
}
