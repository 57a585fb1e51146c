//! The consumer: reads assigned partitions from positions it keeps itself.
//!
//! Each partition is fetched from its leader: one Fetch per leader for all
//! the assigned partitions it leads, each long-polling on its own. The
//! broker answers with whole stored batches (the first may start before the
//! position asked for), which are CRC-checked here and either decoded into
//! [`ConsumerRecord`]s ([`Consumer::poll`]) or handed over raw
//! ([`Consumer::poll_batches`]) for callers that want to skip the per-record
//! structs. While the caller works through one answer the next fetch is
//! already on its way (one prefetch per leader), so the broker's read
//! overlaps ours.
//!
//! # Leaders that move
//!
//! A partition whose leader moved (NOT_LEADER, a fenced or unknown leader
//! epoch, no leader for now) or whose broker cannot be reached is fetched
//! again from the same position once the cache knows where to go — at once
//! when the answer carried a leader hint, otherwise after fresh metadata
//! and a short, growing pause. A partition is in at most one fetch at a
//! time and its position moves only with an answer for it, so nothing is
//! skipped or read twice; `poll` reports none of this (it shows as
//! latency), only failures retrying cannot fix.
//!
//! # A batch that cannot be read
//!
//! A batch that fails its checksum, or whose records cannot be decoded
//! although the checksum holds (a producer bug, a codec this client does not
//! have), stops its partition there and only there. `poll` returns what came
//! before it, in that partition and in the others; the partition's position
//! stays at the first record not returned; the next `poll` fails with
//! [`Error::CorruptRecord`] naming topic, partition and offset. From then on
//! the partition is not fetched and polls take turns: the error, then the
//! other partitions' records, then the error again, until the application
//! moves on with [`Consumer::skip_corrupt`] or [`Consumer::seek`]. Nothing
//! is skipped unless asked for, so a group consumer never commits past such
//! a batch.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::task::{JoinError, JoinHandle};
use tokio::time::Instant;
use tributary_proto::batch::{self, BatchError, Batches, Record};
use tributary_proto::v1;

use crate::cluster::{backoff, group_by_leader, Cluster, Leader};
use crate::error::{code_recovery, partition_error, Error, Recovery, Result};
use crate::metadata::{self, OffsetSpec};

/// How long a metadata or list-offsets call may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How much longer than its long-poll a fetch may take before it counts as
/// lost.
const FETCH_GRACE: Duration = Duration::from_secs(30);
/// First pause before a partition whose leader moved is fetched again (when
/// no hint said where it went); it doubles while that goes on.
const REROUTE_BACKOFF: Duration = Duration::from_millis(100);
const MAX_REROUTE_BACKOFF: Duration = Duration::from_secs(1);

/// Consumer settings.
#[derive(Clone, Debug)]
pub struct ConsumerConfig {
    /// Brokers to start from, `HOST:PORT,HOST:PORT,...` (`http://`
    /// optional): any one that answers will do.
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
    /// and value are slices of the fetched buffer, not copies. A batch that
    /// cannot be decoded ends the walk with [`Error::CorruptRecord`], after
    /// `f` saw every record before it. The consumer's position has already
    /// moved past all these batches: to stay at such a batch, `seek` the
    /// partition back to the error's offset.
    pub fn for_each_record(&self, f: impl FnMut(&Record)) -> Result<()> {
        self.walk(f).map(|_| ()).map_err(|stuck| stuck.error(&self.topic, self.partition))
    }

    /// Number of batches (cheap: reads only their headers).
    pub fn batch_count(&self) -> usize {
        Batches::new(&self.records).filter(|b| b.is_ok()).count()
    }

    /// Gives `f` every record at or after `skip_below`; returns the offset
    /// after the last batch, or where the first batch that cannot be
    /// decoded stopped the walk (the first offset `f` did not see) and why.
    fn walk(&self, mut f: impl FnMut(&Record)) -> std::result::Result<i64, Stuck> {
        let mut next = self.skip_below;
        for b in Batches::new(&self.records) {
            let (header, slice) = b.map_err(|e| Stuck::unchecked(next, &e))?;
            if header.next_offset() <= self.skip_below {
                continue;
            }
            // The header is covered by the checksum the fetch verified, so
            // its offset range can be trusted: skipping goes past the batch.
            let stuck = |next: i64, e: &BatchError| Stuck {
                offset: next.max(header.base_offset),
                skip_to: header.next_offset(),
                reason: e.to_string(),
            };
            let batch = self.records.slice_ref(slice);
            let mut last = header.base_offset - 1;
            for r in batch::records(&batch).map_err(|e| stuck(next, &e))? {
                let r = r.map_err(|e| stuck(next, &e))?;
                // Offsets decide positions and commits: one outside the
                // batch, or going backwards, must not move them.
                if r.offset <= last || r.offset > header.last_offset() {
                    return Err(stuck(
                        next,
                        &BatchError::Invalid("record offsets out of order or outside the batch"),
                    ));
                }
                last = r.offset;
                if r.offset >= self.skip_below {
                    f(&r);
                    next = r.offset + 1;
                }
            }
            next = next.max(header.next_offset());
        }
        Ok(next)
    }
}

impl ConsumerRecord {
    fn new(from: &FetchedBatches, r: &Record) -> Self {
        ConsumerRecord {
            topic: from.topic.clone(),
            partition: from.partition,
            offset: r.offset,
            timestamp: r.timestamp,
            key: r.key.clone(),
            value: r.value.clone(),
            headers: r.headers.iter().map(|h| (h.key.clone(), h.value.clone())).collect(),
        }
    }
}

/// A batch a partition cannot get past.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Stuck {
    /// The first offset not returned: the partition's position.
    offset: i64,
    /// Where [`Consumer::skip_corrupt`] goes on.
    skip_to: i64,
    reason: String,
}

impl Stuck {
    /// A batch whose checksum failed, or that is cut short: its header
    /// cannot say where it ends, so a skip goes one offset on.
    fn unchecked(offset: i64, e: &BatchError) -> Stuck {
        Stuck { offset, skip_to: offset + 1, reason: e.to_string() }
    }

    fn error(&self, topic: &str, partition: u32) -> Error {
        Error::CorruptRecord {
            topic: topic.to_string(),
            partition,
            offset: self.offset,
            reason: self.reason.clone(),
        }
    }
}

/// One partition's part of an answer after the checksums were checked: the
/// batches that passed (everything before the first one that did not),
/// where the partition goes on after them, and the batch that failed, if
/// one did.
pub(crate) struct Checked {
    index: usize,
    fetched: FetchedBatches,
    next: i64,
    stuck: Option<Stuck>,
}

/// How a poll hands answers over: decoded records ([`Records`]) or raw
/// batches ([`RawBatches`]).
pub(crate) trait Delivery {
    type Item;
    /// Takes what one partition's part holds into `out`; returns where the
    /// partition goes on, and the batch it cannot get past, if any.
    fn take(part: Checked, out: &mut Vec<Self::Item>) -> (i64, Option<Stuck>);
}

/// Decoded records: a partition stops at the first batch that cannot be
/// decoded, after the records before it.
pub(crate) struct Records;

impl Delivery for Records {
    type Item = ConsumerRecord;

    fn take(part: Checked, out: &mut Vec<ConsumerRecord>) -> (i64, Option<Stuck>) {
        let f = &part.fetched;
        match f.walk(|r| out.push(ConsumerRecord::new(f, r))) {
            Ok(next) => (part.next.max(next), part.stuck),
            Err(stuck) => (stuck.offset, Some(stuck)),
        }
    }
}

/// Raw batches: decoding, and what to do when it fails, are the caller's.
pub(crate) struct RawBatches;

impl Delivery for RawBatches {
    type Item = FetchedBatches;

    fn take(part: Checked, out: &mut Vec<FetchedBatches>) -> (i64, Option<Stuck>) {
        if !part.fetched.records.is_empty() {
            out.push(part.fetched);
        }
        (part.next, part.stuck)
    }
}

struct Assignment {
    topic: String,
    partition: u32,
    position: i64,
    /// A batch at `position` that cannot be read: the partition is not
    /// fetched until the application skips it or seeks.
    stuck: Option<Stuck>,
    /// Not fetched before this: its leader moved or its broker failed, and
    /// the cache may not know better yet.
    not_before: Option<Instant>,
    /// Fetches of this partition in a row that found its leader gone.
    misses: u32,
}

/// A fetch on its way to one leader, and the positions it asked for.
struct Pending {
    leader: i32,
    task: JoinHandle<Result<v1::FetchResponse>>,
    asked: Vec<(String, u32, i64)>,
}

/// What an answer said of a partition whose leader is elsewhere now.
struct Misrouted {
    index: usize,
    error: v1::PartitionError,
}

/// A consumer of explicitly assigned partitions.
pub struct Consumer {
    cluster: Arc<Cluster>,
    config: ConsumerConfig,
    assignments: Vec<Assignment>,
    /// Fetches on their way, at most one per leader at a time from each
    /// poll, and a partition in one of them at most.
    pending: Vec<Pending>,
    /// Rotates which partition leads the request: only the first may exceed
    /// the byte budget, so every partition gets that turn.
    rotation: usize,
    /// The next poll reports a stuck partition before fetching again.
    report_due: bool,
    /// Rotates which stuck partition is reported.
    stuck_turn: usize,
    /// Fetches in a row that failed whole (for the log).
    failures: u32,
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.cancel_prefetch();
    }
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("broker", &self.cluster.home().addr)
            .field("assigned", &self.assignments.len())
            .finish()
    }
}

impl Consumer {
    /// Connects to the first broker of the bootstrap list that answers.
    pub async fn connect(config: ConsumerConfig) -> Result<Consumer> {
        let cluster = Arc::new(Cluster::connect(&config.bootstrap, 1).await?);
        Ok(Self::with_cluster(cluster, config))
    }

    /// A consumer sharing a cluster view (the group consumer's fetcher).
    pub(crate) fn with_cluster(cluster: Arc<Cluster>, config: ConsumerConfig) -> Consumer {
        Consumer {
            cluster,
            config,
            assignments: Vec::new(),
            pending: Vec::new(),
            rotation: 0,
            report_due: false,
            stuck_turn: 0,
            failures: 0,
        }
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
        let partitions = metadata::partitions(&self.cluster, topic).await?;
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
            metadata::list_offsets(&self.cluster, LOOKUP_TIMEOUT, topic, partitions, OffsetSpec::Latest)
                .await?;
            return Ok(vec![n; partitions.len()]);
        }
        let mut found =
            metadata::list_offsets(&self.cluster, LOOKUP_TIMEOUT, topic, partitions, from).await?;
        if found.iter().any(|&o| o < 0) {
            let latest =
                metadata::list_offsets(&self.cluster, LOOKUP_TIMEOUT, topic, partitions, OffsetSpec::Latest)
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
            Some(a) => {
                a.position = position;
                a.stuck = None;
            }
            None => self.assignments.push(Assignment {
                topic: topic.to_string(),
                partition,
                position,
                stuck: None,
                not_before: None,
                misses: 0,
            }),
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
        for p in self.pending.drain(..) {
            p.task.abort();
        }
    }

    /// The offset the next record of this partition will have; `None` when
    /// it is not assigned.
    pub fn position(&self, topic: &str, partition: u32) -> Option<i64> {
        self.assignments.iter().find(|a| a.topic == topic && a.partition == partition).map(|a| a.position)
    }

    /// Continues this partition from `offset` (assigning it if it was not).
    /// A partition stopped by a batch it cannot read is fetched again from
    /// there.
    pub fn seek(&mut self, topic: &str, partition: u32, offset: i64) {
        self.set_position(topic, partition, offset);
    }

    /// Moves a partition stopped by a batch it cannot read (see
    /// [`Error::CorruptRecord`]) past that batch, and reads on from there;
    /// returns the new position, or `None` when the partition is not
    /// stopped. The records skipped are lost to this consumer (and, once
    /// committed, to its group): call it only when the application decided
    /// they may be. A batch that failed its checksum cannot be trusted to
    /// say where it ends, so that skip goes one offset on; if the same batch
    /// is reported at the next offset, skip again.
    pub fn skip_corrupt(&mut self, topic: &str, partition: u32) -> Option<i64> {
        let a = self.assignments.iter_mut().find(|a| a.topic == topic && a.partition == partition)?;
        let stuck = a.stuck.take()?;
        tracing::info!(
            "skipping unreadable records of {topic}-{partition} from offset {} to {}: {}",
            stuck.offset,
            stuck.skip_to,
            stuck.reason
        );
        a.position = stuck.skip_to;
        // The fetch on its way leaves this partition out: ask again now.
        self.cancel_prefetch();
        Some(stuck.skip_to)
    }

    /// A stuck partition's error, each in turn; `None` when none is stuck.
    fn stuck_error(&mut self) -> Option<Error> {
        let stuck: Vec<&Assignment> = self.assignments.iter().filter(|a| a.stuck.is_some()).collect();
        if stuck.is_empty() {
            return None;
        }
        self.stuck_turn = (self.stuck_turn + 1) % stuck.len();
        let a = stuck[self.stuck_turn];
        a.stuck.as_ref().map(|s| s.error(&a.topic, a.partition))
    }

    fn any_stuck(&self) -> bool {
        self.assignments.iter().any(|a| a.stuck.is_some())
    }

    /// Waits up to `timeout` for records of the assigned partitions and
    /// returns them decoded, positions advanced past them; an empty vec when
    /// none arrived in time.
    ///
    /// A partition with a batch that cannot be read stops there: this poll
    /// returns what came before it, and the next one fails with
    /// [`Error::CorruptRecord`]; see the module docs.
    pub async fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>> {
        self.poll_as::<Records>(timeout).await
    }

    /// Like [`Consumer::poll`], but returns each partition's batches raw
    /// (CRC-checked, not decoded); positions are advanced past the last
    /// record of each. A batch that fails its checksum stops its partition
    /// as in `poll`; a batch that cannot be decoded is found only by the
    /// caller's [`FetchedBatches::for_each_record`], and the position has
    /// already moved past it: seek back to the error's offset to stay there.
    pub async fn poll_batches(&mut self, timeout: Duration) -> Result<Vec<FetchedBatches>> {
        self.poll_as::<RawBatches>(timeout).await
    }

    /// The poll loop behind `poll` and `poll_batches` (and the group
    /// consumer's).
    pub(crate) async fn poll_as<D: Delivery>(&mut self, timeout: Duration) -> Result<Vec<D::Item>> {
        if self.assignments.is_empty() {
            return Err(Error::InvalidArgument(
                "no partitions assigned: call assign() or assign_all() first".into(),
            ));
        }
        let nothing_to_fetch = self.assignments.iter().all(|a| a.stuck.is_some());
        if self.report_due || nothing_to_fetch {
            self.report_due = false;
            if let Some(e) = self.stuck_error() {
                return Err(e);
            }
        }
        // A year stands in for "forever" without overflowing the clock.
        let deadline = Instant::now() + timeout.min(Duration::from_secs(365 * 24 * 3600));
        loop {
            self.route(deadline).await;
            self.start_fetches(deadline.saturating_duration_since(Instant::now()));
            let wake = self.next_retry().map_or(deadline, |t| t.min(deadline));
            let Some((joined, index)) = self.first_answer(wake).await else {
                if Instant::now() >= deadline {
                    // Out of time: the fetches stay on their way for the next poll.
                    self.report_due = self.any_stuck();
                    return Ok(Vec::new());
                }
                continue;
            };
            let pending = self.pending.swap_remove(index);
            let response = match joined.map_err(|e| self.interrupted(&pending, e)).and_then(|r| r) {
                Ok(response) => response,
                Err(e) if e.is_retriable() => {
                    self.fetch_failed(&pending, &e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            self.failures = 0;
            let (out, stopped) = self.take_answer::<D>(response, &pending.asked)?;
            if !out.is_empty() {
                // What came before a stuck batch first; its error next time.
                self.report_due = self.any_stuck();
                self.start_fetches(self.config.max_wait);
                return Ok(out);
            }
            if let Some(e) = stopped {
                return Err(e);
            }
            if Instant::now() >= deadline {
                self.report_due = self.any_stuck();
                return Ok(Vec::new());
            }
        }
    }

    /// Waits until `wake` for the first fetch to answer; its outcome and
    /// index in `pending`, or `None` when `wake` came first.
    async fn first_answer(
        &mut self,
        wake: Instant,
    ) -> Option<(std::result::Result<Result<v1::FetchResponse>, JoinError>, usize)> {
        if self.pending.is_empty() {
            tokio::time::sleep_until(wake).await;
            return None;
        }
        let tasks = self.pending.iter_mut().map(|p| &mut p.task);
        tokio::time::timeout_at(wake, futures::future::select_all(tasks))
            .await
            .ok()
            .map(|(joined, index, _)| (joined, index))
    }

    fn interrupted(&self, pending: &Pending, e: JoinError) -> Error {
        let addr = self.cluster.connection(pending.leader).map_or_else(|| "a broker".to_string(), |c| c.addr);
        Error::Transport(format!("the fetch from {addr} was interrupted: {e}"))
    }

    /// A fetch failed whole in a way retrying may fix (the connection broke,
    /// the broker is unavailable): its partitions are fetched again from the
    /// same positions after a pause, wherever the leader is by then.
    fn fetch_failed(&mut self, pending: &Pending, e: &Error) {
        self.failures += 1;
        if self.failures == 1 || self.failures.is_multiple_of(10) {
            tracing::warn!(failures = self.failures, "fetch failed, retrying: {e}");
        } else {
            tracing::debug!(failures = self.failures, "fetch failed, retrying: {e}");
        }
        if e.is_transport() {
            self.cluster.broker_failed(pending.leader);
        }
        let now = Instant::now();
        for (topic, partition, _) in &pending.asked {
            if e.recovery() == Recovery::Reroute {
                self.cluster.invalidate(topic, *partition);
            }
            if let Some(a) =
                self.assignments.iter_mut().find(|a| a.topic == *topic && a.partition == *partition)
            {
                a.misses += 1;
                a.not_before = Some(now + backoff(REROUTE_BACKOFF, a.misses, MAX_REROUTE_BACKOFF));
            }
        }
    }

    /// Partitions about to be fetched whose leader the cache does not know
    /// make it ask the cluster (rate limited; not past `deadline`).
    async fn route(&mut self, deadline: Instant) {
        let now = Instant::now();
        let lost = self.assignments.iter().any(|a| {
            self.fetchable(a, now)
                && self.cluster.leader(&a.topic, a.partition).and_then(Leader::broker).is_none()
        });
        if lost {
            let seen = self.cluster.version();
            if let Ok(Err(e)) = tokio::time::timeout_at(deadline, self.cluster.refresh_soon(seen)).await {
                tracing::debug!("metadata refresh for the consumer failed: {e}");
            }
        }
    }

    /// Whether `a` may go into a new fetch now: readable, not in a fetch
    /// already, not pausing.
    fn fetchable(&self, a: &Assignment, now: Instant) -> bool {
        a.stuck.is_none()
            && a.not_before.is_none_or(|t| t <= now)
            && !self
                .pending
                .iter()
                .any(|p| p.asked.iter().any(|(t, q, _)| *t == a.topic && *q == a.partition))
    }

    /// When the next pausing partition may be fetched again.
    fn next_retry(&self) -> Option<Instant> {
        self.assignments.iter().filter(|a| a.stuck.is_none()).filter_map(|a| a.not_before).min()
    }

    /// Takes one answer: checks it, hands each partition's part over as `D`
    /// does and moves positions past what was handed over. Partitions with
    /// a batch they cannot read stop there; the error for the first one
    /// that stopped comes back with what was handed over.
    fn take_answer<D: Delivery>(
        &mut self,
        response: v1::FetchResponse,
        asked: &[(String, u32, i64)],
    ) -> Result<(Vec<D::Item>, Option<Error>)> {
        let mut out = Vec::new();
        let mut stopped = None;
        let (checked, misrouted) = self.check(response, asked)?;
        for m in misrouted {
            self.reroute(m);
        }
        for part in checked {
            let index = part.index;
            let (next, stuck) = D::take(part, &mut out);
            let a = &mut self.assignments[index];
            a.position = next;
            a.misses = 0;
            if let Some(stuck) = stuck {
                tracing::debug!(
                    "{}-{} cannot be read at offset {}: {}; it stays there until skipped",
                    a.topic,
                    a.partition,
                    stuck.offset,
                    stuck.reason
                );
                stopped.get_or_insert_with(|| stuck.error(&a.topic, a.partition));
                a.stuck = Some(stuck);
            }
        }
        Ok((out, stopped))
    }

    /// A partition the answer said is led elsewhere now: the cache learns
    /// the hint (or forgets the leader), and the partition is fetched again
    /// from the same position — at once when the hint says where, after a
    /// pause otherwise.
    fn reroute(&mut self, m: Misrouted) {
        let Some(a) = self.assignments.get_mut(m.index) else { return };
        let hinted = code_recovery(m.error.code) == Some(Recovery::Reroute)
            && self.cluster.apply_hint(&a.topic, a.partition, &m.error);
        a.misses += 1;
        // A hint is followed at once, but not in a loop: a broker that keeps
        // pointing elsewhere (or at itself) gets the pause too.
        let at_once = hinted && a.misses == 1;
        a.not_before =
            (!at_once).then(|| Instant::now() + backoff(REROUTE_BACKOFF, a.misses, MAX_REROUTE_BACKOFF));
        tracing::debug!(
            "{}-{} is not served where it was fetched ({}); fetching it again from offset {}",
            a.topic,
            a.partition,
            m.error.message,
            a.position
        );
    }

    /// What the next fetches ask for: every partition not stopped by a
    /// batch it cannot read, not in a fetch already and not pausing, from
    /// its position, a different one first each time.
    fn next_request(&mut self) -> Vec<(String, u32, i64)> {
        let now = Instant::now();
        let ready: Vec<&Assignment> = self.assignments.iter().filter(|a| self.fetchable(a, now)).collect();
        let n = ready.len();
        self.rotation = (self.rotation + 1) % n.max(1);
        (0..n)
            .map(|i| ready[(i + self.rotation) % n])
            .map(|a| (a.topic.clone(), a.partition, a.position))
            .collect()
    }

    /// Sends a Fetch to each leader of the partitions ready to be fetched,
    /// long-polling up to `wait` (at most `max_wait`). Partitions without a
    /// known leader pause and wait for the metadata to say.
    fn start_fetches(&mut self, wait: Duration) {
        let asked = self.next_request();
        if asked.is_empty() {
            return;
        }
        let cluster = self.cluster.clone();
        let (routed, leaderless) = group_by_leader(asked, |(t, p, _)| cluster.leader(t, *p));
        let mut waiting = leaderless;
        for (leader, asked) in routed {
            match cluster.connection(leader) {
                Some(conn) => self.pending.push(self.fetch_from(leader, conn, asked, wait)),
                None => {
                    // A leader the broker list does not have: ask again.
                    for (topic, partition, _) in &asked {
                        cluster.invalidate(topic, *partition);
                    }
                    waiting.extend(asked);
                }
            }
        }
        let now = Instant::now();
        for (topic, partition, _) in waiting {
            if let Some(a) =
                self.assignments.iter_mut().find(|a| a.topic == topic && a.partition == partition)
            {
                a.misses += 1;
                a.not_before = Some(now + backoff(REROUTE_BACKOFF, a.misses, MAX_REROUTE_BACKOFF));
            }
        }
    }

    /// One Fetch to `leader` for `asked`, in a task of its own.
    fn fetch_from(
        &self,
        leader: i32,
        conn: crate::connection::Connection,
        asked: Vec<(String, u32, i64)>,
        wait: Duration,
    ) -> Pending {
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
                    // A deposed leader that does not know it yet refuses
                    // rather than serving us.
                    current_leader_epoch: self.cluster.leader(topic, *partition).map_or(-1, |l| l.epoch),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let task = tokio::spawn(async move {
            let mut client = conn.log();
            conn.call("a fetch request", wait + FETCH_GRACE, client.fetch(request)).await
        });
        Pending { leader, task, asked }
    }

    /// Checks an answer's partition errors and batch checksums; moves
    /// nothing. A partition whose leader is elsewhere now comes back apart
    /// (it is fetched again); any other partition error fails the whole
    /// answer, so it loses no records; a batch that fails its checksum ends
    /// only its partition's part.
    fn check(
        &self,
        response: v1::FetchResponse,
        asked: &[(String, u32, i64)],
    ) -> Result<(Vec<Checked>, Vec<Misrouted>)> {
        let mut checked = Vec::new();
        let mut misrouted = Vec::new();
        for part in response.partitions {
            let Some(&(_, _, offset)) =
                asked.iter().find(|(t, p, _)| *t == part.topic && *p == part.partition)
            else {
                continue;
            };
            let Some(index) = self
                .assignments
                .iter()
                .position(|a| a.topic == part.topic && a.partition == part.partition && a.stuck.is_none())
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
            if let Some(e) = part.error.as_ref() {
                if matches!(code_recovery(e.code), Some(Recovery::Reroute | Recovery::Retry)) {
                    misrouted.push(Misrouted { index, error: e.clone() });
                    continue;
                }
            }
            if let Some(e) = partition_error(part.error.as_ref()) {
                return Err(e);
            }
            if part.records.is_empty() {
                continue;
            }
            let mut next = offset;
            let mut good = 0;
            let mut stuck = None;
            for b in Batches::new(&part.records) {
                match b.and_then(|(_, slice)| batch::verify(slice)) {
                    Ok(header) => {
                        good += header.total_len();
                        next = next.max(header.next_offset());
                    }
                    Err(e) => {
                        stuck = Some(Stuck::unchecked(next, &e));
                        break;
                    }
                }
            }
            checked.push(Checked {
                index,
                next,
                stuck,
                fetched: FetchedBatches {
                    topic: part.topic,
                    partition: part.partition,
                    records: part.records.slice(..good),
                    skip_below: offset,
                    high_watermark: part.high_watermark,
                },
            });
        }
        Ok((checked, misrouted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_proto::batch::{set_base_offset, BatchBuilder, Compression, HEADER_LEN};

    // Byte positions from the documented batch layout.
    const LENGTH_AT: usize = 8;
    const CRC_AT: usize = 17;
    const ATTRIBUTES_AT: usize = 21;
    const LAST_OFFSET_DELTA_AT: usize = 23;
    const RECORD_COUNT_AT: usize = 57;

    fn batch(base: i64, values: &[&str]) -> Vec<u8> {
        let mut b = BatchBuilder::new(Compression::None, 1_000);
        for v in values {
            b.append(1_000, None, Some(v.as_bytes()), &[]);
        }
        let mut out = b.build().to_vec();
        set_base_offset(&mut out, base);
        out
    }

    /// Length and CRC32C written again after an edit: the batch passes
    /// `verify` as the broker's produce path does.
    fn reseal(mut buf: Vec<u8>) -> Vec<u8> {
        let length = (buf.len() - 12) as i32;
        buf[LENGTH_AT..LENGTH_AT + 4].copy_from_slice(&length.to_be_bytes());
        let crc = crc32c::crc32c(&buf[ATTRIBUTES_AT..]);
        buf[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        assert!(batch::verify(&buf).is_ok());
        buf
    }

    /// `count` records said to be lz4-compressed, over bytes that are not.
    fn lz4_garbage(base: i64, count: usize) -> Vec<u8> {
        let values: Vec<String> = (0..count).map(|i| format!("v{i}")).collect();
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        let mut buf = batch(base, &refs)[..HEADER_LEN].to_vec();
        buf[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&Compression::Lz4.id().to_be_bytes());
        buf.extend_from_slice(&64u32.to_le_bytes());
        buf.extend_from_slice(&[0xff; 24]);
        reseal(buf)
    }

    /// `values`, then one record more that the header counts but that is
    /// not there.
    fn missing_last(base: i64, values: &[&str]) -> Vec<u8> {
        let mut buf = batch(base, values);
        let count = values.len() as i32 + 1;
        buf[RECORD_COUNT_AT..RECORD_COUNT_AT + 4].copy_from_slice(&count.to_be_bytes());
        buf[LAST_OFFSET_DELTA_AT..LAST_OFFSET_DELTA_AT + 4].copy_from_slice(&(count - 1).to_be_bytes());
        reseal(buf)
    }

    fn joined(batches: &[Vec<u8>]) -> Bytes {
        Bytes::from(batches.concat())
    }

    fn fetched(records: Bytes, skip_below: i64) -> FetchedBatches {
        FetchedBatches { topic: "t".into(), partition: 0, records, skip_below, high_watermark: 100 }
    }

    fn walk(f: &FetchedBatches) -> (Vec<i64>, std::result::Result<i64, Stuck>) {
        let mut seen = Vec::new();
        let end = f.walk(|r| seen.push(r.offset));
        (seen, end)
    }

    #[test]
    fn a_walk_stops_at_an_undecodable_batch_after_the_records_before_it() {
        let all = joined(&[batch(0, &["a", "b", "c"]), lz4_garbage(3, 3), batch(6, &["g", "h", "i"])]);
        let (seen, end) = walk(&fetched(all.clone(), 0));
        assert_eq!(seen, [0, 1, 2]);
        let stuck = end.unwrap_err();
        assert_eq!((stuck.offset, stuck.skip_to), (3, 6));
        assert!(stuck.reason.contains("decompress"), "{}", stuck.reason);
        // From inside the bad batch: stuck where it started.
        let (seen, end) = walk(&fetched(all.clone(), 4));
        assert!(seen.is_empty());
        assert_eq!(end.unwrap_err().offset, 4);
        // Past it (after a skip): the bad batch is not even decoded.
        let (seen, end) = walk(&fetched(all, 6));
        assert_eq!(seen, [6, 7, 8]);
        assert_eq!(end, Ok(9));
    }

    #[test]
    fn a_broken_record_keeps_the_records_before_it_in_its_batch() {
        let all = joined(&[batch(0, &["a", "b"]), missing_last(2, &["c", "d"]), batch(5, &["f"])]);
        let (seen, end) = walk(&fetched(all, 0));
        assert_eq!(seen, [0, 1, 2, 3]);
        let stuck = end.unwrap_err();
        assert_eq!((stuck.offset, stuck.skip_to), (4, 5));
    }

    #[test]
    fn record_offsets_outside_their_batch_stop_the_walk() {
        // Three records, but the header says the batch spans one offset.
        let mut buf = batch(10, &["a", "b", "c"]);
        buf[LAST_OFFSET_DELTA_AT..LAST_OFFSET_DELTA_AT + 4].copy_from_slice(&0i32.to_be_bytes());
        let (seen, end) = walk(&fetched(Bytes::from(buf), 0));
        assert_eq!(seen, [10]);
        assert_eq!(end.unwrap_err().offset, 11);
    }

    #[test]
    fn for_each_record_names_topic_partition_and_offset() {
        let f = fetched(joined(&[batch(0, &["a"]), lz4_garbage(1, 2)]), 0);
        let mut n = 0;
        let err = f.for_each_record(|_| n += 1).unwrap_err();
        assert_eq!(n, 1);
        match &err {
            Error::CorruptRecord { topic, partition, offset, .. } => {
                assert_eq!((topic.as_str(), *partition, *offset), ("t", 0, 1));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(!err.is_retriable());
        let text = err.to_string();
        assert!(text.starts_with("cannot read t-0 at offset 1: "), "{text}");
        assert!(text.contains("skip_corrupt"), "{text}");
    }

    async fn consumer(partitions: &[u32]) -> Consumer {
        let conn = crate::connection::Connection::lazy("127.0.0.1:9").unwrap();
        let cluster = Arc::new(Cluster::with_home(vec!["127.0.0.1:9".into()], conn, 1));
        let mut c = Consumer::with_cluster(cluster, ConsumerConfig::default());
        for &p in partitions {
            c.set_position("t", p, 0);
        }
        c
    }

    fn answer(parts: &[(u32, Bytes)]) -> v1::FetchResponse {
        v1::FetchResponse {
            partitions: parts
                .iter()
                .map(|(p, records)| v1::FetchPartitionResponse {
                    topic: "t".into(),
                    partition: *p,
                    high_watermark: 100,
                    log_start_offset: 0,
                    records: records.clone(),
                    error: None,
                    ..Default::default()
                })
                .collect(),
        }
    }

    fn offsets(records: &[ConsumerRecord]) -> Vec<(u32, i64)> {
        records.iter().map(|r| (r.partition, r.offset)).collect()
    }

    #[tokio::test]
    async fn a_bad_batch_stops_only_its_partition_and_only_there() {
        let mut c = consumer(&[0, 1]).await;
        let asked = c.next_request();
        let response = answer(&[
            (0, joined(&[batch(0, &["a", "b", "c"]), lz4_garbage(3, 3), batch(6, &["g"])])),
            (1, joined(&[batch(0, &["x", "y"])])),
        ]);
        let (records, stopped) = c.take_answer::<Records>(response, &asked).unwrap();
        assert_eq!(offsets(&records), [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]);
        assert!(matches!(stopped, Some(Error::CorruptRecord { partition: 0, offset: 3, .. })));
        assert_eq!(c.position("t", 0), Some(3));
        assert_eq!(c.position("t", 1), Some(2));
        // The stuck partition is no longer fetched, the others are.
        assert_eq!(c.next_request(), [("t".to_string(), 1, 2)]);
        assert!(matches!(c.stuck_error(), Some(Error::CorruptRecord { partition: 0, offset: 3, .. })));
        // Skipping goes past the whole batch and fetches it again.
        assert_eq!(c.skip_corrupt("t", 1), None);
        assert_eq!(c.skip_corrupt("t", 0), Some(6));
        assert_eq!(c.skip_corrupt("t", 0), None);
        assert!(c.stuck_error().is_none());
        let mut asked = c.next_request();
        asked.sort();
        assert_eq!(asked, [("t".to_string(), 0, 6), ("t".to_string(), 1, 2)]);
    }

    #[tokio::test]
    async fn a_checksum_failure_stops_its_partition_after_the_good_batches() {
        let mut c = consumer(&[0]).await;
        let mut bad = batch(2, &["c", "d"]);
        let last = bad.len() - 1;
        bad[last] ^= 0x55;
        let all = joined(&[batch(0, &["a", "b"]), bad, batch(4, &["e"])]);
        for raw in [false, true] {
            c.seek("t", 0, 0);
            let asked = c.next_request();
            let got = if raw {
                let (fetched, stopped) =
                    c.take_answer::<RawBatches>(answer(&[(0, all.clone())]), &asked).unwrap();
                assert!(stopped.is_some());
                assert_eq!(fetched.len(), 1);
                assert_eq!(fetched[0].batch_count(), 1, "only the batch before the bad one");
                decode_all(&fetched)
            } else {
                let (records, stopped) =
                    c.take_answer::<Records>(answer(&[(0, all.clone())]), &asked).unwrap();
                let text = stopped.map(|e| e.to_string()).unwrap_or_default();
                assert!(text.contains("t-0 at offset 2") && text.contains("CRC32C"), "{text}");
                records
            };
            assert_eq!(offsets(&got), [(0, 0), (0, 1)]);
            assert_eq!(c.position("t", 0), Some(2));
            assert!(c.next_request().is_empty());
            // The header cannot be trusted: a skip goes one offset on.
            assert_eq!(c.skip_corrupt("t", 0), Some(3));
        }
    }

    #[tokio::test]
    async fn seek_and_assign_clear_a_stuck_partition() {
        let mut c = consumer(&[0]).await;
        let asked = c.next_request();
        let (records, stopped) =
            c.take_answer::<Records>(answer(&[(0, joined(&[lz4_garbage(0, 2)]))]), &asked).unwrap();
        assert!(records.is_empty() && stopped.is_some());
        assert_eq!(c.position("t", 0), Some(0));
        c.seek("t", 0, 0);
        assert!(c.stuck_error().is_none());
        assert_eq!(c.next_request(), [("t".to_string(), 0, 0)]);
    }

    /// Brokers 0 and 1; partition p of "t" led by `leaders[p]` at epoch 1.
    fn learn_leaders(c: &Consumer, leaders: &[i32]) {
        let broker = |id: i32| v1::BrokerInfo {
            node_id: id,
            address: format!("127.0.0.1:{}", 9 - id),
            rack: String::new(),
        };
        c.cluster.learn(v1::MetadataResponse {
            brokers: vec![broker(0), broker(1)],
            controller_id: 0,
            topics: vec![v1::TopicMetadata {
                name: "t".into(),
                partitions: leaders
                    .iter()
                    .enumerate()
                    .map(|(p, &leader)| v1::PartitionMetadata {
                        partition: p as u32,
                        leader,
                        leader_epoch: 1,
                        replicas: vec![0, 1],
                        isr: vec![0, 1],
                    })
                    .collect(),
            }],
            ..Default::default()
        });
    }

    fn with_error(
        mut response: v1::FetchResponse,
        partition: u32,
        error: v1::PartitionError,
    ) -> v1::FetchResponse {
        response.partitions.push(v1::FetchPartitionResponse {
            topic: "t".into(),
            partition,
            high_watermark: -1,
            log_start_offset: -1,
            error: Some(error),
            ..Default::default()
        });
        response
    }

    fn not_leader(leader_id: i32, leader_address: &str, leader_epoch: i32) -> v1::PartitionError {
        v1::PartitionError {
            code: v1::ErrorCode::NotLeader as i32,
            message: "not the leader".into(),
            leader_id,
            leader_address: leader_address.into(),
            leader_epoch,
        }
    }

    #[tokio::test]
    async fn fetches_are_grouped_per_leader() {
        let mut c = consumer(&[0, 1, 2]).await;
        learn_leaders(&c, &[0, 1, 0]);
        c.start_fetches(Duration::from_millis(10));
        let mut routes: Vec<(i32, Vec<u32>)> = c
            .pending
            .iter()
            .map(|p| {
                let mut parts: Vec<u32> = p.asked.iter().map(|a| a.1).collect();
                parts.sort();
                (p.leader, parts)
            })
            .collect();
        routes.sort();
        assert_eq!(routes, [(0, vec![0, 2]), (1, vec![1])]);
        // Partitions in a fetch are not asked for again until it answers.
        assert!(c.next_request().is_empty());
        c.cancel_prefetch();
        assert_eq!(c.next_request().len(), 3);
    }

    #[tokio::test]
    async fn a_moved_leader_keeps_its_partition_in_place_and_the_others_go_on() {
        let mut c = consumer(&[0, 1]).await;
        learn_leaders(&c, &[0, 0]);
        let asked = c.next_request();
        let response =
            with_error(answer(&[(0, joined(&[batch(0, &["a", "b"])]))]), 1, not_leader(1, "127.0.0.1:8", 2));
        let (records, stopped) = c.take_answer::<Records>(response, &asked).unwrap();
        assert_eq!(offsets(&records), [(0, 0), (0, 1)]);
        assert!(stopped.is_none());
        assert_eq!(c.position("t", 0), Some(2));
        assert_eq!(c.position("t", 1), Some(0), "nothing of the moved partition was taken");
        // The hint moved it at once: the next fetch goes to broker 1.
        assert_eq!(c.cluster.leader("t", 1), Some(Leader { id: 1, epoch: 2 }));
        let mut next = c.next_request();
        next.sort();
        assert_eq!(next, [("t".to_string(), 0, 2), ("t".to_string(), 1, 0)]);
    }

    #[tokio::test]
    async fn without_a_hint_the_partition_pauses_and_its_leader_is_forgotten() {
        let mut c = consumer(&[0, 1]).await;
        learn_leaders(&c, &[0, 0]);
        let asked = c.next_request();
        let no_leader = v1::PartitionError {
            code: v1::ErrorCode::LeaderNotAvailable as i32,
            message: "election".into(),
            leader_id: -1,
            ..Default::default()
        };
        let response = with_error(answer(&[(0, joined(&[batch(0, &["a"])]))]), 1, no_leader);
        let (records, _) = c.take_answer::<Records>(response, &asked).unwrap();
        assert_eq!(offsets(&records), [(0, 0)]);
        assert_eq!(c.position("t", 1), Some(0));
        assert_eq!(c.cluster.leader("t", 1).and_then(Leader::broker), None);
        assert_eq!(c.next_request(), [("t".to_string(), 0, 1)], "the moved partition pauses");
        let retry = c.next_retry().unwrap();
        assert!(retry > Instant::now() && retry <= Instant::now() + REROUTE_BACKOFF);
    }

    #[tokio::test]
    async fn a_failed_fetch_moves_nothing_and_is_asked_again_later() {
        let mut c = consumer(&[0, 1]).await;
        learn_leaders(&c, &[0, 1]);
        c.seek("t", 0, 5);
        let asked = c.next_request();
        let pending =
            Pending { leader: 0, task: tokio::spawn(async { Ok(v1::FetchResponse::default()) }), asked };
        c.fetch_failed(&pending, &Error::Transport("cannot reach the broker at 127.0.0.1:9".into()));
        assert_eq!(c.position("t", 0), Some(5));
        assert_eq!(c.cluster.leader("t", 0).and_then(Leader::broker), None);
        assert!(c.next_request().is_empty());
        assert!(c.next_retry().is_some());
    }

    #[tokio::test]
    async fn other_partition_errors_still_fail_the_whole_answer() {
        let mut c = consumer(&[0, 1]).await;
        learn_leaders(&c, &[0, 0]);
        let asked = c.next_request();
        let unknown = v1::PartitionError {
            code: v1::ErrorCode::UnknownTopicOrPartition as i32,
            message: "unknown partition 1".into(),
            ..Default::default()
        };
        let response = with_error(answer(&[(0, joined(&[batch(0, &["a"])]))]), 1, unknown);
        let e = c.take_answer::<Records>(response, &asked).unwrap_err();
        assert!(!e.is_retriable(), "{e}");
        assert_eq!((c.position("t", 0), c.position("t", 1)), (Some(0), Some(0)));
    }

    fn decode_all(fetched: &[FetchedBatches]) -> Vec<ConsumerRecord> {
        let mut out = Vec::new();
        for f in fetched {
            f.for_each_record(|r| out.push(ConsumerRecord::new(f, r))).unwrap();
        }
        out
    }
}
