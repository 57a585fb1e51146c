//! `tributary cluster describe` and `tributary leader elect`: the cluster as
//! the controller sees it, and moving leadership back to preferred replicas.

use anyhow::bail;
use clap::Subcommand;
use tributary_client::tributary_proto::v1::DescribeClusterResponse;
use tributary_client::Admin;

use super::table;

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Show the cluster's id and name, the controller and its Raft state,
    /// every broker with its rack, liveness and role, and how many
    /// partitions are under-replicated or offline.
    Describe,
}

#[derive(Subcommand, Debug)]
pub enum LeaderCommand {
    /// Move partition leadership (after restarts it piles up on the
    /// brokers that stayed up).
    Elect {
        /// To each partition's preferred replica (the first of its replica
        /// list) where that one is in sync; the only kind of election.
        #[arg(long)]
        preferred: bool,
        /// Only this topic's partitions (repeatable; default: every topic).
        #[arg(long = "topic", value_name = "TOPIC")]
        topics: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum PartitionCommand {
    /// Move a partition to new replicas: they copy first, and the switch
    /// happens once all of them are in sync.
    Reassign {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        partition: u32,
        /// Broker ids, comma-separated; the first is the preferred leader.
        #[arg(long, value_delimiter = ',', required = true)]
        replicas: Vec<i32>,
        #[command(flatten)]
        throttle: Throttle,
    },
}

/// The reassignment byte-rate limit.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct Throttle {
    /// Leaders send replicas copying for reassignments at most this many
    /// bytes per second in all, until the last reassignment completes
    /// (0: no limit; default: keep the current one).
    #[arg(long = "throttle", value_name = "BYTES_PER_SEC")]
    pub bytes_per_sec: Option<u64>,
}

#[derive(Subcommand, Debug)]
pub enum BrokerCommand {
    /// Move every replica (and so every leadership) off a broker, before
    /// it is removed.
    Drain {
        id: i32,
        #[command(flatten)]
        throttle: Throttle,
    },
    /// Remove a drained broker from the cluster and its metadata quorum
    /// (then stop it for good; a restarted broker with the id joins again).
    Remove { id: i32 },
}

/// The started reassignments, one line each.
pub fn reassignments(r: &tributary_client::tributary_proto::v1::ReassignResponse) -> String {
    let mut out = String::new();
    for p in &r.started {
        let replicas: Vec<String> = p.replicas.iter().map(i32::to_string).collect();
        out.push_str(&format!("  {}-{} -> [{}]\n", p.topic, p.partition, replicas.join(",")));
    }
    out.push_str(&format!("reassignments in progress cluster-wide: {}\n", r.in_progress));
    if r.throttle_bytes_per_sec > 0 {
        out.push_str(&format!("throttle: {} bytes/s\n", r.throttle_bytes_per_sec));
    }
    out
}

pub async fn run_partition(bootstrap: &str, cmd: PartitionCommand) -> anyhow::Result<()> {
    let admin = Admin::connect(bootstrap).await?;
    match cmd {
        PartitionCommand::Reassign { topic, partition, replicas, throttle } => {
            let r = admin.reassign_partition(&topic, partition, &replicas, throttle.bytes_per_sec).await?;
            print!("{}", reassignments(&r));
        }
    }
    Ok(())
}

pub async fn run_broker(bootstrap: &str, cmd: BrokerCommand) -> anyhow::Result<()> {
    let admin = Admin::connect(bootstrap).await?;
    match cmd {
        BrokerCommand::Drain { id, throttle } => {
            let r = admin.drain_broker(id, throttle.bytes_per_sec).await?;
            println!("draining broker {id}: {} partition(s) moving", r.started.len());
            print!("{}", reassignments(&r));
        }
        BrokerCommand::Remove { id } => {
            let voters = admin.remove_broker(id).await?;
            let voters: Vec<String> = voters.iter().map(i32::to_string).collect();
            println!("broker {id} removed; metadata quorum voters: {}", voters.join(","));
        }
    }
    Ok(())
}

pub async fn run_cluster(bootstrap: &str, cmd: ClusterCommand) -> anyhow::Result<()> {
    let admin = Admin::connect(bootstrap).await?;
    match cmd {
        ClusterCommand::Describe => print!("{}", describe(&admin.describe_cluster().await?)),
    }
    Ok(())
}

pub async fn run_leader(bootstrap: &str, cmd: LeaderCommand) -> anyhow::Result<()> {
    match cmd {
        LeaderCommand::Elect { preferred, topics } => {
            if !preferred {
                bail!("say which election: --preferred (moves leadership to each partition's first replica)");
            }
            let admin = Admin::connect(bootstrap).await?;
            let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
            let moved = admin.elect_leaders(&topics).await?;
            let scope = if topics.is_empty() { "every topic".to_string() } else { topics.join(", ") };
            println!("preferred-leader election for {scope}: leadership of {moved} partitions moved");
        }
    }
    Ok(())
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_string()
    } else {
        s.to_string()
    }
}

/// Header lines, then one table row per broker.
pub fn describe(d: &DescribeClusterResponse) -> String {
    let mut out = String::new();
    out.push_str(&format!("Cluster: {} (id {})\n", or_dash(&d.cluster_name), or_dash(&d.cluster_id)));
    let controller = match d.brokers.iter().find(|b| b.node_id == d.controller_id) {
        _ if d.controller_id < 0 => "none (no Raft leader right now)".to_string(),
        Some(b) => format!("{} ({})", b.node_id, b.address),
        None => d.controller_id.to_string(),
    };
    out.push_str(&format!("Controller: {controller}\n"));
    out.push_str(&format!("Raft: term {}, commit index {}\n", d.raft_term, d.raft_commit_index));
    out.push_str(&format!(
        "Partitions: {} ({} under-replicated, {} offline)\n",
        d.partitions, d.under_replicated_partitions, d.offline_partitions
    ));
    if d.reassignments_in_progress > 0 || d.reassignment_throttle_bytes_per_sec > 0 {
        let throttle = match d.reassignment_throttle_bytes_per_sec {
            0 => "no throttle".to_string(),
            t => format!("throttle {t} bytes/s"),
        };
        out.push_str(&format!("Reassignments: {} in progress ({throttle})\n", d.reassignments_in_progress));
    }
    let alive = d.brokers.iter().filter(|b| b.alive).count();
    out.push_str(&format!("Brokers: {} ({alive} alive)\n\n", d.brokers.len()));
    let mut rows = vec![vec![
        "ID".to_string(),
        "ADDRESS".into(),
        "RACK".into(),
        "ALIVE".into(),
        "VOTER".into(),
        "CONTROLLER".into(),
    ]];
    for b in &d.brokers {
        rows.push(vec![
            b.node_id.to_string(),
            b.address.clone(),
            or_dash(&b.rack),
            yes_no(b.alive),
            yes_no(b.voter),
            if b.node_id == d.controller_id { "*".to_string() } else { String::new() },
        ]);
    }
    out.push_str(&table::render(&rows));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_client::tributary_proto::v1::BrokerStatus;

    fn status(id: i32, rack: &str, alive: bool, voter: bool) -> BrokerStatus {
        BrokerStatus { node_id: id, address: format!("b{id}:7070"), rack: rack.into(), alive, voter }
    }

    #[test]
    fn describe_shows_brokers_roles_and_health() {
        let d = DescribeClusterResponse {
            cluster_id: "Xy12".into(),
            cluster_name: "local".into(),
            controller_id: 1,
            raft_term: 4,
            raft_commit_index: 120,
            brokers: vec![
                status(0, "a", true, true),
                status(1, "b", true, true),
                status(3, "", false, false),
            ],
            under_replicated_partitions: 2,
            offline_partitions: 1,
            partitions: 12,
        };
        let text = describe(&d);
        assert!(
            text.starts_with(
                "Cluster: local (id Xy12)\nController: 1 (b1:7070)\nRaft: term 4, commit index 120\n\
                 Partitions: 12 (2 under-replicated, 1 offline)\nBrokers: 3 (2 alive)\n\n"
            ),
            "{text}"
        );
        assert!(text.contains("ID  ADDRESS  RACK  ALIVE  VOTER  CONTROLLER\n"), "{text}");
        assert!(text.contains("1   b1:7070  b     yes    yes    *\n"), "{text}");
        assert!(text.contains("3   b3:7070  -     no     no\n"), "{text}");
    }

    #[test]
    fn no_controller_is_said_plainly() {
        let d = DescribeClusterResponse { controller_id: -1, ..Default::default() };
        assert!(describe(&d).contains("Controller: none (no Raft leader right now)\n"));
    }
}
