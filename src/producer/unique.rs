//! Unique tasks: a key held in the broker while a task with it is waiting, delayed or running.
//!
//! A key is a classic, durable queue of its own, `{ns}.{task}.unique.{key}`, with
//! `x-max-length = 1` and `x-overflow = reject-publish`, holding one marker message. The
//! producer declares it and publishes the marker with a confirm before the task: the broker
//! acks the first marker and nacks every other while one is there, exactly (measured on 3.10:
//! a quorum queue with the same arguments let two in, so the lock queue is classic in every
//! namespace). The worker takes its task's marker (by task id) and deletes the empty queue
//! when the task's outcome is final (success, dead), before it acks: a crash before that
//! redelivers the task, which then releases the key; a crash after it can at worst let a
//! duplicate in while the task runs again, as at-least-once allows.
//!
//! `unique_for`: a second queue, `{ns}.{task}.unique-for.{key}`, holds a marker with that
//! TTL, so the key stays taken for that long after the enqueue even when the task finished
//! sooner. It deletes itself (`x-expires`) once idle past the window.
//!
//! The key lives on one node: a classic queue. When that node goes away, declaring the key's
//! queue fails (its home is down) and the enqueue fails with that error until the node is back:
//! uniqueness is never silently dropped, availability is.

use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::topology::QueueType;
use crate::topology::{ArgValue, Names, QueueDecl};

/// Longest key, in bytes.
pub const KEY_MAX: usize = 200;

/// Longest `unique_for` window: a day.
pub const WINDOW_MAX: Duration = Duration::from_secs(24 * 3600);

/// Idle time after which a window queue deletes itself: the longest window and an hour.
const WINDOW_QUEUE_EXPIRES_MS: i64 = (24 + 1) * 3600 * 1000;

/// Longest key used as is in the queue name; longer ones (and keys with other characters
/// than `[A-Za-z0-9_.:@-]`) are hashed.
const KEY_IN_NAME_MAX: usize = 80;

/// Checks a unique key: 1 to 200 bytes, no control characters.
///
/// # Errors
/// [`Error::InvalidInput`] naming the problem.
pub fn check_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > KEY_MAX {
        let shown: String = key.chars().take(40).collect();
        return Err(Error::InvalidInput(format!(
            "unique key `{shown}{}` must be 1 to {KEY_MAX} bytes (it is {})",
            if key.chars().count() > 40 { "…" } else { "" },
            key.len()
        )));
    }
    if let Some(c) = key.chars().find(|c| c.is_control()) {
        return Err(Error::InvalidInput(format!(
            "unique key {key:?} holds the control character {c:?}; use printable text"
        )));
    }
    Ok(())
}

/// The key as it appears in the queue name: itself when it is short and plain, else `h-` and
/// the first 40 hex digits of its SHA-256 (the same on every producer, in any language:
/// `sha256(key)[..20]` as lowercase hex).
pub fn key_in_name(key: &str) -> String {
    // `h-…` is the hashed form's prefix: such a key is hashed too, so the two never meet.
    let plain = key.len() <= KEY_IN_NAME_MAX
        && !key.starts_with("h-")
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '@' | '-'));
    if plain {
        return key.to_string();
    }
    let digest = Sha256::digest(key.as_bytes());
    let hex: String = digest[..20].iter().map(|b| format!("{b:02x}")).collect();
    format!("h-{hex}")
}

/// The queues that hold `key` of task type `task`: the key's lock, and its window when
/// `window` is given.
pub(crate) fn lock_queues(
    names: &Names,
    task: &str,
    key: &str,
    window: Option<Duration>,
) -> Vec<QueueDecl> {
    let key = key_in_name(key);
    let mut args = vec![
        (
            "x-queue-type",
            ArgValue::Str(QueueType::Classic.as_str().into()),
        ),
        ("x-max-length", ArgValue::Int(1)),
        ("x-overflow", ArgValue::Str("reject-publish".into())),
    ];
    let mut queues = vec![QueueDecl {
        name: names.unique_lock(task, &key),
        args: args.clone(),
    }];
    if window.is_some() {
        // Gone by itself once idle past the longest window (its marker expired before). One
        // fixed value: a queue argument that changed with the window would make a second
        // enqueue with another window an `inequivalent arg` error.
        args.push(("x-expires", ArgValue::Int(WINDOW_QUEUE_EXPIRES_MS)));
        queues.push(QueueDecl {
            name: names.unique_window(task, &key),
            args,
        });
    }
    queues
}

/// A unique task's key as its enqueue takes it, worked out once when the task is prepared:
/// the key, its lock queues (the key's own, then the `unique_for` window's) and how long
/// each one's marker lives (the task's expiry, the window).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lock {
    pub(crate) key: String,
    /// The exchange the markers are published through (see `Plan::state_binding`).
    pub(crate) exchange: String,
    pub(crate) queues: Vec<QueueDecl>,
    pub(crate) ttls: [Option<Duration>; 2],
}

/// Takes `key` for task `id`: declares each of `queues` and puts a marker in it, confirmed,
/// on a channel of `conn`. A queue deleted between the declare and the publish (its key
/// released meanwhile) is declared again.
///
/// # Errors
/// [`Error::Duplicate`] when a marker is there already (the markers taken before are
/// released); broker errors.
pub(crate) async fn acquire(
    conn: &lapin::Connection,
    exchange: &str,
    task: &str,
    key: &str,
    id: &str,
    queues: &[QueueDecl],
    ttls: [Option<Duration>; 2],
) -> Result<()> {
    let ch = confirm_channel(conn).await?;
    let mut result = Ok(());
    // The markers this task may hold: those confirmed, and one whose confirm was lost.
    let mut taken = 0;
    for (q, ttl) in queues.iter().zip(ttls) {
        match put_marker(conn, &ch, q, exchange, id, ttl).await {
            Ok(true) => taken += 1,
            Ok(false) => {
                result = Err(Error::Duplicate {
                    task: task.to_string(),
                    key: key.to_string(),
                });
                break;
            }
            Err(e) => {
                taken += 1;
                result = Err(e);
                break;
            }
        }
    }
    crate::broker::close_channel(&ch, "unique key").await;
    if result.is_err() {
        // Only what this task may hold goes back. Never a release of a queue it was refused
        // by: reading another task's marker, even to put it back, lets others in meanwhile
        // (`x-max-length` counts ready messages only).
        release_all(conn, &queues[..taken], id).await;
    }
    result
}

/// Releases this task's markers in every one of `queues`, logging failures.
pub(crate) async fn release_all(conn: &lapin::Connection, queues: &[QueueDecl], id: &str) {
    for q in queues {
        if let Err(e) = release(conn, &q.name, id).await {
            tracing::warn!(queue = %q.name, error = %e, "could not give back a unique key");
        }
    }
}

/// Declares `q` and publishes a marker for `id` into it; false when the queue is full (the
/// key is taken).
async fn put_marker(
    conn: &lapin::Connection,
    ch: &lapin::Channel,
    q: &QueueDecl,
    exchange: &str,
    id: &str,
    ttl: Option<Duration>,
) -> Result<bool> {
    use lapin::options::BasicPublishOptions;
    let amqp = |what: &str, source| Error::Amqp {
        operation: format!("{what} `{}`", q.name),
        source,
    };
    for _ in 0..3 {
        // Through the namespace's exchange, not the default one (see `Plan::state_binding`).
        let binding = crate::topology::BindingDecl {
            source: exchange.to_string(),
            destination: q.name.clone(),
            kind: crate::topology::Destination::Queue,
            routing_key: q.name.clone(),
        };
        crate::topology::declare::declare_bound(ch, q, &binding)
            .await
            .map_err(|e| amqp("declaring the unique key queue", e))?;
        // The timestamp is what `warren unique list` shows as "held since" (the management
        // API's `head_message_timestamp`): listing never reads a marker.
        let mut props = lapin::BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(id.into())
            .with_timestamp(crate::wire::unix_ms(std::time::SystemTime::now()) / 1000);
        if let Some(ttl) = ttl {
            props = props.with_expiration(ttl.as_millis().max(1).to_string().as_str().into());
        }
        let opts = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        let confirm = ch
            .basic_publish(
                exchange.into(),
                q.name.as_str().into(),
                opts,
                id.as_bytes(),
                props,
            )
            .await
            .map_err(|e| amqp("taking the unique key in", e))?
            .await
            .map_err(|e| amqp("taking the unique key in", e))?;
        match confirm {
            // A release may have deleted the (then empty) queue under the publish, which the
            // broker confirms all the same: the key is ours only if its queue still holds it.
            lapin::Confirmation::Ack(None) if holds_marker(conn, &q.name).await => return Ok(true),
            lapin::Confirmation::Ack(None) => continue,
            lapin::Confirmation::Nack(_) => return Ok(false),
            // Released (deleted) between the declare and the publish: declare it again.
            _ => continue,
        }
    }
    Err(Error::Internal(format!(
        "the unique key queue `{}` kept disappearing",
        q.name
    )))
}

/// True when `queue` exists and holds a message (a passive declare, on a channel of its own:
/// a missing queue closes the channel it is asked on).
async fn holds_marker(conn: &lapin::Connection, queue: &str) -> bool {
    let Ok(probe) = conn.create_channel().await else {
        return false;
    };
    let held = crate::broker::inspect(&probe, queue)
        .await
        .is_ok_and(|q| q.message_count() > 0);
    crate::broker::close_channel(&probe, "probe").await;
    held
}

/// Releases the key held in `queue` by task `id`: takes its marker and deletes the queue if
/// it is empty then. A marker of another task (the key was released and taken again, and
/// this is a second run of the first task) is left alone. A missing queue is released already.
///
/// # Errors
/// Broker errors other than the queue being gone.
pub(crate) async fn release(conn: &lapin::Connection, queue: &str, id: &str) -> Result<()> {
    use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, QueueDeleteOptions};
    let amqp = |source| Error::Amqp {
        operation: format!("releasing the unique key in `{queue}`"),
        source,
    };
    let ch = conn.create_channel().await.map_err(amqp)?;
    let got = match ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await
    {
        Ok(got) => got,
        Err(e) if is_not_found(&e) => return Ok(()),
        Err(e) => return Err(amqp(e)),
    };
    if let Some(m) = got {
        let mine = m
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str())
            == Some(id);
        if !mine {
            let _ = m
                .delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await;
            crate::broker::close_channel(&ch, "unique key not ours").await;
            return Ok(());
        }
        m.delivery
            .ack(BasicAckOptions::default())
            .await
            .map_err(amqp)?;
    }
    let opts = QueueDeleteOptions {
        if_empty: true,
        ..Default::default()
    };
    match ch.queue_delete(queue.into(), opts).await {
        Ok(_) => {}
        // Taken again in between (not empty), or gone: either way, not ours any more.
        Err(e) if is_not_found(&e) || is_precondition(&e) => return Ok(()),
        Err(e) => return Err(amqp(e)),
    }
    crate::broker::close_channel(&ch, "unique key released").await;
    Ok(())
}

async fn confirm_channel(conn: &lapin::Connection) -> Result<lapin::Channel> {
    let amqp = |source| Error::Amqp {
        operation: "opening a channel for a unique key".into(),
        source,
    };
    let ch = conn.create_channel().await.map_err(amqp)?;
    ch.confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .map_err(amqp)?;
    Ok(ch)
}

/// A queue that does not exist; not one whose home node is down (it still holds its marker,
/// and will again when the node is back: releasing it must wait for that).
fn is_not_found(e: &lapin::Error) -> bool {
    soft_error(e, lapin::protocol::AMQPSoftError::NOTFOUND) && !e.to_string().contains("down")
}

fn is_precondition(e: &lapin::Error) -> bool {
    soft_error(e, lapin::protocol::AMQPSoftError::PRECONDITIONFAILED)
}

fn soft_error(e: &lapin::Error, which: lapin::protocol::AMQPSoftError) -> bool {
    crate::broker::is_soft(e, which)
}

/// The queues an operator's `free` of `key` deletes: the key's lock and window as
/// [`lock_queues`] names them, and, for a key given as `warren unique list` shows a hashed one
/// (`h-` and 40 hex digits), the queues of that name as it is.
pub(crate) fn queues_to_free(names: &Names, task: &str, key: &str) -> Vec<String> {
    let mut queues: Vec<String> = lock_queues(names, task, key, Some(Duration::ZERO))
        .into_iter()
        .map(|q| q.name)
        .collect();
    let listed_hash = key.len() == 42
        && key.starts_with("h-")
        && key[2..]
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase());
    if listed_hash {
        queues.push(names.unique_lock(task, key));
        queues.push(names.unique_window(task, key));
    }
    queues
}

/// Deletes each of `queues` (one channel each: a missing queue closes the channel it is asked
/// on); true when one of them held a marker.
///
/// # Errors
/// Broker errors other than a queue being gone.
pub(crate) async fn delete_keys(conn: &lapin::Connection, queues: &[String]) -> Result<bool> {
    use lapin::options::QueueDeleteOptions;
    let mut held = false;
    for queue in queues {
        let amqp = |source| Error::Amqp {
            operation: format!("freeing the unique key `{queue}`"),
            source,
        };
        let ch = conn.create_channel().await.map_err(amqp)?;
        match ch
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await
        {
            Ok(markers) => {
                held |= markers > 0;
                crate::broker::close_channel(&ch, "unique key freed").await;
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(amqp(e)),
        }
    }
    Ok(held)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_and_named_plainly_or_hashed() {
        assert!(check_key("").is_err());
        assert!(
            check_key(&"k".repeat(201))
                .unwrap_err()
                .to_string()
                .contains("201")
        );
        assert!(
            check_key("a\nb")
                .unwrap_err()
                .to_string()
                .contains("control")
        );
        check_key("user:42 report, daily").unwrap();
        assert_eq!(key_in_name("user:42"), "user:42");
        // Spaces, `#`, `*`, non-ASCII, or length: hashed, the same every time.
        let hashed = key_in_name("user 42");
        assert!(hashed.starts_with("h-") && hashed.len() == 42, "{hashed}");
        assert_eq!(hashed, key_in_name("user 42"));
        assert_ne!(hashed, key_in_name("user 43"));
        assert!(key_in_name(&"k".repeat(81)).starts_with("h-"));
        // sha256("user 42") begins with these bytes: the naming is documented for other
        // languages, so it must not drift.
        let d = Sha256::digest(b"user 42");
        assert_eq!(&hashed[2..6], &format!("{:02x}{:02x}", d[0], d[1]));
    }

    #[test]
    fn a_key_is_a_classic_queue_of_one_that_refuses_the_second() {
        let names = Names::new("ns");
        let qs = lock_queues(&names, "report", "daily", Some(Duration::from_secs(600)));
        assert_eq!(qs[0].name, "ns.report.unique.daily");
        assert_eq!(qs[0].queue_type(), QueueType::Classic);
        assert_eq!(qs[0].arg("x-max-length"), Some(&ArgValue::Int(1)));
        assert_eq!(
            qs[0].arg("x-overflow"),
            Some(&ArgValue::Str("reject-publish".into()))
        );
        assert_eq!(qs[1].name, "ns.report.unique-for.daily");
        assert_eq!(
            qs[1].arg("x-expires"),
            Some(&ArgValue::Int(WINDOW_QUEUE_EXPIRES_MS)),
            "the same for every window"
        );
        assert_eq!(lock_queues(&names, "report", "daily", None).len(), 1);
    }

    #[test]
    fn freeing_a_key_takes_its_lock_and_window_and_a_listed_hash_as_it_is() {
        let names = Names::new("shop");
        assert_eq!(
            queues_to_free(&names, "mail", "k-1"),
            ["shop.mail.unique.k-1", "shop.mail.unique-for.k-1"]
        );
        let long = "x".repeat(100);
        let hashed = key_in_name(&long);
        let by_key = queues_to_free(&names, "mail", &long);
        assert_eq!(by_key[0], format!("shop.mail.unique.{hashed}"));
        // The listed form names the same queues (and, hashed again, two that never exist).
        let by_listed = queues_to_free(&names, "mail", &hashed);
        assert!(by_listed.contains(&by_key[0]) && by_listed.contains(&by_key[1]));
        assert_eq!(by_listed.len(), 4);
    }
}
