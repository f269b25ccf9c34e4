//! `exec` handlers: a task type whose handler is a program, for `warren worker`.
//!
//! Contract: the payload JSON on stdin; environment `WARREN_TASK`, `WARREN_TASK_ID`,
//! `WARREN_ATTEMPT`, `WARREN_MAX_ATTEMPTS`, `WARREN_CORRELATION_ID`; exit 0 = success,
//! 65 (EX_DATAERR) = permanent failure, any other exit, a signal or the time limit =
//! retryable failure. The tail of stderr becomes the recorded error.
//!
//! The program runs in the topology file's directory, and a relative program path resolves
//! from there, so the same file works whatever directory the worker starts in. Whether the
//! program can run is checked when the worker starts ([`ExecHandler::new`]): a worker that
//! cannot run a handler refuses to start rather than burn every task's attempts.
//!
//! stdin is fed while stdout and stderr are drained, all at once: a program that writes a
//! pipe's worth of output before it reads its input would otherwise wait for us forever.
//! Of each output only a bounded tail is kept; the rest is read and dropped.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use warren::worker::HandlerFuture;
use warren::{Error, Result, TaskContext, TaskError};

/// Exit code that marks a permanent failure (sysexits' EX_DATAERR).
pub const EXIT_PERMANENT: i32 = 65;

/// Bytes of stderr kept: the recorded error of a failed run, debug log lines of a good one.
const STDERR_TAIL: usize = 2048;

/// Bytes of stdout kept when no caller waits for the result (logged at debug).
const STDOUT_TAIL: usize = 2048;

/// Script extensions whose first argument is checked at start: `["sh", "handlers/x.sh"]`
/// fails on the script, not on `sh`, and is the common way to name a handler.
const SCRIPT_EXTENSIONS: &[&str] = &["sh", "bash", "py", "rb", "pl", "js", "php"];

/// One task type's program, resolved and checked.
#[derive(Debug, Clone)]
pub(crate) struct ExecHandler {
    program: PathBuf,
    args: Vec<String>,
    workdir: PathBuf,
    /// Largest stdout sent as the result to a waiting caller (`max_payload_bytes`).
    result_limit: usize,
    /// The broker URL handed to the program as `WARREN_AMQP_URL`, when its type asks for it
    /// (`exec_broker_url = true`); otherwise the program gets no broker credentials at all.
    broker_url: Option<String>,
}

/// Variables of the worker's own environment that carry credentials (the AMQP URL and a
/// management URL may hold passwords): never inherited by an `exec` program.
const CREDENTIAL_VARS: [&str; 2] = ["WARREN_AMQP_URL", "WARREN_MANAGEMENT_URL"];

impl ExecHandler {
    /// The handler of task type `task` running `argv` in `workdir`.
    ///
    /// # Errors
    /// [`Error::Config`] naming the task and the path when the program (or the script an
    /// interpreter is given) does not exist or cannot be executed.
    pub(crate) fn new(task: &str, argv: &[String], workdir: &Path) -> Result<ExecHandler> {
        let refuse = |what: String| {
            Error::Config(format!(
                "[tasks.{task}] exec: {what}; relative paths resolve from the topology file's \
                 directory `{}`",
                workdir.display()
            ))
        };
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| refuse("the command is empty".into()))?;
        let program = resolve_program(program, workdir).map_err(refuse)?;
        if let Some(script) = args.first().filter(|a| is_script(a)) {
            let path = workdir.join(script);
            if !path.is_file() {
                return Err(refuse(format!(
                    "script `{}` does not exist",
                    path.display()
                )));
            }
        }
        Ok(ExecHandler {
            program,
            args: args.to_vec(),
            workdir: workdir.to_path_buf(),
            result_limit: warren::config::MAX_PAYLOAD_BYTES_DEFAULT,
            broker_url: None,
        })
    }

    /// Hands the program `url` as `WARREN_AMQP_URL` (the type set `exec_broker_url`).
    pub(crate) fn broker_url(mut self, url: Option<String>) -> ExecHandler {
        self.broker_url = url;
        self
    }

    /// The largest stdout a waiting caller is sent; a longer one fails the task for good.
    pub(crate) fn result_limit(mut self, bytes: usize) -> ExecHandler {
        self.result_limit = bytes;
        self
    }

    /// The handler function for `Worker::handle_json`.
    pub(crate) fn into_handler(
        self,
    ) -> impl Fn(Vec<u8>, TaskContext) -> HandlerFuture + Send + Sync + 'static {
        move |body, ctx| {
            let this = self.clone();
            Box::pin(async move { this.run(body, &ctx).await })
        }
    }

    async fn run(
        &self,
        body: Vec<u8>,
        ctx: &TaskContext,
    ) -> std::result::Result<Option<Vec<u8>>, TaskError> {
        let shown = self.program.display().to_string();
        let mut child = self
            .command(ctx)
            .spawn()
            .map_err(|e| TaskError::retry(format!("cannot start `{shown}`: {e}")))?;
        // Whatever way the run ends early (a cancel, the time limit, the worker's hard stop),
        // the program's whole process group is killed, the processes it started included.
        let group = ProcessGroup(child.id().and_then(|p| i32::try_from(p).ok()));
        let (stdin, stdout, stderr) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let feed = async move {
            if let Some(mut stdin) = stdin {
                // A program that exits without reading its input is not an error of ours.
                let _ = stdin.write_all(&body).await;
            } // dropped here: the program sees the end of its input
        };
        // A waiting caller gets stdout as the result: read it from its start, up to the
        // limit; else only its tail is kept, for the debug log.
        let keep = ctx.awaited.then_some(self.result_limit);
        let finished = async {
            let ((), out, err) = tokio::join!(
                feed,
                read_stdout(stdout, keep),
                read_tail(stderr, STDERR_TAIL)
            );
            (child.wait().await, out, err)
        };
        tokio::pin!(finished);
        let (status, out, err) = tokio::select! {
            r = &mut finished => r,
            _ = ctx.cancel.cancelled() => {
                // Stopped (a cancel, or the worker's grace period over): SIGTERM to the
                // group, a moment to exit, then the guard's SIGKILL.
                group.signal(libc::SIGTERM);
                let _ = tokio::time::timeout(STOP_GRACE, &mut finished).await;
                return Err(TaskError::retry("stopped: the program got SIGTERM (then SIGKILL if still running)"));
            }
        };
        // Ended by itself: what it left running in its group is its own business.
        group.forget();
        let status =
            status.map_err(|e| TaskError::retry(format!("waiting for `{shown}` failed: {e}")))?;
        let (out, total) = out;
        // The debug log gets the tail only, however long a result is.
        outcome(status, &out[out.len().saturating_sub(STDOUT_TAIL)..], &err)?;
        let Some(limit) = keep else { return Ok(None) };
        if total > limit {
            return Err(TaskError::permanent(format!(
                "its stdout, the result a caller waits for, is {total} bytes, over \
                 max_payload_bytes ({limit}); print an id or a location instead of the data"
            )));
        }
        Ok(result_json(out))
    }

    fn command(&self, ctx: &TaskContext) -> Command {
        let mut cmd = Command::new(&self.program);
        for var in CREDENTIAL_VARS {
            cmd.env_remove(var);
        }
        if let Some(url) = &self.broker_url {
            cmd.env("WARREN_AMQP_URL", url);
        }
        cmd.args(&self.args)
            .current_dir(&self.workdir)
            .env("WARREN_TASK", &ctx.task)
            .env("WARREN_TASK_ID", &ctx.id)
            .env("WARREN_ATTEMPT", ctx.attempt.to_string())
            .env("WARREN_MAX_ATTEMPTS", ctx.max_attempts.to_string())
            .env(
                "WARREN_CORRELATION_ID",
                ctx.correlation_id.as_deref().unwrap_or(""),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // The time limit drops the run's future; the program must not outlive it.
            .kill_on_drop(true)
            // A group of its own, led by the program: a stop reaches the processes it started
            // (`sh -c "a; b"`), and a Ctrl-C at the worker's terminal reaches only the worker,
            // which then lets the program finish within its grace period.
            .process_group(0);
        die_with_worker(&mut cmd);
        cmd
    }
}

/// The process group an exec program leads; SIGKILLed when dropped unless forgotten.
struct ProcessGroup(Option<i32>);

impl ProcessGroup {
    fn signal(&self, signal: i32) {
        if let Some(pgid) = self.0 {
            // SAFETY: `kill` has no memory effects. The group is our child's, which is not
            // reaped while this guard lives (the run holds it until the wait ends).
            unsafe { libc::kill(-pgid, signal) };
        }
    }

    fn forget(mut self) {
        self.0 = None;
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
    }
}

/// How long a stopped program has between SIGTERM and SIGKILL: under the second the worker
/// gives a stopped handler, so the program's own cleanup can finish inside it.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// Makes the kernel kill the program when the worker dies, kill -9 included (Linux
/// `PR_SET_PDEATHSIG`): otherwise it runs on as an orphan while the broker hands its task to
/// another worker, two runs of one task at once. The signal follows the death of the thread
/// that spawned it; tokio's runtime threads live as long as the worker. It reaches the
/// program only: processes the program starts itself outlive a `kill -9` of the worker (a
/// stop of the run, by contrast, signals the program's whole process group).
/// The price: with a `pre_exec` hook std forks instead of using `posix_spawn`, which costs more
/// the larger the worker's memory; next to a program's own start-up it is small.
#[cfg(target_os = "linux")]
fn die_with_worker(cmd: &mut Command) {
    // SAFETY: `getpid` before the fork; between fork and exec only async-signal-safe calls
    // (`prctl`, `getppid`, `kill`), no allocation.
    let worker = unsafe { libc::getpid() };
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The worker may have died between the fork and the prctl.
            if libc::getppid() != worker {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_worker(_cmd: &mut Command) {}

/// The run's result from the exit status; a good run's output goes to the debug log.
fn outcome(
    status: std::process::ExitStatus,
    out: &[u8],
    err: &[u8],
) -> std::result::Result<(), TaskError> {
    let tail = String::from_utf8_lossy(err).trim().to_string();
    match status.code() {
        Some(0) => {
            for (stream, bytes) in [("stdout", out), ("stderr", err)] {
                for line in String::from_utf8_lossy(bytes).lines() {
                    // Inside the task's span, which names the task and its id.
                    tracing::debug!(target: "warren::exec", stream, "{line}");
                }
            }
            Ok(())
        }
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

/// A program's stdout as the JSON result: as printed when it is JSON; an empty one is `null`
/// (like a handler that returns nothing); any other text becomes a JSON string, without its
/// trailing newline, so `echo done` answers `"done"`.
fn result_json(out: Vec<u8>) -> Option<Vec<u8>> {
    if out.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    if serde_json::from_slice::<serde::de::IgnoredAny>(&out).is_ok() {
        return Some(out);
    }
    let text = String::from_utf8_lossy(&out);
    serde_json::to_vec(text.trim_end_matches(['\n', '\r'])).ok()
}

/// Reads stdout to its end: with `Some(limit)`, its first `limit + 1` bytes at most (the
/// result a caller waits for); else its last [`STDOUT_TAIL`] bytes. Also returns how many
/// bytes it had.
async fn read_stdout(
    pipe: Option<impl AsyncRead + Unpin>,
    keep: Option<usize>,
) -> (Vec<u8>, usize) {
    let Some(limit) = keep else {
        let tail = read_tail(pipe, STDOUT_TAIL).await;
        let n = tail.len();
        return (tail, n);
    };
    let Some(mut pipe) = pipe else {
        return (Vec::new(), 0);
    };
    let (mut head, mut total) = (Vec::new(), 0usize);
    let mut buf = vec![0u8; 8192];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                total += n;
                let room = (limit + 1).saturating_sub(head.len());
                head.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    (head, total)
}

/// Reads `pipe` to its end, keeping only its last `keep` bytes: memory stays within
/// `2 × keep` plus one read buffer however much the program writes.
async fn read_tail(pipe: Option<impl AsyncRead + Unpin>, keep: usize) -> Vec<u8> {
    let Some(mut pipe) = pipe else {
        return Vec::new();
    };
    let mut tail = Vec::with_capacity(2 * keep);
    let mut buf = vec![0u8; 8192];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > 2 * keep {
                    tail.drain(..tail.len() - keep);
                }
            }
        }
    }
    let start = tail.len().saturating_sub(keep);
    tail.split_off(start)
}

/// `program` as a path to run: relative paths with a `/` against `workdir`, bare names
/// through `PATH`; an error saying why it cannot run.
fn resolve_program(program: &str, workdir: &Path) -> std::result::Result<PathBuf, String> {
    if program.contains('/') {
        let path = workdir.join(program);
        return match executable(&path) {
            Ok(()) => Ok(path),
            Err(why) => Err(format!("program `{}` {why}", path.display())),
        };
    }
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path_var)
        .map(|dir| dir.join(program))
        .find(|candidate| executable(candidate).is_ok())
        .ok_or_else(|| format!("program `{program}` is not on PATH"))
}

/// Whether `path` is a file someone may execute.
fn executable(path: &Path) -> std::result::Result<(), &'static str> {
    match std::fs::metadata(path) {
        Err(_) => Err("does not exist"),
        Ok(m) if !m.is_file() => Err("is not a file"),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => {
            Err("is not executable (chmod +x it, or name its interpreter first)")
        }
        Ok(_) => Ok(()),
    }
}

/// True for an argument that names a script file (by its extension) rather than a flag.
fn is_script(arg: &str) -> bool {
    !arg.starts_with('-')
        && Path::new(arg)
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| SCRIPT_EXTENSIONS.contains(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn stdout_is_the_result_as_json() {
        assert_eq!(
            result_json(b"{\"a\": 1}\n".to_vec()).unwrap(),
            b"{\"a\": 1}\n"
        );
        assert_eq!(result_json(b"done\n".to_vec()).unwrap(), b"\"done\"");
        assert_eq!(result_json(b" \n".to_vec()), None);
        assert_eq!(result_json(b"a\"b\n".to_vec()).unwrap(), br#""a\"b""#);
    }

    #[test]
    fn a_bare_program_name_is_found_on_path() {
        let h = ExecHandler::new("t", &argv(&["sh", "-c", "true"]), Path::new("/")).unwrap();
        assert!(
            h.program.is_absolute() && h.program.ends_with("sh"),
            "{h:?}"
        );
    }

    #[test]
    fn missing_programs_and_scripts_are_refused_naming_the_task_and_path() {
        let dir = std::env::temp_dir();
        let err = ExecHandler::new("mail", &argv(&["handlers/nope.sh"]), &dir)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("[tasks.mail]") && err.contains("handlers/nope.sh"),
            "{err}"
        );
        assert!(err.contains("does not exist"), "{err}");
        let err = ExecHandler::new("mail", &argv(&["sh", "handlers/nope.sh"]), &dir)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("script") && err.contains("handlers/nope.sh"),
            "{err}"
        );
        let err = ExecHandler::new("mail", &argv(&["no-such-program-xyz"]), &dir)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not on PATH"), "{err}");
        assert!(ExecHandler::new("mail", &[], &dir).is_err());
    }

    #[test]
    fn a_file_without_the_execute_bit_is_refused() {
        let path = std::env::temp_dir().join(format!("warren-exec-{}.sh", std::process::id()));
        std::fs::write(&path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = resolve_program(path.to_str().unwrap(), Path::new("/")).unwrap_err();
        assert!(err.contains("not executable"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(resolve_program(path.to_str().unwrap(), Path::new("/")).is_ok());
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn flags_and_inline_code_are_not_taken_for_scripts() {
        assert!(is_script("handlers/send_email.sh") && is_script("resize.py"));
        assert!(!is_script("-c") && !is_script("cat >/dev/null") && !is_script("--x.sh"));
    }

    #[tokio::test]
    async fn only_the_tail_of_a_long_output_is_kept() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let tail = read_tail(Some(&data[..]), 2048).await;
        assert_eq!(tail, data[data.len() - 2048..]);
        assert!(read_tail(Some(&b"short"[..]), 2048).await == b"short");
    }
}
