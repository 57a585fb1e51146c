//! `tributary schema ...`: the schema registry from the command line
//! (any broker's HTTP port, or any Confluent-compatible registry).

use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Subcommand;
use tributary_client::registry::RegistryClient;

#[derive(Subcommand, Debug)]
pub enum SchemaCommand {
    /// List subjects.
    List,
    /// Print a schema: a subject's version (default: latest), or by id.
    Get {
        /// Subject (omit with --id).
        #[arg(required_unless_present = "id")]
        subject: Option<String>,
        /// A version number, or latest.
        #[arg(long, default_value = "latest", conflicts_with = "id")]
        version: String,
        /// A schema id.
        #[arg(long)]
        id: Option<u32>,
    },
    /// Register the schema in FILE (.avsc) under SUBJECT; prints its id.
    Register { subject: String, file: std::path::PathBuf },
    /// Check whether the schema in FILE may become SUBJECT's next version;
    /// exits 1 if not, saying why.
    Check { subject: String, file: std::path::PathBuf },
    /// Show (or with --set, change) the compatibility level of SUBJECT, or
    /// the global one.
    Config {
        subject: Option<String>,
        /// BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL,
        /// FULL_TRANSITIVE or NONE.
        #[arg(long, value_name = "LEVEL")]
        set: Option<String>,
    },
}

pub fn client(url: &str) -> anyhow::Result<Arc<RegistryClient>> {
    Ok(Arc::new(RegistryClient::new(url)?))
}

fn read(file: &std::path::Path) -> anyhow::Result<String> {
    std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))
}

pub async fn run(registry: &str, cmd: SchemaCommand) -> anyhow::Result<()> {
    let r = client(registry)?;
    match cmd {
        SchemaCommand::List => {
            for s in r.subjects().await? {
                println!("{s}");
            }
        }
        SchemaCommand::Get { id: Some(id), .. } => println!("{}", r.schema(id).await?),
        SchemaCommand::Get { subject, version, .. } => {
            let subject = subject.context("name a subject, or --id")?;
            let v = r.version(&subject, &version).await?;
            eprintln!("subject {} version {} id {}", v.subject, v.version, v.id);
            println!("{}", v.schema);
        }
        SchemaCommand::Register { subject, file } => {
            println!("{}", r.register(&subject, &read(&file)?).await?)
        }
        SchemaCommand::Check { subject, file } => {
            let (ok, why) = r.check(&subject, &read(&file)?).await?;
            if !ok {
                bail!("incompatible with {subject}: {}", why.join("; "));
            }
            println!("compatible");
        }
        SchemaCommand::Config { subject, set: Some(level) } => {
            println!("{}", r.set_compatibility(subject.as_deref(), &level.to_ascii_uppercase()).await?)
        }
        SchemaCommand::Config { subject, set: None } => {
            println!("{}", r.compatibility(subject.as_deref()).await?)
        }
    }
    Ok(())
}
