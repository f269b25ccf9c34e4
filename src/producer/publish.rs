//! The confirm pipeline: publishes prepared messages with a window of outstanding confirms
//! and reports each one's definite outcome.
//!
//! A lost channel or connection leaves the fate of the in-flight messages unknown: they are
//! published again (same id) on a new channel until the retry period ends, so an ambiguous
//! failure can at worst duplicate a task, never drop it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::{Channel, Confirmation};
use tokio::sync::Mutex;

use super::answers::Answers;
use crate::broker::{self, Pool};
use crate::error::{Error, Result};
use crate::wire::copies::{IfUnroutable, Outgoing};

/// Publishes with confirms on one channel of a pooled connection, replaced after a failure.
#[derive(Debug)]
pub(super) struct Publisher {
    pool: Pool,
    /// The confirm-mode channel in use. Holding the pooled connection object keeps it
    /// checked out while its channel is in use.
    /// With it, the number its answers' consumer has on an answering publisher.
    channel: Mutex<Option<(broker::PooledConnection, Channel, Option<u64>)>>,
    /// How long a lost connection is retried before the unconfirmed messages fail.
    retry_for: Duration,
    /// Outstanding confirms at most.
    window: usize,
    /// The namespace, named in an unroutable task's error.
    namespace: String,
    /// Set on the publisher of tasks a caller waits for: each of its channels consumes
    /// direct reply-to into these waits.
    answers: Option<Arc<Answers>>,
}

/// State of one `publish_all`: items not yet read, messages published but unsettled, messages
/// to publish again, and the results so far.
struct Run<I> {
    items: std::iter::Enumerate<I>,
    held: HashMap<usize, Outgoing>,
    again: VecDeque<usize>,
    results: Vec<Option<Result<String>>>,
}

impl<I: Iterator<Item = Result<Outgoing>>> Run<I> {
    /// The next message to publish: one to publish again, else the next item (an item that
    /// failed before publishing is recorded and skipped); `None` when all went out.
    fn next_index(&mut self) -> Option<usize> {
        if let Some(i) = self.again.pop_front() {
            return Some(i);
        }
        loop {
            match self.items.next()? {
                (i, Err(e)) => self.set(i, Err(e)),
                (i, Ok(out)) => {
                    self.held.insert(i, out);
                    return Some(i);
                }
            }
        }
    }
}

impl<I> Run<I> {
    /// How many items have a definite result so far.
    fn settled(&self) -> usize {
        self.results.iter().filter(|r| r.is_some()).count()
    }

    fn set(&mut self, i: usize, result: Result<String>) {
        if self.results.len() <= i {
            self.results.resize_with(i + 1, || None);
        }
        self.results[i] = Some(result);
    }
}

impl Publisher {
    pub(super) fn new(
        pool: Pool,
        retry_for: Duration,
        window: usize,
        namespace: &str,
    ) -> Publisher {
        Publisher {
            pool,
            channel: Mutex::new(None),
            retry_for,
            window,
            namespace: namespace.to_string(),
            answers: None,
        }
    }

    /// This publisher's channels consume direct reply-to into `answers`; publish the tasks a
    /// caller waits for with it, `reply_to` = [`super::answers::DIRECT_REPLY_TO`].
    pub(super) fn answering(mut self, answers: Arc<Answers>) -> Publisher {
        self.answers = Some(answers);
        self
    }

    /// A connection of this publisher's pool, for work beside publishing (unique keys).
    ///
    /// # Errors
    /// As [`Pool::get`].
    pub(super) async fn connection(&self) -> Result<broker::PooledConnection> {
        self.pool.get().await
    }

    /// Closes the channel and its connection with the handshake; a later publish connects
    /// again.
    pub(super) async fn close(&self) {
        let Some((conn, ch, _)) = self.channel.lock().await.take() else {
            return;
        };
        broker::close_channel(&ch, "producer closed").await;
        broker::close_connection(&conn, "producer closed").await;
    }

    /// The confirm channel, opening one (and a connection) when there is none or it died.
    /// On an answering publisher, also the number of the channel's answers' consumer.
    async fn channel(&self, deadline: tokio::time::Instant) -> Result<(Channel, Option<u64>)> {
        let mut slot = self.channel.lock().await;
        if let Some((_, ch, listening)) = slot.as_ref()
            && ch.status().connected()
        {
            return Ok((ch.clone(), *listening));
        }
        *slot = None;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let conn = self.pool.get_within(Some(left)).await?;
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
        let listening = match &self.answers {
            Some(answers) => {
                Some(
                    answers
                        .clone()
                        .listen(&ch)
                        .await
                        .map_err(|source| Error::Amqp {
                            operation: "consuming direct reply-to".into(),
                            source,
                        })?,
                )
            }
            None => None,
        };
        *slot = Some((conn, ch.clone(), listening));
        Ok((ch, listening))
    }

    async fn forget_channel(&self, dead: &Channel) {
        let mut slot = self.channel.lock().await;
        if slot.as_ref().is_some_and(|(_, ch, _)| ch.id() == dead.id()) {
            *slot = None;
        }
    }

    /// Publishes every message with a window of outstanding confirms; one result per item,
    /// in order, `Ok(id)` only for a confirmed one. A lost channel or connection leaves the
    /// fate of the in-flight messages unknown: they are published again (same id) on a new
    /// channel until the retry period ends, and so are refused (nacked) ones. Returns are
    /// final for their message; a missing exchange is final for all that follow.
    pub(super) async fn publish_all(
        &self,
        items: impl Iterator<Item = Result<Outgoing>>,
    ) -> Vec<Result<String>> {
        let mut run = Run {
            items: items.enumerate(),
            held: HashMap::new(),
            again: VecDeque::new(),
            results: Vec::new(),
        };
        // A lost connection is retried for `retry_for` from the moment it was lost (a round
        // that settles something starts the clock again); the reconnect inside a round gets
        // only what is left of that, so the whole wait keeps to the deadline.
        let mut lost_at: Option<tokio::time::Instant> = None;
        let mut backoff = Duration::from_millis(100);
        loop {
            let now = tokio::time::Instant::now();
            let deadline = lost_at.unwrap_or(now) + self.retry_for;
            let settled = run.settled();
            match self.publish_round(&mut run, deadline).await {
                Ok(()) => break,
                Err(err) if err.is_transient() && tokio::time::Instant::now() < deadline => {
                    // Lost midway (something settled first): the clock starts now; else it
                    // started when this round did, or at an earlier loss.
                    lost_at = Some(if run.settled() > settled {
                        tokio::time::Instant::now()
                    } else {
                        lost_at.unwrap_or(now)
                    });
                    if run.again.is_empty() {
                        tracing::debug!(error = %err, retry_in = ?backoff, "publishing interrupted; retrying");
                    } else {
                        tracing::warn!(error = %err, unconfirmed = run.again.len(), retry_in = ?backoff,
                            "publishing interrupted; publishing the unconfirmed tasks again");
                    }
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
                r.unwrap_or_else(|| {
                    Err(Error::Internal(
                        "a task of the batch was never settled".into(),
                    ))
                })
            })
            .collect()
    }

    /// Publishes on one channel until every item is settled (`Ok`) or the channel fails
    /// (`Err`, with the unsettled messages queued in `run.again`).
    async fn publish_round<I: Iterator<Item = Result<Outgoing>>>(
        &self,
        run: &mut Run<I>,
        deadline: tokio::time::Instant,
    ) -> Result<()> {
        let (ch, listening) = self.channel(deadline).await?;
        let mut inflight = FuturesUnordered::new();
        let mut failure: Option<Error> = None;
        loop {
            if inflight.len() >= self.window
                && let Some((j, outcome)) = inflight.next().await
                && let Some(e) = self.settle(run, j, outcome, listening)
            {
                failure = Some(e);
                break;
            }
            let Some(i) = run.next_index() else { break };
            let m = &run.held[&i];
            let publish = ch
                .basic_publish(
                    m.route.exchange.as_str().into(),
                    m.route.routing_key.as_str().into(),
                    BasicPublishOptions {
                        mandatory: m.if_unroutable.mandatory(),
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
                    failure = Some(self.publish_error(&m.task, &m.route.exchange, source));
                    break;
                }
            }
        }
        while let Some((j, outcome)) = inflight.next().await {
            if let Some(e) = self.settle(run, j, outcome, listening) {
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
    /// `listening`: the number of the channel's answers' consumer, told of each confirmed
    /// task (only there can its answer come).
    fn settle<I>(
        &self,
        run: &mut Run<I>,
        i: usize,
        outcome: lapin::Result<Confirmation>,
        listening: Option<u64>,
    ) -> Option<Error> {
        let m = run.held.get(&i)?;
        let definite = match outcome {
            Ok(Confirmation::Ack(None)) => {
                if let (Some(answers), Some(channel)) = (&self.answers, listening) {
                    answers.confirmed_on(&m.id, channel);
                }
                Ok(m.id.clone())
            }
            Ok(Confirmation::Ack(Some(_))) if m.if_unroutable == IfUnroutable::Broadcast => {
                Err(Error::NoListeners {
                    task: m.task.clone(),
                    id: m.id.clone(),
                })
            }
            Ok(Confirmation::Ack(Some(_))) if m.if_unroutable == IfUnroutable::BroadcastFiring => {
                tracing::warn!(task.kind = %m.task, task.id = %m.id,
                    "no worker receives this broadcast type right now; the firing ran nowhere");
                Ok(m.id.clone())
            }
            Ok(Confirmation::Ack(Some(_))) if m.if_unroutable == IfUnroutable::QueueAnswer => {
                tracing::warn!(task.kind = %m.task, task.id = %m.id, queue = %m.route.routing_key,
                    "the reply queue this task names does not exist; its answer is lost");
                Ok(m.id.clone())
            }
            Ok(Confirmation::Ack(Some(_))) => Err(Error::Unroutable {
                task: m.task.clone(),
                namespace: self.namespace.clone(),
            }),
            // A nack is a broker that could not take the message right now: a quorum queue
            // electing a new leader after a node loss (measured: every batch in flight for
            // ~1 s after a kill -9), a full queue. It is published again with the rest of the
            // round's unsettled messages until the retry period ends, then reported.
            Ok(Confirmation::Nack(_)) => {
                run.again.push_back(i);
                return Some(Error::Refusal {
                    task: m.task.clone(),
                });
            }
            Ok(Confirmation::NotRequested) => Err(Error::Internal(
                "the publishing channel is not in confirm mode".into(),
            )),
            Err(source) => {
                let err = self.publish_error(&m.task, &m.route.exchange, source);
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
