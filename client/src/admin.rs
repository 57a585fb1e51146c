//! Topic lifecycle: create, describe, alter, grow, delete — thin calls on
//! the broker's `Admin` service, plus the few `Log` lookups (topic list,
//! offsets) an operator needs next to them, and consumer-group
//! administration (list, describe, reset offsets, delete) on the `Group`
//! service of each group's coordinator.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tributary_proto::v1;

use crate::connection::Connection;
use crate::coordinator::Coordinators;
use crate::error::{Error, Result};
use crate::metadata::{self, OffsetSpec};

/// Where [`Admin::reset_offsets`] moves a group's committed offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetTo {
    /// The first offset each partition still stores.
    Earliest,
    /// The end of each partition: only new records are read.
    Latest,
    /// The first record at or after this time (ms since the epoch); the end
    /// where there is none.
    Timestamp(i64),
    /// This offset in every partition.
    Offset(i64),
}

/// How long an admin call may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// An admin client. Cheap to clone; clones share the connection.
#[derive(Clone, Debug)]
pub struct Admin {
    conn: Connection,
    coordinators: Arc<Coordinators>,
}

impl Admin {
    /// Connects to `bootstrap` ("host:port", `http://` optional).
    pub async fn connect(bootstrap: &str) -> Result<Admin> {
        let conn = Connection::open(bootstrap).await?;
        Ok(Admin { coordinators: Arc::new(Coordinators::new(conn.clone())), conn })
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

    /// Every consumer group the broker coordinates, sorted by id.
    pub async fn list_groups(&self) -> Result<Vec<v1::GroupListing>> {
        let c = &self.conn;
        let response = c
            .call("a list-groups request", ADMIN_TIMEOUT, c.group().list_groups(v1::ListGroupsRequest {}))
            .await?;
        let mut groups = response.groups;
        groups.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        Ok(groups)
    }

    /// A group's state, generation, members with their partitions, and per
    /// partition the committed offset, log end and lag (members sorted by
    /// id, partitions by topic and number).
    pub async fn describe_group(&self, group: &str) -> Result<v1::DescribeGroupResponse> {
        let c = self.coordinator(group).await?;
        let request = v1::DescribeGroupRequest { group_id: group.to_string() };
        let mut d =
            c.call("a describe-group request", ADMIN_TIMEOUT, c.group().describe_group(request)).await?;
        d.members.sort_by(|a, b| a.member_id.cmp(&b.member_id));
        d.offsets.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        Ok(d)
    }

    /// Deletes a group and its committed offsets; only while it has no
    /// members.
    pub async fn delete_group(&self, group: &str) -> Result<()> {
        let c = self.coordinator(group).await?;
        let request = v1::DeleteGroupRequest { group_id: group.to_string() };
        c.call("a delete-group request", ADMIN_TIMEOUT, c.group().delete_group(request)).await?;
        Ok(())
    }

    /// Moves the group's committed offsets of every partition of `topic`;
    /// only while the group has no members. With `dry_run` nothing changes.
    /// Returns the offsets it set (or would set), sorted by partition.
    pub async fn reset_offsets(
        &self,
        group: &str,
        topic: &str,
        to: ResetTo,
        dry_run: bool,
    ) -> Result<Vec<v1::OffsetEntry>> {
        use v1::reset_offsets_request::To;
        let to = match to {
            ResetTo::Earliest => To::Earliest(true),
            ResetTo::Latest => To::Latest(true),
            ResetTo::Timestamp(ms) if ms < 0 => {
                return Err(Error::InvalidArgument(format!(
                    "timestamp {ms} is negative; give ms since the epoch"
                )))
            }
            ResetTo::Timestamp(ms) => To::TimestampMs(ms),
            ResetTo::Offset(n) if n < 0 => {
                return Err(Error::InvalidArgument(format!("offset {n} is negative; give 0 or more")))
            }
            ResetTo::Offset(n) => To::Offset(n),
        };
        let c = self.coordinator(group).await?;
        let request = v1::ResetOffsetsRequest {
            group_id: group.to_string(),
            topic: topic.to_string(),
            partitions: Vec::new(),
            to: Some(to),
            dry_run,
        };
        let response =
            c.call("a reset-offsets request", ADMIN_TIMEOUT, c.group().reset_offsets(request)).await?;
        let mut offsets = response.offsets;
        offsets.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        Ok(offsets)
    }

    /// Every offset the group committed, sorted by topic and partition.
    pub async fn fetch_offsets(&self, group: &str) -> Result<Vec<v1::OffsetEntry>> {
        let c = self.coordinator(group).await?;
        let request = v1::FetchOffsetsRequest { group_id: group.to_string(), partitions: Vec::new() };
        let response =
            c.call("a fetch-offsets request", ADMIN_TIMEOUT, c.group().fetch_offsets(request)).await?;
        let mut offsets = response.offsets;
        offsets.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        Ok(offsets)
    }

    async fn coordinator(&self, group: &str) -> Result<Connection> {
        if group.trim().is_empty() {
            return Err(Error::InvalidArgument("the group id is empty".into()));
        }
        self.coordinators.for_group(group, ADMIN_TIMEOUT).await
    }
}
