//! The `warren` command: parse, set up logging, run one subcommand, map errors to exit codes.
//!
//! One module per subcommand group; each uses only the library's public API. Exit codes: 0
//! success; 1 a runtime failure (broker unreachable, a task not confirmed); 2 a usage error
//! (bad flag, bad topology file, bad input); 3 a duplicate unique task; 4 a broadcast no
//! worker received; 124 no answer within `--wait`. The library's errors state facts; the hints that
//! name this command's flags and subcommands are added here ([`hints`]).

mod bench;
mod console;
mod consumers;
mod control;
mod demo;
mod dlq;
mod enqueue;
mod exec;
mod hints;
mod metrics;
mod progress;
mod schedules;
mod stats;
mod status;
mod topology;
mod unique;
mod worker;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use warren::config::Overrides;
use warren::duration::parse_duration;
use warren::{Error, Result, Settings};

/// The help heading of the options every subcommand takes, so that a subcommand's own
/// options stand apart from them.
const GLOBAL: &str = "Global options";

/// Warren: typed tasks on RabbitMQ with broker-held delays, retries and dead letters.
#[derive(Debug, Parser)]
#[command(name = "warren", version, about, long_about = None)]
pub struct Cli {
    /// Broker URL, vhost included (`%2f` is the default vhost `/`).
    #[arg(long, global = true, help_heading = GLOBAL, env = "WARREN_AMQP_URL", hide_env_values = true)]
    pub amqp_url: Option<String>,
    /// Prefix of every exchange and queue name.
    #[arg(long, global = true, help_heading = GLOBAL, env = "WARREN_NAMESPACE")]
    pub namespace: Option<String>,
    /// Topology file [default: topology/warren.toml when it exists].
    #[arg(long, global = true, help_heading = GLOBAL, env = "WARREN_TOPOLOGY")]
    pub topology: Option<PathBuf>,
    /// Management API URL [default: http://{amqp host}:15672].
    #[arg(
        long,
        global = true, help_heading = GLOBAL,
        env = "WARREN_MANAGEMENT_URL",
        hide_env_values = true
    )]
    pub management_url: Option<String>,
    /// How long to keep trying to reach the broker, e.g. `15s`.
    #[arg(long, global = true, help_heading = GLOBAL, env = "WARREN_CONNECT_TIMEOUT", value_parser = parse_duration)]
    pub connect_timeout: Option<Duration>,
    /// AMQP heartbeat timeout, e.g. `10s`: how long a frozen process or a silent broker goes
    /// unnoticed [default: 5s, or `heartbeat` in the topology file].
    #[arg(long, global = true, help_heading = GLOBAL, env = "WARREN_HEARTBEAT", value_parser = parse_duration)]
    pub heartbeat: Option<Duration>,
    /// Log format on stderr; `RUST_LOG` sets the level.
    #[arg(long, global = true, help_heading = GLOBAL, value_enum, default_value_t = LogFormat::Text)]
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
    Topology(topology::TopologyCommand),
    /// Enqueue tasks (confirmed by the broker before the id is printed).
    Enqueue(enqueue::EnqueueArgs),
    /// Run the `exec` handlers of the topology file until SIGTERM/SIGINT.
    Worker(worker::WorkerArgs),
    /// One row per task type: ready, running, consumers, delayed, dead, rates.
    Status(status::StatusArgs),
    /// Cancel tasks by id: not started ones never start, running ones are stopped.
    Cancel(control::CancelArgs),
    /// Pause a task type on every worker (tasks wait in the broker) until `warren resume`.
    Pause(control::TypeArgs),
    /// Resume a paused task type.
    Resume(control::TypeArgs),
    /// Change a type's concurrency or rate limit for its running workers, or show it.
    Limit(control::LimitArgs),
    /// Fire the topology's schedules: exactly one scheduler leads, the others stand by.
    Scheduler,
    /// List the schedules with their next and last firing and the leading scheduler.
    Schedules(schedules::SchedulesArgs),
    /// Inspect, replay or purge dead tasks.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// List a task type's held unique keys, or free one that outlived its task.
    #[command(subcommand)]
    Unique(unique::UniqueCommand),
    /// Serve the operator console: live counters, dead tasks, controls, audit (web UI).
    Console(console::ConsoleArgs),
    /// Run the whole thing once: topology, workers, a planned mix of tasks, a summary.
    Demo(demo::DemoArgs),
    /// Measure Warren against a raw lapin baseline on the same broker, in one run.
    Bench(bench::BenchArgs),
    /// (internal) One drain of `warren bench`, in a process of its own.
    #[command(hide = true)]
    BenchDrain(bench::BenchDrainArgs),
}

/// Entry point of the binary: parses arguments, sets up logging, runs, maps errors to exit
/// codes and prints them once.
fn main() -> ExitCode {
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
    let drop_task_lines = matches!(cli.command, Command::Bench(_));
    init_tracing(cli.log_format, default_filter, drop_task_lines);
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
            eprintln!("error: {}", hints::explained(&e));
            // A duplicate unique task is an answer, not a failure: its own code, for scripts.
            ExitCode::from(match e {
                Error::Duplicate { .. } => 3,
                // Nobody listened: an outcome a script tells apart from a failure.
                Error::NoListeners { .. } => 4,
                _ if e.is_usage() => 2,
                _ => 1,
            })
        }
    }
}

/// Logging to stderr. `warren bench` formats the per-task lines of its in-process workers (a
/// cost a worker pays) but writes them nowhere: 20 000 tasks a phase would bury its report.
/// Its drains run in child processes that write them into a pipe, as a worker would.
fn init_tracing(format: LogFormat, default_filter: &str, drop_task_lines: bool) {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::fmt::writer::{BoxMakeWriter, MakeWriterExt};
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let writer = if drop_task_lines {
        BoxMakeWriter::new(
            std::io::stderr
                .with_filter(|m| m.target() != "warren::task")
                .or_else(std::io::sink),
        )
    } else {
        BoxMakeWriter::new(std::io::stderr)
    };
    // Colours only on a terminal: escape codes in a log file or journal are noise, and
    // writing them is a measurable part of a worker's per-task span cost.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

impl Cli {
    /// Where `exec` handlers run and their relative paths resolve from: the loaded topology
    /// file's directory, else the current directory.
    fn workdir(&self) -> PathBuf {
        let dir = warren::config::topology_file(self.topology.as_deref())
            .and_then(|f| f.parent().map(Path::to_path_buf))
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        std::path::absolute(&dir).unwrap_or(dir)
    }

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
            heartbeat: self.heartbeat,
        };
        Settings::load(self.topology.as_deref(), &overrides)
    }
}

/// Runs a parsed command, writing its results to `out`.
///
/// # Errors
/// Whatever the subcommand fails with; the caller prints it and picks the exit code.
async fn run(cli: Cli, out: &mut dyn Write) -> Result<ExitCode> {
    let settings = cli.settings()?;
    let workdir = cli.workdir();
    let topology_file = warren::config::topology_file(cli.topology.as_deref());
    match cli.command {
        Command::Topology(cmd) => topology::run(&settings, cmd, out).await,
        Command::Enqueue(args) => {
            enqueue::run(&settings, args, topology_file.as_deref(), out).await
        }
        Command::Worker(args) => worker::run(&settings, args, &workdir).await,
        Command::Status(args) => status::run(&settings, args, out).await,
        Command::Limit(args) => {
            control::limit(&settings, args, topology_file.as_deref(), out).await
        }
        Command::Cancel(args) => {
            control::cancel(&settings, args, topology_file.as_deref(), out).await
        }
        Command::Pause(args) => {
            control::pause(&settings, args, true, topology_file.as_deref(), out).await
        }
        Command::Resume(args) => {
            control::pause(&settings, args, false, topology_file.as_deref(), out).await
        }
        Command::Scheduler => schedules::run_scheduler(&settings).await,
        Command::Schedules(args) => schedules::list(&settings, args, out).await,
        Command::Dlq(cmd) => dlq::run(&settings, cmd, out).await,
        Command::Unique(cmd) => unique::run(&settings, cmd, topology_file.as_deref(), out).await,
        Command::Console(args) => console::run(&settings, args).await,
        Command::Demo(args) => demo::command(&settings, args, out).await,
        Command::Bench(args) => bench::command(&settings, args, out).await,
        Command::BenchDrain(args) => bench::drain_command(&settings, args, out).await,
    }
}

/// A failure of this command's own machinery (a child process that failed, a consumer that
/// ended early, a timeout): a runtime failure, exit 1, never a usage error.
pub(crate) fn failure(kind: std::io::ErrorKind, context: String, detail: String) -> Error {
    Error::Io {
        context,
        source: std::io::Error::new(kind, detail),
    }
}

/// An output write failed (a closed pipe, a full disk).
pub(crate) fn write_err(source: std::io::Error) -> Error {
    Error::Io {
        context: "writing output".to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::TopologyCommand;

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
            Command::Topology(TopologyCommand::Apply {
                skip_capacity_check: false
            })
        ));
    }

    #[test]
    fn subcommand_help_puts_the_global_options_under_a_heading_of_their_own() {
        use clap::CommandFactory;
        let mut cmd = Cli::command();
        cmd.build();
        let help = cmd
            .find_subcommand_mut("enqueue")
            .unwrap()
            .render_help()
            .to_string();
        let (own, global) = help.split_once("Global options:").expect(&help);
        assert!(
            own.contains("--payload") && !own.contains("--amqp-url"),
            "{help}"
        );
        assert!(
            global.contains("--amqp-url") && global.contains("--log-format"),
            "{help}"
        );
        assert!(!global.contains("--payload"), "{help}");
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
}
