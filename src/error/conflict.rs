//! Objects on the broker that stand in the way: declared differently from the topology, or
//! still holding tasks when a namespace is deleted, with the messages that say what to do.

use std::fmt;

/// One argument on one existing object that differs from the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// `queue` or `exchange`.
    pub entity: &'static str,
    /// Object name.
    pub name: String,
    /// Virtual host the object lives in.
    pub vhost: String,
    /// The differing argument (e.g. `x-queue-type`), or `type`/`durable` for exchanges.
    pub argument: String,
    /// The value on the broker (`none` when absent).
    pub existing: String,
    /// The value the topology asks for (`none` when absent).
    pub wanted: String,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} `{}` (vhost `{}`) exists with {} = {}, but the topology wants {}",
            self.entity, self.name, self.vhost, self.argument, self.existing, self.wanted
        )
    }
}

pub(super) fn format_not_empty(queues: &[(String, u32, u32)]) -> String {
    let each: Vec<String> = queues
        .iter()
        .map(|(name, tasks, consumers)| format!("`{name}` ({tasks} tasks, {consumers} consumers)"))
        .collect();
    format!(
        "nothing deleted: {} queue(s) still hold tasks or have consumers: {}",
        queues.len(),
        each.join(", ")
    )
}

pub(super) fn format_conflicts(conflicts: &[Conflict]) -> String {
    let mut out = format!(
        "the broker already has {} object(s) declared differently from the topology:\n",
        conflicts.len()
    );
    for c in conflicts {
        out.push_str(&format!("  - {c}\n"));
    }
    out.push_str(
        "  RabbitMQ cannot change a queue's or exchange's arguments in place. To migrate: stop \
         the producers and workers of that namespace, let the queue drain (or move its messages \
         away with a shovel), delete it (`rabbitmqctl delete_queue -p VHOST NAME`, or the \
         management UI), then declare the topology again. Or change the topology file back to \
         the existing value.",
    );
    out
}
