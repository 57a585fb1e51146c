//! The completeness audit's broker side (issue 10).
//!
//! * Counts live in the compacted internal topic `__audit` (one
//!   partition), one record per (origin, tier, service, host, topic,
//!   window) key ([`count_key`]); a count is cumulative for its window, so
//!   a newer record of the same key replaces the older one (compaction
//!   keeps the last; readers do too). Clients report through the `Audit`
//!   RPC ([`AuditService`]); only brokers write the topic.
//! * [`Audit::appended`] counts every record the leader appends to a
//!   non-internal topic, per topic and window, from batch headers alone
//!   (a batch whose first and max timestamps fall in different windows is
//!   decoded and counted per record). A count stands once the high
//!   watermark passes its append: an append that a failover truncates was
//!   never stored (its producer's retry is counted by the next leader).
//!   [`run`] publishes the counts that changed, tagged with this cluster's
//!   tier, together with a checkpoint (per partition, the offset the
//!   counts reach and the leader epoch) in one batch. After a restart the
//!   broker seeds its counts from `__audit` and recounts the batches of
//!   that epoch from the checkpoint on as they commit, so a kill -9 of a
//!   leader neither loses nor doubles counts.
//! * Every mirror link carries its source's `__audit` counts here
//!   ([`carry`]), so one report against the aggregate sees every tier
//!   upstream; the link itself is recorded too (alias, naming, the source's
//!   tier) so the report can map `<alias>.<T>` back to T.
//!
//! Checkpoints and links are stored as counts of the reserved tiers
//! `__checkpoint` and `__link`; clients cannot report those.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use prost::Message;
use tonic::{Request, Response, Status};
use tributary_proto::batch::{self, BatchBuilder, BatchError, Batches, Compression};
use tributary_proto::v1::{self, audit_client::AuditClient, audit_server};

use crate::cluster::state::MirrorNaming;
use crate::error::Error;
use crate::partition::Partition;
use crate::shutdown::Shutdown;
use crate::topics::is_internal;
use crate::BrokerState;

pub const AUDIT_TOPIC: &str = "__audit";
const CHECKPOINT_TIER: &str = "__checkpoint";
const LINK_TIER: &str = "__link";
/// A broker forwarding its own (reserved-tier) counts to the leader of
/// `__audit` marks the request with this metadata key.
const INTERNAL_KEY: &str = "tributary-audit-internal";
/// Bytes read from `__audit` or a rescanned partition per read.
const READ_BYTES: usize = 4 << 20;

/// The compaction key of a count: its identity, as a JSON array (every
/// field escaped, so no two keys collide).
pub fn count_key(c: &v1::AuditCount) -> Vec<u8> {
    serde_json::to_vec(&(&c.origin, &c.tier, &c.service, &c.host, &c.topic, c.window_start_ms))
        .unwrap_or_default()
}

/// A `__audit` record's value; `None` when it is not a count.
pub fn decode_count(value: &[u8]) -> Option<v1::AuditCount> {
    let c = v1::AuditCount::decode(value).ok()?;
    (!c.tier.is_empty() && !c.origin.is_empty()).then_some(c)
}

/// Records per window start in `data` (whole batches as appended), leaving
/// out the first `skip` records (retries already stored).
pub fn count_batches(data: &[u8], mut skip: i64, window_ms: i64) -> Result<BTreeMap<i64, u64>, BatchError> {
    let mut out = BTreeMap::new();
    for b in Batches::new(data) {
        let (h, bytes) = b?;
        let n = i64::from(h.record_count.max(0));
        if skip >= n {
            skip -= n;
            continue;
        }
        let first = tributary_client::audit::window_start(h.base_timestamp, window_ms);
        let last = tributary_client::audit::window_start(h.max_timestamp, window_ms);
        if first == last && skip == 0 {
            *out.entry(first).or_insert(0) += n as u64;
            continue;
        }
        for r in batch::records(&Bytes::copy_from_slice(bytes))? {
            let r = r?;
            if skip > 0 {
                skip -= 1;
                continue;
            }
            *out.entry(tributary_client::audit::window_start(r.timestamp, window_ms)).or_insert(0) += 1;
        }
    }
    Ok(out)
}

/// (topic, partition).
type Part = (String, u32);

/// One leader append not yet below the high watermark: the offset after
/// its last record, the epoch it was appended in, and its new records per
/// window.
struct Pending {
    end: i64,
    epoch: i32,
    windows: BTreeMap<i64, u64>,
}

/// A restart's recount of one partition: the batches of `epoch` (this
/// broker's leadership before it stopped) from `from` on, counted as the
/// high watermark passes them.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Rescan {
    from: i64,
    epoch: i32,
}

#[derive(Default)]
struct Counter {
    /// (topic, window start) → committed records appended (seeded from
    /// `__audit`).
    counts: BTreeMap<(String, i64), u64>,
    dirty: BTreeSet<(String, i64)>,
    /// Partitions whose checkpoint moved since the last publish.
    dirty_parts: BTreeSet<Part>,
    /// Per partition, this leader's appends the high watermark has not
    /// passed yet, in log order. They count once committed: an append a
    /// failover then truncates was never stored, and its producer's retry
    /// is counted by the leader that takes it.
    pending: HashMap<Part, VecDeque<Pending>>,
    /// Per partition, the offset after the last record counted and the
    /// leader epoch it was appended in (the published checkpoint).
    next: BTreeMap<Part, (i64, i32)>,
    /// Restart recounts still running (from the last published checkpoint).
    rescans: HashMap<Part, Rescan>,
    /// Seeded from `__audit`: until then nothing is published.
    loaded: bool,
}

impl Counter {
    /// Adds committed records per window; windows that start before
    /// `horizon` are past retention and not counted (their stored counts
    /// are gone or going, and a count started afresh would replace them).
    fn add(&mut self, topic: &str, windows: &BTreeMap<i64, u64>, horizon: i64) {
        for (w, n) in windows {
            if *w < horizon {
                tracing::debug!(
                    topic,
                    window = w,
                    records = n,
                    "audit: records of a window past retention are not counted"
                );
                continue;
            }
            let key = (topic.to_string(), *w);
            *self.counts.entry(key.clone()).or_insert(0) += n;
            self.dirty.insert(key);
        }
    }

    /// The checkpoint to publish for `part`: a running recount's cursor
    /// (a kill before it ends resumes there), else the last committed
    /// append.
    fn checkpoint(&self, part: &Part) -> Option<(i64, i32)> {
        self.rescans.get(part).map(|r| (r.from, r.epoch)).or_else(|| self.next.get(part).copied())
    }
}

/// This broker's audit state.
pub struct Audit {
    window_ms: i64,
    /// Windows that ended longer ago than this are forgotten.
    retention_ms: i64,
    counter: Mutex<Counter>,
    /// What was carried from each link's source (key → encoded value),
    /// so only changes are written again.
    carried: Mutex<HashMap<Vec<u8>, Vec<u8>>>,
}

impl Audit {
    pub fn new(window_ms: u64, retention_ms: u64) -> Audit {
        Audit {
            window_ms: (window_ms as i64).max(1),
            retention_ms: retention_ms.min(i64::MAX as u64) as i64,
            counter: Mutex::new(Counter::default()),
            carried: Mutex::new(HashMap::new()),
        }
    }

    /// The leader appended `data` to `topic`-`partition` in `epoch`; its
    /// new records are the offsets `first..end` (the ones before are
    /// retries already stored). Called under the partition's transition
    /// lock, so appends are queued in log order; they count once the high
    /// watermark passes them ([`Audit::commit`]).
    pub fn appended(&self, topic: &str, partition: u32, epoch: i32, data: &[u8], first: i64, end: i64) {
        if is_internal(topic) || end <= first {
            return;
        }
        let total: i64 = Batches::new(data).flatten().map(|(h, _)| i64::from(h.record_count.max(0))).sum();
        let windows = match count_batches(data, total - (end - first), self.window_ms) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(topic, partition, error = %e, "audit: cannot count an appended batch");
                return;
            }
        };
        let mut c = self.counter.lock();
        c.pending.entry((topic.to_string(), partition)).or_default().push_back(Pending {
            end,
            epoch,
            windows,
        });
    }

    /// Counts the queued appends of `part` that are committed (below
    /// `p`'s high watermark) and drops the ones a truncation removed.
    fn commit(&self, part: &Part, p: &Partition) {
        // The high watermark is read first: an append below it that is
        // still in the log under its epoch afterwards is committed, and
        // committed records are never truncated.
        let hw = p.high_watermark();
        let horizon = self.horizon(crate::now_ms());
        let mut c = self.counter.lock();
        let Some(mut queue) = c.pending.remove(part) else { return };
        while let Some(front) = queue.front() {
            if truncated(p, front.end, front.epoch) {
                tracing::debug!(topic = %part.0, partition = part.1, end = front.end, "audit: an append was truncated before it committed");
                queue.pop_front();
                continue;
            }
            if front.end > hw {
                break;
            }
            if let Some(done) = queue.pop_front() {
                c.add(&part.0, &done.windows, horizon);
                c.next.insert(part.clone(), (done.end, done.epoch));
                c.dirty_parts.insert(part.clone());
            }
        }
        if !queue.is_empty() {
            c.pending.insert(part.clone(), queue);
        }
    }

    /// Commits what the high watermark passed on every partition with
    /// queued appends (`partition` finds a partition; a gone one's queue
    /// is dropped: this broker no longer holds it).
    pub fn commit_all(&self, partition: impl Fn(&str, u32) -> Option<Arc<Partition>>) {
        let parts: Vec<Part> = self.counter.lock().pending.keys().cloned().collect();
        for part in parts {
            match partition(&part.0, part.1) {
                Some(p) => self.commit(&part, &p),
                None => {
                    self.counter.lock().pending.remove(&part);
                }
            }
        }
    }

    /// The oldest window start still within retention at `now_ms`.
    fn horizon(&self, now_ms: i64) -> i64 {
        now_ms.saturating_sub(self.retention_ms).saturating_sub(self.window_ms)
    }

    /// Forgets the windows past retention (memory stays bounded by the
    /// windows retention keeps).
    fn prune(&self, now_ms: i64) {
        let horizon = self.horizon(now_ms);
        let mut c = self.counter.lock();
        c.counts.retain(|(_, w), _| *w >= horizon);
        c.dirty.retain(|(_, w)| *w >= horizon);
    }

    /// Marks every checkpoint for publishing again and forgets what was
    /// carried, so the next ticks write them anew: `__audit` deletes
    /// records older than retention, and these change rarely.
    fn refresh(&self) {
        let mut c = self.counter.lock();
        let parts: Vec<Part> = c.next.keys().chain(c.rescans.keys()).cloned().collect();
        c.dirty_parts.extend(parts);
        drop(c);
        self.carried.lock().clear();
    }

    /// What this broker counted so far (committed), per (topic, window
    /// start).
    pub fn counts(&self) -> BTreeMap<(String, i64), u64> {
        self.counter.lock().counts.clone()
    }
}

/// Whether the records up to `end` appended in `epoch` are no longer in
/// `p`'s log (a follower's truncation to a new leader's log removed them;
/// they never come back under the same epoch).
fn truncated(p: &Partition, end: i64, epoch: i32) -> bool {
    if p.log_end_offset() < end {
        return true;
    }
    match p.end_offset_for_epoch(epoch) {
        Ok((e, epoch_end)) => e != epoch || epoch_end < end,
        // An offline log: nothing is known, so nothing is dropped.
        Err(_) => false,
    }
}

fn host(state: &BrokerState) -> String {
    format!("broker-{}", state.cluster.node_id())
}

fn tier(state: &BrokerState) -> String {
    state.config.audit_tier().to_string()
}

/// The leader's address of `__audit`-0, when another broker leads it.
fn remote_leader(state: &BrokerState) -> Result<Option<String>, Error> {
    let md = state.cluster.metadata();
    let Some(p) = md.partition(AUDIT_TOPIC, 0) else {
        return Err(Error::Unavailable(format!("{AUDIT_TOPIC} does not exist yet")));
    };
    if p.leader == state.cluster.node_id() {
        return Ok(None);
    }
    md.brokers
        .get(&p.leader)
        .map(|b| Some(b.address.clone()))
        .ok_or_else(|| Error::Unavailable(format!("{AUDIT_TOPIC} has no leader; retry")))
}

fn audit_client(address: &str) -> Result<AuditClient<tonic::transport::Channel>, Error> {
    crate::cluster::network::peer_channel(address)
        .map(AuditClient::new)
        .ok_or_else(|| Error::Unavailable(format!("bad broker address {address}")))
}

/// Writes `counts` into `__audit` (created if missing) on its leader: here
/// or forwarded.
pub async fn store(state: &Arc<BrokerState>, counts: Vec<v1::AuditCount>) -> Result<(), Error> {
    if counts.is_empty() {
        return Ok(());
    }
    crate::server::admin::ensure_audit_topic(state).await?;
    if let Some(address) = remote_leader(state)? {
        let mut request = Request::new(v1::ReportCountsRequest { counts });
        request.metadata_mut().insert(INTERNAL_KEY, tonic::metadata::MetadataValue::from_static("1"));
        audit_client(&address)?.report_counts(request).await.map_err(Error::Forwarded)?;
        return Ok(());
    }
    let topic = state.topics.get(AUDIT_TOPIC)?;
    let p = state.topics.partition(AUDIT_TOPIC, 0)?;
    tokio::task::spawn_blocking(move || -> Result<(), Error> {
        let now = crate::now_ms();
        let mut b = BatchBuilder::new(Compression::None, now);
        for c in &counts {
            b.append(now, Some(&count_key(c)), Some(&c.encode_to_vec()), &[]);
        }
        let info = p.append(&b.build(), &topic.config(), now)?;
        if let Some(ticket) = info.sync {
            ticket.sync()?;
        }
        Ok(())
    })
    .await
    .map_err(|e| Error::Storage(e.to_string()))?
}

/// Every count in `__audit` (the last per key, reserved tiers included),
/// read here or from its leader. No `__audit` yet: none.
async fn read_all(state: &Arc<BrokerState>) -> Result<Vec<v1::AuditCount>, Error> {
    if state.cluster.metadata().topic(AUDIT_TOPIC).is_none() {
        return Ok(Vec::new());
    }
    if let Some(address) = remote_leader(state)? {
        let mut request = Request::new(v1::ReadCountsRequest { since_ms: 0 });
        request.metadata_mut().insert(INTERNAL_KEY, tonic::metadata::MetadataValue::from_static("1"));
        let r = audit_client(&address)?.read_counts(request).await.map_err(Error::Forwarded)?;
        return Ok(r.into_inner().counts);
    }
    let p = state.topics.partition(AUDIT_TOPIC, 0)?;
    tokio::task::spawn_blocking(move || -> Result<Vec<v1::AuditCount>, Error> {
        let mut last: BTreeMap<Vec<u8>, v1::AuditCount> = BTreeMap::new();
        let mut at = p.log_start_offset();
        let end = p.high_watermark();
        while at < end {
            let read = match p.read(at, READ_BYTES) {
                Ok(r) => r,
                Err(Error::OffsetOutOfRange { start, .. }) if at < start => {
                    at = start;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let before = at;
            for b in Batches::new(&read.records) {
                let Ok((h, bytes)) = b else { break };
                at = h.next_offset();
                let Ok(records) = batch::records(&Bytes::copy_from_slice(bytes)) else { continue };
                for r in records.flatten() {
                    if r.offset >= end {
                        break;
                    }
                    if let (Some(k), Some(c)) = (r.key, r.value.as_deref().and_then(decode_count)) {
                        last.insert(k.to_vec(), c);
                    }
                }
            }
            if at <= before {
                break;
            }
        }
        Ok(last.into_values().collect())
    })
    .await
    .map_err(|e| Error::Storage(e.to_string()))?
}

/// Seeds this broker's counts from `__audit`; every partition with a
/// checkpoint gets a recount of what its last leadership appended after it
/// ([`rescan_all`]).
async fn load(state: &Arc<BrokerState>) -> Result<(), Error> {
    let (me, tier) = (host(state), tier(state));
    let stored = read_all(state).await?;
    let mut c = state.audit.counter.lock();
    for s in &stored {
        if s.origin != tier || s.host != me {
            continue;
        }
        if s.tier == tier {
            *c.counts.entry((s.topic.clone(), s.window_start_ms)).or_insert(0) += s.count;
        } else if s.tier == CHECKPOINT_TIER {
            // `window_start_ms` holds the partition, `count` the offset,
            // `window_ms` the epoch (see `publish`).
            let part = (s.topic.clone(), s.window_start_ms as u32);
            let r = Rescan { from: s.count as i64, epoch: s.window_ms as i32 };
            c.next.insert(part.clone(), (r.from, r.epoch));
            c.rescans.insert(part, r);
        }
    }
    c.loaded = true;
    Ok(())
}

/// Moves every restart recount on as far as the high watermark allows.
/// A failed step is retried on the next tick from the same cursor.
async fn rescan_all(state: &Arc<BrokerState>) {
    let jobs: Vec<(Part, Rescan)> =
        state.audit.counter.lock().rescans.iter().map(|(k, r)| (k.clone(), *r)).collect();
    let window_ms = state.audit.window_ms;
    for (part, r) in jobs {
        let Ok(p) = state.topics.partition(&part.0, part.1) else {
            // No longer held here: nothing of it to count.
            state.audit.counter.lock().rescans.remove(&part);
            continue;
        };
        // Only a step with records to read goes to a blocking thread (most
        // ticks find the high watermark where the cursor is).
        let step = if p.high_watermark() > r.from {
            tokio::task::spawn_blocking(move || rescan_step(&p, r, window_ms))
                .await
                .unwrap_or_else(|e| Err(Error::Storage(e.to_string())))
        } else {
            rescan_step(&p, r, window_ms)
        };
        let (windows, cursor, done) = match step {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(topic = %part.0, partition = part.1, error = %e, "audit: recounting after a restart (retrying)");
                continue;
            }
        };
        let mut c = state.audit.counter.lock();
        c.add(&part.0, &windows, state.audit.horizon(crate::now_ms()));
        if cursor != r {
            c.dirty_parts.insert(part.clone());
        }
        // The checkpoint follows the recount unless this broker has since
        // committed appends of a later leadership of its own.
        if c.next.get(&part).is_none_or(|(_, epoch)| *epoch <= r.epoch) {
            c.next.insert(part.clone(), (cursor.from, r.epoch));
        }
        if done {
            c.rescans.remove(&part);
        } else {
            c.rescans.insert(part, cursor);
        }
    }
}

/// One step of a restart's recount: the batches of `r.epoch` from `r.from`
/// up to the high watermark (committed: a truncation cannot take them any
/// more) and the end of that epoch in the log. Returns their counts, the
/// new cursor, and whether the recount is over (a later epoch began in
/// the log and everything of `r.epoch` before it is counted).
fn rescan_step(
    p: &Partition,
    r: Rescan,
    window_ms: i64,
) -> Result<(BTreeMap<i64, u64>, Rescan, bool), Error> {
    let hw = p.high_watermark();
    let (epoch, epoch_end) = p.end_offset_for_epoch(r.epoch)?;
    if epoch != r.epoch {
        // None of that epoch is left in the log (truncated away).
        return Ok((BTreeMap::new(), r, true));
    }
    let upto = hw.min(epoch_end);
    let windows =
        if upto > r.from { rescan_partition(p, r.from, upto, r.epoch, window_ms)? } else { BTreeMap::new() };
    let cursor = Rescan { from: upto.max(r.from), epoch: r.epoch };
    let over = p.latest_epoch() > r.epoch && cursor.from >= epoch_end;
    Ok((windows, cursor, over))
}

/// Records per window in `from..end` of a partition's log, of the batches
/// appended in leader epoch `epoch` (this broker's, before it stopped; a
/// leader after it counted its own).
fn rescan_partition(
    p: &Partition,
    from: i64,
    end: i64,
    epoch: i32,
    window_ms: i64,
) -> Result<BTreeMap<i64, u64>, Error> {
    let mut out = BTreeMap::new();
    let mut at = from.max(p.log_start_offset());
    while at < end {
        let read = p.read(at, READ_BYTES)?;
        let before = at;
        for b in Batches::new(&read.records) {
            let Ok((h, bytes)) = b else { break };
            if h.base_offset >= end {
                at = end;
                break;
            }
            if h.leader_epoch != epoch {
                at = h.next_offset();
                continue;
            }
            if h.next_offset() > end {
                // The batch runs past `end` (a high watermark inside it):
                // only its records in `at..end`, one by one.
                let records = batch::records(&Bytes::copy_from_slice(bytes))
                    .map_err(|e| Error::Storage(e.to_string()))?;
                for r in records {
                    let r = r.map_err(|e| Error::Storage(e.to_string()))?;
                    if (at..end).contains(&r.offset) {
                        *out.entry(tributary_client::audit::window_start(r.timestamp, window_ms))
                            .or_insert(0) += 1;
                    }
                }
                at = end;
                break;
            }
            // Records of the batch below `at` (a read starts at the batch
            // holding `at`) were counted before.
            let skip = (at - h.base_offset).max(0);
            let counted = count_batches(bytes, skip, window_ms).map_err(|e| Error::Storage(e.to_string()))?;
            for (w, n) in counted {
                *out.entry(w).or_insert(0) += n;
            }
            at = h.next_offset();
        }
        if at <= before {
            break;
        }
    }
    Ok(out)
}

/// Counts what became committed, then writes the counts and checkpoints
/// that changed since the last publish, in one batch (so a count and the
/// checkpoint it reaches are stored together or not at all).
async fn publish(state: &Arc<BrokerState>) -> Result<(), Error> {
    let (me, tier) = (host(state), tier(state));
    let window_ms = state.audit.window_ms;
    if !state.audit.counter.lock().loaded {
        return Ok(());
    }
    state.audit.commit_all(|t, p| state.topics.partition(t, p).ok());
    rescan_all(state).await;
    let (keys, parts, counts) = {
        let mut c = state.audit.counter.lock();
        if c.dirty.is_empty() && c.dirty_parts.is_empty() {
            return Ok(());
        }
        let keys = std::mem::take(&mut c.dirty);
        let parts = std::mem::take(&mut c.dirty_parts);
        let mut out: Vec<v1::AuditCount> = keys
            .iter()
            .map(|k| v1::AuditCount {
                tier: tier.clone(),
                service: "broker".into(),
                host: me.clone(),
                topic: k.0.clone(),
                window_start_ms: k.1,
                window_ms,
                count: c.counts.get(k).copied().unwrap_or(0),
                origin: tier.clone(),
                link: None,
            })
            .collect();
        // A checkpoint: `window_start_ms` holds the partition, `count` the
        // offset after the last record counted, `window_ms` the leader
        // epoch those records were appended in.
        out.extend(parts.iter().filter_map(|part| {
            let (next, epoch) = c.checkpoint(part)?;
            Some(v1::AuditCount {
                tier: CHECKPOINT_TIER.into(),
                host: me.clone(),
                topic: part.0.clone(),
                window_start_ms: i64::from(part.1),
                window_ms: i64::from(epoch),
                count: next.max(0) as u64,
                origin: tier.clone(),
                ..Default::default()
            })
        }));
        (keys, parts, out)
    };
    if let Err(e) = store(state, counts).await {
        let mut c = state.audit.counter.lock();
        c.dirty.extend(keys);
        c.dirty_parts.extend(parts);
        return Err(e);
    }
    Ok(())
}

/// Copies each link's source counts (and the link's description) into
/// this cluster's `__audit`.
async fn carry(state: &Arc<BrokerState>) {
    // One broker carries: the controller.
    if !state.cluster.is_controller() {
        return;
    }
    let tier = tier(state);
    let links = state.cluster.metadata().mirror_links.clone();
    for (name, link) in links {
        if link.paused {
            continue;
        }
        let source = match tributary_client::audit::read_counts(&link.source_bootstrap, 0).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(link = %name, error = %e, "audit: cannot read the source's counts");
                continue;
            }
        };
        let naming = match link.naming {
            MirrorNaming::Prefix => v1::MirrorNaming::Prefix,
            MirrorNaming::Identity => v1::MirrorNaming::Identity,
        };
        let mut out = vec![v1::AuditCount {
            tier: LINK_TIER.into(),
            service: name.clone(),
            origin: tier.clone(),
            link: Some(v1::AuditLink {
                name: name.clone(),
                source_alias: link.source_alias.clone(),
                source_tier: source.tier.clone(),
                naming: naming as i32,
                topics: link.topics.clone(),
                exclude: link.exclude.clone(),
            }),
            ..Default::default()
        }];
        out.extend(source.counts.into_iter().filter(|c| c.origin != tier && !c.tier.starts_with("__")));
        let changed: Vec<v1::AuditCount> = {
            let carried = state.audit.carried.lock();
            out.into_iter().filter(|c| carried.get(&count_key(c)) != Some(&c.encode_to_vec())).collect()
        };
        let keys: Vec<(Vec<u8>, Vec<u8>)> =
            changed.iter().map(|c| (count_key(c), c.encode_to_vec())).collect();
        match store(state, changed).await {
            Ok(()) => state.audit.carried.lock().extend(keys),
            Err(e) => tracing::warn!(link = %name, error = %e, "audit: carrying the source's counts"),
        }
    }
}

/// Loads, then publishes this broker's counts and carries the links'
/// sources' counts every `audit_publish_interval_ms` until shutdown.
pub async fn run(state: Arc<BrokerState>, mut shutdown: Shutdown) {
    let every = Duration::from_millis(state.config.audit_publish_interval_ms.max(50));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Records that change rarely (checkpoints, carried links) are written
    // again twice per retention period, before `__audit` deletes them.
    let refresh_every = Duration::from_millis((state.config.audit_retention_ms / 2).max(1000));
    let mut refreshed = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait() => return,
        }
        state.audit.prune(crate::now_ms());
        if refreshed.elapsed() >= refresh_every {
            state.audit.refresh();
            refreshed = tokio::time::Instant::now();
        }
        if !state.ready.load(std::sync::atomic::Ordering::Acquire) {
            continue;
        }
        if !state.audit.counter.lock().loaded {
            if let Err(e) = load(&state).await {
                tracing::debug!(error = %e, "audit: loading the counts (retrying)");
                continue;
            }
        }
        if let Err(e) = publish(&state).await {
            tracing::debug!(error = %e, "audit: publishing counts (retrying)");
        }
        carry(&state).await;
    }
}

/// The `Audit` gRPC service.
pub struct AuditService {
    state: Arc<BrokerState>,
}

impl AuditService {
    pub fn new(state: Arc<BrokerState>) -> Self {
        AuditService { state }
    }
}

/// A client's count, checked: clients report their own tiers only.
fn check_reported(c: &v1::AuditCount) -> Result<(), Error> {
    if c.tier.is_empty() || c.topic.is_empty() {
        return Err(Error::InvalidRequest("an audit count needs a tier and a topic".into()));
    }
    if c.tier.starts_with("__") {
        return Err(Error::InvalidRequest(format!("tier '{}' is reserved for brokers", c.tier)));
    }
    if c.window_ms <= 0 {
        return Err(Error::InvalidRequest("an audit count needs window_ms > 0".into()));
    }
    Ok(())
}

#[tonic::async_trait]
impl audit_server::Audit for AuditService {
    async fn report_counts(
        &self,
        request: Request<v1::ReportCountsRequest>,
    ) -> Result<Response<v1::ReportCountsResponse>, Status> {
        let internal = request.metadata().contains_key(INTERNAL_KEY);
        let mut counts = request.into_inner().counts;
        if !internal {
            let tier = tier(&self.state);
            for c in &mut counts {
                check_reported(c)?;
                c.origin = tier.clone();
            }
        }
        store(&self.state, counts).await?;
        Ok(Response::new(v1::ReportCountsResponse {}))
    }

    async fn read_counts(
        &self,
        request: Request<v1::ReadCountsRequest>,
    ) -> Result<Response<v1::ReadCountsResponse>, Status> {
        let internal = request.metadata().contains_key(INTERNAL_KEY);
        let since = request.into_inner().since_ms;
        let all = read_all(&self.state).await?;
        let tier = tier(&self.state);
        if internal {
            return Ok(Response::new(v1::ReadCountsResponse { counts: all, ..Default::default() }));
        }
        let mut out = v1::ReadCountsResponse {
            tier: tier.clone(),
            window_ms: self.state.config.audit_window_ms as i64,
            grace_ms: self.state.config.audit_grace_ms as i64,
            ..Default::default()
        };
        for c in all {
            if c.tier == LINK_TIER {
                if let Some(l) = c.link.filter(|_| c.origin == tier) {
                    out.links.push(l);
                }
            } else if !c.tier.starts_with("__") && c.window_start_ms >= since {
                out.counts.push(c);
            }
        }
        Ok(Response::new(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn batch(timestamps: &[i64]) -> Bytes {
        let mut b = BatchBuilder::new(Compression::Lz4, timestamps[0]);
        for t in timestamps {
            b.append(*t, None, Some(b"v"), &[]);
        }
        b.build()
    }

    #[test]
    fn a_restarts_rescan_counts_only_the_batches_of_the_epoch_this_broker_led() {
        // Epoch 3 was this broker's (two batches, one after its last
        // checkpoint at offset 2); epoch 4's batch came from the leader
        // after it, which counted it itself.
        let dir = tempfile::tempdir().unwrap();
        let p = crate::partition::test_partition(dir.path());
        let config = crate::config::TopicConfig::default();
        let mut at = 0;
        for (epoch, timestamps) in [(3, vec![1000, 1001]), (3, vec![1002, 5000]), (4, vec![1003, 1004, 1005])]
        {
            let mut b = batch(&timestamps).to_vec();
            batch::set_base_offset(&mut b, at);
            batch::set_leader_epoch(&mut b, epoch);
            p.append_replicated(&b, &config, 0).unwrap();
            at += timestamps.len() as i64;
        }
        let counted = rescan_partition(&p, 2, at, 3, 1000).unwrap();
        assert_eq!(
            counted,
            BTreeMap::from([(1000, 1), (5000, 1)]),
            "epoch 4's records are not counted again"
        );
        assert!(rescan_partition(&p, 0, at, 9, 1000).unwrap().is_empty());
    }

    #[test]
    fn batches_in_one_window_count_from_the_header_and_spanning_ones_per_record() {
        let mut data = batch(&[1000, 1500, 1999]).to_vec();
        data.extend_from_slice(&batch(&[1999, 2000, 3500]));
        let counts = count_batches(&data, 0, 1000).unwrap();
        assert_eq!(counts, BTreeMap::from([(1000, 4), (2000, 1), (3000, 1)]));
        // Retries already stored are left out, record by record.
        assert_eq!(count_batches(&data, 4, 1000).unwrap(), BTreeMap::from([(2000, 1), (3000, 1)]));
        assert!(count_batches(&data, 6, 1000).unwrap().is_empty());
    }

    /// Appends `timestamps` as one batch of `epoch` at the log end (as a
    /// leader's append, replicated form); returns the batch.
    fn put(p: &Partition, epoch: i32, timestamps: &[i64]) -> Vec<u8> {
        let mut b = batch(timestamps).to_vec();
        batch::set_base_offset(&mut b, p.log_end_offset());
        batch::set_leader_epoch(&mut b, epoch);
        p.append_replicated(&b, &crate::config::TopicConfig::default(), 0).unwrap();
        b
    }

    #[test]
    fn appends_count_once_committed_and_truncated_ones_never() {
        let dir = tempfile::tempdir().unwrap();
        let p = crate::partition::test_partition(dir.path());
        let a = Audit::new(1000, u64::MAX);
        let commit = || a.commit_all(|_, _| Some(p.clone()));
        // The high watermark holds at 0: nothing is committed yet.
        p.set_replica_bound(Some(0));
        let data = put(&p, 3, &[10, 20, 1010]);
        a.appended("t", 0, 3, &data, 0, 3);
        a.appended("__consumer_offsets", 0, 3, &data, 0, 3);
        commit();
        assert!(a.counts().is_empty(), "counted before the high watermark passed it");
        p.set_replica_bound(Some(3));
        commit();
        let t = |w: i64| ("t".to_string(), w);
        assert_eq!(a.counts(), BTreeMap::from([(t(0), 2), (t(1000), 1)]));
        // A retry of the last record stored with one new one: only the new
        // record counts.
        let retry = put(&p, 3, &[1500, 1600]);
        a.appended("t", 0, 3, &retry, 4, 5);
        p.set_replica_bound(Some(5));
        commit();
        assert_eq!(a.counts(), BTreeMap::from([(t(0), 2), (t(1000), 2)]));
        // An append a new leader's log then replaced (truncated here, and
        // the new leader's epoch 4 written over it) never counts.
        let lost = put(&p, 3, &[2000, 2001]);
        a.appended("t", 0, 3, &lost, 5, 7);
        p.truncate_to(5).unwrap();
        put(&p, 4, &[2002, 2003, 2004]);
        p.set_replica_bound(Some(8));
        commit();
        assert_eq!(a.counts(), BTreeMap::from([(t(0), 2), (t(1000), 2)]), "a truncated append was counted");
        assert_eq!(a.counter.lock().next.get(&("t".to_string(), 0)), Some(&(5, 3)));
        assert!(a.counter.lock().pending.is_empty());
    }

    #[test]
    fn windows_past_retention_are_forgotten_and_not_counted() {
        let dir = tempfile::tempdir().unwrap();
        let p = crate::partition::test_partition(dir.path());
        let a = Audit::new(1000, 10_000);
        let now = crate::now_ms();
        let (old, fresh) = (now - 60_000, now);
        let w = |t: i64| ("t".to_string(), tributary_client::audit::window_start(t, 1000));
        let data = put(&p, 1, &[old, fresh]);
        a.appended("t", 0, 1, &data, 0, 2);
        a.commit_all(|_, _| Some(p.clone()));
        assert_eq!(a.counts(), BTreeMap::from([(w(fresh), 1)]), "a window past retention was counted");
        // A count seeded from `__audit` for a window past retention is
        // forgotten.
        a.counter.lock().counts.insert(w(old), 5);
        a.prune(now);
        assert_eq!(a.counts(), BTreeMap::from([(w(fresh), 1)]));
    }

    #[test]
    fn a_restarts_recount_waits_for_the_high_watermark_and_ends_with_its_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let p = crate::partition::test_partition(dir.path());
        p.set_replica_bound(Some(0));
        put(&p, 3, &[1000, 1001]);
        put(&p, 3, &[1002, 5000]);
        put(&p, 4, &[1003, 1004, 1005]);
        let r = Rescan { from: 2, epoch: 3 };
        let (w, cursor, over) = rescan_step(&p, r, 1000).unwrap();
        assert!(w.is_empty() && cursor == r && !over, "counted above the high watermark");
        p.set_replica_bound(Some(3));
        let (w, cursor, over) = rescan_step(&p, cursor, 1000).unwrap();
        assert_eq!((w, cursor, over), (BTreeMap::from([(1000, 1)]), Rescan { from: 3, epoch: 3 }, false));
        p.set_replica_bound(Some(7));
        let (w, cursor, over) = rescan_step(&p, cursor, 1000).unwrap();
        assert_eq!((w, cursor, over), (BTreeMap::from([(5000, 1)]), Rescan { from: 4, epoch: 3 }, true));
        // An epoch the log no longer holds: nothing to count, done.
        let (w, _, over) = rescan_step(&p, Rescan { from: 0, epoch: 1 }, 1000).unwrap();
        assert!(w.is_empty() && over);
    }

    #[test]
    fn count_keys_differ_in_every_field_and_escape_separators() {
        let base = v1::AuditCount {
            origin: "a".into(),
            tier: "t".into(),
            service: "s".into(),
            host: "h".into(),
            topic: "x".into(),
            window_start_ms: 0,
            window_ms: 1000,
            count: 1,
            link: None,
        };
        let mut other = base.clone();
        other.count = 99;
        assert_eq!(count_key(&base), count_key(&other), "the count is the value, not the key");
        let variants = [
            v1::AuditCount { origin: "b".into(), ..base.clone() },
            v1::AuditCount { tier: "u".into(), ..base.clone() },
            v1::AuditCount { service: "r".into(), ..base.clone() },
            v1::AuditCount { host: "g".into(), ..base.clone() },
            v1::AuditCount { topic: "y".into(), ..base.clone() },
            v1::AuditCount { window_start_ms: 1000, ..base.clone() },
        ];
        for v in &variants {
            assert_ne!(count_key(v), count_key(&base), "{v:?}");
        }
        let a = v1::AuditCount { service: "s\",\"h".into(), host: String::new(), ..base.clone() };
        let b = v1::AuditCount { service: "s".into(), host: "h".into(), ..base };
        assert_ne!(count_key(&a), count_key(&b));
    }

    proptest! {
        #[test]
        fn count_records_decode_back_and_garbage_never_panics(
            tier in "[a-z:]{1,12}", topic in ".{1,20}", w in any::<i64>(), n in any::<u64>(),
            garbage in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let c = v1::AuditCount {
                origin: "o".into(), tier, service: "s".into(), host: "h".into(), topic,
                window_start_ms: w, window_ms: 1, count: n, link: None,
            };
            prop_assert_eq!(decode_count(&c.encode_to_vec()), Some(c));
            let _ = decode_count(&garbage);
        }
    }
}
