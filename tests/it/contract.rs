//! Behaviours the docs promise that no other test exercised: a crash loop on a quorum
//! queue, a classic redelivery as an attempt, a topology default expiry, the second signal,
//! the exec contract's kills, the metrics' moving values, and `worker --tasks`.

use std::time::{Duration, Instant};

use warren::Producer;

use crate::support::{TempFile, TestBroker, take};
use crate::worker::{Job, header_str, signal, wait_count, wait_exit, worker_process};

/// A topology of one `job` type with an exec handler, on `queue_type`, with `extra` keys in
/// `[tasks.job]`.
fn topology(queue_type: &str, extra: &str, script: &str) -> (String, TempFile) {
    let toml = format!(
        "max_delay = \"1h\"\nqueue_type = \"{queue_type}\"\n[defaults.backoff]\ninitial = \"1s\"\n\
         jitter = 0.0\n[tasks.job]\n{extra}\n"
    );
    let script = script.replace('\\', "\\\\").replace('"', "\\\"");
    let file = TempFile::with(&format!("{toml}exec = [\"sh\", \"-c\", \"{script}\"]\n"));
    (toml, file)
}

/// Enqueues one `job` task, confirmed.
async fn enqueue_one(settings: &warren::Settings) {
    Producer::new(settings)
        .unwrap()
        .enqueue(&Job { n: 1 })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_crashes_its_worker_again_and_again_ends_dead_as_delivery_limit() {
    let broker = TestBroker::new();
    // The handler kills its worker (the shell's parent) with SIGKILL.
    let (toml, topo) = topology(
        "quorum",
        "delivery_limit = 2\nmax_attempts = 20",
        "kill -KILL $PPID",
    );
    let (settings, _conn, ch) = broker.applied(&toml).await;
    enqueue_one(&settings).await;
    let started = Instant::now();
    let mut crashes = 0;
    let mut refused_by = None;
    while refused_by.is_none() {
        assert!(
            crashes < 6,
            "still not dead after {crashes} crashed workers"
        );
        let mut w = worker_process(&broker, &topo, &[]);
        // It dies by its task, or refuses the task (dead) and runs on.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = w.try_wait().unwrap() {
                assert!(
                    !status.success(),
                    "the handler killed its worker: {status:?}"
                );
                crashes += 1;
                break;
            }
            if broker.count(&ch, "t.job.dead").await > 0 {
                refused_by = Some(w);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the worker neither died nor refused"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let dead = take(&ch, "t.job.dead", 1, started, Duration::from_secs(5)).await;
    // Run twice (the limit is 2), each run killing its worker; the third delivery is refused
    // by the worker, which settles it as dead (not the broker, unseen).
    assert_eq!(crashes, 2);
    assert_eq!(header_str(&dead[0].1, "warren-reason"), "delivery_limit");
    let error = header_str(&dead[0].1, "warren-error");
    assert!(error.contains("delivered 2 times"), "{error}");
    let mut w = refused_by.unwrap();
    signal(&w, "-TERM");
    assert!(wait_exit(&mut w, Duration::from_secs(20)).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_classic_queue_a_redelivery_after_a_crash_is_the_next_attempt() {
    let broker = TestBroker::new();
    let log = TempFile::path("attempts");
    let (toml, topo) = topology(
        "classic",
        "time_limit = \"60s\"",
        &format!("echo $WARREN_ATTEMPT >> {}; sleep 30", log.as_str()),
    );
    let (settings, _conn, _ch) = broker.applied(&toml).await;
    enqueue_one(&settings).await;
    let mut first = worker_process(&broker, &topo, &[]);
    wait_count(Duration::from_secs(20), "the first run", 1, || {
        log.lines().len()
    })
    .await;
    signal(&first, "-KILL");
    let _ = wait_exit(&mut first, Duration::from_secs(5)).await;
    let _second = worker_process(&broker, &topo, &[]);
    wait_count(Duration::from_secs(20), "the second run", 2, || {
        log.lines().len()
    })
    .await;
    assert_eq!(log.lines(), ["1", "2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_expiry_from_the_topology_sends_unstarted_tasks_dead_as_expired() {
    let broker = TestBroker::new();
    let toml = "max_delay = \"1h\"\nqueue_type = \"quorum\"\n[defaults]\nexpires = \"1s\"\n\
                [tasks.job]\n";
    let (settings, _conn, ch) = broker.applied(toml).await;
    let started = Instant::now();
    // The producer passes no expiry: the type's default applies.
    enqueue_one(&settings).await;
    let dead = take(&ch, "t.job.dead", 1, started, Duration::from_secs(15)).await;
    assert_eq!(header_str(&dead[0].1, "x-first-death-reason"), "expired");
    assert!(dead[0].0 >= Duration::from_secs(1), "{:?}", dead[0].0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once_and_the_task_returns_to_its_queue() {
    let broker = TestBroker::new();
    let started_log = TempFile::path("started");
    let (toml, topo) = topology(
        "quorum",
        "time_limit = \"60s\"",
        &format!("echo go >> {}; sleep 30", started_log.as_str()),
    );
    let (settings, _conn, ch) = broker.applied(&toml).await;
    enqueue_one(&settings).await;
    let mut w = worker_process(&broker, &topo, &["--grace", "60s"]);
    wait_count(Duration::from_secs(20), "the run", 1, || {
        started_log.lines().len()
    })
    .await;
    signal(&w, "-TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = Instant::now();
    signal(&w, "-INT");
    let status = wait_exit(&mut w, Duration::from_secs(3)).await;
    assert_eq!(status.code(), Some(130), "{status:?}");
    assert!(sent.elapsed() < Duration::from_secs(3));
    // Unacked when the process went: the broker puts it back.
    let deadline = Instant::now() + Duration::from_secs(10);
    while broker.count(&ch, "t.job").await != 1 {
        assert!(
            Instant::now() < deadline,
            "the task did not return to its queue"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_program_past_its_time_limit_is_killed_and_death_by_signal_is_retryable() {
    let broker = TestBroker::new();
    let dir = TempFile::path("exec-kill");
    std::fs::create_dir_all(&dir.0).unwrap();
    // n = 1 dies by SIGKILL after a line on stderr; n = 2 outlives its 500 ms time limit.
    let script = format!(
        "p=$(cat); case $p in *1*) echo oops >&2; kill -KILL $$;; *) sleep 3; touch {}/survived;; esac",
        dir.as_str()
    );
    let (toml, topo) = topology(
        "quorum",
        "time_limit = \"500ms\"\nmax_attempts = 2",
        &script,
    );
    let (settings, _conn, ch) = broker.applied(&toml).await;
    let producer = Producer::new(&settings).unwrap();
    let started = Instant::now();
    let killed = producer.enqueue(&Job { n: 1 }).await.unwrap();
    let slow = producer.enqueue(&Job { n: 2 }).await.unwrap();
    let _w = worker_process(&broker, &topo, &[]);
    let dead = take(&ch, "t.job.dead", 2, started, Duration::from_secs(30)).await;
    let error_of = |id: &str| {
        let d = dead
            .iter()
            .find(|(_, d)| d.properties.message_id().as_ref().map(|m| m.as_str()) == Some(id))
            .unwrap();
        (
            header_str(&d.1, "warren-reason"),
            header_str(&d.1, "warren-error"),
        )
    };
    // Both were retried once (retryable), then dead as failed, with what they said.
    assert_eq!(
        error_of(&killed),
        (
            "failed".into(),
            "attempt 2/2: killed by signal 9: oops".into()
        )
    );
    let (reason, error) = error_of(&slow);
    assert_eq!(reason, "failed");
    assert!(
        error.starts_with("attempt 2/2: time limit of 500ms"),
        "{error}"
    );
    // The slow program was killed, not left running.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        !dir.0.join("survived").exists(),
        "the program outlived its time limit"
    );
    let _ = std::fs::remove_dir_all(&dir.0);
}

/// The value of series `name` (labels included) in a Prometheus text body.
fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_dead_and_reconnect_metrics_count_what_happened() {
    let broker = TestBroker::new();
    let (toml, topo) = topology(
        "quorum",
        "max_attempts = 3",
        "p=$(cat); case $p in *65*) exit 65;; *) exit 3;; esac",
    );
    let (settings, _conn, _ch) = broker.applied(&toml).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _w = worker_process(
        &broker,
        &topo,
        &["--metrics-addr", &format!("127.0.0.1:{port}")],
    );
    let producer = Producer::new(&settings).unwrap();
    producer.enqueue(&Job { n: 3 }).await.unwrap();
    producer.enqueue(&Job { n: 65 }).await.unwrap();
    let scrape = || {
        ureq::get(&format!("http://127.0.0.1:{port}/metrics"))
            .call()
            .ok()
            .and_then(|r| r.into_string().ok())
            .unwrap_or_default()
    };
    let wanted = [
        ("warren_retries_total{task=\"job\"}", 2.0),
        (
            "warren_dead_lettered_total{task=\"job\",reason=\"failed\"}",
            1.0,
        ),
        (
            "warren_dead_lettered_total{task=\"job\",reason=\"permanent\"}",
            1.0,
        ),
        ("warren_tasks_total{task=\"job\",outcome=\"retry\"}", 2.0),
        ("warren_tasks_total{task=\"job\",outcome=\"dead\"}", 2.0),
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body = scrape();
        if wanted.iter().all(|(n, v)| metric(&body, n) == Some(*v)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never reached {wanted:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Close the worker's connections from the broker's side: it reconnects and counts it.
    let vhost_conns = format!(
        "vhosts/{}/connections",
        warren::ops::management::enc(&broker.vhost)
    );
    let names =
        crate::support::eventually(Duration::from_secs(20), "the worker's connection", || {
            let list = broker.mgmt.get(&vhost_conns).ok()?;
            let names: Vec<String> = list
                .as_array()?
                .iter()
                .filter(|c| {
                    c["client_properties"]["connection_name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with("warren worker "))
                })
                .filter_map(|c| c["name"].as_str().map(str::to_string))
                .collect();
            (!names.is_empty()).then_some(names)
        })
        .await;
    for name in names {
        broker
            .mgmt
            .delete(&format!(
                "connections/{}",
                warren::ops::management::enc(&name)
            ))
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&scrape(), "warren_reconnects_total").unwrap_or(0.0) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "no reconnect counted: {}",
            scrape()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_tasks_runs_only_the_named_types() {
    let broker = TestBroker::new();
    let log = TempFile::path("ran");
    let run = format!(
        "exec = [\"sh\", \"-c\", \"echo $WARREN_TASK >> {}\"]",
        log.as_str()
    );
    let toml = "max_delay = \"1h\"\nqueue_type = \"quorum\"\n[tasks.job]\n[tasks.other]\n";
    let (settings, _conn, ch) = broker.applied(toml).await;
    let topo = TempFile::with(&format!(
        "max_delay = \"1h\"\nqueue_type = \"quorum\"\n[tasks.job]\n{run}\n[tasks.other]\n{run}\n"
    ));
    let _w = worker_process(&broker, &topo, &["--tasks", "job"]);
    let producer = Producer::new(&settings).unwrap();
    producer.enqueue(&Job { n: 1 }).await.unwrap();
    producer
        .enqueue_raw("other", b"{}".to_vec(), warren::EnqueueOptions::default())
        .await
        .unwrap();
    wait_count(Duration::from_secs(20), "the job run", 1, || {
        log.lines().len()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(log.lines(), ["job"]);
    assert_eq!(
        broker.count(&ch, "t.other").await,
        1,
        "`other` stays in its queue"
    );
}
