//! Typed tasks: the [`Task`] trait and the error a handler returns to steer its delivery.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::retry::TaskPolicy;

/// A unit of work: a serde type with a stable wire name.
///
/// Delivery is at-least-once: a task may run twice (a worker crash between the handler's end
/// and the ack, a lost connection). Handlers must be idempotent; use the task id from the
/// context to deduplicate. Keep payloads small: send ids, not records.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// #[derive(Serialize, Deserialize)]
/// struct SendWelcomeEmail { user_id: u64 }
/// impl warren::Task for SendWelcomeEmail {
///     const NAME: &'static str = "send_welcome_email";
/// }
/// ```
pub trait Task: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Wire name: routing key, queue name suffix and the AMQP `type` property. Never derive
    /// it from the Rust type name: renaming the type must not orphan queued tasks.
    /// `[a-z0-9_-]`, 1 to 64 characters.
    const NAME: &'static str;

    /// This type's policy, given the one from the topology file (its `[tasks.NAME]` table, or
    /// `[defaults]`). Override to pin values in code; the default keeps the file's.
    fn policy(from_file: TaskPolicy) -> TaskPolicy {
        from_file
    }
}

/// Boxed error from a handler.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a failing handler returns: retry later, or give up now.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// Follow the retry policy; dead-letter when attempts run out.
    #[error("{0}")]
    Retryable(BoxError),
    /// Never retry: straight to the dead queue.
    #[error("permanent failure: {0}")]
    Permanent(BoxError),
}

impl TaskError {
    /// A retryable failure with a message.
    pub fn retry(msg: impl Into<String>) -> TaskError {
        TaskError::Retryable(msg.into().into())
    }

    /// A permanent failure with a message.
    pub fn permanent(msg: impl Into<String>) -> TaskError {
        TaskError::Permanent(msg.into().into())
    }
}
