//! The reassignment throttle: a leader sends replicas that are copying for a
//! reassignment (target replicas not yet in sync) at most so many bytes per
//! second in all, so moving partitions onto a new broker does not starve
//! producers, consumers and the in-sync followers of the disk and network
//! they share. In-sync followers are never throttled: holding them back
//! would hold back the high watermark, and so every `acks=all` producer.
//!
//! A token bucket holding at most one second of the rate. A fetch may take a
//! whole batch even when that overdraws the bucket (a replica must be able
//! to make progress past a batch larger than the rate); the debt is paid
//! before the next throttled bytes go.

use std::time::Instant;

use parking_lot::Mutex;

pub struct Throttle {
    bucket: Mutex<Bucket>,
}

struct Bucket {
    /// Bytes that may go now; negative after an overdraft.
    tokens: f64,
    refilled: Instant,
    rate: u64,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle { bucket: Mutex::new(Bucket { tokens: 0.0, refilled: Instant::now(), rate: 0 }) }
    }
}

impl Throttle {
    /// How many bytes a throttled fetch may take now at `rate` bytes/s.
    pub fn allowance(&self, rate: u64) -> usize {
        self.allowance_at(rate, Instant::now())
    }

    /// Takes `bytes` sent to a throttled replica out of the bucket.
    pub fn spend(&self, bytes: usize) {
        self.bucket.lock().tokens -= bytes as f64;
    }

    fn allowance_at(&self, rate: u64, now: Instant) -> usize {
        let mut b = self.bucket.lock();
        if b.rate != rate {
            // A new rate starts with a full second of it.
            *b = Bucket { tokens: rate as f64, refilled: now, rate };
        }
        let elapsed = now.saturating_duration_since(b.refilled).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate as f64).min(rate as f64);
        b.refilled = now;
        if b.tokens <= 0.0 {
            0
        } else {
            b.tokens as usize
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_rate_bounds_what_goes_over_time_and_an_overdraft_is_paid_back() {
        let t = Throttle::default();
        let start = Instant::now();
        assert_eq!(t.allowance_at(1000, start), 1000);
        // A 2500-byte batch goes whole, then nothing for 1.5 s.
        t.spend(2500);
        assert_eq!(t.allowance_at(1000, start + Duration::from_millis(1000)), 0);
        assert_eq!(t.allowance_at(1000, start + Duration::from_millis(1500)), 0);
        assert_eq!(t.allowance_at(1000, start + Duration::from_millis(1750)), 250);
        // Idle time never banks more than a second of the rate.
        assert_eq!(t.allowance_at(1000, start + Duration::from_secs(60)), 1000);
        // Over ten seconds of steady demand, ten seconds' worth goes (plus
        // the first second's burst).
        let mut sent = 0;
        for ms in (0..10_000).step_by(10) {
            let now = start + Duration::from_secs(60) + Duration::from_millis(ms);
            let a = t.allowance_at(1000, now);
            if a > 0 {
                let n = a.min(300);
                t.spend(n);
                sent += n;
            }
        }
        assert!((10_000..=11_300).contains(&sent), "{sent} bytes in 10 s at 1000 B/s");
    }

    #[test]
    fn a_new_rate_takes_effect_at_once() {
        let t = Throttle::default();
        let now = Instant::now();
        assert_eq!(t.allowance_at(100, now), 100);
        t.spend(100);
        assert_eq!(t.allowance_at(100, now), 0);
        assert_eq!(t.allowance_at(5000, now), 5000);
    }
}
