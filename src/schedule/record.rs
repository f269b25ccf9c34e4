//! The last firing of each schedule, read from its record queue: what a new leader catches up
//! from. Only the broker remembers it; a scheduler keeps no file.
//!
//! A record queue holds at most one message (`x-max-length = 1`, the oldest dropped), which
//! is the last firing itself, copied there by its `BCC` key (see [`super::firing`]). It is
//! read with `basic.get` and given back when the channel closes, so it stays for the next
//! reader.

use chrono::{DateTime, Utc};
use lapin::options::BasicGetOptions;
use lapin::protocol::AMQPSoftError;

use crate::broker::{close_channel, is_soft};
use crate::error::{Error, Result};
use crate::wire::decode::header_int;
use crate::wire::header;

/// One firing as its record shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastFiring {
    /// The slot it fired for.
    pub slot: DateTime<Utc>,
    /// The task id of that firing.
    pub task_id: String,
}

/// The last firing recorded in `queue`; `None` when the schedule never fired (or its record
/// queue is not declared yet).
///
/// # Errors
/// [`Error::Amqp`] when the broker refused for another reason than a missing queue.
pub(crate) async fn read(conn: &lapin::Connection, queue: &str) -> Result<Option<LastFiring>> {
    // Another reader (`warren schedules`) holds the message for a moment while it looks:
    // an empty record is read again before it counts as "never fired".
    for wait in [0, 200, 1000] {
        tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
        if let Some(last) = read_once(conn, queue).await? {
            return Ok(Some(last));
        }
    }
    Ok(None)
}

async fn read_once(conn: &lapin::Connection, queue: &str) -> Result<Option<LastFiring>> {
    let amqp = |source| Error::Amqp {
        operation: format!("reading the last firing from `{queue}`"),
        source,
    };
    let ch = conn.create_channel().await.map_err(amqp)?;
    let mut last: Option<LastFiring> = None;
    // Normally one message; more only in the moment a new firing lands. The latest slot wins.
    for _ in 0..8 {
        let got = match ch
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await
        {
            Ok(got) => got,
            Err(e) if is_soft(&e, AMQPSoftError::NOTFOUND) => return Ok(None),
            Err(e) => return Err(amqp(e)),
        };
        let Some(m) = got else { break };
        if let Some(firing) = firing_of(&m.delivery.properties)
            && last.as_ref().is_none_or(|l| l.slot < firing.slot)
        {
            last = Some(firing);
        }
    }
    // Unacked, so closing the channel puts the messages back.
    close_channel(&ch, "last firing read").await;
    Ok(last)
}

/// The firing a record message stands for: its `warren-scheduled-for` and task id.
pub fn firing_of(props: &lapin::BasicProperties) -> Option<LastFiring> {
    let ms = header_int(props, header::SCHEDULED_FOR)?;
    Some(LastFiring {
        slot: DateTime::from_timestamp_millis(ms)?,
        task_id: props.message_id().as_ref()?.to_string(),
    })
}
