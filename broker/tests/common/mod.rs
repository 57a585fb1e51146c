//! Helpers shared by the storage-engine tests.
#![allow(dead_code)]

use std::collections::BTreeMap;

use bytes::Bytes;
use tributary_broker::config::TopicConfig;
use tributary_broker::log::PartitionLog;
use tributary_proto::batch::{self, BatchBuilder, Batches, Compression, ProducerStamp};

pub const NOW: i64 = 1_700_000_000_000;

pub fn config(pairs: &[(&str, &str)]) -> TopicConfig {
    let m: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    TopicConfig::resolve(&TopicConfig::default(), &m).unwrap()
}

pub fn batch(records: &[(Option<&str>, Option<&str>, i64)]) -> Vec<u8> {
    let mut b = BatchBuilder::new(Compression::Lz4, records[0].2);
    for (k, v, ts) in records {
        b.append(*ts, k.map(str::as_bytes), v.map(str::as_bytes), &[]);
    }
    b.build().to_vec()
}

pub fn value_batch(values: &[&str]) -> Vec<u8> {
    let records: Vec<_> = values.iter().map(|v| (None, Some(*v), NOW)).collect();
    batch(&records)
}

/// Every record from `from` up to the high watermark: (offset, key, value).
/// Reads until it reaches the high watermark, and fails if a read comes back
/// empty before that (an empty read below the watermark strands consumers).
pub fn read_all(log: &PartitionLog, from: i64) -> Vec<(i64, Option<String>, Option<String>)> {
    let mut out = Vec::new();
    let mut at = from;
    let hw = log.high_watermark();
    while at < hw {
        let data = log.read(at, 1 << 20).unwrap();
        assert!(!data.is_empty(), "read at {at} returned nothing below the high watermark {hw}");
        let mut pos = 0;
        for b in Batches::new(&data) {
            let (h, slice) = b.unwrap();
            let bytes = data.slice(pos..pos + slice.len());
            pos += slice.len();
            for r in batch::records(&bytes).unwrap() {
                let r = r.unwrap();
                if r.offset >= at {
                    let s = |b: Option<Bytes>| b.map(|b| String::from_utf8_lossy(&b).into_owned());
                    out.push((r.offset, s(r.key), s(r.value)));
                }
            }
            at = h.next_offset();
        }
    }
    out
}

/// One batch from an idempotent producer: `values` with sequence numbers
/// from `seq` on.
pub fn idempotent_batch(producer_id: i64, seq: i32, values: &[&str]) -> Vec<u8> {
    let mut b = BatchBuilder::new(Compression::None, NOW);
    b.set_producer(ProducerStamp { producer_id, producer_epoch: 0, base_sequence: seq });
    for v in values {
        b.append(NOW, None, Some(v.as_bytes()), &[]);
    }
    b.build().to_vec()
}
