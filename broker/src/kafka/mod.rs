//! The Kafka wire-protocol listener: a second door into the same log.
//!
//! Kafka clients (librdkafka and what is built on it, kafka-python, the
//! Java client) connect here. Every request is decoded with the
//! `kafka-protocol` crate (types generated from Kafka's own message
//! schemas, flexible versions and tagged fields included) and handed to the
//! *same* functions the gRPC services call — `server::log` for produce,
//! fetch, list offsets and producer ids, `server::admin` for topics — so
//! topics, offsets and idempotent producer state are one, whichever door a
//! client uses. Record batches pass through unchanged both ways: the stored
//! format is Kafka's RecordBatch v2.
//!
//! One connection is served one request at a time, in order, as Kafka
//! does: an idempotent producer's pipelined batches must be appended in the
//! order sent. A frame that cannot be trusted (size above the limit,
//! unknown API, unsupported version, undecodable) closes the connection
//! with a log line; nothing is stored from it.
//!
//! Modules: [`frame`] (framing and header), [`versions`] (what is served,
//! ApiVersions), [`errors`] (Kafka error codes), and one handler module per
//! API family: [`metadata`], [`produce`], [`fetch`], [`epochs`], [`topics`],
//! [`configs`], [`groups`], [`group_admin`], [`cluster`].

pub mod cluster;
pub mod configs;
pub mod epochs;
pub mod errors;
pub mod fetch;
pub mod frame;
pub mod group_admin;
pub mod groups;
pub mod metadata;
pub mod produce;
pub mod topics;
pub mod versions;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};

use crate::shutdown::Shutdown;
use crate::BrokerState;
use frame::{Frame, Parsed};

/// Accepts Kafka connections until shutdown.
pub async fn serve(state: Arc<BrokerState>, listener: TcpListener, mut shutdown: Shutdown) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(connection(state.clone(), stream, peer, shutdown.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a Kafka connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            _ = shutdown.wait() => return,
        }
    }
}

/// Serves one connection: read a frame, answer it, repeat.
async fn connection(state: Arc<BrokerState>, stream: TcpStream, peer: SocketAddr, mut shutdown: Shutdown) {
    let (mut rd, wr) = stream.into_split();
    let mut wr = BufWriter::new(wr);
    let max = state.config.kafka_max_request_bytes as usize;
    loop {
        let mut prefix = [0u8; 4];
        tokio::select! {
            r = rd.read_exact(&mut prefix) => if r.is_err() { return },
            _ = shutdown.wait() => return,
        }
        let size = match frame::check_size(prefix, max) {
            Ok(n) => n,
            Err(e) => return refuse(peer, &e.to_string()),
        };
        let mut body = vec![0u8; size];
        if rd.read_exact(&mut body).await.is_err() {
            return;
        }
        let answer = match frame::parse_frame(Bytes::from(body)) {
            Ok(Parsed::Request(f)) => dispatch(&state, f, peer).await,
            Ok(Parsed::ApiVersionsTooNew { correlation_id }) => encode(
                correlation_id,
                ApiKey::ApiVersions,
                0,
                &versions::api_versions(errors::UNSUPPORTED_VERSION),
            )
            .map(Some),
            Err(e) => return refuse(peer, &e.to_string()),
        };
        let bytes = match answer {
            Ok(Some(b)) => b,
            // acks=0: Kafka sends no response at all.
            Ok(None) => continue,
            Err(e) => return refuse(peer, &e),
        };
        let written = async {
            wr.write_all(&(bytes.len() as u32).to_be_bytes()).await?;
            wr.write_all(&bytes).await?;
            wr.flush().await
        };
        if written.await.is_err() {
            return;
        }
    }
}

fn refuse(peer: SocketAddr, why: &str) {
    tracing::warn!(%peer, reason = why, "closing Kafka connection");
}

/// Decodes a request body, or says why not.
fn decode<T: Decodable>(f: &mut Frame) -> Result<T, String> {
    T::decode(&mut f.body, f.version)
        .map_err(|e| format!("malformed {:?} v{} request: {e:#}", f.api, f.version))
}

/// Decodes a request body of any served API without running it (the
/// decoders are fuzzed through this).
pub fn decode_only(f: &mut Frame) -> Result<(), String> {
    use kafka_protocol::messages::*;
    match f.api {
        ApiKey::ApiVersions => decode::<ApiVersionsRequest>(f).map(drop),
        ApiKey::Metadata => decode::<MetadataRequest>(f).map(drop),
        ApiKey::Produce => decode::<ProduceRequest>(f).map(drop),
        ApiKey::InitProducerId => decode::<InitProducerIdRequest>(f).map(drop),
        ApiKey::Fetch => decode::<FetchRequest>(f).map(drop),
        ApiKey::ListOffsets => decode::<ListOffsetsRequest>(f).map(drop),
        ApiKey::CreateTopics => decode::<CreateTopicsRequest>(f).map(drop),
        ApiKey::DeleteTopics => decode::<DeleteTopicsRequest>(f).map(drop),
        ApiKey::FindCoordinator => decode::<FindCoordinatorRequest>(f).map(drop),
        ApiKey::DescribeConfigs => decode::<DescribeConfigsRequest>(f).map(drop),
        ApiKey::JoinGroup => decode::<JoinGroupRequest>(f).map(drop),
        ApiKey::SyncGroup => decode::<SyncGroupRequest>(f).map(drop),
        ApiKey::Heartbeat => decode::<HeartbeatRequest>(f).map(drop),
        ApiKey::LeaveGroup => decode::<LeaveGroupRequest>(f).map(drop),
        ApiKey::OffsetCommit => decode::<OffsetCommitRequest>(f).map(drop),
        ApiKey::OffsetFetch => decode::<OffsetFetchRequest>(f).map(drop),
        ApiKey::ListGroups => decode::<ListGroupsRequest>(f).map(drop),
        ApiKey::DeleteGroups => decode::<DeleteGroupsRequest>(f).map(drop),
        ApiKey::CreatePartitions => decode::<CreatePartitionsRequest>(f).map(drop),
        ApiKey::DescribeCluster => decode::<DescribeClusterRequest>(f).map(drop),
        ApiKey::DescribeGroups => decode::<DescribeGroupsRequest>(f).map(drop),
        ApiKey::OffsetDelete => decode::<OffsetDeleteRequest>(f).map(drop),
        ApiKey::OffsetForLeaderEpoch => decode::<OffsetForLeaderEpochRequest>(f).map(drop),
        ApiKey::AlterConfigs => decode::<AlterConfigsRequest>(f).map(drop),
        ApiKey::IncrementalAlterConfigs => decode::<IncrementalAlterConfigsRequest>(f).map(drop),
        other => Err(format!("{other:?} is not served")),
    }
}

/// A response with its header, ready to frame.
fn encode<T: Encodable + HeaderVersion>(
    correlation_id: i32,
    api: ApiKey,
    version: i16,
    resp: &T,
) -> Result<Bytes, String> {
    let mut buf = BytesMut::new();
    let mut header = ResponseHeader::default();
    header.correlation_id = correlation_id;
    header
        .encode(&mut buf, T::header_version(version))
        .and_then(|_| resp.encode(&mut buf, version))
        .map_err(|e| format!("encoding the {api:?} v{version} response: {e:#}"))?;
    Ok(buf.freeze())
}

/// Runs one request; `Ok(None)` when it gets no response.
async fn dispatch(state: &Arc<BrokerState>, mut f: Frame, peer: SocketAddr) -> Result<Option<Bytes>, String> {
    let (id, v, api) = (f.header.correlation_id, f.version, f.api);
    let bytes = match api {
        ApiKey::ApiVersions => encode(id, api, v, &versions::ok())?,
        ApiKey::Metadata => encode(id, api, v, &metadata::metadata(state, decode(&mut f)?, v))?,
        ApiKey::Produce => match produce::produce(state, decode(&mut f)?, v).await? {
            Some(resp) => encode(id, api, v, &resp)?,
            None => return Ok(None),
        },
        ApiKey::InitProducerId => {
            encode(id, api, v, &produce::init_producer_id(state, decode(&mut f)?).await)?
        }
        ApiKey::Fetch => encode(id, api, v, &fetch::fetch(state, decode(&mut f)?, v).await)?,
        ApiKey::ListOffsets => encode(id, api, v, &fetch::list_offsets(state, decode(&mut f)?).await)?,
        ApiKey::CreateTopics => encode(id, api, v, &topics::create(state, decode(&mut f)?, v).await)?,
        ApiKey::DeleteTopics => encode(id, api, v, &topics::delete(state, decode(&mut f)?, v).await)?,
        ApiKey::DescribeConfigs => encode(id, api, v, &configs::describe_configs(state, decode(&mut f)?))?,
        ApiKey::AlterConfigs => encode(id, api, v, &configs::alter_configs(state, decode(&mut f)?).await)?,
        ApiKey::IncrementalAlterConfigs => {
            encode(id, api, v, &configs::incremental_alter_configs(state, decode(&mut f)?).await)?
        }
        ApiKey::OffsetForLeaderEpoch => {
            encode(id, api, v, &epochs::offset_for_leader_epoch(state, decode(&mut f)?))?
        }
        ApiKey::JoinGroup => {
            let member = (
                peer.ip().to_string(),
                f.header.client_id.as_ref().map(|c| c.to_string()).unwrap_or_default(),
            );
            encode(id, api, v, &groups::join_group(state, decode(&mut f)?, v, member).await)?
        }
        ApiKey::SyncGroup => encode(id, api, v, &groups::sync_group(state, decode(&mut f)?, v).await)?,
        ApiKey::Heartbeat => encode(id, api, v, &groups::heartbeat(state, decode(&mut f)?).await)?,
        ApiKey::LeaveGroup => encode(id, api, v, &groups::leave_group(state, decode(&mut f)?, v).await)?,
        ApiKey::FindCoordinator => {
            encode(id, api, v, &groups::find_coordinator(state, decode(&mut f)?, v).await)?
        }
        ApiKey::OffsetCommit => encode(id, api, v, &groups::offset_commit(state, decode(&mut f)?).await)?,
        ApiKey::OffsetFetch => encode(id, api, v, &groups::offset_fetch(state, decode(&mut f)?).await)?,
        ApiKey::ListGroups => encode(id, api, v, &group_admin::list_groups(state, decode(&mut f)?))?,
        ApiKey::DeleteGroups => {
            encode(id, api, v, &group_admin::delete_groups(state, decode(&mut f)?).await)?
        }
        ApiKey::DescribeGroups => {
            encode(id, api, v, &group_admin::describe_groups(state, decode(&mut f)?, v).await)?
        }
        ApiKey::OffsetDelete => {
            encode(id, api, v, &group_admin::offset_delete(state, decode(&mut f)?).await)?
        }
        ApiKey::CreatePartitions => {
            encode(id, api, v, &topics::create_partitions(state, decode(&mut f)?).await)?
        }
        ApiKey::DescribeCluster => encode(id, api, v, &cluster::describe_cluster(state, decode(&mut f)?))?,
        other => return Err(format!("{other:?} is not served")),
    };
    Ok(Some(bytes))
}

/// A string for a Kafka message field.
pub(crate) fn text(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

/// A Kafka topic id for one of the broker's (32 hex digits; other forms,
/// which this broker never makes, map to the nil id).
pub(crate) fn topic_id(id: &str) -> uuid::Uuid {
    u128::from_str_radix(id, 16).map(uuid::Uuid::from_u128).unwrap_or_default()
}

/// Binds the Kafka listener as configured: an explicit address must bind;
/// the default one is skipped, with a warning, when it is taken (several
/// brokers on one host, an existing Kafka).
pub async fn bind(config: &crate::config::BrokerConfig) -> anyhow::Result<Option<TcpListener>> {
    use anyhow::Context;
    match config.kafka_listen {
        Some(addr) => {
            Ok(Some(TcpListener::bind(addr).await.with_context(|| format!("binding Kafka {addr}"))?))
        }
        None => {
            let addr = crate::config::BrokerConfig::DEFAULT_KAFKA_LISTEN;
            match TcpListener::bind(addr).await {
                Ok(l) => Ok(Some(l)),
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "the default Kafka port is not free: running without the Kafka listener (set --kafka-listen)");
                    Ok(None)
                }
            }
        }
    }
}
