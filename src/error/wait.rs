//! Why waiting for a task's answer gave no result: a failure of the wait, not of the broker.

/// Why waiting for a task's outcome (`Producer::call`, `Producer::wait`) gave no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WaitFailure {
    /// No answer came in time. The task may still run (or be running): it was enqueued, or
    /// its publishing took the whole wait.
    #[error("no answer for `{task}` task {id} within {after}; the task may still run")]
    TimedOut {
        /// Task name.
        task: String,
        /// Task id.
        id: String,
        /// The wait, as written in durations (`30s`).
        after: String,
    },
    /// The answer can no longer arrive: the channel it would come back on closed after the
    /// task was confirmed (a lost connection, a channel error, the producer closed; direct
    /// reply-to answers only to that channel). The task is enqueued and runs anyway; the wait
    /// ends at once rather than at its timeout.
    #[error(
        "the answer to `{task}` task {id} can no longer arrive: the channel it would come back \
         on closed (a lost connection); the task is enqueued and runs anyway"
    )]
    AnswerLost {
        /// Task name.
        task: String,
        /// Task id.
        id: String,
    },
    /// The task went dead: its reason (`failed`, `permanent`, `expired`, …) and last error.
    #[error("`{task}` task {id} is dead ({reason}): {error}")]
    Dead {
        /// The task type that died (for a chain, the step that stopped it).
        task: String,
        /// Task id.
        id: String,
        /// Dead-letter reason.
        reason: String,
        /// Its last error.
        error: String,
    },
    /// The task succeeded, but its answer does not decode as the caller's result type.
    #[error(
        "the result of `{task}` task {id} is not what the caller expects ({error}); it was: {raw}"
    )]
    UndecodableResult {
        /// Task name.
        task: String,
        /// Task id.
        id: String,
        /// The decoder's error.
        error: String,
        /// The answer's body as text.
        raw: String,
    },
}
