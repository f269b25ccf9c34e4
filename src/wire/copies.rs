//! The copies a task is republished as: a retry, a dead letter, a replay. Pure.
//!
//! Every copy keeps the body, the id and foreign headers, and drops the broker's `x-` headers:
//! a message republished with its `x-death` into a queue it already expired from can be
//! silently dropped by RabbitMQ's dead-letter cycle detection. Warren's own headers are set
//! anew from the envelope.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};

use super::decode::{Rejection, enqueued_at, header_int, header_str};
use super::{Envelope, header, new_task_id};
use crate::topology::Route;

/// Longest `warren-error` text kept on a dead task (the tail of longer errors is kept).
pub const ERROR_TEXT_MAX: usize = 2048;

/// A message ready to publish: route, body and properties, with the task it carries.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub(crate) task: String,
    pub(crate) id: String,
    pub(crate) route: Route,
    pub(crate) body: Vec<u8>,
    pub(crate) properties: BasicProperties,
    /// What the broker returning it unroutable means.
    pub(crate) if_unroutable: IfUnroutable,
}

/// What an unroutable (returned) message means to its publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IfUnroutable {
    /// An error: a task must reach a queue (new tasks of ordinary types, and every copy).
    Error,
    /// A new broadcast: returned means no worker receives its type right now, delivered to
    /// nobody: [`crate::Error::NoListeners`], an outcome of its own.
    Broadcast,
    /// A schedule's firing of a broadcast type: it also reaches its record by `BCC`, so it is
    /// returned only when the record is missing too; logged, the firing stands.
    BroadcastFiring,
    /// An answer over direct reply-to, published without `mandatory`: the broker counts a
    /// reply to `amq.rabbitmq.reply-to.*` as unrouted and would return every one. A caller
    /// that has gone loses it; the task's outcome stands.
    DirectAnswer,
    /// An answer into a queue the caller named: returned when that queue does not exist,
    /// which loses the answer (with a warning); the task's outcome stands.
    QueueAnswer,
}

impl IfUnroutable {
    /// Whether to publish with `mandatory`.
    pub(crate) fn mandatory(self) -> bool {
        self != IfUnroutable::DirectAnswer
    }
}

/// A task as it arrived, which every copy starts from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Original<'a> {
    pub(crate) env: &'a Envelope,
    pub(crate) props: &'a BasicProperties,
    pub(crate) body: &'a [u8],
}

/// Where and when a task died, besides why.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deathbed<'a> {
    /// Connection name of the worker that dead-letters it.
    pub(crate) worker: &'a str,
    /// Unix ms.
    pub(crate) at_ms: u64,
}

impl Original<'_> {
    /// The retry copy: attempt + 1, on `route` (into the ladder with the delay's key).
    pub(crate) fn retry(&self, route: Route) -> Outgoing {
        let next = Envelope {
            attempt: self.env.attempt + 1,
            ..self.env.clone()
        };
        self.copy(&next, merged(&next, self.props), route)
    }

    /// The copy of a run a worker's shutdown interrupted, on `route` (its work queue): the
    /// same attempt, one more interruption. A fresh message, so neither the broker's
    /// `x-delivery-count` nor `redelivered` counts the interrupted run as a crash.
    pub(crate) fn interrupted(&self, route: Route) -> Outgoing {
        let again = Envelope {
            interruptions: self.env.interruptions + 1,
            ..self.env.clone()
        };
        self.copy(&again, merged(&again, self.props), route)
    }

    /// The copy of a delivery taken into the prefetch buffer but never started when its worker
    /// stopped, on `route` (its work queue): unchanged, as a fresh message, so the requeue a
    /// closing channel would do does not count as a crash (`redelivered`, `x-delivery-count`).
    pub(crate) fn unstarted(&self, route: Route) -> Outgoing {
        self.copy(self.env, merged(self.env, self.props), route)
    }

    /// The next step of this task's chain, on `route` (its work queue), with `result` (this
    /// step's value) as its payload: the same task id (the chain's), the next task type,
    /// attempt 1, the steps after it, the caller's reply address; no expiry (that was the
    /// first step's). `None` when this task is not part of a chain.
    pub(crate) fn next_step(&self, route: Route, result: Vec<u8>) -> Option<Outgoing> {
        let (next, rest) = self.env.chain.split_first()?;
        let env = Envelope {
            task: next.clone(),
            attempt: 1,
            interruptions: 0,
            enqueued_at_ms: super::unix_ms(std::time::SystemTime::now()),
            expires_at_ms: None,
            chain: rest.to_vec(),
            // The chain holds the first task's key until its last step's outcome.
            ..self.env.clone()
        };
        let headers = merged(&env, self.props);
        Some(Outgoing {
            task: env.task.clone(),
            id: env.id.clone(),
            route,
            body: result,
            properties: env.properties_with(headers, None),
            if_unroutable: IfUnroutable::Error,
        })
    }

    /// The dead copy, saying why, when and by whom.
    pub(crate) fn dead(&self, route: Route, why: &Rejection, bed: Deathbed<'_>) -> Outgoing {
        let mut h = merged(self.env, self.props);
        let mut set = |k: &str, v: AMQPValue| {
            h.insert(k.into(), v);
        };
        // Always spelled out on a dead copy (an operator reads it), though absent means 1.
        set(
            header::ATTEMPT,
            AMQPValue::LongLongInt(i64::from(self.env.attempt)),
        );
        set(
            header::REASON,
            AMQPValue::LongString(why.reason.as_str().into()),
        );
        set(
            header::ERROR,
            AMQPValue::LongString(bounded(&why.error).as_str().into()),
        );
        set(header::DEAD_AT, AMQPValue::LongLongInt(bed.at_ms as i64));
        set(header::WORKER, AMQPValue::LongString(bed.worker.into()));
        self.copy(self.env, h, route)
    }

    fn copy(&self, env: &Envelope, headers: FieldTable, route: Route) -> Outgoing {
        Outgoing {
            task: env.task.clone(),
            id: env.id.clone(),
            route,
            body: self.body.to_vec(),
            properties: env.properties_with(headers, None),
            if_unroutable: IfUnroutable::Error,
        }
    }
}

/// The copy a dead task of `task` is replayed as, on `route`: attempt 1 (no header), replay
/// counter + 1, without the death headers, the broker's `x-` headers and the expiry (the
/// operator asked for it to run).
pub(crate) fn replay(task: &str, props: &BasicProperties, body: &[u8], route: Route) -> Outgoing {
    let env = Envelope {
        id: props
            .message_id()
            .as_ref()
            .map_or_else(new_task_id, |s| s.to_string()),
        task: task.to_string(),
        attempt: 1,
        interruptions: 0,
        enqueued_at_ms: enqueued_at(props),
        expires_at_ms: None,
        correlation_id: props.correlation_id().as_ref().map(|s| s.to_string()),
        traceparent: header_str(props, header::TRACEPARENT),
        priority: *props.priority(),
        // A replay answers nobody: whoever waited for the task has had its answer (dead).
        reply_to: None,
        // A dead step of a chain resumes the chain.
        chain: super::decode::chain_of(props).unwrap_or_default(),
        // Its key was released when it went dead; a replay is not unique.
        unique: None,
        // Set below as a header, not from the envelope.
        replayed_at_ms: None,
    };
    let mut headers = merged(&env, props);
    let replays = header_int(props, header::REPLAYS).unwrap_or(0) + 1;
    headers.insert(header::REPLAYS.into(), AMQPValue::LongLongInt(replays));
    headers.insert(
        header::REPLAYED_AT.into(),
        AMQPValue::LongLongInt(super::unix_ms(std::time::SystemTime::now()) as i64),
    );
    Original {
        env: &env,
        props,
        body,
    }
    .copy(&env, headers, route)
}

/// The copy a dead task is replayed as with `body` in place of its own: a new task (a new
/// id, since it is not the task that died) that records which one it replays
/// ([`header::REPLAY_OF`]); otherwise as [`replay`].
pub(crate) fn replay_edited(
    task: &str,
    props: &BasicProperties,
    body: &[u8],
    route: Route,
) -> Outgoing {
    let mut out = replay(task, props, body, route);
    let id = new_task_id();
    let mut headers = out.properties.headers().clone().unwrap_or_default();
    if let Some(was) = props.message_id() {
        headers.insert(
            header::REPLAY_OF.into(),
            AMQPValue::LongString(was.as_str().into()),
        );
    }
    out.properties = out
        .properties
        .with_message_id(id.as_str().into())
        .with_headers(headers);
    out.id = id;
    out
}

/// `props`' foreign headers (neither the broker's `x-` ones nor Warren's own, which are set
/// anew) with `env`'s headers over them. `warren-replays` is history rather than state of
/// this copy: it travels on, so a replayed task that is retried still says it was replayed.
fn merged(env: &Envelope, props: &BasicProperties) -> FieldTable {
    let mut out = FieldTable::default();
    if let Some(h) = props.headers() {
        for (k, v) in h.inner() {
            let k = k.as_str();
            let foreign =
                !k.starts_with("x-") && !k.starts_with("warren-") && k != header::TRACEPARENT;
            if foreign || k == header::REPLAYS || k == header::REPLAYED_AT {
                out.insert(k.into(), v.clone());
            }
        }
    }
    for (k, v) in env.headers().inner() {
        out.insert(k.clone(), v.clone());
    }
    out
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::wire::Reason;
    use crate::wire::decode::read_envelope;
    use crate::wire::tests::props;

    fn route(exchange: &str, key: &str) -> Route {
        Route {
            exchange: exchange.into(),
            routing_key: key.into(),
        }
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
        let original = Original {
            env: &env,
            props: &p,
            body: b"{}",
        };
        let retry = original.retry(route("ns.delay.5", "0.0.0.0.1.1.job"));
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

        let why = Rejection::new(Reason::Failed, "boom");
        let bed = Deathbed {
            worker: "warren worker h:1",
            at_ms: 42,
        };
        let dead = original.dead(route("ns.dead", "job"), &why, bed);
        assert_eq!(dead.route, route("ns.dead", "job"));
        let h = dead.properties.headers().as_ref().unwrap().inner();
        assert!(
            matches!(h.get(header::REASON), Some(AMQPValue::LongString(s)) if s.as_bytes() == b"failed")
        );
        assert!(matches!(
            h.get(header::ATTEMPT),
            Some(AMQPValue::LongLongInt(1))
        ));
        assert!(matches!(
            h.get(header::DEAD_AT),
            Some(AMQPValue::LongLongInt(42))
        ));
        assert!(h.get(header::WORKER).is_some());
        assert!(h.get("x-death").is_none());
    }

    #[test]
    fn a_replayed_copy_starts_over_and_counts_the_replay() {
        let mut h = FieldTable::default();
        h.insert(header::ATTEMPT.into(), AMQPValue::LongLongInt(3));
        h.insert(
            header::REASON.into(),
            AMQPValue::LongString("failed".into()),
        );
        h.insert(header::ERROR.into(), AMQPValue::LongString("boom".into()));
        h.insert(header::EXPIRES_AT.into(), AMQPValue::LongLongInt(1));
        h.insert(header::REPLAYS.into(), AMQPValue::LongLongInt(1));
        h.insert("x-death".into(), AMQPValue::FieldArray(Default::default()));
        h.insert(
            "x-first-death-reason".into(),
            AMQPValue::LongString("rejected".into()),
        );
        h.insert("tenant".into(), AMQPValue::LongString("acme".into()));
        let props = BasicProperties::default()
            .with_message_id("id-9".into())
            .with_correlation_id("c".into())
            .with_headers(h);
        let out = replay("mail", &props, b"{}", route("ns.tasks", "mail"));
        assert_eq!(out.route, route("ns.tasks", "mail"));
        let h = out.properties.headers().as_ref().unwrap().inner();
        let keys: BTreeSet<&str> = h.keys().map(|k| k.as_str()).collect();
        // No attempt header: absent means 1, the replay starts over.
        assert_eq!(
            keys,
            BTreeSet::from(["tenant", "warren-replays", "warren-replayed-at"])
        );
        assert!(matches!(
            h.get(header::REPLAYS),
            Some(AMQPValue::LongLongInt(2))
        ));
        assert_eq!(
            out.properties.message_id().as_ref().unwrap().as_str(),
            "id-9"
        );
        assert_eq!(
            out.properties.correlation_id().as_ref().unwrap().as_str(),
            "c"
        );
    }

    #[test]
    fn long_errors_keep_their_tail() {
        let long = format!("{}THE END", "x".repeat(5000));
        let b = bounded(&long);
        assert!(b.len() <= ERROR_TEXT_MAX + 3 && b.ends_with("THE END") && b.starts_with('…'));
        assert_eq!(bounded("short"), "short");
    }

    /// Every copy a worker or an operator makes of the task in `p`: retry, interrupted,
    /// unstarted, dead, replay.
    fn every_copy(p: &BasicProperties) -> Vec<Outgoing> {
        let env = read_envelope("job", p, false).unwrap();
        let original = Original {
            env: &env,
            props: p,
            body: b"{}",
        };
        let bed = Deathbed {
            worker: "w",
            at_ms: 1,
        };
        let why = Rejection::new(Reason::Failed, "x");
        vec![
            original.retry(route("ns.delay.1", "1.job")),
            original.interrupted(route("ns.tasks", "job")),
            original.unstarted(route("ns.tasks", "job")),
            original.dead(route("ns.dead", "job"), &why, bed),
            replay("job", p, b"{}", route("ns.tasks", "job")),
        ]
    }

    #[test]
    fn every_copy_keeps_the_priority_it_was_enqueued_with() {
        let p = props(vec![]).with_priority(7);
        assert_eq!(read_envelope("job", &p, false).unwrap().priority, Some(7));
        for copy in every_copy(&p) {
            assert_eq!(*copy.properties.priority(), Some(7), "{:?}", copy.route);
        }
    }

    #[test]
    fn the_replay_count_survives_every_copy_and_a_replay_adds_one() {
        let p = props(vec![(header::REPLAYS, AMQPValue::LongLongInt(2))]);
        let counts: Vec<Option<i64>> = every_copy(&p)
            .iter()
            .map(|c| header_int(&c.properties, header::REPLAYS))
            .collect();
        assert_eq!(counts, [Some(2), Some(2), Some(2), Some(2), Some(3)]);
    }
}
