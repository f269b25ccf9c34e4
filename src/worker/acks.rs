//! Acks with `multiple`, without ever acking a delivery whose outcome is not yet safe.
//!
//! Each consumer channel gets one [`Settler`]. Deliveries report their settlement (ack, or
//! nack-and-requeue) here instead of acking themselves. Delivery tags on a channel run 1, 2,
//! 3, …; once every tag up to `k` is settled, one `basic.ack(k, multiple)` acks all the
//! outstanding ones at once.
//!
//! When to send: every ack frame costs the broker's channel and queue processes work, and on
//! a loaded host the broker's CPU is the limit, so acks go out in batches: at once when a
//! quarter of the prefetch window is settled (the broker keeps three quarters of its credit
//! and never starves the consumer), otherwise within [`ACK_DELAY`] of the first waiting
//! settlement. A slow task would hold back the acks of the fast ones behind it (and so the
//! prefetch window), so settled tags that still wait behind an unsettled one after
//! [`ACK_DELAY`] are acked one by one. Requeues go out at once. A crash loses at most the
//! unsent acks of the last [`ACK_DELAY`]: those tasks are delivered again (at-least-once).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use tokio::sync::Notify;

use super::ledger::{Frame, Ledger, Settle};

/// Longest a settled delivery waits for its ack to be sent. On a quorum queue every ack frame
/// is a Raft command the broker writes and replicates, so fewer frames are faster end to end
/// (the measurement that chose 25 ms over 5 ms is in `docs/performance.md`, "Ack batching");
/// classic queues showed no difference. Longer only widens the window of finished tasks that
/// a crash runs again, which the quarter-prefetch batch bounds under load anyway.
pub(crate) const ACK_DELAY: Duration = Duration::from_millis(25);

/// Where deliveries of one channel report their settlement. Cheap to clone.
///
/// A settlement is recorded under a lock and wakes the acking task only when something must
/// go out (a requeue, a full batch) or a batch timer must start: under load one wake-up per
/// batch rather than one per task.
#[derive(Debug, Clone)]
pub(crate) struct Settler {
    handle: Arc<Handle>,
}

/// Dropped with the last `Settler` clone: tells the acking task to send what is left and end.
#[derive(Debug)]
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
    }
}

/// What the settling deliveries and the acking task share.
#[derive(Debug)]
struct Shared {
    state: Mutex<Waiting>,
    wake: Notify,
    /// Settled tags that make a full batch: sent at once.
    batch: u64,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        // The state stays consistent across a panic elsewhere: every update is one call.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Settlements recorded and not yet sent.
#[derive(Debug)]
struct Waiting {
    ledger: Ledger,
    /// Requeues, sent at once.
    urgent: Vec<Frame>,
    /// When the oldest unsent ack was recorded; `None` when none waits.
    oldest: Option<Instant>,
    /// Every `Settler` is gone.
    closed: bool,
}

impl Settler {
    /// Starts the acking task of `channel`, whose consumer has `prefetch`; it ends when every
    /// `Settler` clone is dropped, after sending what is settled. Keep the returned future
    /// running (it owns the channel).
    pub(crate) fn start(
        channel: Channel,
        prefetch: u16,
    ) -> (
        Settler,
        impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let shared = Arc::new(Shared {
            state: Mutex::new(Waiting::new()),
            wake: Notify::new(),
            batch: u64::from(prefetch / 4).max(1),
        });
        let settler = Settler {
            handle: Arc::new(Handle {
                shared: shared.clone(),
            }),
        };
        (settler, run(channel, shared))
    }

    /// Reports a settlement. If the acking task is gone the channel is gone too, and the
    /// broker redelivers the task: nothing to do.
    pub(crate) fn settle(&self, s: Settle) {
        let shared = &self.handle.shared;
        let wake = shared.lock().record(s, Instant::now(), shared.batch);
        if wake {
            shared.wake.notify_one();
        }
    }
}

impl Waiting {
    fn new() -> Waiting {
        Waiting {
            ledger: Ledger::new(),
            urgent: Vec::new(),
            oldest: None,
            closed: false,
        }
    }

    /// Records `s` at `now`; true when the acking task must wake: a requeue to send, a full
    /// batch, or a first waiting ack whose timer must start.
    fn record(&mut self, s: Settle, now: Instant, batch: u64) -> bool {
        let urgent = self.ledger.record(s);
        let first = self.oldest.is_none() && self.ledger.waiting() > 0;
        if first {
            self.oldest = Some(now);
        }
        let full = self.ledger.contiguous() >= batch;
        let wake = urgent.is_some() || first || full;
        self.urgent.extend(urgent);
        wake
    }

    /// The frames to send at `now`, and when to look again if nothing wakes the task sooner
    /// (`None`: only a settlement can make anything due).
    fn take_due(&mut self, now: Instant, batch: u64) -> (Vec<Frame>, Option<Instant>) {
        let due = self.closed || self.oldest.is_some_and(|t| now >= t + ACK_DELAY);
        let mut frames = std::mem::take(&mut self.urgent);
        if due || self.ledger.contiguous() >= batch {
            frames.extend(self.ledger.flush_contiguous());
        }
        if due {
            // Time is up: whatever still waits behind a running task goes alone.
            frames.extend(self.ledger.flush_stragglers());
        }
        if self.ledger.waiting() == 0 {
            self.oldest = None;
        }
        (frames, self.oldest.map(|t| t + ACK_DELAY))
    }
}

async fn send(channel: &Channel, frame: Frame) {
    let result = match frame {
        Frame::Ack { tag, multiple } => channel.basic_ack(tag, BasicAckOptions { multiple }).await,
        Frame::Requeue(tag) => {
            channel
                .basic_nack(
                    tag,
                    BasicNackOptions {
                        multiple: false,
                        requeue: true,
                    },
                )
                .await
        }
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, ?frame,
            "an ack could not be sent (channel or connection lost); the broker will deliver those tasks again");
    }
}

async fn run(channel: Channel, shared: Arc<Shared>) {
    loop {
        let ((frames, deadline), closed) = {
            let mut w = shared.lock();
            (w.take_due(Instant::now(), shared.batch), w.closed)
        };
        for f in frames {
            send(&channel, f).await;
        }
        if closed {
            break;
        }
        match deadline {
            Some(at) => {
                tokio::select! {
                    _ = shared.wake.notified() => {}
                    _ = tokio::time::sleep_until(at.into()) => {}
                }
            }
            None => shared.wake.notified().await,
        }
    }
    // Everything is settled: close the channel here and wait for the broker's close-ok. Left
    // to the drop of the last handle, lapin closes it in the background, and at shutdown that
    // races the connection's close: lapin then fails the connection ("invalid channel state:
    // Closing") and drops the socket without the close handshake (the broker logs "client
    // unexpectedly closed TCP connection"). Unacked prefetched deliveries return to the queue.
    crate::broker::close_channel(&channel, "consumer done").await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one test here that needs the broker (`WARREN_AMQP_URL`, else the local default), as
    /// the integration tests do: what it checks is lapin's behaviour at close.
    #[tokio::test]
    async fn the_acking_task_closes_its_channel_so_the_connection_closes_cleanly() {
        let url = std::env::var("WARREN_AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
        let conn = lapin::Connection::connect(&url, Default::default())
            .await
            .expect("the test broker");
        let channel = conn.create_channel().await.unwrap();
        let status = channel.status().clone();
        let (settler, acking) = Settler::start(channel, 8);
        drop(settler);
        acking.await;
        // Closed, close-ok received: not left to a background close that the connection's
        // close would race.
        assert!(!status.connected() && !status.closing(), "{status:?}");
        conn.close(200, "test".into())
            .await
            .expect("the connection closes with the handshake");
    }

    fn acks(frames: &[Frame]) -> Vec<(u64, bool)> {
        frames
            .iter()
            .filter_map(|f| match f {
                Frame::Ack { tag, multiple } => Some((*tag, *multiple)),
                Frame::Requeue(_) => None,
            })
            .collect()
    }

    #[test]
    fn a_partial_batch_waits_for_the_ack_delay_and_a_full_one_goes_at_once() {
        let t0 = Instant::now();
        let mut w = Waiting::new();
        assert!(
            w.record(Settle::Ack(1), t0, 3),
            "the first waiting ack starts the timer"
        );
        assert!(!w.record(Settle::Ack(2), t0, 3));
        let (frames, next) = w.take_due(t0, 3);
        assert!(frames.is_empty(), "2 of 3: not yet");
        assert_eq!(next, Some(t0 + ACK_DELAY));
        let (frames, next) = w.take_due(t0 + ACK_DELAY, 3);
        assert_eq!(acks(&frames), vec![(2, true)]);
        assert_eq!(next, None, "nothing waits any more");
        // a full batch wakes the task and goes without waiting
        let t1 = t0 + ACK_DELAY * 2;
        w.record(Settle::Ack(3), t1, 3);
        w.record(Settle::Ack(4), t1, 3);
        assert!(w.record(Settle::Ack(5), t1, 3));
        assert_eq!(acks(&w.take_due(t1, 3).0), vec![(5, true)]);
    }

    #[test]
    fn a_requeue_goes_at_once_and_closing_flushes_stragglers_too() {
        let t0 = Instant::now();
        let mut w = Waiting::new();
        w.record(Settle::Ack(2), t0, 100); // 1 is still running: 2 is a straggler
        assert!(w.record(Settle::Requeue(3), t0, 100));
        let (frames, next) = w.take_due(t0, 100);
        assert_eq!(frames, vec![Frame::Requeue(3)]);
        assert_eq!(next, Some(t0 + ACK_DELAY), "2 still waits");
        w.closed = true;
        let (frames, next) = w.take_due(t0, 100);
        assert_eq!(
            acks(&frames),
            vec![(2, false)],
            "never a multiple ack over 1"
        );
        assert_eq!(next, None);
    }
}
