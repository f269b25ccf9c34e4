//! Registered handlers: a task type's name, policy and type-erased handler.

use std::future::Future;
use std::pin::Pin;

use super::context::TaskContext;
use super::telemetry::Metrics;
use crate::retry::TaskPolicy;
use serde::Serialize;

use crate::task::{Task, TaskError};
use crate::topology::OwnQueue;

/// A handler's future: `Ok` with the result's JSON when a caller waits for it
/// ([`TaskContext::awaited`]), `Ok(None)` otherwise (or to answer `null`).
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<Option<Vec<u8>>, TaskError>> + Send>>;

/// A type-erased handler: decodes the body (or says why it cannot) and starts the run.
pub(super) type ErasedHandler =
    dyn Fn(&[u8], TaskContext) -> Result<HandlerFuture, String> + Send + Sync;

/// One task type as registered on the builder.
pub(super) struct Registration {
    pub(super) name: String,
    pub(super) policy: TaskPolicy,
    pub(super) handler: Box<ErasedHandler>,
}

impl Registration {
    pub(super) fn new(name: &str, policy: TaskPolicy, handler: Box<ErasedHandler>) -> Self {
        Registration {
            name: name.to_string(),
            policy,
            handler,
        }
    }

    /// The running form, with its metric handles. Made when the worker starts, not when
    /// the handler is registered: a program may install its metrics recorder in between, and
    /// a handle taken before that would record nowhere.
    pub(super) fn start(self, own: Option<OwnQueue>, limit: Limit) -> Registered {
        Registered {
            metrics: Metrics::new(&self.name),
            name: self.name,
            policy: self.policy,
            handler: self.handler,
            own,
            limit,
        }
    }
}

/// One task type of a running worker.
pub(super) struct Registered {
    pub(super) name: String,
    pub(super) policy: TaskPolicy,
    pub(super) handler: Box<ErasedHandler>,
    /// Registered when the worker starts, so recording a task costs atomics only.
    pub(super) metrics: Metrics,
    /// A broadcast type: this worker's own queue of it. `None`: the shared work queue.
    pub(super) own: Option<OwnQueue>,
    /// Limits across every worker (`concurrency_limit`, `rate_limit`).
    pub(super) limit: Limit,
}

/// A task type's limits across every worker; none for most types.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Limit {
    /// At most this many runs at once.
    pub(super) running: Option<u32>,
    /// At most this many starts per period.
    pub(super) rate: Option<crate::limits::RateLimit>,
}

impl Limit {
    /// True when the type has any limit (its consumer then takes tokens first).
    pub(super) fn any(&self) -> bool {
        self.running.is_some() || self.rate.is_some()
    }
}

impl Registered {
    /// The key of this worker's own queue, for a broadcast type.
    pub(super) fn own_key(&self) -> Option<&str> {
        self.own.as_ref().map(|o| o.retry_key.as_str())
    }
}

/// `handler` behind a decoder of `T`: a body that is not a valid `T` is refused with why. Its
/// value is serialized only when a caller waits for it; one that cannot be is a permanent
/// failure (it would fail again on every retry).
pub(super) fn typed<T, R, F, Fut>(handler: F) -> Box<ErasedHandler>
where
    T: Task,
    R: Serialize + Send + 'static,
    F: Fn(T, TaskContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, TaskError>> + Send + 'static,
{
    Box::new(move |body: &[u8], ctx: TaskContext| {
        let task: T = serde_json::from_slice(body)
            .map_err(|e| format!("not a valid `{}` task: {e}", T::NAME))?;
        let awaited = ctx.awaited;
        let run = handler(task, ctx);
        Ok(Box::pin(async move {
            let value = run.await?;
            if !awaited {
                return Ok(None);
            }
            serde_json::to_vec(&value).map(Some).map_err(|e| {
                TaskError::permanent(format!(
                    "cannot serialize the result of a `{}` task: {e}",
                    T::NAME
                ))
            })
        }) as HandlerFuture)
    })
}

/// `handler` of raw JSON bodies: a body that is not JSON is refused with why.
pub(super) fn json<F>(handler: F) -> Box<ErasedHandler>
where
    F: Fn(Vec<u8>, TaskContext) -> HandlerFuture + Send + Sync + 'static,
{
    Box::new(move |body: &[u8], ctx: TaskContext| {
        serde_json::from_slice::<serde::de::IgnoredAny>(body)
            .map_err(|e| format!("body is not JSON: {e}"))?;
        Ok(handler(body.to_vec(), ctx))
    })
}
