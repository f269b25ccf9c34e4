//! Broadcast task types on a real broker: every worker running when a task is delivered runs
//! it once; retries and dead letters stay with the worker whose run failed; a worker that
//! starts later misses what came before; a killed worker's queue goes with it.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use warren::ops::management::enc;
use warren::{EnqueueOptions, Producer, Settings, Task, TaskContext, TaskError, Worker};

use crate::support::{TempFile, TestBroker, eventually, take};
use crate::worker::{signal, spawn, stop, wait_count, wait_exit, worker_process};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Reload {
    n: u32,
}

impl Task for Reload {
    const NAME: &'static str = "reload";
}

/// A broadcast type with fast retries (1 s), beside an ordinary one.
const TOPOLOGY: &str = r#"
max_delay = "1h"
queue_type = "quorum"
[defaults]
max_attempts = 3
time_limit = "10s"
[defaults.backoff]
initial = "1s"
jitter = 0.0
[tasks.reload]
broadcast = true
[tasks.job]
"#;

/// One run: which worker (its index in the test), which task, which attempt.
type Runs = Arc<Mutex<Vec<(usize, u32, u32)>>>;

/// Worker `index`, recording each run in `runs`; `fail(index, n, attempt)` decides failures.
fn recording_worker(
    settings: &Settings,
    index: usize,
    runs: &Runs,
    fail: fn(usize, u32, u32) -> Option<TaskError>,
) -> Worker {
    let runs = runs.clone();
    Worker::new(settings).handle(move |t: Reload, ctx: TaskContext| {
        let runs = runs.clone();
        async move {
            runs.lock().unwrap().push((index, t.n, ctx.attempt));
            match fail(index, t.n, ctx.attempt) {
                Some(e) => Err(e),
                None => Ok(()),
            }
        }
    })
}

fn never(_: usize, _: u32, _: u32) -> Option<TaskError> {
    None
}

/// The workers' own queues of `task` in the test's vhost (name → consumers), once `want`
/// of them exist, each with its consumer.
async fn own_queues(broker: &TestBroker, task: &str, want: usize) -> BTreeMap<String, u64> {
    let path = format!(
        "queues/{}?columns=name,consumers,exclusive",
        enc(&broker.vhost)
    );
    let prefix = format!("t.{task}@");
    eventually(
        Duration::from_secs(20),
        &format!("{want} own queue(s) of `{task}`"),
        || {
            let list = broker.mgmt.get(&path).ok()?;
            let own: BTreeMap<String, u64> = list
                .as_array()?
                .iter()
                .filter_map(|q| {
                    let name = q["name"].as_str()?;
                    name.starts_with(&prefix).then(|| {
                        assert_eq!(q["exclusive"], true, "{name} is exclusive");
                        (name.to_string(), q["consumers"].as_u64().unwrap_or(0))
                    })
                })
                .collect();
            (own.len() == want && own.values().all(|c| *c == 1)).then_some(own)
        },
    )
    .await
}

fn runs_of(runs: &Runs) -> Vec<(usize, u32, u32)> {
    runs.lock().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_each_run_each_of_ten_broadcasts_once() {
    let broker = TestBroker::new();
    let (settings, _conn, _ch) = broker.applied(TOPOLOGY).await;
    let runs: Runs = Arc::default();
    let workers: Vec<_> = (0..3)
        .map(|i| spawn(recording_worker(&settings, i, &runs, never)))
        .collect();
    let own = own_queues(&broker, "reload", 3).await;
    // Named after each worker, next to its connection's name.
    let host_pid = format!(":{}", std::process::id());
    assert!(
        own.keys().all(|q| q.contains(&host_pid)),
        "queues name host and pid: {own:?}"
    );
    let producer = Producer::new(&settings).unwrap();
    for r in producer
        .enqueue_many((0..10).map(|n| Reload { n }))
        .await
    {
        r.unwrap();
    }
    wait_count(Duration::from_secs(20), "30 runs", 30, || runs.lock().unwrap().len()).await;
    // Anything extra would have arrived by now: the queues were local and the runs instant.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let seen = runs_of(&runs);
    assert_eq!(seen.len(), 30, "{seen:?}");
    let pairs: HashSet<(usize, u32)> = seen.iter().map(|(w, n, _)| (*w, *n)).collect();
    assert_eq!(pairs.len(), 30, "each worker ran each task once: {seen:?}");
    // `warren status` counts the workers receiving the type.
    let status = broker.cli(&["status", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let row = json["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["task"] == "reload")
        .expect("a reload row")
        .clone();
    assert_eq!(row["broadcast_workers"], 3, "{json}");
    let table = crate::support::stdout(&broker.cli(&["status"]));
    assert!(table.contains("reload (broadcast)") && table.contains("3 workers"), "{table}");
    for (token, handle) in workers {
        stop(token, handle).await;
    }
    // Stopped workers take their queues with them.
    own_queues(&broker, "reload", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_fails_on_one_worker_is_retried_there_only_and_dies_there_naming_it() {
    let broker = TestBroker::new();
    let (settings, _conn, ch) = broker.applied(TOPOLOGY).await;
    let runs: Runs = Arc::default();
    // Worker 1 fails task 0 once (retried), and task 1 for good (dead after 3 attempts).
    fn flaky(worker: usize, n: u32, attempt: u32) -> Option<TaskError> {
        match (worker, n) {
            (1, 0) if attempt == 1 => Some(TaskError::retry("once")),
            (1, 1) => Some(TaskError::permanent("never here")),
            _ => None,
        }
    }
    let workers: Vec<_> = (0..3)
        .map(|i| spawn(recording_worker(&settings, i, &runs, flaky)))
        .collect();
    own_queues(&broker, "reload", 3).await;
    let producer = Producer::new(&settings).unwrap();
    for n in 0..2 {
        producer.enqueue(&Reload { n }).await.unwrap();
    }
    // 3 runs of task 0 + 1 retry on worker 1, 3 runs of task 1.
    wait_count(Duration::from_secs(20), "7 runs", 7, || runs.lock().unwrap().len()).await;
    let dead = take(&ch, "t.reload.dead", 1, Instant::now(), Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut seen = runs_of(&runs);
    seen.sort();
    assert_eq!(
        seen,
        [
            (0, 0, 1),
            (0, 1, 1),
            (1, 0, 1),
            (1, 0, 2),
            (1, 1, 1),
            (2, 0, 1),
            (2, 1, 1)
        ],
        "only worker 1 ran task 0 again, as its attempt 2"
    );
    let death = warren::wire::decode::Death::read(&dead[0].1.properties);
    assert_eq!(death.reason.as_deref(), Some("permanent"));
    let by = death.worker.expect("warren-worker");
    assert!(by.starts_with("warren worker "), "{by}");
    // It is worker 1's connection: its id is the suffix of exactly one own queue... which
    // is gone once that worker stops; so check while they run.
    let own = own_queues(&broker, "reload", 3).await;
    let id = by.trim_start_matches("warren worker ");
    assert!(own.contains_key(&format!("t.reload@{id}")), "{by} vs {own:?}");
    for (token, handle) in workers {
        stop(token, handle).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_after_a_broadcast_misses_it_but_gets_a_delayed_one_that_lands_later() {
    let broker = TestBroker::new();
    let (settings, _conn, _ch) = broker.applied(TOPOLOGY).await;
    let runs: Runs = Arc::default();
    let first = spawn(recording_worker(&settings, 0, &runs, never));
    own_queues(&broker, "reload", 1).await;
    let producer = Producer::new(&settings).unwrap();
    producer.enqueue(&Reload { n: 1 }).await.unwrap();
    // Delayed: fans out when the delay ends, to the workers running then.
    let delayed = EnqueueOptions::default().delay(Duration::from_secs(4));
    producer
        .enqueue_with(&Reload { n: 2 }, delayed)
        .await
        .unwrap();
    wait_count(Duration::from_secs(10), "worker 0 ran task 1", 1, || {
        runs.lock().unwrap().len()
    })
    .await;
    let late = spawn(recording_worker(&settings, 1, &runs, never));
    own_queues(&broker, "reload", 2).await;
    wait_count(Duration::from_secs(20), "both ran the delayed task", 3, || {
        runs.lock().unwrap().len()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut seen = runs_of(&runs);
    seen.sort();
    assert_eq!(
        seen,
        [(0, 1, 1), (0, 2, 1), (1, 2, 1)],
        "the late worker missed task 1 and ran the delayed task 2"
    );
    stop(first.0, first.1).await;
    stop(late.0, late.1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_nobody_receives_is_enqueued_to_no_one_and_its_replay_is_refused() {
    let broker = TestBroker::new();
    let (settings, _conn, ch) = broker.applied(TOPOLOGY).await;
    // No worker: the enqueue succeeds (it ran on every worker running: none).
    let producer = Producer::new(&settings).unwrap();
    producer.enqueue(&Reload { n: 1 }).await.unwrap();
    let topology = TempFile::with(TOPOLOGY);
    let cli = broker.cli_with(
        &["enqueue", "reload", "--payload", "{\"n\":2}"],
        &[("WARREN_TOPOLOGY", topology.as_str())],
        None,
    );
    assert!(cli.status.success(), "{}", crate::support::stderr(&cli));
    assert!(
        crate::support::stderr(&cli).contains("no worker receives this broadcast type"),
        "{}",
        crate::support::stderr(&cli)
    );
    // A dead broadcast replayed while no worker receives the type would go nowhere: the
    // replay fails and the dead copy stays.
    ch.basic_publish(
        "".into(),
        "t.reload.dead".into(),
        lapin::options::BasicPublishOptions::default(),
        b"{\"n\":3}",
        lapin::BasicProperties::default().with_message_id("dead-1".into()),
    )
    .await
    .unwrap();
    let cli_env = [("WARREN_TOPOLOGY", topology.as_str())];
    let replay = broker.cli_with(&["dlq", "replay", "reload", "--all"], &cli_env, None);
    assert_eq!(replay.status.code(), Some(1), "{}", crate::support::stderr(&replay));
    assert!(
        crate::support::stdout(&replay).contains("FAILED dead-1 (still dead)"),
        "{}",
        crate::support::stdout(&replay)
    );
    assert_eq!(broker.count(&ch, "t.reload.dead").await, 1);
    // The ordinary type next to it still refuses an unroutable publish.
    let plain = producer.enqueue_raw("nosuch", b"{}".to_vec(), EnqueueOptions::default()).await;
    assert!(
        matches!(plain, Err(warren::Error::Unroutable { .. })),
        "{plain:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_worker_mid_run_leaves_the_others_running_and_takes_its_queue_away() {
    let broker = TestBroker::new();
    let (settings, _conn, _ch) = broker.applied(TOPOLOGY).await;
    let dir = TempFile::path("bcast");
    std::fs::create_dir_all(&dir.0).unwrap();
    let started = TempFile(dir.0.join("started"));
    let done = TempFile(dir.0.join("done"));
    // `$PPID` of the handler's shell is the worker process.
    let script = format!(
        "echo $WARREN_TASK_ID $PPID >> {}; sleep 2; echo $WARREN_TASK_ID $PPID >> {}",
        started.as_str(),
        done.as_str()
    );
    let topo = TempFile::with(&format!(
        "{}\nexec = [\"sh\", \"-c\", \"{script}\"]\n",
        TOPOLOGY.replace("[tasks.job]\n", "").trim_end()
    ));
    let mut workers: Vec<_> = (0..3)
        .map(|_| worker_process(&broker, &topo, &[]))
        .collect();
    let own = own_queues(&broker, "reload", 3).await;
    let victim_pid = workers[0].0.id();
    let victim_queue = own
        .keys()
        .find(|q| q.ends_with(&format!(":{victim_pid}")))
        .expect("the victim's queue")
        .clone();
    let producer = Producer::new(&settings).unwrap();
    let first = producer.enqueue(&Reload { n: 1 }).await.unwrap();
    wait_count(Duration::from_secs(20), "3 runs started", 3, || {
        started.lines().len()
    })
    .await;
    signal(&workers[0].0, "-KILL");
    wait_exit(&mut workers[0].0, Duration::from_secs(10)).await;
    // Its queue is gone with its connection; the other two finish and take the next one.
    let remaining = own_queues(&broker, "reload", 2).await;
    assert!(!remaining.contains_key(&victim_queue), "{remaining:?}");
    let second = producer.enqueue(&Reload { n: 2 }).await.unwrap();
    wait_count(Duration::from_secs(20), "4 runs done", 4, || done.lines().len()).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let finished = done.lines();
    let victim = victim_pid.to_string();
    assert!(
        finished.iter().all(|l| !l.ends_with(&victim)),
        "the killed worker finished nothing: {finished:?}"
    );
    for id in [&first, &second] {
        assert_eq!(
            finished.iter().filter(|l| l.starts_with(id.as_str())).count(),
            2,
            "both survivors ran {id}: {finished:?}"
        );
    }
    for w in workers.iter_mut().skip(1) {
        signal(&w.0, "-TERM");
        assert!(wait_exit(&mut w.0, Duration::from_secs(15)).await.success());
    }
    let _ = std::fs::remove_dir_all(&dir.0);
}
