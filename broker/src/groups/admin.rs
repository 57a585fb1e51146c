//! Group administration: listing, describing, deleting and resetting
//! offsets (the last two only while a group has no members).

use super::*;

impl Coordinator {
    /// The groups this broker coordinates.
    pub fn list(&self) -> v1::ListGroupsResponse {
        let groups = self.groups.lock();
        let mut out: Vec<v1::GroupListing> = groups
            .iter()
            .filter(|(id, _)| self.owns(id))
            .map(|(id, g)| v1::GroupListing {
                group_id: id.clone(),
                state: g.state.name().to_string(),
                members: g.members.len() as u32,
            })
            .collect();
        out.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        v1::ListGroupsResponse { groups: out }
    }

    /// The groups this broker coordinates as Kafka's ListGroups shows them:
    /// (group, state, protocol type). The protocol type is what a Kafka
    /// group's members declared (`"consumer"` for consumers); native groups
    /// have none.
    pub fn list_protocol_types(&self) -> Vec<(String, String, String)> {
        let groups = self.groups.lock();
        groups
            .iter()
            .filter(|(id, _)| self.owns(id))
            .map(|(id, g)| {
                let kind = g.client.as_ref().map(|c| c.protocol_type.clone()).unwrap_or_default();
                (id.clone(), g.state.name().to_string(), kind)
            })
            .collect()
    }

    pub fn describe(&self, topics: &Topics, group: &str) -> Result<v1::DescribeGroupResponse> {
        let (mut resp, owners) = {
            let groups = self.groups.lock();
            let g = groups.get(group).ok_or_else(|| Error::UnknownGroup(group.to_string()))?;
            let mut owners: BTreeMap<Tp, String> = BTreeMap::new();
            let members = g
                .members
                .iter()
                .map(|(id, m)| {
                    for tp in &m.assignment {
                        owners.insert(tp.clone(), id.clone());
                    }
                    v1::MemberDescription {
                        member_id: id.clone(),
                        group_instance_id: m.instance_id.clone().unwrap_or_default(),
                        client_id: m.client_id.clone(),
                        host: m.host.clone(),
                        assignment: to_proto(&m.assignment),
                    }
                })
                .collect();
            let resp = v1::DescribeGroupResponse {
                group_id: group.to_string(),
                state: g.state.name().to_string(),
                generation: g.generation,
                assignor: g.assignor.clone(),
                members,
                offsets: vec![],
            };
            (resp, owners)
        };
        let mut rows: BTreeMap<Tp, i64> =
            self.offsets.offsets(group)?.into_iter().map(|(t, p, c)| ((t, p), c.offset)).collect();
        for tp in owners.keys() {
            rows.entry(tp.clone()).or_insert(-1);
        }
        for ((topic, partition), committed) in rows {
            let end =
                topics.partition(&topic, partition).map(|p| p.with_log(|l| l.high_watermark())).unwrap_or(-1);
            let lag = if committed >= 0 && end >= 0 { (end - committed).max(0) } else { -1 };
            resp.offsets.push(v1::PartitionLag {
                member_id: owners.get(&(topic.clone(), partition)).cloned().unwrap_or_default(),
                topic,
                partition,
                committed_offset: committed,
                log_end_offset: end,
                lag,
            });
        }
        Ok(resp)
    }

    /// Deletes an empty group and its offsets. Blocking.
    pub fn delete(&self, topics: &Topics, group: &str) -> Result<()> {
        self.offsets.ensure_topic(topics)?;
        let (write, removed) = {
            let mut groups = self.groups.lock();
            require_empty(&groups, group)?;
            (self.offsets.delete_group(topics, group), groups.remove(group))
        };
        if let Err(e) = write.wait_blocking() {
            // Still stored: still there.
            if let Some(g) = removed {
                self.groups.lock().entry(group.to_string()).or_insert(g);
            }
            return Err(e);
        }
        Ok(())
    }

    /// Moves a group's offsets for one topic; only while the group is empty.
    /// Blocking.
    pub fn reset(
        &self,
        topics: &Topics,
        group: &str,
        topic: &str,
        partitions: &[u32],
        to: ResetTo,
        dry_run: bool,
    ) -> Result<Vec<v1::OffsetEntry>> {
        require_empty(&self.groups.lock(), group)?;
        let t = topics.get(topic)?;
        let chosen: Vec<u32> =
            if partitions.is_empty() { (0..t.partition_count()).collect() } else { partitions.to_vec() };
        let mut entries = Vec::new();
        let now = crate::now_ms();
        for p in chosen {
            let part = t.partition(p)?;
            let offset = part.with_log(|log| -> Result<i64> {
                let (start, end) = (log.log_start_offset(), log.high_watermark());
                Ok(match to {
                    ResetTo::Earliest => start,
                    ResetTo::Latest => end,
                    ResetTo::Timestamp(ts) => log.offset_for_time(ts)?.map_or(end, |(o, _)| o),
                    ResetTo::Offset(o) if o < 0 => {
                        return Err(Error::InvalidRequest(format!("offset {o} is negative")));
                    }
                    // Kafka's rule: an offset outside the log is moved to its nearest end.
                    ResetTo::Offset(o) => o.clamp(start, end),
                })
            })?;
            entries.push((
                topic.to_string(),
                p,
                Committed { offset, metadata: String::new(), commit_ms: now },
            ));
        }
        if !dry_run {
            let records = Records::commit(group, &entries)?;
            self.offsets.ensure_topic(topics)?;
            let write = {
                let mut groups = self.groups.lock();
                require_empty(&groups, group)?;
                if let Some(g) = groups.get_mut(group) {
                    g.last_commit_ms = Some(now);
                }
                self.offsets.write(topics, group, records)
            };
            write.wait_blocking()?;
        }
        Ok(entries
            .into_iter()
            .map(|(topic, partition, c)| v1::OffsetEntry {
                topic,
                partition,
                offset: c.offset,
                metadata: String::new(),
            })
            .collect())
    }
}

fn require_empty(groups: &HashMap<String, Group>, group: &str) -> Result<()> {
    let g = groups.get(group).ok_or_else(|| Error::UnknownGroup(group.to_string()))?;
    if !g.members.is_empty() {
        return Err(Error::GroupNotEmpty(group.to_string(), g.members.len()));
    }
    Ok(())
}
