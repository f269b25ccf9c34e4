//! Chains on a real broker: each step runs after the previous one succeeded, with its result
//! as the payload; a killed worker costs a duplicate step, never the chain; a dead step
//! carries the rest of the chain, and its replay finishes it.

use std::time::Duration;

use lapin::options::{BasicGetOptions, BasicNackOptions};
use serde::{Deserialize, Serialize};
use warren::wire::answer::Answer;
use warren::{EnqueueOptions, Error, Producer, Task, TaskContext, TaskError, Worker};

use crate::support::{Reaped, TempFile, TestBroker, stderr, stdout};
use crate::worker::{signal, spawn, stop, wait_count, wait_exit, worker_process};

const TOPOLOGY: &str = r#"
max_delay = "1h"
queue_type = "quorum"
[defaults]
max_attempts = 3
time_limit = "20s"
[defaults.backoff]
initial = "1s"
jitter = 0.0
"#;

#[derive(Debug, Serialize, Deserialize)]
struct Fetch {
    n: u32,
}
impl Task for Fetch {
    const NAME: &'static str = "fetch";
}

/// The previous step's result (a number) is this step's payload.
#[derive(Debug, Serialize, Deserialize)]
struct Scale(u32);
impl Task for Scale {
    const NAME: &'static str = "scale";
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typed_chain_passes_each_result_on_and_answers_the_last() {
    let broker = TestBroker::new();
    let topology = format!("{TOPOLOGY}[tasks.fetch]\n[tasks.scale]\n");
    let (settings, _conn, _ch) = broker.applied(&topology).await;
    let fetched = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = fetched.clone();
    let worker = spawn(
        Worker::new(&settings)
            .handle(move |f: Fetch, _: TaskContext| {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async move { Ok(f.n + 1) }
            })
            .handle(|s: Scale, ctx: TaskContext| async move {
                if s.0 == 0 {
                    return Err(TaskError::permanent("nothing to scale"));
                }
                Ok((s.0 * 10, ctx.attempt))
            }),
    );
    let producer = Producer::new(&settings).unwrap();
    let timeout = Duration::from_secs(20);
    let (scaled, attempt): (u32, u32) = producer
        .chain(&Fetch { n: 4 })
        .then::<Scale>()
        .call(timeout)
        .await
        .unwrap();
    assert_eq!((scaled, attempt), (50, 1), "fetch gave 5, scale made it 50");
    // Fetch of 0 gives 1, scaled to 10.
    let (scaled, _): (u32, u32) = producer
        .chain(&Fetch { n: 0 })
        .then::<Scale>()
        .call(timeout)
        .await
        .unwrap();
    assert_eq!(scaled, 10);
    // A chain whose first step dies: the caller hears of that step, by name, and the next
    // step never runs.
    let (_, answer) = producer
        .enqueue_wait_raw(
            "scale",
            b"0".to_vec(),
            EnqueueOptions::default().then("fetch"),
            timeout,
        )
        .await
        .unwrap();
    match answer {
        Answer::Dead { reason, task, .. } => {
            assert_eq!(
                (reason.as_str(), task.as_deref()),
                ("permanent", Some("scale"))
            );
        }
        other => panic!("{other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        fetched.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "the two chains' fetches; not the step after the dead one"
    );
    stop(worker.0, worker.1).await;
}

/// A topology whose steps `a`, `b` and `c` run `script` (a file), each adding 1 to the number
/// it gets; `b` takes 5 s, and fails for good the first time when `fail_b_once` names a
/// marker file that does not exist yet.
fn steps(dir: &TempFile, fail_b_once: bool) -> (TempFile, TempFile) {
    let started = TempFile(dir.0.join("started"));
    let marker = dir.0.join("b-failed-once");
    let fail = if fail_b_once {
        format!(
            "if [ \"$WARREN_TASK\" = b ] && [ ! -e {m} ]; then touch {m}; echo 'b is not ready' >&2; exit 65; fi\n",
            m = marker.display()
        )
    } else {
        String::new()
    };
    // A path, not a `TempFile`: it must outlive this function (the test removes `dir`).
    let script = dir.0.join("step.sh");
    std::fs::write(
        &script,
        format!(
            "p=$(cat)\nn=$(echo \"$p\" | tr -cd 0-9)\n\
             echo \"$WARREN_TASK $n $WARREN_ATTEMPT $PPID\" >> {started}\n{fail}\
             if [ \"$WARREN_TASK\" = b ]; then sleep 5; fi\n\
             echo $((n + 1))\n",
            started = started.as_str()
        ),
    )
    .unwrap();
    let mut topo = TOPOLOGY.to_string();
    for step in ["a", "b", "c"] {
        topo.push_str(&format!(
            "[tasks.{step}]\nexec = [\"sh\", \"{}\"]\n",
            script.display()
        ));
    }
    (TempFile::with(&topo), started)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_step_chain_survives_a_worker_killed_in_its_middle_step() {
    let broker = TestBroker::new();
    let dir = TempFile::path("chain");
    std::fs::create_dir_all(&dir.0).unwrap();
    let (topo, started) = steps(&dir, false);
    let env = [("WARREN_TOPOLOGY", topo.as_str())];
    let apply = broker.cli_with(&["topology", "apply"], &env, None);
    assert!(apply.status.success(), "{}", stderr(&apply));
    let mut workers: Vec<Reaped> = (0..3)
        .map(|_| worker_process(&broker, &topo, &["--concurrency", "1"]))
        .collect();
    // The caller waits on the command line, in the background.
    let mut cmd = crate::support::warren_bin();
    cmd.env("WARREN_AMQP_URL", broker.amqp_url())
        .env("WARREN_NAMESPACE", "t")
        .env("WARREN_TOPOLOGY", topo.as_str())
        .args([
            "enqueue",
            "a",
            "--payload",
            r#"{"n":10}"#,
            "--then",
            "b",
            "--then",
            "c",
        ])
        .args(["--wait", "60s"]);
    let caller = tokio::task::spawn_blocking(move || crate::support::run(cmd, None));
    // Kill -9 the worker running `b` while it runs (each run of b takes 5 s).
    wait_count(Duration::from_secs(30), "b started", 1, || {
        started
            .lines()
            .iter()
            .filter(|l| l.starts_with("b "))
            .count()
    })
    .await;
    let line = started
        .lines()
        .into_iter()
        .find(|l| l.starts_with("b "))
        .unwrap();
    let pid: u32 = line.rsplit(' ').next().unwrap().parse().unwrap();
    let victim = workers
        .iter_mut()
        .find(|w| w.id() == pid)
        .expect("b's worker");
    signal(victim, "-KILL");
    wait_exit(victim, Duration::from_secs(10)).await;
    let out = caller.await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "13\n", "10, then a: 11, b: 12, c: 13");
    // `b` ran again, on another worker, after the kill. (Exact counts would be racy: a
    // killed worker's last acks may not have gone out, which runs a step again, as
    // at-least-once allows.)
    let lines = started.lines();
    let b_pids: std::collections::HashSet<&str> = lines
        .iter()
        .filter(|l| l.starts_with("b "))
        .filter_map(|l| l.rsplit(' ').next())
        .collect();
    assert!(
        b_pids.len() >= 2 && b_pids.contains(pid.to_string().as_str()),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("c 12 ")),
        "c got b's 12: {lines:?}"
    );
    let _ = std::fs::remove_dir_all(&dir.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_middle_step_keeps_the_rest_of_the_chain_and_its_replay_finishes_it() {
    let broker = TestBroker::new();
    let (_, _conn, ch) = broker.applied(TOPOLOGY).await;
    let dir = TempFile::path("chain-dead");
    std::fs::create_dir_all(&dir.0).unwrap();
    let (topo, started) = steps(&dir, true);
    let env = [("WARREN_TOPOLOGY", topo.as_str())];
    let apply = broker.cli_with(&["topology", "apply"], &env, None);
    assert!(apply.status.success(), "{}", stderr(&apply));
    let _worker = worker_process(&broker, &topo, &[]);
    let cli = |args: &[&str]| broker.cli_with(args, &env, None);
    let waited = cli(&[
        "enqueue",
        "a",
        "--payload",
        r#"{"n":1}"#,
        "--then",
        "b",
        "--then",
        "c",
        "--wait",
        "30s",
    ]);
    assert_eq!(waited.status.code(), Some(1), "{}", stderr(&waited));
    assert!(
        stderr(&waited).contains("dead (permanent) at `b`")
            && stderr(&waited).contains("not ready"),
        "{}",
        stderr(&waited)
    );
    // The dead copy of b carries what is left: c.
    let got = ch
        .basic_get("t.b.dead".into(), BasicGetOptions::default())
        .await
        .unwrap()
        .expect("b's dead copy");
    let chain = warren::wire::decode::header_str(&got.delivery.properties, "warren-chain");
    assert_eq!(chain.as_deref(), Some("c"));
    assert_eq!(got.delivery.data, b"2\n", "a's result is b's payload");
    got.delivery
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();
    // Replayed (b works now), the chain goes on to c.
    let replay = cli(&["dlq", "replay", "b", "--all"]);
    assert!(replay.status.success(), "{}", stderr(&replay));
    wait_count(Duration::from_secs(20), "c ran", 1, || {
        started
            .lines()
            .iter()
            .filter(|l| l.starts_with("c "))
            .count()
    })
    .await;
    assert!(
        started.lines().contains(&format!("c 3 1 {}", _worker.id())),
        "{:?}",
        started.lines()
    );
    let _ = std::fs::remove_dir_all(&dir.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_chain_steps_are_usage_errors_and_publish_nothing() {
    let broker = TestBroker::new();
    let topology = format!("{TOPOLOGY}[tasks.a]\n[tasks.reload]\nbroadcast = true\n");
    let (settings, _conn, ch) = broker.applied(&topology).await;
    let topo = TempFile::with(&topology);
    let env = [("WARREN_TOPOLOGY", topo.as_str())];
    for (args, needle) in [
        (
            vec!["enqueue", "a", "--then", "nosuch"],
            "--then: no task `nosuch`",
        ),
        (vec!["enqueue", "a", "--then", "Bad.Name"], "--then"),
        (vec!["enqueue", "a", "--then", "reload"], "broadcast type"),
        (vec!["enqueue", "reload", "--then", "a"], "broadcast type"),
    ] {
        let o = broker.cli_with(&args, &env, None);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }
    assert_eq!(broker.count(&ch, "t.a").await, 0, "nothing published");
    // In Rust: a step of a broadcast type is refused the same way.
    let producer = Producer::new(&settings).unwrap();
    let refused = producer
        .enqueue_raw(
            "a",
            b"{}".to_vec(),
            EnqueueOptions::default().then("reload"),
        )
        .await;
    assert!(
        matches!(refused, Err(Error::InvalidInput(_))),
        "{refused:?}"
    );
}
