//! `warren enqueue`: one task, `--count` copies, or one task per stdin line, each confirmed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use warren::duration::parse_duration;
use warren::{EnqueueOptions, Error, Producer, Result, Settings};

mod answers;
mod bulk;
mod declared;

pub(crate) use declared::check_declared;

use crate::write_err;
use answers::{check_waitable, print_answers};
use bulk::{enqueue_in_chunks, enqueue_lines};

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
    // Hyphen values are taken, so `--delay -5s` gets the same message as `--delay=-5s`.
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    pub delay: Option<Duration>,
    /// Never start after this long from now, e.g. `10m`.
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    pub expires_in: Option<Duration>,
    /// Task id (default: a new UUID v7); with --count or stdin, each task gets `ID-N`.
    #[arg(long)]
    pub id: Option<String>,
    /// Correlation id carried through retries.
    #[arg(long)]
    pub correlation_id: Option<String>,
    /// Priority, 0 (lowest) to 255, for task types with `priorities = N` (higher runs first;
    /// above N counts as N); kept through retries and delays.
    #[arg(long)]
    pub priority: Option<u8>,
    /// Enqueue this many copies through the pipelined bulk path.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000_000), conflicts_with = "stdin")]
    pub count: Option<u64>,
    /// Run this task type next, with this task's result as its payload; repeat for a chain
    /// (`--then resize --then notify`). Each step runs only once the previous one succeeded.
    #[arg(long = "then", value_name = "TASK", conflicts_with = "stdin")]
    pub then: Vec<String>,
    /// A unique task: refused (exit 3) while a task of this type with this key is waiting,
    /// delayed or running.
    #[arg(long, value_name = "KEY", conflicts_with_all = ["stdin", "count", "wait"])]
    pub unique: Option<String>,
    /// With --unique: hold the key at least this long after the enqueue, e.g. `10m`.
    #[arg(long, value_parser = parse_duration, requires = "unique", allow_hyphen_values = true)]
    pub unique_for: Option<Duration>,
    /// Wait this long for the outcome, e.g. `30s`: print the result (exit 0), or the reason
    /// a dead task died (stderr, exit 1); 124 when no answer came in time (the task may still
    /// run). With --count, one line per task.
    #[arg(long, value_parser = parse_wait, conflicts_with = "stdin", allow_hyphen_values = true)]
    pub wait: Option<Duration>,
}

fn parse_wait(text: &str) -> std::result::Result<Duration, String> {
    let d = parse_duration(text)?;
    if d.is_zero() {
        return Err("a wait of 0s could never see an answer; give e.g. 30s".into());
    }
    Ok(d)
}

/// Checks that `text` is one JSON value and returns its bytes unchanged: parsing into a
/// `serde_json::Value` and writing it back would reorder keys and round integers beyond
/// f64 (`123456789012345678901234567890` became `1.2345678901234568e+29`). `IgnoredAny`
/// reads the syntax and keeps nothing.
pub(super) fn parse_payload(text: &str, origin: &str) -> Result<Vec<u8>> {
    serde_json::from_str::<serde::de::IgnoredAny>(text)
        .map_err(|e| Error::InvalidInput(format!("{origin} is not valid JSON: {e}")))?;
    Ok(text.as_bytes().to_vec())
}

/// `warren enqueue ...`; `topology` is the file the settings came from, if any.
pub(crate) async fn run(
    settings: &Settings,
    args: EnqueueArgs,
    topology: Option<&Path>,
    out: &mut dyn Write,
) -> Result<ExitCode> {
    warren::topology::validate_task_name(&args.task).map_err(Error::InvalidInput)?;
    check_declared(settings, &args.task, topology)?;
    for step in &args.then {
        warren::topology::validate_task_name(step)
            .map_err(|e| Error::InvalidInput(format!("--then: {e}")))?;
        check_declared(settings, step, topology)
            .map_err(|e| Error::InvalidInput(format!("--then: {e}")))?;
    }
    if args.wait.is_some() {
        check_waitable(settings, &args)?;
    }
    let options = EnqueueOptions {
        delay: args.delay,
        expires_in: args.expires_in,
        expires_at: None,
        id: None,
        correlation_id: args.correlation_id.clone(),
        traceparent: None,
        priority: args.priority,
        reply_to: None,
        then: args.then.clone(),
        unique_key: args.unique.clone(),
        unique_for: args.unique_for,
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
    if let Some(wait) = args.wait {
        let count = args.count.unwrap_or(1);
        let items = (1..=count).map(|n| {
            let id = match args.count {
                None => args.id.clone(),
                Some(_) => args.id.as_ref().map(|id| format!("{id}-{n}")),
            };
            let options = EnqueueOptions {
                id,
                ..options.clone()
            };
            (args.task.clone(), Ok(body.clone()), options)
        });
        let results = producer.enqueue_many_wait_raw(items, wait).await;
        return print_answers(results, args.count.is_some(), out);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_must_be_json() {
        assert!(parse_payload("{\"a\":1}", "p").is_ok());
        let err = parse_payload("{a:1}", "line 3").unwrap_err().to_string();
        assert!(err.starts_with("line 3 is not valid JSON"), "{err}");
    }
}
