//! Finding the broker that coordinates a consumer group, and keeping a
//! connection to it.
//!
//! Membership, committed offsets and group administration are served by the
//! group's coordinator, which need not be the broker a client bootstrapped
//! from: it is the leader of the group's `__consumer_offsets` partition and
//! moves with it. Any broker answers FindCoordinator, so the question goes
//! to whichever broker answers ([`Cluster::call_any`]); the answer is kept
//! per group until a call says the coordinator moved (NOT_COORDINATOR, a
//! broker that cannot be reached, a coordinator shutting down), and then
//! asked again.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;
use tributary_proto::v1;

use crate::cluster::{backoff, Cluster};
use crate::connection::Connection;
use crate::error::{Error, Recovery, Result};

/// First pause before asking a moved coordinator's successor.
const RETRY_BACKOFF: Duration = Duration::from_millis(100);
const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(1);

/// Each group's coordinator connection, found on first use.
#[derive(Debug)]
pub(crate) struct Coordinators {
    cluster: Arc<Cluster>,
    known: Mutex<HashMap<String, Connection>>,
}

impl Coordinators {
    pub fn new(cluster: Arc<Cluster>) -> Self {
        Coordinators { cluster, known: Mutex::new(HashMap::new()) }
    }

    /// The connection to `group`'s coordinator, asking any broker where it
    /// is unless that is already known.
    pub async fn for_group(&self, group: &str, timeout: Duration) -> Result<Connection> {
        if let Some(c) = self.known.lock().get(group) {
            return Ok(c.clone());
        }
        let found = self
            .cluster
            .call_any(|c| async move {
                let request = v1::FindCoordinatorRequest { group_id: group.to_string() };
                c.call("a find-coordinator request", timeout, c.group().find_coordinator(request)).await
            })
            .await?;
        let conn = self.cluster.broker_connection(found.node_id, &found.address).await?;
        self.known.lock().insert(group.to_string(), conn.clone());
        Ok(conn)
    }

    /// The coordinator of `group` moved (or its connection failed): the
    /// next call asks again.
    pub fn forget(&self, group: &str) {
        self.known.lock().remove(group);
    }

    /// Runs a call on `group`'s coordinator; while it fails because the
    /// coordinator moved, cannot be reached or is still loading, finds the
    /// coordinator again and retries, for up to `patience`. Any other
    /// failure, or the last one, is returned.
    pub async fn call<T, F, Fut>(
        &self,
        group: &str,
        timeout: Duration,
        patience: Duration,
        call: F,
    ) -> Result<T>
    where
        F: Fn(Connection) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let deadline = Instant::now() + patience;
        let mut attempt = 0u32;
        loop {
            let outcome = match self.for_group(group, timeout).await {
                Ok(conn) => call(conn).await,
                Err(e) => Err(e),
            };
            let e = match outcome {
                Ok(answer) => return Ok(answer),
                Err(e) => e,
            };
            let recovery = e.recovery();
            if recovery == Recovery::Reroute {
                self.forget(group);
            }
            attempt += 1;
            let wait = backoff(RETRY_BACKOFF, attempt, MAX_RETRY_BACKOFF);
            if recovery == Recovery::Fail || Instant::now() + wait >= deadline {
                return Err(e);
            }
            tracing::debug!(group, attempt, "group call failed, retrying in {wait:?}: {e}");
            tokio::time::sleep(wait).await;
        }
    }
}

/// The error for a NOT_COORDINATOR or COORDINATOR_LOAD_IN_PROGRESS outcome
/// of a group call, or `None` for another code: retriable, and telling the
/// retry to find the coordinator again (or, while it loads, to wait).
pub(crate) fn moved(group: &str, code: i32, message: &str) -> Option<Error> {
    let why = if message.is_empty() { String::new() } else { format!(": {message}") };
    match v1::ErrorCode::try_from(code) {
        Ok(v1::ErrorCode::NotCoordinator) => Some(Error::status(
            tonic::Code::Unavailable,
            format!("the broker asked no longer coordinates group '{group}'{why}"),
        )),
        Ok(v1::ErrorCode::CoordinatorLoadInProgress) => Some(Error::status(
            tonic::Code::Aborted,
            format!("the coordinator of group '{group}' is still loading it{why}"),
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_moved_coordinator_is_looked_up_again_and_a_loading_one_waited_for() {
        let e = moved("g", v1::ErrorCode::NotCoordinator as i32, "").unwrap();
        assert_eq!(e.recovery(), Recovery::Reroute);
        assert!(e.to_string().contains("group 'g'"), "{e}");
        let e = moved("g", v1::ErrorCode::CoordinatorLoadInProgress as i32, "loading").unwrap();
        assert_eq!(e.recovery(), Recovery::Retry);
        assert!(e.to_string().ends_with("still loading it: loading"), "{e}");
        assert!(moved("g", v1::ErrorCode::RebalanceInProgress as i32, "").is_none());
        assert!(moved("g", 0, "").is_none());
    }

    #[tokio::test]
    async fn calls_retry_on_a_moved_coordinator_and_not_on_a_refusal() {
        let home = Connection::lazy("127.0.0.1:9").unwrap();
        let cluster = Arc::new(Cluster::with_home(vec!["127.0.0.1:9".into()], home.clone(), 1));
        let coordinators = Coordinators::new(cluster);
        coordinators.known.lock().insert("g".into(), home);
        let calls = std::sync::atomic::AtomicU32::new(0);
        // Refused: once, not retried.
        let refused: Result<()> = coordinators
            .call("g", Duration::from_secs(1), Duration::from_secs(5), |_| async {
                calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Err(Error::status(tonic::Code::FailedPrecondition, "not assigned"))
            })
            .await;
        assert!(refused.is_err());
        assert_eq!(calls.swap(0, std::sync::atomic::Ordering::SeqCst), 1);
        assert!(coordinators.known.lock().contains_key("g"), "a refusal keeps the coordinator");
        // Loading, twice, then an answer.
        let answered = coordinators
            .call("g", Duration::from_secs(1), Duration::from_secs(5), |_| async {
                match calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                    0 | 1 => Err(moved("g", v1::ErrorCode::CoordinatorLoadInProgress as i32, "").unwrap()),
                    n => Ok(n),
                }
            })
            .await;
        assert_eq!(answered, Ok(2));
    }
}
