//! Where produced records wait to be sent: one open batch per partition that
//! records are encoded straight into, and behind it the closed batches in the
//! order they must reach the broker.
//!
//! This is the producer's hot path, so nothing here happens per record
//! beyond encoding it: no allocation, no channel send, no oneshot. A record's
//! [`DeliveryFuture`] is an `Arc` of its batch's shared completion plus the
//! record's index in the batch; the broker's base offset for the batch gives
//! every record its offset at once.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tributary_proto::batch::{BatchBuilder, Compression, ProducerStamp};

use crate::error::{Error, Result};
use crate::idempotence::SequenceState;
use crate::partitioner::StickyPartition;

/// Where the broker put a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMetadata {
    pub topic: String,
    pub partition: u32,
    /// -1 with acks = 0: the broker does not say.
    pub offset: i64,
    /// The record's timestamp as sent (create time), ms since the epoch.
    pub timestamp: i64,
}

/// Producer-wide bookkeeping every batch reports to when it completes:
/// buffer memory, delivery counts and send→ack latency. Kept apart from the
/// partitions so a batch can hold it without a reference cycle.
pub(crate) struct Accounting {
    pub memory: Semaphore,
    pub latency: Option<Mutex<Histogram<u64>>>,
    /// Latency timestamps are micros since this instant: 8 bytes a record
    /// instead of an `Instant` (16).
    pub epoch: Instant,
    pub acknowledged: AtomicU64,
    pub failed: AtomicU64,
    pub first_error: OnceLock<Error>,
}

impl Accounting {
    pub fn new(buffer_memory: usize, record_latency: bool) -> Self {
        // 1 µs to 1 h at 3 significant digits.
        let latency = if record_latency {
            Histogram::new_with_bounds(1, 3_600_000_000, 3).ok().map(Mutex::new)
        } else {
            None
        };
        Accounting {
            memory: Semaphore::new(buffer_memory.min(Semaphore::MAX_PERMITS)),
            latency,
            epoch: Instant::now(),
            acknowledged: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            first_error: OnceLock::new(),
        }
    }

    pub fn micros_now(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }
}

/// What the broker made of a batch that was stored.
#[derive(Debug)]
pub(crate) struct Delivered {
    /// Offset of the batch's first stored record; -1 with acks = 0.
    base: i64,
    /// Records that were refused while the rest were stored (see
    /// [`crate::split`]), by index, ascending. Stored records after a hole
    /// move up one offset per hole. Usually empty (no allocation).
    holes: Vec<(u32, Error)>,
    /// When the stored records went out as several batches (a split), where
    /// each batch landed: (index among the stored records, base offset),
    /// ascending. Empty: every stored record follows `base`.
    runs: Vec<(u32, i64)>,
}

impl Delivered {
    /// The offset of record `index`, or why it alone was refused.
    fn offset(&self, index: u32) -> Result<i64> {
        if let Ok(at) = self.holes.binary_search_by_key(&index, |h| h.0) {
            return Err(self.holes[at].1.clone());
        }
        if self.base < 0 {
            return Ok(-1);
        }
        let stored = index - self.holes.partition_point(|h| h.0 < index) as u32;
        let run = self.runs.partition_point(|r| r.0 <= stored);
        let (first, base) = if run == 0 { (0, self.base) } else { self.runs[run - 1] };
        Ok(base + i64::from(stored - first))
    }
}

/// The completion every record of one batch waits on.
pub(crate) struct BatchShared {
    topic: Arc<str>,
    partition: u32,
    /// Where the batch's records went, or why it failed as a whole.
    result: OnceLock<Result<Delivered>>,
    wakers: Mutex<Vec<Waker>>,
}

impl BatchShared {
    fn new(topic: Arc<str>, partition: u32) -> Self {
        BatchShared { topic, partition, result: OnceLock::new(), wakers: Mutex::new(Vec::new()) }
    }

    /// Sets the outcome once (later calls change nothing) and wakes the
    /// waiters.
    fn complete(&self, result: Result<Delivered>) {
        if self.result.set(result).is_err() {
            return;
        }
        let wakers = std::mem::take(&mut *self.wakers.lock());
        for w in wakers {
            w.wake();
        }
    }

    fn poll_result(&self, cx: &mut Context<'_>) -> Poll<&Result<Delivered>> {
        if let Some(r) = self.result.get() {
            return Poll::Ready(r);
        }
        let mut wakers = self.wakers.lock();
        // Checked again under the lock: `complete` sets the result before it
        // takes the wakers, so a waker pushed now is always woken.
        if let Some(r) = self.result.get() {
            return Poll::Ready(r);
        }
        // The same task polling again (the common case) doesn't pile up
        // wakers; distinct tasks each get theirs.
        if !wakers.last().is_some_and(|w| w.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// Resolves when the broker acknowledged the record (with its offset), or
/// when sending it finally failed. Dropping it does not cancel the send
/// (the outcome still counts in [`crate::Producer::delivery_report`]).
pub struct DeliveryFuture {
    batch: Arc<BatchShared>,
    index: u32,
    timestamp: i64,
}

impl std::fmt::Debug for DeliveryFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryFuture")
            .field("topic", &self.batch.topic)
            .field("partition", &self.batch.partition)
            .field("index", &self.index)
            .finish()
    }
}

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match this.batch.poll_result(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err(e.clone())),
            Poll::Ready(Ok(delivered)) => {
                Poll::Ready(delivered.offset(this.index).map(|offset| RecordMetadata {
                    topic: this.batch.topic.to_string(),
                    partition: this.batch.partition,
                    offset,
                    timestamp: this.timestamp,
                }))
            }
        }
    }
}

/// Resolves when a batch completed, whatever the outcome (for `flush`).
pub(crate) struct BatchDone(pub Arc<BatchShared>);

impl Future for BatchDone {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.poll_result(cx).map(|_| ())
    }
}

enum Payload {
    Open(BatchBuilder),
    Built(Bytes),
    Taken,
}

/// One batch, from its first record until the broker answered for it.
///
/// Dropping a batch that never completed (the runtime shut down, the
/// producer went away) fails its records with [`Error::Closed`], so no
/// `DeliveryFuture` waits forever, and gives its buffer memory back.
pub(crate) struct Batch {
    pub shared: Arc<BatchShared>,
    payload: Payload,
    created: Instant,
    records: u32,
    /// Buffer-memory permits held until the batch completes.
    reserved: usize,
    /// The part of `reserved` no record uses yet: memory is taken from the
    /// semaphore in chunks, not per record, and the rest is given back when
    /// the batch closes.
    prepaid: usize,
    /// Per record, micros since `Accounting::epoch` at `send`; only with
    /// `record_latency`.
    sent_at: Vec<u64>,
    acct: Arc<Accounting>,
    /// Audit window of the first record (with `BatchLimits::window_ms`).
    window: i64,
}

impl Batch {
    fn new(
        topic: Arc<str>,
        partition: u32,
        compression: Compression,
        timestamp: i64,
        capacity: usize,
        acct: &Arc<Accounting>,
    ) -> Self {
        Batch {
            shared: Arc::new(BatchShared::new(topic, partition)),
            payload: Payload::Open(BatchBuilder::with_capacity(compression, timestamp, capacity)),
            created: Instant::now(),
            records: 0,
            reserved: 0,
            prepaid: 0,
            sent_at: Vec::new(),
            acct: acct.clone(),
            window: i64::MIN,
        }
    }

    pub fn records(&self) -> u32 {
        self.records
    }

    /// When its first record arrived (the delivery timeout counts from it).
    pub fn created(&self) -> Instant {
        self.created
    }

    /// Uncompressed bytes so far (the batch_size measure).
    fn size(&self) -> usize {
        match &self.payload {
            Payload::Open(b) => b.size(),
            Payload::Built(b) => b.len(),
            Payload::Taken => 0,
        }
    }

    fn builder(&mut self) -> Option<&mut BatchBuilder> {
        match &mut self.payload {
            Payload::Open(b) => Some(b),
            _ => None,
        }
    }

    /// The finished batch bytes; compresses on first call, so that work
    /// happens in the sender task rather than under the partition lock.
    /// `stamp` (an idempotent producer's id, epoch and sequence) is written
    /// on that first call; later calls return the same bytes.
    pub fn build(&mut self, stamp: Option<ProducerStamp>) -> Bytes {
        match std::mem::replace(&mut self.payload, Payload::Taken) {
            Payload::Open(mut b) => {
                if let Some(stamp) = stamp {
                    b.set_producer(stamp);
                }
                let bytes = b.build();
                self.payload = Payload::Built(bytes.clone());
                bytes
            }
            Payload::Built(bytes) => {
                self.payload = Payload::Built(bytes.clone());
                bytes
            }
            Payload::Taken => Bytes::new(),
        }
    }

    /// Gives back memory taken ahead that no record used.
    fn release_prepaid(&mut self) {
        if self.prepaid > 0 {
            self.acct.memory.add_permits(self.prepaid);
            self.reserved -= self.prepaid;
            self.prepaid = 0;
        }
    }

    /// Settles every record of the batch: `Ok(base_offset)` or the error.
    pub fn complete(&mut self, result: Result<i64>) {
        self.settle(result.map(|base| Delivered { base, holes: Vec::new(), runs: Vec::new() }));
    }

    /// Settles a batch that was re-sent as several smaller ones: stored
    /// except for the records in `holes` (ascending indexes, each with why it
    /// failed); `runs` says where each smaller batch landed (index among the
    /// stored records, base offset; ascending, the first at index 0).
    pub fn complete_split(&mut self, holes: Vec<(u32, Error)>, runs: Vec<(u32, i64)>) {
        let base = runs.first().map_or(-1, |r| r.1);
        self.settle(Ok(Delivered { base, holes, runs }));
    }

    fn settle(&mut self, result: Result<Delivered>) {
        // Only the batch's owner completes it, so check-then-set is no race.
        // Counts come first: whoever wakes up (flush) must already see them.
        if self.shared.result.get().is_none() {
            let (stored, refused) = match &result {
                Ok(d) => (u64::from(self.records) - d.holes.len() as u64, d.holes.first().map(|h| &h.1)),
                Err(e) => (0, Some(e)),
            };
            if let Some(e) = refused {
                let _ = self.acct.first_error.set(e.clone());
                self.acct.failed.fetch_add(u64::from(self.records) - stored, Ordering::Relaxed);
            }
            self.acct.acknowledged.fetch_add(stored, Ordering::Relaxed);
            if let (Ok(d), Some(h)) = (&result, &self.acct.latency) {
                let now = self.acct.micros_now();
                let mut h = h.lock();
                for (i, &t) in self.sent_at.iter().enumerate() {
                    if d.holes.is_empty() || d.holes.binary_search_by_key(&(i as u32), |h| h.0).is_err() {
                        h.saturating_record(now.saturating_sub(t).max(1));
                    }
                }
            }
            self.shared.complete(result);
        }
        if self.reserved > 0 {
            self.acct.memory.add_permits(self.reserved);
            self.reserved = 0;
        }
        self.payload = Payload::Taken;
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        if self.shared.result.get().is_none() || self.reserved > 0 {
            self.complete(Err(Error::Closed));
        }
    }
}

/// A topic as the producer knows it; replaced (keeping the partitions'
/// state) when its metadata is refreshed.
pub(crate) struct TopicState {
    pub meta: Arc<TopicMeta>,
    pub partitions: Vec<Arc<PartitionState>>,
}

impl TopicState {
    pub fn count(&self) -> u32 {
        self.partitions.len() as u32
    }
}

/// What outlives metadata refreshes of a topic.
pub(crate) struct TopicMeta {
    pub name: Arc<str>,
    pub sticky: StickyPartition,
    pub count: AtomicU32,
    /// Set when the broker said the topic or a partition is unknown: the
    /// next `send` asks for fresh metadata.
    pub stale: AtomicBool,
}

/// One partition's batches.
pub(crate) struct PartitionState {
    pub topic: Arc<TopicMeta>,
    pub partition: u32,
    pub inner: Mutex<PartitionInner>,
    /// The idempotent producer's sequence; only the partition's sender task
    /// touches it (one at a time), so the lock is never contended.
    pub sequence: Mutex<SequenceState>,
}

#[derive(Default)]
pub(crate) struct PartitionInner {
    open: Option<Batch>,
    /// Closed batches, oldest first, not yet sent.
    queue: VecDeque<Batch>,
    /// Completions of the batches in the request in flight (for `flush`).
    in_flight: Vec<Arc<BatchShared>>,
    /// A sender task owns this partition's requests; at most one runs, which
    /// is what keeps the partition's batches in order.
    sending: bool,
    /// The last batch closed full: size the next one for a whole batch at
    /// once instead of growing it.
    busy: bool,
}

/// What a record brings to `append`.
pub(crate) struct NewRecord<'a> {
    pub timestamp: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: &'a [(&'a str, Option<&'a [u8]>)],
    /// Buffer memory the record is charged.
    pub footprint: usize,
    /// Of that, what the caller already took from the semaphore (after
    /// waiting for it); the rest comes from the batch's prepaid memory.
    pub reserved: usize,
    pub sent_at: Option<u64>,
    /// Keyless, unpinned record: if this partition's batch is full, close it
    /// and let the caller pick the next sticky partition instead.
    pub switch_if_full: bool,
}

/// The producer settings `append` needs.
pub(crate) struct BatchLimits {
    pub batch_size: usize,
    pub compression: Compression,
    pub linger: Duration,
    /// Tracking producers: a batch never holds records of two audit
    /// windows this wide (0: no such limit), so brokers count per window
    /// from batch headers alone.
    pub window_ms: i64,
}

pub(crate) enum Appended {
    Done {
        future: DeliveryFuture,
        /// Spawn this partition's sender task.
        start_sender: bool,
        /// A new batch was opened: the linger timer may need to know.
        opened: bool,
    },
    /// The sticky partition's batch was full and got closed; pick again.
    Switch { start_sender: bool },
    /// Buffer memory is short: the caller must wait for `footprint` bytes
    /// and append again with them reserved.
    NeedMemory { start_sender: bool },
}

/// Buffer memory is taken from the semaphore this much at a time (at most
/// `batch_size`), so most records need no atomic operation for it.
const PREPAY: usize = 32 << 10;

fn try_take(acct: &Accounting, bytes: usize) -> bool {
    match u32::try_from(bytes).map(|n| acct.memory.try_acquire_many(n)) {
        Ok(Ok(permit)) => {
            permit.forget();
            true
        }
        _ => false,
    }
}

/// Smallest buffer a new batch starts with when its partition is not busy.
const SMALL_BATCH: usize = 16 << 10;

impl PartitionState {
    pub fn new(topic: Arc<TopicMeta>, partition: u32, sequence: SequenceState) -> Self {
        PartitionState {
            topic,
            partition,
            inner: Mutex::new(PartitionInner::default()),
            sequence: Mutex::new(sequence),
        }
    }

    /// Encodes one record into the open batch, closing the batch first when
    /// the record would take it past `batch_size`.
    pub fn append(&self, limits: &BatchLimits, acct: &Arc<Accounting>, r: NewRecord<'_>) -> Appended {
        let mut guard = self.inner.lock();
        let g = &mut *guard;
        let mut start_sender = false;
        let mut full = false;
        if let Some(open) = g.open.as_mut() {
            let current = open.size();
            if let Some(b) = open.builder() {
                let size = b.record_size(r.timestamp, r.key, r.value, r.headers);
                full = !b.is_empty() && current + size > limits.batch_size;
            }
        }
        let window = if limits.window_ms > 0 {
            crate::audit::window_start(r.timestamp, limits.window_ms)
        } else {
            i64::MIN
        };
        let other_window = g.open.as_ref().is_some_and(|b| b.records > 0 && b.window != window);
        if other_window && !full {
            start_sender = self.close_open(g, false);
        }
        if full {
            start_sender = self.close_open(g, true);
            if r.switch_if_full {
                return Appended::Switch { start_sender };
            }
        }
        let prepaid = g.open.as_ref().map_or(0, |b| b.prepaid);
        let need = r.footprint.saturating_sub(r.reserved);
        let mut taken = 0;
        if need > prepaid {
            let short = need - prepaid;
            let chunk = short.max(PREPAY.min(limits.batch_size));
            if try_take(acct, chunk) {
                taken = chunk;
            } else if try_take(acct, short) {
                taken = short;
            } else {
                return Appended::NeedMemory { start_sender };
            }
        }
        let mut opened = false;
        let busy = g.busy;
        let open = g.open.get_or_insert_with(|| {
            opened = true;
            let capacity = if busy { limits.batch_size } else { limits.batch_size.min(SMALL_BATCH) };
            Batch::new(
                self.topic.name.clone(),
                self.partition,
                limits.compression,
                r.timestamp,
                capacity.max(r.footprint + 64),
                acct,
            )
        });
        let index = open.records;
        open.window = window;
        if let Some(b) = open.builder() {
            b.append(r.timestamp, r.key, r.value, r.headers);
        }
        open.records += 1;
        open.reserved += r.reserved + taken;
        open.prepaid = open.prepaid + taken - need;
        if let Some(t) = r.sent_at {
            open.sent_at.push(t);
        }
        let future = DeliveryFuture { batch: open.shared.clone(), index, timestamp: r.timestamp };
        // linger = 0: send as soon as the partition is idle; while a request
        // is in flight the batch keeps filling, so batches grow with load.
        if limits.linger.is_zero() && !g.sending {
            start_sender |= self.close_open(g, false);
        }
        Appended::Done { future, start_sender, opened }
    }

    /// Moves the open batch to the send queue. Returns true when the caller
    /// must spawn the sender task (it is marked running here, under the lock).
    fn close_open(&self, g: &mut PartitionInner, full: bool) -> bool {
        let Some(mut batch) = g.open.take() else { return false };
        batch.release_prepaid();
        g.queue.push_back(batch);
        g.busy = full;
        self.topic.sticky.batch_closed(self.partition, self.topic.count.load(Ordering::Relaxed));
        if g.sending {
            false
        } else {
            g.sending = true;
            true
        }
    }

    /// The linger timer's check: closes the open batch when it is old enough,
    /// or with `force_idle` (buffer memory ran out) when no request of this
    /// partition is in flight to free some.
    /// Returns whether to spawn the sender, and when to look again.
    pub fn linger_check(&self, now: Instant, linger: Duration, force_idle: bool) -> (bool, Option<Instant>) {
        let mut g = self.inner.lock();
        let Some(open) = &g.open else { return (false, None) };
        let due = open.created + linger;
        if due <= now || (force_idle && !g.sending) {
            (self.close_open(&mut g, false), None)
        } else {
            (false, Some(due))
        }
    }

    /// For `flush`: closes the open batch and returns every incomplete
    /// batch's completion, plus whether to spawn the sender.
    pub fn close_for_flush(&self) -> (bool, Vec<Arc<BatchShared>>) {
        let mut g = self.inner.lock();
        let start = self.close_open(&mut g, false);
        let waits = g.in_flight.iter().cloned().chain(g.queue.iter().map(|b| b.shared.clone())).collect();
        (start, waits)
    }

    /// The next request's batches, oldest first: up to `max_batches` and
    /// about `max_bytes`. An empty result means there is nothing to send and
    /// the sender task must end (it is marked stopped here, under the lock).
    pub fn take_for_request(&self, linger: Duration, max_batches: usize, max_bytes: usize) -> Vec<Batch> {
        let mut g = self.inner.lock();
        g.in_flight.clear();
        let expired = g.open.as_ref().is_some_and(|b| b.created.elapsed() >= linger);
        if expired && g.queue.len() < max_batches {
            self.close_open(&mut g, false);
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        while out.len() < max_batches.max(1) {
            let Some(next) = g.queue.front() else { break };
            if !out.is_empty() && bytes + next.size() > max_bytes {
                break;
            }
            bytes += next.size();
            if let Some(b) = g.queue.pop_front() {
                out.push(b);
            }
        }
        if out.is_empty() {
            g.sending = false;
        }
        g.in_flight = out.iter().map(|b| b.shared.clone()).collect();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_skip_holes() {
        let refused = Error::InvalidArgument("too large".into());
        let d =
            Delivered { base: 100, holes: vec![(1, refused.clone()), (3, refused.clone())], runs: vec![] };
        assert_eq!(d.offset(0), Ok(100));
        assert_eq!(d.offset(1), Err(refused.clone()));
        assert_eq!(d.offset(2), Ok(101));
        assert_eq!(d.offset(3), Err(refused));
        assert_eq!(d.offset(4), Ok(102));
        let plain = Delivered { base: 7, holes: Vec::new(), runs: Vec::new() };
        assert_eq!(plain.offset(5), Ok(12));
        let acks0 = Delivered { base: -1, holes: Vec::new(), runs: Vec::new() };
        assert_eq!(acks0.offset(5), Ok(-1));
    }

    #[test]
    fn split_batches_land_where_the_broker_put_them() {
        let refused = Error::InvalidArgument("too large".into());
        // Records 0..6; record 2 too large; stored 0,1 | 3,4 | 5 in three
        // batches at 10, 50 and 90 (other producers wrote in between).
        let d =
            Delivered { base: 10, holes: vec![(2, refused.clone())], runs: vec![(0, 10), (2, 50), (4, 90)] };
        assert_eq!(d.offset(0), Ok(10));
        assert_eq!(d.offset(1), Ok(11));
        assert_eq!(d.offset(2), Err(refused));
        assert_eq!(d.offset(3), Ok(50));
        assert_eq!(d.offset(4), Ok(51));
        assert_eq!(d.offset(5), Ok(90));
    }
}
