//! Warren's own state in a namespace's plan, beside its task queues: schedule records, the
//! control exchange and stream, limit tokens, and queues made on first use (pause records).
//! Their messages are not tasks ([`Plan::state`]).

use super::decl::{
    ArgValue, BindingDecl, Destination, ExchangeDecl, ExchangeKind, QueueDecl, QueueType,
};
use super::names::{EVENTS_KEY, Names, pause_key};
use super::plan::{Layout, Plan, TaskQueues, queue_type_args};

impl Plan {
    /// The record queue of schedule `schedule` firing `task`, and its binding: a queue of one
    /// message (`x-max-length = 1`, the oldest dropped), which every firing reaches through
    /// its `BCC` key (the scheduler's firing), so it always holds the last one. Of the
    /// task's queue type: in a quorum namespace the record survives the loss of a node.
    pub fn schedule_record(
        layout: &Layout,
        task: TaskQueues<'_>,
        schedule: &str,
    ) -> (QueueDecl, BindingDecl) {
        let names = &layout.names;
        let queue_type = match task.broadcast {
            true => layout.queue_type,
            false => task.queue_type.unwrap_or(layout.queue_type),
        };
        let name = names.schedule_record(task.name, schedule);
        let mut args = queue_type_args(queue_type);
        args.push(("x-max-length", ArgValue::Int(1)));
        if queue_type == QueueType::Quorum {
            // The record is read by `basic.get` and given back, which a quorum queue counts
            // as a delivery; RabbitMQ 4.0 would drop it after 20 (its default limit).
            args.push(("x-delivery-limit", ArgValue::Int(i64::from(i32::MAX))));
        }
        let binding = BindingDecl {
            source: names.tasks_exchange(),
            destination: name.clone(),
            kind: Destination::Queue,
            routing_key: super::names::schedule_key(task.name, schedule),
        };
        (QueueDecl { name, args }, binding)
    }

    /// Adds the record queue and binding of schedule `schedule` firing `task`.
    pub fn add_schedule(&mut self, layout: &Layout, task: TaskQueues<'_>, schedule: &str) {
        let (queue, binding) = Plan::schedule_record(layout, task, schedule);
        self.state.push(queue.name.clone());
        self.queues.push(queue);
        self.bindings.push(binding);
    }

    /// Adds a limited type's token queue (classic: tokens are taken by `basic.get` and
    /// given back, which a quorum queue would count as deliveries): its messages are
    /// tokens, Warren's state. Bound as [`Plan::state_binding`] says, for the refills.
    pub fn add_tokens(&mut self, names: &Names, queue: String) {
        self.state.push(queue.clone());
        self.bindings.push(Plan::state_binding(names, &queue));
        self.queues.push(QueueDecl {
            name: queue,
            args: queue_type_args(QueueType::Classic),
        });
    }

    /// Adds a limited type's record of the limits in force (one message, the newest; classic,
    /// read by `basic.get` and given back), made on first use with its first message so that
    /// "no queue" means "never written", and the debt queue of each of its token queues.
    pub fn add_limit_state(&mut self, names: &Names, task: &str, tokens: &[String]) {
        let record = names.limit_record(task);
        let mut args = queue_type_args(QueueType::Classic);
        args.push(("x-max-length", ArgValue::Int(1)));
        self.state.push(record.clone());
        self.lazy.push(QueueDecl { name: record, args });
        for queue in tokens {
            let debt = names.limit_debt(queue);
            self.state.push(debt.clone());
            self.bindings.push(Plan::state_binding(names, &debt));
            self.queues.push(QueueDecl {
                name: debt,
                args: queue_type_args(QueueType::Classic),
            });
        }
    }

    /// The binding through which Warren writes a state queue of its own (limit tokens, a
    /// unique key's marker): from the control exchange, under the queue's own name. Not the
    /// default exchange: publishing there needs write permission on `amq.default`, which
    /// reaches every queue of the vhost, so a user limited to the namespace (`^ns\.`) could
    /// not take a unique key or refill tokens.
    pub fn state_binding(names: &Names, queue: &str) -> BindingDecl {
        BindingDecl {
            source: names.control_exchange(),
            destination: queue.to_string(),
            kind: Destination::Queue,
            routing_key: queue.to_string(),
        }
    }

    /// The pause record queue of `task` and its binding from the control exchange: one
    /// message, the last pause or resume, which reaches it by `BCC` ([`pause_key`]). Classic
    /// in every namespace: it is read by `basic.get` and given back, which a quorum queue
    /// counts as a delivery (RabbitMQ 4.0 drops a message after 20), and the control stream
    /// holds the same events for the retention if its node is lost.
    pub fn pause_record(names: &Names, task: &str) -> (QueueDecl, BindingDecl) {
        let mut args = queue_type_args(QueueType::Classic);
        args.push(("x-max-length", ArgValue::Int(1)));
        let queue = QueueDecl {
            name: names.pause_record(task),
            args,
        };
        let binding = BindingDecl {
            source: names.control_exchange(),
            destination: queue.name.clone(),
            kind: Destination::Queue,
            routing_key: pause_key(task),
        };
        (queue, binding)
    }

    /// Adds `task`'s pause record as a queue made on first use (by the first pause or
    /// resume), deleted with the namespace (see [`Plan::lazy`]).
    pub fn add_pause_record(&mut self, names: &Names, task: &str) {
        let (queue, _) = Plan::pause_record(names, task);
        self.state.push(queue.name.clone());
        self.lazy.push(queue);
    }

    /// Adds the console's audit stream `{ns}.console.audit` as a queue made on first use (the first
    /// action an operator takes in `warren console`), kept for a year at most and deleted with
    /// the namespace (see [`Plan::lazy`]).
    pub fn add_audit(&mut self, names: &Names) {
        let queue = Plan::audit_stream(names);
        self.state.push(queue.name.clone());
        self.lazy.push(queue);
    }

    /// The audit stream's declaration (see [`Plan::add_audit`]).
    pub fn audit_stream(names: &Names) -> QueueDecl {
        QueueDecl {
            name: names.audit_stream(),
            args: vec![
                ("x-queue-type", ArgValue::Str("stream".into())),
                ("x-max-age", ArgValue::Str("365D".into())),
                ("x-max-length-bytes", ArgValue::Int(100_000_000)),
                ("x-stream-max-segment-size-bytes", ArgValue::Int(1_000_000)),
            ],
        }
    }

    /// Adds the control exchange `{ns}.control` (direct) and the control stream of the same
    /// name, bound under [`EVENTS_KEY`], keeping events for `retention`: a worker that starts replays
    /// what it missed from the stream.
    pub fn add_control(&mut self, layout: &Layout, retention: std::time::Duration) {
        let names = &layout.names;
        let exchange = names.control_exchange();
        let stream = QueueDecl {
            name: names.control_stream(),
            args: vec![
                ("x-queue-type", ArgValue::Str("stream".into())),
                (
                    "x-max-age",
                    ArgValue::Str(format!("{}s", retention.as_secs())),
                ),
                // Retention drops whole segments: small ones, so a week's age means a week,
                // not "once the default segment's 500 MB have filled".
                ("x-stream-max-segment-size-bytes", ArgValue::Int(1_000_000)),
            ],
        };
        self.exchanges.push(ExchangeDecl {
            name: exchange.clone(),
            kind: ExchangeKind::Direct,
            args: Vec::new(),
        });
        self.bind(
            &exchange,
            &stream.name,
            Destination::Queue,
            EVENTS_KEY.to_string(),
        );
        self.state.push(stream.name.clone());
        self.queues.push(stream);
    }
}
