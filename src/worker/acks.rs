//! Acks with `multiple`, without ever acking a delivery whose outcome is not yet safe.
//!
//! Each consumer channel gets one [`Settler`]. Deliveries report their settlement (ack, or
//! nack-and-requeue) here instead of acking themselves. Delivery tags on a channel run 1, 2,
//! 3, …; once every tag up to `k` is settled, one `basic.ack(k, multiple)` acks all the
//! outstanding ones at once. A slow task would hold back the acks of the fast ones behind it
//! (and so the prefetch window), so settled tags that wait behind an unsettled one are acked
//! one by one after a few milliseconds. Under load this sends a fraction of the ack frames; when
//! idle every ack goes out at once.

use std::collections::BTreeMap;
use std::time::Duration;

use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use tokio::sync::mpsc;

/// How long a settled delivery may wait behind an unsettled one before it is acked alone.
const STRAGGLER_WAIT: Duration = Duration::from_millis(5);

/// A settlement of one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settle {
    /// The outcome is safe: ack it.
    Ack(u64),
    /// Give it back to the queue.
    Requeue(u64),
}

/// Where deliveries of one channel report their settlement. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Settler {
    tx: mpsc::UnboundedSender<Settle>,
}

impl Settler {
    /// Starts the acking task of `channel`; it ends when every `Settler` clone is dropped,
    /// after sending what is settled. Keep the returned future running (it owns the channel).
    pub(crate) fn start(
        channel: Channel,
    ) -> (
        Settler,
        impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Settler { tx }, run(channel, rx))
    }

    /// Reports a settlement. If the acking task is gone the channel is gone too, and the
    /// broker redelivers the task: nothing to do.
    pub(crate) fn settle(&self, s: Settle) {
        let _ = self.tx.send(s);
    }
}

/// What the acking task knows about each tag at or above `next`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Settled as ack, not yet sent.
    Pending,
    /// Already acked or nacked on its own.
    Sent,
}

/// The pure part: which frames to send for the settlements seen so far.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    next: u64,
    settled: BTreeMap<u64, State>,
}

/// A frame to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Frame {
    /// `basic.ack(tag, multiple)`.
    Ack { tag: u64, multiple: bool },
    /// `basic.nack(tag, requeue = true)`.
    Requeue(u64),
}

impl Ledger {
    pub(crate) fn new() -> Ledger {
        Ledger {
            next: 1,
            settled: BTreeMap::new(),
        }
    }

    /// Records `s`; returns frames that must go out now (a requeue goes at once, so the
    /// task returns to its queue without waiting for the tags before it).
    pub(crate) fn record(&mut self, s: Settle) -> Option<Frame> {
        match s {
            Settle::Ack(tag) => {
                self.settled.insert(tag, State::Pending);
                None
            }
            Settle::Requeue(tag) => {
                self.settled.insert(tag, State::Sent);
                Some(Frame::Requeue(tag))
            }
        }
    }

    /// The contiguous run from `next`: one multiple ack up to its highest pending tag.
    pub(crate) fn flush_contiguous(&mut self) -> Option<Frame> {
        let mut highest_pending = None;
        while let Some(state) = self.settled.remove(&self.next) {
            if state == State::Pending {
                highest_pending = Some(self.next);
            }
            self.next += 1;
        }
        highest_pending.map(|tag| Frame::Ack {
            tag,
            multiple: true,
        })
    }

    /// Acks every settled tag that waits behind an unsettled one, one by one.
    pub(crate) fn flush_stragglers(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        for (tag, state) in self.settled.iter_mut() {
            if *state == State::Pending {
                *state = State::Sent;
                frames.push(Frame::Ack {
                    tag: *tag,
                    multiple: false,
                });
            }
        }
        frames
    }

    fn has_stragglers(&self) -> bool {
        self.settled.values().any(|s| *s == State::Pending)
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

async fn run(channel: Channel, mut rx: mpsc::UnboundedReceiver<Settle>) {
    let mut ledger = Ledger::new();
    loop {
        let first = if ledger.has_stragglers() {
            match tokio::time::timeout(STRAGGLER_WAIT, rx.recv()).await {
                Ok(m) => m,
                Err(_) => {
                    for f in ledger.flush_stragglers() {
                        send(&channel, f).await;
                    }
                    continue;
                }
            }
        } else {
            rx.recv().await
        };
        let Some(first) = first else { break };
        // Take everything already waiting: under load that is many settlements per frame.
        let mut next = Some(first);
        while let Some(s) = next {
            if let Some(f) = ledger.record(s) {
                send(&channel, f).await;
            }
            next = rx.try_recv().ok();
        }
        if let Some(f) = ledger.flush_contiguous() {
            send(&channel, f).await;
        }
    }
    if let Some(f) = ledger.flush_contiguous() {
        send(&channel, f).await;
    }
    for f in ledger.flush_stragglers() {
        send(&channel, f).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(tag: u64, multiple: bool) -> Option<Frame> {
        Some(Frame::Ack { tag, multiple })
    }

    #[test]
    fn a_contiguous_run_is_one_multiple_ack() {
        let mut l = Ledger::new();
        for t in [3, 1, 2] {
            assert_eq!(l.record(Settle::Ack(t)), None);
        }
        assert_eq!(l.flush_contiguous(), ack(3, true));
        assert_eq!(l.flush_contiguous(), None);
    }

    #[test]
    fn nothing_is_acked_past_an_unsettled_tag() {
        let mut l = Ledger::new();
        l.record(Settle::Ack(1));
        l.record(Settle::Ack(3));
        assert_eq!(l.flush_contiguous(), ack(1, true));
        // 2 is still running: 3 must not be covered by a multiple ack
        assert_eq!(l.flush_contiguous(), None);
        assert_eq!(
            l.flush_stragglers(),
            vec![Frame::Ack {
                tag: 3,
                multiple: false
            }]
        );
        // once 2 settles, the run advances over the already-acked 3 without acking it again
        l.record(Settle::Ack(2));
        assert_eq!(l.flush_contiguous(), ack(2, true));
        l.record(Settle::Ack(4));
        assert_eq!(l.flush_contiguous(), ack(4, true));
    }

    #[test]
    fn a_requeue_goes_out_at_once_and_is_never_covered_by_an_ack() {
        let mut l = Ledger::new();
        assert_eq!(l.record(Settle::Ack(1)), None);
        assert_eq!(l.record(Settle::Requeue(2)), Some(Frame::Requeue(2)));
        // the run 1..=2 ends at a requeued tag: the ack stops at 1
        assert_eq!(l.flush_contiguous(), ack(1, true));
        l.record(Settle::Requeue(3));
        assert_eq!(
            l.flush_contiguous(),
            None,
            "only requeues in the run: nothing to ack"
        );
        l.record(Settle::Ack(4));
        assert_eq!(l.flush_contiguous(), ack(4, true));
    }
}
