//! The wire format (version 1): which AMQP properties and headers a task carries.
//!
//! Pure: builds and reads `BasicProperties`, sends nothing. Any AMQP client can enqueue a
//! Warren task by publishing a JSON body with `type` = task name to `{ns}.tasks`; every other
//! field has a default (see DESIGN.md). Our headers do not start with `x-`: from RabbitMQ 3.13
//! on those belong to the broker. Strings are long strings: a short string in a field table
//! makes RabbitMQ reset the connection.

use std::time::{SystemTime, UNIX_EPOCH};

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};

/// Header names Warren reads and writes.
pub mod header {
    /// Attempt number, 1 on the first run (integer).
    pub const ATTEMPT: &str = "warren-attempt";
    /// Unix time in ms after which the task must not start (integer).
    pub const EXPIRES_AT: &str = "warren-expires-at";
    /// W3C trace context of the enqueuing span.
    pub const TRACEPARENT: &str = "traceparent";
    /// Why the task is dead: `failed`, `permanent`, `expired`, `undecodable`, `unknown_task`, ...
    pub const REASON: &str = "warren-reason";
    /// The last error text (bounded length).
    pub const ERROR: &str = "warren-error";
    /// Unix time in ms when the task was dead-lettered (integer).
    pub const DEAD_AT: &str = "warren-dead-at";
    /// Connection name of the worker that dead-lettered it.
    pub const WORKER: &str = "warren-worker";
    /// How many times the task was replayed from its dead queue (integer).
    pub const REPLAYS: &str = "warren-replays";
}

/// Content type of every task body.
pub const CONTENT_TYPE: &str = "application/json";

/// The metadata a task carries besides its JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Task id, stable across retries (UUID v7 unless the producer chose one).
    pub id: String,
    /// Task name.
    pub task: String,
    /// Attempt number, 1 on the first run.
    pub attempt: u32,
    /// First enqueue time, unix seconds.
    pub enqueued_at: u64,
    /// Unix ms after which the task must not start.
    pub expires_at_ms: Option<u64>,
    /// Caller's correlation id.
    pub correlation_id: Option<String>,
    /// W3C `traceparent`.
    pub traceparent: Option<String>,
}

impl Envelope {
    /// A first-attempt envelope for `task` enqueued now.
    pub fn new(id: String, task: &str) -> Envelope {
        Envelope {
            id,
            task: task.to_string(),
            attempt: 1,
            enqueued_at: unix_ms(SystemTime::now()) / 1000,
            expires_at_ms: None,
            correlation_id: None,
            traceparent: None,
        }
    }

    /// Headers of this envelope (ours only; never the broker's `x-` headers).
    pub fn headers(&self) -> FieldTable {
        let mut h = FieldTable::default();
        h.insert(
            header::ATTEMPT.into(),
            AMQPValue::LongLongInt(i64::from(self.attempt)),
        );
        if let Some(at) = self.expires_at_ms {
            h.insert(header::EXPIRES_AT.into(), AMQPValue::LongLongInt(at as i64));
        }
        if let Some(tp) = &self.traceparent {
            h.insert(
                header::TRACEPARENT.into(),
                AMQPValue::LongString(tp.as_str().into()),
            );
        }
        h
    }

    /// Properties for publishing: persistent JSON with id, type, timestamp and our headers.
    /// `expiration_ms` sets the broker-side per-message TTL; only for direct publishes, since
    /// in the delay ladder it would race the level's own TTL.
    pub fn properties(&self, expiration_ms: Option<u64>) -> BasicProperties {
        self.properties_with(self.headers(), expiration_ms)
    }

    /// As [`Envelope::properties`], with `headers` in place of [`Envelope::headers`].
    pub fn properties_with(
        &self,
        headers: FieldTable,
        expiration_ms: Option<u64>,
    ) -> BasicProperties {
        let mut p = BasicProperties::default()
            .with_content_type(CONTENT_TYPE.into())
            .with_delivery_mode(2)
            .with_message_id(self.id.as_str().into())
            .with_type(self.task.as_str().into())
            .with_timestamp(self.enqueued_at)
            .with_headers(headers);
        if let Some(ms) = expiration_ms {
            p = p.with_expiration(ms.to_string().into());
        }
        if let Some(c) = &self.correlation_id {
            p = p.with_correlation_id(c.as_str().into());
        }
        p
    }
}

/// A delivery's headers without the broker's `x-` ones (republishing a message with its
/// `x-death` can make RabbitMQ's cycle detection drop it) and without Warren's own, which
/// the republisher sets anew. Foreign headers are kept.
pub(crate) fn carried_headers(props: &BasicProperties) -> FieldTable {
    let mut out = FieldTable::default();
    if let Some(h) = props.headers() {
        for (k, v) in h.inner() {
            let k = k.as_str();
            if !k.starts_with("x-") && !k.starts_with("warren-") && k != header::TRACEPARENT {
                out.insert(k.into(), v.clone());
            }
        }
    }
    out
}

/// Milliseconds since the unix epoch (0 before it).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A new task id: UUID v7, so ids sort by creation time.
pub fn new_task_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_enqueue_carries_the_design_properties() {
        let mut e = Envelope::new("id-1".into(), "send_email");
        e.expires_at_ms = Some(1_700_000_000_000);
        e.correlation_id = Some("c-9".into());
        e.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        let p = e.properties(Some(5000));
        assert_eq!(
            p.content_type().as_ref().map(|s| s.as_str()),
            Some("application/json")
        );
        assert_eq!(*p.delivery_mode(), Some(2));
        assert_eq!(p.message_id().as_ref().map(|s| s.as_str()), Some("id-1"));
        assert_eq!(p.kind().as_ref().map(|s| s.as_str()), Some("send_email"));
        assert_eq!(p.expiration().as_ref().map(|s| s.as_str()), Some("5000"));
        assert_eq!(p.correlation_id().as_ref().map(|s| s.as_str()), Some("c-9"));
        let h = p.headers().as_ref().unwrap().inner();
        assert!(matches!(
            h.get(header::ATTEMPT),
            Some(AMQPValue::LongLongInt(1))
        ));
        assert!(matches!(
            h.get(header::EXPIRES_AT),
            Some(AMQPValue::LongLongInt(1_700_000_000_000))
        ));
        assert!(matches!(
            h.get(header::TRACEPARENT),
            Some(AMQPValue::LongString(_))
        ));
        assert_eq!(h.len(), 3);
    }

    #[test]
    fn optional_fields_are_left_out() {
        let p = Envelope::new("id".into(), "t").properties(None);
        assert_eq!(*p.expiration(), None);
        assert_eq!(*p.correlation_id(), None);
        assert_eq!(p.headers().as_ref().unwrap().inner().len(), 1);
    }

    #[test]
    fn task_ids_are_uuid_v7() {
        let id = new_task_id();
        assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 7);
    }
}
