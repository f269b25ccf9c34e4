//! Closing channels and connections with the AMQP handshake, bounded in time, and reading
//! why the broker closed a channel.

use std::time::Duration;

use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::{Channel, Connection};

/// True when `err` is the broker closing a channel with soft error `which` (404 NOT_FOUND,
/// 405 RESOURCE_LOCKED, 406 PRECONDITION_FAILED…).
pub fn is_soft(err: &lapin::Error, which: AMQPSoftError) -> bool {
    matches!(err.kind(), lapin::ErrorKind::ProtocolError(amqp)
        if amqp.kind() == &AMQPErrorKind::Soft(which))
}

/// How long a close waits for the broker's close-ok. A close that races a dying connection
/// can wait for one that never comes (suspected once with lapin 4.12), and a shutdown or an
/// exit must not hang on it.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Closes `ch` with the AMQP handshake if it is still open, waiting at most [`CLOSE_TIMEOUT`]
/// for close-ok. Closing by hand rather than leaving it to the drop of the last handle (which
/// lapin does in the background) keeps it from racing the connection's close.
pub async fn close_channel(ch: &Channel, reason: &str) {
    if ch.status().connected() {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, ch.close(200, reason.into())).await;
    }
}

/// Closes `conn` with the AMQP handshake if it is still open, waiting at most
/// [`CLOSE_TIMEOUT`]: the broker then logs a clean close, not "client unexpectedly closed TCP
/// connection".
pub async fn close_connection(conn: &Connection, reason: &str) {
    if !conn.status().connected() {
        return;
    }
    match tokio::time::timeout(CLOSE_TIMEOUT, conn.close(200, reason.into())).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "closing the connection"),
        Err(_) => tracing::warn!("the broker did not answer the connection close in time; leaving"),
    }
}
