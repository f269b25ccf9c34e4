//! Unique tasks on a real broker: one key, many concurrent enqueues, exactly one accepted; the
//! key is held while the task waits or runs (a killed worker included) and freed when its
//! outcome is final; `unique_for` holds it longer.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use warren::{EnqueueOptions, Error, Producer, Task, TaskContext, TaskError, Worker};

use crate::support::{TempFile, TestBroker, stderr};
use crate::worker::{signal, spawn, stop, wait_count, wait_exit, worker_process};

#[derive(Debug, Serialize, Deserialize)]
struct Report {
    fail: bool,
}
impl Task for Report {
    const NAME: &'static str = "report";
}

const TOPOLOGY: &str = r#"
max_delay = "1h"
queue_type = "quorum"
[defaults]
max_attempts = 3
time_limit = "20s"
[tasks.report]
"#;

/// Calls `f` until it gives `Ok` or `within` passed; the last result. (A key is released
/// just before the task's ack, so right after a run it may still be held for a moment.)
async fn until_ok<F, Fut>(within: Duration, f: F) -> warren::Result<String>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = warren::Result<String>>,
{
    let deadline = Instant::now() + within;
    loop {
        let r = f().await;
        if r.is_ok() || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn key(k: &str) -> EnqueueOptions {
    EnqueueOptions::default().unique(k, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_hundred_concurrent_enqueues_of_one_key_exactly_one_is_accepted() {
    let broker = TestBroker::new();
    let (settings, _conn, ch) = broker.applied(TOPOLOGY).await;
    // Four producers, each its own connection, 50 concurrent enqueues each.
    let producers: Vec<Producer> = (0..4)
        .map(|i| Producer::with_role(&settings, &format!("p{i}")).unwrap())
        .collect();
    let calls = producers
        .iter()
        .flat_map(|p| (0..50).map(move |_| p.enqueue_with(&Report { fail: false }, key("daily"))));
    let results = join_all(calls).await;
    let accepted = results.iter().filter(|r| r.is_ok()).count();
    let duplicates = results
        .iter()
        .filter(|r| matches!(r, Err(Error::Duplicate { key, .. }) if key == "daily"))
        .count();
    assert_eq!(
        (accepted, duplicates),
        (1, 199),
        "{:?}",
        results
            .iter()
            .find(|r| r.is_err() && !matches!(r, Err(Error::Duplicate { .. })))
    );
    assert_eq!(broker.count(&ch, "t.report").await, 1, "one task enqueued");
    // Once it ran, the key is free again, and its queue gone.
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let worker = spawn(
        Worker::new(&settings).handle(move |t: Report, _: TaskContext| {
            r.fetch_add(1, Ordering::SeqCst);
            async move {
                if t.fail {
                    return Err(TaskError::permanent("no data"));
                }
                Ok(())
            }
        }),
    );
    wait_count(Duration::from_secs(10), "the report", 1, || {
        ran.load(Ordering::SeqCst)
    })
    .await;
    let again = until_ok(Duration::from_secs(5), || async {
        producers[0]
            .enqueue_with(&Report { fail: false }, key("daily"))
            .await
    })
    .await;
    assert!(again.is_ok(), "{again:?}");
    wait_count(Duration::from_secs(10), "the second report", 2, || {
        ran.load(Ordering::SeqCst)
    })
    .await;
    // A task that goes dead frees its key too.
    producers[0]
        .enqueue_with(&Report { fail: true }, key("dies"))
        .await
        .unwrap();
    wait_count(Duration::from_secs(10), "the failing report", 3, || {
        ran.load(Ordering::SeqCst)
    })
    .await;
    let after_death = until_ok(Duration::from_secs(5), || async {
        producers[0]
            .enqueue_with(&Report { fail: false }, key("dies"))
            .await
    })
    .await;
    assert!(after_death.is_ok(), "{after_death:?}");
    stop(worker.0, worker.1).await;
    let gone = warren::broker::inspect(
        &broker.connect().await.create_channel().await.unwrap(),
        "t.report.unique.daily",
    )
    .await;
    assert!(gone.is_err(), "the released key's queue is deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_for_holds_the_key_after_the_task_finished() {
    let broker = TestBroker::new();
    let (settings, _conn, _ch) = broker.applied(TOPOLOGY).await;
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let worker = spawn(
        Worker::new(&settings).handle(move |_: Report, _: TaskContext| {
            r.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        }),
    );
    let producer = Producer::new(&settings).unwrap();
    let hold = Duration::from_secs(10);
    let window = EnqueueOptions::default().unique("hourly", Some(hold));
    let started = Instant::now();
    producer
        .enqueue_with(&Report { fail: false }, window.clone())
        .await
        .unwrap();
    wait_count(Duration::from_secs(10), "the report", 1, || {
        ran.load(Ordering::SeqCst)
    })
    .await;
    // Finished and its key released (the key's queue gone), but within the window: held.
    let conn = broker.connect().await;
    let mut released = false;
    for _ in 0..50 {
        // A passive declare of a missing queue closes its channel: one channel per probe.
        let probe = conn.create_channel().await.unwrap();
        if warren::broker::inspect(&probe, "t.report.unique.hourly")
            .await
            .is_err()
        {
            released = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(released, "the finished task's key queue was not released");
    let held = producer
        .enqueue_with(&Report { fail: false }, window.clone())
        .await;
    assert!(
        started.elapsed() < hold,
        "the first run took the whole window ({:?}): the test proves nothing",
        started.elapsed()
    );
    assert!(matches!(held, Err(Error::Duplicate { .. })), "{held:?}");
    // After the window: free.
    tokio::time::sleep(hold.saturating_sub(started.elapsed()) + Duration::from_millis(500)).await;
    let after = until_ok(Duration::from_secs(5), || {
        producer.enqueue_with(&Report { fail: false }, window.clone())
    })
    .await;
    assert!(after.is_ok(), "{after:?}");
    stop(worker.0, worker.1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_while_running_a_unique_task_leaves_the_key_held_until_it_finishes() {
    let broker = TestBroker::new();
    let dir = TempFile::path("unique");
    std::fs::create_dir_all(&dir.0).unwrap();
    let started = dir.0.join("started");
    let done = dir.0.join("done");
    let topo = TempFile::with(&format!(
        "{TOPOLOGY}exec = [\"sh\", \"-c\", \"echo $WARREN_ATTEMPT >> {}; sleep 3; echo done >> {}\"]\n",
        started.display(),
        done.display()
    ));
    let env = [("WARREN_TOPOLOGY", topo.as_str())];
    let apply = broker.cli_with(&["topology", "apply"], &env, None);
    assert!(apply.status.success(), "{}", stderr(&apply));
    let cli = |args: &[&str]| broker.cli_with(args, &env, None);
    let first = cli(&["enqueue", "report", "--unique", "nightly"]);
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    let lines = || {
        std::fs::read_to_string(&started)
            .unwrap_or_default()
            .lines()
            .count()
    };
    let mut worker = worker_process(&broker, &topo, &[]);
    wait_count(Duration::from_secs(20), "the run", 1, lines).await;
    signal(&worker, "-KILL");
    wait_exit(&mut worker, Duration::from_secs(10)).await;
    // The task is back in its queue, and its key still held: a second enqueue is a duplicate.
    let dup = cli(&["enqueue", "report", "--unique", "nightly"]);
    assert_eq!(dup.status.code(), Some(3), "{}", stderr(&dup));
    assert!(
        stderr(&dup).contains("duplicate") && stderr(&dup).contains("nightly"),
        "{}",
        stderr(&dup)
    );
    // A new worker runs it again to the end, which frees the key.
    let _worker = worker_process(&broker, &topo, &[]);
    wait_count(Duration::from_secs(20), "the rerun", 2, lines).await;
    // Running again (3 s): still held.
    let running = cli(&["enqueue", "report", "--unique", "nightly"]);
    let finished = done.exists();
    assert!(
        finished || running.status.code() == Some(3),
        "a duplicate while the rerun runs: {}",
        stderr(&running)
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = cli(&["enqueue", "report", "--unique", "nightly"]);
        if o.status.code() == Some(0) {
            assert!(done.exists(), "the key was freed before the rerun finished");
            break;
        }
        assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
        assert!(Instant::now() < deadline, "the key was never freed");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let _ = std::fs::remove_dir_all(&dir.0);
}

#[test]
fn bad_unique_keys_are_usage_errors() {
    let broker = TestBroker::new();
    let topo = TempFile::with(&format!("{TOPOLOGY}[tasks.reload]\nbroadcast = true\n"));
    let env = [("WARREN_TOPOLOGY", topo.as_str())];
    let apply = broker.cli_with(&["topology", "apply"], &env, None);
    assert!(apply.status.success(), "{}", stderr(&apply));
    let long = "k".repeat(201);
    for (args, needle) in [
        (vec!["enqueue", "report", "--unique", ""], "1 to 200 bytes"),
        (
            vec!["enqueue", "report", "--unique", long.as_str()],
            "it is 201",
        ),
        (
            vec!["enqueue", "report", "--unique", "a\tb"],
            "control character",
        ),
        (vec!["enqueue", "report", "--unique-for", "10m"], "--unique"),
        (vec!["enqueue", "reload", "--unique", "k"], "broadcast"),
        (
            vec!["enqueue", "report", "--unique", "k", "--count", "2"],
            "cannot be used with",
        ),
    ] {
        let o = broker.cli_with(&args, &env, None);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_unique_task_frees_its_key_with_no_worker_running() {
    let broker = TestBroker::new();
    let (settings, _conn, _ch) = broker.applied(TOPOLOGY).await;
    let producer = Producer::new(&settings).unwrap();
    let expiring = key("soon").expires_in(Duration::from_secs(1));
    producer
        .enqueue_with(&Report { fail: false }, expiring.clone())
        .await
        .unwrap();
    let held = producer
        .enqueue_with(&Report { fail: false }, expiring.clone())
        .await;
    assert!(matches!(held, Err(Error::Duplicate { .. })), "{held:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = until_ok(Duration::from_secs(5), || {
        producer.enqueue_with(&Report { fail: false }, expiring.clone())
    })
    .await;
    assert!(after.is_ok(), "{after:?}");
}

#[test]
fn of_two_hundred_warren_enqueue_processes_with_one_key_exactly_one_is_accepted() {
    // The same race across processes: 200 `warren enqueue --unique` at once, each with its
    // own connection; exactly one exits 0, every other exits 3.
    let broker = TestBroker::new();
    let topo = TempFile::with(TOPOLOGY);
    let apply = broker.cli_with(
        &["topology", "apply"],
        &[("WARREN_TOPOLOGY", topo.as_str())],
        None,
    );
    assert!(apply.status.success(), "{}", stderr(&apply));
    let children: Vec<std::process::Child> = (0..200)
        .map(|_| {
            crate::support::warren_bin()
                .env("WARREN_AMQP_URL", broker.amqp_url())
                .env("WARREN_NAMESPACE", "t")
                .env("WARREN_TOPOLOGY", topo.as_str())
                .args(["enqueue", "report", "--unique", "once"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("start warren enqueue")
        })
        .collect();
    let mut codes = std::collections::BTreeMap::new();
    let mut other = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        let code = out.status.code();
        *codes.entry(code).or_insert(0) += 1;
        if code != Some(0) && code != Some(3) {
            other.push(String::from_utf8_lossy(&out.stderr).into_owned());
        }
    }
    assert_eq!(
        codes,
        [(Some(0), 1), (Some(3), 199)].into_iter().collect(),
        "other failures: {other:?}"
    );
}

#[derive(Debug, Serialize, Deserialize)]
struct Reload {}
impl Task for Reload {
    const NAME: &'static str = "reload";
}

/// Names in the test's vhost of `kind` (`queues`, `exchanges`) that belong to namespace `t`.
fn namespace_objects(broker: &TestBroker, kind: &str) -> Vec<String> {
    let path = format!("{kind}/{}", warren::ops::management::enc(&broker.vhost));
    let listed = broker.mgmt.get(&path).unwrap();
    (listed.as_array().unwrap().iter())
        .filter_map(|o| o["name"].as_str())
        .filter(|name| name.starts_with("t."))
        .map(str::to_string)
        .collect()
}

/// Enqueues a `report` under unique key `k` with a producer of its own, closed after.
async fn enqueue_keyed(settings: &warren::Settings, k: &str) {
    let producer = Producer::new(settings).unwrap();
    let enqueued = producer.enqueue_with(&Report { fail: false }, key(k)).await;
    producer.close().await;
    enqueued.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_delete_takes_unique_keys_and_refuses_while_a_broadcast_worker_runs() {
    let broker = TestBroker::new();
    let toml = format!("{TOPOLOGY}[tasks.reload]\nbroadcast = true\n");
    let (settings, _conn, ch) = broker.applied(&toml).await;
    enqueue_keyed(&settings, "k-del").await;
    assert_eq!(broker.count(&ch, "t.report.unique.k-del").await, 1);
    let worker = Worker::new(&settings).handle(|_: Reload, _: TaskContext| async { Ok(()) });
    let (token, handle) = spawn(worker);
    let own = crate::support::eventually(Duration::from_secs(20), "the worker's own queue", || {
        namespace_objects(&broker, "queues")
            .into_iter()
            .find(|q| q.starts_with("t.reload@"))
    })
    .await;
    let file = TempFile::with(&toml);
    let env = [("WARREN_TOPOLOGY", file.as_str())];
    // A running broadcast worker keeps the namespace, like a busy work queue.
    let refused = broker.cli_with(&["topology", "delete", "--if-empty"], &env, None);
    let said = crate::support::stdout(&refused);
    assert_eq!(refused.status.code(), Some(1), "{said}{}", stderr(&refused));
    assert!(said.contains(&format!("kept queue        {own}")), "{said}");
    assert!(said.contains("kept queue        t.report "), "{said}");
    assert!(
        !said.contains("t.report.unique.k-del"),
        "the key of a task still waiting stays: {said}"
    );
    assert_eq!(broker.count(&ch, "t.report.unique.k-del").await, 1);
    // Nor does --yes: the worker's queue is its connection's alone, and deleting the rest
    // would leave a half namespace. Nothing is deleted.
    let refused = broker.cli_with(&["topology", "delete", "--yes"], &env, None);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(stderr(&refused).contains(&own), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("nothing deleted"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(broker.count(&ch, "t.report.unique.k-del").await, 1);
    assert_eq!(broker.count(&ch, "t.report").await, 1);
    stop(token, handle).await;
    let deleted = broker.cli_with(&["topology", "delete", "--yes"], &env, None);
    let said = crate::support::stdout(&deleted);
    assert!(deleted.status.success(), "{said}{}", stderr(&deleted));
    assert!(
        said.contains("deleted queue     t.report.unique.k-del  (1 messages)"),
        "{said}"
    );
    assert_eq!(namespace_objects(&broker, "queues"), Vec::<String>::new());
    assert_eq!(
        namespace_objects(&broker, "exchanges"),
        Vec::<String>::new()
    );
    // Applied again, the namespace takes the same key at once.
    let applied = broker.cli_with(&["topology", "apply"], &env, None);
    assert!(applied.status.success(), "{}", stderr(&applied));
    enqueue_keyed(&settings, "k-del").await;
    let cleaned = broker.cli_with(&["topology", "delete", "--yes"], &env, None);
    assert!(cleaned.status.success(), "{}", stderr(&cleaned));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_kills_its_worker_goes_dead_at_its_delivery_limit_and_frees_its_key() {
    // Given a unique task whose every run kills its worker (`kill -9` of the exec handler's
    // parent), a delivery limit of 2, and a supervisor that restarts the worker
    let broker = TestBroker::new();
    let runs = TempFile::path("crash-runs");
    let topo = TempFile::with(&format!(
        "{TOPOLOGY}[tasks.crash]\ndelivery_limit = 2\n\
         exec = [\"sh\", \"-c\", \"echo run >> {}; kill -9 $PPID; sleep 5\"]\n",
        runs.as_str()
    ));
    let env = [("WARREN_TOPOLOGY", topo.as_str())];
    let apply = broker.cli_with(&["topology", "apply"], &env, None);
    assert!(apply.status.success(), "{}", stderr(&apply));
    let first = broker.cli_with(&["enqueue", "crash", "--unique", "k-1"], &env, None);
    assert!(first.status.success(), "{}", stderr(&first));
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let mut starts = 0;
    while broker.count(&ch, "t.crash.dead").await == 0 {
        assert!(starts < 6, "still not dead after {starts} worker starts");
        let mut worker = worker_process(&broker, &topo, &[]);
        starts += 1;
        // It dies by its task, or is stopped once the task is dead.
        let deadline = Instant::now() + Duration::from_secs(20);
        while worker.try_wait().unwrap().is_none() {
            if broker.count(&ch, "t.crash.dead").await > 0 {
                signal(&worker, "-TERM");
                wait_exit(&mut worker, Duration::from_secs(20)).await;
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the worker neither died nor refused"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Then it ran exactly twice (deliveries 1 and 2), the third delivery went dead as
    // `delivery_limit` through the worker (not dropped by the broker), and the key is free
    let again = broker.cli_with(&["enqueue", "crash", "--unique", "k-1"], &env, None);
    assert!(
        again.status.success(),
        "the key was not freed: {}",
        stderr(&again)
    );
    assert_eq!(runs.lines().len(), 2, "runs: {:?}", runs.lines());
    assert_eq!(starts, 3, "two workers killed, the third refused it");
    let list = broker.cli_with(&["dlq", "list", "crash"], &env, None);
    assert!(
        crate::support::stdout(&list).contains("delivery_limit"),
        "{}",
        crate::support::stdout(&list)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unique_task_cancelled_before_it_ran_frees_its_key() {
    let broker = TestBroker::new();
    let (settings, _conn, _ch) = broker.applied(TOPOLOGY).await;
    let producer = Producer::new(&settings).unwrap();
    let job = Report { fail: false };
    let id = producer.enqueue_with(&job, key("c-1")).await.unwrap();
    producer.cancel("report", &[id]).await.unwrap();
    // Held until a worker meets the cancelled task (it goes dead as `cancelled`)
    let held = producer.enqueue_with(&job, key("c-1")).await;
    assert!(matches!(held, Err(Error::Duplicate { .. })), "{held:?}");
    let ran = Arc::new(AtomicUsize::new(0));
    let seen = ran.clone();
    let worker = spawn(
        Worker::new(&settings).handle(move |_r: Report, _: TaskContext| {
            seen.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        }),
    );
    let next = until_ok(Duration::from_secs(10), || {
        producer.enqueue_with(&job, key("c-1"))
    })
    .await;
    assert!(next.is_ok(), "the cancelled task kept its key: {next:?}");
    // and the task accepted next runs (the cancelled one never did)
    wait_count(Duration::from_secs(10), "the next task ran", 1, || {
        ran.load(Ordering::SeqCst)
    })
    .await;
    stop(worker.0, worker.1).await;
    assert_eq!(ran.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_whose_tasks_were_purged_are_listed_and_freed_by_the_operator() {
    // Given unique tasks whose work queue an operator purged by hand (no worker saw them go),
    // one with a plain key, one with a key long enough to be hashed, one with a window
    let broker = TestBroker::new();
    let topo = TempFile::with(&format!("{TOPOLOGY}[tasks.job]\nexec = [\"true\"]\n"));
    let env = [("WARREN_TOPOLOGY", topo.as_str())];
    let apply = broker.cli_with(&["topology", "apply"], &env, None);
    assert!(apply.status.success(), "{}", stderr(&apply));
    let long = "x".repeat(100);
    for args in [
        vec!["--unique", "p-1"],
        vec!["--unique", long.as_str()],
        vec!["--unique", "w-1", "--unique-for", "1h"],
    ] {
        let mut all = vec!["enqueue", "job"];
        all.extend(args);
        let out = broker.cli_with(&all, &env, None);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    ch.queue_purge("t.job".into(), Default::default())
        .await
        .unwrap();
    let refused = broker.cli_with(&["enqueue", "job", "--unique", "p-1"], &env, None);
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    // Then `warren unique list` shows the three keys (the long one hashed, the window too)
    let list = broker.cli_with(&["unique", "list", "job"], &env, None);
    assert!(list.status.success(), "{}", stderr(&list));
    let text = crate::support::stdout(&list);
    let hashed = warren::producer::unique::key_in_name(&long);
    let rows: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(rows.len(), 3, "{text}");
    for (row, key, by) in [
        (0, hashed.as_str(), "task"),
        (1, "p-1", "task"),
        (2, "w-1", "task, window"),
    ] {
        let cols: Vec<&str> = rows[row]
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        assert_eq!(cols[..2], [key, by], "{text}");
        // the age, or `?` while the management API has not reported the marker yet
        assert!(cols[2].ends_with("s ago") || cols[2] == "?", "{text}");
    }
    // and `warren unique free` frees each, by the key or by its listed hash
    for k in ["p-1", hashed.as_str(), "w-1"] {
        let free = broker.cli_with(&["unique", "free", "job", k], &env, None);
        assert!(free.status.success(), "{}", stderr(&free));
        assert!(
            crate::support::stdout(&free).starts_with("freed unique key"),
            "{}",
            crate::support::stdout(&free)
        );
    }
    for k in ["p-1", long.as_str(), "w-1"] {
        let again = broker.cli_with(&["enqueue", "job", "--unique", k], &env, None);
        assert!(again.status.success(), "{k}: {}", stderr(&again));
    }
    // A key nobody holds is said so; a type the topology lacks is a usage error
    let absent = broker.cli_with(&["unique", "free", "job", "nobody"], &env, None);
    assert!(
        crate::support::stdout(&absent).contains("was not held"),
        "{}",
        crate::support::stdout(&absent)
    );
    let unknown = broker.cli_with(&["unique", "list", "jbo"], &env, None);
    assert_eq!(unknown.status.code(), Some(2), "{}", stderr(&unknown));
    assert!(
        stderr(&unknown).contains("did you mean `job`"),
        "{}",
        stderr(&unknown)
    );
}
