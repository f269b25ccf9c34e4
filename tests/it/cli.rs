//! The `warren` command: topology apply/export and its errors for bad input.

use warren::ops::management::enc;

use crate::support::{TempFile, TestBroker, stderr, stdout, warren_bin};

fn write_topology(text: &str) -> TempFile {
    TempFile::with(text)
}

#[test]
fn topology_apply_prints_what_it_declared_and_is_idempotent() {
    let broker = TestBroker::new();
    let file = write_topology("max_delay = \"1h\"\nqueue_type = \"classic\"\n[tasks.mail]\n");
    let first = broker.cli(&["--topology", file.as_str(), "topology", "apply"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let out = stdout(&first);
    assert!(out.contains("queue     t.mail  (0 messages)"), "{out}");
    assert!(out.contains("exchange  t.delay.deliver"), "{out}");
    assert!(out.contains("binding   t.tasks -[mail]-> t.mail"), "{out}");
    // 1 h = 3600 s needs levels 0..=11; plus the control exchange and stream
    assert!(out.contains(": 16 exchanges, 15 queues,"), "{out}");
    assert!(
        out.contains("binding   t.control -[events]-> t.control.events"),
        "{out}"
    );
    let second = broker.cli(&["--topology", file.as_str(), "topology", "apply"]);
    assert!(second.status.success(), "{}", stderr(&second));
    assert_eq!(broker.queue_info("t.mail")["type"], "classic");
}

#[test]
fn topology_export_is_importable_definitions_json() {
    let broker = TestBroker::new();
    let file = write_topology("max_delay = \"10s\"\n[tasks.mail]\n");
    let out = broker.cli(&["--topology", file.as_str(), "topology", "export"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let defs: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    // Importing it into the vhost creates the same queues `apply` would.
    broker
        .mgmt
        .post(
            &format!(
                "definitions/{}",
                warren::ops::management::enc(&broker.vhost)
            ),
            &defs,
        )
        .expect("the broker accepts the definitions");
    let q = broker.queue_info("t.delay.3");
    assert_eq!(q["arguments"]["x-message-ttl"], 8000);
    // and applying over the imported objects agrees with them
    let apply = broker.cli(&["--topology", file.as_str(), "topology", "apply"]);
    assert!(apply.status.success(), "{}", stderr(&apply));
}

/// Runs `warren topology apply` with a topology file and returns (exit code, stderr).
fn apply_with(broker: &TestBroker, topology: &str) -> (i32, String) {
    let file = write_topology(topology);
    let out = broker.cli(&["--topology", file.as_str(), "topology", "apply"]);
    (out.status.code().unwrap_or(-1), stderr(&out))
}

#[test]
fn bad_topology_files_are_usage_errors_that_say_what_is_wrong() {
    let broker = TestBroker::new();
    let cases: &[(&str, &[&str])] = &[
        (
            "namespace = \"a\"\n[defaults]\nmax_atempts = 3\n",
            &["max_atempts", "line 3"],
        ),
        (
            "[defaults]\ntime_limit = \"five minutes\"\n",
            &["invalid duration `five minutes`", "line 2", "90s"],
        ),
        (
            "[tasks.\"Send.Email\"]\n",
            &["task name `Send.Email`", "lowercase"],
        ),
        ("[tasks.a]\n[tasks.a]\n", &["line 2", "duplicate"]),
        (
            "queue_type = \"stream\"\n",
            &["unknown variant `stream`", "quorum", "classic"],
        ),
        ("max_delay = \"9years\"\n", &["max_delay", "268435455s"]),
    ];
    for (toml, needles) in cases {
        let (code, err) = apply_with(&broker, toml);
        assert_eq!(code, 2, "{toml:?} -> {err}");
        for n in *needles {
            assert!(err.contains(n), "{toml:?}: missing {n:?} in: {err}");
        }
        assert!(err.lines().count() <= 8, "one short paragraph, got: {err}");
    }
}

#[test]
fn a_missing_topology_file_is_a_usage_error() {
    let out = warren_bin()
        .args(["--topology", "/nonexistent/w.toml", "topology", "export"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("cannot read topology file `/nonexistent/w.toml`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_unreachable_broker_fails_after_the_connect_timeout_with_a_how_to() {
    let out = warren_bin()
        .args([
            "--amqp-url",
            "amqp://guest:hunter2@127.0.0.1:1/%2f",
            "--connect-timeout",
            "1s",
            "topology",
            "apply",
        ])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot connect to RabbitMQ at amqp://guest:***@127.0.0.1:1/%2f"),
        "{err}"
    );
    assert!(err.contains("scripts/broker.sh"), "{err}");
    assert!(!err.contains("hunter2"), "password leaked: {err}");
}

/// Runs `command` against `url` with a 2 s connect timeout and the topology file given;
/// returns its output and how long it took.
fn with_deadline(
    url: &str,
    topology: &str,
    command: &[&str],
) -> (std::process::Output, std::time::Duration) {
    let started = std::time::Instant::now();
    let out = warren_bin()
        .args(["--topology", topology, "--amqp-url", url])
        .args(["--connect-timeout", "2s"])
        .args(command)
        .output()
        .unwrap();
    (out, started.elapsed())
}

#[test]
fn an_unreachable_broker_keeps_the_deadline_and_says_so_once() {
    // Given no broker on the port, for both the direct connect and the producer's pool
    for command in [&["topology", "apply"][..], &["enqueue", "job"][..]] {
        let (out, took) = with_deadline("amqp://guest:guest@127.0.0.1:1/%2f", "/dev/null", command);
        let err = stderr(&out);
        // Then it gives up at the deadline (tolerance: process start and the last attempt)
        assert_eq!(out.status.code(), Some(1), "{command:?}: {err}");
        assert!(
            took < std::time::Duration::from_millis(2800),
            "{command:?} took {took:?}"
        );
        // With one warning for the retries, and no republish of nothing
        assert_eq!(err.matches(" WARN ").count(), 1, "{command:?}: {err}");
        // And the error is the last real failure, not an attempt cut to nothing
        let last = err
            .lines()
            .find(|l| l.starts_with("error:"))
            .unwrap_or_default();
        assert!(last.contains("Connection refused"), "{command:?}: {err}");
        assert!(!err.contains("unconfirmed=0"), "{command:?}: {err}");
    }
}

#[test]
fn wrong_credentials_are_refused_at_once_without_echoing_the_password() {
    let out = warren_bin()
        .args([
            "--amqp-url",
            "amqp://guest:hunter2@127.0.0.1:5672/%2f",
            "topology",
            "apply",
        ])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("ACCESS_REFUSED") && err.contains("user name and password"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "password leaked: {err}");
}

#[test]
fn an_unknown_vhost_says_how_to_create_it() {
    let out = warren_bin()
        .args([
            "--amqp-url",
            "amqp://guest:guest@127.0.0.1:5672/no-such-vhost-here",
            "topology",
            "apply",
        ])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("vhost no-such-vhost-here not found") && err.contains("rabbitmqctl add_vhost"),
        "{err}"
    );
}

#[test]
fn bad_flags_are_usage_errors() {
    for args in [
        vec!["topology", "apply", "--connect-timeout", "soon"],
        vec!["enqueue", "Bad.Name"],
        vec!["enqueue", "ok", "--count", "0"],
        vec!["frobnicate"],
    ] {
        let out = warren_bin().args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).is_empty());
    }
}

#[test]
fn flag_mistakes_get_messages_that_name_the_fix() {
    // Each: the arguments, and what stderr must say (all are usage errors, exit 2)
    let cases: [(&[&str], &[&str]); 5] = [
        // a negative delay written with a space reads like the `=` form, not like a flag
        (
            &["enqueue", "job", "--delay", "-5s"],
            &["invalid duration `-5s`"],
        ),
        (
            &["enqueue", "job", "--delay=-5s"],
            &["invalid duration `-5s`"],
        ),
        // replay without a selection names both ways to select
        (&["dlq", "replay", "job"], &["--id", "--all"]),
        // a watch interval under a second would hammer the management API
        (&["status", "--watch", "100ms"], &["below 1s"]),
        (&["status", "--watch=0s"], &["below 1s"]),
    ];
    for (args, needles) in cases {
        let out = warren_bin()
            .args(["--topology", "/dev/null"])
            .args(args)
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        for n in needles {
            assert!(err.contains(n), "{args:?}: missing {n:?} in {err}");
        }
        assert!(
            !err.contains("use '--"),
            "{args:?}: clap's misleading tip: {err}"
        );
    }
}

#[test]
fn enqueue_of_a_task_the_topology_does_not_declare_names_the_closest_one() {
    // Given a topology file that declares `send_email` (no broker needed: refused first)
    let topo = TempFile::with("[tasks.send_email]\n[tasks.resize_image]\n");
    // When `send_mail` is enqueued
    let out = warren_bin()
        .env("WARREN_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .args(["--topology", topo.as_str(), "enqueue", "send_mail"])
        .output()
        .unwrap();
    // Then it is a usage error that names the file and the likely intended task
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("no task `send_mail` in {}", topo.as_str()))
            && err.contains("did you mean `send_email`?"),
        "{err}"
    );
}

#[test]
fn topology_delete_refuses_to_lose_tasks_and_removes_only_its_own_namespace() {
    // Given namespace `t` with one waiting `job` task, and namespace `t.keep` beside it
    let broker = TestBroker::new();
    let topo = TempFile::with(
        "max_delay = \"8s\"\nqueue_type = \"classic\"\n[tasks.job]\n[tasks.other]\n",
    );
    let cli = |args: &[&str]| {
        let mut all = vec!["--topology", topo.as_str()];
        all.extend_from_slice(args);
        broker.cli(&all)
    };
    assert!(cli(&["topology", "apply"]).status.success());
    assert!(
        cli(&["--namespace", "t.keep", "topology", "apply"])
            .status
            .success()
    );
    assert!(cli(&["enqueue", "job"]).status.success());
    let exists = |queue: &str| broker.mgmt.queue(&broker.vhost, queue).unwrap().is_some();
    let exchange_exists = |name: &str| {
        let path = format!("exchanges/{}/{}", enc(&broker.vhost), enc(name));
        broker.mgmt.get_opt(&path).unwrap().is_some()
    };

    // When it is deleted without a flag, then nothing is deleted and the busy queue is named
    let refused = cli(&["topology", "delete"]);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("`t.job` (1 tasks, 0 consumers)"),
        "{}",
        stderr(&refused)
    );
    assert!(stderr(&refused).contains("--if-empty") && stderr(&refused).contains("--yes"));
    assert!(exists("t.other") && exists("t.job"));

    // When only the empty queues go, then `t.job` and the exchanges stay (exit 1: not all gone)
    let partial = cli(&["topology", "delete", "--if-empty"]);
    assert_eq!(partial.status.code(), Some(1), "{}", stderr(&partial));
    assert!(stdout(&partial).contains("kept queue        t.job  (1 tasks, 0 consumers)"));
    assert!(!exists("t.other") && !exists("t.delay.0") && exists("t.job"));
    assert!(exchange_exists("t.tasks"));

    // When --yes, then the rest goes, tasks included
    let all = cli(&["topology", "delete", "--yes"]);
    assert!(all.status.success(), "{}", stderr(&all));
    assert!(
        stdout(&all).contains("deleted queue     t.job  (1 messages)"),
        "{}",
        stdout(&all)
    );
    assert!(!exists("t.job") && !exchange_exists("t.tasks") && !exchange_exists("t.dead"));

    // And the namespace that shares the prefix is untouched
    assert!(exists("t.keep.job") && exists("t.keep.delay.0") && exchange_exists("t.keep.tasks"));
}

/// A port that accepts TCP connections and never says a word (a wedged node, another
/// service, a half-open load balancer). Connections stay open while the listener lives.
struct SilentPort {
    port: u16,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl SilentPort {
    fn start() -> SilentPort {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming().flatten() {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(conn);
            }
        });
        SilentPort { port, accepted }
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }
}

#[test]
fn a_port_that_accepts_but_never_answers_fails_at_the_connect_timeout_naming_it() {
    let silent = SilentPort::start();
    let topology = TempFile::with("namespace = \"t\"\n[tasks.job]\n");
    for command in [&["topology", "apply"][..], &["enqueue", "job"][..]] {
        let (out, took) = with_deadline(&silent.url(), topology.as_str(), command);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{command:?}: {err}");
        assert!(
            took < std::time::Duration::from_secs(5),
            "{command:?} took {took:?}"
        );
        assert!(
            err.contains(&format!("127.0.0.1:{}", silent.port))
                && err.contains("no AMQP handshake within"),
            "{command:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{command:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_facing_a_silent_port_keeps_trying_and_still_stops_when_told() {
    let silent = SilentPort::start();
    let mut settings = warren::Settings::from_toml("namespace = \"t\"\n[tasks.job]\n").unwrap();
    settings.amqp_url = silent.url();
    let worker = warren::Worker::new(&settings)
        .handle_json("job", |_, _| Box::pin(async { Ok(None) }))
        .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let handle = tokio::spawn(worker.run(stop.clone()));
    // Each attempt is bounded (10 s), then the worker tries again: a second connection.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while silent.accepted.load(std::sync::atomic::Ordering::SeqCst) < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the worker stayed on its first attempt"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        !handle.is_finished(),
        "a worker does not give up on the broker"
    );
    let stopping = std::time::Instant::now();
    stop.cancel();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(5), handle)
        .await
        .expect("the worker stops while connecting");
    ended.unwrap().unwrap();
    assert!(stopping.elapsed() < std::time::Duration::from_secs(2));
}

#[test]
fn a_node_list_with_a_dead_node_still_enqueues_through_the_live_one() {
    // Whichever order the shuffle picks, the closed port is passed over.
    let broker = TestBroker::new();
    let topology = TempFile::with("max_delay = \"1h\"\n[tasks.job]\n");
    let list = format!(
        "amqp://guest:guest@127.0.0.1:1/{v},{live}",
        v = warren::ops::management::enc(&broker.vhost),
        live = broker.amqp_url()
    );
    for command in [
        &["topology", "apply"][..],
        &["enqueue", "job"][..],
        &["status"][..],
    ] {
        let out = warren_bin()
            .args(["--topology", topology.as_str(), "--amqp-url", &list])
            .args(["--namespace", "t", "--connect-timeout", "10s"])
            .args(command)
            .output()
            .unwrap();
        assert!(out.status.success(), "{command:?}: {}", stderr(&out));
    }
}

#[test]
fn apply_and_delete_without_a_management_api_warn_and_go_on() {
    let broker = TestBroker::new();
    let topology = TempFile::with("max_delay = \"1h\"\n[tasks.job]\n");
    let out = warren_bin()
        .args([
            "--topology",
            topology.as_str(),
            "--amqp-url",
            &broker.amqp_url(),
        ])
        .args(["--namespace", "t", "--management-url", "http://127.0.0.1:1"])
        .args(["topology", "apply"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("cannot check the broker before applying, applying anyway"),
        "{err}"
    );
    assert!(broker.queue_info("t.job")["name"] == "t.job");
    // Delete without the API: the planned queues go; the run-time ones (unique keys,
    // broadcast workers' queues) cannot be listed, and the warning says so.
    let out = warren_bin()
        .args([
            "--topology",
            topology.as_str(),
            "--amqp-url",
            &broker.amqp_url(),
        ])
        .args(["--namespace", "t", "--management-url", "http://127.0.0.1:1"])
        .args(["topology", "delete"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("cannot list the namespace's queues through the management API")
            && err.contains("unique keys, if any, are left"),
        "{err}"
    );
    assert!(broker.mgmt.queue(&broker.vhost, "t.job").unwrap().is_none());
}
