//! The `warren` command line: one function per subcommand, output to a writer.
//!
//! Exit codes: 0 success; 1 a runtime failure (broker unreachable, a task not confirmed);
//! 2 a usage error (bad flag, bad topology file, bad input).

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use crate::broker::{self, connection_name, redact, url_parts};
use crate::config::{Overrides, Settings, parse_duration};
use crate::error::{Error, Result};
use crate::producer::{EnqueueOptions, Producer};
use crate::topology::{self, Plan};

/// Warren: typed tasks on RabbitMQ with broker-held delays, retries and dead letters.
#[derive(Debug, Parser)]
#[command(name = "warren", version, about, long_about = None)]
pub struct Cli {
    /// Broker URL, vhost included (`%2f` is the default vhost `/`).
    #[arg(long, global = true, env = "WARREN_AMQP_URL", hide_env_values = true)]
    pub amqp_url: Option<String>,
    /// Prefix of every exchange and queue name.
    #[arg(long, global = true, env = "WARREN_NAMESPACE")]
    pub namespace: Option<String>,
    /// Topology file [default: topology/warren.toml when it exists].
    #[arg(long, global = true, env = "WARREN_TOPOLOGY")]
    pub topology: Option<PathBuf>,
    /// Management API URL [default: http://{amqp host}:15672].
    #[arg(
        long,
        global = true,
        env = "WARREN_MANAGEMENT_URL",
        hide_env_values = true
    )]
    pub management_url: Option<String>,
    /// How long to keep trying to reach the broker, e.g. `15s`.
    #[arg(long, global = true, env = "WARREN_CONNECT_TIMEOUT", value_parser = parse_duration)]
    pub connect_timeout: Option<Duration>,
    /// Log format on stderr; `RUST_LOG` sets the level.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Declare or export the namespace's exchanges, queues and bindings.
    #[command(subcommand)]
    Topology(TopologyCommand),
    /// Enqueue tasks (confirmed by the broker before the id is printed).
    Enqueue(EnqueueArgs),
    /// Run the `exec` handlers of the topology file until SIGTERM/SIGINT.
    Worker(WorkerArgs),
    /// One row per task type: ready, running, consumers, delayed, dead, rates.
    Status(StatusArgs),
    /// Inspect, replay or purge dead tasks.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Run the whole thing once: topology, workers, a planned mix of tasks, a summary.
    Demo(DemoArgs),
    /// Measure Warren against a raw lapin baseline on the same broker, in one run.
    Bench(BenchArgs),
    /// (internal) One drain of `warren bench`, in a process of its own.
    #[command(hide = true)]
    BenchDrain(BenchDrainArgs),
}

/// `warren bench ...`
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Messages per throughput phase.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: u64,
    /// Message body size in bytes.
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Queue type of both sides.
    #[arg(long, default_value = "classic", value_parser = ["classic", "quorum"])]
    pub queue_type: String,
    /// Prefetch of both consumers.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u16).range(1..))]
    pub prefetch: u16,
    /// Warren worker concurrency.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,
    /// Repetitions (medians and spreads are reported).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub repetitions: u32,
    /// Paced load of the latency phase, messages per second.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub rate: u64,
    /// Length of the paced phase.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub paced_for: Duration,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `warren bench-drain ...` (internal)
#[derive(Debug, Args)]
pub struct BenchDrainArgs {
    /// Which consumer.
    #[arg(long, value_enum)]
    pub side: crate::bench::DrainSide,
    /// Messages to consume.
    #[arg(long)]
    pub count: u64,
    /// Prefetch.
    #[arg(long)]
    pub prefetch: u16,
    /// Warren concurrency.
    #[arg(long)]
    pub concurrency: usize,
    /// Queue type.
    #[arg(long, value_parser = ["classic", "quorum"])]
    pub queue_type: String,
}

/// `warren demo ...`
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Tasks to enqueue.
    #[arg(long, default_value_t = 400, value_parser = clap::value_parser!(u64).range(20..=1_000_000))]
    pub tasks: u64,
    /// In-process workers.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub workers: u16,
    /// Keep the demo's queues afterwards, to browse them in the management UI.
    #[arg(long)]
    pub keep: bool,
    /// Give up waiting for outcomes after this long.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// `warren status ...`
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON (figures the broker has not reported yet are null).
    #[arg(long)]
    pub json: bool,
    /// Refresh every interval, e.g. `2s` (in place on a terminal).
    #[arg(long, value_parser = parse_duration)]
    pub watch: Option<Duration>,
}

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
    /// Serve Prometheus metrics on this address, e.g. `127.0.0.1:9464`.
    #[arg(long)]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// `warren topology ...`
#[derive(Debug, Subcommand)]
pub enum TopologyCommand {
    /// Declare everything the topology file describes; safe to run again.
    Apply,
    /// Print RabbitMQ definitions JSON for the namespace (import it per vhost in the
    /// management UI, or `POST /api/definitions/{vhost}`).
    Export {
        /// Write to this file instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

/// `warren enqueue ...`
#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// Task name, e.g. `send_email`.
    pub task: String,
    /// `-` reads JSON lines from stdin, one task per line.
    #[arg(value_parser = ["-"])]
    pub stdin: Option<String>,
    /// The task's arguments as JSON [default: {}].
    #[arg(long, conflicts_with_all = ["payload_file", "stdin"])]
    pub payload: Option<String>,
    /// Read the task's JSON arguments from a file.
    #[arg(long, conflicts_with = "stdin")]
    pub payload_file: Option<PathBuf>,
    /// Run no earlier than this from now, e.g. `90s`, `10m`, `2h` (whole seconds, rounded up).
    #[arg(long, value_parser = parse_duration)]
    pub delay: Option<Duration>,
    /// Never start after this long from now, e.g. `10m`.
    #[arg(long, value_parser = parse_duration)]
    pub expires_in: Option<Duration>,
    /// Task id (default: a new UUID v7); with --count or stdin, each task gets `ID-N`.
    #[arg(long)]
    pub id: Option<String>,
    /// Correlation id carried through retries.
    #[arg(long)]
    pub correlation_id: Option<String>,
    /// Enqueue this many copies through the pipelined bulk path.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000_000), conflicts_with = "stdin")]
    pub count: Option<u64>,
}

/// Entry point of the binary: parses arguments, sets up logging, runs, maps errors to exit
/// codes and prints them once.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    // The demo's retries and dead letters are planned: keep its output to the summary.
    let default_filter = match cli.command {
        Command::Demo(_) => "error,lapin=off",
        _ => "warn,lapin=off,warren=info",
    };
    init_tracing(cli.log_format, default_filter);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let mut stdout = std::io::stdout().lock();
    match runtime.block_on(run(cli, &mut stdout)) {
        Ok(code) => code,
        Err(e) => {
            let _ = stdout.flush();
            eprintln!("error: {e}");
            ExitCode::from(if e.is_usage() { 2 } else { 1 })
        }
    }
}

fn init_tracing(format: LogFormat, default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // Colours only on a terminal: escape codes in a log file or journal are noise, and
    // writing them is a measurable part of a worker's per-task span cost.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

impl Cli {
    /// Settings after layering the file, environment and these flags.
    ///
    /// # Errors
    /// [`Error::Config`] as [`Settings::load`].
    pub fn settings(&self) -> Result<Settings> {
        let overrides = Overrides {
            amqp_url: self.amqp_url.clone(),
            namespace: self.namespace.clone(),
            management_url: self.management_url.clone(),
            connect_timeout: self.connect_timeout,
        };
        Settings::load(self.topology.as_deref(), &overrides)
    }
}

/// Runs a parsed command, writing its results to `out`.
///
/// # Errors
/// Whatever the subcommand fails with; the caller prints it and picks the exit code.
pub async fn run(cli: Cli, out: &mut dyn Write) -> Result<ExitCode> {
    let settings = cli.settings()?;
    match cli.command {
        Command::Topology(TopologyCommand::Apply) => topology_apply(&settings, out).await,
        Command::Topology(TopologyCommand::Export { output }) => {
            topology_export(&settings, output, out)
        }
        Command::Enqueue(args) => enqueue(&settings, args, out).await,
        Command::Worker(args) => worker(&settings, args).await,
        Command::Status(args) => status(&settings, args, out).await,
        Command::Dlq(cmd) => dlq(&settings, cmd, out).await,
        Command::Demo(args) => demo(&settings, args, out).await,
        Command::Bench(args) => bench(&settings, args, out).await,
        Command::BenchDrain(args) => bench_drain(&settings, args, out).await,
    }
}

fn write_err(source: std::io::Error) -> Error {
    Error::Io {
        context: "writing output".to_string(),
        source,
    }
}

async fn topology_apply(settings: &Settings, out: &mut dyn Write) -> Result<ExitCode> {
    let started = Instant::now();
    let vhost = url_parts(&settings.amqp_url)?.vhost;
    let conn = broker::connect(
        &settings.amqp_url,
        &connection_name("cli"),
        Some(settings.connect_timeout),
    )
    .await?;
    let plan = Plan::new(settings);
    let result = topology::apply(&plan, &conn, &vhost).await;
    let _ = conn.close(200, "done".into()).await;
    let report = result?;
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
    if settings.tasks.is_empty() {
        writeln!(
            out,
            "note: the topology declares no task types; add [tasks.NAME] tables to get work queues"
        )
        .map_err(write_err)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn topology_export(
    settings: &Settings,
    output: Option<PathBuf>,
    out: &mut dyn Write,
) -> Result<ExitCode> {
    let defs = Plan::new(settings).to_definitions();
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

async fn status(settings: &Settings, args: StatusArgs, out: &mut dyn Write) -> Result<ExitCode> {
    let mgmt = crate::management::Management::from_settings(settings)?;
    let in_place = args.watch.is_some() && std::io::stdout().is_terminal() && !args.json;
    loop {
        let (s, m) = (settings.clone(), mgmt.clone());
        let status = tokio::task::spawn_blocking(move || crate::status::fetch(&s, &m))
            .await
            .map_err(|e| Error::Management(format!("status query failed: {e}")))??;
        let text = if args.json {
            serde_json::to_string(&status).unwrap_or_default() + "\n"
        } else {
            crate::status::table(&status)
        };
        if in_place {
            // Home the cursor and clear the screen, then draw.
            write!(out, "\x1b[H\x1b[2J").map_err(write_err)?;
        }
        write!(out, "{text}").map_err(write_err)?;
        out.flush().map_err(write_err)?;
        match args.watch {
            None => return Ok(ExitCode::SUCCESS),
            Some(every) => tokio::time::sleep(every).await,
        }
    }
}

fn queue_type(name: &str) -> crate::config::QueueType {
    if name == "quorum" {
        crate::config::QueueType::Quorum
    } else {
        crate::config::QueueType::Classic
    }
}

async fn bench(settings: &Settings, args: BenchArgs, out: &mut dyn Write) -> Result<ExitCode> {
    let opts = crate::bench::BenchOptions {
        count: args.count,
        size: args.size,
        queue_type: queue_type(&args.queue_type),
        prefetch: args.prefetch,
        concurrency: args.concurrency as usize,
        repetitions: args.repetitions as usize,
        paced_rate: args.rate,
        paced_for: args.paced_for,
    };
    let terminal = std::io::stderr().is_terminal();
    let reps = crate::bench::run(settings, &opts, |phase| {
        if terminal {
            eprint!("\r\x1b[2K{phase}");
        } else {
            eprintln!("{phase}");
        }
    })
    .await?;
    if terminal {
        eprintln!();
    }
    let (spreads, ratios) = crate::bench::summarize(&reps);
    if args.json {
        let json = serde_json::json!({"options": opts, "figures": spreads, "ratios": ratios, "repetitions": reps});
        writeln!(out, "{json}").map_err(write_err)?;
    } else {
        write!(out, "{}", crate::bench::report(&opts, &spreads, &ratios)).map_err(write_err)?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn bench_drain(
    settings: &Settings,
    args: BenchDrainArgs,
    out: &mut dyn Write,
) -> Result<ExitCode> {
    let s =
        crate::bench::bench_settings(settings, queue_type(&args.queue_type), &settings.namespace)?;
    let figures =
        crate::bench::drain_child(&s, args.side, args.count, args.prefetch, args.concurrency)
            .await?;
    writeln!(
        out,
        "{}",
        serde_json::to_string(&figures).unwrap_or_default()
    )
    .map_err(write_err)?;
    Ok(ExitCode::SUCCESS)
}

async fn demo(settings: &Settings, args: DemoArgs, out: &mut dyn Write) -> Result<ExitCode> {
    let opts = crate::demo::DemoOptions {
        tasks: args.tasks,
        workers: usize::from(args.workers),
        keep: args.keep,
        timeout: args.timeout,
    };
    let bar = Progress::new(opts.tasks);
    let summary = crate::demo::run(settings, &opts, |done, _| bar.set(done)).await?;
    bar.finish();
    let mgmt = crate::management::Management::from_settings(settings)?;
    let vhost = url_parts(&settings.amqp_url)?.vhost;
    let text = crate::demo::report(
        &summary,
        mgmt.base(),
        &vhost,
        opts.keep,
        settings.queue_type,
    );
    write!(out, "{text}").map_err(write_err)?;
    Ok(if summary.all_as_planned() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn dlq(settings: &Settings, cmd: DlqCommand, out: &mut dyn Write) -> Result<ExitCode> {
    use crate::dlq::{Selection, list, purge, replay};
    let task = match &cmd {
        DlqCommand::List { task, .. }
        | DlqCommand::Replay { task, .. }
        | DlqCommand::Purge { task, .. } => task.clone(),
    };
    crate::topology::names::validate_task_name(&task).map_err(Error::InvalidInput)?;
    if let DlqCommand::Purge { yes: false, .. } = cmd {
        return Err(Error::InvalidInput(format!(
            "purging `{}` deletes every dead `{task}` task for good; add --yes to confirm",
            crate::topology::names::Names::new(&settings.namespace).dead_queue(&task)
        )));
    }
    let conn = broker::connect(
        &settings.amqp_url,
        &connection_name("cli"),
        Some(settings.connect_timeout),
    )
    .await?;
    let names = crate::topology::names::Names::new(&settings.namespace);
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

/// Cancels the returned token on the first SIGTERM or SIGINT; exits the process at once on
/// the second (the broker requeues whatever is unacked).
fn shutdown_on_signals() -> Result<CancellationToken> {
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

async fn worker(settings: &Settings, args: WorkerArgs) -> Result<ExitCode> {
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
    let mut worker = crate::Worker::new(settings);
    for name in &chosen {
        let exec = settings.tasks.get(name).and_then(|t| t.exec.clone()).ok_or_else(|| {
            Error::Config(format!(
                "--tasks names `{name}`, which has no `exec` in the topology file (task types with one: {})",
                if with_exec.is_empty() { "none".to_string() } else { with_exec.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ") }
            ))
        })?;
        worker = worker.handle_json(name, crate::worker::exec::handler(exec))?;
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
        crate::metrics::serve(addr).await?;
    }
    let shutdown = shutdown_on_signals()?;
    worker.run(shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

fn parse_payload(text: &str, origin: &str) -> Result<Vec<u8>> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| Error::InvalidInput(format!("{origin} is not valid JSON: {e}")))?;
    serde_json::to_vec(&value).map_err(|e| Error::InvalidInput(format!("{origin}: {e}")))
}

async fn enqueue(settings: &Settings, args: EnqueueArgs, out: &mut dyn Write) -> Result<ExitCode> {
    crate::topology::names::validate_task_name(&args.task).map_err(Error::InvalidInput)?;
    let options = EnqueueOptions {
        delay: args.delay,
        expires_in: args.expires_in,
        expires_at: None,
        id: None,
        correlation_id: args.correlation_id.clone(),
        traceparent: None,
    };
    let producer = Producer::with_role(settings, "cli")?;
    let outcome = if args.stdin.is_some() {
        enqueue_lines(&producer, &args, options, std::io::stdin().lock(), out).await
    } else {
        enqueue_payload(&producer, &args, options, out).await
    };
    // Close with the handshake before the process exits (confirmed tasks are safe either way).
    producer.close().await;
    outcome
}

/// `warren enqueue` with `--payload`, `--payload-file` or neither, once or `--count` times.
async fn enqueue_payload(
    producer: &Producer,
    args: &EnqueueArgs,
    options: EnqueueOptions,
    out: &mut dyn Write,
) -> Result<ExitCode> {
    let body = match (&args.payload, &args.payload_file) {
        (Some(p), _) => parse_payload(p, "--payload")?,
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Error::InvalidInput(format!(
                    "cannot read --payload-file {}: {e}",
                    path.display()
                ))
            })?;
            parse_payload(&text, &format!("--payload-file {}", path.display()))?
        }
        (None, None) => b"{}".to_vec(),
    };
    match args.count {
        None => {
            let id = producer
                .enqueue_raw(
                    &args.task,
                    body,
                    EnqueueOptions {
                        id: args.id.clone(),
                        ..options
                    },
                )
                .await?;
            writeln!(out, "{id}").map_err(write_err)?;
            Ok(ExitCode::SUCCESS)
        }
        Some(count) => {
            let items = (1..=count).map(|n| {
                let id = args.id.as_ref().map(|id| format!("{id}-{n}"));
                (
                    args.task.clone(),
                    Ok(body.clone()),
                    EnqueueOptions {
                        id,
                        ..options.clone()
                    },
                )
            });
            enqueue_in_chunks(producer, &args.task, items, count, out).await
        }
    }
}

/// Chunk size of the bulk paths: bounds memory while keeping the confirm window full.
const CHUNK: usize = 10_000;

/// Sends `items` through `enqueue_many_raw` chunk by chunk, printing each confirmed id, a
/// progress bar on a terminal (plain lines otherwise) and a closing line with the rate.
async fn enqueue_in_chunks(
    producer: &Producer,
    task: &str,
    items: impl Iterator<Item = (String, Result<Vec<u8>>, EnqueueOptions)>,
    total: u64,
    out: &mut dyn Write,
) -> Result<ExitCode> {
    let started = Instant::now();
    let progress = Progress::new(total);
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut items = items.peekable();
    while items.peek().is_some() {
        let chunk: Vec<_> = items.by_ref().take(CHUNK).collect();
        for result in producer.enqueue_many_raw(chunk).await {
            match result {
                Ok(id) => {
                    ok += 1;
                    writeln!(out, "{id}").map_err(write_err)?;
                }
                Err(e) => {
                    if failed == 0 {
                        progress.println(&format!("error: {e}"));
                    }
                    failed += 1;
                }
            }
        }
        progress.set(ok + failed);
    }
    progress.finish();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "enqueued {ok} of {total} `{task}` tasks in {secs:.2} s ({:.0} tasks/s){}",
        ok as f64 / secs.max(1e-9),
        if failed > 0 {
            format!("; {failed} NOT enqueued")
        } else {
            String::new()
        }
    );
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `warren enqueue TASK -`: one JSON payload per line. A bad line is reported with its number
/// and skipped; the others are enqueued; each enqueued line is printed as `LINE<TAB>ID`.
async fn enqueue_lines(
    producer: &Producer,
    args: &EnqueueArgs,
    options: EnqueueOptions,
    input: impl BufRead,
    out: &mut dyn Write,
) -> Result<ExitCode> {
    let started = Instant::now();
    let (mut ok, mut bad) = (0u64, 0u64);
    let mut lines = input.lines().enumerate().peekable();
    while lines.peek().is_some() {
        let mut numbers = Vec::new();
        let mut items = Vec::new();
        for (i, line) in lines.by_ref().take(CHUNK) {
            let n = i + 1;
            let line = line.map_err(|source| Error::Io {
                context: format!("reading stdin line {n}"),
                source,
            })?;
            if line.trim().is_empty() {
                continue;
            }
            match parse_payload(&line, &format!("line {n}")) {
                Ok(body) => {
                    numbers.push(n);
                    let id = args.id.as_ref().map(|id| format!("{id}-{n}"));
                    items.push((
                        args.task.clone(),
                        Ok(body),
                        EnqueueOptions {
                            id,
                            ..options.clone()
                        },
                    ));
                }
                Err(e) => {
                    bad += 1;
                    eprintln!("error: {e}; line {n} NOT enqueued");
                }
            }
        }
        for (n, result) in numbers
            .into_iter()
            .zip(producer.enqueue_many_raw(items).await)
        {
            match result {
                Ok(id) => {
                    ok += 1;
                    writeln!(out, "{n}\t{id}").map_err(write_err)?;
                }
                Err(e) => {
                    bad += 1;
                    eprintln!("error: line {n} NOT enqueued: {e}");
                }
            }
        }
    }
    eprintln!(
        "enqueued {ok} `{}` tasks from stdin in {:.2} s{}",
        args.task,
        started.elapsed().as_secs_f64(),
        if bad > 0 {
            format!("; {bad} line(s) NOT enqueued")
        } else {
            String::new()
        }
    );
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// A progress bar on a terminal, a line every 10 % otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    total: u64,
    last_decile: std::cell::Cell<u64>,
}

impl Progress {
    fn new(total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} tasks  {per_sec}  eta {eta}",
            ) {
                bar.set_style(style);
            }
            bar
        });
        Progress {
            bar,
            total,
            last_decile: std::cell::Cell::new(0),
        }
    }

    fn set(&self, done: u64) {
        match &self.bar {
            Some(bar) => bar.set_position(done),
            None => {
                let decile = done * 10 / self.total.max(1);
                if decile > self.last_decile.get() {
                    self.last_decile.set(decile);
                    eprintln!("progress: {done}/{} tasks", self.total);
                }
            }
        }
    }

    fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_flags_parse_before_and_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "warren",
            "--namespace",
            "a",
            "topology",
            "apply",
            "--amqp-url",
            "amqp://h/",
        ])
        .unwrap();
        assert_eq!(cli.namespace.as_deref(), Some("a"));
        assert_eq!(cli.amqp_url.as_deref(), Some("amqp://h/"));
        assert!(matches!(
            cli.command,
            Command::Topology(TopologyCommand::Apply)
        ));
    }

    #[test]
    fn enqueue_parses_durations_and_refuses_bad_ones() {
        let cli = Cli::try_parse_from([
            "warren",
            "enqueue",
            "t",
            "--delay",
            "90s",
            "--expires-in",
            "10m",
        ])
        .unwrap();
        let Command::Enqueue(a) = cli.command else {
            panic!()
        };
        assert_eq!(a.delay, Some(Duration::from_secs(90)));
        assert_eq!(a.expires_in, Some(Duration::from_secs(600)));
        let err = Cli::try_parse_from(["warren", "enqueue", "t", "--delay", "soon"]).unwrap_err();
        assert!(err.to_string().contains("invalid duration"), "{err}");
    }

    #[test]
    fn enqueue_refuses_a_count_of_zero_and_payload_with_stdin() {
        assert!(Cli::try_parse_from(["warren", "enqueue", "t", "--count", "0"]).is_err());
        assert!(Cli::try_parse_from(["warren", "enqueue", "t", "-", "--payload", "{}"]).is_err());
        assert!(Cli::try_parse_from(["warren", "enqueue", "t", "x"]).is_err());
    }

    #[test]
    fn a_payload_must_be_json() {
        assert!(parse_payload("{\"a\":1}", "p").is_ok());
        let err = parse_payload("{a:1}", "line 3").unwrap_err().to_string();
        assert!(err.starts_with("line 3 is not valid JSON"), "{err}");
    }
}
