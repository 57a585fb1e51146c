//! The producer's background work: the linger timer that closes batches
//! which waited long enough, and one sender task per busy partition that
//! turns closed batches into Produce requests.
//!
//! Ordering: a partition has at most one request in flight. The broker runs
//! concurrent requests in parallel (one task per HTTP/2 stream), so two
//! requests of the same partition in flight could be appended in either
//! order; instead, the batches that queue up while a request is out travel
//! together in the next one (up to `max_in_flight` of them), which the broker
//! appends in order. Retries resend the same request before anything newer,
//! so they cannot reorder either.
//!
//! With idempotence (the default) the batches of a request are stamped with
//! the partition's sequence numbers as they are taken, so a retry whose
//! first attempt was stored after all is recognised by the broker and not
//! written twice; `idempotence` holds the rules.
//!
//! Each request goes to the partition's leader (through `dispatch`, which
//! merges what goes to the same leader). When the leader moved (NOT_LEADER,
//! with or without a hint), the partition has none for now, too few
//! replicas are in sync, replication timed out or the broker cannot be
//! reached, the same bytes are sent again — to wherever the leader hint or
//! fresh metadata says — after a growing pause, until `retries` or the
//! batch's `delivery_timeout` runs out: across a leader failover the
//! application sees latency, not errors.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tributary_proto::v1;

use crate::accumulator::{Batch, PartitionState};
use crate::cluster;
use crate::error::{code_recovery, partition_error, Error, Recovery, Result};
use crate::idempotence::{self, Sequence, SequenceState};
use crate::producer::{Acks, Shared};
use crate::split::{self, Split};

/// Upper bound on one Produce request's record bytes (the broker accepts
/// 256 MiB messages; a smaller request keeps latency even).
const MAX_REQUEST_BYTES: usize = 64 << 20;
/// Longest pause between retries, however many there were: a leader
/// failover takes seconds, and the first try after it should not wait long.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Closes batches whose linger elapsed, and hands the partition to a sender.
///
/// It sleeps until the oldest open batch is due; a producer opening a batch
/// while the timer is not armed wakes it (`Shared::armed`), so an idle
/// producer costs nothing.
pub(crate) async fn linger_loop(shared: Arc<Shared>) {
    let linger = shared.limits.linger;
    loop {
        // Disarm before scanning: a batch opened after its partition was
        // scanned then sees `false` and wakes us again.
        shared.armed.store(false, Ordering::SeqCst);
        let parts = shared.partitions.read().clone();
        if shared.closed.load(Ordering::SeqCst) {
            for p in &parts {
                let (start, _) = p.close_for_flush();
                if start {
                    shared.spawn_sender(p);
                }
            }
            return;
        }
        let force_idle = shared.exhausted.swap(false, Ordering::SeqCst);
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        for p in &parts {
            let (start, due) = p.linger_check(now, linger, force_idle);
            if start {
                shared.spawn_sender(p);
            }
            if let Some(due) = due {
                next = Some(next.map_or(due, |n| n.min(due)));
            }
        }
        if next.is_some() {
            shared.armed.store(true, Ordering::SeqCst);
        }
        let wake = shared.linger_wake.notified();
        match next {
            Some(due) => {
                tokio::select! {
                    _ = wake => {}
                    _ = tokio::time::sleep_until(due.into()) => {}
                }
            }
            None => wake.await,
        }
    }
}

/// Sends one partition's closed batches, a request at a time, until none
/// are left.
pub(crate) async fn run_partition(shared: Arc<Shared>, part: Arc<PartitionState>) {
    let mut max_batches = shared.config.max_in_flight.max(1);
    if shared.idempotent() {
        // The broker recognises a retry among the last few batches of a
        // producer only.
        max_batches = max_batches.min(MAX_IDEMPOTENT_BATCHES);
    }
    let max_bytes = MAX_REQUEST_BYTES.max(shared.limits.batch_size);
    loop {
        let mut batches = part.take_for_request(shared.limits.linger, max_batches, max_bytes);
        if batches.is_empty() {
            return;
        }
        deliver(&shared, &part, &mut batches).await;
    }
}

/// Batches the broker remembers per idempotent producer and partition: the
/// most one request may carry, or a retry of it could not be recognised.
const MAX_IDEMPOTENT_BATCHES: usize = 5;

async fn deliver(shared: &Shared, part: &PartitionState, batches: &mut [Batch]) {
    let counts: Vec<u32> = batches.iter().map(Batch::records).collect();
    let total: u64 = counts.iter().map(|&c| u64::from(c)).sum();
    let oldest = batches.iter().map(Batch::created).min().unwrap_or_else(Instant::now);
    let deadline = oldest + shared.config.delivery_timeout;
    let mut seq = match sequence(shared, part, total).await {
        Ok(seq) => seq,
        Err(e) => {
            for batch in batches.iter_mut() {
                batch.complete(Err(e.clone()));
            }
            return;
        }
    };
    let payloads: Vec<Bytes> = batches
        .iter_mut()
        .map(|b| {
            let stamp = seq.as_mut().map(|s| s.take(b.records()));
            b.build(stamp)
        })
        .collect();
    let Err(e) = send_group(shared, part, batches, &payloads, seq, deadline).await else { return };
    if !refused(&e) {
        for batch in batches.iter_mut() {
            batch.complete(Err(e.clone()));
        }
        return;
    }
    if let ([batch], [payload]) = (&mut *batches, &payloads[..]) {
        settle_refused(shared, part, batch, payload, e, deadline).await;
        return;
    }
    // The broker refuses a request as a whole and then stores nothing, so
    // resending the batches one by one is safe, and only the one at fault
    // (say, too large for max.message.bytes) fails. Their sequence numbers
    // were not used: each is re-stamped from where the partition stands.
    for (batch, payload) in batches.iter_mut().zip(&payloads) {
        let count = batch.records();
        let sent = match restamped(shared, part, payload, u64::from(count)).await {
            Ok((payload, after)) => {
                send_group(shared, part, std::slice::from_mut(batch), &[payload], after, deadline).await
            }
            Err(e) => Err(e),
        };
        match sent {
            Ok(()) => {}
            Err(e) if refused(&e) => settle_refused(shared, part, batch, payload, e, deadline).await,
            Err(e) => batch.complete(Err(e)),
        }
    }
}

/// The partition's sequence for a request of `records` records (`None`
/// without idempotence), asking the broker for a new producer id first when
/// the partition used up its epochs.
async fn sequence(shared: &Shared, part: &PartitionState, records: u64) -> Result<Option<Sequence>> {
    let state = *part.sequence.lock();
    match state {
        SequenceState::Off => Ok(None),
        SequenceState::Ready(s) if s.room_for(records) => Ok(Some(s)),
        SequenceState::Ready(_) | SequenceState::NeedsProducerId => {
            let (producer_id, epoch) = shared.new_producer_id().await?;
            let fresh = Sequence::new(producer_id, epoch);
            *part.sequence.lock() = SequenceState::Ready(fresh);
            Ok(Some(fresh))
        }
    }
}

/// `payload` (whole batches of `records` records in all) stamped with the
/// partition's next sequences, and the sequence to keep once it is stored.
async fn restamped(
    shared: &Shared,
    part: &PartitionState,
    payload: &Bytes,
    records: u64,
) -> Result<(Bytes, Option<Sequence>)> {
    match sequence(shared, part, records).await? {
        None => Ok((payload.clone(), None)),
        Some(mut seq) => {
            let stamped = idempotence::restamp(payload, &mut seq)?;
            Ok((stamped, Some(seq)))
        }
    }
}

/// Bad input, by the broker's judgement: retrying as it is cannot help.
fn refused(e: &Error) -> bool {
    matches!(e, Error::Status { code: tonic::Code::InvalidArgument, .. })
}

/// One batch the broker refused. If it is larger than the topic's
/// max.message.bytes, its records are resent in batches that fit and only a
/// record too large on its own fails; otherwise the whole batch fails.
async fn settle_refused(
    shared: &Shared,
    part: &PartitionState,
    batch: &mut Batch,
    payload: &Bytes,
    error: Error,
    deadline: Instant,
) {
    if batch.records() > 1 {
        if let Some(limit) = shared.max_message_bytes(&part.topic.name).await {
            if payload.len() > limit {
                if let Ok(smaller) = split::split(payload, shared.limits.compression, limit) {
                    if smaller.holes.len() < batch.records() as usize {
                        send_split(shared, part, batch, smaller, limit, deadline).await;
                        return;
                    }
                }
            }
        }
    }
    batch.complete(Err(error));
}

/// Sends a split batch's smaller batches, a few per request (as many as an
/// idempotent producer's retry can be recognised among), and settles the
/// original batch: each record with its offset, or why it failed. A request
/// that fails fails its records and every record after them.
async fn send_split(
    shared: &Shared,
    part: &PartitionState,
    batch: &mut Batch,
    smaller: Split,
    limit: usize,
    deadline: Instant,
) {
    let mut holes: Vec<(u32, Error)> =
        smaller.holes.iter().map(|&(index, size)| (index, too_large(part, size, limit))).collect();
    let sent_indexes: Vec<u32> =
        (0..batch.records()).filter(|i| smaller.holes.binary_search_by_key(i, |h| h.0).is_err()).collect();
    let mut runs: Vec<(u32, i64)> = Vec::new();
    let mut done = 0u32;
    let mut failed: Option<Error> = None;
    for chunk in smaller.batches.chunks(MAX_IDEMPOTENT_BATCHES) {
        let counts: Vec<u32> = chunk.iter().map(|(_, c)| *c).collect();
        let records: u32 = counts.iter().sum();
        if failed.is_none() {
            let payload = concat(&chunk.iter().map(|(b, _)| b.clone()).collect::<Vec<_>>());
            let sent = match restamped(shared, part, &payload, u64::from(records)).await {
                Ok((payload, after)) => send_records(shared, part, payload, &counts, after, deadline).await,
                Err(e) => Err(e),
            };
            match sent {
                Ok(offsets) => {
                    for (count, offset) in counts.iter().zip(offsets) {
                        runs.push((done, offset));
                        done += count;
                    }
                    continue;
                }
                Err(e) => failed = Some(e),
            }
        }
        if let Some(e) = &failed {
            let range = done as usize..(done + records) as usize;
            holes.extend(sent_indexes.get(range).unwrap_or_default().iter().map(|&i| (i, e.clone())));
            done += records;
        }
    }
    holes.sort_by_key(|h| h.0);
    batch.complete_split(holes, runs);
}

fn too_large(part: &PartitionState, size: usize, limit: usize) -> Error {
    Error::status(
        tonic::Code::InvalidArgument,
        format!(
            "record of {size} bytes (as a batch of its own) is larger than max.message.bytes ({limit}) \
             of topic '{}'; raise the topic's max.message.bytes or send a smaller record",
            part.topic.name
        ),
    )
}

fn concat(payloads: &[Bytes]) -> Bytes {
    match payloads {
        [one] => one.clone(),
        many => {
            let mut buf = BytesMut::with_capacity(many.iter().map(Bytes::len).sum());
            for p in many {
                buf.extend_from_slice(p);
            }
            buf.freeze()
        }
    }
}

/// One Produce request for `batches` (all of one partition, in order, built
/// as `payloads`). On success every batch is completed and the partition's
/// sequence moves to `after`; on failure none is, and the error is returned.
async fn send_group(
    shared: &Shared,
    part: &PartitionState,
    batches: &mut [Batch],
    payloads: &[Bytes],
    after: Option<Sequence>,
    deadline: Instant,
) -> Result<()> {
    let records = concat(payloads);
    if shared.config.acks == Acks::None {
        // Nobody waits for the broker with acks=0: the records count as
        // delivered once handed to the connection. The answer still paces
        // this partition (one request in flight), and a failure is logged.
        for b in batches.iter_mut() {
            b.complete(Ok(-1));
        }
        let counts: Vec<u32> = batches.iter().map(Batch::records).collect();
        if let Err(e) = produce_once(shared, part, records, &counts).await {
            tracing::warn!(topic = %part.topic.name, partition = part.partition, "acks=0 produce failed: {e}");
        }
        return Ok(());
    }
    let counts: Vec<u32> = batches.iter().map(Batch::records).collect();
    let offsets = send_records(shared, part, records, &counts, after, deadline).await?;
    for (b, offset) in batches.iter_mut().zip(offsets) {
        b.complete(Ok(offset));
    }
    Ok(())
}

/// Sends concatenated batches of one partition (`counts` records each),
/// retrying the same bytes while the error is retriable, at most `retries`
/// times and not past `deadline`; returns each batch's base offset.
///
/// Afterwards the partition's sequence is `after` when they were stored;
/// when they were refused as bad input nothing was stored and it stays; on
/// any other failure the broker may or may not have them, so the partition
/// moves to a new epoch (see [`crate::idempotence`]).
async fn send_records(
    shared: &Shared,
    part: &PartitionState,
    records: Bytes,
    counts: &[u32],
    after: Option<Sequence>,
    deadline: Instant,
) -> Result<Vec<i64>> {
    let mut attempt = 0u32;
    loop {
        match produce_once(shared, part, records.clone(), counts).await {
            Ok(offsets) => {
                if let Some(after) = after {
                    *part.sequence.lock() = SequenceState::Ready(after);
                }
                return Ok(offsets);
            }
            Err(e) => {
                let wait = cluster::backoff(shared.config.retry_backoff, attempt + 1, MAX_BACKOFF);
                if e.is_retriable() && attempt < shared.config.retries && Instant::now() + wait < deadline {
                    attempt += 1;
                    tracing::debug!(
                        topic = %part.topic.name,
                        partition = part.partition,
                        attempt,
                        "produce failed, retrying in {wait:?}: {e}"
                    );
                    tokio::time::sleep(wait).await;
                    continue;
                }
                if e.is_retriable() && attempt > 0 {
                    tracing::warn!(
                        topic = %part.topic.name,
                        partition = part.partition,
                        "produce failed after {attempt} retries, giving up (retries or delivery_timeout used up): {e}"
                    );
                }
                if matches!(e, Error::Status { code: tonic::Code::NotFound, .. }) {
                    // Deleted topic or fewer partitions: look again next send.
                    part.topic.stale.store(true, Ordering::Relaxed);
                }
                if !refused(&e) {
                    part.sequence.lock().fence();
                }
                return Err(e);
            }
        }
    }
}

/// The broker leading the partition, as far as the cache knows, refreshing
/// metadata (rate limited) when it does not. A topic or partition the fresh
/// metadata does not have at all is an error that is not retried.
async fn leader_of(shared: &Shared, part: &PartitionState) -> Result<i32> {
    let (topic, partition) = (&*part.topic.name, part.partition);
    let c = &shared.cluster;
    if let Some(id) = c.leader(topic, partition).and_then(cluster::Leader::broker) {
        return Ok(id);
    }
    c.refresh_soon(c.version()).await?;
    match c.leader(topic, partition) {
        Some(leader) => leader.broker().ok_or_else(|| crate::metadata::no_leader(topic, &[partition])),
        None if c.partition_count(topic).is_none() => {
            Err(Error::status(tonic::Code::NotFound, format!("unknown topic '{topic}'")))
        }
        None => Err(Error::status(
            tonic::Code::NotFound,
            format!("unknown partition {partition} of topic '{topic}'"),
        )),
    }
}

/// One Produce request (merged with others for the same leader); returns
/// each batch's base offset (all -1 with acks = 0). When the leader turns
/// out to have moved, the cache is corrected first (from the answer's hint,
/// or marked for a refresh) so the retry goes where the leader is.
async fn produce_once(
    shared: &Shared,
    part: &PartitionState,
    records: Bytes,
    counts: &[u32],
) -> Result<Vec<i64>> {
    let leader = leader_of(shared, part).await?;
    let (topic, partition) = (&*part.topic.name, part.partition);
    let answer = shared.dispatcher.produce(leader, part.topic.name.clone(), partition, records).await;
    let entry = match answer {
        Ok(entry) => entry,
        Err(e) => {
            if e.recovery() == Recovery::Reroute {
                shared.cluster.invalidate(topic, partition);
            }
            return Err(e);
        }
    };
    if let Some(e) = &entry.error {
        if let Ok(code @ (v1::ErrorCode::OutOfOrderSequence | v1::ErrorCode::InvalidProducerEpoch)) =
            v1::ErrorCode::try_from(e.code)
        {
            return Err(idempotence::sequence_error(code, topic, partition, &e.message));
        }
        if code_recovery(e.code) == Some(Recovery::Reroute) {
            shared.cluster.apply_hint(topic, partition, e);
        }
    }
    if let Some(e) = partition_error(entry.error.as_ref()) {
        return Err(e);
    }
    batch_offsets(&entry, counts).ok_or_else(|| {
        Error::status(
            tonic::Code::Internal,
            format!(
                "the produce response for {topic}-{partition} gives {} batch offsets for {} batches",
                entry.batch_base_offsets.len(),
                counts.len()
            ),
        )
    })
}

/// Each batch's base offset: as the broker listed them (a retried batch it
/// already had keeps the offset it got then), or, from a broker that does
/// not list them, consecutive from the first. `None` when the list does not
/// match the batches sent.
fn batch_offsets(entry: &v1::PartitionProduceResponse, counts: &[u32]) -> Option<Vec<i64>> {
    if !entry.batch_base_offsets.is_empty() {
        return (entry.batch_base_offsets.len() == counts.len()).then(|| entry.batch_base_offsets.clone());
    }
    let mut next = entry.base_offset;
    Some(
        counts
            .iter()
            .map(|&c| {
                let offset = next;
                if next >= 0 {
                    next += i64::from(c);
                }
                offset
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(base: i64, listed: &[i64]) -> v1::PartitionProduceResponse {
        v1::PartitionProduceResponse {
            partition: 0,
            base_offset: base,
            log_start_offset: 0,
            error: None,
            batch_base_offsets: listed.to_vec(),
        }
    }

    #[test]
    fn batch_offsets_come_from_the_broker_list_when_there_is_one() {
        // The second batch was a retry the broker already had at 3.
        assert_eq!(batch_offsets(&answer(10, &[3, 10]), &[2, 5]), Some(vec![3, 10]));
        assert_eq!(batch_offsets(&answer(10, &[]), &[2, 5, 1]), Some(vec![10, 12, 17]));
        assert_eq!(batch_offsets(&answer(-1, &[]), &[2, 5]), Some(vec![-1, -1]));
        assert_eq!(batch_offsets(&answer(10, &[10]), &[2, 5]), None);
    }
}
