//! `tributary-operator`: the controller, and the subcommands around it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use serde::Deserialize;
use tributary_crds::Cluster;
use tributary_operator::{cluster, controller, crdgen, local};

#[derive(Parser)]
#[command(
    name = "tributary-operator",
    version,
    about = "Runs Tributary clusters, topics and mirror links on Kubernetes"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// With no subcommand: the options of `run`.
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (the default): watches Cluster, Topic and MirrorLink objects.
    Run(RunArgs),
    /// Print the Cluster, Topic and MirrorLink CRDs as one multi-document YAML stream.
    Crd,
    /// Run the Clusters, Topics and MirrorLinks of a manifest file or directory
    /// as local broker processes, without Kubernetes. Ctrl-C stops them.
    Local {
        /// A manifest file, or a directory of `*.yaml` / `*.yml` manifests.
        #[arg(short = 'f', long = "filename")]
        manifests: PathBuf,
        /// Data directories, broker logs and state.json.
        #[arg(long, default_value = "tributary-local")]
        state_dir: PathBuf,
        /// First port: each Cluster gets 100 from here (gRPC, HTTP per broker).
        #[arg(long, default_value_t = 17070)]
        base_port: u16,
        /// The broker binary; by default the one next to this binary, else on PATH.
        #[arg(long, env = "TRIBUTARY_BROKER_BIN")]
        broker_bin: Option<PathBuf>,
        /// Namespace for objects that name none.
        #[arg(long, default_value = "default")]
        namespace: String,
        /// Seconds between reads of the manifests.
        #[arg(long, default_value_t = 5)]
        interval: u64,
        /// Reconcile once, print the status, stop the brokers and exit.
        #[arg(long)]
        once: bool,
    },
    /// Init step of rack-aware broker pods: write the broker config with the
    /// node's topology label as its rack.
    #[command(hide = true)]
    RackInit {
        /// The pod's node (`spec.nodeName` through the downward API).
        #[arg(long)]
        node: String,
        /// The node label naming the failure domain.
        #[arg(long)]
        topology_key: String,
        #[arg(long)]
        config_in: PathBuf,
        #[arg(long)]
        config_out: PathBuf,
    },
    /// Print the objects the operator would create for each Cluster in a file.
    #[command(hide = true)]
    RenderCluster {
        /// YAML file with one or more documents; those of kind Cluster are rendered.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Namespace for Clusters that name none.
        #[arg(long, default_value = "default")]
        namespace: String,
        /// Image repository for Clusters that name no image.
        #[arg(long, env = "TRIBUTARY_BROKER_IMAGE_REPOSITORY", default_value = cluster::DEFAULT_IMAGE_REPOSITORY)]
        image_repository: String,
        /// Image tag for Clusters that name neither image nor version.
        #[arg(long, env = "TRIBUTARY_BROKER_IMAGE_TAG", default_value = env!("CARGO_PKG_VERSION"))]
        image_tag: String,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "TRIBUTARY_OPERATOR_HTTP_LISTEN", default_value = "0.0.0.0:8080")]
    http_listen: std::net::SocketAddr,
    /// Watch only this namespace (repeatable); all namespaces when none is given.
    #[arg(long = "namespace", env = "TRIBUTARY_WATCH_NAMESPACES", value_delimiter = ',')]
    namespaces: Vec<String>,
    /// Elect a leader through a Lease in the pod's namespace ($POD_NAMESPACE).
    #[arg(long, env = "TRIBUTARY_LEADER_ELECTION")]
    leader_election: bool,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "tributary-operator")]
    lease_name: String,
    /// Image repository for Clusters that name no image.
    #[arg(long, env = "TRIBUTARY_BROKER_IMAGE_REPOSITORY", default_value = cluster::DEFAULT_IMAGE_REPOSITORY)]
    image_repository: String,
    /// Image tag for Clusters that name neither image nor version.
    #[arg(long, env = "TRIBUTARY_BROKER_IMAGE_TAG", default_value = env!("CARGO_PKG_VERSION"))]
    image_tag: String,
    /// How long a Topic reconcile's describe or create waits for others on
    /// the same cluster to share one admin call (milliseconds).
    #[arg(long, env = "TRIBUTARY_ADMIN_BATCH_WINDOW_MS", default_value_t = 20)]
    admin_batch_window_ms: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Run(cli.run));
    let result = match command {
        Command::Crd => print_crds(),
        Command::RenderCluster { file, namespace, image_repository, image_tag } => {
            render_clusters(&file, &namespace, &cluster::Defaults { image_repository, image_tag })
        }
        Command::Run(args) => run(args),
        Command::RackInit { node, topology_key, config_in, config_out } => {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| {
                    rt.block_on(tributary_operator::rack::run(&node, &topology_key, &config_in, &config_out))
                })
        }
        Command::Local { manifests, state_dir, base_port, broker_bin, namespace, interval, once } => {
            local(local::LocalOptions {
                manifests,
                state_dir,
                base_port,
                broker_bin: broker_bin.unwrap_or_else(default_broker_bin),
                namespace,
                interval: std::time::Duration::from_secs(interval.max(1)),
                once,
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tributary-operator: {e}");
            if let Some(cause) = e.chain().nth(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let config = controller::RunConfig {
        http_listen: args.http_listen,
        namespaces: args.namespaces,
        lease: args.leader_election.then_some(args.lease_name),
        defaults: cluster::Defaults { image_repository: args.image_repository, image_tag: args.image_tag },
        admin_batch: tributary_operator::admin_batch::BatchConfig {
            window: std::time::Duration::from_millis(args.admin_batch_window_ms),
            ..Default::default()
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(controller::run(config))
}

/// `tributary-broker` next to this binary (as cargo and the image place
/// them), else whatever PATH finds.
fn default_broker_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("tributary-broker")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("tributary-broker"))
}

fn local(opts: local::LocalOptions) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(local::run(opts))
}

fn print_crds() -> anyhow::Result<()> {
    print!("{}", crdgen::all_crds_yaml()?);
    Ok(())
}

/// Renders the desired objects of every Cluster in `file`. Objects read
/// from a file have no uid; a fixed one stands in so owner references render.
fn render_clusters(file: &PathBuf, namespace: &str, defaults: &cluster::Defaults) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let mut out = String::new();
    let mut found = 0;
    for doc in serde_norway::Deserializer::from_str(&text) {
        let value =
            serde_json::Value::deserialize(doc).with_context(|| format!("parsing {}", file.display()))?;
        if value.get("kind").and_then(|k| k.as_str()) != Some("Cluster") {
            continue;
        }
        let mut c: Cluster = serde_json::from_value(value).context("reading a Cluster")?;
        c.metadata.namespace.get_or_insert_with(|| namespace.to_string());
        c.metadata.uid.get_or_insert_with(|| "00000000-0000-0000-0000-000000000000".to_string());
        for obj in cluster::desired(&c, defaults, c.spec.replicas)?.to_values()? {
            out.push_str("---\n");
            out.push_str(&serde_norway::to_string(&obj)?);
        }
        found += 1;
    }
    if found == 0 {
        bail!("{} holds no object of kind Cluster", file.display());
    }
    print!("{out}");
    Ok(())
}
