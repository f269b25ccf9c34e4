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

/// `warren limit TASK [--concurrency N] [--rate R]`
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Task type.
    pub task: String,
    /// Runs at once across every worker (the type must declare `concurrency_limit`).
    #[arg(long)]
    pub concurrency: Option<u32>,
    /// Starts per second, minute or hour across every worker, e.g. `10/s` (the type must
    /// declare `rate_limit`).
    #[arg(long)]
    pub rate: Option<String>,
}

/// `warren limit ...`: changes the limits in force for running workers, or shows them.
pub(crate) async fn limit(
    settings: &Settings,
    args: LimitArgs,
    topology: Option<&Path>,
    out: &mut dyn Write,
) -> Result<ExitCode> {
    crate::enqueue::check_declared(settings, &args.task, topology)?;
    if args.concurrency == Some(0) {
        return Err(Error::InvalidInput(
            "--concurrency must be at least 1 (to stop the type, `warren pause` it)".into(),
        ));
    }
    let rate = args
        .rate
        .as_deref()
        .map(warren::limits::RateLimit::parse)
        .transpose()
        .map_err(Error::InvalidInput)?;
    let producer = Producer::with_role(settings, "cli")?;
    let result: Result<String> = async {
        let declared = producer.declared_limits(&args.task)?;
        if args.concurrency.is_none() && rate.is_none() {
            let in_force = producer.limits(&args.task).await?;
            return Ok(format!(
                "limits of `{}`: {} (the topology declares {})",
                args.task,
                in_force.text(),
                declared.text()
            ));
        }
        let current = producer.limits(&args.task).await?;
        let to = warren::control::limits::Limits {
            concurrency: args.concurrency.or(current.concurrency),
            rate: rate.or(current.rate),
        };
        let change = producer.set_limits(&args.task, to).await?;
        Ok(match change.from == change.to {
            true => format!("limits of `{}`: {} already", args.task, change.to.text()),
            false => format!(
                "limits of `{}`: {} → {}; in force for running workers now (runs in progress \
                 finish; `warren topology apply` puts the file's back)",
                args.task,
                change.from.text(),
                change.to.text()
            ),
        })
    }
    .await;
    producer.close().await;
    writeln!(out, "{}", result?).map_err(write_err)?;
    Ok(ExitCode::SUCCESS)
}
