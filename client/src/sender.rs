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

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tributary_proto::v1;

use crate::accumulator::{Batch, PartitionState};
use crate::error::{partition_error, Error, Result};
use crate::producer::{Acks, Shared};
use crate::split;

/// Upper bound on one Produce request's record bytes (the broker accepts
/// 256 MiB messages; a smaller request keeps latency even).
const MAX_REQUEST_BYTES: usize = 64 << 20;
/// Longest pause between retries, however many there were.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

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
    let max_batches = shared.config.max_in_flight.max(1);
    let max_bytes = MAX_REQUEST_BYTES.max(shared.limits.batch_size);
    loop {
        let mut batches = part.take_for_request(shared.limits.linger, max_batches, max_bytes);
        if batches.is_empty() {
            return;
        }
        deliver(&shared, &part, &mut batches).await;
    }
}

async fn deliver(shared: &Shared, part: &PartitionState, batches: &mut [Batch]) {
    let payloads: Vec<Bytes> = batches.iter_mut().map(Batch::build).collect();
    let Err(e) = send_group(shared, part, batches, &payloads).await else { return };
    if !refused(&e) {
        for batch in batches.iter_mut() {
            batch.complete(Err(e.clone()));
        }
        return;
    }
    if let ([batch], [payload]) = (&mut *batches, &payloads[..]) {
        settle_refused(shared, part, batch, payload, e).await;
        return;
    }
    // The broker refuses a request as a whole and then stores nothing, so
    // resending the batches one by one is safe, and only the one at fault
    // (say, too large for max.message.bytes) fails.
    for (batch, payload) in batches.iter_mut().zip(&payloads) {
        let one = std::slice::from_mut(batch);
        match send_group(shared, part, one, std::slice::from_ref(payload)).await {
            Ok(()) => {}
            Err(e) if refused(&e) => settle_refused(shared, part, batch, payload, e).await,
            Err(e) => batch.complete(Err(e)),
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
) {
    if batch.records() > 1 {
        if let Some(limit) = shared.max_message_bytes(&part.topic.name).await {
            if payload.len() > limit {
                if let Ok(smaller) = split::split(payload, shared.limits.compression, limit) {
                    if smaller.holes.len() < batch.records() as usize {
                        match send_records(shared, part, smaller.payload).await {
                            Ok(base) => {
                                let holes = smaller
                                    .holes
                                    .into_iter()
                                    .map(|(index, size)| (index, too_large(part, size, limit)))
                                    .collect();
                                batch.complete_with_holes(base, holes);
                            }
                            Err(e) => batch.complete(Err(e)),
                        }
                        return;
                    }
                }
            }
        }
    }
    batch.complete(Err(error));
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

/// One Produce request for `batches` (all of one partition, in order).
/// On success every batch is completed; on failure none is, and the error
/// is returned.
async fn send_group(
    shared: &Shared,
    part: &PartitionState,
    batches: &mut [Batch],
    payloads: &[Bytes],
) -> Result<()> {
    let records = match payloads {
        [one] => one.clone(),
        many => {
            let mut buf = BytesMut::with_capacity(many.iter().map(Bytes::len).sum());
            for p in many {
                buf.extend_from_slice(p);
            }
            buf.freeze()
        }
    };
    if shared.config.acks == Acks::None {
        // Nobody waits for the broker with acks=0: the records count as
        // delivered once handed to the connection. The answer still paces
        // this partition (one request in flight), and a failure is logged.
        for b in batches.iter_mut() {
            b.complete(Ok(-1));
        }
        if let Err(e) = produce_once(shared, part, records).await {
            tracing::warn!(topic = %part.topic.name, partition = part.partition, "acks=0 produce failed: {e}");
        }
        return Ok(());
    }
    let mut next = send_records(shared, part, records).await?;
    for b in batches.iter_mut() {
        b.complete(Ok(next));
        next += i64::from(b.records());
    }
    Ok(())
}

/// Sends concatenated batches of one partition, retrying while the error is
/// retriable; returns the base offset.
async fn send_records(shared: &Shared, part: &PartitionState, records: Bytes) -> Result<i64> {
    let mut attempt = 0u32;
    loop {
        match produce_once(shared, part, records.clone()).await {
            Ok(base_offset) => return Ok(base_offset),
            Err(e) if e.is_retriable() && attempt < shared.config.retries => {
                attempt += 1;
                let wait = backoff(shared.config.retry_backoff, attempt);
                tracing::debug!(
                    topic = %part.topic.name,
                    partition = part.partition,
                    attempt,
                    "produce failed, retrying in {wait:?}: {e}"
                );
                tokio::time::sleep(wait).await;
            }
            Err(e) => {
                if matches!(e, Error::Status { code: tonic::Code::NotFound, .. }) {
                    // Deleted topic or fewer partitions: look again next send.
                    part.topic.stale.store(true, Ordering::Relaxed);
                }
                return Err(e);
            }
        }
    }
}

/// Doubling from `base`, at most `MAX_BACKOFF` (or `base` if that is larger).
fn backoff(base: Duration, attempt: u32) -> Duration {
    let factor = 1u32 << attempt.saturating_sub(1).min(16);
    base.saturating_mul(factor).min(MAX_BACKOFF.max(base))
}

async fn produce_once(shared: &Shared, part: &PartitionState, records: Bytes) -> Result<i64> {
    let request = v1::ProduceRequest {
        acks: shared.config.acks.wire(),
        timeout_ms: u32::try_from(shared.config.request_timeout.as_millis()).unwrap_or(u32::MAX),
        topics: vec![v1::TopicProduceData {
            name: part.topic.name.to_string(),
            partitions: vec![v1::PartitionProduceData { partition: part.partition, records }],
        }],
    };
    let conn = shared.connection(part.connection);
    let mut client = conn.log();
    let response =
        conn.call("a produce request", shared.config.request_timeout, client.produce(request)).await?;
    let entry = response
        .topics
        .iter()
        .filter(|t| *t.name == *part.topic.name)
        .flat_map(|t| &t.partitions)
        .find(|p| p.partition == part.partition);
    let Some(entry) = entry else {
        return Err(Error::status(
            tonic::Code::Internal,
            format!("the produce response has no result for {}-{}", part.topic.name, part.partition),
        ));
    };
    if let Some(e) = partition_error(entry.error.as_ref()) {
        return Err(e);
    }
    Ok(entry.base_offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_cap() {
        let b = Duration::from_millis(100);
        assert_eq!(backoff(b, 1), b);
        assert_eq!(backoff(b, 2), Duration::from_millis(200));
        assert_eq!(backoff(b, 4), Duration::from_millis(800));
        assert_eq!(backoff(b, 30), MAX_BACKOFF);
        assert_eq!(backoff(Duration::from_secs(9), 3), Duration::from_secs(9));
    }
}
