//! Questions about what the cluster holds — a topic's partitions, the offset
//! at the start, the end or a point in time — shared by the consumer (to
//! find where to start), the group consumer and the admin client. Offsets
//! are asked of each partition's leader, which alone knows them.

use std::time::Duration;

use tokio::time::Instant;
use tributary_proto::offset_spec;
use tributary_proto::v1;

use crate::cluster::{backoff, group_by_leader, Cluster};
use crate::error::{code_recovery, partition_error, Error, Recovery, Result};

/// Where to start reading, or which offset to look up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffsetSpec {
    /// The first offset still stored.
    Earliest,
    /// The offset the next record will get (only new records).
    Latest,
    /// This exact offset.
    Offset(i64),
    /// The first record with a timestamp at or after this, in ms since the
    /// epoch.
    Timestamp(i64),
}

/// Partition numbers of `topic`, ascending, from fresh metadata.
pub(crate) async fn partitions(cluster: &Cluster, topic: &str) -> Result<Vec<u32>> {
    cluster.refresh_now().await?;
    match cluster.partition_count(topic) {
        Some(count) => Ok((0..count).collect()),
        None => Err(Error::status(tonic::Code::NotFound, format!("unknown topic '{topic}'"))),
    }
}

/// First pause after a lookup found a partition's leader moved.
const RETRY_BACKOFF: Duration = Duration::from_millis(100);
const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(1);

/// Looks up one offset per partition: one ListOffsets request per leader,
/// retried where the leader moved (or its broker cannot be reached) until
/// `timeout` has passed. `Offset(n)` is returned as it is. An offset is -1
/// where no record is at or after the timestamp asked for.
pub(crate) async fn list_offsets(
    cluster: &Cluster,
    timeout: Duration,
    topic: &str,
    partitions: &[u32],
    spec: OffsetSpec,
) -> Result<Vec<i64>> {
    let timestamp = match spec {
        OffsetSpec::Offset(n) => return Ok(vec![n; partitions.len()]),
        OffsetSpec::Earliest => offset_spec::EARLIEST,
        OffsetSpec::Latest => offset_spec::LATEST,
        OffsetSpec::Timestamp(ts) if ts < 0 => {
            return Err(Error::InvalidArgument(format!(
                "timestamp {ts} is negative; give ms since the epoch"
            )))
        }
        OffsetSpec::Timestamp(ts) => ts,
    };
    let deadline = Instant::now() + timeout;
    check_partitions(cluster, topic, partitions).await?;
    let mut found: Vec<Option<i64>> = vec![None; partitions.len()];
    let mut attempt = 0u32;
    loop {
        let missing: Vec<u32> =
            partitions.iter().zip(&found).filter(|(_, f)| f.is_none()).map(|(p, _)| *p).collect();
        let seen = cluster.version();
        let (routed, leaderless) = group_by_leader(missing, |&p| cluster.leader(topic, p));
        let asked = routed
            .into_iter()
            .map(|(leader, parts)| ask_leader(cluster, timeout, topic, leader, parts, timestamp));
        let mut last_error = None;
        for answer in futures::future::join_all(asked).await {
            for (partition, outcome) in answer? {
                match outcome {
                    Ok(offset) => {
                        for (p, f) in partitions.iter().zip(found.iter_mut()) {
                            if *p == partition {
                                *f = Some(offset);
                            }
                        }
                    }
                    Err(e) => last_error = Some(e),
                }
            }
        }
        if found.iter().all(Option::is_some) {
            return Ok(found.into_iter().map(|f| f.unwrap_or(-1)).collect());
        }
        let e = last_error.unwrap_or_else(|| no_leader(topic, &leaderless));
        if cluster.partition_count(topic).is_none() {
            return Err(Error::status(tonic::Code::NotFound, format!("unknown topic '{topic}'")));
        }
        attempt += 1;
        let wait = backoff(RETRY_BACKOFF, attempt, MAX_RETRY_BACKOFF);
        if Instant::now() + wait >= deadline {
            return Err(e);
        }
        tracing::debug!(topic, attempt, "list-offsets retrying in {wait:?}: {e}");
        tokio::time::sleep(wait).await;
        let _ = cluster.refresh_soon(seen).await;
    }
}

/// Fails unless `topic` has every partition of `partitions` (looking at
/// fresh metadata before saying it does not).
pub(crate) async fn check_partitions(cluster: &Cluster, topic: &str, partitions: &[u32]) -> Result<()> {
    let fits = |count: Option<u32>| count.is_some_and(|n| partitions.iter().all(|&p| p < n));
    if fits(cluster.partition_count(topic)) {
        return Ok(());
    }
    cluster.refresh_now().await?;
    match cluster.partition_count(topic) {
        None => Err(Error::status(tonic::Code::NotFound, format!("unknown topic '{topic}'"))),
        Some(n) if !fits(Some(n)) => {
            let p = partitions.iter().find(|&&p| p >= n).copied().unwrap_or(n);
            Err(Error::status(
                tonic::Code::NotFound,
                format!("unknown partition {p} of topic '{topic}' (it has {n}: 0..{n})"),
            ))
        }
        Some(_) => Ok(()),
    }
}

/// The error for partitions that have no leader right now.
pub(crate) fn no_leader(topic: &str, partitions: &[u32]) -> Error {
    let list = partitions.iter().map(|p| format!("{topic}-{p}")).collect::<Vec<_>>().join(", ");
    Error::status(
        tonic::Code::Unavailable,
        format!(
            "no leader for {list} right now (an election is under way, or every in-sync replica is down)"
        ),
    )
}

/// One ListOffsets request to `leader` for `parts`: per partition its
/// offset, or a retriable error (the cache is corrected for it). A refusal
/// that retrying cannot fix is the outer error.
async fn ask_leader(
    cluster: &Cluster,
    timeout: Duration,
    topic: &str,
    leader: i32,
    parts: Vec<u32>,
    timestamp: i64,
) -> Result<Vec<(u32, Result<i64>)>> {
    let retry_all = |e: Error| parts.iter().map(|&p| (p, Err(e.clone()))).collect();
    let Some(conn) = cluster.connection(leader) else {
        for &p in &parts {
            cluster.invalidate(topic, p);
        }
        return Ok(retry_all(Error::status(
            tonic::Code::Unavailable,
            format!("broker {leader} is not known"),
        )));
    };
    let request = v1::ListOffsetsRequest {
        partitions: parts
            .iter()
            .map(|&partition| v1::ListOffsetsPartition { topic: topic.to_string(), partition, timestamp })
            .collect(),
    };
    let response = match conn.call("a list-offsets request", timeout, conn.log().list_offsets(request)).await
    {
        Ok(r) => r,
        Err(e) if e.recovery() == Recovery::Fail => return Err(e),
        Err(e) => {
            if e.is_transport() {
                cluster.broker_failed(leader);
            }
            for &p in &parts {
                cluster.invalidate(topic, p);
            }
            return Ok(retry_all(e));
        }
    };
    parts
        .iter()
        .map(|&partition| {
            let Some(entry) =
                response.partitions.iter().find(|p| p.topic == topic && p.partition == partition)
            else {
                return Err(Error::status(
                    tonic::Code::Internal,
                    format!("the list-offsets response has no result for {topic}-{partition}"),
                ));
            };
            let Some(e) = entry.error.as_ref().filter(|e| e.code != 0) else {
                return Ok((partition, Ok(entry.offset)));
            };
            let error = partition_error(Some(e)).unwrap_or_else(|| Error::status(tonic::Code::Unknown, "?"));
            match code_recovery(e.code) {
                Some(Recovery::Reroute) => {
                    cluster.apply_hint(topic, partition, e);
                    Ok((partition, Err(error)))
                }
                Some(Recovery::Retry) => Ok((partition, Err(error))),
                _ => Err(error),
            }
        })
        .collect()
}
