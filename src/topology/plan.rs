//! The declaration plan: every exchange, queue and binding a namespace needs, with their
//! arguments. Pure: built from a [`Layout`] and the task types, sent by [`super::declare`].

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::ladder::Ladder;
use super::names::Names;

/// Queue type for work, dead and delay queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// Raft-replicated; survives the loss of a minority of cluster nodes. The default.
    #[default]
    Quorum,
    /// Single-node queue; cheaper, no replication.
    Classic,
}

impl QueueType {
    /// The value of the `x-queue-type` argument.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        }
    }
}

/// Exchange type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    /// Exact routing-key match.
    Direct,
    /// Pattern match on dot-separated words.
    Topic,
}

impl ExchangeKind {
    /// The AMQP name of the type.
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Topic => "topic",
        }
    }
}

/// A queue argument value. Integers go on the wire as integers and strings as AMQP long
/// strings: RabbitMQ rejects a TTL sent as a string, and a short string in a field table
/// resets the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgValue {
    /// An integer argument (TTL, delivery limit).
    Int(i64),
    /// A string argument (queue type, dead-letter exchange).
    Str(String),
}

impl std::fmt::Display for ArgValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ArgValue::Int(i) => write!(f, "{i}"),
            ArgValue::Str(s) => write!(f, "{s}"),
        }
    }
}

/// One exchange to declare (always durable, never auto-deleted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeDecl {
    /// Exchange name.
    pub name: String,
    /// Exchange type.
    pub kind: ExchangeKind,
}

/// One queue to declare (always durable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDecl {
    /// Queue name.
    pub name: String,
    /// Arguments in a stable order.
    pub args: Vec<(&'static str, ArgValue)>,
}

impl QueueDecl {
    /// The value of argument `key`, if declared.
    pub fn arg(&self, key: &str) -> Option<&ArgValue> {
        self.args.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// Its type: quorum when declared `x-queue-type = quorum`, classic otherwise.
    pub fn queue_type(&self) -> QueueType {
        match self.arg("x-queue-type") {
            Some(ArgValue::Str(t)) if t == QueueType::Quorum.as_str() => QueueType::Quorum,
            _ => QueueType::Classic,
        }
    }
}

/// What a binding points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// A queue.
    Queue,
    /// Another exchange (exchange-to-exchange binding).
    Exchange,
}

/// One binding to declare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingDecl {
    /// Source exchange.
    pub source: String,
    /// Destination queue or exchange.
    pub destination: String,
    /// Whether the destination is a queue or an exchange.
    pub kind: Destination,
    /// Routing key or topic pattern.
    pub routing_key: String,
}

/// Everything a namespace needs, in declaration order: exchanges, queues, bindings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Exchanges.
    pub exchanges: Vec<ExchangeDecl>,
    /// Queues.
    pub queues: Vec<QueueDecl>,
    /// Bindings (after both ends exist).
    pub bindings: Vec<BindingDecl>,
    /// Queues of `queues` and `lazy` whose messages are Warren's own state, not tasks (the
    /// control stream, schedule and pause records, limit tokens): deleting the namespace does
    /// not count them as work to lose.
    pub state: Vec<String>,
    /// Queues made on first use rather than by `apply` (a type's pause record, made by its
    /// first pause): not declared, but deleted with the namespace when they exist.
    pub lazy: Vec<QueueDecl>,
}

/// One task type's queues as the plan needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskQueues<'a> {
    /// Task name (validated).
    pub name: &'a str,
    /// Quorum queues only: deliveries before the broker dead-letters a task
    /// (`x-delivery-limit`).
    pub delivery_limit: u32,
    /// This type's queue type, when it differs from the namespace's.
    pub queue_type: Option<QueueType>,
    /// Classic only: a priority work queue with this many levels (`x-max-priority`).
    pub priorities: Option<u8>,
    /// A broadcast type: no shared work queue, each worker declares its [`OwnQueue`].
    pub broadcast: bool,
}

/// One worker's own queue of a broadcast type, with its bindings: declared by the worker on
/// its consuming connection when it starts, gone when that connection closes.
///
/// It is a classic, exclusive, non-durable queue in every namespace, quorum ones included:
/// it lives exactly as long as one connection, so there is nothing to replicate (a quorum
/// queue can be neither exclusive nor transient), and the broker deletes it the moment the
/// worker's connection goes, kill -9 included, so nothing piles up for a worker that is gone
/// (RabbitMQ 4.3 refuses transient queues that are not exclusive; exclusive ones are fine).
/// Its bindings: `{ns}.tasks` with the task name and `{ns}.delay.deliver` with `#.{task}`
/// (every enqueue and every delayed one fans out to every worker's queue, as a direct or topic
/// exchange delivers to all matching queues), and `{ns}.delay.deliver` with
/// `#.{task}@{worker}`, the key this worker's retries travel the ladder under, so a retry
/// returns to this worker only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnQueue {
    /// The queue (declared exclusive and non-durable, not durable like the plan's).
    pub queue: QueueDecl,
    /// Its bindings.
    pub bindings: Vec<BindingDecl>,
    /// The routing key after the ladder's bits that reaches this queue only.
    pub retry_key: String,
}

/// The shape of a namespace: where it lives and how its queues are made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The namespace's names.
    pub names: Names,
    /// Its delay ladder.
    pub ladder: Ladder,
    /// Type of every queue.
    pub queue_type: QueueType,
}

impl Plan {
    /// Every exchange, queue and binding of `layout` with a work and a dead queue for each of
    /// `tasks`. [`crate::Settings::plan`] builds it from the settings.
    pub fn build<'a>(layout: &Layout, tasks: impl IntoIterator<Item = TaskQueues<'a>>) -> Plan {
        let mut plan = Plan::default();
        plan.add_exchanges(layout);
        for level in layout.ladder.levels() {
            plan.add_ladder_level(layout, level);
        }
        for task in tasks {
            plan.add_task(layout, task);
        }
        plan
    }

    fn add_exchanges(&mut self, layout: &Layout) {
        let names = &layout.names;
        let exchange = |name: String, kind: ExchangeKind| ExchangeDecl { name, kind };
        self.exchanges
            .push(exchange(names.tasks_exchange(), ExchangeKind::Direct));
        self.exchanges
            .push(exchange(names.dead_exchange(), ExchangeKind::Direct));
        self.exchanges
            .push(exchange(names.deliver_exchange(), ExchangeKind::Topic));
        for level in layout.ladder.levels() {
            self.exchanges
                .push(exchange(names.delay_level(level), ExchangeKind::Topic));
        }
    }

    /// Level n holds a message for exactly 2^n s, then dead-letters it (same routing key) into
    /// the exchange below. One fixed TTL per queue keeps each level FIFO in expiry order; see
    /// [`super::ladder`].
    fn add_ladder_level(&mut self, layout: &Layout, level: u32) {
        let (names, qt) = (&layout.names, layout.queue_type);
        let here = names.delay_level(level);
        let below = if level == 0 {
            names.deliver_exchange()
        } else {
            names.delay_level(level - 1)
        };
        let mut args = queue_type_args(qt);
        args.push((
            "x-message-ttl",
            ArgValue::Int(Ladder::level_ttl_ms(level) as i64),
        ));
        args.push(("x-dead-letter-exchange", ArgValue::Str(below.clone())));
        args.extend(at_least_once_dead_lettering(qt));
        self.queues.push(QueueDecl {
            name: here.clone(),
            args,
        });
        self.bind(
            &here,
            &here,
            Destination::Queue,
            layout.ladder.binding_key(level, true),
        );
        self.bind(
            &here,
            &below,
            Destination::Exchange,
            layout.ladder.binding_key(level, false),
        );
    }

    /// The own queue of `worker` (a [`super::names::worker_id`]) for broadcast type `task`.
    pub fn own_queue(layout: &Layout, task: TaskQueues<'_>, worker: &str) -> OwnQueue {
        let names = &layout.names;
        let name = names.own_queue(task.name, worker);
        let retry_key = super::names::own_key(task.name, worker);
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
            binding(names.deliver_exchange(), format!("#.{}", task.name)),
            binding(names.deliver_exchange(), format!("#.{retry_key}")),
        ];
        OwnQueue {
            queue: QueueDecl { name, args },
            bindings,
            retry_key,
        }
    }

    fn add_task(&mut self, layout: &Layout, task: TaskQueues<'_>) {
        let (names, name) = (&layout.names, task.name);
        let qt = task.queue_type.unwrap_or(layout.queue_type);
        let work = names.work_queue(name);
        let dead = names.dead_queue(name);
        if task.broadcast {
            // No shared work queue: each worker brings its own (`OwnQueue`), and the dead
            // queue collects every worker's dead copies.
            self.queues.push(QueueDecl {
                name: dead.clone(),
                args: queue_type_args(qt),
            });
            self.bind(
                &names.dead_exchange(),
                &dead,
                Destination::Queue,
                name.to_string(),
            );
            return;
        }
        let mut args = queue_type_args(qt);
        args.push((
            "x-dead-letter-exchange",
            ArgValue::Str(names.dead_exchange()),
        ));
        // A task that came down the ladder carries the long key; dead-letter it under its
        // plain name so it lands in its own dead queue.
        args.push(("x-dead-letter-routing-key", ArgValue::Str(name.to_string())));
        if qt == QueueType::Quorum {
            args.push((
                "x-delivery-limit",
                ArgValue::Int(i64::from(task.delivery_limit)),
            ));
        }
        args.extend(at_least_once_dead_lettering(qt));
        if let Some(levels) = task.priorities {
            args.push(("x-max-priority", ArgValue::Int(i64::from(levels))));
        }
        self.queues.push(QueueDecl {
            name: work.clone(),
            args,
        });
        self.queues.push(QueueDecl {
            name: dead.clone(),
            args: queue_type_args(qt),
        });
        self.bind(
            &names.tasks_exchange(),
            &work,
            Destination::Queue,
            name.to_string(),
        );
        self.bind(
            &names.deliver_exchange(),
            &work,
            Destination::Queue,
            format!("#.{name}"),
        );
        self.bind(
            &names.dead_exchange(),
            &dead,
            Destination::Queue,
            name.to_string(),
        );
    }

    pub(super) fn bind(
        &mut self,
        source: &str,
        destination: &str,
        kind: Destination,
        routing_key: String,
    ) {
        self.bindings.push(BindingDecl {
            source: source.to_string(),
            destination: destination.to_string(),
            kind,
            routing_key,
        });
    }

    /// RabbitMQ definitions JSON for this plan (no `vhost` keys): import it into one vhost
    /// with the management UI ("Import definitions") or `POST /api/definitions/{vhost}`.
    pub fn to_definitions(&self) -> Value {
        let exchanges: Vec<Value> = self
            .exchanges
            .iter()
            .map(|e| {
                json!({"name": e.name, "type": e.kind.as_str(), "durable": true,
                       "auto_delete": false, "internal": false, "arguments": {}})
            })
            .collect();
        let queues: Vec<Value> = self
            .queues
            .iter()
            .map(|q| {
                let args: Map<String, Value> = q
                    .args
                    .iter()
                    .map(|(k, v)| {
                        let v = match v {
                            ArgValue::Int(i) => json!(i),
                            ArgValue::Str(s) => json!(s),
                        };
                        (k.to_string(), v)
                    })
                    .collect();
                json!({"name": q.name, "durable": true, "auto_delete": false, "arguments": args})
            })
            .collect();
        let bindings: Vec<Value> = self
            .bindings
            .iter()
            .map(|b| {
                let dt = match b.kind {
                    Destination::Queue => "queue",
                    Destination::Exchange => "exchange",
                };
                json!({"source": b.source, "destination": b.destination, "destination_type": dt,
                       "routing_key": b.routing_key, "arguments": {}})
            })
            .collect();
        json!({"exchanges": exchanges, "queues": queues, "bindings": bindings,
               "policies": [], "parameters": []})
    }
}

pub(super) fn queue_type_args(qt: QueueType) -> Vec<(&'static str, ArgValue)> {
    vec![("x-queue-type", ArgValue::Str(qt.as_str().to_string()))]
}

/// Quorum queues dead-letter at-most-once unless told otherwise, and RabbitMQ silently falls
/// back to at-most-once unless overflow is `reject-publish`; a failover could then drop a
/// delayed or expiring task.
fn at_least_once_dead_lettering(qt: QueueType) -> Vec<(&'static str, ArgValue)> {
    match qt {
        QueueType::Quorum => vec![
            (
                "x-dead-letter-strategy",
                ArgValue::Str("at-least-once".into()),
            ),
            ("x-overflow", ArgValue::Str("reject-publish".into())),
        ],
        QueueType::Classic => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Namespace `ns` with task types `resize` (delivery limit 10) and `send_email` (4).
    fn plan(qt: QueueType, max_delay_secs: u64) -> Plan {
        let layout = Layout {
            names: Names::new("ns"),
            ladder: Ladder::for_max_delay(Duration::from_secs(max_delay_secs)),
            queue_type: qt,
        };
        let tasks = [("resize", 10), ("send_email", 4)].map(|(name, delivery_limit)| TaskQueues {
            queue_type: None,
            priorities: None,
            broadcast: false,
            name,
            delivery_limit,
        });
        Plan::build(&layout, tasks)
    }

    fn queue<'a>(plan: &'a Plan, name: &str) -> &'a QueueDecl {
        plan.queues
            .iter()
            .find(|q| q.name == name)
            .unwrap_or_else(|| panic!("no queue {name}"))
    }

    #[test]
    fn every_named_object_is_planned_once() {
        let plan = plan(QueueType::Quorum, 7); // L = 2
        let ex: Vec<&str> = plan.exchanges.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            ex,
            [
                "ns.tasks",
                "ns.dead",
                "ns.delay.deliver",
                "ns.delay.2",
                "ns.delay.1",
                "ns.delay.0"
            ]
        );
        let qs: Vec<&str> = plan.queues.iter().map(|q| q.name.as_str()).collect();
        assert_eq!(
            qs,
            [
                "ns.delay.2",
                "ns.delay.1",
                "ns.delay.0",
                "ns.resize",
                "ns.resize.dead",
                "ns.send_email",
                "ns.send_email.dead"
            ]
        );
        assert_eq!(plan.bindings.len(), 3 * 2 + 2 * 3);
    }

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
                ("ns.delay.deliver", "#.reload"),
                ("ns.delay.deliver", "#.reload@web-1.example.com:42"),
            ]
        );
        assert_eq!(own.retry_key, "reload@web-1.example.com:42");
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
        let reaches = |own: &OwnQueue, key: &str| {
            let key: Vec<&str> = key.split('.').collect();
            own.bindings.iter().any(|bd| {
                bd.source == deliver
                    && topic_matches(&bd.routing_key.split('.').collect::<Vec<_>>(), &key)
            })
        };
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
        // A delayed broadcast reaches every worker of its type.
        let fan_out = routes.delayed("reload", 3).routing_key;
        assert!(reaches(&a, &fan_out) && reaches(&b, &fan_out) && !reaches(&c, &fan_out));
    }

    #[test]
    fn work_queues_dead_letter_under_the_plain_task_name() {
        let plan = plan(QueueType::Quorum, 60);
        let q = queue(&plan, "ns.send_email");
        assert_eq!(q.arg("x-queue-type"), Some(&ArgValue::Str("quorum".into())));
        assert_eq!(
            q.arg("x-dead-letter-exchange"),
            Some(&ArgValue::Str("ns.dead".into()))
        );
        assert_eq!(
            q.arg("x-dead-letter-routing-key"),
            Some(&ArgValue::Str("send_email".into()))
        );
        assert_eq!(q.arg("x-delivery-limit"), Some(&ArgValue::Int(4)));
        assert_eq!(
            q.arg("x-dead-letter-strategy"),
            Some(&ArgValue::Str("at-least-once".into()))
        );
        assert_eq!(
            q.arg("x-overflow"),
            Some(&ArgValue::Str("reject-publish".into()))
        );
        assert_eq!(
            queue(&plan, "ns.resize").arg("x-delivery-limit"),
            Some(&ArgValue::Int(10))
        );
    }

    #[test]
    fn classic_queues_carry_no_quorum_only_arguments() {
        let plan = plan(QueueType::Classic, 60);
        for q in &plan.queues {
            assert_eq!(
                q.arg("x-queue-type"),
                Some(&ArgValue::Str("classic".into()))
            );
            for quorum_only in ["x-delivery-limit", "x-dead-letter-strategy", "x-overflow"] {
                assert_eq!(q.arg(quorum_only), None, "{} has {quorum_only}", q.name);
            }
        }
    }

    #[test]
    fn delay_levels_hold_for_two_to_the_n_seconds_and_fall_to_the_level_below() {
        let plan = plan(QueueType::Quorum, 7);
        let expect = [
            ("ns.delay.2", 4000, "ns.delay.1"),
            ("ns.delay.1", 2000, "ns.delay.0"),
            ("ns.delay.0", 1000, "ns.delay.deliver"),
        ];
        for (name, ttl, dlx) in expect {
            let q = queue(&plan, name);
            assert_eq!(q.arg("x-message-ttl"), Some(&ArgValue::Int(ttl)), "{name}");
            assert_eq!(
                q.arg("x-dead-letter-exchange"),
                Some(&ArgValue::Str(dlx.into())),
                "{name}"
            );
            // no routing-key override: the bits must survive dead-lettering
            assert_eq!(q.arg("x-dead-letter-routing-key"), None, "{name}");
        }
    }

    #[test]
    fn the_ladder_bindings_split_on_each_bit() {
        let plan = plan(QueueType::Classic, 7);
        let b = |src: &str, dst: &str| {
            plan.bindings
                .iter()
                .find(|b| b.source == src && b.destination == dst)
                .map(|b| (b.kind, b.routing_key.clone()))
        };
        assert_eq!(
            b("ns.delay.2", "ns.delay.2"),
            Some((Destination::Queue, "1.#".into()))
        );
        assert_eq!(
            b("ns.delay.2", "ns.delay.1"),
            Some((Destination::Exchange, "0.#".into()))
        );
        assert_eq!(
            b("ns.delay.1", "ns.delay.1"),
            Some((Destination::Queue, "*.1.#".into()))
        );
        assert_eq!(
            b("ns.delay.0", "ns.delay.deliver"),
            Some((Destination::Exchange, "*.*.0.#".into()))
        );
        assert_eq!(
            b("ns.delay.deliver", "ns.resize"),
            Some((Destination::Queue, "#.resize".into()))
        );
        assert_eq!(
            b("ns.tasks", "ns.resize"),
            Some((Destination::Queue, "resize".into()))
        );
        assert_eq!(
            b("ns.dead", "ns.resize.dead"),
            Some((Destination::Queue, "resize".into()))
        );
    }

    #[test]
    fn the_default_month_long_ladder_has_22_levels() {
        let plan = plan(QueueType::Quorum, 30 * 86400);
        assert_eq!(
            plan.queues
                .iter()
                .filter(|q| q.name.starts_with("ns.delay."))
                .count(),
            22
        );
    }

    #[test]
    fn definitions_keep_integer_arguments_as_numbers() {
        let defs = plan(QueueType::Quorum, 7).to_definitions();
        let q = defs["queues"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["name"] == "ns.delay.1")
            .unwrap();
        assert_eq!(q["arguments"]["x-message-ttl"], json!(2000));
        assert_eq!(q["arguments"]["x-queue-type"], json!("quorum"));
        assert_eq!(
            defs["exchanges"][0],
            json!({"name":"ns.tasks","type":"direct","durable":true,"auto_delete":false,"internal":false,"arguments":{}})
        );
        assert!(
            defs["bindings"]
                .as_array()
                .unwrap()
                .iter()
                .any(|b| b["destination_type"] == "exchange")
        );
    }
}
