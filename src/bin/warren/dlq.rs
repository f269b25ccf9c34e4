//! `warren dlq list | replay | purge`: what operators read and repair in a dead queue.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use warren::broker::{self, connection_name};
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
    Replay {
        /// Task name.
        task: String,
        /// Replay the task with this id (repeatable).
        #[arg(long = "id", required_unless_present = "all", conflicts_with = "all")]
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
    use warren::ops::dlq::{Selection, list, purge, replay};
    let task = match &cmd {
        DlqCommand::List { task, .. }
        | DlqCommand::Replay { task, .. }
        | DlqCommand::Purge { task, .. } => task.clone(),
    };
    warren::topology::names::validate_task_name(&task).map_err(Error::InvalidInput)?;
    if let DlqCommand::Purge { yes: false, .. } = cmd {
        return Err(Error::InvalidInput(format!(
            "purging `{}` deletes every dead `{task}` task for good; add --yes to confirm",
            warren::topology::names::Names::new(&settings.namespace).dead_queue(&task)
        )));
    }
    let conn = broker::connect(
        &settings.amqp_url,
        &connection_name("cli"),
        Some(settings.connect_timeout),
    )
    .await?;
    let names = warren::topology::names::Names::new(&settings.namespace);
    let result = match cmd {
        DlqCommand::List { limit, json, .. } => {
            let (shown, total) = list(&conn, &names, &task, limit).await?;
            for d in &shown {
                if json {
                    writeln!(out, "{}", serde_json::to_string(d).unwrap_or_default())
                        .map_err(write_err)?;
                } else {
                    let dead_at = d
                        .dead_at_ms
                        .map(|ms| {
                            humantime::format_rfc3339_seconds(
                                std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64),
                            )
                            .to_string()
                        })
                        .unwrap_or_else(|| "?".into());
                    let payload: String = d.payload.chars().take(120).collect();
                    writeln!(
                        out,
                        "{}  reason={}  attempts={}  dead_at={dead_at}\n    error: {}\n    payload: {payload}{}",
                        d.id.as_deref().unwrap_or("(no id)"),
                        d.reason.as_deref().unwrap_or("?"),
                        d.attempts.map_or_else(|| "?".into(), |a| a.to_string()),
                        d.error.as_deref().unwrap_or("-"),
                        if d.payload.chars().count() > 120 { "…" } else { "" }
                    )
                    .map_err(write_err)?;
                }
            }
            if !json {
                writeln!(
                    out,
                    "{} of {total} dead `{task}` tasks shown; none removed",
                    shown.len()
                )
                .map_err(write_err)?;
            }
            ExitCode::SUCCESS
        }
        DlqCommand::Replay {
            ids, all, dry_run, ..
        } => {
            let selection = if all {
                Selection::All
            } else {
                Selection::Ids(ids.into_iter().collect())
            };
            let producer = Producer::with_role(settings, "cli")?;
            let report = replay(&conn, &producer, &task, &selection, dry_run).await;
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
            writeln!(
                out,
                "{verb} {} dead `{task}` task(s) to `{}`",
                report.replayed.len(),
                names.work_queue(&task)
            )
            .map_err(write_err)?;
            if report.not_found.is_empty() && report.failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        DlqCommand::Purge { .. } => {
            let n = purge(&conn, &names, &task).await?;
            writeln!(
                out,
                "purged {n} dead `{task}` task(s) from `{}`",
                names.dead_queue(&task)
            )
            .map_err(write_err)?;
            ExitCode::SUCCESS
        }
    };
    let _ = conn.close(200, "done".into()).await;
    Ok(result)
}
