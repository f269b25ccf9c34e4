//! Copying an error, so one failure can be reported for each task of a batch it ended.

use super::Error;

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
            Error::NoListeners { task, id } => Error::NoListeners {
                task: task.clone(),
                id: id.clone(),
            },
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
