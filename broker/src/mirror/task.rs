//! One mirror task: copies one source partition into the destination
//! partition with the same index, on the broker that leads it, in one
//! leader epoch.
//!
//! Start: find the resume point in the destination log itself
//! ([`provenance::last_copied`]), then fetch from the source with the
//! project's client and append through the broker's own produce path
//! (acks=all, `min.insync.replicas`, and the leader epoch the task started
//! in: a deposed leader's task cannot append). Any failure goes back to
//! the start: the log, not the task's memory, says what was copied, so an
//! append whose acknowledgement was lost is neither lost nor repeated.
//! Where retention or compaction removed the last copies, the checkpoint
//! the tasks keep in the metadata (every few seconds, after acknowledged
//! appends) says it instead.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tributary_client::{Consumer, ConsumerConfig, FetchedBatches, OffsetSpec};
use tributary_proto::batch::{self, BatchBuilder, Batches, Compression};
use tributary_proto::v1;

use super::provenance::{self, Provenance};
use super::{CopyReport, MirrorManager};
use crate::cluster::state::{mirror_checkpoint_key, MirrorCheckpoint, MirrorLinkRecord, MirrorStart};
use crate::error::Error;
use crate::replication::Role;
use crate::BrokerState;

/// Uncompressed bytes per destination batch (below the default
/// `max.message.bytes` with room for the provenance headers).
const MAX_BATCH: usize = 512 << 10;
/// How long an append waits for the in-sync replicas.
const APPEND_TIMEOUT_MS: u32 = 10_000;
/// Pause after a failure before the task starts over.
const RETRY: Duration = Duration::from_millis(500);

/// What a task copies, and in which leadership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSpec {
    pub link: MirrorLinkRecord,
    pub source_cluster: String,
    pub destination_cluster: String,
    pub source_topic: String,
    /// [`provenance::topic_tag`] of the source topic's id: a re-created
    /// source topic is a new task that starts over.
    pub source_topic_tag: String,
    pub destination_topic: String,
    pub partition: u32,
    pub epoch: i32,
}

/// A task's progress, as `mirror status` shows it.
#[derive(Debug, Clone)]
pub struct TaskStatus {
    pub source_high_watermark: i64,
    pub last_copied: i64,
    pub copied: u64,
    pub state: &'static str,
    pub error: String,
    /// How far this task has copied, and the last one the metadata has
    /// (see [`MirrorManager::send_checkpoints`]).
    pub checkpoint: Option<MirrorCheckpoint>,
    pub checkpoint_sent: Option<MirrorCheckpoint>,
    /// Records copied since `window_start`, and the rate over the last
    /// closed window.
    window_copied: u64,
    window_start: Instant,
    rate: f64,
}

impl Default for TaskStatus {
    fn default() -> Self {
        TaskStatus {
            source_high_watermark: -1,
            last_copied: -1,
            copied: 0,
            state: "Starting",
            error: String::new(),
            checkpoint: None,
            checkpoint_sent: None,
            window_copied: 0,
            window_start: Instant::now(),
            rate: 0.0,
        }
    }
}

/// Rates are over windows of this length.
const RATE_WINDOW: Duration = Duration::from_secs(5);

impl TaskStatus {
    fn count(&mut self, records: u64) {
        self.copied += records;
        self.window_copied += records;
        self.roll_window();
    }

    fn roll_window(&mut self) {
        let elapsed = self.window_start.elapsed();
        if elapsed >= RATE_WINDOW {
            self.rate = self.window_copied as f64 / elapsed.as_secs_f64();
            self.window_copied = 0;
            self.window_start = Instant::now();
        }
    }

    /// Records per second: the last closed window, or the open one when it
    /// is faster (a burst shows at once).
    pub fn records_per_sec(&mut self) -> f64 {
        self.roll_window();
        let open = self.window_copied as f64 / self.window_start.elapsed().as_secs_f64().max(1.0);
        self.rate.max(open)
    }

    /// Source records not copied yet.
    pub fn lag(&self) -> i64 {
        if self.source_high_watermark < 0 {
            return 0;
        }
        (self.source_high_watermark - (self.last_copied + 1)).max(0)
    }
}

/// Why a task ended.
enum End {
    /// Its leadership (epoch) is gone: the task has nothing more to do.
    Deposed,
    /// The link was paused, changed or deleted (the manager starts what
    /// the new one needs).
    LinkChanged,
}

/// Runs until the destination partition is no longer led here in the
/// task's epoch (the manager also aborts it when the link changes).
pub async fn run(
    state: Arc<BrokerState>,
    manager: Arc<MirrorManager>,
    spec: TaskSpec,
    status: Arc<Mutex<TaskStatus>>,
) {
    loop {
        match copy(&state, &manager, &spec, &status).await {
            Ok(end) => {
                let mut s = status.lock();
                s.state = "Stopped";
                s.error = match end {
                    End::Deposed => "the destination partition's leadership moved".into(),
                    End::LinkChanged => "the link was paused, changed or deleted".into(),
                };
                return;
            }
            Err(e) => {
                tracing::warn!(link = %spec.link.name, topic = %spec.source_topic, partition = spec.partition, error = %e, "mirror task: starting over");
                {
                    let mut s = status.lock();
                    s.state = "Error";
                    s.error = e;
                }
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// Whether the link is still the one the task runs (not paused, changed
/// or deleted). Asked before every append: once a pause or delete call
/// returns, nothing more is copied (the manager's abort may come a moment
/// later).
fn link_current(state: &BrokerState, spec: &TaskSpec) -> bool {
    state.cluster.metadata().mirror_links.get(&spec.link.name) == Some(&spec.link)
}

fn leads(state: &BrokerState, spec: &TaskSpec) -> bool {
    state
        .replicas
        .replica(&spec.destination_topic, spec.partition)
        .is_some_and(|r| r.role() == Role::Leader { epoch: spec.epoch })
}

/// One run: resume point from the log, then fetch and append until
/// something fails.
async fn copy(
    state: &Arc<BrokerState>,
    manager: &Arc<MirrorManager>,
    spec: &TaskSpec,
    status: &Arc<Mutex<TaskStatus>>,
) -> Result<End, String> {
    if !leads(state, spec) {
        return Ok(End::Deposed);
    }
    check_source_topic(spec).await?;
    let last = last_copy(state, manager, spec).await?;
    let recreated_since = last.as_ref().is_some_and(|p| recreated(p, spec));
    let resume = match &last {
        Some(p) if recreated_since => {
            // The source topic was deleted and created again since the last
            // copy: its offsets started over and every record is new here.
            let why = format!(
                "the source topic '{}' was re-created (the last copy came from an earlier topic of that name, \
                 up to its offset {}): copying the new one from its start",
                spec.source_topic, p.offset
            );
            tracing::warn!(link = %spec.link.name, partition = spec.partition, "{why}");
            status.lock().error = why;
            None
        }
        last => last.as_ref().map(|p| p.offset),
    };
    let from = match resume {
        Some(o) => OffsetSpec::Offset(o + 1),
        None if last.is_some() => OffsetSpec::Earliest,
        None => first_start(&spec.link),
    };
    let config = ConsumerConfig {
        bootstrap: spec.link.source_bootstrap.clone(),
        max_wait: Duration::from_millis(500),
        ..Default::default()
    };
    let mut consumer = Consumer::connect(config).await.map_err(|e| format!("source: {e}"))?;
    consumer.assign(&spec.source_topic, spec.partition, from).await.map_err(|e| format!("source: {e}"))?;
    {
        let mut s = status.lock();
        s.last_copied = resume.unwrap_or(-1);
        let position = consumer.position(&spec.source_topic, spec.partition).unwrap_or(0);
        s.source_high_watermark = s.source_high_watermark.max(position);
        if resume.is_none() {
            // Starting at `latest` skips what is there: that is not lag.
            s.last_copied = position - 1;
        }
        s.state = "Copying";
        if !recreated_since {
            s.error.clear();
        }
    }
    tracing::info!(link = %spec.link.name, topic = %spec.source_topic, partition = spec.partition, epoch = spec.epoch, resume = ?resume, "mirror task copying");
    loop {
        if !leads(state, spec) {
            return Ok(End::Deposed);
        }
        let fetched = match consumer.poll_batches(Duration::from_millis(500)).await {
            Ok(f) => f,
            Err(tributary_client::Error::OffsetOutOfRange { start, offset, .. }) if offset < start => {
                // Retention at the source deleted records before they were
                // copied: they are lost to the destination. Say so, go on.
                let why = format!("source records {offset}..{start} were deleted before they were copied");
                tracing::warn!(link = %spec.link.name, topic = %spec.source_topic, partition = spec.partition, "{why}");
                status.lock().error = why;
                consumer.seek(&spec.source_topic, spec.partition, start);
                continue;
            }
            Err(tributary_client::Error::OffsetOutOfRange { end, offset, .. }) if offset > end => {
                // The source partition now ends before what was copied: it
                // lost acknowledged records (an unclean leader election
                // there) or was truncated. Its next records get offsets
                // from its end on, so go on from there (waiting at the old
                // position would skip them); the copies of what it lost
                // stay here. Loud, since records it wrote again below the
                // old position may be missing here: the audit counts show it.
                let why = format!(
                    "the source partition ends at offset {end}, before offset {offset} this link had copied \
                     up to: the source lost or truncated records; copying goes on from {end}"
                );
                // Not a re-created topic (that is a new task's work).
                check_source_topic(spec).await?;
                tracing::warn!(link = %spec.link.name, topic = %spec.source_topic, partition = spec.partition, "{why}");
                status.lock().error = why;
                consumer.seek(&spec.source_topic, spec.partition, end);
                continue;
            }
            Err(e) => return Err(format!("fetching from the source: {e}")),
        };
        for f in fetched {
            status.lock().source_high_watermark = f.high_watermark;
            let (batches, last, timestamps) = rebuild(&f, spec).map_err(|e| e.to_string())?;
            let Some(last) = last else { continue };
            if !link_current(state, spec) {
                return Ok(End::LinkChanged);
            }
            let appended_to = if batches.is_empty() {
                None
            } else {
                Some(append(state, manager, spec, batches, timestamps.len() as i64).await?)
            };
            let mut s = status.lock();
            if let Some(at) = appended_to {
                s.checkpoint = Some(MirrorCheckpoint {
                    source_offset: last,
                    topic_tag: spec.source_topic_tag.clone(),
                    destination_offset: at,
                });
            }
            s.last_copied = last;
            s.count(timestamps.len() as u64);
            let lag = s.lag();
            drop(s);
            let labels = crate::metrics::MirrorLabels {
                link: spec.link.name.clone(),
                topic: spec.source_topic.clone(),
                partition: spec.partition,
            };
            state.metrics.mirror_lag.get_or_create(&labels).set(lag);
            state.metrics.mirror_records.get_or_create(&labels).inc_by(timestamps.len() as u64);
            if !timestamps.is_empty() {
                manager.report(CopyReport {
                    link: spec.link.name.clone(),
                    source_cluster: spec.source_cluster.clone(),
                    source_topic: spec.source_topic.clone(),
                    destination_topic: spec.destination_topic.clone(),
                    partition: spec.partition,
                    timestamps,
                });
            }
        }
    }
}

/// Whether the last copy came from an earlier source topic of that name
/// (copies in the older provenance form, without a tag, count as this one).
fn recreated(last: &Provenance, spec: &TaskSpec) -> bool {
    !last.topic_tag.is_empty() && !spec.source_topic_tag.is_empty() && last.topic_tag != spec.source_topic_tag
}

/// Refuses to copy from another source topic than the one the task was
/// made for. After the source topic is deleted and created again the link
/// sees the new one within a discovery interval; until then a task of the
/// old one must not copy the new topic's records under the old one's tag
/// (its successor would take them for the old topic's and copy them again).
async fn check_source_topic(spec: &TaskSpec) -> Result<(), String> {
    if spec.source_topic_tag.is_empty() {
        return Ok(());
    }
    let source = |e: tributary_client::Error| format!("source: {e}");
    let admin = tributary_client::Admin::connect(&spec.link.source_bootstrap).await.map_err(source)?;
    let now = admin.describe_topic(&spec.source_topic).await.map_err(source)?;
    if provenance::topic_tag(&now.topic_id) != spec.source_topic_tag {
        return Err(format!(
            "the source topic '{}' was deleted and created again: waiting for the link to see the new one",
            spec.source_topic
        ));
    }
    Ok(())
}

/// Where a source partition the link has copied nothing of starts.
fn first_start(link: &MirrorLinkRecord) -> OffsetSpec {
    match link.start {
        MirrorStart::Earliest => OffsetSpec::Earliest,
        // Records from the link's creation on, not "latest" as of whenever
        // the task (re)starts: a task restarted before its first copy, or
        // a topic found after the link was made, would skip records.
        MirrorStart::Latest if link.created_ms > 0 => OffsetSpec::Timestamp(link.created_ms),
        // A link stored before creation times were kept.
        MirrorStart::Latest => OffsetSpec::Latest,
    }
}

/// The last copy of the task's source partition in its destination
/// partition. The long part of the scan, which may read far back (an
/// identity topic fed by a source idle for long), runs without the
/// partition's lock, up to the log end as it was; under the lock only what
/// was appended since is read, so appends of other sources into the same
/// partition wait only for that. Holding the lock for the last part means
/// no append of an earlier run of this task can land unseen.
async fn last_copy(
    state: &BrokerState,
    manager: &MirrorManager,
    spec: &TaskSpec,
) -> Result<Option<Provenance>, String> {
    let replica = state
        .replicas
        .replica(&spec.destination_topic, spec.partition)
        .ok_or_else(|| "the destination partition is not hosted here".to_string())?;
    let scan = |from: i64, upto: i64| {
        let (partition, cluster, p) =
            (replica.partition.clone(), spec.source_cluster.clone(), spec.partition);
        async move {
            tokio::task::spawn_blocking(move || provenance::last_copied(&partition, &cluster, p, from, upto))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())
        }
    };
    let scanned_to = replica.partition.log_end_offset();
    let earlier = scan(0, scanned_to).await?;
    let lock = manager.partition_lock(&spec.destination_topic, spec.partition);
    let _appending = lock.lock().await;
    let scanned = scan(scanned_to, i64::MAX).await?.or(earlier);
    // The metadata's checkpoint wins where it is later in the log than the
    // last copy still there: retention or compaction removed the rest.
    let md = state.cluster.metadata();
    let checkpoint = md.topic(&spec.destination_topic).and_then(|t| {
        md.mirror_checkpoints.get(&mirror_checkpoint_key(&t.id, spec.partition, &spec.source_cluster))
    });
    match (scanned, checkpoint) {
        (scanned, Some(c)) if scanned.as_ref().is_none_or(|(_, at)| c.destination_offset > *at) => {
            Ok(Some(Provenance {
                cluster_id: spec.source_cluster.clone(),
                topic_tag: c.topic_tag.clone(),
                partition: spec.partition,
                offset: c.source_offset,
            }))
        }
        (scanned, _) => Ok(scanned.map(|(hop, _)| hop)),
    }
}

/// The destination batches for one fetched chunk: every record at or after
/// the position, with key, value, timestamp and headers kept and a
/// provenance header added; records that were once copied out of the
/// destination cluster are left out (no loops). Returns the batches
/// (concatenated), the last source offset seen (copied or left out) and
/// the timestamps of the records copied.
fn rebuild(f: &FetchedBatches, spec: &TaskSpec) -> Result<(Bytes, Option<i64>, Vec<i64>), Error> {
    let corrupt = |e: batch::BatchError| Error::Storage(format!("source {}-{}: {e}", f.topic, f.partition));
    let mut out = Vec::new();
    let mut last = None;
    let mut timestamps = Vec::new();
    for b in Batches::new(&f.records) {
        let (header, slice) = b.map_err(corrupt)?;
        if header.next_offset() <= f.skip_below {
            continue;
        }
        let compression = header.compression().unwrap_or(Compression::None);
        let bytes = f.records.slice_ref(slice);
        let mut builder: Option<BatchBuilder> = None;
        for r in batch::records(&bytes).map_err(corrupt)? {
            let r = r.map_err(corrupt)?;
            if r.offset < f.skip_below {
                continue;
            }
            last = Some(r.offset);
            if provenance::came_from(&r, &spec.destination_cluster) {
                continue;
            }
            let hop = Provenance {
                cluster_id: spec.source_cluster.clone(),
                topic_tag: spec.source_topic_tag.clone(),
                partition: spec.partition,
                offset: r.offset,
            }
            .encode();
            let mut headers: Vec<(&str, Option<&[u8]>)> =
                r.headers.iter().map(|h| (h.key.as_str(), h.value.as_deref())).collect();
            headers.push((provenance::HEADER, Some(hop.as_slice())));
            let (key, value) = (r.key.as_deref(), r.value.as_deref());
            let full = builder.as_ref().is_some_and(|b| {
                !b.is_empty() && b.size() + b.record_size(r.timestamp, key, value, &headers) > MAX_BATCH
            });
            if full {
                if let Some(done) = builder.take() {
                    out.extend_from_slice(&done.build());
                }
            }
            let b = builder.get_or_insert_with(|| BatchBuilder::new(compression, r.timestamp));
            b.append(r.timestamp, key, value, &headers);
            timestamps.push(r.timestamp);
        }
        if let Some(done) = builder.take() {
            out.extend_from_slice(&done.build());
        }
    }
    Ok((Bytes::from(out), last, timestamps))
}

/// Appends through the produce path, acks=all, in the task's epoch. The
/// partition's lock is taken *before* the append is spawned as its own
/// task, which then holds it: aborting the mirror task never leaves an
/// append landing unseen by the next run's scan (a spawned append that had
/// not yet taken the lock could land after the new run scanned).
/// Returns the destination offset of the last of the `count` records (one
/// append is contiguous in the log).
async fn append(
    state: &Arc<BrokerState>,
    manager: &Arc<MirrorManager>,
    spec: &TaskSpec,
    records: Bytes,
    count: i64,
) -> Result<i64, String> {
    let request = v1::ProduceRequest {
        acks: -1,
        timeout_ms: APPEND_TIMEOUT_MS,
        topics: vec![v1::TopicProduceData {
            name: spec.destination_topic.clone(),
            partitions: vec![v1::PartitionProduceData { partition: spec.partition, records }],
        }],
    };
    let lock = manager.partition_lock(&spec.destination_topic, spec.partition);
    let (state, epoch) = (state.clone(), spec.epoch);
    let appending = lock.lock_owned().await;
    let guarded = tokio::spawn(async move {
        let _appending = appending;
        crate::server::log::produce(&state, request, Some(epoch)).await
    });
    let response = guarded.await.map_err(|e| e.to_string())?.map_err(|e| format!("appending: {e}"))?;
    let answer = response.topics.iter().flat_map(|t| &t.partitions).next().cloned().unwrap_or_default();
    match answer.error {
        None if answer.base_offset >= 0 => Ok(answer.base_offset + count - 1),
        None => Err("appending: no offset in the answer".into()),
        Some(e) => Err(format!("appending: {}", e.message)),
    }
}
