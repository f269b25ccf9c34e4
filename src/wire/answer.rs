//! The answer to a caller waiting for a task: written by the worker when the task's outcome is
//! final (it succeeded, or it went dead), read back by the producer. Pure.
//!
//! ```text
//! exchange ""  routing key = the task's reply_to (direct reply-to, or a queue the caller named)
//! correlation_id  the task id (the caller's own correlation id stays on the task)
//! type            the task name
//! warren-outcome  "succeeded" | "dead"
//! warren-reason, warren-error, warren-attempt   on "dead", as on the dead copy
//! body            succeeded: the result's JSON; dead: empty
//! ```

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};

use super::copies::{IfUnroutable, Outgoing};
use super::decode::{Rejection, header_int, header_str};
use super::{CONTENT_TYPE, Envelope, header};
use crate::topology::Route;

/// What a waiting caller learns about its task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The handler succeeded and returned this JSON (`null` for a handler that returns `()`).
    Succeeded(Vec<u8>),
    /// The task went dead: its reason (`failed`, `permanent`, `expired`, …) and last error.
    Dead {
        /// One of [`super::Reason`]'s names.
        reason: String,
        /// The last error text.
        error: String,
        /// Runs made.
        attempts: Option<i64>,
        /// The task type that died: for a chain, the step that stopped it.
        task: Option<String>,
    },
}

/// The pseudo-queue of RabbitMQ's direct reply-to, and the prefix of the addresses the broker
/// gives the tasks published with it.
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// `warren-outcome` values.
const SUCCEEDED: &str = "succeeded";
const DEAD: &str = "dead";

/// The answer to `env`'s caller that it succeeded with `result` (JSON); `None` when nobody
/// waits (no `reply_to`).
pub(crate) fn succeeded(env: &Envelope, result: Vec<u8>) -> Option<Outgoing> {
    let mut h = FieldTable::default();
    h.insert(
        header::OUTCOME.into(),
        AMQPValue::LongString(SUCCEEDED.into()),
    );
    message(env, h, result)
}

/// The answer to `env`'s caller that it went dead for `why`; `None` when nobody waits.
pub(crate) fn dead(env: &Envelope, why: &Rejection) -> Option<Outgoing> {
    let mut h = FieldTable::default();
    h.insert(header::OUTCOME.into(), AMQPValue::LongString(DEAD.into()));
    h.insert(
        header::REASON.into(),
        AMQPValue::LongString(why.reason.as_str().into()),
    );
    h.insert(
        header::ERROR.into(),
        AMQPValue::LongString(super::copies::bounded(&why.error).as_str().into()),
    );
    h.insert(
        header::ATTEMPT.into(),
        AMQPValue::LongLongInt(i64::from(env.attempt)),
    );
    message(env, h, Vec::new())
}

fn message(env: &Envelope, headers: FieldTable, body: Vec<u8>) -> Option<Outgoing> {
    let to = env.reply_to.as_ref()?;
    let properties = BasicProperties::default()
        .with_content_type(CONTENT_TYPE.into())
        // Persistent: a queue the caller named may be durable, for answers that must survive
        // a broker restart; direct reply-to ignores it.
        .with_delivery_mode(2)
        .with_correlation_id(env.id.as_str().into())
        .with_type(env.task.as_str().into())
        .with_headers(headers);
    Some(Outgoing {
        task: env.task.clone(),
        id: env.id.clone(),
        route: Route {
            exchange: String::new(),
            routing_key: to.clone(),
        },
        body,
        properties,
        if_unroutable: if to.starts_with(DIRECT_REPLY_TO) {
            IfUnroutable::DirectAnswer
        } else {
            IfUnroutable::QueueAnswer
        },
    })
}

/// Reads an answer; `None` when the message is not one (no or an unknown `warren-outcome`).
pub fn read(props: &BasicProperties, body: &[u8]) -> Option<Answer> {
    match header_str(props, header::OUTCOME)?.as_str() {
        SUCCEEDED => Some(Answer::Succeeded(body.to_vec())),
        DEAD => Some(Answer::Dead {
            reason: header_str(props, header::REASON).unwrap_or_else(|| "unknown".into()),
            error: header_str(props, header::ERROR).unwrap_or_default(),
            attempts: header_int(props, header::ATTEMPT),
            task: props.kind().as_ref().map(|k| k.to_string()),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Reason;

    fn waited() -> Envelope {
        let mut env = Envelope::new("id-1".into(), "thumb");
        env.reply_to = Some("amq.rabbitmq.reply-to.abc".into());
        env.correlation_id = Some("callers-own".into());
        env.attempt = 3;
        env
    }

    #[test]
    fn nobody_waiting_means_no_answer() {
        let env = Envelope::new("id-1".into(), "thumb");
        assert!(succeeded(&env, b"1".to_vec()).is_none());
        assert!(dead(&env, &Rejection::new(Reason::Failed, "x")).is_none());
    }

    #[test]
    fn a_success_answers_its_value_to_the_reply_address_under_the_task_id() {
        let out = succeeded(&waited(), b"{\"w\":64}".to_vec()).unwrap();
        assert_eq!(out.route.exchange, "");
        assert_eq!(out.route.routing_key, "amq.rabbitmq.reply-to.abc");
        assert_eq!(
            out.properties.correlation_id().as_ref().map(|s| s.as_str()),
            Some("id-1")
        );
        assert_eq!(out.if_unroutable, IfUnroutable::DirectAnswer);
        assert!(
            !out.if_unroutable.mandatory(),
            "the broker would return every answer"
        );
        let mut named = waited();
        named.reply_to = Some("my.results".into());
        let to_queue = succeeded(&named, b"1".to_vec()).unwrap();
        assert!(
            to_queue.if_unroutable.mandatory(),
            "a missing reply queue is noticed"
        );
        assert_eq!(
            read(&out.properties, &out.body),
            Some(Answer::Succeeded(b"{\"w\":64}".to_vec()))
        );
    }

    #[test]
    fn a_death_answers_its_reason_error_and_attempts() {
        let why = Rejection::new(Reason::Expired, "too late");
        let out = dead(&waited(), &why).unwrap();
        assert!(out.body.is_empty());
        assert_eq!(
            read(&out.properties, &out.body),
            Some(Answer::Dead {
                reason: "expired".into(),
                error: "too late".into(),
                attempts: Some(3),
                task: Some("thumb".into()),
            })
        );
        // Anything else on the reply channel is not an answer.
        assert_eq!(read(&BasicProperties::default(), b"{}"), None);
    }
}
