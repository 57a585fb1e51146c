//! Assignment: when a rebalance completes and what each member gets
//! (computed with the group's strategy, [`super::assignor`]; with a
//! cooperative strategy a moving partition is withheld until its previous
//! owner gave it up).

use super::*;

impl Coordinator {
    /// Completes the group's rebalance if every member has rejoined; returns
    /// the queued write of its new record. Call it under the groups lock.
    pub(super) fn complete_if_ready(&self, topics: &Topics, id: &str, g: &mut Group) -> Option<Pending> {
        let all_in = g.members.values().all(|m| m.rejoined);
        if g.state != GroupState::PreparingRebalance || !all_in {
            return None;
        }
        complete(g, topics);
        Some(self.put_group(topics, id, g))
    }
}

/// After members left or expired: empty the group, or rebalance the rest.
/// Returns true when the group became empty (its record is to be persisted).
pub(super) fn on_membership_change(g: &mut Group, now: Instant) -> bool {
    if g.members.is_empty() {
        g.state = GroupState::Empty;
        g.rebalance_deadline = None;
        g.empty_since_ms = Some(crate::now_ms());
        // Wake anyone still waiting in JoinGroup.
        g.done.send_replace(g.generation);
        return true;
    }
    g.start_rebalance(now);
    false
}

/// generation, assigns.
pub(super) fn complete(g: &mut Group, topics: &Topics) {
    let stragglers: Vec<String> =
        g.members.iter().filter(|(_, m)| !m.rejoined).map(|(id, _)| id.clone()).collect();
    for id in stragglers {
        tracing::info!(member = %id, "removed: did not rejoin within the rebalance timeout");
        g.remove_member(&id);
    }
    g.generation += 1;
    g.rebalance_deadline = None;
    if g.members.is_empty() {
        g.state = GroupState::Empty;
        g.empty_since_ms = Some(crate::now_ms());
        g.done.send_replace(g.generation);
        return;
    }
    if g.client.is_some() {
        // Kafka-protocol members assign among themselves.
        super::client::complete(g);
        return;
    }
    let mut partitions = BTreeMap::new();
    for m in g.members.values() {
        for t in &m.topics {
            if let Ok(topic) = topics.get(t) {
                partitions.insert(t.clone(), topic.partition_count());
            }
        }
    }
    let subs: Vec<assignor::MemberSubscription<'_>> = g
        .members
        .iter()
        .map(|(id, m)| assignor::MemberSubscription { id, topics: &m.topics, owned: &m.owned })
        .collect();
    let mut target = assignor::assign(&g.assignor, &subs, &partitions);
    if assignor::is_cooperative(&g.assignor) {
        // A partition still owned by someone else is withheld this
        // generation; its owner gives it up and rejoins, and the next
        // rebalance hands it over.
        let owners: HashMap<&Tp, &str> =
            g.members.iter().flat_map(|(id, m)| m.owned.iter().map(move |tp| (tp, id.as_str()))).collect();
        for (id, tps) in target.iter_mut() {
            tps.retain(|tp| owners.get(tp).is_none_or(|o| *o == id.as_str()));
        }
    }
    for (id, m) in g.members.iter_mut() {
        m.assignment = target.remove(id).unwrap_or_default();
    }
    let assigned: std::collections::HashSet<Tp> =
        g.members.values().flat_map(|m| m.assignment.iter().cloned()).collect();
    for m in g.members.values_mut() {
        m.revoking = m.owned.iter().filter(|tp| !assigned.contains(*tp)).cloned().collect();
    }
    g.leader = g.members.keys().next().cloned().unwrap_or_default();
    g.state = GroupState::Stable;
    tracing::info!(generation = g.generation, members = g.members.len(), "group rebalanced");
    g.done.send_replace(g.generation);
}
