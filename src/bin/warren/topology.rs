//! `warren topology apply | export`: declare the namespace, or print it as definitions JSON.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Subcommand;
use warren::broker::{Session, redact, url_parts};
use warren::ops::capacity::{self, Verdict};
use warren::ops::leftovers;
use warren::ops::management::Management;
use warren::ops::version::BrokerVersion;
use warren::topology::{RuntimeQueues, Teardown, teardown};
use warren::{Error, Result, Settings};

use crate::write_err;

/// `warren topology ...`
#[derive(Debug, Subcommand)]
pub enum TopologyCommand {
    /// Declare everything the topology file describes; safe to run again.
    ///
    /// First checks, through the management API, that the broker's file handle budget holds
    /// the quorum queues this adds (a RabbitMQ node past it stops accepting connections).
    Apply {
        /// Apply even when the namespace would not fit the broker's file handle budget.
        #[arg(long)]
        skip_capacity_check: bool,
    },
    /// Print RabbitMQ definitions JSON for the namespace (import it per vhost in the
    /// management UI, or `POST /api/definitions/{vhost}`).
    Export {
        /// Write to this file instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Delete the namespace's queues and exchanges (those the topology file plans). Refuses
    /// while a queue holds tasks or has consumers, unless told otherwise.
    Delete {
        /// Delete the queues with the tasks they hold.
        #[arg(long, conflicts_with = "if_empty")]
        yes: bool,
        /// Delete only the empty queues; keep the others and the exchanges.
        #[arg(long)]
        if_empty: bool,
    },
}

/// `warren topology ...`
pub(crate) async fn run(
    settings: &Settings,
    cmd: TopologyCommand,
    out: &mut dyn Write,
) -> Result<ExitCode> {
    match cmd {
        TopologyCommand::Apply {
            skip_capacity_check,
        } => {
            preflight(settings, !skip_capacity_check)?;
            apply(settings, out).await
        }
        TopologyCommand::Export { output } => export(settings, output, out),
        TopologyCommand::Delete { yes, if_empty } => {
            let mode = match (yes, if_empty) {
                (true, _) => Teardown::Everything,
                (false, true) => Teardown::OnlyEmpty,
                (false, false) => Teardown::RefuseUnlessEmpty,
            };
            delete(settings, mode, out).await
        }
    }
}

async fn delete(settings: &Settings, mode: Teardown, out: &mut dyn Write) -> Result<ExitCode> {
    // Workers' own queues and unique keys are not in the plan: the management API lists them.
    // Without it they are left, and the summary says so.
    let runtime = Management::from_settings(settings)
        .and_then(|mgmt| leftovers::runtime_queues(settings, &mgmt));
    let runtime = runtime.unwrap_or_else(|e| {
        tracing::warn!(
            "cannot list the namespace's queues through the management API ({e}): workers' \
             own queues of broadcast types and unique keys, if any, are left; delete them in \
             the management UI"
        );
        RuntimeQueues::default()
    });
    let session = Session::open(&settings.broker_url(), "cli", settings.connect_timeout).await?;
    let result = teardown(&settings.plan(), &runtime, session.connection(), mode).await;
    session.close("done").await;
    let report = result?;
    for q in &report.deleted_queues {
        writeln!(
            out,
            "deleted queue     {}  ({} messages)",
            q.name, q.messages
        )
        .map_err(write_err)?;
    }
    for e in &report.deleted_exchanges {
        writeln!(out, "deleted exchange  {e}").map_err(write_err)?;
    }
    for q in &report.kept_queues {
        writeln!(
            out,
            "kept queue        {}  ({} tasks, {} consumers)",
            q.name, q.messages, q.consumers
        )
        .map_err(write_err)?;
    }
    writeln!(
        out,
        "namespace `{}`: deleted {} queues and {} exchanges; kept {} queues{}",
        settings.namespace,
        report.deleted_queues.len(),
        report.deleted_exchanges.len(),
        report.kept_queues.len(),
        if report.missing.is_empty() {
            String::new()
        } else {
            format!("; {} were not there", report.missing.len())
        }
    )
    .map_err(write_err)?;
    Ok(if report.kept_queues.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Before declaring anything, through the management API: refuses a broker older than Warren
/// supports, and a plan that would not fit the broker's file handle budget (warns when it
/// nearly does). A management API that cannot be read skips both with a warning: it must not
/// stand between a user and a broker that takes AMQP.
fn preflight(settings: &Settings, capacity_check: bool) -> Result<()> {
    let mgmt = match Management::from_settings(settings) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!("cannot check the broker before applying, applying anyway: {e}");
            return Ok(());
        }
    };
    match BrokerVersion::read(&mgmt) {
        Ok(v) => {
            tracing::info!(broker = %v, "applying the topology");
            v.check_supported()?;
        }
        Err(e) => {
            tracing::warn!("cannot check the broker before applying, applying anyway: {e}");
            return Ok(());
        }
    }
    if !capacity_check {
        return Ok(());
    }
    let figures = url_parts(&settings.amqp_url)
        .and_then(|parts| capacity::check(&mgmt, &parts.vhost, &settings.plan()));
    let figures = match figures {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!("cannot check the broker's file handle budget, applying anyway: {e}");
            return Ok(());
        }
    };
    match figures.verdict() {
        Verdict::Fits => Ok(()),
        Verdict::Tight => {
            tracing::warn!("the broker is nearly full: {}", figures.describe());
            Ok(())
        }
        Verdict::WouldNotFit => Err(Error::WouldNotFit(figures.describe())),
    }
}

async fn apply(settings: &Settings, out: &mut dyn Write) -> Result<ExitCode> {
    let started = Instant::now();
    let session = Session::open(&settings.broker_url(), "cli", settings.connect_timeout).await?;
    let result = session.apply(&settings.plan()).await;
    let limits = match result {
        Ok(_) => {
            warn_of_old_work_queues(settings, &session).await;
            put_file_limits(settings, &session).await
        }
        Err(_) => Ok(Vec::new()),
    };
    session.close("done").await;
    let report = result?;
    let limits = limits?;
    let vhost = session.vhost();
    for e in &report.exchanges {
        writeln!(out, "exchange  {e}").map_err(write_err)?;
    }
    for (q, messages) in &report.queues {
        writeln!(out, "queue     {q}  ({messages} messages)").map_err(write_err)?;
    }
    for b in &report.bindings {
        writeln!(out, "binding   {b}").map_err(write_err)?;
    }
    writeln!(
        out,
        "applied namespace `{}` on {} (vhost `{vhost}`): {} exchanges, {} queues, {} bindings in {} ms",
        settings.namespace,
        redact(&settings.amqp_url),
        report.exchanges.len(),
        report.queues.len(),
        report.bindings.len(),
        started.elapsed().as_millis()
    )
    .map_err(write_err)?;
    for (task, change) in limits {
        writeln!(
            out,
            "limits    {task}: {} → {}, from the topology file; in force for running workers now",
            change.from.text(),
            change.to.text()
        )
        .map_err(write_err)?;
    }
    if settings.tasks.is_empty() {
        writeln!(
            out,
            "note: the topology declares no task types; add [tasks.NAME] tables to get work queues"
        )
        .map_err(write_err)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Puts each limited type's limits from the topology file in force for its running workers
/// (a `warren limit` since is undone); returns the types whose limits changed.
async fn put_file_limits(
    settings: &Settings,
    session: &Session,
) -> Result<Vec<(String, warren::control::limits::Change)>> {
    let names = warren::topology::Names::new(&settings.namespace);
    let mut changed = Vec::new();
    for (task, t) in &settings.tasks {
        let declared = warren::control::limits::Limits {
            concurrency: t.concurrency_limit,
            rate: t.rate_limit,
        };
        if declared == warren::control::limits::Limits::default() {
            continue;
        }
        let change =
            warren::control::limits::set(session.connection(), &names, task, declared, declared)
                .await?;
        if change.from != change.to {
            changed.push((task.clone(), change));
        }
    }
    Ok(changed)
}

/// A type that became a broadcast type keeps its old work queue, still bound under the task
/// name: it would collect a copy of every broadcast with nobody consuming it. Say so.
async fn warn_of_old_work_queues(settings: &Settings, session: &Session) {
    let names = warren::topology::Names::new(&settings.namespace);
    for (task, _) in settings.tasks.iter().filter(|(_, t)| t.broadcast) {
        let queue = names.work_queue(task);
        let Ok(ch) = session.channel().await else {
            return;
        };
        // A missing queue closes the channel (404): the usual case, nothing to say.
        if let Ok(q) = warren::broker::inspect(&ch, &queue).await {
            tracing::warn!(
                "`{task}` is a broadcast type, but its old work queue `{queue}` ({} messages) \
                 is still bound and collects a copy of every broadcast; once it is drained, \
                 delete it (management UI, or `rabbitmqctl delete_queue {queue}`)",
                q.message_count()
            );
            warren::broker::close_channel(&ch, "inspected").await;
        }
    }
}

fn export(settings: &Settings, output: Option<PathBuf>, out: &mut dyn Write) -> Result<ExitCode> {
    let defs = settings.plan().to_definitions();
    let text = serde_json::to_string_pretty(&defs).unwrap_or_default();
    match output {
        Some(path) => std::fs::write(&path, text + "\n").map_err(|source| Error::Io {
            context: format!("writing {}", path.display()),
            source,
        })?,
        None => writeln!(out, "{text}").map_err(write_err)?,
    }
    Ok(ExitCode::SUCCESS)
}
