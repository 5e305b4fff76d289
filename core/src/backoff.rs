//! Exponential backoff with jitter, for everything in runbox that tries a
//! remote call again: reconnecting a Pub/Sub stream, retrying a launch the
//! platform refused.
//!
//! A [`BackoffPolicy`] is plain data and computes delays; it knows nothing of
//! time, so it can be checked with exact numbers. The delay before retry `n`
//! (1 for the first retry) starts from the step `initial × multiplierⁿ⁻¹`,
//! capped at `max_delay`, then spread by the [`Jitter`] so that callers that
//! failed together do not come back in lockstep. A policy may also limit the
//! number of attempts and the total time ("budget"); a delay that would end
//! past the budget is not granted.
//!
//! A [`Backoff`] is one caller's state over such a policy: it counts retries,
//! measures the budget from its start, and starts over on
//! [`Backoff::reset`] (after a success).
//!
//! Callers that count attempts themselves (a launch loop that knows when it
//! started) can use [`BackoffPolicy::delay`] directly. For example a policy
//! of at most 5 calls within 60 s, delays from 1 s doubling up to 30 s, each
//! drawn from the upper half of its step ("equal jitter"):
//!
//! ```
//! use std::time::Duration;
//! use runbox_core::backoff::{BackoffPolicy, Jitter};
//!
//! let policy = BackoffPolicy::new(Duration::from_secs(1), Duration::from_secs(30))
//!     .with_jitter(Jitter::Equal)
//!     .with_max_attempts(5)
//!     .with_budget(Duration::from_secs(60));
//! let first = policy.delay(1, Duration::ZERO).expect("a first retry");
//! assert!(first >= Duration::from_millis(500) && first <= Duration::from_secs(1));
//! assert_eq!(policy.delay(5, Duration::ZERO), None, "5 calls made");
//! assert_eq!(policy.delay(2, Duration::from_millis(59_500)), None, "budget used up");
//! ```

use std::time::Duration;

use tokio::time::Instant;

/// How a delay is drawn from its exponential step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Jitter {
    /// Exactly the step: every caller waits the same.
    None,
    /// Uniformly from the upper half of the step, `[step/2, step)`: callers
    /// spread out, yet each still backs off at least half the step.
    #[default]
    Equal,
    /// Uniformly from `[0, step)`: the widest spread, but a retry may come
    /// almost at once.
    Full,
}

/// When to try again: exponential steps, a cap, jitter, and optionally a
/// limit on attempts and on total time. See the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// The step before the first retry (before jitter).
    pub initial: Duration,
    /// Each step is this many times the previous one (2: doubling).
    pub multiplier: u32,
    /// The largest step; jitter only ever shortens it.
    pub max_delay: Duration,
    /// How a delay is drawn from its step.
    pub jitter: Jitter,
    /// Most calls made, the first included; `None`: no limit.
    pub max_attempts: Option<u32>,
    /// No retry starts later than this after the first call; `None`: no
    /// limit.
    pub budget: Option<Duration>,
}

impl BackoffPolicy {
    /// Steps from `initial` doubling up to `max_delay`, equal jitter, no
    /// limit on attempts or time.
    pub fn new(initial: Duration, max_delay: Duration) -> Self {
        Self {
            initial,
            multiplier: 2,
            max_delay,
            jitter: Jitter::Equal,
            max_attempts: None,
            budget: None,
        }
    }

    /// Sets the factor between two steps.
    #[must_use]
    pub fn with_multiplier(mut self, multiplier: u32) -> Self {
        self.multiplier = multiplier;
        self
    }

    /// Sets how delays are drawn from their step.
    #[must_use]
    pub fn with_jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// Allows at most `attempts` calls, the first included.
    #[must_use]
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }

    /// Starts no retry later than `budget` after the first call.
    #[must_use]
    pub fn with_budget(mut self, budget: Duration) -> Self {
        self.budget = Some(budget);
        self
    }

    /// The step before retry number `retry` (1 for the first retry), before
    /// jitter: `initial × multiplier^(retry−1)`, at most `max_delay`.
    pub fn step(&self, retry: u32) -> Duration {
        let factor = self
            .multiplier
            .checked_pow(retry.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max_delay)
    }

    /// The pause before retry number `retry` (1 for the first retry), with
    /// random jitter, or `None` when the attempts or the budget (`elapsed`
    /// since the first call) are used up.
    pub fn delay(&self, retry: u32, elapsed: Duration) -> Option<Duration> {
        self.delay_with(retry, elapsed, fastrand::f64())
    }

    /// Like [`BackoffPolicy::delay`], with the jitter drawn from `unit`, a
    /// number in `[0, 1)` (0 gives the shortest delay the jitter allows), so
    /// the result is exact.
    pub fn delay_with(&self, retry: u32, elapsed: Duration, unit: f64) -> Option<Duration> {
        if retry == 0 || self.max_attempts.is_some_and(|max| retry >= max) {
            return None;
        }
        // Out-of-range input must not panic in `mul_f64`.
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let step = self.step(retry);
        let delay = match self.jitter {
            Jitter::None => step,
            Jitter::Equal => {
                let half = step / 2;
                half + half.mul_f64(unit)
            }
            Jitter::Full => step.mul_f64(unit),
        };
        if self
            .budget
            .is_some_and(|budget| elapsed.saturating_add(delay) > budget)
        {
            return None;
        }
        Some(delay)
    }
}

/// One caller's retries under a [`BackoffPolicy`]: counts them, measures the
/// budget from its start, and starts over after a success.
#[derive(Clone, Debug)]
pub struct Backoff {
    policy: BackoffPolicy,
    /// Retries granted since the start or the last reset.
    retries: u32,
    /// When the budget started: creation or the last reset.
    started: Instant,
}

impl Backoff {
    /// Starts counting now.
    pub fn new(policy: BackoffPolicy) -> Self {
        Self {
            policy,
            retries: 0,
            started: Instant::now(),
        }
    }

    /// The policy.
    pub fn policy(&self) -> &BackoffPolicy {
        &self.policy
    }

    /// Retries granted since the start or the last reset.
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// The pause before the next retry, or `None` when the policy's attempts
    /// or budget are used up (and it stays `None` until a reset).
    pub fn next_delay(&mut self) -> Option<Duration> {
        let elapsed = self.started.elapsed();
        self.next_delay_with(elapsed, fastrand::f64())
    }

    /// After a success: the next failure starts again from the first step,
    /// with a whole budget.
    pub fn reset(&mut self) {
        self.retries = 0;
        self.started = Instant::now();
    }

    fn next_delay_with(&mut self, elapsed: Duration, unit: f64) -> Option<Duration> {
        let retry = self.retries.saturating_add(1);
        let delay = self.policy.delay_with(retry, elapsed, unit)?;
        self.retries = retry;
        Some(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn exact(initial_ms: u32, max_ms: u32) -> BackoffPolicy {
        BackoffPolicy::new(initial_ms * MS, max_ms * MS).with_jitter(Jitter::None)
    }

    #[test]
    fn steps_grow_by_the_multiplier_up_to_the_cap() {
        let policy = exact(100, 1000);
        let steps: Vec<_> = (1..=6).map(|n| policy.step(n)).collect();
        assert_eq!(
            steps,
            [100 * MS, 200 * MS, 400 * MS, 800 * MS, 1000 * MS, 1000 * MS]
        );
        let tripling = policy.with_multiplier(3);
        assert_eq!(tripling.step(3), 900 * MS);
        // Far past any overflow: still the cap.
        assert_eq!(policy.step(u32::MAX), 1000 * MS);
        assert_eq!(policy.delay_with(40, Duration::ZERO, 0.5), Some(1000 * MS));
    }

    #[test]
    fn jitter_draws_from_the_documented_range() {
        let policy = BackoffPolicy::new(400 * MS, 10_000 * MS);
        let at = |jitter, unit| {
            policy
                .with_jitter(jitter)
                .delay_with(2, Duration::ZERO, unit)
        };
        // Step 2 is 800 ms.
        assert_eq!(at(Jitter::Equal, 0.0), Some(400 * MS));
        assert_eq!(at(Jitter::Equal, 0.5), Some(600 * MS));
        assert!(at(Jitter::Equal, 0.999_999).unwrap() < 800 * MS);
        assert_eq!(at(Jitter::Full, 0.0), Some(Duration::ZERO));
        assert_eq!(at(Jitter::Full, 0.25), Some(200 * MS));
        assert_eq!(at(Jitter::None, 0.7), Some(800 * MS));
        // Out-of-range draws are clamped, never a panic.
        assert_eq!(at(Jitter::Equal, f64::NAN), Some(400 * MS));
        assert_eq!(at(Jitter::Equal, 7.0), Some(800 * MS));
    }

    #[test]
    fn random_delays_stay_in_range_and_spread() {
        let policy = BackoffPolicy::new(1000 * MS, 30_000 * MS);
        let delays: std::collections::BTreeSet<_> = (0..50)
            .map(|_| policy.delay(3, Duration::ZERO).unwrap())
            .collect();
        assert!(delays.iter().all(|d| *d >= 2000 * MS && *d <= 4000 * MS));
        assert!(delays.len() > 1, "jitter spreads the delays: {delays:?}");
    }

    #[test]
    fn attempts_and_budget_limit_the_retries() {
        let policy = exact(1000, 30_000)
            .with_max_attempts(5)
            .with_budget(Duration::from_secs(60));
        assert_eq!(policy.delay_with(0, Duration::ZERO, 0.0), None);
        assert_eq!(policy.delay_with(4, Duration::ZERO, 0.0), Some(8000 * MS));
        assert_eq!(
            policy.delay_with(5, Duration::ZERO, 0.0),
            None,
            "5 calls made"
        );
        // A delay that would end exactly at the budget is still granted.
        assert_eq!(
            policy.delay_with(2, Duration::from_secs(58), 0.0),
            Some(2000 * MS)
        );
        assert_eq!(
            policy.delay_with(2, Duration::from_millis(58_001), 0.0),
            None
        );
    }

    /// The launcher's retry policy: 5 calls within 60 s, 1 s doubling to
    /// 30 s, equal jitter; exactly its documented numbers.
    #[test]
    fn expresses_the_launch_retry_policy() {
        let policy = BackoffPolicy::new(Duration::from_secs(1), Duration::from_secs(30))
            .with_jitter(Jitter::Equal)
            .with_max_attempts(5)
            .with_budget(Duration::from_secs(60));
        for (retry, low, high) in [(1, 500, 1000), (3, 2000, 4000)] {
            assert_eq!(
                policy.delay_with(retry, Duration::ZERO, 0.0),
                Some(low * MS)
            );
            assert!(policy.delay_with(retry, Duration::ZERO, 0.999_999).unwrap() < high * MS);
        }
        let uncapped = policy.with_max_attempts(20);
        assert!(uncapped.delay_with(15, Duration::ZERO, 0.999_999).unwrap() <= 30_000 * MS);
        // Retry 2 waits 1 s to 2 s: from 59 s on, only the shortest fits.
        assert_eq!(
            policy.delay_with(2, Duration::from_secs(59), 0.0),
            Some(1000 * MS)
        );
        assert_eq!(policy.delay_with(2, Duration::from_secs(59), 0.5), None);
    }

    #[test]
    fn a_backoff_counts_retries_and_starts_over_after_a_reset() {
        let mut backoff = Backoff::new(exact(100, 400).with_max_attempts(4));
        let delays: Vec<_> = (0..4)
            .map(|_| backoff.next_delay_with(Duration::ZERO, 0.0))
            .collect();
        assert_eq!(
            delays,
            [Some(100 * MS), Some(200 * MS), Some(400 * MS), None]
        );
        assert_eq!(backoff.retries(), 3);
        // Exhausted stays exhausted until a success.
        assert_eq!(backoff.next_delay_with(Duration::ZERO, 0.0), None);
        backoff.reset();
        assert_eq!(backoff.retries(), 0);
        assert_eq!(backoff.next_delay_with(Duration::ZERO, 0.0), Some(100 * MS));
    }

    #[test]
    fn a_backoff_without_limits_never_runs_out() {
        let mut backoff = Backoff::new(exact(100, 400));
        for _ in 0..100 {
            assert!(
                backoff
                    .next_delay_with(Duration::from_secs(3600), 0.3)
                    .is_some()
            );
        }
        assert_eq!(backoff.next_delay(), Some(400 * MS));
    }
}
