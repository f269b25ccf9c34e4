//! `warren enqueue --wait`: what may be waited for, and how the answers are printed and
//! turned into an exit code.

use std::io::Write;
use std::process::ExitCode;

use warren::error::WaitFailure;
use warren::wire::answer::Answer;
use warren::{Error, Result, Settings};

use super::EnqueueArgs;
use crate::hints;
use crate::write_err;

/// Most tasks `--count N --wait` waits for at once: each wait holds its answer in memory.
const WAIT_COUNT_MAX: u64 = 100_000;

/// Exit code of a wait that got no answer in time, as `timeout(1)` has it.
const EXIT_TIMED_OUT: u8 = 124;

/// `--wait` is refused, before anything is published, for a broadcast type (every worker
/// would answer) and for more than [`WAIT_COUNT_MAX`] tasks.
pub(super) fn check_waitable(settings: &Settings, args: &EnqueueArgs) -> Result<()> {
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

/// Prints what `--wait` learnt. One task: the result alone on stdout (exit 0), or why it
/// is dead or that its answer was lost on stderr (exit 1), or that no answer came in time
/// (exit 124). With --count, one
/// line per task on stdout, `ID<TAB>RESULT`, `ID<TAB>dead (REASON): ERROR`,
/// `ID<TAB>answer lost` or `ID<TAB>no answer`; exit 1 when any is dead or its answer was lost
/// (the connection it would come on died), else 124 when any timed out.
pub(super) fn print_answers(
    results: Vec<Result<(String, Answer)>>,
    many: bool,
    out: &mut dyn Write,
) -> Result<ExitCode> {
    let (mut dead, mut late, mut lost) = (false, false, false);
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
            Err(Error::Wait(WaitFailure::AnswerLost { task, id })) => {
                lost = true;
                if !many {
                    eprintln!(
                        "error: the answer to `{task}` task {id} can no longer arrive: the \
                         channel it would come back on closed (a lost connection). The task is \
                         enqueued and runs anyway; `warren dlq list {task}` shows it if it \
                         goes dead"
                    );
                    continue;
                }
                format!("{id}\tanswer lost")
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
    Ok(match (dead || lost, late) {
        (true, _) => ExitCode::from(1),
        (false, true) => ExitCode::from(EXIT_TIMED_OUT),
        (false, false) => ExitCode::SUCCESS,
    })
}
