//! The idempotent producer's bookkeeping: a producer id from the broker and,
//! per partition, the sequence number of the next record.
//!
//! Why: a Produce whose answer is lost (a connection cut after the broker
//! appended) must be retried, and without sequences the retry is a second
//! copy. With them, every batch carries (producer id, epoch, base sequence)
//! inside its CRC; the broker remembers the last few batches of each producer
//! per partition and answers a retry with the offset the batch got the first
//! time. So a retry must resend the very same bytes, and sequences must have
//! no gaps: the broker refuses a batch that does not follow the last one.
//!
//! The rules this module keeps:
//! * Sequences are given out by the partition's sender as it takes batches
//!   for a request, in order (one sender per partition, so no two requests
//!   can interleave).
//! * A batch the broker refused as a whole (bad input: nothing stored) gives
//!   its sequence numbers back; the batches after it are re-stamped
//!   ([`restamp`]) before they are sent, as they never reached the broker.
//! * A batch whose outcome is unknown (retries exhausted) or that the broker
//!   called out of sequence fails, and the partition moves to a new epoch of
//!   the same producer id, starting again at sequence 0: nothing sent later
//!   can be mistaken for a retry of it, and a late copy of it is fenced.
//!   When the epoch runs out, the partition asks for a new producer id.

use bytes::Bytes;
use tributary_proto::batch::{Batches, ProducerStamp};
use tributary_proto::v1;

use crate::error::{Error, Result};

/// Where the next batch of a partition stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SequenceState {
    /// Idempotence is off: batches carry producer id -1.
    Off,
    Ready(Sequence),
    /// Every epoch of the producer id was used: the next request first asks
    /// the broker for a new id.
    NeedsProducerId,
}

impl SequenceState {
    pub fn start(identity: Option<(i64, i16)>) -> Self {
        match identity {
            Some((producer_id, epoch)) => SequenceState::Ready(Sequence::new(producer_id, epoch)),
            None => SequenceState::Off,
        }
    }

    /// After a batch whose fate is unknown: a new epoch, from sequence 0.
    pub fn fence(&mut self) {
        if let SequenceState::Ready(s) = self {
            *self = match s.epoch.checked_add(1) {
                Some(epoch) => SequenceState::Ready(Sequence::new(s.producer_id, epoch)),
                None => SequenceState::NeedsProducerId,
            };
        }
    }
}

/// One partition's producer identity and next sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sequence {
    pub producer_id: i64,
    pub epoch: i16,
    pub next: i32,
}

impl Sequence {
    pub fn new(producer_id: i64, epoch: i16) -> Self {
        Sequence { producer_id, epoch, next: 0 }
    }

    /// The stamp of a batch of `records` records, advancing past it.
    ///
    /// Sequences are `i32`; rather than wrap (which the broker would read as
    /// going backwards) the partition moves to the next epoch at 0. The
    /// caller has checked that one is left ([`Sequence::room_for`]).
    pub fn take(&mut self, records: u32) -> ProducerStamp {
        if i64::from(self.next) + i64::from(records) > i64::from(i32::MAX) {
            self.epoch = self.epoch.saturating_add(1);
            self.next = 0;
        }
        let stamp = ProducerStamp {
            producer_id: self.producer_id,
            producer_epoch: self.epoch,
            base_sequence: self.next,
        };
        self.next = self.next.saturating_add(i32::try_from(records).unwrap_or(i32::MAX));
        stamp
    }

    /// Whether `records` more can be stamped without running out of epochs.
    pub fn room_for(&self, records: u64) -> bool {
        i64::from(self.next) + records as i64 <= i64::from(i32::MAX) || self.epoch < i16::MAX
    }
}

/// Asks any broker for a producer id and epoch (ids come from the
/// cluster, so any broker can give one).
pub(crate) async fn init_producer_id(
    cluster: &crate::cluster::Cluster,
    timeout: std::time::Duration,
) -> Result<(i64, i16)> {
    let response = cluster
        .call_any(|conn| async move {
            let request = v1::InitProducerIdRequest {};
            conn.call("an init-producer-id request", timeout, conn.log().init_producer_id(request))
                .await
                .map_err(|e| match e {
                    Error::Status { code: tonic::Code::Unimplemented, .. } => {
                        Error::InvalidArgument(format!(
                            "the broker at {} does not support idempotent producers; \
                         set ProducerConfig::enable_idempotence to false to produce without them",
                            conn.addr
                        ))
                    }
                    other => other,
                })
        })
        .await?;
    let epoch = i16::try_from(response.producer_epoch).map_err(|_| {
        Error::status(
            tonic::Code::Internal,
            format!("the broker gave producer epoch {}, outside 0..=32767", response.producer_epoch),
        )
    })?;
    if response.producer_id < 0 || epoch < 0 {
        return Err(Error::status(
            tonic::Code::Internal,
            format!("the broker gave an invalid producer id {} (epoch {epoch})", response.producer_id),
        ));
    }
    Ok((response.producer_id, epoch))
}

// Offsets of the producer fields and the CRC in a batch header; the layout
// is documented in `tributary_proto::batch`.
const CRC_AT: usize = 17;
const CRC_FROM: usize = 21;
const PRODUCER_ID_AT: usize = 43;
const PRODUCER_EPOCH_AT: usize = 51;
const BASE_SEQUENCE_AT: usize = 53;

/// Re-stamps concatenated batches with consecutive sequences from `seq`
/// (advancing it), recomputing each CRC. Only for batches that never
/// reached the broker: a retry of one that may have must keep its bytes.
/// Returns the input itself when every stamp is already right.
pub(crate) fn restamp(batches: &Bytes, seq: &mut Sequence) -> Result<Bytes> {
    let mut stamps = Vec::new();
    let mut same = true;
    for b in Batches::new(batches) {
        let (header, _) = b?;
        let count = u32::try_from(header.record_count).unwrap_or(0);
        let stamp = seq.take(count);
        same &= header.producer_id == stamp.producer_id
            && header.producer_epoch == stamp.producer_epoch
            && header.base_sequence == stamp.base_sequence;
        stamps.push(stamp);
    }
    if same {
        return Ok(batches.clone());
    }
    let mut out = batches.to_vec();
    let mut at = 0;
    let mut stamps = stamps.into_iter();
    while at < out.len() {
        let header = tributary_proto::batch::BatchHeader::parse(&out[at..])?;
        let end = at + header.total_len();
        let Some(stamp) = stamps.next() else { break };
        let b = &mut out[at..end];
        b[PRODUCER_ID_AT..PRODUCER_ID_AT + 8].copy_from_slice(&stamp.producer_id.to_be_bytes());
        b[PRODUCER_EPOCH_AT..PRODUCER_EPOCH_AT + 2].copy_from_slice(&stamp.producer_epoch.to_be_bytes());
        b[BASE_SEQUENCE_AT..BASE_SEQUENCE_AT + 4].copy_from_slice(&stamp.base_sequence.to_be_bytes());
        let crc = crc32c::crc32c(&b[CRC_FROM..]);
        b[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        at = end;
    }
    Ok(Bytes::from(out))
}

/// The error a batch fails with when the broker refused its sequence or
/// epoch. Such a batch is not retried: the same bytes would be refused
/// again.
pub(crate) fn sequence_error(code: v1::ErrorCode, topic: &str, partition: u32, message: &str) -> Error {
    let why = if message.is_empty() { String::new() } else { format!(" ({message})") };
    let text = match code {
        v1::ErrorCode::InvalidProducerEpoch => format!(
            "the broker fenced this batch for {topic}-{partition}{why}: a newer epoch of the same \
             producer id already wrote there. The batch was not retried"
        ),
        _ => format!(
            "the broker refused a batch for {topic}-{partition} as out of sequence{why}: a batch \
             before it is missing or was reordered. The batch was not retried; the producer goes on \
             with a new epoch, so later records are not affected"
        ),
    };
    Error::status(tonic::Code::FailedPrecondition, text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_proto::batch::{self, BatchBuilder, Compression};

    fn built(values: &[&str], stamp: Option<ProducerStamp>) -> Bytes {
        let mut b = BatchBuilder::new(Compression::None, 1_000);
        if let Some(s) = stamp {
            b.set_producer(s);
        }
        for v in values {
            b.append(1_000, None, Some(v.as_bytes()), &[]);
        }
        b.build()
    }

    #[test]
    fn sequences_advance_by_record_count() {
        let mut s = Sequence::new(7, 0);
        assert_eq!(s.take(3), ProducerStamp { producer_id: 7, producer_epoch: 0, base_sequence: 0 });
        assert_eq!(s.take(1).base_sequence, 3);
        assert_eq!(s.next, 4);
    }

    #[test]
    fn running_out_of_sequences_moves_to_the_next_epoch() {
        let mut s = Sequence { producer_id: 1, epoch: 2, next: i32::MAX - 1 };
        let stamp = s.take(5);
        assert_eq!((stamp.producer_epoch, stamp.base_sequence), (3, 0));
        assert_eq!(s.next, 5);
        assert!(!Sequence { producer_id: 1, epoch: i16::MAX, next: i32::MAX }.room_for(1));
        assert!(Sequence { producer_id: 1, epoch: i16::MAX, next: 0 }.room_for(10));
    }

    #[test]
    fn fencing_starts_a_new_epoch_or_asks_for_a_new_id() {
        let mut st = SequenceState::Ready(Sequence { producer_id: 9, epoch: 4, next: 120 });
        st.fence();
        assert_eq!(st, SequenceState::Ready(Sequence { producer_id: 9, epoch: 5, next: 0 }));
        let mut last = SequenceState::Ready(Sequence { producer_id: 9, epoch: i16::MAX, next: 3 });
        last.fence();
        assert_eq!(last, SequenceState::NeedsProducerId);
        let mut off = SequenceState::Off;
        off.fence();
        assert_eq!(off, SequenceState::Off);
        assert_eq!(SequenceState::start(None), SequenceState::Off);
    }

    #[test]
    fn restamped_batches_equal_batches_built_with_that_stamp() {
        let first =
            built(&["a", "b"], Some(ProducerStamp { producer_id: 5, producer_epoch: 0, base_sequence: 10 }));
        let second =
            built(&["c"], Some(ProducerStamp { producer_id: 5, producer_epoch: 0, base_sequence: 12 }));
        let both = Bytes::from([first.to_vec(), second.to_vec()].concat());
        let mut seq = Sequence { producer_id: 5, epoch: 1, next: 0 };
        let out = restamp(&both, &mut seq).unwrap();
        let want_first =
            built(&["a", "b"], Some(ProducerStamp { producer_id: 5, producer_epoch: 1, base_sequence: 0 }));
        let want_second =
            built(&["c"], Some(ProducerStamp { producer_id: 5, producer_epoch: 1, base_sequence: 2 }));
        assert_eq!(out.to_vec(), [want_first.to_vec(), want_second.to_vec()].concat());
        assert_eq!(seq.next, 3);
        for b in Batches::new(&out) {
            let (_, slice) = b.unwrap();
            batch::verify(slice).unwrap();
        }
    }

    #[test]
    fn restamping_what_is_already_right_copies_nothing() {
        let b = built(&["x"], Some(ProducerStamp { producer_id: 1, producer_epoch: 0, base_sequence: 0 }));
        let mut seq = Sequence::new(1, 0);
        let out = restamp(&b, &mut seq).unwrap();
        assert_eq!(out.as_ptr(), b.as_ptr());
        assert_eq!(seq.next, 1);
    }
}
