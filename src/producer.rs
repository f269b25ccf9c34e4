//! Enqueueing with publisher confirms: a task id is returned only once the broker holds it.
//!
//! Every publish is persistent, `mandatory` (an unroutable task comes back as an error instead
//! of vanishing) and confirmed. A lost connection is retried with backoff for a bounded time,
//! reusing the same task id, so a retry after an ambiguous failure can at worst duplicate a
//! task (the consumer sees the same id twice), never drop it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::{BasicProperties, Channel, Confirmation};
use tokio::sync::Mutex;

use crate::broker::Pool;
use crate::config::Settings;
use crate::error::{Error, Result};
use crate::task::Task;
use crate::topology::ladder::{Ladder, round_up_secs};
use crate::topology::names::{Names, validate_task_name};
use crate::wire::{Envelope, new_task_id, unix_ms};

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
    /// Task id to use instead of a new UUID v7 (for idempotent enqueues).
    pub id: Option<String>,
    /// Caller's correlation id, carried through retries.
    pub correlation_id: Option<String>,
    /// W3C `traceparent` to propagate to the handler's span. Defaults to the running task's
    /// context when enqueued from inside a handler.
    pub traceparent: Option<String>,
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
}

/// A message ready to publish: the worker builds these for retries and dead letters.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub(crate) task: String,
    pub(crate) id: String,
    pub(crate) exchange: String,
    pub(crate) routing_key: String,
    pub(crate) body: Vec<u8>,
    pub(crate) properties: BasicProperties,
}

/// State of one `publish_all`: items not yet read, messages published but unsettled, messages
/// to publish again, and the results so far.
struct PublishRun<I> {
    items: std::iter::Enumerate<I>,
    held: HashMap<usize, Outgoing>,
    again: VecDeque<usize>,
    results: Vec<Option<Result<String>>>,
}

impl<I> PublishRun<I> {
    fn set(&mut self, i: usize, result: Result<String>) {
        if self.results.len() <= i {
            self.results.resize_with(i + 1, || None);
        }
        self.results[i] = Some(result);
    }
}

/// Publishes tasks with confirms. Cheap to clone; share it across tokio tasks.
#[derive(Debug, Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: Pool,
    settings: Settings,
    names: Names,
    ladder: Ladder,
    /// The confirm-mode channel in use, replaced after a failure. Holding the pooled
    /// connection object keeps it checked out while its channel is in use.
    channel: Mutex<Option<(deadpool_lapin::Connection, Channel)>>,
    retry_for: Duration,
    window: usize,
    /// `{ns}.tasks` and the ladder's top level, built once rather than per message.
    tasks_exchange: String,
    ladder_entry: String,
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
        let pool = Pool::new(&settings.amqp_url, role, 2, Some(settings.connect_timeout))?;
        Ok(Producer {
            inner: Arc::new(Inner {
                pool,
                settings: settings.clone(),
                names: Names::new(&settings.namespace),
                ladder: Ladder::for_max_delay(settings.max_delay),
                channel: Mutex::new(None),
                retry_for: settings.connect_timeout,
                tasks_exchange: Names::new(&settings.namespace).tasks_exchange(),
                ladder_entry: Names::new(&settings.namespace)
                    .delay_level(Ladder::for_max_delay(settings.max_delay).top()),
                window: CONFIRM_WINDOW_DEFAULT,
            }),
        })
    }

    /// Closes the producer's channel and connection with the AMQP close handshake and waits
    /// for the broker's answer. Call it before the process exits: a dropped connection closes
    /// in the background, and an exit cuts that short (the broker then logs "client
    /// unexpectedly closed TCP connection"). Every task already confirmed stays enqueued; a
    /// later enqueue connects again.
    pub async fn close(&self) {
        let Some((conn, ch)) = self.inner.channel.lock().await.take() else {
            return;
        };
        crate::broker::close_channel(&ch, "producer closed").await;
        crate::broker::close_connection(&conn, "producer closed").await;
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
        let out = self.prepare(task, body, options)?;
        let mut results = self.publish_all(std::iter::once(Ok(out))).await;
        results
            .pop()
            .unwrap_or_else(|| Err(Error::InvalidInput("internal: no result".into())))
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
        let prepared = items
            .into_iter()
            .map(|(task, body, options)| body.and_then(|b| self.prepare(&task, b, options)));
        self.publish_all(prepared).await
    }

    /// Publishes one prepared message with a confirm, retrying a lost connection like
    /// [`Producer::enqueue_raw`].
    pub(crate) async fn publish(&self, message: Outgoing) -> Result<()> {
        let mut results = self.publish_all(std::iter::once(Ok(message))).await;
        results
            .pop()
            .unwrap_or_else(|| Err(Error::InvalidInput("internal: no result".into())))
            .map(drop)
    }

    /// Names of this producer's namespace.
    pub(crate) fn names(&self) -> &Names {
        &self.inner.names
    }

    /// The delay ladder of this producer's namespace.
    pub(crate) fn ladder(&self) -> Ladder {
        self.inner.ladder
    }

    /// Validates and encodes one task; nothing is sent.
    fn prepare(&self, task: &str, body: Vec<u8>, options: EnqueueOptions) -> Result<Outgoing> {
        let s = &self.inner.settings;
        validate_task_name(task).map_err(Error::InvalidInput)?;
        if body.len() > s.max_payload_bytes {
            return Err(Error::InvalidInput(format!(
                "a `{task}` task body is {} bytes, above the limit of {} (max_payload_bytes); \
                 send ids rather than records, or raise max_payload_bytes in the topology file",
                body.len(),
                s.max_payload_bytes
            )));
        }
        let delay = options.delay.map_or(0, round_up_secs);
        if delay > s.max_delay.as_secs() {
            return Err(Error::InvalidInput(format!(
                "a delay of {} is above max_delay ({}); raise max_delay in the topology file \
                 (and re-apply it) or schedule the task later",
                humantime::format_duration(Duration::from_secs(delay)),
                humantime::format_duration(s.max_delay)
            )));
        }
        let now = SystemTime::now();
        let expires_at = match (options.expires_in, options.expires_at) {
            (Some(d), _) => Some(now + d),
            (None, Some(t)) => Some(t),
            (None, None) => s.policy(task).expires.map(|d| now + d),
        };
        if let Some(t) = expires_at
            && t <= now
        {
            return Err(Error::InvalidInput(format!(
                "the expiry of a `{task}` task is in the past ({}); give a future time or none",
                humantime::format_rfc3339_millis(t)
            )));
        }
        if let Some(id) = &options.id
            && (id.is_empty() || id.len() > 255)
        {
            return Err(Error::InvalidInput(
                "a task id must be 1 to 255 bytes long".into(),
            ));
        }
        let mut env = Envelope::new(options.id.unwrap_or_else(new_task_id), task);
        env.expires_at_ms = expires_at.map(unix_ms);
        env.correlation_id = options.correlation_id;
        // Inside a handler, a new task joins the running task's trace.
        env.traceparent = options.traceparent.or_else(crate::trace::current);
        let (exchange, routing_key, expiration) = if delay == 0 {
            // The broker expires (and dead-letters) an undelayed task even with no worker.
            let ttl = env
                .expires_at_ms
                .map(|at| at.saturating_sub(unix_ms(now)).max(1));
            (self.inner.tasks_exchange.clone(), task.to_string(), ttl)
        } else {
            // In the ladder a per-message TTL would fire before the level's own; the worker
            // checks `warren-expires-at` instead.
            (
                self.inner.ladder_entry.clone(),
                self.inner.ladder.routing_key(delay, task),
                None,
            )
        };
        Ok(Outgoing {
            task: task.to_string(),
            id: env.id.clone(),
            exchange,
            routing_key,
            body,
            properties: env.properties(expiration),
        })
    }

    /// The confirm channel, opening one (and a connection) when there is none or it died.
    async fn channel(&self) -> Result<Channel> {
        let mut slot = self.inner.channel.lock().await;
        if let Some((_, ch)) = slot.as_ref()
            && ch.status().connected()
        {
            return Ok(ch.clone());
        }
        *slot = None;
        let conn = self.inner.pool.get().await?;
        let ch = conn.create_channel().await.map_err(|source| Error::Amqp {
            operation: "opening a channel".into(),
            source,
        })?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|source| Error::Amqp {
                operation: "enabling publisher confirms".into(),
                source,
            })?;
        *slot = Some((conn, ch.clone()));
        Ok(ch)
    }

    async fn forget_channel(&self, dead: &Channel) {
        let mut slot = self.inner.channel.lock().await;
        if slot.as_ref().is_some_and(|(_, ch)| ch.id() == dead.id()) {
            *slot = None;
        }
    }

    /// Publishes every message with a window of outstanding confirms; one result per item,
    /// in order, `Ok(id)` only for a confirmed one. A lost channel or connection leaves the
    /// fate of the in-flight messages unknown: they are published again (same id) on a new
    /// channel until the retry period ends. Refusals and returns are final for their message;
    /// a missing exchange is final for all that follow.
    async fn publish_all(
        &self,
        items: impl Iterator<Item = Result<Outgoing>>,
    ) -> Vec<Result<String>> {
        let mut run = PublishRun {
            items: items.enumerate(),
            held: HashMap::new(),
            again: VecDeque::new(),
            results: Vec::new(),
        };
        let started = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.publish_round(&mut run).await {
                Ok(()) => break,
                Err(err) if err.is_transient() && started.elapsed() < self.inner.retry_for => {
                    tracing::warn!(error = %err, unconfirmed = run.again.len(), retry_in = ?backoff,
                        "publishing interrupted; publishing the unconfirmed tasks again");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(err) => {
                    // Nothing not yet settled was confirmed: report each as failed.
                    while let Some(i) = run.again.pop_front() {
                        run.held.remove(&i);
                        run.set(i, Err(err.clone()));
                    }
                    while let Some((i, item)) = run.items.next() {
                        run.set(i, item.and(Err(err.clone())));
                    }
                    break;
                }
            }
        }
        run.results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| Err(Error::InvalidInput("internal: unsettled task".into())))
            })
            .collect()
    }

    /// Publishes on one channel until every item is settled (`Ok`) or the channel fails
    /// (`Err`, with the unsettled messages queued in `run.again`).
    async fn publish_round<I: Iterator<Item = Result<Outgoing>>>(
        &self,
        run: &mut PublishRun<I>,
    ) -> Result<()> {
        let ch = self.channel().await?;
        let mut inflight = FuturesUnordered::new();
        let mut failure: Option<Error> = None;
        loop {
            if inflight.len() >= self.inner.window {
                let (j, outcome) = inflight.next().await.expect("window is non-empty");
                if let Some(e) = self.settle(run, j, outcome) {
                    failure = Some(e);
                    break;
                }
            }
            let i = match run.again.pop_front() {
                Some(i) => i,
                None => match run.items.next() {
                    None => break,
                    Some((i, Err(e))) => {
                        run.set(i, Err(e));
                        continue;
                    }
                    Some((i, Ok(out))) => {
                        run.held.insert(i, out);
                        i
                    }
                },
            };
            let m = &run.held[&i];
            let publish = ch
                .basic_publish(
                    m.exchange.as_str().into(),
                    m.routing_key.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &m.body,
                    m.properties.clone(),
                )
                .await;
            match publish {
                Ok(confirm) => inflight.push(async move { (i, confirm.await) }),
                Err(source) => {
                    run.again.push_front(i);
                    failure = Some(self.publish_error(&m.task, &m.exchange, source));
                    break;
                }
            }
        }
        while let Some((j, outcome)) = inflight.next().await {
            if let Some(e) = self.settle(run, j, outcome) {
                // A missing exchange explains the closed-channel errors that follow it.
                if !matches!(failure, Some(Error::MissingExchange { .. })) {
                    failure = Some(e);
                }
            }
        }
        match failure {
            Some(e) => {
                self.forget_channel(&ch).await;
                Err(e)
            }
            None => Ok(()),
        }
    }

    /// Records the definite outcome of message `i`; returns the error instead (and queues
    /// `i` to be published again) when the outcome is unknown or the exchange is missing.
    fn settle<I>(
        &self,
        run: &mut PublishRun<I>,
        i: usize,
        outcome: lapin::Result<Confirmation>,
    ) -> Option<Error> {
        let m = run.held.get(&i)?;
        let definite = match outcome {
            Ok(Confirmation::Ack(None)) => Ok(m.id.clone()),
            Ok(Confirmation::Ack(Some(_))) => Err(Error::Unroutable {
                task: m.task.clone(),
                namespace: self.inner.names.namespace().to_string(),
            }),
            Ok(Confirmation::Nack(_)) => Err(Error::Refusal {
                task: m.task.clone(),
            }),
            Ok(Confirmation::NotRequested) => Err(Error::InvalidInput(
                "internal: the channel is not in confirm mode".into(),
            )),
            Err(source) => {
                let err = self.publish_error(&m.task, &m.exchange, source);
                run.again.push_back(i);
                return Some(err);
            }
        };
        run.held.remove(&i);
        run.set(i, definite);
        None
    }

    fn publish_error(&self, task: &str, exchange: &str, source: lapin::Error) -> Error {
        if let lapin::ErrorKind::ProtocolError(amqp) = source.kind()
            && matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))
        {
            return Error::MissingExchange {
                exchange: exchange.to_string(),
            };
        }
        Error::Amqp {
            operation: format!("publishing a `{task}` task"),
            source,
        }
    }
}
