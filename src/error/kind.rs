//! What a caller does with an error: try again later ([`Error::is_transient`]) or fix its
//! input ([`Error::is_usage`]).

use super::Error;

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
            | Error::NoListeners { .. }
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
            | Error::NoListeners { .. }
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
fn is_transient_lapin(err: &lapin::Error) -> bool {
    use lapin::ErrorKind as K;
    match err.kind() {
        K::IOError(_)
        | K::InvalidChannelState(..)
        | K::InvalidConnectionState(_)
        | K::InvalidChannel(_)
        | K::MissingHeartbeatError => true,
        K::ProtocolError(amqp) => {
            matches!(
                amqp.kind(),
                lapin::protocol::AMQPErrorKind::Hard(
                    lapin::protocol::AMQPHardError::CONNECTIONFORCED
                ) | lapin::protocol::AMQPErrorKind::Soft(
                    lapin::protocol::AMQPSoftError::RESOURCELOCKED
                )
            ) || node_down(amqp)
        }
        _ => false,
    }
}

/// `NOT_FOUND - home node '...' of durable queue '...' is down or inaccessible`: a classic
/// queue (limit tokens, pause records) whose node is away. It exists, and comes back with
/// its node: a worker retries rather than stops (measured: a worker stopped for good when
/// the node holding a type's tokens was killed).
fn node_down(amqp: &lapin::protocol::AMQPError) -> bool {
    matches!(
        amqp.kind(),
        lapin::protocol::AMQPErrorKind::Soft(lapin::protocol::AMQPSoftError::NOTFOUND)
    ) && amqp
        .get_message()
        .as_str()
        .contains("is down or inaccessible")
}
