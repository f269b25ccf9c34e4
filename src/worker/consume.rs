//! One task type's consumer: a channel with `basic.qos(prefetch)` and a consumer on the work
//! queue, rebuilt after a channel-level error (a consumer timeout, a deleted queue), until the
//! session stops or its connection is lost.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};
use tokio::sync::{OwnedSemaphorePermit, TryAcquireError};
use tokio_util::sync::CancellationToken;

use super::handler::Registered;
use super::{Shared, acks, delivery, ledger};
use crate::broker::Session;

/// A consumer of one work queue on one session.
pub(super) struct QueueConsumer {
    pub(super) session: Arc<Session>,
    pub(super) task: Arc<Registered>,
    pub(super) shared: Arc<Shared>,
    /// Cancelled when the session ends (shutdown, or another consumer saw the connection go).
    pub(super) stop: CancellationToken,
}

/// Why a channel's delivery loop ended.
enum Ended {
    /// The session is stopping, or the worker's semaphore closed: consume no more. Holds the
    /// delivery taken while the stop came, if any (it never started).
    Stopped(Option<Box<Delivery>>),
    /// The task type was paused (`warren pause`): consume no more until it is resumed. Holds
    /// the delivery taken meanwhile, if any (it never started).
    Paused(Option<Box<Delivery>>),
    /// The channel or consumer failed: rebuild it if the connection still stands.
    ChannelLost,
}

impl QueueConsumer {
    /// Consumes until the session stops or the connection is lost, reopening the channel
    /// with backoff after a channel-level error.
    pub(super) async fn run(self) {
        let queue = match &self.task.own {
            Some(own) => own.queue.name.clone(),
            None => self.shared.routes.names().work_queue(&self.task.name),
        };
        let tag = consumer_tag(&self.shared.worker_name, &self.task.name);
        let mut backoff = Duration::from_millis(200);
        let mut paused = self.shared.control.paused(&self.task.name);
        while !self.stop.is_cancelled() && self.session.is_connected() {
            if *paused.borrow_and_update()
                && !until_resumed(&self.task.name, &self.stop, &mut paused).await
            {
                return;
            }
            match self.open(&queue, &tag).await {
                Ok((ch, deliveries)) => {
                    backoff = Duration::from_millis(200);
                    let mut deliveries = deliveries;
                    // Acks go through the channel's settler (batched with `multiple`, so one
                    // per channel: it must know every tag); its task owns a channel handle,
                    // so the channel stays open until the last running task settled.
                    let (settler, acking) = acks::Settler::start(ch.clone(), self.shared.prefetch);
                    self.shared.tracker.spawn(acking);
                    let ended = self
                        .deliver(&mut deliveries, &queue, &settler, &mut paused)
                        .await;
                    let (held, stopping) = match ended {
                        Ended::Stopped(held) => (held, true),
                        Ended::Paused(held) => {
                            tracing::info!(task = %self.task.name, "paused: starting no more of this type");
                            (held, false)
                        }
                        Ended::ChannelLost => continue,
                    };
                    let cancelled = ch
                        .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                        .await;
                    // Only on a live channel (a shutdown, not a lost connection, whose
                    // deliveries the broker requeues itself). A broadcast's own queue goes
                    // with the connection: its prefetched tasks are for a worker that is
                    // leaving, not for the others.
                    if cancelled.is_ok() && self.task.own.is_none() {
                        if let Some(d) = held {
                            let (shared, task) = (self.shared.clone(), self.task.clone());
                            let back = delivery::hand_back(shared, task, *d, settler.clone());
                            self.shared.tracker.spawn(back);
                        }
                        self.hand_back_prefetched(deliveries, settler).await;
                    } else if cancelled.is_ok() && !stopping {
                        // A paused broadcast: its copies go back to this worker's own queue
                        // (a fresh copy through the exchange would reach every worker).
                        let held = held.map(|d| d.delivery_tag);
                        let buffered = Self::buffered(deliveries).await;
                        for tag in held.into_iter().chain(buffered) {
                            settler.settle(ledger::Settle::Requeue(tag));
                        }
                    }
                    if stopping {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(queue = %queue, error = %e, "cannot consume; retrying");
                    tokio::select! {
                        _ = self.stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    async fn open(&self, queue: &str, tag: &str) -> crate::error::Result<(Channel, Consumer)> {
        let ch = self.session.channel().await?;
        // Declared again with every channel: a broadcast's own queue may have been deleted
        // under a live connection (by an operator, or with the node it lived on).
        if let Some(own) = &self.task.own {
            crate::topology::declare::declare_own(&ch, own).await?;
        }
        self.consume_on(ch, queue, tag)
            .await
            .map_err(|source| crate::error::Error::Amqp {
                operation: format!("consuming `{queue}`"),
                source,
            })
    }

    async fn consume_on(
        &self,
        ch: Channel,
        queue: &str,
        tag: &str,
    ) -> lapin::Result<(Channel, Consumer)> {
        // Per consumer (global = false): quorum queues refuse global QoS.
        ch.basic_qos(self.shared.prefetch, BasicQosOptions { global: false })
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

    /// After the cancel: what the broker had already sent ahead (the prefetch buffer) goes
    /// back as fresh copies, so that a deploy does not count them as crashed attempts. The
    /// broker sends no delivery after its cancel-ok, so what is buffered arrives at once.
    async fn hand_back_prefetched(&self, mut deliveries: Consumer, settler: acks::Settler) {
        let mut handed = 0;
        while let Ok(Some(Ok(d))) =
            tokio::time::timeout(Duration::from_millis(50), deliveries.next()).await
        {
            let (shared, task) = (self.shared.clone(), self.task.clone());
            self.shared
                .tracker
                .spawn(delivery::hand_back(shared, task, d, settler.clone()));
            handed += 1;
        }
        if handed > 0 {
            tracing::info!(task = %self.task.name, handed, "prefetched tasks back to their queue, same attempt");
        }
    }

    /// The delivery tags the broker had sent ahead, once the consumer is cancelled.
    async fn buffered(mut deliveries: Consumer) -> Vec<u64> {
        let mut tags = Vec::new();
        while let Ok(Some(Ok(d))) =
            tokio::time::timeout(Duration::from_millis(50), deliveries.next()).await
        {
            tags.push(d.delivery_tag);
        }
        tags
    }

    /// Hands deliveries to handlers, one concurrency permit each, until the channel ends.
    async fn deliver(
        &self,
        deliveries: &mut Consumer,
        queue: &str,
        settler: &acks::Settler,
        paused: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Ended {
        loop {
            // Checked here and raced below only when waiting: `biased` selects never poll the
            // cancellation while a permit or a delivery is ready, because polling it locks the
            // token's mutex, which every consumer of the session shares.
            if self.stop.is_cancelled() {
                return Ended::Stopped(None);
            }
            // The delivery first, then a permit: a consumer waiting for work of its own type
            // must not hold a permit, or with fewer permits than task types an idle type
            // starves the others (concurrency 1 and two types: nothing ever ran). While all
            // handlers are busy, each consumer holds at most one delivery here; the rest
            // wait in the prefetch buffer.
            let next = tokio::select! {
                biased;
                next = deliveries.next() => next,
                _ = self.stop.cancelled() => return Ended::Stopped(None),
                Ok(()) = paused.changed() => {
                    if *paused.borrow_and_update() {
                        return Ended::Paused(None);
                    }
                    continue;
                }
            };
            match next {
                Some(Ok(d)) => {
                    let (shared, task) = (self.shared.clone(), self.task.clone());
                    let Some(permit) = self.permit().await else {
                        // Stopping while it waited for a permit: it never started.
                        return Ended::Stopped(Some(Box::new(d)));
                    };
                    // Paused while it waited: it does not start either.
                    if *paused.borrow() {
                        return Ended::Paused(Some(Box::new(d)));
                    }
                    let run = delivery::process(shared, task, d, permit, settler.clone());
                    self.shared.tracker.spawn(run);
                }
                Some(Err(e)) => {
                    tracing::warn!(queue = %queue, error = %e, "consumer failed; rebuilding its channel");
                    return Ended::ChannelLost;
                }
                None => {
                    tracing::warn!(queue = %queue, "consumer ended (cancelled by the broker or connection lost)");
                    return Ended::ChannelLost;
                }
            }
        }
    }

    async fn permit(&self) -> Option<OwnedSemaphorePermit> {
        permit(&self.shared, &self.stop).await
    }
}

/// A concurrency permit; `None` when the session stops first or the semaphore closed.
pub(super) async fn permit(
    shared: &Shared,
    stop: &CancellationToken,
) -> Option<OwnedSemaphorePermit> {
    let semaphore = &shared.semaphore;
    match semaphore.clone().try_acquire_owned() {
        Ok(p) => Some(p),
        Err(TryAcquireError::Closed) => None,
        Err(TryAcquireError::NoPermits) => tokio::select! {
            biased;
            p = semaphore.clone().acquire_owned() => p.ok(),
            _ = stop.cancelled() => None,
        },
    }
}

/// Waits while `task` is paused; false when `stop` comes first.
pub(super) async fn until_resumed(
    task: &str,
    stop: &CancellationToken,
    paused: &mut tokio::sync::watch::Receiver<bool>,
) -> bool {
    while *paused.borrow_and_update() {
        tokio::select! {
            _ = stop.cancelled() => return false,
            changed = paused.changed() => if changed.is_err() { return false },
        }
    }
    tracing::info!(task = %task, "resumed");
    true
}

/// `warren {host}:{pid}/{task}/{n}`: names the process and task type in the management UI;
/// `n` keeps tags unique across reconnects.
pub(super) fn consumer_tag(connection: &str, task: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let host_pid = connection.rsplit(' ').next().unwrap_or(connection);
    format!(
        "warren {host_pid}/{task}/{}",
        N.fetch_add(1, Ordering::Relaxed)
    )
}
