//! Issue 8: the longer randomized fault run. Ignored by default; run it with
//!
//! ```text
//! TRIBUTARY_SOAK_ROUNDS=30 cargo test --release -p tributary-e2e \
//!     --test replication_soak -- --ignored --nocapture
//! ```
//!
//! (`TRIBUTARY_SOAK_SEED` replays a run; the seed is printed.) Each round
//! injects one fault at random — SIGKILL of a partition leader or of any
//! broker, SIGSTOP of a broker, a broker cut off from its peers, one cut
//! link — holds it for 2-6 s while a producer and a reader keep going, undoes
//! it, and waits for the ISR to be full again. The checker runs at the end;
//! the figures (records acknowledged, failovers, time) are printed.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use tributary_e2e::checker::{verify, Ledger};
use tributary_e2e::cluster::{Cluster, OkOrLogs, FAST_FAILOVER};
use tributary_e2e::proxy::CutMode;
use tributary_e2e::workload::{spawn_producer, spawn_tail, ProducerOptions, Route};

/// xorshift64*: reproducible from the printed seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    KillLeader,
    KillAny,
    Pause,
    Isolate,
    CutLink,
}

const FAULTS: [Fault; 5] = [Fault::KillLeader, Fault::KillAny, Fault::Pause, Fault::Isolate, Fault::CutLink];
const PARTITIONS: [u32; 3] = [0, 1, 2];

fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "soak: {line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long randomized fault run; TRIBUTARY_SOAK_ROUNDS=N cargo test ... -- --ignored"]
async fn randomized_faults_lose_nothing() {
    let rounds: usize =
        std::env::var("TRIBUTARY_SOAK_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let seed: u64 =
        std::env::var("TRIBUTARY_SOAK_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    say(&format!("{rounds} rounds, seed {seed}"));
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut c = Cluster::start(3, FAST_FAILOVER).unwrap();
    c.create_topic("soak", 3, 3, &[("min.insync.replicas", "2")]).await.ok_or_logs(&c);
    let ledger = Ledger::new();
    let producer = spawn_producer(&c.bootstrap(), &ledger, ProducerOptions::new("soak", &PARTITIONS));
    let tail = spawn_tail(&c.bootstrap(), &ledger, "soak", &PARTITIONS, Route::Leader);
    producer.wait_acked(50, Duration::from_secs(20)).await.ok_or_logs(&c);
    let mut injected: BTreeMap<String, u32> = BTreeMap::new();
    let mut failovers = 0u64;
    for round in 0..rounds {
        let mut epochs = Vec::new();
        for &p in &PARTITIONS {
            epochs.push(c.partition("soak", p).await.ok_or_logs(&c).leader_epoch);
        }
        let fault = FAULTS[rng.below(FAULTS.len() as u64) as usize];
        let hold = Duration::from_millis(2000 + rng.below(4000));
        let victim = match fault {
            Fault::KillLeader => {
                let p = PARTITIONS[rng.below(PARTITIONS.len() as u64) as usize];
                c.leader_of("soak", p).await.ok_or_logs(&c).unwrap_or(0)
            }
            _ => rng.below(3) as usize,
        };
        let other = (victim + 1 + rng.below(2) as usize) % 3;
        say(&format!("round {round}: {fault:?} broker {victim} (other {other}) for {hold:?}"));
        *injected.entry(format!("{fault:?}")).or_default() += 1;
        match fault {
            Fault::KillLeader | Fault::KillAny => c.kill(victim).ok_or_logs(&c),
            Fault::Pause => c.pause(victim).ok_or_logs(&c),
            Fault::Isolate => c.isolate(victim),
            Fault::CutLink => {
                let mode = if rng.below(2) == 0 { CutMode::Blackhole } else { CutMode::Refuse };
                c.cut_with(victim, other, mode);
            }
        }
        tokio::time::sleep(hold).await;
        match fault {
            Fault::KillLeader | Fault::KillAny => {
                c.restart(victim).ok_or_logs(&c);
                c.wait_ready_async(victim, Duration::from_secs(60)).await.ok_or_logs(&c);
            }
            Fault::Pause => c.resume(victim).ok_or_logs(&c),
            Fault::Isolate | Fault::CutLink => c.heal_all(),
        }
        c.wait_in_sync("soak", &PARTITIONS, Duration::from_secs(40)).await.ok_or_logs(&c);
        for (k, &p) in PARTITIONS.iter().enumerate() {
            if c.partition("soak", p).await.ok_or_logs(&c).leader_epoch > epochs[k] {
                failovers += 1;
            }
        }
        // Writes flow again before the next fault.
        producer.wait_acked(20, Duration::from_secs(30)).await.ok_or_logs(&c);
    }
    let stats = producer.stop().await;
    let tail_stats = tail.stop().await;
    let report = verify(&mut c, &ledger, "soak", &PARTITIONS, Duration::from_secs(40)).await.ok_or_logs(&c);
    say(&format!(
        "{rounds} rounds in {:.1} s: {} records acked in {} batches, {} given up, {} leader epoch changes, \
         faults {injected:?}; producer errors {:?}; reader saw {} records",
        started.elapsed().as_secs_f64(),
        stats.records_acked,
        stats.batches_acked,
        stats.gave_up,
        failovers,
        stats.errors,
        tail_stats.records,
    ));
    say(&report.to_string());
    assert!(stats.non_retriable.is_empty(), "{stats:?}");
    assert!(report.is_clean(), "seed {seed}\n{report}\n{}", c.logs_tail());
}
