//! Questions about what a broker holds — a topic's partitions, the offset at
//! the start, the end or a point in time — shared by the consumer (to find
//! where to start) and the admin client.

use std::time::Duration;

use tributary_proto::offset_spec;
use tributary_proto::v1;

use crate::connection::Connection;
use crate::error::{partition_error, Error, Result};

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

/// Partition numbers of `topic`, ascending.
pub(crate) async fn partitions(conn: &Connection, timeout: Duration, topic: &str) -> Result<Vec<u32>> {
    let request = v1::MetadataRequest { topics: vec![topic.to_string()] };
    let response = conn.call("a metadata request", timeout, conn.log().metadata(request)).await?;
    let Some(meta) = response.topics.into_iter().find(|t| t.name == topic) else {
        return Err(Error::status(tonic::Code::NotFound, format!("unknown topic '{topic}'")));
    };
    let mut ids: Vec<u32> = meta.partitions.iter().map(|p| p.partition).collect();
    ids.sort_unstable();
    Ok(ids)
}

/// Looks up one offset per partition with a single ListOffsets request.
/// `Offset(n)` is returned as it is. An offset is -1 where no record is at
/// or after the timestamp asked for.
pub(crate) async fn list_offsets(
    conn: &Connection,
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
    let request = v1::ListOffsetsRequest {
        partitions: partitions
            .iter()
            .map(|&partition| v1::ListOffsetsPartition { topic: topic.to_string(), partition, timestamp })
            .collect(),
    };
    let response = conn.call("a list-offsets request", timeout, conn.log().list_offsets(request)).await?;
    partitions
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
            match partition_error(entry.error.as_ref()) {
                Some(e) => Err(e),
                None => Ok(entry.offset),
            }
        })
        .collect()
}
