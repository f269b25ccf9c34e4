//! The worker on a real broker: outcomes, retries, dead letters, bad input, prefetch, crashes,
//! shutdown, reconnects, and `warren worker` with exec handlers.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use warren::{EnqueueOptions, Producer, Task, TaskContext, TaskError, Worker};

use crate::support::{Reaped, TempFile, TestBroker, take, warren_bin};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Job {
    pub(crate) n: u32,
}

impl Task for Job {
    const NAME: &'static str = "job";
}

/// Fast retries for tests: 1 s, then 2 s, no jitter.
const TOPOLOGY: &str = r#"
max_delay = "1h"
queue_type = "quorum"
[defaults]
max_attempts = 3
time_limit = "2s"
[defaults.backoff]
initial = "1s"
multiplier = 2.0
max = "10s"
jitter = 0.0
[tasks.job]
"#;

/// Runs `worker` in the background; cancel the token and await the handle to stop it.
pub(crate) fn spawn(
    worker: Worker,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<warren::Result<()>>,
) {
    let token = CancellationToken::new();
    let handle = tokio::spawn(worker.run(token.clone()));
    (token, handle)
}

pub(crate) async fn stop(
    token: CancellationToken,
    handle: tokio::task::JoinHandle<warren::Result<()>>,
) {
    token.cancel();
    tokio::time::timeout(Duration::from_secs(30), handle)
        .await
        .expect("worker stops")
        .unwrap()
        .expect("worker ok");
}

/// Waits until `n` returns at least `want`, or fails after `within`.
pub(crate) async fn wait_count(within: Duration, what: &str, want: usize, n: impl Fn() -> usize) {
    let deadline = Instant::now() + within;
    while n() < want {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {} of {want}",
            n()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) fn header_str(d: &lapin::message::Delivery, key: &str) -> String {
    match d
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(key))
    {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => panic!("header {key}: {other:?}"),
    }
}

fn header_int(d: &lapin::message::Delivery, key: &str) -> i64 {
    match d
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(key))
    {
        Some(AMQPValue::LongLongInt(i)) => *i,
        other => panic!("header {key}: {other:?}"),
    }
}

async fn queue_is_empty(broker: &TestBroker, ch: &lapin::Channel, queue: &str) -> bool {
    broker.count(ch, queue).await == 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successful_task_is_acked_and_the_queue_is_empty() {
    let broker = TestBroker::new();
    let (settings, _conn, ch) = broker.applied(TOPOLOGY).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let (token, handle) = spawn(Worker::new(&settings).handle(
        move |job: Job, ctx: TaskContext| {
            let seen = s2.clone();
            async move {
                seen.lock()
                    .unwrap()
                    .push((job.n, ctx.attempt, ctx.id.clone()));
                Ok(())
            }
        },
    ));
    let id = Producer::new(&settings)
        .unwrap()
        .enqueue(&Job { n: 7 })
        .await
        .unwrap();
    wait_count(Duration::from_secs(10), "the task to run", 1, || {
        seen.lock().unwrap().len()
    })
    .await;
    stop(token, handle).await;
    assert_eq!(*seen.lock().unwrap(), vec![(7, 1, id)]);
    let info = broker.queue_info("t.job");
    // the management API lags; the AMQP count is exact
    assert!(queue_is_empty(&broker, &ch, "t.job").await, "{info}");
    assert!(queue_is_empty(&broker, &ch, "t.job.dead").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_failing_twice_then_succeeding_runs_three_times_with_policy_gaps() {
    let broker = TestBroker::new();
    let (settings, _conn, ch) = broker.applied(TOPOLOGY).await;
    let runs = Arc::new(Mutex::new(Vec::new()));
    let r2 = runs.clone();
    let (token, handle) = spawn(Worker::new(&settings).handle(
        move |_job: Job, ctx: TaskContext| {
            let runs = r2.clone();
            async move {
                runs.lock()
                    .unwrap()
                    .push((ctx.attempt, Instant::now(), ctx.enqueued_at));
                if ctx.attempt < 3 {
                    Err(TaskError::retry("not yet"))
                } else {
                    Ok(())
                }
            }
        },
    ));
    let before = SystemTime::now();
    Producer::new(&settings)
        .unwrap()
        .enqueue(&Job { n: 1 })
        .await
        .unwrap();
    let after = SystemTime::now();
    wait_count(Duration::from_secs(15), "three runs", 3, || {
        runs.lock().unwrap().len()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop(token, handle).await;
    let runs = runs.lock().unwrap().clone();
    assert_eq!(runs.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 2, 3]);
    // Every run sees the first enqueue time, to the millisecond (it travels in the id).
    let first = runs[0].2;
    assert!(runs.iter().all(|r| r.2 == first), "enqueue time changed");
    let slack = Duration::from_millis(1);
    assert!(
        first + slack >= before && first <= after,
        "enqueued_at {first:?} not within the enqueue call"
    );
    // Policy: 1 s then 2 s (no jitter). Tolerance: the ladder fires on time to -50 ms, and
    // publish, expiry and redelivery add up to 1.5 s.
    for (i, want) in [(1, 1.0), (2, 2.0)] {
        let gap = runs[i].1.duration_since(runs[i - 1].1).as_secs_f64();
        assert!(
            gap >= want - 0.05 && gap <= want + 1.5,
            "gap {i}: {gap:.2}s, want {want}s"
        );
    }
    assert!(queue_is_empty(&broker, &ch, "t.job").await);
    assert!(queue_is_empty(&broker, &ch, "t.job.dead").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_always_failing_task_is_dead_after_exactly_max_attempts_and_a_permanent_one_after_one() {
    let broker = TestBroker::new();
    let (settings, _conn, ch) = broker.applied(TOPOLOGY).await;
    let runs: Arc<Mutex<HashMap<u32, u32>>> = Arc::default();
    let r2 = runs.clone();
    let (token, handle) = spawn(Worker::new(&settings).handle(
        move |job: Job, _ctx: TaskContext| {
            let runs = r2.clone();
            async move {
                *runs.lock().unwrap().entry(job.n).or_default() += 1;
                // Never `Ok`: the handler's value type must be named.
                if job.n == 1 {
                    Err::<(), _>(TaskError::retry("disk full"))
                } else {
                    Err(TaskError::permanent("bad address"))
                }
            }
        },
    ));
    let producer = Producer::new(&settings).unwrap();
    let started = Instant::now();
    let retried = producer.enqueue(&Job { n: 1 }).await.unwrap();
    let permanent = producer.enqueue(&Job { n: 2 }).await.unwrap();
    let dead = take(&ch, "t.job.dead", 2, started, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop(token, handle).await;
    assert_eq!(*runs.lock().unwrap(), HashMap::from([(1, 3), (2, 1)]));
    let by_id: HashMap<String, &lapin::message::Delivery> = dead
        .iter()
        .map(|(_, d)| (d.properties.message_id().as_ref().unwrap().to_string(), d))
        .collect();
    let d = by_id[&retried];
    assert_eq!(header_str(d, "warren-reason"), "failed");
    assert_eq!(header_str(d, "warren-error"), "attempt 3/3: disk full");
    assert_eq!(header_int(d, "warren-attempt"), 3);
    assert!(header_str(d, "warren-worker").starts_with("warren worker "));
    assert!(header_int(d, "warren-dead-at") > 0);
    assert_eq!(
        serde_json::from_slice::<Job>(&d.data).unwrap(),
        Job { n: 1 }
    );
    let d = by_id[&permanent];
    assert_eq!(header_str(d, "warren-reason"), "permanent");
    assert_eq!(header_str(d, "warren-error"), "bad address");
    assert_eq!(header_int(d, "warren-attempt"), 1);
    assert!(queue_is_empty(&broker, &ch, "t.job").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_goes_dead_with_its_reason_and_the_worker_goes_on() {
    // Given a worker and a raw AMQP publisher
    let broker = TestBroker::new();
    let (settings, _conn, ch) = broker.applied(TOPOLOGY).await;
    let ran = Arc::new(Mutex::new(Vec::new()));
    let r2 = ran.clone();
    let (token, handle) = spawn(Worker::new(&settings).handle(
        move |job: Job, _ctx: TaskContext| {
            let ran = r2.clone();
            async move {
                ran.lock().unwrap().push(job.n);
                Ok(())
            }
        },
    ));
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let publish = |body: &'static [u8], props: BasicProperties| {
        let ch = ch.clone();
        async move {
            let c = ch
                .basic_publish(
                    "t.tasks".into(),
                    "job".into(),
                    BasicPublishOptions::default(),
                    body,
                    props,
                )
                .await
                .unwrap()
                .await
                .unwrap();
            assert!(c.is_ack());
        }
    };
    let typed = |t: &str| {
        BasicProperties::default()
            .with_type(t.into())
            .with_delivery_mode(2)
    };
    let with_header = |k: &str, v: AMQPValue| {
        let mut h = FieldTable::default();
        h.insert(k.into(), v);
        typed("job")
            .with_message_id(format!("bad-{k}").as_str().into())
            .with_headers(h)
    };
    let started = Instant::now();
    // When bad and good messages alternate
    publish(b"{\"n\": 1}", typed("job")).await; // a foreign publisher: only type + JSON
    publish(
        b"not json",
        typed("job").with_message_id("undecodable".into()),
    )
    .await;
    publish(b"{\"n\": 2}", typed("job")).await;
    publish(
        b"{\"m\": \"wrong shape\"}",
        typed("job").with_message_id("wrong-shape".into()),
    )
    .await;
    publish(
        b"{\"n\": 3}",
        typed("other").with_message_id("unknown".into()),
    )
    .await;
    publish(
        b"{\"n\": 4}",
        with_header("warren-attempt", AMQPValue::LongString("2".into())),
    )
    .await;
    publish(
        b"{\"n\": 5}",
        with_header("warren-expires-at", AMQPValue::LongLongInt(1)),
    )
    .await;
    publish(b"", typed("job").with_message_id("empty".into())).await;
    publish(b"{\"n\": 6}", BasicProperties::default()).await; // no type at all: the queue's task

    // Then each bad one is dead with its reason, and every good one ran
    let dead = take(&ch, "t.job.dead", 6, started, Duration::from_secs(10)).await;
    wait_count(Duration::from_secs(5), "good tasks", 3, || {
        ran.lock().unwrap().len()
    })
    .await;
    stop(token, handle).await;
    let reasons: HashMap<String, String> = dead
        .iter()
        .map(|(_, d)| {
            (
                d.properties.message_id().as_ref().unwrap().to_string(),
                header_str(d, "warren-reason"),
            )
        })
        .collect();
    let expect = [
        ("undecodable", "undecodable"),
        ("wrong-shape", "undecodable"),
        ("unknown", "unknown_task"),
        ("bad-warren-attempt", "invalid_header"),
        ("bad-warren-expires-at", "expired"),
        ("empty", "undecodable"),
    ];
    for (id, reason) in expect {
        assert_eq!(
            reasons.get(id).map(String::as_str),
            Some(reason),
            "{id}: {reasons:?}"
        );
    }
    let mut ran = ran.lock().unwrap().clone();
    ran.sort();
    assert_eq!(ran, vec![1, 2, 6]);
    let undecodable = dead
        .iter()
        .find(|(_, d)| d.properties.message_id().as_ref().unwrap().as_str() == "undecodable")
        .unwrap();
    assert!(header_str(&undecodable.1, "warren-error").contains("not a valid `job` task"));
    assert!(queue_is_empty(&broker, &ch, "t.job").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_and_a_panic_are_retried_then_dead() {
    let broker = TestBroker::new();
    let (settings, _conn, ch) = broker
        .applied(&TOPOLOGY.replace("time_limit = \"2s\"", "time_limit = \"300ms\""))
        .await;
    let runs: Arc<Mutex<HashMap<u32, u32>>> = Arc::default();
    let r2 = runs.clone();
    let (token, handle) = spawn(Worker::new(&settings).handle(
        move |job: Job, _ctx: TaskContext| {
            let runs = r2.clone();
            async move {
                *runs.lock().unwrap().entry(job.n).or_default() += 1;
                if job.n == 1 {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                } else {
                    panic!("handler bug");
                }
                Ok(())
            }
        },
    ));
    let producer = Producer::new(&settings).unwrap();
    let started = Instant::now();
    producer.enqueue(&Job { n: 1 }).await.unwrap();
    producer.enqueue(&Job { n: 2 }).await.unwrap();
    let dead = take(&ch, "t.job.dead", 2, started, Duration::from_secs(15)).await;
    stop(token, handle).await;
    assert_eq!(*runs.lock().unwrap(), HashMap::from([(1, 3), (2, 3)]));
    let errors: HashSet<String> = dead
        .iter()
        .map(|(_, d)| header_str(d, "warren-error"))
        .collect();
    assert!(
        errors.contains("attempt 3/3: time limit of 300ms exceeded"),
        "{errors:?}"
    );
    assert!(
        errors.contains("attempt 3/3: handler panicked: handler bug"),
        "{errors:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_five_never_has_more_than_five_unacked_deliveries() {
    let broker = TestBroker::new();
    let (settings, _conn, _ch) = broker.applied(TOPOLOGY).await;
    let producer = Producer::new(&settings).unwrap();
    for r in producer.enqueue_many((0..40).map(|n| Job { n })).await {
        r.unwrap();
    }
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let (r2, p2, d2) = (running.clone(), peak.clone(), done.clone());
    // Concurrency 50 would allow more; prefetch must be what bounds it.
    let worker = Worker::new(&settings).concurrency(50).prefetch(5).handle(
        move |_job: Job, _ctx: TaskContext| {
            let (running, peak, done) = (r2.clone(), p2.clone(), d2.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                done.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        },
    );
    let (token, handle) = spawn(worker);
    // The broker reports the consumer's prefetch too (once its stats are in).
    let mgmt_prefetch =
        crate::support::eventually(Duration::from_secs(20), "consumer stats", || {
            broker.queue_info("t.job")["consumer_details"]
                .as_array()
                .and_then(|c| c.first())
                .map(|c| c["prefetch_count"].clone())
        })
        .await;
    wait_count(Duration::from_secs(30), "all tasks", 40, || {
        done.load(Ordering::SeqCst)
    })
    .await;
    stop(token, handle).await;
    assert_eq!(mgmt_prefetch, 5);
    assert_eq!(peak.load(Ordering::SeqCst), 5, "held at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forcibly_closed_worker_connection_reconnects_and_loses_nothing() {
    let broker = TestBroker::new();
    let (settings, _conn, ch) = broker.applied(TOPOLOGY).await;
    let role = format!("worker-kill-{}", broker.vhost);
    let seen: Arc<Mutex<HashSet<u32>>> = Arc::default();
    // Tasks from 100 on wait until the connection was closed, so the close lands mid-run.
    let closed_flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (s2, f2) = (seen.clone(), closed_flag.clone());
    let worker = Worker::new(&settings)
        .role(&role)
        .concurrency(4)
        .prefetch(4)
        .handle(move |job: Job, _ctx: TaskContext| {
            let (seen, flag) = (s2.clone(), f2.clone());
            async move {
                while job.n >= 100 && !flag.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                seen.lock().unwrap().insert(job.n);
                Ok(())
            }
        });
    let (token, handle) = spawn(worker);
    let producer = Producer::new(&settings).unwrap();
    for r in producer.enqueue_many((0..600).map(|n| Job { n })).await {
        r.unwrap();
    }
    // `warren {role} {host}:{pid}`, with `-{n}` when it is not the process's first worker.
    let prefix = format!("warren {role} ");
    let mgmt = broker.mgmt.clone();
    let closed =
        crate::support::eventually(Duration::from_secs(20), "the worker connection", || {
            let name = mgmt.connections().ok()?.into_iter().find_map(|c| {
                let name = c["client_properties"]["connection_name"].as_str()?;
                name.starts_with(&prefix).then(|| name.to_string())
            })?;
            mgmt.close_connections_named(&name).ok().filter(|n| *n > 0)
        })
        .await;
    let at_close = seen.lock().unwrap().len();
    closed_flag.store(true, Ordering::SeqCst);
    assert_eq!(closed, 1);
    wait_count(
        Duration::from_secs(60),
        "every task after the reconnect",
        600,
        || seen.lock().unwrap().len(),
    )
    .await;
    stop(token, handle).await;
    assert!(
        at_close < 600,
        "the connection was closed mid-run ({at_close} done before)"
    );
    assert!(queue_is_empty(&broker, &ch, "t.job").await);
    assert!(queue_is_empty(&broker, &ch, "t.job.dead").await);
}

// ---- worker processes (`warren worker` with exec handlers) ------------------------------

/// A topology whose `job` handler is a shell snippet.
fn exec_topology(script: &str, extra: &str) -> TempFile {
    let script = script.replace('\\', "\\\\").replace('"', "\\\"");
    TempFile::with(&format!(
        "{}\n{extra}\nexec = [\"sh\", \"-c\", \"{script}\"]\n",
        TOPOLOGY.trim_end()
    ))
}

pub(crate) fn worker_process(broker: &TestBroker, topology: &TempFile, args: &[&str]) -> Reaped {
    warren_process(broker, topology, "worker", args)
}

/// `warren {command} {args}` running in the background against `broker`'s vhost, its log
/// (stderr, at info) in a file.
pub(crate) fn warren_process(
    broker: &TestBroker,
    topology: &TempFile,
    command: &str,
    args: &[&str],
) -> Reaped {
    let log = TempFile::path(&format!("{command}-log"));
    let mut cmd = warren_bin();
    cmd.env("WARREN_AMQP_URL", broker.amqp_url())
        .env("WARREN_NAMESPACE", "t")
        .env("WARREN_TOPOLOGY", topology.as_str())
        .env("RUST_LOG", "warn,lapin=off,warren=info")
        .arg(command)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log.0).expect("log file"));
    Reaped(cmd.spawn().expect("start warren"), Some(log))
}

pub(crate) fn signal(child: &std::process::Child, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

pub(crate) async fn wait_exit(
    child: &mut std::process::Child,
    within: Duration,
) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "worker did not exit within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_worker_processes_share_a_thousand_tasks_and_every_id_runs() {
    let broker = TestBroker::new();
    let (settings, _conn, ch) = broker.applied(TOPOLOGY).await;
    let log = TempFile::path("log");
    let topo = exec_topology(
        &format!("echo \"$WARREN_TASK_ID $PPID\" >> {}", log.as_str()),
        "",
    );
    let mut a = worker_process(&broker, &topo, &["--concurrency", "4", "--prefetch", "8"]);
    let mut b = worker_process(&broker, &topo, &["--concurrency", "4", "--prefetch", "8"]);
    let ids: HashSet<String> = Producer::new(&settings)
        .unwrap()
        .enqueue_many((0..1000).map(|n| Job { n }))
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    wait_count(Duration::from_secs(120), "1000 runs", 1000, || {
        log.lines().len()
    })
    .await;
    signal(&a, "-TERM");
    signal(&b, "-TERM");
    assert!(wait_exit(&mut a, Duration::from_secs(20)).await.success());
    assert!(wait_exit(&mut b, Duration::from_secs(20)).await.success());
    let lines = log.lines();
    let ran: HashSet<String> = lines
        .iter()
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect();
    assert_eq!(ran, ids, "every id ran");
    let per_pid: HashMap<&str, usize> = lines.iter().fold(HashMap::new(), |mut m, l| {
        *m.entry(l.split(' ').nth(1).unwrap()).or_default() += 1;
        m
    });
    assert_eq!(per_pid.len(), 2, "both workers ran some: {per_pid:?}");
    assert!(queue_is_empty(&broker, &ch, "t.job").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_held_by_a_killed_worker_are_run_by_another() {
    let broker = TestBroker::new();
    let (settings, _conn, ch) = broker.applied(TOPOLOGY).await;
    let dir = TempFile::path("d");
    std::fs::create_dir_all(&dir.0).unwrap();
    let started = TempFile(dir.0.join("started"));
    // Each run notes its start, works for 1.5 s, then records its id in a file per worker pid.
    let script = format!(
        "echo $WARREN_TASK_ID >> {d}/started; sleep 1.5; echo $WARREN_TASK_ID >> {d}/done.$PPID",
        d = dir.as_str()
    );
    let topo = exec_topology(&script, "");
    let mut victim = worker_process(&broker, &topo, &["--concurrency", "5", "--prefetch", "5"]);
    let ids: HashSet<String> = Producer::new(&settings)
        .unwrap()
        .enqueue_many((0..10).map(|n| Job { n }))
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    wait_count(
        Duration::from_secs(20),
        "the victim to start tasks",
        5,
        || started.lines().len(),
    )
    .await;
    signal(&victim, "-KILL");
    let _ = wait_exit(&mut victim, Duration::from_secs(5)).await;
    let mut rescuer = worker_process(&broker, &topo, &["--concurrency", "5", "--prefetch", "5"]);
    let rescued = TempFile(dir.0.join(format!("done.{}", rescuer.id())));
    wait_count(
        Duration::from_secs(30),
        "the rescuer to run every task",
        10,
        || rescued.lines().len(),
    )
    .await;
    signal(&rescuer, "-TERM");
    assert!(
        wait_exit(&mut rescuer, Duration::from_secs(20))
            .await
            .success()
    );
    let ran: HashSet<String> = rescued.lines().into_iter().collect();
    assert_eq!(
        ran, ids,
        "the second worker ran every task, including those the first held"
    );
    assert!(queue_is_empty(&broker, &ch, "t.job").await);
    let _ = std::fs::remove_dir_all(&dir.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_running_tasks_finish_and_exits_zero_within_the_grace_period() {
    let broker = TestBroker::new();
    let (settings, _conn, ch) = broker.applied(TOPOLOGY).await;
    let started = TempFile::path("started");
    let done = TempFile::path("done");
    let script = format!(
        "echo $WARREN_TASK_ID >> {}; sleep 1.5; echo $WARREN_TASK_ID >> {}",
        started.as_str(),
        done.as_str()
    );
    let topo = exec_topology(&script, "");
    let mut w = worker_process(
        &broker,
        &topo,
        &["--concurrency", "3", "--prefetch", "3", "--grace", "10s"],
    );
    Producer::new(&settings)
        .unwrap()
        .enqueue_many((0..3).map(|n| Job { n }))
        .await
        .into_iter()
        .for_each(|r| {
            r.unwrap();
        });
    wait_count(Duration::from_secs(20), "three running tasks", 3, || {
        started.lines().len()
    })
    .await;
    let sent = Instant::now();
    signal(&w, "-TERM");
    let status = wait_exit(&mut w, Duration::from_secs(12)).await;
    assert!(status.success(), "{status:?}");
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "exited within the grace period"
    );
    let mut finished = done.lines();
    finished.sort();
    let mut began = started.lines();
    began.sort();
    assert_eq!(finished, began, "every running task completed, none twice");
    assert!(
        queue_is_empty(&broker, &ch, "t.job").await,
        "acked: nothing returns to the queue"
    );
    let stderr = w.log();
    assert!(
        stderr.contains("stopping gracefully") && stderr.contains("worker stopped"),
        "{stderr}"
    );
    // The drain counts handlers, not the worker's internal tasks (one acking task per channel)
    assert!(stderr.contains("running=3"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_handlers_follow_the_exit_code_contract() {
    let broker = TestBroker::new();
    let (settings, _conn, ch) = broker.applied(TOPOLOGY).await;
    let env_log = TempFile::path("env");
    // The payload's "n" is the exit code; the environment is recorded.
    let script = format!(
        "payload=$(cat); echo \"$WARREN_TASK $WARREN_TASK_ID $WARREN_ATTEMPT $WARREN_MAX_ATTEMPTS $WARREN_CORRELATION_ID $payload\" >> {}; \
         code=$(echo \"$payload\" | tr -dc 0-9); echo \"failing with $code\" >&2; exit $code",
        env_log.as_str()
    );
    let topo = exec_topology(&script, "");
    let mut w = worker_process(&broker, &topo, &[]);
    let producer = Producer::new(&settings).unwrap();
    let started = Instant::now();
    let ok = producer
        .enqueue_with(
            &Job { n: 0 },
            EnqueueOptions::default().correlation_id("corr-1"),
        )
        .await
        .unwrap();
    let permanent = producer.enqueue(&Job { n: 65 }).await.unwrap();
    let retryable = producer.enqueue(&Job { n: 3 }).await.unwrap();
    let dead = take(&ch, "t.job.dead", 2, started, Duration::from_secs(20)).await;
    signal(&w, "-TERM");
    assert!(wait_exit(&mut w, Duration::from_secs(20)).await.success());
    let lines = env_log.lines();
    let runs = |id: &str| {
        lines
            .iter()
            .filter(|l| l.split(' ').nth(1) == Some(id))
            .count()
    };
    assert_eq!((runs(&ok), runs(&permanent), runs(&retryable)), (1, 1, 3));
    let ok_line = lines.iter().find(|l| l.contains(&ok)).unwrap();
    assert_eq!(ok_line, &format!("job {ok} 1 3 corr-1 {{\"n\":0}}"));
    let by_id: HashMap<String, &lapin::message::Delivery> = dead
        .iter()
        .map(|(_, d)| (d.properties.message_id().as_ref().unwrap().to_string(), d))
        .collect();
    assert_eq!(header_str(by_id[&permanent], "warren-reason"), "permanent");
    assert_eq!(
        header_str(by_id[&permanent], "warren-error"),
        "exit code 65: failing with 65"
    );
    assert_eq!(header_str(by_id[&retryable], "warren-reason"), "failed");
    assert_eq!(
        header_str(by_id[&retryable], "warren-error"),
        "attempt 3/3: exit code 3: failing with 3"
    );
}

/// Peak resident memory of process `pid` in MiB (`VmHWM`).
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_handler_that_writes_much_before_reading_neither_hangs_nor_bloats_the_worker() {
    // Given a handler that writes 128 KiB to stderr before it reads its 300 KB payload (two
    // pipes' worth each way), and one that writes 200 MB to stderr, both then logging their id
    let broker = TestBroker::new();
    let (settings, _conn, ch) = broker.applied(TOPOLOGY).await;
    let log = TempFile::path("log");
    let script = format!(
        "if [ \"$WARREN_CORRELATION_ID\" = big ]; then head -c 200000000 /dev/zero >&2; \
         else head -c 131072 /dev/zero >&2; fi; cat >/dev/null; echo $WARREN_TASK_ID >> {}",
        log.as_str()
    );
    let topo = exec_topology(&script, "time_limit = \"60s\"");
    let mut worker = worker_process(&broker, &topo, &[]);
    let idle_rss = {
        tokio::time::sleep(Duration::from_millis(500)).await;
        peak_rss_mib(worker.id())
    };
    // When each is enqueued
    let producer = Producer::new(&settings).unwrap();
    let body = format!("{{\"pad\":\"{}\"}}", "x".repeat(300_000)).into_bytes();
    let opts = EnqueueOptions::default().correlation_id("feed");
    let fed = producer.enqueue_raw("job", body, opts).await.unwrap();
    let opts = EnqueueOptions::default().correlation_id("big");
    let big = producer
        .enqueue_raw("job", b"{}".to_vec(), opts)
        .await
        .unwrap();
    // Then both finish on their first attempt (a deadlock would time out and retry)
    wait_count(
        Duration::from_secs(30),
        "both handlers to finish",
        2,
        || log.lines().len(),
    )
    .await;
    let ran: HashSet<String> = log.lines().into_iter().collect();
    assert_eq!(ran, HashSet::from([fed, big]));
    // And the worker kept a bounded tail of the 200 MB, not all of it
    let peak = peak_rss_mib(worker.id());
    assert!(
        peak < idle_rss + 50,
        "worker peak RSS {peak} MiB (idle {idle_rss} MiB)"
    );
    signal(&worker, "-TERM");
    assert!(
        wait_exit(&mut worker, Duration::from_secs(20))
            .await
            .success()
    );
    assert!(queue_is_empty(&broker, &ch, "t.job.dead").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_paths_resolve_from_the_topology_files_directory_wherever_the_worker_starts() {
    // Given a topology file beside `handlers/ok.sh`, named by a relative path
    let broker = TestBroker::new();
    let (settings, _conn, _ch) = broker.applied(TOPOLOGY).await;
    let dir = TempFile::path("d");
    std::fs::create_dir_all(dir.0.join("handlers")).unwrap();
    let log = TempFile(dir.0.join("ran.log"));
    std::fs::write(
        dir.0.join("handlers/ok.sh"),
        "#!/bin/sh\ncat >/dev/null\necho \"$WARREN_TASK_ID $(pwd)\" >> ran.log\n",
    )
    .unwrap();
    let topo = dir.0.join("warren.toml");
    std::fs::write(
        &topo,
        format!("{TOPOLOGY}exec = [\"sh\", \"handlers/ok.sh\"]\n"),
    )
    .unwrap();
    // When a worker started in `/` runs a task
    let mut worker = warren_bin();
    worker
        .current_dir("/")
        .env("WARREN_AMQP_URL", broker.amqp_url())
        .env("WARREN_NAMESPACE", "t")
        .args(["--topology", topo.to_str().unwrap(), "worker"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut worker = worker.spawn().unwrap();
    let id = Producer::new(&settings)
        .unwrap()
        .enqueue(&Job { n: 1 })
        .await
        .unwrap();
    // Then the handler ran, in the topology file's directory
    wait_count(Duration::from_secs(20), "the handler to run", 1, || {
        log.lines().len()
    })
    .await;
    let dir_shown = std::fs::canonicalize(&dir.0).unwrap();
    assert_eq!(log.lines(), vec![format!("{id} {}", dir_shown.display())]);
    signal(&worker, "-TERM");
    assert!(
        wait_exit(&mut worker, Duration::from_secs(20))
            .await
            .success()
    );
    let _ = std::fs::remove_dir_all(&dir.0);
}

#[test]
fn a_worker_whose_handler_cannot_run_refuses_to_start_naming_the_task_and_path() {
    // Given handlers that name a missing script and a missing program
    for (exec, needle) in [
        ("[\"sh\", \"handlers/missing.sh\"]", "handlers/missing.sh"),
        ("[\"./no-such-program\"]", "no-such-program"),
    ] {
        let topo = TempFile::with(&format!("[tasks.mail]\nexec = {exec}\n"));
        // When the worker starts (no broker needed: it checks before connecting)
        let out = warren_bin()
            .env("WARREN_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
            .args(["--topology", topo.as_str(), "worker"])
            .output()
            .unwrap();
        // Then it exits 2 with the task and the path
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("[tasks.mail]") && err.contains(needle),
            "{err}"
        );
        assert!(err.contains("does not exist"), "{err}");
    }
}

#[test]
fn warren_worker_without_exec_handlers_says_how_to_add_one() {
    let topo = TempFile::with("[tasks.job]\n");
    let out = warren_bin()
        .args(["--topology", topo.as_str(), "worker"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("exec = ["),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = warren_bin()
        .args(["--topology", topo.as_str(), "worker", "--tasks", "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_flows_from_the_producer_through_tasks_enqueued_by_handlers() {
    let broker = TestBroker::new();
    let (settings, _conn, _ch) = broker.applied(TOPOLOGY).await;
    let producer = Producer::new(&settings).unwrap();
    let seen: Arc<Mutex<Vec<(u32, String)>>> = Arc::default();
    let (s2, p2) = (seen.clone(), producer.clone());
    let (token, handle) = spawn(Worker::new(&settings).handle(
        move |job: Job, ctx: TaskContext| {
            let (seen, producer) = (s2.clone(), p2.clone());
            async move {
                seen.lock().unwrap().push((job.n, ctx.traceparent.clone()));
                if job.n == 1 {
                    // enqueued from inside the handler: joins this run's trace
                    producer
                        .enqueue(&Job { n: 2 })
                        .await
                        .map_err(|e| TaskError::retry(e.to_string()))?;
                }
                Ok(())
            }
        },
    ));
    let root = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    producer
        .enqueue_with(&Job { n: 1 }, EnqueueOptions::default().traceparent(root))
        .await
        .unwrap();
    wait_count(Duration::from_secs(10), "both tasks", 2, || {
        seen.lock().unwrap().len()
    })
    .await;
    stop(token, handle).await;
    let seen = seen.lock().unwrap().clone();
    let parse = |s: &str| warren::trace::TraceParent::parse(s).expect("valid traceparent");
    let (first, second) = (parse(&seen[0].1), parse(&seen[1].1));
    assert_eq!(first.trace_id, "0af7651916cd43dd8448eb211c80319c");
    assert_ne!(first.span_id, "b7ad6b7169203331", "the run is a child span");
    assert_eq!(
        second.trace_id, first.trace_id,
        "the follow-up task is in the same trace"
    );
    assert_ne!(second.span_id, first.span_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_that_cannot_be_published_is_requeued_never_acked() {
    // Given a worker whose retry copy cannot be published: the ladder's entry exchange is gone
    let broker = TestBroker::new();
    let (settings, _conn, ch) = broker.applied(TOPOLOGY).await;
    let top = warren::topology::ladder::Ladder::for_max_delay(settings.max_delay).top();
    broker
        .mgmt
        .delete(&format!(
            "exchanges/{}/t.delay.{top}",
            warren::ops::management::enc(&broker.vhost)
        ))
        .unwrap();
    let runs: Arc<Mutex<Vec<u32>>> = Arc::default();
    let r2 = runs.clone();
    let (token, handle) = spawn(Worker::new(&settings).handle(
        move |_job: Job, ctx: TaskContext| {
            let runs = r2.clone();
            async move {
                runs.lock().unwrap().push(ctx.attempt);
                if ctx.attempt == 1 {
                    Err(TaskError::retry("first attempt fails"))
                } else {
                    Ok(())
                }
            }
        },
    ));
    // When its first attempt fails
    Producer::new(&settings)
        .unwrap()
        .enqueue(&Job { n: 1 })
        .await
        .unwrap();
    // Then the delivery is not acked but returned to its queue, delivered again (counted as
    // the next attempt by the quorum queue), and succeeds
    wait_count(Duration::from_secs(15), "the redelivered run", 2, || {
        runs.lock().unwrap().len()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop(token, handle).await;
    assert_eq!(*runs.lock().unwrap(), vec![1, 2]);
    assert!(queue_is_empty(&broker, &ch, "t.job").await);
    assert!(queue_is_empty(&broker, &ch, "t.job.dead").await);
}

// ---- deploys: runs cut short by a shutdown keep their attempt ------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_cut_short_by_a_shutdown_come_back_with_the_same_attempt_on_a_classic_queue() {
    let broker = TestBroker::new();
    let topology = r#"
max_delay = "7s"
queue_type = "classic"
[defaults]
max_attempts = 1
time_limit = "60s"
[tasks.job]
"#;
    let (settings, _conn, ch) = broker.applied(topology).await;
    // Job 0 ignores the cancel and would run for a minute; job 1 honours it and returns an
    // error. Both are cut short: neither may use up its only attempt.
    let first_runs: Arc<Mutex<Vec<(u32, u32)>>> = Arc::default();
    let seen = first_runs.clone();
    let slow = Worker::new(&settings)
        .concurrency(2)
        .grace(Duration::from_millis(300))
        .handle(move |job: Job, ctx: TaskContext| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push((job.n, ctx.attempt));
                if job.n == 1 {
                    ctx.cancel.cancelled().await;
                    return Err(TaskError::retry("cancelled by the shutdown"));
                }
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(())
            }
        });
    let (token, handle) = spawn(slow);
    let producer = Producer::new(&settings).unwrap();
    for n in 0..2 {
        producer.enqueue(&Job { n }).await.unwrap();
    }
    wait_count(Duration::from_secs(10), "both runs started", 2, || {
        first_runs.lock().unwrap().len()
    })
    .await;
    let stopping = Instant::now();
    stop(token, handle).await;
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "the abandoned run did not hold up the stop: {:?}",
        stopping.elapsed()
    );
    assert!(
        queue_is_empty(&broker, &ch, "t.job.dead").await,
        "nothing dead"
    );
    assert_eq!(
        broker.count(&ch, "t.job").await,
        2,
        "both back in the work queue"
    );
    // A second worker runs both to completion, still as attempt 1 of 1.
    let runs: Arc<Mutex<Vec<(u32, u32)>>> = Arc::default();
    let seen = runs.clone();
    let quick = Worker::new(&settings).handle(move |job: Job, ctx: TaskContext| {
        let seen = seen.clone();
        async move {
            seen.lock().unwrap().push((job.n, ctx.attempt));
            Ok(())
        }
    });
    let (token, handle) = spawn(quick);
    wait_count(Duration::from_secs(10), "both reruns", 2, || {
        runs.lock().unwrap().len()
    })
    .await;
    stop(token, handle).await;
    let mut runs = runs.lock().unwrap().clone();
    runs.sort();
    assert_eq!(runs, vec![(0, 1), (1, 1)]);
    assert!(queue_is_empty(&broker, &ch, "t.job").await);
    assert!(queue_is_empty(&broker, &ch, "t.job.dead").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_three_exec_workers_costs_no_attempt_and_loses_nothing_on_quorum() {
    let broker = TestBroker::new();
    let topology = TOPOLOGY
        .replace("max_attempts = 3", "max_attempts = 1")
        .replace("time_limit = \"2s\"", "time_limit = \"30s\"");
    let (settings, _conn, ch) = broker.applied(&topology).await;
    let dir = TempFile::path("roll");
    std::fs::create_dir_all(&dir.0).unwrap();
    let started = TempFile(dir.0.join("started"));
    let done = TempFile(dir.0.join("done"));
    // Each run logs its attempt: a run cut short, or a task prefetched but not started when
    // its worker stopped, must come back as attempt 1 again.
    let script = format!(
        "echo $WARREN_TASK_ID $WARREN_ATTEMPT $PPID $(date +%s%3N) >> {}; sleep 2; echo $WARREN_TASK_ID >> {}",
        started.as_str(),
        done.as_str()
    );
    let topo = TempFile::with(&format!(
        "{}\nexec = [\"sh\", \"-c\", \"{script}\"]\n",
        topology.trim_end()
    ));
    // One handler each, and a prefetch of 4: every worker holds tasks it has not started.
    let args = ["--concurrency", "1", "--prefetch", "4", "--grace", "500ms"];
    let mut workers: Vec<Reaped> = (0..3)
        .map(|_| worker_process(&broker, &topo, &args))
        .collect();
    let ids: HashSet<String> = Producer::new(&settings)
        .unwrap()
        .enqueue_many((0..9).map(|n| Job { n }))
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let mut logs = String::new();
    // Restarts that caught their worker early in a run (1.5 s or more of its 2 s left, three
    // times the grace period): each of those must cut the run short.
    let mut caught_mid_run = 0;
    for (i, worker) in workers.iter_mut().enumerate() {
        // Replace worker i as soon as it has just started a run (its handler's parent is the
        // worker: `$PPID`), or after 10 s if it has nothing left to start.
        let pid = worker.0.id().to_string();
        let looking = Instant::now();
        let fresh = loop {
            let finished: HashSet<String> = done.lines().into_iter().collect();
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64;
            let just_started = started.lines().iter().any(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                f.len() == 4
                    && f[2] == pid
                    && !finished.contains(f[0])
                    && f[3].parse::<i64>().is_ok_and(|at| now_ms - at <= 500)
            });
            if just_started || looking.elapsed() > Duration::from_secs(10) {
                break just_started;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        caught_mid_run += usize::from(fresh);
        signal(worker, "-TERM");
        let status = wait_exit(worker, Duration::from_secs(15)).await;
        assert!(status.success(), "worker {i}: {status:?}");
        logs.push_str(&worker.log());
        *worker = worker_process(&broker, &topo, &args);
    }
    wait_count(Duration::from_secs(60), "every task to complete", 9, || {
        done.lines().iter().collect::<HashSet<_>>().len()
    })
    .await;
    for w in &mut workers {
        signal(w, "-TERM");
        assert!(wait_exit(w, Duration::from_secs(15)).await.success());
    }
    let completed: HashSet<String> = done.lines().into_iter().collect();
    assert_eq!(completed, ids, "every task ran to completion");
    let attempts: Vec<String> = started.lines();
    assert!(
        attempts.iter().all(|l| l.split(' ').nth(1) == Some("1")),
        "every run was attempt 1: {attempts:?}"
    );
    assert!(
        queue_is_empty(&broker, &ch, "t.job.dead").await,
        "nothing dead"
    );
    assert!(queue_is_empty(&broker, &ch, "t.job").await);
    let interrupted = logs.matches("back to its queue, same attempt").count();
    let handed_back = logs.matches("prefetched tasks back to their queue").count();
    assert!(
        caught_mid_run >= 1,
        "no restart caught its worker in a run: the test proved nothing"
    );
    assert!(
        interrupted >= caught_mid_run,
        "each restart that caught a run cut it short ({caught_mid_run} caught, \
         {interrupted} interrupted): {logs}"
    );
    eprintln!(
        "rolling restart: 9 tasks, {} runs started, {caught_mid_run} restarts mid-run, \
         {interrupted} interrupted, {handed_back} workers handed back prefetched tasks, 0 dead",
        started.lines().len()
    );
    let _ = std::fs::remove_dir_all(&dir.0);
}

// ---- payloads travel byte for byte --------------------------------------------------------

/// Payloads serde_json would change if it parsed and wrote them back: a big integer, key
/// order, whitespace, `\u` escapes next to raw UTF-8.
const EXACT_PAYLOADS: [&str; 3] = [
    r#"{"n": 123456789012345678901234567890, "z": 1, "a": 2}"#,
    "{ \"k\" :\t[1,  2 ,3] ,\"u\":\"caf\\u00e9 \\ud83d\\ude00\", \"raw\": \"café 😀\" }",
    "[0.10000000000000000001, -0, 1E+2]",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_reach_exec_handlers_dead_queues_and_replays_byte_for_byte() {
    let broker = TestBroker::new();
    let (_settings, _conn, ch) = broker.applied(TOPOLOGY).await;
    let dir = TempFile::path("exact");
    std::fs::create_dir_all(&dir.0).unwrap();
    // The first run of each task saves stdin and fails for good; the replayed run saves it
    // again and succeeds.
    let script = format!(
        "f={}/$WARREN_TASK_ID; if [ -e $f.first ]; then cat > $f.replayed; else cat > $f.first; exit 65; fi",
        dir.as_str()
    );
    let topo = exec_topology(&script, "");
    let big = format!(
        "{{\"blob\": \"{}\", \"n\": 98765432109876543210}}",
        "é".repeat(450_000)
    );
    assert!(big.len() > 900_000);
    let big_file = TempFile::with(&big);
    let cli = |args: &[&str], stdin: Option<&str>| {
        broker.cli_with(args, &[("WARREN_TOPOLOGY", topo.as_str())], stdin)
    };
    let mut sent: Vec<(String, String)> = Vec::new();
    for (i, p) in EXACT_PAYLOADS.iter().enumerate() {
        let id = format!("p{i}");
        let o = cli(&["enqueue", "job", "--id", &id, "--payload", p], None);
        assert!(o.status.success(), "{}", crate::support::stderr(&o));
        sent.push((id, p.to_string()));
    }
    let o = cli(
        &[
            "enqueue",
            "job",
            "--id",
            "file",
            "--payload-file",
            big_file.as_str(),
        ],
        None,
    );
    assert!(o.status.success(), "{}", crate::support::stderr(&o));
    sent.push(("file".into(), big.clone()));
    let lines = format!("{}\n{}\n", EXACT_PAYLOADS[0], EXACT_PAYLOADS[1]);
    let o = cli(&["enqueue", "job", "--id", "line", "-"], Some(&lines));
    assert!(o.status.success(), "{}", crate::support::stderr(&o));
    sent.push(("line-1".into(), EXACT_PAYLOADS[0].into()));
    sent.push(("line-2".into(), EXACT_PAYLOADS[1].into()));

    let mut w = worker_process(&broker, &topo, &[]);
    wait_count(
        Duration::from_secs(30),
        "every task dead",
        sent.len(),
        || std::fs::read_dir(&dir.0).map_or(0, |d| d.count()),
    )
    .await;
    wait_count(Duration::from_secs(10), "dead copies", sent.len(), || {
        broker.queue_info("t.job.dead")["messages"]
            .as_u64()
            .unwrap_or(0) as usize
    })
    .await;
    // The dead queue holds them as they were.
    let o = cli(&["dlq", "list", "job", "--json", "--limit", "10"], None);
    assert!(o.status.success(), "{}", crate::support::stderr(&o));
    let listed: HashMap<String, String> = crate::support::stdout(&o)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["id"].as_str().unwrap().to_string(),
                v["payload"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (id, payload) in &sent {
        assert_eq!(listed.get(id), Some(payload), "dlq list of {id}");
    }
    let o = cli(&["dlq", "replay", "job", "--all"], None);
    assert!(o.status.success(), "{}", crate::support::stderr(&o));
    wait_count(
        Duration::from_secs(30),
        "every replay",
        2 * sent.len(),
        || std::fs::read_dir(&dir.0).map_or(0, |d| d.count()),
    )
    .await;
    signal(&w, "-TERM");
    assert!(wait_exit(&mut w, Duration::from_secs(15)).await.success());
    for (id, payload) in &sent {
        for run in ["first", "replayed"] {
            let got = std::fs::read(dir.0.join(format!("{id}.{run}"))).unwrap();
            assert!(
                got == payload.as_bytes(),
                "{id}.{run}: {} bytes, sent {}",
                got.len(),
                payload.len()
            );
        }
    }
    assert!(queue_is_empty(&broker, &ch, "t.job.dead").await);
    let _ = std::fs::remove_dir_all(&dir.0);
}

/// A task of any JSON: typed as `serde_json::Value`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
struct AnyJob(serde_json::Value);

impl Task for AnyJob {
    const NAME: &'static str = "job";
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typed_value_handler_gets_what_serde_reads_from_the_enqueued_bytes() {
    let broker = TestBroker::new();
    let (settings, _conn, _ch) = broker.applied(TOPOLOGY).await;
    let topo = TempFile::with(TOPOLOGY);
    for (i, p) in EXACT_PAYLOADS.iter().enumerate() {
        let id = format!("p{i}");
        let args = ["enqueue", "job", "--id", &id, "--payload", p];
        let o = broker.cli_with(&args, &[("WARREN_TOPOLOGY", topo.as_str())], None);
        assert!(o.status.success(), "{}", crate::support::stderr(&o));
    }
    let got: Arc<Mutex<HashMap<String, serde_json::Value>>> = Arc::default();
    let seen = got.clone();
    let worker = Worker::new(&settings).handle(move |job: AnyJob, ctx: TaskContext| {
        seen.lock().unwrap().insert(ctx.id.clone(), job.0);
        async { Ok(()) }
    });
    let (token, handle) = spawn(worker);
    wait_count(Duration::from_secs(10), "three runs", 3, || {
        got.lock().unwrap().len()
    })
    .await;
    stop(token, handle).await;
    let got = got.lock().unwrap().clone();
    for (i, p) in EXACT_PAYLOADS.iter().enumerate() {
        // What serde reads from the bytes given (the big integer as f64, serde_json's
        // default). A `Value` cannot tell a re-serialized payload from the original (maps
        // compare without order, the f64 is the same): the exec test above checks the bytes.
        let direct: serde_json::Value = serde_json::from_str(p).unwrap();
        assert_eq!(got[&format!("p{i}")], direct, "payload {i}");
    }
    assert_eq!(got["p1"]["u"], "café 😀");
    assert_eq!(got["p1"]["raw"], "café 😀");
}

#[derive(Debug, Serialize, Deserialize)]
struct Other {
    n: u32,
}
impl Task for Other {
    const NAME: &'static str = "other";
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_handler_serves_every_task_type_none_starves_another() {
    // Concurrency 1 and two types: an idle type's consumer used to hold the only permit
    // while it waited for work of its own, and the other type never ran.
    let broker = TestBroker::new();
    let (settings, _conn, _ch) = broker.applied(&format!("{TOPOLOGY}[tasks.other]\n")).await;
    let ran = Arc::new(AtomicUsize::new(0));
    let (r1, r2) = (ran.clone(), ran.clone());
    let worker = Worker::new(&settings)
        .concurrency(1)
        .handle(move |_: Job, _: TaskContext| {
            r1.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        })
        .handle(move |_: Other, _: TaskContext| {
            r2.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        });
    let (token, handle) = spawn(worker);
    let producer = Producer::new(&settings).unwrap();
    // One `job`, then five `other`: once `job`'s consumer runs dry it must not keep the only
    // permit while it waits.
    producer.enqueue(&Job { n: 0 }).await.unwrap();
    for n in 0..5 {
        producer.enqueue(&Other { n }).await.unwrap();
    }
    wait_count(Duration::from_secs(20), "both types' tasks", 6, || {
        ran.load(Ordering::SeqCst)
    })
    .await;
    stop(token, handle).await;
}
