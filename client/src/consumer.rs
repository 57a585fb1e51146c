//! The consumer: reads assigned partitions from positions it keeps itself.
//!
//! Each poll is one Fetch for every assigned partition. The broker answers
//! with whole stored batches (the first may start before the position asked
//! for), which are CRC-checked here and either decoded into
//! [`ConsumerRecord`]s ([`Consumer::poll`]) or handed over raw
//! ([`Consumer::poll_batches`]) for callers that want to skip the per-record
//! structs. While the caller works through one answer the next fetch is
//! already on its way (one prefetch), so the broker's read overlaps ours.

use std::time::Duration;

use bytes::Bytes;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tributary_proto::batch::{self, Batches, Record};
use tributary_proto::v1;

use crate::connection::Connection;
use crate::error::{partition_error, Error, Result};
use crate::metadata::{self, OffsetSpec};

/// How long a metadata or list-offsets call may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How much longer than its long-poll a fetch may take before it counts as
/// lost.
const FETCH_GRACE: Duration = Duration::from_secs(30);

/// Consumer settings.
#[derive(Clone, Debug)]
pub struct ConsumerConfig {
    /// "host:port" of a broker (`http://` optional).
    pub bootstrap: String,
    /// Longest one Fetch long-polls; a longer `poll` timeout sends several.
    pub max_wait: Duration,
    /// The broker answers as soon as it has this many bytes.
    pub min_bytes: u32,
    /// Most bytes in one answer over all partitions (at least one batch is
    /// always returned, so a large batch cannot wedge the consumer).
    pub max_bytes: u32,
    /// Most bytes per partition in one answer.
    pub max_partition_bytes: u32,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            bootstrap: "127.0.0.1:7070".to_string(),
            max_wait: Duration::from_millis(500),
            min_bytes: 1,
            max_bytes: 50 << 20,
            max_partition_bytes: 1 << 20,
        }
    }
}

/// One record read from a partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerRecord {
    pub topic: String,
    pub partition: u32,
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// One partition's part of a fetch, undecoded: whole batches, already
/// CRC-checked. Records below `skip_below` (the position the fetch asked
/// for) are still in there; [`FetchedBatches::for_each_record`] skips them.
#[derive(Clone, Debug)]
pub struct FetchedBatches {
    pub topic: String,
    pub partition: u32,
    pub records: Bytes,
    pub skip_below: i64,
    /// The partition's high watermark when the broker answered.
    pub high_watermark: i64,
}

impl FetchedBatches {
    /// Decodes every record at or after `skip_below`, in offset order. Key
    /// and value are slices of the fetched buffer, not copies.
    pub fn for_each_record(&self, mut f: impl FnMut(&Record)) -> Result<()> {
        for b in Batches::new(&self.records) {
            let (header, slice) = b?;
            if header.next_offset() <= self.skip_below {
                continue;
            }
            let batch = self.records.slice_ref(slice);
            for r in batch::records(&batch)? {
                let r = r?;
                if r.offset >= self.skip_below {
                    f(&r);
                }
            }
        }
        Ok(())
    }

    /// Number of batches (cheap: reads only their headers).
    pub fn batch_count(&self) -> usize {
        Batches::new(&self.records).filter(|b| b.is_ok()).count()
    }
}

/// Every record of `fetched`, decoded, in order.
pub(crate) fn decode(fetched: &[FetchedBatches]) -> Result<Vec<ConsumerRecord>> {
    let mut out = Vec::new();
    for f in fetched {
        f.for_each_record(|r| {
            out.push(ConsumerRecord {
                topic: f.topic.clone(),
                partition: f.partition,
                offset: r.offset,
                timestamp: r.timestamp,
                key: r.key.clone(),
                value: r.value.clone(),
                headers: r.headers.iter().map(|h| (h.key.clone(), h.value.clone())).collect(),
            })
        })?;
    }
    Ok(out)
}

struct Assignment {
    topic: String,
    partition: u32,
    position: i64,
}

/// A fetch on its way, and the positions it asked for.
struct Pending {
    task: JoinHandle<Result<v1::FetchResponse>>,
    asked: Vec<(String, u32, i64)>,
}

/// A consumer of explicitly assigned partitions.
pub struct Consumer {
    conn: Connection,
    config: ConsumerConfig,
    assignments: Vec<Assignment>,
    pending: Option<Pending>,
    /// Rotates which partition leads the request: only the first may exceed
    /// the byte budget, so every partition gets that turn.
    rotation: usize,
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if let Some(p) = self.pending.take() {
            p.task.abort();
        }
    }
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("bootstrap", &self.conn.addr)
            .field("assigned", &self.assignments.len())
            .finish()
    }
}

impl Consumer {
    pub async fn connect(config: ConsumerConfig) -> Result<Consumer> {
        let conn = Connection::open(&config.bootstrap).await?;
        Ok(Self::with_connection(conn, config))
    }

    /// A consumer on an open connection (the group consumer's fetcher).
    pub(crate) fn with_connection(conn: Connection, config: ConsumerConfig) -> Consumer {
        Consumer { conn, config, assignments: Vec::new(), pending: None, rotation: 0 }
    }

    /// Reads `topic`/`partition` from `from` on (Earliest/Latest/Timestamp
    /// are looked up now; a timestamp after the last record means Latest).
    /// Assigning a partition again moves its position.
    pub async fn assign(&mut self, topic: &str, partition: u32, from: OffsetSpec) -> Result<()> {
        let positions = self.resolve(topic, &[partition], from).await?;
        for (p, position) in [partition].into_iter().zip(positions) {
            self.set_position(topic, p, position);
        }
        Ok(())
    }

    /// Reads every partition of `topic` from `from` on.
    pub async fn assign_all(&mut self, topic: &str, from: OffsetSpec) -> Result<()> {
        let partitions = metadata::partitions(&self.conn, LOOKUP_TIMEOUT, topic).await?;
        let positions = self.resolve(topic, &partitions, from).await?;
        for (p, position) in partitions.into_iter().zip(positions) {
            self.set_position(topic, p, position);
        }
        Ok(())
    }

    async fn resolve(&self, topic: &str, partitions: &[u32], from: OffsetSpec) -> Result<Vec<i64>> {
        if let OffsetSpec::Offset(n) = from {
            if n < 0 {
                return Err(Error::InvalidArgument(format!("offset {n} is negative")));
            }
            // No lookup needed, but an unknown topic or partition should fail
            // here rather than at the first poll.
            metadata::list_offsets(&self.conn, LOOKUP_TIMEOUT, topic, partitions, OffsetSpec::Latest).await?;
            return Ok(vec![n; partitions.len()]);
        }
        let mut found = metadata::list_offsets(&self.conn, LOOKUP_TIMEOUT, topic, partitions, from).await?;
        if found.iter().any(|&o| o < 0) {
            let latest =
                metadata::list_offsets(&self.conn, LOOKUP_TIMEOUT, topic, partitions, OffsetSpec::Latest)
                    .await?;
            for (o, l) in found.iter_mut().zip(latest) {
                if *o < 0 {
                    *o = l;
                }
            }
        }
        Ok(found)
    }

    fn set_position(&mut self, topic: &str, partition: u32, position: i64) {
        self.cancel_prefetch();
        match self.assignments.iter_mut().find(|a| a.topic == topic && a.partition == partition) {
            Some(a) => a.position = position,
            None => self.assignments.push(Assignment { topic: topic.to_string(), partition, position }),
        }
    }

    /// Stops reading this partition (nothing happens if it was not
    /// assigned).
    pub fn unassign(&mut self, topic: &str, partition: u32) {
        let before = self.assignments.len();
        self.assignments.retain(|a| !(a.topic == topic && a.partition == partition));
        if self.assignments.len() != before {
            self.cancel_prefetch();
        }
    }

    /// Whether any partition is assigned.
    pub(crate) fn has_assignments(&self) -> bool {
        !self.assignments.is_empty()
    }

    fn cancel_prefetch(&mut self) {
        if let Some(p) = self.pending.take() {
            p.task.abort();
        }
    }

    /// The offset the next record of this partition will have; `None` when
    /// it is not assigned.
    pub fn position(&self, topic: &str, partition: u32) -> Option<i64> {
        self.assignments.iter().find(|a| a.topic == topic && a.partition == partition).map(|a| a.position)
    }

    /// Continues this partition from `offset` (assigning it if it was not).
    pub fn seek(&mut self, topic: &str, partition: u32, offset: i64) {
        self.set_position(topic, partition, offset);
    }

    /// Waits up to `timeout` for records of the assigned partitions and
    /// returns them decoded, positions advanced past them; an empty vec when
    /// none arrived in time.
    pub async fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>> {
        let fetched = self.poll_batches(timeout).await?;
        decode(&fetched)
    }

    /// Like [`Consumer::poll`], but returns each partition's batches raw
    /// (CRC-checked, not decoded); positions are advanced past the last
    /// record of each.
    pub async fn poll_batches(&mut self, timeout: Duration) -> Result<Vec<FetchedBatches>> {
        if self.assignments.is_empty() {
            return Err(Error::InvalidArgument(
                "no partitions assigned: call assign() or assign_all() first".into(),
            ));
        }
        // A year stands in for "forever" without overflowing the clock.
        let deadline = Instant::now() + timeout.min(Duration::from_secs(365 * 24 * 3600));
        loop {
            let mut pending = match self.pending.take() {
                Some(p) => p,
                None => self.start_fetch(deadline.saturating_duration_since(Instant::now())),
            };
            let joined = match tokio::time::timeout_at(deadline, &mut pending.task).await {
                Err(_) => {
                    // Out of time: the fetch stays on its way for the next poll.
                    self.pending = Some(pending);
                    return Ok(Vec::new());
                }
                Ok(joined) => joined,
            };
            let response = joined.map_err(|e| {
                Error::Transport(format!("the fetch from {} was interrupted: {e}", self.conn.addr))
            })??;
            let fetched = self.apply(response, &pending.asked)?;
            if !fetched.is_empty() {
                self.pending = Some(self.start_fetch(self.config.max_wait));
                return Ok(fetched);
            }
            if Instant::now() >= deadline {
                return Ok(Vec::new());
            }
        }
    }

    /// Sends a Fetch from the current positions, long-polling up to `wait`
    /// (at most `max_wait`).
    fn start_fetch(&mut self, wait: Duration) -> Pending {
        let n = self.assignments.len();
        self.rotation = (self.rotation + 1) % n.max(1);
        let asked: Vec<(String, u32, i64)> = (0..n)
            .map(|i| &self.assignments[(i + self.rotation) % n])
            .map(|a| (a.topic.clone(), a.partition, a.position))
            .collect();
        let wait = wait.min(self.config.max_wait);
        let request = v1::FetchRequest {
            max_wait_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
            min_bytes: self.config.min_bytes,
            max_bytes: self.config.max_bytes,
            partitions: asked
                .iter()
                .map(|(topic, partition, offset)| v1::FetchPartition {
                    topic: topic.clone(),
                    partition: *partition,
                    offset: *offset,
                    max_bytes: self.config.max_partition_bytes,
                })
                .collect(),
        };
        let conn = self.conn.clone();
        let task = tokio::spawn(async move {
            let mut client = conn.log();
            conn.call("a fetch request", wait + FETCH_GRACE, client.fetch(request)).await
        });
        Pending { task, asked }
    }

    /// Checks an answer and advances positions. Nothing moves unless every
    /// partition's part is good, so an error loses no records.
    fn apply(
        &mut self,
        response: v1::FetchResponse,
        asked: &[(String, u32, i64)],
    ) -> Result<Vec<FetchedBatches>> {
        let mut accepted: Vec<(usize, i64, FetchedBatches)> = Vec::new();
        for part in response.partitions {
            let Some(&(_, _, offset)) =
                asked.iter().find(|(t, p, _)| *t == part.topic && *p == part.partition)
            else {
                continue;
            };
            let Some(index) =
                self.assignments.iter().position(|a| a.topic == part.topic && a.partition == part.partition)
            else {
                continue;
            };
            if let Some(e) = part.error.as_ref() {
                if e.code == v1::ErrorCode::OffsetOutOfRange as i32 {
                    return Err(Error::OffsetOutOfRange {
                        topic: part.topic,
                        partition: part.partition,
                        offset,
                        start: part.log_start_offset,
                        end: part.high_watermark,
                    });
                }
            }
            if let Some(e) = partition_error(part.error.as_ref()) {
                return Err(e);
            }
            if part.records.is_empty() {
                continue;
            }
            let mut next = offset;
            for b in Batches::new(&part.records) {
                let checked = b.and_then(|(_, slice)| batch::verify(slice));
                let header = checked.map_err(|e| {
                    Error::Corrupt(format!("{}-{} near offset {next}: {e}", part.topic, part.partition))
                })?;
                next = next.max(header.next_offset());
            }
            accepted.push((
                index,
                next,
                FetchedBatches {
                    topic: part.topic,
                    partition: part.partition,
                    records: part.records,
                    skip_below: offset,
                    high_watermark: part.high_watermark,
                },
            ));
        }
        Ok(accepted
            .into_iter()
            .map(|(index, next, fetched)| {
                self.assignments[index].position = next;
                fetched
            })
            .collect())
    }
}
