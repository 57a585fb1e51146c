//! Re-encoding a batch the broker refused as too large into batches that
//! fit the topic's `max.message.bytes`.
//!
//! A topic's limit can be below the producer's `batch_size`, and one large
//! record can push an otherwise small batch over it. Rather than failing
//! every record that happened to share the batch, the producer resends the
//! same records in smaller batches, and only a record too large on its own
//! fails. The smaller batches are built without a producer stamp: the
//! sender stamps them with the partition's sequence when it sends them.

use bytes::Bytes;
use tributary_proto::batch::{self, BatchBuilder, BatchError, Compression, HEADER_LEN};

/// The records of one batch, re-encoded.
#[derive(Debug)]
pub(crate) struct Split {
    /// Batches in record order, each within the limit, with their record
    /// counts.
    pub batches: Vec<(Bytes, u32)>,
    /// Records too large to send even alone: (index, ascending; bytes as a
    /// batch of their own).
    pub holes: Vec<(u32, usize)>,
}

/// Re-encodes `built` (one complete batch) into batches of at most `limit`
/// bytes each.
pub(crate) fn split(built: &Bytes, compression: Compression, limit: usize) -> Result<Split, BatchError> {
    // Compression usually shrinks a batch, but may grow incompressible data
    // a little: leave room for that.
    let target = match compression {
        Compression::None => limit,
        _ => limit.saturating_sub(limit / 32 + 64),
    };
    let mut batches = Vec::new();
    let mut holes = Vec::new();
    let mut current: Option<BatchBuilder> = None;
    for (index, record) in batch::records(built)?.enumerate() {
        let r = record?;
        let headers: Vec<(&str, Option<&[u8]>)> =
            r.headers.iter().map(|h| (h.key.as_str(), h.value.as_deref())).collect();
        let (key, value) = (r.key.as_deref(), r.value.as_deref());
        let alone = BatchBuilder::with_capacity(compression, r.timestamp, 0).record_size(
            r.timestamp,
            key,
            value,
            &headers,
        );
        if HEADER_LEN + alone > target {
            holes.push((index as u32, HEADER_LEN + alone));
            continue;
        }
        let fits = current
            .as_ref()
            .is_some_and(|b| b.size() + b.record_size(r.timestamp, key, value, &headers) <= target);
        if !fits {
            if let Some(full) = current.take() {
                let count = full.record_count() as u32;
                batches.push((full.build(), count));
            }
            current = Some(BatchBuilder::with_capacity(compression, r.timestamp, target.min(1 << 20)));
        }
        if let Some(b) = current.as_mut() {
            b.append(r.timestamp, key, value, &headers);
        }
    }
    if let Some(last) = current {
        let count = last.record_count() as u32;
        batches.push((last.build(), count));
    }
    Ok(Split { batches, holes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_proto::batch::Batches;

    fn batch(values: &[usize], compression: Compression) -> Bytes {
        let mut b = BatchBuilder::new(compression, 1000);
        for (i, &len) in values.iter().enumerate() {
            let value = vec![b'a' + (i % 26) as u8; len];
            b.append(1000 + i as i64, Some(format!("k{i}").as_bytes()), Some(&value), &[("h", Some(b"v"))]);
        }
        b.build()
    }

    fn decode(split: &Split) -> Vec<(usize, i64, usize)> {
        let mut out = Vec::new();
        let payload = Bytes::from(split.batches.iter().flat_map(|(b, _)| b.to_vec()).collect::<Vec<u8>>());
        for (i, b) in Batches::new(&payload).enumerate() {
            let (_, slice) = b.unwrap();
            let header = batch::verify(slice).unwrap();
            assert_eq!(header.record_count as u32, split.batches[i].1);
            for r in batch::records(&payload.slice_ref(slice)).unwrap() {
                let r = r.unwrap();
                let key = String::from_utf8(r.key.unwrap().to_vec()).unwrap();
                let index: usize = key[1..].parse().unwrap();
                out.push((index, r.timestamp, r.value.unwrap().len()));
            }
        }
        out
    }

    #[test]
    fn a_record_too_large_alone_is_the_only_one_left_out() {
        let built = batch(&[10, 3000, 10, 10], Compression::None);
        let split = split(&built, Compression::None, 2000).unwrap();
        assert_eq!(split.holes.len(), 1);
        assert_eq!(split.holes[0].0, 1);
        assert!(split.holes[0].1 > 3000);
        let got = decode(&split);
        assert_eq!(got, vec![(0, 1000, 10), (2, 1002, 10), (3, 1003, 10)]);
    }

    #[test]
    fn many_small_records_are_spread_over_batches_within_the_limit() {
        for compression in [Compression::None, Compression::Lz4, Compression::Zstd] {
            let built = batch(&[100; 200], compression);
            let split = split(&built, compression, 1500).unwrap();
            assert!(split.holes.is_empty());
            let sizes: Vec<usize> = split.batches.iter().map(|(b, _)| b.len()).collect();
            assert!(sizes.len() > 10, "{sizes:?}");
            assert!(sizes.iter().all(|&s| s <= 1500), "{sizes:?}");
            let got = decode(&split);
            assert_eq!(got.len(), 200);
            assert!(got.iter().enumerate().all(|(i, r)| r.0 == i && r.1 == 1000 + i as i64));
        }
    }
}
