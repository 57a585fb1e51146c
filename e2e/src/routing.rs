//! Finding partition leaders over raw gRPC, for the test's own producer and
//! readers (they must not depend on the client library whose failover
//! behaviour the tests are there to judge).
//!
//! Metadata is asked of every broker at once and merged by leader epoch:
//! epochs only grow through quorum decisions, so the highest one seen is the
//! newest leadership whatever a stale (cut-off, just-resumed) broker says.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tonic::transport::{Channel, Endpoint};
use tributary_proto::v1::log_client::LogClient;
use tributary_proto::v1::{ErrorCode, MetadataRequest, MetadataResponse, PartitionError, PartitionMetadata};

/// Largest gRPC message either way (the broker's limit too).
pub const MAX_MESSAGE: usize = 256 << 20;

/// How long one broker may take to answer Metadata before it is skipped (a
/// paused broker never answers).
pub const METADATA_TIMEOUT: Duration = Duration::from_millis(1500);

/// A lazily connecting channel to `addr` ("host:port"): creating it never
/// blocks, a dead broker shows up as a failed call.
pub fn log_client(addr: &str) -> Result<LogClient<Channel>> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .with_context(|| format!("bad broker address {addr}"))?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .initial_stream_window_size(16 << 20)
        .initial_connection_window_size(64 << 20);
    Ok(LogClient::new(endpoint.connect_lazy())
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE))
}

/// Splits a bootstrap list "a:1,b:2".
pub fn addresses(bootstrap: &str) -> Vec<String> {
    bootstrap.split(',').map(str::trim).filter(|a| !a.is_empty()).map(String::from).collect()
}

/// What every broker that answered said, merged (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct View {
    /// Client address by broker id.
    pub brokers: BTreeMap<i32, String>,
    /// Per (topic, partition): the entry with the highest leader epoch.
    pub partitions: BTreeMap<(String, u32), PartitionMetadata>,
    /// The controller named by the answer with the newest partition epochs
    /// (-1 when none named one).
    pub controller_id: i32,
    pub answered: Vec<String>,
    /// Brokers that did not answer, with why.
    pub failed: Vec<(String, String)>,
}

impl View {
    pub fn partition(&self, topic: &str, partition: u32) -> Option<&PartitionMetadata> {
        self.partitions.get(&(topic.to_string(), partition))
    }

    /// Address of the partition's leader, when it has one that is known.
    pub fn leader_address(&self, topic: &str, partition: u32) -> Option<(String, &PartitionMetadata)> {
        let p = self.partition(topic, partition)?;
        if p.leader < 0 {
            return None;
        }
        Some((self.brokers.get(&p.leader)?.clone(), p))
    }
}

/// Asks every address for metadata of `topics` (empty: all) at once and
/// merges the answers; fails only when nobody answered.
pub async fn view(addrs: &[String], topics: &[String]) -> Result<View> {
    let mut calls = tokio::task::JoinSet::new();
    for addr in addrs {
        let addr = addr.clone();
        let req = MetadataRequest { topics: topics.to_vec() };
        calls.spawn(async move {
            let answer = match log_client(&addr) {
                Ok(mut c) => match tokio::time::timeout(METADATA_TIMEOUT, c.metadata(req)).await {
                    Ok(Ok(resp)) => Ok(resp.into_inner()),
                    Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
                    Err(_) => Err(format!("no answer within {METADATA_TIMEOUT:?}")),
                },
                Err(e) => Err(e.to_string()),
            };
            (addr, answer)
        });
    }
    let mut view = View { controller_id: -1, ..View::default() };
    let mut answers = Vec::new();
    while let Some(joined) = calls.join_next().await {
        let Ok((addr, answer)) = joined else { continue };
        match answer {
            Ok(resp) => answers.push((addr, resp)),
            Err(why) => view.failed.push((addr, why)),
        }
    }
    if answers.is_empty() {
        bail!("no broker answered Metadata: {:?}", view.failed);
    }
    merge(&mut view, answers);
    Ok(view)
}

/// Merges Metadata answers (see the module docs). The controller is the one
/// most answers name. Within one leader epoch the controller's own entry
/// wins (its ISR is the decided one); failing that the smaller ISR, so a
/// wait for a full ISR never trusts a stale broker's view.
fn merge(view: &mut View, answers: Vec<(String, MetadataResponse)>) {
    let mut votes: BTreeMap<i32, usize> = BTreeMap::new();
    for (_, resp) in &answers {
        if resp.controller_id >= 0 {
            *votes.entry(resp.controller_id).or_default() += 1;
        }
    }
    view.controller_id = votes.iter().max_by_key(|(_, n)| **n).map_or(-1, |(id, _)| *id);
    for (_, resp) in &answers {
        for b in &resp.brokers {
            view.brokers.insert(b.node_id, b.address.clone());
        }
    }
    let controller_addr = view.brokers.get(&view.controller_id).cloned();
    // The controller's answer last, so nothing overrides its entries.
    let mut answers = answers;
    answers.sort_by_key(|(addr, _)| controller_addr.as_deref() == Some(addr.as_str()));
    for (addr, resp) in answers {
        let from_controller = controller_addr.as_deref() == Some(addr.as_str());
        for t in resp.topics {
            for p in t.partitions {
                let key = (t.name.clone(), p.partition);
                let better = match view.partitions.get(&key) {
                    None => true,
                    Some(have) if p.leader_epoch != have.leader_epoch => p.leader_epoch > have.leader_epoch,
                    Some(have) => from_controller || p.isr.len() < have.isr.len(),
                };
                if better {
                    view.partitions.insert(key, p);
                }
            }
        }
        view.answered.push(addr);
    }
}

/// Name of a per-partition error code ("NOT_LEADER"), or the number.
pub fn code_name(code: i32) -> String {
    match ErrorCode::try_from(code) {
        Ok(c) => c.as_str_name().to_string(),
        Err(_) => format!("error code {code}"),
    }
}

/// Conditions of normal operation during a failover: trying again (after a
/// metadata refresh) may succeed, and an idempotent retry is safe.
pub fn retriable(code: i32) -> bool {
    use ErrorCode::*;
    matches!(
        ErrorCode::try_from(code),
        Ok(NotLeader
            | UnknownTopicOrPartition
            | NotEnoughReplicas
            | NotEnoughReplicasAfterAppend
            | FencedLeaderEpoch
            | UnknownLeaderEpoch
            | LeaderNotAvailable
            | RequestTimedOut)
    )
}

/// A failed gRPC call that says nothing about the request itself: the
/// broker is gone, restarting or unreachable.
pub fn transport_failure(status: &tonic::Status) -> bool {
    use tonic::Code::*;
    match status.code() {
        Unavailable | DeadlineExceeded | Cancelled | Unknown | Aborted => true,
        // A connection broken mid-stream surfaces as an HTTP/2 error.
        Internal => {
            let m = status.message().to_ascii_lowercase();
            m.contains("h2 protocol") || m.contains("transport") || m.contains("connection")
        }
        _ => false,
    }
}

/// Leaders for one client: cached per partition, refreshed from every known
/// broker when asked to, corrected by the leader hints of NOT_LEADER.
pub struct Router {
    bootstrap: Vec<String>,
    clients: HashMap<String, LogClient<Channel>>,
    view: View,
}

impl Router {
    pub fn new(bootstrap: &str) -> Router {
        Router { bootstrap: addresses(bootstrap), clients: HashMap::new(), view: View::default() }
    }

    pub fn bootstrap(&self) -> &[String] {
        &self.bootstrap
    }

    /// A (cached) client for `addr`.
    pub fn client(&mut self, addr: &str) -> Result<LogClient<Channel>> {
        if let Some(c) = self.clients.get(addr) {
            return Ok(c.clone());
        }
        let c = log_client(addr)?;
        self.clients.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// Drops the channel to `addr` (after a transport failure or a hang), so
    /// the next call opens a fresh connection.
    pub fn forget(&mut self, addr: &str) {
        self.clients.remove(addr);
    }

    /// Every address worth asking: the bootstrap list and every broker
    /// Metadata named.
    fn known(&self) -> Vec<String> {
        let mut all = self.bootstrap.clone();
        for a in self.view.brokers.values() {
            if !all.contains(a) {
                all.push(a.clone());
            }
        }
        all
    }

    pub async fn refresh(&mut self, topic: &str) -> Result<&View> {
        let fresh = view(&self.known(), &[topic.to_string()]).await?;
        self.view = fresh;
        Ok(&self.view)
    }

    pub fn view(&self) -> &View {
        &self.view
    }

    /// The partition's leader address, refreshing when it is not known.
    pub async fn leader(&mut self, topic: &str, partition: u32) -> Result<(String, PartitionMetadata)> {
        if let Some((addr, p)) = self.view.leader_address(topic, partition) {
            return Ok((addr, p.clone()));
        }
        let view = self.refresh(topic).await?;
        match view.leader_address(topic, partition) {
            Some((addr, p)) => Ok((addr, p.clone())),
            None => bail!(
                "{topic}-{partition} has no leader in metadata ({:?})",
                view.partition(topic, partition)
            ),
        }
    }

    /// Forgets the cached leader so the next [`leader`](Self::leader) asks.
    pub fn invalidate(&mut self, topic: &str, partition: u32) {
        if let Some(p) = self.view.partitions.get_mut(&(topic.to_string(), partition)) {
            p.leader = -1;
        }
    }

    /// Takes a NOT_LEADER answer's leader hint when it is newer than what
    /// is cached; otherwise just forgets the leader.
    pub fn hint(&mut self, topic: &str, partition: u32, err: &PartitionError) {
        let key = (topic.to_string(), partition);
        let cached_epoch = self.view.partitions.get(&key).map_or(-1, |p| p.leader_epoch);
        if err.leader_id >= 0 && !err.leader_address.is_empty() && err.leader_epoch > cached_epoch {
            self.view.brokers.insert(err.leader_id, err.leader_address.clone());
            let entry = self
                .view
                .partitions
                .entry(key)
                .or_insert_with(|| PartitionMetadata { partition, ..PartitionMetadata::default() });
            entry.leader = err.leader_id;
            entry.leader_epoch = err.leader_epoch;
        } else {
            self.invalidate(topic, partition);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(controller: i32, leader: i32, epoch: i32, isr: Vec<i32>) -> MetadataResponse {
        use tributary_proto::v1::{BrokerInfo, TopicMetadata};
        MetadataResponse {
            brokers: (0..3)
                .map(|i| BrokerInfo { node_id: i, address: format!("b{i}:1"), rack: String::new() })
                .collect(),
            controller_id: controller,
            topics: vec![TopicMetadata {
                name: "t".into(),
                partitions: vec![PartitionMetadata {
                    partition: 0,
                    leader,
                    leader_epoch: epoch,
                    replicas: vec![0, 1, 2],
                    isr,
                }],
            }],
            ..MetadataResponse::default()
        }
    }

    #[test]
    fn merged_metadata_trusts_the_newest_epoch_and_the_controllers_isr() {
        // b0 is stale (cut off: still thinks it leads in epoch 3 and is the
        // controller); b1 (the controller) and b2 know epoch 4, b2 with a
        // fuller ISR than the controller has decided.
        let answers = vec![
            ("b0:1".to_string(), answer(0, 0, 3, vec![0, 1, 2])),
            ("b1:1".to_string(), answer(1, 1, 4, vec![1, 2])),
            ("b2:1".to_string(), answer(1, 1, 4, vec![0, 1, 2])),
        ];
        for order in [answers.clone(), answers.into_iter().rev().collect()] {
            let mut v = View { controller_id: -1, ..View::default() };
            merge(&mut v, order);
            assert_eq!(v.controller_id, 1);
            let (addr, p) = v.leader_address("t", 0).unwrap();
            assert_eq!((addr.as_str(), p.leader_epoch, p.isr.clone()), ("b1:1", 4, vec![1, 2]));
            assert_eq!(v.answered.len(), 3);
        }
    }

    #[test]
    fn bootstrap_lists_split_on_commas() {
        assert_eq!(addresses(" a:1, b:2 ,,c:3"), vec!["a:1", "b:2", "c:3"]);
        assert!(addresses("").is_empty());
    }

    #[test]
    fn failover_conditions_are_retriable_and_protocol_errors_are_not() {
        for code in [
            ErrorCode::NotLeader,
            ErrorCode::NotEnoughReplicas,
            ErrorCode::NotEnoughReplicasAfterAppend,
            ErrorCode::LeaderNotAvailable,
            ErrorCode::RequestTimedOut,
            ErrorCode::FencedLeaderEpoch,
        ] {
            assert!(retriable(code as i32), "{code:?}");
        }
        for code in [
            ErrorCode::OutOfOrderSequence,
            ErrorCode::InvalidProducerEpoch,
            ErrorCode::CorruptMessage,
            ErrorCode::StorageError,
        ] {
            assert!(!retriable(code as i32), "{code:?}");
        }
        assert_eq!(code_name(ErrorCode::NotLeader as i32), "NOT_LEADER");
        assert_eq!(code_name(999), "error code 999");
        assert!(transport_failure(&tonic::Status::unavailable("connection refused")));
        assert!(!transport_failure(&tonic::Status::invalid_argument("bad batch")));
        assert!(!transport_failure(&tonic::Status::internal("storage failed")));
    }

    #[test]
    fn a_newer_leader_hint_replaces_the_cached_leader_and_an_older_one_does_not() {
        let mut r = Router::new("a:1");
        let key = ("t".to_string(), 0);
        r.view
            .partitions
            .insert(key.clone(), PartitionMetadata { leader: 1, leader_epoch: 5, ..Default::default() });
        r.view.brokers.insert(1, "b1:1".into());
        let stale = PartitionError {
            leader_id: 2,
            leader_address: "b2:1".into(),
            leader_epoch: 4,
            ..Default::default()
        };
        r.hint("t", 0, &stale);
        assert_eq!(r.view.partitions[&key].leader, -1, "a stale hint must not be followed");
        let newer = PartitionError {
            leader_id: 2,
            leader_address: "b2:1".into(),
            leader_epoch: 6,
            ..Default::default()
        };
        r.hint("t", 0, &newer);
        let (addr, p) = r.view.leader_address("t", 0).unwrap();
        assert_eq!((addr.as_str(), p.leader_epoch), ("b2:1", 6));
    }
}
