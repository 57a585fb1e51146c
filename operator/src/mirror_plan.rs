//! Checking a MirrorLink against its clusters and against every other link.
//!
//! Copying records is not built yet (it comes with the mirroring issue), so
//! the verdict for a valid link is `Stalled` with reason
//! `MirroringNotAvailable`: the operator never says Ready for a link that
//! copies nothing. What it does check now is what a person must fix: missing
//! clusters, and `Identity` naming on a link whose graph of links has a
//! cycle (records would be copied around forever, since the destination
//! topic has the same name as the source one).

use std::collections::{BTreeMap, BTreeSet};

use tributary_crds::mirror_link::Naming;
use tributary_crds::MirrorLink;

use crate::topic_plan::{Outcome, Verdict};

/// A node of the mirror graph: `namespace/name` of a Cluster, or a bootstrap address.
pub fn source_node(link: &MirrorLink) -> Option<String> {
    let ns = link.metadata.namespace.as_deref().unwrap_or_default();
    match (&link.spec.source.cluster_ref, &link.spec.source.bootstrap) {
        (Some(c), _) => Some(format!("{}/{}", c.namespace.as_deref().unwrap_or(ns), c.name)),
        (None, Some(b)) => Some(b.clone()),
        (None, None) => None,
    }
}

/// `namespace/name` of the destination Cluster.
pub fn destination_node(link: &MirrorLink) -> String {
    let ns = link.metadata.namespace.as_deref().unwrap_or_default();
    format!("{ns}/{}", link.spec.destination.cluster_ref.name)
}

/// Whether `link` lies on a cycle of the graph formed by `all` links
/// (which may or may not include `link` itself).
pub fn on_cycle(link: &MirrorLink, all: &[MirrorLink]) -> bool {
    let Some(from) = source_node(link) else { return false };
    let to = destination_node(link);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for l in all {
        if let Some(s) = source_node(l) {
            edges.entry(s).or_default().insert(destination_node(l));
        }
    }
    // Is `from` reachable from `to`?
    let mut seen = BTreeSet::new();
    let mut stack = vec![to];
    while let Some(node) = stack.pop() {
        if node == from {
            return true;
        }
        if seen.insert(node.clone()) {
            stack.extend(edges.get(&node).into_iter().flatten().cloned());
        }
    }
    false
}

/// What the operator knows of the link's clusters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClustersSeen {
    /// The source Cluster exists (true for a bootstrap address).
    pub source: bool,
    pub destination: bool,
}

/// The verdict for one MirrorLink.
pub fn verdict(link: &MirrorLink, all: &[MirrorLink], seen: ClustersSeen) -> Verdict {
    let stalled = |reason, message: String| Verdict { outcome: Outcome::Stalled, reason, message };
    let source = source_node(link).unwrap_or_default();
    if !seen.destination {
        return stalled(
            "DestinationClusterNotFound",
            format!("destination Cluster {} does not exist", destination_node(link)),
        );
    }
    if !seen.source {
        return stalled("SourceClusterNotFound", format!("source Cluster {source} does not exist"));
    }
    if source == destination_node(link) {
        return stalled("SourceIsDestination", "a link cannot copy a cluster into itself".into());
    }
    if link.spec.naming == Naming::Identity && on_cycle(link, all) {
        return stalled(
            "MirrorCycle",
            format!(
                "naming Identity is refused: the MirrorLinks form a cycle through {source} and {}, so records \
                 would be copied around forever; use naming Prefix or remove a link of the cycle",
                destination_node(link)
            ),
        );
    }
    stalled(
        "MirroringNotAvailable",
        "the link is valid, but this version of the operator does not copy records yet".into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_crds::mirror_link::{
        MirrorDestination, MirrorSource, NamespacedClusterRef, StartPosition, TopicSelector,
    };
    use tributary_crds::topic::ClusterRef;
    use tributary_crds::MirrorLinkSpec;

    fn link(name: &str, from: &str, to: &str, naming: Naming) -> MirrorLink {
        let mut l = MirrorLink::new(
            name,
            MirrorLinkSpec {
                source: MirrorSource {
                    cluster_ref: Some(NamespacedClusterRef { name: from.into(), namespace: None }),
                    bootstrap: None,
                    alias: None,
                },
                destination: MirrorDestination { cluster_ref: ClusterRef { name: to.into() } },
                topics: TopicSelector { names: vec!["clicks".into()], ..TopicSelector::default() },
                naming,
                start_position: StartPosition::Earliest,
                paused: false,
            },
        );
        l.metadata.namespace = Some("ns".into());
        l
    }

    const ALL_THERE: ClustersSeen = ClustersSeen { source: true, destination: true };

    #[test]
    fn fan_in_with_identity_naming_is_acyclic() {
        let a = link("a", "local-a", "agg", Naming::Identity);
        let b = link("b", "local-b", "agg", Naming::Identity);
        let all = [a.clone(), b];
        assert!(!on_cycle(&a, &all));
        assert_eq!(verdict(&a, &all, ALL_THERE).reason, "MirroringNotAvailable");
    }

    #[test]
    fn identity_on_a_cycle_is_refused_prefix_is_not() {
        let ab = link("ab", "a", "b", Naming::Identity);
        let bc = link("bc", "b", "c", Naming::Prefix);
        let ca = link("ca", "c", "a", Naming::Prefix);
        let all = [ab.clone(), bc.clone(), ca];
        assert!(on_cycle(&ab, &all));
        let v = verdict(&ab, &all, ALL_THERE);
        assert_eq!((v.outcome, v.reason), (Outcome::Stalled, "MirrorCycle"));
        assert_eq!(verdict(&bc, &all, ALL_THERE).reason, "MirroringNotAvailable");
        // Without the closing link there is no cycle.
        assert!(!on_cycle(&ab, &all[..2]));
    }

    #[test]
    fn cross_namespace_sources_are_distinct_nodes() {
        let mut l = link("x", "a", "a", Naming::Prefix);
        if let Some(c) = l.spec.source.cluster_ref.as_mut() {
            c.namespace = Some("edge".into());
        }
        assert_eq!(source_node(&l).as_deref(), Some("edge/a"));
        assert_eq!(verdict(&l, &[l.clone()], ALL_THERE).reason, "MirroringNotAvailable");
        let same = link("y", "a", "a", Naming::Prefix);
        assert_eq!(verdict(&same, &[], ALL_THERE).reason, "SourceIsDestination");
    }

    #[test]
    fn missing_clusters_are_reported_first() {
        let l = link("a", "local-a", "agg", Naming::Prefix);
        let v = verdict(&l, &[], ClustersSeen { source: true, destination: false });
        assert_eq!(v.reason, "DestinationClusterNotFound");
        let v = verdict(&l, &[], ClustersSeen { source: false, destination: true });
        assert_eq!(v.reason, "SourceClusterNotFound");
        assert!(v.message.contains("ns/local-a"));
    }
}
