//! The consumer of a task type with a limit across workers (`concurrency_limit`,
//! `rate_limit`): tokens first, then one task at a time by `basic.get`.
//!
//! A limited type's tasks are not prefetched: a task sent ahead would wait in this worker's
//! memory for a token, maybe past the broker's consumer timeout. So the consumer takes a
//! concurrency permit, a run token and a start token ([`crate::control::tokens`]), then gets
//! one task from the work queue; an empty queue is asked again after a short wait (20 ms
//! doubling to 500 ms). Tokens held for a minute without work are given back and taken again,
//! so an idle worker's tokens never reach the consumer timeout either.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::BasicGetOptions;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::consume::{permit, until_resumed};
use super::handler::Registered;
use super::{Shared, acks, delivery};
use crate::broker::{Session, close_channel};
use crate::control::limits::Limits;
use crate::control::tokens::{Token, Tokens};

/// Longest idle wait between two gets of an empty work queue.
const POLL_MAX: Duration = Duration::from_millis(500);

/// How long tokens are held without work before they go back.
const IDLE_RELEASE: Duration = Duration::from_secs(60);

/// A limited type's consumer on one session.
pub(super) struct LimitedConsumer {
    pub(super) session: Arc<Session>,
    pub(super) task: Arc<Registered>,
    pub(super) shared: Arc<Shared>,
    pub(super) stop: CancellationToken,
}

/// Why serving ended.
enum Served {
    Stopped,
    Paused,
    ChannelLost,
}

/// One session's channels: gets and their acks, and each limit's tokens.
struct Open {
    get: lapin::Channel,
    settler: acks::Settler,
    running: Option<Tokens>,
    starts: Option<(Tokens, Duration)>,
}

impl LimitedConsumer {
    /// Serves until the session stops or its connection is lost.
    pub(super) async fn run(self) {
        let mut paused = self.shared.control.paused(&self.task.name);
        let mut backoff = Duration::from_millis(200);
        while !self.stop.is_cancelled() && self.session.is_connected() {
            if *paused.borrow_and_update()
                && !until_resumed(&self.task.name, &self.stop, &mut paused).await
            {
                return;
            }
            match self.open().await {
                Ok(mut open) => {
                    backoff = Duration::from_millis(200);
                    let served = self.serve(&mut open, &mut paused).await;
                    // Dropping `open` stops taking tokens; the ones running tasks hold stay
                    // held until those tasks end (their channels close then), and the get
                    // channel stays open (its settler holds it) until they are acked.
                    drop(open);
                    match served {
                        Served::Stopped => return,
                        Served::Paused => {
                            tracing::info!(task = %self.task.name, "paused: starting no more of this type");
                        }
                        Served::ChannelLost => {}
                    }
                }
                Err(_) if self.stop.is_cancelled() => return,
                Err(e) => {
                    tracing::warn!(task = %self.task.name, error = %e, "cannot take limit tokens; retrying");
                    tokio::select! {
                        _ = self.stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    async fn open(&self) -> crate::error::Result<Open> {
        let names = self.shared.routes.names();
        let name = &self.task.name;
        let get = self.session.channel().await?;
        let (settler, acking) = acks::Settler::start(get.clone(), self.shared.prefetch);
        self.shared.tracker.spawn(acking);
        let lock = names.limit_lock(name);
        let mut wait = Duration::from_millis(50);
        while !crate::broker::lease::try_take(self.session.connection(), &lock, None).await? {
            tokio::select! {
                _ = self.stop.cancelled() => {
                    return Err(crate::error::Error::Internal("stopping".into()));
                }
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(Duration::from_secs(2));
        }
        let subscribed = self.subscribe().await;
        // The lock goes with this connection too; deleting it lets the next worker in now.
        if let Ok(ch) = self.session.channel().await {
            let _ = ch
                .queue_delete(lock.as_str().into(), Default::default())
                .await;
            close_channel(&ch, "limit lock released").await;
        }
        let (running, starts) = subscribed?;
        Ok(Open {
            get,
            settler,
            running,
            starts,
        })
    }

    /// Under the type's lock: the limits in force (the record, else the topology's), and
    /// each limit's tokens counted and subscribed to. A token consumer's prefetch is this
    /// worker's concurrency, not the limit: a limit raised while it runs needs no new
    /// consumer.
    async fn subscribe(
        &self,
    ) -> crate::error::Result<(Option<Tokens>, Option<(Tokens, Duration)>)> {
        let names = self.shared.routes.names();
        let name = &self.task.name;
        let declared = Limits {
            concurrency: self.task.limit.running,
            rate: self.task.limit.rate,
        };
        let limits =
            crate::control::limits::in_force(self.session.connection(), names, name, declared)
                .await?;
        let live = self.shared.control.live_limit(name).unwrap_or_default();
        let prefetch = u16::try_from(self.shared.concurrency).unwrap_or(u16::MAX);
        let running = match limits.concurrency {
            Some(n) => {
                let q = names.limit_running(name);
                let owed = live.running_owed.clone();
                Some(Tokens::subscribe(&self.session, names, &q, n, prefetch, owed).await?)
            }
            None => None,
        };
        let starts = match limits.rate {
            Some(rate) => {
                let (k, hold) = rate.tokens();
                let q = names.limit_starts(name);
                let owed = live.starts_owed.clone();
                let tokens = Tokens::subscribe(&self.session, names, &q, k, prefetch, owed).await?;
                Some((tokens, hold))
            }
            None => None,
        };
        if limits != declared {
            tracing::info!(task = %name, in_force = %limits.text(), declared = %declared.text(),
                "the limits in force differ from the topology's (`warren limit`)");
        }
        Ok((running, starts))
    }

    /// Starts tasks, each under a permit and its tokens, until stopped, paused or a channel
    /// fails.
    async fn serve(&self, open: &mut Open, paused: &mut watch::Receiver<bool>) -> Served {
        let queue = self.shared.routes.names().work_queue(&self.task.name);
        loop {
            let Some(permit) = self.wait(paused, permit(&self.shared, &self.stop)).await else {
                return self.why_stopped(paused);
            };
            let Some(permit) = permit else {
                return Served::Stopped;
            };
            let run_token = match &mut open.running {
                Some(t) => match self.wait(paused, t.take()).await {
                    Some(Some(token)) => Some(token),
                    Some(None) => return Served::ChannelLost,
                    None => return self.why_stopped(paused),
                },
                None => None,
            };
            let start_token = match &mut open.starts {
                Some((t, hold)) => match self.wait(paused, t.take()).await {
                    Some(Some(token)) => Some((token, *hold)),
                    Some(None) => return Served::ChannelLost,
                    None => return self.why_stopped(paused),
                },
                None => None,
            };
            let delivery = match self.next_task(&open.get, &queue, paused).await {
                Fetched::Task(d) => d,
                // Idle for a while: give the tokens back (they are dropped here) and queue up
                // for them again.
                Fetched::Idle => continue,
                Fetched::Stopped => return self.why_stopped(paused),
                Fetched::ChannelLost => return Served::ChannelLost,
            };
            if let Some((token, hold)) = start_token {
                // A rate changed live holds its tokens for its own time.
                token.give_back_after(self.live_hold().unwrap_or(hold));
            }
            let (shared, task) = (self.shared.clone(), self.task.clone());
            let hold: (tokio::sync::OwnedSemaphorePermit, Option<Token>) = (permit, run_token);
            let run = delivery::process(shared, task, *delivery, hold, open.settler.clone());
            self.shared.tracker.spawn(run);
        }
    }

    /// The start tokens' hold under a rate changed live, if one was.
    fn live_hold(&self) -> Option<Duration> {
        self.shared
            .control
            .live_limit(&self.task.name)
            .and_then(|l| l.start_hold())
    }

    /// `what`, unless the session stops or the type is paused first (`None`).
    async fn wait<T>(
        &self,
        paused: &mut watch::Receiver<bool>,
        what: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        if *paused.borrow_and_update() {
            return None;
        }
        tokio::select! {
            biased;
            _ = self.stop.cancelled() => None,
            Ok(()) = paused.changed() => None,
            r = what => Some(r),
        }
    }

    fn why_stopped(&self, paused: &watch::Receiver<bool>) -> Served {
        match self.stop.is_cancelled() {
            true => Served::Stopped,
            false if *paused.borrow() => Served::Paused,
            // A spurious wake-up of the pause watch: serve again on a fresh session's terms.
            false => Served::Paused,
        }
    }

    /// One task from the work queue, waiting while it is empty.
    async fn next_task(
        &self,
        ch: &lapin::Channel,
        queue: &str,
        paused: &mut watch::Receiver<bool>,
    ) -> Fetched {
        let idle_since = tokio::time::Instant::now();
        let mut wait = Duration::from_millis(20);
        loop {
            match ch
                .basic_get(queue.into(), BasicGetOptions { no_ack: false })
                .await
            {
                Ok(Some(m)) => return Fetched::Task(Box::new(m.delivery)),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(queue, error = %e, "cannot get a task; rebuilding the channels");
                    close_channel(ch, "get failed").await;
                    return Fetched::ChannelLost;
                }
            }
            if idle_since.elapsed() > IDLE_RELEASE {
                return Fetched::Idle;
            }
            if self.wait(paused, tokio::time::sleep(wait)).await.is_none() {
                return Fetched::Stopped;
            }
            wait = (wait * 2).min(POLL_MAX);
        }
    }
}

/// What asking the work queue gave.
enum Fetched {
    Task(Box<lapin::message::Delivery>),
    Idle,
    Stopped,
    ChannelLost,
}
