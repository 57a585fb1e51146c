//! `tributary topic ...`: the admin commands, printing results for people.

use std::collections::BTreeMap;

use anyhow::bail;
use clap::Subcommand;
use tributary_client::tributary_proto::v1::TopicDescription;
use tributary_client::Admin;

use super::args::parse_key_value;

#[derive(Subcommand, Debug)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        #[arg(long, default_value_t = 1)]
        replication_factor: u32,
        /// A topic config, KEY=VALUE (repeatable), e.g. retention.ms=3600000.
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_key_value)]
        configs: Vec<(String, String)>,
    },
    /// List topic names, one per line.
    List,
    /// Show a topic's partitions and configs.
    Describe { name: String },
    /// Set or remove config overrides, or change the replication factor.
    Alter {
        name: String,
        /// New replication factor: replicas are added (they copy first) or
        /// removed by reassignment, with no unavailability beyond a leader
        /// change.
        #[arg(long)]
        replication_factor: Option<u32>,
        #[command(flatten)]
        throttle: super::cluster::Throttle,
        /// Set KEY to VALUE (repeatable).
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_key_value)]
        configs: Vec<(String, String)>,
        /// Remove the override of KEY, back to the broker default (repeatable).
        #[arg(long = "delete-config", value_name = "KEY")]
        delete: Vec<String>,
    },
    /// Delete a topic and all its records.
    Delete { name: String },
    /// Grow a topic to a total number of partitions (never shrinks).
    AddPartitions {
        name: String,
        #[arg(long)]
        total: u32,
    },
}

pub async fn run(bootstrap: &str, cmd: TopicCommand) -> anyhow::Result<()> {
    let admin = Admin::connect(bootstrap).await?;
    match cmd {
        TopicCommand::Create { name, partitions, replication_factor, configs } => {
            admin.create_topic(&name, partitions, replication_factor, configs.into_iter().collect()).await?;
            println!("created topic {name}");
        }
        TopicCommand::List => {
            for name in admin.list_topics().await? {
                println!("{name}");
            }
        }
        TopicCommand::Describe { name } => {
            let t = admin.describe_topic(&name).await?;
            print!("{}", describe(&t));
        }
        TopicCommand::Alter { name, replication_factor, throttle, configs, delete } => {
            if let Some(rf) = replication_factor {
                let r = admin.alter_replication_factor(&name, rf, throttle.bytes_per_sec).await?;
                println!(
                    "replication factor of {name} -> {rf}: {} partition(s) reassigning",
                    r.started.len()
                );
                print!("{}", super::cluster::reassignments(&r));
                if configs.is_empty() && delete.is_empty() {
                    return Ok(());
                }
            }
            if configs.is_empty() && delete.is_empty() {
                bail!("nothing to change: give --replication-factor R, --config KEY=VALUE and/or --delete-config KEY");
            }
            let set: BTreeMap<String, String> = configs.into_iter().collect();
            let overrides = admin.alter_topic_configs(&name, set, delete).await?;
            println!("altered topic {name}");
            for (k, v) in overrides {
                println!("  {k}={v}");
            }
        }
        TopicCommand::Delete { name } => {
            admin.delete_topic(&name).await?;
            println!("deleted topic {name}");
        }
        TopicCommand::AddPartitions { name, total } => {
            let now = admin.create_partitions(&name, total).await?;
            println!("topic {name} now has {now} partitions");
        }
    }
    Ok(())
}

/// The human-readable description: header, a partition table, configs with
/// the topic's own overrides marked.
pub fn describe(t: &TopicDescription) -> String {
    let mut out = String::new();
    out.push_str(&format!("Topic: {}\n", t.name));
    out.push_str(&format!("Id: {}\n", t.topic_id));
    out.push_str(&format!("Partitions: {}\n", t.partitions.len()));
    out.push_str(&format!("Replication factor: {}\n\n", t.replication_factor));
    let ids = |v: &[i32]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.iter().map(i32::to_string).collect::<Vec<_>>().join(",")
        }
    };
    let mut rows = vec![vec![
        "PARTITION".to_string(),
        "LEADER".into(),
        "EPOCH".into(),
        "REPLICAS".into(),
        "ISR".into(),
        "LOG-START".into(),
        "HIGH-WATERMARK".into(),
        "SIZE".into(),
        "SEGMENTS".into(),
    ]];
    for p in &t.partitions {
        rows.push(vec![
            p.partition.to_string(),
            // -1: no leader right now (offline, or an election under way).
            if p.leader < 0 { "none".to_string() } else { p.leader.to_string() },
            p.leader_epoch.to_string(),
            ids(&p.replicas),
            ids(&p.isr),
            p.log_start_offset.to_string(),
            p.high_watermark.to_string(),
            human_bytes(p.size_bytes),
            p.segments.to_string(),
        ]);
    }
    out.push_str(&super::table::render(&rows));
    let shrunk = t.partitions.iter().filter(|p| p.isr.len() < p.replicas.len()).count();
    let offline = t.partitions.iter().filter(|p| p.leader < 0).count();
    if shrunk > 0 || offline > 0 {
        out.push_str(&format!("\n{shrunk} under-replicated, {offline} offline (no leader)\n"));
    }
    out.push_str("\nConfigs:\n");
    // Effective values, plus any override the broker did not list there.
    let mut all: BTreeMap<&str, &str> =
        t.effective_configs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    for (k, v) in &t.configs {
        all.insert(k, v);
    }
    for (k, v) in all {
        let mark = if t.configs.contains_key(k) { "  (override)" } else { "" };
        out.push_str(&format!("  {k}={v}{mark}\n"));
    }
    out
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_client::tributary_proto::v1::PartitionDescription;

    #[test]
    fn describe_marks_overrides() {
        let t = TopicDescription {
            name: "orders".into(),
            topic_id: "abc".into(),
            replication_factor: 1,
            configs: [("retention.ms".to_string(), "1000".to_string())].into_iter().collect(),
            effective_configs: [
                ("retention.ms".to_string(), "1000".to_string()),
                ("cleanup.policy".to_string(), "delete".to_string()),
            ]
            .into_iter()
            .collect(),
            partitions: vec![PartitionDescription {
                partition: 0,
                leader: 0,
                replicas: vec![0],
                isr: vec![0],
                log_start_offset: 0,
                high_watermark: 10,
                size_bytes: 2048,
                segments: 1,
                ..Default::default()
            }],
        };
        let text = describe(&t);
        assert!(text.contains("Topic: orders\n"), "{text}");
        assert!(text.contains("retention.ms=1000  (override)"), "{text}");
        assert!(text.contains("cleanup.policy=delete\n"), "{text}");
        assert!(text.contains("2.0 KiB"), "{text}");
        assert!(text.lines().any(|l| l.starts_with("0 ") && l.contains("10")), "{text}");
    }

    #[test]
    fn describe_shows_leader_epoch_replicas_and_isr() {
        let part = |partition, leader, leader_epoch, isr: Vec<i32>| PartitionDescription {
            partition,
            leader,
            leader_epoch,
            replicas: vec![1, 2, 3],
            isr,
            ..Default::default()
        };
        let t = TopicDescription {
            name: "r".into(),
            replication_factor: 3,
            partitions: vec![part(0, 1, 4, vec![1, 2, 3]), part(1, 2, 7, vec![2]), part(2, -1, 9, vec![])],
            ..Default::default()
        };
        let text = describe(&t);
        assert!(text.contains("PARTITION  LEADER  EPOCH  REPLICAS  ISR"), "{text}");
        assert!(text.contains("\n0          1       4      1,2,3     1,2,3  "), "{text}");
        assert!(text.contains("\n1          2       7      1,2,3     2  "), "{text}");
        assert!(text.contains("\n2          none    9      1,2,3     -  "), "{text}");
        assert!(text.contains("2 under-replicated, 1 offline (no leader)"), "{text}");
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB");
    }
}
