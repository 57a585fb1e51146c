//! The `Group` service: consumer-group membership and offsets, thin over
//! [`crate::groups::Coordinator`]. No file I/O on the runtime threads:
//! commits and joins queue their writes to the coordinator's group-commit
//! writer and await them; calls that read RocksDB or wait in a blocking way
//! (leave, delete, reset, fetch, describe) run on the blocking pool, as does
//! creating `__consumer_offsets` the first time a write needs it.

use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};
use tributary_proto::v1::{self, group_server::Group};

use crate::error::Error;
use crate::groups::offsets::OFFSETS_TOPIC;
use crate::groups::ResetTo;
use crate::BrokerState;

pub struct GroupService {
    state: Arc<BrokerState>,
}

impl GroupService {
    pub fn new(state: Arc<BrokerState>) -> Self {
        GroupService { state }
    }

    fn finish<T>(
        &self,
        rpc: &'static str,
        start: Instant,
        r: Result<T, Error>,
    ) -> Result<Response<T>, Status> {
        super::respond(&self.state, rpc, start, r)
    }

    /// Runs `f` on the blocking pool with the broker state.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&BrokerState) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || f(&state)).await.map_err(|e| Error::Storage(e.to_string()))?
    }

    /// Has the controller create `__consumer_offsets` if it is missing.
    async fn ensure_offsets_topic(&self) -> Result<(), Error> {
        crate::server::admin::ensure_offsets_topic(&self.state).await
    }

    /// When this broker has just become the group's coordinator (the
    /// offsets topic was just created, or leadership just moved here), waits
    /// briefly for it to finish loading instead of sending the caller away.
    async fn settle_coordinator(&self, group: &str) {
        let p = self.state.coordinator.offsets().partition_for(group);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while !self.state.coordinator.owns(group) && tokio::time::Instant::now() < deadline {
            let leader = self.state.cluster.metadata().partition(OFFSETS_TOPIC, p).map(|x| x.leader);
            if leader != Some(self.state.config.node_id) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Err unless this broker coordinates `group` now: the leader of the
    /// group's `__consumer_offsets` partition, with that partition loaded.
    async fn check_coordinator(&self, group: &str) -> Result<(), Error> {
        self.settle_coordinator(group).await;
        if self.state.coordinator.owns(group) {
            return Ok(());
        }
        let p = self.state.coordinator.offsets().partition_for(group);
        let md = self.state.cluster.metadata();
        if md.topic(OFFSETS_TOPIC).is_none() {
            // No group has written anything anywhere yet: any broker can
            // answer (an unknown group is unknown everywhere).
            return Ok(());
        }
        let leader = md.partition(OFFSETS_TOPIC, p).map(|x| x.leader).filter(|l| *l >= 0);
        Err(Error::NotCoordinator { group: group.to_string(), coordinator: leader })
    }
}

/// The calls the gRPC and Kafka doors share.
impl GroupService {
    /// The group's coordinator: the leader of its `__consumer_offsets`
    /// partition (created on first use).
    pub(crate) async fn find_coordinator_inner(
        &self,
        group_id: &str,
    ) -> Result<v1::FindCoordinatorResponse, Error> {
        if group_id.is_empty() {
            return Err(Error::InvalidRequest("group_id must not be empty".into()));
        }
        self.ensure_offsets_topic().await?;
        let p = self.state.coordinator.offsets().partition_for(group_id);
        let md = self.state.cluster.metadata();
        let leader = md.partition(OFFSETS_TOPIC, p).map(|x| x.leader).unwrap_or(-1);
        match md.brokers.get(&leader) {
            Some(b) if !b.fenced => {
                Ok(v1::FindCoordinatorResponse { node_id: b.id, address: b.address.clone() })
            }
            _ => Err(Error::Unavailable(format!(
                "the coordinator of group '{group_id}' is being elected; retry"
            ))),
        }
    }

    /// Commits offsets, on the group's coordinator, once they are durable.
    pub(crate) async fn commit_offsets_inner(
        &self,
        req: v1::CommitOffsetsRequest,
    ) -> Result<v1::CommitOffsetsResponse, Error> {
        self.ensure_offsets_topic().await?;
        self.check_coordinator(&req.group_id).await?;
        self.state.coordinator.start_commit(&self.state.topics, &req)?.wait().await?;
        Ok(v1::CommitOffsetsResponse {})
    }

    /// JoinGroup of a Kafka-protocol member (client-side assignment).
    pub(crate) async fn join_client_inner(
        &self,
        req: crate::groups::client::ClientJoin,
    ) -> Result<crate::groups::client::ClientJoined, Error> {
        self.ensure_offsets_topic().await?;
        self.check_coordinator(&req.group_id).await?;
        self.state.coordinator.join_client(&self.state.topics, req).await
    }

    /// SyncGroup of a Kafka-protocol member.
    pub(crate) async fn sync_client_inner(
        &self,
        group_id: &str,
        member_id: &str,
        instance_id: &str,
        generation: i32,
        assignments: Vec<crate::groups::client::MemberAssignment>,
    ) -> Result<(Option<v1::PartitionError>, Vec<u8>), Error> {
        self.check_coordinator(group_id).await?;
        self.state.coordinator.sync_client(group_id, member_id, instance_id, generation, assignments).await
    }

    /// Heartbeat, for either kind of member.
    pub(crate) async fn heartbeat_inner(
        &self,
        req: v1::HeartbeatRequest,
    ) -> Result<v1::HeartbeatResponse, Error> {
        self.check_coordinator(&req.group_id).await?;
        self.state.coordinator.heartbeat(&req)
    }

    /// LeaveGroup, for either kind of member.
    pub(crate) async fn leave_inner(&self, req: v1::LeaveGroupRequest) -> Result<(), Error> {
        self.check_coordinator(&req.group_id).await?;
        self.blocking(move |s| s.coordinator.leave(&s.topics, &req)).await
    }

    /// The group's committed offsets, on its coordinator.
    /// Deletes an empty group and its offsets, on its coordinator; the gRPC
    /// and Kafka doors both call this.
    pub(crate) async fn delete_group_inner(&self, group: String) -> Result<(), Error> {
        self.check_coordinator(&group).await?;
        self.blocking(move |s| s.coordinator.delete(&s.topics, &group)).await
    }

    /// The group as Kafka's DescribeGroups shows it, on its coordinator;
    /// `None` for a group nobody knows.
    pub(crate) async fn describe_view_inner(
        &self,
        group: &str,
    ) -> Result<Option<crate::groups::client::GroupView>, Error> {
        self.check_coordinator(group).await?;
        Ok(self.state.coordinator.describe_view(group))
    }

    /// Deletes committed offsets of a group, on its coordinator; returns
    /// the partitions refused because a live member subscribes to their
    /// topic (`decode` reads a Kafka member's subscribed topics).
    pub(crate) async fn delete_offsets_inner(
        &self,
        group: String,
        partitions: Vec<(String, u32)>,
        decode: fn(&[u8]) -> Vec<String>,
    ) -> Result<Vec<(String, u32)>, Error> {
        self.check_coordinator(&group).await?;
        self.blocking(move |s| s.coordinator.delete_offsets(&s.topics, &group, &partitions, &decode)).await
    }

    pub(crate) async fn fetch_offsets_inner(
        &self,
        req: v1::FetchOffsetsRequest,
    ) -> Result<v1::FetchOffsetsResponse, Error> {
        self.check_coordinator(&req.group_id).await?;
        // Reads RocksDB.
        self.blocking(move |s| s.coordinator.fetch_offsets(&req)).await
    }
}

#[tonic::async_trait]
impl Group for GroupService {
    #[tracing::instrument(name = "find_coordinator", skip_all)]
    async fn find_coordinator(
        &self,
        request: Request<v1::FindCoordinatorRequest>,
    ) -> Result<Response<v1::FindCoordinatorResponse>, Status> {
        let start = Instant::now();
        let r = self.find_coordinator_inner(&request.into_inner().group_id).await;
        self.finish("find_coordinator", start, r)
    }

    #[tracing::instrument(name = "join_group", skip_all)]
    async fn join_group(
        &self,
        request: Request<v1::JoinGroupRequest>,
    ) -> Result<Response<v1::JoinGroupResponse>, Status> {
        let start = Instant::now();
        let host = request.remote_addr().map(|a| a.ip().to_string()).unwrap_or_default();
        let req = request.into_inner();
        // Waits (asynchronously) for the rebalance. The member whose join
        // completes it also waits (asynchronously) for the group record.
        let r = async {
            self.ensure_offsets_topic().await?;
            self.check_coordinator(&req.group_id).await?;
            self.state.coordinator.join(&self.state.topics, req, host).await
        }
        .await;
        self.finish("join_group", start, r)
    }

    #[tracing::instrument(name = "sync_group", skip_all)]
    async fn sync_group(
        &self,
        request: Request<v1::SyncGroupRequest>,
    ) -> Result<Response<v1::SyncGroupResponse>, Status> {
        let start = Instant::now();
        let req = request.into_inner();
        let r = match self.check_coordinator(&req.group_id).await {
            Ok(()) => self.state.coordinator.sync(&req),
            Err(e) => Err(e),
        };
        self.finish("sync_group", start, r)
    }

    #[tracing::instrument(name = "heartbeat", skip_all)]
    async fn heartbeat(
        &self,
        request: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        let start = Instant::now();
        let req = request.into_inner();
        let r = match self.check_coordinator(&req.group_id).await {
            Ok(()) => self.state.coordinator.heartbeat(&req),
            Err(e) => Err(e),
        };
        self.finish("heartbeat", start, r)
    }

    #[tracing::instrument(name = "leave_group", skip_all)]
    async fn leave_group(
        &self,
        request: Request<v1::LeaveGroupRequest>,
    ) -> Result<Response<v1::LeaveGroupResponse>, Status> {
        let start = Instant::now();
        let req = request.into_inner();
        let check = self.check_coordinator(&req.group_id).await;
        let r = async {
            check?;
            self.blocking(move |s| s.coordinator.leave(&s.topics, &req)).await
        }
        .await
        .map(|_| v1::LeaveGroupResponse {});
        self.finish("leave_group", start, r)
    }

    #[tracing::instrument(name = "commit_offsets", skip_all)]
    async fn commit_offsets(
        &self,
        request: Request<v1::CommitOffsetsRequest>,
    ) -> Result<Response<v1::CommitOffsetsResponse>, Status> {
        let start = Instant::now();
        let r = self.commit_offsets_inner(request.into_inner()).await;
        self.finish("commit_offsets", start, r)
    }

    #[tracing::instrument(name = "fetch_offsets", skip_all)]
    async fn fetch_offsets(
        &self,
        request: Request<v1::FetchOffsetsRequest>,
    ) -> Result<Response<v1::FetchOffsetsResponse>, Status> {
        let start = Instant::now();
        let r = self.fetch_offsets_inner(request.into_inner()).await;
        self.finish("fetch_offsets", start, r)
    }

    #[tracing::instrument(name = "list_groups", skip_all)]
    async fn list_groups(
        &self,
        _request: Request<v1::ListGroupsRequest>,
    ) -> Result<Response<v1::ListGroupsResponse>, Status> {
        let start = Instant::now();
        let r = Ok(self.state.coordinator.list());
        self.finish("list_groups", start, r)
    }

    #[tracing::instrument(name = "describe_group", skip_all)]
    async fn describe_group(
        &self,
        request: Request<v1::DescribeGroupRequest>,
    ) -> Result<Response<v1::DescribeGroupResponse>, Status> {
        let start = Instant::now();
        let req = request.into_inner();
        let check = self.check_coordinator(&req.group_id).await;
        let r = async {
            check?;
            self.blocking(move |s| s.coordinator.describe(&s.topics, &req.group_id)).await
        }
        .await;
        self.finish("describe_group", start, r)
    }

    #[tracing::instrument(name = "delete_group", skip_all)]
    async fn delete_group(
        &self,
        request: Request<v1::DeleteGroupRequest>,
    ) -> Result<Response<v1::DeleteGroupResponse>, Status> {
        let start = Instant::now();
        let r =
            self.delete_group_inner(request.into_inner().group_id).await.map(|_| v1::DeleteGroupResponse {});
        self.finish("delete_group", start, r)
    }

    #[tracing::instrument(name = "reset_offsets", skip_all)]
    async fn reset_offsets(
        &self,
        request: Request<v1::ResetOffsetsRequest>,
    ) -> Result<Response<v1::ResetOffsetsResponse>, Status> {
        use v1::reset_offsets_request::To;
        let start = Instant::now();
        let req = request.into_inner();
        let to = match req.to {
            Some(To::Earliest(_)) => Ok(ResetTo::Earliest),
            Some(To::Latest(_)) => Ok(ResetTo::Latest),
            Some(To::TimestampMs(ts)) => Ok(ResetTo::Timestamp(ts)),
            Some(To::Offset(o)) => Ok(ResetTo::Offset(o)),
            None => Err(Error::InvalidRequest(
                "say where to reset to: earliest, latest, timestamp or offset".into(),
            )),
        };
        let check = self.check_coordinator(&req.group_id).await;
        let r = match to.and_then(|to| check.map(|_| to)) {
            Ok(to) => {
                self.blocking(move |s| {
                    s.coordinator.reset(
                        &s.topics,
                        &req.group_id,
                        &req.topic,
                        &req.partitions,
                        to,
                        req.dry_run,
                    )
                })
                .await
            }
            Err(e) => Err(e),
        }
        .map(|offsets| v1::ResetOffsetsResponse { offsets });
        self.finish("reset_offsets", start, r)
    }
}
