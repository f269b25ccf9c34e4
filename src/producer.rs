//! Enqueueing with publisher confirms: a task id is returned only once the broker holds it.
//!
//! Every publish is persistent, `mandatory` (an unroutable task comes back as an error instead
//! of vanishing) and confirmed. A lost connection is retried with backoff for a bounded time,
//! reusing the same task id, so a retry after an ambiguous failure can at worst duplicate a
//! task (the consumer sees the same id twice), never drop it.

use std::collections::VecDeque;
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
                window: CONFIRM_WINDOW_DEFAULT,
            }),
        })
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
        let id = out.id.clone();
        let mut results = self.publish_all(vec![out]).await;
        results.pop().unwrap_or(Ok(())).map(|()| id)
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
        let mut results: Vec<Option<Result<String>>> = Vec::new();
        let mut ready = Vec::new();
        let mut slots = Vec::new();
        for (task, body, options) in items {
            match body.and_then(|b| self.prepare(&task, b, options)) {
                Ok(out) => {
                    slots.push(results.len());
                    results.push(Some(Ok(out.id.clone())));
                    ready.push(out);
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        for (slot, outcome) in slots.into_iter().zip(self.publish_all(ready).await) {
            if let Err(e) = outcome {
                results[slot] = Some(Err(e));
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::InvalidInput("internal: no result".into()))))
            .collect()
    }

    /// Publishes one prepared message with a confirm, retrying a lost connection like
    /// [`Producer::enqueue_raw`].
    pub(crate) async fn publish(&self, message: Outgoing) -> Result<()> {
        self.publish_all(vec![message])
            .await
            .pop()
            .unwrap_or(Ok(()))
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
        let names = &self.inner.names;
        let (exchange, routing_key, expiration) = if delay == 0 {
            // The broker expires (and dead-letters) an undelayed task even with no worker.
            let ttl = env
                .expires_at_ms
                .map(|at| at.saturating_sub(unix_ms(now)).max(1));
            (names.tasks_exchange(), task.to_string(), ttl)
        } else {
            // In the ladder a per-message TTL would fire before the level's own; the worker
            // checks `warren-expires-at` instead.
            (
                names.delay_level(self.inner.ladder.top()),
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

    /// Publishes every message with a window of outstanding confirms, retrying those whose
    /// fate a lost connection left unknown, until the retry period ends.
    async fn publish_all(&self, messages: Vec<Outgoing>) -> Vec<Result<()>> {
        let mut results: Vec<Option<Result<()>>> = (0..messages.len()).map(|_| None).collect();
        let mut todo: VecDeque<usize> = (0..messages.len()).collect();
        let started = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(100);
        while !todo.is_empty() {
            match self.publish_round(&messages, &mut todo, &mut results).await {
                Ok(()) => {}
                Err(err) if err.is_transient() && started.elapsed() < self.inner.retry_for => {
                    tracing::warn!(error = %err, unconfirmed = todo.len(), retry_in = ?backoff,
                        "publishing interrupted; publishing the unconfirmed tasks again");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(err) => {
                    // Nothing left in `todo` was confirmed: report each as failed.
                    for i in todo.drain(..) {
                        results[i] = Some(Err(err.clone()));
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| Err(Error::InvalidInput("internal: unpublished task".into())))
            })
            .collect()
    }

    /// One pass over `todo` on one channel. Settles each message it gets a definite answer
    /// for. On a failure that leaves outcomes unknown (lost channel or connection) or that
    /// dooms the rest (missing exchange), puts the unanswered ones back in `todo` and returns
    /// the error.
    async fn publish_round(
        &self,
        messages: &[Outgoing],
        todo: &mut VecDeque<usize>,
        results: &mut [Option<Result<()>>],
    ) -> Result<()> {
        let ch = self.channel().await?;
        let mut inflight = FuturesUnordered::new();
        let mut failure: Option<Error> = None;
        while let Some(&i) = todo.front() {
            if inflight.len() >= self.inner.window {
                let (j, outcome) = inflight.next().await.expect("window is non-empty");
                if let Some(e) = self.settle(&messages[j], outcome, results, j) {
                    todo.push_back(j);
                    failure = Some(e);
                    break;
                }
            }
            let m = &messages[i];
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
                Ok(confirm) => {
                    todo.pop_front();
                    inflight.push(async move { (i, confirm.await) });
                }
                Err(source) => {
                    failure = Some(self.publish_error(&m.task, &m.exchange, source));
                    break;
                }
            }
        }
        while let Some((j, outcome)) = inflight.next().await {
            if let Some(e) = self.settle(&messages[j], outcome, results, j) {
                todo.push_back(j);
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

    /// Records a definite outcome in `results`; returns the error instead when the outcome is
    /// unknown (channel or connection failed) or the exchange is missing.
    fn settle(
        &self,
        m: &Outgoing,
        outcome: lapin::Result<Confirmation>,
        results: &mut [Option<Result<()>>],
        i: usize,
    ) -> Option<Error> {
        results[i] = Some(match outcome {
            Ok(Confirmation::Ack(None)) => Ok(()),
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
            Err(source) => return Some(self.publish_error(&m.task, &m.exchange, source)),
        });
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
