//! Dead-letter tooling: list, replay and purge a task type's dead queue.
//!
//! Listing reads every message of the dead queue without acking (one consumer, no prefetch
//! limit), then returns them all with one `nack(multiple, requeue)`. Nothing is lost or duplicated; on a classic queue the
//! messages go back to their places, on a quorum queue (which requeues at the back) the whole
//! queue goes round once, so its order is kept too. Replay publishes a fresh copy with a
//! confirm *before* acking the dead one.

use std::collections::BTreeSet;

use std::time::Duration;

use futures_util::StreamExt;
use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use serde::Serialize;

use crate::broker::{Session, close_channel};
use crate::error::{Error, Result};
use crate::producer::Producer;
use crate::topology::Names;
use crate::wire::copies;

pub use super::dead_entry::{DeadTask, describe};
use super::dead_entry::{Entry, keep_for};
use super::dead_index::Snapshot;

/// Largest dead queue `list`/`replay` will hold in memory at once.
pub const SCAN_MAX: u32 = 100_000;

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

/// Longest wait for the next message of a dead queue being read: the broker pushes them as
/// fast as it can, so a pause this long means the queue holds fewer than it said (another
/// reader took some meanwhile).
const READ_STALL: Duration = Duration::from_secs(3);

/// A channel of `session` and every message of `queue`, delivered and held unacked.
///
/// A consumer without a prefetch limit, not `basic.get`: the broker pushes the whole queue
/// in one stream instead of one round trip per message (10 000 dead tasks in a fraction of
/// a second). Messages that die while it reads are delivered too and given back with the
/// rest; it stops at the count the queue had when it started.
async fn fetch_all(session: &Session, queue: &str) -> Result<(Channel, Vec<Delivery>)> {
    let ch = session.channel().await?;
    let count = message_count(&ch, queue).await?;
    if count > SCAN_MAX {
        return Err(Error::InvalidInput(format!(
            "`{queue}` holds {count} messages, more than this command reads at once ({SCAN_MAX}); \
             purge or replay in the management UI, or with a shovel"
        )));
    }
    if count == 0 {
        return Ok((ch, Vec::new()));
    }
    let messages = take_up_to(&ch, queue, count as usize).await?;
    Ok((ch, messages))
}

/// Up to `n` messages of `queue` delivered on `ch` and held unacked: a consumer that stops at
/// `n`, or once the broker has sent nothing for [`READ_STALL`], and is then cancelled (those
/// already sent stay unacked until `requeue_rest` or the channel's close gives them back).
async fn take_up_to(ch: &Channel, queue: &str, n: usize) -> Result<Vec<Delivery>> {
    let amqp = |source| Error::Amqp {
        operation: format!("reading `{queue}`"),
        source,
    };
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "warren dead-queue reader".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(amqp)?;
    let mut messages = Vec::with_capacity(n);
    while messages.len() < n {
        match tokio::time::timeout(READ_STALL, consumer.next()).await {
            Ok(Some(Ok(d))) => messages.push(d),
            Ok(Some(Err(e))) => return Err(amqp(e)),
            Ok(None) | Err(_) => break,
        }
    }
    ch.basic_cancel(consumer.tag(), BasicCancelOptions::default())
        .await
        .map_err(amqp)?;
    Ok(messages)
}

/// Returns every message still unacked on `ch` to its queue: one `nack(multiple)` up to the
/// highest tag not acked (nacking an acked tag would close the channel).
async fn requeue_rest(ch: &Channel, messages: &[Delivery], acked: &BTreeSet<u64>) -> Result<()> {
    let highest = messages
        .iter()
        .map(|m| m.delivery_tag)
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
        .map(|m| describe(&m.properties, &m.data))
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
                    acked.insert(m.delivery_tag);
                }
                report.merged += 1;
                continue;
            }
        }
        if dry_run {
            report.replayed.push(id);
            continue;
        }
        let copy = copies::replay(task, &m.properties, &m.data, routes.replay(task));
        if republished(producer, m, &id, copy).await? {
            acked.insert(m.delivery_tag);
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
    m: &Delivery,
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
async fn ack_dead(m: &Delivery) -> Result<()> {
    m.ack(BasicAckOptions::default())
        .await
        .map_err(|source| Error::Amqp {
            operation: "acking the replayed dead copy".into(),
            source,
        })
        .map(drop)
}

/// Every dead task of `task` at this moment, for browsing ([`super::dead_index`]): each
/// message is delivered once and all are given back in one `nack`, in their order.
///
/// # Errors
/// [`Error::MissingQueue`] when the dead queue does not exist; AMQP errors.
pub async fn snapshot(session: &Session, names: &Names, task: &str) -> Result<Snapshot> {
    let queue = names.dead_queue(task);
    let taken_at_ms = crate::wire::unix_ms(std::time::SystemTime::now()) as i64;
    let ch = session.channel().await?;
    let count = message_count(&ch, &queue).await?;
    close_channel(&ch, "counted").await;
    let not_read = u64::from(count.saturating_sub(SCAN_MAX));
    let (ch, messages) = if not_read > 0 {
        fetch_first(session, &queue, SCAN_MAX).await?
    } else {
        fetch_all(session, &queue).await?
    };
    let mut kept = 0;
    let entries = messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let e = Entry::read(i, &m.properties, &m.data, keep_for(kept));
            kept += e.task.payload.len();
            e
        })
        .collect();
    requeue_rest(&ch, &messages, &BTreeSet::new()).await?;
    Ok(Snapshot {
        queue,
        taken_at_ms,
        entries,
        not_read,
    })
}

/// The first `max` messages of a queue that holds more (a snapshot reads no further).
async fn fetch_first(session: &Session, queue: &str, max: u32) -> Result<(Channel, Vec<Delivery>)> {
    let ch = session.channel().await?;
    let amqp = |source| Error::Amqp {
        operation: format!("reading `{queue}`"),
        source,
    };
    // A prefetch as large as the read: the broker stops there (its largest is 65 535, so a
    // larger read gets only that many).
    let prefetch = u16::try_from(max).unwrap_or(u16::MAX);
    ch.basic_qos(prefetch, lapin::options::BasicQosOptions { global: false })
        .await
        .map_err(amqp)?;
    let messages = take_up_to(&ch, queue, usize::from(prefetch)).await?;
    Ok((ch, messages))
}

/// What [`replay_edited`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EditedReplay {
    /// The dead task replayed (removed from the dead queue).
    pub replayed: String,
    /// The id of the new task that carries the edited payload.
    pub new_id: String,
}

/// Replays dead task `id` of `task` with `body` in place of its payload: a new task (a new
/// id, recording the one it replays in `warren-replay-of`) confirmed before the dead one is
/// removed. `body` must be JSON within the producer's `max_payload_bytes`.
///
/// # Errors
/// [`Error::InvalidInput`] for a body that is not JSON or too large, or an id that is not in
/// the dead queue (replayed or purged already); [`Error::MissingQueue`]; AMQP errors.
pub async fn replay_edited(
    session: &Session,
    producer: &Producer,
    task: &str,
    id: &str,
    body: &[u8],
) -> Result<EditedReplay> {
    check_edited(body, producer.settings().max_payload_bytes)?;
    let routes = producer.settings().routes();
    let (ch, messages) = fetch_all(session, &routes.names().dead_queue(task)).await?;
    let Some(m) = messages
        .iter()
        .find(|m| m.properties.message_id().as_ref().map(|s| s.as_str()) == Some(id))
    else {
        requeue_rest(&ch, &messages, &BTreeSet::new()).await?;
        return Err(Error::InvalidInput(format!(
            "no dead `{task}` task has id `{id}`: it was replayed or purged already, or never died"
        )));
    };
    let copy = copies::replay_edited(task, &m.properties, body, routes.replay(task));
    let new_id = copy.id.clone();
    let mut acked = BTreeSet::new();
    let published = republished(producer, m, id, copy).await;
    if matches!(published, Ok(true)) {
        acked.insert(m.delivery_tag);
    }
    requeue_rest(&ch, &messages, &acked).await?;
    match published? {
        true => Ok(EditedReplay {
            replayed: id.to_string(),
            new_id,
        }),
        false => Err(Error::Refusal {
            task: format!("{task} (edited replay of {id})"),
        }),
    }
}

/// Checks an edited payload: JSON, within `max_bytes`.
///
/// # Errors
/// [`Error::InvalidInput`] saying what is wrong (the JSON parser's line and column).
pub fn check_edited(body: &[u8], max_bytes: usize) -> Result<()> {
    if body.len() > max_bytes {
        return Err(Error::InvalidInput(format!(
            "the edited payload is {} bytes, more than max_payload_bytes ({max_bytes})",
            body.len()
        )));
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(body)
        .map(drop)
        .map_err(|e| Error::InvalidInput(format!("the edited payload is not JSON: {e}")))
}

/// Removes the dead tasks of `task` with these ids (every copy of each); returns the ids
/// removed. The others stay where they were.
///
/// # Errors
/// [`Error::MissingQueue`] when the dead queue does not exist; AMQP errors.
pub async fn purge_ids(
    session: &Session,
    names: &Names,
    task: &str,
    ids: &BTreeSet<String>,
) -> Result<Vec<String>> {
    let (ch, messages) = fetch_all(session, &names.dead_queue(task)).await?;
    let mut acked = BTreeSet::new();
    let mut removed = BTreeSet::new();
    for m in &messages {
        let Some(id) = m.properties.message_id().as_ref().map(|s| s.to_string()) else {
            continue;
        };
        if ids.contains(&id) {
            m.ack(BasicAckOptions::default())
                .await
                .map_err(|source| Error::Amqp {
                    operation: "removing a dead task".into(),
                    source,
                })?;
            acked.insert(m.delivery_tag);
            removed.insert(id);
        }
    }
    requeue_rest(&ch, &messages, &acked).await?;
    Ok(removed.into_iter().collect())
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
