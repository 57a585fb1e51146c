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
//!   decoded and counted per record). [`run`] publishes the counts that
//!   changed, tagged with this cluster's tier, together with a checkpoint
//!   (per partition, the log end the counts cover) in one batch. After a
//!   restart the broker seeds its counts from `__audit` and counts the log
//!   from the checkpoint on, so a kill -9 neither loses nor doubles counts.
//! * Every mirror link carries its source's `__audit` counts here
//!   ([`carry`]), so one report against the aggregate sees every tier
//!   upstream; the link itself is recorded too (alias, naming, the source's
//!   tier) so the report can map `<alias>.<T>` back to T.
//!
//! Checkpoints and links are stored as counts of the reserved tiers
//! `__checkpoint` and `__link`; clients cannot report those.

use std::collections::{BTreeMap, HashMap};
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

#[derive(Default)]
struct Counter {
    /// (topic, window start) → records appended (seeded from `__audit`).
    counts: BTreeMap<(String, i64), u64>,
    dirty: std::collections::BTreeSet<(String, i64)>,
    /// Per partition, the offset after the last record counted.
    next: BTreeMap<Part, i64>,
    /// Per partition, the first offset counted since this process started.
    first: HashMap<Part, i64>,
    /// Appends below this offset were counted by the restart's rescan.
    fence: HashMap<Part, i64>,
    /// Per partition, the leader epoch of the last append counted: the
    /// restart's rescan counts only batches of that epoch, since later
    /// ones were appended (and counted) by the leaders that followed.
    epochs: HashMap<Part, i32>,
    /// Seeded and rescanned: until then nothing is published.
    loaded: bool,
}

/// This broker's audit state.
pub struct Audit {
    window_ms: i64,
    counter: Mutex<Counter>,
    /// What was carried from each link's source (key → encoded value),
    /// so only changes are written again.
    carried: Mutex<HashMap<Vec<u8>, Vec<u8>>>,
}

impl Audit {
    pub fn new(window_ms: u64) -> Audit {
        Audit {
            window_ms: (window_ms as i64).max(1),
            counter: Mutex::new(Counter::default()),
            carried: Mutex::new(HashMap::new()),
        }
    }

    /// The leader appended `data` to `topic`-`partition`; its new records
    /// are the offsets `first..end` (the ones before are retries already
    /// stored). Called under the partition's transition lock, so appends
    /// are counted in log order.
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
        let part = (topic.to_string(), partition);
        let mut c = self.counter.lock();
        if c.fence.get(&part).is_some_and(|f| first < *f) {
            return;
        }
        c.first.entry(part.clone()).or_insert(first);
        c.epochs.insert(part.clone(), epoch);
        let next = c.next.entry(part).or_insert(end);
        *next = (*next).max(end);
        for (w, n) in windows {
            let key = (topic.to_string(), w);
            *c.counts.entry(key.clone()).or_insert(0) += n;
            c.dirty.insert(key);
        }
    }

    /// What this broker counted so far, per (topic, window start).
    pub fn counts(&self) -> BTreeMap<(String, i64), u64> {
        self.counter.lock().counts.clone()
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

/// Seeds this broker's counts from `__audit` and counts what its
/// partitions appended after the last published checkpoint.
async fn load(state: &Arc<BrokerState>) -> Result<(), Error> {
    let (me, tier) = (host(state), tier(state));
    let stored = read_all(state).await?;
    let mut rescan = Vec::new();
    {
        let mut c = state.audit.counter.lock();
        for s in &stored {
            if s.origin != tier || s.host != me {
                continue;
            }
            if s.tier == tier {
                *c.counts.entry((s.topic.clone(), s.window_start_ms)).or_insert(0) += s.count;
            } else if s.tier == CHECKPOINT_TIER {
                let part = (s.topic.clone(), s.window_start_ms as u32);
                let Ok(p) = state.topics.partition(&part.0, part.1) else { continue };
                let from = s.count as i64;
                let epoch = s.window_ms as i32;
                let end = match c.first.get(&part) {
                    Some(first) => *first,
                    None => {
                        let end = p.log_end_offset();
                        c.fence.insert(part.clone(), end);
                        end
                    }
                };
                c.epochs.entry(part.clone()).or_insert(epoch);
                let next = c.next.entry(part).or_insert(end);
                *next = (*next).max(end);
                rescan.push((p, from, end, epoch));
            }
        }
    }
    let window_ms = state.audit.window_ms;
    for (p, from, end, epoch) in rescan {
        let topic = p.topic.clone();
        // Seeding happened above, so a failure here is not retried (that
        // would seed twice): it is logged and the partition's rest is lost
        // to the count, which the report then shows as missing.
        let windows = match tokio::task::spawn_blocking(move || {
            rescan_partition(&p, from, end, epoch, window_ms)
        })
        .await
        {
            Ok(Ok(w)) => w,
            Ok(Err(e)) => {
                tracing::error!(%topic, error = %e, "audit: counting the log after the checkpoint");
                continue;
            }
            Err(e) => {
                tracing::error!(%topic, error = %e, "audit: counting the log after the checkpoint");
                continue;
            }
        };
        let mut c = state.audit.counter.lock();
        for (w, n) in windows {
            let key = (topic.clone(), w);
            *c.counts.entry(key.clone()).or_insert(0) += n;
            c.dirty.insert(key);
        }
    }
    state.audit.counter.lock().loaded = true;
    Ok(())
}

/// Records per window in `from..end` of a partition's log, of the batches
/// appended in leader epoch `epoch` (this broker's, before it stopped; a
/// leader after it counted its own).
fn rescan_partition(
    p: &crate::partition::Partition,
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

/// Writes the counts that changed since the last publish, with the
/// checkpoint they reach, in one batch.
async fn publish(state: &Arc<BrokerState>) -> Result<(), Error> {
    let (me, tier) = (host(state), tier(state));
    let window_ms = state.audit.window_ms;
    let (keys, counts) = {
        let mut c = state.audit.counter.lock();
        if !c.loaded || c.dirty.is_empty() {
            return Ok(());
        }
        let keys = std::mem::take(&mut c.dirty);
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
        out.extend(c.next.iter().map(|((t, p), next)| v1::AuditCount {
            tier: CHECKPOINT_TIER.into(),
            host: me.clone(),
            topic: t.clone(),
            window_start_ms: i64::from(*p),
            window_ms: i64::from(c.epochs.get(&(t.clone(), *p)).copied().unwrap_or(-1)),
            count: (*next).max(0) as u64,
            origin: tier.clone(),
            ..Default::default()
        }));
        (keys, out)
    };
    if let Err(e) = store(state, counts).await {
        state.audit.counter.lock().dirty.extend(keys);
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
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait() => return,
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

    #[test]
    fn appends_are_counted_per_topic_and_window_and_internal_topics_are_not() {
        let a = Audit::new(1000);
        let data = batch(&[10, 20, 1010]);
        a.appended("orders", 0, 0, &data, 0, 3);
        a.appended("__consumer_offsets", 0, 0, &data, 0, 3);
        // A retry of the last record only: one new record.
        a.appended("orders", 0, 0, &batch(&[1500]), 3, 4);
        let counts = a.counts();
        assert_eq!(
            counts,
            BTreeMap::from([(("orders".to_string(), 0), 2), (("orders".to_string(), 1000), 2)])
        );
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
