//! This broker's session with the controller, and the lease that bounds
//! how long it may act as a partition leader without one.
//!
//! The broker heartbeats the controller every `broker_heartbeat_interval_ms`.
//! The controller fences a broker whose last heartbeat it *received* is
//! older than the session timeout; the broker counts its lease from when it
//! *sent* an accepted heartbeat, minus a margin for clock-rate drift. A
//! heartbeat is received after it is sent, so the lease always runs out
//! before the controller may elect another leader: two leaders never both
//! acknowledge `acks=all` writes. A lease counts only once this broker has
//! applied the metadata the controller had committed when it answered, so a
//! broker that comes back never acts on a leadership it lost while away.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tributary_proto::v1;

use super::network::cluster_client;
use super::ClusterNode;
use crate::shutdown::Shutdown;

pub struct Session {
    base: Instant,
    /// Nanoseconds after `base` until which the lease holds (0: none).
    lease_until: AtomicU64,
    pub session_timeout: Duration,
    pub heartbeat_interval: Duration,
    shutting_down: AtomicBool,
    /// Unique to this process run (see `BrokerHeartbeatRequest`).
    pub incarnation: u64,
}

/// A value no earlier run of this broker used: the wall clock in
/// nanoseconds, mixed with the process id (never 0, which old metadata
/// records hold).
fn new_incarnation() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    (nanos ^ (u64::from(std::process::id()) << 48)).max(1)
}

impl Session {
    pub fn new(session_timeout: Duration, heartbeat_interval: Duration) -> Arc<Session> {
        Arc::new(Session {
            base: Instant::now(),
            lease_until: AtomicU64::new(0),
            session_timeout,
            heartbeat_interval,
            shutting_down: AtomicBool::new(false),
            incarnation: new_incarnation(),
        })
    }

    /// The lease margin: a tenth of the session, at least 100 ms.
    fn lease_length(&self) -> Duration {
        let margin = (self.session_timeout / 10).max(Duration::from_millis(100));
        self.session_timeout.saturating_sub(margin)
    }

    /// True while this broker may act as a partition leader.
    pub fn lease_valid(&self) -> bool {
        let now = self.base.elapsed().as_nanos() as u64;
        now < self.lease_until.load(Ordering::Acquire)
    }

    fn renew(&self, sent: Instant) {
        let until = (sent.duration_since(self.base) + self.lease_length()).as_nanos() as u64;
        self.lease_until.fetch_max(until, Ordering::AcqRel);
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    /// Heartbeats until shutdown.
    pub async fn run(self: Arc<Self>, node: Arc<ClusterNode>, mut shutdown: Shutdown) {
        let mut tick = tokio::time::interval(self.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait() => return,
            }
            if let Err(e) = self.beat(&node).await {
                tracing::debug!(error = %e, "heartbeat to the controller");
            }
        }
    }

    /// One heartbeat; renews the lease when the controller accepts it. A
    /// broker that does not know the controller (a new learner, not yet in
    /// the quorum's membership) asks its configured peers, which answer
    /// where the controller is.
    pub async fn beat(&self, node: &ClusterNode) -> Result<(), String> {
        let mut candidates: Vec<i32> = match node.controller_id() {
            Some(c) => vec![c],
            None => node.peers.configured().keys().copied().collect(),
        };
        let mut last = "no controller elected and no peer to ask".to_string();
        let mut tried = std::collections::BTreeSet::new();
        while let Some(target) = candidates.pop() {
            if !tried.insert(target) {
                continue;
            }
            match self.beat_to(node, target).await {
                Ok(None) => return Ok(()),
                Ok(Some(controller)) => {
                    last = format!("broker {target} is not the controller");
                    if controller >= 0 {
                        candidates.push(controller);
                    }
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Ok(None): accepted; Ok(Some(c)): not the controller (c is, or -1).
    async fn beat_to(&self, node: &ClusterNode, target: i32) -> Result<Option<i32>, String> {
        let address = node.peer_address(target).ok_or_else(|| format!("no address for broker {target}"))?;
        let mut client = cluster_client(&address).ok_or_else(|| format!("bad address {address}"))?;
        let sent = Instant::now();
        let mut request = tonic::Request::new(v1::BrokerHeartbeatRequest {
            node_id: node.node_id(),
            address: node.setup.advertised.clone(),
            rack: node.setup.rack.clone(),
            shutting_down: self.shutting_down.load(Ordering::Acquire),
            incarnation: self.incarnation,
            kafka_address: node.setup.kafka_advertised.clone(),
            http_address: node.setup.http_advertised.clone(),
        });
        request.set_timeout(self.heartbeat_interval.max(Duration::from_millis(500)));
        let response =
            client.broker_heartbeat(request).await.map_err(|s| s.message().to_string())?.into_inner();
        if !response.accepted {
            return Ok(Some(response.controller_id));
        }
        if !response.registered {
            // The controller is registering this run; the next heartbeat
            // renews once that is committed.
            return Ok(None);
        }
        // The lease must not outlive what `sent` allows, however long the
        // metadata takes to catch up.
        let remaining = self.lease_length().saturating_sub(sent.elapsed()).min(self.heartbeat_interval);
        if node.wait_applied(response.metadata_index, remaining).await {
            self.renew(sent);
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_ends_before_the_session_does() {
        let s = Session::new(Duration::from_millis(3000), Duration::from_millis(300));
        assert!(!s.lease_valid());
        let sent = Instant::now();
        s.renew(sent);
        assert!(s.lease_valid());
        assert!(s.lease_length() < s.session_timeout);
        // An older heartbeat's answer never shortens a newer lease.
        s.renew(sent - Duration::from_secs(10));
        assert!(s.lease_valid());
    }
}
