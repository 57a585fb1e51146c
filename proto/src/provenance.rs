//! The provenance header a mirrored record gains (see the broker's
//! `mirror::provenance` for how mirror tasks use it): shared, since the
//! client reads it too (offset translation, `mirror translate-offsets`).
//!
//! Header `tributary.provenance`, value (UTF-8)
//! `CLUSTER_ID:TOPIC_TAG:PARTITION:OFFSET`: the source cluster's id, a tag
//! of the source topic's id ([`topic_tag`]), the source partition and the
//! record's offset there. A record mirrored over several hops carries one
//! header per hop, oldest first. The older three-part form
//! `CLUSTER_ID:PARTITION:OFFSET` (no topic tag) is still read.

use crate::batch::Record;

pub const HEADER: &str = "tributary.provenance";

/// Where a mirrored record came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provenance {
    pub cluster_id: String,
    /// [`topic_tag`] of the source topic's id; empty in the older form.
    pub topic_tag: String,
    pub partition: u32,
    pub offset: i64,
}

impl Provenance {
    /// The header value; without a tag, the older three-part form.
    pub fn encode(&self) -> Vec<u8> {
        if self.topic_tag.is_empty() {
            return format!("{}:{}:{}", self.cluster_id, self.partition, self.offset).into_bytes();
        }
        format!("{}:{}:{}:{}", self.cluster_id, self.topic_tag, self.partition, self.offset).into_bytes()
    }

    pub fn decode(value: &[u8]) -> Option<Provenance> {
        let text = std::str::from_utf8(value).ok()?;
        let parts: Vec<&str> = text.split(':').collect();
        let (cluster_id, topic_tag, partition, offset) = match parts[..] {
            [c, t, p, o] if !t.is_empty() => (c, t, p, o),
            [c, p, o] => (c, "", p, o),
            _ => return None,
        };
        if cluster_id.is_empty() {
            return None;
        }
        Some(Provenance {
            cluster_id: cluster_id.to_string(),
            topic_tag: topic_tag.to_string(),
            partition: partition.parse().ok()?,
            offset: offset.parse().ok()?,
        })
    }
}

/// The short tag of a source topic id that provenance carries: 8 hex
/// digits of its CRC-32C (a re-created topic gets a new id, so a new tag;
/// empty when the source names no id).
pub fn topic_tag(topic_id: &str) -> String {
    if topic_id.is_empty() {
        return String::new();
    }
    format!("{:08x}", crc32c::crc32c(topic_id.as_bytes()))
}

/// Every provenance header of a record, oldest hop first.
pub fn hops(r: &Record) -> impl Iterator<Item = Provenance> + '_ {
    r.headers
        .iter()
        .filter(|h| h.key == HEADER)
        .filter_map(|h| h.value.as_deref().and_then(Provenance::decode))
}

/// The hop that brought a record into this cluster.
pub fn last_hop(r: &Record) -> Option<Provenance> {
    hops(r).last()
}

/// Whether the record was ever in cluster `cluster_id` as a mirrored copy
/// (copying it there again would loop).
pub fn came_from(r: &Record, cluster_id: &str) -> bool {
    hops(r).any(|p| p.cluster_id == cluster_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::RecordHeader;
    use bytes::Bytes;

    #[test]
    fn provenance_round_trips_and_rejects_garbage() {
        let p =
            Provenance { cluster_id: "abc".into(), topic_tag: "9f3a01c2".into(), partition: 3, offset: 1047 };
        assert_eq!(p.encode(), b"abc:9f3a01c2:3:1047");
        assert_eq!(Provenance::decode(&p.encode()), Some(p));
        // The older form, without a topic tag, still reads.
        let old = Provenance::decode(b"abc:3:1047").unwrap();
        assert_eq!(
            (old.cluster_id.as_str(), old.topic_tag.as_str(), old.partition, old.offset),
            ("abc", "", 3, 1047)
        );
        for bad in [
            &b""[..],
            b"x",
            b"x:1",
            b":1:2",
            b"x:-1:2",
            b"x:1:y",
            b"x::1:2",
            b":t:1:2",
            b"x:t:1:2:3",
            &[0xff, b':', b'1', b':', b'2'],
        ] {
            assert_eq!(Provenance::decode(bad), None, "{bad:?}");
        }
        assert_eq!(topic_tag(""), "");
        assert_eq!(topic_tag("0af3").len(), 8);
        assert_ne!(topic_tag("0af3"), topic_tag("0af4"), "a re-created topic gets another tag");
    }

    #[test]
    fn the_last_hop_names_the_cluster_copied_from_and_every_hop_counts_for_loops() {
        let hop = |c: &str, o: i64| RecordHeader {
            key: HEADER.into(),
            value: Some(Bytes::from(
                Provenance { cluster_id: c.into(), topic_tag: String::new(), partition: 0, offset: o }
                    .encode(),
            )),
        };
        let r = Record {
            offset: 0,
            timestamp: 0,
            key: None,
            value: None,
            headers: vec![hop("a", 5), RecordHeader { key: "x".into(), value: None }, hop("b", 9)],
        };
        assert_eq!(last_hop(&r).map(|p| (p.cluster_id, p.offset)), Some(("b".to_string(), 9)));
        assert!(came_from(&r, "a") && came_from(&r, "b") && !came_from(&r, "c"));
    }
}
