//! Infrastructure errors: what went wrong talking to the broker or reading configuration.
//!
//! Each variant is a case a caller handles differently, and carries the names that make the
//! message actionable. Handler outcomes live in [`crate::task::TaskError`], not here.

use std::fmt;

/// Result alias for Warren's infrastructure operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong outside a task handler.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration (topology file, environment, flags) is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// The caller passed something that cannot be enqueued (bad name, delay, expiry, size).
    #[error("{0}")]
    InvalidInput(String),

    /// The broker could not be reached within the connect deadline.
    #[error(
        "cannot connect to RabbitMQ at {url}: {reason}.\n  Is a broker running? Start one with \
         `scripts/broker.sh` (or `rabbitmq-server -detached`, or `docker compose up rabbitmq`), \
         or point Warren at yours with --amqp-url / WARREN_AMQP_URL."
    )]
    Connect {
        /// The broker URL with its password redacted.
        url: String,
        /// What failed on the last attempt.
        reason: String,
    },

    /// The broker refused our credentials or the virtual host.
    #[error("RabbitMQ at {url} refused the connection: {reason}.\n  {hint}")]
    Refused {
        /// The broker URL with its password redacted.
        url: String,
        /// The broker's reason.
        reason: String,
        /// What to do about it.
        hint: &'static str,
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
        "the broker could not route a `{task}` task (no queue bound for it in namespace `{namespace}`).\n  \
         The topology is probably not applied: run `warren topology apply` (with the same \
         --namespace and --topology), and check that `{task}` is listed under [tasks] in the topology file."
    )]
    Unroutable {
        /// Task name.
        task: String,
        /// Namespace the producer publishes into.
        namespace: String,
    },

    /// The broker does not know the exchange we publish to.
    #[error(
        "exchange `{exchange}` does not exist.\n  The topology is not applied: run `warren topology apply` \
         (with the same --namespace and --topology)."
    )]
    MissingExchange {
        /// The exchange name.
        exchange: String,
    },

    /// The broker refused the message (basic.nack), e.g. a full queue with `reject-publish`.
    #[error(
        "the broker refused a `{task}` task (nack). A queue may be full (x-overflow = reject-publish) \
         or a cluster has lost its majority; retry later and check `warren status`."
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

    /// The management HTTP API failed or is unreachable.
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
}

impl Clone for Error {
    /// Copies an error so one failure can be reported for each task of a batch it ended.
    fn clone(&self) -> Self {
        match self {
            Error::Config(s) => Error::Config(s.clone()),
            Error::InvalidInput(s) => Error::InvalidInput(s.clone()),
            Error::Connect { url, reason } => Error::Connect {
                url: url.clone(),
                reason: reason.clone(),
            },
            Error::Refused { url, reason, hint } => Error::Refused {
                url: url.clone(),
                reason: reason.clone(),
                hint,
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
            Error::Management(s) => Error::Management(s.clone()),
            Error::Io { context, source } => Error::Io {
                context: context.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
        }
    }
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
            | Error::InvalidInput(_)
            | Error::Refused { .. }
            | Error::TopologyConflict(_)
            | Error::Unroutable { .. }
            | Error::MissingExchange { .. }
            | Error::Management(_)
            | Error::Io { .. } => false,
        }
    }

    /// True when the error is the user's to fix (configuration or input), which the CLI maps
    /// to exit code 2 rather than 1.
    pub fn is_usage(&self) -> bool {
        matches!(self, Error::Config(_) | Error::InvalidInput(_))
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
         management UI), then run `warren topology apply` again. Or change the topology file \
         back to the existing value.",
    );
    out
}
