//! Membership: JoinGroup, SyncGroup, Heartbeat and LeaveGroup — members
//! joining and leaving, and what each is told of the current generation.

use super::rebalance::on_membership_change;
use super::*;

impl Coordinator {
    /// JoinGroup: waits until the rebalance this join is part of completes.
    /// The join that completes a rebalance queues the group record and waits
    /// for it without blocking the runtime; `__consumer_offsets` must exist
    /// ([`OffsetStore::ensure_topic`], blocking), or that join fails.
    pub async fn join(
        &self,
        topics: &Topics,
        req: v1::JoinGroupRequest,
        host: String,
    ) -> Result<v1::JoinGroupResponse> {
        if req.group_id.is_empty() {
            return Err(Error::InvalidRequest("group_id must not be empty".into()));
        }
        if req.topics.is_empty() {
            return Err(Error::InvalidRequest("a member must subscribe to at least one topic".into()));
        }
        let assignor =
            if req.assignor.is_empty() { assignor::RANGE.to_string() } else { req.assignor.clone() };
        if !assignor::is_known(&assignor) {
            return Err(Error::InvalidRequest(format!(
                "unknown assignor '{assignor}' (range, roundrobin, cooperative-sticky)"
            )));
        }
        let (session, rebalance) = timeouts(req.session_timeout_ms, req.rebalance_timeout_ms)?;

        let (member_id, mut rx, started_gen, wait, record) = {
            let now = Instant::now();
            let mut groups = self.groups.lock();
            let g =
                groups.entry(req.group_id.clone()).or_insert_with(|| Group::new(0, assignor.clone(), None));
            if super::client::has_client_members(g) {
                return Err(Error::InvalidRequest(format!(
                    "group '{}' has Kafka-protocol members (client-side assignment); a Tributary consumer cannot join it",
                    req.group_id
                )));
            }
            if g.members.is_empty() {
                g.client = None;
                g.assignor = assignor.clone();
            } else if g.assignor != assignor {
                return Err(Error::InvalidRequest(format!(
                    "group '{}' uses the '{}' assignor; every member must use the same one",
                    req.group_id, g.assignor
                )));
            }
            let instance = (!req.group_instance_id.is_empty()).then(|| req.group_instance_id.clone());

            let member_id = if req.member_id.is_empty() {
                let new_id = self.new_member_id(&req.client_id);
                if let Some(old_id) = instance.as_ref().and_then(|i| g.instances.get(i)).cloned() {
                    let same = g.members.get(&old_id).is_some_and(|m| m.topics == req.topics);
                    if same && g.state == GroupState::Stable {
                        // A static member back within its session: same
                        // partitions, no rebalance; the old id is fenced.
                        if let Some(mut m) = g.members.remove(&old_id) {
                            m.last_seen = now;
                            m.session_timeout = session;
                            m.rebalance_timeout = rebalance;
                            g.members.insert(new_id.clone(), m);
                        }
                        if let Some(inst) = &instance {
                            g.instances.insert(inst.clone(), new_id.clone());
                        }
                        if g.leader == old_id {
                            g.leader = new_id.clone();
                        }
                        return Ok(join_response(g, &new_id, None));
                    }
                    g.remove_member(&old_id);
                }
                new_id
            } else {
                if let Some(code) = g.member_error(&req.member_id, &req.group_instance_id) {
                    return Ok(v1::JoinGroupResponse {
                        error: error(
                            code,
                            format!(
                                "member '{}' is not in group '{}'; join again without a member id",
                                req.member_id, req.group_id
                            ),
                        ),
                        ..Default::default()
                    });
                }
                req.member_id.clone()
            };

            let owned = from_proto(&req.owned);
            let member = Member {
                instance_id: instance.clone(),
                client_id: req.client_id.clone(),
                host,
                session_timeout: session,
                rebalance_timeout: rebalance,
                topics: req.topics.clone(),
                owned,
                last_seen: now,
                rejoined: true,
                assignment: g.members.get(&member_id).map(|m| m.assignment.clone()).unwrap_or_default(),
                revoking: Vec::new(),
                protocols: Vec::new(),
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
        if let Some(record) = record {
            record.wait().await?;
        }

        // Wait (without the lock) for the rebalance to complete.
        let _ = tokio::time::timeout(wait + Duration::from_secs(2), rx.wait_for(|g| *g > started_gen)).await;
        let groups = self.groups.lock();
        let Some(g) = groups.get(&req.group_id) else {
            return Ok(v1::JoinGroupResponse {
                error: error(ErrorCode::UnknownMemberId, "the group was removed while joining"),
                ..Default::default()
            });
        };
        if !g.members.contains_key(&member_id) {
            return Ok(v1::JoinGroupResponse {
                error: error(
                    ErrorCode::UnknownMemberId,
                    "removed from the group during the rebalance; join again",
                ),
                ..Default::default()
            });
        }
        if g.state != GroupState::Stable {
            return Ok(v1::JoinGroupResponse {
                member_id,
                error: error(ErrorCode::RebalanceInProgress, "the rebalance has not completed; join again"),
                ..Default::default()
            });
        }
        Ok(join_response(g, &member_id, None))
    }

    pub fn sync(&self, req: &v1::SyncGroupRequest) -> Result<v1::SyncGroupResponse> {
        let mut groups = self.groups.lock();
        let g = groups.get_mut(&req.group_id).ok_or_else(|| Error::UnknownGroup(req.group_id.clone()))?;
        if let Some(code) = g.member_error(&req.member_id, &req.group_instance_id) {
            return Ok(v1::SyncGroupResponse {
                error: error(code, "not a member of the group; join again"),
                assignment: vec![],
            });
        }
        if g.state == GroupState::PreparingRebalance {
            return Ok(v1::SyncGroupResponse {
                error: error(ErrorCode::RebalanceInProgress, "a rebalance is in progress; join again"),
                assignment: vec![],
            });
        }
        if req.generation != g.generation {
            return Ok(v1::SyncGroupResponse {
                error: error(
                    ErrorCode::IllegalGeneration,
                    format!("generation {} is not the group's current {}", req.generation, g.generation),
                ),
                assignment: vec![],
            });
        }
        let m = g.members.get_mut(&req.member_id).ok_or_else(|| Error::Storage("member vanished".into()))?;
        m.last_seen = Instant::now();
        Ok(v1::SyncGroupResponse { error: None, assignment: to_proto(&m.assignment) })
    }

    pub fn heartbeat(&self, req: &v1::HeartbeatRequest) -> Result<v1::HeartbeatResponse> {
        let mut groups = self.groups.lock();
        let g = groups.get_mut(&req.group_id).ok_or_else(|| Error::UnknownGroup(req.group_id.clone()))?;
        if let Some(code) = g.member_error(&req.member_id, &req.group_instance_id) {
            return Ok(v1::HeartbeatResponse { error: error(code, "not a member of the group; join again") });
        }
        let (state, generation) = (g.state, g.generation);
        let m = g.members.get_mut(&req.member_id).ok_or_else(|| Error::Storage("member vanished".into()))?;
        m.last_seen = Instant::now();
        if state == GroupState::PreparingRebalance && !m.rejoined {
            return Ok(v1::HeartbeatResponse {
                error: error(ErrorCode::RebalanceInProgress, "the group is rebalancing; join again"),
            });
        }
        if req.generation != generation {
            return Ok(v1::HeartbeatResponse {
                error: error(
                    ErrorCode::IllegalGeneration,
                    format!("generation {} is not the group's current {generation}", req.generation),
                ),
            });
        }
        Ok(v1::HeartbeatResponse { error: None })
    }

    /// LeaveGroup. Blocking: waits for the group record it writes.
    pub fn leave(&self, topics: &Topics, req: &v1::LeaveGroupRequest) -> Result<()> {
        self.offsets.ensure_topic(topics)?;
        let record = {
            let mut groups = self.groups.lock();
            let g = groups.get_mut(&req.group_id).ok_or_else(|| Error::UnknownGroup(req.group_id.clone()))?;
            let id = if !req.member_id.is_empty() {
                req.member_id.clone()
            } else {
                g.instances.get(&req.group_instance_id).cloned().unwrap_or_default()
            };
            if !g.members.contains_key(&id) {
                return Ok(());
            }
            g.remove_member(&id);
            if on_membership_change(g, Instant::now()) {
                Some(self.put_group(topics, &req.group_id, g))
            } else {
                // The others rebalance; they may all have rejoined already.
                self.complete_if_ready(topics, &req.group_id, g)
            }
        };
        record.map_or(Ok(()), Pending::wait_blocking)
    }
}

fn join_response(g: &Group, member_id: &str, err: Option<v1::PartitionError>) -> v1::JoinGroupResponse {
    v1::JoinGroupResponse {
        error: err,
        member_id: member_id.to_string(),
        generation: g.generation,
        assignor: g.assignor.clone(),
        leader_id: g.leader.clone(),
        members: g.members.keys().cloned().collect(),
    }
}

/// A joining member's session and rebalance timeouts, for both group kinds:
/// the session must lie within the broker's bounds; the rebalance timeout
/// is clamped to them.
pub(super) fn timeouts(session_ms: u32, rebalance_ms: u32) -> Result<(Duration, Duration)> {
    let session = Duration::from_millis(u64::from(session_ms));
    if !(MIN_SESSION..=MAX_SESSION).contains(&session) {
        return Err(Error::InvalidRequest(format!(
            "session_timeout_ms {session_ms} is outside {}..={}",
            MIN_SESSION.as_millis(),
            MAX_SESSION.as_millis()
        )));
    }
    let rebalance = Duration::from_millis(u64::from(rebalance_ms)).clamp(MIN_SESSION, MAX_SESSION);
    Ok((session, rebalance))
}
