//! Producer ids for idempotent producers: unique for the life of the data
//! directory. Ids are reserved in blocks, each block's end written durably
//! before any id from it is handed out, so a restart never reuses one.

use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::store::Store;

const KEY: &str = "producer_id_block_end";
const BLOCK: i64 = 1000;

pub struct ProducerIds {
    store: Arc<Store>,
    /// (next id to hand out, end of the reserved block)
    next: Mutex<(i64, i64)>,
}

impl ProducerIds {
    pub fn load(store: Arc<Store>) -> Result<ProducerIds> {
        let end = match store.meta_scan(KEY)?.into_iter().find(|(k, _)| k == KEY) {
            Some((_, v)) => i64::from_be_bytes(
                v.as_slice().try_into().map_err(|_| Error::Storage("corrupt producer id block".into()))?,
            ),
            None => 0,
        };
        // Start past everything a previous run may have handed out.
        Ok(ProducerIds { store, next: Mutex::new((end, end)) })
    }

    pub fn allocate(&self) -> Result<i64> {
        let mut next = self.next.lock();
        if next.0 >= next.1 {
            let end = next.1 + BLOCK;
            self.store.meta_put(KEY, &end.to_be_bytes())?;
            next.1 = end;
        }
        let id = next.0;
        next.0 += 1;
        Ok(id)
    }
}
