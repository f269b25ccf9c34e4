//! Frozen processes: a worker stopped with SIGSTOP (what a paused VM, a container starved of
//! CPU or a stopped process look like to the broker), and a worker whose handlers block its
//! runtime. Both on the shared broker, in a vhost of their own.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use warren::{Producer, TaskContext, Worker, topology};

use super::{Job, Ledger, TOPOLOGY, ledger};
use crate::support::{Reaped, TempFile, TestBroker, warren_bin};

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// `(task id, epoch ms when it finished)` of each line an exec handler wrote.
fn runs(log: &TempFile) -> Vec<(String, u64)> {
    log.lines()
        .iter()
        .filter_map(|l| {
            let (id, ms) = l.split_once(' ')?;
            Some((id.to_string(), ms.trim().parse().ok()?))
        })
        .collect()
}

/// Stops (or continues) a worker and the programs it runs: they lead process groups of their
/// own, so a signal to the worker alone would leave them running, which no frozen host does.
fn freeze(worker: &Reaped, signal: &str) {
    let pid = worker.id().to_string();
    let children = std::process::Command::new("pgrep")
        .args(["-P", &pid])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mut pids: Vec<&str> = children.split_whitespace().collect();
    // Stop the worker first (so it starts nothing new), continue it last.
    if signal == "STOP" {
        pids.insert(0, &pid);
    } else {
        pids.push(&pid);
    }
    for p in pids {
        let _ = std::process::Command::new("kill")
            .args([&format!("-{signal}"), p])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow fault scenario: run by scripts/test.sh (cargo test -- --ignored faults::)"]
async fn faults_a_frozen_worker_gives_up_its_tasks_within_the_heartbeat_and_works_after_thawing() {
    // Given two workers of --concurrency 4 --prefetch 8 on the default heartbeat, each writing
    // the id and end time of every run to a log of its own
    let broker = TestBroker::new();
    let settings = broker.settings(TOPOLOGY);
    let conn = broker.connect().await;
    topology::apply(&settings.plan(), &conn, &broker.vhost)
        .await
        .unwrap();
    let logs = [TempFile::path("frozen-w1"), TempFile::path("frozen-w2")];
    let topos: Vec<TempFile> = logs
        .iter()
        .map(|log| {
            TempFile::with(&format!(
                "{}\nexec = [\"sh\", \"-c\", \"sleep 0.4; echo $WARREN_TASK_ID $(date +%s%3N) >> {}\"]\n",
                TOPOLOGY.trim_end(),
                log.as_str()
            ))
        })
        .collect();
    let spawn = |i: usize| {
        let err = TempFile::path("frozen-err");
        let child = warren_bin()
            .env("WARREN_AMQP_URL", broker.amqp_url())
            .env("WARREN_NAMESPACE", "t")
            .env("WARREN_TOPOLOGY", topos[i].as_str())
            .args(["worker", "--concurrency", "4", "--prefetch", "8"])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&err.0).unwrap())
            .spawn()
            .unwrap();
        Reaped(child, Some(err))
    };
    let mut workers = [spawn(0), spawn(1)];
    let producer = Producer::new(&settings).unwrap();
    let mut ledger = Ledger::default();
    for r in producer
        .enqueue_many((0..80).map(|n| Job { n: n + 1 }))
        .await
    {
        ledger.confirmed.insert(r.expect("confirmed"));
    }
    // When the first worker freezes while it holds tasks
    crate::support::eventually(Duration::from_secs(30), "worker 1 running tasks", || {
        (runs(&logs[0]).len() >= 4).then_some(())
    })
    .await;
    freeze(&workers[0], "STOP");
    let frozen_at = now_ms();
    let ran_by_w1_before: HashSet<String> = runs(&logs[0]).into_iter().map(|r| r.0).collect();
    // Then the other worker runs everything, the frozen one's tasks included, within the
    // heartbeat bound
    let deadline = Instant::now() + Duration::from_secs(90);
    let last = loop {
        let mut all = runs(&logs[0]);
        all.extend(runs(&logs[1]));
        let ran: HashSet<&String> = all.iter().map(|r| &r.0).collect();
        if ledger.confirmed.iter().all(|id| ran.contains(id)) {
            break all.iter().map(|r| r.1).max().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} tasks ran 90 s after the freeze",
            ran.len(),
            ledger.confirmed.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let stall = Duration::from_millis(last.saturating_sub(frozen_at));
    let w2_took_over = runs(&logs[1])
        .iter()
        .filter(|r| r.1 > frozen_at + 1000)
        .count();
    // and when it thaws, it notices its connection is gone, reconnects and takes work again
    freeze(&workers[0], "CONT");
    crate::support::eventually(
        Duration::from_secs(30),
        "the thawed worker says its connection was lost",
        || {
            workers[0]
                .log()
                .contains("connection to the broker lost")
                .then_some(())
        },
    )
    .await;
    assert!(
        workers[0].try_wait().unwrap().is_none(),
        "the thawed worker is still running: {}",
        workers[0].log()
    );
    crate::support::eventually(Duration::from_secs(30), "two consumers again", || {
        (broker.queue_info("t.job")["consumers"] == 2).then_some(())
    })
    .await;
    let before_second = runs(&logs[0]).len();
    for r in producer
        .enqueue_many((0..40).map(|n| Job { n: 100 + n }))
        .await
    {
        ledger.confirmed.insert(r.expect("confirmed"));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        ledger.runs = runs(&logs[0]).into_iter().map(|r| r.0).collect();
        ledger.runs.extend(runs(&logs[1]).into_iter().map(|r| r.0));
        if ledger.tally().lost == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let w1_after = runs(&logs[0]).len() - before_second;
    for w in &mut workers {
        w.signal("TERM");
        let status = w.wait_within(Duration::from_secs(60));
        assert!(status.success(), "{status:?}: {}", w.log());
    }
    let t = ledger.tally();
    eprintln!(
        "LEDGER frozen worker: {t:?}, stall {stall:?}, worker 1 ran {} before the freeze and \
         {w1_after} after thawing, worker 2 ran {w2_took_over} after the freeze",
        ran_by_w1_before.len()
    );
    ledger::write(
        "worker frozen (SIGSTOP), default 5 s heartbeat",
        120,
        &t,
        Some(stall),
        "its tasks rerun elsewhere; it reconnects after SIGCONT",
    );
    t.assert_nothing_lost();
    assert_eq!(t.confirmed, 120);
    assert!(
        stall <= Duration::from_secs(30),
        "the frozen worker's tasks ran elsewhere {stall:?} after the freeze (bound: 30 s)"
    );
    assert!(w2_took_over > 0, "worker 2 ran tasks after the freeze");
    assert!(
        w1_after > 0,
        "the thawed worker took work again: {}",
        workers[0].log()
    );
    // Duplicates: at most what the frozen worker held (its prefetch), which it finished after
    // thawing or which the broker gave to worker 2 as well.
    assert!(t.duplicates <= 8, "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow fault scenario: run by scripts/test.sh (cargo test -- --ignored faults::)"]
async fn faults_handlers_that_block_the_runtime_do_not_stop_the_heartbeats() {
    // Given a 2 s heartbeat (from the topology file) and a worker whose two handlers block
    // both threads of its runtime for 7 s each: well past two heartbeat timeouts
    let broker = TestBroker::new();
    let topo = format!("heartbeat = \"2s\"\n{TOPOLOGY}");
    let settings = broker.settings(&topo);
    assert_eq!(settings.heartbeat, Duration::from_secs(2));
    let conn = broker.connect().await;
    topology::apply(&settings.plan(), &conn, &broker.vhost)
        .await
        .unwrap();
    let ledger: Arc<Mutex<Ledger>> = Arc::default();
    let producer = Producer::new(&settings).unwrap();
    for r in producer.enqueue_many((1..=4).map(|n| Job { n })).await {
        ledger
            .lock()
            .unwrap()
            .confirmed
            .insert(r.expect("confirmed"));
    }
    let stop = CancellationToken::new();
    let recorder = ledger.clone();
    let worker = Worker::new(&settings)
        .role("blocking-worker")
        .concurrency(2)
        .prefetch(2)
        .handle(move |_job: Job, ctx: TaskContext| {
            let recorder = recorder.clone();
            async move {
                // CPU-bound work that never yields, as a careless handler does.
                std::thread::sleep(Duration::from_secs(7));
                recorder.lock().unwrap().runs.push(ctx.id.clone());
                Ok(())
            }
        });
    let started = Instant::now();
    let running = tokio::spawn(worker.run(stop.clone()));
    // When they have all run (about 14 s)
    let t = super::settle(&ledger, Duration::from_secs(60)).await;
    // Then no task ran twice: the broker never closed the connection for a missed heartbeat
    // (it would have given the blocked tasks to the next consumer) and nothing was
    // redelivered
    tokio::time::sleep(Duration::from_secs(3)).await;
    let t2 = ledger.lock().unwrap().tally();
    stop.cancel();
    running.await.unwrap().expect("the worker ran to its stop");
    eprintln!(
        "LEDGER blocking handlers: {t2:?} after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    ledger::write(
        "handlers block the runtime 7 s, 2 s heartbeat",
        4,
        &t2,
        None,
        "heartbeats run on their own thread: no close, no rerun",
    );
    t.assert_nothing_lost();
    assert_eq!(t2.runs, 4, "every task ran once, none again: {t2:?}");
    assert_eq!(t2.duplicates, 0, "{t2:?}");
    let dead = broker
        .count(&conn.create_channel().await.unwrap(), "t.job.dead")
        .await;
    assert_eq!(dead, 0, "nothing was dead-lettered");
}
