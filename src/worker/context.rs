//! What a handler learns about the task it runs.

use std::time::SystemTime;

use tokio_util::sync::CancellationToken;

/// Facts about one run of a task, handed to its handler.
#[derive(Debug, Clone)]
pub struct TaskContext {
    /// Task name.
    pub task: String,
    /// Task id, stable across retries and redeliveries: use it to make the handler idempotent.
    pub id: String,
    /// This run's number, 1 on the first run; counts crashed deliveries too where the queue
    /// reports them (quorum queues).
    pub attempt: u32,
    /// Runs allowed before the task is dead-lettered.
    pub max_attempts: u32,
    /// When the task was first enqueued.
    pub enqueued_at: SystemTime,
    /// The caller's correlation id, if any.
    pub correlation_id: Option<String>,
    /// True when this task's result is used: a caller waits for it (it was enqueued with a
    /// reply address), or it is a step of a chain, whose next step gets it as its payload.
    /// Exec handlers collect stdout only then.
    pub awaited: bool,
    /// This run's W3C `traceparent`: a child of the producer's context, or a new trace when
    /// the task arrived without one. Tasks enqueued from the handler join this trace.
    pub traceparent: String,
    /// Cancelled when this run must stop: the task was cancelled (`warren cancel`,
    /// [`crate::producer::Producer::cancel`]; the run then ends dead as `cancelled`), or the worker
    /// stops at once (the grace period ran out; the task goes back to its queue). Long
    /// handlers should check it and stop early; after a second their future is dropped.
    pub cancel: CancellationToken,
}

impl TaskContext {
    /// True when this is the last attempt before the task is dead-lettered.
    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }
}
