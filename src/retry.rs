//! Retry decisions: a pure function of the attempt number and the task's policy.
//!
//! The attempt travels with the message (`warren-attempt`, plus the quorum queue's
//! `x-delivery-count` for crashed deliveries), so any worker can decide. No lapin here; the
//! random source is handed in so tests are deterministic. We compute the exponential delay
//! directly rather than stepping the `backoff` crate's stateful `ExponentialBackoff`, since
//! the n-th delay must come from `n` alone.

use std::time::Duration;

use crate::config::TaskPolicy;

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
    use crate::config::BackoffPolicy;

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
