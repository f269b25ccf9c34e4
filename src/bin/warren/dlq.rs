//! `warren dlq list | replay | purge`: what operators read and repair in a dead queue.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use clap::Subcommand;
use warren::broker::Session;
use warren::ops::dlq::{self, DeadTask, Selection};
use warren::topology::{Names, validate_task_name};
use warren::{Error, Producer, Result, Settings};

use crate::write_err;

/// `warren dlq ...`
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Show dead tasks (id, reason, error, attempts, dead-at, payload) without removing any.
    List {
        /// Task name.
        task: String,
        /// Show at most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print JSON lines, one dead task per line.
        #[arg(long)]
        json: bool,
    },
    /// Send dead tasks back to their work queue (attempts reset), confirmed before removal.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["ids", "all"])))]
    Replay {
        /// Task name.
        task: String,
        /// Replay the task with this id (repeatable).
        #[arg(long = "id", conflicts_with = "all")]
        ids: Vec<String>,
        /// Replay every dead task of this type.
        #[arg(long)]
        all: bool,
        /// Show what would be replayed; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete every dead task of this type.
    Purge {
        /// Task name.
        task: String,
        /// Confirm: purging cannot be undone.
        #[arg(long)]
        yes: bool,
    },
}

/// `warren dlq ...`
pub(crate) async fn run(
    settings: &Settings,
    cmd: DlqCommand,
    out: &mut dyn Write,
) -> Result<ExitCode> {
    let task = match &cmd {
        DlqCommand::List { task, .. }
        | DlqCommand::Replay { task, .. }
        | DlqCommand::Purge { task, .. } => task.clone(),
    };
    validate_task_name(&task).map_err(Error::InvalidInput)?;
    let names = Names::new(&settings.namespace);
    if let DlqCommand::Purge { yes: false, .. } = cmd {
        return Err(Error::InvalidInput(format!(
            "purging `{}` deletes every dead `{task}` task for good; add --yes to confirm",
            names.dead_queue(&task)
        )));
    }
    let session = Session::open(&settings.broker_url(), "cli", settings.connect_timeout).await?;
    let here = Dlq {
        session: &session,
        names: &names,
        task: &task,
    };
    let result = match cmd {
        DlqCommand::List { limit, json, .. } => here.list(limit, json, out).await,
        DlqCommand::Replay {
            ids, all, dry_run, ..
        } => {
            let selection = if all {
                Selection::All
            } else {
                Selection::Ids(ids.into_iter().collect())
            };
            here.replay(settings, &selection, dry_run, out).await
        }
        DlqCommand::Purge { .. } => here.purge(out).await,
    };
    session.close("done").await;
    result
}

/// One task type's dead queue, over one session.
struct Dlq<'a> {
    session: &'a Session,
    names: &'a Names,
    task: &'a str,
}

impl Dlq<'_> {
    async fn list(&self, limit: usize, json: bool, out: &mut dyn Write) -> Result<ExitCode> {
        let (shown, total) = dlq::list(self.session, self.names, self.task, limit).await?;
        for d in &shown {
            let line = if json {
                serde_json::to_string(d).unwrap_or_default()
            } else {
                describe(d)
            };
            writeln!(out, "{line}").map_err(write_err)?;
        }
        if !json {
            writeln!(
                out,
                "{} of {total} dead `{}` tasks shown; none removed",
                shown.len(),
                self.task
            )
            .map_err(write_err)?;
        }
        Ok(ExitCode::SUCCESS)
    }

    async fn replay(
        &self,
        settings: &Settings,
        selection: &Selection,
        dry_run: bool,
        out: &mut dyn Write,
    ) -> Result<ExitCode> {
        let producer = Producer::with_role(settings, "cli")?;
        let report = dlq::replay(self.session, &producer, self.task, selection, dry_run).await;
        producer.close().await;
        let report = report?;
        let verb = if dry_run { "would replay" } else { "replayed" };
        for id in &report.replayed {
            writeln!(out, "{verb} {id}").map_err(write_err)?;
        }
        for id in &report.not_found {
            writeln!(out, "not found {id}").map_err(write_err)?;
        }
        for id in &report.failed {
            writeln!(out, "FAILED {id} (still dead)").map_err(write_err)?;
        }
        if report.merged > 0 {
            writeln!(
                out,
                "{} more dead copies of those broadcast tasks (one per worker) {}: one replay \
                 reaches every worker",
                report.merged,
                if dry_run {
                    "would be removed"
                } else {
                    "removed"
                }
            )
            .map_err(write_err)?;
        }
        // A replayed broadcast is broadcast again, to the workers running now.
        let to = if settings.is_broadcast(self.task) {
            format!("every worker receiving `{}` now", self.task)
        } else {
            format!("`{}`", self.names.work_queue(self.task))
        };
        writeln!(
            out,
            "{verb} {} dead `{}` task(s) to {to}",
            report.replayed.len(),
            self.task,
        )
        .map_err(write_err)?;
        Ok(if report.not_found.is_empty() && report.failed.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    }

    async fn purge(&self, out: &mut dyn Write) -> Result<ExitCode> {
        let n = dlq::purge(self.session, self.names, self.task).await?;
        writeln!(
            out,
            "purged {n} dead `{}` task(s) from `{}`",
            self.task,
            self.names.dead_queue(self.task)
        )
        .map_err(write_err)?;
        Ok(ExitCode::SUCCESS)
    }
}

/// One dead task in three lines: id and reason, error, the start of the payload.
fn describe(d: &DeadTask) -> String {
    let dead_at = d
        .dead_at_ms
        .map(|ms| {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
                .to_string()
        })
        .unwrap_or_else(|| "?".into());
    let payload: String = d.payload.chars().take(120).collect();
    let by = d
        .worker
        .as_deref()
        .map(|w| format!("  by={w}"))
        .unwrap_or_default();
    format!(
        "{}  reason={}  attempts={}  dead_at={dead_at}{by}\n    error: {}\n    payload: {payload}{}",
        d.id.as_deref().unwrap_or("(no id)"),
        d.reason.as_deref().unwrap_or("?"),
        d.attempts.map_or_else(|| "?".into(), |a| a.to_string()),
        d.error.as_deref().unwrap_or("-"),
        if d.payload.chars().count() > 120 {
            "…"
        } else {
            ""
        }
    )
}
