//! openraft's messages between brokers, over the one gRPC port every broker
//! has (`Cluster.Raft`): the request and the answer are openraft's own
//! types, serde-encoded as JSON (metadata entries are small; record data
//! never travels through Raft).

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Channel;
use tributary_proto::v1;
use tributary_proto::v1::cluster_client::ClusterClient;

use super::peers::Peers;
use super::raft_store::NodeId;
use super::TypeConfig;

/// Largest Raft message (a snapshot of a big cluster's metadata).
const MAX_MESSAGE: usize = 256 << 20;

/// Opens clients to peers by node id.
#[derive(Clone)]
pub struct Network {
    pub peers: Arc<Peers>,
}

pub struct PeerClient {
    target: NodeId,
    client: Option<ClusterClient<Channel>>,
    peers: Arc<Peers>,
    fallback: String,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient { target, client: None, peers: self.peers.clone(), fallback: node.addr.clone() }
    }
}

/// A channel to another broker at `address`, connecting lazily (the first
/// call connects; a broker that is down makes calls fail fast, not this).
/// None when `address` is not a usable URI authority.
pub fn peer_channel(address: &str) -> Option<Channel> {
    Some(peer_endpoint(address)?.connect_lazy())
}

/// How every broker-to-broker connection is set up (timeouts, keep-alive).
pub fn peer_endpoint(address: &str) -> Option<tonic::transport::Endpoint> {
    Some(
        tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .ok()?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5)),
    )
}

/// The `Cluster` service of the broker at `address`.
pub fn cluster_client(address: &str) -> Option<ClusterClient<Channel>> {
    Some(wrap_cluster(peer_channel(address)?))
}

/// A `Cluster` client on `channel`, with the Raft message size limits.
pub fn wrap_cluster(channel: Channel) -> ClusterClient<Channel> {
    ClusterClient::new(channel).max_decoding_message_size(MAX_MESSAGE).max_encoding_message_size(MAX_MESSAGE)
}

#[derive(Debug)]
struct Failed(String);

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failed {}

impl PeerClient {
    async fn call<Req, Resp, E>(
        &mut self,
        kind: &str,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let payload = serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if self.client.is_none() {
            let address = self.peers.address(self.target as i32).unwrap_or_else(|| self.fallback.clone());
            self.client = cluster_client(&address);
        }
        let Some(client) = self.client.as_mut() else {
            return Err(RPCError::Unreachable(Unreachable::new(&Failed(format!(
                "no usable address for broker {}",
                self.target
            )))));
        };
        let mut request =
            tonic::Request::new(v1::RaftRequest { kind: kind.to_string(), payload: payload.into() });
        request.set_timeout(ttl);
        let response = match client.raft(request).await {
            Ok(r) => r.into_inner(),
            Err(status) => {
                // Connect from scratch next time (the peer may have moved).
                self.client = None;
                let e = Failed(format!("broker {}: {}", self.target, status.message()));
                return Err(match status.code() {
                    tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&e)),
                    _ => RPCError::Network(NetworkError::new(&e)),
                });
            }
        };
        if !response.error.is_empty() {
            let remote: RaftError<NodeId, E> = serde_json::from_slice(&response.error)
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
            return Err(RPCError::RemoteError(RemoteError::new(self.target, remote)));
        }
        serde_json::from_slice(&response.payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call("append", &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call("snapshot", &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call("vote", &rpc, option.hard_ttl()).await
    }
}

/// The receiving side: runs one serde-encoded message on the local Raft
/// node. Err: the message could not be decoded (a bad request, not a Raft
/// outcome).
pub async fn handle(
    raft: &openraft::Raft<TypeConfig>,
    kind: &str,
    payload: &[u8],
) -> Result<v1::RaftResponse, String> {
    fn encode<T: Serialize, E: Serialize>(r: Result<T, E>) -> Result<v1::RaftResponse, String> {
        Ok(match r {
            Ok(v) => v1::RaftResponse {
                payload: serde_json::to_vec(&v).map_err(|e| e.to_string())?.into(),
                error: Default::default(),
            },
            Err(e) => v1::RaftResponse {
                payload: Default::default(),
                error: serde_json::to_vec(&e).map_err(|e| e.to_string())?.into(),
            },
        })
    }
    let bad = |e: serde_json::Error| format!("undecodable Raft {kind} message: {e}");
    match kind {
        "append" => encode(raft.append_entries(serde_json::from_slice(payload).map_err(bad)?).await),
        "vote" => encode(raft.vote(serde_json::from_slice(payload).map_err(bad)?).await),
        "snapshot" => encode(raft.install_snapshot(serde_json::from_slice(payload).map_err(bad)?).await),
        other => Err(format!("unknown Raft message kind '{other}'")),
    }
}
