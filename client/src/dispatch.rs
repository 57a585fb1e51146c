//! Produce requests per leader: what the partitions' senders hand over for
//! one broker travels together, one request per leader per drain, as
//! Kafka's sender does.
//!
//! Each partition's sender (see `sender`) still owns its partition's order,
//! sequences and retries, and has at most one request's worth in flight;
//! it hands its records to [`Dispatcher::produce`] with the broker it
//! believes leads the partition and waits for its part of the answer. The
//! dispatcher keeps up to [`REQUESTS_PER_CONNECTION`] requests in flight per
//! connection to each leader; while they are all out, what arrives waits,
//! and when one comes back everything waiting for that leader leaves in the
//! next request. So under load requests grow instead of multiplying, and an
//! idle producer's record leaves at once.
//!
//! The broker validates a request as a whole before it stores anything, so
//! one partition's bad batch refuses the others' too: a merged request the
//! broker refuses is sent again partition by partition, and only the one at
//! fault gets the refusal.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::oneshot;
use tributary_proto::v1;

use crate::cluster::Cluster;
use crate::error::{Error, Recovery, Result};

/// Requests in flight per connection to one broker (Kafka's
/// `max.in.flight.requests.per.connection`).
pub(crate) const REQUESTS_PER_CONNECTION: usize = 5;
/// Record bytes one merged request carries at most (the broker takes 256
/// MiB messages; smaller requests keep latency even).
pub(crate) const MAX_REQUEST_BYTES: usize = 64 << 20;

/// One partition's records waiting for a request to its leader.
pub(crate) struct Submission {
    pub topic: Arc<str>,
    pub partition: u32,
    pub records: Bytes,
    reply: oneshot::Sender<Result<v1::PartitionProduceResponse>>,
}

/// One leader's requests: how many are out, and what waits for the next.
#[derive(Default)]
struct LeaderQueue {
    in_flight: usize,
    waiting: Vec<Submission>,
}

/// Hands partitions' records to their leaders, merging per leader.
pub(crate) struct Dispatcher {
    cluster: Arc<Cluster>,
    acks: i32,
    timeout: Duration,
    max_in_flight: usize,
    leaders: Mutex<HashMap<i32, LeaderQueue>>,
}

impl Dispatcher {
    pub fn new(cluster: Arc<Cluster>, acks: i32, timeout: Duration, connections: usize) -> Self {
        Dispatcher {
            cluster,
            acks,
            timeout,
            max_in_flight: REQUESTS_PER_CONNECTION * connections.max(1),
            leaders: Mutex::new(HashMap::new()),
        }
    }

    /// Sends `records` of `topic`-`partition` to broker `leader` (merged
    /// with what else goes there) and returns its part of the answer. A
    /// failure of the whole request (the connection broke, the broker
    /// refused it) comes back as the error.
    pub async fn produce(
        self: &Arc<Self>,
        leader: i32,
        topic: Arc<str>,
        partition: u32,
        records: Bytes,
    ) -> Result<v1::PartitionProduceResponse> {
        let (reply, answer) = oneshot::channel();
        let submission = Submission { topic, partition, records, reply };
        let start = {
            let mut leaders = self.leaders.lock();
            let queue = leaders.entry(leader).or_default();
            if queue.in_flight < self.max_in_flight {
                queue.in_flight += 1;
                Some(submission)
            } else {
                queue.waiting.push(submission);
                None
            }
        };
        if let Some(first) = start {
            tokio::spawn(self.clone().run(leader, vec![first]));
        }
        answer.await.map_err(|_| Error::Closed)?
    }

    /// One request slot of `leader`: sends, then takes whatever waited
    /// meanwhile as the next request, until nothing waits.
    async fn run(self: Arc<Self>, leader: i32, mut next: Vec<Submission>) {
        loop {
            self.send(leader, next).await;
            let mut leaders = self.leaders.lock();
            let Some(queue) = leaders.get_mut(&leader) else { return };
            if queue.waiting.is_empty() {
                queue.in_flight = queue.in_flight.saturating_sub(1);
                return;
            }
            next = take_drain(&mut queue.waiting, MAX_REQUEST_BYTES);
        }
    }

    /// One request for `subs`; every submission gets its answer.
    async fn send(&self, leader: i32, subs: Vec<Submission>) {
        let request = build_request(self.acks, self.timeout, &subs);
        match self.call(leader, request).await {
            Ok(response) => {
                for sub in subs {
                    let part = part_of(&response, &sub.topic, sub.partition);
                    let _ = sub.reply.send(part);
                }
            }
            // Nothing was stored for a request refused as a whole: each
            // partition alone learns whether the refusal was its own.
            Err(e) if subs.len() > 1 && e.recovery() == Recovery::Fail => {
                let alone = subs.into_iter().map(|sub| async move {
                    let request = build_request(self.acks, self.timeout, std::slice::from_ref(&sub));
                    let part = match self.call(leader, request).await {
                        Ok(response) => part_of(&response, &sub.topic, sub.partition),
                        Err(e) => Err(e),
                    };
                    let _ = sub.reply.send(part);
                });
                futures::future::join_all(alone).await;
            }
            Err(e) => {
                for sub in subs {
                    let _ = sub.reply.send(Err(e.clone()));
                }
            }
        }
    }

    async fn call(&self, leader: i32, request: v1::ProduceRequest) -> Result<v1::ProduceResponse> {
        let Some(conn) = self.cluster.connection(leader) else {
            return Err(Error::status(
                tonic::Code::Unavailable,
                format!("broker {leader} is not in the cluster metadata"),
            ));
        };
        let mut client = conn.log();
        let answer = conn.call("a produce request", self.timeout, client.produce(request)).await;
        if answer.as_ref().is_err_and(Error::is_transport) {
            self.cluster.broker_failed(leader);
        }
        answer
    }
}

/// The submissions the next request takes: the oldest first, up to about
/// `max_bytes` (always at least one), at most one per partition — a
/// partition never has two in flight, but the rule is kept here as well,
/// as one request with a partition twice would be stored in either order.
fn take_drain(waiting: &mut Vec<Submission>, max_bytes: usize) -> Vec<Submission> {
    let mut taken = Vec::new();
    let mut kept = Vec::new();
    let mut bytes = 0usize;
    for sub in waiting.drain(..) {
        let repeat = taken.iter().any(|t: &Submission| t.partition == sub.partition && t.topic == sub.topic);
        let full = !taken.is_empty() && bytes + sub.records.len() > max_bytes;
        if repeat || full {
            kept.push(sub);
        } else {
            bytes += sub.records.len();
            taken.push(sub);
        }
    }
    *waiting = kept;
    taken
}

/// One Produce request carrying every submission, grouped by topic in the
/// order they came.
fn build_request(acks: i32, timeout: Duration, subs: &[Submission]) -> v1::ProduceRequest {
    let mut topics: Vec<v1::TopicProduceData> = Vec::new();
    for sub in subs {
        let data = v1::PartitionProduceData { partition: sub.partition, records: sub.records.clone() };
        match topics.iter_mut().find(|t| *t.name == *sub.topic) {
            Some(t) => t.partitions.push(data),
            None => topics.push(v1::TopicProduceData { name: sub.topic.to_string(), partitions: vec![data] }),
        }
    }
    v1::ProduceRequest { acks, timeout_ms: u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX), topics }
}

/// A partition's part of a produce answer.
fn part_of(
    response: &v1::ProduceResponse,
    topic: &str,
    partition: u32,
) -> Result<v1::PartitionProduceResponse> {
    response
        .topics
        .iter()
        .filter(|t| t.name == topic)
        .flat_map(|t| &t.partitions)
        .find(|p| p.partition == partition)
        .cloned()
        .ok_or_else(|| {
            Error::status(
                tonic::Code::Internal,
                format!("the produce response has no result for {topic}-{partition}"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(topic: &str, partition: u32, bytes: usize) -> Submission {
        let (reply, _) = oneshot::channel();
        Submission { topic: Arc::from(topic), partition, records: Bytes::from(vec![0u8; bytes]), reply }
    }

    fn names(subs: &[Submission]) -> Vec<String> {
        subs.iter().map(|s| format!("{}-{}", s.topic, s.partition)).collect()
    }

    #[test]
    fn a_request_groups_partitions_by_topic_in_order() {
        let subs = vec![sub("a", 0, 3), sub("b", 2, 1), sub("a", 1, 2)];
        let r = build_request(-1, Duration::from_secs(30), &subs);
        assert_eq!(r.acks, -1);
        assert_eq!(r.timeout_ms, 30_000);
        let layout: Vec<(String, Vec<u32>)> = r
            .topics
            .iter()
            .map(|t| (t.name.clone(), t.partitions.iter().map(|p| p.partition).collect()))
            .collect();
        assert_eq!(layout, [("a".to_string(), vec![0, 1]), ("b".to_string(), vec![2])]);
        assert_eq!(r.topics[0].partitions[1].records.len(), 2);
    }

    #[test]
    fn a_drain_takes_the_oldest_up_to_the_byte_limit_and_each_partition_once() {
        let mut waiting =
            vec![sub("a", 0, 40), sub("a", 1, 40), sub("a", 0, 10), sub("b", 0, 40), sub("c", 0, 5)];
        let taken = take_drain(&mut waiting, 100);
        assert_eq!(names(&taken), ["a-0", "a-1", "c-0"]);
        assert_eq!(names(&waiting), ["a-0", "b-0"]);
        // One submission larger than the limit still goes, alone.
        let mut big = vec![sub("a", 0, 500), sub("a", 1, 1)];
        assert_eq!(names(&take_drain(&mut big, 100)), ["a-0"]);
        assert_eq!(names(&big), ["a-1"]);
    }

    #[test]
    fn each_partition_finds_its_part_of_the_answer() {
        let answer = v1::ProduceResponse {
            topics: vec![
                v1::TopicProduceResponse {
                    name: "a".into(),
                    partitions: vec![v1::PartitionProduceResponse {
                        partition: 1,
                        base_offset: 7,
                        ..Default::default()
                    }],
                },
                v1::TopicProduceResponse {
                    name: "b".into(),
                    partitions: vec![v1::PartitionProduceResponse {
                        partition: 1,
                        base_offset: 9,
                        ..Default::default()
                    }],
                },
            ],
        };
        assert_eq!(part_of(&answer, "b", 1).map(|p| p.base_offset), Ok(9));
        assert_eq!(part_of(&answer, "a", 1).map(|p| p.base_offset), Ok(7));
        let missing = part_of(&answer, "a", 0).unwrap_err();
        assert!(missing.to_string().contains("no result for a-0"), "{missing}");
    }
}
