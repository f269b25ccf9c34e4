//! Test-only helpers: a fresh vhost per test, raw lapin access, the CLI binary.

#![allow(dead_code)]

use std::process::{Command, Output};
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, message::Delivery};
use warren::Settings;
use warren::ops::management::{Management, enc};

/// AMQP host:port of the shared test broker.
pub fn amqp_host() -> String {
    std::env::var("WARREN_TEST_AMQP_HOST").unwrap_or_else(|_| "127.0.0.1:5672".into())
}

/// Management API of the shared test broker.
pub fn management() -> Management {
    let base =
        std::env::var("RABBITMQ_ADMIN_URL").unwrap_or_else(|_| "http://127.0.0.1:15672".into());
    Management::new(&base, "guest", "guest")
}

static SWEEP: Once = Once::new();
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A vhost of its own for one test, deleted on drop. Tests run in parallel on one broker.
pub struct TestBroker {
    pub vhost: String,
    pub mgmt: Management,
}

impl TestBroker {
    /// Creates `it-<pid>-<n>` and grants `guest` full rights on it. Fails (never skips) with
    /// a how-to when the broker or its management API is missing.
    pub fn new() -> TestBroker {
        let mgmt = management();
        if let Err(e) = mgmt.get("overview") {
            panic!(
                "the integration tests need RabbitMQ with the management plugin on 127.0.0.1 \
                 (run scripts/broker.sh, or scripts/test.sh which calls it): {e}"
            );
        }
        SWEEP.call_once(|| sweep(&mgmt));
        let vhost = format!(
            "it-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        mgmt.put(&format!("vhosts/{}", enc(&vhost)), &serde_json::json!({}))
            .expect("create vhost");
        mgmt.put(
            &format!("permissions/{}/guest", enc(&vhost)),
            &serde_json::json!({"configure": ".*", "write": ".*", "read": ".*"}),
        )
        .expect("grant guest on vhost");
        TestBroker { vhost, mgmt }
    }

    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@{}/{}", amqp_host(), enc(&self.vhost))
    }

    /// Settings for this vhost from topology TOML (namespace `t` unless the TOML sets one).
    pub fn settings(&self, toml: &str) -> Settings {
        let mut s = Settings::from_toml(toml).expect("test topology parses");
        s.amqp_url = self.amqp_url();
        if !toml.contains("namespace") {
            s.namespace = "t".into();
        }
        s.connect_timeout = Duration::from_secs(10);
        s.validate().expect("test topology validates");
        s
    }

    /// Settings from `toml`, its topology applied in this vhost, a connection and a channel.
    pub async fn applied(&self, toml: &str) -> (Settings, Connection, Channel) {
        let settings = self.settings(toml);
        let conn = self.connect().await;
        warren::topology::apply(&settings.plan(), &conn, &self.vhost)
            .await
            .expect("apply");
        let ch = conn.create_channel().await.unwrap();
        (settings, conn, ch)
    }

    pub async fn connect(&self) -> Connection {
        Connection::connect(
            &self.amqp_url(),
            ConnectionProperties::default().with_connection_name("warren test".into()),
        )
        .await
        .expect("test connection")
    }

    /// Messages in `queue` right now (passive declare).
    pub async fn count(&self, ch: &Channel, queue: &str) -> u32 {
        warren::broker::inspect(ch, queue)
            .await
            .expect("queue exists")
            .message_count()
    }

    /// Waits until `queue` holds `want` messages (10 s at most) and fails naming the last
    /// count seen. For a quorum queue after another connection's ack, nack or channel close:
    /// the broker confirms none of those, and the queue's leader applies them a moment after
    /// the client has moved on, so a count read at once can still see the old state.
    pub async fn count_settles(&self, ch: &Channel, queue: &str, want: u32) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let seen = self.count(ch, queue).await;
            if seen == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "`{queue}` holds {seen} messages after 10 s, expected {want}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The management API's view of one queue in this vhost.
    pub fn queue_info(&self, name: &str) -> serde_json::Value {
        self.mgmt
            .queue(&self.vhost, name)
            .expect("management API")
            .unwrap_or_else(|| panic!("no queue {name}"))
    }

    /// Runs the `warren` binary against this vhost.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_with(args, &[], None)
    }

    pub fn cli_with(&self, args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Output {
        let mut cmd = warren_bin();
        cmd.env("WARREN_AMQP_URL", self.amqp_url())
            .env("WARREN_NAMESPACE", "t")
            .args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        run(cmd, stdin)
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        let _ = self.mgmt.delete(&format!("vhosts/{}", enc(&self.vhost)));
    }
}

/// Deletes `it-<pid>-*` vhosts left by test processes that no longer run.
fn sweep(mgmt: &Management) {
    let Ok(vhosts) = mgmt.get("vhosts") else {
        return;
    };
    for v in vhosts.as_array().into_iter().flatten() {
        let Some(name) = v["name"].as_str() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix("it-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = mgmt.delete(&format!("vhosts/{}", enc(name)));
        }
    }
}

/// The `warren` binary built for these tests, with a clean environment.
pub fn warren_bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_warren"));
    for (k, _) in std::env::vars() {
        if k.starts_with("WARREN_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("RUST_LOG", "warn");
    cmd
}

/// Longest a command run by [`run`] may take before the test kills it and fails: no test
/// waits on a child without a deadline (a hung command would otherwise hang CI).
pub const RUN_DEADLINE: Duration = Duration::from_secs(180);

pub fn run(mut cmd: Command, stdin: Option<&str>) -> Output {
    use std::io::{Read, Write};
    use std::process::Stdio;
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let what = format!("{cmd:?}");
    let mut child = cmd.spawn().expect("spawn warren");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(input.as_bytes()).expect("write stdin");
    }
    // Both pipes are read while the child runs, or a full pipe would block it.
    let reader = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    };
    let out = reader(Box::new(child.stdout.take().expect("stdout")));
    let err = reader(Box::new(child.stderr.take().expect("stderr")));
    let status = wait_within(&mut child, RUN_DEADLINE, &what);
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// Waits for `child` at most `within`; past that, kills it and fails the test naming `what`.
pub fn wait_within(
    child: &mut std::process::Child,
    within: Duration,
    what: &str,
) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {within:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Consumes `n` deliveries from `queue` (acking each), with the time each arrived since
/// `since`; fails the test when they do not all arrive within `within`.
pub async fn take(
    ch: &Channel,
    queue: &str,
    n: usize,
    since: Instant,
    within: Duration,
) -> Vec<(Duration, Delivery)> {
    let tag = format!("take-{}", COUNTER.fetch_add(1, Ordering::SeqCst));
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while got.len() < n {
        let next = tokio::time::timeout_at(deadline, consumer.next()).await;
        let delivery = match next {
            Ok(Some(Ok(d))) => d,
            Ok(other) => panic!("consumer on {queue} ended: {other:?}"),
            Err(_) => panic!(
                "only {} of {n} messages reached {queue} within {within:?}",
                got.len()
            ),
        };
        delivery.ack(BasicAckOptions::default()).await.expect("ack");
        got.push((since.elapsed(), delivery));
    }
    let _ = ch
        .basic_cancel(tag.as_str().into(), Default::default())
        .await;
    got
}

/// Waits until `f` returns `Some`, polling every 100 ms, or fails after `within`.
pub async fn eventually<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

static FILES: AtomicU32 = AtomicU32::new(0);

/// A file in the system temp dir, removed on drop.
pub struct TempFile(pub std::path::PathBuf);

impl TempFile {
    pub fn with(text: &str) -> TempFile {
        let f = TempFile::path("toml");
        std::fs::write(&f.0, text).unwrap();
        f
    }

    /// A fresh path (nothing written yet) with extension `ext`.
    pub fn path(ext: &str) -> TempFile {
        let n = FILES.fetch_add(1, Ordering::SeqCst);
        TempFile(std::env::temp_dir().join(format!("warren-it-{}-{n}.{ext}", std::process::id())))
    }

    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap()
    }

    /// Lines of the file (empty when it does not exist yet).
    pub fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.0)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A child process (a `warren worker`) that is killed and reaped when dropped, so a test that
/// fails before stopping it does not leave it running against the broker. Its stderr, when
/// captured, goes to a file: a pipe nobody reads fills after 64 KiB (a few hundred task lines)
/// and then blocks the worker's logging, and with it the worker.
pub struct Reaped(pub std::process::Child, pub Option<TempFile>);

impl Reaped {
    /// A child whose output the test does not read.
    pub fn new(child: std::process::Child) -> Reaped {
        Reaped(child, None)
    }

    /// Spawns `cmd` as the leader of a process group of its own, so that [`Reaped::signal`]
    /// reaches its children too (an exec handler's processes): a frozen host freezes them all.
    pub fn group(mut cmd: Command) -> Reaped {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        Reaped::new(cmd.spawn().expect("spawn"))
    }

    /// What the child wrote to stderr so far (when it was sent to a file).
    pub fn log(&self) -> String {
        self.1
            .as_ref()
            .and_then(|f| std::fs::read_to_string(&f.0).ok())
            .unwrap_or_default()
    }

    /// Sends `signal` (`STOP`, `CONT`, `TERM`, ...) to the child's process group (which is the
    /// child alone unless it was started with [`Reaped::group`]).
    pub fn signal(&self, signal: &str) {
        let pid = self.0.id().to_string();
        let status = Command::new("kill")
            .args([&format!("-{signal}"), "--", &format!("-{pid}")])
            .stderr(std::process::Stdio::null())
            .status()
            .expect("kill");
        if !status.success() {
            // Not a group leader: the process alone.
            let _ = Command::new("kill")
                .args([&format!("-{signal}"), &pid])
                .status();
        }
    }

    /// Waits for the child at most `within` (then kills it and fails the test).
    pub fn wait_within(&mut self, within: Duration) -> std::process::ExitStatus {
        let what = format!("child {}", self.0.id());
        wait_within(&mut self.0, within, &what)
    }
}

impl std::ops::Deref for Reaped {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            // The whole group (a stopped child dies of SIGKILL too), then reap.
            self.signal("KILL");
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
