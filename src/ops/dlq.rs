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
use lapin::{BasicProperties, Channel};
use serde::Serialize;

use crate::broker::{Session, close_channel};
use crate::error::{Error, Result};
use crate::producer::Producer;
use crate::topology::Names;
use crate::wire::copies;
use crate::wire::decode::Death;

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
    /// `warren-worker`: which worker dead-lettered it.
    pub worker: Option<String>,
    /// The body as text.
    pub payload: String,
}

/// What an operator needs to know about one dead message.
pub fn describe(props: &BasicProperties, body: &[u8]) -> DeadTask {
    let death = Death::read(props);
    DeadTask {
        id: props.message_id().as_ref().map(|s| s.to_string()),
        reason: death.reason,
        error: death.error,
        attempts: death.attempts,
        dead_at_ms: death.dead_at_ms,
        replays: death.replays,
        worker: death.worker,
        payload: String::from_utf8_lossy(body).into_owned(),
    }
}

/// Messages in `queue` (a passive declare). A missing queue is the caller's to fix (a wrong
/// task name or namespace: [`Error::MissingQueue`]); any other failure is the broker's.
async fn message_count(ch: &Channel, queue: &str) -> Result<u32> {
    match crate::broker::inspect(ch, queue).await {
        Ok(state) => Ok(state.message_count()),
        Err(source) => match source.kind() {
            lapin::ErrorKind::ProtocolError(e)
                if matches!(
                    e.kind(),
                    lapin::protocol::AMQPErrorKind::Soft(lapin::protocol::AMQPSoftError::NOTFOUND)
                ) =>
            {
                Err(Error::MissingQueue {
                    queue: queue.to_string(),
                })
            }
            _ => Err(Error::Amqp {
                operation: format!("reading `{queue}`"),
                source,
            }),
        },
    }
}

/// A channel of `session` and every message of `queue`, fetched unacked.
async fn fetch_all(session: &Session, queue: &str) -> Result<(Channel, Vec<BasicGetMessage>)> {
    let amqp = |operation: String| move |source| Error::Amqp { operation, source };
    let ch = session.channel().await?;
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
    close_channel(ch, "done").await;
    Ok(())
}

/// The first `limit` dead tasks of `task` and how many there are.
///
/// # Errors
/// [`Error::MissingQueue`] when the dead queue does not exist; AMQP errors.
pub async fn list(
    session: &Session,
    names: &Names,
    task: &str,
    limit: usize,
) -> Result<(Vec<DeadTask>, usize)> {
    let (ch, messages) = fetch_all(session, &names.dead_queue(task)).await?;
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

impl Selection {
    /// True when the task with id `id` is selected.
    pub fn contains(&self, id: &str) -> bool {
        match self {
            Selection::All => true,
            Selection::Ids(ids) => ids.contains(id),
        }
    }
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
    /// Broadcast types: further dead copies of an id already replayed in this run, removed
    /// (each worker may have dead-lettered its own copy of one broadcast; one replay reaches
    /// every worker again).
    pub merged: usize,
}

/// Republishes the selected dead tasks of `task` to the work exchange, each confirmed before
/// its dead copy is acked; the others stay where they were.
///
/// # Errors
/// [`Error::MissingQueue`] when the dead queue does not exist; AMQP errors.
pub async fn replay(
    session: &Session,
    producer: &Producer,
    task: &str,
    selection: &Selection,
    dry_run: bool,
) -> Result<ReplayReport> {
    let routes = producer.settings().routes();
    let broadcast = producer.settings().is_broadcast(task);
    let (ch, messages) = fetch_all(session, &routes.names().dead_queue(task)).await?;
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
        if !selection.contains(&id) {
            continue;
        }
        let again = !found.insert(id.clone());
        if broadcast && again {
            // Only once the id's replay is confirmed; a failed one leaves this copy for the
            // next attempt below.
            if report.replayed.contains(&id) {
                if !dry_run {
                    ack_dead(m).await?;
                    acked.insert(m.delivery.delivery_tag);
                }
                report.merged += 1;
                continue;
            }
        }
        if dry_run {
            report.replayed.push(id);
            continue;
        }
        let copy = copies::replay(
            task,
            &m.delivery.properties,
            &m.delivery.data,
            routes.replay(task),
        );
        if republished(producer, m, &id, copy).await? {
            acked.insert(m.delivery.delivery_tag);
            report.replayed.push(id);
        } else {
            report.failed.push(id);
        }
    }
    if let Selection::Ids(ids) = selection {
        report.not_found = ids.difference(&found).cloned().collect();
    }
    requeue_rest(&ch, &messages, &acked).await?;
    Ok(report)
}

/// Publishes `copy` with a confirm, then acks the dead message `m` it was made from; false
/// (and `m` stays dead) when the publish failed.
async fn republished(
    producer: &Producer,
    m: &BasicGetMessage,
    id: &str,
    copy: copies::Outgoing,
) -> Result<bool> {
    if let Err(e) = producer.publish(copy).await {
        tracing::error!(task.id = %id, error = %e, "replay failed; the task stays dead");
        return Ok(false);
    }
    ack_dead(m).await?;
    Ok(true)
}

/// Removes the dead message `m` from its queue.
async fn ack_dead(m: &BasicGetMessage) -> Result<()> {
    m.delivery
        .ack(BasicAckOptions::default())
        .await
        .map_err(|source| Error::Amqp {
            operation: "acking the replayed dead copy".into(),
            source,
        })
        .map(drop)
}

/// Empties `task`'s dead queue; returns how many messages it removed.
///
/// # Errors
/// [`Error::MissingQueue`] when the dead queue does not exist; AMQP errors.
pub async fn purge(session: &Session, names: &Names, task: &str) -> Result<u32> {
    let queue = names.dead_queue(task);
    let ch = session.channel().await?;
    message_count(&ch, &queue).await?;
    let n = ch
        .queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
        .await
        .map_err(|source| Error::Amqp {
            operation: format!("purging `{queue}`"),
            source,
        })?;
    close_channel(&ch, "done").await;
    Ok(n)
}
