//! Committed offsets: validating commits against the generation and the
//! member's assignment, and reading them back.

use super::*;
use crate::error::Rejection;

impl Coordinator {
    /// Validates and stores a commit. Blocking: creates `__consumer_offsets`
    /// if needed and waits until the commit is durable.
    pub fn commit(&self, topics: &Topics, req: &v1::CommitOffsetsRequest) -> Result<()> {
        self.offsets.ensure_topic(topics)?;
        self.start_commit(topics, req)?.wait_blocking()
    }

    /// Validates a commit and queues it, in the order commits are validated;
    /// the result resolves once it is durable and applied. Never blocks;
    /// `__consumer_offsets` must exist ([`OffsetStore::ensure_topic`]).
    pub fn start_commit(&self, topics: &Topics, req: &v1::CommitOffsetsRequest) -> Result<Pending> {
        if req.group_id.is_empty() {
            return Err(Error::InvalidRequest("group_id must not be empty".into()));
        }
        let mut entries = Vec::with_capacity(req.offsets.len());
        let now = crate::now_ms();
        for o in &req.offsets {
            if o.offset < 0 {
                return Err(Error::InvalidRequest(format!(
                    "offset {} for {}-{} is negative; commit the next offset to read (>= 0)",
                    o.offset, o.topic, o.partition
                )));
            }
            topics.partition(&o.topic, o.partition)?;
            entries.push((
                o.topic.clone(),
                o.partition,
                Committed { offset: o.offset, metadata: o.metadata.clone(), commit_ms: now },
            ));
        }
        // Encoded before the lock: metadata can be large.
        let records = Records::commit(&req.group_id, &entries)?;
        let mut groups = self.groups.lock();
        {
            let standalone = req.member_id.is_empty() && req.generation < 0;
            if standalone {
                let g = groups
                    .entry(req.group_id.clone())
                    .or_insert_with(|| Group::new(0, assignor::RANGE.into(), Some(now)));
                if !g.members.is_empty() {
                    return Err(Error::CommitRejected(
                        Rejection::GroupHasMembers,
                        format!(
                        "group '{}' has active members; commit as a member (with member id and generation)",
                        req.group_id
                    ),
                    ));
                }
            } else {
                let g = groups.get(&req.group_id).ok_or_else(|| Error::UnknownGroup(req.group_id.clone()))?;
                if let Some(code) = g.member_error(&req.member_id, &req.group_instance_id) {
                    let (reason, why) = if code == ErrorCode::FencedInstanceId {
                        (Rejection::FencedInstance, "is fenced by a newer instance")
                    } else {
                        (Rejection::UnknownMember, "is not a member")
                    };
                    return Err(Error::CommitRejected(
                        reason,
                        format!(
                            "commit rejected: '{}' {why} of group '{}'; rejoin the group",
                            req.member_id, req.group_id
                        ),
                    ));
                }
                if req.generation != g.generation {
                    return Err(Error::CommitRejected(Rejection::StaleGeneration, format!(
                        "commit rejected: member '{}' is at generation {} but group '{}' is at generation {} (fenced; rejoin the group)",
                        req.member_id, req.generation, req.group_id, g.generation
                    )));
                }
                let m = &g.members[&req.member_id];
                // Kafka-protocol members assign among themselves; as Kafka
                // does, their commits are checked by generation only.
                let checked = if g.client.is_some() { &[][..] } else { &entries[..] };
                for (t, p, _) in checked {
                    let owns = |tps: &[Tp]| tps.iter().any(|(at, ap)| at == t && ap == p);
                    if !owns(&m.assignment) && !owns(&m.revoking) {
                        return Err(Error::CommitRejected(
                            Rejection::NotAssigned,
                            format!(
                                "commit rejected: {t}-{p} is not assigned to member '{}' in generation {}",
                                req.member_id, g.generation
                            ),
                        ));
                    }
                }
            }
        }
        if let Some(g) = groups.get_mut(&req.group_id) {
            g.last_commit_ms = Some(now);
        }
        // Queued under the lock: the write order is the validation order.
        Ok(self.offsets.write(topics, &req.group_id, records))
    }

    fn known(&self, group: &str) -> Result<()> {
        if self.groups.lock().contains_key(group) {
            Ok(())
        } else {
            Err(Error::UnknownGroup(group.to_string()))
        }
    }

    pub fn fetch_offsets(&self, req: &v1::FetchOffsetsRequest) -> Result<v1::FetchOffsetsResponse> {
        self.known(&req.group_id)?;
        let committed = self.offsets.offsets(&req.group_id)?;
        let wanted = from_proto(&req.partitions);
        let offsets = if wanted.is_empty() {
            committed
                .into_iter()
                .map(|(topic, partition, c)| v1::OffsetEntry {
                    topic,
                    partition,
                    offset: c.offset,
                    metadata: c.metadata,
                })
                .collect()
        } else {
            wanted
                .into_iter()
                .map(|(topic, partition)| {
                    let c = committed.iter().find(|(t, p, _)| *t == topic && *p == partition);
                    v1::OffsetEntry {
                        offset: c.map_or(-1, |c| c.2.offset),
                        metadata: c.map(|c| c.2.metadata.clone()).unwrap_or_default(),
                        topic,
                        partition,
                    }
                })
                .collect()
        };
        Ok(v1::FetchOffsetsResponse { offsets })
    }
}
