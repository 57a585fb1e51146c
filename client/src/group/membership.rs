//! The group protocol as a member speaks it: join and sync, the heartbeat
//! task, leave, and committing and fetching offsets.
//!
//! JoinGroup waits until the whole group has rejoined, which may take as
//! long as the slowest member's poll loop, so [`join`] runs as a task of its
//! own (a cooperative member keeps fetching meanwhile). Heartbeats run in
//! another task between polls; it never changes the consumer's state itself
//! but reports what it learned ([`Event`]) and wakes the consumer, so every
//! state change happens in `poll`, on the application's task.
//!
//! The coordinator can move (its broker fails, leadership of the group's
//! offsets partition moves): an answer NOT_COORDINATOR, a coordinator still
//! loading, or a broker that cannot be reached makes the calls here find it
//! again ([`Coordinators`]). Heartbeats then come sooner than usual until
//! one is answered, so the session survives the move; commits are retried
//! at the new coordinator and reported if they still cannot be confirmed.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tributary_proto::v1::{self, ErrorCode};

use super::assignment::{self, Assignor, TopicPartition};
use crate::cluster::backoff;
use crate::connection::Connection;
use crate::coordinator::{self, Coordinators};
use crate::error::{Error, Recovery, Result};

/// How long an offset or leave call may take.
pub(crate) const RPC_TIMEOUT: Duration = Duration::from_secs(30);
/// How long commits, offset lookups and leaves keep trying a coordinator
/// that moved before the failure is reported.
pub(crate) const COORDINATOR_PATIENCE: Duration = Duration::from_secs(30);
/// First pause before a heartbeat that failed is sent again (doubling, at
/// most the heartbeat interval).
const HEARTBEAT_RETRY: Duration = Duration::from_millis(200);
/// How much longer than the rebalance timeout a JoinGroup may take.
const JOIN_GRACE: Duration = Duration::from_secs(30);
/// Join attempts answered "try again" before giving up (each one waits for
/// a rebalance, so this is generous).
const JOIN_ATTEMPTS: u32 = 50;

/// What every membership call of one consumer carries.
#[derive(Debug)]
pub(crate) struct Params {
    pub group_id: String,
    /// Empty for a dynamic member.
    pub instance_id: String,
    pub client_id: String,
    pub assignor: Assignor,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub heartbeat_interval: Duration,
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// A group outcome code in a response, with its message; `None` for NONE.
fn outcome(e: Option<&v1::PartitionError>) -> Option<(Result<ErrorCode, i32>, String)> {
    let e = e?;
    match ErrorCode::try_from(e.code) {
        Ok(ErrorCode::None) => None,
        Ok(code) => Some((Ok(code), e.message.clone())),
        Err(_) => Some((Err(e.code), e.message.clone())),
    }
}

/// The coordinator's own words add nothing here (they tell a dynamic member
/// to join again, which is exactly wrong for a fenced static one).
fn fenced(p: &Params, message: &str) -> Error {
    tracing::debug!(group = %p.group_id, "fenced: {message}");
    Error::Fenced(format!(
        "fenced: another consumer joined group '{}' with group instance id '{}' and took this one's \
         place; give each running consumer its own instance id",
        p.group_id, p.instance_id
    ))
}

fn unexpected(what: &str, code: Result<ErrorCode, i32>, message: &str) -> Error {
    let code = match code {
        Ok(c) => c.as_str_name().to_string(),
        Err(n) => format!("error code {n}"),
    };
    Error::status(tonic::Code::FailedPrecondition, format!("{what} failed with {code}: {message}"))
}

/// What a member asks for when it (re)joins.
#[derive(Debug, Clone)]
pub(crate) struct JoinRequest {
    /// Empty on the first join: the coordinator gives one.
    pub member_id: String,
    pub topics: Vec<String>,
    /// Partitions kept across the rebalance (cooperative); empty for eager.
    pub owned: BTreeSet<TopicPartition>,
}

/// A completed join and sync.
#[derive(Debug)]
pub(crate) struct Joined {
    pub member_id: String,
    pub generation: i32,
    pub assignment: BTreeSet<TopicPartition>,
    /// The coordinator had forgotten this member (its session expired), so
    /// what it owned was given to others meanwhile: lost, not revoked.
    pub lost: bool,
}

/// JoinGroup until the rebalance completes, then SyncGroup for this
/// member's partitions; starts over while the coordinator says a newer
/// rebalance began.
pub(crate) async fn join(conn: Connection, p: Arc<Params>, mut req: JoinRequest) -> Result<Joined> {
    let mut lost = false;
    let forget = |req: &mut JoinRequest, lost: &mut bool| {
        req.member_id.clear();
        if !req.owned.is_empty() {
            *lost = true;
            req.owned.clear();
        }
    };
    for _ in 0..JOIN_ATTEMPTS {
        let request = v1::JoinGroupRequest {
            group_id: p.group_id.clone(),
            member_id: req.member_id.clone(),
            group_instance_id: p.instance_id.clone(),
            session_timeout_ms: millis(p.session_timeout),
            rebalance_timeout_ms: millis(p.rebalance_timeout),
            topics: req.topics.clone(),
            assignor: p.assignor.name().to_string(),
            owned: assignment::to_wire(&req.owned),
            client_id: p.client_id.clone(),
        };
        let timeout = p.rebalance_timeout + JOIN_GRACE;
        let joined = conn.call("a join-group request", timeout, conn.group().join_group(request)).await?;
        if let Some(e) =
            joined.error.as_ref().and_then(|e| coordinator::moved(&p.group_id, e.code, &e.message))
        {
            return Err(e);
        }
        match outcome(joined.error.as_ref()) {
            None => {}
            Some((Ok(ErrorCode::UnknownMemberId), _)) => {
                forget(&mut req, &mut lost);
                continue;
            }
            Some((Ok(ErrorCode::RebalanceInProgress | ErrorCode::IllegalGeneration), _)) => {
                // Still a member (the answer names it): rejoin as that one,
                // not as a newcomer the group would wait for too.
                if !joined.member_id.is_empty() {
                    req.member_id = joined.member_id;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Some((Ok(ErrorCode::FencedInstanceId), message)) => return Err(fenced(&p, &message)),
            Some((code, message)) => return Err(unexpected("joining the group", code, &message)),
        }
        req.member_id = joined.member_id.clone();
        let request = v1::SyncGroupRequest {
            group_id: p.group_id.clone(),
            member_id: joined.member_id.clone(),
            generation: joined.generation,
            group_instance_id: p.instance_id.clone(),
        };
        let synced = conn.call("a sync-group request", timeout, conn.group().sync_group(request)).await?;
        if let Some(e) =
            synced.error.as_ref().and_then(|e| coordinator::moved(&p.group_id, e.code, &e.message))
        {
            return Err(e);
        }
        match outcome(synced.error.as_ref()) {
            None => {
                return Ok(Joined {
                    member_id: joined.member_id,
                    generation: joined.generation,
                    assignment: assignment::from_wire(&synced.assignment),
                    lost,
                })
            }
            Some((Ok(ErrorCode::UnknownMemberId), _)) => forget(&mut req, &mut lost),
            Some((Ok(ErrorCode::RebalanceInProgress | ErrorCode::IllegalGeneration), _)) => {}
            Some((Ok(ErrorCode::FencedInstanceId), message)) => return Err(fenced(&p, &message)),
            Some((code, message)) => return Err(unexpected("syncing with the group", code, &message)),
        }
    }
    Err(Error::Timeout(format!(
        "could not join group '{}': {JOIN_ATTEMPTS} rebalances in a row were interrupted by newer ones",
        p.group_id
    )))
}

/// What the heartbeat task learned, for the consumer to act on in `poll`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// A rebalance started (or this member's generation is old): rejoin.
    Rejoin,
    /// The coordinator no longer knows this member (session expired): its
    /// partitions are someone else's now.
    Lost,
    /// The application did not poll within max_poll_interval; the task left
    /// the group on its behalf.
    PollTimeout,
    /// Another process took this static member's place.
    Fenced(String),
}

impl Event {
    fn severity(&self) -> u8 {
        match self {
            Event::Rejoin => 0,
            Event::Lost | Event::PollTimeout => 1,
            Event::Fenced(_) => 2,
        }
    }
}

/// Shared between the consumer and its heartbeat task.
#[derive(Debug)]
pub(crate) struct Liveness {
    /// (generation it concerns, event); the most severe one is kept.
    event: Mutex<Option<(i32, Event)>>,
    /// (inside `poll` now, when `poll` last returned).
    polling: Mutex<(bool, Instant)>,
    pub wake: Arc<Notify>,
}

impl Liveness {
    pub fn new(wake: Arc<Notify>) -> Self {
        Liveness { event: Mutex::new(None), polling: Mutex::new((false, Instant::now())), wake }
    }

    fn report(&self, generation: i32, event: Event) {
        let mut slot = self.event.lock();
        let keep = match &*slot {
            Some((g, old)) => *g == generation && old.severity() >= event.severity(),
            None => false,
        };
        if !keep {
            *slot = Some((generation, event));
        }
        drop(slot);
        self.wake.notify_one();
    }

    /// The event reported for `generation`, if any (older ones are stale:
    /// the consumer has moved on since).
    pub fn take(&self, generation: i32) -> Option<Event> {
        match self.event.lock().take() {
            Some((g, e)) if g == generation => Some(e),
            _ => None,
        }
    }

    /// Marks the application as inside `poll` until the guard drops.
    pub fn polling(self: &Arc<Self>) -> PollGuard {
        *self.polling.lock() = (true, Instant::now());
        PollGuard(self.clone())
    }

    /// How long since `poll` last returned; zero while inside it.
    fn idle(&self) -> Duration {
        let (inside, since) = *self.polling.lock();
        if inside {
            Duration::ZERO
        } else {
            since.elapsed()
        }
    }
}

pub(crate) struct PollGuard(Arc<Liveness>);

impl Drop for PollGuard {
    fn drop(&mut self) {
        *self.0.polling.lock() = (false, Instant::now());
    }
}

/// Starts the heartbeat task of `member_id` in `generation`. It ends by
/// itself when the member is gone (lost, fenced, timed out); otherwise the
/// consumer aborts it when the generation ends.
pub(crate) fn spawn_heartbeat(
    coordinators: Arc<Coordinators>,
    p: Arc<Params>,
    member_id: String,
    generation: i32,
    liveness: Arc<Liveness>,
    max_poll_interval: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut failures = 0u32;
        loop {
            tokio::time::sleep(heartbeat_pause(p.heartbeat_interval, failures)).await;
            if liveness.idle() > max_poll_interval {
                tracing::warn!(
                    group = %p.group_id,
                    "poll was not called for more than max_poll_interval ({max_poll_interval:?}): \
                     leaving the group; the partitions count as lost and the next poll rejoins"
                );
                if let Err(e) = leave(&coordinators, &p, &member_id).await {
                    tracing::debug!(group = %p.group_id, "leave after the poll timeout failed: {e}");
                }
                liveness.report(generation, Event::PollTimeout);
                return;
            }
            match heartbeat(&coordinators, &p, &member_id, generation).await {
                Ok(response) => {
                    failures = 0;
                    if !heartbeat_answered(&p, generation, &liveness, &response) {
                        return;
                    }
                }
                // The session timeout decides; keep trying, sooner than
                // usual, wherever the coordinator is now.
                Err(e) => {
                    failures = failures.saturating_add(1);
                    if e.recovery() == Recovery::Reroute {
                        coordinators.forget(&p.group_id);
                    }
                    tracing::debug!(group = %p.group_id, failures, "heartbeat failed: {e}");
                }
            }
        }
    })
}

/// The wait before the next heartbeat: the interval, or after failures a
/// shorter growing pause, so a moved coordinator hears from us well within
/// the session timeout.
fn heartbeat_pause(interval: Duration, failures: u32) -> Duration {
    if failures == 0 {
        interval
    } else {
        backoff(HEARTBEAT_RETRY, failures, interval).min(interval)
    }
}

/// One heartbeat at the coordinator; NOT_COORDINATOR (and a coordinator
/// still loading) come back as errors, like an unreachable one.
async fn heartbeat(
    coordinators: &Coordinators,
    p: &Params,
    member_id: &str,
    generation: i32,
) -> Result<v1::HeartbeatResponse> {
    let timeout = p.session_timeout.max(Duration::from_secs(1));
    let conn = coordinators.for_group(&p.group_id, timeout).await?;
    let request = v1::HeartbeatRequest {
        group_id: p.group_id.clone(),
        member_id: member_id.to_string(),
        generation,
        group_instance_id: p.instance_id.clone(),
    };
    let response = conn.call("a heartbeat", timeout, conn.group().heartbeat(request)).await?;
    match response.error.as_ref().and_then(|e| coordinator::moved(&p.group_id, e.code, &e.message)) {
        Some(e) => Err(e),
        None => Ok(response),
    }
}

/// Acts on a heartbeat's answer; false when the member is gone and the
/// task must end.
fn heartbeat_answered(
    p: &Params,
    generation: i32,
    liveness: &Liveness,
    response: &v1::HeartbeatResponse,
) -> bool {
    match outcome(response.error.as_ref()) {
        None => {}
        // Go on beating: the session must stay alive until the
        // application's next poll rejoins.
        Some((Ok(ErrorCode::RebalanceInProgress | ErrorCode::IllegalGeneration), _)) => {
            liveness.report(generation, Event::Rejoin)
        }
        Some((Ok(ErrorCode::UnknownMemberId), _)) => {
            liveness.report(generation, Event::Lost);
            return false;
        }
        Some((Ok(ErrorCode::FencedInstanceId), message)) => {
            liveness.report(generation, Event::Fenced(fenced(p, &message).to_string()));
            return false;
        }
        Some((code, message)) => {
            tracing::warn!(group = %p.group_id, "{}", unexpected("a heartbeat", code, &message))
        }
    }
    true
}

/// LeaveGroup: the coordinator rebalances the others right away instead of
/// waiting out this member's session.
pub(crate) async fn leave(coordinators: &Coordinators, p: &Params, member_id: &str) -> Result<()> {
    coordinators
        .call(&p.group_id, RPC_TIMEOUT, COORDINATOR_PATIENCE, |conn: Connection| async move {
            let request = v1::LeaveGroupRequest {
                group_id: p.group_id.clone(),
                member_id: member_id.to_string(),
                group_instance_id: p.instance_id.clone(),
            };
            conn.call("a leave-group request", RPC_TIMEOUT, conn.group().leave_group(request)).await
        })
        .await?;
    Ok(())
}

/// Commits `offsets` (the offset of the next record to read, per partition)
/// as `member_id` of `generation`; "" and -1 outside the group. While the
/// coordinator moves, the commit is retried where it went; a commit that
/// cannot be confirmed is an error, never dropped.
pub(crate) async fn commit(
    coordinators: &Coordinators,
    p: &Params,
    member_id: &str,
    generation: i32,
    offsets: &[(TopicPartition, i64)],
) -> Result<()> {
    let request = v1::CommitOffsetsRequest {
        group_id: p.group_id.clone(),
        member_id: member_id.to_string(),
        generation,
        group_instance_id: p.instance_id.clone(),
        offsets: offsets
            .iter()
            .map(|(tp, offset)| v1::OffsetEntry {
                topic: tp.topic.clone(),
                partition: tp.partition,
                offset: *offset,
                metadata: String::new(),
            })
            .collect(),
    };
    let request = &request;
    coordinators
        .call(&p.group_id, RPC_TIMEOUT, COORDINATOR_PATIENCE, |conn: Connection| async move {
            let request = request.clone();
            conn.call("a commit-offsets request", RPC_TIMEOUT, conn.group().commit_offsets(request)).await
        })
        .await?;
    Ok(())
}

/// The group's committed offsets of `partitions` (-1 where none); a group
/// the coordinator does not know has none.
pub(crate) async fn committed(
    coordinators: &Coordinators,
    group_id: &str,
    partitions: &[TopicPartition],
) -> Result<Vec<v1::OffsetEntry>> {
    let request = v1::FetchOffsetsRequest {
        group_id: group_id.to_string(),
        partitions: assignment::to_wire(partitions),
    };
    let request = &request;
    let answer = coordinators
        .call(group_id, RPC_TIMEOUT, COORDINATOR_PATIENCE, |conn: Connection| async move {
            let request = request.clone();
            conn.call("a fetch-offsets request", RPC_TIMEOUT, conn.group().fetch_offsets(request)).await
        })
        .await;
    match answer {
        Ok(response) => Ok(response.offsets),
        Err(Error::Status { code: tonic::Code::NotFound, .. }) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_severe_event_of_a_generation_is_kept() {
        let l = Liveness::new(Arc::new(Notify::new()));
        l.report(3, Event::Rejoin);
        l.report(3, Event::Lost);
        l.report(3, Event::Rejoin);
        assert_eq!(l.take(3), Some(Event::Lost));
        assert_eq!(l.take(3), None);
        // An event of an older generation is stale.
        l.report(2, Event::Rejoin);
        assert_eq!(l.take(3), None);
        // A newer generation's event replaces an older one.
        l.report(2, Event::Fenced("x".into()));
        l.report(4, Event::Rejoin);
        assert_eq!(l.take(4), Some(Event::Rejoin));
    }

    #[test]
    fn idle_time_counts_only_outside_poll() {
        let l = Arc::new(Liveness::new(Arc::new(Notify::new())));
        let guard = l.polling();
        assert_eq!(l.idle(), Duration::ZERO);
        drop(guard);
        std::thread::sleep(Duration::from_millis(5));
        assert!(l.idle() >= Duration::from_millis(5));
    }

    #[test]
    fn heartbeats_come_sooner_after_a_failure() {
        let interval = Duration::from_secs(3);
        assert_eq!(heartbeat_pause(interval, 0), interval);
        assert_eq!(heartbeat_pause(interval, 1), HEARTBEAT_RETRY);
        assert_eq!(heartbeat_pause(interval, 2), HEARTBEAT_RETRY * 2);
        assert_eq!(heartbeat_pause(interval, 20), interval);
        // An interval shorter than the first retry pause is kept.
        assert_eq!(heartbeat_pause(Duration::from_millis(50), 1), Duration::from_millis(50));
    }

    #[test]
    fn outcome_codes() {
        assert_eq!(outcome(None), None);
        let none = v1::PartitionError { code: 0, message: String::new(), ..Default::default() };
        assert_eq!(outcome(Some(&none)), None);
        let r = v1::PartitionError {
            code: ErrorCode::RebalanceInProgress as i32,
            message: "m".into(),
            ..Default::default()
        };
        assert_eq!(outcome(Some(&r)), Some((Ok(ErrorCode::RebalanceInProgress), "m".to_string())));
        let odd = v1::PartitionError { code: 999, message: String::new(), ..Default::default() };
        assert_eq!(outcome(Some(&odd)), Some((Err(999), String::new())));
    }
}
