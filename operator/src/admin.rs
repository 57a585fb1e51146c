//! Talking to a Cluster's brokers: the operator's only way to them.
//!
//! [`Brokers`] is the seam between the controllers and the network: the
//! controllers ask it to describe a topic or the cluster and to make the
//! calls [`crate::topic_plan`], [`crate::roll`] and [`crate::scale`]
//! decided, and tests put a fake behind it. The real one, [`ClientBrokers`],
//! is the client crate's [`tributary_client::Admin`] (one per cluster
//! address), so the operator routes to the controller and partition leaders
//! and retries exactly as the `tributary` CLI does: one admin client in the
//! project.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use futures::future::BoxFuture;
use tonic::Code;
use tributary_client::{Admin, Error as ClientError};
use tributary_proto::v1::{self, TopicDescription};

use crate::health::{ClusterCall, ClusterHealth};
use crate::topic_plan::{AdminCall, ObservedTopic};

/// A failed call to the brokers.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AdminError {
    /// The brokers could not be reached (or timed out): try again later.
    #[error("brokers at {address} unreachable: {message}")]
    Unavailable { address: String, message: String },
    /// The brokers answered and refused the call.
    #[error("brokers refused {call}: {message}")]
    Refused { call: String, message: String },
}

/// The admin operations the operator needs from one cluster.
pub trait Brokers: Send + Sync + 'static {
    /// The topic as the brokers see it; `None` when it does not exist.
    fn describe<'a>(
        &'a self,
        address: &'a str,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<Option<ObservedTopic>, AdminError>>;
    /// Makes one planned call.
    fn execute<'a>(&'a self, address: &'a str, call: &'a AdminCall) -> BoxFuture<'a, Result<(), AdminError>>;

    /// The named topics that exist, by name, in as few calls as the brokers
    /// allow; `names` empty means every topic. Topics that do not exist are
    /// absent from the map. [`crate::admin_batch`] uses this to serve many
    /// reconciles with one call.
    ///
    /// The default asks [`Brokers::describe`] for each name in turn and cannot
    /// list every topic; [`ClientBrokers`] makes one `DescribeTopics` call.
    fn describe_many<'a>(
        &'a self,
        address: &'a str,
        names: &'a [String],
    ) -> BoxFuture<'a, Result<HashMap<String, ObservedTopic>, AdminError>> {
        Box::pin(async move {
            if names.is_empty() {
                return Err(AdminError::Refused {
                    call: "DescribeTopics".into(),
                    message: "this admin client cannot list every topic".into(),
                });
            }
            let mut found = HashMap::new();
            for name in names {
                if let Some(o) = self.describe(address, name).await? {
                    found.insert(name.clone(), o);
                }
            }
            Ok(found)
        })
    }

    /// Creates all `topics`. Like the broker's `CreateTopics`, the real one
    /// is all-or-nothing: one invalid topic refuses the whole call.
    ///
    /// The default makes one [`Brokers::execute`] per topic, stopping at the
    /// first error; [`ClientBrokers`] makes one `CreateTopics` call.
    fn create_many<'a>(
        &'a self,
        address: &'a str,
        topics: &'a [NewTopic],
    ) -> BoxFuture<'a, Result<(), AdminError>> {
        Box::pin(async move {
            for t in topics {
                self.execute(address, &t.to_call()).await?;
            }
            Ok(())
        })
    }

    /// The brokers' view of the cluster: members, controller, and every
    /// partition's replicas and ISR. The default cannot (a topic-only fake).
    fn cluster_health<'a>(&'a self, address: &'a str) -> BoxFuture<'a, Result<ClusterHealth, AdminError>> {
        Box::pin(async move {
            Err(AdminError::Unavailable {
                address: address.into(),
                message: "this admin client cannot describe the cluster".into(),
            })
        })
    }

    /// A call on the cluster's mirror links (see [`MirrorCall`]); answers
    /// the link's status for [`MirrorCall::Describe`] (`None`: no such
    /// link). The default cannot (a topic-only fake).
    fn mirror_call<'a>(
        &'a self,
        _address: &'a str,
        call: &'a MirrorCall,
    ) -> BoxFuture<'a, Result<Option<v1::DescribeMirrorLinkResponse>, AdminError>> {
        Box::pin(async move {
            Err(AdminError::Refused {
                call: call.name().into(),
                message: "this admin client cannot manage mirror links".into(),
            })
        })
    }

    /// The cluster's audit counts (`Audit.ReadCounts`), for the
    /// MirrorLink `AuditComplete` condition. The default cannot (a
    /// topic-only fake).
    fn audit_counts<'a>(
        &'a self,
        address: &'a str,
    ) -> BoxFuture<'a, Result<v1::ReadCountsResponse, AdminError>> {
        Box::pin(async move {
            Err(AdminError::Unavailable {
                address: address.into(),
                message: "this admin client cannot read audit counts".into(),
            })
        })
    }

    /// Makes one call on the cluster (drain, remove, reassign, elect).
    fn cluster_call<'a>(
        &'a self,
        _address: &'a str,
        call: &'a ClusterCall,
    ) -> BoxFuture<'a, Result<(), AdminError>> {
        Box::pin(async move {
            Err(AdminError::Refused {
                call: call.name().into(),
                message: "this admin client cannot make cluster calls".into(),
            })
        })
    }
}

/// What the MirrorLink controller asks of the destination cluster.
#[derive(Clone, Debug, PartialEq)]
pub enum MirrorCall {
    /// The link with every source partition's progress.
    Describe { name: String },
    /// Creates the link, or with `update` replaces it.
    Put { link: v1::MirrorLinkSpec, update: bool },
    /// Deletes it (already gone counts as done).
    Delete { name: String },
}

impl MirrorCall {
    pub fn name(&self) -> &'static str {
        match self {
            MirrorCall::Describe { .. } => "DescribeMirrorLink",
            MirrorCall::Put { update: false, .. } => "CreateMirrorLink",
            MirrorCall::Put { update: true, .. } => "UpdateMirrorLink",
            MirrorCall::Delete { .. } => "DeleteMirrorLink",
        }
    }
}

/// A topic to create: the fields of [`AdminCall::Create`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewTopic {
    pub name: String,
    pub partitions: u32,
    pub replication_factor: u32,
    pub configs: BTreeMap<String, String>,
}

impl NewTopic {
    /// The topic `call` creates, when it is a [`AdminCall::Create`].
    pub fn from_call(call: &AdminCall) -> Option<NewTopic> {
        match call {
            AdminCall::Create { name, partitions, replication_factor, configs } => Some(NewTopic {
                name: name.clone(),
                partitions: *partitions,
                replication_factor: *replication_factor,
                configs: configs.clone(),
            }),
            _ => None,
        }
    }

    /// The same creation as one planned call.
    pub fn to_call(&self) -> AdminCall {
        AdminCall::Create {
            name: self.name.clone(),
            partitions: self.partitions,
            replication_factor: self.replication_factor,
            configs: self.configs.clone(),
        }
    }

    fn to_spec(&self) -> v1::TopicSpec {
        v1::TopicSpec {
            name: self.name.clone(),
            partitions: self.partitions,
            replication_factor: self.replication_factor,
            configs: self.configs.clone().into_iter().collect(),
        }
    }
}

/// Summarizes a broker's description of a topic.
pub fn observed_from(d: &TopicDescription) -> ObservedTopic {
    ObservedTopic {
        topic_id: d.topic_id.clone(),
        partitions: u32::try_from(d.partitions.len()).unwrap_or(u32::MAX),
        replication_factor: d.replication_factor,
        configs: d.configs.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        under_replicated: d.partitions.iter().filter(|p| p.isr.len() < p.replicas.len()).count() as u32,
        offline: d.partitions.iter().filter(|p| p.leader < 0).count() as u32,
        replicas: d
            .partitions
            .iter()
            .map(|p| {
                let in_sync = p.replicas.iter().filter(|r| p.isr.contains(r)).count();
                (p.replicas.len() as u32, in_sync as u32)
            })
            .collect(),
    }
}

/// [`Brokers`] through the client crate's [`Admin`], one per address
/// (connected on first use, kept while it works).
#[derive(Default)]
pub struct ClientBrokers {
    admins: Mutex<HashMap<String, Admin>>,
}

impl ClientBrokers {
    async fn admin(&self, address: &str) -> Result<Admin, AdminError> {
        if let Some(a) = self.admins.lock().unwrap_or_else(|p| p.into_inner()).get(address) {
            return Ok(a.clone());
        }
        let admin = Admin::connect(address)
            .await
            .map_err(|e| AdminError::Unavailable { address: address.into(), message: e.to_string() })?;
        self.admins.lock().unwrap_or_else(|p| p.into_inner()).insert(address.to_string(), admin.clone());
        Ok(admin)
    }
}

/// Unreachable (try again) or refused (report it), from a client error.
fn admin_error(address: &str, call: &str, e: ClientError) -> AdminError {
    let unavailable = match &e {
        ClientError::Transport(_) | ClientError::Timeout(_) => true,
        ClientError::Status { code, .. } => matches!(
            code,
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown | Code::Aborted
        ),
        _ => false,
    };
    if unavailable {
        AdminError::Unavailable { address: address.into(), message: e.to_string() }
    } else {
        AdminError::Refused { call: call.into(), message: e.to_string() }
    }
}

fn not_found(e: &ClientError) -> bool {
    matches!(e, ClientError::Status { code: Code::NotFound, .. })
}

/// Starts a replication-factor change, new replicas copying at most
/// `throttle` bytes/s cluster-wide.
async fn alter_replication_factor(
    admin: &Admin,
    topic: &str,
    rf: u32,
    throttle: Option<u64>,
) -> Result<(), ClientError> {
    admin.alter_replication_factor(topic, rf, throttle).await.map(drop)
}

/// Moves every replica off `node`, copying at most `throttle` bytes/s.
async fn drain_broker(admin: &Admin, node: i32, throttle: Option<u64>) -> Result<(), ClientError> {
    admin.drain_broker(node, throttle).await.map(drop)
}

/// Moves one partition, copying at most `throttle` bytes/s.
async fn reassign_partition(
    admin: &Admin,
    topic: &str,
    partition: u32,
    replicas: &[i32],
    throttle: Option<u64>,
) -> Result<(), ClientError> {
    admin.reassign_partition(topic, partition, replicas, throttle).await.map(drop)
}

/// Removes a drained broker from the quorum and the metadata (the broker
/// refuses while it still hosts replicas).
async fn remove_broker(admin: &Admin, node: i32) -> Result<(), ClientError> {
    admin.remove_broker(node).await.map(drop)
}

impl Brokers for ClientBrokers {
    fn describe<'a>(
        &'a self,
        address: &'a str,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<Option<ObservedTopic>, AdminError>> {
        Box::pin(async move {
            let admin = self.admin(address).await?;
            match admin.describe_topic(topic).await {
                Ok(d) => Ok(Some(observed_from(&d))),
                Err(e) if not_found(&e) => Ok(None),
                Err(e) => Err(admin_error(address, "DescribeTopics", e)),
            }
        })
    }

    fn execute<'a>(&'a self, address: &'a str, call: &'a AdminCall) -> BoxFuture<'a, Result<(), AdminError>> {
        Box::pin(async move {
            let admin = self.admin(address).await?;
            let result = match call {
                AdminCall::Create { name, partitions, replication_factor, configs } => {
                    admin.create_topic(name, *partitions, *replication_factor, configs.clone()).await
                }
                AdminCall::CreatePartitions { name, total } => {
                    admin.create_partitions(name, *total).await.map(drop)
                }
                AdminCall::AlterConfigs { name, set, delete } => {
                    admin.alter_topic_configs(name, set.clone(), delete.clone()).await.map(drop)
                }
                AdminCall::Delete { name } => match admin.delete_topic(name).await {
                    // Already gone is what deleting wanted.
                    Err(e) if not_found(&e) => Ok(()),
                    other => other,
                },
                AdminCall::AlterReplicationFactor { name, replication_factor, throttle } => {
                    alter_replication_factor(&admin, name, *replication_factor, *throttle).await
                }
            };
            result.map_err(|e| admin_error(address, call.name(), e))
        })
    }

    fn describe_many<'a>(
        &'a self,
        address: &'a str,
        names: &'a [String],
    ) -> BoxFuture<'a, Result<HashMap<String, ObservedTopic>, AdminError>> {
        Box::pin(async move {
            if let [one] = names {
                return Ok(self
                    .describe(address, one)
                    .await?
                    .map(|o| (one.clone(), o))
                    .into_iter()
                    .collect());
            }
            // Several names: one describe-all, keeping ours (the broker
            // refuses a named describe when any one name is missing).
            let admin = self.admin(address).await?;
            let wanted: HashSet<&str> = names.iter().map(String::as_str).collect();
            let all = admin.describe_topics().await.map_err(|e| admin_error(address, "DescribeTopics", e))?;
            Ok(all
                .iter()
                .filter(|t| wanted.is_empty() || wanted.contains(t.name.as_str()))
                .map(|t| (t.name.clone(), observed_from(t)))
                .collect())
        })
    }

    fn create_many<'a>(
        &'a self,
        address: &'a str,
        topics: &'a [NewTopic],
    ) -> BoxFuture<'a, Result<(), AdminError>> {
        Box::pin(async move {
            let admin = self.admin(address).await?;
            admin
                .create_topics(topics.iter().map(NewTopic::to_spec).collect())
                .await
                .map_err(|e| admin_error(address, "CreateTopics", e))
        })
    }

    fn cluster_health<'a>(&'a self, address: &'a str) -> BoxFuture<'a, Result<ClusterHealth, AdminError>> {
        Box::pin(async move {
            let admin = self.admin(address).await?;
            let (cluster, topics) = futures::try_join!(admin.describe_cluster(), admin.describe_topics())
                .map_err(|e| admin_error(address, "DescribeCluster", e))?;
            Ok(ClusterHealth::from_responses(&cluster, &topics))
        })
    }

    fn mirror_call<'a>(
        &'a self,
        address: &'a str,
        call: &'a MirrorCall,
    ) -> BoxFuture<'a, Result<Option<v1::DescribeMirrorLinkResponse>, AdminError>> {
        Box::pin(async move {
            let admin = self.admin(address).await?;
            let result = match call {
                MirrorCall::Describe { name } => match admin.describe_mirror_link(name).await {
                    Err(e) if not_found(&e) => Ok(None),
                    other => other.map(Some),
                },
                MirrorCall::Put { link, update } => {
                    admin.create_mirror_link(link.clone(), *update).await.map(|_| None)
                }
                MirrorCall::Delete { name } => match admin.delete_mirror_link(name).await {
                    Err(e) if not_found(&e) => Ok(None),
                    other => other.map(|_| None),
                },
            };
            result.map_err(|e| admin_error(address, call.name(), e))
        })
    }

    fn audit_counts<'a>(
        &'a self,
        address: &'a str,
    ) -> BoxFuture<'a, Result<v1::ReadCountsResponse, AdminError>> {
        Box::pin(async move {
            tributary_client::audit::read_counts(address, 0)
                .await
                .map_err(|e| admin_error(address, "ReadCounts", e))
        })
    }

    fn cluster_call<'a>(
        &'a self,
        address: &'a str,
        call: &'a ClusterCall,
    ) -> BoxFuture<'a, Result<(), AdminError>> {
        Box::pin(async move {
            let admin = self.admin(address).await?;
            let result = match call {
                ClusterCall::Drain { node, throttle } => drain_broker(&admin, *node, *throttle).await,
                ClusterCall::RemoveBroker { node } => remove_broker(&admin, *node).await,
                ClusterCall::Reassign { topic, partition, replicas, throttle } => {
                    reassign_partition(&admin, topic, *partition, replicas, *throttle).await
                }
                ClusterCall::ElectLeaders => admin.elect_leaders(&[]).await.map(drop),
            };
            result.map_err(|e| admin_error(address, call.name(), e))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_proto::v1::PartitionDescription;

    #[test]
    fn counts_under_replicated_and_offline_partitions() {
        let p = |leader, replicas: Vec<i32>, isr: Vec<i32>| PartitionDescription {
            leader,
            replicas,
            isr,
            ..PartitionDescription::default()
        };
        let d = TopicDescription {
            name: "t".into(),
            topic_id: "id".into(),
            replication_factor: 3,
            configs: [("retention.ms".to_string(), "1".to_string())].into_iter().collect(),
            partitions: vec![
                p(0, vec![0, 1, 2], vec![0, 1, 2]),
                p(1, vec![0, 1, 2], vec![1]),
                p(-1, vec![0, 1, 2], vec![]),
            ],
            ..TopicDescription::default()
        };
        let o = observed_from(&d);
        assert_eq!((o.partitions, o.replication_factor, o.under_replicated, o.offline), (3, 3, 2, 1));
        assert_eq!(o.configs.get("retention.ms").map(String::as_str), Some("1"));
        assert_eq!(o.topic_id, "id");
        assert_eq!(o.replicas, [(3, 3), (3, 1), (3, 0)]);
    }
}
