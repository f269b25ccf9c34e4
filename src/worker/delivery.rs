//! One delivery, start to end: read it, run it, settle it. The shell around the pure parts:
//! [`crate::wire::decode`] reads the envelope, [`super::outcome`] decides, this module runs
//! the handler, publishes the outcome's copy and acks.
//!
//! Order: read the envelope (bad headers or a foreign task type go dead at once); expired
//! tasks go dead unrun; undecodable bodies go dead unrun; then the handler runs under the
//! time limit, and its outcome becomes an ack, a confirmed retry through the delay ladder, or
//! a confirmed dead letter. If the copy cannot be published the delivery is requeued (nack),
//! never acked: a crash or broker failure can duplicate a task, never lose it.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::FutureExt;
use lapin::message::Delivery;
use tracing::Instrument;

use super::Shared;
use super::acks::{Settle, Settler};
use super::context::TaskContext;
use super::handler::{HandlerFuture, Registered};
use super::outcome::{Action, Judge, RunResult};
use super::telemetry::Outcome;
use crate::task::TaskError;
use crate::trace::TraceParent;
use crate::wire::copies::{Original, Outgoing};
use crate::wire::decode::{Rejection, fallback_envelope, read_envelope};
use crate::wire::{Envelope, Reason, unix_ms};

/// A delivery and where to report its settlement.
struct Held {
    delivery: Delivery,
    settler: Settler,
    /// A unique task's key queue, released when its outcome is final.
    unique: Option<String>,
}

impl Held {
    fn ack(&self) {
        self.settler.settle(Settle::Ack(self.delivery.delivery_tag));
    }

    fn requeue(&self) {
        self.settler
            .settle(Settle::Requeue(self.delivery.delivery_tag));
    }

    fn original<'a>(&'a self, env: &'a Envelope) -> Original<'a> {
        Original {
            env,
            props: &self.delivery.properties,
            body: &self.delivery.data,
        }
    }
}

/// Processes one delivery to its end. Holds `_hold` for its whole life: a concurrency
/// permit, and a limited type's run token.
pub(super) async fn process<H: Send + 'static>(
    shared: Arc<Shared>,
    task: Arc<Registered>,
    delivery: Delivery,
    _hold: H,
    settler: Settler,
) {
    let read = read_envelope(&task.name, &delivery.properties, delivery.redelivered);
    let (env, refused) = match read {
        Ok(env) => (env, None),
        // Without a readable envelope it still goes dead under the queue's task name.
        Err(why) => (
            fallback_envelope(&task.name, &delivery.properties),
            Some(why),
        ),
    };
    // A refused task releases its key too. Only a key queue of this namespace and type: the
    // header names a queue the worker will read.
    let unique = env.unique.clone().filter(|q| {
        q.starts_with(&format!(
            "{}.{}.unique.",
            shared.routes.names().namespace(),
            task.name
        ))
    });
    let held = Held {
        delivery,
        settler,
        unique,
    };
    let refused = refused.or_else(|| {
        let since = || replayed_ms(&held.delivery.properties);
        shared
            .control
            .is_cancelled(&task.name, &env.id, since)
            .then(|| Rejection::new(Reason::Cancelled, "cancelled before it started"))
    });
    if let Some(why) = refused {
        let action = judge(&shared, &task).refuse(&held.original(&env), why);
        settle(&shared, &task, &held, action).await;
        return;
    }
    // This run is a child of the producer's context (or the root of a new trace).
    let parent = env.traceparent.as_deref().and_then(TraceParent::parse);
    let trace = parent
        .as_ref()
        .map_or_else(TraceParent::root, TraceParent::child);
    let span = task_span(&env, &trace, parent.as_ref());
    run_and_settle(&shared, &task, &held, &env, trace.to_string())
        .instrument(span)
        .await
}

/// Hands back a delivery that was prefetched but never started, at shutdown: a fresh copy with
/// the same attempt to its work queue, confirmed, then the ack. A requeue (what closing the
/// channel does) would count as a crash on both queue types. Anything that fails leaves the
/// delivery unacked, to be requeued by the broker as before.
pub(super) async fn hand_back(
    shared: Arc<Shared>,
    task: Arc<Registered>,
    delivery: Delivery,
    settler: Settler,
) {
    let held = Held {
        delivery,
        settler,
        unique: None,
    };
    let props = &held.delivery.properties;
    let Ok(env) = read_envelope(&task.name, props, held.delivery.redelivered) else {
        return;
    };
    let copy = held
        .original(&env)
        .unstarted(shared.routes.work(&task.name));
    if shared.producer.publish(copy).await.is_ok() {
        held.ack();
    }
}

/// The task span. Fields are set at creation, as Display: a text subscriber formats a span's
/// fields when it is created and again on every `record`, for every task (and a `&str` value
/// would be Debug-formatted, escaped character by character). Its own target, so that
/// `RUST_LOG=...,warren::task=off` drops it where throughput matters more than task context
/// in the logs (`docs/performance.md`).
fn task_span(env: &Envelope, trace: &TraceParent, parent: Option<&TraceParent>) -> tracing::Span {
    tracing::info_span!(
        target: "warren::task",
        "task",
        task.kind = %env.task,
        task.id = %env.id,
        attempt = env.attempt,
        trace_id = %trace.trace_id,
        parent_span_id = parent.map(|p| tracing::field::display(&p.span_id)),
        outcome = tracing::field::Empty,
    )
}

async fn run_and_settle(
    shared: &Shared,
    task: &Registered,
    held: &Held,
    env: &Envelope,
    trace: String,
) {
    let original = held.original(env);
    // The clock and the random source are read only when a decision needs them: the common
    // path (no expiry, success) stays as cheap as an ack.
    if env.expires_at_ms.is_some() {
        let judge = judge(shared, task);
        if let Some(why) = judge.expired(&original) {
            settle(shared, task, held, judge.refuse(&original, why)).await;
            return;
        }
    }
    // Registered before the handler starts, then checked once more: a cancel that came in
    // between stops it at once instead of being missed.
    let run_guard = shared.control.run_started(&task.name, &env.id);
    let replayed = || replayed_ms(&held.delivery.properties);
    if shared.control.is_cancelled(&task.name, &env.id, replayed) {
        run_guard.token.cancel();
    }
    let mut ctx = context(shared, task, env, trace.clone());
    ctx.cancel = run_guard.token.clone();
    let future = match (task.handler)(&held.delivery.data, ctx) {
        Ok(f) => f,
        Err(decode_error) => {
            let why = Rejection::new(Reason::Undecodable, decode_error);
            let action = judge(shared, task).refuse(&original, why);
            settle(shared, task, held, action).await;
            return;
        }
    };
    let (result, took) = run(task, future, trace, &run_guard.token, &shared.hard_stop).await;
    drop(run_guard);
    let action = match result {
        // The common case decides without the judge (no clock, no random number).
        RunResult::Success(_) if env.reply_to.is_none() && env.chain.is_empty() => Action::Ack,
        ran => judge(shared, task).after_run(&original, ran),
    };
    if settle(shared, task, held, action).await {
        finished(took);
    }
}

/// When this copy was replayed from its dead queue, if it was: a cancel from before that
/// does not apply to it.
fn replayed_ms(props: &lapin::BasicProperties) -> Option<u64> {
    crate::wire::decode::header_int(props, crate::wire::header::REPLAYED_AT)
        .map(|at| at.max(0) as u64)
}

/// The decision's inputs as of now.
fn judge<'a>(shared: &'a Shared, task: &'a Registered) -> Judge<'a> {
    Judge {
        policy: &task.policy,
        routes: &shared.routes,
        max_delay: shared.max_delay,
        worker: &shared.worker_name,
        own_key: task.own_key(),
        max_result_bytes: shared.max_result_bytes,
        now_ms: unix_ms(SystemTime::now()),
        unit_random: rand::random::<f64>(),
    }
}

fn context(shared: &Shared, task: &Registered, env: &Envelope, trace: String) -> TaskContext {
    TaskContext {
        task: env.task.clone(),
        id: env.id.clone(),
        attempt: env.attempt,
        max_attempts: task.policy.max_attempts,
        enqueued_at: UNIX_EPOCH + Duration::from_millis(env.enqueued_at_ms),
        correlation_id: env.correlation_id.clone(),
        awaited: env.reply_to.is_some() || !env.chain.is_empty(),
        traceparent: trace,
        // Replaced by the run's own token, which a cancel or the hard stop fires.
        cancel: shared.hard_stop.clone(),
    }
}

/// The one line per finished run, inside the task span (task, id, attempt, outcome): what a
/// worker did, at `info` under the span's own target, so `RUST_LOG=...,warren::task=warn`
/// keeps only failures (the retry and dead-letter lines are warnings). Logged when the
/// outcome is settled (acked, or its copy confirmed), not when the handler returned.
fn finished(took: Duration) {
    tracing::info!(target: "warren::task", took_ms = took.as_millis() as u64, "finished");
}

/// How long a handler has to return by itself once the worker's grace period is over and its
/// [`TaskContext::cancel`] fired, before its run is abandoned as interrupted.
const INTERRUPT_WAIT: Duration = Duration::from_secs(1);

/// Runs the handler's future under the type's time limit, inside its trace context; a panic
/// and the time limit count as retryable failures. When `hard_stop` fires (the grace period
/// is over), the handler gets [`INTERRUPT_WAIT`] to finish, then its future is dropped; any
/// run that did not succeed by then is [`RunResult::Interrupted`], whether the handler
/// ignored the cancel or returned an error because of it. Returns the result and how long it
/// ran.
async fn run(
    task: &Registered,
    future: HandlerFuture,
    trace: String,
    cancel: &tokio_util::sync::CancellationToken,
    hard_stop: &tokio_util::sync::CancellationToken,
) -> (RunResult, Duration) {
    task.metrics.started();
    let started = Instant::now();
    let limit = task.policy.time_limit;
    let guarded = crate::trace::scope(trace, std::panic::AssertUnwindSafe(future).catch_unwind());
    let limited = tokio::time::timeout(limit, guarded);
    tokio::pin!(limited);
    let ended = tokio::select! {
        ended = &mut limited => Some(ended),
        _ = cancel.cancelled() => tokio::time::timeout(INTERRUPT_WAIT, &mut limited).await.ok(),
    };
    let result = match ended {
        Some(Ok(Ok(Ok(value)))) => RunResult::Success(value),
        _ if hard_stop.is_cancelled() => RunResult::Interrupted,
        _ if cancel.is_cancelled() => RunResult::Cancelled,
        None => RunResult::Interrupted,
        Some(Ok(Ok(Err(TaskError::Retryable(e))))) => RunResult::Retryable(error_chain(&*e)),
        Some(Ok(Ok(Err(TaskError::Permanent(e))))) => RunResult::Permanent(error_chain(&*e)),
        Some(Ok(Err(panic))) => {
            RunResult::Retryable(format!("handler panicked: {}", panic_text(&panic)))
        }
        Some(Err(_)) => RunResult::Retryable(format!(
            "time limit of {} exceeded",
            crate::duration::duration_text(limit)
        )),
    };
    let took = started.elapsed();
    task.metrics.finished(took);
    (result, took)
}

/// Carries out `action`: an ack, or the copy published with a confirm and then an ack.
/// Returns whether the outcome is in the broker (false: the delivery was requeued instead).
async fn settle(shared: &Shared, task: &Registered, held: &Held, action: Action) -> bool {
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
                    "could not answer the caller waiting for this task; its outcome stands");
            }
        }
        task.metrics.outcome(outcome);
        held.ack();
        true
    })
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
/// is logged; the key is then held until released by hand (see the README).
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
    let props = &held.delivery.properties;
    crate::wire::decode::read_envelope(&task.name, props, held.delivery.redelivered)
        .is_ok_and(|env| env.attempt >= task.policy.max_attempts)
}

fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string())
}
