//! `warren worker`: runs the `exec` handlers of the topology file until SIGTERM/SIGINT.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use tokio_util::sync::CancellationToken;
use warren::duration::parse_duration;
use warren::{Error, Result, Settings};

use crate::exec::ExecHandler;

/// `warren worker ...`
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Task types to run, comma-separated [default: every task type with `exec`].
    #[arg(long, value_delimiter = ',')]
    pub tasks: Vec<String>,
    /// Handlers running at once in this process [default: `[worker] concurrency`].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: Option<u32>,
    /// Unacked deliveries per consumer [default: `[worker] prefetch`].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub prefetch: Option<u16>,
    /// Time running tasks get to finish on SIGTERM, e.g. `30s` [default: `[worker] grace`].
    #[arg(long, value_parser = parse_duration)]
    pub grace: Option<Duration>,
    /// Also run the topology's schedules: this process leads them or stands by (exactly one
    /// scheduler leads, whichever process runs it).
    #[arg(long)]
    pub scheduler: bool,
    /// Serve Prometheus metrics on this address, e.g. `127.0.0.1:9464` or `localhost:9464`.
    #[arg(long)]
    pub metrics_addr: Option<String>,
}

/// Cancels the returned token on the first SIGTERM or SIGINT; exits the process at once on
/// the second (the broker requeues whatever is unacked).
pub(crate) fn shutdown_on_signals() -> Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate()).map_err(|source| Error::Io {
        context: "installing a SIGTERM handler".into(),
        source,
    })?;
    let mut int = signal(SignalKind::interrupt()).map_err(|source| Error::Io {
        context: "installing a SIGINT handler".into(),
        source,
    })?;
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::info!("signal received: stopping gracefully; send it again to stop at once");
        cancel.cancel();
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::warn!("second signal: stopping now; unacked tasks return to their queues");
        std::process::exit(130);
    });
    Ok(token)
}

/// `warren worker ...`
///
/// `exec` programs run in `workdir` (the topology file's directory) and are checked before
/// the worker connects.
pub(crate) async fn run(settings: &Settings, args: WorkerArgs, workdir: &Path) -> Result<ExitCode> {
    let with_exec: Vec<&String> = settings
        .tasks
        .iter()
        .filter(|(_, t)| t.exec.is_some())
        .map(|(n, _)| n)
        .collect();
    let chosen: Vec<String> = if args.tasks.is_empty() {
        with_exec.iter().map(|s| s.to_string()).collect()
    } else {
        args.tasks.clone()
    };
    if chosen.is_empty() {
        return Err(Error::Config(
            "no task type has an `exec` handler: add e.g. exec = [\"python3\", \"handlers/job.py\"] under [tasks.NAME] in the topology file".into(),
        ));
    }
    let mut worker = warren::Worker::new(settings);
    for name in &chosen {
        let exec = settings.tasks.get(name).and_then(|t| t.exec.clone()).ok_or_else(|| {
            Error::Config(format!(
                "--tasks names `{name}`, which has no `exec` in the topology file (task types with one: {})",
                if with_exec.is_empty() { "none".to_string() } else { with_exec.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ") }
            ))
        })?;
        let wants_url = settings.tasks.get(name).is_some_and(|t| t.exec_broker_url);
        let handler = ExecHandler::new(name, &exec, workdir)?
            .result_limit(settings.max_payload_bytes)
            .broker_url(wants_url.then(|| settings.amqp_url.clone()));
        worker = worker.handle_json(name, handler.into_handler())?;
    }
    if let Some(n) = args.concurrency {
        worker = worker.concurrency(n as usize);
    }
    if let Some(n) = args.prefetch {
        worker = worker.prefetch(n);
    }
    if let Some(g) = args.grace {
        worker = worker.grace(g);
    }
    if let Some(addr) = args.metrics_addr {
        crate::metrics::serve(&addr).await?;
    }
    if args.scheduler && settings.schedules.is_empty() {
        return Err(Error::Config(
            "--scheduler: the topology declares no schedule; add a [schedules.NAME] table or \
             drop the flag"
                .into(),
        ));
    }
    check_broker(settings).await?;
    let shutdown = shutdown_on_signals()?;
    if !args.scheduler {
        worker.run(shutdown).await?;
        return Ok(ExitCode::SUCCESS);
    }
    // Side by side until shutdown; either one stopping for good (bad credentials, a topology
    // conflict) stops the other, rather than leave a replica that silently half-works.
    let scheduler = warren::schedule::Scheduler::new(settings);
    let (a, b) = (shutdown.clone(), shutdown.clone());
    let (worked, scheduled) = tokio::join!(
        async move {
            let r = worker.run(a.clone()).await;
            a.cancel();
            r
        },
        async move {
            let r = scheduler.run(b.clone()).await;
            b.cancel();
            r
        }
    );
    worked?;
    scheduled?;
    Ok(ExitCode::SUCCESS)
}

/// Names the broker in the log and refuses one older than Warren supports. Skipped (at debug)
/// when the management API cannot be read: a worker may start before its broker does.
async fn check_broker(settings: &Settings) -> Result<()> {
    let s = settings.clone();
    let read = tokio::task::spawn_blocking(move || {
        let mgmt = warren::ops::management::Management::from_settings(&s)?;
        warren::ops::version::BrokerVersion::read(&mgmt)
    })
    .await;
    match read {
        Ok(Ok(version)) => {
            tracing::info!(broker = %version, "broker");
            version.check_supported()
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "broker version unknown (management API)");
            Ok(())
        }
        Err(_) => Ok(()),
    }
}
