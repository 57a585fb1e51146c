//! Topic lifecycle: create, describe, alter, grow, delete — thin calls on
//! the broker's `Admin` service, plus the few `Log` lookups (topic list,
//! offsets) an operator needs next to them.

use std::collections::BTreeMap;
use std::time::Duration;

use tributary_proto::v1;

use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::metadata::{self, OffsetSpec};

/// How long an admin call may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// An admin client. Cheap to clone; clones share the connection.
#[derive(Clone, Debug)]
pub struct Admin {
    conn: Connection,
}

impl Admin {
    /// Connects to `bootstrap` ("host:port", `http://` optional).
    pub async fn connect(bootstrap: &str) -> Result<Admin> {
        Ok(Admin { conn: Connection::open(bootstrap).await? })
    }

    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u32,
        configs: BTreeMap<String, String>,
    ) -> Result<()> {
        let request = v1::CreateTopicsRequest {
            topics: vec![v1::TopicSpec {
                name: name.to_string(),
                partitions,
                replication_factor,
                configs: configs.into_iter().collect(),
            }],
            validate_only: false,
        };
        let c = &self.conn;
        c.call("a create-topics request", ADMIN_TIMEOUT, c.admin().create_topics(request)).await?;
        Ok(())
    }

    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let request = v1::DeleteTopicsRequest { names: vec![name.to_string()] };
        let c = &self.conn;
        c.call("a delete-topics request", ADMIN_TIMEOUT, c.admin().delete_topics(request)).await?;
        Ok(())
    }

    /// Every topic's name, sorted.
    pub async fn list_topics(&self) -> Result<Vec<String>> {
        let request = v1::MetadataRequest { topics: Vec::new() };
        let c = &self.conn;
        let response = c.call("a metadata request", ADMIN_TIMEOUT, c.log().metadata(request)).await?;
        let mut names: Vec<String> = response.topics.into_iter().map(|t| t.name).collect();
        names.sort();
        Ok(names)
    }

    pub async fn describe_topic(&self, name: &str) -> Result<v1::TopicDescription> {
        let found = self.describe(vec![name.to_string()]).await?;
        found
            .into_iter()
            .find(|t| t.name == name)
            .ok_or_else(|| Error::status(tonic::Code::NotFound, format!("unknown topic '{name}'")))
    }

    /// Every topic, sorted by name.
    pub async fn describe_topics(&self) -> Result<Vec<v1::TopicDescription>> {
        let mut all = self.describe(Vec::new()).await?;
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    async fn describe(&self, names: Vec<String>) -> Result<Vec<v1::TopicDescription>> {
        let request = v1::DescribeTopicsRequest { names };
        let c = &self.conn;
        let response =
            c.call("a describe-topics request", ADMIN_TIMEOUT, c.admin().describe_topics(request)).await?;
        let mut topics = response.topics;
        for t in &mut topics {
            t.partitions.sort_by_key(|p| p.partition);
        }
        Ok(topics)
    }

    /// Sets and removes config overrides; returns the topic's overrides
    /// afterwards.
    pub async fn alter_topic_configs(
        &self,
        name: &str,
        set: BTreeMap<String, String>,
        delete: Vec<String>,
    ) -> Result<BTreeMap<String, String>> {
        let request = v1::AlterTopicConfigsRequest {
            name: name.to_string(),
            set: set.into_iter().collect(),
            delete,
            validate_only: false,
        };
        let c = &self.conn;
        let response = c
            .call("an alter-topic-configs request", ADMIN_TIMEOUT, c.admin().alter_topic_configs(request))
            .await?;
        Ok(response.configs.into_iter().collect())
    }

    /// Grows the topic to `total` partitions; returns the new count.
    pub async fn create_partitions(&self, name: &str, total: u32) -> Result<u32> {
        let request =
            v1::CreatePartitionsRequest { name: name.to_string(), total_count: total, validate_only: false };
        let c = &self.conn;
        let response = c
            .call("a create-partitions request", ADMIN_TIMEOUT, c.admin().create_partitions(request))
            .await?;
        Ok(response.partitions)
    }

    /// The offset `spec` names in one partition; -1 when no record is at or
    /// after the timestamp asked for.
    pub async fn list_offsets(&self, topic: &str, partition: u32, spec: OffsetSpec) -> Result<i64> {
        let found = metadata::list_offsets(&self.conn, ADMIN_TIMEOUT, topic, &[partition], spec).await?;
        found.first().copied().ok_or_else(|| {
            Error::status(tonic::Code::Internal, format!("no offset returned for {topic}-{partition}"))
        })
    }

    /// Partition numbers of a topic, ascending.
    pub async fn partitions(&self, topic: &str) -> Result<Vec<u32>> {
        metadata::partitions(&self.conn, ADMIN_TIMEOUT, topic).await
    }
}
