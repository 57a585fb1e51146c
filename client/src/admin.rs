//! Topic lifecycle: create, describe, alter, grow, delete — thin calls on
//! the broker's `Admin` service, plus the few `Log` lookups (topic list,
//! offsets) an operator needs next to them; consumer-group administration
//! (list, describe, reset offsets, delete) on the `Group` service of each
//! group's coordinator; and the cluster's own view (`DescribeCluster`,
//! preferred-leader elections) on the `Cluster` service.
//!
//! Any broker takes admin calls (it forwards them to the controller), so a
//! call goes to whichever broker answers. Calls that only read, or that
//! set a value (altering configs, elections), move on to another broker
//! when one cannot be reached; calls that create or delete are sent once,
//! as a retry after a lost answer would report "already exists" for what
//! the first attempt did.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tributary_proto::v1;

use crate::cluster::Cluster;
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
/// How long group administration keeps trying a coordinator that moved.
const COORDINATOR_PATIENCE: Duration = Duration::from_secs(30);

/// An admin client. Cheap to clone; clones share the connections.
#[derive(Clone, Debug)]
pub struct Admin {
    cluster: Arc<Cluster>,
    coordinators: Arc<Coordinators>,
}

impl Admin {
    /// Connects to the first broker of `bootstrap` (`HOST:PORT,HOST:PORT,...`,
    /// `http://` optional) that answers.
    pub async fn connect(bootstrap: &str) -> Result<Admin> {
        let cluster = Arc::new(Cluster::connect(bootstrap, 1).await?);
        Ok(Admin { coordinators: Arc::new(Coordinators::new(cluster.clone())), cluster })
    }

    /// A call that is safe to repeat, on any broker that answers.
    async fn any<T, F, Fut>(&self, call: F) -> Result<T>
    where
        F: Fn(Connection) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.cluster.call_any(call).await
    }

    /// A call that must not be repeated after a lost answer: sent once, to
    /// the broker that answered last.
    fn once(&self) -> Connection {
        self.cluster.home()
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
        let c = self.once();
        c.call("a create-topics request", ADMIN_TIMEOUT, c.admin().create_topics(request)).await?;
        Ok(())
    }

    /// Creates several topics in one `CreateTopics` call. The broker checks
    /// every topic first: one invalid topic refuses the whole call (the
    /// error names it) and none is created.
    pub async fn create_topics(&self, topics: Vec<v1::TopicSpec>) -> Result<()> {
        let request = v1::CreateTopicsRequest { topics, validate_only: false };
        let c = self.once();
        c.call("a create-topics request", ADMIN_TIMEOUT, c.admin().create_topics(request)).await?;
        Ok(())
    }

    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let request = v1::DeleteTopicsRequest { names: vec![name.to_string()] };
        let c = self.once();
        c.call("a delete-topics request", ADMIN_TIMEOUT, c.admin().delete_topics(request)).await?;
        Ok(())
    }

    /// Every topic's name, sorted.
    pub async fn list_topics(&self) -> Result<Vec<String>> {
        self.cluster.refresh_now().await?;
        Ok(self.cluster.topics().into_keys().collect())
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
        let request = &v1::DescribeTopicsRequest { names };
        let response = self
            .any(|c| async move {
                c.call("a describe-topics request", ADMIN_TIMEOUT, c.admin().describe_topics(request.clone()))
                    .await
            })
            .await?;
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
        let request = &v1::AlterTopicConfigsRequest {
            name: name.to_string(),
            set: set.into_iter().collect(),
            delete,
            validate_only: false,
        };
        let response = self
            .any(|c| async move {
                let request = request.clone();
                c.call(
                    "an alter-topic-configs request",
                    ADMIN_TIMEOUT,
                    c.admin().alter_topic_configs(request),
                )
                .await
            })
            .await?;
        Ok(response.configs.into_iter().collect())
    }

    /// Grows the topic to `total` partitions; returns the new count.
    pub async fn create_partitions(&self, name: &str, total: u32) -> Result<u32> {
        let request =
            v1::CreatePartitionsRequest { name: name.to_string(), total_count: total, validate_only: false };
        let c = self.once();
        let response = c
            .call("a create-partitions request", ADMIN_TIMEOUT, c.admin().create_partitions(request))
            .await?;
        Ok(response.partitions)
    }

    /// The offset `spec` names in one partition; -1 when no record is at or
    /// after the timestamp asked for.
    pub async fn list_offsets(&self, topic: &str, partition: u32, spec: OffsetSpec) -> Result<i64> {
        let found = metadata::list_offsets(&self.cluster, ADMIN_TIMEOUT, topic, &[partition], spec).await?;
        found.first().copied().ok_or_else(|| {
            Error::status(tonic::Code::Internal, format!("no offset returned for {topic}-{partition}"))
        })
    }

    /// Partition numbers of a topic, ascending.
    pub async fn partitions(&self, topic: &str) -> Result<Vec<u32>> {
        metadata::partitions(&self.cluster, topic).await
    }

    /// Every consumer group of the cluster, sorted by id: each broker lists
    /// the groups it coordinates, so every broker is asked. A broker that
    /// cannot be reached fails the listing (it would be incomplete).
    pub async fn list_groups(&self) -> Result<Vec<v1::GroupListing>> {
        self.cluster.refresh_now().await?;
        let mut brokers: Vec<Connection> =
            self.cluster.brokers().iter().filter_map(|b| self.cluster.connection(b.id)).collect();
        if brokers.is_empty() {
            brokers.push(self.cluster.home());
        }
        let asked = brokers.iter().map(|c| async move {
            c.call("a list-groups request", ADMIN_TIMEOUT, c.group().list_groups(v1::ListGroupsRequest {}))
                .await
        });
        let mut groups: BTreeMap<String, v1::GroupListing> = BTreeMap::new();
        for answer in futures::future::join_all(asked).await {
            for g in answer?.groups {
                // During a coordinator move two brokers may list a group;
                // the one with members is the one in charge.
                match groups.get(&g.group_id) {
                    Some(known) if known.members >= g.members => {}
                    _ => {
                        groups.insert(g.group_id.clone(), g);
                    }
                }
            }
        }
        Ok(groups.into_values().collect())
    }

    /// A group's state, generation, members with their partitions, and per
    /// partition the committed offset, log end and lag (members sorted by
    /// id, partitions by topic and number).
    pub async fn describe_group(&self, group: &str) -> Result<v1::DescribeGroupResponse> {
        let mut d = self
            .on_coordinator(group, |c| async move {
                let request = v1::DescribeGroupRequest { group_id: group.to_string() };
                c.call("a describe-group request", ADMIN_TIMEOUT, c.group().describe_group(request)).await
            })
            .await?;
        d.members.sort_by(|a, b| a.member_id.cmp(&b.member_id));
        d.offsets.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        Ok(d)
    }

    /// Deletes a group and its committed offsets; only while it has no
    /// members.
    pub async fn delete_group(&self, group: &str) -> Result<()> {
        self.on_coordinator(group, |c| async move {
            let request = v1::DeleteGroupRequest { group_id: group.to_string() };
            c.call("a delete-group request", ADMIN_TIMEOUT, c.group().delete_group(request)).await
        })
        .await?;
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
        self.reset_partition_offsets(group, topic, &[], to, dry_run).await
    }

    /// [`Self::reset_offsets`] for some partitions of `topic` only (empty:
    /// all of them).
    pub async fn reset_partition_offsets(
        &self,
        group: &str,
        topic: &str,
        partitions: &[u32],
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
        let request = &v1::ResetOffsetsRequest {
            group_id: group.to_string(),
            topic: topic.to_string(),
            partitions: partitions.to_vec(),
            to: Some(to),
            dry_run,
        };
        let response = self
            .on_coordinator(group, |c| async move {
                c.call("a reset-offsets request", ADMIN_TIMEOUT, c.group().reset_offsets(request.clone()))
                    .await
            })
            .await?;
        let mut offsets = response.offsets;
        offsets.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        Ok(offsets)
    }

    /// Commits `offsets` for `group` from outside its membership, as Kafka's
    /// AlterConsumerGroupOffsets does: refused while the group has members;
    /// a group that does not exist yet is made with them.
    pub async fn commit_offsets(&self, group: &str, offsets: Vec<v1::OffsetEntry>) -> Result<()> {
        let request = &v1::CommitOffsetsRequest {
            group_id: group.to_string(),
            member_id: String::new(),
            generation: -1,
            group_instance_id: String::new(),
            offsets,
        };
        self.on_coordinator(group, |c| async move {
            c.call("a commit-offsets request", ADMIN_TIMEOUT, c.group().commit_offsets(request.clone())).await
        })
        .await?;
        Ok(())
    }

    /// Every offset the group committed, sorted by topic and partition.
    pub async fn fetch_offsets(&self, group: &str) -> Result<Vec<v1::OffsetEntry>> {
        let response = self
            .on_coordinator(group, |c| async move {
                let request = v1::FetchOffsetsRequest { group_id: group.to_string(), partitions: Vec::new() };
                c.call("a fetch-offsets request", ADMIN_TIMEOUT, c.group().fetch_offsets(request)).await
            })
            .await?;
        let mut offsets = response.offsets;
        offsets.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        Ok(offsets)
    }

    /// Brokers with their liveness, the controller and its Raft state, and
    /// partition health, as the controller sees them.
    pub async fn describe_cluster(&self) -> Result<v1::DescribeClusterResponse> {
        let mut d = self
            .any(|c| async move {
                let request = v1::DescribeClusterRequest {};
                c.call("a describe-cluster request", ADMIN_TIMEOUT, c.cluster().describe_cluster(request))
                    .await
                    .map_err(|e| older_broker(e, &c, "describe the cluster"))
            })
            .await?;
        d.brokers.sort_by_key(|b| b.node_id);
        Ok(d)
    }

    /// Moves leadership of every partition of `topics` (every topic when
    /// empty) to its preferred replica, the first of its replica list,
    /// where that one is in sync; returns how many partitions moved.
    /// Changes a topic's replication factor by reassignment (new replicas
    /// copy first; the switch happens once they are in sync). Returns the
    /// reassignments started.
    /// `throttle`: bytes/s for all reassignment copying cluster-wide until
    /// the last reassignment completes (None leaves the current one).
    pub async fn alter_replication_factor(
        &self,
        topic: &str,
        replication_factor: u32,
        throttle: Option<u64>,
    ) -> Result<v1::ReassignResponse> {
        let request = &v1::AlterReplicationFactorRequest {
            topic: topic.to_string(),
            replication_factor,
            throttle_bytes_per_sec: throttle,
        };
        self.any(|c| async move {
            let mut cluster = c.cluster();
            c.call(
                "an alter-replication-factor request",
                ADMIN_TIMEOUT,
                cluster.alter_replication_factor(request.clone()),
            )
            .await
            .map_err(|e| older_broker(e, &c, "change replication factors"))
        })
        .await
    }

    /// Moves one partition to `replicas` (the first is the preferred leader);
    /// `throttle` as for [`Admin::alter_replication_factor`].
    pub async fn reassign_partition(
        &self,
        topic: &str,
        partition: u32,
        replicas: &[i32],
        throttle: Option<u64>,
    ) -> Result<v1::ReassignResponse> {
        let request = &v1::ReassignPartitionsRequest {
            partitions: vec![v1::PartitionTarget {
                topic: topic.to_string(),
                partition,
                replicas: replicas.to_vec(),
            }],
            throttle_bytes_per_sec: throttle,
        };
        self.any(|c| async move {
            c.call(
                "a reassign-partitions request",
                ADMIN_TIMEOUT,
                c.cluster().reassign_partitions(request.clone()),
            )
            .await
            .map_err(|e| older_broker(e, &c, "reassign partitions"))
        })
        .await
    }

    /// Moves every replica off broker `node` (before removing it);
    /// `throttle` as for [`Admin::alter_replication_factor`].
    pub async fn drain_broker(&self, node: i32, throttle: Option<u64>) -> Result<v1::ReassignResponse> {
        let request = &v1::DrainBrokerRequest { node_id: node, throttle_bytes_per_sec: throttle };
        self.any(|c| async move {
            c.call("a drain-broker request", ADMIN_TIMEOUT, c.cluster().drain_broker(*request))
                .await
                .map_err(|e| older_broker(e, &c, "drain brokers"))
        })
        .await
    }

    /// Removes a drained broker from the cluster (metadata and metadata
    /// quorum); refused (FAILED_PRECONDITION) while it hosts a replica.
    /// Returns the Raft voters after the removal.
    pub async fn remove_broker(&self, node: i32) -> Result<Vec<i32>> {
        let request = &v1::RemoveBrokerRequest { node_id: node };
        let response = self
            .any(|c| async move {
                c.call("a remove-broker request", ADMIN_TIMEOUT, c.cluster().remove_broker(*request))
                    .await
                    .map_err(|e| older_broker(e, &c, "remove brokers"))
            })
            .await?;
        Ok(response.voters)
    }

    pub async fn elect_leaders(&self, topics: &[&str]) -> Result<u32> {
        let request = &v1::ElectLeadersRequest { topics: topics.iter().map(|t| t.to_string()).collect() };
        let response = self
            .any(|c| async move {
                c.call("an elect-leaders request", ADMIN_TIMEOUT, c.cluster().elect_leaders(request.clone()))
                    .await
                    .map_err(|e| older_broker(e, &c, "elect leaders"))
            })
            .await?;
        Ok(response.moved)
    }

    /// Creates a mirror link in this (the destination) cluster; with
    /// `update`, replaces the link of that name (or creates it). The broker
    /// checks everything first (regexes, names, that the source is not this
    /// cluster): a refused link stores nothing. Returns the link as stored.
    pub async fn create_mirror_link(
        &self,
        link: v1::MirrorLinkSpec,
        update: bool,
    ) -> Result<v1::MirrorLinkSpec> {
        let request = v1::CreateMirrorLinkRequest { link: Some(link), validate_only: false, update };
        let c = self.once();
        let r = c
            .call("a create-mirror-link request", ADMIN_TIMEOUT, c.mirror().create_mirror_link(request))
            .await?;
        r.link
            .ok_or_else(|| Error::Corrupt("the broker answered a mirror link create without the link".into()))
    }

    /// Every mirror link of this cluster, sorted by name.
    pub async fn list_mirror_links(&self) -> Result<Vec<v1::MirrorLinkSpec>> {
        let r = self
            .any(|c| async move {
                let request = v1::ListMirrorLinksRequest {};
                c.call("a list-mirror-links request", ADMIN_TIMEOUT, c.mirror().list_mirror_links(request))
                    .await
            })
            .await?;
        Ok(r.links)
    }

    /// A link with the status of every source partition it copies (from
    /// every broker's tasks): source high watermark, last copied offset,
    /// lag, records/s, state.
    pub async fn describe_mirror_link(&self, name: &str) -> Result<v1::DescribeMirrorLinkResponse> {
        self.any(|c| async move {
            let request = v1::DescribeMirrorLinkRequest { name: name.to_string(), local_only: false };
            c.call("a describe-mirror-link request", ADMIN_TIMEOUT, c.mirror().describe_mirror_link(request))
                .await
        })
        .await
    }

    /// Stops a link's copying (it resumes where it stopped).
    pub async fn pause_mirror_link(&self, name: &str) -> Result<v1::MirrorLinkSpec> {
        let request = &v1::MirrorLinkName { name: name.to_string() };
        let r = self
            .any(|c| async move {
                c.call(
                    "a pause-mirror-link request",
                    ADMIN_TIMEOUT,
                    c.mirror().pause_mirror_link(request.clone()),
                )
                .await
            })
            .await?;
        Ok(r.link.unwrap_or_default())
    }

    pub async fn resume_mirror_link(&self, name: &str) -> Result<v1::MirrorLinkSpec> {
        let request = &v1::MirrorLinkName { name: name.to_string() };
        let r = self
            .any(|c| async move {
                c.call(
                    "a resume-mirror-link request",
                    ADMIN_TIMEOUT,
                    c.mirror().resume_mirror_link(request.clone()),
                )
                .await
            })
            .await?;
        Ok(r.link.unwrap_or_default())
    }

    /// Deletes a link (its destination topics and their data stay).
    pub async fn delete_mirror_link(&self, name: &str) -> Result<()> {
        let request = v1::MirrorLinkName { name: name.to_string() };
        let c = self.once();
        c.call("a delete-mirror-link request", ADMIN_TIMEOUT, c.mirror().delete_mirror_link(request)).await?;
        Ok(())
    }

    /// Runs a group call on the group's coordinator, finding it again while
    /// it moves.
    async fn on_coordinator<T, F, Fut>(&self, group: &str, call: F) -> Result<T>
    where
        F: Fn(Connection) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        if group.trim().is_empty() {
            return Err(Error::InvalidArgument("the group id is empty".into()));
        }
        self.coordinators.call(group, ADMIN_TIMEOUT, COORDINATOR_PATIENCE, call).await
    }
}

/// A broker without the `Cluster` service says so in words a person can act
/// on.
fn older_broker(e: Error, c: &Connection, what: &str) -> Error {
    match e {
        Error::Status { code: tonic::Code::Unimplemented, .. } => Error::InvalidArgument(format!(
            "the broker at {} cannot {what}: it predates the Cluster service; upgrade it",
            c.addr
        )),
        other => other,
    }
}
