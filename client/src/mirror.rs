//! Offset translation for mirror links: where a consumer group that read
//! topics at a link's source goes on in the destination, so the group can
//! move from a local cluster to the aggregate and resume where it was
//! (MirrorMaker 2's checkpoints).
//!
//! Exact, not sampled: every copy names its source offset in its provenance
//! header ([`tributary_proto::provenance`]), and per source partition those
//! offsets rise along the destination partition. So the destination offset
//! for a committed source offset `c` is that of the first copy from the
//! same source partition with source offset `>= c`, found by a binary search
//! over the destination partition (each probe reads forward to the next
//! copy from that source, which in an identity topic fed by several sources
//! may lie past other sources' records). When nothing at or after `c` has
//! been copied yet, the group goes on at the destination's end, where the
//! rest will land.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use tributary_proto::batch::{self, Batches};
use tributary_proto::provenance::{last_hop, topic_tag};

use crate::admin::Admin;
use crate::consumer::{Consumer, ConsumerConfig};
use crate::error::{Error, Result};
use crate::metadata::OffsetSpec;

/// One partition of a group's position, at the source and translated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Translation {
    pub source_topic: String,
    pub partition: u32,
    /// The group's committed offset at the source (the next to read).
    pub source_offset: i64,
    pub destination_topic: String,
    /// Where the group goes on in the destination.
    pub destination_offset: i64,
    /// Whether the record at `source_offset` (or a later one) has been
    /// copied; when not, `destination_offset` is the destination's end.
    pub copied: bool,
}

/// Where group `group`'s committed offsets at the source of mirror link
/// `link` lead in its destination cluster (at `destination_bootstrap`).
/// Topics the link does not copy are left out.
pub async fn translate_offsets(
    destination_bootstrap: &str,
    link: &str,
    group: &str,
) -> Result<Vec<Translation>> {
    let destination = Admin::connect(destination_bootstrap).await?;
    let described = destination.describe_mirror_link(link).await?;
    let spec = described.link.ok_or_else(|| Error::InvalidArgument(format!("no link '{link}'")))?;
    if described.source_cluster_id.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "mirror link '{link}' has not reached its source {} yet: {}",
            spec.source_bootstrap, described.error
        )));
    }
    let destinations: BTreeMap<String, String> =
        described.topics.into_iter().map(|t| (t.source_topic, t.destination_topic)).collect();
    let source = Admin::connect(&spec.source_bootstrap).await?;
    let mut tags = BTreeMap::new();
    let mut out = Vec::new();
    let committed = source.fetch_offsets(group).await.map_err(|e| match e {
        Error::Status { code: tonic::Code::NotFound, .. } => Error::InvalidArgument(format!(
            "group '{group}' has no committed offsets at the source {} ({e})",
            spec.source_bootstrap
        )),
        e => e,
    })?;
    for entry in committed {
        let Some(destination_topic) = destinations.get(&entry.topic) else { continue };
        if entry.offset < 0 {
            continue;
        }
        if !tags.contains_key(&entry.topic) {
            let id = source.describe_topic(&entry.topic).await?.topic_id;
            tags.insert(entry.topic.clone(), topic_tag(&id));
        }
        let start =
            destination.list_offsets(destination_topic, entry.partition, OffsetSpec::Earliest).await?;
        let end = destination.list_offsets(destination_topic, entry.partition, OffsetSpec::Latest).await?;
        let config = ConsumerConfig {
            bootstrap: destination_bootstrap.to_string(),
            max_wait: Duration::from_millis(100),
            ..Default::default()
        };
        let mut consumer = Consumer::connect(config).await?;
        consumer.assign(destination_topic, entry.partition, OffsetSpec::Offset(start)).await?;
        let mut copies = Copies {
            consumer,
            topic: destination_topic.clone(),
            partition: entry.partition,
            end,
            source_cluster: described.source_cluster_id.clone(),
            source_tag: tags[&entry.topic].clone(),
        };
        let found = first_copy_at_or_after(start, end, entry.offset, &mut copies).await?;
        out.push(Translation {
            source_topic: entry.topic.clone(),
            partition: entry.partition,
            source_offset: entry.offset,
            destination_topic: destination_topic.clone(),
            destination_offset: found.unwrap_or(end),
            copied: found.is_some(),
        });
    }
    Ok(out)
}

/// Finds copies in a destination partition.
trait NextCopy {
    /// The first copy at destination offset `>= from`, as (destination
    /// offset, source offset).
    fn next_from(&mut self, from: i64) -> impl Future<Output = Result<Option<(i64, i64)>>>;
}

/// The destination offset of the first copy with source offset `>= c` in
/// `start..end`.
///
/// Invariant: copies before `lo` all have source offsets below `c`, and
/// `next_from(hi)` is none or qualifies; so when `lo == hi`,
/// `next_from(lo)` is the answer.
async fn first_copy_at_or_after(
    start: i64,
    end: i64,
    c: i64,
    copies: &mut impl NextCopy,
) -> Result<Option<i64>> {
    let (mut lo, mut hi) = (start, end.max(start));
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match copies.next_from(mid).await? {
            Some((at, source)) if source < c => lo = at + 1,
            _ => hi = mid,
        }
    }
    Ok(copies.next_from(lo).await?.filter(|&(_, source)| source >= c).map(|(at, _)| at))
}

/// The copies of one source partition in one destination partition, read
/// with a consumer assigned to it.
struct Copies {
    consumer: Consumer,
    topic: String,
    partition: u32,
    /// The destination's end when the translation began.
    end: i64,
    source_cluster: String,
    /// Only copies of the source topic as it is now (a re-created topic's
    /// offsets started over).
    source_tag: String,
}

impl NextCopy for Copies {
    async fn next_from(&mut self, from: i64) -> Result<Option<(i64, i64)>> {
        let end = self.end;
        if from >= end {
            return Ok(None);
        }
        self.consumer.seek(&self.topic, self.partition, from);
        loop {
            for f in self.consumer.poll_batches(Duration::from_millis(500)).await? {
                if let Some(found) = self.first_in(&f.records, from.max(f.skip_below), end)? {
                    return Ok(Some(found));
                }
            }
            if self.consumer.position(&self.topic, self.partition).is_none_or(|p| p >= end) {
                return Ok(None);
            }
        }
    }
}

impl Copies {
    fn first_in(&self, records: &bytes::Bytes, from: i64, end: i64) -> Result<Option<(i64, i64)>> {
        let corrupt = |e: batch::BatchError| Error::CorruptRecord {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: from,
            reason: e.to_string(),
        };
        for b in Batches::new(records) {
            let (_, slice) = b.map_err(corrupt)?;
            let bytes = records.slice_ref(slice);
            for r in batch::records(&bytes).map_err(corrupt)? {
                let r = r.map_err(corrupt)?;
                if r.offset < from || r.offset >= end {
                    continue;
                }
                let ours = last_hop(&r).is_some_and(|h| {
                    h.cluster_id == self.source_cluster
                        && h.partition == self.partition
                        && (h.topic_tag.is_empty()
                            || self.source_tag.is_empty()
                            || h.topic_tag == self.source_tag)
                });
                if let Some(h) = last_hop(&r).filter(|_| ours) {
                    return Ok(Some((r.offset, h.offset)));
                }
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A destination partition: at each offset, the source offset of a copy
    /// from our source partition, or None (another source's record).
    struct Log<'a>(&'a [Option<i64>]);

    impl NextCopy for Log<'_> {
        async fn next_from(&mut self, d: i64) -> Result<Option<(i64, i64)>> {
            Ok(self
                .0
                .iter()
                .enumerate()
                .skip(d.max(0) as usize)
                .find_map(|(at, s)| s.map(|s| (at as i64, s))))
        }
    }

    async fn translate(log: &[Option<i64>], c: i64) -> Option<i64> {
        first_copy_at_or_after(0, log.len() as i64, c, &mut Log(log)).await.unwrap()
    }

    #[tokio::test]
    async fn the_first_copy_at_or_after_the_committed_offset_is_found_however_the_sources_interleave() {
        // Our copies (source offsets 10, 11, 14, 15, 16: 12 and 13 were
        // never copied, e.g. deleted at the source) between other sources'.
        let log =
            [None, Some(10), None, None, Some(11), Some(14), None, Some(15), None, None, Some(16), None];
        assert_eq!(translate(&log, 0).await, Some(1), "behind the first copy: from the first copy");
        assert_eq!(translate(&log, 10).await, Some(1));
        assert_eq!(translate(&log, 11).await, Some(4));
        assert_eq!(translate(&log, 12).await, Some(5), "a source offset never copied: the next copy");
        assert_eq!(translate(&log, 16).await, Some(10));
        assert_eq!(translate(&log, 17).await, None, "not copied yet: the end");
        assert_eq!(translate(&[], 3).await, None);
        assert_eq!(translate(&[None, None], 0).await, None);
        // Every position of a long single-source log.
        let log: Vec<Option<i64>> = (0..1000).map(|i| Some(i + 500)).collect();
        for c in [0, 500, 501, 999, 1499] {
            assert_eq!(translate(&log, c).await, Some((c - 500).max(0)), "{c}");
        }
        assert_eq!(translate(&log, 1500).await, None);
    }
}
