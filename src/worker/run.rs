//! The worker's life: sessions (connect, declare, consume) until shutdown, reconnecting after
//! any broker failure, then the graceful drain.
//!
//! Shutdown order (dramatiq's `worker.stop`, River's soft and hard stop): consumers are
//! cancelled, running handlers get the grace period to finish and ack, then they are told to
//! stop at once; the connections close last, so heartbeats continue while handlers finish,
//! and whatever is still unacked returns to its queue.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Shared;
use super::consume::QueueConsumer;
use super::handler::Registered;
use crate::broker::Session;
use crate::error::{Error, Result};
use crate::topology::Plan;

/// What one worker process runs: its handlers, the topology they need, what they share.
pub(super) struct Running {
    pub(super) tasks: Vec<Arc<Registered>>,
    pub(super) plan: Plan,
    pub(super) shared: Arc<Shared>,
    pub(super) amqp_url: String,
    pub(super) grace: Duration,
    pub(super) cancel_retention: Duration,
    /// Sessions in a row that failed to read the control stream (their backoff).
    pub(super) give_up_wait: std::sync::atomic::AtomicU32,
}

/// Longest a session waits to have read the control stream up to its own marker before it
/// gives up and reconnects.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);

impl Running {
    /// Serves sessions until `shutdown`, then drains.
    ///
    /// # Errors
    /// [`crate::error::Error::TopologyConflict`] and other errors a reconnect cannot cure.
    pub(super) async fn run(self, shutdown: CancellationToken) -> Result<()> {
        // Sessions stay referenced until the drain is over: in-flight deliveries ack on them.
        let mut sessions: Vec<Arc<Session>> = Vec::new();
        let mut backoff = Backoff::new();
        let mut opened = false;
        while !shutdown.is_cancelled() {
            let Some(session) = self.open(&shutdown, &mut backoff, !opened).await? else {
                continue;
            };
            opened = true;
            self.consume(&session, &shutdown).await;
            sessions.push(session);
            sessions.retain(|s| shutdown.is_cancelled() || s.is_connected());
        }
        self.drain(sessions).await;
        Ok(())
    }

    /// A connected session with the topology declared; `None` when shutdown came first or
    /// the broker failed in a way a retry can cure (after waiting out the backoff).
    async fn open(
        &self,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
        first: bool,
    ) -> Result<Option<Arc<Session>>> {
        let name = &self.shared.worker_name;
        if !first {
            // Every worker of a fleet loses its connection at the same instant when a node
            // dies: a random pause first spreads their reconnects (and their consumers'
            // redeclares) instead of landing them on the surviving nodes in one burst.
            let spread =
                Duration::from_millis(rand::Rng::gen_range(&mut rand::thread_rng(), 0..1000));
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(None),
                _ = tokio::time::sleep(spread) => {}
            }
        }
        let connected = tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            s = Session::connect(&self.amqp_url, name, None) => s,
        };
        let session = match connected {
            Ok(s) => s,
            Err(e) if e.is_transient() => return Ok(None),
            Err(e) => return Err(e),
        };
        match self.declare(&session, first).await {
            Ok(()) => {
                backoff.reset();
                Ok(Some(Arc::new(session)))
            }
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, "declaring the topology failed; reconnecting");
                session.close("declaring failed").await;
                backoff.wait().await;
                Ok(None)
            }
            Err(e) => {
                session.close("topology conflict").await;
                Err(e)
            }
        }
    }

    /// The topology of this worker's task types, then its own queue of each broadcast type:
    /// a broadcast queue that cannot be declared stops the worker here, at start, rather than
    /// leave it running as a silent non-subscriber.
    ///
    /// `RESOURCE_LOCKED` (another connection holds the exclusive queue) means two things. At
    /// the first start, another process has this worker's id (same host name and pid, e.g.
    /// containers sharing the host's network and name, each as pid 1): an error that says so.
    /// After a reconnect, it is this worker's previous connection, which the broker has not
    /// noticed gone yet: that type's consumer retries alone, and the other types go on.
    async fn declare(&self, session: &Session, first: bool) -> Result<()> {
        session.apply(&self.plan).await?;
        let owns: Vec<_> = self.tasks.iter().filter_map(|t| t.own.as_ref()).collect();
        if owns.is_empty() {
            return Ok(());
        }
        let mut ch = session.channel().await?;
        for own in owns {
            match crate::topology::declare::declare_own(&ch, own).await {
                Ok(()) => {}
                Err(e) if is_locked(&e) && !first => {
                    tracing::warn!(queue = %own.queue.name, "own queue still held by this worker's previous connection; its consumer retries");
                    ch = session.channel().await?;
                }
                Err(e) if is_locked(&e) => {
                    return Err(Error::Config(format!(
                        "another worker holds `{}`, the queue this worker's id names: two \
                         workers with one host name and pid (e.g. containers sharing the host's \
                         network and name, each as pid 1); give each a host name of its own",
                        own.queue.name
                    )));
                }
                Err(e) => return Err(e),
            }
        }
        crate::broker::close_channel(&ch, "own queues declared").await;
        Ok(())
    }

    /// Consumes every task type on `session` until shutdown or until one consumer ends,
    /// which only happens when the connection is gone; then stops the others.
    async fn consume(&self, session: &Arc<Session>, shutdown: &CancellationToken) {
        let stop = shutdown.child_token();
        let mut consumers = tokio::task::JoinSet::new();
        // Cancels and pauses first: no task starts before this session has read them all.
        if !self.follow_control(session, &stop, &mut consumers).await {
            stop.cancel();
            while consumers.join_next().await.is_some() {}
            return;
        }
        for task in &self.tasks {
            if task.limit.any() {
                let consumer = super::limited::LimitedConsumer {
                    session: session.clone(),
                    task: task.clone(),
                    shared: self.shared.clone(),
                    stop: stop.clone(),
                };
                consumers.spawn(consumer.run());
                continue;
            }
            let consumer = QueueConsumer {
                session: session.clone(),
                task: task.clone(),
                shared: self.shared.clone(),
                stop: stop.clone(),
            };
            consumers.spawn(consumer.run());
        }
        tracing::info!("consuming");
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = consumers.join_next() => {
                metrics::counter!("warren_reconnects_total").increment(1);
                tracing::warn!("connection to the broker lost; reconnecting");
            }
        }
        stop.cancel();
        while consumers.join_next().await.is_some() {}
    }

    /// Reads the pause records, starts following the control stream (into `consumers`, so
    /// that its end ends the session like a consumer's) and waits until it has caught up.
    /// False when the session failed or shutdown came first.
    async fn follow_control(
        &self,
        session: &Arc<Session>,
        stop: &CancellationToken,
        consumers: &mut tokio::task::JoinSet<()>,
    ) -> bool {
        let names = self.shared.routes.names().clone();
        let tasks: Vec<&str> = self.tasks.iter().map(|t| t.name.as_str()).collect();
        let control = &self.shared.control;
        if let Err(e) = crate::control::follow::read_pauses(session, &names, &tasks, control).await
        {
            tracing::warn!(error = %e, "cannot read the pause records; reconnecting");
            return self.give_up(session, stop).await;
        }
        let (loaded, caught_up) = tokio::sync::oneshot::channel();
        let (session_, stop_, control_) = (session.clone(), stop.clone(), control.clone());
        let retention = self.cancel_retention;
        // Followed until the session ends. A follow that fails while the connection stands
        // (the broker cancelled the stream's consumer, e.g. as its leader moved) follows
        // again: ending here would end the session with a live connection.
        consumers.spawn(async move {
            let mut loaded = Some(loaded);
            let mut wait = Duration::from_millis(500);
            loop {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let follow = crate::control::follow::follow(
                    session_.clone(),
                    names.clone(),
                    retention,
                    control_.clone(),
                    tx,
                    stop_.clone(),
                );
                let first = loaded.take();
                let relay = async move {
                    if rx.await.is_ok()
                        && let Some(first) = first
                    {
                        let _ = first.send(());
                    }
                };
                let (followed, ()) = tokio::join!(follow, relay);
                match followed {
                    Ok(()) => return,
                    Err(_) if !session_.is_connected() || stop_.is_cancelled() => return,
                    Err(e) => tracing::warn!(error = %e, "control stream lost; following it again"),
                }
                tokio::select! {
                    _ = stop_.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        });
        let ready = tokio::select! {
            ready = tokio::time::timeout(CATCH_UP_TIMEOUT, caught_up) => matches!(ready, Ok(Ok(()))),
            _ = stop.cancelled() => return false,
        };
        if !ready {
            tracing::warn!(timeout = ?CATCH_UP_TIMEOUT, "could not read the control stream; reconnecting");
            return self.give_up(session, stop).await;
        }
        self.give_up_wait
            .store(0, std::sync::atomic::Ordering::Relaxed);
        true
    }

    /// Ends a session that failed before consuming (its connection may still stand): closes
    /// it and waits, 1 s doubling to 60 s across failures in a row, so a broker that keeps
    /// refusing is not asked again at once.
    async fn give_up(&self, session: &Session, stop: &CancellationToken) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        session.close("control stream unavailable").await;
        let failures = self.give_up_wait.fetch_add(1, Relaxed).min(6);
        let wait = Duration::from_secs(1 << failures);
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(wait) => {}
        }
        false
    }

    /// Lets running handlers finish within the grace period, then stops them; closes.
    async fn drain(&self, sessions: Vec<Arc<Session>>) {
        let tracker = &self.shared.tracker;
        tracker.close();
        tracing::info!(running = self.running_handlers(), grace = %crate::duration::duration_text(self.grace), "shutting down: waiting for running tasks");
        if tokio::time::timeout(self.grace, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                still_running = self.running_handlers(),
                "grace period over; stopping running tasks (each goes back to its queue with \
                 the same attempt)"
            );
            self.shared.hard_stop.cancel();
            self.shared.control.stop_all();
            // Each handler gets a second to return, then its copy is published (confirmed).
            let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
        }
        for session in sessions {
            session.close("worker shutdown").await;
        }
        self.shared.producer.close().await;
        tracing::info!("worker stopped");
    }
}

impl Running {
    /// Handlers running now (the tracker also holds each channel's acking task).
    fn running_handlers(&self) -> usize {
        let s = &self.shared;
        s.concurrency
            .saturating_sub(s.semaphore.available_permits())
    }
}

/// The wait between failed declarations: 0.5 s doubling to 10 s, reset by a success.
struct Backoff(Duration);

impl Backoff {
    const FIRST: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(10);

    fn new() -> Backoff {
        Backoff(Backoff::FIRST)
    }

    fn reset(&mut self) {
        self.0 = Backoff::FIRST;
    }

    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Backoff::MAX);
    }
}

/// True for a refusal because another connection holds an exclusive queue.
fn is_locked(err: &Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    matches!(err, Error::Declare { source, .. }
        if matches!(source.kind(), lapin::ErrorKind::ProtocolError(e)
            if matches!(e.kind(), AMQPErrorKind::Soft(AMQPSoftError::RESOURCELOCKED))))
}
