//! Enqueueing with publisher confirms: a task id is returned only once the broker holds it.
//!
//! Every publish is persistent, `mandatory` (an unroutable task comes back as an error instead
//! of vanishing) and confirmed. A lost connection is retried with backoff for a bounded time,
//! reusing the same task id, so a retry after an ambiguous failure can at worst duplicate a
//! task (the consumer sees the same id twice), never drop it.

mod answers;
mod chain;
mod control;
mod prepare;
mod publish;
pub mod unique;
mod wait;

pub use chain::Chain;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::broker::Pool;
use crate::config::Settings;
use crate::error::{Error, Result};
use crate::task::Task;
use crate::topology::Routes;
use crate::wire::copies::Outgoing;
use answers::Answers;
use prepare::Preparer;
use publish::Publisher;

/// Outstanding confirms in [`Producer::enqueue_many`]: enough to keep the broker busy over
/// loopback and a LAN, small enough to bound memory and the work redone after a lost
/// connection.
pub const CONFIRM_WINDOW_DEFAULT: usize = 1024;

/// Per-call options; everything defaults to "now, never expires, new id".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnqueueOptions {
    /// Run no earlier than this from now. Whole seconds: sub-second delays round up (1.2 s
    /// waits 2 s); at most the topology's `max_delay`.
    pub delay: Option<Duration>,
    /// Never start after this long from now (dead with reason `expired`).
    pub expires_in: Option<Duration>,
    /// Never start after this moment. `expires_in` wins when both are set.
    pub expires_at: Option<SystemTime>,
    /// Task id to use instead of a new UUID v7, e.g. your own record's id so handlers can
    /// deduplicate. Warren does not deduplicate enqueues: two with one id are two tasks.
    pub id: Option<String>,
    /// Caller's correlation id, carried through retries.
    pub correlation_id: Option<String>,
    /// W3C `traceparent` to propagate to the handler's span. Defaults to the running task's
    /// context when enqueued from inside a handler.
    pub traceparent: Option<String>,
    /// Priority (0 lowest), for task types declared with `priorities = N`: higher runs first,
    /// values above N count as N. Retries and delays keep it. Other types ignore it.
    pub priority: Option<u8>,
    /// A queue the worker answers in with the task's final outcome ([`crate::wire::answer`]),
    /// for answers that must outlive the caller's connection: declare it durable and read it
    /// yourself. The `call` methods answer over direct reply-to instead and refuse this.
    pub reply_to: Option<String>,
    /// Makes this task the first step of a chain: these task types run after it, one after
    /// another, each only once the previous one succeeded, each with the previous one's
    /// result as its payload. The steps travel in the message (`warren-chain`), no store; a
    /// waiting caller gets the last step's result, or the outcome of the step that died.
    pub then: Vec<String>,
    /// A unique task: refused as [`Error::Duplicate`] while a task of this type with this key
    /// is waiting, delayed or running ([`unique`]). 1 to 200 bytes, printable.
    pub unique_key: Option<String>,
    /// With `unique_key`: also hold the key for this long after the enqueue, even when the
    /// task finished sooner.
    pub unique_for: Option<Duration>,
}

impl EnqueueOptions {
    /// Options with a delay.
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = Some(d);
        self
    }
    /// Options with an expiry relative to now.
    pub fn expires_in(mut self, d: Duration) -> Self {
        self.expires_in = Some(d);
        self
    }
    /// Options with an absolute expiry.
    pub fn expires_at(mut self, t: SystemTime) -> Self {
        self.expires_at = Some(t);
        self
    }
    /// Options with an explicit task id.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }
    /// Options with a correlation id.
    pub fn correlation_id(mut self, c: impl Into<String>) -> Self {
        self.correlation_id = Some(c.into());
        self
    }
    /// Options with a W3C traceparent.
    pub fn traceparent(mut self, tp: impl Into<String>) -> Self {
        self.traceparent = Some(tp.into());
        self
    }
    /// Options with a priority (see [`EnqueueOptions::priority`]).
    pub fn priority(mut self, p: u8) -> Self {
        self.priority = Some(p);
        self
    }
    /// Options with one more chain step after the ones so far (see [`EnqueueOptions::then`]).
    pub fn then(mut self, task: impl Into<String>) -> Self {
        self.then.push(task.into());
        self
    }
    /// Options of a unique task (see [`EnqueueOptions::unique_key`]), its key held for at
    /// least `hold_for` after the enqueue when given.
    pub fn unique(mut self, key: impl Into<String>, hold_for: Option<Duration>) -> Self {
        self.unique_key = Some(key.into());
        self.unique_for = hold_for;
        self
    }
    /// Options with a reply queue (see [`EnqueueOptions::reply_to`]).
    pub fn reply_to(mut self, queue: impl Into<String>) -> Self {
        self.reply_to = Some(queue.into());
        self
    }
}

/// Publishes tasks with confirms. Cheap to clone; share it across tokio tasks.
#[derive(Debug, Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: Settings,
    routes: Routes,
    publisher: Publisher,
    /// Publishes the tasks a caller waits for, on its own connection (`warren {role}-wait`),
    /// whose channel also consumes their answers. Connects on the first wait.
    waiter: Publisher,
    answers: Arc<Answers>,
}

impl Producer {
    /// A producer for `settings` with a connection named `warren producer {host}:{pid}`.
    /// Connects on first use.
    ///
    /// # Errors
    /// [`Error::Config`] when the AMQP URL is unusable.
    pub fn new(settings: &Settings) -> Result<Producer> {
        Producer::with_role(settings, "producer")
    }

    /// As [`Producer::new`], naming the connection `warren {role} ...`.
    ///
    /// # Errors
    /// [`Error::Config`] when the AMQP URL is unusable.
    pub fn with_role(settings: &Settings, role: &str) -> Result<Producer> {
        let url = settings.broker_url();
        let pool = Pool::new(&url, role, 2, Some(settings.connect_timeout))?;
        let wait_pool = Pool::new(
            &url,
            &format!("{role}-wait"),
            1,
            Some(settings.connect_timeout),
        )?;
        let answers = Arc::new(Answers::default());
        let publisher = |pool| {
            Publisher::new(
                pool,
                settings.connect_timeout,
                CONFIRM_WINDOW_DEFAULT,
                &settings.namespace,
            )
        };
        Ok(Producer {
            inner: Arc::new(Inner {
                routes: settings.routes(),
                publisher: publisher(pool),
                waiter: publisher(wait_pool).answering(answers.clone()),
                answers,
                settings: settings.clone(),
            }),
        })
    }

    /// Closes the producer's channel and connection with the AMQP close handshake and waits
    /// for the broker's answer. Call it before the process exits: a dropped connection closes
    /// in the background, and an exit cuts that short (the broker then logs "client
    /// unexpectedly closed TCP connection"). Every task already confirmed stays enqueued; a
    /// later enqueue connects again.
    pub async fn close(&self) {
        self.inner.publisher.close().await;
        self.inner.waiter.close().await;
    }

    /// The settings this producer publishes with.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// Enqueues `task` now; returns its id once the broker confirmed it.
    ///
    /// # Errors
    /// See [`Producer::enqueue_raw`].
    pub async fn enqueue<T: Task>(&self, task: &T) -> Result<String> {
        self.enqueue_with(task, EnqueueOptions::default()).await
    }

    /// Enqueues `task` with `options`; returns its id once the broker confirmed it.
    ///
    /// # Errors
    /// See [`Producer::enqueue_raw`].
    pub async fn enqueue_with<T: Task>(&self, task: &T, options: EnqueueOptions) -> Result<String> {
        let body = serde_json::to_vec(task).map_err(|e| {
            Error::InvalidInput(format!("cannot serialize a `{}` task: {e}", T::NAME))
        })?;
        self.enqueue_raw(T::NAME, body, options).await
    }

    /// Enqueues a JSON `body` as task `task`; returns its id once the broker confirmed it.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a bad name, an oversized body, a delay above `max_delay` or
    /// an expiry in the past (nothing is published); [`Error::Unroutable`] /
    /// [`Error::MissingExchange`] when the topology is not applied; [`Error::Refusal`] when the
    /// broker nacks; [`Error::Connect`] / [`Error::Amqp`] when the broker stayed unreachable
    /// for the retry period.
    pub async fn enqueue_raw(
        &self,
        task: &str,
        body: Vec<u8>,
        options: EnqueueOptions,
    ) -> Result<String> {
        let (out, lock) = self
            .preparer(false)
            .prepared(task, body, options, SystemTime::now())?;
        let Some(lock) = lock else {
            return self.publish_one(out).await;
        };
        // The key first, then the task; a task that could not be published gives it back.
        {
            // Not held across the publish: the pool is small, and the publisher needs one.
            let conn = self.inner.publisher.connection().await?;
            unique::acquire(
                &conn,
                &lock.exchange,
                task,
                &lock.key,
                &out.id,
                &lock.queues,
                lock.ttls,
            )
            .await?;
        }
        let id = out.id.clone();
        let published = self.publish_one(out).await;
        if published.is_err()
            && let Ok(conn) = self.inner.publisher.connection().await
        {
            unique::release_all(&conn, &lock.queues, &id).await;
        }
        published
    }

    /// Enqueues many tasks of one type, pipelining publishes and confirms; one result per
    /// task, in input order. A task is reported `Ok` only when the broker confirmed it.
    pub async fn enqueue_many<T: Task>(
        &self,
        tasks: impl IntoIterator<Item = T>,
    ) -> Vec<Result<String>> {
        let items = tasks.into_iter().map(|t| {
            let body = serde_json::to_vec(&t).map_err(|e| {
                Error::InvalidInput(format!("cannot serialize a `{}` task: {e}", T::NAME))
            });
            (T::NAME.to_string(), body, EnqueueOptions::default())
        });
        self.enqueue_many_raw(items).await
    }

    /// As [`Producer::enqueue_many`] for raw JSON bodies with per-task options.
    pub async fn enqueue_many_raw(
        &self,
        items: impl IntoIterator<Item = (String, Result<Vec<u8>>, EnqueueOptions)>,
    ) -> Vec<Result<String>> {
        // Prepared lazily, as the confirm window makes room: memory stays bounded by the
        // window however many tasks the iterator yields.
        let prepared = items.into_iter().map(|(task, body, options)| {
            if options.unique_key.is_some() {
                return Err(one_at_a_time());
            }
            body.and_then(|b| self.prepare(&task, b, options))
        });
        self.inner.publisher.publish_all(prepared).await
    }

    /// Frees unique key `key` of task type `task` whatever holds it: its lock and its
    /// `unique_for` window are deleted, so the next enqueue with the key is accepted. For an
    /// operator, when a key outlived its task by a path no worker saw (its work queue purged
    /// by hand, a task dead-lettered by the broker itself). `key` is the key itself, or a
    /// hashed one as [`crate::ops::unique::list`] shows it. Returns whether the key was held.
    ///
    /// If the holder is still waiting or running, a second task with the key can then be
    /// accepted while it runs; when the holder ends, it leaves the new holder's key alone.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a task type the topology does not declare (when it
    /// declares any) or a bad key; broker errors.
    pub async fn free_unique(&self, task: &str, key: &str) -> Result<bool> {
        let settings = &self.inner.settings;
        crate::topology::validate_task_name(task).map_err(Error::InvalidInput)?;
        if !settings.tasks.is_empty() && !settings.tasks.contains_key(task) {
            return Err(Error::InvalidInput(format!(
                "no task `{task}` in the topology: its unique keys cannot be freed"
            )));
        }
        unique::check_key(key)?;
        let names = crate::topology::Names::new(&settings.namespace);
        let queues = unique::queues_to_free(&names, task, key);
        let conn = self.inner.publisher.connection().await?;
        unique::delete_keys(&conn, &queues).await
    }

    /// Releases the unique key held in `queue` by task `id` (the worker, when the task's
    /// outcome is final).
    pub(crate) async fn release_unique(&self, queue: &str, id: &str) -> Result<()> {
        let mut last = Ok(());
        // A blip must not leave the key held: a few tries, a fresh connection each.
        for wait in [0, 500, 2000] {
            tokio::time::sleep(Duration::from_millis(wait)).await;
            last = match self.inner.publisher.connection().await {
                Ok(conn) => unique::release(&conn, queue, id).await,
                Err(e) => Err(e),
            };
            if last.is_ok() {
                break;
            }
        }
        last
    }

    /// Publishes one prepared message with a confirm, retrying a lost connection like
    /// [`Producer::enqueue_raw`]; the worker's retry and dead copies and replays go out here.
    pub(crate) async fn publish(&self, message: Outgoing) -> Result<()> {
        self.publish_one(message).await.map(drop)
    }

    async fn publish_one(&self, message: Outgoing) -> Result<String> {
        let mut results = self
            .inner
            .publisher
            .publish_all(std::iter::once(Ok(message)))
            .await;
        results.pop().unwrap_or_else(|| {
            Err(Error::Internal(
                "publishing one message gave no result".into(),
            ))
        })
    }

    /// Validates and encodes one task; nothing is sent.
    fn prepare(&self, task: &str, body: Vec<u8>, options: EnqueueOptions) -> Result<Outgoing> {
        self.preparer(false)
            .message(task, body, options, SystemTime::now())
    }

    fn preparer(&self, direct_reply_ok: bool) -> Preparer<'_> {
        Preparer {
            settings: &self.inner.settings,
            routes: &self.inner.routes,
            direct_reply_ok,
        }
    }
}

fn serialize<T: Task>(task: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(task)
        .map_err(|e| Error::InvalidInput(format!("cannot serialize a `{}` task: {e}", T::NAME)))
}

fn one_at_a_time() -> Error {
    Error::InvalidInput(
        "unique tasks are enqueued one at a time (enqueue_with / enqueue_raw), not in a batch or \
         a wait"
            .into(),
    )
}
