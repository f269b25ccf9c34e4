//! The queues a namespace makes as it runs, which its plan does not name: workers' own queues
//! of broadcast types and unique keys. `topology delete` needs them (AMQP cannot list
//! queues, the management API can), or the namespace it deletes leaves them behind.

use serde_json::Value;

use super::management::Management;
use crate::config::Settings;
use crate::error::Result;
use crate::topology::teardown::QueueState;
use crate::topology::{Names, RuntimeQueue, RuntimeQueues};

/// The run-time queues of `settings`' namespace on the broker, through `mgmt`.
///
/// # Errors
/// [`crate::Error::Management`] when the API cannot be read (also when the vhost does not
/// exist); [`crate::Error::Config`] for a bad AMQP URL.
pub fn runtime_queues(settings: &Settings, mgmt: &Management) -> Result<RuntimeQueues> {
    let vhost = crate::broker::url_parts(&settings.amqp_url)?.vhost;
    let columns = "name,arguments,exclusive,messages,consumers";
    let listed = mgmt.namespace_queues(&vhost, &settings.namespace, columns)?;
    let tasks: Vec<&str> = settings.tasks.keys().map(String::as_str).collect();
    Ok(classify(&Names::new(&settings.namespace), &tasks, &listed))
}

/// Sorts the API's queue list (items of `GET /api/queues/{vhost}`) into the run-time queues
/// of `tasks`. A name is not enough (see [`Names::runtime_queue`]): an own queue is also
/// exclusive, a unique key also has the lock's arguments.
pub fn classify(names: &Names, tasks: &[&str], listed: &[Value]) -> RuntimeQueues {
    let mut found = RuntimeQueues::default();
    for q in listed {
        let Some(name) = q["name"].as_str() else {
            continue;
        };
        let Some(kind) = tasks.iter().find_map(|t| names.runtime_queue(t, name)) else {
            continue;
        };
        let args = &q["arguments"];
        match kind {
            RuntimeQueue::Own if q["exclusive"] == true => found.own.push(QueueState {
                name: name.to_string(),
                messages: count(&q["messages"]),
                consumers: count(&q["consumers"]),
            }),
            RuntimeQueue::UniqueKey
                if args["x-max-length"] == 1 && args["x-overflow"] == "reject-publish" =>
            {
                found.keys.push(name.to_string());
            }
            _ => {}
        }
    }
    found
}

fn count(v: &Value) -> u32 {
    v.as_u64()
        .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn key_args() -> Value {
        json!({"x-queue-type": "classic", "x-max-length": 1, "x-overflow": "reject-publish"})
    }

    #[test]
    fn own_queues_and_keys_are_found_and_everything_else_is_left() {
        let listed = vec![
            json!({"name": "shop.mail", "arguments": {}, "exclusive": false, "messages": 3}),
            json!({"name": "shop.mail@h:1", "arguments": {}, "exclusive": true,
                   "messages": 2, "consumers": 1}),
            json!({"name": "shop.mail.unique.k", "arguments": key_args(), "exclusive": false}),
            json!({"name": "shop.mail.unique-for.k", "arguments": key_args()}),
            // Same shape, another task type the topology does not declare.
            json!({"name": "shop.other.unique.k", "arguments": key_args()}),
            // A name that looks like a key, without the lock's arguments (`shop.mail`'s type
            // `unique` would have it).
            json!({"name": "shop.mail.unique.dead", "arguments": {"x-queue-type": "quorum"}}),
            // Not exclusive: not a worker's own queue.
            json!({"name": "shop.mail@h:2", "arguments": {}, "exclusive": false}),
        ];
        let found = classify(&Names::new("shop"), &["mail"], &listed);
        assert_eq!(
            found.own,
            [QueueState {
                name: "shop.mail@h:1".into(),
                messages: 2,
                consumers: 1
            }]
        );
        assert_eq!(found.keys, ["shop.mail.unique.k", "shop.mail.unique-for.k"]);
    }
}
