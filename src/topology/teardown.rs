//! Deleting a namespace: the inverse of [`super::declare::apply`], refusing to lose tasks.
//!
//! Only the objects the plan names are deleted, never everything that shares the prefix:
//! namespace `shop` must not take `shop.test`'s queues with it. Queues that still hold tasks
//! or have consumers are kept unless the caller says otherwise. A classic queue found empty is
//! deleted with `if-empty`, so a task that arrives after the check is not lost; quorum queues
//! refuse that flag (RabbitMQ 3.10 answers `NOT_IMPLEMENTED` and closes the connection), so
//! for them a task enqueued between the check and the delete is lost: stop the producers
//! first.
//!
//! Queues made at run time are not in the plan: workers' own queues of broadcast types and
//! unique keys. AMQP cannot list queues, so the caller finds them (`ops::leftovers`, through
//! the management API) and passes them in [`RuntimeQueues`]: an own queue is a running
//! worker, which keeps the namespace like a busy work queue does, in every mode (no other
//! connection can delete it); unique keys go with the namespace, unless some of its queues
//! are kept (their tasks still hold them).

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::protocol::AMQPSoftError;
use lapin::{Channel, Connection};

use super::decl::QueueType;
use super::declare::open;
use super::plan::Plan;
use crate::broker::close_channel;
use crate::broker::inspect;
use crate::error::{Error, Result};

/// What to do with queues that are not empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Teardown {
    /// Delete nothing if any queue holds tasks or has consumers ([`Error::NotEmpty`]).
    RefuseUnlessEmpty,
    /// Delete the empty queues, keep the others (and the exchanges, which they need).
    OnlyEmpty,
    /// Delete everything, with whatever the queues hold.
    Everything,
}

/// One queue as the teardown found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueState {
    /// Queue name.
    pub name: String,
    /// Ready messages.
    pub messages: u32,
    /// Consumers attached.
    pub consumers: u32,
}

/// What [`teardown`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TeardownReport {
    /// Queues deleted, with the messages they held.
    pub deleted_queues: Vec<QueueState>,
    /// Queues kept because they were not empty.
    pub kept_queues: Vec<QueueState>,
    /// Exchanges deleted.
    pub deleted_exchanges: Vec<String>,
    /// Planned queues that did not exist.
    pub missing: Vec<String>,
}

/// A namespace's queues that its plan does not name, found on the broker by listing them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeQueues {
    /// Workers' own queues of broadcast types (`{ns}.{task}@{worker}`), with the counts the
    /// listing showed: another connection's exclusive queue cannot be read over AMQP.
    pub own: Vec<QueueState>,
    /// Unique keys' locks and windows (`{ns}.{task}.unique.{key}`, `….unique-for.{key}`).
    pub keys: Vec<String>,
}

/// Deletes `plan`'s queues and exchanges on `conn` as `mode` allows, and the queues of
/// `runtime` (see the module's doc).
///
/// # Errors
/// [`Error::NotEmpty`] (nothing deleted) when `mode` is [`Teardown::RefuseUnlessEmpty`] and a
/// queue holds tasks or has consumers; [`Error::Amqp`] when the broker fails.
pub async fn teardown(
    plan: &Plan,
    runtime: &RuntimeQueues,
    conn: &Connection,
    mode: Teardown,
) -> Result<TeardownReport> {
    let mut run = Tearing {
        conn,
        channel: open(conn).await?,
        report: TeardownReport::default(),
    };
    let mut found = Vec::new();
    for q in plan.queues.iter().chain(&plan.lazy) {
        if let Some(state) = run.state(&q.name).await? {
            found.push((q, state));
        }
    }
    // An own queue lives as long as its worker's connection: one still there is a worker
    // running (its consumer counted once, whatever the listing's stats say). One gone since
    // the listing is its worker gone: nothing to do.
    let mut own = Vec::new();
    for q in &runtime.own {
        if run.exists(&q.name).await? {
            own.push(QueueState {
                consumers: q.consumers.max(1),
                ..q.clone()
            });
        }
    }
    // Warren's own state (control events, schedule records) is not work to lose.
    let holds_tasks = |q: &QueueState| q.messages > 0 && !plan.state.contains(&q.name);
    let busy: Vec<QueueState> = found
        .iter()
        .map(|(_, state)| state)
        .chain(&own)
        .filter(|q| holds_tasks(q) || q.consumers > 0)
        .cloned()
        .collect();
    // A running broadcast worker's queue cannot be deleted from here (it is exclusive to the
    // worker's connection): even `Everything` refuses up front rather than delete the rest
    // and leave the exchanges it needs half gone.
    let refused = match mode {
        Teardown::RefuseUnlessEmpty => busy,
        Teardown::Everything => own.clone(),
        Teardown::OnlyEmpty => Vec::new(),
    };
    if !refused.is_empty() {
        close_channel(&run.channel, "nothing deleted").await;
        return Err(Error::NotEmpty {
            queues: refused
                .into_iter()
                .map(|q| (q.name, q.messages, q.consumers))
                .collect(),
        });
    }
    for (decl, state) in found {
        let mode = match plan.state.contains(&state.name) {
            true if mode != Teardown::Everything && state.consumers == 0 => Teardown::Everything,
            _ => mode,
        };
        run.delete_queue(decl.queue_type(), state, mode).await?;
    }
    for state in own {
        // Exclusive, so classic; another connection's: the broker refuses while it lives.
        run.delete_queue(QueueType::Classic, state, mode).await?;
    }
    if run.report.kept_queues.is_empty() {
        for name in &runtime.keys {
            // One marker and no consumer: the key of a task that is no longer anywhere.
            if let Some(state) = run.state(name).await? {
                run.delete_queue(QueueType::Classic, state, Teardown::Everything)
                    .await?;
            }
        }
        run.report
            .missing
            .retain(|name| !runtime.keys.contains(name));
        for e in &plan.exchanges {
            run.delete_exchange(&e.name).await?;
        }
    }
    close_channel(&run.channel, "namespace deleted").await;
    Ok(run.report)
}

/// One teardown in progress: the channel (reopened after the broker closes it) and the report.
struct Tearing<'a> {
    conn: &'a Connection,
    channel: Channel,
    report: TeardownReport,
}

impl Tearing<'_> {
    /// The queue's counts; `None` (recorded as missing) when it does not exist.
    async fn state(&mut self, name: &str) -> Result<Option<QueueState>> {
        match inspect(&self.channel, name).await {
            Ok(q) => Ok(Some(QueueState {
                name: name.to_string(),
                messages: q.message_count(),
                consumers: q.consumer_count(),
            })),
            Err(e) if soft(&e, AMQPSoftError::NOTFOUND) => {
                self.report.missing.push(name.to_string());
                self.channel = open(self.conn).await?;
                Ok(None)
            }
            Err(source) => Err(Error::Amqp {
                operation: format!("reading queue `{name}`"),
                source,
            }),
        }
    }

    /// True when queue `name` exists, also when another connection holds it exclusively.
    async fn exists(&mut self, name: &str) -> Result<bool> {
        match inspect(&self.channel, name).await {
            Ok(_) => Ok(true),
            Err(e)
                if soft(&e, AMQPSoftError::NOTFOUND) || soft(&e, AMQPSoftError::RESOURCELOCKED) =>
            {
                self.channel = open(self.conn).await?;
                Ok(soft(&e, AMQPSoftError::RESOURCELOCKED))
            }
            Err(source) => Err(Error::Amqp {
                operation: format!("reading queue `{name}`"),
                source,
            }),
        }
    }

    async fn delete_queue(
        &mut self,
        queue_type: QueueType,
        q: QueueState,
        mode: Teardown,
    ) -> Result<()> {
        let busy = q.messages > 0 || q.consumers > 0;
        if busy && mode == Teardown::OnlyEmpty {
            self.report.kept_queues.push(q);
            return Ok(());
        }
        // `if_empty` unless everything goes: a task that arrived after the check stays.
        // Classic queues only: quorum queues refuse the flag.
        let classic = queue_type == QueueType::Classic;
        let opts = QueueDeleteOptions {
            if_empty: classic && mode != Teardown::Everything,
            ..Default::default()
        };
        match self
            .channel
            .queue_delete(q.name.as_str().into(), opts)
            .await
        {
            Ok(messages) => {
                self.report
                    .deleted_queues
                    .push(QueueState { messages, ..q });
                Ok(())
            }
            // Not empty any more, or (RESOURCE_LOCKED) another connection's exclusive queue.
            Err(e)
                if soft(&e, AMQPSoftError::PRECONDITIONFAILED)
                    || soft(&e, AMQPSoftError::RESOURCELOCKED) =>
            {
                self.report.kept_queues.push(q);
                self.channel = open(self.conn).await?;
                Ok(())
            }
            Err(source) => Err(Error::Amqp {
                operation: format!("deleting queue `{}`", q.name),
                source,
            }),
        }
    }

    async fn delete_exchange(&mut self, name: &str) -> Result<()> {
        let opts = ExchangeDeleteOptions::default();
        self.channel
            .exchange_delete(name.into(), opts)
            .await
            .map_err(|source| Error::Amqp {
                operation: format!("deleting exchange `{name}`"),
                source,
            })?;
        self.report.deleted_exchanges.push(name.to_string());
        Ok(())
    }
}

fn soft(err: &lapin::Error, kind: AMQPSoftError) -> bool {
    crate::broker::is_soft(err, kind)
}
