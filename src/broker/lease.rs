//! A lock across processes: an exclusive queue, held by the one connection that declared it.
//! The scheduler's leadership and a limited type's token refill each take one.
//!
//! Measured on RabbitMQ 3.10: a second connection declaring an exclusive queue that another
//! holds is refused with 405 RESOURCE_LOCKED, and the broker deletes the queue the moment its
//! holder's connection goes (a close, a `kill -9`, a reset socket; a silent network loss
//! after the heartbeat timeout). So at most one connection holds the lease at a time, and a
//! dead holder frees it without anyone having to expire it.

//!
//! Waiting for a lock by declaring it again and again makes the broker log a channel error
//! (RESOURCE_LOCKED) for every refusal: a standby scheduler polling each second wrote two
//! error lines a second to the broker's log. So a lock can be *announced*: its holder binds
//! it to an exchange under its own name, and a waiter first asks [`held_elsewhere`], which
//! publishes a probe (mandatory, expiring at once) and learns from the broker's return
//! whether the lock exists, without any channel error. It declares only when the lock looks
//! free.

use lapin::BasicProperties;
use lapin::Confirmation;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::protocol::AMQPSoftError;
use lapin::types::FieldTable;

use super::{close_channel, is_soft};
use crate::error::{Error, Result};

/// Takes the lock `queue` for `conn`, or learns that another connection holds it. With
/// `announce`, binds the lock to that exchange under its own name once taken (see
/// [`held_elsewhere`]).
///
/// # Errors
/// [`Error::Amqp`] when the broker refused for another reason (no permission, a lost
/// connection).
pub(crate) async fn try_take(
    conn: &lapin::Connection,
    queue: &str,
    announce: Option<&str>,
) -> Result<bool> {
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
            if let Some(exchange) = announce {
                let bound = ch
                    .queue_bind(
                        queue.into(),
                        exchange.into(),
                        queue.into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await;
                bound.map_err(|source| Error::Amqp {
                    operation: format!("binding the lock queue `{queue}` to `{exchange}`"),
                    source,
                })?;
            }
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

/// True when lock `queue`, announced on `exchange` (see [`try_take`]), is held: a probe
/// published there under the lock's name, mandatory, reaches it; one the broker returns
/// finds no lock (or one taken without announcing: [`try_take`] then learns the truth, with
/// one refusal). The probe expires at once in the lock queue, which no one consumes. An
/// alternate exchange set on `exchange` by a policy would take every probe, and the lock
/// would always look held: Warren's control exchange must have none.
///
/// # Errors
/// [`Error::Amqp`] for a lost connection or a refused publish (no write permission on
/// `exchange`).
pub(crate) async fn held_elsewhere(
    conn: &lapin::Connection,
    exchange: &str,
    queue: &str,
) -> Result<bool> {
    let amqp = |operation: &str| {
        let operation = format!("{operation} (probing the lock `{queue}`)");
        move |source| Error::Amqp { operation, source }
    };
    let ch = conn
        .create_channel()
        .await
        .map_err(amqp("opening a channel"))?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(amqp("enabling confirms"))?;
    let confirm = ch
        .basic_publish(
            exchange.into(),
            queue.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"",
            BasicProperties::default().with_expiration("0".into()),
        )
        .await
        .map_err(amqp("publishing"))?
        .await
        .map_err(amqp("awaiting the confirm"))?;
    close_channel(&ch, "lock probed").await;
    Ok(match confirm {
        Confirmation::Ack(returned) => returned.is_none(),
        // The broker could not take the probe: let the declare tell.
        Confirmation::Nack(_) | Confirmation::NotRequested => false,
    })
}
