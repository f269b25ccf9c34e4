//! Reading a message back: the envelope of a delivery, with the defaults a minimal foreign
//! publisher relies on, and what a dead copy says about its death. Pure: no lapin calls.

use std::time::SystemTime;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};

use super::{CONTENT_TYPE, Envelope, Reason, enqueued_at_ms, header, new_task_id, unix_ms};

/// Why a delivery goes dead without running, and the text an operator reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// `warren-reason`.
    pub reason: Reason,
    /// `warren-error`.
    pub error: String,
}

impl Rejection {
    /// A rejection for `reason` saying `error`.
    pub fn new(reason: Reason, error: impl Into<String>) -> Rejection {
        Rejection {
            reason,
            error: error.into(),
        }
    }
}

/// An AMQP integer of any width as i64; `None` for any other type. Other clients write
/// integer headers in whatever width they like; every reader here accepts them all.
pub fn as_int(v: &AMQPValue) -> Option<i64> {
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

fn header<'a>(props: &'a BasicProperties, key: &str) -> Option<&'a AMQPValue> {
    props.headers().as_ref()?.inner().get(key)
}

/// Header `key` as an integer of any width.
pub fn header_int(props: &BasicProperties, key: &str) -> Option<i64> {
    header(props, key).and_then(as_int)
}

/// Header `key` as text (a long string; invalid UTF-8 is replaced).
pub fn header_str(props: &BasicProperties, key: &str) -> Option<String> {
    match header(props, key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    }
}

/// A delivery's first enqueue time (unix ms), by [`enqueued_at_ms`]; now for a foreign
/// publisher that gave neither a UUID v7 id nor a timestamp.
pub fn enqueued_at(props: &BasicProperties) -> u64 {
    enqueued_at_ms(
        props.message_id().as_ref().map(|s| s.as_str()),
        *props.timestamp(),
    )
    .unwrap_or_else(|| unix_ms(SystemTime::now()))
}

/// The message's task id, or a fresh one when a foreign publisher set none.
fn id_of(props: &BasicProperties) -> String {
    props
        .message_id()
        .as_ref()
        .map_or_else(new_task_id, |s| s.to_string())
}

/// Reads the envelope of a delivery from queue `task` (the queue's task name).
///
/// Defaults for a minimal foreign publisher: no `message_id` gets a fresh id, no `type` means
/// the queue's task, no attempt header means 1, no timestamp means now. Crashed deliveries
/// count as attempts: quorum queues report them in `x-delivery-count`; classic queues only
/// say `redelivered`, which counts as one.
///
/// # Errors
/// A [`Rejection`] when the type is another task's, the content type is not JSON, or a
/// Warren header has the wrong type or an impossible value.
pub fn read_envelope(
    task: &str,
    props: &BasicProperties,
    redelivered: bool,
) -> Result<Envelope, Rejection> {
    check_type(task, props)?;
    check_content_type(props)?;
    let headers = props.headers().as_ref().map(FieldTable::inner);
    let get = |k: &str| headers.and_then(|h| h.get(k));
    let attempt = attempt(get(header::ATTEMPT))?;
    let crashes = match get("x-delivery-count").and_then(as_int) {
        Some(n) => n.clamp(0, 1_000_000) as u32,
        None => u32::from(redelivered),
    };
    Ok(Envelope {
        id: id_of(props),
        task: task.to_string(),
        attempt: attempt.saturating_add(crashes),
        // A counter, not a contract: an unreadable one counts as none.
        interruptions: get(header::INTERRUPTED)
            .and_then(as_int)
            .map_or(0, |n| n.clamp(0, 1_000_000) as u32),
        enqueued_at_ms: enqueued_at(props),
        expires_at_ms: expires_at(get(header::EXPIRES_AT))?,
        correlation_id: props.correlation_id().as_ref().map(|s| s.to_string()),
        traceparent: header_str(props, header::TRACEPARENT),
        priority: *props.priority(),
        reply_to: reply_to_of(props),
        chain: chain_of(props)?,
        unique: header_str(props, header::UNIQUE),
        replayed_at_ms: get(header::REPLAYED_AT)
            .and_then(as_int)
            .map(|at| at.max(0) as u64),
    })
}

/// The chain's remaining steps from `warren-chain`: comma-separated valid task names.
pub fn chain_of(props: &BasicProperties) -> Result<Vec<String>, Rejection> {
    let Some(text) = header_str(props, header::CHAIN) else {
        return Ok(Vec::new());
    };
    let steps: Vec<String> = text.split(',').map(str::to_string).collect();
    for step in &steps {
        crate::topology::validate_task_name(step).map_err(|e| {
            Rejection::new(
                Reason::InvalidHeader,
                format!("`{}` names a bad chain step: {e}", header::CHAIN),
            )
        })?;
    }
    Ok(steps)
}

fn reply_to_of(props: &BasicProperties) -> Option<String> {
    props.reply_to().as_ref().map(|s| s.to_string())
}

/// The envelope a delivery that [`read_envelope`] rejected is dead-lettered with: the
/// queue's task, the message's id (or a new one), its enqueue time, attempt 1.
pub fn fallback_envelope(task: &str, props: &BasicProperties) -> Envelope {
    let mut env = Envelope::new(id_of(props), task);
    env.enqueued_at_ms = enqueued_at(props);
    env.priority = *props.priority();
    env.reply_to = reply_to_of(props);
    // A step refused on arrival keeps the rest of its chain, for its replay.
    env.chain = chain_of(props).unwrap_or_default();
    env.unique = header_str(props, header::UNIQUE);
    env
}

fn check_type(task: &str, props: &BasicProperties) -> Result<(), Rejection> {
    match props.kind().as_ref() {
        Some(kind) if kind.as_str() != task => Err(Rejection::new(
            Reason::UnknownTask,
            format!(
                "type `{}` does not match this queue's task `{task}`; no handler for it here",
                kind.as_str()
            ),
        )),
        _ => Ok(()),
    }
}

fn check_content_type(props: &BasicProperties) -> Result<(), Rejection> {
    match props.content_type().as_ref() {
        Some(ct)
            if !ct
                .as_str()
                .trim_start()
                .to_ascii_lowercase()
                .starts_with(CONTENT_TYPE) =>
        {
            Err(Rejection::new(
                Reason::Undecodable,
                format!(
                    "content type `{}` is not {CONTENT_TYPE}; Warren tasks are JSON",
                    ct.as_str()
                ),
            ))
        }
        _ => Ok(()),
    }
}

fn attempt(value: Option<&AMQPValue>) -> Result<u32, Rejection> {
    let Some(v) = value else { return Ok(1) };
    match as_int(v) {
        Some(n) if (1..=i64::from(u32::MAX / 2)).contains(&n) => Ok(n as u32),
        Some(n) => Err(Rejection::new(
            Reason::InvalidHeader,
            format!("`{}` must be >= 1, got {n}", header::ATTEMPT),
        )),
        None => Err(Rejection::new(
            Reason::InvalidHeader,
            format!("`{}` must be an integer, got {v:?}", header::ATTEMPT),
        )),
    }
}

fn expires_at(value: Option<&AMQPValue>) -> Result<Option<u64>, Rejection> {
    let Some(v) = value else { return Ok(None) };
    match as_int(v) {
        Some(ms) if ms >= 0 => Ok(Some(ms as u64)),
        _ => Err(Rejection::new(
            Reason::InvalidHeader,
            format!(
                "`{}` must be unix milliseconds (a non-negative integer), got {v:?}",
                header::EXPIRES_AT
            ),
        )),
    }
}

/// What a dead copy says about its death, as an operator reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Death {
    /// `warren-reason`, else the broker's first death reason (`expired`, `delivery_limit`, …).
    pub reason: Option<String>,
    /// `warren-error`.
    pub error: Option<String>,
    /// `warren-attempt`: runs made.
    pub attempts: Option<i64>,
    /// `warren-dead-at`, unix ms.
    pub dead_at_ms: Option<i64>,
    /// `warren-replays`: times replayed before.
    pub replays: Option<i64>,
    /// `warren-worker`: the connection name of the worker that dead-lettered it (for a
    /// broadcast type, the worker whose run failed).
    pub worker: Option<String>,
}

/// The reason [`Death::read`] gives a delayed broadcast that fell due while no worker of its
/// type listened: the type's `{ns}.{task}.listeners` exchange routed it nowhere and its
/// alternate exchange put it in the dead queue. No worker wrote it; the broker cannot add a
/// header on that route.
pub const NO_LISTENERS: &str = "no_listeners";

/// True when the last queue the message died in (`x-death`, newest first) is a delay level
/// (`{ns}.delay.{n}`) and no worker marked it: it went from the ladder's foot straight into a
/// dead queue, which only a broadcast type's `unheard` exchange does. Every other way into a
/// dead queue is a worker's copy (with `warren-reason`) or the broker dead-lettering from a
/// work queue (a newer `x-death` entry naming that queue).
fn left_the_ladder_unheard(props: &BasicProperties) -> bool {
    let Some(AMQPValue::FieldArray(deaths)) = header(props, "x-death") else {
        return false;
    };
    let Some(AMQPValue::FieldTable(last)) = deaths.as_slice().first() else {
        return false;
    };
    match last.inner().get("queue") {
        Some(AMQPValue::LongString(q)) => String::from_utf8_lossy(q.as_bytes())
            .rsplit_once(".delay.")
            .is_some_and(|(_, level)| {
                !level.is_empty() && level.bytes().all(|b| b.is_ascii_digit())
            }),
        _ => false,
    }
}

impl Death {
    /// Reads the death headers of a message from a dead queue.
    pub fn read(props: &BasicProperties) -> Death {
        Death {
            reason: header_str(props, header::REASON)
                .or_else(|| left_the_ladder_unheard(props).then(|| NO_LISTENERS.to_string()))
                .or_else(|| header_str(props, "x-first-death-reason")),
            error: header_str(props, header::ERROR),
            attempts: header_int(props, header::ATTEMPT),
            // An AMQP timestamp (seconds) from a foreign tool is accepted too.
            dead_at_ms: header_int(props, header::DEAD_AT).or_else(|| {
                match header(props, header::DEAD_AT) {
                    Some(AMQPValue::Timestamp(t)) => Some(*t as i64 * 1000),
                    _ => None,
                }
            }),
            replays: header_int(props, header::REPLAYS),
            worker: header_str(props, header::WORKER),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::tests::props;

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
            let p = props(vec![(header::ATTEMPT, v.clone())]);
            assert_eq!(read_envelope("job", &p, false).unwrap().attempt, 4);
            assert_eq!(Death::read(&p).attempts, Some(4), "{v:?}");
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
            assert_eq!(err.reason, Reason::InvalidHeader);
            assert!(err.error.contains(needle), "{}", err.error);
        }
    }

    #[test]
    fn a_type_that_is_not_the_queues_task_is_unknown() {
        let p = BasicProperties::default().with_type("other".into());
        let err = read_envelope("job", &p, false).unwrap_err();
        assert_eq!(err.reason, Reason::UnknownTask);
        assert!(err.error.contains("`other`"));
    }

    #[test]
    fn a_body_that_is_not_json_by_its_content_type_is_undecodable() {
        let p = BasicProperties::default().with_content_type("text/plain".into());
        let err = read_envelope("job", &p, false).unwrap_err();
        assert_eq!(err.reason, Reason::Undecodable);
        let p =
            BasicProperties::default().with_content_type("application/json; charset=utf-8".into());
        assert!(read_envelope("job", &p, false).is_ok());
    }

    fn x_death(queues: &[&str]) -> (&'static str, AMQPValue) {
        let deaths: Vec<AMQPValue> = queues
            .iter()
            .map(|q| {
                let mut t = FieldTable::default();
                t.insert("queue".into(), AMQPValue::LongString((*q).into()));
                t.insert("reason".into(), AMQPValue::LongString("expired".into()));
                AMQPValue::FieldTable(t)
            })
            .collect();
        ("x-death", AMQPValue::FieldArray(deaths.into()))
    }

    #[test]
    fn a_delayed_copy_dead_straight_off_the_ladder_had_no_listeners() {
        let expired = (
            "x-first-death-reason",
            AMQPValue::LongString("expired".into()),
        );
        // Newest first: died in delay.0 last, then nothing but the unheard exchange
        let p = props(vec![
            x_death(&["ns.delay.0", "ns.delay.2"]),
            expired.clone(),
        ]);
        assert_eq!(Death::read(&p).reason.as_deref(), Some(NO_LISTENERS));
        // Dead-lettered by the broker from a work queue after the ladder: its own reason
        let p = props(vec![x_death(&["ns.job", "ns.delay.0"]), expired.clone()]);
        assert_eq!(Death::read(&p).reason.as_deref(), Some("expired"));
        // A worker's copy says why itself
        let p = props(vec![
            x_death(&["ns.delay.0"]),
            (header::REASON, AMQPValue::LongString("failed".into())),
        ]);
        assert_eq!(Death::read(&p).reason.as_deref(), Some("failed"));
        // Not a level: `delay.deliver` is the ladder's exchange, never a queue
        let p = props(vec![x_death(&["ns.delay.deliver"]), expired]);
        assert_eq!(Death::read(&p).reason.as_deref(), Some("expired"));
    }

    #[test]
    fn a_broker_dead_lettered_message_shows_the_brokers_reason() {
        let p = props(vec![(
            "x-first-death-reason",
            AMQPValue::LongString("expired".into()),
        )]);
        assert_eq!(Death::read(&p).reason.as_deref(), Some("expired"));
        let p = props(vec![
            (header::REASON, AMQPValue::LongString("failed".into())),
            (
                "x-first-death-reason",
                AMQPValue::LongString("rejected".into()),
            ),
            (header::DEAD_AT, AMQPValue::Timestamp(7)),
        ]);
        let d = Death::read(&p);
        assert_eq!(d.reason.as_deref(), Some("failed"));
        assert_eq!(d.dead_at_ms, Some(7000));
    }
}
