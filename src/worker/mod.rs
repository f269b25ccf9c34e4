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
mod context;
mod delivery;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio::sync::{Semaphore, TryAcquireError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use context::TaskContext;
pub use delivery::{ERROR_TEXT_MAX, reason};

use crate::broker::{self, connection_name, url_parts};
use crate::config::{CONSUMER_TIMEOUT_DEFAULT, Settings, TaskPolicy};
use crate::error::{Error, Result};
use crate::producer::Producer;
use crate::task::{Task, TaskError};
use crate::topology::names::{Names, validate_task_name};
use crate::topology::{self, Plan};

/// A handler's future.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<(), TaskError>> + Send>>;

/// A type-erased handler: decodes the body (or says why it cannot) and starts the run.
type ErasedHandler =
    dyn Fn(&[u8], TaskContext) -> std::result::Result<HandlerFuture, String> + Send + Sync;

/// One registered task type.
pub(crate) struct Registered {
    pub(crate) name: String,
    pub(crate) policy: TaskPolicy,
    pub(crate) handler: Box<ErasedHandler>,
}

/// What every delivery of this worker shares.
pub(crate) struct Shared {
    pub(crate) producer: Producer,
    pub(crate) max_delay: Duration,
    pub(crate) worker_name: String,
    /// Cancelled when running handlers must stop at once.
    pub(crate) hard_stop: CancellationToken,
    pub(crate) metrics: telemetry::Metrics,
}

mod telemetry {
    //! Counters for the metrics endpoint, through the `metrics` facade (a no-op until an
    //! exporter is installed). Handles are registered once per task type when the worker
    //! starts, so recording a task costs a few atomic operations, not label allocations.
    use std::time::Duration;

    use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

    use super::reason;

    pub(crate) struct Metrics {
        in_flight: Gauge,
        duration: Histogram,
        success: Counter,
        retry: Counter,
        dead: Counter,
        retries: Counter,
        dead_by_reason: Vec<(&'static str, Counter)>,
    }

    impl Metrics {
        pub(crate) fn new(task: &str) -> Metrics {
            let t = task.to_string();
            let outcome = |o: &'static str| counter!("warren_tasks_total", "task" => t.clone(), "outcome" => o);
            let reasons = [
                reason::FAILED,
                reason::PERMANENT,
                reason::EXPIRED,
                reason::UNDECODABLE,
                reason::UNKNOWN_TASK,
                reason::INVALID_HEADER,
            ];
            Metrics {
                in_flight: gauge!("warren_tasks_in_flight", "task" => t.clone()),
                duration: histogram!("warren_task_duration_seconds", "task" => t.clone()),
                success: outcome("success"),
                retry: outcome("retry"),
                dead: outcome("dead"),
                retries: counter!("warren_retries_total", "task" => t.clone()),
                dead_by_reason: reasons
                    .into_iter()
                    .map(|r| (r, counter!("warren_dead_lettered_total", "task" => t.clone(), "reason" => r)))
                    .collect(),
            }
        }
        pub(crate) fn started(&self) {
            self.in_flight.increment(1.0);
        }
        pub(crate) fn finished(&self, took: Duration) {
            self.in_flight.decrement(1.0);
            self.duration.record(took.as_secs_f64());
        }
        /// `outcome`: success, retry or dead.
        pub(crate) fn outcome(&self, outcome: &'static str) {
            match outcome {
                "success" => self.success.increment(1),
                "retry" => {
                    self.retry.increment(1);
                    self.retries.increment(1);
                }
                _ => self.dead.increment(1),
            }
        }
        pub(crate) fn dead(&self, why: &'static str) {
            if let Some((_, c)) = self.dead_by_reason.iter().find(|(r, _)| *r == why) {
                c.increment(1);
            }
        }
    }
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
    tasks: BTreeMap<String, Registered>,
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
    ///
    /// # Panics
    /// When `T::NAME` is not a valid task name: that is a bug in the program, not input.
    pub fn handle<T, F, Fut>(mut self, handler: F) -> Worker
    where
        T: Task,
        F: Fn(T, TaskContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), TaskError>> + Send + 'static,
    {
        if let Err(e) = validate_task_name(T::NAME) {
            panic!("Task::NAME of {}: {e}", std::any::type_name::<T>());
        }
        let policy = T::policy(self.settings.policy(T::NAME).clone());
        let erased: Box<ErasedHandler> = Box::new(move |body: &[u8], ctx: TaskContext| {
            let task: T = serde_json::from_slice(body)
                .map_err(|e| format!("not a valid `{}` task: {e}", T::NAME))?;
            Ok(Box::pin(handler(task, ctx)) as HandlerFuture)
        });
        self.tasks.insert(
            T::NAME.to_string(),
            Registered {
                name: T::NAME.to_string(),
                policy,
                handler: erased,
            },
        );
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
        let erased: Box<ErasedHandler> = Box::new(move |body: &[u8], ctx: TaskContext| {
            serde_json::from_slice::<serde::de::IgnoredAny>(body)
                .map_err(|e| format!("body is not JSON: {e}"))?;
            Ok(handler(body.to_vec(), ctx))
        });
        let policy = self.settings.policy(name).clone();
        self.tasks.insert(
            name.to_string(),
            Registered {
                name: name.to_string(),
                policy,
                handler: erased,
            },
        );
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
        let vhost = url_parts(&self.settings.amqp_url)?.vhost;
        let name = connection_name(&self.role);
        let producer = Producer::with_role(&self.settings, &format!("{}-publish", self.role))?;
        let hard_stop = CancellationToken::new();
        let semaphore = Arc::new(Semaphore::new(self.concurrency));
        let tracker = TaskTracker::new();
        let names = Names::new(&self.settings.namespace);
        let plan = Plan::for_tasks(&self.settings, self.tasks.keys().map(String::as_str));
        let registered: Vec<(Arc<Registered>, Arc<Shared>)> = self
            .tasks
            .into_values()
            .map(|r| {
                let shared = Arc::new(Shared {
                    producer: producer.clone(),
                    max_delay: self.settings.max_delay,
                    worker_name: name.clone(),
                    hard_stop: hard_stop.clone(),
                    metrics: telemetry::Metrics::new(&r.name),
                });
                (Arc::new(r), shared)
            })
            .collect();
        tracing::info!(connection = %name, broker = %broker::redact(&self.settings.amqp_url),
            tasks = ?registered.iter().map(|(r, _)| r.name.as_str()).collect::<Vec<_>>(),
            concurrency = self.concurrency, prefetch = self.prefetch, "worker starting");

        // Channels stay referenced until the drain is over: in-flight deliveries ack on them.
        let mut sessions: Vec<Arc<Connection>> = Vec::new();
        let mut backoff = Duration::from_millis(500);
        loop {
            let conn = tokio::select! {
                _ = shutdown.cancelled() => break,
                c = broker::connect(&self.settings.amqp_url, &name, None) => c,
            };
            let conn = match conn {
                Ok(c) => Arc::new(c),
                Err(e) if e.is_transient() => continue,
                Err(e) => return Err(e),
            };
            match topology::apply(&plan, &conn, &vhost).await {
                Ok(_) => {}
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, "declaring the topology failed; reconnecting");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
                Err(e) => return Err(e),
            }
            backoff = Duration::from_millis(500);
            let session = shutdown.child_token();
            let mut consumers = tokio::task::JoinSet::new();
            for (r, shared) in &registered {
                consumers.spawn(consume(
                    conn.clone(),
                    names.work_queue(&r.name),
                    consumer_tag(&name, &r.name),
                    self.prefetch,
                    r.clone(),
                    shared.clone(),
                    semaphore.clone(),
                    tracker.clone(),
                    session.clone(),
                ));
            }
            tracing::info!("consuming");
            // A consumer returns only when its connection is gone or the session is stopping.
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = consumers.join_next() => {
                    metrics::counter!("warren_reconnects_total").increment(1);
                    tracing::warn!("connection to the broker lost; reconnecting");
                }
            }
            session.cancel();
            while consumers.join_next().await.is_some() {}
            sessions.push(conn);
            if shutdown.is_cancelled() {
                break;
            }
            sessions.retain(|c| c.status().connected());
        }

        // Graceful drain: consumers are cancelled; running handlers finish and ack.
        tracker.close();
        tracing::info!(running = tracker.len(), grace = %humantime::format_duration(self.grace), "shutting down: waiting for running tasks");
        if tokio::time::timeout(self.grace, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                still_running = tracker.len(),
                "grace period over; stopping running tasks (they return to their queue)"
            );
            hard_stop.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(2), tracker.wait()).await;
        }
        for conn in sessions {
            broker::close_connection(&conn, "worker shutdown").await;
        }
        producer.close().await;
        tracing::info!("worker stopped");
        Ok(())
    }
}

/// `{host}:{pid}/{task}/{n}`: names the process and task type in the management UI; `n`
/// keeps tags unique across reconnects.
fn consumer_tag(connection: &str, task: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let host_pid = connection.rsplit(' ').next().unwrap_or(connection);
    format!(
        "warren {host_pid}/{task}/{}",
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Consumes one queue until the session stops or the connection is lost, rebuilding the
/// channel after a channel-level error (consumer timeout, queue deleted).
#[allow(clippy::too_many_arguments)]
async fn consume(
    conn: Arc<Connection>,
    queue: String,
    tag: String,
    prefetch: u16,
    registered: Arc<Registered>,
    shared: Arc<Shared>,
    semaphore: Arc<Semaphore>,
    tracker: TaskTracker,
    session: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        if session.is_cancelled() || !conn.status().connected() {
            return;
        }
        let channel = match open_consumer(&conn, &queue, &tag, prefetch).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(queue = %queue, error = %e, "cannot consume; retrying");
                tokio::select! {
                    _ = session.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        backoff = Duration::from_millis(200);
        let (ch, mut deliveries) = channel;
        // Acks go through the channel's settler (batched with `multiple`); its task owns a
        // channel handle, so the channel stays open until the last running task settled.
        let (settler, acking) = acks::Settler::start(ch.clone(), prefetch);
        tracker.spawn(acking);
        let stop = async |ch: &Channel| {
            let _ = ch
                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                .await;
        };
        loop {
            // Checked here and raced below only when waiting: `biased` selects never poll the
            // cancellation while a permit or a delivery is ready, because polling it locks the
            // token's mutex, which every consumer of the session shares.
            if session.is_cancelled() {
                return stop(&ch).await;
            }
            // Take a permit first: while all handlers are busy, deliveries wait in the
            // prefetch buffer rather than piling up as spawned tasks.
            let permit = match semaphore.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(TryAcquireError::Closed) => return,
                Err(TryAcquireError::NoPermits) => tokio::select! {
                    biased;
                    p = semaphore.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                    _ = session.cancelled() => return stop(&ch).await,
                },
            };
            let next = tokio::select! {
                biased;
                next = deliveries.next() => next,
                _ = session.cancelled() => return stop(&ch).await,
            };
            match next {
                Some(Ok(delivery)) => {
                    let (r, s, settler) = (registered.clone(), shared.clone(), settler.clone());
                    tracker.spawn(delivery::process(s, r, delivery, permit, settler));
                }
                Some(Err(e)) => {
                    tracing::warn!(queue = %queue, error = %e, "consumer failed; rebuilding its channel");
                    break;
                }
                None => {
                    tracing::warn!(queue = %queue, "consumer ended (cancelled by the broker or connection lost)");
                    break;
                }
            }
        }
    }
}

async fn open_consumer(
    conn: &Connection,
    queue: &str,
    tag: &str,
    prefetch: u16,
) -> lapin::Result<(Channel, lapin::Consumer)> {
    let ch = conn.create_channel().await?;
    // Per consumer (global = false): quorum queues refuse global QoS.
    ch.basic_qos(prefetch, BasicQosOptions { global: false })
        .await?;
    let consumer = ch
        .basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((ch, consumer))
}
