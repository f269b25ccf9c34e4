//! Credentials stay out of output; a least-privilege user can run a namespace.

use std::time::{Duration, Instant};

use warren::ops::management::enc;

use crate::support::{TempFile, TestBroker, stderr, stdout, warren_bin};

const PASSWORD: &str = "pw-Zq81-never-print-me";

/// A user with `PASSWORD`, granted `configure`/`write`/`read` patterns on the test vhost.
struct User {
    name: String,
    broker_mgmt: warren::ops::management::Management,
}

impl User {
    fn new(broker: &TestBroker, configure: &str, write: &str, read: &str) -> User {
        let name = format!("{}-user", broker.vhost);
        broker
            .mgmt
            .put(
                &format!("users/{}", enc(&name)),
                &serde_json::json!({"password": PASSWORD, "tags": ""}),
            )
            .unwrap();
        broker
            .mgmt
            .put(
                &format!("permissions/{}/{}", enc(&broker.vhost), enc(&name)),
                &serde_json::json!({"configure": configure, "write": write, "read": read}),
            )
            .unwrap();
        User {
            name,
            broker_mgmt: broker.mgmt.clone(),
        }
    }

    fn url(&self, broker: &TestBroker) -> String {
        format!(
            "amqp://{}:{PASSWORD}@127.0.0.1:5672/{}",
            self.name,
            enc(&broker.vhost)
        )
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let _ = self
            .broker_mgmt
            .delete(&format!("users/{}", enc(&self.name)));
    }
}

fn run(url: &str, topology: &str, args: &[&str], log: &str) -> std::process::Output {
    warren_bin()
        .env("WARREN_AMQP_URL", url)
        .env("WARREN_NAMESPACE", "t")
        .env("WARREN_TOPOLOGY", topology)
        .env("RUST_LOG", log)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn the_password_never_appears_in_output_logs_or_errors() {
    let broker = TestBroker::new();
    let user = User::new(&broker, ".*", ".*", ".*");
    // `status` and `dlq` read the management API, which needs a tag.
    broker
        .mgmt
        .put(
            &format!("users/{}", enc(&user.name)),
            &serde_json::json!({"password": PASSWORD, "tags": "monitoring"}),
        )
        .unwrap();
    let url = user.url(&broker);
    let topo =
        TempFile::with("max_delay = \"1h\"\n[tasks.job]\nexec = [\"sh\", \"-c\", \"exit 65\"]\n");
    let mut outputs = Vec::new();
    for log in ["info", "debug,lapin=debug"] {
        // (args, URL, the exit code each must end with: the checks below are only worth
        // something if each command did what it was run for)
        let missing_vhost = url.replace(&enc(&broker.vhost), "missing-vhost");
        let wrong_scheme = url.replace("amqp://", "http://");
        let closed_port = url.replace(":5672/", ":1/");
        let runs: [(&[&str], &str, i32); 8] = [
            (&["topology", "apply"], &url, 0),
            (&["enqueue", "job", "--payload", "{}"], &url, 0),
            (&["status"], &url, 0),
            (&["status", "--json"], &url, 0),
            (&["dlq", "list", "job"], &url, 0),
            // failures: an unknown vhost, a wrong scheme, an unreachable port
            (&["topology", "apply"], &missing_vhost, 1),
            (&["topology", "apply"], &wrong_scheme, 2),
            (
                &["--connect-timeout", "1s", "topology", "apply"],
                &closed_port,
                1,
            ),
        ];
        for (args, url, code) in runs {
            let o = run(url, topo.as_str(), args, log);
            assert_eq!(o.status.code(), Some(code), "{args:?}: {}", stderr(&o));
            outputs.push(o);
        }
    }
    // and a worker that runs (and dead-letters) the task, then stops on SIGTERM
    let mut worker = warren_bin()
        .env("WARREN_AMQP_URL", &url)
        .env("WARREN_NAMESPACE", "t")
        .env("WARREN_TOPOLOGY", topo.as_str())
        .env("RUST_LOG", "debug")
        .arg("worker")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while worker.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "worker did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
    let stopped = worker.wait_with_output().unwrap();
    assert!(stopped.status.success(), "{}", stderr(&stopped));
    outputs.push(stopped);
    let mut checked = 0;
    for o in &outputs {
        let text = format!("{}{}", stdout(o), stderr(o));
        assert!(!text.contains(PASSWORD), "password leaked in: {text}");
        checked += text.len();
    }
    assert!(checked > 1000, "the runs produced output to check");
    assert!(
        outputs.iter().any(|o| stderr(o).contains(":***@")),
        "errors show the redacted URL"
    );
}

#[test]
fn a_user_limited_to_the_namespace_can_apply_enqueue_and_work() {
    // configure/write/read only on `t.*` objects: the least a namespace `t` needs.
    let broker = TestBroker::new();
    let user = User::new(&broker, "^t\\.", "^t\\.", "^t\\.");
    let url = user.url(&broker);
    let log = TempFile::path("ran");
    // Every kind of queue Warren declares: work, dead, the ladder, limit tokens (running and
    // starts), the pause records, the control stream, a schedule record and a unique key.
    let topo = TempFile::with(&format!(
        "max_delay = \"1h\"\n[tasks.job]\nexec = [\"sh\", \"-c\", \"echo $WARREN_TASK_ID >> {}\"]\n\
         concurrency_limit = 4\nrate_limit = \"1000/s\"\n\
         [schedules.tick]\ntask = \"job\"\nevery = \"1h\"\n",
        log.as_str()
    ));
    let apply = run(&url, topo.as_str(), &["topology", "apply"], "warn");
    assert!(apply.status.success(), "{}", stderr(&apply));
    let enq = run(
        &url,
        topo.as_str(),
        &["enqueue", "job", "--count", "19", "--delay", "1s"],
        "warn",
    );
    assert!(enq.status.success(), "{}", stderr(&enq));
    let unique = run(
        &url,
        topo.as_str(),
        &["enqueue", "job", "--unique", "k-1"],
        "warn",
    );
    assert!(unique.status.success(), "a unique key: {}", stderr(&unique));
    let paused = run(&url, topo.as_str(), &["pause", "job"], "warn");
    assert!(paused.status.success(), "pause: {}", stderr(&paused));
    let resumed = run(&url, topo.as_str(), &["resume", "job"], "warn");
    assert!(resumed.status.success(), "resume: {}", stderr(&resumed));
    let mut worker = warren_bin()
        .env("WARREN_AMQP_URL", &url)
        .env("WARREN_NAMESPACE", "t")
        .env("WARREN_TOPOLOGY", topo.as_str())
        .arg("worker")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(crate::support::Reaped::new)
        .unwrap();
    // (A caller waiting for the answer needs more: see
    // `a_waiting_caller_needs_write_on_amq_default_and_a_worker_refused_it_goes_on`.)
    let deadline = Instant::now() + Duration::from_secs(20);
    while log.lines().len() < 20 {
        assert!(
            Instant::now() < deadline,
            "only {} of 20 ran",
            log.lines().len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // the scheduler takes its lease and writes its record as this user too
    let mut scheduler = warren_bin()
        .env("WARREN_AMQP_URL", &url)
        .env("WARREN_NAMESPACE", "t")
        .env("WARREN_TOPOLOGY", topo.as_str())
        .arg("scheduler")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(crate::support::Reaped::new)
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        scheduler.try_wait().unwrap().is_none(),
        "the scheduler runs as the namespace's user"
    );
    scheduler.signal("TERM");
    assert!(scheduler.wait_within(Duration::from_secs(60)).success());
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status();
    assert!(worker.wait_within(Duration::from_secs(60)).success());
    // and outside the namespace it may not declare anything
    let other = run(
        &url,
        topo.as_str(),
        &["--namespace", "other", "topology", "apply"],
        "warn",
    );
    assert_eq!(other.status.code(), Some(1));
    assert!(
        stderr(&other).contains("ACCESS_REFUSED"),
        "{}",
        stderr(&other)
    );
}

#[test]
fn a_worker_refused_its_own_broadcast_queue_stops_at_start_and_says_why() {
    // Rights on every topology name of `t`, but not on names holding `@` (workers' own
    // queues of broadcast types).
    let broker = TestBroker::new();
    let user = User::new(&broker, "^t\\.[^@]*$", "^t\\.[^@]*$", "^t\\.[^@]*$");
    let url = user.url(&broker);
    let topo = TempFile::with(
        "[tasks.reload]\nbroadcast = true\nexec = [\"true\"]\n[tasks.job]\nexec = [\"true\"]\n",
    );
    let apply = run(&url, topo.as_str(), &["topology", "apply"], "warn");
    assert!(apply.status.success(), "{}", stderr(&apply));
    // Spawned, not `output()`: a worker that kept retrying would hang the test instead of
    // failing it.
    let log = TempFile::path("refused");
    let child = warren_bin()
        .env("WARREN_AMQP_URL", &url)
        .env("WARREN_NAMESPACE", "t")
        .env("WARREN_TOPOLOGY", topo.as_str())
        .env("RUST_LOG", "warn")
        .arg("worker")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log.0).unwrap())
        .spawn()
        .unwrap();
    let mut worker = crate::support::Reaped(child, Some(log));
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = worker.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the worker kept running: {}",
            worker.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let err = worker.log();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("t.reload@") && err.contains("ACCESS_REFUSED") && err.contains("broadcast"),
        "{err}"
    );
}

#[test]
fn exec_programs_get_no_broker_credentials_unless_their_type_asks() {
    // Given two exec types that write their whole environment to a file: `plain`, and
    // `talker`, which sets exec_broker_url = true; the worker has the URL (with its
    // password) and a management URL with one in its own environment
    let broker = TestBroker::new();
    let user = User::new(&broker, ".*", ".*", ".*");
    let url = user.url(&broker);
    let (plain_env, talker_env) = (TempFile::path("env"), TempFile::path("env"));
    let topo = TempFile::with(&format!(
        "max_delay = \"1h\"\n[tasks.plain]\nexec = [\"sh\", \"-c\", \"env > {}\"]\n\
         [tasks.talker]\nexec = [\"sh\", \"-c\", \"env > {}\"]\nexec_broker_url = true\n",
        plain_env.as_str(),
        talker_env.as_str()
    ));
    let apply = run(&url, topo.as_str(), &["topology", "apply"], "warn");
    assert!(apply.status.success(), "{}", stderr(&apply));
    for task in ["plain", "talker"] {
        let enq = run(
            &url,
            topo.as_str(),
            &["enqueue", task, "--payload", "{}"],
            "warn",
        );
        assert!(enq.status.success(), "{}", stderr(&enq));
    }
    let mut worker = warren_bin()
        .env("WARREN_AMQP_URL", &url)
        .env(
            "WARREN_MANAGEMENT_URL",
            format!("http://{}:{PASSWORD}@127.0.0.1:15672", user.name),
        )
        .env("WARREN_NAMESPACE", "t")
        .env("WARREN_TOPOLOGY", topo.as_str())
        .arg("worker")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(crate::support::Reaped::new)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while plain_env.lines().is_empty() || talker_env.lines().is_empty() {
        assert!(Instant::now() < deadline, "both programs ran within 20 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    worker.signal("TERM");
    assert!(worker.wait_within(Duration::from_secs(60)).success());
    // Then the plain program saw its task's variables and no credential
    let plain = plain_env.lines().join("\n");
    assert!(plain.contains("WARREN_TASK=plain"), "{plain}");
    assert!(
        !plain.contains(PASSWORD),
        "a credential reached `plain`: {plain}"
    );
    assert!(!plain.contains("WARREN_AMQP_URL"), "{plain}");
    assert!(!plain.contains("WARREN_MANAGEMENT_URL"), "{plain}");
    // and the type that asked got the AMQP URL, but still not the management one
    let talker = talker_env.lines().join("\n");
    assert!(
        talker.contains(&format!("WARREN_AMQP_URL={url}")),
        "{talker}"
    );
    assert!(!talker.contains("WARREN_MANAGEMENT_URL"), "{talker}");
}

#[test]
fn a_waiting_caller_needs_write_on_amq_default_and_a_worker_refused_it_goes_on() {
    // Answers to a waiting caller travel over direct reply-to, which RabbitMQ routes through
    // the default exchange (docs/deploying.md). Given a namespace user without write on
    // `amq.default`, a worker, and a caller that waits
    let broker = TestBroker::new();
    let user = User::new(&broker, "^t\\.", "^t\\.", "^t\\.");
    let url = user.url(&broker);
    let log = TempFile::path("answered");
    let topo = TempFile::with(&format!(
        "[tasks.job]\nexec = [\"sh\", \"-c\", \"echo $WARREN_TASK_ID >> {}; echo 42\"]\n",
        log.as_str()
    ));
    let apply = run(&url, topo.as_str(), &["topology", "apply"], "warn");
    assert!(apply.status.success(), "{}", stderr(&apply));
    let worker_log = TempFile::path("worker-log");
    let mut worker = warren_bin()
        .env("WARREN_AMQP_URL", &url)
        .env("WARREN_NAMESPACE", "t")
        .env("WARREN_TOPOLOGY", topo.as_str())
        .arg("worker")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(worker_log.as_str()).unwrap())
        .spawn()
        .map(crate::support::Reaped::new)
        .unwrap();
    // Then the task runs, the answer cannot be sent, and the caller waits to its timeout
    let refused = run(
        &url,
        topo.as_str(),
        &["enqueue", "job", "--wait", "4s"],
        "warn",
    );
    assert_eq!(refused.status.code(), Some(124), "{}", stderr(&refused));
    assert_eq!(log.lines().len(), 1, "the task ran once");
    // and the worker says why, naming the permission, and goes on working
    let said = std::fs::read_to_string(worker_log.as_str()).unwrap();
    assert!(
        said.contains("could not answer") && said.contains("write on `amq.default`"),
        "{said}"
    );
    let next = run(&url, topo.as_str(), &["enqueue", "job"], "warn");
    assert!(next.status.success(), "{}", stderr(&next));
    let deadline = Instant::now() + Duration::from_secs(20);
    while log.lines().len() < 2 {
        assert!(Instant::now() < deadline, "the worker stopped working");
        std::thread::sleep(Duration::from_millis(100));
    }
    // When the user may write to `amq.default` too (a running worker's channels keep the
    // rights they opened with: RabbitMQ caches them per channel, so restart it)
    broker
        .mgmt
        .put(
            &format!("permissions/{}/{}", enc(&broker.vhost), enc(&user.name)),
            &serde_json::json!({"configure": "^t\\.", "write": "^t\\.|^amq\\.default$", "read": "^t\\."}),
        )
        .unwrap();
    worker.signal("TERM");
    assert!(worker.wait_within(Duration::from_secs(60)).success());
    let mut worker = warren_bin()
        .env("WARREN_AMQP_URL", &url)
        .env("WARREN_NAMESPACE", "t")
        .env("WARREN_TOPOLOGY", topo.as_str())
        .arg("worker")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(crate::support::Reaped::new)
        .unwrap();
    // Then the caller gets its answer
    let answered = run(
        &url,
        topo.as_str(),
        &["enqueue", "job", "--wait", "20s"],
        "warn",
    );
    assert!(answered.status.success(), "{}", stderr(&answered));
    assert_eq!(stdout(&answered), "42\n");
    worker.signal("TERM");
    assert!(worker.wait_within(Duration::from_secs(60)).success());
}
