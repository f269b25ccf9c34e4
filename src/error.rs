//! Infrastructure errors: what went wrong talking to the broker or reading configuration.
//!
//! Each variant is a case a caller handles differently, and carries the names that make the
//! message actionable. Messages state facts; advice in terms of a particular program (the
//! `warren` command's flags and subcommands) is that program's to add. Handler outcomes live
//! in [`crate::task::TaskError`], not here.

use std::fmt;
use std::path::PathBuf;

/// Result alias for Warren's infrastructure operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong outside a task handler.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration (topology file, environment, flags) is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// The topology file could not be read.
    #[error("invalid configuration: cannot read topology file `{}`: {source}", path.display())]
    TopologyFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },

    /// The caller passed something that cannot be enqueued (bad name, delay, expiry, size).
    #[error("{0}")]
    InvalidInput(String),

    /// A queue the operation reads does not exist (a wrong task name or namespace, or a
    /// topology that was never applied).
    #[error("queue `{queue}` does not exist")]
    MissingQueue {
        /// The queue's name.
        queue: String,
    },

    /// Deleting a namespace would lose tasks: these queues (name, ready tasks, consumers) are
    /// not empty or have consumers. Nothing was deleted.
    #[error("{}", format_not_empty(.queues))]
    NotEmpty {
        /// Each queue that is not empty: name, ready tasks, consumers.
        queues: Vec<(String, u32, u32)>,
    },

    /// The broker could not be reached within the connect deadline.
    #[error("cannot connect to RabbitMQ at {url}: {reason}")]
    Connect {
        /// The broker URL with its password redacted.
        url: String,
        /// What failed on the last attempt.
        reason: String,
    },

    /// The broker refused our credentials or the virtual host.
    #[error("RabbitMQ at {url} refused the connection: {reason} ({because})")]
    Refused {
        /// The broker URL with its password redacted.
        url: String,
        /// The broker's reason.
        reason: String,
        /// Which of our settings it refused.
        because: AccessDenied,
    },

    /// Declaring an exchange, queue or binding failed for a reason other than a conflict.
    #[error("declaring {entity} `{name}` failed: {source}")]
    Declare {
        /// `exchange`, `queue` or `binding`.
        entity: &'static str,
        /// The object's name.
        name: String,
        /// The broker's error.
        source: lapin::Error,
    },

    /// Existing broker objects differ from the declared topology.
    #[error("{}", format_conflicts(.0))]
    TopologyConflict(Vec<Conflict>),

    /// The message was returned by the broker: no queue is bound for it.
    #[error(
        "the broker could not route a `{task}` task (no queue bound for it in namespace `{namespace}`)"
    )]
    Unroutable {
        /// Task name.
        task: String,
        /// Namespace the producer publishes into.
        namespace: String,
    },

    /// The broker does not know the exchange we publish to.
    #[error("exchange `{exchange}` does not exist")]
    MissingExchange {
        /// The exchange name.
        exchange: String,
    },

    /// The broker refused the message (basic.nack), e.g. a full queue with `reject-publish`.
    #[error(
        "the broker refused a `{task}` task (nack): a queue may be full (x-overflow = \
         reject-publish) or a cluster has lost its majority"
    )]
    Refusal {
        /// Task name.
        task: String,
    },

    /// An AMQP operation failed (publish, consume, ack), after any retries.
    #[error("{operation} failed: {source}")]
    Amqp {
        /// What we were doing.
        operation: String,
        /// The broker or client error.
        source: lapin::Error,
    },

    /// Applying the plan would take the broker past the quorum queues its file handle budget
    /// holds: a node past it stops accepting connections. Nothing was declared.
    #[error("applying would exhaust the broker's file handles: {}", .0.describe())]
    WouldNotFit(Box<crate::ops::capacity::Capacity>),

    /// The broker is older than Warren supports (`ops::version::MINIMUM`).
    #[error("{0}")]
    UnsupportedBroker(String),

    /// The management HTTP API could not be reached.
    #[error("the RabbitMQ management API at {base} is unreachable ({reason})")]
    ManagementUnreachable {
        /// The API's base URL (no credentials in it).
        base: String,
        /// The transport error.
        reason: String,
    },

    /// The management HTTP API refused our credentials (401).
    #[error("the management API at {base} refused user `{user}` (401)")]
    ManagementRefused {
        /// The API's base URL (no credentials in it).
        base: String,
        /// The user name we sent.
        user: String,
    },

    /// The management HTTP API answered with an error or unreadable JSON.
    #[error("{0}")]
    Management(String),

    /// A local I/O operation failed (reading a payload file, spawning a handler).
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },

    /// A bug in Warren: an invariant did not hold. Please report it.
    #[error("internal error (a bug in Warren, please report it): {0}")]
    Internal(String),

    /// A unique task whose key is held: by a task waiting, delayed or running, or within the
    /// `unique_for` window of the last one.
    #[error("duplicate: a `{task}` task with unique key `{key}` is already enqueued or running")]
    Duplicate {
        /// Task name.
        task: String,
        /// The unique key.
        key: String,
    },

    /// Waiting for a task's outcome did not give its result.
    #[error(transparent)]
    Wait(#[from] WaitFailure),
}

/// Why waiting for a task's outcome ([`crate::Producer::call`]) gave no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WaitFailure {
    /// No answer came in time. The task may still run (or be running): it was enqueued, or
    /// its publishing took the whole wait.
    #[error("no answer for `{task}` task {id} within {after}; the task may still run")]
    TimedOut {
        /// Task name.
        task: String,
        /// Task id.
        id: String,
        /// The wait, as written in durations (`30s`).
        after: String,
    },
    /// The task went dead: its reason (`failed`, `permanent`, `expired`, …) and last error.
    #[error("`{task}` task {id} is dead ({reason}): {error}")]
    Dead {
        /// The task type that died (for a chain, the step that stopped it).
        task: String,
        /// Task id.
        id: String,
        /// Dead-letter reason.
        reason: String,
        /// Its last error.
        error: String,
    },
    /// The task succeeded, but its answer does not decode as the caller's result type.
    #[error(
        "the result of `{task}` task {id} is not what the caller expects ({error}); it was: {raw}"
    )]
    UndecodableResult {
        /// Task name.
        task: String,
        /// Task id.
        id: String,
        /// The decoder's error.
        error: String,
        /// The answer's body as text.
        raw: String,
    },
}

/// Which of our connection settings the broker refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessDenied {
    /// `ACCESS_REFUSED`: the user name or password.
    Credentials,
    /// `NOT_ALLOWED`: the virtual host does not exist, or the user may not use it.
    VirtualHost,
}

impl fmt::Display for AccessDenied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AccessDenied::Credentials => "the user name or password is wrong",
            AccessDenied::VirtualHost => {
                "the virtual host does not exist or the user may not use it"
            }
        })
    }
}

// One arm per variant, so a new variant must decide how it is copied (`std::io::Error` is
// not `Clone`, so this cannot be derived); longer than our usual function for that reason.
impl Clone for Error {
    /// Copies an error so one failure can be reported for each task of a batch it ended.
    fn clone(&self) -> Self {
        match self {
            Error::Config(s) => Error::Config(s.clone()),
            Error::TopologyFile { path, source } => Error::TopologyFile {
                path: path.clone(),
                source: copy_io(source),
            },
            Error::InvalidInput(s) => Error::InvalidInput(s.clone()),
            Error::MissingQueue { queue } => Error::MissingQueue {
                queue: queue.clone(),
            },
            Error::NotEmpty { queues } => Error::NotEmpty {
                queues: queues.clone(),
            },
            Error::Connect { url, reason } => Error::Connect {
                url: url.clone(),
                reason: reason.clone(),
            },
            Error::Refused {
                url,
                reason,
                because,
            } => Error::Refused {
                url: url.clone(),
                reason: reason.clone(),
                because: *because,
            },
            Error::Declare {
                entity,
                name,
                source,
            } => Error::Declare {
                entity,
                name: name.clone(),
                source: source.clone(),
            },
            Error::TopologyConflict(c) => Error::TopologyConflict(c.clone()),
            Error::Unroutable { task, namespace } => Error::Unroutable {
                task: task.clone(),
                namespace: namespace.clone(),
            },
            Error::MissingExchange { exchange } => Error::MissingExchange {
                exchange: exchange.clone(),
            },
            Error::Refusal { task } => Error::Refusal { task: task.clone() },
            Error::Amqp { operation, source } => Error::Amqp {
                operation: operation.clone(),
                source: source.clone(),
            },
            Error::ManagementUnreachable { base, reason } => Error::ManagementUnreachable {
                base: base.clone(),
                reason: reason.clone(),
            },
            Error::ManagementRefused { base, user } => Error::ManagementRefused {
                base: base.clone(),
                user: user.clone(),
            },
            Error::Management(s) => Error::Management(s.clone()),
            Error::WouldNotFit(c) => Error::WouldNotFit(c.clone()),
            Error::UnsupportedBroker(s) => Error::UnsupportedBroker(s.clone()),
            Error::Io { context, source } => Error::Io {
                context: context.clone(),
                source: copy_io(source),
            },
            Error::Internal(s) => Error::Internal(s.clone()),
            Error::Wait(w) => Error::Wait(w.clone()),
            Error::Duplicate { task, key } => Error::Duplicate {
                task: task.clone(),
                key: key.clone(),
            },
        }
    }
}

/// An I/O error with the same kind and text (`std::io::Error` is not `Clone`).
fn copy_io(source: &std::io::Error) -> std::io::Error {
    std::io::Error::new(source.kind(), source.to_string())
}

impl Error {
    /// True when the same operation may succeed later (lost connection, broker restart).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Connect { .. } | Error::Refusal { .. } => true,
            Error::Declare { source, .. } | Error::Amqp { source, .. } => {
                is_transient_lapin(source)
            }
            Error::Config(_)
            | Error::TopologyFile { .. }
            | Error::InvalidInput(_)
            | Error::MissingQueue { .. }
            | Error::NotEmpty { .. }
            | Error::Refused { .. }
            | Error::TopologyConflict(_)
            | Error::Unroutable { .. }
            | Error::MissingExchange { .. }
            | Error::ManagementUnreachable { .. }
            | Error::ManagementRefused { .. }
            | Error::Management(_)
            | Error::WouldNotFit(_)
            | Error::UnsupportedBroker(_)
            | Error::Io { .. }
            | Error::Wait(_)
            | Error::Duplicate { .. }
            | Error::Internal(_) => false,
        }
    }

    /// True when the error is the caller's to fix (configuration or input) rather than a
    /// failure of the broker, the network or Warren; the `warren` command exits 2 for these.
    pub fn is_usage(&self) -> bool {
        match self {
            Error::Config(_)
            | Error::TopologyFile { .. }
            | Error::InvalidInput(_)
            | Error::MissingQueue { .. }
            | Error::NotEmpty { .. } => true,
            Error::Connect { .. }
            | Error::Refused { .. }
            | Error::Declare { .. }
            | Error::TopologyConflict(_)
            | Error::Unroutable { .. }
            | Error::MissingExchange { .. }
            | Error::Refusal { .. }
            | Error::Amqp { .. }
            | Error::ManagementUnreachable { .. }
            | Error::ManagementRefused { .. }
            | Error::Management(_)
            | Error::WouldNotFit(_)
            | Error::UnsupportedBroker(_)
            | Error::Io { .. }
            | Error::Wait(_)
            | Error::Duplicate { .. }
            | Error::Internal(_) => false,
        }
    }
}

/// True for lapin errors that a reconnect can cure: I/O, a closed connection or channel, a
/// missed heartbeat, or a forced close. Protocol errors that come from what we sent (a 404 on
/// a missing exchange, a 406 conflict, a 403) are not transient.
pub(crate) fn is_transient_lapin(err: &lapin::Error) -> bool {
    use lapin::ErrorKind as K;
    match err.kind() {
        K::IOError(_)
        | K::InvalidChannelState(..)
        | K::InvalidConnectionState(_)
        | K::InvalidChannel(_)
        | K::MissingHeartbeatError => true,
        K::ProtocolError(amqp) => matches!(
            amqp.kind(),
            lapin::protocol::AMQPErrorKind::Hard(lapin::protocol::AMQPHardError::CONNECTIONFORCED)
                | lapin::protocol::AMQPErrorKind::Soft(
                    lapin::protocol::AMQPSoftError::RESOURCELOCKED
                )
        ),
        _ => false,
    }
}

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

fn format_not_empty(queues: &[(String, u32, u32)]) -> String {
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

fn format_conflicts(conflicts: &[Conflict]) -> String {
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
