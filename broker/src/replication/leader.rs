//! A partition leader's view of its followers.
//!
//! Each replica fetch says where the follower's log ends (the fetch offset)
//! and, for topics with `flush.messages=1`, where its fsynced log ends. The
//! high watermark is the minimum of those over the ISR (the committed ISR
//! from the metadata: a shrink or expansion counts once the quorum agreed).
//! A follower is caught up when it has fetched up to the leader's log end as
//! of its previous fetch (Kafka's rule); one not caught up for
//! `replica.lag.time.max.ms` is dropped from the ISR, and one that reached
//! the high watermark in the current epoch joins again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tributary_proto::v1;

use super::{Replica, ReplicaManager, Role};
use crate::BrokerState;

#[derive(Debug, Clone)]
pub struct Follower {
    /// Its log end (next offset it will fetch).
    pub log_end: i64,
    /// Its fsynced log end.
    pub durable_end: i64,
    pub last_caught_up: Instant,
    last_fetch: Instant,
    /// The leader's log end when this follower last fetched.
    leader_end_at_last_fetch: i64,
}

#[derive(Debug)]
pub struct LeaderState {
    pub me: i32,
    pub epoch: i32,
    pub isr: Vec<i32>,
    pub replicas: Vec<i32>,
    /// Log end when this broker became leader: the current epoch's start.
    pub epoch_start: i64,
    pub followers: BTreeMap<i32, Follower>,
    /// An ISR change asked of the controller and not yet in the metadata.
    pub pending: Option<(Vec<i32>, Instant)>,
}

impl LeaderState {
    pub fn new(me: i32, epoch: i32, isr: &[i32], replicas: &[i32], log_end: i64) -> LeaderState {
        let now = Instant::now();
        let followers = replicas
            .iter()
            .filter(|r| **r != me)
            .map(|r| {
                // Unknown until it fetches: it counts as caught up as of now
                // (it gets a full lag time to show up), at offset 0.
                (
                    *r,
                    Follower {
                        log_end: 0,
                        durable_end: 0,
                        last_caught_up: now,
                        last_fetch: now,
                        leader_end_at_last_fetch: 0,
                    },
                )
            })
            .collect();
        LeaderState {
            me,
            epoch,
            isr: isr.to_vec(),
            replicas: replicas.to_vec(),
            epoch_start: log_end,
            followers,
            pending: None,
        }
    }

    pub fn set_isr(&mut self, isr: &[i32], replicas: &[i32]) {
        if self.pending.as_ref().is_some_and(|(p, _)| p == isr) {
            self.pending = None;
        }
        self.isr = isr.to_vec();
        self.replicas = replicas.to_vec();
        // Replicas added by a reassignment start out of sync, at offset 0;
        // removed ones are forgotten.
        let now = Instant::now();
        for r in replicas.iter().filter(|r| **r != self.me) {
            self.followers.entry(*r).or_insert(Follower {
                log_end: 0,
                durable_end: 0,
                last_caught_up: now,
                last_fetch: now,
                leader_end_at_last_fetch: 0,
            });
        }
        self.followers.retain(|id, _| replicas.contains(id));
    }

    /// Records a replica fetch at `offset` (with the follower's durable end).
    pub fn on_fetch(&mut self, follower: i32, offset: i64, durable: i64, leader_end: i64) {
        let now = Instant::now();
        let Some(f) = self.followers.get_mut(&follower) else { return };
        if offset >= leader_end {
            f.last_caught_up = now;
        } else if offset >= f.leader_end_at_last_fetch {
            f.last_caught_up = f.last_caught_up.max(f.last_fetch);
        }
        f.log_end = offset;
        f.durable_end = durable;
        f.last_fetch = now;
        f.leader_end_at_last_fetch = leader_end;
    }

    /// The replication bound on the high watermark: None when this leader
    /// is the only in-sync replica.
    pub fn bound(&self, durable_only: bool) -> Option<i64> {
        self.isr
            .iter()
            .filter(|r| **r != self.me)
            .map(|r| {
                self.followers.get(r).map_or(0, |f| {
                    if durable_only {
                        f.durable_end.min(f.log_end)
                    } else {
                        f.log_end
                    }
                })
            })
            .min()
    }

    /// The ISR this leader wants now, when it differs from the committed one.
    pub fn wanted_isr(&self, high_watermark: i64, lag: Duration) -> Option<Vec<i32>> {
        if self.pending.as_ref().is_some_and(|(_, at)| at.elapsed() < Duration::from_secs(5)) {
            return None;
        }
        let mut isr: Vec<i32> = self
            .isr
            .iter()
            .copied()
            .filter(|r| {
                *r == self.me || self.followers.get(r).is_some_and(|f| f.last_caught_up.elapsed() <= lag)
            })
            .collect();
        for (id, f) in &self.followers {
            let caught_up = f.log_end >= high_watermark && f.log_end >= self.epoch_start;
            if !isr.contains(id) && caught_up && f.last_fetch.elapsed() <= lag {
                isr.push(*id);
            }
        }
        isr.sort_unstable();
        let mut current = self.isr.clone();
        current.sort_unstable();
        (isr != current).then_some(isr)
    }
}

/// Recomputes the high watermark from the followers' positions.
pub fn update_high_watermark(r: &Replica, state: &BrokerState) {
    let durable_only = state.topics.get(&r.topic).is_ok_and(|t| t.config().flush_messages == 1);
    let bound = r.leader.lock().as_ref().map(|l| l.bound(durable_only));
    if let Some(bound) = bound {
        r.partition.set_replica_bound(bound);
    }
}

/// Serves one partition of a replica fetch on the leader: checks the epoch,
/// records the follower's position, moves the high watermark, reads.
pub fn serve_replica_fetch(
    manager: &ReplicaManager,
    state: &BrokerState,
    follower: i32,
    want: &v1::FetchPartition,
    budget: usize,
) -> v1::FetchPartitionResponse {
    let mut resp = v1::FetchPartitionResponse {
        topic: want.topic.clone(),
        partition: want.partition,
        high_watermark: -1,
        log_start_offset: -1,
        leader_epoch: -1,
        ..Default::default()
    };
    let r = match manager.replica(&want.topic, want.partition) {
        Some(r) if matches!(r.role(), Role::Leader { .. }) => r,
        _ => {
            let md = manager.node.metadata();
            let hint = md.partition(&want.topic, want.partition).cloned();
            resp.error = Some(super::not_leader(
                &md,
                manager.node.node_id(),
                &want.topic,
                want.partition,
                hint.as_ref(),
            ));
            return resp;
        }
    };
    let Role::Leader { epoch } = r.role() else { return resp };
    resp.leader_epoch = epoch;
    if want.current_leader_epoch != epoch {
        let code = if want.current_leader_epoch < epoch {
            v1::ErrorCode::FencedLeaderEpoch
        } else {
            v1::ErrorCode::UnknownLeaderEpoch
        };
        resp.error = Some(v1::PartitionError {
            code: code as i32,
            message: format!(
                "{}-{} is at leader epoch {epoch}; the fetch said {}",
                want.topic, want.partition, want.current_leader_epoch
            ),
            leader_id: manager.node.node_id(),
            leader_epoch: epoch,
            ..Default::default()
        });
        return resp;
    }
    let leader_end = r.partition.log_end_offset();
    let in_sync = {
        let mut guard = r.leader.lock();
        let Some(l) = guard.as_mut() else { return resp };
        l.on_fetch(follower, want.offset, want.durable_end, leader_end);
        l.isr.contains(&follower)
    };
    update_high_watermark(&r, state);
    resp.high_watermark = r.partition.high_watermark();
    let throttle = reassignment_throttle(manager, &want.topic, want.partition, in_sync);
    let budget = match throttle {
        Some(rate) => match manager.throttle.allowance(rate) {
            0 => {
                // Nothing this time: the follower asks again.
                resp.log_start_offset = r.partition.log_start_offset();
                return resp;
            }
            allowed => budget.min(allowed),
        },
        None => budget,
    };
    match r.partition.read_replica(want.offset, budget.max(1)) {
        Ok(read) => {
            resp.log_start_offset = read.log_start_offset;
            resp.records = read.records;
            if throttle.is_some() {
                manager.throttle.spend(resp.records.len());
                state.metrics.throttled_bytes.inc_by(resp.records.len() as u64);
            }
        }
        Err(e) => {
            let code = match e {
                crate::error::Error::OffsetOutOfRange { .. } => v1::ErrorCode::OffsetOutOfRange,
                _ => v1::ErrorCode::StorageError,
            };
            resp.log_start_offset = r.partition.log_start_offset();
            resp.error =
                Some(v1::PartitionError { code: code as i32, message: e.to_string(), ..Default::default() });
        }
    }
    resp
}

/// The throttle rate for a fetch by a replica copying for a reassignment
/// (a target replica not in sync), when one is set.
fn reassignment_throttle(
    manager: &ReplicaManager,
    topic: &str,
    partition: u32,
    in_sync: bool,
) -> Option<u64> {
    if in_sync {
        return None;
    }
    let md = manager.node.metadata();
    let rate = md.reassignment_throttle;
    let moving = md.partition(topic, partition).is_some_and(|p| p.target.is_some());
    (rate > 0 && moving).then_some(rate)
}

/// Shrinks and expands ISRs of the partitions this broker leads; run
/// periodically.
pub async fn maintain_isrs(manager: Arc<ReplicaManager>, state: Arc<BrokerState>) {
    // Without a lease this broker may be a deposed leader, or a restarted
    // one whose new run is not registered yet (it may have lost records its
    // followers hold): it must not shrink the ISR to itself.
    if !state.session.lease_valid() {
        return;
    }
    for r in manager.replicas() {
        let Role::Leader { epoch } = r.role() else { continue };
        let hw = r.partition.high_watermark();
        let wanted = {
            let mut guard = r.leader.lock();
            let Some(l) = guard.as_mut() else { continue };
            let wanted = l.wanted_isr(hw, manager.lag_time);
            if let Some(w) = &wanted {
                l.pending = Some((w.clone(), Instant::now()));
            }
            wanted
        };
        let Some(isr) = wanted else { continue };
        tracing::info!(topic = %r.topic, partition = r.id, epoch, isr = ?isr, "asking the controller to change the ISR");
        state.metrics.isr_changes.inc();
        let request = v1::AlterPartitionRequest {
            node_id: manager.node.node_id(),
            topic: r.topic.clone(),
            partition: r.id,
            leader_epoch: epoch,
            new_isr: isr,
        };
        if let Err(e) = crate::server::cluster::alter_partition_via_controller(&manager.node, request).await {
            tracing::warn!(topic = %r.topic, partition = r.id, error = %e, "ISR change");
            if let Some(l) = r.leader.lock().as_mut() {
                l.pending = None;
            }
        }
    }
}

/// Waits until `offset` is below the high watermark (acks=all), with at
/// least `min_isr` in-sync replicas; answers the per-partition outcome.
pub async fn wait_replicated(
    r: &Replica,
    state: &BrokerState,
    offset: i64,
    min_isr: usize,
    timeout: Duration,
) -> Option<v1::PartitionError> {
    let mut hw = r.partition.subscribe();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let isr_len = r.leader.lock().as_ref().map(|l| l.isr.len());
        let Some(isr_len) = isr_len else {
            return Some(super::not_available(format!(
                "{}-{}: leadership moved before the records were replicated; they may or may not be kept",
                r.topic, r.id
            )));
        };
        if isr_len < min_isr {
            return Some(v1::PartitionError {
                code: v1::ErrorCode::NotEnoughReplicasAfterAppend as i32,
                message: format!(
                    "{}-{}: the ISR shrank to {isr_len}, below min.insync.replicas={min_isr}, before the records were replicated",
                    r.topic, r.id
                ),
                ..Default::default()
            });
        }
        if r.partition.high_watermark() > offset {
            if !state.session.lease_valid() {
                return Some(super::not_available(format!(
                    "{}-{}: the leader's session lapsed before it could acknowledge",
                    r.topic, r.id
                )));
            }
            return None;
        }
        tokio::select! {
            _ = hw.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = tokio::time::sleep_until(deadline) => {
                return Some(v1::PartitionError {
                    code: v1::ErrorCode::RequestTimedOut as i32,
                    message: format!("{}-{}: the in-sync replicas did not confirm within {} ms", r.topic, r.id, timeout.as_millis()),
                    ..Default::default()
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAG: Duration = Duration::from_millis(200);

    #[test]
    fn the_high_watermark_bound_is_the_slowest_in_sync_follower() {
        let mut l = LeaderState::new(0, 1, &[0, 1, 2], &[0, 1, 2], 0);
        l.on_fetch(1, 10, 4, 10);
        l.on_fetch(2, 7, 7, 10);
        assert_eq!(l.bound(false), Some(7));
        // flush.messages=1 counts only what followers fsynced.
        assert_eq!(l.bound(true), Some(4));
        // A follower out of the ISR holds nothing back.
        l.set_isr(&[0, 1], &[0, 1, 2]);
        assert_eq!(l.bound(false), Some(10));
        l.set_isr(&[0], &[0, 1, 2]);
        assert_eq!(l.bound(false), None);
    }

    #[test]
    fn a_follower_that_stops_catching_up_leaves_and_one_that_catches_up_joins() {
        let mut l = LeaderState::new(0, 1, &[0, 1, 2], &[0, 1, 2], 5);
        std::thread::sleep(LAG + Duration::from_millis(50));
        // 1 keeps up; 2 never fetched.
        l.on_fetch(1, 20, 20, 20);
        assert_eq!(l.wanted_isr(20, LAG), Some(vec![0, 1]));
        l.set_isr(&[0, 1], &[0, 1, 2]);
        // 2 fetches, but below the high watermark: not yet.
        l.on_fetch(2, 10, 10, 20);
        assert_eq!(l.wanted_isr(20, LAG), None);
        l.on_fetch(2, 20, 20, 20);
        assert_eq!(l.wanted_isr(20, LAG), Some(vec![0, 1, 2]));
        // While the change is pending it is not asked again.
        l.pending = Some((vec![0, 1, 2], Instant::now()));
        assert_eq!(l.wanted_isr(20, LAG), None);
    }

    #[test]
    fn a_follower_below_the_epoch_start_cannot_join() {
        // It has not truncated to this epoch yet, so its log may diverge.
        let mut l = LeaderState::new(0, 3, &[0], &[0, 1], 50);
        l.on_fetch(1, 40, 40, 50);
        assert_eq!(l.wanted_isr(40, LAG), None);
        l.on_fetch(1, 50, 50, 50);
        assert_eq!(l.wanted_isr(50, LAG), Some(vec![0, 1]));
    }
}
