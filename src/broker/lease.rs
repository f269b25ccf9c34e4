//! A lock across processes: an exclusive queue, held by the one connection that declared it.
//! The scheduler's leadership and a limited type's token refill each take one.
//!
//! Measured on RabbitMQ 3.10: a second connection declaring an exclusive queue that another
//! holds is refused with 405 RESOURCE_LOCKED, and the broker deletes the queue the moment its
//! holder's connection goes (a close, a `kill -9`, a reset socket; a silent network loss
//! after the heartbeat timeout). So at most one connection holds the lease at a time, and a
//! dead holder frees it without anyone having to expire it.

use lapin::options::QueueDeclareOptions;
use lapin::protocol::AMQPSoftError;
use lapin::types::FieldTable;

use super::{close_channel, is_soft};
use crate::error::{Error, Result};

/// Takes the lock `queue` for `conn`, or learns that another connection holds it.
///
/// # Errors
/// [`Error::Amqp`] when the broker refused for another reason (no permission, a lost
/// connection).
pub(crate) async fn try_take(conn: &lapin::Connection, queue: &str) -> Result<bool> {
    let amqp = |source| Error::Amqp {
        operation: format!("declaring the exclusive lock queue `{queue}`"),
        source,
    };
    let ch = conn.create_channel().await.map_err(amqp)?;
    let opts = QueueDeclareOptions {
        exclusive: true,
        durable: false,
        ..Default::default()
    };
    match ch
        .queue_declare(queue.into(), opts, FieldTable::default())
        .await
    {
        Ok(_) => {
            close_channel(&ch, "lock taken").await;
            Ok(true)
        }
        // Held by another connection; the broker closed this channel.
        Err(e) if is_soft(&e, AMQPSoftError::RESOURCELOCKED) => Ok(false),
        Err(e) => Err(amqp(e)),
    }
}

/// True while `queue` exists and `conn` may use it: for a lock, while `conn` holds it (a
/// passive declare is refused with RESOURCE_LOCKED on other connections, NOT_FOUND once it is
/// gone). A scheduler checks before each firing, so a lease deleted by hand (in the
/// management UI) ends its leadership before another scheduler's begins to fire.
pub(crate) async fn still_held(conn: &lapin::Connection, queue: &str) -> bool {
    let Ok(ch) = conn.create_channel().await else {
        return false;
    };
    let held = super::inspect(&ch, queue).await.is_ok();
    close_channel(&ch, "lock checked").await;
    held
}
