//! Partition assignment strategies, computed by the coordinator: `range`,
//! `roundrobin` and `cooperative-sticky`. Pure functions of the members'
//! subscriptions, the topics' partition counts and (for sticky) what each
//! member owns now.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// One partition of one topic.
pub type Tp = (String, u32);

pub const RANGE: &str = "range";
pub const ROUND_ROBIN: &str = "roundrobin";
pub const COOPERATIVE_STICKY: &str = "cooperative-sticky";

pub fn is_known(name: &str) -> bool {
    matches!(name, RANGE | ROUND_ROBIN | COOPERATIVE_STICKY)
}

/// Whether members keep their partitions across a rebalance (and so must
/// not have a moved partition handed on before they gave it up).
pub fn is_cooperative(name: &str) -> bool {
    name == COOPERATIVE_STICKY
}

/// A member as the assignor sees it.
pub struct MemberSubscription<'a> {
    pub id: &'a str,
    pub topics: &'a [String],
    pub owned: &'a [Tp],
}

/// Assigns every partition of every subscribed topic to exactly one member
/// subscribed to its topic. `partitions`: topic → partition count.
pub fn assign(
    strategy: &str,
    members: &[MemberSubscription<'_>],
    partitions: &BTreeMap<String, u32>,
) -> BTreeMap<String, Vec<Tp>> {
    let mut out: BTreeMap<String, Vec<Tp>> = members.iter().map(|m| (m.id.to_string(), Vec::new())).collect();
    match strategy {
        ROUND_ROBIN => round_robin(members, partitions, &mut out),
        COOPERATIVE_STICKY => sticky(members, partitions, &mut out),
        _ => range(members, partitions, &mut out),
    }
    for v in out.values_mut() {
        v.sort();
    }
    out
}

fn subscribers<'a>(members: &'a [MemberSubscription<'a>], topic: &str) -> Vec<&'a str> {
    let mut ids: Vec<&str> =
        members.iter().filter(|m| m.topics.iter().any(|t| t == topic)).map(|m| m.id).collect();
    ids.sort_unstable();
    ids
}

/// Per topic, contiguous ranges; the first `count % n` members get one more.
fn range(
    members: &[MemberSubscription<'_>],
    partitions: &BTreeMap<String, u32>,
    out: &mut BTreeMap<String, Vec<Tp>>,
) {
    for (topic, &count) in partitions {
        let subs = subscribers(members, topic);
        if subs.is_empty() {
            continue;
        }
        let n = subs.len() as u32;
        let (base, extra) = (count / n, count % n);
        let mut next = 0;
        for (i, id) in subs.iter().enumerate() {
            let take = base + u32::from((i as u32) < extra);
            for p in next..next + take {
                out.entry(id.to_string()).or_default().push((topic.clone(), p));
            }
            next += take;
        }
    }
}

/// All partitions in (topic, partition) order dealt out one by one to the
/// members subscribed to each topic.
fn round_robin(
    members: &[MemberSubscription<'_>],
    partitions: &BTreeMap<String, u32>,
    out: &mut BTreeMap<String, Vec<Tp>>,
) {
    let mut all: Vec<&str> = members.iter().map(|m| m.id).collect();
    all.sort_unstable();
    let mut turn = 0usize;
    for (topic, &count) in partitions {
        let subs: BTreeSet<&str> = subscribers(members, topic).into_iter().collect();
        if subs.is_empty() {
            continue;
        }
        for p in 0..count {
            while !subs.contains(all[turn % all.len()]) {
                turn += 1;
            }
            out.entry(all[turn % all.len()].to_string()).or_default().push((topic.clone(), p));
            turn += 1;
        }
    }
}

/// Balanced like round-robin, but every member keeps as much of what it owns
/// as its fair share allows, so a rebalance moves as few partitions as it can.
fn sticky(
    members: &[MemberSubscription<'_>],
    partitions: &BTreeMap<String, u32>,
    out: &mut BTreeMap<String, Vec<Tp>>,
) {
    let wanted: BTreeSet<Tp> = partitions
        .iter()
        .filter(|(t, _)| !subscribers(members, t).is_empty())
        .flat_map(|(t, &c)| (0..c).map(move |p| (t.clone(), p)))
        .collect();
    let n = members.len().max(1);
    let (base, extra) = (wanted.len() / n, wanted.len() % n);
    // Members that own more get the larger quotas: fewer moves.
    let mut order: Vec<&MemberSubscription<'_>> = members.iter().collect();
    order.sort_by(|a, b| b.owned.len().cmp(&a.owned.len()).then(a.id.cmp(b.id)));
    let quota: HashMap<&str, usize> =
        order.iter().enumerate().map(|(i, m)| (m.id, base + usize::from(i < extra))).collect();

    let mut taken: BTreeSet<Tp> = BTreeSet::new();
    for m in &order {
        let mine = out.entry(m.id.to_string()).or_default();
        for tp in m.owned {
            if mine.len() >= quota[m.id] {
                break;
            }
            let subscribed = m.topics.contains(&tp.0);
            if subscribed && wanted.contains(tp) && taken.insert(tp.clone()) {
                mine.push(tp.clone());
            }
        }
    }
    for tp in wanted.iter().filter(|tp| !taken.contains(*tp)) {
        let eligible = members.iter().filter(|m| m.topics.contains(&tp.0));
        // Below quota first, then the least loaded; ties by id.
        let best = eligible.min_by_key(|m| {
            let have = out.get(m.id).map_or(0, Vec::len);
            (have >= quota[m.id], have, m.id)
        });
        if let Some(m) = best {
            out.entry(m.id.to_string()).or_default().push(tp.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
        pairs.iter().map(|(t, c)| (t.to_string(), *c)).collect()
    }

    fn check_exclusive_and_complete(a: &BTreeMap<String, Vec<Tp>>, partitions: &BTreeMap<String, u32>) {
        let mut seen = BTreeSet::new();
        for tps in a.values() {
            for tp in tps {
                assert!(seen.insert(tp.clone()), "{tp:?} assigned twice: {a:?}");
            }
        }
        let total: u32 = partitions.values().sum();
        assert_eq!(seen.len() as u32, total, "{a:?}");
    }

    #[test]
    fn range_splits_contiguously() {
        let t = vec!["t".to_string()];
        let m = [
            MemberSubscription { id: "a", topics: &t, owned: &[] },
            MemberSubscription { id: "b", topics: &t, owned: &[] },
        ];
        let p = topics(&[("t", 5)]);
        let a = assign(RANGE, &m, &p);
        assert_eq!(a["a"], vec![("t".into(), 0), ("t".into(), 1), ("t".into(), 2)]);
        assert_eq!(a["b"], vec![("t".into(), 3), ("t".into(), 4)]);
    }

    #[test]
    fn more_members_than_partitions_leaves_some_idle() {
        let t = vec!["t".to_string()];
        let m: Vec<_> =
            ["a", "b", "c", "d"].iter().map(|id| MemberSubscription { id, topics: &t, owned: &[] }).collect();
        let p = topics(&[("t", 2)]);
        for s in [RANGE, ROUND_ROBIN, COOPERATIVE_STICKY] {
            let a = assign(s, &m, &p);
            check_exclusive_and_complete(&a, &p);
            assert_eq!(a.values().filter(|v| v.is_empty()).count(), 2, "{s}: {a:?}");
        }
    }

    #[test]
    fn every_strategy_is_exclusive_complete_and_balanced() {
        let t = vec!["x".to_string(), "y".to_string()];
        let ids = ["m1", "m2", "m3"];
        let m: Vec<_> = ids.iter().map(|id| MemberSubscription { id, topics: &t, owned: &[] }).collect();
        let p = topics(&[("x", 6), ("y", 4)]);
        for s in [ROUND_ROBIN, COOPERATIVE_STICKY] {
            let a = assign(s, &m, &p);
            check_exclusive_and_complete(&a, &p);
            let sizes: Vec<usize> = a.values().map(Vec::len).collect();
            assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1, "{s}: {a:?}");
        }
        check_exclusive_and_complete(&assign(RANGE, &m, &p), &p);
    }

    #[test]
    fn sticky_keeps_what_members_own() {
        let t = vec!["t".to_string()];
        let p = topics(&[("t", 6)]);
        let owned_a: Vec<Tp> = (0..3).map(|i| ("t".to_string(), i)).collect();
        let owned_b: Vec<Tp> = (3..6).map(|i| ("t".to_string(), i)).collect();
        // A third member joins: each old member gives up exactly one.
        let m = [
            MemberSubscription { id: "a", topics: &t, owned: &owned_a },
            MemberSubscription { id: "b", topics: &t, owned: &owned_b },
            MemberSubscription { id: "c", topics: &t, owned: &[] },
        ];
        let a = assign(COOPERATIVE_STICKY, &m, &p);
        check_exclusive_and_complete(&a, &p);
        assert_eq!(a["c"].len(), 2);
        assert!(a["a"].iter().all(|tp| owned_a.contains(tp)));
        assert!(a["b"].iter().all(|tp| owned_b.contains(tp)));
    }

    #[test]
    fn only_subscribers_get_a_topic() {
        let tx = vec!["x".to_string()];
        let ty = vec!["y".to_string()];
        let m = [
            MemberSubscription { id: "a", topics: &tx, owned: &[] },
            MemberSubscription { id: "b", topics: &ty, owned: &[] },
        ];
        let p = topics(&[("x", 3), ("y", 2)]);
        for s in [RANGE, ROUND_ROBIN, COOPERATIVE_STICKY] {
            let a = assign(s, &m, &p);
            check_exclusive_and_complete(&a, &p);
            assert!(a["a"].iter().all(|tp| tp.0 == "x"), "{s}: {a:?}");
            assert!(a["b"].iter().all(|tp| tp.0 == "y"), "{s}: {a:?}");
        }
    }
}
