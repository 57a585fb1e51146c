//! Producer ids for idempotent producers: unique across the cluster. The
//! controller reserves blocks of ids in the metadata quorum and hands them
//! out; other brokers forward InitProducerId to it. Ids a one-node broker
//! handed out before it had a quorum (the legacy local block) are never
//! reused: the first quorum block starts above them.

use parking_lot::Mutex;

use crate::cluster::state::{Command, Outcome};
use crate::cluster::ClusterNode;
use crate::error::{Error, Result};
use crate::store::Store;

const LEGACY_KEY: &str = "producer_id_block_end";

pub struct ProducerIds {
    /// Everything below this may have been handed out before the quorum.
    legacy_end: i64,
    /// (next id to hand out, end of the block reserved in the quorum)
    next: Mutex<(i64, i64)>,
}

impl ProducerIds {
    pub fn load(store: &Store) -> Result<ProducerIds> {
        let end = match store.meta_scan(LEGACY_KEY)?.into_iter().find(|(k, _)| k == LEGACY_KEY) {
            Some((_, v)) => i64::from_be_bytes(
                v.as_slice().try_into().map_err(|_| Error::Storage("corrupt producer id block".into()))?,
            ),
            None => 0,
        };
        Ok(ProducerIds { legacy_end: end, next: Mutex::new((0, 0)) })
    }

    /// One id, from this controller's block (reserving a new block in the
    /// quorum when it is used up).
    pub async fn allocate(&self, cluster: &ClusterNode) -> Result<i64> {
        {
            let mut next = self.next.lock();
            if next.0 < next.1 {
                let id = next.0;
                next.0 += 1;
                return Ok(id);
            }
        }
        let outcome = cluster.propose(Command::AllocateProducerIds { at_least: self.legacy_end }).await?;
        let Outcome::ProducerIds { start, count } = outcome else {
            return Err(Error::Storage(format!("unexpected answer to a producer id block: {outcome:?}")));
        };
        let mut next = self.next.lock();
        // Another call may have reserved a block meanwhile: take the newer one.
        if start >= next.1 {
            *next = (start, start + count);
        }
        let id = next.0;
        next.0 += 1;
        Ok(id)
    }
}
