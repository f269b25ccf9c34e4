//! Waiting until a queue has its consumers: the demo and the benchmark publish only once
//! their workers consume, so that a worker's start-up is not counted as a task's wait.

use std::time::{Duration, Instant};

use lapin::Channel;
use warren::{Error, Result};

/// Waits until `queue` has at least `want` consumers, asking every 5 ms (a passive declare).
///
/// # Errors
/// [`Error::Amqp`] when the queue cannot be asked; a timed-out I/O error naming the queue and
/// how many consume when `within` passed first.
pub(crate) async fn wait_for_consumers(
    ch: &Channel,
    queue: &str,
    want: u32,
    within: Duration,
) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let q = warren::broker::inspect(ch, queue)
            .await
            .map_err(|source| Error::Amqp {
                operation: format!("checking `{queue}` for consumers"),
                source,
            })?;
        if q.consumer_count() >= want {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(crate::failure(
                std::io::ErrorKind::TimedOut,
                format!("waiting for {want} consumer(s) on `{queue}`"),
                format!("{} after {within:?}", q.consumer_count()),
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
