//! Finding the broker that coordinates a consumer group, and keeping a
//! connection to it.
//!
//! Membership, committed offsets and group administration are served by the
//! group's coordinator, which need not be the broker a client bootstrapped
//! from: it is the leader of the group's `__consumer_offsets` partition and
//! moves with it. Asking `FindCoordinator` first (today the answer is always
//! the broker asked) keeps the clients right when the cluster grows.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use tributary_proto::v1;

use crate::connection::Connection;
use crate::error::Result;

/// Coordinator connections by address, opened on first use.
#[derive(Debug)]
pub(crate) struct Coordinators {
    bootstrap: Connection,
    open: Mutex<HashMap<String, Connection>>,
}

impl Coordinators {
    pub fn new(bootstrap: Connection) -> Self {
        Coordinators { bootstrap, open: Mutex::new(HashMap::new()) }
    }

    /// The connection to `group`'s coordinator: the bootstrap connection
    /// when the coordinator is that broker (or does not say where it is).
    pub async fn for_group(&self, group: &str, timeout: Duration) -> Result<Connection> {
        let b = &self.bootstrap;
        let request = v1::FindCoordinatorRequest { group_id: group.to_string() };
        let found =
            b.call("a find-coordinator request", timeout, b.group().find_coordinator(request)).await?;
        let address = normalize(&found.address);
        if address.is_empty() || address == normalize(&b.addr) {
            return Ok(b.clone());
        }
        if let Some(c) = self.open.lock().get(address) {
            return Ok(c.clone());
        }
        let c = Connection::open(address).await?;
        self.open.lock().insert(address.to_string(), c.clone());
        Ok(c)
    }

    /// Drops a cached connection that failed, so the next call asks again.
    pub fn forget(&self, conn: &Connection) {
        self.open.lock().remove(normalize(&conn.addr));
    }
}

/// "host:port" without scheme or surrounding space, for comparing addresses.
fn normalize(address: &str) -> &str {
    let a = address.trim();
    a.strip_prefix("http://").or_else(|| a.strip_prefix("https://")).unwrap_or(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_compare_without_scheme() {
        assert_eq!(normalize(" http://127.0.0.1:7070 "), "127.0.0.1:7070");
        assert_eq!(normalize("127.0.0.1:7070"), "127.0.0.1:7070");
        assert_eq!(normalize(""), "");
    }
}
