//! Dead-letter tooling: list, replay and purge a task type's dead queue.
//!
//! Listing reads every message of the dead queue without acking, then returns them all with
//! one `nack(multiple, requeue)`. Nothing is lost or duplicated; on a classic queue the
//! messages go back to their places, on a quorum queue (which requeues at the back) the whole
//! queue goes round once, so its order is kept too. Replay publishes a fresh copy with a
//! confirm *before* acking the dead one.

use std::collections::BTreeSet;

use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, QueuePurgeOptions};
use lapin::types::AMQPValue;
use lapin::{BasicProperties, Channel, Connection};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::producer::{Outgoing, Producer};
use crate::topology::names::Names;
use crate::wire::{Envelope, carried_headers, header, new_task_id};

/// Largest dead queue `list`/`replay` will hold in memory at once.
pub const SCAN_MAX: u32 = 100_000;

/// One dead task as an operator sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadTask {
    /// Task id (`message_id`).
    pub id: Option<String>,
    /// `warren-reason`, else the broker's first death reason (`expired`, `delivery_limit`, …).
    pub reason: Option<String>,
    /// `warren-error`.
    pub error: Option<String>,
    /// `warren-attempt`: runs made.
    pub attempts: Option<i64>,
    /// `warren-dead-at`, unix ms; else the broker's death time.
    pub dead_at_ms: Option<i64>,
    /// `warren-replays`: times replayed before.
    pub replays: Option<i64>,
    /// The body as text.
    pub payload: String,
}

fn header_str(p: &BasicProperties, key: &str) -> Option<String> {
    match p.headers().as_ref()?.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    }
}

fn header_int(p: &BasicProperties, key: &str) -> Option<i64> {
    match p.headers().as_ref()?.inner().get(key)? {
        AMQPValue::LongLongInt(i) => Some(*i),
        AMQPValue::LongInt(i) => Some(i64::from(*i)),
        AMQPValue::Timestamp(t) => Some(*t as i64 * 1000),
        _ => None,
    }
}

/// What an operator needs to know about one dead message.
pub fn describe(props: &BasicProperties, body: &[u8]) -> DeadTask {
    DeadTask {
        id: props.message_id().as_ref().map(|s| s.to_string()),
        reason: header_str(props, header::REASON)
            .or_else(|| header_str(props, "x-first-death-reason")),
        error: header_str(props, header::ERROR),
        attempts: header_int(props, header::ATTEMPT),
        dead_at_ms: header_int(props, header::DEAD_AT),
        replays: header_int(props, header::REPLAYS),
        payload: String::from_utf8_lossy(body).into_owned(),
    }
}

/// The copy replay publishes: back to `{ns}.tasks`, attempt 1, replay counter + 1, without the
/// death headers, the broker's `x-` headers and the expiry (the operator asked for it to run).
pub(crate) fn replay_message(
    names: &Names,
    task: &str,
    props: &BasicProperties,
    body: &[u8],
) -> Outgoing {
    let env = Envelope {
        id: props
            .message_id()
            .as_ref()
            .map_or_else(new_task_id, |s| s.to_string()),
        task: task.to_string(),
        attempt: 1,
        enqueued_at_ms: crate::wire::enqueued_at(props),
        expires_at_ms: None,
        correlation_id: props.correlation_id().as_ref().map(|s| s.to_string()),
        traceparent: header_str(props, header::TRACEPARENT),
    };
    let mut headers = carried_headers(props);
    for (k, v) in env.headers().inner() {
        headers.insert(k.clone(), v.clone());
    }
    let replays = header_int(props, header::REPLAYS).unwrap_or(0) + 1;
    headers.insert(header::REPLAYS.into(), AMQPValue::LongLongInt(replays));
    Outgoing {
        task: task.to_string(),
        id: env.id.clone(),
        exchange: names.tasks_exchange(),
        routing_key: task.to_string(),
        body: body.to_vec(),
        properties: env.properties_with(headers, None),
    }
}

/// Messages in `queue` (a passive declare). A missing queue is the user's to fix (wrong task
/// name or namespace); any other failure is the broker's.
async fn message_count(ch: &Channel, queue: &str) -> Result<u32> {
    match crate::topology::declare::inspect(ch, queue).await {
        Ok(state) => Ok(state.message_count()),
        Err(source) => match source.kind() {
            lapin::ErrorKind::ProtocolError(e)
                if matches!(
                    e.kind(),
                    lapin::protocol::AMQPErrorKind::Soft(lapin::protocol::AMQPSoftError::NOTFOUND)
                ) =>
            {
                Err(Error::InvalidInput(format!(
                    "queue `{queue}` does not exist: check the task name and --namespace, or run `warren topology apply`"
                )))
            }
            _ => Err(Error::Amqp {
                operation: format!("reading `{queue}`"),
                source,
            }),
        },
    }
}

/// A channel on `conn` and every message of `queue`, fetched unacked.
async fn fetch_all(conn: &Connection, queue: &str) -> Result<(Channel, Vec<BasicGetMessage>)> {
    let amqp = |operation: String| move |source| Error::Amqp { operation, source };
    let ch = conn
        .create_channel()
        .await
        .map_err(amqp("opening a channel".into()))?;
    let count = message_count(&ch, queue).await?;
    if count > SCAN_MAX {
        return Err(Error::InvalidInput(format!(
            "`{queue}` holds {count} messages, more than this command reads at once ({SCAN_MAX}); \
             purge or replay in the management UI, or with a shovel"
        )));
    }
    let mut messages = Vec::with_capacity(count as usize);
    while messages.len() < count as usize {
        match ch
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await
            .map_err(amqp(format!("reading `{queue}`")))?
        {
            Some(m) => messages.push(m),
            None => break,
        }
    }
    Ok((ch, messages))
}

/// Returns every message still unacked on `ch` to its queue: one `nack(multiple)` up to the
/// highest tag not acked (nacking an acked tag would close the channel).
async fn requeue_rest(
    ch: &Channel,
    messages: &[BasicGetMessage],
    acked: &BTreeSet<u64>,
) -> Result<()> {
    let highest = messages
        .iter()
        .map(|m| m.delivery.delivery_tag)
        .filter(|t| !acked.contains(t))
        .max();
    if let Some(tag) = highest {
        ch.basic_nack(
            tag,
            BasicNackOptions {
                multiple: true,
                requeue: true,
            },
        )
        .await
        .map_err(|source| Error::Amqp {
            operation: "returning messages to the dead queue".into(),
            source,
        })?;
    }
    let _ = ch.close(200, "done".into()).await;
    Ok(())
}

/// The first `limit` dead tasks of `task` and how many there are.
///
/// # Errors
/// [`Error::InvalidInput`] when the dead queue does not exist; AMQP errors.
pub async fn list(
    conn: &Connection,
    names: &Names,
    task: &str,
    limit: usize,
) -> Result<(Vec<DeadTask>, usize)> {
    let (ch, messages) = fetch_all(conn, &names.dead_queue(task)).await?;
    let shown = messages
        .iter()
        .take(limit)
        .map(|m| describe(&m.delivery.properties, &m.delivery.data))
        .collect();
    let total = messages.len();
    requeue_rest(&ch, &messages, &BTreeSet::new()).await?;
    Ok((shown, total))
}

/// Which dead tasks to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every dead task of the type.
    All,
    /// Those with these ids.
    Ids(BTreeSet<String>),
}

/// What `replay` did (or would do, on a dry run).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReplayReport {
    /// Ids republished (or that would be).
    pub replayed: Vec<String>,
    /// Requested ids not found in the dead queue.
    pub not_found: Vec<String>,
    /// Ids whose republish failed; they stay in the dead queue.
    pub failed: Vec<String>,
}

/// Republishes the selected dead tasks of `task` to the work exchange, each confirmed before
/// its dead copy is acked; the others stay where they were.
///
/// # Errors
/// [`Error::InvalidInput`] when the dead queue does not exist; AMQP errors.
pub async fn replay(
    conn: &Connection,
    producer: &Producer,
    task: &str,
    selection: &Selection,
    dry_run: bool,
) -> Result<ReplayReport> {
    let names = producer.names().clone();
    let (ch, messages) = fetch_all(conn, &names.dead_queue(task)).await?;
    let mut report = ReplayReport::default();
    let mut found = BTreeSet::new();
    let mut acked = BTreeSet::new();
    for m in &messages {
        let id = m
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default();
        let chosen = match selection {
            Selection::All => true,
            Selection::Ids(ids) => ids.contains(&id),
        };
        if !chosen {
            continue;
        }
        found.insert(id.clone());
        if dry_run {
            report.replayed.push(id);
            continue;
        }
        let copy = replay_message(&names, task, &m.delivery.properties, &m.delivery.data);
        match producer.publish(copy).await {
            Ok(()) => {
                m.delivery
                    .ack(BasicAckOptions::default())
                    .await
                    .map_err(|source| Error::Amqp {
                        operation: "acking the replayed dead copy".into(),
                        source,
                    })?;
                acked.insert(m.delivery.delivery_tag);
                report.replayed.push(id);
            }
            Err(e) => {
                tracing::error!(task.id = %id, error = %e, "replay failed; the task stays dead");
                report.failed.push(id);
            }
        }
    }
    if let Selection::Ids(ids) = selection {
        report.not_found = ids.difference(&found).cloned().collect();
    }
    requeue_rest(&ch, &messages, &acked).await?;
    Ok(report)
}

/// Empties `task`'s dead queue; returns how many messages it removed.
///
/// # Errors
/// [`Error::InvalidInput`] when the dead queue does not exist; AMQP errors.
pub async fn purge(conn: &Connection, names: &Names, task: &str) -> Result<u32> {
    let queue = names.dead_queue(task);
    let ch = conn.create_channel().await.map_err(|source| Error::Amqp {
        operation: "opening a channel".into(),
        source,
    })?;
    message_count(&ch, &queue).await?;
    let n = ch
        .queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
        .await
        .map_err(|source| Error::Amqp {
            operation: format!("purging `{queue}`"),
            source,
        })?;
    let _ = ch.close(200, "done".into()).await;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::FieldTable;

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
        let out = replay_message(&Names::new("ns"), "mail", &props, b"{}");
        assert_eq!(
            (out.exchange.as_str(), out.routing_key.as_str()),
            ("ns.tasks", "mail")
        );
        let h = out.properties.headers().as_ref().unwrap().inner();
        let keys: BTreeSet<&str> = h.keys().map(|k| k.as_str()).collect();
        // No attempt header: absent means 1, the replay starts over.
        assert_eq!(keys, BTreeSet::from(["tenant", "warren-replays"]));
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
    fn a_broker_dead_lettered_message_shows_the_brokers_reason() {
        let mut h = FieldTable::default();
        h.insert(
            "x-first-death-reason".into(),
            AMQPValue::LongString("expired".into()),
        );
        let d = describe(&BasicProperties::default().with_headers(h), b"{\"a\":1}");
        assert_eq!(d.reason.as_deref(), Some("expired"));
        assert_eq!(d.payload, "{\"a\":1}");
    }
}
