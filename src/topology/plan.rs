//! The declaration plan: every exchange, queue and binding a namespace needs, with their
//! arguments. Pure: built from a [`Layout`] and the task types, sent by [`super::declare`].

use super::decl::{
    ArgValue, BindingDecl, Destination, ExchangeDecl, ExchangeKind, QueueDecl, QueueType,
};
use super::ladder::Ladder;
use super::names::Names;

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
    /// A broadcast type: no shared work queue, each worker declares its
    /// [`super::OwnQueue`].
    pub broadcast: bool,
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
    /// `tasks`. `Settings::plan` (in `config`) builds it from the settings.
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
        let exchange = |name: String, kind: ExchangeKind| ExchangeDecl {
            name,
            kind,
            args: Vec::new(),
        };
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

    /// A broadcast type's delayed copies leave the ladder through `{ns}.{task}.listeners`, a
    /// fanout exchange that every worker's own queue binds to. When no worker listens the
    /// exchange routes nowhere and its alternate exchange, `{ns}.{task}.unheard`, puts the
    /// task in the type's dead queue (`dlq list` reads it as `no_listeners`), where the
    /// ladder's foot alone would drop it unseen: dead-lettering has no `mandatory`. Each
    /// worker's own retries go the same way through `{ns}.{task}.retries`, so a retry whose
    /// worker is gone (restarted, or between a lost connection and its new one) is dead
    /// too, not dropped. New
    /// exchange of its own, because an existing one's arguments cannot change: every
    /// namespace gets it by `topology apply`, none needs a migration.
    fn add_listeners(&mut self, layout: &Layout, task: &str, dead: &str) {
        let names = &layout.names;
        let (listeners, unheard) = (names.listeners_exchange(task), names.unheard_exchange(task));
        self.exchanges.push(ExchangeDecl {
            name: listeners.clone(),
            kind: ExchangeKind::Fanout,
            args: vec![("alternate-exchange", ArgValue::Str(unheard.clone()))],
        });
        self.exchanges.push(ExchangeDecl {
            name: unheard.clone(),
            kind: ExchangeKind::Fanout,
            args: Vec::new(),
        });
        let retries = names.retries_exchange(task);
        self.exchanges.push(ExchangeDecl {
            name: retries.clone(),
            kind: ExchangeKind::Topic,
            args: vec![("alternate-exchange", ArgValue::Str(unheard.clone()))],
        });
        self.bind(
            &names.deliver_exchange(),
            &listeners,
            Destination::Exchange,
            format!("#.{task}"),
        );
        // Every worker's own retries of the type: `{task}@` is no task's name.
        self.bind(
            &names.deliver_exchange(),
            &retries,
            Destination::Exchange,
            format!("#.{task}@.#"),
        );
        self.bind(&unheard, dead, Destination::Queue, String::new());
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
            self.add_listeners(layout, name, &dead);
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
pub(super) mod tests {
    use super::*;
    use crate::topology::decl::ArgValue;
    use std::time::Duration;

    /// Namespace `ns` with task types `resize` (delivery limit 10) and `send_email` (4).
    pub(in crate::topology) fn plan(qt: QueueType, max_delay_secs: u64) -> Plan {
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
}
