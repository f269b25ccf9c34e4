//! A worker session's side of the control stream: read each type's pause record, replay the
//! stream's retention window, know when the replay has caught up, then apply live events.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicQosOptions};
use lapin::protocol::AMQPSoftError;
use lapin::types::{AMQPValue, FieldTable};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::events::{self, Event};
use super::state::ControlState;
use crate::broker::{Session, close_channel, is_soft};
use crate::error::{Error, Result};
use crate::topology::Names;
use crate::wire::unix_ms;

/// Applies each of `tasks`' pause records to `state` (a type never paused has none).
///
/// # Errors
/// [`Error::Amqp`] for a broker failure other than a missing record.
pub(crate) async fn read_pauses(
    session: &Session,
    names: &Names,
    tasks: &[&str],
    state: &ControlState,
) -> Result<()> {
    let now = unix_ms(SystemTime::now());
    for task in tasks {
        let queue = names.pause_record(task);
        if let Some(record) = read_record(session, &queue).await? {
            state.apply(&record, now);
        }
    }
    Ok(())
}

/// The record in a pause record queue; `None` when the type was never paused (no queue). A
/// record queue, once there, always holds its one message: an empty answer means another
/// reader (`warren status`) holds it for a moment, so it is asked again, for up to 2 s.
async fn read_record(session: &Session, queue: &str) -> Result<Option<events::Record>> {
    for _ in 0..10 {
        let ch = session.channel().await?;
        let got = match ch
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await
        {
            Ok(got) => got,
            Err(e) if is_soft(&e, AMQPSoftError::NOTFOUND) => return Ok(None),
            Err(source) => {
                return Err(Error::Amqp {
                    operation: format!("reading `{queue}`"),
                    source,
                });
            }
        };
        let record = got.map(|m| events::decode(&m.delivery.data));
        // Unacked: closing the channel leaves the record in place.
        close_channel(&ch, "pause record read").await;
        match record {
            Some(record) => return Ok(record),
            None => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    tracing::warn!(
        queue,
        "the pause record stayed held by another reader; relying on the control stream"
    );
    Ok(None)
}

/// Follows the control stream into `state` until `stop` or a channel failure: replays from
/// `retention` ago, sends on `loaded` once it has read back a marker of its own (everything
/// published before it has been applied), then applies events as they come.
///
/// # Errors
/// A lost channel or connection: the worker's session reconnects.
pub(crate) async fn follow(
    session: Arc<Session>,
    names: Names,
    retention: Duration,
    state: Arc<ControlState>,
    loaded: oneshot::Sender<()>,
    stop: CancellationToken,
) -> Result<()> {
    let amqp = |what: &str, source| Error::Amqp {
        operation: format!("{what} the control stream `{}`", names.control_stream()),
        source,
    };
    let ch = session.channel().await?;
    // A stream consumer needs a prefetch and acks (they only return credit).
    ch.basic_qos(256, BasicQosOptions { global: false })
        .await
        .map_err(|e| amqp("reading", e))?;
    let since = SystemTime::now()
        .checked_sub(retention)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let since_secs = since
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut args = FieldTable::default();
    args.insert("x-stream-offset".into(), AMQPValue::Timestamp(since_secs));
    let mut events = ch
        .basic_consume(
            names.control_stream().as_str().into(),
            "warren control".into(),
            BasicConsumeOptions::default(),
            args,
        )
        .await
        .map_err(|e| amqp("following", e))?;
    let mark = uuid::Uuid::now_v7().to_string();
    events::publish(
        session.connection(),
        &names,
        Event::Marker { id: mark.clone() },
    )
    .await?;
    let mut loaded = Some(loaded);
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => break,
            next = events.next() => next,
        };
        let delivery = match next {
            Some(Ok(d)) => d,
            Some(Err(e)) => return Err(amqp("following", e)),
            None => {
                return Err(Error::Internal(
                    "the control stream's consumer ended".into(),
                ));
            }
        };
        if let Some(record) = events::decode(&delivery.data) {
            match &record.event {
                Event::Marker { id } if *id == mark => {
                    if let Some(tx) = loaded.take() {
                        let _ = tx.send(());
                    }
                }
                _ => state.apply(&record, unix_ms(SystemTime::now())),
            }
        }
        delivery
            .ack(BasicAckOptions::default())
            .await
            .map_err(|e| amqp("acking", e))?;
    }
    close_channel(&ch, "worker stopping").await;
    Ok(())
}
