//! What a group member subscribes to — topic names or a pattern — and the
//! topics that currently match, with their partition counts.
//!
//! The coordinator assigns the partitions the topics have at the rebalance,
//! so a member that sees the set change (a topic matching the pattern was
//! created, a topic grew) must rejoin for the group to pick it up. The
//! consumer re-reads the cluster's topics every few seconds for that.

use std::collections::BTreeMap;
use std::time::Duration;

use regex::Regex;

use crate::cluster::Cluster;
use crate::error::{Error, Result};

/// How often the topics are read again.
pub(crate) const RECHECK: Duration = Duration::from_secs(5);

/// Topics as the member sees them: name → partition count.
pub(crate) type View = BTreeMap<String, u32>;

#[derive(Debug, Clone)]
pub(crate) enum Subscription {
    Topics(Vec<String>),
    /// Matched against whole topic names; internal topics (`__…`) never
    /// match.
    Pattern(Regex),
}

impl Subscription {
    /// A pattern subscription; the regex must match a whole topic name.
    pub fn pattern(regex: &str) -> Result<Subscription> {
        Regex::new(&format!("^(?:{regex})$"))
            .map(Subscription::Pattern)
            .map_err(|e| Error::InvalidArgument(format!("invalid topic pattern '{regex}': {}", one_line(&e))))
    }

    /// The topics of `all` (every topic the cluster has) this subscription
    /// takes.
    pub fn select(&self, all: &View) -> View {
        all.iter().filter(|(name, _)| self.matches(name)).map(|(n, c)| (n.clone(), *c)).collect()
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            Subscription::Topics(names) => names.iter().any(|n| n == name),
            Subscription::Pattern(re) => !name.starts_with("__") && re.is_match(name),
        }
    }
}

fn one_line(e: &regex::Error) -> String {
    crate::error::one_line(&e.to_string())
}

/// Every topic of the cluster with its partition count, from fresh
/// metadata.
pub(crate) async fn all_topics(cluster: &Cluster) -> Result<View> {
    cluster.refresh_now().await?;
    Ok(cluster.topics().into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(names: &[(&str, u32)]) -> View {
        names.iter().map(|(n, c)| (n.to_string(), *c)).collect()
    }

    #[test]
    fn names_select_exactly_those_topics() {
        let all = view(&[("a", 1), ("b", 3), ("c", 2)]);
        let s = Subscription::Topics(vec!["b".into(), "x".into()]);
        assert_eq!(s.select(&all), view(&[("b", 3)]));
    }

    #[test]
    fn patterns_match_whole_names_and_skip_internal_topics() {
        let all =
            view(&[("orders-eu", 2), ("orders-us", 1), ("old-orders-eu", 1), ("__consumer_offsets", 50)]);
        let s = Subscription::pattern("orders-.*").unwrap();
        assert_eq!(s.select(&all), view(&[("orders-eu", 2), ("orders-us", 1)]));
        let everything = Subscription::pattern(".*").unwrap();
        assert!(!everything.select(&all).contains_key("__consumer_offsets"));
        let either = Subscription::pattern("orders-eu|orders-us").unwrap();
        assert_eq!(either.select(&all).len(), 2);
    }

    #[test]
    fn a_bad_pattern_is_a_clear_error() {
        let e = Subscription::pattern("orders-(").unwrap_err();
        assert!(e.to_string().starts_with("invalid argument: invalid topic pattern 'orders-('"), "{e}");
        assert_eq!(e.to_string().lines().count(), 1);
    }
}
