//! `tributary-broker`: with no arguments, one broker with embedded defaults
//! (data under ./data, gRPC on 127.0.0.1:7070, HTTP on 127.0.0.1:7071).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use tributary_broker::config::BrokerConfig;
use tributary_broker::{telemetry, Broker};

/// Huge reservations (from hostile Kafka requests) are lazy, not fatal:
/// see `tributary_broker::alloc`.
#[global_allocator]
static ALLOCATOR: tributary_broker::alloc::LazyHuge = tributary_broker::alloc::LazyHuge;

#[derive(Parser, Debug)]
#[command(name = "tributary-broker", version, about = "Tributary broker: a distributed commit log node")]
struct Args {
    /// TOML file with broker settings (see the README's configuration reference).
    #[arg(long, env = "TRIBUTARY_CONFIG")]
    config: Option<PathBuf>,
    /// Where segment files and the index store live [default: ./data]
    #[arg(long, env = "TRIBUTARY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// gRPC listen address [default: 127.0.0.1:7070]
    #[arg(long, env = "TRIBUTARY_LISTEN")]
    listen: Option<SocketAddr>,
    /// HTTP listen address for /healthz, /readyz, /metrics and the schema registry [default: 127.0.0.1:7071]
    #[arg(long, env = "TRIBUTARY_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    /// This broker's id [default: 0]
    #[arg(long, env = "TRIBUTARY_NODE_ID")]
    node_id: Option<i32>,
    /// Address clients should connect to, if not the listen address.
    #[arg(long, env = "TRIBUTARY_ADVERTISED_ADDRESS")]
    advertised_address: Option<String>,
    /// Where other brokers reach the HTTP port, if not the HTTP listen address.
    #[arg(long, env = "TRIBUTARY_HTTP_ADVERTISED_ADDRESS")]
    http_advertised_address: Option<String>,
    /// Kafka-protocol listen address [default: 127.0.0.1:9092, skipped with a warning when taken]
    #[arg(long, env = "TRIBUTARY_KAFKA_LISTEN")]
    kafka_listen: Option<SocketAddr>,
    /// Address Kafka clients should connect to, if not the Kafka listen address.
    #[arg(long, env = "TRIBUTARY_KAFKA_ADVERTISED_ADDRESS")]
    kafka_advertised_address: Option<String>,
    /// Seeds a new cluster: ID@HOST:PORT of every broker, this one included
    /// (how this broker reaches each peer). Read only when the data
    /// directory is empty; afterwards membership lives in the quorum.
    #[arg(long, env = "TRIBUTARY_PEERS")]
    peers: Option<String>,
    /// Node ids of the Raft voters [default: the first three of --peers]
    #[arg(long, env = "TRIBUTARY_CONTROLLERS")]
    controllers: Option<String>,
    /// The cluster's name (the tier name for mirroring and the audit) [default: tributary]
    #[arg(long, env = "TRIBUTARY_CLUSTER_NAME")]
    cluster_name: Option<String>,
    /// This broker's rack (replicas of a partition spread across racks).
    #[arg(long, env = "TRIBUTARY_RACK")]
    rack: Option<String>,
}

fn load_config(args: Args) -> anyhow::Result<BrokerConfig> {
    let mut config = match &args.config {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            BrokerConfig::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        None => BrokerConfig::default(),
    };
    // Flags (and their environment variables) override the file.
    if let Some(v) = args.data_dir {
        config.data_dir = v;
    }
    if let Some(v) = args.listen {
        config.listen = v;
    }
    if let Some(v) = args.http_listen {
        config.http_listen = v;
    }
    if let Some(v) = args.node_id {
        config.node_id = v;
    }
    if let Some(v) = args.advertised_address {
        config.advertised_address = Some(v);
    }
    if let Some(v) = args.http_advertised_address {
        config.http_advertised_address = Some(v);
    }
    if let Some(v) = args.kafka_listen {
        config.kafka_listen = Some(v);
    }
    if let Some(v) = args.kafka_advertised_address {
        config.kafka_advertised_address = Some(v);
    }
    if let Some(v) = args.peers {
        config.peers = v;
    }
    if let Some(v) = args.controllers {
        config.controllers = v;
    }
    if let Some(v) = args.cluster_name {
        config.cluster_name = v;
    }
    if let Some(v) = args.rack {
        config.rack = v;
    }
    Ok(config)
}

async fn terminated() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let _telemetry = match telemetry::init("tributary-broker") {
        Ok(t) => t,
        Err(e) => {
            eprintln!("tributary-broker: telemetry: {e:#}");
            std::process::exit(1);
        }
    };
    let result = async {
        let config = load_config(args)?;
        let broker = Broker::start(config).await?;
        terminated().await;
        tracing::info!("shutting down");
        broker.shutdown().await;
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = result {
        tracing::error!("{e:#}");
        eprintln!("tributary-broker: {e:#}");
        std::process::exit(1);
    }
}
