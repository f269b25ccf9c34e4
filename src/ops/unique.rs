//! Unique keys as an operator sees them: which keys of a task type are held, since when, and
//! whether a `unique_for` window still holds them after their task ended.
//!
//! Read through the management API (AMQP cannot list queues), and never by reading a marker:
//! a marker taken out to be read, even to be put back, frees its key for that moment
//! (`x-max-length` counts ready messages only) and could let a second holder in. So the list
//! shows what the queues say: a key, whether its lock or window holds a marker, and when it
//! was taken. Freeing a key is [`crate::Producer::free_unique`].

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::management::Management;
use crate::config::Settings;
use crate::error::{Error, Result};
use crate::topology::{Names, RuntimeQueue};

/// One key of a task type, held by its task or by its window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldKey {
    /// The key as its queue names it: the key itself, or `h-` and 40 hex digits for a long or
    /// unusual key (`warren unique free` takes either form).
    pub key: String,
    /// A task holds it: its lock holds a marker.
    pub by_task: bool,
    /// A `unique_for` window holds it (its marker expires by itself).
    pub by_window: bool,
    /// When it was taken (the oldest marker's timestamp); `None` until the management API
    /// reports it (within 5 s of a new queue), or for a marker without a timestamp.
    pub since: Option<SystemTime>,
}

/// A key queue as the management API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyQueue {
    /// The queue's name.
    pub name: String,
    /// The key as the name holds it.
    pub key: String,
    /// A `unique_for` window, not a lock.
    pub window: bool,
    /// The marker's timestamp, when the API reports one.
    pub since: Option<SystemTime>,
}

/// The held keys of `task` in `settings`' namespace, sorted by key. The API names the key
/// queues; whether each holds its marker is asked over AMQP (a passive declare: exact, and it
/// touches no marker), since the API's counts lag a new queue by up to 5 s.
///
/// # Errors
/// [`Error::InvalidInput`] for a task type the topology does not declare (when it declares
/// any); [`Error::Management`] when the API cannot be read; broker errors.
pub async fn list(settings: &Settings, mgmt: &Management, task: &str) -> Result<Vec<HeldKey>> {
    crate::topology::validate_task_name(task).map_err(Error::InvalidInput)?;
    if !settings.tasks.is_empty() && !settings.tasks.contains_key(task) {
        return Err(Error::InvalidInput(format!(
            "no task `{task}` in the topology"
        )));
    }
    let vhost = crate::broker::url_parts(&settings.amqp_url)?.vhost;
    let columns = "name,arguments,head_message_timestamp";
    let (mgmt, ns) = (mgmt.clone(), settings.namespace.clone());
    let listed = tokio::task::spawn_blocking(move || mgmt.namespace_queues(&vhost, &ns, columns))
        .await
        .map_err(|e| Error::Management(format!("the queue list failed: {e}")))??;
    let queues = key_queues(&Names::new(&settings.namespace), task, &listed);
    let conn = crate::broker::connect(
        &settings.broker_url(),
        "warren unique list",
        Some(settings.connect_timeout),
    )
    .await?;
    let mut keys: BTreeMap<String, HeldKey> = BTreeMap::new();
    for q in queues {
        // One channel per queue: a queue gone meanwhile (released) closes the channel.
        let ch = conn.create_channel().await.map_err(|source| Error::Amqp {
            operation: "opening a channel".into(),
            source,
        })?;
        let held = crate::broker::inspect(&ch, &q.name)
            .await
            .is_ok_and(|state| state.message_count() > 0);
        crate::broker::close_channel(&ch, "unique key read").await;
        if !held {
            continue;
        }
        let entry = keys.entry(q.key.clone()).or_insert_with(|| HeldKey {
            key: q.key.clone(),
            by_task: false,
            by_window: false,
            since: None,
        });
        if q.window {
            entry.by_window = true;
        } else {
            entry.by_task = true;
        }
        entry.since = match (entry.since, q.since) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    crate::broker::close_connection(&conn, "listed").await;
    Ok(keys.into_values().collect())
}

/// Sorts the API's queue list into `task`'s key queues: locks and windows of the key shape
/// (the lock's arguments, not only the name).
pub fn key_queues(names: &Names, task: &str, listed: &[Value]) -> Vec<KeyQueue> {
    let lock_prefix = names.unique_lock(task, "");
    let window_prefix = names.unique_window(task, "");
    let mut queues = Vec::new();
    for q in listed {
        let Some(name) = q["name"].as_str() else {
            continue;
        };
        let args = &q["arguments"];
        if args["x-max-length"] != 1 || args["x-overflow"] != "reject-publish" {
            continue;
        }
        let (key, window) = match names.runtime_queue(task, name) {
            Some(RuntimeQueue::UniqueKey) if name.starts_with(&lock_prefix) => {
                (&name[lock_prefix.len()..], false)
            }
            Some(RuntimeQueue::UniqueKey) if name.starts_with(&window_prefix) => {
                (&name[window_prefix.len()..], true)
            }
            _ => continue,
        };
        queues.push(KeyQueue {
            name: name.to_string(),
            key: key.to_string(),
            window,
            since: q["head_message_timestamp"]
                .as_u64()
                .map(|s| UNIX_EPOCH + Duration::from_secs(s)),
        });
    }
    queues
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn key_args() -> Value {
        json!({"x-queue-type": "classic", "x-max-length": 1, "x-overflow": "reject-publish"})
    }

    #[test]
    fn key_queues_are_told_from_other_queues_by_name_and_shape() {
        let listed = vec![
            json!({"name": "shop.mail", "arguments": {}}),
            json!({"name": "shop.mail.unique.k-1", "arguments": key_args(),
                   "head_message_timestamp": 1_700_000_000u64}),
            json!({"name": "shop.mail.unique-for.k-2", "arguments": key_args()}),
            // the name of a key, not its shape
            json!({"name": "shop.mail.unique.k-4", "arguments": {}}),
            // another type's key
            json!({"name": "shop.other.unique.k-5", "arguments": key_args()}),
        ];
        assert_eq!(
            key_queues(&Names::new("shop"), "mail", &listed),
            vec![
                KeyQueue {
                    name: "shop.mail.unique.k-1".into(),
                    key: "k-1".into(),
                    window: false,
                    since: Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
                },
                KeyQueue {
                    name: "shop.mail.unique-for.k-2".into(),
                    key: "k-2".into(),
                    window: true,
                    since: None,
                },
            ]
        );
    }
}
