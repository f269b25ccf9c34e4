//! A broadcast type's queues on each worker: one exclusive queue per worker, bound so that
//! every enqueue reaches every worker and a retry reaches only the worker it failed on. Pure.

use super::decl::{ArgValue, BindingDecl, Destination, QueueDecl, QueueType};
use super::plan::{Layout, Plan, TaskQueues, queue_type_args};

/// One worker's own queue of a broadcast type, with its bindings: declared by the worker on
/// its consuming connection when it starts, gone when that connection closes.
///
/// It is a classic, exclusive, non-durable queue in every namespace, quorum ones included:
/// it lives exactly as long as one connection, so there is nothing to replicate (a quorum
/// queue can be neither exclusive nor transient), and the broker deletes it the moment the
/// worker's connection goes, kill -9 included, so nothing piles up for a worker that is gone
/// (RabbitMQ 4.3 refuses transient queues that are not exclusive; exclusive ones are fine).
/// Its bindings: `{ns}.tasks` with the task name (every enqueue fans out to every worker's
/// queue, as a direct exchange delivers to all matching queues), `{ns}.{task}.listeners`
/// (every delayed one: the fanout exchange at the ladder's foot whose alternate exchange
/// keeps what no worker hears as dead), and `{ns}.{task}.retries` with `#.{task}@.{worker}`,
/// the key this worker's retries travel the ladder under, so a retry returns to this worker
/// only (or, with the worker gone, goes dead through the same alternate exchange).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnQueue {
    /// The queue (declared exclusive and non-durable, not durable like the plan's).
    pub queue: QueueDecl,
    /// Its bindings.
    pub bindings: Vec<BindingDecl>,
    /// The routing key after the ladder's bits that reaches this queue only.
    pub retry_key: String,
}

impl Plan {
    /// The own queue of `worker` (a [`super::names::worker_id`]) for broadcast type `task`.
    pub fn own_queue(layout: &Layout, task: TaskQueues<'_>, worker: &str) -> OwnQueue {
        let names = &layout.names;
        let name = names.own_queue(task.name, worker);
        let retry_key = super::names::retry_key(task.name, worker);
        let mut args = queue_type_args(QueueType::Classic);
        args.push((
            "x-dead-letter-exchange",
            ArgValue::Str(names.dead_exchange()),
        ));
        args.push((
            "x-dead-letter-routing-key",
            ArgValue::Str(task.name.to_string()),
        ));
        if let Some(levels) = task.priorities {
            args.push(("x-max-priority", ArgValue::Int(i64::from(levels))));
        }
        let binding = |source: String, routing_key: String| BindingDecl {
            source,
            destination: name.clone(),
            kind: Destination::Queue,
            routing_key,
        };
        let bindings = vec![
            binding(names.tasks_exchange(), task.name.to_string()),
            binding(names.listeners_exchange(task.name), String::new()),
            binding(names.retries_exchange(task.name), format!("#.{retry_key}")),
        ];
        OwnQueue {
            queue: QueueDecl { name, args },
            bindings,
            retry_key,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::decl::ExchangeKind;
    use crate::topology::{Ladder, Names};
    use std::time::Duration;

    #[test]
    fn a_broadcast_type_has_a_dead_queue_and_each_worker_brings_its_own_queue() {
        let layout = Layout {
            names: Names::new("ns"),
            ladder: Ladder::for_max_delay(Duration::from_secs(7)),
            queue_type: QueueType::Quorum,
        };
        let reload = TaskQueues {
            name: "reload",
            delivery_limit: 5,
            queue_type: None,
            priorities: Some(3),
            broadcast: true,
        };
        let plan = Plan::build(&layout, [reload]);
        let qs: Vec<&str> = plan.queues.iter().map(|q| q.name.as_str()).collect();
        assert!(qs.contains(&"ns.reload.dead"), "{qs:?}");
        assert!(!qs.contains(&"ns.reload"), "no shared work queue: {qs:?}");
        assert!(
            plan.bindings.iter().all(|b| b.destination != "ns.reload"),
            "nothing routes to a shared queue"
        );
        // Delayed copies leave the ladder through a fanout exchange whose alternate exchange
        // keeps what no worker hears in the dead queue.
        let listeners = plan
            .exchanges
            .iter()
            .find(|e| e.name == "ns.reload.listeners")
            .expect("a listeners exchange");
        assert_eq!(listeners.kind, ExchangeKind::Fanout);
        assert_eq!(
            listeners.args,
            [(
                "alternate-exchange",
                ArgValue::Str("ns.reload.unheard".into())
            )]
        );
        assert!(
            plan.bindings.iter().any(|b| b.source == "ns.reload.unheard"
                && b.destination == "ns.reload.dead"
                && b.kind == Destination::Queue),
            "{:?}",
            plan.bindings
        );
        let own = Plan::own_queue(&layout, reload, "web-1.example.com:42");
        assert_eq!(own.queue.name, "ns.reload@web-1.example.com:42");
        // Classic in a quorum namespace (exclusive queues cannot be quorum), dead-lettering
        // into the type's one dead queue, with the type's priorities.
        assert_eq!(own.queue.queue_type(), QueueType::Classic);
        assert_eq!(
            own.queue.arg("x-dead-letter-exchange"),
            Some(&ArgValue::Str("ns.dead".into()))
        );
        assert_eq!(
            own.queue.arg("x-dead-letter-routing-key"),
            Some(&ArgValue::Str("reload".into()))
        );
        assert_eq!(own.queue.arg("x-max-priority"), Some(&ArgValue::Int(3)));
        assert_eq!(own.queue.arg("x-delivery-limit"), None);
        let bound: Vec<(&str, &str)> = own
            .bindings
            .iter()
            .map(|b| (b.source.as_str(), b.routing_key.as_str()))
            .collect();
        assert_eq!(
            bound,
            [
                ("ns.tasks", "reload"),
                ("ns.reload.listeners", ""),
                ("ns.reload.retries", "#.reload@.web-1.example.com:42"),
            ]
        );
        assert_eq!(own.retry_key, "reload@.web-1.example.com:42");
    }

    /// Topic matching as RabbitMQ does it: `*` one word, `#` zero or more.
    fn topic_matches(pattern: &[&str], key: &[&str]) -> bool {
        match (pattern.split_first(), key.split_first()) {
            (None, None) => true,
            (Some((&"#", rest)), _) => {
                topic_matches(rest, key)
                    || key
                        .split_first()
                        .is_some_and(|(_, k)| topic_matches(pattern, k))
            }
            (Some((p, prest)), Some((k, krest))) => {
                (*p == "*" || p == k) && topic_matches(prest, krest)
            }
            _ => false,
        }
    }

    #[test]
    fn a_broadcast_retry_key_reaches_its_own_worker_only() {
        let layout = Layout {
            names: Names::new("ns"),
            ladder: Ladder::for_max_delay(Duration::from_secs(7)),
            queue_type: QueueType::Quorum,
        };
        let task = |name| TaskQueues {
            name,
            delivery_limit: 5,
            queue_type: None,
            priorities: None,
            broadcast: true,
        };
        let a = Plan::own_queue(&layout, task("reload"), "web-1.example.com:42");
        let b = Plan::own_queue(&layout, task("reload"), "example.com:42");
        let c = Plan::own_queue(&layout, task("com"), "x:1");
        let routes = super::super::Routes::new(layout.names.clone(), layout.ladder);
        let deliver = layout.names.deliver_exchange();
        let plan = Plan::build(&layout, [task("reload"), task("com")]);
        let words = |k: &str| k.split('.').map(str::to_string).collect::<Vec<_>>();
        // Whether a message leaving the ladder under `key` reaches `own`: through one of the
        // plan's exchanges bound from the ladder's foot (fanout: any key; topic: by pattern),
        // then one of the own queue's bindings on that exchange.
        let reaches = |own: &OwnQueue, key: &str| {
            let key = words(key);
            let key: Vec<&str> = key.iter().map(String::as_str).collect();
            let matches = |pattern: &str| {
                let p = words(pattern);
                topic_matches(&p.iter().map(String::as_str).collect::<Vec<_>>(), &key)
            };
            plan.bindings.iter().any(|pb| {
                pb.source == deliver
                    && pb.kind == Destination::Exchange
                    && matches(&pb.routing_key)
                    && own.bindings.iter().any(|ob| {
                        let fanout = plan
                            .exchanges
                            .iter()
                            .any(|e| e.name == pb.destination && e.kind == ExchangeKind::Fanout);
                        ob.source == pb.destination && (fanout || matches(&ob.routing_key))
                    })
            })
        };
        // Nothing reaches an own queue straight from the ladder's foot.
        assert!(
            [&a, &b, &c]
                .iter()
                .all(|o| o.bindings.iter().all(|b| b.source != deliver)),
            "{:?}",
            a.bindings
        );
        let retry_a = routes.delayed(&a.retry_key, 3).routing_key;
        assert!(reaches(&a, &retry_a));
        assert!(
            !reaches(&b, &retry_a),
            "a worker whose id is a suffix of a's"
        );
        assert!(
            !reaches(&c, &retry_a),
            "a type named like a word of the host"
        );
        // A delayed broadcast reaches every worker of its type, through the type's listeners
        // exchange, and a retry goes to its own worker only (the retries exchange).
        let fan_out = routes.delayed("reload", 3).routing_key;
        assert!(reaches(&a, &fan_out) && reaches(&b, &fan_out) && !reaches(&c, &fan_out));
        // Each of the two exchanges keeps what reaches no worker (alternate exchange).
        for name in ["ns.reload.listeners", "ns.reload.retries"] {
            let ex = plan.exchanges.iter().find(|e| e.name == name).unwrap();
            assert_eq!(
                ex.args,
                [(
                    "alternate-exchange",
                    ArgValue::Str("ns.reload.unheard".into())
                )],
                "{name}"
            );
        }
    }
}
