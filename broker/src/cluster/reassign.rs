//! Planning reassignments: a new replication factor for a topic, or every
//! replica off one broker (drain). Pure functions of the metadata; the
//! controller commits the plans as `Reassign` commands.
//!
//! New replicas go to the live brokers holding the fewest replicas, on racks
//! the partition does not use yet where possible. A smaller replication
//! factor keeps the leader and the in-sync replicas first.

use std::collections::BTreeMap;

use super::state::MetadataState;

/// Replicas per live broker, cluster-wide.
fn load(md: &MetadataState) -> BTreeMap<i32, usize> {
    let mut load: BTreeMap<i32, usize> = md.live_brokers().map(|b| (b.id, 0)).collect();
    for t in md.topics.values() {
        for p in &t.partitions {
            for r in p.target.as_ref().unwrap_or(&p.replicas) {
                if let Some(n) = load.get_mut(r) {
                    *n += 1;
                }
            }
        }
    }
    load
}

/// The least-loaded live broker not in `used`, preferring a rack none of
/// `used` is on. Counts the pick in `load`.
fn pick(md: &MetadataState, load: &mut BTreeMap<i32, usize>, used: &[i32]) -> Option<i32> {
    let rack = |id: &i32| md.brokers.get(id).map(|b| b.rack.clone()).unwrap_or_default();
    let used_racks: Vec<String> = used.iter().map(rack).collect();
    let best = load
        .iter()
        .filter(|(id, _)| !used.contains(id))
        .min_by_key(|(id, n)| (used_racks.contains(&rack(id)), **n, **id))
        .map(|(id, _)| *id)?;
    *load.entry(best).or_default() += 1;
    Some(best)
}

/// Targets that give every partition of `topic` `rf` replicas.
pub fn replication_factor(md: &MetadataState, topic: &str, rf: u32) -> Result<Vec<(u32, Vec<i32>)>, String> {
    let t = md.topic(topic).ok_or_else(|| format!("unknown topic '{topic}'"))?;
    let rf = rf as usize;
    if rf == 0 {
        return Err("the replication factor must be at least 1".into());
    }
    let live = md.live_brokers().count();
    if rf > live {
        return Err(format!("replication factor {rf} needs {rf} live brokers; {live} are live"));
    }
    let min_isr = t.configs.get("min.insync.replicas").and_then(|v| v.parse::<usize>().ok()).unwrap_or(1);
    if rf < min_isr {
        return Err(format!(
            "replication factor {rf} is below the topic's min.insync.replicas={min_isr}; lower that first"
        ));
    }
    let mut load = load(md);
    let mut plans = Vec::new();
    for (i, p) in t.partitions.iter().enumerate() {
        match &p.target {
            // Asked again (an operator that could not tell whether its
            // first call took effect): nothing more to start.
            Some(target) if target.len() == rf => continue,
            Some(_) => {
                return Err(format!("{topic}-{i} is being reassigned already; wait until it finishes"));
            }
            None => {}
        }
        let mut target: Vec<i32> = Vec::new();
        // Keep the leader, then in-sync replicas, then the others.
        for r in std::iter::once(&p.leader)
            .chain(p.replicas.iter().filter(|r| p.isr.contains(r)))
            .chain(p.replicas.iter())
        {
            if *r >= 0 && p.replicas.contains(r) && !target.contains(r) && target.len() < rf {
                target.push(*r);
            }
        }
        while target.len() < rf {
            let Some(b) = pick(md, &mut load, &target) else {
                return Err(format!("no live broker left to place a replica of {topic}-{i}"));
            };
            target.push(b);
        }
        // Preferred leader stays first as it was where possible.
        if let Some(first) = p.replicas.first() {
            if let Some(pos) = target.iter().position(|r| r == first) {
                target.swap(0, pos);
            }
        }
        if target != p.replicas {
            plans.push((i as u32, target));
        }
    }
    Ok(plans)
}

/// Targets that move every replica off `node`.
pub fn drain(md: &MetadataState, node: i32) -> Result<Vec<(String, u32, Vec<i32>)>, String> {
    if !md.brokers.contains_key(&node) {
        return Err(format!("broker {node} is not in the cluster"));
    }
    let mut load = load(md);
    load.remove(&node);
    let mut plans = Vec::new();
    for (name, t) in &md.topics {
        for (i, p) in t.partitions.iter().enumerate() {
            let current = p.target.as_ref().unwrap_or(&p.replicas);
            if !current.contains(&node) {
                continue;
            }
            if p.target.is_some() {
                return Err(format!("{name}-{i} is being reassigned already; drain again once it finishes"));
            }
            let mut target: Vec<i32> = current.iter().copied().filter(|r| *r != node).collect();
            let Some(b) = pick(
                md,
                &mut load,
                &current.iter().copied().chain(std::iter::once(node)).collect::<Vec<_>>(),
            ) else {
                return Err(format!("no other live broker can take {name}-{i}'s replica from broker {node}"));
            };
            // The replacement takes the drained broker's place in the order.
            let pos = current.iter().position(|r| *r == node).unwrap_or(0).min(target.len());
            target.insert(pos, b);
            plans.push((name.clone(), i as u32, target));
        }
    }
    Ok(plans)
}

#[cfg(test)]
mod tests {
    use super::super::state::{Command, PartitionRecord, TopicRecord};
    use super::*;

    fn cluster(n: i32, topic_replicas: Vec<Vec<i32>>) -> MetadataState {
        let mut s = MetadataState::default();
        for id in 0..n {
            s.apply(&Command::Register {
                id,
                address: format!("b{id}"),
                rack: String::new(),
                incarnation: 1,
                kafka_address: String::new(),
                http_address: String::new(),
            });
        }
        s.apply(&Command::CreateTopic {
            topic: TopicRecord {
                name: "t".into(),
                id: "x".into(),
                configs: Default::default(),
                partitions: topic_replicas
                    .into_iter()
                    .map(|r| PartitionRecord {
                        replicas: r,
                        leader: -1,
                        leader_epoch: 0,
                        isr: vec![],
                        target: None,
                    })
                    .collect(),
            },
        });
        s
    }

    #[test]
    fn growing_adds_distinct_least_loaded_brokers_and_shrinking_keeps_the_leader() {
        let s = cluster(3, vec![vec![0], vec![1]]);
        let grow = replication_factor(&s, "t", 3).unwrap();
        for (_, target) in &grow {
            let mut d = target.clone();
            d.sort_unstable();
            assert_eq!(d, vec![0, 1, 2]);
        }
        assert_eq!(grow[0].1[0], 0, "the preferred leader stays first");
        let s = cluster(3, vec![vec![2, 0, 1]]);
        let shrink = replication_factor(&s, "t", 2).unwrap();
        assert_eq!(shrink, vec![(0, vec![2, 0])]);
        assert!(replication_factor(&s, "t", 4).unwrap_err().contains("live brokers"));
    }

    #[test]
    fn asking_again_for_a_change_in_progress_starts_nothing() {
        let mut s = cluster(3, vec![vec![0], vec![1]]);
        for (partition, target) in replication_factor(&s, "t", 3).unwrap() {
            s.apply(&Command::Reassign { topic: "t".into(), partition, target });
        }
        assert_eq!(replication_factor(&s, "t", 3).unwrap(), vec![]);
        // Another factor while one is in progress is still refused.
        assert!(replication_factor(&s, "t", 2).unwrap_err().contains("being reassigned"));
    }

    #[test]
    fn draining_replaces_the_broker_everywhere_and_refuses_when_it_cannot() {
        let s = cluster(4, vec![vec![0, 1, 2], vec![1, 2, 3]]);
        let plans = drain(&s, 1).unwrap();
        assert_eq!(plans.len(), 2);
        for (_, _, target) in &plans {
            assert!(!target.contains(&1));
            assert_eq!(target.len(), 3);
        }
        let s = cluster(3, vec![vec![0, 1, 2]]);
        assert!(drain(&s, 1).unwrap_err().contains("no other live broker"));
    }
}
