//! Settling one delivery: carrying out the outcome's [`Action`] so that the ack goes out only
//! after the outcome (a retry, a dead letter, a chain's next step) is confirmed by the broker.
//! A copy that cannot be published requeues the delivery instead: a duplicate, never a loss.

use std::time::Duration;

use lapin::message::Delivery;

use super::Shared;
use super::acks::Settler;
use super::handler::Registered;
use super::ledger::Settle;
use super::outcome::Action;
use super::telemetry::Outcome;
use crate::wire::Envelope;
use crate::wire::Reason;
use crate::wire::copies::{Original, Outgoing};
use crate::wire::decode::Rejection;

/// A delivery and where to report its settlement, with what the cold paths need of its
/// envelope (read once, in [`process`]).
pub(super) struct Held {
    pub(super) delivery: Delivery,
    pub(super) settler: Settler,
    /// A unique task's key queue, released when its outcome is final.
    pub(super) unique: Option<String>,
    /// Its attempt (crashed deliveries counted); 0 when its envelope could not be read.
    pub(super) attempt: u32,
}

impl Held {
    pub(super) fn ack(&self) {
        self.settler.settle(Settle::Ack(self.delivery.delivery_tag));
    }

    fn requeue(&self) {
        self.settler
            .settle(Settle::Requeue(self.delivery.delivery_tag));
    }

    pub(super) fn original<'a>(&'a self, env: &'a Envelope) -> Original<'a> {
        Original {
            env,
            props: &self.delivery.properties,
            body: &self.delivery.data,
        }
    }
}

/// Carries out `action`: an ack, or the copy published with a confirm and then an ack.
/// Returns whether the outcome is in the broker (false: the delivery was requeued instead).
pub(super) async fn settle(
    shared: &Shared,
    task: &Registered,
    held: &Held,
    action: Action,
) -> bool {
    let span = tracing::Span::current();
    match action {
        Action::Ack => {
            span.record("outcome", "success");
            if held.unique.is_some() {
                release_key(shared, held).await;
            }
            held.ack();
            task.metrics.outcome(Outcome::Success);
            true
        }
        Action::Next { next, unroutable } => {
            span.record("outcome", "success");
            continue_chain(shared, task, held, next, *unroutable).await
        }
        Action::Answer { answer } => {
            span.record("outcome", "success");
            publish_then_ack(shared, task, held, None, Some(answer), Outcome::Success).await
        }
        Action::Retry { delay, error, copy } => {
            span.record("outcome", "retry");
            tracing::warn!(error = %error, retry_in = %crate::duration::duration_text(delay), "attempt failed; retrying");
            publish_then_ack(shared, task, held, Some(copy), None, Outcome::Retry).await
        }
        Action::Dead { why, copy, answer } => {
            span.record("outcome", "dead");
            log_death(&copy, &why);
            let outcome = Outcome::Dead(why.reason);
            publish_then_ack(shared, task, held, Some(copy), answer.map(|a| *a), outcome).await
        }
        Action::Interrupted { copy } => {
            span.record("outcome", "interrupted");
            let interruptions =
                crate::wire::decode::header_int(&copy.properties, crate::wire::header::INTERRUPTED);
            tracing::warn!(
                interruptions,
                "the worker stopped before the task finished; back to its queue, same attempt"
            );
            publish_then_ack(shared, task, held, Some(copy), None, Outcome::Interrupted).await
        }
        Action::Abandon => {
            span.record("outcome", "interrupted");
            tracing::warn!(
                "the worker stopped before this broadcast finished here; it will not run on \
                 this worker again (the other workers run their own copies)"
            );
            task.metrics.outcome(Outcome::Interrupted);
            held.ack();
            true
        }
    }
}

fn log_death(copy: &Outgoing, why: &Rejection) {
    match why.reason {
        Reason::Permanent => {
            tracing::warn!(error = %why.error, "permanent failure; dead-lettering")
        }
        Reason::Failed => tracing::warn!(error = %why.error, "attempts exhausted; dead-lettering"),
        r if r.refused_unrun() => tracing::warn!(task.kind = %copy.task, task.id = %copy.id,
            reason = r.as_str(), error = %why.error, "dead-lettering without running"),
        _ => {}
    }
}

/// Publishes `copy` (retry, dead or interrupted) with a confirm, then `answer` to a waiting
/// caller, then acks. If the copy cannot be published the delivery is requeued instead: the
/// task's outcome must be in the broker before the ack. The answer is best effort: if it
/// cannot be published it is lost (logged) and the delivery acked all the same; requeueing
/// would run a finished task again, or loop on a reply queue that refuses. Returns whether
/// it acked.
///
/// Boxed: this cold path (a message, a confirm, a backoff timer) would otherwise be part of
/// every delivery's future, which tokio copies when it spawns one.
fn publish_then_ack<'a>(
    shared: &'a Shared,
    task: &'a Registered,
    held: &'a Held,
    copy: Option<Outgoing>,
    answer: Option<Outgoing>,
    outcome: Outcome,
) -> futures_util::future::BoxFuture<'a, bool> {
    Box::pin(async move {
        if let Some(copy) = copy {
            let (kind, id) = (copy.task.clone(), copy.id.clone());
            if let Err(err) = shared.producer.publish(copy).await {
                let what = match outcome {
                    Outcome::Retry => "retry",
                    Outcome::Interrupted => "interrupted",
                    _ => "dead",
                };
                tracing::error!(task.kind = %kind, task.id = %id, error = %err,
                    "could not publish the {what} copy; requeueing the delivery instead of acking it");
                // Don't spin: a broker that refuses now will likely refuse in the next ms.
                tokio::time::sleep(Duration::from_secs(1)).await;
                held.requeue();
                return false;
            }
        }
        if matches!(outcome, Outcome::Success | Outcome::Dead(_)) && held.unique.is_some() {
            release_key(shared, held).await;
        }
        if let Some(answer) = answer {
            let (kind, id) = (answer.task.clone(), answer.id.clone());
            if let Err(err) = shared.producer.publish(answer).await {
                tracing::error!(task.kind = %kind, task.id = %id, error = %err,
                    hint = answer_hint(&err),
                    "could not answer the caller waiting for this task; its outcome stands");
            }
        }
        task.metrics.outcome(outcome);
        held.ack();
        true
    })
}

/// What to do about an answer the broker refused: answers over direct reply-to go through
/// the default exchange, which a least-privilege namespace user may not write to.
fn answer_hint(err: &crate::error::Error) -> &'static str {
    match err {
        crate::error::Error::Amqp { source, .. }
            if crate::broker::is_soft(source, lapin::protocol::AMQPSoftError::ACCESSREFUSED) =>
        {
            "answers to a waiting caller go through the default exchange: grant this user write \
             on `amq.default` (docs/deploying.md, least privilege), or do not wait"
        }
        _ => {
            "the caller times out; its task's outcome is in the broker (`warren dlq list` if dead)"
        }
    }
}

/// Enqueues a chain's next step (confirmed), then acks; when the broker has no queue for
/// the step, carries out `unroutable` (this task dead, with the chain) instead; any other
/// failure requeues the delivery. Boxed like [`publish_then_ack`].
fn continue_chain<'a>(
    shared: &'a Shared,
    task: &'a Registered,
    held: &'a Held,
    next: Outgoing,
    unroutable: Action,
) -> futures_util::future::BoxFuture<'a, bool> {
    Box::pin(async move {
        let (step, id) = (next.task.clone(), next.id.clone());
        match shared.producer.publish(next).await {
            Ok(()) => {
                // A unique chain's key stays with its next step.
                task.metrics.outcome(Outcome::Success);
                held.ack();
                true
            }
            Err(crate::error::Error::Unroutable { .. }) => {
                settle(shared, task, held, unroutable).await
            }
            // Refused again and again (or the broker stayed away): requeueing for ever would
            // run the finished step for ever; on its last attempt it goes dead instead.
            Err(err) if last_attempt(task, held) => {
                tracing::error!(task.id = %id, next = %step, error = %err,
                    "could not enqueue the chain's next step on the last attempt; dead-lettering this step");
                settle(shared, task, held, unroutable).await
            }
            Err(err) => {
                tracing::error!(task.id = %id, next = %step, error = %err,
                    "could not enqueue the chain's next step; requeueing the delivery instead of acking it");
                tokio::time::sleep(Duration::from_secs(1)).await;
                held.requeue();
                false
            }
        }
    })
}

/// Releases the unique key of a task whose outcome is final, before its ack: a crash before
/// this point redelivers the task, which releases the key when it ends. A release that fails
/// is logged; the key is then held until freed by hand (`docs/tasks-in-rust.md`, "Unique tasks").
fn release_key<'a>(shared: &'a Shared, held: &'a Held) -> futures_util::future::BoxFuture<'a, ()> {
    Box::pin(async move {
        let Some(queue) = &held.unique else { return };
        let id = held
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.to_string());
        let id = id.unwrap_or_default();
        if let Err(e) = shared.producer.release_unique(queue, &id).await {
            tracing::error!(task.id = %id, queue = %queue, error = %e, "could not release the unique key");
        }
    })
}

/// True when this delivery is its task's last attempt (crashed deliveries counted, as the
/// envelope counts them).
fn last_attempt(task: &Registered, held: &Held) -> bool {
    held.attempt >= task.policy.max_attempts
}
