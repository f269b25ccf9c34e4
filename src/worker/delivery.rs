//! One delivery, start to end: read it, run it, settle it. The shell around the pure parts:
//! [`crate::wire::decode`] reads the envelope (once), [`super::outcome`] decides, this module
//! runs the handler and [`super::settle`] publishes the outcome's copy and acks.
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
use super::acks::Settler;
use super::context::TaskContext;
use super::handler::{HandlerFuture, Registered};
use super::outcome::{Action, Judge, RunResult, delivery_limit_reached};
use super::settle::{Held, settle};
use crate::task::TaskError;
use crate::trace::TraceParent;
use crate::wire::decode::{Rejection, fallback_envelope, header_int, read_envelope};
use crate::wire::{Envelope, Reason, unix_ms};

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
        attempt: if refused.is_none() { env.attempt } else { 0 },
    };
    let refused = refused.or_else(|| {
        shared
            .control
            .is_cancelled(&task.name, &env.id, || env.replayed_at_ms)
            .then(|| Rejection::new(Reason::Cancelled, "cancelled before it started"))
    });
    let refused = refused.or_else(|| {
        delivery_limit_reached(
            header_int(&held.delivery.properties, "x-delivery-count"),
            task.policy.delivery_limit,
        )
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
    let Ok(env) = read_envelope(&task.name, &delivery.properties, delivery.redelivered) else {
        return;
    };
    let held = Held {
        delivery,
        settler,
        unique: None,
        attempt: env.attempt,
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
    if shared
        .control
        .is_cancelled(&task.name, &env.id, || env.replayed_at_ms)
    {
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
