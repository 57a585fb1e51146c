//! Background work on every partition: the flush policy's timed fsyncs,
//! retention (roll and delete segments), the log cleaner (compaction) and the
//! per-partition gauges. Blocking file work runs on tokio's blocking pool.

use std::sync::Arc;
use std::time::Duration;

use crate::shutdown::Shutdown;
use crate::{now_ms, BrokerState};

pub fn spawn(state: Arc<BrokerState>, shutdown: Shutdown) -> Vec<tokio::task::JoinHandle<()>> {
    let retention = Duration::from_millis(state.config.retention_check_interval_ms.max(10));
    let cleaner = Duration::from_millis(state.config.cleaner_interval_ms.max(10));
    vec![
        tokio::spawn(every(Duration::from_millis(100), state.clone(), shutdown.clone(), flush_and_gauges)),
        tokio::spawn(every(Duration::from_millis(100), state.clone(), shutdown.clone(), group_sessions)),
        tokio::spawn(every(retention, state.clone(), shutdown.clone(), retention_pass)),
        tokio::spawn(every(cleaner, state.clone(), shutdown.clone(), cleaning_pass)),
        tokio::spawn(every(
            Duration::from_secs(5),
            state.clone(),
            shutdown.clone(),
            checkpoint_high_watermarks,
        )),
        tokio::spawn(every(Duration::from_secs(1), state.clone(), shutdown.clone(), cluster_gauges)),
        tokio::spawn(isr_maintenance(state, shutdown)),
    ]
}

/// Leaders shrink and expand their ISRs (a quarter of the lag time apart,
/// so a lagging follower leaves within 1.25 lag times).
async fn isr_maintenance(state: Arc<BrokerState>, mut shutdown: Shutdown) {
    let period = (state.replicas.lag_time / 4).clamp(Duration::from_millis(50), Duration::from_secs(2));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait() => return,
        }
        crate::replication::leader::maintain_isrs(state.replicas.clone(), state.clone()).await;
    }
}

/// Kafka's replication-offset checkpoint: a restarted replica starts from a
/// high watermark it knew was committed.
fn checkpoint_high_watermarks(state: &BrokerState) {
    for r in state.replicas.replicas() {
        if let Err(e) = r.partition.checkpoint_high_watermark() {
            tracing::warn!(topic = %r.topic, partition = r.id, error = %e, "checkpointing the high watermark");
        }
    }
}

fn cluster_gauges(state: &BrokerState) {
    let md = state.cluster.metadata();
    let (_, under, offline) = md.health();
    let m = &state.metrics;
    m.under_replicated_partitions.set(i64::from(under));
    m.offline_partitions.set(i64::from(offline));
    m.reassignments.set(md.reassignments_in_progress() as i64);
    m.raft_term.set(state.cluster.raft_term() as i64);
    m.raft_applied_index.set(state.cluster.applied_index() as i64);
    m.controller.set(i64::from(state.cluster.is_controller()));
    for r in state.replicas.replicas() {
        let end = r.partition.log_end_offset();
        let lag = r
            .leader
            .lock()
            .as_ref()
            .map(|l| l.followers.values().map(|f| (end - f.log_end).max(0)).max().unwrap_or(0));
        if let Some(lag) = lag {
            m.follower_lag
                .get_or_create(&crate::metrics::PartitionLabels { topic: r.topic.clone(), partition: r.id })
                .set(lag);
        }
    }
}

/// Runs `work` on the blocking pool every `period` until shutdown.
async fn every(period: Duration, state: Arc<BrokerState>, mut shutdown: Shutdown, work: fn(&BrokerState)) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait() => return,
        }
        let state = state.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || work(&state)).await {
            tracing::error!(error = %e, "background task panicked");
        }
    }
}

fn flush_and_gauges(state: &BrokerState) {
    let now = now_ms();
    let refresh_gauges = now / 1000 != (now - 100) / 1000;
    if refresh_gauges {
        state.disk.maintain();
    }
    for topic in state.topics.list() {
        let config = topic.config();
        for p in topic.partitions() {
            let (due, stats) = p.with_log(|log| {
                (
                    log.due_flush(&config, now),
                    (log.size_bytes(), log.log_start_offset(), log.log_end_offset()),
                )
            });
            // A failure takes the log offline (and says so in the log).
            if let Some(ticket) = due {
                let _ = ticket.sync();
            }
            if refresh_gauges {
                state.metrics.set_partition(&p.topic, p.id, stats.0, stats.1, stats.2);
            }
        }
    }
}

fn group_sessions(state: &BrokerState) {
    state.coordinator.tick(&state.topics);
}

fn retention_pass(state: &BrokerState) {
    let now = now_ms();
    for topic in state.topics.list() {
        let config = topic.config();
        for p in topic.partitions() {
            if p.offline_reason().is_some() {
                continue;
            }
            if let Err(e) = p.apply_retention(&config, now) {
                tracing::error!(topic = %p.topic, partition = p.id, error = %e, "retention failed");
            }
        }
    }
}

fn cleaning_pass(state: &BrokerState) {
    let now = now_ms();
    for topic in state.topics.list() {
        let config = topic.config();
        if !config.cleanup_policy.compact {
            continue;
        }
        for p in topic.partitions() {
            if p.offline_reason().is_some() {
                continue;
            }
            let result = p
                .with_log(|log| log.cleaning_plan(&config, now))
                .and_then(|plan| match plan {
                    None => Ok(None),
                    Some(plan) => plan.run().map(Some),
                })
                .and_then(|done| match done {
                    None => Ok(None),
                    Some((cleaned, stats)) => {
                        p.with_log(|log| log.swap_cleaned(cleaned)).map(|_| Some(stats))
                    }
                });
            match result {
                Ok(Some(stats)) => tracing::info!(
                    topic = %p.topic,
                    partition = p.id,
                    segments = stats.segments,
                    kept = stats.records_kept,
                    removed = stats.records_removed,
                    bytes_before = stats.bytes_before,
                    bytes_after = stats.bytes_after,
                    "compacted"
                ),
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(topic = %p.topic, partition = p.id, error = %e, "compaction failed")
                }
            }
        }
    }
}
