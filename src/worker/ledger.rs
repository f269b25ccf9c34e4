//! The pure part of acking: given the settlements seen so far on one channel, which ack and
//! nack frames may go out without acking a delivery whose outcome is not yet safe.

use std::collections::BTreeMap;

/// A settlement of one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settle {
    /// The outcome is safe: ack it.
    Ack(u64),
    /// Give it back to the queue.
    Requeue(u64),
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
    /// The lowest tag not yet covered by an ack or requeue frame.
    next: u64,
    /// The first tag at or after `next` that is not settled: `next..run_end` is the run one
    /// multiple ack can cover. Kept up to date on every record (amortized O(1)).
    run_end: u64,
    settled: BTreeMap<u64, State>,
    /// Settled as ack and not yet sent.
    pending: usize,
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
            run_end: 1,
            settled: BTreeMap::new(),
            pending: 0,
        }
    }

    /// Records `s`; returns frames that must go out now (a requeue goes at once, so the
    /// task returns to its queue without waiting for the tags before it).
    pub(crate) fn record(&mut self, s: Settle) -> Option<Frame> {
        let frame = match s {
            Settle::Ack(tag) => {
                if self.settled.insert(tag, State::Pending) != Some(State::Pending) {
                    self.pending += 1;
                }
                None
            }
            Settle::Requeue(tag) => {
                if self.settled.insert(tag, State::Sent) == Some(State::Pending) {
                    self.pending -= 1;
                }
                Some(Frame::Requeue(tag))
            }
        };
        while self.settled.contains_key(&self.run_end) {
            self.run_end += 1;
        }
        frame
    }

    /// The contiguous run from `next`: one multiple ack up to its highest pending tag.
    pub(crate) fn flush_contiguous(&mut self) -> Option<Frame> {
        let mut highest_pending = None;
        while let Some(state) = self.settled.remove(&self.next) {
            if state == State::Pending {
                highest_pending = Some(self.next);
                self.pending -= 1;
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
                self.pending -= 1;
                frames.push(Frame::Ack {
                    tag: *tag,
                    multiple: false,
                });
            }
        }
        frames
    }

    /// Settled tags not yet acked (in the contiguous run or behind an unsettled tag).
    pub(crate) fn waiting(&self) -> usize {
        self.pending
    }

    /// Length of the contiguous run of settled tags from `next` (what one multiple ack would
    /// cover now).
    pub(crate) fn contiguous(&self) -> u64 {
        self.run_end - self.next
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

    #[test]
    fn the_run_length_and_waiting_count_follow_out_of_order_settlements() {
        let mut l = Ledger::new();
        l.record(Settle::Ack(2));
        l.record(Settle::Ack(3));
        assert_eq!(l.contiguous(), 0, "tag 1 is still running");
        assert_eq!(l.waiting(), 2);
        l.record(Settle::Ack(1));
        assert_eq!(l.contiguous(), 3);
        l.record(Settle::Ack(5));
        assert_eq!(l.contiguous(), 3, "4 is still running");
        assert_eq!(l.waiting(), 4);
        assert_eq!(l.flush_contiguous(), ack(3, true));
        assert_eq!((l.contiguous(), l.waiting()), (0, 1));
        assert_eq!(l.flush_stragglers().len(), 1);
        assert_eq!(l.waiting(), 0);
        // a requeue closes the gap without waiting to be acked
        l.record(Settle::Requeue(4));
        assert_eq!((l.contiguous(), l.waiting()), (2, 0));
        assert_eq!(l.flush_contiguous(), None, "4 requeued and 5 already acked");
    }
}
