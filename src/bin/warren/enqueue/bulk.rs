//! `warren enqueue --count N` and `warren enqueue TASK -`: many tasks, sent in chunks through
//! the confirm window, each confirmed id printed, with progress.

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::Instant;

use warren::{EnqueueOptions, Error, Producer, Result};

use super::{EnqueueArgs, parse_payload};
use crate::hints;
use crate::progress::Progress;
use crate::write_err;

/// Chunk size of the bulk paths: bounds memory while keeping the confirm window full.
const CHUNK: usize = 10_000;

/// Sends `items` through `enqueue_many_raw` chunk by chunk, printing each confirmed id, a
/// progress bar on a terminal (plain lines otherwise) and a closing line with the rate.
pub(super) async fn enqueue_in_chunks(
    producer: &Producer,
    task: &str,
    items: impl Iterator<Item = (String, Result<Vec<u8>>, EnqueueOptions)>,
    total: u64,
    out: &mut dyn Write,
) -> Result<ExitCode> {
    let started = Instant::now();
    let progress = Progress::new(total);
    let (mut ok, mut failed, mut n) = (0u64, 0u64, 0u64);
    let mut unheard = 0u64;
    let mut items = items.peekable();
    while items.peek().is_some() {
        let chunk: Vec<_> = items.by_ref().take(CHUNK).collect();
        for result in producer.enqueue_many_raw(chunk).await {
            n += 1;
            match result {
                Ok(id) => {
                    ok += 1;
                    writeln!(out, "{id}").map_err(write_err)?;
                }
                Err(e) => {
                    // Each one, numbered: stdout holds exactly the confirmed ids, stderr
                    // exactly the tasks that are not in the broker.
                    progress.println(&format!(
                        "error: task {n} of {total} NOT enqueued: {}",
                        hints::explained(&e)
                    ));
                    failed += 1;
                    unheard += u64::from(matches!(e, warren::Error::NoListeners { .. }));
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
    // Broadcasts nobody heard, and nothing else failed: their own code, as for one.
    Ok(match failed {
        0 => ExitCode::SUCCESS,
        _ if failed == unheard => ExitCode::from(4),
        _ => ExitCode::from(1),
    })
}

/// `warren enqueue TASK -`: one JSON payload per line. A bad line is reported with its number
/// and skipped; the others are enqueued; each enqueued line is printed as `LINE<TAB>ID`.
pub(super) async fn enqueue_lines(
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
