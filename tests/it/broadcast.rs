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
    // Role `w{index}`: its connection is `warren w{index} {host}:{pid}...`.
    let role = format!("w{index}");
    Worker::new(settings)
        .role(&role)
        .handle(move |t: Reload, ctx: TaskContext| {
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

/// Puts a dead copy of task `dead-1` into `t.reload.dead`, confirmed (`ch` in confirm mode).
async fn dead_copy(ch: &lapin::Channel) {
    let confirm = ch
        .basic_publish(
            "".into(),
            "t.reload.dead".into(),
            lapin::options::BasicPublishOptions::default(),
            b"{\"n\":3}",
            lapin::BasicProperties::default().with_message_id("dead-1".into()),
        )
        .await
        .unwrap();
    assert!(confirm.await.unwrap().is_ack());
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
    for r in producer.enqueue_many((0..10).map(|n| Reload { n })).await {
        r.unwrap();
    }
    wait_count(Duration::from_secs(20), "30 runs", 30, || {
        runs.lock().unwrap().len()
    })
    .await;
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
    assert!(
        table.contains("reload (broadcast)") && table.contains("3 workers"),
        "{table}"
    );
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
    wait_count(Duration::from_secs(20), "7 runs", 7, || {
        runs.lock().unwrap().len()
    })
    .await;
    let dead = take(
        &ch,
        "t.reload.dead",
        1,
        Instant::now(),
        Duration::from_secs(10),
    )
    .await;
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
    assert!(
        by.starts_with("warren w1 "),
        "worker 1 dead-lettered it: {by}"
    );
    // Its id names one of the running workers' own queues.
    let own = own_queues(&broker, "reload", 3).await;
    let id = by.trim_start_matches("warren w1 ");
    assert!(
        own.contains_key(&format!("t.reload@{id}")),
        "{by} vs {own:?}"
    );
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
    // Delayed: fans out when the delay ends, to the workers running then. 10 s leaves the
    // late worker time to start on a loaded machine; checked below.
    let delay = Duration::from_secs(10);
    let enqueued = Instant::now();
    producer
        .enqueue_with(&Reload { n: 2 }, EnqueueOptions::default().delay(delay))
        .await
        .unwrap();
    wait_count(Duration::from_secs(10), "worker 0 ran task 1", 1, || {
        runs.lock().unwrap().len()
    })
    .await;
    let late = spawn(recording_worker(&settings, 1, &runs, never));
    own_queues(&broker, "reload", 2).await;
    assert!(
        enqueued.elapsed() < delay,
        "the late worker took {:?} to subscribe, past the delay: the test proves nothing",
        enqueued.elapsed()
    );
    assert_eq!(
        runs_of(&runs),
        [(0, 1, 1)],
        "the delayed one has not fanned out yet"
    );
    wait_count(
        Duration::from_secs(25),
        "both ran the delayed task",
        3,
        || runs.lock().unwrap().len(),
    )
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
async fn a_broadcast_nobody_receives_goes_nowhere_and_a_replay_needs_a_worker_and_runs_once() {
    let broker = TestBroker::new();
    let (settings, _conn, ch) = broker.applied(TOPOLOGY).await;
    // No worker: the broker takes it and delivers it to nobody, an outcome of its own
    // (nothing is kept of it), not an id as if it were held somewhere
    let producer = Producer::new(&settings).unwrap();
    let unheard = producer.enqueue(&Reload { n: 1 }).await;
    assert!(
        matches!(&unheard, Err(warren::Error::NoListeners { task, .. }) if task == "reload"),
        "{unheard:?}"
    );
    let topology = TempFile::with(TOPOLOGY);
    let env = [("WARREN_TOPOLOGY", topology.as_str())];
    for count in ["1", "3"] {
        let cli = broker.cli_with(
            &[
                "enqueue",
                "reload",
                "--payload",
                "{\"n\":2}",
                "--count",
                count,
            ],
            &env,
            None,
        );
        assert_eq!(
            cli.status.code(),
            Some(4),
            "{}",
            crate::support::stderr(&cli)
        );
        assert!(
            crate::support::stderr(&cli)
                .contains("no worker receives `reload` broadcasts right now"),
            "{}",
            crate::support::stderr(&cli)
        );
        assert_eq!(crate::support::stdout(&cli), "", "no id is printed");
    }
    // A dead broadcast replayed while no worker receives the type would go nowhere: the
    // replay fails and the dead copy stays.
    ch.confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .unwrap();
    dead_copy(&ch).await;
    let cli_env = [("WARREN_TOPOLOGY", topology.as_str())];
    let replay = broker.cli_with(&["dlq", "replay", "reload", "--all"], &cli_env, None);
    assert_eq!(
        replay.status.code(),
        Some(1),
        "{}",
        crate::support::stderr(&replay)
    );
    assert!(
        crate::support::stdout(&replay).contains("FAILED dead-1 (still dead)"),
        "{}",
        crate::support::stdout(&replay)
    );
    broker.count_settles(&ch, "t.reload.dead", 1).await;
    // Two more copies of it, as if three workers had dead-lettered one broadcast each: with
    // a worker running, one replay reaches it, once, and the copies go.
    for _ in 0..2 {
        dead_copy(&ch).await;
    }
    let runs: Runs = Arc::default();
    let worker = spawn(recording_worker(&settings, 0, &runs, never));
    own_queues(&broker, "reload", 1).await;
    let replay = broker.cli_with(&["dlq", "replay", "reload", "--all"], &cli_env, None);
    let said = crate::support::stdout(&replay);
    assert!(
        replay.status.success(),
        "{said}{}",
        crate::support::stderr(&replay)
    );
    assert!(
        said.contains("replayed dead-1") && said.contains("2 more dead copies"),
        "{said}"
    );
    wait_count(Duration::from_secs(10), "the replay ran", 1, || {
        runs.lock().unwrap().len()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(runs_of(&runs), [(0, 3, 1)]);
    broker.count_settles(&ch, "t.reload.dead", 0).await;
    stop(worker.0, worker.1).await;
    // A type not declared broadcast still gets an unroutable publish as an error.
    let plain = producer
        .enqueue_raw("nosuch", b"{}".to_vec(), EnqueueOptions::default())
        .await;
    assert!(
        matches!(plain, Err(warren::Error::Unroutable { .. })),
        "{plain:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_broadcast_due_while_no_worker_listens_is_dead_as_no_listeners_and_replays() {
    // Given no worker of the broadcast type
    let broker = TestBroker::new();
    let (settings, _conn, ch) = broker.applied(TOPOLOGY).await;
    let producer = Producer::new(&settings).unwrap();
    // When a delayed broadcast falls due (the ladder took it: the enqueue succeeds)
    let id = producer
        .enqueue_with(
            &Reload { n: 7 },
            EnqueueOptions::default().delay(Duration::from_secs(1)),
        )
        .await
        .unwrap();
    // Then it is dead, not gone: `dlq list` names it with the reason, `status` counts it
    broker.count_settles(&ch, "t.reload.dead", 1).await;
    let topology = TempFile::with(TOPOLOGY);
    let env = [("WARREN_TOPOLOGY", topology.as_str())];
    let list = broker.cli_with(&["dlq", "list", "reload"], &env, None);
    let listed = crate::support::stdout(&list);
    assert!(
        list.status.success() && listed.contains(&id) && listed.contains("no_listeners"),
        "{listed}{}",
        crate::support::stderr(&list)
    );
    eventually(
        Duration::from_secs(15),
        "status counts the dead copy",
        || {
            let status = broker.cli_with(&["status", "--json"], &env, None);
            let json: serde_json::Value = serde_json::from_slice(&status.stdout).ok()?;
            let dead = json["tasks"]
                .as_array()?
                .iter()
                .find(|r| r["task"] == "reload")?["dead"]
                .as_u64()?;
            (dead == 1).then_some(())
        },
    )
    .await;
    // And once a worker listens, a replay runs it there, once
    let runs: Runs = Arc::default();
    let worker = spawn(recording_worker(&settings, 0, &runs, never));
    own_queues(&broker, "reload", 1).await;
    let replay = broker.cli_with(&["dlq", "replay", "reload", "--all"], &env, None);
    assert!(
        replay.status.success(),
        "{}{}",
        crate::support::stdout(&replay),
        crate::support::stderr(&replay)
    );
    wait_count(Duration::from_secs(10), "the replay ran", 1, || {
        runs.lock().unwrap().len()
    })
    .await;
    broker.count_settles(&ch, "t.reload.dead", 0).await;
    // And a delayed broadcast due while a worker listens reaches it and nothing goes dead
    producer
        .enqueue_with(
            &Reload { n: 8 },
            EnqueueOptions::default().delay(Duration::from_secs(1)),
        )
        .await
        .unwrap();
    wait_count(Duration::from_secs(15), "the delayed one ran", 2, || {
        runs.lock().unwrap().len()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(runs_of(&runs), [(0, 7, 1), (0, 8, 1)]);
    assert_eq!(broker.count(&ch, "t.reload.dead").await, 0);
    producer.close().await;
    stop(worker.0, worker.1).await;
}

fn first_attempt_fails(_: usize, _: u32, attempt: u32) -> Option<TaskError> {
    (attempt == 1).then(|| TaskError::retry("fails once"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_retry_due_after_its_worker_left_is_dead_as_no_listeners() {
    // Given a broadcast whose first run fails on the one worker, with its retry 3 s away
    let broker = TestBroker::new();
    let topology = TOPOLOGY.replace("initial = \"1s\"", "initial = \"3s\"");
    let (settings, _conn, ch) = broker.applied(&topology).await;
    let runs: Runs = Arc::default();
    let (token, handle) = spawn(recording_worker(&settings, 0, &runs, first_attempt_fails));
    own_queues(&broker, "reload", 1).await;
    let producer = Producer::new(&settings).unwrap();
    let id = producer.enqueue(&Reload { n: 5 }).await.unwrap();
    wait_count(Duration::from_secs(10), "the failing run", 1, || {
        runs.lock().unwrap().len()
    })
    .await;
    // When that worker stops before the retry falls due (its queue goes with it)
    stop(token, handle).await;
    own_queues(&broker, "reload", 0).await;
    // Then the retry, routed to a queue that no longer exists, is dead rather than dropped
    broker.count_settles(&ch, "t.reload.dead", 1).await;
    let file = TempFile::with(&topology);
    let env = [("WARREN_TOPOLOGY", file.as_str())];
    let list = broker.cli_with(&["dlq", "list", "reload"], &env, None);
    let listed = crate::support::stdout(&list);
    assert!(
        listed.contains(&id) && listed.contains("no_listeners"),
        "{listed}{}",
        crate::support::stderr(&list)
    );
    assert_eq!(
        runs_of(&runs),
        [(0, 5, 1)],
        "it ran once, on the worker that left"
    );
    producer.close().await;
}

/// The own queues of `task` in the test's vhost, with or without a consumer (a paused
/// worker keeps its queue and cancels its consumer), once `want` exist.
async fn own_queues_held(broker: &TestBroker, task: &str, want: usize) {
    let path = format!("queues/{}?columns=name", enc(&broker.vhost));
    let prefix = format!("t.{task}@");
    eventually(
        Duration::from_secs(20),
        &format!("{want} own queue(s) of `{task}`"),
        || {
            let list = broker.mgmt.get(&path).ok()?;
            let n = list
                .as_array()?
                .iter()
                .filter(|q| q["name"].as_str().is_some_and(|n| n.starts_with(&prefix)))
                .count();
            (n == want).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_holds_every_listener_and_a_cancel_reaches_every_listener_that_has_not_run_it() {
    // Given a paused broadcast type and three workers serving it (each keeps its own queue
    // while paused, so broadcasts are received and held, not lost)
    let broker = TestBroker::new();
    let (settings, _conn, ch) = broker.applied(TOPOLOGY).await;
    let producer = Producer::new(&settings).unwrap();
    producer.pause("reload").await.unwrap();
    let runs: Runs = Arc::default();
    let workers: Vec<_> = (0..3)
        .map(|i| spawn(recording_worker(&settings, i, &runs, never)))
        .collect();
    own_queues_held(&broker, "reload", 3).await;
    // When two broadcasts are enqueued while paused
    let held = producer.enqueue(&Reload { n: 1 }).await.unwrap();
    producer.enqueue(&Reload { n: 2 }).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Then no listener runs either
    assert_eq!(
        runs_of(&runs),
        vec![],
        "nothing runs on any listener while paused"
    );
    // When the first is cancelled and the type resumed
    producer
        .cancel("reload", std::slice::from_ref(&held))
        .await
        .unwrap();
    producer.resume("reload").await.unwrap();
    // Then every listener runs the second once, and none runs the cancelled one: each
    // listener's copy goes dead as `cancelled`, unrun
    wait_count(Duration::from_secs(20), "3 runs", 3, || {
        runs.lock().unwrap().len()
    })
    .await;
    broker.count_settles(&ch, "t.reload.dead", 3).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let seen = runs_of(&runs);
    let workers_ran: HashSet<usize> = seen.iter().map(|(w, _, _)| *w).collect();
    assert!(
        seen.len() == 3 && seen.iter().all(|(_, n, _)| *n == 2) && workers_ran.len() == 3,
        "each listener ran the second broadcast once and the cancelled one never: {seen:?}"
    );
    let dead = take(
        &ch,
        "t.reload.dead",
        3,
        Instant::now(),
        Duration::from_secs(10),
    )
    .await;
    for (_, d) in &dead {
        assert_eq!(
            d.properties.message_id().as_ref().map(|m| m.as_str()),
            Some(held.as_str())
        );
        assert_eq!(crate::worker::header_str(d, "warren-reason"), "cancelled");
    }
    let by: HashSet<String> = dead
        .iter()
        .map(|(_, d)| crate::worker::header_str(d, "warren-worker"))
        .collect();
    assert_eq!(by.len(), 3, "one dead copy per listener: {by:?}");
    producer.close().await;
    for (token, handle) in workers {
        stop(token, handle).await;
    }
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
    wait_count(Duration::from_secs(20), "4 runs done", 4, || {
        done.lines().len()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let finished = done.lines();
    let victim = victim_pid.to_string();
    assert!(
        finished.iter().all(|l| !l.ends_with(&format!(" {victim}"))),
        "the killed worker finished nothing: {finished:?}"
    );
    for id in [&first, &second] {
        assert_eq!(
            finished
                .iter()
                .filter(|l| l.starts_with(id.as_str()))
                .count(),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_connection_drops_gets_its_queue_back_and_its_pending_retry() {
    let broker = TestBroker::new();
    // The retry waits 10 s in the ladder: long enough to drop the connection under it and
    // reconnect on a loaded machine (checked below).
    let topology = TOPOLOGY.replace("initial = \"1s\"", "initial = \"10s\"");
    let (settings, _conn, _ch) = broker.applied(&topology).await;
    let runs: Runs = Arc::default();
    fn once(_: usize, n: u32, attempt: u32) -> Option<TaskError> {
        (n == 1 && attempt == 1).then(|| TaskError::retry("once"))
    }
    let worker = spawn(recording_worker(&settings, 0, &runs, once));
    let own = own_queues(&broker, "reload", 1).await;
    let queue = own.keys().next().unwrap().clone();
    let name = format!("warren w0 {}", queue.trim_start_matches("t.reload@"));
    // The management API lists a connection once its statistics arrived.
    eventually(
        Duration::from_secs(20),
        "the worker's connection listed",
        || {
            let list = broker.mgmt.connections().ok()?;
            list.iter()
                .any(|c| c["client_properties"]["connection_name"] == name.as_str())
                .then_some(())
        },
    )
    .await;
    let producer = Producer::new(&settings).unwrap();
    producer.enqueue(&Reload { n: 1 }).await.unwrap();
    wait_count(Duration::from_secs(10), "attempt 1", 1, || {
        runs.lock().unwrap().len()
    })
    .await;
    let failed = Instant::now();
    let closed = broker.mgmt.close_connections_named(&name).unwrap();
    assert_eq!(closed, 1);
    assert_eq!(
        runs_of(&runs),
        [(0, 1, 1)],
        "the retry is still in the ladder"
    );
    // It reconnects and declares its queue again, under the same name: new broadcasts reach
    // it (probes until one does), and so does the retry addressed to it.
    let mut probe = 100;
    while !runs_of(&runs).iter().any(|(_, n, _)| *n >= 100) {
        assert!(
            probe < 140,
            "no probe reached the reconnected worker in 20 s"
        );
        // Heard by nobody while it is away: said so, not an error of the test.
        match producer.enqueue(&Reload { n: probe }).await {
            Ok(_) | Err(warren::Error::NoListeners { .. }) => {}
            Err(e) => panic!("{e}"),
        }
        probe += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        own_queues(&broker, "reload", 1).await,
        own,
        "the same queue"
    );
    assert!(
        !runs_of(&runs).contains(&(0, 1, 2)) && failed.elapsed() < Duration::from_secs(10),
        "reconnected only after the retry fell due ({:?}): the test proves nothing",
        failed.elapsed()
    );
    wait_count(Duration::from_secs(20), "the retry", 1, || {
        runs_of(&runs).iter().filter(|r| **r == (0, 1, 2)).count()
    })
    .await;
    stop(worker.0, worker.1).await;
}

#[test]
fn applying_a_type_turned_broadcast_warns_of_its_old_work_queue() {
    let broker = TestBroker::new();
    let before = TempFile::with(&TOPOLOGY.replace("broadcast = true\n", ""));
    let after = TempFile::with(TOPOLOGY);
    let apply = |topology: &TempFile| {
        broker.cli_with(
            &["topology", "apply"],
            &[("WARREN_TOPOLOGY", topology.as_str())],
            None,
        )
    };
    let plain = apply(&before);
    assert!(plain.status.success(), "{}", crate::support::stderr(&plain));
    let turned = apply(&after);
    let err = crate::support::stderr(&turned);
    assert!(turned.status.success(), "{err}");
    assert!(err.contains("old work queue `t.reload`"), "{err}");
    // Applied again once the queue is gone: nothing to say.
    broker
        .mgmt
        .delete(&format!("queues/{}/t.reload", enc(&broker.vhost)))
        .unwrap();
    let clean = apply(&after);
    assert!(
        !crate::support::stderr(&clean).contains("old work queue"),
        "{}",
        crate::support::stderr(&clean)
    );
}
