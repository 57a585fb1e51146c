//! Mirroring: links copy topics of a source cluster into this one
//! (local clusters into an aggregate, issue 10).
//!
//! * Links are part of the replicated metadata
//!   ([`crate::cluster::state::MirrorLinkRecord`]), changed through the
//!   `Mirror` gRPC service ([`crate::server::mirror`]) on the controller.
//! * Every broker runs [`MirrorManager::run`]: per link it polls the source's
//!   metadata (new matching topics are picked up), the controller creates
//!   missing destination topics (source partition count, the link's
//!   replication factor), and the broker runs one [`task`] per source
//!   partition whose destination partition (same index) it leads. Tasks
//!   move with leadership: a new epoch means a new task.
//! * [`provenance`]: the header each copied record gains, which is also the
//!   checkpoint (exactly-once across restarts and failover) and the loop
//!   refusal.
//! * Audit hook: [`MirrorManager::set_observer`] receives a [`CopyReport`]
//!   for every appended chunk (per link, topic and partition, the record
//!   timestamps copied); [`count_by_window`] turns them into per-window
//!   counts for `__audit`.

pub mod provenance;
pub mod task;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use regex::Regex;
use tokio::task::JoinHandle;
use tributary_proto::v1;

use crate::cluster::state::{MirrorLinkRecord, MirrorNaming, MirrorStart};
use crate::error::Error;
use crate::shutdown::Shutdown;
use crate::topics::is_internal;
use crate::BrokerState;
use task::{TaskSpec, TaskStatus};

/// How often the source's topics are listed again.
const DISCOVERY_INTERVAL: Duration = Duration::from_secs(3);
/// How often tasks are matched against metadata and leadership.
const RECONCILE_INTERVAL: Duration = Duration::from_millis(250);
/// How often tasks' progress goes into the metadata. Copies removed by
/// retention within this time of being made (a `retention.ms` shorter
/// than this) can still be copied again after a restart.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(5);

/// What a mirror task appended: for the audit (records per topic and
/// window, by record timestamp).
#[derive(Debug, Clone)]
pub struct CopyReport {
    pub link: String,
    pub source_cluster: String,
    pub source_topic: String,
    pub destination_topic: String,
    pub partition: u32,
    pub timestamps: Vec<i64>,
}

/// Receives every [`CopyReport`] (the audit's mirror-tier counter).
pub trait CopyObserver: Send + Sync {
    fn copied(&self, report: &CopyReport);
}

/// Records per window start (`window_ms` wide windows, by timestamp).
pub fn count_by_window(timestamps: &[i64], window_ms: i64) -> BTreeMap<i64, u64> {
    let mut out = BTreeMap::new();
    for t in timestamps {
        *out.entry(tributary_client::audit::window_start(*t, window_ms)).or_insert(0) += 1;
    }
    out
}

/// (link, source topic, partition).
type TaskKey = (String, String, u32);

/// Per destination partition, the lock its mirror appends hold.
type PartitionLocks = HashMap<(String, u32), Arc<tokio::sync::Mutex<()>>>;

struct TaskEntry {
    spec: TaskSpec,
    status: Arc<Mutex<TaskStatus>>,
    handle: JoinHandle<()>,
}

/// A source topic as its cluster describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SourceTopic {
    partitions: u32,
    /// [`provenance::topic_tag`] of its id.
    tag: String,
}

/// What this broker knows of one link's source.
struct LinkState {
    record: MirrorLinkRecord,
    topics_re: Option<Regex>,
    exclude_re: Option<Regex>,
    source_cluster: String,
    /// Source topics the link matches.
    source_topics: BTreeMap<String, SourceTopic>,
    error: String,
    discovery: Option<JoinHandle<()>>,
    last_discovery: Option<Instant>,
}

impl Drop for LinkState {
    fn drop(&mut self) {
        if let Some(d) = self.discovery.take() {
            d.abort();
        }
    }
}

/// One source topic's state in a link.
#[derive(Debug, Clone)]
struct TopicState {
    destination: String,
    state: &'static str,
    reason: String,
}

#[derive(Default)]
pub struct MirrorManager {
    tasks: Mutex<BTreeMap<TaskKey, TaskEntry>>,
    links: Mutex<BTreeMap<String, LinkState>>,
    topics: Mutex<BTreeMap<(String, String), TopicState>>,
    creating: Mutex<HashSet<String>>,
    locks: Mutex<PartitionLocks>,
    observer: Mutex<Option<Arc<dyn CopyObserver>>>,
    /// A checkpoint send is on its way (one at a time).
    sending: Arc<std::sync::atomic::AtomicBool>,
}

impl MirrorManager {
    pub fn new() -> Arc<MirrorManager> {
        Arc::new(MirrorManager::default())
    }

    /// Where the audit hears what the tasks copied.
    pub fn set_observer(&self, observer: Arc<dyn CopyObserver>) {
        *self.observer.lock() = Some(observer);
    }

    pub(crate) fn report(&self, report: CopyReport) {
        let observer = self.observer.lock().clone();
        if let Some(o) = observer {
            o.copied(&report);
        }
    }

    /// Held across every mirror append to a destination partition, and by a
    /// task's resume scan: the scan never misses an append still landing.
    pub(crate) fn partition_lock(&self, topic: &str, partition: u32) -> Arc<tokio::sync::Mutex<()>> {
        self.locks.lock().entry((topic.to_string(), partition)).or_default().clone()
    }

    /// Keeps the tasks in line with the links and this broker's
    /// leaderships until shutdown.
    pub async fn run(self: Arc<Self>, state: Arc<BrokerState>, mut shutdown: Shutdown) {
        let mut tick = tokio::time::interval(RECONCILE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut checkpoints = tokio::time::interval(CHECKPOINT_INTERVAL);
        checkpoints.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.reconcile(&state),
                _ = checkpoints.tick() => self.send_checkpoints(&state),
                _ = shutdown.wait() => break,
            }
        }
        for (_, t) in std::mem::take(&mut *self.tasks.lock()) {
            t.handle.abort();
        }
        self.links.lock().clear();
    }

    fn reconcile(self: &Arc<Self>, state: &Arc<BrokerState>) {
        let md = state.cluster.metadata();
        let me = state.cluster.node_id();
        self.sync_links(state, &md.mirror_links);
        let mut wanted: BTreeMap<TaskKey, TaskSpec> = BTreeMap::new();
        let mut topic_states = BTreeMap::new();
        {
            let links = self.links.lock();
            let mut claims = Claims::default();
            // By name, as on every broker: the first link to claim a
            // (source cluster, topic, destination) copies it.
            for (name, l) in links.iter() {
                if l.record.paused || l.source_cluster.is_empty() {
                    continue;
                }
                for (topic, source) in &l.source_topics {
                    let count = source.partitions;
                    let destination = l.record.destination_topic(topic);
                    if let Some(conflict) = claims.claim(name, &l.source_cluster, topic, &destination) {
                        topic_states.insert((name.clone(), topic.clone()), conflict);
                        continue;
                    }
                    let t = match md.topic(&destination) {
                        None => {
                            if state.cluster.is_controller() {
                                self.create_destination(state, &l.record, &destination, count);
                            }
                            TopicState {
                                destination,
                                state: "Creating",
                                reason: "creating the destination topic".into(),
                            }
                        }
                        Some(t) => {
                            // One task per source partition the destination
                            // has a partition for: a source that grew past
                            // the destination stalls only its new partitions.
                            let copyable = count.min(t.partitions.len() as u32);
                            for p in 0..copyable {
                                let Some(pr) = t.partitions.get(p as usize) else { continue };
                                if pr.leader != me {
                                    continue;
                                }
                                wanted.insert(
                                    (name.clone(), topic.clone(), p),
                                    TaskSpec {
                                        link: l.record.clone(),
                                        source_cluster: l.source_cluster.clone(),
                                        destination_cluster: md.cluster_id.clone(),
                                        source_topic: topic.clone(),
                                        source_topic_tag: source.tag.clone(),
                                        destination_topic: destination.clone(),
                                        partition: p,
                                        epoch: pr.leader_epoch,
                                    },
                                );
                            }
                            if copyable < count {
                                TopicState {
                                    reason: format!(
                                        "the destination topic '{destination}' has {} partitions, the source {count}: \
                                         exactly-once copying needs one destination partition per source partition, \
                                         so source partitions {copyable}..{count} wait; grow it \
                                         (`tributary topic add-partitions {destination} --total {count}`)",
                                        t.partitions.len()
                                    ),
                                    destination,
                                    state: "Stalled",
                                }
                            } else {
                                TopicState { destination, state: "Copying", reason: String::new() }
                            }
                        }
                    };
                    topic_states.insert((name.clone(), topic.clone()), t);
                }
            }
        }
        *self.topics.lock() = topic_states;
        let mut tasks = self.tasks.lock();
        tasks.retain(|key, t| {
            let keep = wanted.get(key) == Some(&t.spec) && !t.handle.is_finished();
            if !keep {
                t.handle.abort();
            }
            if !wanted.contains_key(key) {
                // Stopped for good here (link deleted or paused, leadership
                // moved away): its metric series go too, rather than
                // showing a lag frozen at its last value.
                let labels = crate::metrics::MirrorLabels {
                    link: key.0.clone(),
                    topic: key.1.clone(),
                    partition: key.2,
                };
                state.metrics.mirror_lag.remove(&labels);
                state.metrics.mirror_records.remove(&labels);
            }
            keep
        });
        for (key, spec) in wanted {
            if tasks.contains_key(&key) {
                continue;
            }
            let status = Arc::new(Mutex::new(TaskStatus::default()));
            let handle = tokio::spawn(task::run(state.clone(), self.clone(), spec.clone(), status.clone()));
            tasks.insert(key, TaskEntry { spec, status, handle });
        }
    }

    /// Sends the tasks' progress since the last send to the controller, in
    /// one request, in the background.
    fn send_checkpoints(&self, state: &Arc<BrokerState>) {
        use std::sync::atomic::Ordering;
        let mut due = Vec::new();
        for t in self.tasks.lock().values() {
            let s = t.status.lock();
            if let Some(c) = s.checkpoint.as_ref().filter(|c| s.checkpoint_sent.as_ref() != Some(*c)) {
                due.push((t.status.clone(), c.clone(), t.spec.clone()));
            }
        }
        if due.is_empty() || self.sending.swap(true, Ordering::SeqCst) {
            return;
        }
        let (state, sending) = (state.clone(), self.sending.clone());
        tokio::spawn(async move {
            let request = due
                .iter()
                .map(|(_, c, spec)| v1::MirrorCheckpoint {
                    destination_topic: spec.destination_topic.clone(),
                    partition: spec.partition,
                    source_cluster_id: spec.source_cluster.clone(),
                    source_topic_tag: c.topic_tag.clone(),
                    source_offset: c.source_offset,
                    destination_offset: c.destination_offset,
                })
                .collect();
            match crate::server::mirror::record_checkpoints(&state, request).await {
                Ok(()) => {
                    for (status, c, _) in due {
                        status.lock().checkpoint_sent = Some(c);
                    }
                }
                Err(e) => tracing::debug!(error = %e, "recording mirror checkpoints (retried)"),
            }
            sending.store(false, Ordering::SeqCst);
        });
    }

    /// Link states follow the metadata; each link's source is listed again
    /// every few seconds (in its own task: a slow source stalls nothing).
    fn sync_links(self: &Arc<Self>, state: &Arc<BrokerState>, records: &BTreeMap<String, MirrorLinkRecord>) {
        let mut links = self.links.lock();
        links.retain(|name, l| records.get(name) == Some(&l.record));
        for (name, record) in records {
            let l = links.entry(name.clone()).or_insert_with(|| LinkState {
                record: record.clone(),
                topics_re: whole_name(&record.topics).ok(),
                exclude_re: if record.exclude.is_empty() { None } else { whole_name(&record.exclude).ok() },
                source_cluster: String::new(),
                source_topics: BTreeMap::new(),
                error: String::new(),
                discovery: None,
                last_discovery: None,
            });
            let running = l.discovery.as_ref().is_some_and(|d| !d.is_finished());
            let due = l.last_discovery.is_none_or(|t| t.elapsed() >= DISCOVERY_INTERVAL);
            if record.paused || running || !due {
                continue;
            }
            l.last_discovery = Some(Instant::now());
            let (this, state, name) = (self.clone(), state.clone(), name.clone());
            let bootstrap = record.source_bootstrap.clone();
            l.discovery = Some(tokio::spawn(async move {
                let found = discover(&bootstrap).await;
                this.discovered(&state, &name, &bootstrap, found);
            }));
        }
    }

    fn discovered(
        &self,
        state: &BrokerState,
        name: &str,
        bootstrap: &str,
        found: Result<(String, BTreeMap<String, SourceTopic>), String>,
    ) {
        let mut links = self.links.lock();
        let Some(l) = links.get_mut(name) else { return };
        if l.record.source_bootstrap != bootstrap {
            return;
        }
        match found {
            // The source may be failing over: tasks go on with what was
            // found before (they fetch through the client, which follows
            // leaders); the status says what went wrong.
            Err(e) => l.error = e,
            Ok((cluster_id, _)) if cluster_id == state.cluster.metadata().cluster_id => {
                l.error = "the source is this cluster: a link into itself would copy its own copies".into();
                l.source_cluster.clear();
                l.source_topics.clear();
            }
            Ok((cluster_id, topics)) => {
                l.error.clear();
                l.source_cluster = cluster_id;
                l.source_topics = topics
                    .into_iter()
                    .filter(|(t, _)| {
                        !is_internal(t)
                            && l.topics_re.as_ref().is_some_and(|re| re.is_match(t))
                            && !l.exclude_re.as_ref().is_some_and(|re| re.is_match(t))
                    })
                    .collect();
            }
        }
    }

    fn create_destination(
        self: &Arc<Self>,
        state: &Arc<BrokerState>,
        link: &MirrorLinkRecord,
        topic: &str,
        partitions: u32,
    ) {
        if !self.creating.lock().insert(topic.to_string()) {
            return;
        }
        let (this, state, topic) = (self.clone(), state.clone(), topic.to_string());
        let rf = link.replication_factor;
        tokio::spawn(async move {
            use tributary_proto::v1::admin_server::Admin as _;
            let spec = v1::TopicSpec {
                name: topic.clone(),
                partitions,
                replication_factor: rf,
                configs: Default::default(),
            };
            let request =
                tonic::Request::new(v1::CreateTopicsRequest { topics: vec![spec], validate_only: false });
            let admin = crate::server::admin::AdminService::new(state.clone());
            match admin.create_topics(request).await {
                Ok(_) => tracing::info!(%topic, partitions, "created a mirror destination topic"),
                Err(s) if s.code() == tonic::Code::AlreadyExists => {}
                Err(s) => {
                    tracing::warn!(%topic, error = %s.message(), "creating a mirror destination topic");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            this.creating.lock().remove(&topic);
        });
    }

    /// This broker's view of a link: its tasks, the topics it matched, and
    /// its source.
    pub fn local_status(
        &self,
        state: &BrokerState,
        link: &MirrorLinkRecord,
    ) -> v1::DescribeMirrorLinkResponse {
        let me = state.cluster.node_id();
        let mut out = v1::DescribeMirrorLinkResponse { link: Some(spec_of(link)), ..Default::default() };
        if let Some(l) = self.links.lock().get(&link.name) {
            out.source_cluster_id = l.source_cluster.clone();
            out.error = l.error.clone();
        }
        for ((name, topic), t) in self.topics.lock().iter() {
            if name == &link.name {
                out.topics.push(v1::MirrorTopicStatus {
                    source_topic: topic.clone(),
                    destination_topic: t.destination.clone(),
                    state: t.state.to_string(),
                    reason: t.reason.clone(),
                });
            }
        }
        for ((name, _, _), t) in self.tasks.lock().iter() {
            if name != &link.name {
                continue;
            }
            let mut s = t.status.lock();
            out.partitions.push(v1::MirrorPartitionStatus {
                source_topic: t.spec.source_topic.clone(),
                partition: t.spec.partition,
                destination_topic: t.spec.destination_topic.clone(),
                broker: me,
                source_high_watermark: s.source_high_watermark,
                last_copied_offset: s.last_copied,
                lag: s.lag(),
                records_per_sec: s.records_per_sec(),
                records_copied: s.copied,
                state: if link.paused { "Paused".into() } else { s.state.to_string() },
                error: s.error.clone(),
            });
        }
        out
    }
}

/// Which link copies each (source cluster, source topic, destination
/// topic). Two links from one source into one topic (overlapping regexes
/// with identity naming, or one alias used twice) would each copy every
/// record, and both resume from the same provenance: the second is told
/// to leave it to the first. Since a task resumes from the destination's
/// own log, not from its link, the copying can move from one link to the
/// other (one deleted or paused) without loss or duplicates.
#[derive(Default)]
struct Claims(HashMap<(String, String, String), String>);

impl Claims {
    /// None when `link` may copy `topic`; else the topic's state for it.
    fn claim(
        &mut self,
        link: &str,
        source_cluster: &str,
        topic: &str,
        destination: &str,
    ) -> Option<TopicState> {
        let key = (source_cluster.to_string(), topic.to_string(), destination.to_string());
        match self.0.get(&key) {
            Some(owner) if owner != link => Some(TopicState {
                destination: destination.to_string(),
                state: "Conflict",
                reason: format!(
                    "link '{owner}' already copies '{topic}' of the same source cluster into '{destination}' \
                     (two links would copy every record twice): this link leaves it to '{owner}'"
                ),
            }),
            Some(_) => None,
            None => {
                self.0.insert(key, link.to_string());
                None
            }
        }
    }
}

/// The source's cluster id and its topics.
async fn discover(bootstrap: &str) -> Result<(String, BTreeMap<String, SourceTopic>), String> {
    let timeout = Duration::from_secs(5);
    let work = async {
        let admin = tributary_client::Admin::connect(bootstrap).await?;
        let cluster = admin.describe_cluster().await?;
        let topics = admin.describe_topics().await?;
        Ok::<_, tributary_client::Error>((
            cluster.cluster_id,
            topics
                .into_iter()
                .map(|t| {
                    let source = SourceTopic {
                        partitions: t.partitions.len() as u32,
                        tag: provenance::topic_tag(&t.topic_id),
                    };
                    (t.name, source)
                })
                .collect(),
        ))
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(found)) => Ok(found),
        Ok(Err(e)) => Err(format!("source {bootstrap}: {e}")),
        Err(_) => Err(format!("source {bootstrap} did not answer within {} s", timeout.as_secs())),
    }
}

/// `re` matched against whole names.
pub fn whole_name(re: &str) -> Result<Regex, regex::Error> {
    tributary_client::audit::whole_name(re)
}

/// Link and alias names: what topic names allow.
fn check_name(what: &str, name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidRequest(format!(
            "invalid {what} '{name}': use 1 to 200 of a-z, A-Z, 0-9, '.', '_', '-'"
        )))
    }
}

/// Checks a link as asked for and turns it into what the metadata stores.
pub fn check_spec(spec: &v1::MirrorLinkSpec) -> Result<MirrorLinkRecord, Error> {
    check_name("mirror link name", &spec.name)?;
    check_name("source alias", &spec.source_alias)?;
    let entries: Vec<&str> =
        spec.source_bootstrap.split(',').map(str::trim).filter(|e| !e.is_empty()).collect();
    if entries.is_empty() {
        return Err(Error::InvalidRequest(
            "the source bootstrap is empty: give HOST:PORT[,HOST:PORT...]".into(),
        ));
    }
    for e in &entries {
        let bare = e.strip_prefix("http://").unwrap_or(e);
        let valid =
            bare.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !valid {
            return Err(Error::InvalidRequest(format!("invalid source address '{e}': expected HOST:PORT")));
        }
    }
    if spec.topics.is_empty() {
        return Err(Error::InvalidRequest("no topics regex: give --topics REGEX (e.g. '.*')".into()));
    }
    whole_name(&spec.topics)
        .map_err(|e| Error::InvalidRequest(format!("invalid topics regex '{}': {e}", spec.topics)))?;
    if !spec.exclude.is_empty() {
        whole_name(&spec.exclude)
            .map_err(|e| Error::InvalidRequest(format!("invalid exclude regex '{}': {e}", spec.exclude)))?;
    }
    let naming = match v1::MirrorNaming::try_from(spec.naming) {
        Ok(v1::MirrorNaming::Prefix) => MirrorNaming::Prefix,
        Ok(v1::MirrorNaming::Identity) => MirrorNaming::Identity,
        Err(_) => {
            return Err(Error::InvalidRequest(format!("unknown naming {}: prefix or identity", spec.naming)))
        }
    };
    let start = match v1::MirrorStart::try_from(spec.start) {
        Ok(v1::MirrorStart::Earliest) => MirrorStart::Earliest,
        Ok(v1::MirrorStart::Latest) => MirrorStart::Latest,
        Err(_) => {
            return Err(Error::InvalidRequest(format!("unknown start {}: earliest or latest", spec.start)))
        }
    };
    Ok(MirrorLinkRecord {
        name: spec.name.clone(),
        source_alias: spec.source_alias.clone(),
        source_bootstrap: entries.join(","),
        topics: spec.topics.clone(),
        exclude: spec.exclude.clone(),
        naming,
        start,
        paused: spec.paused,
        replication_factor: spec.replication_factor,
        created_ms: 0,
    })
}

/// Refuses a link whose source is this cluster: by address (any broker's),
/// or, when the source answers, by cluster id. A source that does not
/// answer now is allowed (it may come up later; the link reports it).
pub async fn check_not_this_cluster(state: &BrokerState, link: &MirrorLinkRecord) -> Result<(), Error> {
    let md = state.cluster.metadata();
    let mut ours: HashSet<String> = md.brokers.values().map(|b| b.address.clone()).collect();
    ours.extend(state.cluster.setup.peers.values().cloned());
    ours.insert(state.cluster.setup.advertised.clone());
    let refused = || {
        Error::InvalidRequest(format!(
            "the source {} is this cluster: a mirror link copies from another cluster into this one",
            link.source_bootstrap
        ))
    };
    for e in link.source_bootstrap.split(',') {
        let bare = e.strip_prefix("http://").unwrap_or(e);
        if ours.contains(bare) {
            return Err(refused());
        }
    }
    if let Ok((id, _)) = discover(&link.source_bootstrap).await {
        if id == md.cluster_id {
            return Err(refused());
        }
    }
    Ok(())
}

/// The gRPC shape of a stored link.
pub fn spec_of(l: &MirrorLinkRecord) -> v1::MirrorLinkSpec {
    v1::MirrorLinkSpec {
        name: l.name.clone(),
        source_alias: l.source_alias.clone(),
        source_bootstrap: l.source_bootstrap.clone(),
        topics: l.topics.clone(),
        exclude: l.exclude.clone(),
        naming: match l.naming {
            MirrorNaming::Prefix => v1::MirrorNaming::Prefix,
            MirrorNaming::Identity => v1::MirrorNaming::Identity,
        } as i32,
        start: match l.start {
            MirrorStart::Earliest => v1::MirrorStart::Earliest,
            MirrorStart::Latest => v1::MirrorStart::Latest,
        } as i32,
        paused: l.paused,
        replication_factor: l.replication_factor,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> v1::MirrorLinkSpec {
        v1::MirrorLinkSpec {
            name: "east-to-agg".into(),
            source_alias: "east".into(),
            source_bootstrap: "127.0.0.1:7070, 127.0.0.1:7072".into(),
            topics: "orders|clicks".into(),
            ..Default::default()
        }
    }

    #[test]
    fn one_link_copies_a_source_topic_into_a_destination_and_an_overlapping_link_is_told_why() {
        let mut c = Claims::default();
        assert!(c.claim("a", "src1", "orders", "orders").is_none());
        assert!(c.claim("a", "src1", "orders", "orders").is_none(), "a link never conflicts with itself");
        let conflict = c.claim("b", "src1", "orders", "orders").expect("b overlaps a");
        assert_eq!(conflict.state, "Conflict");
        assert!(conflict.reason.contains("link 'a' already copies 'orders'"), "{}", conflict.reason);
        // Another source cluster, another topic or another destination
        // (prefix naming with another alias) is no overlap.
        assert!(c.claim("b", "src2", "orders", "orders").is_none());
        assert!(c.claim("b", "src1", "clicks", "clicks").is_none());
        assert!(c.claim("b", "src1", "orders", "west.orders").is_none());
    }

    #[test]
    fn a_good_link_round_trips_and_regexes_match_whole_names() {
        let record = check_spec(&spec()).unwrap();
        assert_eq!(record.source_bootstrap, "127.0.0.1:7070,127.0.0.1:7072");
        let back = spec_of(&record);
        assert_eq!(check_spec(&back).unwrap(), record);
        let re = whole_name(&record.topics).unwrap();
        assert!(re.is_match("orders") && re.is_match("clicks"));
        assert!(!re.is_match("orders-old") && !re.is_match("xclicks"));
    }

    #[test]
    fn bad_links_are_refused_with_what_is_wrong() {
        let cases: Vec<(v1::MirrorLinkSpec, &str)> = vec![
            (v1::MirrorLinkSpec { topics: "orders(".into(), ..spec() }, "invalid topics regex"),
            (v1::MirrorLinkSpec { exclude: "[".into(), ..spec() }, "invalid exclude regex"),
            (v1::MirrorLinkSpec { topics: String::new(), ..spec() }, "no topics regex"),
            (v1::MirrorLinkSpec { name: "a/b".into(), ..spec() }, "invalid mirror link name"),
            (v1::MirrorLinkSpec { source_alias: String::new(), ..spec() }, "invalid source alias"),
            (v1::MirrorLinkSpec { source_bootstrap: " ".into(), ..spec() }, "bootstrap is empty"),
            (v1::MirrorLinkSpec { source_bootstrap: "host".into(), ..spec() }, "invalid source address"),
            (v1::MirrorLinkSpec { naming: 7, ..spec() }, "unknown naming"),
            (v1::MirrorLinkSpec { start: 7, ..spec() }, "unknown start"),
        ];
        for (s, want) in cases {
            match check_spec(&s) {
                Err(e) => assert!(e.to_string().contains(want), "{e} should say {want}"),
                Ok(r) => panic!("{r:?} was accepted; wanted {want}"),
            }
        }
    }

    #[test]
    fn copies_are_counted_per_window_by_timestamp() {
        let counts = count_by_window(&[0, 59_999, 60_000, 125_000, -1], 60_000);
        assert_eq!(counts, BTreeMap::from([(-60_000, 1), (0, 2), (60_000, 1), (120_000, 1)]));
    }
}
