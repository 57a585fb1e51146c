//! Talking to a Cluster's brokers: the operator's only use of the gRPC Admin API.
//!
//! [`Brokers`] is the seam between the Topic controller and the network: the
//! controller asks it to describe a topic and to make the calls
//! [`crate::topic_plan`] decided, and tests put a fake behind it. The real one,
//! [`GrpcBrokers`], keeps one lazily-connected channel per cluster address.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;
use tributary_proto::v1::admin_client::AdminClient;
use tributary_proto::v1::{self, TopicDescription};

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
    /// list every topic; [`GrpcBrokers`] makes one `DescribeTopics` call.
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
    /// first error; [`GrpcBrokers`] makes one `CreateTopics` call.
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
    }
}

/// [`Brokers`] over gRPC.
#[derive(Default)]
pub struct GrpcBrokers {
    channels: Mutex<HashMap<String, Channel>>,
}

impl GrpcBrokers {
    fn client(&self, address: &str) -> Result<AdminClient<Channel>, AdminError> {
        let mut channels = self.channels.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(c) = channels.get(address) {
            return Ok(AdminClient::new(c.clone()));
        }
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| AdminError::Unavailable { address: address.into(), message: e.to_string() })?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30));
        let channel = endpoint.connect_lazy();
        channels.insert(address.to_string(), channel.clone());
        Ok(AdminClient::new(channel))
    }
}

fn status_error(address: &str, call: &str, s: tonic::Status) -> AdminError {
    match s.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
            AdminError::Unavailable { address: address.into(), message: s.message().to_string() }
        }
        _ => AdminError::Refused { call: call.into(), message: format!("{:?}: {}", s.code(), s.message()) },
    }
}

impl Brokers for GrpcBrokers {
    fn describe<'a>(
        &'a self,
        address: &'a str,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<Option<ObservedTopic>, AdminError>> {
        Box::pin(async move {
            let mut client = self.client(address)?;
            let request = v1::DescribeTopicsRequest { names: vec![topic.to_string()] };
            match client.describe_topics(request).await {
                Ok(r) => Ok(r.into_inner().topics.iter().find(|t| t.name == topic).map(observed_from)),
                Err(s) if s.code() == Code::NotFound => Ok(None),
                Err(s) => Err(status_error(address, "DescribeTopics", s)),
            }
        })
    }

    fn execute<'a>(&'a self, address: &'a str, call: &'a AdminCall) -> BoxFuture<'a, Result<(), AdminError>> {
        Box::pin(async move {
            let mut client = self.client(address)?;
            let result = match call.clone() {
                AdminCall::Create { .. } => {
                    let topics = NewTopic::from_call(call).map(|t| t.to_spec()).into_iter().collect();
                    client
                        .create_topics(v1::CreateTopicsRequest { topics, validate_only: false })
                        .await
                        .map(drop)
                }
                AdminCall::CreatePartitions { name, total } => client
                    .create_partitions(v1::CreatePartitionsRequest {
                        name,
                        total_count: total,
                        validate_only: false,
                    })
                    .await
                    .map(drop),
                AdminCall::AlterConfigs { name, set, delete } => client
                    .alter_topic_configs(v1::AlterTopicConfigsRequest {
                        name,
                        set: set.into_iter().collect(),
                        delete,
                        validate_only: false,
                    })
                    .await
                    .map(drop),
                AdminCall::Delete { name } => {
                    match client.delete_topics(v1::DeleteTopicsRequest { names: vec![name] }).await {
                        // Already gone is what deleting wanted.
                        Err(s) if s.code() == Code::NotFound => Ok(()),
                        other => other.map(drop),
                    }
                }
            };
            result.map_err(|s| status_error(address, call.name(), s))
        })
    }

    fn describe_many<'a>(
        &'a self,
        address: &'a str,
        names: &'a [String],
    ) -> BoxFuture<'a, Result<HashMap<String, ObservedTopic>, AdminError>> {
        Box::pin(async move {
            let mut client = self.client(address)?;
            let wanted: HashSet<&str> = names.iter().map(String::as_str).collect();
            let keep = |topics: Vec<TopicDescription>| -> HashMap<String, ObservedTopic> {
                topics
                    .iter()
                    .filter(|t| wanted.is_empty() || wanted.contains(t.name.as_str()))
                    .map(|t| (t.name.clone(), observed_from(t)))
                    .collect()
            };
            let request = v1::DescribeTopicsRequest { names: names.to_vec() };
            match client.describe_topics(request).await {
                Ok(r) => Ok(keep(r.into_inner().topics)),
                // The broker answers NotFound when any one name is missing
                // (a topic about to be created, usually). One name: that is
                // the answer. Several: list every topic once and pick ours,
                // rather than one call per name.
                Err(s) if s.code() == Code::NotFound && names.len() == 1 => Ok(HashMap::new()),
                Err(s) if s.code() == Code::NotFound && !names.is_empty() => {
                    match client.describe_topics(v1::DescribeTopicsRequest { names: vec![] }).await {
                        Ok(r) => Ok(keep(r.into_inner().topics)),
                        Err(s) => Err(status_error(address, "DescribeTopics", s)),
                    }
                }
                Err(s) => Err(status_error(address, "DescribeTopics", s)),
            }
        })
    }

    fn create_many<'a>(
        &'a self,
        address: &'a str,
        topics: &'a [NewTopic],
    ) -> BoxFuture<'a, Result<(), AdminError>> {
        Box::pin(async move {
            let mut client = self.client(address)?;
            let request = v1::CreateTopicsRequest {
                topics: topics.iter().map(NewTopic::to_spec).collect(),
                validate_only: false,
            };
            client
                .create_topics(request)
                .await
                .map(drop)
                .map_err(|s| status_error(address, "CreateTopics", s))
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
    }
}
