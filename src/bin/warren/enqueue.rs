//! `warren enqueue`: one task, `--count` copies, or one task per stdin line, each confirmed.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use warren::duration::parse_duration;
use warren::error::WaitFailure;
use warren::wire::answer::Answer;
use warren::{EnqueueOptions, Error, Producer, Result, Settings};

use crate::hints;
use crate::progress::Progress;
use crate::write_err;

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

/// Most tasks `--count N --wait` waits for at once: each wait holds its answer in memory.
const WAIT_COUNT_MAX: u64 = 100_000;

/// Exit code of a wait that got no answer in time, as `timeout(1)` has it.
const EXIT_TIMED_OUT: u8 = 124;

fn parse_wait(text: &str) -> std::result::Result<Duration, String> {
    let d = parse_duration(text)?;
    if d.is_zero() {
        return Err("a wait of 0s could never see an answer; give e.g. 30s".into());
    }
    Ok(d)
}

/// A task name the loaded topology file does not declare is a typo far more often than an
/// unapplied topology: say so first, with the closest declared name. A file that declares no
/// task types (or none loaded) checks nothing.
pub(crate) fn check_declared(
    settings: &Settings,
    task: &str,
    topology: Option<&Path>,
) -> Result<()> {
    if settings.tasks.is_empty() || settings.tasks.contains_key(task) {
        return Ok(());
    }
    let file = topology.map_or_else(|| "the topology".to_string(), |p| p.display().to_string());
    let closest = settings
        .tasks
        .keys()
        .map(|name| (edit_distance(task, name), name))
        .min()
        .filter(|(d, name)| *d <= 2.max(name.len() / 4));
    Err(Error::InvalidInput(match closest {
        Some((_, name)) => format!("no task `{task}` in {file}; did you mean `{name}`?"),
        None => format!(
            "no task `{task}` in {file}; it declares {}",
            settings
                .tasks
                .keys()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }))
}

/// Levenshtein distance between `a` and `b`, in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// Checks that `text` is one JSON value and returns its bytes unchanged: parsing into a
/// `serde_json::Value` and writing it back would reorder keys and round integers beyond
/// f64 (`123456789012345678901234567890` became `1.2345678901234568e+29`). `IgnoredAny`
/// reads the syntax and keeps nothing.
fn parse_payload(text: &str, origin: &str) -> Result<Vec<u8>> {
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

/// `--wait` is refused, before anything is published, for a broadcast type (every worker
/// would answer) and for more than [`WAIT_COUNT_MAX`] tasks.
fn check_waitable(settings: &Settings, args: &EnqueueArgs) -> Result<()> {
    if settings.is_broadcast(&args.task) {
        return Err(Error::InvalidInput(format!(
            "--wait: `{}` is a broadcast type, run by every worker, and waiting for one answer \
             from each is not supported yet; enqueue it without --wait",
            args.task
        )));
    }
    if args.count.is_some_and(|n| n > WAIT_COUNT_MAX) {
        return Err(Error::InvalidInput(format!(
            "--wait holds every answer in memory: at most --count {WAIT_COUNT_MAX}"
        )));
    }
    Ok(())
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

/// Prints what `--wait` learnt. One task: the result alone on stdout (exit 0), or why it
/// is dead on stderr (exit 1), or that no answer came in time (exit 124). With --count, one
/// line per task on stdout, `ID<TAB>RESULT`, `ID<TAB>dead (REASON): ERROR` or
/// `ID<TAB>no answer`; exit 1 when any is dead, else 124 when any timed out.
fn print_answers(
    results: Vec<Result<(String, Answer)>>,
    many: bool,
    out: &mut dyn Write,
) -> Result<ExitCode> {
    let (mut dead, mut late) = (false, false);
    for result in results {
        let line = match result {
            Ok((id, Answer::Succeeded(value))) => {
                let value = String::from_utf8_lossy(&value);
                if many {
                    // One line per task: JSON keeps newlines only as whitespace between tokens
                    // (inside strings they are escaped), so they can become spaces.
                    format!("{id}\t{}", value.trim_end().replace(['\n', '\r'], " "))
                } else {
                    value.trim_end().to_string()
                }
            }
            Ok((
                id,
                Answer::Dead {
                    reason,
                    error,
                    attempts,
                    task: step,
                },
            )) => {
                dead = true;
                let runs = attempts.map_or_else(String::new, |n| format!(" after {n} run(s)"));
                let at = step.map_or_else(String::new, |s| format!(" at `{s}`"));
                let why = format!("dead ({reason}){at}{runs}: {error}");
                if !many {
                    eprintln!("error: task {id} is {why}");
                    continue;
                }
                format!("{id}\t{why}")
            }
            Err(Error::Wait(WaitFailure::TimedOut { task, id, after })) => {
                late = true;
                if !many {
                    eprintln!(
                        "error: no answer for `{task}` task {id} within {after}; the task may \
                         still run (wait longer with a larger --wait)"
                    );
                    continue;
                }
                format!("{id}\tno answer")
            }
            Err(e) if many => {
                dead = true;
                eprintln!("error: {}", hints::explained(&e));
                continue;
            }
            Err(e) => return Err(e),
        };
        writeln!(out, "{line}").map_err(write_err)?;
    }
    Ok(match (dead, late) {
        (true, _) => ExitCode::from(1),
        (false, true) => ExitCode::from(EXIT_TIMED_OUT),
        (false, false) => ExitCode::SUCCESS,
    })
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
                        progress.println(&format!("error: {}", hints::explained(&e)));
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
        let chunk = read_chunk(&mut lines, args, &options)?;
        bad += chunk.bad;
        let results = producer.enqueue_many_raw(chunk.items).await;
        for (n, result) in chunk.numbers.into_iter().zip(results) {
            match result {
                Ok(id) => {
                    ok += 1;
                    writeln!(out, "{n}\t{id}").map_err(write_err)?;
                }
                Err(e) => {
                    bad += 1;
                    eprintln!("error: line {n} NOT enqueued: {}", hints::explained(&e));
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

/// Up to [`CHUNK`] stdin lines parsed into tasks, with their line numbers; bad lines are
/// reported on stderr and counted.
struct Chunk {
    numbers: Vec<usize>,
    items: Vec<(String, Result<Vec<u8>>, EnqueueOptions)>,
    bad: u64,
}

fn read_chunk(
    lines: &mut impl Iterator<Item = (usize, std::io::Result<String>)>,
    args: &EnqueueArgs,
    options: &EnqueueOptions,
) -> Result<Chunk> {
    let mut chunk = Chunk {
        numbers: Vec::new(),
        items: Vec::new(),
        bad: 0,
    };
    for (i, line) in lines.take(CHUNK) {
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
                let id = args.id.as_ref().map(|id| format!("{id}-{n}"));
                let options = EnqueueOptions {
                    id,
                    ..options.clone()
                };
                chunk.numbers.push(n);
                chunk.items.push((args.task.clone(), Ok(body), options));
            }
            Err(e) => {
                chunk.bad += 1;
                eprintln!("error: {e}; line {n} NOT enqueued");
            }
        }
    }
    Ok(chunk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_insertions_deletions_and_substitutions() {
        assert_eq!(edit_distance("send_mail", "send_email"), 1);
        assert_eq!(edit_distance("resize", "resize_image"), 6);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn an_undeclared_task_is_refused_with_the_closest_name() {
        let s = Settings::from_toml("[tasks.send_email]\n[tasks.resize_image]\n").unwrap();
        let file = Path::new("topology/warren.toml");
        let err = check_declared(&s, "send_mail", Some(file))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "no task `send_mail` in topology/warren.toml; did you mean `send_email`?"
        );
        let err = check_declared(&s, "zzz", Some(file))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("declares `resize_image`, `send_email`"),
            "{err}"
        );
        check_declared(&s, "send_email", Some(file)).unwrap();
        check_declared(&Settings::default(), "anything", None).unwrap();
    }

    #[test]
    fn a_payload_must_be_json() {
        assert!(parse_payload("{\"a\":1}", "p").is_ok());
        let err = parse_payload("{a:1}", "line 3").unwrap_err().to_string();
        assert!(err.starts_with("line 3 is not valid JSON"), "{err}");
    }
}
