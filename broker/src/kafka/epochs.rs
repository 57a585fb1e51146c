//! OffsetForLeaderEpoch (KIP-101/KIP-320): a consumer that fetched records
//! of leader epoch E asks the current leader where E ends, to detect that
//! the log it read was truncated by a leader change (librdkafka does this
//! after every leader change before fetching again). Answered from the
//! epoch cache the replication layer keeps for follower truncation
//! (`log::epochs`), on the leader only, with Kafka's fencing of the
//! caller's `current_leader_epoch`.

use std::sync::Arc;

use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};

use super::errors;
use crate::replication::Role;
use crate::BrokerState;

/// Kafka's answer (`LeaderEpochFileCache.endOffsetFor`) for `requested`
/// over the cache `entries` ((epoch, start offset), oldest first) of a log
/// ending at `log_end`: the latest epoch ends at the log end; an older one
/// at the start of the next cached epoch, answered as the largest cached
/// epoch not above it (or the requested one itself when it is older than
/// every cached epoch); an undefined (-1) or unknown newer epoch gets
/// (-1, -1).
pub fn end_offset_for(entries: &[(i32, i64)], requested: i32, log_end: i64) -> (i32, i64) {
    const UNDEFINED: (i32, i64) = (-1, -1);
    let latest = entries.last().map(|(e, _)| *e);
    if requested < 0 {
        return UNDEFINED;
    }
    if latest == Some(requested) {
        return (requested, log_end);
    }
    let Some(&(_, higher_start)) = entries.iter().find(|(e, _)| *e > requested) else {
        return UNDEFINED;
    };
    match entries.iter().rev().find(|(e, _)| *e <= requested) {
        Some(&(floor, _)) => (floor, higher_start),
        None => (requested, higher_start),
    }
}

/// The answer for one partition: (error code, epoch, end offset).
fn answer(state: &BrokerState, topic: &str, partition: i32, current: i32, requested: i32) -> (i16, i32, i64) {
    let md = state.cluster.metadata();
    let exists = md.topic(topic).is_some_and(|t| partition >= 0 && (partition as usize) < t.partitions.len());
    if !exists {
        return (errors::UNKNOWN_TOPIC_OR_PARTITION, -1, -1);
    }
    let replica = state.replicas.replica(topic, partition as u32);
    match replica.as_ref().map(|r| r.role()) {
        // -1: the caller does not know the epoch, and is not fenced (Kafka).
        Some(Role::Leader { epoch }) if current < 0 || current == epoch => {
            let Some(r) = replica else { return (errors::NOT_LEADER_OR_FOLLOWER, -1, -1) };
            let (entries, end) = r.partition.with_log(|l| (l.epoch_entries(), l.log_end_offset()));
            let (e, o) = end_offset_for(&entries, requested, end);
            (errors::NONE, e, o)
        }
        Some(Role::Leader { epoch }) if current < epoch => (errors::FENCED_LEADER_EPOCH, -1, -1),
        Some(Role::Leader { .. }) => (errors::UNKNOWN_LEADER_EPOCH, -1, -1),
        _ => (errors::NOT_LEADER_OR_FOLLOWER, -1, -1),
    }
}

pub fn offset_for_leader_epoch(
    state: &Arc<BrokerState>,
    req: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let mut resp = OffsetForLeaderEpochResponse::default();
    for t in req.topics {
        let mut out = OffsetForLeaderTopicResult::default();
        for p in t.partitions {
            let (code, epoch, end) =
                answer(state, t.topic.0.as_str(), p.partition, p.current_leader_epoch, p.leader_epoch);
            let mut e = EpochEndOffset::default();
            e.partition = p.partition;
            e.error_code = code;
            e.leader_epoch = epoch;
            e.end_offset = end;
            out.partitions.push(e);
        }
        out.topic = t.topic;
        resp.topics.push(out);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::end_offset_for;

    #[test]
    fn end_offsets_follow_kafkas_epoch_cache() {
        // Epoch 1 from 0, epoch 3 from 40, epoch 5 from 70; the log ends at 100.
        let cache = [(1, 0), (3, 40), (5, 70)];
        assert_eq!(end_offset_for(&cache, 5, 100), (5, 100), "the latest epoch ends at the log end");
        assert_eq!(end_offset_for(&cache, 3, 100), (3, 70));
        assert_eq!(end_offset_for(&cache, 4, 100), (3, 70), "an uncached epoch: the largest below it");
        assert_eq!(end_offset_for(&cache, 0, 100), (0, 0), "older than every cached epoch");
        assert_eq!(end_offset_for(&cache, 6, 100), (-1, -1), "newer than every cached epoch");
        assert_eq!(end_offset_for(&cache, -1, 100), (-1, -1));
        assert_eq!(end_offset_for(&[], 2, 100), (-1, -1));
    }
}
