//! Where a new partition's replicas go.
//!
//! Kafka's rack-aware round robin: brokers are ordered so that consecutive
//! ones alternate racks, each partition starts one broker further along (so
//! preferred leaders spread evenly), and its followers are the next brokers
//! in that order — which puts the replicas of a partition on as many
//! different racks as there are.

use std::collections::BTreeMap;

/// `partitions` replica lists of `rf` distinct brokers each, for partitions
/// numbered from `first`. `brokers` are (id, rack); fenced brokers should not
/// be passed. Err when there are fewer brokers than `rf`.
pub fn assign(
    brokers: &[(i32, String)],
    first: u32,
    partitions: u32,
    rf: u32,
) -> Result<Vec<Vec<i32>>, String> {
    let rf = rf.max(1) as usize;
    if brokers.len() < rf {
        return Err(format!(
            "replication factor {rf} needs {rf} live brokers; the cluster has {} live",
            brokers.len()
        ));
    }
    let order = rack_alternating(brokers);
    let n = order.len();
    Ok((0..partitions)
        .map(|i| {
            let start = (first + i) as usize % n;
            (0..rf).map(|k| order[(start + k) % n]).collect()
        })
        .collect())
}

/// Brokers ordered so consecutive ones are on different racks where
/// possible: one from each rack in turn.
fn rack_alternating(brokers: &[(i32, String)]) -> Vec<i32> {
    let mut by_rack: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (id, rack) in brokers {
        by_rack.entry(rack.as_str()).or_default().push(*id);
    }
    for ids in by_rack.values_mut() {
        ids.sort_unstable();
    }
    let mut order = Vec::with_capacity(brokers.len());
    let mut round = 0;
    while order.len() < brokers.len() {
        for ids in by_rack.values() {
            if let Some(id) = ids.get(round) {
                order.push(*id);
            }
        }
        round += 1;
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brokers(racks: &[&str]) -> Vec<(i32, String)> {
        racks.iter().enumerate().map(|(i, r)| (i as i32, r.to_string())).collect()
    }

    #[test]
    fn replicas_are_distinct_and_leaders_spread() {
        let a = assign(&brokers(&["", "", ""]), 0, 6, 3).unwrap();
        for r in &a {
            let mut s = r.clone();
            s.sort_unstable();
            s.dedup();
            assert_eq!(s.len(), 3, "{r:?}");
        }
        let leaders: Vec<i32> = a.iter().map(|r| r[0]).collect();
        assert_eq!(leaders, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn each_partition_spans_racks() {
        // Racks a, a, b, b, c, c: three racks, so an RF-3 partition gets one
        // replica in each.
        let b = brokers(&["a", "a", "b", "b", "c", "c"]);
        for r in assign(&b, 0, 12, 3).unwrap() {
            let mut racks: Vec<&str> = r.iter().map(|id| b[*id as usize].1.as_str()).collect();
            racks.sort_unstable();
            racks.dedup();
            assert_eq!(racks.len(), 3, "{r:?}");
        }
    }

    #[test]
    fn too_few_brokers_is_refused() {
        assert!(assign(&brokers(&["", ""]), 0, 1, 3).unwrap_err().contains("needs 3"));
    }
}
