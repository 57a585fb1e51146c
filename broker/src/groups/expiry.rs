//! Expiry: members whose session lapsed, rebalances past their timeout,
//! and offsets of groups empty for longer than the retention.

use super::rebalance::{complete, on_membership_change};
use super::*;

impl Coordinator {
    /// Removes members whose session expired and completes rebalances whose
    /// timeout passed; expires offsets of long-idle empty groups. Called every
    /// ~100 ms, blocking: waits for the writes it queues.
    pub fn tick(&self, topics: &Topics) {
        let now = Instant::now();
        let now_ms = crate::now_ms();
        let mut to_complete = Vec::new();
        let mut to_expire = Vec::new();
        let mut writes: Vec<(String, &'static str, Pending)> = Vec::new();
        {
            let mut groups = self.groups.lock();
            // Only the groups this broker coordinates: another broker's are
            // written by it.
            for (id, g) in groups.iter_mut().filter(|(id, _)| self.owns(id)) {
                let expired: Vec<String> = g
                    .members
                    .iter()
                    .filter(|(_, m)| {
                        // Members waiting in JoinGroup don't heartbeat.
                        let waiting = g.state == GroupState::PreparingRebalance && m.rejoined;
                        !waiting && now.duration_since(m.last_seen) > m.session_timeout
                    })
                    .map(|(id, _)| id.clone())
                    .collect();
                for m in &expired {
                    tracing::info!(group = %id, member = %m, "member session expired");
                    g.remove_member(m);
                }
                if !expired.is_empty() && on_membership_change(g, now) {
                    writes.push((id.clone(), "persisting group", self.put_group(topics, id, g)));
                }
                if g.state == GroupState::PreparingRebalance {
                    let late = g.rebalance_deadline.is_some_and(|d| now >= d);
                    if late || g.members.values().all(|m| m.rejoined) {
                        to_complete.push(id.clone());
                    }
                }
                if g.expired(now_ms, self.retention) {
                    to_expire.push(id.clone());
                }
            }
            for id in to_complete {
                if let Some(g) = groups.get_mut(&id) {
                    complete(g, topics);
                    let write = self.put_group(topics, &id, g);
                    writes.push((id, "persisting group", write));
                }
            }
            for id in to_expire {
                groups.remove(&id);
                tracing::info!(group = %id, "offsets expired (group empty and no commit for offsets.retention.minutes)");
                let write = self.offsets.delete_group(topics, &id);
                writes.push((id, "expiring group offsets", write));
            }
        }
        for (id, what, write) in writes {
            if let Err(e) = write.wait_blocking() {
                tracing::error!(group = %id, error = %e, "{what}");
            }
        }
    }
}
