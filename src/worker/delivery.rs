//! One delivery: read it, run it, and settle it (ack only once the outcome is in the broker).
//!
//! Order: read the envelope (bad headers or a foreign task type go dead at once); expired
//! tasks go dead unrun; undecodable bodies go dead unrun; then the handler runs under the
//! time limit, and its outcome becomes an ack, a confirmed retry through the delay ladder, or
//! a confirmed dead letter. If the outcome cannot be published the delivery is requeued
//! (nack), never acked: a crash or broker failure can duplicate a task, never lose it.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::FutureExt;
use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable};
use tracing::Instrument;

use super::acks::{Settle, Settler};
use super::context::TaskContext;
use super::{Registered, Shared};
use crate::producer::Outgoing;
use crate::retry::{Decision, decide};
use crate::task::TaskError;
use crate::trace::TraceParent;
use crate::wire::{Envelope, header, new_task_id, unix_ms};

/// Longest `warren-error` text kept on a dead task (the tail of longer errors is kept).
pub const ERROR_TEXT_MAX: usize = 2048;

/// Dead-letter reasons, as written to `warren-reason`.
pub mod reason {
    /// Retryable failures used up `max_attempts`.
    pub const FAILED: &str = "failed";
    /// The handler returned a permanent error.
    pub const PERMANENT: &str = "permanent";
    /// `warren-expires-at` passed before a worker started it.
    pub const EXPIRED: &str = "expired";
    /// The body is not valid JSON for the task type.
    pub const UNDECODABLE: &str = "undecodable";
    /// The `type` property names another task than the queue's.
    pub const UNKNOWN_TASK: &str = "unknown_task";
    /// A Warren header has the wrong type or an impossible value.
    pub const INVALID_HEADER: &str = "invalid_header";
}

/// Why a delivery goes dead without running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejection {
    pub(crate) reason: &'static str,
    pub(crate) error: String,
}

fn reject(reason: &'static str, error: String) -> Rejection {
    Rejection { reason, error }
}

/// An AMQP integer of any width as i64; `None` for any other type.
fn as_int(v: &AMQPValue) -> Option<i64> {
    Some(match v {
        AMQPValue::ShortShortInt(i) => i64::from(*i),
        AMQPValue::ShortShortUInt(i) => i64::from(*i),
        AMQPValue::ShortInt(i) => i64::from(*i),
        AMQPValue::ShortUInt(i) => i64::from(*i),
        AMQPValue::LongInt(i) => i64::from(*i),
        AMQPValue::LongUInt(i) => i64::from(*i),
        AMQPValue::LongLongInt(i) => *i,
        _ => return None,
    })
}

/// Reads the envelope of a delivery from queue `task` (the queue's task name).
///
/// Defaults for a minimal foreign publisher: no `message_id` gets a fresh id, no `type` means
/// the queue's task, no attempt header means 1, no timestamp means now. Crashed deliveries
/// count as attempts: quorum queues report them in `x-delivery-count`; classic queues only
/// say `redelivered`, which counts as one.
pub(crate) fn read_envelope(
    task: &str,
    props: &BasicProperties,
    redelivered: bool,
) -> Result<Envelope, Rejection> {
    let headers = props.headers().as_ref().map(FieldTable::inner);
    let get = |k: &str| headers.and_then(|h| h.get(k));
    if let Some(kind) = props.kind().as_ref()
        && kind.as_str() != task
    {
        return Err(reject(
            reason::UNKNOWN_TASK,
            format!(
                "type `{}` does not match this queue's task `{task}`; no handler for it here",
                kind.as_str()
            ),
        ));
    }
    if let Some(ct) = props.content_type().as_ref()
        && !ct
            .as_str()
            .trim_start()
            .to_ascii_lowercase()
            .starts_with(crate::wire::CONTENT_TYPE)
    {
        return Err(reject(
            reason::UNDECODABLE,
            format!(
                "content type `{}` is not {}; Warren tasks are JSON",
                ct.as_str(),
                crate::wire::CONTENT_TYPE
            ),
        ));
    }
    let attempt = match get(header::ATTEMPT) {
        None => 1,
        Some(v) => match as_int(v) {
            Some(n) if (1..=i64::from(u32::MAX / 2)).contains(&n) => n as u32,
            Some(n) => {
                return Err(reject(
                    reason::INVALID_HEADER,
                    format!("`{}` must be >= 1, got {n}", header::ATTEMPT),
                ));
            }
            None => {
                return Err(reject(
                    reason::INVALID_HEADER,
                    format!("`{}` must be an integer, got {v:?}", header::ATTEMPT),
                ));
            }
        },
    };
    let crashes = match get("x-delivery-count").and_then(as_int) {
        Some(n) => n.clamp(0, 1_000_000) as u32,
        None => u32::from(redelivered),
    };
    let expires_at_ms = match get(header::EXPIRES_AT) {
        None => None,
        Some(v) => match as_int(v) {
            Some(ms) if ms >= 0 => Some(ms as u64),
            _ => {
                return Err(reject(
                    reason::INVALID_HEADER,
                    format!(
                        "`{}` must be unix milliseconds (a non-negative integer), got {v:?}",
                        header::EXPIRES_AT
                    ),
                ));
            }
        },
    };
    let traceparent = match get(header::TRACEPARENT) {
        Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    };
    Ok(Envelope {
        id: props
            .message_id()
            .as_ref()
            .map_or_else(new_task_id, |s| s.to_string()),
        task: task.to_string(),
        attempt: attempt.saturating_add(crashes),
        enqueued_at_ms: crate::wire::enqueued_at(props),
        expires_at_ms,
        correlation_id: props.correlation_id().as_ref().map(|s| s.to_string()),
        traceparent,
    })
}

fn merged(env: &Envelope, props: &BasicProperties) -> FieldTable {
    let mut h = crate::wire::carried_headers(props);
    for (k, v) in env.headers().inner() {
        h.insert(k.clone(), v.clone());
    }
    h
}

/// The retry copy: attempt + 1, into the ladder with the delay's routing key.
pub(crate) fn retry_message(
    env: &Envelope,
    props: &BasicProperties,
    body: &[u8],
    ladder_top_exchange: String,
    routing_key: String,
) -> Outgoing {
    let next = Envelope {
        attempt: env.attempt + 1,
        ..env.clone()
    };
    Outgoing {
        task: env.task.clone(),
        id: env.id.clone(),
        exchange: ladder_top_exchange,
        routing_key,
        body: body.to_vec(),
        properties: next.properties_with(merged(&next, props), None),
    }
}

/// The dead copy, with why, when and by whom.
pub(crate) fn dead_message(
    env: &Envelope,
    props: &BasicProperties,
    body: &[u8],
    dead_exchange: String,
    why: &Rejection,
    worker: &str,
) -> Outgoing {
    let mut h = merged(env, props);
    // Always spelled out on a dead copy (an operator reads it), though absent means 1.
    h.insert(
        header::ATTEMPT.into(),
        AMQPValue::LongLongInt(i64::from(env.attempt)),
    );
    h.insert(
        header::REASON.into(),
        AMQPValue::LongString(why.reason.into()),
    );
    h.insert(
        header::ERROR.into(),
        AMQPValue::LongString(bounded(&why.error).as_str().into()),
    );
    h.insert(
        header::DEAD_AT.into(),
        AMQPValue::LongLongInt(unix_ms(SystemTime::now()) as i64),
    );
    h.insert(header::WORKER.into(), AMQPValue::LongString(worker.into()));
    Outgoing {
        task: env.task.clone(),
        id: env.id.clone(),
        exchange: dead_exchange,
        routing_key: env.task.clone(),
        body: body.to_vec(),
        properties: env.properties_with(h, None),
    }
}

/// `text` cut to [`ERROR_TEXT_MAX`] bytes, keeping the end (where a stderr tail or the last
/// line of a chain says what happened).
pub(crate) fn bounded(text: &str) -> String {
    if text.len() <= ERROR_TEXT_MAX {
        return text.to_string();
    }
    let mut start = text.len() - (ERROR_TEXT_MAX - 3);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &text[start..])
}

/// How a run ended.
enum RunOutcome {
    Success,
    Retryable(String),
    Permanent(String),
}

/// Processes one delivery to its end. Holds a concurrency permit for its whole life.
pub(crate) async fn process(
    shared: Arc<Shared>,
    registered: Arc<Registered>,
    delivery: Delivery,
    _permit: tokio::sync::OwnedSemaphorePermit,
    settler: Settler,
) {
    let delivery = Held { delivery, settler };
    let env = match read_envelope(&registered.name, &delivery.properties, delivery.redelivered) {
        Ok(env) => env,
        Err(why) => {
            // Without a readable envelope we still dead-letter under the queue's task name.
            let mut env = Envelope::new(
                delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map_or_else(new_task_id, |s| s.to_string()),
                &registered.name,
            );
            env.enqueued_at_ms = crate::wire::enqueued_at(&delivery.properties);
            return dead_letter(&shared, &delivery, &env, why).await;
        }
    };
    // This run is a child of the producer's context (or the root of a new trace).
    let parent = env.traceparent.as_deref().and_then(TraceParent::parse);
    let run_trace = parent
        .as_ref()
        .map_or_else(TraceParent::root, TraceParent::child);
    // Fields set at creation, as Display: a text subscriber formats a span's fields when it
    // is created and again on every `record`, for every task (and a `&str` value would be
    // Debug-formatted, escaped character by character).
    // Its own target, so that `RUST_LOG=...,warren::task=off` drops the per-task span
    // (creating it was 10 % of a draining worker's CPU samples with a text subscriber) where
    // throughput matters more than task context in the logs.
    let span = tracing::info_span!(
        target: "warren::task",
        "task",
        task.kind = %env.task,
        task.id = %env.id,
        attempt = env.attempt,
        trace_id = %run_trace.trace_id,
        parent_span_id = parent.as_ref().map(|p| tracing::field::display(&p.span_id)),
        outcome = tracing::field::Empty,
    );
    let run_trace = run_trace.to_string();
    async {
        if let Some(at) = env.expires_at_ms
            && unix_ms(SystemTime::now()) > at
        {
            let why = reject(reason::EXPIRED, format!("not started before its expiry ({} ms past it)", unix_ms(SystemTime::now()) - at));
            return dead_letter(&shared, &delivery, &env, why).await;
        }
        let ctx = TaskContext {
            task: env.task.clone(),
            id: env.id.clone(),
            attempt: env.attempt,
            max_attempts: registered.policy.max_attempts,
            enqueued_at: UNIX_EPOCH + Duration::from_millis(env.enqueued_at_ms),
            correlation_id: env.correlation_id.clone(),
            traceparent: run_trace.clone(),
            // A clone, not a child token: children register with the parent under a lock.
            cancel: shared.hard_stop.clone(),
        };
        let future = match (registered.handler)(&delivery.data, ctx) {
            Ok(f) => f,
            Err(decode_error) => return dead_letter(&shared, &delivery, &env, reject(reason::UNDECODABLE, decode_error)).await,
        };
        shared.metrics.started();
        let started = std::time::Instant::now();
        let limit = registered.policy.time_limit;
        let run = crate::trace::scope(run_trace, std::panic::AssertUnwindSafe(future).catch_unwind());
        let outcome = match tokio::time::timeout(limit, run).await {
            Ok(Ok(Ok(()))) => RunOutcome::Success,
            Ok(Ok(Err(TaskError::Retryable(e)))) => RunOutcome::Retryable(error_chain(&*e)),
            Ok(Ok(Err(TaskError::Permanent(e)))) => RunOutcome::Permanent(error_chain(&*e)),
            Ok(Err(panic)) => RunOutcome::Retryable(format!("handler panicked: {}", panic_text(&panic))),
            Err(_) => RunOutcome::Retryable(format!("time limit of {} exceeded", humantime::format_duration(limit))),
        };
        shared.metrics.finished(started.elapsed());
        match outcome {
            RunOutcome::Success => {
                tracing::Span::current().record("outcome", "success");
                ack(&delivery);
                shared.metrics.outcome("success");
            }
            RunOutcome::Permanent(error) => {
                tracing::Span::current().record("outcome", "dead");
                tracing::warn!(error = %error, "permanent failure; dead-lettering");
                dead_letter(&shared, &delivery, &env, reject(reason::PERMANENT, error)).await;
            }
            RunOutcome::Retryable(error) => {
                let decision = decide(&registered.policy, env.attempt, shared.max_delay, rand::random::<f64>());
                match decision {
                    Decision::RetryAfter(delay) => {
                        tracing::Span::current().record("outcome", "retry");
                        tracing::warn!(error = %error, retry_in = %humantime::format_duration(delay), "attempt failed; retrying");
                        let ladder = shared.producer.ladder();
                        let exchange = shared.producer.names().delay_level(ladder.top());
                        let key = ladder.routing_key(delay.as_secs(), &env.task);
                        let msg = retry_message(&env, &delivery.properties, &delivery.data, exchange, key);
                        settle_after_publish(&shared, &delivery, &env, msg, "retry").await;
                    }
                    Decision::DeadLetter => {
                        tracing::Span::current().record("outcome", "dead");
                        tracing::warn!(error = %error, "attempts exhausted; dead-lettering");
                        let why = reject(reason::FAILED, format!("attempt {}/{}: {error}", env.attempt, registered.policy.max_attempts));
                        dead_letter(&shared, &delivery, &env, why).await;
                    }
                }
            }
        }
    }
    .instrument(span)
    .await
}

async fn dead_letter(shared: &Shared, delivery: &Held, env: &Envelope, why: Rejection) {
    if matches!(
        why.reason,
        reason::UNDECODABLE | reason::UNKNOWN_TASK | reason::INVALID_HEADER | reason::EXPIRED
    ) {
        tracing::warn!(task.kind = %env.task, task.id = %env.id, reason = why.reason, error = %why.error, "dead-lettering without running");
    }
    let msg = dead_message(
        env,
        &delivery.properties,
        &delivery.data,
        shared.producer.names().dead_exchange(),
        &why,
        &shared.worker_name,
    );
    if settle_after_publish(shared, delivery, env, msg, "dead").await {
        shared.metrics.dead(why.reason);
    }
}

/// Publishes the outcome with a confirm, then acks; if publishing fails, requeues instead.
/// True when the outcome was published.
///
/// Boxed: this cold path (a message, a confirm, a backoff timer) would otherwise be part
/// of every delivery's future, which tokio copies when it spawns one.
fn settle_after_publish<'a>(
    shared: &'a Shared,
    delivery: &'a Held,
    env: &'a Envelope,
    msg: Outgoing,
    what: &'static str,
) -> futures_util::future::BoxFuture<'a, bool> {
    Box::pin(settle_after_publish_unboxed(
        shared, delivery, env, msg, what,
    ))
}

async fn settle_after_publish_unboxed(
    shared: &Shared,
    delivery: &Held,
    env: &Envelope,
    msg: Outgoing,
    what: &'static str,
) -> bool {
    match shared.producer.publish(msg).await {
        Ok(()) => {
            shared.metrics.outcome(what);
            ack(delivery);
            true
        }
        Err(err) => {
            tracing::error!(task.kind = %env.task, task.id = %env.id, error = %err,
                "could not publish the {what} copy; requeueing the delivery instead of acking it");
            // Don't spin: a broker that refuses now will likely refuse in the next millisecond.
            tokio::time::sleep(Duration::from_secs(1)).await;
            delivery
                .settler
                .settle(Settle::Requeue(delivery.delivery_tag));
            false
        }
    }
}

/// A delivery and where to report its settlement.
struct Held {
    delivery: Delivery,
    settler: Settler,
}

impl std::ops::Deref for Held {
    type Target = Delivery;
    fn deref(&self) -> &Delivery {
        &self.delivery
    }
}

fn ack(delivery: &Held) {
    delivery.settler.settle(Settle::Ack(delivery.delivery_tag));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn props(headers: Vec<(&str, AMQPValue)>) -> BasicProperties {
        let mut h = FieldTable::default();
        for (k, v) in headers {
            h.insert(k.into(), v);
        }
        BasicProperties::default()
            .with_type("job".into())
            .with_message_id("id-1".into())
            .with_headers(h)
    }

    #[test]
    fn a_minimal_foreign_message_gets_defaults() {
        let env = read_envelope("job", &BasicProperties::default(), false).unwrap();
        assert_eq!(env.attempt, 1);
        assert_eq!(env.task, "job");
        assert!(uuid::Uuid::parse_str(&env.id).is_ok());
        assert_eq!(env.expires_at_ms, None);
    }

    #[test]
    fn crashed_deliveries_count_as_attempts() {
        let quorum = props(vec![
            (header::ATTEMPT, AMQPValue::LongLongInt(2)),
            ("x-delivery-count", AMQPValue::LongLongInt(3)),
        ]);
        assert_eq!(read_envelope("job", &quorum, true).unwrap().attempt, 5);
        let classic = props(vec![(header::ATTEMPT, AMQPValue::LongLongInt(2))]);
        assert_eq!(read_envelope("job", &classic, true).unwrap().attempt, 3);
        assert_eq!(read_envelope("job", &classic, false).unwrap().attempt, 2);
    }

    #[test]
    fn any_integer_width_is_an_attempt() {
        for v in [
            AMQPValue::ShortShortUInt(4),
            AMQPValue::ShortInt(4),
            AMQPValue::LongUInt(4),
            AMQPValue::LongInt(4),
        ] {
            assert_eq!(
                read_envelope("job", &props(vec![(header::ATTEMPT, v)]), false)
                    .unwrap()
                    .attempt,
                4
            );
        }
    }

    #[test]
    fn bad_headers_are_rejected_with_a_reason() {
        let cases = [
            (
                header::ATTEMPT,
                AMQPValue::LongString("2".into()),
                "must be an integer",
            ),
            (header::ATTEMPT, AMQPValue::LongLongInt(0), "must be >= 1"),
            (header::ATTEMPT, AMQPValue::LongLongInt(-3), "must be >= 1"),
            (
                header::ATTEMPT,
                AMQPValue::LongLongInt(i64::MAX),
                "must be >= 1",
            ),
            (
                header::EXPIRES_AT,
                AMQPValue::Boolean(true),
                "unix milliseconds",
            ),
            (
                header::EXPIRES_AT,
                AMQPValue::LongLongInt(-1),
                "unix milliseconds",
            ),
        ];
        for (k, v, needle) in cases {
            let err = read_envelope("job", &props(vec![(k, v)]), false).unwrap_err();
            assert_eq!(err.reason, reason::INVALID_HEADER);
            assert!(err.error.contains(needle), "{}", err.error);
        }
    }

    #[test]
    fn a_type_that_is_not_the_queues_task_is_unknown() {
        let p = BasicProperties::default().with_type("other".into());
        let err = read_envelope("job", &p, false).unwrap_err();
        assert_eq!(err.reason, reason::UNKNOWN_TASK);
        assert!(err.error.contains("`other`"));
    }

    #[test]
    fn republished_copies_drop_broker_headers_and_keep_foreign_ones() {
        let p = props(vec![
            (header::ATTEMPT, AMQPValue::LongLongInt(1)),
            ("x-death", AMQPValue::FieldArray(Default::default())),
            ("x-delivery-count", AMQPValue::LongLongInt(0)),
            ("tenant", AMQPValue::LongString("acme".into())),
        ]);
        let env = read_envelope("job", &p, false).unwrap();
        let retry = retry_message(
            &env,
            &p,
            b"{}",
            "ns.delay.5".into(),
            "0.0.0.0.1.1.job".into(),
        );
        let h = retry.properties.headers().as_ref().unwrap().inner();
        assert!(matches!(
            h.get(header::ATTEMPT),
            Some(AMQPValue::LongLongInt(2))
        ));
        assert!(h.get("x-death").is_none() && h.get("x-delivery-count").is_none());
        assert!(matches!(h.get("tenant"), Some(AMQPValue::LongString(_))));
        assert_eq!(
            retry.properties.message_id().as_ref().unwrap().as_str(),
            "id-1"
        );
        assert!(retry.properties.expiration().is_none());

        let why = Rejection {
            reason: reason::FAILED,
            error: "boom".into(),
        };
        let dead = dead_message(&env, &p, b"{}", "ns.dead".into(), &why, "warren worker h:1");
        assert_eq!(
            (dead.exchange.as_str(), dead.routing_key.as_str()),
            ("ns.dead", "job")
        );
        let h = dead.properties.headers().as_ref().unwrap().inner();
        assert!(
            matches!(h.get(header::REASON), Some(AMQPValue::LongString(s)) if s.as_bytes() == b"failed")
        );
        assert!(matches!(
            h.get(header::ATTEMPT),
            Some(AMQPValue::LongLongInt(1))
        ));
        assert!(h.get(header::DEAD_AT).is_some() && h.get(header::WORKER).is_some());
        assert!(h.get("x-death").is_none());
    }

    #[test]
    fn long_errors_keep_their_tail() {
        let long = format!("{}THE END", "x".repeat(5000));
        let b = bounded(&long);
        assert!(b.len() <= ERROR_TEXT_MAX + 3 && b.ends_with("THE END") && b.starts_with('…'));
        assert_eq!(bounded("short"), "short");
    }
}
