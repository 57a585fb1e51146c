//! The pure side of group membership — assignor names, partitions on the
//! wire, what a new assignment changes, where an assigned partition starts —
//! kept apart from the I/O so it can be tested on its own.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use tributary_proto::v1;

use crate::metadata::OffsetSpec;

/// How the coordinator spreads a group's partitions over its members.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Assignor {
    /// Per topic, contiguous ranges of partitions (eager: every member gives
    /// up everything at each rebalance).
    #[default]
    Range,
    /// All partitions dealt out one by one (eager).
    RoundRobin,
    /// Balanced, and members keep what they own where they can; a rebalance
    /// only stops the partitions that move (incremental).
    CooperativeSticky,
}

impl Assignor {
    /// The name on the wire (`JoinGroupRequest.assignor`).
    pub fn name(self) -> &'static str {
        match self {
            Assignor::Range => "range",
            Assignor::RoundRobin => "roundrobin",
            Assignor::CooperativeSticky => "cooperative-sticky",
        }
    }

    /// Members keep consuming what they own during a rebalance.
    pub fn is_cooperative(self) -> bool {
        self == Assignor::CooperativeSticky
    }
}

impl FromStr for Assignor {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "range" => Ok(Assignor::Range),
            "roundrobin" | "round-robin" => Ok(Assignor::RoundRobin),
            "cooperative-sticky" => Ok(Assignor::CooperativeSticky),
            other => Err(format!("unknown assignor '{other}': use range, roundrobin or cooperative-sticky")),
        }
    }
}

impl fmt::Display for Assignor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a group member starts in a partition the group has no committed
/// offset for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum OffsetReset {
    /// The first offset still stored.
    Earliest,
    /// Only records produced from now on.
    #[default]
    Latest,
}

impl OffsetReset {
    pub(crate) fn spec(self) -> OffsetSpec {
        match self {
            OffsetReset::Earliest => OffsetSpec::Earliest,
            OffsetReset::Latest => OffsetSpec::Latest,
        }
    }
}

impl FromStr for OffsetReset {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "earliest" => Ok(OffsetReset::Earliest),
            "latest" => Ok(OffsetReset::Latest),
            other => Err(format!("unknown offset reset '{other}': use earliest or latest")),
        }
    }
}

/// One partition of one topic.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: u32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: u32) -> Self {
        TopicPartition { topic: topic.into(), partition }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// What a new assignment changes for a member.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Changes {
    /// Owned before, not any more: commit, then stop.
    pub revoked: Vec<TopicPartition>,
    /// New to this member: find where to start.
    pub assigned: Vec<TopicPartition>,
}

/// old − new and new − old, both sorted.
pub(crate) fn changes(old: &BTreeSet<TopicPartition>, new: &BTreeSet<TopicPartition>) -> Changes {
    Changes {
        revoked: old.difference(new).cloned().collect(),
        assigned: new.difference(old).cloned().collect(),
    }
}

/// Partitions grouped by topic, as requests carry them.
pub(crate) fn to_wire<'a>(tps: impl IntoIterator<Item = &'a TopicPartition>) -> Vec<v1::TopicPartitions> {
    let mut by_topic: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for tp in tps {
        by_topic.entry(&tp.topic).or_default().push(tp.partition);
    }
    by_topic
        .into_iter()
        .map(|(topic, mut partitions)| {
            partitions.sort_unstable();
            partitions.dedup();
            v1::TopicPartitions { topic: topic.to_string(), partitions }
        })
        .collect()
}

pub(crate) fn from_wire(groups: &[v1::TopicPartitions]) -> BTreeSet<TopicPartition> {
    groups
        .iter()
        .flat_map(|g| g.partitions.iter().map(|&p| TopicPartition::new(g.topic.clone(), p)))
        .collect()
}

/// Where each of `partitions` starts: the committed offset where there is
/// one (0 or more), and the partitions left for the reset policy.
pub(crate) fn starting_positions(
    partitions: &[TopicPartition],
    committed: &[v1::OffsetEntry],
) -> (Vec<(TopicPartition, i64)>, Vec<TopicPartition>) {
    let mut known = Vec::new();
    let mut reset = Vec::new();
    for tp in partitions {
        let found = committed.iter().find(|e| e.topic == tp.topic && e.partition == tp.partition);
        match found {
            Some(e) if e.offset >= 0 => known.push((tp.clone(), e.offset)),
            _ => reset.push(tp.clone()),
        }
    }
    (known, reset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(topic: &str, partition: u32) -> TopicPartition {
        TopicPartition::new(topic, partition)
    }

    #[test]
    fn assignor_names_parse_and_print() {
        for a in [Assignor::Range, Assignor::RoundRobin, Assignor::CooperativeSticky] {
            assert_eq!(a.name().parse::<Assignor>(), Ok(a));
            assert_eq!(a.to_string(), a.name());
        }
        assert_eq!("Cooperative-Sticky".parse::<Assignor>(), Ok(Assignor::CooperativeSticky));
        assert_eq!(" round-robin ".parse::<Assignor>(), Ok(Assignor::RoundRobin));
        assert!("sticky"
            .parse::<Assignor>()
            .unwrap_err()
            .contains("range, roundrobin or cooperative-sticky"));
        assert_eq!(Assignor::default(), Assignor::Range);
        assert!(Assignor::CooperativeSticky.is_cooperative());
        assert!(!Assignor::Range.is_cooperative() && !Assignor::RoundRobin.is_cooperative());
    }

    #[test]
    fn offset_reset_parses() {
        assert_eq!("earliest".parse::<OffsetReset>(), Ok(OffsetReset::Earliest));
        assert_eq!("LATEST".parse::<OffsetReset>(), Ok(OffsetReset::Latest));
        assert!("none".parse::<OffsetReset>().is_err());
        assert_eq!(OffsetReset::default(), OffsetReset::Latest);
        assert_eq!(OffsetReset::Earliest.spec(), OffsetSpec::Earliest);
        assert_eq!(OffsetReset::Latest.spec(), OffsetSpec::Latest);
    }

    #[test]
    fn cooperative_diff_keeps_what_stays() {
        let old: BTreeSet<_> = [tp("a", 0), tp("a", 1), tp("b", 0)].into_iter().collect();
        let new: BTreeSet<_> = [tp("a", 1), tp("b", 0), tp("b", 1), tp("c", 0)].into_iter().collect();
        let c = changes(&old, &new);
        assert_eq!(c.revoked, vec![tp("a", 0)]);
        assert_eq!(c.assigned, vec![tp("b", 1), tp("c", 0)]);
        // Eager: everything was given up before rejoining.
        let c = changes(&BTreeSet::new(), &new);
        assert!(c.revoked.is_empty());
        assert_eq!(c.assigned.len(), 4);
        assert_eq!(changes(&new, &new), Changes::default());
        let gone = changes(&old, &BTreeSet::new());
        assert_eq!(gone.revoked.len(), 3);
    }

    #[test]
    fn partitions_round_trip_through_the_wire_form() {
        let set: BTreeSet<_> = [tp("b", 2), tp("a", 1), tp("b", 0), tp("a", 0)].into_iter().collect();
        let wire = to_wire(&set);
        assert_eq!(wire.len(), 2);
        assert_eq!((wire[0].topic.as_str(), wire[0].partitions.as_slice()), ("a", &[0, 1][..]));
        assert_eq!((wire[1].topic.as_str(), wire[1].partitions.as_slice()), ("b", &[0, 2][..]));
        assert_eq!(from_wire(&wire), set);
        assert!(to_wire(&BTreeSet::new()).is_empty());
    }

    #[test]
    fn committed_offsets_win_and_the_rest_reset() {
        let entry = |topic: &str, partition, offset| v1::OffsetEntry {
            topic: topic.into(),
            partition,
            offset,
            metadata: String::new(),
        };
        let parts = [tp("t", 0), tp("t", 1), tp("t", 2), tp("u", 0)];
        let committed = [entry("t", 0, 42), entry("t", 1, -1), entry("u", 0, 0), entry("x", 9, 5)];
        let (known, reset) = starting_positions(&parts, &committed);
        assert_eq!(known, vec![(tp("t", 0), 42), (tp("u", 0), 0)]);
        assert_eq!(reset, vec![tp("t", 1), tp("t", 2)]);
    }

    #[test]
    fn topic_partitions_sort_by_topic_then_partition() {
        let mut v = vec![tp("b", 0), tp("a", 10), tp("a", 2)];
        v.sort();
        assert_eq!(v, vec![tp("a", 2), tp("a", 10), tp("b", 0)]);
        assert_eq!(tp("orders", 3).to_string(), "orders-3");
    }
}
