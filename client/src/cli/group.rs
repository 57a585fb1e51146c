//! `tributary group ...`: consumer-group administration, printed for people.

use clap::{ArgGroup, Args, Subcommand};
use tributary_client::tributary_proto::v1::{DescribeGroupResponse, GroupListing, OffsetEntry};
use tributary_client::{Admin, ResetTo};

use super::args::{parse_offset, parse_rfc3339};
use super::table;

#[derive(Subcommand, Debug)]
pub enum GroupCommand {
    /// List consumer groups with their state and member count.
    List,
    /// Show a group's state, members and their partitions, and per
    /// partition the committed offset, log end, lag and owner.
    Describe { group: String },
    /// Move a group's committed offsets of a topic (only while the group
    /// has no members).
    ResetOffsets(ResetOffsetsArgs),
    /// Delete a group and its committed offsets (only while it has no members).
    Delete { group: String },
}

#[derive(Args, Debug)]
#[command(group(
    ArgGroup::new("to").required(true).args(["to_earliest", "to_latest", "to_datetime", "to_offset"])
))]
pub struct ResetOffsetsArgs {
    pub group: String,
    /// Every partition of this topic is reset.
    #[arg(long)]
    pub topic: String,
    /// To the first offset each partition still stores.
    #[arg(long)]
    pub to_earliest: bool,
    /// To the end of each partition (only new records are read).
    #[arg(long)]
    pub to_latest: bool,
    /// To the first record at or after this time, e.g. 2024-05-01T12:00:00Z.
    #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339)]
    pub to_datetime: Option<i64>,
    /// To this offset in every partition.
    #[arg(long, value_name = "N", value_parser = parse_offset)]
    pub to_offset: Option<i64>,
    /// Show the new offsets without changing anything.
    #[arg(long)]
    pub dry_run: bool,
}

impl ResetOffsetsArgs {
    pub fn target(&self) -> ResetTo {
        match (self.to_datetime, self.to_offset) {
            (Some(ms), _) => ResetTo::Timestamp(ms),
            (_, Some(n)) => ResetTo::Offset(n),
            _ if self.to_earliest => ResetTo::Earliest,
            _ => ResetTo::Latest,
        }
    }
}

pub async fn run(bootstrap: &str, cmd: GroupCommand) -> anyhow::Result<()> {
    let admin = Admin::connect(bootstrap).await?;
    match cmd {
        GroupCommand::List => print!("{}", list(&admin.list_groups().await?)),
        GroupCommand::Describe { group } => print!("{}", describe(&admin.describe_group(&group).await?)),
        GroupCommand::ResetOffsets(args) => {
            let offsets = admin.reset_offsets(&args.group, &args.topic, args.target(), args.dry_run).await?;
            print!("{}", offsets_table(&offsets));
            if args.dry_run {
                println!("dry run: nothing changed");
            } else {
                println!("reset offsets of group {} for topic {}", args.group, args.topic);
            }
        }
        GroupCommand::Delete { group } => {
            admin.delete_group(&group).await?;
            println!("deleted group {group}");
        }
    }
    Ok(())
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_string()
    } else {
        s.to_string()
    }
}

fn offset(n: i64) -> String {
    if n < 0 {
        "-".to_string()
    } else {
        n.to_string()
    }
}

pub fn list(groups: &[GroupListing]) -> String {
    let mut rows = vec![vec!["GROUP".to_string(), "STATE".into(), "MEMBERS".into()]];
    for g in groups {
        rows.push(vec![g.group_id.clone(), g.state.clone(), g.members.to_string()]);
    }
    table::render(&rows)
}

/// Header, members with their partitions, then the partition table.
pub fn describe(d: &DescribeGroupResponse) -> String {
    let mut out = String::new();
    out.push_str(&format!("Group: {}\n", d.group_id));
    out.push_str(&format!("State: {}\n", d.state));
    out.push_str(&format!("Generation: {}\n", d.generation));
    out.push_str(&format!("Assignor: {}\n", or_dash(&d.assignor)));
    out.push_str(&format!("Members: {}\n", d.members.len()));
    if !d.members.is_empty() {
        out.push('\n');
        let mut rows = vec![vec![
            "MEMBER".to_string(),
            "INSTANCE".into(),
            "CLIENT".into(),
            "HOST".into(),
            "PARTITIONS".into(),
        ]];
        for m in &d.members {
            let parts: Vec<String> = m
                .assignment
                .iter()
                .flat_map(|t| t.partitions.iter().map(move |p| format!("{}-{p}", t.topic)))
                .collect();
            rows.push(vec![
                m.member_id.clone(),
                or_dash(&m.group_instance_id),
                or_dash(&m.client_id),
                or_dash(&m.host),
                if parts.is_empty() { "-".to_string() } else { parts.join(",") },
            ]);
        }
        out.push_str(&table::render(&rows));
    }
    if !d.offsets.is_empty() {
        out.push('\n');
        let mut rows = vec![vec![
            "TOPIC".to_string(),
            "PARTITION".into(),
            "COMMITTED".into(),
            "LOG-END".into(),
            "LAG".into(),
            "OWNER".into(),
        ]];
        for p in &d.offsets {
            rows.push(vec![
                p.topic.clone(),
                p.partition.to_string(),
                offset(p.committed_offset),
                offset(p.log_end_offset),
                if p.committed_offset < 0 { "-".to_string() } else { p.lag.to_string() },
                or_dash(&p.member_id),
            ]);
        }
        out.push_str(&table::render(&rows));
    }
    out
}

fn offsets_table(offsets: &[OffsetEntry]) -> String {
    let mut rows = vec![vec!["TOPIC".to_string(), "PARTITION".into(), "NEW-OFFSET".into()]];
    for e in offsets {
        rows.push(vec![e.topic.clone(), e.partition.to_string(), offset(e.offset)]);
    }
    table::render(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_client::tributary_proto::v1::{MemberDescription, PartitionLag, TopicPartitions};

    #[test]
    fn describe_shows_members_and_lag() {
        let d = DescribeGroupResponse {
            group_id: "billing".into(),
            state: "Stable".into(),
            generation: 4,
            assignor: "range".into(),
            members: vec![MemberDescription {
                member_id: "m-1".into(),
                group_instance_id: String::new(),
                client_id: "tributary".into(),
                host: "127.0.0.1".into(),
                assignment: vec![TopicPartitions { topic: "orders".into(), partitions: vec![0, 1] }],
            }],
            offsets: vec![
                PartitionLag {
                    topic: "orders".into(),
                    partition: 0,
                    committed_offset: 4,
                    log_end_offset: 10,
                    lag: 6,
                    member_id: "m-1".into(),
                },
                PartitionLag {
                    topic: "orders".into(),
                    partition: 1,
                    committed_offset: -1,
                    log_end_offset: 3,
                    lag: 3,
                    member_id: String::new(),
                },
            ],
        };
        let text = describe(&d);
        assert!(
            text.starts_with("Group: billing\nState: Stable\nGeneration: 4\nAssignor: range\nMembers: 1\n"),
            "{text}"
        );
        assert!(text.contains("m-1     -         tributary  127.0.0.1  orders-0,orders-1"), "{text}");
        assert!(text.contains("TOPIC   PARTITION  COMMITTED  LOG-END  LAG  OWNER"), "{text}");
        assert!(text.contains("orders  0          4          10       6    m-1\n"), "{text}");
        assert!(text.contains("orders  1          -          3        -    -\n"), "{text}");
    }

    #[test]
    fn list_is_a_table() {
        let groups = vec![GroupListing { group_id: "g".into(), state: "Empty".into(), members: 0 }];
        assert_eq!(list(&groups), "GROUP  STATE  MEMBERS\ng      Empty  0\n");
    }
}
