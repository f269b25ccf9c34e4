//! Why a task is dead, as written to `warren-reason`.

use std::fmt;

/// Why Warren dead-lettered a task. The broker's own reasons (`expired`, `delivery_limit`,
/// `maxlen`) reach a dead queue too, through `x-first-death-reason`; they are not these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Retryable failures used up `max_attempts`.
    Failed,
    /// The handler returned a permanent error.
    Permanent,
    /// `warren-expires-at` passed before a worker started it.
    Expired,
    /// The body is not valid JSON for the task type, or not JSON at all.
    Undecodable,
    /// The `type` property names another task than the queue's.
    UnknownTask,
    /// A Warren header has the wrong type or an impossible value.
    InvalidHeader,
    /// Cancelled (`warren cancel`, `Producer::cancel`): before it started, or while running.
    Cancelled,
    /// Delivered `delivery_limit` times without an outcome (each run's worker died or lost its
    /// connection): the worker refuses the next delivery instead of the broker dropping it
    /// into the dead queue unseen, so the task's key, caller and chain are settled too.
    DeliveryLimit,
}

impl Reason {
    /// Every reason, for labels registered up front (metrics).
    pub const ALL: [Reason; 8] = [
        Reason::Failed,
        Reason::Permanent,
        Reason::Expired,
        Reason::Undecodable,
        Reason::UnknownTask,
        Reason::InvalidHeader,
        Reason::Cancelled,
        Reason::DeliveryLimit,
    ];

    /// The value of `warren-reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Failed => "failed",
            Reason::Permanent => "permanent",
            Reason::Expired => "expired",
            Reason::Undecodable => "undecodable",
            Reason::UnknownTask => "unknown_task",
            Reason::InvalidHeader => "invalid_header",
            Reason::Cancelled => "cancelled",
            Reason::DeliveryLimit => "delivery_limit",
        }
    }

    /// The reason written as `text`; `None` for anything else (a broker's reason, say).
    pub fn parse(text: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == text)
    }

    /// True when the task never reached its handler: the worker refused it as it arrived.
    pub fn refused_unrun(self) -> bool {
        match self {
            Reason::Expired | Reason::Undecodable | Reason::UnknownTask | Reason::InvalidHeader => {
                true
            }
            Reason::Failed | Reason::Permanent | Reason::Cancelled | Reason::DeliveryLimit => false,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_reads_back_from_its_header_value() {
        for r in Reason::ALL {
            assert_eq!(Reason::parse(r.as_str()), Some(r));
        }
        assert_eq!(Reason::parse("maxlen"), None, "a broker's reason");
    }
}
