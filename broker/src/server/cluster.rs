//! The `Cluster` service: Raft messages, broker sessions, ISR changes,
//! epoch queries for follower truncation, and the cluster-wide views.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::{Request, Response, Status};
use tributary_proto::v1::{self, cluster_server::Cluster};

use crate::cluster::state::{Command, Outcome, NO_LEADER};
use crate::cluster::ClusterNode;
use crate::error::Error;
use crate::replication::Role;
use crate::BrokerState;

pub struct ClusterService {
    state: Arc<BrokerState>,
}

impl ClusterService {
    pub fn new(state: Arc<BrokerState>) -> Self {
        ClusterService { state }
    }

    fn finish<T>(
        &self,
        rpc: &'static str,
        start: Instant,
        r: Result<T, Error>,
    ) -> Result<Response<T>, Status> {
        super::respond(&self.state, rpc, start, r)
    }

    fn describe(&self) -> v1::DescribeClusterResponse {
        let node = &self.state.cluster;
        let md = node.metadata();
        let voters = node.voter_ids();
        let (partitions, under, offline) = md.health();
        v1::DescribeClusterResponse {
            cluster_id: md.cluster_id.clone(),
            cluster_name: node.setup.cluster_name.clone(),
            controller_id: node.controller_id().unwrap_or(-1),
            raft_term: node.raft_term(),
            raft_commit_index: node.applied_index(),
            brokers: md
                .brokers
                .values()
                .map(|b| v1::BrokerStatus {
                    node_id: b.id,
                    address: b.address.clone(),
                    rack: b.rack.clone(),
                    alive: !b.fenced && self.state.controller.alive(b.id).unwrap_or(true),
                    voter: voters.contains(&b.id),
                })
                .collect(),
            under_replicated_partitions: under,
            offline_partitions: offline,
            partitions,
            reassignments_in_progress: md.reassignments_in_progress() as u32,
            reassignment_throttle_bytes_per_sec: md.reassignment_throttle,
        }
    }

    fn offset_for_epoch(&self, req: v1::OffsetForLeaderEpochRequest) -> v1::OffsetForLeaderEpochResponse {
        let manager = &self.state.replicas;
        let mut out = Vec::new();
        for q in req.partitions {
            let mut answer = v1::EpochEndOffset {
                topic: q.topic.clone(),
                partition: q.partition,
                leader_epoch: -1,
                end_offset: -1,
                error: None,
            };
            match manager.replica(&q.topic, q.partition).map(|r| (r.role(), r)) {
                Some((Role::Leader { epoch }, r)) if epoch == q.current_leader_epoch => {
                    match r.partition.end_offset_for_epoch(q.leader_epoch) {
                        Ok((e, end)) => (answer.leader_epoch, answer.end_offset) = (e, end),
                        Err(e) => {
                            answer.error = Some(v1::PartitionError {
                                code: v1::ErrorCode::StorageError as i32,
                                message: e.to_string(),
                                ..Default::default()
                            })
                        }
                    }
                }
                Some((Role::Leader { epoch }, _)) => {
                    let code = if q.current_leader_epoch < epoch {
                        v1::ErrorCode::FencedLeaderEpoch
                    } else {
                        v1::ErrorCode::UnknownLeaderEpoch
                    };
                    answer.error = Some(v1::PartitionError {
                        code: code as i32,
                        message: format!(
                            "leader epoch is {epoch}, the request said {}",
                            q.current_leader_epoch
                        ),
                        leader_epoch: epoch,
                        ..Default::default()
                    });
                }
                _ => {
                    let md = self.state.cluster.metadata();
                    let hint = md.partition(&q.topic, q.partition).cloned();
                    answer.error = Some(crate::replication::not_leader(
                        &md,
                        self.state.cluster.node_id(),
                        &q.topic,
                        q.partition,
                        hint.as_ref(),
                    ));
                }
            }
            out.push(answer);
        }
        v1::OffsetForLeaderEpochResponse { partitions: out }
    }
}

/// Asks the controller (wherever it is) to change a partition's ISR.
pub async fn alter_partition_via_controller(
    node: &ClusterNode,
    request: v1::AlterPartitionRequest,
) -> Result<v1::AlterPartitionResponse, Error> {
    let Some(mut client) = controller_client(node)? else {
        return alter_partition_here(node, request).await;
    };
    let mut req = Request::new(request);
    req.set_timeout(Duration::from_secs(5));
    Ok(client
        .alter_partition(req)
        .await
        .map_err(|s| Error::Unavailable(s.message().to_string()))?
        .into_inner())
}

async fn alter_partition_here(
    node: &ClusterNode,
    req: v1::AlterPartitionRequest,
) -> Result<v1::AlterPartitionResponse, Error> {
    let outcome = node
        .propose(Command::AlterIsr {
            topic: req.topic.clone(),
            partition: req.partition,
            leader: req.node_id,
            leader_epoch: req.leader_epoch,
            isr: req.new_isr.clone(),
        })
        .await?;
    let md = node.metadata();
    let p = md.partition(&req.topic, req.partition);
    let error = match outcome {
        Outcome::Refused(why) => Some(v1::PartitionError {
            code: v1::ErrorCode::FencedLeaderEpoch as i32,
            message: why,
            leader_id: p.map_or(NO_LEADER, |p| p.leader),
            ..Default::default()
        }),
        _ => None,
    };
    Ok(v1::AlterPartitionResponse {
        error,
        isr: p.map(|p| p.isr.clone()).unwrap_or_default(),
        leader_epoch: p.map_or(-1, |p| p.leader_epoch),
    })
}

/// The controller's cluster client, when this broker is not the controller.
fn controller_client(
    node: &ClusterNode,
) -> Result<Option<tributary_proto::v1::cluster_client::ClusterClient<tonic::transport::Channel>>, Error> {
    Ok(node.controller_channel()?.map(crate::cluster::network::wrap_cluster))
}

/// Commits the throttle when one was asked, then one `Reassign` per plan
/// (on the controller).
async fn start_reassignments(
    node: &ClusterNode,
    plans: Vec<(String, u32, Vec<i32>)>,
    throttle: Option<u64>,
) -> Result<v1::ReassignResponse, Error> {
    if let Some(bytes_per_sec) = throttle {
        // Before the moves, so no byte of them goes unthrottled.
        node.propose(Command::SetReassignmentThrottle { bytes_per_sec }).await?;
        tracing::info!(bytes_per_sec, "reassignment throttle set");
    }
    let mut started = Vec::new();
    for (topic, partition, target) in plans {
        let cmd = Command::Reassign { topic: topic.clone(), partition, target: target.clone() };
        match node.propose(cmd).await? {
            Outcome::Refused(why) => return Err(Error::InvalidRequest(why)),
            _ => {
                tracing::info!(%topic, partition, target = ?target, "reassignment started");
                started.push(v1::PartitionTarget { topic, partition, replicas: target });
            }
        }
    }
    let md = node.metadata();
    let in_progress = md.reassignments_in_progress() as u32;
    Ok(v1::ReassignResponse { started, in_progress, throttle_bytes_per_sec: md.reassignment_throttle })
}

impl ClusterService {
    async fn reassign_here(&self, req: v1::ReassignPartitionsRequest) -> Result<v1::ReassignResponse, Error> {
        let md = self.state.cluster.metadata();
        let mut plans = Vec::new();
        for p in req.partitions {
            if md.partition(&p.topic, p.partition).is_none() {
                return Err(Error::UnknownPartition {
                    topic: p.topic.clone(),
                    partition: p.partition,
                    count: md.topic(&p.topic).map_or(0, |t| t.partitions.len() as u32),
                });
            }
            if let Some(b) = p.replicas.iter().find(|b| md.brokers.get(b).is_none_or(|x| x.fenced)) {
                return Err(Error::InvalidRequest(format!(
                    "{}-{}: broker {b} is not a live broker of the cluster",
                    p.topic, p.partition
                )));
            }
            plans.push((p.topic, p.partition, p.replicas));
        }
        start_reassignments(&self.state.cluster, plans, req.throttle_bytes_per_sec).await
    }

    async fn alter_rf_here(
        &self,
        req: v1::AlterReplicationFactorRequest,
    ) -> Result<v1::ReassignResponse, Error> {
        let md = self.state.cluster.metadata();
        if md.topic(&req.topic).is_none() {
            return Err(Error::UnknownTopic(req.topic));
        }
        let plans = crate::cluster::reassign::replication_factor(&md, &req.topic, req.replication_factor)
            .map_err(Error::InvalidReplicationFactor)?;
        let plans = plans.into_iter().map(|(p, target)| (req.topic.clone(), p, target)).collect();
        start_reassignments(&self.state.cluster, plans, req.throttle_bytes_per_sec).await
    }

    async fn drain_here(&self, req: v1::DrainBrokerRequest) -> Result<v1::ReassignResponse, Error> {
        let md = self.state.cluster.metadata();
        let plans = crate::cluster::reassign::drain(&md, req.node_id).map_err(Error::InvalidRequest)?;
        start_reassignments(&self.state.cluster, plans, req.throttle_bytes_per_sec).await
    }

    /// Removes a drained broker: from the metadata first (its heartbeats
    /// are refused from then on, so it cannot come back as it is), then
    /// from the Raft membership. A voter removed from a quorum of three or
    /// fewer is replaced by a live learner when there is one, so the quorum
    /// keeps its size. Asking again finishes a removal cut short.
    async fn remove_here(&self, req: v1::RemoveBrokerRequest) -> Result<v1::RemoveBrokerResponse, Error> {
        let node = &self.state.cluster;
        let id = req.node_id;
        let md = node.metadata();
        if md.brokers.contains_key(&id) {
            match node.propose(Command::Unregister { id }).await? {
                Outcome::Refused(why) => return Err(Error::Precondition(why)),
                _ => tracing::info!(broker = id, "broker removed from the cluster metadata"),
            }
        } else if !md.removed.contains_key(&id) && !node.member_ids().contains(&id) {
            return Err(Error::InvalidRequest(format!("broker {id} is not in the cluster")));
        }
        self.remove_member(id).await?;
        Ok(v1::RemoveBrokerResponse { voters: node.voter_ids().into_iter().collect() })
    }

    async fn remove_member(&self, id: i32) -> Result<(), Error> {
        use openraft::ChangeMembers;
        let node = &self.state.cluster;
        if !node.member_ids().contains(&id) {
            return Ok(());
        }
        let voters = node.voter_ids();
        let change = if voters.contains(&id) {
            let mut next: std::collections::BTreeSet<u64> =
                voters.iter().filter(|v| **v != id).map(|v| *v as u64).collect();
            if next.is_empty() {
                return Err(Error::Precondition(format!(
                    "broker {id} is the only controller (Raft voter): it cannot be removed"
                )));
            }
            let md = node.metadata();
            if next.len() < 3 {
                let learner = node
                    .member_ids()
                    .into_iter()
                    .find(|m| !voters.contains(m) && md.brokers.get(m).is_some_and(|b| !b.fenced));
                if let Some(l) = learner {
                    tracing::info!(broker = l, "promoting a learner to controller in place of a removed one");
                    next.insert(l as u64);
                }
            }
            ChangeMembers::ReplaceAllVoters(next)
        } else {
            ChangeMembers::RemoveNodes([id as u64].into())
        };
        node.raft
            .change_membership(change, false)
            .await
            .map_err(|e| Error::Unavailable(format!("removing broker {id} from the metadata quorum: {e}")))?;
        tracing::info!(broker = id, "broker removed from the metadata quorum");
        Ok(())
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn raft(&self, request: Request<v1::RaftRequest>) -> Result<Response<v1::RaftResponse>, Status> {
        let req = request.into_inner();
        crate::cluster::network::handle(&self.state.cluster.raft, &req.kind, &req.payload)
            .await
            .map(Response::new)
            .map_err(Status::invalid_argument)
    }

    async fn broker_heartbeat(
        &self,
        request: Request<v1::BrokerHeartbeatRequest>,
    ) -> Result<Response<v1::BrokerHeartbeatResponse>, Status> {
        Ok(Response::new(self.state.controller.heartbeat(&request.into_inner())))
    }

    async fn alter_partition(
        &self,
        request: Request<v1::AlterPartitionRequest>,
    ) -> Result<Response<v1::AlterPartitionResponse>, Status> {
        let start = Instant::now();
        let r = alter_partition_here(&self.state.cluster, request.into_inner()).await;
        self.finish("alter_partition", start, r)
    }

    async fn offset_for_leader_epoch(
        &self,
        request: Request<v1::OffsetForLeaderEpochRequest>,
    ) -> Result<Response<v1::OffsetForLeaderEpochResponse>, Status> {
        let start = Instant::now();
        let state = self.state.clone();
        let req = request.into_inner();
        let this = ClusterService { state };
        let r = tokio::task::spawn_blocking(move || this.offset_for_epoch(req))
            .await
            .map_err(|e| Error::Storage(e.to_string()));
        self.finish("offset_for_leader_epoch", start, r)
    }

    async fn describe_cluster(
        &self,
        _request: Request<v1::DescribeClusterRequest>,
    ) -> Result<Response<v1::DescribeClusterResponse>, Status> {
        let start = Instant::now();
        let r = Ok(self.describe());
        self.finish("describe_cluster", start, r)
    }

    async fn reassign_partitions(
        &self,
        request: Request<v1::ReassignPartitionsRequest>,
    ) -> Result<Response<v1::ReassignResponse>, Status> {
        let start = Instant::now();
        let req = request.into_inner();
        let r = match controller_client(&self.state.cluster) {
            Ok(Some(mut c)) => {
                c.reassign_partitions(req).await.map(|r| r.into_inner()).map_err(Error::Forwarded)
            }
            Ok(None) => self.reassign_here(req).await,
            Err(e) => Err(e),
        };
        self.finish("reassign_partitions", start, r)
    }

    async fn alter_replication_factor(
        &self,
        request: Request<v1::AlterReplicationFactorRequest>,
    ) -> Result<Response<v1::ReassignResponse>, Status> {
        let start = Instant::now();
        let req = request.into_inner();
        let r = match controller_client(&self.state.cluster) {
            Ok(Some(mut c)) => {
                c.alter_replication_factor(req).await.map(|r| r.into_inner()).map_err(Error::Forwarded)
            }
            Ok(None) => self.alter_rf_here(req).await,
            Err(e) => Err(e),
        };
        self.finish("alter_replication_factor", start, r)
    }

    async fn drain_broker(
        &self,
        request: Request<v1::DrainBrokerRequest>,
    ) -> Result<Response<v1::ReassignResponse>, Status> {
        let start = Instant::now();
        let req = request.into_inner();
        let r = match controller_client(&self.state.cluster) {
            Ok(Some(mut c)) => c.drain_broker(req).await.map(|r| r.into_inner()).map_err(Error::Forwarded),
            Ok(None) => self.drain_here(req).await,
            Err(e) => Err(e),
        };
        self.finish("drain_broker", start, r)
    }

    async fn remove_broker(
        &self,
        request: Request<v1::RemoveBrokerRequest>,
    ) -> Result<Response<v1::RemoveBrokerResponse>, Status> {
        let start = Instant::now();
        let req = request.into_inner();
        let r = match controller_client(&self.state.cluster) {
            Ok(Some(mut c)) => c.remove_broker(req).await.map(|r| r.into_inner()).map_err(Error::Forwarded),
            Ok(None) => self.remove_here(req).await,
            Err(e) => Err(e),
        };
        self.finish("remove_broker", start, r)
    }

    async fn elect_leaders(
        &self,
        request: Request<v1::ElectLeadersRequest>,
    ) -> Result<Response<v1::ElectLeadersResponse>, Status> {
        let start = Instant::now();
        let r = crate::server::admin::elect_preferred(&self.state, &request.into_inner().topics).await;
        self.finish("elect_leaders", start, r.map(|moved| v1::ElectLeadersResponse { moved }))
    }
}
