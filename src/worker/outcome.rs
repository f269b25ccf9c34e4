//! The outcome decision: what becomes of a delivery after its run (or instead of one).
//! Pure: the clock and the random source come in as values, so every branch is unit-tested.
//!
//! A success is acked. A retryable failure becomes a retry copy into the delay ladder while
//! attempts remain, else a dead copy (`failed`). A permanent failure, and a task refused as it
//! arrived (expired, undecodable, a foreign type, a bad header), become a dead copy at once.
//! A run that the worker's shutdown interrupted goes back to its work queue with the same
//! attempt, up to the type's `max_interruptions`, after which it counts as a failed attempt.
//! The delivery shell publishes the copy with a confirm and acks only after it.

use std::time::Duration;

use crate::retry::{self, Decision, TaskPolicy};
use crate::topology::Routes;
use crate::wire::Reason;
use crate::wire::copies::{Deathbed, Original, Outgoing};
use crate::wire::decode::Rejection;

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RunResult {
    /// The handler returned `Ok`, with its result's JSON when a caller waits for it.
    Success(Option<Vec<u8>>),
    /// A retryable error, a panic or the time limit, with its text.
    Retryable(String),
    /// A permanent error, with its text.
    Permanent(String),
    /// The worker stopped before the handler finished (its grace period ran out).
    Interrupted,
    /// The task was cancelled while it ran ([`crate::control`]).
    Cancelled,
}

/// What to do with the delivery.
#[derive(Debug, Clone)]
pub(crate) enum Action {
    /// Ack it: the outcome needs nothing else in the broker.
    Ack,
    /// It succeeded and a caller waits: publish `answer`, then ack.
    Answer { answer: Outgoing },
    /// It succeeded and its chain goes on: publish `next` (the next step, this value as its
    /// payload), then ack. `unroutable` is what to do instead when the broker has no queue
    /// for the next step: this task goes dead, carrying the chain, to be replayed once the
    /// topology has the step.
    Next {
        next: Outgoing,
        unroutable: Box<Action>,
    },
    /// Publish `copy` into the ladder to run again after `delay`, then ack.
    Retry {
        delay: Duration,
        error: String,
        copy: Outgoing,
    },
    /// Publish `copy` to the dead queue, then `answer` to a waiting caller, then ack.
    Dead {
        why: Rejection,
        copy: Outgoing,
        answer: Option<Box<Outgoing>>,
    },
    /// Publish `copy` (same attempt, one more interruption) to the work queue, then ack.
    Interrupted { copy: Outgoing },
    /// A broadcast run this worker's shutdown interrupted: ack it and publish nothing. The
    /// worker's own queue goes with its connection, and a broadcast reaches the workers
    /// running when it is delivered, which this one no longer is.
    Abandon,
}

/// Everything the decision needs besides the task: its type's policy, the namespace's routes,
/// who decides and when, and a random number in `[0, 1)` for the backoff's jitter.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Judge<'a> {
    pub(crate) policy: &'a TaskPolicy,
    pub(crate) routes: &'a Routes,
    pub(crate) max_delay: Duration,
    pub(crate) worker: &'a str,
    /// Broadcast types: the key that reaches this worker's own queue only ([`crate::topology::OwnQueue::retry_key`]);
    /// `None` for the work queue's types.
    pub(crate) own_key: Option<&'a str>,
    /// Largest result a waiting caller is sent (`max_payload_bytes`).
    pub(crate) max_result_bytes: usize,
    pub(crate) now_ms: u64,
    pub(crate) unit_random: f64,
}

impl Judge<'_> {
    /// Why `original` must not run: its expiry passed before it started.
    pub(crate) fn expired(&self, original: &Original<'_>) -> Option<Rejection> {
        let at = original.env.expires_at_ms?;
        (self.now_ms > at).then(|| {
            Rejection::new(
                Reason::Expired,
                format!(
                    "not started before its expiry ({} ms past it)",
                    self.now_ms - at
                ),
            )
        })
    }

    /// The action after `original` ran with `result`.
    pub(crate) fn after_run(&self, original: &Original<'_>, result: RunResult) -> Action {
        let error = match result {
            RunResult::Success(value) => return self.succeeded(original, value),
            RunResult::Permanent(error) => {
                return self.refuse(original, Rejection::new(Reason::Permanent, error));
            }
            RunResult::Interrupted => return self.interrupted(original),
            RunResult::Cancelled => {
                let why = Rejection::new(Reason::Cancelled, "cancelled while running");
                return self.refuse(original, why);
            }
            RunResult::Retryable(error) => error,
        };
        let attempt = original.env.attempt;
        match retry::decide(self.policy, attempt, self.max_delay, self.unit_random) {
            Decision::RetryAfter(delay) => Action::Retry {
                // A broadcast retries on this worker only: the others ran it already.
                copy: original.retry(
                    self.routes
                        .delayed(self.own_key.unwrap_or(&original.env.task), delay.as_secs()),
                ),
                delay,
                error,
            },
            Decision::DeadLetter => {
                let max = self.policy.max_attempts;
                let error = format!("attempt {attempt}/{max}: {error}");
                self.refuse(original, Rejection::new(Reason::Failed, error))
            }
        }
    }

    /// The action after a successful run: an ack, or, when a caller waits, its answer
    /// first. A result over `max_result_bytes` fails the task for good (dead, `permanent`),
    /// saying so: it would fail the same way on every retry.
    fn succeeded(&self, original: &Original<'_>, value: Option<Vec<u8>>) -> Action {
        let chained = !original.env.chain.is_empty();
        if original.env.reply_to.is_none() && !chained {
            return Action::Ack;
        }
        let value = value.unwrap_or_else(|| b"null".to_vec());
        if value.len() > self.max_result_bytes {
            let error = format!(
                "its result is {} bytes, over max_payload_bytes ({}); return an id or a \
                 location instead of the data",
                value.len(),
                self.max_result_bytes
            );
            return self.refuse(original, Rejection::new(Reason::Permanent, error));
        }
        if let Some(step) = original.env.chain.first() {
            let why = Rejection::new(
                Reason::Permanent,
                format!(
                    "the chain's next step `{step}` could not be enqueued (no queue for it, or \
                     the broker refused it on every attempt): fix that, then replay this task, \
                     which runs it again"
                ),
            );
            let unroutable = Box::new(self.refuse(original, why));
            if let Some(next) = original.next_step(self.routes.work(step), value) {
                return Action::Next { next, unroutable };
            }
            return Action::Ack;
        }
        match crate::wire::answer::succeeded(original.env, value) {
            Some(answer) => Action::Answer { answer },
            None => Action::Ack,
        }
    }

    /// The action for a run the worker's shutdown interrupted: back to the work queue with
    /// the same attempt while interruptions remain, else a failed attempt like any other.
    fn interrupted(&self, original: &Original<'_>) -> Action {
        if self.own_key.is_some() {
            return Action::Abandon;
        }
        let done = original.env.interruptions;
        if done < self.policy.max_interruptions {
            return Action::Interrupted {
                copy: original.interrupted(self.routes.work(&original.env.task)),
            };
        }
        let error = format!(
            "interrupted by a worker shutdown {} times (max_interruptions = {}): it runs \
             longer than the workers' grace period; raise the grace or split the task",
            done + 1,
            self.policy.max_interruptions
        );
        self.after_run(original, RunResult::Retryable(error))
    }

    /// The action for a task that goes dead for `why`.
    pub(crate) fn refuse(&self, original: &Original<'_>, why: Rejection) -> Action {
        let bed = Deathbed {
            worker: self.worker,
            at_ms: self.now_ms,
        };
        let copy = original.dead(self.routes.dead(&original.env.task), &why, bed);
        let answer = crate::wire::answer::dead(original.env, &why).map(Box::new);
        Action::Dead { why, copy, answer }
    }
}

/// The refusal of a delivery that the broker has counted `delivered` times before without an
/// outcome (a quorum queue's `x-delivery-count`: each time its worker died, or its channel or
/// connection was lost, while it held the task), once that reaches the type's
/// `delivery_limit`. Refused here rather than run once more: if that run crashed too, the
/// broker would dead-letter the task by itself, and no worker would free its unique key,
/// answer its caller or count it.
pub(crate) fn delivery_limit_reached(delivered: Option<i64>, limit: u32) -> Option<Rejection> {
    let delivered = delivered?;
    (delivered >= i64::from(limit)).then(|| {
        Rejection::new(
            Reason::DeliveryLimit,
            format!(
                "delivered {delivered} times without an outcome (each time its worker died or \
                 lost its connection while holding it); its delivery_limit is {limit}, so it \
                 is not run again"
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use lapin::BasicProperties;

    use super::*;
    use crate::topology::routes::tests::routes;
    use crate::wire::{Envelope, header};

    fn policy(max_attempts: u32) -> TaskPolicy {
        let mut p = TaskPolicy {
            max_attempts,
            ..TaskPolicy::default()
        };
        p.backoff.jitter = 0.0;
        p.backoff.initial = Duration::from_secs(5);
        p
    }

    fn judge<'a>(policy: &'a TaskPolicy, routes: &'a Routes) -> Judge<'a> {
        Judge {
            policy,
            routes,
            max_delay: Duration::from_secs(60),
            worker: "warren worker h:1",
            own_key: None,
            max_result_bytes: 16,
            now_ms: 1_000_000,
            unit_random: 0.5,
        }
    }

    fn envelope(attempt: u32) -> Envelope {
        let mut env = Envelope::new("id-1".into(), "job");
        env.attempt = attempt;
        env
    }

    fn reason_of(copy: &Outgoing) -> Option<String> {
        crate::wire::decode::header_str(&copy.properties, header::REASON)
    }

    #[test]
    fn a_success_is_acked_and_nothing_is_published() {
        let (p, r, env, props) = (policy(3), routes(), envelope(1), BasicProperties::default());
        let original = Original {
            env: &env,
            props: &props,
            body: b"{}",
        };
        assert!(matches!(
            judge(&p, &r).after_run(&original, RunResult::Success(None)),
            Action::Ack
        ));
    }

    #[test]
    fn a_waited_success_answers_its_value_and_one_too_large_goes_dead_saying_so() {
        let (p, r, props) = (policy(3), routes(), BasicProperties::default());
        let mut env = envelope(1);
        env.reply_to = Some("amq.rabbitmq.reply-to.x".into());
        let original = Original {
            env: &env,
            props: &props,
            body: b"{}",
        };
        let j = judge(&p, &r);
        let action = j.after_run(&original, RunResult::Success(Some(b"42".to_vec())));
        let Action::Answer { answer } = action else {
            panic!("expected an answer, got {action:?}")
        };
        assert_eq!(answer.body, b"42");
        assert_eq!(answer.route.routing_key, "amq.rabbitmq.reply-to.x");
        // A handler that returned nothing answers `null`.
        let action = j.after_run(&original, RunResult::Success(None));
        assert!(matches!(&action, Action::Answer { answer } if answer.body == b"null"));
        // 17 bytes > 16: dead as permanent, and the caller is told.
        let big = b"\"0123456789abcde\"".to_vec();
        let action = j.after_run(&original, RunResult::Success(Some(big)));
        let Action::Dead { why, answer, .. } = action else {
            panic!("expected a dead copy, got {action:?}")
        };
        assert_eq!(why.reason, Reason::Permanent);
        assert!(
            why.error.contains("17 bytes, over max_payload_bytes (16)"),
            "{}",
            why.error
        );
        let answer = answer.expect("the caller hears of it");
        assert!(matches!(
            crate::wire::answer::read(&answer.properties, &answer.body),
            Some(crate::wire::answer::Answer::Dead { reason, .. }) if reason == "permanent"
        ));
    }

    #[test]
    fn a_chained_success_enqueues_the_next_step_with_the_value_and_the_rest() {
        let (p, r, props) = (policy(3), routes(), BasicProperties::default());
        let mut env = envelope(2);
        env.chain = vec!["b".into(), "c".into()];
        env.reply_to = Some("amq.rabbitmq.reply-to.x".into());
        env.expires_at_ms = Some(2_000_000);
        let original = Original {
            env: &env,
            props: &props,
            body: b"{}",
        };
        let action = judge(&p, &r).after_run(&original, RunResult::Success(Some(b"7".to_vec())));
        let Action::Next { next, unroutable } = action else {
            panic!("expected the next step, got {action:?}")
        };
        assert_eq!(next.route, r.work("b"));
        assert_eq!((next.task.as_str(), next.id.as_str()), ("b", "id-1"));
        assert_eq!(next.body, b"7", "the value is the next step's payload");
        let h = |k| crate::wire::decode::header_str(&next.properties, k);
        assert_eq!(h(header::CHAIN).as_deref(), Some("c"));
        assert_eq!(
            crate::wire::decode::header_int(&next.properties, header::ATTEMPT),
            None,
            "attempt 1"
        );
        assert_eq!(
            crate::wire::decode::header_int(&next.properties, header::EXPIRES_AT),
            None
        );
        assert_eq!(
            next.properties.reply_to().as_ref().map(|s| s.as_str()),
            Some("amq.rabbitmq.reply-to.x"),
            "the last step answers the caller"
        );
        // With no queue for the next step, this one goes dead carrying the whole chain.
        let Action::Dead { copy, why, .. } = *unroutable else {
            panic!("expected a dead copy")
        };
        assert!(
            why.error.contains("next step `b` could not be enqueued"),
            "{}",
            why.error
        );
        let chain = crate::wire::decode::header_str(&copy.properties, header::CHAIN);
        assert_eq!(chain.as_deref(), Some("b,c"));
    }

    #[test]
    fn a_retry_does_not_answer_and_keeps_the_reply_address() {
        let (p, r, props) = (policy(3), routes(), BasicProperties::default());
        let mut env = envelope(1);
        env.reply_to = Some("amq.rabbitmq.reply-to.x".into());
        let original = Original {
            env: &env,
            props: &props,
            body: b"{}",
        };
        let action = judge(&p, &r).after_run(&original, RunResult::Retryable("boom".into()));
        let Action::Retry { copy, .. } = action else {
            panic!("expected a retry, got {action:?}")
        };
        assert_eq!(
            copy.properties.reply_to().as_ref().map(|s| s.as_str()),
            Some("amq.rabbitmq.reply-to.x")
        );
    }

    #[test]
    fn a_retryable_failure_goes_into_the_ladder_with_the_next_attempt() {
        let (p, r, env, props) = (policy(3), routes(), envelope(1), BasicProperties::default());
        let original = Original {
            env: &env,
            props: &props,
            body: b"{}",
        };
        let action = judge(&p, &r).after_run(&original, RunResult::Retryable("boom".into()));
        let Action::Retry { delay, error, copy } = action else {
            panic!("expected a retry, got {action:?}")
        };
        assert_eq!((delay, error.as_str()), (Duration::from_secs(5), "boom"));
        assert_eq!(copy.route, r.delayed("job", 5));
        assert_eq!(
            crate::wire::decode::header_int(&copy.properties, header::ATTEMPT),
            Some(2)
        );
    }

    #[test]
    fn a_broadcast_retries_on_this_worker_only_and_an_interrupted_one_is_abandoned() {
        let (p, r, env, props) = (policy(3), routes(), envelope(1), BasicProperties::default());
        let original = Original {
            env: &env,
            props: &props,
            body: b"{}",
        };
        let mut j = judge(&p, &r);
        j.own_key = Some("job@h:1");
        let action = j.after_run(&original, RunResult::Retryable("boom".into()));
        let Action::Retry { copy, .. } = action else {
            panic!("expected a retry, got {action:?}")
        };
        assert_eq!(copy.route, r.delayed("job@h:1", 5));
        assert_eq!(copy.route.routing_key, "0.0.0.1.0.1.job@h:1");
        assert!(matches!(
            j.after_run(&original, RunResult::Interrupted),
            Action::Abandon
        ));
        // Its dead copy goes to the type's one dead queue, naming the worker.
        let action = j.after_run(&original, RunResult::Permanent("bad".into()));
        let Action::Dead { copy, .. } = action else {
            panic!("expected a dead copy, got {action:?}")
        };
        assert_eq!(copy.route, r.dead("job"));
        assert_eq!(
            crate::wire::decode::header_str(&copy.properties, header::WORKER).as_deref(),
            Some("warren worker h:1")
        );
    }

    #[test]
    fn the_last_attempt_goes_dead_as_failed_with_its_count() {
        let (p, r, env, props) = (policy(3), routes(), envelope(3), BasicProperties::default());
        let original = Original {
            env: &env,
            props: &props,
            body: b"{}",
        };
        let action = judge(&p, &r).after_run(&original, RunResult::Retryable("boom".into()));
        let Action::Dead { why, copy, .. } = action else {
            panic!("expected a dead copy, got {action:?}")
        };
        assert_eq!(why.reason, Reason::Failed);
        assert_eq!(why.error, "attempt 3/3: boom");
        assert_eq!(copy.route, r.dead("job"));
        assert_eq!(reason_of(&copy).as_deref(), Some("failed"));
    }

    #[test]
    fn a_permanent_failure_goes_dead_at_once() {
        let (p, r, env, props) = (policy(9), routes(), envelope(1), BasicProperties::default());
        let original = Original {
            env: &env,
            props: &props,
            body: b"{}",
        };
        let action = judge(&p, &r).after_run(&original, RunResult::Permanent("bad".into()));
        let Action::Dead { why, copy, .. } = action else {
            panic!("expected a dead copy, got {action:?}")
        };
        assert_eq!((why.reason, why.error.as_str()), (Reason::Permanent, "bad"));
        assert_eq!(reason_of(&copy).as_deref(), Some("permanent"));
        assert_eq!(
            crate::wire::decode::header_int(&copy.properties, header::DEAD_AT),
            Some(1_000_000)
        );
    }

    #[test]
    fn a_task_past_its_expiry_is_refused_and_one_before_it_is_not() {
        let (p, r, props) = (policy(3), routes(), BasicProperties::default());
        let mut env = envelope(1);
        env.expires_at_ms = Some(999_000);
        let original = Original {
            env: &env,
            props: &props,
            body: b"{}",
        };
        let why = judge(&p, &r).expired(&original).expect("expired");
        assert_eq!(why.reason, Reason::Expired);
        assert!(why.error.contains("1000 ms past it"), "{}", why.error);
        env.expires_at_ms = Some(1_000_000);
        let original = Original {
            env: &env,
            props: &props,
            body: b"{}",
        };
        assert!(judge(&p, &r).expired(&original).is_none());
    }

    #[test]
    fn an_interrupted_run_goes_back_to_its_work_queue_with_the_same_attempt() {
        let (p, r, props) = (policy(1), routes(), BasicProperties::default());
        let env = envelope(1);
        let original = Original {
            env: &env,
            props: &props,
            body: b"{}",
        };
        let action = judge(&p, &r).after_run(&original, RunResult::Interrupted);
        let Action::Interrupted { copy } = action else {
            panic!("expected the work queue, got {action:?}")
        };
        assert_eq!(copy.route, r.work("job"));
        let int = |k| crate::wire::decode::header_int(&copy.properties, k);
        assert_eq!(int(header::ATTEMPT), None, "still attempt 1");
        assert_eq!(int(header::INTERRUPTED), Some(1));
        assert_eq!(copy.body, b"{}");
    }

    #[test]
    fn past_max_interruptions_an_interruption_uses_up_an_attempt() {
        let (mut p, r, props) = (policy(2), routes(), BasicProperties::default());
        p.max_interruptions = 3;
        let mut env = envelope(1);
        env.interruptions = 3;
        let original = Original {
            env: &env,
            props: &props,
            body: b"{}",
        };
        let action = judge(&p, &r).after_run(&original, RunResult::Interrupted);
        let Action::Retry { error, copy, .. } = action else {
            panic!("expected a retry, got {action:?}")
        };
        assert!(error.contains("4 times (max_interruptions = 3)"), "{error}");
        assert_eq!(
            crate::wire::decode::header_int(&copy.properties, header::ATTEMPT),
            Some(2)
        );
        // On the last attempt it ends dead as failed, saying why.
        env.attempt = 2;
        let original = Original {
            env: &env,
            props: &props,
            body: b"{}",
        };
        let action = judge(&p, &r).after_run(&original, RunResult::Interrupted);
        let Action::Dead { why, .. } = action else {
            panic!("expected a dead copy, got {action:?}")
        };
        assert_eq!(why.reason, Reason::Failed);
        assert!(why.error.contains("grace period"), "{}", why.error);
    }

    #[test]
    fn a_delivery_counted_up_to_the_limit_is_refused_and_none_before() {
        assert!(
            delivery_limit_reached(None, 1).is_none(),
            "a first delivery"
        );
        assert!(delivery_limit_reached(Some(9), 10).is_none());
        let why = delivery_limit_reached(Some(10), 10).expect("at the limit");
        assert_eq!(why.reason, Reason::DeliveryLimit);
        assert!(why.error.contains("delivered 10 times"), "{}", why.error);
        assert!(delivery_limit_reached(Some(12), 10).is_some());
    }
}
