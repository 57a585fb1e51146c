//! The `tributary` command line: argument definitions and dispatch. Each
//! command family lives in its own module; pure parsing helpers in `args`.

pub mod args;
pub mod audit;
pub mod bench;
pub mod cluster;
pub mod consume;
pub mod group;
pub mod mirror;
pub mod produce;
pub mod schema;
pub mod table;
pub mod topic;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "tributary",
    version,
    about = "Tributary client: manage topics, consumer groups and the cluster, produce, consume, benchmark"
)]
pub struct Cli {
    /// Brokers to start from, comma-separated; any one that answers will
    /// do (the rest of the cluster is learned from it).
    #[arg(
        long,
        global = true,
        env = "TRIBUTARY_BOOTSTRAP",
        default_value = "127.0.0.1:7070",
        value_name = "HOST:PORT[,HOST:PORT...]"
    )]
    pub bootstrap: String,
    /// The schema registry: any broker's HTTP port (or a Confluent-compatible
    /// registry), for `schema`, `produce --value-schema` and `consume --avro`.
    #[arg(
        long,
        global = true,
        env = "TRIBUTARY_REGISTRY",
        default_value = "http://127.0.0.1:7071",
        value_name = "URL"
    )]
    pub registry: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create, list, describe, alter, grow and delete topics.
    #[command(subcommand)]
    Topic(topic::TopicCommand),
    /// Produce one record per line of stdin.
    Produce(produce::ProduceArgs),
    /// Print records of a topic, one value per line (as a consumer group
    /// member with --group).
    Consume(consume::ConsumeArgs),
    /// List, describe, reset offsets of and delete consumer groups.
    #[command(subcommand)]
    Group(group::GroupCommand),
    /// Measure produce or consume throughput and latency.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Show the cluster: brokers, controller, partition health.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Move partition leadership.
    #[command(subcommand)]
    Leader(cluster::LeaderCommand),
    /// Move partitions between brokers.
    #[command(subcommand)]
    Partition(cluster::PartitionCommand),
    /// Broker operations (drain before removal).
    #[command(subcommand)]
    Broker(cluster::BrokerCommand),
    /// Schemas in the registry: list, get, register, check, config.
    #[command(subcommand)]
    Schema(schema::SchemaCommand),
    /// Mirror links into this cluster: create, list, status, pause, resume, delete.
    #[command(subcommand)]
    Mirror(mirror::MirrorCommand),
    /// The completeness audit: compare tiers' record counts per window.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Topic(cmd) => topic::run(&cli.bootstrap, cmd).await,
        Command::Produce(args) => produce::run(&cli.bootstrap, &cli.registry, args).await,
        Command::Consume(args) => consume::run(&cli.bootstrap, &cli.registry, args).await,
        Command::Group(cmd) => group::run(&cli.bootstrap, cmd).await,
        Command::Bench(cmd) => bench::run(&cli.bootstrap, &cli.registry, cmd).await,
        Command::Cluster(cmd) => cluster::run_cluster(&cli.bootstrap, cmd).await,
        Command::Leader(cmd) => cluster::run_leader(&cli.bootstrap, cmd).await,
        Command::Partition(cmd) => cluster::run_partition(&cli.bootstrap, cmd).await,
        Command::Broker(cmd) => cluster::run_broker(&cli.bootstrap, cmd).await,
        Command::Schema(cmd) => schema::run(&cli.registry, cmd).await,
        Command::Mirror(cmd) => mirror::run(&cli.bootstrap, cmd).await,
        Command::Audit(cmd) => audit::run(&cli.bootstrap, cmd).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        match Cli::try_parse_from(args) {
            Ok(cli) => cli,
            Err(e) => panic!("{args:?} did not parse: {e}"),
        }
    }

    #[test]
    fn mirror_create_has_the_issue_s_fixed_shape() {
        let cli = parse(&[
            "tributary",
            "mirror",
            "create",
            "east-to-agg",
            "--source-alias",
            "east",
            "--source",
            "10.0.0.1:7070",
            "--topics",
            "orders.*",
            "--naming",
            "identity",
            "--start",
            "latest",
        ]);
        let Command::Mirror(mirror::MirrorCommand::Create(c)) = cli.command else {
            panic!("not mirror create")
        };
        let spec = c.spec();
        assert_eq!((spec.name.as_str(), spec.source_alias.as_str()), ("east-to-agg", "east"));
        assert_eq!((spec.source_bootstrap.as_str(), spec.topics.as_str()), ("10.0.0.1:7070", "orders.*"));
        use tributary_client::tributary_proto::v1::{MirrorNaming, MirrorStart};
        assert_eq!(spec.naming, MirrorNaming::Identity as i32);
        assert_eq!(spec.start, MirrorStart::Latest as i32);
        // Defaults: prefix naming, from the earliest record.
        let cli = parse(&[
            "tributary",
            "mirror",
            "create",
            "l",
            "--source-alias",
            "a",
            "--source",
            "h:1",
            "--topics",
            "t",
        ]);
        let Command::Mirror(mirror::MirrorCommand::Create(c)) = cli.command else {
            panic!("not mirror create")
        };
        assert_eq!(
            (c.spec().naming, c.spec().start),
            (MirrorNaming::Prefix as i32, MirrorStart::Earliest as i32)
        );
        for sub in ["list", "status x", "pause x", "resume x", "delete x"] {
            let mut args = vec!["tributary", "mirror"];
            args.extend(sub.split(' '));
            assert!(matches!(parse(&args).command, Command::Mirror(_)), "{sub}");
        }
    }

    #[test]
    fn produce_flags() {
        let cli = parse(&[
            "tributary",
            "--bootstrap",
            "b:1",
            "produce",
            "t",
            "--key-separator",
            ":",
            "--header",
            "a=1",
            "--header",
            "b=x=y",
            "--acks",
            "0",
            "--partition",
            "2",
            "--compression",
            "zstd",
            "--linger-ms",
            "7",
        ]);
        assert_eq!(cli.bootstrap, "b:1");
        let Command::Produce(p) = cli.command else { panic!("not produce") };
        assert_eq!(p.topic, "t");
        assert_eq!(p.key_separator.as_deref(), Some(":"));
        assert_eq!(p.headers, vec![("a".into(), "1".into()), ("b".into(), "x=y".into())]);
        assert_eq!(p.acks, tributary_client::Acks::None);
        assert_eq!(p.partition, Some(2));
        assert_eq!(p.compression, tributary_client::Compression::Zstd);
        assert_eq!(p.linger_ms, 7);
    }

    #[test]
    fn bootstrap_takes_a_list() {
        let cli = parse(&["tributary", "--bootstrap", "a:1,b:2,c:3", "cluster", "describe"]);
        assert_eq!(cli.bootstrap, "a:1,b:2,c:3");
        assert!(matches!(cli.command, Command::Cluster(cluster::ClusterCommand::Describe)));
        // After the subcommand too (a global flag).
        let cli = parse(&["tributary", "topic", "list", "--bootstrap", "x:1,y:2"]);
        assert_eq!(cli.bootstrap, "x:1,y:2");
    }

    #[test]
    fn leader_elect_flags() {
        let cli = parse(&["tributary", "leader", "elect", "--preferred", "--topic", "a", "--topic", "b"]);
        let Command::Leader(cluster::LeaderCommand::Elect { preferred, topics }) = cli.command else {
            panic!("not leader elect")
        };
        assert!(preferred);
        assert_eq!(topics, ["a".to_string(), "b".to_string()]);
        let cli = parse(&["tributary", "leader", "elect", "--preferred"]);
        let Command::Leader(cluster::LeaderCommand::Elect { topics, .. }) = cli.command else {
            panic!("not leader elect")
        };
        assert!(topics.is_empty());
    }

    #[test]
    fn produce_acks_all_and_replicated_topics() {
        let cli = parse(&["tributary", "produce", "t", "--acks", "all"]);
        let Command::Produce(p) = cli.command else { panic!("not produce") };
        assert_eq!(p.acks, tributary_client::Acks::All);
        let cli = parse(&[
            "tributary",
            "topic",
            "create",
            "t",
            "--replication-factor",
            "3",
            "--config",
            "min.insync.replicas=2",
        ]);
        let Command::Topic(topic::TopicCommand::Create { replication_factor, configs, .. }) = cli.command
        else {
            panic!("not topic create")
        };
        assert_eq!(replication_factor, 3);
        assert_eq!(configs, vec![("min.insync.replicas".into(), "2".into())]);
    }

    #[test]
    fn bad_header_is_refused() {
        assert!(Cli::try_parse_from(["tributary", "produce", "t", "--header", "novalue"]).is_err());
        assert!(Cli::try_parse_from(["tributary", "produce", "t", "--acks", "2"]).is_err());
    }

    #[test]
    fn topic_create_configs() {
        let cli = parse(&[
            "tributary",
            "topic",
            "create",
            "orders",
            "--partitions",
            "3",
            "--replication-factor",
            "1",
            "--config",
            "retention.ms=1000",
            "--config",
            "cleanup.policy=compact",
        ]);
        let Command::Topic(topic::TopicCommand::Create { name, partitions, replication_factor, configs }) =
            cli.command
        else {
            panic!("not topic create")
        };
        assert_eq!(name, "orders");
        assert_eq!(partitions, 3);
        assert_eq!(replication_factor, 1);
        assert_eq!(
            configs,
            vec![("retention.ms".into(), "1000".into()), ("cleanup.policy".into(), "compact".into())]
        );
    }

    #[test]
    fn topic_alter_and_add_partitions() {
        let cli = parse(&["tributary", "topic", "alter", "t", "--config", "a=b", "--delete-config", "c"]);
        let Command::Topic(topic::TopicCommand::Alter { configs, delete, .. }) = cli.command else {
            panic!("not topic alter")
        };
        assert_eq!(configs, vec![("a".into(), "b".into())]);
        assert_eq!(delete, vec!["c".to_string()]);
        let cli = parse(&["tributary", "topic", "add-partitions", "t", "--total", "8"]);
        assert!(matches!(cli.command, Command::Topic(topic::TopicCommand::AddPartitions { total: 8, .. })));
    }

    #[test]
    fn consume_flags() {
        let cli = parse(&[
            "tributary",
            "consume",
            "t",
            "--offset",
            "42",
            "--max-messages",
            "10",
            "--print-key",
            "--print-offset",
        ]);
        let Command::Consume(c) = cli.command else { panic!("not consume") };
        assert_eq!(c.start(), tributary_client::OffsetSpec::Offset(42));
        assert_eq!(c.max_messages, Some(10));
        assert!(c.print_key && c.print_offset && !c.print_headers);
        let cli = parse(&["tributary", "consume", "t", "--from-beginning"]);
        let Command::Consume(c) = cli.command else { panic!("not consume") };
        assert_eq!(c.start(), tributary_client::OffsetSpec::Earliest);
        let cli = parse(&["tributary", "consume", "t"]);
        let Command::Consume(c) = cli.command else { panic!("not consume") };
        assert_eq!(c.start(), tributary_client::OffsetSpec::Latest);
    }

    #[test]
    fn group_commands() {
        let cli = parse(&["tributary", "group", "describe", "g"]);
        assert!(
            matches!(cli.command, Command::Group(group::GroupCommand::Describe { ref group }) if group == "g")
        );
        let cli = parse(&[
            "tributary",
            "group",
            "reset-offsets",
            "g",
            "--topic",
            "t",
            "--to-offset",
            "5",
            "--dry-run",
        ]);
        let Command::Group(group::GroupCommand::ResetOffsets(r)) = cli.command else {
            panic!("not reset-offsets")
        };
        assert_eq!(r.target(), tributary_client::ResetTo::Offset(5));
        assert!(r.dry_run);
        let cli = parse(&[
            "tributary",
            "group",
            "reset-offsets",
            "g",
            "--topic",
            "t",
            "--to-datetime",
            "2024-05-01T12:00:00Z",
        ]);
        let Command::Group(group::GroupCommand::ResetOffsets(r)) = cli.command else {
            panic!("not reset-offsets")
        };
        assert_eq!(r.target(), tributary_client::ResetTo::Timestamp(1_714_564_800_000));
        let cli = parse(&["tributary", "group", "reset-offsets", "g", "--topic", "t", "--to-earliest"]);
        let Command::Group(group::GroupCommand::ResetOffsets(r)) = cli.command else {
            panic!("not reset-offsets")
        };
        assert_eq!(r.target(), tributary_client::ResetTo::Earliest);
        // Exactly one target.
        assert!(Cli::try_parse_from(["tributary", "group", "reset-offsets", "g", "--topic", "t"]).is_err());
        assert!(Cli::try_parse_from([
            "tributary",
            "group",
            "reset-offsets",
            "g",
            "--topic",
            "t",
            "--to-earliest",
            "--to-latest"
        ])
        .is_err());
        assert!(Cli::try_parse_from([
            "tributary",
            "group",
            "reset-offsets",
            "g",
            "--topic",
            "t",
            "--to-offset",
            "-1"
        ])
        .is_err());
    }

    #[test]
    fn schema_and_avro_flags() {
        let cli = parse(&["tributary", "--registry", "http://h:1", "schema", "get", "--id", "3"]);
        assert_eq!(cli.registry, "http://h:1");
        assert!(matches!(cli.command, Command::Schema(schema::SchemaCommand::Get { id: Some(3), .. })));
        assert!(Cli::try_parse_from(["tributary", "schema", "get"]).is_err(), "a subject or --id");
        let cli = parse(&["tributary", "produce", "t", "--value-schema", "u.avsc"]);
        let Command::Produce(p) = cli.command else { panic!("not produce") };
        assert_eq!(p.value_schema.as_deref(), Some(std::path::Path::new("u.avsc")));
        let cli = parse(&["tributary", "consume", "t", "--avro"]);
        let Command::Consume(c) = cli.command else { panic!("not consume") };
        assert!(c.avro);
    }

    #[test]
    fn bench_flags() {
        let cli = parse(&[
            "tributary",
            "bench",
            "produce",
            "--topic",
            "t",
            "--records",
            "1000",
            "--record-size",
            "100",
            "--producers",
            "2",
            "--acks",
            "1",
        ]);
        let Command::Bench(bench::BenchCommand::Produce(b)) = cli.command else {
            panic!("not bench produce")
        };
        assert_eq!((b.records, b.record_size, b.producers), (1000, 100, 2));
        assert_eq!(b.acks, tributary_client::Acks::Leader);
    }

    #[test]
    fn audit_shapes_parse_as_the_issue_fixes_them() {
        let cli = parse(&["tributary", "produce", "t", "--track", "--service", "billing"]);
        let Command::Produce(p) = cli.command else { panic!("not produce") };
        let t = p.tracking().expect("tracking on");
        assert_eq!((t.service.as_str(), t.window), ("billing", std::time::Duration::from_secs(60)));
        assert!(
            Cli::try_parse_from(["tributary", "produce", "t", "--track"]).is_err(),
            "--track needs --service"
        );
        let plain = parse(&["tributary", "produce", "t"]);
        let Command::Produce(p) = plain.command else { panic!("not produce") };
        assert!(p.tracking().is_none());
        let cli = parse(&["tributary", "consume", "t", "--group", "g", "--track"]);
        let Command::Consume(c) = cli.command else { panic!("not consume") };
        assert!(c.track);
        assert!(
            Cli::try_parse_from(["tributary", "consume", "t", "--track"]).is_err(),
            "--track needs --group"
        );
        let cli = parse(&[
            "tributary",
            "audit",
            "report",
            "--tiers",
            "producer,local-a,consumer:g",
            "--topic",
            "x",
            "--json",
        ]);
        let Command::Audit(audit::AuditCommand::Report(r)) = cli.command else { panic!("not audit report") };
        assert_eq!(r.tiers, vec!["producer", "local-a", "consumer:g"]);
        assert_eq!(r.topic.as_deref(), Some("x"));
        assert!(r.json);
    }
}
