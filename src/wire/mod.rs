//! The wire format (version 1): which AMQP properties and headers a task carries, written
//! ([`Envelope`]), read back ([`decode`]) and copied for a retry, a dead letter or a replay
//! ([`copies`]), with the dead-letter reasons in one place ([`Reason`]).
//!
//! Pure: builds and reads `BasicProperties`, sends nothing. Any AMQP client can enqueue a
//! Warren task by publishing a JSON body with `type` = task name to `{ns}.tasks`; every other
//! field has a default (`docs/wire-format.md` lists each). Our headers do not start with `x-`: from RabbitMQ 3.13
//! on those belong to the broker. Strings are long strings: a short string in a field table
//! makes RabbitMQ reset the connection.

pub mod answer;
pub mod copies;
pub mod decode;
mod reason;

use std::time::{SystemTime, UNIX_EPOCH};

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};

pub use reason::Reason;

/// Header names Warren reads and writes.
pub mod header {
    /// Attempt number, 1 on the first run (integer).
    pub const ATTEMPT: &str = "warren-attempt";
    /// Unix time in ms after which the task must not start (integer).
    pub const EXPIRES_AT: &str = "warren-expires-at";
    /// W3C trace context of the enqueuing span.
    pub const TRACEPARENT: &str = "traceparent";
    /// Why the task is dead: one of [`super::Reason`].
    pub const REASON: &str = "warren-reason";
    /// The last error text (bounded length).
    pub const ERROR: &str = "warren-error";
    /// Unix time in ms when the task was dead-lettered (integer).
    pub const DEAD_AT: &str = "warren-dead-at";
    /// Connection name of the worker that dead-lettered it.
    pub const WORKER: &str = "warren-worker";
    /// How many times the task was replayed from its dead queue (integer).
    pub const REPLAYS: &str = "warren-replays";
    /// Unix ms of the last replay from a dead queue (integer): a cancel from before it no
    /// longer applies.
    pub const REPLAYED_AT: &str = "warren-replayed-at";
    /// On a dead task replayed with an edited payload: the id of the dead task it replays
    /// (the edited copy is a task of its own, with a new id).
    pub const REPLAY_OF: &str = "warren-replay-of";
    /// How many runs a worker's shutdown interrupted (integer; absent means none). Such runs
    /// do not count as attempts, up to the type's `max_interruptions`.
    pub const INTERRUPTED: &str = "warren-interrupted";
    /// On an answer to a waiting caller: `succeeded` or `dead` ([`super::answer`]).
    pub const OUTCOME: &str = "warren-outcome";
    /// The steps of a chain still to run after this task, comma-separated task names
    /// (`resize,notify`); each receives the previous step's result as its payload.
    pub const CHAIN: &str = "warren-chain";
    /// A unique task's key queue (`{ns}.{task}.unique.{key}`), released by the worker when
    /// the task's outcome is final.
    pub const UNIQUE: &str = "warren-unique";
    /// On a periodic task's firing: the schedule that fired it (`[schedules.NAME]`).
    pub const SCHEDULE: &str = "warren-schedule";
    /// On a periodic task's firing: the slot it fired for, unix ms (integer) — the time the
    /// schedule says, not when the scheduler got to it.
    pub const SCHEDULED_FOR: &str = "warren-scheduled-for";
    /// RabbitMQ's sender-selected distribution: more routing keys for the same publish,
    /// removed by the broker before delivery. A firing names its schedule's record in it.
    pub const BCC: &str = "BCC";
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
    /// Runs a worker's shutdown interrupted (they did not count as attempts).
    pub interruptions: u32,
    /// First enqueue time, unix ms.
    pub enqueued_at_ms: u64,
    /// Unix ms after which the task must not start.
    pub expires_at_ms: Option<u64>,
    /// Caller's correlation id.
    pub correlation_id: Option<String>,
    /// W3C `traceparent`.
    pub traceparent: Option<String>,
    /// AMQP `priority` (0–255; a priority queue orders by it, others ignore it). Kept by every
    /// copy, so retries and delayed tasks arrive with the priority they were enqueued with.
    pub priority: Option<u8>,
    /// AMQP `reply_to`: where the worker answers with the task's final outcome (direct
    /// reply-to's `amq.rabbitmq.reply-to…`, or a queue the caller named). Kept by every copy,
    /// so the answer comes after the last retry, once.
    pub reply_to: Option<String>,
    /// The chain's steps still to run after this one (task names, in order); empty for a
    /// task that is not part of a chain. Kept by every copy, so a dead step's copy resumes
    /// the chain when replayed.
    pub chain: Vec<String>,
    /// A unique task: the queue holding its key, which the worker releases when the task's
    /// outcome is final. Kept by retry, interrupted and unstarted copies (the key stays held).
    pub unique: Option<String>,
    /// When this copy was replayed from its dead queue (`warren-replayed-at`, unix ms), if it
    /// was: a cancel issued before it does not apply to it. Read, never written by
    /// [`Envelope::headers`]: only a replay sets it.
    pub replayed_at_ms: Option<u64>,
}

impl Envelope {
    /// A first-attempt envelope for `task` enqueued now.
    pub fn new(id: String, task: &str) -> Envelope {
        Envelope {
            id,
            task: task.to_string(),
            attempt: 1,
            interruptions: 0,
            enqueued_at_ms: unix_ms(SystemTime::now()),
            expires_at_ms: None,
            correlation_id: None,
            traceparent: None,
            priority: None,
            reply_to: None,
            chain: Vec::new(),
            unique: None,
            replayed_at_ms: None,
        }
    }

    /// Headers of this envelope (ours only; never the broker's `x-` headers).
    pub fn headers(&self) -> FieldTable {
        let mut h = FieldTable::default();
        // Absent means 1: a first run carries no header table at all, which the broker
        // handles measurably cheaper (`docs/performance.md`).
        if self.attempt > 1 {
            h.insert(
                header::ATTEMPT.into(),
                AMQPValue::LongLongInt(i64::from(self.attempt)),
            );
        }
        if self.interruptions > 0 {
            h.insert(
                header::INTERRUPTED.into(),
                AMQPValue::LongLongInt(i64::from(self.interruptions)),
            );
        }
        if let Some(at) = self.expires_at_ms {
            h.insert(header::EXPIRES_AT.into(), AMQPValue::LongLongInt(at as i64));
        }
        if !self.chain.is_empty() {
            h.insert(
                header::CHAIN.into(),
                AMQPValue::LongString(self.chain.join(",").as_str().into()),
            );
        }
        if let Some(lock) = &self.unique {
            h.insert(
                header::UNIQUE.into(),
                AMQPValue::LongString(lock.as_str().into()),
            );
        }
        if let Some(tp) = &self.traceparent {
            h.insert(
                header::TRACEPARENT.into(),
                AMQPValue::LongString(tp.as_str().into()),
            );
        }
        h
    }

    /// Properties for publishing: persistent JSON with id, type and our headers; `timestamp`
    /// only when the id does not carry the enqueue time itself.
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
            .with_type(self.task.as_str().into());
        if !headers.inner().is_empty() {
            p = p.with_headers(headers);
        }
        if self.timestamp_carried() {
            p = p.with_timestamp(self.enqueued_at_ms / 1000);
        }
        if let Some(ms) = expiration_ms {
            p = p.with_expiration(ms.to_string().into());
        }
        if let Some(c) = &self.correlation_id {
            p = p.with_correlation_id(c.as_str().into());
        }
        if let Some(prio) = self.priority {
            p = p.with_priority(prio);
        }
        if let Some(to) = &self.reply_to {
            p = p.with_reply_to(to.as_str().into());
        }
        p
    }

    /// Whether `timestamp` must travel: not when the id is a UUID v7 of the same second, whose
    /// own millisecond time readers take instead ([`enqueued_at_ms`]).
    ///
    /// Why leave it out: on RabbitMQ 3.10 each optional property and the header table cost
    /// broker CPU on every publish and delivery, while id and type cost about as much as bare
    /// JSON (figures in `docs/performance.md`, "The wire format's cost").
    fn timestamp_carried(&self) -> bool {
        id_time_ms(&self.id).map(|ms| ms / 1000) != Some(self.enqueued_at_ms / 1000)
    }
}

/// The creation time (unix ms) in a UUID v7 task id; `None` for any other id.
pub fn id_time_ms(id: &str) -> Option<u64> {
    let uuid = uuid::Uuid::try_parse(id).ok()?;
    if uuid.get_version_num() != 7 {
        return None;
    }
    let (secs, nanos) = uuid.get_timestamp()?.to_unix();
    Some(secs * 1000 + u64::from(nanos) / 1_000_000)
}

/// A task's first enqueue time (unix ms) from its `message_id` and `timestamp` (s): the id's
/// own time when it is a UUID v7 that the timestamp, if any, agrees with (ms precision);
/// else the timestamp; else `None` (a foreign publisher that set neither).
pub fn enqueued_at_ms(id: Option<&str>, timestamp: Option<u64>) -> Option<u64> {
    match (id.and_then(id_time_ms), timestamp) {
        (Some(ms), None) => Some(ms),
        (Some(ms), Some(s)) if ms / 1000 == s => Some(ms),
        (_, Some(s)) => Some(s.saturating_mul(1000)),
        (None, None) => None,
    }
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
pub(crate) mod tests {
    use super::*;

    /// Properties of a `job` task with id `id-1` and these headers.
    pub(crate) fn props(headers: Vec<(&str, AMQPValue)>) -> BasicProperties {
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
        // "id-1" is no UUID v7: the enqueue time travels as `timestamp`.
        assert_eq!(*p.timestamp(), Some(e.enqueued_at_ms / 1000));
        let h = p.headers().as_ref().unwrap().inner();
        assert_eq!(h.get(header::ATTEMPT), None, "absent means the first run");
        assert!(matches!(
            h.get(header::EXPIRES_AT),
            Some(AMQPValue::LongLongInt(1_700_000_000_000))
        ));
        assert!(matches!(
            h.get(header::TRACEPARENT),
            Some(AMQPValue::LongString(_))
        ));
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn optional_fields_are_left_out() {
        let p = Envelope::new("id".into(), "t").properties(None);
        assert_eq!(*p.expiration(), None);
        assert_eq!(*p.correlation_id(), None);
        assert_eq!(*p.headers(), None, "a first run has no header table");
    }

    #[test]
    fn a_uuid_v7_id_carries_the_enqueue_time() {
        let e = Envelope::new(new_task_id(), "t");
        let id_ms = id_time_ms(&e.id).expect("v7 ids carry their time");
        assert!(id_ms <= e.enqueued_at_ms && e.enqueued_at_ms - id_ms < 1000);
        let p = e.properties(None);
        // Same second (the rare crossing of a second boundary sends `timestamp`, harmlessly).
        if id_ms / 1000 == e.enqueued_at_ms / 1000 {
            assert_eq!(*p.timestamp(), None);
        }
        assert_eq!(*p.headers(), None);
        let back = enqueued_at_ms(p.message_id().as_ref().map(|s| s.as_str()), *p.timestamp());
        assert_eq!(back, Some(id_ms), "readers get the id's ms back");
    }

    #[test]
    fn a_retry_carries_its_attempt() {
        let mut e = Envelope::new(new_task_id(), "t");
        e.attempt = 2;
        let p = e.properties(None);
        let h = p.headers().as_ref().unwrap().inner();
        assert!(matches!(
            h.get(header::ATTEMPT),
            Some(AMQPValue::LongLongInt(2))
        ));
    }

    #[test]
    fn the_enqueue_time_comes_from_the_id_the_timestamp_or_neither() {
        // 2025-11-14T...: a v7 id whose first 48 bits are 0x019a8000_0000 ms.
        let v7 = "019a8000-0000-7000-8000-000000000000";
        let ms = 0x019a_8000_0000_u64;
        assert_eq!(id_time_ms(v7), Some(ms));
        assert_eq!(enqueued_at_ms(Some(v7), None), Some(ms));
        assert_eq!(enqueued_at_ms(Some(v7), Some(ms / 1000)), Some(ms));
        // A timestamp that disagrees wins: the id was made long before the first enqueue.
        assert_eq!(enqueued_at_ms(Some(v7), Some(5)), Some(5000));
        // Other ids (v4, free text) carry no time.
        let v4 = "9b2c1d3e-4f5a-4b6c-8d7e-0f1a2b3c4d5e";
        assert_eq!(id_time_ms(v4), None);
        assert_eq!(enqueued_at_ms(Some(v4), Some(7)), Some(7000));
        assert_eq!(enqueued_at_ms(Some("order-7"), None), None);
        assert_eq!(enqueued_at_ms(None, None), None);
    }

    #[test]
    fn task_ids_are_uuid_v7() {
        let id = new_task_id();
        assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 7);
    }
}
