//! Waiting for a task's outcome on a real broker: typed and exec results over direct
//! reply-to, one answer after retries, dead answers with their reason, clean timeouts, many
//! concurrent waits, and the command line's `--wait`.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use warren::error::WaitFailure;
use warren::wire::answer::Answer;
use warren::{EnqueueOptions, Error, Producer, Task, TaskContext, TaskError, Worker};

use crate::support::{TempFile, TestBroker, stderr, stdout};
use crate::worker::{spawn, stop, worker_process};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Thumb {
    w: u32,
    /// Fail this many first attempts (retryable).
    #[serde(default)]
    fail_first: u32,
    /// Fail for good.
    #[serde(default)]
    permanent: bool,
}

impl Task for Thumb {
    const NAME: &'static str = "thumb";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Size {
    w: u32,
    h: u32,
    attempt: u32,
}

const TOPOLOGY: &str = r#"
max_delay = "1h"
queue_type = "quorum"
[defaults]
max_attempts = 3
time_limit = "10s"
[defaults.backoff]
initial = "1s"
jitter = 0.0
[tasks.thumb]
[tasks.other]
"#;

fn thumbs(settings: &warren::Settings) -> Worker {
    Worker::new(settings)
        .concurrency(50)
        .handle(|t: Thumb, ctx: TaskContext| async move {
            if t.permanent {
                return Err(TaskError::permanent(format!(
                    "no thumbnail of width {}",
                    t.w
                )));
            }
            if ctx.attempt <= t.fail_first {
                return Err(TaskError::retry(format!("attempt {} fails", ctx.attempt)));
            }
            Ok(Size {
                w: t.w,
                h: t.w * 2,
                attempt: ctx.attempt,
            })
        })
}

fn thumb(w: u32) -> Thumb {
    Thumb {
        w,
        fail_first: 0,
        permanent: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_gets_the_typed_result_after_the_retries_once() {
    let broker = TestBroker::new();
    let (settings, _conn, ch) = broker.applied(TOPOLOGY).await;
    let worker = spawn(thumbs(&settings));
    let producer = Producer::new(&settings).unwrap();
    let timeout = Duration::from_secs(20);
    let size: Size = producer
        .call(&thumb(64), EnqueueOptions::default(), timeout)
        .await
        .unwrap();
    assert_eq!(
        size,
        Size {
            w: 64,
            h: 128,
            attempt: 1
        }
    );
    // Two failed attempts, then the value, from attempt 3.
    let flaky = Thumb {
        fail_first: 2,
        ..thumb(8)
    };
    let size: Size = producer
        .call(&flaky, EnqueueOptions::default(), timeout)
        .await
        .unwrap();
    assert_eq!(size.attempt, 3);
    // Into a queue the caller named, to count the answers: exactly one, the final one.
    ch.queue_declare(
        "t.replies".into(),
        lapin::options::QueueDeclareOptions::default(),
        Default::default(),
    )
    .await
    .unwrap();
    let flaky = Thumb {
        fail_first: 2,
        ..thumb(9)
    };
    let id = producer
        .enqueue_with(&flaky, EnqueueOptions::default().reply_to("t.replies"))
        .await
        .unwrap();
    let got = crate::support::take(&ch, "t.replies", 1, Instant::now(), timeout).await;
    let answer = &got[0].1;
    assert_eq!(
        answer
            .properties
            .correlation_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some(id.as_str())
    );
    let read = warren::wire::answer::read(&answer.properties, &answer.data);
    let Some(Answer::Succeeded(body)) = read else {
        panic!("{read:?}")
    };
    assert_eq!(
        serde_json::from_slice::<Size>(&body).unwrap(),
        Size {
            w: 9,
            h: 18,
            attempt: 3
        }
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        broker.count(&ch, "t.replies").await,
        0,
        "one answer, not one per attempt"
    );
    // Direct reply-to only where the channel consumes it: a plain enqueue naming it is
    // refused before anything is sent (the broker would close the channel).
    let refused = producer
        .enqueue_with(
            &thumb(1),
            EnqueueOptions::default().reply_to("amq.rabbitmq.reply-to"),
        )
        .await;
    assert!(
        matches!(refused, Err(Error::InvalidInput(_))),
        "{refused:?}"
    );
    stop(worker.0, worker.1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_task_answers_dead_with_its_reason_and_a_bad_result_carries_its_body() {
    let broker = TestBroker::new();
    let (settings, _conn, _ch) = broker.applied(TOPOLOGY).await;
    let producer = Producer::new(&settings).unwrap();
    let timeout = Duration::from_secs(20);
    // Expired before any worker ran: the worker refuses it when it comes, and says so.
    let late = producer.enqueue_wait_raw(
        "thumb",
        serde_json::to_vec(&thumb(3)).unwrap(),
        EnqueueOptions::default().expires_in(Duration::from_millis(500)),
        timeout,
    );
    let start_later = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        spawn(thumbs(&settings))
    };
    let (late, worker) = tokio::join!(late, start_later);
    let (_, answer) = late.unwrap();
    assert!(
        matches!(&answer, Answer::Dead { reason, .. } if reason == "expired"),
        "{answer:?}"
    );
    let dead = producer
        .call::<_, Size>(
            &Thumb {
                permanent: true,
                ..thumb(5)
            },
            EnqueueOptions::default(),
            timeout,
        )
        .await;
    match dead {
        Err(Error::Wait(WaitFailure::Dead { reason, error, .. })) => {
            assert_eq!(reason, "permanent");
            assert!(error.contains("no thumbnail of width 5"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    let (_, answer) = producer
        .enqueue_wait_raw(
            "thumb",
            br#"{"w":"wide"}"#.to_vec(),
            EnqueueOptions::default(),
            timeout,
        )
        .await
        .unwrap();
    assert!(
        matches!(&answer, Answer::Dead { reason, .. } if reason == "undecodable"),
        "{answer:?}"
    );
    // The value decodes as something else than the caller expects: an error with the body.
    match producer
        .call::<_, u32>(&thumb(7), EnqueueOptions::default(), timeout)
        .await
    {
        Err(Error::Wait(WaitFailure::UndecodableResult { raw, .. })) => {
            assert_eq!(raw, r#"{"w":7,"h":14,"attempt":1}"#)
        }
        other => panic!("{other:?}"),
    }
    stop(worker.0, worker.1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_with_no_worker_times_out_cleanly_and_the_task_still_runs_later() {
    let broker = TestBroker::new();
    let (settings, _conn, _ch) = broker.applied(TOPOLOGY).await;
    let producer = Producer::new(&settings).unwrap();
    let started = Instant::now();
    let waited = producer
        .call::<_, Size>(&thumb(2), EnqueueOptions::default(), Duration::from_secs(1))
        .await;
    let Err(Error::Wait(WaitFailure::TimedOut { id, after, .. })) = waited else {
        panic!("{waited:?}")
    };
    assert_eq!(after, "1s");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // The task is in the broker; a worker started now runs it (its answer finds nobody).
    let ran = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = ran.clone();
    let worker = spawn(
        Worker::new(&settings).handle(move |_: Thumb, ctx: TaskContext| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(ctx.id);
                Ok(())
            }
        }),
    );
    crate::worker::wait_count(Duration::from_secs(10), "the late run", 1, || {
        ran.lock().unwrap().len()
    })
    .await;
    assert_eq!(ran.lock().unwrap()[0], id);
    stop(worker.0, worker.1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_waits_from_one_producer_each_get_their_own_answer() {
    let broker = TestBroker::new();
    let (settings, _conn, _ch) = broker.applied(TOPOLOGY).await;
    let worker = spawn(thumbs(&settings));
    let producer = Producer::new(&settings).unwrap();
    let calls = (0..1000u32).map(|w| {
        let producer = producer.clone();
        async move {
            producer
                .call::<_, Size>(
                    &thumb(w),
                    EnqueueOptions::default(),
                    Duration::from_secs(60),
                )
                .await
                .map(|s| (w, s))
        }
    });
    let started = Instant::now();
    let results = join_all(calls).await;
    for r in &results {
        let (w, size) = r.as_ref().unwrap();
        assert_eq!((size.w, size.h), (*w, w * 2));
    }
    // A group through one call: all outcomes, in order.
    let group: Vec<warren::Result<Size>> = producer
        .call_many((0..100).map(thumb), Duration::from_secs(60))
        .await;
    for (w, r) in group.into_iter().enumerate() {
        assert_eq!(r.unwrap().h, 2 * w as u32);
    }
    eprintln!("1000 concurrent waits answered in {:?}", started.elapsed());
    stop(worker.0, worker.1).await;
}

// ---- the command line ------------------------------------------------------------------

/// A topology whose `job` runs `script` (a file), with results of at most 100 bytes.
fn exec_topology(script: &TempFile) -> TempFile {
    TempFile::with(&format!(
        "max_payload_bytes = 100\n{}\n[tasks.job]\nexec = [\"sh\", \"{}\"]\n",
        TOPOLOGY.trim(),
        script.as_str()
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warren_enqueue_wait_prints_an_exec_result_a_death_or_a_timeout() {
    let broker = TestBroker::new();
    let (_settings, _conn, _ch) = broker.applied(TOPOLOGY).await;
    // `job` prints its payload's `w` doubled; w = 0 fails for good; w = 9 prints too much.
    let script = TempFile::with(
        "p=$(cat)\nw=$(echo \"$p\" | tr -cd '0-9')\n\
         if [ \"$w\" = 0 ]; then echo zero >&2; exit 65; fi\n\
         if [ \"$w\" = 9 ]; then head -c 200 /dev/zero | tr '\\0' x; exit 0; fi\n\
         echo \"{\\\"double\\\":$((w * 2))}\"\n",
    );
    let topo = exec_topology(&script);
    let env = [("WARREN_TOPOLOGY", topo.as_str())];
    let apply = broker.cli_with(&["topology", "apply"], &env, None);
    assert!(apply.status.success(), "{}", stderr(&apply));
    let _worker = worker_process(&broker, &topo, &["--tasks", "job"]);
    let cli = |args: &[&str]| broker.cli_with(args, &env, None);
    let ok = cli(&[
        "enqueue",
        "job",
        "--payload",
        r#"{"w":21}"#,
        "--wait",
        "20s",
    ]);
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    assert_eq!(stdout(&ok), "{\"double\":42}\n");
    let dead = cli(&["enqueue", "job", "--payload", r#"{"w":0}"#, "--wait", "20s"]);
    assert_eq!(dead.status.code(), Some(1), "{}", stderr(&dead));
    assert!(
        stderr(&dead).contains("dead (permanent)") && stderr(&dead).contains("zero"),
        "{}",
        stderr(&dead)
    );
    assert_eq!(stdout(&dead), "");
    let big = cli(&["enqueue", "job", "--payload", r#"{"w":9}"#, "--wait", "20s"]);
    assert_eq!(big.status.code(), Some(1), "{}", stderr(&big));
    assert!(
        stderr(&big).contains("200 bytes, over max_payload_bytes (100)"),
        "{}",
        stderr(&big)
    );
    let many = cli(&[
        "enqueue",
        "job",
        "--payload",
        r#"{"w":2}"#,
        "--count",
        "3",
        "--id",
        "g",
        "--wait",
        "20s",
    ]);
    assert_eq!(many.status.code(), Some(0), "{}", stderr(&many));
    let mut lines: Vec<String> = stdout(&many).lines().map(str::to_string).collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "g-1\t{\"double\":4}",
            "g-2\t{\"double\":4}",
            "g-3\t{\"double\":4}"
        ]
    );
    // Nobody runs `thumb` here: 124 after the wait, saying the task may still run.
    let started = Instant::now();
    let late = cli(&[
        "enqueue",
        "thumb",
        "--payload",
        r#"{"w":1}"#,
        "--wait",
        "1s",
    ]);
    assert_eq!(late.status.code(), Some(124), "{}", stderr(&late));
    assert!(stderr(&late).contains("may still run"), "{}", stderr(&late));
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_waits_are_usage_errors_and_publish_nothing() {
    let broker = TestBroker::new();
    let (_settings, _conn, ch) = broker.applied(TOPOLOGY).await;
    let topo = TempFile::with(&format!("{TOPOLOGY}[tasks.reload]\nbroadcast = true\n"));
    let env = [("WARREN_TOPOLOGY", topo.as_str())];
    let apply = broker.cli_with(&["topology", "apply"], &env, None);
    assert!(apply.status.success(), "{}", stderr(&apply));
    for (args, needle) in [
        (vec!["enqueue", "thumb", "--wait", "0s"], "0s could never"),
        (vec!["enqueue", "thumb", "--wait", "soon"], "soon"),
        (vec!["enqueue", "reload", "--wait", "5s"], "broadcast type"),
    ] {
        let o = broker.cli_with(&args, &env, None);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }
    assert_eq!(broker.count(&ch, "t.thumb").await, 0, "nothing published");
}

/// Closes, from the broker's side, the connection whose name starts with `prefix` (listed by
/// the management API once its statistics arrived); when it was closed.
async fn close_connection_named(broker: &TestBroker, prefix: &str) -> Instant {
    let mgmt = broker.mgmt.clone();
    crate::support::eventually(Duration::from_secs(15), prefix, || {
        let name = mgmt.connections().ok()?.into_iter().find_map(|c| {
            let name = c["client_properties"]["connection_name"].as_str()?;
            (name.starts_with(prefix) && c["vhost"] == broker.vhost.as_str())
                .then(|| name.to_string())
        })?;
        mgmt.close_connections_named(&name).ok().filter(|n| *n > 0)
    })
    .await;
    Instant::now()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_whose_connection_is_lost_ends_at_once_and_the_next_call_works() {
    let broker = TestBroker::new();
    let (settings, _conn, _ch) = broker.applied(TOPOLOGY).await;
    // w = 999 runs until `release` is set: the answer comes after the connection is gone.
    let release = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let r = release.clone();
    let worker = spawn(
        Worker::new(&settings).handle(move |t: Thumb, _: TaskContext| {
            let r = r.clone();
            async move {
                while t.w == 999 && !r.load(std::sync::atomic::Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(t.w)
            }
        }),
    );
    let producer = Producer::with_role(&settings, "waiter").unwrap();
    let first: u32 = producer
        .call(
            &thumb(1),
            EnqueueOptions::default(),
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    assert_eq!(first, 1);
    let p2 = producer.clone();
    let lost = tokio::spawn(async move {
        p2.call::<_, u32>(
            &thumb(999),
            EnqueueOptions::default(),
            Duration::from_secs(60),
        )
        .await
    });
    let closed = close_connection_named(&broker, "warren waiter-wait ").await;
    // Its answer would go to a channel that is gone: the wait ends now, not in 60 s.
    let waited = tokio::time::timeout(Duration::from_secs(15), lost)
        .await
        .expect("the wait ends within seconds of its connection's loss")
        .unwrap();
    assert!(
        matches!(waited, Err(Error::Wait(WaitFailure::AnswerLost { ref task, .. })) if task == "thumb"),
        "{waited:?}"
    );
    eprintln!(
        "the wait ended {:?} after its connection was closed",
        closed.elapsed()
    );
    release.store(true, std::sync::atomic::Ordering::SeqCst);
    // The producer opens a new waiting channel for the next call.
    let next: u32 = producer
        .call(
            &thumb(2),
            EnqueueOptions::default(),
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    assert_eq!(next, 2);

    // The same for `warren enqueue --wait`: exit 1 within seconds, saying what happened.
    release.store(false, std::sync::atomic::Ordering::SeqCst);
    let topology = TempFile::with(TOPOLOGY);
    let (vhost_url, file) = (broker.amqp_url(), topology.as_str().to_string());
    let cli = tokio::task::spawn_blocking(move || {
        let mut cmd = crate::support::warren_bin();
        cmd.env("WARREN_AMQP_URL", vhost_url)
            .env("WARREN_NAMESPACE", "t")
            .env("WARREN_TOPOLOGY", file)
            .args([
                "enqueue",
                "thumb",
                "--payload",
                "{\"w\":999}",
                "--wait",
                "60s",
            ]);
        crate::support::run(cmd, None)
    });
    let closed = close_connection_named(&broker, "warren cli-wait ").await;
    let out = tokio::time::timeout(Duration::from_secs(15), cli)
        .await
        .expect("enqueue --wait ends within seconds of its connection's loss")
        .unwrap();
    eprintln!(
        "enqueue --wait ended {:?} after its connection was closed",
        closed.elapsed()
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("can no longer arrive") && stderr(&out).contains("runs anyway"),
        "{}",
        stderr(&out)
    );
    release.store(true, std::sync::atomic::Ordering::SeqCst);
    stop(worker.0, worker.1).await;
}
