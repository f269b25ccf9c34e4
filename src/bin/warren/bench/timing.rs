//! How a timed phase starts and is paced: pauses, waiting for a consumer, a steady rate.

use std::time::{Duration, Instant};

use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection};
use warren::{Error, Result};

use super::{Drained, amqp};

/// Lets the broker finish what the previous phase left (acked messages to garbage-collect,
/// index writes) so that it does not slow whichever side is measured next.
pub(super) async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// Waits (up to 30 s) until `queue` has a consumer: publishing starts only once the consumer
/// is up, so start-up is measured by neither side.
pub(super) async fn wait_for_consumer(ch: &Channel, queue: &str) -> Result<()> {
    crate::consumers::wait_for_consumers(ch, queue, 1, Duration::from_secs(30)).await
}

/// Runs `consumer`; once it consumes from `queue`, runs `publish`. Returns what the consumer
/// saw and when publishing started.
pub(super) async fn with_consumer<C, P, F>(
    ch: &Channel,
    queue: &str,
    consumer: C,
    publish: F,
) -> Result<(Drained, Instant)>
where
    C: std::future::Future<Output = Result<Drained>>,
    F: FnOnce() -> P,
    P: std::future::Future<Output = Result<()>>,
{
    let publisher = async {
        wait_for_consumer(ch, queue).await?;
        let started = Instant::now();
        publish().await?;
        Ok::<Instant, Error>(started)
    };
    let (c, p) = tokio::join!(consumer, publisher);
    let started = p?;
    Ok((c?, started))
}

/// Calls `batch(k)` every 10 ms with `k` = `rate`/100, until `n` messages went out.
pub(super) async fn paced<F, P>(n: u64, rate: u64, mut batch: F) -> Result<()>
where
    F: FnMut(u64) -> P,
    P: std::future::Future<Output = Result<()>>,
{
    let per_tick = (rate / 100).max(1);
    let mut interval = tokio::time::interval(Duration::from_millis(10));
    let mut sent = 0;
    while sent < n {
        interval.tick().await;
        let k = per_tick.min(n - sent);
        batch(k).await?;
        sent += k;
    }
    Ok(())
}

pub(super) async fn confirm_channel(conn: &Connection) -> Result<Channel> {
    let ch = conn.create_channel().await.map_err(amqp("channel"))?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(amqp("confirm select"))?;
    Ok(ch)
}
