//! Operations on a real broker: status, dead-letter tooling, the demo, metrics, compose file.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde::{Deserialize, Serialize};
use warren::{Producer, Settings, Task, TaskContext, Worker};

use warren::ops::management::enc;

use crate::support::{TempFile, TestBroker, stderr, stdout, take, warren_bin};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Job {
    n: u32,
}

impl Task for Job {
    const NAME: &'static str = "job";
}

const TOPOLOGY: &str = "max_delay = \"1h\"\n[tasks.job]\n[tasks.other]\n";

async fn applied(broker: &TestBroker) -> (Settings, lapin::Connection, lapin::Channel) {
    let (settings, conn, ch) = broker.applied(TOPOLOGY).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    (settings, conn, ch)
}

/// Publishes a dead task the way a worker would, into `{ns}.dead`.
pub(crate) async fn put_dead(ch: &lapin::Channel, task: &str, id: &str, n: u32) {
    let mut h = FieldTable::default();
    h.insert("warren-attempt".into(), AMQPValue::LongLongInt(3));
    h.insert(
        "warren-reason".into(),
        AMQPValue::LongString("failed".into()),
    );
    h.insert(
        "warren-error".into(),
        AMQPValue::LongString(format!("attempt 3/3: boom {n}").as_str().into()),
    );
    h.insert(
        "warren-dead-at".into(),
        AMQPValue::LongLongInt(1_700_000_000_000),
    );
    let props = BasicProperties::default()
        .with_message_id(id.into())
        .with_type(task.into())
        .with_delivery_mode(2)
        .with_headers(h);
    let body = serde_json::to_vec(&Job { n }).unwrap();
    let c = ch
        .basic_publish(
            "t.dead".into(),
            task.into(),
            BasicPublishOptions::default(),
            &body,
            props,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(c.is_ack());
}

fn lines(o: &std::process::Output) -> Vec<String> {
    stdout(o).lines().map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts_ready_dead_and_delayed_at_once_over_amqp() {
    // Given queues declared a moment ago (the management API samples every 5 s: it has no
    // figures for them yet) holding 2 ready `job` tasks, 1 dead and 1 delayed
    let broker = TestBroker::new();
    let (settings, _conn, ch) = applied(&broker).await;
    let producer = Producer::new(&settings).unwrap();
    for n in 0..2 {
        producer.enqueue(&Job { n }).await.unwrap();
    }
    put_dead(&ch, "job", "d1", 1).await;
    producer
        .enqueue_with(
            &Job { n: 9 },
            warren::EnqueueOptions::default().delay(Duration::from_secs(600)),
        )
        .await
        .unwrap();
    // When `warren status --json` runs once, at once
    let out = broker.cli_with(
        &["status", "--json"],
        &[("WARREN_TOPOLOGY", "/dev/null")],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let status: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("--json parses");
    // Then the counts are there and current, not unknown
    let row = |task: &str| {
        status["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["task"] == task)
            .cloned()
            .unwrap()
    };
    let (job, other) = (row("job"), row("other"));
    assert_eq!(
        (
            &job["ready"],
            &job["dead"],
            &job["consumers"],
            &status["delayed"]
        ),
        (&2.into(), &1.into(), &0.into(), &1.into()),
        "{status}"
    );
    assert_eq!((&other["ready"], &other["dead"]), (&0.into(), &0.into()));
    producer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_with_amqp_unreachable_shows_the_management_apis_figures() {
    // Given 2 ready `job` tasks, and an AMQP URL on which nothing listens (the management API
    // still answers)
    let broker = TestBroker::new();
    let (settings, _conn, _ch) = applied(&broker).await;
    let producer = Producer::new(&settings).unwrap();
    for n in 0..2 {
        producer.enqueue(&Job { n }).await.unwrap();
    }
    producer.close().await;
    let unreachable = format!("amqp://guest:guest@127.0.0.1:1/{}", enc(&broker.vhost));
    let env = [
        ("WARREN_TOPOLOGY", "/dev/null"),
        ("WARREN_AMQP_URL", unreachable.as_str()),
        ("WARREN_MANAGEMENT_URL", "http://127.0.0.1:15672"),
    ];
    // When `warren status --json` runs until the API's figures are in
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let started = Instant::now();
        let out = broker.cli_with(&["status", "--json"], &env, None);
        // Then it does not fail for the AMQP side: it waits at most a few seconds for it and
        // shows what the management API says
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{:?}",
            started.elapsed()
        );
        let status: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("--json parses");
        let job = status["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["task"] == "job")
            .cloned()
            .unwrap();
        if job["ready"] == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the API's count never came: {status}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_rows_match_the_queues_once_the_stats_settle() {
    // Given 3 ready `job` tasks, 2 dead ones, and 1 delayed
    let broker = TestBroker::new();
    let (settings, _conn, ch) = applied(&broker).await;
    let producer = Producer::new(&settings).unwrap();
    for n in 0..3 {
        producer.enqueue(&Job { n }).await.unwrap();
    }
    put_dead(&ch, "job", "d1", 1).await;
    put_dead(&ch, "job", "d2", 2).await;
    producer
        .enqueue_with(
            &Job { n: 9 },
            warren::EnqueueOptions::default().delay(Duration::from_secs(600)),
        )
        .await
        .unwrap();
    // When `warren status --json` is polled until the management API has caught up
    let deadline = Instant::now() + Duration::from_secs(30);
    let rows = loop {
        let out = broker.cli_with(
            &["status", "--json"],
            &[("WARREN_TOPOLOGY", "/dev/null")],
            None,
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let status: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("--json parses");
        let job = status["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["task"] == "job")
            .cloned()
            .unwrap();
        // The API reports each figure when its statistics arrive: wait for all of them.
        let other = status["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["task"] == "other")
            .cloned()
            .unwrap();
        if job["ready"] == 3
            && job["dead"] == 2
            && job["delayed_in_namespace"] == 1
            && job["running"] == 0
            && job["consumers"] == 0
            && other["ready"] == 0
            && other["dead"] == 0
        {
            break status;
        }
        assert!(Instant::now() < deadline, "status never matched: {status}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // Then the other rows are right too, and the table shows the same figures
    let job = rows["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["task"] == "job")
        .unwrap();
    assert_eq!(
        (job["running"].clone(), job["consumers"].clone()),
        (serde_json::json!(0), serde_json::json!(0))
    );
    let other = rows["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["task"] == "other")
        .unwrap();
    assert_eq!(other["ready"], 0);
    assert_eq!(other["dead"], 0);
    let table = broker.cli_with(&["status"], &[("WARREN_TOPOLOGY", "/dev/null")], None);
    let text = stdout(&table);
    let job_line = text
        .lines()
        .find(|l| l.starts_with("job "))
        .expect("a job row");
    let cells: Vec<&str> = job_line.split_whitespace().collect();
    assert_eq!(&cells[..5], &["job", "3", "0", "0", "2"], "{text}");
    assert!(
        text.contains("delayed (the namespace's delay ladder): 1"),
        "{text}"
    );
    assert_eq!(rows["delayed"], 1, "{rows}");
    // The broker says which it is (read once from the management API).
    let header = text.lines().next().unwrap_or_default();
    assert!(header.contains(" on RabbitMQ 3."), "{text}");
    assert!(
        rows["broker"]
            .as_str()
            .is_some_and(|b| b.starts_with("RabbitMQ 3.")),
        "{rows}"
    );
}

#[test]
fn status_of_a_namespace_without_queues_or_a_missing_vhost_says_so_in_one_line() {
    // Given a vhost where namespace `nothing` was never applied
    let broker = TestBroker::new();
    let out = broker.cli_with(
        &["--namespace", "nothing", "status"],
        &[("WARREN_TOPOLOGY", "/dev/null")],
        None,
    );
    // Then status exits 1 and says the namespace has no queues, with the fix
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("namespace `nothing` has no queues") && err.contains("warren topology apply"),
        "{err}"
    );
    // And a vhost that does not exist is named in one line, without the API's URL and body
    let out = warren_bin()
        .env(
            "WARREN_AMQP_URL",
            "amqp://guest:guest@127.0.0.1:5672/no-such-vhost-for-status",
        )
        .args(["--topology", "/dev/null", "status"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("vhost `no-such-vhost-for-status` does not exist"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!err.contains("/api/"), "{err}");
}

#[test]
fn status_without_a_management_api_says_how_to_enable_it() {
    let out = warren_bin()
        .args([
            "--management-url",
            "http://127.0.0.1:1",
            "--topology",
            "/dev/null",
            "status",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("management API at http://127.0.0.1:1 is unreachable")
            && err.contains("rabbitmq_management"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_list_replay_and_purge_do_exactly_what_they_say() {
    let broker = TestBroker::new();
    let (settings, _conn, ch) = applied(&broker).await;
    for (i, id) in ["a", "b", "c"].iter().enumerate() {
        put_dead(&ch, "job", id, i as u32).await;
    }
    put_dead(&ch, "other", "o1", 7).await;
    let cli = |args: &[&str]| broker.cli_with(args, &[("WARREN_TOPOLOGY", "/dev/null")], None);

    // list, twice: the same messages in the same order, nothing removed
    let first = cli(&["dlq", "list", "job", "--json"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let second = cli(&["dlq", "list", "job", "--json"]);
    assert_eq!(lines(&first), lines(&second));
    let listed: Vec<serde_json::Value> = lines(&first)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids: Vec<&str> = listed.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a", "b", "c"]);
    assert_eq!(listed[1]["reason"], "failed");
    assert_eq!(listed[1]["error"], "attempt 3/3: boom 1");
    assert_eq!(listed[1]["attempts"], 3);
    assert_eq!(listed[1]["payload"], "{\"n\":1}");
    let text = cli(&["dlq", "list", "job", "--limit", "2"]);
    assert!(
        stdout(&text).contains("2 of 3 dead `job` tasks shown; none removed"),
        "{}",
        stdout(&text)
    );
    assert_eq!(broker.count(&ch, "t.job.dead").await, 3);

    // --dry-run moves none
    let dry = cli(&["dlq", "replay", "job", "--all", "--dry-run"]);
    assert!(dry.status.success());
    assert!(
        stdout(&dry).contains("would replay 3 dead `job` task(s)"),
        "{}",
        stdout(&dry)
    );
    assert_eq!(
        (
            broker.count(&ch, "t.job.dead").await,
            broker.count(&ch, "t.job").await
        ),
        (3, 0)
    );

    // replay --id moves exactly that one, attempts reset, and it runs
    let one = cli(&["dlq", "replay", "job", "--id", "b"]);
    assert!(one.status.success(), "{}", stderr(&one));
    assert!(stdout(&one).contains("replayed b"));
    assert_eq!(
        (
            broker.count(&ch, "t.job.dead").await,
            broker.count(&ch, "t.job").await
        ),
        (2, 1)
    );
    let ran = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let r2 = ran.clone();
    let worker = Worker::new(&settings).handle(move |job: Job, ctx: TaskContext| {
        let ran = r2.clone();
        async move {
            ran.lock()
                .unwrap()
                .push((ctx.id.clone(), job.n, ctx.attempt));
            Ok(())
        }
    });
    let stop = tokio_util::sync::CancellationToken::new();
    let handle = tokio::spawn(worker.run(stop.clone()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while ran.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the replayed task never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    handle.await.unwrap().unwrap();
    assert_eq!(*ran.lock().unwrap(), vec![("b".to_string(), 1, 1)]);

    // an unknown id is reported and changes nothing
    let missing = cli(&["dlq", "replay", "job", "--id", "zzz"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(stdout(&missing).contains("not found zzz"));

    // replay --all moves all (carrying a replay counter, without the death headers)
    let all = cli(&["dlq", "replay", "job", "--all"]);
    assert!(all.status.success());
    assert_eq!(
        (
            broker.count(&ch, "t.job.dead").await,
            broker.count(&ch, "t.job").await
        ),
        (0, 2)
    );
    let back = take(&ch, "t.job", 2, Instant::now(), Duration::from_secs(5)).await;
    let got: BTreeSet<String> = back
        .iter()
        .map(|(_, d)| d.properties.message_id().as_ref().unwrap().to_string())
        .collect();
    assert_eq!(got, BTreeSet::from(["a".to_string(), "c".to_string()]));
    let h = back[0].1.properties.headers().as_ref().unwrap().inner();
    assert!(matches!(
        h.get("warren-replays"),
        Some(AMQPValue::LongLongInt(1))
    ));
    // The replay starts over: no attempt header, which means 1.
    assert!(h.get("warren-attempt").is_none());
    assert!(h.get("warren-reason").is_none() && h.get("x-death").is_none());

    // purge needs --yes, and empties only that queue
    let refused = cli(&["dlq", "purge", "other"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(stderr(&refused).contains("--yes"));
    put_dead(&ch, "job", "j9", 9).await;
    let purged = cli(&["dlq", "purge", "other", "--yes"]);
    assert!(purged.status.success());
    assert!(
        stdout(&purged).contains("purged 1 dead `other` task(s)"),
        "{}",
        stdout(&purged)
    );
    assert_eq!(
        (
            broker.count(&ch, "t.other.dead").await,
            broker.count(&ch, "t.job.dead").await
        ),
        (0, 1)
    );
}

#[test]
fn the_demo_exits_zero_with_the_planned_counts() {
    let broker = TestBroker::new();
    let out = broker.cli_with(
        &["demo", "--tasks", "40", "--workers", "2"],
        &[("WARREN_TOPOLOGY", "/dev/null")],
        None,
    );
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    for (outcome, planned) in [
        ("succeeded first time", 32),
        ("succeeded after a retry", 4),
        ("dead: failed", 2),
        ("dead: expired", 2),
    ] {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(outcome))
            .unwrap_or_else(|| panic!("{outcome}: {text}"));
        let cells: Vec<&str> = line.split_whitespace().rev().take(2).collect();
        assert_eq!(cells, [planned.to_string(), planned.to_string()], "{line}");
    }
    assert!(text.contains("every task reached its planned outcome"));
    assert!(text.contains("p99"));
    // The demo removed its queues.
    let queues = broker
        .mgmt
        .get(&format!(
            "queues/{}",
            warren::ops::management::enc(&broker.vhost)
        ))
        .unwrap();
    assert_eq!(queues.as_array().unwrap().len(), 0, "{queues}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_serves_task_series() {
    let broker = TestBroker::new();
    let (settings, _conn, _ch) = applied(&broker).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let topo = TempFile::with(
        "max_delay = \"1h\"\n[tasks.job]\nexec = [\"sh\", \"-c\", \"cat >/dev/null\"]\n[tasks.other]\n",
    );
    let mut worker = std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .env("WARREN_AMQP_URL", broker.amqp_url())
        .env("WARREN_NAMESPACE", "t")
        .env("WARREN_TOPOLOGY", topo.as_str())
        .args(["worker", "--metrics-addr", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(crate::support::Reaped::new)
        .unwrap();
    let producer = Producer::new(&settings).unwrap();
    for n in 0..3 {
        producer.enqueue(&Job { n }).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let got = ureq::get(&format!("http://127.0.0.1:{port}/metrics"))
            .call()
            .ok()
            .and_then(|r| r.into_string().ok());
        if let Some(b) =
            got.filter(|b| b.contains("warren_tasks_total{task=\"job\",outcome=\"success\"} 3"))
        {
            break b;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed 3 successes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status();
    let status = worker.wait_within(Duration::from_secs(60));
    assert!(status.success(), "{status:?}");
    assert!(
        body.contains("warren_task_duration_seconds_bucket{task=\"job\""),
        "{body}"
    );
    assert!(
        body.contains("warren_tasks_in_flight{task=\"job\"} 0"),
        "{body}"
    );
    assert!(body.contains("# TYPE warren_tasks_total counter"), "{body}");
    // Registered at zero, before any reconnect happened
    assert!(body.contains("warren_reconnects_total 0"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_without_a_value_refreshes_every_two_seconds() {
    // Given an applied namespace
    let broker = TestBroker::new();
    let (_settings, _conn, _ch) = applied(&broker).await;
    // When `warren status --watch` runs for 5 s (not a terminal: one table per refresh)
    let mut watch = warren_bin()
        .env("WARREN_AMQP_URL", broker.amqp_url())
        .env("WARREN_NAMESPACE", "t")
        .args(["--topology", "/dev/null", "status", "--watch"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let _ = watch.kill();
    let out = watch.wait_with_output().unwrap();
    // Then it printed the table at 0, 2 and 4 s: three times (tolerance: 2 to 4)
    let tables = stdout(&out).matches("namespace `t` in vhost").count();
    assert!((2..=4).contains(&tables), "{tables} tables in 5 s");
}

#[test]
fn the_compose_file_runs_a_broker_topology_three_workers_and_a_producer() {
    use yaml_rust2::{Yaml, YamlLoader};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("docker-compose.yml")).unwrap();
    let docs = YamlLoader::load_from_str(&text).expect("docker-compose.yml is valid YAML");
    let services = &docs[0]["services"];
    for name in ["rabbitmq", "topology", "worker", "producer"] {
        assert!(!services[name].is_badvalue(), "service {name} missing");
    }
    let rabbit = &services["rabbitmq"];
    assert!(rabbit["image"].as_str().unwrap().contains("management"));
    assert!(
        !rabbit["healthcheck"]["test"].is_badvalue(),
        "the broker has a healthcheck"
    );
    let ports: Vec<&str> = rabbit["ports"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    // Enough open files for many quorum queues (RabbitMQ's own systemd unit sets 65536)
    assert_eq!(rabbit["ulimits"]["nofile"]["soft"].as_i64(), Some(65536));
    // Published on host ports that do not clash with a local RabbitMQ (5672, 15672)
    assert_eq!(ports, ["5673:5672", "15673:15672"]);
    assert_eq!(
        services["topology"]["depends_on"]["rabbitmq"]["condition"].as_str(),
        Some("service_healthy")
    );
    assert_eq!(services["worker"]["deploy"]["replicas"].as_i64(), Some(3));
    // The stop grace outlasts the worker's own 30 s grace, so a deploy drains, not kills
    let stop_grace = services["worker"]["stop_grace_period"].as_str().unwrap();
    assert!(
        warren::duration::parse_duration(stop_grace).unwrap() > std::time::Duration::from_secs(30)
    );
    let worker_ports: Vec<&str> = services["worker"]["ports"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(
        worker_ports,
        ["9464"],
        "metrics on an ephemeral host port per replica"
    );
    assert_eq!(
        services["worker"]["depends_on"]["topology"]["condition"].as_str(),
        Some("service_completed_successfully")
    );
    let cmd = |s: &str| {
        services[s]["command"]
            .as_vec()
            .unwrap()
            .iter()
            .filter_map(Yaml::as_str)
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(&cmd("topology")[..2], ["topology", "apply"]);
    assert_eq!(cmd("worker")[0], "worker");
    // Every replica runs a scheduler (one leads), so the schedules need no service of their own.
    assert!(cmd("worker").contains(&"--scheduler".to_string()));
    assert_eq!(cmd("producer")[0], "enqueue");
    // Every file the build and the services refer to exists.
    assert!(root.join("Dockerfile").exists());
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    assert!(dockerfile.matches("FROM ").count() >= 2, "multi-stage");
    for line in dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for src in &parts[1..parts.len() - 1] {
            assert!(root.join(src).exists(), "Dockerfile copies missing {src}");
        }
    }
    // Exec paths resolve from the topology file's directory (as in the image's /app/topology)
    let settings = Settings::from_file(&root.join("topology/warren.toml")).unwrap();
    let mut scripts = 0;
    for (name, task) in &settings.tasks {
        if let Some(exec) = &task.exec {
            for arg in exec.iter().filter(|a| a.ends_with(".sh")) {
                scripts += 1;
                assert!(
                    root.join("topology").join(arg).is_file(),
                    "[tasks.{name}] exec refers to missing {arg}"
                );
            }
        }
    }
    assert!(
        scripts >= 2,
        "the shipped topology runs its handler scripts"
    );
    assert!(
        std::fs::read_to_string(root.join(".dockerignore"))
            .unwrap()
            .lines()
            .any(|l| l.trim() == "target/"),
        "the build context leaves out target/"
    );
    assert!(
        settings.tasks.contains_key("send_email"),
        "the compose producer enqueues send_email"
    );
}

#[test]
fn a_small_bench_run_completes_and_reports_both_sides() {
    let broker = TestBroker::new();
    let out = broker.cli_with(
        &[
            "bench",
            "--count",
            "300",
            "--repetitions",
            "1",
            "--rate",
            "200",
            "--paced-for",
            "500ms",
            "--json",
        ],
        &[("WARREN_TOPOLOGY", "/dev/null")],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value =
        serde_json::from_str(stdout(&out).trim()).expect("--json parses");
    for side in ["raw", "raw_multiple", "raw_wire", "warren"] {
        for figure in ["drain", "e2e"] {
            let v = report["figures"][format!("{side}.{figure}")]["median"]
                .as_f64()
                .unwrap_or(0.0);
            assert!(v > 0.0, "{side}.{figure} = {v}");
        }
    }
    for key in [
        "raw.enqueue",
        "warren.enqueue",
        "warren.paced_p99_ms",
        "raw.paced_p99_ms",
        "warren.drain_rss_mib",
        "warren.drain_many_types",
        "warren.drain_beside_limits",
        "warren.idle_p50_ms",
        "raw.idle_p50_ms",
        "warren.startup_ms",
        "raw.startup_ms",
    ] {
        assert!(
            report["figures"][key]["median"]
                .as_f64()
                .is_some_and(|v| v > 0.0),
            "{key}: {}",
            report["figures"]
        );
    }
    assert!(
        report["ratios"]["end to end: warren / raw ack-each"]["median"]
            .as_f64()
            .is_some_and(|r| r > 0.0)
    );
    // Without `--delays` the delays phase is skipped, and the JSON says so (null).
    assert!(report["delays"].is_null(), "{}", report["delays"]);
    // The bench removed its namespace.
    let queues = broker
        .mgmt
        .get(&format!(
            "queues/{}",
            warren::ops::management::enc(&broker.vhost)
        ))
        .unwrap();
    assert_eq!(queues.as_array().unwrap().len(), 0, "{queues}");
}

#[test]
fn the_management_client_moves_past_a_node_it_cannot_reach() {
    let mgmt = crate::support::management();
    let list = format!("http://127.0.0.1:1,{}", mgmt.base());
    let settings = warren::Settings {
        amqp_url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
        management_url: Some(list),
        ..Default::default()
    };
    let m = warren::ops::management::Management::from_settings(&settings).unwrap();
    assert_eq!(m.base(), "http://127.0.0.1:1");
    let overview = m.get("overview").unwrap();
    assert!(overview["rabbitmq_version"].is_string(), "{overview}");
    assert_eq!(m.base(), mgmt.base(), "it stays on the node that answered");
}
