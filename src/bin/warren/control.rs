//! `warren cancel`, `warren pause`, `warren resume`: control events, confirmed by the broker.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use clap::Args;
use warren::{Error, Producer, Result, Settings};

use crate::write_err;

/// `warren cancel TASK ID...`
#[derive(Debug, Args)]
pub struct CancelArgs {
    /// Task type of the tasks.
    pub task: String,
    /// Task ids to cancel (as `warren enqueue` printed them).
    #[arg(required = true)]
    pub ids: Vec<String>,
}

/// `warren pause TASK` / `warren resume TASK`
#[derive(Debug, Args)]
pub struct TypeArgs {
    /// Task type.
    pub task: String,
}

/// `warren cancel ...`
pub(crate) async fn cancel(
    settings: &Settings,
    args: CancelArgs,
    topology: Option<&Path>,
    out: &mut dyn Write,
) -> Result<ExitCode> {
    crate::enqueue::check_declared(settings, &args.task, topology)?;
    let producer = Producer::with_role(settings, "cli")?;
    let sent = producer.cancel(&args.task, &args.ids).await;
    producer.close().await;
    sent?;
    writeln!(
        out,
        "cancelled {} `{}` task(s): not started ones will not start, running ones are stopped \
         (dead, reason `cancelled`)",
        args.ids.len(),
        args.task
    )
    .map_err(write_err)?;
    Ok(ExitCode::SUCCESS)
}

/// `warren pause ...` (`pause` true) or `warren resume ...`.
pub(crate) async fn pause(
    settings: &Settings,
    args: TypeArgs,
    pause: bool,
    topology: Option<&Path>,
    out: &mut dyn Write,
) -> Result<ExitCode> {
    if settings.tasks.is_empty() {
        return Err(Error::InvalidInput(format!(
            "no task `{}`: the topology declares no task types (pass --topology)",
            args.task
        )));
    }
    crate::enqueue::check_declared(settings, &args.task, topology)?;
    let producer = Producer::with_role(settings, "cli")?;
    let sent = match pause {
        true => producer.pause(&args.task).await,
        false => producer.resume(&args.task).await,
    };
    producer.close().await;
    sent?;
    let what = match pause {
        true => "paused: no worker starts it until `warren resume`",
        false => "resumed",
    };
    writeln!(out, "`{}` {what}", args.task).map_err(write_err)?;
    Ok(ExitCode::SUCCESS)
}
