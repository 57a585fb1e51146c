//! The metadata quorum: which brokers exist and are alive, which topics and
//! partitions exist, who leads each partition in which epoch, and each
//! partition's in-sync replicas.
//!
//! * [`state`]: the metadata and the commands that change it (pure).
//! * [`raft_store`]: openraft's log, vote and snapshot in RocksDB, and the
//!   state machine.
//! * [`network`]: Raft messages over the `Cluster` gRPC service.
//! * [`peers`]: how this broker dials the others.
//! * [`placement`] and [`reassign`]: where replicas go, at creation and when
//!   they move.
//! * [`controller`]: what the Raft leader does as the cluster's controller —
//!   broker sessions (fencing brokers whose session expired, which elects
//!   new leaders), topic placement, ISR changes.
//! * [`session`]: every broker's side of its session with the controller,
//!   and the lease that tells a partition leader when it must stop
//!   acknowledging.
//!
//! A broker started without `--peers` is a one-node cluster: the same code,
//! with itself as the only voter.

pub mod controller;
pub mod network;
pub mod peers;
pub mod placement;
pub mod raft_store;
pub mod reassign;
pub mod session;
pub mod state;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Raft};
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::store::Store;
use raft_store::{LogStore, NodeId, StateMachine};
use state::{Command, MetadataState, Outcome};

openraft::declare_raft_types!(
    /// openraft's types for the metadata quorum.
    pub TypeConfig:
        D = Command,
        R = Outcome,
        NodeId = NodeId,
        Node = BasicNode,
);

/// How the quorum is set up (from flags).
#[derive(Debug, Clone)]
pub struct ClusterSetup {
    pub node_id: i32,
    /// Inter-broker addresses by node id, this broker's own included.
    pub peers: BTreeMap<i32, String>,
    /// Raft voters; every other broker is a learner.
    pub controllers: Vec<i32>,
    pub cluster_name: String,
    pub rack: String,
    /// Where clients reach this broker.
    pub advertised: String,
    /// Where Kafka clients reach this broker (empty: no Kafka listener).
    pub kafka_advertised: String,
    /// Where other brokers reach this broker's HTTP port.
    pub http_advertised: String,
}

impl ClusterSetup {
    /// Voters: `--controllers`, else the first three ids of `--peers`, else
    /// this broker alone.
    pub fn voters(&self) -> Vec<i32> {
        if !self.controllers.is_empty() {
            return self.controllers.clone();
        }
        if self.peers.is_empty() {
            return vec![self.node_id];
        }
        self.peers.keys().copied().take(3).collect()
    }
}

/// This broker's member of the metadata quorum.
pub struct ClusterNode {
    pub setup: ClusterSetup,
    pub raft: Raft<TypeConfig>,
    state_machine: StateMachine,
    pub peers: Arc<peers::Peers>,
}

/// The Raft timing. Elections wait long enough that a loaded two-core
/// machine does not depose a healthy leader.
/// A lone voter has no one to wait for: it elects itself quickly.
fn raft_config(lone_voter: bool) -> Result<Arc<openraft::Config>> {
    let (min, max) = if lone_voter { (150, 300) } else { (1000, 2000) };
    let config = openraft::Config {
        cluster_name: "tributary-metadata".into(),
        heartbeat_interval: if lone_voter { 50 } else { 150 },
        election_timeout_min: min,
        election_timeout_max: max,
        install_snapshot_timeout: 10_000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(2000),
        max_in_snapshot_log_to_keep: 1000,
        ..Default::default()
    };
    config.validate().map(Arc::new).map_err(|e| Error::Storage(format!("Raft configuration: {e}")))
}

impl ClusterNode {
    /// Opens the quorum's storage and starts the Raft node. A voter whose
    /// Raft storage is empty proposes the initial membership (every voter
    /// proposes the same one, which openraft accepts from any of them).
    pub async fn start(setup: ClusterSetup, store: Arc<Store>) -> Result<Arc<ClusterNode>> {
        let mut configured = setup.peers.clone();
        configured.entry(setup.node_id).or_insert_with(|| setup.advertised.clone());
        let peers = Arc::new(peers::Peers::new(configured));
        let log = LogStore::open(store.clone())?;
        let state_machine = StateMachine::open(store)?;
        let network = network::Network { peers: peers.clone() };
        let lone = setup.voters().len() == 1;
        let raft =
            Raft::new(setup.node_id as NodeId, raft_config(lone)?, network, log, state_machine.clone())
                .await
                .map_err(|e| Error::Storage(format!("starting the metadata quorum: {e}")))?;
        let node = Arc::new(ClusterNode { setup, raft, state_machine, peers });
        node.form().await?;
        Ok(node)
    }

    async fn form(&self) -> Result<()> {
        let voters = self.setup.voters();
        if !voters.contains(&self.setup.node_id) {
            return Ok(());
        }
        let initialized =
            self.raft.is_initialized().await.map_err(|e| Error::Storage(format!("metadata quorum: {e}")))?;
        if initialized {
            return Ok(());
        }
        let members: BTreeMap<NodeId, BasicNode> = voters
            .iter()
            .map(|id| (*id as NodeId, BasicNode::new(self.peers.address(*id).unwrap_or_default())))
            .collect();
        tracing::info!(voters = ?voters, "forming the metadata quorum");
        if let Err(e) = self.raft.initialize(members).await {
            // Another voter's proposal got here first: fine.
            tracing::info!(error = %e, "metadata quorum already forming");
        }
        Ok(())
    }

    pub fn node_id(&self) -> i32 {
        self.setup.node_id
    }

    /// The latest applied metadata.
    pub fn metadata(&self) -> Arc<MetadataState> {
        self.state_machine.current()
    }

    /// The log index of the metadata [`ClusterNode::metadata`] returns.
    pub fn metadata_version(&self) -> u64 {
        self.state_machine.version()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<MetadataState>> {
        self.state_machine.subscribe()
    }

    /// The Raft leader (the controller), if there is one now.
    ///
    /// A broker never names itself unless its Raft node really leads: one
    /// restarted after it was removed from the quorum comes back with its
    /// own old leadership in its stored vote and no one to depose it (no
    /// member replicates to it), and must ask its peers instead.
    pub fn controller_id(&self) -> Option<i32> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let me = self.setup.node_id as NodeId;
        match m.current_leader {
            Some(id) if id == me && m.state != openraft::ServerState::Leader => None,
            other => other.map(|id| id as i32),
        }
    }

    pub fn is_controller(&self) -> bool {
        self.controller_id() == Some(self.setup.node_id)
    }

    /// Index of the last metadata entry applied here.
    pub fn applied_index(&self) -> u64 {
        self.raft.metrics().borrow().last_applied.map_or(0, |l| l.index)
    }

    pub fn raft_term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    /// Voters of the current membership.
    pub fn voter_ids(&self) -> BTreeSet<i32> {
        self.raft.metrics().borrow().membership_config.membership().voter_ids().map(|id| id as i32).collect()
    }

    /// Every member (voters and learners).
    pub fn member_ids(&self) -> BTreeSet<i32> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id as i32)
            .collect()
    }

    /// Commits `command` (only on the controller) and answers what applying
    /// it said. A broker that is not the controller gets `NotController`
    /// with the controller's id when known.
    pub async fn propose(&self, command: Command) -> Result<Outcome> {
        match self.raft.client_write(command).await {
            Ok(r) => Ok(r.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(Error::NotController { controller: f.leader_id.map(|id| id as i32) })
            }
            Err(e) => Err(Error::Unavailable(format!("the metadata quorum could not commit: {e}"))),
        }
    }

    /// Waits until this broker has applied metadata up to `index`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> bool {
        let mut metrics = self.raft.metrics();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if metrics.borrow().last_applied.map_or(0, |l| l.index) >= index {
                return true;
            }
            if tokio::time::timeout_at(deadline, metrics.changed()).await.is_err() {
                return false;
            }
        }
    }

    /// A channel to the controller, for calls decided there; None when this
    /// broker is the controller.
    pub fn controller_channel(&self) -> Result<Option<tonic::transport::Channel>> {
        let controller = self.controller_id().ok_or(Error::NotController { controller: None })?;
        if controller == self.node_id() {
            return Ok(None);
        }
        self.peer_address(controller)
            .and_then(|address| network::peer_channel(&address))
            .map(Some)
            .ok_or(Error::NotController { controller: Some(controller) })
    }

    /// Inter-broker address of `id`.
    pub fn peer_address(&self, id: i32) -> Option<String> {
        self.peers.address(id)
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "stopping the metadata quorum");
        }
    }
}
