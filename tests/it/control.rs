//! Control held in the broker: durable cancels, pause and resume, and limits across workers
//! (`concurrency_limit`, `rate_limit`), on a real broker, with workers restarted and killed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use warren::{EnqueueOptions, Producer, TaskContext, TaskError, Worker};

use crate::support::{Reaped, TempFile, TestBroker, eventually, stderr, stdout, take};
use crate::worker::{Job, signal, spawn, stop, wait_exit, worker_process};

const TOPOLOGY: &str = r#"
max_delay = "1h"
queue_type = "classic"
[defaults]
max_attempts = 3
time_limit = "20s"
[tasks.job]
"#;

/// A worker of `job` that records each run's start and end (since `t0`) in `ledger`,
/// running `run_for` each.
fn ledger_worker(
    settings: &warren::Settings,
    ledger: Arc<Mutex<Vec<(u32, Duration, Duration)>>>,
    t0: Instant,
    run_for: Duration,
    concurrency: usize,
) -> Worker {
    Worker::new(settings)
        .concurrency(concurrency)
        .handle(move |job: Job, _ctx: TaskContext| {
            let ledger = ledger.clone();
            async move {
                let start = t0.elapsed();
                tokio::time::sleep(run_for).await;
                ledger.lock().unwrap().push((job.n, start, t0.elapsed()));
                Ok::<(), TaskError>(())
            }
        })
}

/// The most runs in progress at any moment of `runs` (start, end).
fn max_overlap(runs: &[(Duration, Duration)]) -> usize {
    let mut edges: Vec<(Duration, i32)> =
        runs.iter().flat_map(|(s, e)| [(*s, 1), (*e, -1)]).collect();
    // An end before a start at the same instant: back-to-back runs do not overlap.
    edges.sort();
    let (mut now, mut most) = (0, 0);
    for (_, d) in edges {
        now += d;
        most = most.max(now);
    }
    most as usize
}

async fn dead_reasons(broker: &TestBroker, ch: &lapin::Channel, n: usize) -> Vec<String> {
    let got = take(ch, "t.job.dead", n, Instant::now(), Duration::from_secs(30)).await;
    let _ = broker;
    got.iter()
        .map(|(_, d)| crate::worker::header_str(d, "warren-reason"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_delayed_tasks_never_run_even_when_every_worker_restarts_before_their_delay_ends()
{
    let broker = TestBroker::new();
    let (settings, _conn, ch) = broker.applied(TOPOLOGY).await;
    let producer = Producer::new(&settings).unwrap();
    let ledger = Arc::new(Mutex::new(Vec::new()));
    let t0 = Instant::now();
    let (token, handle) = spawn(ledger_worker(
        &settings,
        ledger.clone(),
        t0,
        Duration::ZERO,
        8,
    ));
    let delayed = EnqueueOptions::default().delay(Duration::from_secs(4));
    let items = (0..101).map(|n| {
        (
            "job".to_string(),
            Ok(serde_json::to_vec(&Job { n }).unwrap()),
            delayed.clone(),
        )
    });
    let ids: Vec<String> = producer
        .enqueue_many_raw(items)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    // All but the last: it runs, which shows the workers did run `job`.
    producer.cancel("job", &ids[..100]).await.unwrap();
    // Every worker restarts between the cancel and the delivery: the new one knows the
    // cancels from the stream alone.
    stop(token, handle).await;
    let (token, handle) = spawn(ledger_worker(
        &settings,
        ledger.clone(),
        t0,
        Duration::ZERO,
        8,
    ));
    let reasons = dead_reasons(&broker, &ch, 100).await;
    assert!(reasons.iter().all(|r| r == "cancelled"), "{reasons:?}");
    eventually(
        Duration::from_secs(10),
        "the one task not cancelled runs",
        || (!ledger.lock().unwrap().is_empty()).then_some(()),
    )
    .await;
    stop(token, handle).await;
    let ran: Vec<u32> = ledger.lock().unwrap().iter().map(|r| r.0).collect();
    assert_eq!(ran, vec![100], "only the task not cancelled ran");
    producer.close().await;
}

/// A cancel holds for the task's first copy, not for a replay asked for after it: the worker
/// reads the replay's `warren-replayed-at` from the envelope and compares it with the cancel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_task_goes_dead_and_its_replay_after_the_cancel_runs() {
    let broker = TestBroker::new();
    let (settings, _conn, ch) = broker.applied(TOPOLOGY).await;
    let producer = Producer::new(&settings).unwrap();
    let ledger = Arc::new(Mutex::new(Vec::new()));
    let t0 = Instant::now();
    let (token, handle) = spawn(ledger_worker(
        &settings,
        ledger.clone(),
        t0,
        Duration::ZERO,
        2,
    ));
    let delayed = EnqueueOptions::default().delay(Duration::from_secs(2));
    let id = producer.enqueue_with(&Job { n: 7 }, delayed).await.unwrap();
    producer
        .cancel("job", std::slice::from_ref(&id))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while broker.count(&ch, "t.job.dead").await == 0 {
        assert!(
            Instant::now() < deadline,
            "the cancelled task never went dead"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ledger.lock().unwrap().is_empty(), "a cancelled task ran");
    let session =
        warren::broker::Session::open(&settings.amqp_url, "test", settings.connect_timeout)
            .await
            .unwrap();
    let report = warren::ops::dlq::replay(
        &session,
        &producer,
        "job",
        &warren::ops::dlq::Selection::All,
        false,
    )
    .await
    .unwrap();
    session.close("done").await;
    assert_eq!(report.replayed, vec![id]);
    eventually(Duration::from_secs(10), "the replay runs", || {
        (!ledger.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    stop(token, handle).await;
    let ran: Vec<u32> = ledger.lock().unwrap().iter().map(|r| r.0).collect();
    assert_eq!(ran, vec![7], "the replay ran once");
    assert_eq!(
        broker.count(&ch, "t.job.dead").await,
        0,
        "nothing dead again"
    );
    producer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_exec_task_is_killed_within_a_second_of_its_cancel_and_goes_dead() {
    let broker = TestBroker::new();
    let pidfile = TempFile::path("pid");
    let toml = format!(
        "{TOPOLOGY}exec = [\"sh\", \"-c\", \"echo $$ > {}; exec sleep 30\"]\n",
        pidfile.as_str()
    );
    let (_settings, _conn, ch) = broker.applied(&toml).await;
    let file = TempFile::with(&toml);
    let _worker = worker_process(&broker, &file, &[]);
    let out = broker.cli_with(
        &["enqueue", "job", "--payload", "{\"n\": 1}"],
        &[("WARREN_TOPOLOGY", file.as_str())],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    let pid: u32 = eventually(Duration::from_secs(15), "the program to start", || {
        std::fs::read_to_string(&pidfile.0)
            .ok()?
            .trim()
            .parse()
            .ok()
    })
    .await;
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    let out = broker.cli_with(
        &["cancel", "job", &id],
        &[("WARREN_TOPOLOGY", file.as_str())],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let cancelled = Instant::now();
    eventually(Duration::from_secs(5), "the program to be killed", || {
        (!std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z ")))
        .then_some(())
    })
    .await;
    let took = cancelled.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "killed {took:?} after the cancel"
    );
    eprintln!("exec program killed {took:?} after `warren cancel` returned");
    let reasons = dead_reasons(&broker, &ch, 1).await;
    assert_eq!(reasons, ["cancelled"]);
    // Cancelling an unknown id is not an error.
    let out = broker.cli_with(
        &["cancel", "job", "no-such-id"],
        &[("WARREN_TOPOLOGY", file.as_str())],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_every_worker_within_a_second_and_resume_restarts_them() {
    let broker = TestBroker::new();
    let (settings, _conn, _ch) = broker.applied(TOPOLOGY).await;
    let producer = Producer::new(&settings).unwrap();
    let ledger = Arc::new(Mutex::new(Vec::new()));
    let t0 = Instant::now();
    let run = Duration::from_millis(50);
    let mut workers: Vec<_> = (0..3)
        .map(|_| spawn(ledger_worker(&settings, ledger.clone(), t0, run, 2)))
        .collect();
    let jobs: Vec<Job> = (0..600).map(|n| Job { n }).collect();
    for r in producer.enqueue_many(jobs).await {
        r.unwrap();
    }
    eventually(Duration::from_secs(10), "work to flow", || {
        (ledger.lock().unwrap().len() >= 20).then_some(())
    })
    .await;
    producer.pause("job").await.unwrap();
    let paused_at = t0.elapsed();
    // A worker restarted while paused stays paused.
    let (token, handle) = workers.remove(0);
    stop(token, handle).await;
    workers.push(spawn(ledger_worker(&settings, ledger.clone(), t0, run, 2)));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let late: Vec<_> = (ledger.lock().unwrap().iter())
        .filter(|(_, start, _)| *start > paused_at + Duration::from_secs(1))
        .map(|r| r.0)
        .collect();
    assert!(
        late.is_empty(),
        "started more than 1 s after the pause: {late:?}"
    );
    let last_start = (ledger.lock().unwrap().iter()).map(|r| r.1).max().unwrap();
    eprintln!(
        "pause: last start {:?} after the pause",
        last_start.saturating_sub(paused_at)
    );
    let mgmt = warren::ops::management::Management::from_settings(&settings).unwrap();
    let status = warren::ops::status::fetch(&settings, &mgmt).unwrap();
    assert!(
        status.tasks.iter().any(|r| r.task == "job" && r.paused),
        "{status:?}"
    );
    let done_before = ledger.lock().unwrap().len();
    assert!(done_before < 600, "work was left when paused");
    producer.resume("job").await.unwrap();
    eventually(Duration::from_secs(10), "work to flow again", || {
        (ledger.lock().unwrap().len() > done_before + 20).then_some(())
    })
    .await;
    let status = warren::ops::status::fetch(&settings, &mgmt).unwrap();
    assert!(status.tasks.iter().any(|r| r.task == "job" && !r.paused));
    // Nothing was lost or left stuck by the pause: every task runs.
    // Distinct tasks, not runs: a rerun must not stand in for a task that never ran.
    eventually(Duration::from_secs(60), "all 600 tasks to run", || {
        let ran: std::collections::HashSet<_> =
            ledger.lock().unwrap().iter().map(|r| r.0).collect();
        (ran.len() == 600).then_some(())
    })
    .await;
    for (token, handle) in workers {
        stop(token, handle).await;
    }
    producer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_of_5_per_second_holds_across_three_workers() {
    let broker = TestBroker::new();
    let toml = format!("{TOPOLOGY}rate_limit = \"5/s\"\n");
    let (settings, _conn, _ch) = broker.applied(&toml).await;
    let producer = Producer::new(&settings).unwrap();
    let jobs: Vec<Job> = (0..200).map(|n| Job { n }).collect();
    for r in producer.enqueue_many(jobs).await {
        r.unwrap();
    }
    let ledger = Arc::new(Mutex::new(Vec::new()));
    let t0 = Instant::now();
    let workers: Vec<_> = (0..3)
        .map(|_| {
            spawn(ledger_worker(
                &settings,
                ledger.clone(),
                t0,
                Duration::ZERO,
                8,
            ))
        })
        .collect();
    // From the first start, 12 s.
    let first = eventually(Duration::from_secs(15), "a first start", || {
        ledger.lock().unwrap().iter().map(|r| r.1).min()
    })
    .await;
    tokio::time::sleep((first + Duration::from_secs(12)).saturating_sub(t0.elapsed())).await;
    let starts: Vec<Duration> = (ledger.lock().unwrap().iter())
        .map(|r| r.1 - first)
        .filter(|s| *s < Duration::from_secs(12))
        .collect();
    for (token, handle) in workers {
        stop(token, handle).await;
    }
    let mut per_second = [0u32; 12];
    for s in &starts {
        per_second[s.as_secs() as usize] += 1;
    }
    assert!(
        (55..=65).contains(&starts.len()),
        "{} starts in 12 s (per second: {per_second:?})",
        starts.len()
    );
    assert!(per_second.iter().all(|n| *n <= 6), "{per_second:?}");
    eprintln!(
        "rate_limit 5/s, 3 workers: {} starts in 12 s, per second {per_second:?}",
        starts.len()
    );
    producer.close().await;
}

/// One run in a worker process's ledger: `s|e PID TIME` lines, the pid being the worker's.
fn runs_of(lines: &[String], killed: Option<(u32, f64)>) -> Vec<(Duration, Duration)> {
    let mut open: std::collections::HashMap<String, (u32, f64)> = Default::default();
    let mut runs = Vec::new();
    let secs = |s: f64| Duration::from_secs_f64(s);
    for line in lines {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [kind, shell, worker, at] = parts[..] else {
            continue;
        };
        let at: f64 = at.parse().unwrap();
        match kind {
            "s" => {
                open.insert(shell.to_string(), (worker.parse().unwrap(), at));
            }
            _ => {
                if let Some((_, start)) = open.remove(shell) {
                    runs.push((secs(start), secs(at)));
                }
            }
        }
    }
    // A run of the killed worker ended with it.
    for (worker, start) in open.into_values() {
        if let Some((pid, at)) = killed
            && pid == worker
        {
            runs.push((secs(start), secs(at)));
        }
    }
    runs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_limit_of_2_holds_across_three_workers_and_a_killed_holder_frees_its_share() {
    let broker = TestBroker::new();
    let ledger = TempFile::path("ledger");
    let script = format!(
        "cat >/dev/null; echo \\\"s $$ $PPID $(date +%s.%N)\\\" >> {l}; sleep 0.3; echo \\\"e $$ $PPID $(date +%s.%N)\\\" >> {l}",
        l = ledger.as_str()
    );
    let toml = format!("{TOPOLOGY}concurrency_limit = 2\nexec = [\"sh\", \"-c\", \"{script}\"]\n");
    let (settings, _conn, ch) = broker.applied(&toml).await;
    let file = TempFile::with(&toml);
    let producer = Producer::new(&settings).unwrap();
    let jobs: Vec<Job> = (0..40).map(|n| Job { n }).collect();
    for r in producer.enqueue_many(jobs).await {
        r.unwrap();
    }
    let mut workers: Vec<Reaped> = (0..3)
        .map(|_| worker_process(&broker, &file, &["--concurrency", "8"]))
        .collect();
    // Kill a worker while it runs a task (holds a share of the limit).
    let victim = eventually(Duration::from_secs(20), "a run in progress", || {
        let lines = ledger.lines();
        let started: Vec<(String, u32)> = (lines.iter())
            .filter_map(|l| {
                let p: Vec<&str> = l.split_whitespace().collect();
                if p.len() == 4 && p[0] == "s" {
                    Some((p[1].to_string(), p[2].parse().ok()?))
                } else {
                    None
                }
            })
            .collect();
        started
            .into_iter()
            .find(|(shell, _)| !lines.iter().any(|l| l.starts_with(&format!("e {shell} "))))
            .filter(|_| lines.len() >= 6)
            .map(|(_, worker)| worker)
    })
    .await;
    let w = workers
        .iter_mut()
        .find(|w| w.id() == victim)
        .expect("a worker of ours");
    signal(w, "-KILL");
    let killed_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    // And a graceful stop of another worker mid-run: it finishes its run, then its token
    // goes back (not before: that would let a third run start beside it).
    let survivor = eventually(Duration::from_secs(20), "a run of another worker", || {
        let lines = ledger.lines();
        (lines.iter().rev())
            .filter_map(|l| {
                let p: Vec<&str> = l.split_whitespace().collect();
                if p.len() == 4 && p[0] == "s" && p[2] != victim.to_string() {
                    Some((p[1].to_string(), p[2].parse::<u32>().ok()?))
                } else {
                    None
                }
            })
            .find(|(shell, _)| !lines.iter().any(|l| l.starts_with(&format!("e {shell} "))))
            .map(|(_, worker)| worker)
    })
    .await;
    let w = (workers.iter_mut())
        .find(|w| w.id() == survivor)
        .expect("a worker of ours");
    signal(w, "-TERM");
    let killed_done = ledger
        .lines()
        .iter()
        .filter(|l| l.starts_with("e "))
        .count();
    let after_kill = Instant::now();
    // The 40 tasks (the killed run's task again) all end.
    eventually(Duration::from_secs(40), "every task to run", || {
        (ledger
            .lines()
            .iter()
            .filter(|l| l.starts_with("e "))
            .count()
            >= 40)
            .then_some(())
    })
    .await;
    let rest = 40 - killed_done;
    let took = after_kill.elapsed();
    let runs = runs_of(&ledger.lines(), Some((victim, killed_at)));
    assert!(
        max_overlap(&runs) <= 2,
        "at most 2 at once: {} overlapped",
        max_overlap(&runs)
    );
    // The rest at 2 at a time of 0.3 s: 0.15 s each; within seconds of the kill, at full
    // throughput (the killed worker's token came back).
    let ideal = Duration::from_secs_f64(rest as f64 * 0.15);
    assert!(
        took < ideal + Duration::from_secs(4),
        "{rest} tasks took {took:?} after the kill (2 at once: {ideal:?})"
    );
    eprintln!(
        "concurrency_limit 2, 3 worker processes, one killed mid-run: at most {} at once; \
         the {rest} tasks left took {took:?} after the kill (ideal {ideal:?})",
        max_overlap(&runs)
    );
    for w in workers.iter_mut() {
        if w.try_wait().unwrap().is_none() {
            signal(w, "-TERM");
            assert!(
                wait_exit(w, Duration::from_secs(20)).await.success(),
                "{}",
                w.log()
            );
        }
    }
    // Every token is back, exactly two (none lost with the killed worker, none added).
    assert_eq!(broker.count(&ch, "t.job.limit.running").await, 2);
    let status_out = broker.cli_with(&["status"], &[("WARREN_TOPOLOGY", file.as_str())], None);
    assert!(
        stdout(&status_out).contains("2 at once"),
        "{}",
        stdout(&status_out)
    );
    producer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_limit_of_2_with_24_handlers_runs_2_at_once_at_full_speed() {
    let broker = TestBroker::new();
    let toml = format!("{TOPOLOGY}concurrency_limit = 2\n");
    let (settings, _conn, _ch) = broker.applied(&toml).await;
    let producer = Producer::new(&settings).unwrap();
    let jobs: Vec<Job> = (0..30).map(|n| Job { n }).collect();
    for r in producer.enqueue_many(jobs).await {
        r.unwrap();
    }
    let ledger = Arc::new(Mutex::new(Vec::new()));
    let t0 = Instant::now();
    let run = Duration::from_millis(300);
    let workers: Vec<_> = (0..3)
        .map(|_| spawn(ledger_worker(&settings, ledger.clone(), t0, run, 8)))
        .collect();
    eventually(Duration::from_secs(30), "30 runs", || {
        (ledger.lock().unwrap().len() >= 30).then_some(())
    })
    .await;
    for (token, handle) in workers {
        stop(token, handle).await;
    }
    let runs: Vec<(Duration, Duration)> =
        ledger.lock().unwrap().iter().map(|r| (r.1, r.2)).collect();
    assert_eq!(max_overlap(&runs), 2, "{runs:?}");
    let first = runs.iter().map(|r| r.0).min().unwrap();
    let last = runs.iter().map(|r| r.1).max().unwrap();
    // 30 runs of 0.3 s, 2 at a time: 4.5 s.
    let took = last - first;
    assert!(
        took < Duration::from_secs_f64(4.5 * 1.3),
        "30 runs took {took:?}; 2 at a time would take 4.5 s"
    );
    eprintln!("30 runs of 300 ms under concurrency_limit = 2: {took:?} (ideal 4.5 s)");
    producer.close().await;
}

#[test]
fn bad_limits_and_unknown_types_are_usage_errors() {
    let broker = TestBroker::new();
    for (extra, want) in [
        ("concurrency_limit = 0", "concurrency_limit = 0"),
        ("rate_limit = \"ten/s\"", "ten/s"),
        ("rate_limit = \"5/fortnight\"", "5/fortnight"),
        ("broadcast = true\nconcurrency_limit = 2", "broadcast"),
    ] {
        let file = TempFile::with(&format!("{TOPOLOGY}{extra}\n"));
        let out = broker.cli_with(
            &["topology", "apply"],
            &[("WARREN_TOPOLOGY", file.as_str())],
            None,
        );
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{extra}: {err}");
        // Named with its line (TOML's own errors) or its table.
        assert!(
            err.contains(want) && (err.contains("line") || err.contains("[tasks.job]")),
            "{extra}: {err}"
        );
    }
    let file = TempFile::with(TOPOLOGY);
    for args in [
        &["pause", "jbo"][..],
        &["resume", "nosuch"],
        &["cancel", "jbo", "x"],
    ] {
        let out = broker.cli_with(args, &[("WARREN_TOPOLOGY", file.as_str())], None);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_delete_removes_the_control_stream_pause_records_and_limit_tokens() {
    let broker = TestBroker::new();
    let toml = format!("{TOPOLOGY}concurrency_limit = 2\n");
    let (settings, _conn, ch) = broker.applied(&toml).await;
    let producer = Producer::new(&settings).unwrap();
    producer.pause("job").await.unwrap();
    producer.resume("job").await.unwrap();
    // A worker subscribes to the tokens (filling them) and leaves its marker in the stream.
    let ledger = Arc::new(Mutex::new(Vec::new()));
    let (token, handle) = spawn(ledger_worker(
        &settings,
        ledger,
        Instant::now(),
        Duration::ZERO,
        2,
    ));
    eventually(Duration::from_secs(20), "the tokens to be counted", || {
        let q = broker
            .mgmt
            .queue(&broker.vhost, "t.job.limit.running")
            .ok()??;
        (q["consumers"].as_u64() == Some(1)).then_some(())
    })
    .await;
    stop(token, handle).await;
    producer.close().await;
    assert_eq!(broker.count(&ch, "t.job.limit.running").await, 2);
    assert_eq!(broker.count(&ch, "t.job.paused").await, 1);
    let file = TempFile::with(&toml);
    let out = broker.cli_with(
        &["topology", "delete"],
        &[("WARREN_TOPOLOGY", file.as_str())],
        None,
    );
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let left: Vec<String> = (broker.mgmt.get(&format!(
        "queues/{}",
        warren::ops::management::enc(&broker.vhost)
    )))
    .unwrap()
    .as_array()
    .unwrap()
    .iter()
    .filter_map(|q| q["name"].as_str().map(str::to_string))
    .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// `t.job`'s deliveries so far (`message_stats.deliver_get`), once the management API's
/// figures show `ready` tasks in the queue (they arrive together, every 5 s).
async fn deliveries_once_ready_is(broker: &TestBroker, ready: u64) -> u64 {
    eventually(Duration::from_secs(20), "the queue's statistics", || {
        let q = broker.mgmt.queue(&broker.vhost, "t.job").ok()??;
        (q["messages_ready"].as_u64() == Some(ready) && q["messages_unacknowledged"] == 0)
            .then(|| q["message_stats"]["deliver_get"].as_u64().unwrap_or(0))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_backlog_and_a_backlog_at_its_limit_are_not_spun_through_the_broker() {
    let broker = TestBroker::new();
    let toml = format!("{TOPOLOGY}concurrency_limit = 1\n");
    let (settings, _conn, _ch) = broker.applied(&toml).await;
    let producer = Producer::new(&settings).unwrap();
    producer.pause("job").await.unwrap();
    for r in producer.enqueue_many((0..60).map(|n| Job { n })).await {
        r.unwrap();
    }
    // Paused, three workers, 6 s: the broker delivers nothing (a requeue loop would
    // deliver thousands).
    let ledger = Arc::new(Mutex::new(Vec::new()));
    let t0 = Instant::now();
    let run_for = Duration::from_millis(200);
    // Three workers for 6 s, then stopped.
    let three_for_six_seconds = || async {
        let workers: Vec<_> = (0..3)
            .map(|_| spawn(ledger_worker(&settings, ledger.clone(), t0, run_for, 4)))
            .collect();
        tokio::time::sleep(Duration::from_secs(6)).await;
        for (token, handle) in workers {
            stop(token, handle).await;
        }
    };
    three_for_six_seconds().await;
    let paused = deliveries_once_ready_is(&broker, 60).await;
    assert!(
        ledger.lock().unwrap().is_empty(),
        "nothing ran while paused"
    );
    assert_eq!(paused, 0, "deliveries of a paused backlog");
    // At a concurrency limit of 1 for 6 s: about one run per 200 ms, and the deliveries
    // follow the runs (each worker's prefetch at most on top, given back at its stop).
    producer.resume("job").await.unwrap();
    three_for_six_seconds().await;
    let runs = ledger.lock().unwrap().len() as u64;
    let limited = deliveries_once_ready_is(&broker, 60 - runs).await;
    producer.close().await;
    eprintln!(
        "paused: {paused} deliveries in 6 s; at the limit: {runs} runs, {limited} deliveries"
    );
    assert!(
        (5..=35).contains(&runs),
        "{runs} runs of 200 ms one at a time in 6 s"
    );
    assert!(
        // Prefetch: 16 at most per worker (the default; 2 × concurrency otherwise).
        limited <= runs + 3 * 16,
        "{limited} deliveries for {runs} runs"
    );
}

/// The most runs of `runs` in progress at any moment inside `[from, to]`.
fn max_overlap_within(runs: &[(Duration, Duration)], from: Duration, to: Duration) -> usize {
    let clipped: Vec<(Duration, Duration)> = runs
        .iter()
        .filter(|(s, e)| *e > from && *s < to)
        .map(|(s, e)| ((*s).max(from), (*e).min(to)))
        .collect();
    max_overlap(&clipped)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_limit_changed_live_holds_for_running_workers_and_apply_puts_the_file_back() {
    // Given two running workers of a type limited to 1 at once (300 ms runs, a long backlog)
    let broker = TestBroker::new();
    let toml = format!("{TOPOLOGY}concurrency_limit = 1\n");
    let (settings, conn, ch) = broker.applied(&toml).await;
    let file = TempFile::with(&toml);
    let env = [("WARREN_TOPOLOGY", file.as_str())];
    let producer = Producer::new(&settings).unwrap();
    for r in producer.enqueue_many((0..200).map(|n| Job { n })).await {
        r.unwrap();
    }
    let ledger = Arc::new(Mutex::new(Vec::new()));
    let t0 = Instant::now();
    let run = Duration::from_millis(300);
    let workers: Vec<_> = (0..2)
        .map(|_| spawn(ledger_worker(&settings, ledger.clone(), t0, run, 4)))
        .collect();
    let runs = |ledger: &Mutex<Vec<(u32, Duration, Duration)>>| -> Vec<(Duration, Duration)> {
        ledger.lock().unwrap().iter().map(|r| (r.1, r.2)).collect()
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    // When the limit is raised to 3 from the command line
    let raised_at = t0.elapsed();
    let raise = broker.cli_with(&["limit", "job", "--concurrency", "3"], &env, None);
    assert!(raise.status.success(), "{}", stderr(&raise));
    assert!(
        stdout(&raise).contains("concurrency 1 → concurrency 3"),
        "{}",
        stdout(&raise)
    );
    // Then three run at once within seconds, never more
    let reached = eventually(Duration::from_secs(10), "3 runs at once", || {
        let r = runs(&ledger);
        let now = t0.elapsed();
        (max_overlap_within(&r, raised_at, now) >= 3).then_some(now - raised_at)
    })
    .await;
    // and `warren status` shows the limit in force, that it was changed live, and who holds
    // its tokens
    // (the management API reports a new channel's figures within 5 s)
    let (text, held) = eventually(Duration::from_secs(15), "status with holders", || {
        let text = stdout(&broker.cli_with(&["status"], &env, None));
        let held = text
            .lines()
            .find_map(|l| l.strip_prefix("`job` limit tokens held by: "))
            .map(str::to_string)?;
        Some((text, held))
    })
    .await;
    eprintln!("{text}");
    assert!(text.contains("/3 at once"), "{text}");
    assert!(
        text.contains(
            "`job`: limits changed live (`warren limit`); the topology file says concurrency 1"
        ),
        "{text}"
    );
    // (per holder as the broker sampled each channel: the two workers' connections)
    let holders: Vec<&str> = held.split(", ").collect();
    assert!(
        !holders.is_empty()
            && holders.len() <= 2
            && holders.iter().all(|h| h.starts_with("warren worker ")),
        "{held}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    // When it is lowered to 1 through the library while three run
    let lowered_at = t0.elapsed();
    let change = producer
        .set_limits(
            "job",
            warren::control::limits::Limits {
                concurrency: Some(1),
                rate: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(change.from.concurrency, Some(3));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let done_at = t0.elapsed();
    let all = runs(&ledger);
    let before = max_overlap_within(&all, Duration::ZERO, raised_at);
    let while_raised = max_overlap_within(&all, raised_at, lowered_at);
    // the runs in progress at the lowering finish (300 ms); after them, one at a time
    let settled = lowered_at + run + Duration::from_millis(200);
    let after = max_overlap_within(&all, settled, done_at);
    let ran_after = all.iter().filter(|(s, _)| *s > settled).count();
    eprintln!(
        "live limit: 1 before ({before}), 3 reached {reached:?} after `warren limit` ({while_raised} \
         at most), {after} at most after lowering to 1 ({ran_after} runs then)"
    );
    assert_eq!(before, 1, "{all:?}");
    assert_eq!(while_raised, 3, "{all:?}");
    assert!(reached < Duration::from_secs(5), "{reached:?}");
    assert_eq!(after, 1, "{all:?}");
    assert!(
        ran_after >= 4,
        "work went on after the lowering: {ran_after}"
    );
    // And `warren limit` shows what is in force; `topology apply` puts the file's 1 back
    let raise = broker.cli_with(&["limit", "job", "--concurrency", "2"], &env, None);
    assert!(raise.status.success(), "{}", stderr(&raise));
    let shown = broker.cli_with(&["limit", "job"], &env, None);
    assert!(
        stdout(&shown)
            .contains("limits of `job`: concurrency 2 (the topology declares concurrency 1)"),
        "{}",
        stdout(&shown)
    );
    let apply = broker.cli_with(&["topology", "apply"], &env, None);
    assert!(apply.status.success(), "{}", stderr(&apply));
    assert!(
        stdout(&apply).contains("limits    job: concurrency 2 → concurrency 1"),
        "{}",
        stdout(&apply)
    );
    // and once the debt of that lowering is paid (by the tokens the running workers give
    // back) and the workers stop, exactly the limit in force is at rest: no token leaked or
    // lost through three changes
    broker
        .count_settles(&ch, "t.job.limit.running.debt", 0)
        .await;
    for (token, handle) in workers {
        stop(token, handle).await;
    }
    producer.close().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tokens = broker.count(&ch, "t.job.limit.running").await;
    let debt = broker.count(&ch, "t.job.limit.running.debt").await;
    eprintln!("at rest: {tokens} tokens, {debt} owed");
    assert_eq!(tokens - debt, 1, "{tokens} tokens, {debt} owed");
    // and the next worker to start, finding no token held, counts exactly 1 and no debt
    let again = spawn(ledger_worker(&settings, ledger.clone(), t0, run, 4));
    let ran = ledger.lock().unwrap().len();
    eventually(Duration::from_secs(10), "a run", || {
        (ledger.lock().unwrap().len() > ran).then_some(())
    })
    .await;
    stop(again.0, again.1).await;
    broker.count_settles(&ch, "t.job.limit.running", 1).await;
    assert_eq!(broker.count(&ch, "t.job.limit.running.debt").await, 0);
    // A limit the type does not declare cannot be added live
    let rate = broker.cli_with(&["limit", "job", "--rate", "5/s"], &env, None);
    assert_eq!(rate.status.code(), Some(2), "{}", stderr(&rate));
    assert!(
        stderr(&rate).contains("`job` declares no `rate_limit` in the topology"),
        "{}",
        stderr(&rate)
    );
    drop(conn);
}
