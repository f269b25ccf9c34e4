//! The worker pool: consume task queues with manual acks and prefetch, run handlers, settle
//! each delivery only after its outcome is safely in the broker.
//!
//! One consuming connection per process, named `warren worker {host}:{pid}`, with one channel
//! and consumer per task type (`basic.qos(prefetch)` per consumer, never global). Retries and
//! dead letters are published with confirms on a second connection, `warren worker-publish
//! {host}:{pid}`: RabbitMQ throttles publishing connections under memory pressure, and that
//! must never stall the acks on the consuming one.
//!
//! Reconnect: when the connection is lost the session is rebuilt (connect with backoff, forever;
//! re-declare; re-consume); when only a channel dies (a consumer timeout, a deleted queue) that
//! consumer alone is rebuilt. A worker never exits because the broker went away.
//!
//! Shutdown: cancel consumers, let running handlers finish within the grace period and ack
//! them, then close; what is still unacked returns to its queue.

mod acks;
mod consume;
mod context;
mod delivery;
mod handler;
mod ledger;
mod limited;
mod outcome;
mod run;
mod settle;
mod telemetry;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use context::TaskContext;
pub use handler::HandlerFuture;

use crate::broker;
use crate::config::{CONSUMER_TIMEOUT_DEFAULT, Settings};
use crate::error::{Error, Result};
use crate::producer::Producer;
use crate::task::{Task, TaskError};
use crate::topology::{Routes, validate_task_name};
use handler::{Registered, Registration};

/// What every delivery of this worker shares.
struct Shared {
    producer: Producer,
    routes: Routes,
    max_delay: Duration,
    /// Connection name, written as `warren-worker` on dead copies.
    worker_name: String,
    /// Largest result sent to a waiting caller (`max_payload_bytes`).
    max_result_bytes: usize,
    prefetch: u16,
    /// Bounds the handlers running at once in this process.
    semaphore: Arc<Semaphore>,
    /// The semaphore's size: `concurrency - available permits` handlers are running.
    concurrency: usize,
    /// Every running handler and acking task, waited for on shutdown.
    tracker: TaskTracker,
    /// Cancelled when running handlers must stop at once.
    hard_stop: CancellationToken,
    /// Cancels and pauses from the control stream, and the runs a cancel must stop.
    control: Arc<crate::control::state::ControlState>,
}

/// A pool of handlers consuming task queues. Build it, register handlers, then [`Worker::run`].
///
/// ```no_run
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Serialize, Deserialize)] struct Resize { path: String }
/// # impl warren::Task for Resize { const NAME: &'static str = "resize"; }
/// # async fn example(settings: warren::Settings) -> warren::Result<()> {
/// let shutdown = tokio_util::sync::CancellationToken::new();
/// warren::Worker::new(&settings)
///     .handle(|task: Resize, ctx: warren::TaskContext| async move {
///         println!("resizing {} (attempt {})", task.path, ctx.attempt);
///         Ok(())
///     })
///     .run(shutdown)
///     .await
/// # }
/// ```
pub struct Worker {
    settings: Settings,
    tasks: BTreeMap<String, Registration>,
    concurrency: usize,
    prefetch: u16,
    grace: Duration,
    role: String,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("tasks", &self.tasks.keys().collect::<Vec<_>>())
            .field("concurrency", &self.concurrency)
            .field("prefetch", &self.prefetch)
            .field("grace", &self.grace)
            .finish()
    }
}

impl Worker {
    /// A worker with `settings`' `[worker]` values and no handlers yet.
    pub fn new(settings: &Settings) -> Worker {
        Worker {
            settings: settings.clone(),
            tasks: BTreeMap::new(),
            concurrency: settings.worker.concurrency,
            prefetch: settings.worker.prefetch,
            grace: settings.worker.grace,
            role: "worker".into(),
        }
    }

    /// Registers the handler of task type `T`. Its policy is `T::policy` applied to the
    /// topology file's. A body that does not decode as `T` is dead-lettered as `undecodable`.
    /// The handler's value (`()` for most) is sent to a caller that waits for the task
    /// ([`Producer::call`]).
    ///
    /// # Panics
    /// When `T::NAME` is not a valid task name: that is a bug in the program, not input.
    pub fn handle<T, R, F, Fut>(mut self, handler: F) -> Worker
    where
        T: Task,
        R: serde::Serialize + Send + 'static,
        F: Fn(T, TaskContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, TaskError>> + Send + 'static,
    {
        if let Err(e) = validate_task_name(T::NAME) {
            panic!("Task::NAME of {}: {e}", std::any::type_name::<T>());
        }
        let policy = T::policy(self.settings.policy(T::NAME).clone());
        let registered = Registration::new(T::NAME, policy, handler::typed(handler));
        self.tasks.insert(T::NAME.to_string(), registered);
        self
    }

    /// Registers a handler for task type `name` that receives the raw JSON body (used by
    /// `warren worker` for `exec` handlers). A body that is not JSON is dead-lettered.
    ///
    /// # Errors
    /// [`Error::Config`] when `name` is not a valid task name.
    pub fn handle_json<F>(mut self, name: &str, handler: F) -> Result<Worker>
    where
        F: Fn(Vec<u8>, TaskContext) -> HandlerFuture + Send + Sync + 'static,
    {
        validate_task_name(name).map_err(Error::Config)?;
        let policy = self.settings.policy(name).clone();
        let registered = Registration::new(name, policy, handler::json(handler));
        self.tasks.insert(name.to_string(), registered);
        Ok(self)
    }

    /// Handlers running at once in this process. Defaults to `[worker] concurrency`.
    pub fn concurrency(mut self, n: usize) -> Worker {
        self.concurrency = n.max(1);
        self
    }

    /// Unacked deliveries the broker sends ahead per consumer (per task type). Defaults to
    /// `[worker] prefetch`.
    pub fn prefetch(mut self, n: u16) -> Worker {
        self.prefetch = n.max(1);
        self
    }

    /// How long running handlers get to finish after shutdown starts. Defaults to
    /// `[worker] grace`.
    pub fn grace(mut self, d: Duration) -> Worker {
        self.grace = d;
        self
    }

    /// Names the connections `warren {role} {host}:{pid}` (default role `worker`).
    pub fn role(mut self, role: &str) -> Worker {
        self.role = role.to_string();
        self
    }

    /// Runs until `shutdown` is cancelled, then drains gracefully. Reconnects after any broker
    /// failure.
    ///
    /// # Errors
    /// [`Error::Config`] when no handler is registered or the URL is unusable;
    /// [`Error::TopologyConflict`] when the broker's queues differ from the topology (a worker
    /// cannot fix that by retrying). Never for a lost broker.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        self.start()?.run(shutdown).await
    }

    /// Checks the registrations and builds what the run shares; nothing is sent yet.
    fn start(self) -> Result<run::Running> {
        if self.tasks.is_empty() {
            return Err(Error::Config(
                "the worker has no handlers; register one per task type it should run".into(),
            ));
        }
        for r in self.tasks.values() {
            if r.policy.time_limit >= CONSUMER_TIMEOUT_DEFAULT {
                tracing::warn!(task.kind = %r.name, "time limit is at or above RabbitMQ's default consumer_timeout (30m)");
            }
        }
        let worker_id = next_worker_id();
        let name = format!("warren {} {worker_id}", self.role);
        let producer = Producer::with_role(&self.settings, &format!("{}-publish", self.role))?;
        let plan = self
            .settings
            .plan_for(self.tasks.keys().map(String::as_str));
        let settings = &self.settings;
        let tasks: Vec<Arc<Registered>> = (self.tasks.into_values())
            .map(|r| {
                let own = settings
                    .is_broadcast(&r.name)
                    .then(|| settings.own_queue(&r.name, &worker_id));
                let limit = settings
                    .tasks
                    .get(&r.name)
                    .map_or_else(Default::default, |t| handler::Limit {
                        running: t.concurrency_limit,
                        rate: t.rate_limit,
                    });
                Arc::new(r.start(own, limit))
            })
            .collect();
        tracing::info!(connection = %name, broker = %broker::redact(&self.settings.amqp_url),
            tasks = ?tasks.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            concurrency = self.concurrency, prefetch = self.prefetch, "worker starting");
        // Registered at zero, so a dashboard sees the series before the first reconnect.
        metrics::counter!("warren_reconnects_total").increment(0);
        let shared = Shared {
            producer,
            routes: self.settings.routes(),
            max_delay: self.settings.max_delay,
            worker_name: name,
            max_result_bytes: self.settings.max_payload_bytes,
            prefetch: self.prefetch,
            semaphore: Arc::new(Semaphore::new(self.concurrency)),
            concurrency: self.concurrency,
            tracker: TaskTracker::new(),
            hard_stop: CancellationToken::new(),
            control: Arc::new(crate::control::state::ControlState::new(
                tasks.iter().map(|r| r.name.as_str()),
                crate::wire::unix_ms(std::time::UNIX_EPOCH + self.settings.cancel_retention),
            )),
        };
        Ok(run::Running {
            tasks,
            plan,
            shared: Arc::new(shared),
            amqp_url: self.settings.broker_url(),
            grace: self.grace,
            cancel_retention: self.settings.cancel_retention,
            give_up_wait: std::sync::atomic::AtomicU32::new(0),
        })
    }
}

/// This worker's id, `{host}:{pid}`: unique per host and process, and per worker when one
/// process runs several (tests, embedding programs, whatever their roles), which would
/// otherwise share their own queues' names: the n-th worker of a process (n ≥ 2) is
/// `{host}:{pid}-{n}`.
fn next_worker_id() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static STARTED: AtomicU32 = AtomicU32::new(0);
    let nth = STARTED.fetch_add(1, Ordering::Relaxed) + 1;
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    crate::topology::names::worker_id(&host, std::process::id(), nth)
}
