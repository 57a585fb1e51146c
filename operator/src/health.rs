//! What the brokers say about their cluster, in the shape the plans read.
//!
//! Rolls and scale-downs are decided from the brokers' own view (the
//! controller's broker list and every partition's replicas and ISR), not
//! from pod readiness: a pod can be Ready while its replicas are still
//! catching up. [`ClusterHealth`] is that view, built from
//! `DescribeCluster` plus `DescribeTopics` ([`ClusterHealth::from_responses`]),
//! and [`ClusterCall`] is what the plans ask of the cluster in return.

use std::collections::BTreeMap;

use tributary_proto::v1;

/// One broker as the controller sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerView {
    pub node_id: i32,
    /// Holds a live session with the controller.
    pub alive: bool,
    pub rack: String,
}

/// One partition's placement and health.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionView {
    pub topic: String,
    pub partition: u32,
    /// -1 when the partition has no leader.
    pub leader: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    /// The topic's `min.insync.replicas` (effective value, 1 when unknown).
    pub min_isr: usize,
}

impl PartitionView {
    pub fn name(&self) -> String {
        format!("{}-{}", self.topic, self.partition)
    }

    pub fn under_replicated(&self) -> bool {
        self.replicas.iter().any(|r| !self.isr.contains(r))
    }

    pub fn offline(&self) -> bool {
        self.leader < 0
    }
}

/// The brokers' view of the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterHealth {
    /// The metadata controller (Raft leader), when there is one.
    pub controller: Option<i32>,
    /// Every member of the cluster (voters and learners), by node id.
    pub brokers: Vec<BrokerView>,
    pub partitions: Vec<PartitionView>,
}

impl ClusterHealth {
    /// Builds the view from the two admin answers.
    pub fn from_responses(cluster: &v1::DescribeClusterResponse, topics: &[v1::TopicDescription]) -> Self {
        let mut brokers: Vec<BrokerView> = cluster
            .brokers
            .iter()
            .map(|b| BrokerView { node_id: b.node_id, alive: b.alive, rack: b.rack.clone() })
            .collect();
        brokers.sort_by_key(|b| b.node_id);
        let partitions = topics
            .iter()
            .flat_map(|t| {
                let min_isr = t
                    .configs
                    .get("min.insync.replicas")
                    .or_else(|| t.effective_configs.get("min.insync.replicas"))
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(1);
                t.partitions.iter().map(move |p| PartitionView {
                    topic: t.name.clone(),
                    partition: p.partition,
                    leader: p.leader,
                    replicas: p.replicas.clone(),
                    isr: p.isr.clone(),
                    min_isr,
                })
            })
            .collect();
        ClusterHealth {
            controller: (cluster.controller_id >= 0).then_some(cluster.controller_id),
            brokers,
            partitions,
        }
    }

    pub fn broker(&self, node: i32) -> Option<&BrokerView> {
        self.brokers.iter().find(|b| b.node_id == node)
    }

    pub fn alive(&self, node: i32) -> bool {
        self.broker(node).is_some_and(|b| b.alive)
    }

    pub fn under_replicated(&self) -> Vec<&PartitionView> {
        self.partitions.iter().filter(|p| p.under_replicated()).collect()
    }

    pub fn offline(&self) -> Vec<&PartitionView> {
        self.partitions.iter().filter(|p| p.offline()).collect()
    }

    /// Replicas each member holds (members holding none included).
    pub fn load(&self) -> BTreeMap<i32, usize> {
        let mut load: BTreeMap<i32, usize> = self.brokers.iter().map(|b| (b.node_id, 0)).collect();
        for p in &self.partitions {
            for r in &p.replicas {
                *load.entry(*r).or_default() += 1;
            }
        }
        load
    }

    /// Replicas `node` holds.
    pub fn replicas_on(&self, node: i32) -> usize {
        self.partitions.iter().filter(|p| p.replicas.contains(&node)).count()
    }

    /// The largest replica count of any partition.
    pub fn max_replication_factor(&self) -> usize {
        self.partitions.iter().map(|p| p.replicas.len()).max().unwrap_or(0)
    }
}

/// A few partition names for a message: `a-0, a-1, b-3 and 7 more`.
pub fn sample(partitions: &[&PartitionView]) -> String {
    const SHOWN: usize = 3;
    let names: Vec<String> = partitions.iter().take(SHOWN).map(|p| p.name()).collect();
    let more = partitions.len().saturating_sub(SHOWN);
    if more == 0 {
        names.join(", ")
    } else {
        format!("{} and {more} more", names.join(", "))
    }
}

/// A call on the cluster (not on one topic) that a plan decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterCall {
    /// Move every replica off `node` (`tributary broker drain`).
    Drain { node: i32, throttle: Option<u64> },
    /// Remove `node` from the quorum and the metadata; it holds no replicas.
    RemoveBroker { node: i32 },
    /// Move one partition to `replicas` (the first is the preferred leader).
    Reassign { topic: String, partition: u32, replicas: Vec<i32>, throttle: Option<u64> },
    /// Move leadership back to each partition's preferred replica.
    ElectLeaders,
}

impl ClusterCall {
    /// The admin RPC this call makes.
    pub fn name(&self) -> &'static str {
        match self {
            ClusterCall::Drain { .. } => "DrainBroker",
            ClusterCall::RemoveBroker { .. } => "RemoveBroker",
            ClusterCall::Reassign { .. } => "ReassignPartitions",
            ClusterCall::ElectLeaders => "ElectLeaders",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_the_view_from_the_admin_answers() {
        let cluster = v1::DescribeClusterResponse {
            controller_id: 1,
            brokers: vec![
                v1::BrokerStatus { node_id: 1, alive: true, rack: "b".into(), ..Default::default() },
                v1::BrokerStatus { node_id: 0, alive: false, rack: "a".into(), ..Default::default() },
            ],
            ..Default::default()
        };
        let topic = v1::TopicDescription {
            name: "t".into(),
            configs: [("min.insync.replicas".to_string(), "2".to_string())].into_iter().collect(),
            partitions: vec![
                v1::PartitionDescription {
                    partition: 0,
                    leader: 1,
                    replicas: vec![1, 0],
                    isr: vec![1],
                    ..Default::default()
                },
                v1::PartitionDescription {
                    partition: 1,
                    leader: -1,
                    replicas: vec![0],
                    isr: vec![],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let h = ClusterHealth::from_responses(&cluster, &[topic]);
        assert_eq!(h.controller, Some(1));
        assert_eq!(h.brokers.iter().map(|b| b.node_id).collect::<Vec<_>>(), [0, 1]);
        assert!(!h.alive(0) && h.alive(1) && !h.alive(7));
        assert_eq!(h.partitions[0].min_isr, 2);
        assert_eq!(sample(&h.under_replicated()), "t-0, t-1");
        assert_eq!(sample(&h.offline()), "t-1");
        assert_eq!(h.load(), [(0, 2), (1, 1)].into_iter().collect());
        assert_eq!(h.max_replication_factor(), 2);
        let none = v1::DescribeClusterResponse { controller_id: -1, ..Default::default() };
        assert_eq!(ClusterHealth::from_responses(&none, &[]).controller, None);
    }
}
