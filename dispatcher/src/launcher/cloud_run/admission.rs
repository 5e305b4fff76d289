//! Admission control for launches on a platform with quotas (Cloud Run):
//! a [`RateLimiter`] (token bucket) that paces calls to a per-minute budget,
//! a [`RunningSlots`] cap on executions running at once, and the
//! [`RetryPolicy`] (exponential backoff with jitter inside a budget) for
//! calls the platform refused for quota or availability reasons.
//!
//! Launches over budget wait, in arrival order, rather than fail: a burst of
//! commands is smoothed into the quota instead of being answered with
//! errors. Both waits are cancel-safe: dropping a waiting launch gives up
//! its place without consuming anything.

use std::sync::Arc;
use std::time::Duration;

use runbox_core::backoff::{BackoffPolicy, Jitter};
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// A token bucket refilled continuously at `rate` tokens per second, holding
/// at most `capacity` tokens (the burst allowed after a quiet period).
/// [`RateLimiter::acquire`] takes one token, waiting for it if the bucket is
/// empty; waiters are served first come, first served.
#[derive(Debug)]
pub struct RateLimiter {
    // tokio's mutex queues its waiters fairly (FIFO). The holder sleeps while
    // holding it, so a later caller cannot take a token before an earlier one.
    bucket: Mutex<Bucket>,
    per_second: f64,
    capacity: f64,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl RateLimiter {
    /// A limiter allowing `per_minute` acquisitions per minute on average,
    /// and up to `burst` at once after a quiet period (at least 1). The
    /// bucket starts full.
    pub fn per_minute(per_minute: u32, burst: u32) -> Self {
        let capacity = f64::from(burst.max(1));
        Self {
            bucket: Mutex::new(Bucket {
                tokens: capacity,
                updated: Instant::now(),
            }),
            per_second: f64::from(per_minute.max(1)) / 60.0,
            capacity,
        }
    }

    /// The steady-state interval between two acquisitions.
    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.per_second)
    }

    /// The most acquisitions granted at once after a quiet period.
    pub fn burst(&self) -> u32 {
        self.capacity as u32
    }

    /// Takes one token, waiting until one is available. Cancel-safe: a
    /// dropped call takes nothing and leaves the queue.
    pub async fn acquire(&self) {
        let mut bucket = self.bucket.lock().await;
        self.refill(&mut bucket, Instant::now());
        if bucket.tokens < 1.0 {
            let missing = 1.0 - bucket.tokens;
            let ready_at = bucket.updated + Duration::from_secs_f64(missing / self.per_second);
            tokio::time::sleep_until(ready_at).await;
            self.refill(&mut bucket, ready_at.max(Instant::now()));
        }
        // Rounding can leave the bucket a hair under 1 after the sleep;
        // never let it go far negative.
        bucket.tokens = (bucket.tokens - 1.0).max(0.0);
    }

    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.capacity);
        bucket.updated = now;
    }
}

/// A cap on executions running at once. A slot is held from before the
/// launch until the execution is released; launches beyond the cap wait for
/// a slot in arrival order (tokio's semaphore is fair).
#[derive(Clone, Debug)]
pub struct RunningSlots {
    slots: Arc<Semaphore>,
    max: usize,
}

/// One running execution's slot; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

/// The slots were closed: the launcher is shutting down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("running-execution slots closed")]
pub struct SlotsClosed;

impl RunningSlots {
    /// At most `max` (at least 1) slots held at once.
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        Self {
            slots: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// Waits for a free slot.
    pub async fn acquire(&self) -> Result<Slot, SlotsClosed> {
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| SlotsClosed)?;
        Ok(Slot { _permit: permit })
    }

    /// Slots held now.
    pub fn in_use(&self) -> usize {
        self.max - self.slots.available_permits()
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Wakes every waiter with [`SlotsClosed`] and refuses later calls.
    pub fn close(&self) {
        self.slots.close();
    }
}

/// When to try a refused call again: exponential backoff with jitter,
/// within a number of attempts and a total time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Most calls made, the first included.
    pub max_attempts: u32,
    /// No retry starts later than this after the first call.
    pub budget: Duration,
    /// The delay before the first retry (before jitter).
    pub initial_delay: Duration,
    /// The largest delay between two calls.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 5 attempts within 60 s, delays from 1 s doubling up to 30 s.
    fn default() -> Self {
        Self {
            max_attempts: 5,
            budget: Duration::from_secs(60),
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The pause before retry number `retry` (1 for the first retry), or
    /// `None` when the attempts or the time budget (`elapsed` since the first
    /// call) are used up. The pause is drawn from the upper half of the
    /// exponential step ("equal jitter"): callers refused together spread
    /// out, yet each still backs off.
    pub fn delay(&self, retry: u32, elapsed: Duration) -> Option<Duration> {
        BackoffPolicy::new(self.initial_delay, self.max_delay)
            .with_jitter(Jitter::Equal)
            .with_max_attempts(self.max_attempts)
            .with_budget(self.budget)
            .delay(retry, elapsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(1);

    #[tokio::test(start_paused = true)]
    async fn burst_then_paced_at_the_rate() {
        let limiter = RateLimiter::per_minute(600, 3);
        assert_eq!(limiter.interval(), Duration::from_millis(100));
        let t0 = Instant::now();
        for _ in 0..3 {
            limiter.acquire().await;
        }
        assert_eq!(t0.elapsed(), Duration::ZERO, "the burst is granted at once");
        let mut grants = Vec::new();
        for _ in 0..5 {
            limiter.acquire().await;
            grants.push(t0.elapsed());
        }
        for (i, at) in grants.iter().enumerate() {
            let expected = Duration::from_millis(100 * (i as u64 + 1));
            assert!(
                at.abs_diff(expected) <= TICK,
                "grant {i} at {at:?}, expected {expected:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn refills_continuously_up_to_the_burst() {
        let limiter = RateLimiter::per_minute(60, 2);
        limiter.acquire().await;
        limiter.acquire().await;
        // Half a second refills half a token: the next grant is 0.5 s away.
        tokio::time::advance(Duration::from_millis(500)).await;
        let t0 = Instant::now();
        limiter.acquire().await;
        assert!(t0.elapsed().abs_diff(Duration::from_millis(500)) <= TICK);
        // A long pause refills only up to the burst.
        tokio::time::advance(Duration::from_secs(3600)).await;
        let t0 = Instant::now();
        limiter.acquire().await;
        limiter.acquire().await;
        assert_eq!(t0.elapsed(), Duration::ZERO);
        limiter.acquire().await;
        assert!(t0.elapsed().abs_diff(Duration::from_secs(1)) <= TICK);
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_are_served_in_arrival_order() {
        let limiter = Arc::new(RateLimiter::per_minute(60, 1));
        limiter.acquire().await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..5 {
            let limiter = limiter.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                limiter.acquire().await;
                tx.send((i, Instant::now())).unwrap();
            });
            // Let task i reach the queue before task i+1 is spawned.
            tokio::task::yield_now().await;
        }
        drop(tx);
        let t0 = Instant::now();
        let mut order = Vec::new();
        while let Some((i, at)) = rx.recv().await {
            order.push(i);
            let expected = Duration::from_secs(i as u64 + 1);
            assert!(
                (at - t0).abs_diff(expected) <= TICK,
                "waiter {i} at {:?}",
                at - t0
            );
        }
        assert_eq!(order, vec![0, 1, 2, 3, 4]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_waiter_takes_nothing() {
        let limiter = RateLimiter::per_minute(60, 1);
        limiter.acquire().await;
        let gave_up = tokio::time::timeout(Duration::from_millis(400), limiter.acquire()).await;
        assert!(gave_up.is_err(), "no token within 0.4 s at 1/s");
        let t0 = Instant::now();
        limiter.acquire().await;
        // The token due at 1 s is still there for the next caller.
        assert!(t0.elapsed().abs_diff(Duration::from_millis(600)) <= TICK);
    }

    #[tokio::test(start_paused = true)]
    async fn slots_cap_and_release() {
        let slots = RunningSlots::new(2);
        let a = slots.acquire().await.unwrap();
        let _b = slots.acquire().await.unwrap();
        assert_eq!(slots.in_use(), 2);
        let third = tokio::time::timeout(Duration::from_secs(60), slots.acquire()).await;
        assert!(third.is_err(), "a third slot while two are held");
        drop(a);
        let c = tokio::time::timeout(Duration::from_secs(1), slots.acquire()).await;
        assert!(c.is_ok_and(|c| c.is_ok()));
        slots.close();
        assert_eq!(slots.acquire().await.unwrap_err(), SlotsClosed);
    }

    #[test]
    fn retry_delays_grow_with_jitter_within_the_budget() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.delay(0, Duration::ZERO), None);
        for _ in 0..50 {
            let d1 = policy.delay(1, Duration::ZERO).unwrap();
            assert!(
                d1 >= Duration::from_millis(500) && d1 <= Duration::from_secs(1),
                "{d1:?}"
            );
            let d3 = policy.delay(3, Duration::ZERO).unwrap();
            assert!(
                d3 >= Duration::from_secs(2) && d3 <= Duration::from_secs(4),
                "{d3:?}"
            );
        }
        let capped = RetryPolicy {
            max_attempts: 20,
            ..policy
        };
        let d = capped.delay(15, Duration::ZERO).unwrap();
        assert!(d <= policy.max_delay, "{d:?}");
        assert_eq!(policy.delay(5, Duration::ZERO), None, "5 attempts used up");
        assert_eq!(
            policy.delay(2, Duration::from_secs(59)),
            None,
            "budget used up"
        );
        let spread: std::collections::BTreeSet<_> = (0..20)
            .map(|_| policy.delay(4, Duration::ZERO).unwrap())
            .collect();
        assert!(spread.len() > 1, "jitter spreads the delays: {spread:?}");
    }
}
