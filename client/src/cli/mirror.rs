//! `tributary mirror ...`: mirror links of the destination cluster (the one
//! `--bootstrap` names): create, list, status, pause, resume, delete, and
//! translate a consumer group's offsets from the source.

use clap::{Args, Subcommand, ValueEnum};
use tributary_client::mirror::Translation;
use tributary_client::tributary_proto::v1::{
    self, DescribeMirrorLinkResponse, MirrorLinkSpec, MirrorNaming, MirrorStart,
};
use tributary_client::Admin;

use super::table;

#[derive(Subcommand, Debug)]
pub enum MirrorCommand {
    /// Create a link copying topics of a source cluster into this one.
    Create(CreateArgs),
    /// List the links with their source, topics and state.
    List,
    /// Per source partition: source high watermark, last copied offset,
    /// lag, records/s and state.
    Status {
        name: String,
    },
    /// Stop copying (resumes where it stopped).
    Pause {
        name: String,
    },
    Resume {
        name: String,
    },
    /// Delete a link; its destination topics and their data stay.
    Delete {
        name: String,
    },
    /// Where a consumer group that read the link's topics at its source
    /// goes on in this cluster (exact, from the copies' provenance), so the
    /// group can move here and resume; `--apply` commits those offsets for
    /// the group here (refused while it has members here).
    TranslateOffsets {
        name: String,
        #[arg(long)]
        group: String,
        #[arg(long)]
        apply: bool,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Naming {
    /// `<alias>.<topic>` in the destination.
    Prefix,
    /// The same name: several sources may feed one topic.
    Identity,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Start {
    Earliest,
    Latest,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    pub name: String,
    /// The source's short name (the prefix with `--naming prefix`).
    #[arg(long)]
    pub source_alias: String,
    /// The source cluster's brokers.
    #[arg(long, value_name = "HOST:PORT[,HOST:PORT...]")]
    pub source: String,
    /// Source topics to copy: a regex matched against the whole name.
    #[arg(long, value_name = "REGEX")]
    pub topics: String,
    /// Source topics to leave out (whole-name regex).
    #[arg(long, value_name = "REGEX", default_value = "")]
    pub exclude: String,
    #[arg(long, value_enum, default_value = "prefix")]
    pub naming: Naming,
    /// Where a partition with nothing copied yet starts.
    #[arg(long, value_enum, default_value = "earliest")]
    pub start: Start,
    /// Of the destination topics the link creates (0: the broker default).
    #[arg(long, default_value_t = 0)]
    pub replication_factor: u32,
    /// Create it paused.
    #[arg(long)]
    pub paused: bool,
    /// Replace the link of that name if there is one.
    #[arg(long)]
    pub update: bool,
}

impl CreateArgs {
    pub fn spec(&self) -> MirrorLinkSpec {
        MirrorLinkSpec {
            name: self.name.clone(),
            source_alias: self.source_alias.clone(),
            source_bootstrap: self.source.clone(),
            topics: self.topics.clone(),
            exclude: self.exclude.clone(),
            naming: match self.naming {
                Naming::Prefix => MirrorNaming::Prefix,
                Naming::Identity => MirrorNaming::Identity,
            } as i32,
            start: match self.start {
                Start::Earliest => MirrorStart::Earliest,
                Start::Latest => MirrorStart::Latest,
            } as i32,
            paused: self.paused,
            replication_factor: self.replication_factor,
        }
    }
}

pub async fn run(bootstrap: &str, cmd: MirrorCommand) -> anyhow::Result<()> {
    let admin = Admin::connect(bootstrap).await?;
    match cmd {
        MirrorCommand::Create(args) => {
            let link = admin.create_mirror_link(args.spec(), args.update).await?;
            println!("{} mirror link {}", if args.update { "updated" } else { "created" }, link.name);
        }
        MirrorCommand::List => print!("{}", list(&admin.list_mirror_links().await?)),
        MirrorCommand::Status { name } => print!("{}", status(&admin.describe_mirror_link(&name).await?)),
        MirrorCommand::Pause { name } => {
            admin.pause_mirror_link(&name).await?;
            println!("paused mirror link {name}");
        }
        MirrorCommand::Resume { name } => {
            admin.resume_mirror_link(&name).await?;
            println!("resumed mirror link {name}");
        }
        MirrorCommand::Delete { name } => {
            admin.delete_mirror_link(&name).await?;
            println!("deleted mirror link {name}");
        }
        MirrorCommand::TranslateOffsets { name, group, apply } => {
            let translated = tributary_client::mirror::translate_offsets(bootstrap, &name, &group).await?;
            if translated.is_empty() {
                anyhow::bail!(
                    "group '{group}' has no committed offsets at the source for topics link '{name}' copies"
                );
            }
            print!("{}", translations(&translated));
            if apply {
                let offsets = translated
                    .iter()
                    .map(|t| v1::OffsetEntry {
                        topic: t.destination_topic.clone(),
                        partition: t.partition,
                        offset: t.destination_offset,
                        metadata: format!(
                            "translated by mirror link {name} from source offset {}",
                            t.source_offset
                        ),
                    })
                    .collect();
                admin.commit_offsets(&group, offsets).await?;
                println!("committed {} offsets for group {group}", translated.len());
            }
        }
    }
    Ok(())
}

pub fn translations(ts: &[Translation]) -> String {
    let mut rows =
        vec![["SOURCE-TOPIC", "PARTITION", "SOURCE-OFFSET", "DESTINATION", "DESTINATION-OFFSET", "COPIED"]
            .map(String::from)
            .to_vec()];
    for t in ts {
        rows.push(vec![
            t.source_topic.clone(),
            t.partition.to_string(),
            t.source_offset.to_string(),
            t.destination_topic.clone(),
            t.destination_offset.to_string(),
            if t.copied { "yes" } else { "not yet (at the end)" }.to_string(),
        ]);
    }
    table::render(&rows)
}

fn naming(l: &MirrorLinkSpec) -> &'static str {
    match MirrorNaming::try_from(l.naming) {
        Ok(MirrorNaming::Identity) => "identity",
        _ => "prefix",
    }
}

fn start(l: &MirrorLinkSpec) -> &'static str {
    match MirrorStart::try_from(l.start) {
        Ok(MirrorStart::Latest) => "latest",
        _ => "earliest",
    }
}

pub fn list(links: &[MirrorLinkSpec]) -> String {
    if links.is_empty() {
        return "no mirror links\n".to_string();
    }
    let mut rows = vec![["NAME", "SOURCE-ALIAS", "SOURCE", "TOPICS", "EXCLUDE", "NAMING", "START", "STATE"]
        .map(String::from)
        .to_vec()];
    for l in links {
        rows.push(vec![
            l.name.clone(),
            l.source_alias.clone(),
            l.source_bootstrap.clone(),
            l.topics.clone(),
            l.exclude.clone(),
            naming(l).to_string(),
            start(l).to_string(),
            if l.paused { "paused" } else { "running" }.to_string(),
        ]);
    }
    table::render(&rows)
}

pub fn status(d: &DescribeMirrorLinkResponse) -> String {
    let mut out = String::new();
    if let Some(l) = &d.link {
        out.push_str(&format!(
            "link {} from {} ({}), topics {}, naming {}, {}\n",
            l.name,
            l.source_alias,
            l.source_bootstrap,
            l.topics,
            naming(l),
            if l.paused { "paused" } else { "running" }
        ));
    }
    if !d.source_cluster_id.is_empty() {
        out.push_str(&format!("source cluster id {}\n", d.source_cluster_id));
    }
    if !d.error.is_empty() {
        out.push_str(&format!("error: {}\n", d.error));
    }
    out.push_str(&format!("total lag {}, {:.1} records/s\n", d.total_lag, d.records_per_sec));
    let stalled: Vec<_> = d.topics.iter().filter(|t| t.state != "Copying").collect();
    for t in stalled {
        out.push_str(&format!(
            "topic {} -> {}: {} ({})\n",
            t.source_topic, t.destination_topic, t.state, t.reason
        ));
    }
    let mut rows = vec![[
        "SOURCE-TOPIC",
        "PARTITION",
        "DESTINATION",
        "BROKER",
        "SOURCE-HW",
        "LAST-COPIED",
        "LAG",
        "RECORDS/S",
        "STATE",
        "ERROR",
    ]
    .map(String::from)
    .to_vec()];
    for p in &d.partitions {
        rows.push(vec![
            p.source_topic.clone(),
            p.partition.to_string(),
            p.destination_topic.clone(),
            p.broker.to_string(),
            p.source_high_watermark.to_string(),
            p.last_copied_offset.to_string(),
            p.lag.to_string(),
            format!("{:.1}", p.records_per_sec),
            p.state.clone(),
            p.error.clone(),
        ]);
    }
    out.push_str(&table::render(&rows));
    out
}
