//! How a task type is retried: its policy, and the decision after a failed attempt, a pure
//! function of the attempt number and that policy.
//!
//! The attempt travels with the message (`warren-attempt`, plus the quorum queue's
//! `x-delivery-count` for crashed deliveries), so any worker can decide. No lapin here; the
//! random source is handed in so tests are deterministic. We compute the exponential delay
//! directly rather than stepping the `backoff` crate's stateful `ExponentialBackoff`, since
//! the n-th delay must come from `n` alone.

use std::time::Duration;

/// Exponential backoff between retries of a failing task.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackoffPolicy {
    /// Delay before the second attempt. Defaults to 1 s.
    pub initial: Duration,
    /// Factor applied per further attempt. Defaults to 2.0.
    pub multiplier: f64,
    /// Upper bound of one delay. Defaults to 1 h; delays are also capped at `max_delay`.
    pub max: Duration,
    /// Random spread, as a fraction of the delay (0.2 = ±20 %). Defaults to 0.2.
    pub jitter: f64,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            initial: Duration::from_secs(1),
            multiplier: 2.0,
            max: Duration::from_secs(3600),
            jitter: 0.2,
        }
    }
}

/// How one task type is run and retried.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskPolicy {
    /// Runs allowed before the task is dead-lettered (1 = never retried). Defaults to 5.
    pub max_attempts: u32,
    /// Delay between attempts.
    pub backoff: BackoffPolicy,
    /// Longest a handler may run; past it the run counts as a retryable failure. Defaults to
    /// 5 min; keep it below the broker's `consumer_timeout` (30 min by default).
    pub time_limit: Duration,
    /// Default expiry for enqueued tasks: not started within this time, dead with reason
    /// `expired`. Defaults to none (never expires).
    pub expires: Option<Duration>,
    /// Quorum queues only: deliveries (including crashed ones) before the broker dead-letters
    /// a task with reason `delivery_limit`. Guards against tasks that crash their worker.
    /// Defaults to 10.
    pub delivery_limit: u32,
    /// Runs a worker's shutdown may interrupt without using up an attempt (the task goes back
    /// to its work queue with the same attempt number). Past it, an interruption counts as a
    /// failed attempt, so a task that outlives every grace period ends dead rather than
    /// looping through deploys forever. Defaults to 10; 0 counts every interruption.
    pub max_interruptions: u32,
}

impl Default for TaskPolicy {
    fn default() -> Self {
        TaskPolicy {
            max_attempts: 5,
            backoff: BackoffPolicy::default(),
            time_limit: Duration::from_secs(300),
            expires: None,
            delivery_limit: 10,
            max_interruptions: 10,
        }
    }
}

/// What to do with a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Publish the task again through the delay ladder, to run after this delay (whole
    /// seconds, at least 1 s).
    RetryAfter(Duration),
    /// Attempts are exhausted: dead-letter it.
    DeadLetter,
}

/// Decides after attempt `attempt` (1 = the first run) failed with a retryable error.
/// `unit_random` in `[0, 1)` picks the jitter; the delay is
/// `min(initial × multiplier^(attempt-1), max) × (1 ± jitter)`, rounded up to whole seconds
/// and capped at `max_delay`.
pub fn decide(
    policy: &TaskPolicy,
    attempt: u32,
    max_delay: Duration,
    unit_random: f64,
) -> Decision {
    if attempt >= policy.max_attempts {
        return Decision::DeadLetter;
    }
    let b = &policy.backoff;
    let exponent = attempt.saturating_sub(1).min(1000) as i32;
    let base = (b.initial.as_secs_f64() * b.multiplier.powi(exponent)).min(b.max.as_secs_f64());
    let spread = b.jitter * (2.0 * unit_random.clamp(0.0, 1.0) - 1.0);
    let secs = (base * (1.0 + spread))
        .ceil()
        .clamp(1.0, max_delay.as_secs().max(1) as f64);
    Decision::RetryAfter(Duration::from_secs(secs as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_attempts: u32, jitter: f64) -> TaskPolicy {
        TaskPolicy {
            max_attempts,
            backoff: BackoffPolicy {
                initial: Duration::from_secs(2),
                multiplier: 3.0,
                max: Duration::from_secs(60),
                jitter,
            },
            ..TaskPolicy::default()
        }
    }

    const DAY: Duration = Duration::from_secs(86400);

    #[test]
    fn delays_grow_exponentially_up_to_the_cap() {
        let p = policy(10, 0.0);
        let delays: Vec<Decision> = (1..=6).map(|a| decide(&p, a, DAY, 0.5)).collect();
        let secs = |s| Decision::RetryAfter(Duration::from_secs(s));
        assert_eq!(
            delays,
            vec![secs(2), secs(6), secs(18), secs(54), secs(60), secs(60)]
        );
    }

    #[test]
    fn the_last_allowed_attempt_goes_to_the_dead_letter_queue() {
        let p = policy(3, 0.0);
        assert!(matches!(decide(&p, 2, DAY, 0.5), Decision::RetryAfter(_)));
        assert_eq!(decide(&p, 3, DAY, 0.5), Decision::DeadLetter);
        assert_eq!(decide(&p, 99, DAY, 0.5), Decision::DeadLetter);
        assert_eq!(decide(&policy(1, 0.0), 1, DAY, 0.5), Decision::DeadLetter);
    }

    #[test]
    fn jitter_spreads_within_its_fraction_and_rounds_up() {
        let p = policy(10, 0.5); // attempt 3: 18 s ± 50 %
        assert_eq!(
            decide(&p, 3, DAY, 0.0),
            Decision::RetryAfter(Duration::from_secs(9))
        );
        assert_eq!(
            decide(&p, 3, DAY, 0.999_999),
            Decision::RetryAfter(Duration::from_secs(27))
        );
        assert_eq!(
            decide(&p, 3, DAY, 0.5),
            Decision::RetryAfter(Duration::from_secs(18))
        );
    }

    #[test]
    fn delays_are_at_least_one_second_and_at_most_max_delay() {
        let mut p = policy(10, 1.0);
        p.backoff.initial = Duration::from_millis(100);
        assert_eq!(
            decide(&p, 1, DAY, 0.0),
            Decision::RetryAfter(Duration::from_secs(1))
        );
        let p = policy(10, 0.0);
        assert_eq!(
            decide(&p, 5, Duration::from_secs(30), 0.5),
            Decision::RetryAfter(Duration::from_secs(30))
        );
    }

    #[test]
    fn huge_attempt_numbers_do_not_overflow() {
        let p = policy(u32::MAX, 0.0);
        assert_eq!(
            decide(&p, u32::MAX - 1, DAY, 0.5),
            Decision::RetryAfter(Duration::from_secs(60))
        );
    }
}
