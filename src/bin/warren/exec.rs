//! `exec` handlers: a task type whose handler is a program, for `warren worker`.
//!
//! Contract: the payload JSON on stdin; environment `WARREN_TASK`, `WARREN_TASK_ID`,
//! `WARREN_ATTEMPT`, `WARREN_MAX_ATTEMPTS`, `WARREN_CORRELATION_ID`; exit 0 = success,
//! 65 (EX_DATAERR) = permanent failure, any other exit, a signal or the time limit =
//! retryable failure. The tail of stderr becomes the recorded error.

use std::process::Stdio;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use warren::TaskContext;
use warren::TaskError;
use warren::worker::HandlerFuture;

/// Exit code that marks a permanent failure (sysexits' EX_DATAERR).
pub const EXIT_PERMANENT: i32 = 65;

/// Bytes of stderr kept as the error text.
const STDERR_TAIL: usize = 2048;

/// A handler that runs `argv` for each task.
pub fn handler(
    argv: Vec<String>,
) -> impl Fn(Vec<u8>, TaskContext) -> HandlerFuture + Send + Sync + 'static {
    move |body, ctx| {
        let argv = argv.clone();
        Box::pin(async move { run(&argv, body, &ctx).await })
    }
}

async fn run(argv: &[String], body: Vec<u8>, ctx: &TaskContext) -> Result<(), TaskError> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| TaskError::permanent("exec is empty"))?;
    let mut child = Command::new(program)
        .args(args)
        .env("WARREN_TASK", &ctx.task)
        .env("WARREN_TASK_ID", &ctx.id)
        .env("WARREN_ATTEMPT", ctx.attempt.to_string())
        .env("WARREN_MAX_ATTEMPTS", ctx.max_attempts.to_string())
        .env(
            "WARREN_CORRELATION_ID",
            ctx.correlation_id.as_deref().unwrap_or(""),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // The time limit drops this future; the program must not outlive it.
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| TaskError::retry(format!("cannot start `{program}`: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A program that exits without reading its input is not an error of ours.
        let _ = stdin.write_all(&body).await;
    }
    let mut stderr = child.stderr.take();
    let read_stderr = async {
        let mut buf = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.read_to_end(&mut buf).await;
        }
        buf
    };
    let (status, err) = tokio::select! {
        _ = ctx.cancel.cancelled() => return Err(TaskError::retry("worker stopping; program killed")),
        r = async { let buf = read_stderr.await; (child.wait().await, buf) } => r,
    };
    let status =
        status.map_err(|e| TaskError::retry(format!("waiting for `{program}` failed: {e}")))?;
    let tail = tail(&err);
    match status.code() {
        Some(0) => Ok(()),
        Some(EXIT_PERMANENT) => Err(TaskError::permanent(format!(
            "exit code {EXIT_PERMANENT}: {tail}"
        ))),
        Some(code) => Err(TaskError::retry(format!("exit code {code}: {tail}"))),
        None => {
            use std::os::unix::process::ExitStatusExt;
            Err(TaskError::retry(format!(
                "killed by signal {}: {tail}",
                status.signal().unwrap_or(0)
            )))
        }
    }
}

fn tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(STDERR_TAIL);
    String::from_utf8_lossy(&bytes[start..]).trim().to_string()
}
