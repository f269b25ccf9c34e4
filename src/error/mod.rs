//! Infrastructure errors: what went wrong talking to the broker or reading configuration.
//!
//! Each variant is a case a caller handles differently, and carries the names that make the
//! message actionable. Messages state facts; advice in terms of a particular program (the
//! `warren` command's flags and subcommands) is that program's to add. Handler outcomes live
//! in `TaskError` (the `task` module), not here.

mod conflict;
mod copy;
mod kind;
mod wait;

use std::fmt;
use std::path::PathBuf;

pub use conflict::Conflict;
pub use wait::WaitFailure;

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
    #[error("{}", conflict::format_not_empty(.queues))]
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
    #[error("{}", conflict::format_conflicts(.0))]
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

    /// A broadcast that no worker receives right now: the broker took it and delivered it to
    /// nobody (no worker of its type is connected). Nothing of it is kept.
    #[error(
        "no worker receives `{task}` broadcasts right now: broadcast {id} ran nowhere and is \
         not kept; start a worker of the type (`warren worker`), then enqueue it again"
    )]
    NoListeners {
        /// Task name.
        task: String,
        /// The broadcast's id.
        id: String,
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
    /// The message says which node, how many queues it would hold and how many it holds.
    #[error("applying would exhaust the broker's file handles: {0}")]
    WouldNotFit(String),

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
