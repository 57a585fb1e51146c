//! The broker's network front: the gRPC services (`Log`, `Admin`, `Mirror`, ...) and the
//! HTTP port (`/healthz`, `/readyz`, `/metrics`, the schema registry's
//! REST API: [`crate::registry::api`], and the REST proxy: [`crate::rest`]).

pub mod admin;
pub mod cluster;
pub mod group;
pub mod log;
pub mod mirror;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tributary_proto::v1::admin_server::AdminServer;
use tributary_proto::v1::audit_server::AuditServer;
use tributary_proto::v1::cluster_server::ClusterServer;
use tributary_proto::v1::group_server::GroupServer;
use tributary_proto::v1::log_server::LogServer;
use tributary_proto::v1::mirror_server::MirrorServer;

use crate::shutdown::Shutdown;
use crate::BrokerState;

/// Largest gRPC message either way: a produce or fetch of many partitions.
const MAX_MESSAGE: usize = 256 << 20;

pub async fn serve_grpc(
    state: Arc<BrokerState>,
    listener: TcpListener,
    mut shutdown: Shutdown,
) -> anyhow::Result<()> {
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        // Big HTTP/2 windows and frames: batches are ~100 KiB to MiBs, and
        // the 64 KiB defaults would stall every request on flow control.
        .initial_stream_window_size(Some(16 << 20))
        .initial_connection_window_size(Some(64 << 20))
        .max_frame_size(Some(1 << 20))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(
            LogServer::new(log::LogService::new(state.clone()))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            GroupServer::new(group::GroupService::new(state.clone()))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            ClusterServer::new(cluster::ClusterService::new(state.clone()))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(MirrorServer::new(mirror::MirrorService::new(state.clone())))
        .add_service(AuditServer::new(crate::audit::AuditService::new(state.clone())))
        .add_service(
            AdminServer::new(admin::AdminService::new(state))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .serve_with_incoming_shutdown(incoming, async move { shutdown.wait().await })
        .await?;
    Ok(())
}

pub async fn serve_http(
    state: Arc<BrokerState>,
    listener: TcpListener,
    mut shutdown: Shutdown,
) -> anyhow::Result<()> {
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(crate::registry::api::routes())
        .merge(crate::rest::routes())
        .fallback(crate::registry::api::not_found)
        .with_state(state);
    axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.wait().await }).await?;
    Ok(())
}

async fn readyz(State(state): State<Arc<BrokerState>>) -> impl IntoResponse {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}

async fn metrics(State(state): State<Arc<BrokerState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        state.metrics.encode(),
    )
}

/// Every handler ends here: records the call's latency and outcome, and maps
/// the broker's error to its gRPC status.
fn respond<T>(
    state: &BrokerState,
    rpc: &'static str,
    start: std::time::Instant,
    r: Result<T, crate::error::Error>,
) -> Result<tonic::Response<T>, tonic::Status> {
    state.metrics.observe(rpc, start.elapsed().as_secs_f64(), r.is_ok());
    r.map(tonic::Response::new).map_err(tonic::Status::from)
}

pub fn local_addr(l: &TcpListener) -> SocketAddr {
    l.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}
