//! Fault scenarios with a loss ledger: every confirmed task id against every execution seen.
//! lost = confirmed but never run, which must be 0; duplicates are counted and bounded.
//!
//! The scenarios that stop broker nodes run against a cluster of their own
//! (`scripts/cluster.sh up 3`), never the shared broker; they are `#[ignore]`d in a plain
//! `cargo test` and run by `scripts/test.sh` with `--ignored`, one at a time.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use warren::ops::management::{Management, enc};
use warren::topology;
use warren::{Producer, Settings, Task, TaskContext, Worker};

use crate::support::{TempFile, TestBroker, warren_bin};

mod frozen;
mod ledger;
mod nodes;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Job {
    n: u32,
}

impl Task for Job {
    const NAME: &'static str = "job";
}

/// Confirmed ids and executions seen.
#[derive(Default)]
struct Ledger {
    confirmed: HashSet<String>,
    runs: Vec<String>,
    /// When each run of `runs` finished (kept by the in-process workers).
    times: Vec<Instant>,
}

/// What a ledger adds up to.
#[derive(Debug)]
struct Tally {
    confirmed: usize,
    runs: usize,
    lost: usize,
    duplicates: usize,
}

impl Ledger {
    /// The longest time after `from` during which no task finished, up to the last run: how
    /// long a fault at `from` held work up.
    fn longest_stall(&self, from: Instant) -> Duration {
        let mut times: Vec<Instant> = self.times.iter().copied().filter(|t| *t >= from).collect();
        times.sort();
        let mut last = from;
        let mut longest = Duration::ZERO;
        for t in times {
            longest = longest.max(t - last);
            last = t;
        }
        longest
    }

    fn tally(&self) -> Tally {
        let ran: HashSet<&String> = self.runs.iter().collect();
        let lost = self.confirmed.iter().filter(|id| !ran.contains(id)).count();
        Tally {
            confirmed: self.confirmed.len(),
            runs: self.runs.len(),
            lost,
            duplicates: self.runs.len() - ran.len(),
        }
    }
}

impl Tally {
    /// Every confirmed task ran at least once: runs cover them, lost is 0.
    fn assert_nothing_lost(&self) {
        assert_eq!(self.lost, 0, "{self:?}");
        assert!(self.runs >= self.confirmed, "{self:?}");
    }
}

/// Records confirmed ids in the ledger; returns how many failed. A failure must be one the
/// caller can retry (a lost connection), never an unclear one.
fn record(ledger: &Mutex<Ledger>, results: Vec<warren::Result<String>>) -> usize {
    let mut errors = 0;
    for r in results {
        match r {
            Ok(id) => {
                ledger.lock().unwrap().confirmed.insert(id);
            }
            Err(e) => {
                assert!(e.is_transient(), "unclear error: {e}");
                if errors == 0 {
                    eprintln!("enqueue error (first of its batch): {e}");
                }
                errors += 1;
            }
        }
    }
    errors
}

/// Waits until every confirmed id ran (or `within` passes); returns the tally.
async fn settle(ledger: &Mutex<Ledger>, within: Duration) -> Tally {
    let deadline = Instant::now() + within;
    loop {
        let t = ledger.lock().unwrap().tally();
        if t.lost == 0 || Instant::now() > deadline {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const TOPOLOGY: &str = r#"
max_delay = "1h"
connect_timeout = "60s"
[defaults]
max_attempts = 10
delivery_limit = 50
[defaults.backoff]
initial = "1s"
multiplier = 1.0
max = "2s"
jitter = 0.0
[tasks.job]
"#;

fn recording_worker(settings: &Settings, role: &str, ledger: Arc<Mutex<Ledger>>) -> Worker {
    Worker::new(settings)
        .role(role)
        .concurrency(8)
        .prefetch(20)
        .handle(move |job: Job, ctx: TaskContext| {
            let ledger = ledger.clone();
            async move {
                // Every 7th task fails its first attempt, so retries wait in the ladder too.
                // Only successful runs count: a retry lost in the ladder would show as lost.
                if job.n.is_multiple_of(7) && ctx.attempt == 1 {
                    return Err(warren::TaskError::retry("first attempt fails"));
                }
                let mut ledger = ledger.lock().unwrap();
                ledger.runs.push(ctx.id.clone());
                ledger.times.push(Instant::now());
                Ok(())
            }
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow fault scenario: run by scripts/test.sh (cargo test -- --ignored faults::)"]
async fn faults_three_workers_with_one_killed_repeatedly_lose_nothing() {
    // Given three worker processes sharing 5000 tasks
    let broker = TestBroker::new();
    let settings = broker.settings(TOPOLOGY);
    let conn = broker.connect().await;
    topology::apply(&settings.plan(), &conn, &broker.vhost)
        .await
        .unwrap();
    let log = TempFile::path("runs");
    let topo = TempFile::with(&format!(
        "{}\nexec = [\"sh\", \"-c\", \"sleep 0.05; echo $WARREN_TASK_ID >> {}\"]\n",
        TOPOLOGY.trim_end(),
        log.as_str()
    ));
    let spawn = || {
        warren_bin()
            .env("WARREN_AMQP_URL", broker.amqp_url())
            .env("WARREN_NAMESPACE", "t")
            .env("WARREN_TOPOLOGY", topo.as_str())
            .args(["worker", "--concurrency", "8", "--prefetch", "16"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map(crate::support::Reaped::new)
            .unwrap()
    };
    let mut workers = [spawn(), spawn(), spawn()];
    let mut ledger = Ledger::default();
    let producer = Producer::new(&settings).unwrap();
    for r in producer.enqueue_many((0..5000).map(|n| Job { n })).await {
        ledger.confirmed.insert(r.expect("confirmed"));
    }
    // When the first worker is killed with SIGKILL and restarted, over and over
    let started = Instant::now();
    let mut kills = 0;
    while log.lines().len() < 5000 && started.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let _ = workers[0].kill();
        workers[0].wait_within(Duration::from_secs(10));
        kills += 1;
        workers[0] = spawn();
    }
    // Then every confirmed task ran (the survivors and the restarts pick up the killed ones)
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        ledger.runs = log.lines();
        if ledger.tally().lost == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (i, w) in workers.iter_mut().enumerate() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &w.id().to_string()])
            .status();
        let status = w.wait_within(Duration::from_secs(60));
        // The last replacement of worker 0 may get the signal before it has installed its
        // handler (it was started moments ago): then SIGTERM ends it, which is no failure.
        let just_started =
            i == 0 && std::os::unix::process::ExitStatusExt::signal(&status) == Some(15);
        assert!(
            status.success() || just_started,
            "worker {i} stopped by SIGTERM exits 0: {status:?}"
        );
    }
    let t = ledger.tally();
    eprintln!(
        "LEDGER kill-9: {t:?}, kills {kills}, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    ledger::write(
        &format!("worker killed (kill -9) every 0.7 s, {kills} times, 3 workers"),
        5000,
        &t,
        None,
        "a killed worker's unacked tasks are redelivered at once",
    );
    t.assert_nothing_lost();
    // Bound: each kill can repeat at most what that worker held (prefetch 16).
    assert!(t.duplicates <= kills * 16, "{t:?} after {kills} kills");
    assert!(
        kills >= 3,
        "the run was long enough to kill the worker several times"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow fault scenario: run by scripts/test.sh (cargo test -- --ignored faults::)"]
async fn faults_every_connection_force_closed_mid_run_loses_nothing() {
    let broker = TestBroker::new();
    let settings = broker.settings(TOPOLOGY);
    let conn = broker.connect().await;
    topology::apply(&settings.plan(), &conn, &broker.vhost)
        .await
        .unwrap();
    let ledger: Arc<Mutex<Ledger>> = Arc::default();
    let stop = CancellationToken::new();
    let w1 =
        tokio::spawn(recording_worker(&settings, "fault-w1", ledger.clone()).run(stop.clone()));
    let w2 =
        tokio::spawn(recording_worker(&settings, "fault-w2", ledger.clone()).run(stop.clone()));
    let producer = Producer::with_role(&settings, "fault-producer").unwrap();
    // Publish batches until the closing is over, then a few more.
    let closing_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publishing = {
        let (producer, ledger, done) = (producer.clone(), ledger.clone(), closing_done.clone());
        tokio::spawn(async move {
            let (mut errors, mut sent, mut after) = (0, 0u32, 0);
            while after < 5 {
                if done.load(std::sync::atomic::Ordering::SeqCst) {
                    after += 1;
                }
                errors += record(
                    &ledger,
                    producer
                        .enqueue_many((0..100).map(|n| Job { n: sent + n }))
                        .await,
                );
                sent += 100;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (errors, sent as usize)
        })
    };
    // Close every connection of this test's vhost, three times, mid-run. The management API
    // lists a new connection only after its statistics arrive (up to ~10 s), and still lists
    // a closed one for a while: each round waits for connections it has not closed before
    // (two workers and a producer are connected) and closes those still there.
    let mut closed: HashSet<String> = HashSet::new();
    let mut per_round = Vec::new();
    for round in 0..3 {
        let deadline = Instant::now() + Duration::from_secs(30);
        let fresh = loop {
            let conns = broker
                .mgmt
                .get(&format!("vhosts/{}/connections", enc(&broker.vhost)))
                .unwrap_or_default();
            let fresh: Vec<String> = conns
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["name"].as_str().map(str::to_string))
                .filter(|n| !closed.contains(n))
                .collect();
            if fresh.len() >= 2 {
                break fresh;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: only {fresh:?} connected after 30 s"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        let mut here = 0;
        for name in fresh {
            // Gone already (a 404) does not count as closed.
            if broker
                .mgmt
                .get_opt(&format!("connections/{}", enc(&name)))
                .unwrap()
                .is_some()
            {
                broker
                    .mgmt
                    .delete(&format!("connections/{}", enc(&name)))
                    .unwrap();
                here += 1;
            }
            closed.insert(name);
        }
        per_round.push(here);
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    closing_done.store(true, std::sync::atomic::Ordering::SeqCst);
    let (errors, sent) = publishing.await.unwrap();
    let t = settle(&ledger, Duration::from_secs(60)).await;
    stop.cancel();
    let (r1, r2) = (w1.await.unwrap(), w2.await.unwrap());
    eprintln!(
        "LEDGER force-close: {t:?}, connections closed per round {per_round:?}, producer errors {errors}"
    );
    ledger::write(
        "every connection force-closed, 3 rounds (management API)",
        sent,
        &t,
        None,
        "clients reconnect; unconfirmed tasks are published again",
    );
    r1.expect("worker 1 ran to its stop");
    r2.expect("worker 2 ran to its stop");
    assert!(
        per_round.iter().all(|n| *n >= 1),
        "every round closed live connections: {per_round:?}"
    );
    t.assert_nothing_lost();
    assert_eq!(
        t.confirmed + errors,
        sent,
        "every task was either confirmed or reported failed"
    );
}

// ---- scenarios on a cluster of their own ------------------------------------------------------

/// AMQP URLs of the fault cluster (`scripts/cluster.sh urls`); fails with a how-to when absent.
fn cluster() -> Vec<String> {
    let out = std::process::Command::new("scripts/cluster.sh")
        .arg("urls")
        .output()
        .expect("scripts/cluster.sh");
    let urls: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert!(
        urls.len() == 3,
        "these scenarios need the fault cluster: run `scripts/cluster.sh up 3` (scripts/test.sh does), got {urls:?}"
    );
    urls
}

/// A vhost of its own on the cluster, for one scenario.
struct ClusterVhost {
    vhost: String,
    mgmt: Management,
}

impl ClusterVhost {
    fn new(mgmt_port: u16) -> ClusterVhost {
        let mgmt = Management::new(&format!("http://127.0.0.1:{mgmt_port}"), "guest", "guest");
        let vhost = format!("fault-{}-{}", std::process::id(), rand_suffix());
        mgmt.put(&format!("vhosts/{}", enc(&vhost)), &serde_json::json!({}))
            .unwrap();
        mgmt.put(
            &format!("permissions/{}/guest", enc(&vhost)),
            &serde_json::json!({"configure": ".*", "write": ".*", "read": ".*"}),
        )
        .unwrap();
        ClusterVhost { vhost, mgmt }
    }

    fn url(&self, node_url: &str) -> String {
        node_url.replace("/%2f", &format!("/{}", enc(&self.vhost)))
    }
}

impl Drop for ClusterVhost {
    fn drop(&mut self) {
        let _ = self.mgmt.delete(&format!("vhosts/{}", enc(&self.vhost)));
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        % 1_000_000
}

fn rabbitmqctl(node: u32, args: &[&str]) {
    let status = std::process::Command::new("rabbitmqctl")
        .args(["-q", "-n", &format!("warren-c{node}@localhost")])
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "rabbitmqctl {args:?} on node {node}");
}

fn cluster_settings(url: &str) -> Settings {
    cluster_settings_in(TOPOLOGY, url)
}

fn cluster_settings_in(topology: &str, url: &str) -> Settings {
    let mut s = Settings::from_toml(topology).unwrap();
    s.amqp_url = url.to_string();
    s.namespace = "t".into();
    s.validate().unwrap();
    s
}

/// Takes every firing of schedule `beat` from `t.tick` through `url`: its slots, sorted.
pub(crate) async fn fired_slots(url: &str) -> Vec<chrono::DateTime<chrono::FixedOffset>> {
    let conn = warren::broker::connect(url, "fault test", Some(Duration::from_secs(30)))
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let mut slots = Vec::new();
    while let Some(m) = ch
        .basic_get(
            "t.tick".into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
    {
        let id = m
            .delivery
            .properties
            .message_id()
            .as_ref()
            .unwrap()
            .to_string();
        let at = id.strip_prefix("beat@").expect("a firing's id").to_string();
        slots.push(chrono::DateTime::parse_from_rfc3339(&at).unwrap());
    }
    let _ = conn.close(200, "".into()).await;
    slots.sort();
    slots
}

/// Runs a producer (through `producer_url`) and two workers (through `worker_url`) while
/// `fault` runs; returns what the ledger and the producer saw.
async fn under_fault(
    producer_url: &str,
    worker_url: &str,
    delayed_every: u32,
    fault: impl std::future::Future<Output = ()>,
) -> Run {
    under_fault_in(TOPOLOGY, producer_url, worker_url, delayed_every, fault).await
}

/// As [`under_fault`], with the task type declared by `topology`.
async fn under_fault_in(
    topology: &str,
    producer_url: &str,
    worker_url: &str,
    delayed_every: u32,
    fault: impl std::future::Future<Output = ()>,
) -> Run {
    let settings = cluster_settings_in(topology, producer_url);
    let vhost = warren::broker::url_parts(producer_url).unwrap().vhost;
    let conn = warren::broker::connect(producer_url, "fault test", Some(Duration::from_secs(30)))
        .await
        .unwrap();
    topology::apply(&settings.plan(), &conn, &vhost)
        .await
        .unwrap();
    let _ = conn.close(200, "".into()).await;
    let ledger: Arc<Mutex<Ledger>> = Arc::default();
    let wsettings = cluster_settings_in(topology, worker_url);
    let stop = CancellationToken::new();
    let w1 =
        tokio::spawn(recording_worker(&wsettings, "cluster-w1", ledger.clone()).run(stop.clone()));
    let w2 =
        tokio::spawn(recording_worker(&wsettings, "cluster-w2", ledger.clone()).run(stop.clone()));
    let producer = Producer::with_role(&settings, "cluster-producer").unwrap();
    let publishing = {
        let ledger = ledger.clone();
        tokio::spawn(async move {
            let mut errors = 0;
            let mut slowest = Duration::ZERO;
            for batch in 0..30u32 {
                let items = (0..50).map(|n| {
                    let i = batch * 50 + n;
                    let opts = if delayed_every > 0 && i % delayed_every == 0 {
                        warren::EnqueueOptions::default().delay(Duration::from_secs(3))
                    } else {
                        warren::EnqueueOptions::default()
                    };
                    (
                        "job".to_string(),
                        Ok(serde_json::to_vec(&Job { n: i }).unwrap()),
                        opts,
                    )
                });
                let began = Instant::now();
                errors += record(&ledger, producer.enqueue_many_raw(items).await);
                slowest = slowest.max(began.elapsed());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            (errors, slowest)
        })
    };
    let fault_at = Instant::now();
    fault.await;
    let (errors, slowest_enqueue) = publishing.await.unwrap();
    let t = settle(&ledger, Duration::from_secs(90)).await;
    if t.lost > 0 {
        // Where the missing tasks are: every queue of the vhost, from a node that is up.
        for port in [15682, 15683, 15681] {
            let mgmt = Management::new(&format!("http://127.0.0.1:{port}"), "guest", "guest");
            if let Ok(qs) = mgmt.get(&format!("queues/{}", enc(&vhost))) {
                for q in qs.as_array().into_iter().flatten() {
                    eprintln!(
                        "queue {} messages {} ready {} unacked {} leader {} consumers {}",
                        q["name"],
                        q["messages"],
                        q["messages_ready"],
                        q["messages_unacknowledged"],
                        q["leader"],
                        q["consumers"]
                    );
                }
                break;
            }
        }
    }
    stop.cancel();
    let (r1, r2) = (w1.await.unwrap(), w2.await.unwrap());
    r1.expect("worker 1 ran to its stop");
    r2.expect("worker 2 ran to its stop");
    let mut ledger = ledger.lock().unwrap();
    if t.lost > 0 {
        // Work that never resumed stalls until the end of the wait, not until the last run.
        ledger.times.push(Instant::now());
    }
    Run {
        stall: ledger.longest_stall(fault_at),
        t,
        errors,
        slowest_enqueue,
        workers_ran: ledger.times.len(),
    }
}

/// What [`under_fault`] saw.
struct Run {
    t: Tally,
    /// Tasks the producer reported not enqueued (each a transient error).
    errors: usize,
    /// The longest one `enqueue_many` call of 50 took: no call may hang.
    slowest_enqueue: Duration,
    /// The longest time without a task finishing, from the fault's start.
    stall: Duration,
    /// Runs the two workers under test made (they ran at all).
    workers_ran: usize,
}

/// Tasks [`under_fault`] offers the producer.
const UNDER_FAULT_SENT: usize = 1500;

/// What a node fault may cost and no more: nothing lost, every task confirmed or reported,
/// at most the batches in flight while the node was away failed (50 tasks each), and
/// duplicates within what two workers held unacked (prefetch 20 each) over a few reconnects.
fn assert_bounded(run: &Run) {
    let (t, errors) = (&run.t, run.errors);
    assert!(
        run.workers_ran > 0,
        "the workers under test ran tasks: {t:?}"
    );
    t.assert_nothing_lost();
    assert_eq!(
        t.confirmed + errors,
        UNDER_FAULT_SENT,
        "{t:?}, errors {errors}"
    );
    assert!(errors <= 300, "{errors} producer errors: {t:?}");
    assert!(t.confirmed >= 1200, "{t:?}");
    assert!(t.duplicates <= 160, "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/cluster.sh up 3: run by scripts/test.sh"]
async fn faults_a_broker_node_restart_with_delayed_tasks_in_the_ladder_loses_nothing() {
    // Clients on node 1, which restarts (stop_app / start_app) mid-run; every 5th task waits
    // 3 s in the ladder across the restart, and every 7th is retried through it (1-2 s).
    let urls = cluster();
    let v = ClusterVhost::new(15682);
    let url = v.url(&urls[0]);
    let started = Instant::now();
    let run = under_fault(&url, &url, 5, async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        rabbitmqctl(1, &["stop_app"]);
        tokio::time::sleep(Duration::from_secs(3)).await;
        rabbitmqctl(1, &["start_app"]);
    })
    .await;
    eprintln!(
        "LEDGER node restart: {:?}, producer errors {}, {:.1} s",
        run.t,
        run.errors,
        started.elapsed().as_secs_f64()
    );
    ledger::write(
        "node restart (stop_app), clients on it, delayed and retried tasks",
        UNDER_FAULT_SENT,
        &run.t,
        Some(run.stall),
        "clients reconnect to the same node",
    );
    assert_bounded(&run);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/cluster.sh up 3: run by scripts/test.sh"]
async fn faults_losing_the_node_with_the_queue_leaders_keeps_work_going_on_the_majority() {
    // Queues are declared through node 1 (their leaders start there); clients use nodes 2
    // and 3; node 1 stops mid-run and comes back only after the check.
    let urls = cluster();
    let v = ClusterVhost::new(15682);
    let (leader_url, producer_url, worker_url) =
        (v.url(&urls[0]), v.url(&urls[1]), v.url(&urls[2]));
    let settings = cluster_settings(&leader_url);
    let conn = warren::broker::connect(&leader_url, "fault test", Some(Duration::from_secs(30)))
        .await
        .unwrap();
    topology::apply(&settings.plan(), &conn, &v.vhost)
        .await
        .unwrap();
    let _ = conn.close(200, "".into()).await;
    let leader = v.mgmt.queue(&v.vhost, "t.job").unwrap().unwrap()["leader"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        leader, "warren-c1@localhost",
        "the work queue's leader is on node 1"
    );
    let started = Instant::now();
    let run = under_fault(&producer_url, &worker_url, 0, async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        rabbitmqctl(1, &["stop_app"]);
    })
    .await;
    let new_leader = v.mgmt.queue(&v.vhost, "t.job").unwrap().unwrap()["leader"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    rabbitmqctl(1, &["start_app"]);
    eprintln!(
        "LEDGER leader loss: {:?}, producer errors {}, new leader {new_leader}, {:.1} s",
        run.t,
        run.errors,
        started.elapsed().as_secs_f64()
    );
    ledger::write(
        "node with the quorum leaders stopped (stop_app)",
        UNDER_FAULT_SENT,
        &run.t,
        Some(run.stall),
        "leaders move to the majority",
    );
    assert_bounded(&run);
    // An empty field (no leader reported) must not pass as "moved".
    assert!(
        new_leader.starts_with("warren-c") && new_leader != "warren-c1@localhost",
        "the leader moved to another node: {new_leader:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/cluster.sh up 3: run by scripts/test.sh"]
async fn faults_amqps_with_a_private_ca_enqueues_and_works() {
    let _ = cluster();
    let dir = std::env::var("WARREN_CLUSTER_DIR").unwrap_or_else(|_| "/tmp/warren-cluster".into());
    let ca = format!("{dir}/tls/ca.pem");
    assert!(
        std::path::Path::new(&ca).exists(),
        "no CA at {ca}: scripts/cluster.sh up makes one"
    );
    let v = ClusterVhost::new(15681);
    let url = format!("amqps://guest:guest@localhost:5691/{}", enc(&v.vhost));
    let log = TempFile::path("tls-runs");
    let topo = TempFile::with(&format!(
        "{}\nexec = [\"sh\", \"-c\", \"echo $WARREN_TASK_ID >> {}\"]\n",
        TOPOLOGY.trim_end(),
        log.as_str()
    ));
    let cli = |args: &[&str], ca_file: &str| {
        warren_bin()
            .env("WARREN_AMQP_URL", &url)
            .env("WARREN_NAMESPACE", "t")
            .env("WARREN_TOPOLOGY", topo.as_str())
            .env("SSL_CERT_FILE", ca_file)
            .args(args)
            .output()
            .unwrap()
    };
    // Without the private CA the broker's certificate is refused, clearly.
    let refused = cli(
        &["--connect-timeout", "2s", "topology", "apply"],
        "/etc/ssl/certs/ca-certificates.crt",
    );
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        crate::support::stderr(&refused).contains("amqps://guest:***@localhost:5691"),
        "{}",
        crate::support::stderr(&refused)
    );
    // With it: apply, enqueue and work over TLS.
    let apply = cli(&["topology", "apply"], &ca);
    assert!(apply.status.success(), "{}", crate::support::stderr(&apply));
    let enq = cli(&["enqueue", "job", "--count", "10"], &ca);
    assert!(enq.status.success(), "{}", crate::support::stderr(&enq));
    let mut worker = warren_bin()
        .env("WARREN_AMQP_URL", &url)
        .env("WARREN_NAMESPACE", "t")
        .env("WARREN_TOPOLOGY", topo.as_str())
        .env("SSL_CERT_FILE", &ca)
        .arg("worker")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(crate::support::Reaped::new)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while log.lines().len() < 10 {
        assert!(
            Instant::now() < deadline,
            "only {} of 10 ran over TLS",
            log.lines().len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // While the worker is still connected (the API lists a connection once its statistics
    // arrive): every connection in the vhost is TLS.
    let conns =
        crate::support::eventually(Duration::from_secs(20), "the worker's connection", || {
            let conns = v
                .mgmt
                .get(&format!("vhosts/{}/connections", enc(&v.vhost)))
                .ok()?;
            let list = conns.as_array()?.clone();
            (!list.is_empty()).then_some(list)
        })
        .await;
    for c in &conns {
        assert_eq!(c["ssl"], true, "a plain connection in the TLS vhost: {c}");
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status();
    assert!(worker.wait_within(Duration::from_secs(60)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/cluster.sh up 3: run by scripts/test.sh"]
async fn faults_a_consumer_timeout_rebuilds_the_channel_and_work_goes_on() {
    // Node 1 closes a channel whose delivery stays unacked past 4 s (consumer_timeout).
    let urls = cluster();
    let v = ClusterVhost::new(15682);
    let url = v.url(&urls[0]);
    let mut settings = cluster_settings(&url);
    settings.defaults.time_limit = Duration::from_secs(20);
    settings
        .tasks
        .values_mut()
        .for_each(|t| t.policy.time_limit = Duration::from_secs(20));
    let conn = warren::broker::connect(&url, "fault test", Some(Duration::from_secs(30)))
        .await
        .unwrap();
    topology::apply(&settings.plan(), &conn, &v.vhost)
        .await
        .unwrap();
    let _ = conn.close(200, "".into()).await;
    // The first run of task 0 outlives the timeout; every other run is quick.
    let runs: Arc<Mutex<Vec<(u32, u32)>>> = Arc::default();
    let r2 = runs.clone();
    let worker = Worker::new(&settings)
        .role("timeout-worker")
        .prefetch(5)
        .handle(move |job: Job, ctx: TaskContext| {
            let runs = r2.clone();
            async move {
                let first = !runs.lock().unwrap().iter().any(|(n, _)| *n == job.n);
                runs.lock().unwrap().push((job.n, ctx.attempt));
                if job.n == 0 && first {
                    tokio::time::sleep(Duration::from_secs(8)).await;
                }
                Ok(())
            }
        });
    let stop = CancellationToken::new();
    let handle = tokio::spawn(worker.run(stop.clone()));
    let producer = Producer::new(&settings).unwrap();
    producer.enqueue(&Job { n: 0 }).await.unwrap();
    tokio::time::sleep(Duration::from_secs(9)).await;
    // After the channel was closed under it, the worker still takes new work.
    producer.enqueue(&Job { n: 1 }).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = runs.lock().unwrap().clone();
        let zero = r.iter().filter(|(n, _)| *n == 0).count();
        if zero >= 2 && r.iter().any(|(n, _)| *n == 1) {
            break;
        }
        assert!(Instant::now() < deadline, "runs so far: {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    handle.await.unwrap().unwrap();
    let r = runs.lock().unwrap().clone();
    eprintln!("consumer timeout: runs {r:?}");
    // the redelivered run counts as a later attempt (quorum x-delivery-count)
    assert!(r.iter().any(|(n, a)| *n == 0 && *a >= 2), "{r:?}");
}

/// Task types such that the plan adds `quorum_queues` quorum queues or more (two per type,
/// plus the ladder of a 7 s max_delay), in namespace `ns`.
fn many_types_topology(ns: &str, types: u64) -> String {
    let mut toml = format!("namespace = \"{ns}\"\nqueue_type = \"quorum\"\nmax_delay = \"7s\"\n");
    for i in 0..types {
        toml.push_str(&format!("[tasks.t{i}]\n"));
    }
    toml
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/cluster.sh up 3 with a small open-file limit: run by scripts/test.sh"]
async fn faults_apply_refuses_a_namespace_that_would_exhaust_the_file_handles() {
    let urls = cluster();
    let v = ClusterVhost::new(15681);
    let url = v.url(&urls[0]);
    let nodes = v.mgmt.get("nodes").unwrap();
    let fd_total = nodes
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["fd_total"].as_u64())
        .min()
        .expect("fd_total of the cluster's nodes");
    assert!(
        fd_total <= 4096,
        "this scenario needs nodes with a small open-file limit (got {fd_total}): \
         WARREN_CLUSTER_NOFILE=1024 scripts/cluster.sh up 3 (scripts/test.sh does)"
    );
    let limit = warren::ops::capacity::quorum_queue_limit(fd_total, 3);
    let apply = |toml: &TempFile, extra: &[&str]| {
        warren_bin()
            .env("WARREN_AMQP_URL", &url)
            .env("WARREN_MANAGEMENT_URL", "http://127.0.0.1:15681")
            .env("WARREN_TOPOLOGY", toml.as_str())
            .env("RUST_LOG", "warn")
            .args(["--connect-timeout", "10s", "topology", "apply"])
            .args(extra)
            .output()
            .unwrap()
    };
    // Twice the node's capacity: refused with the figures, and nothing declared.
    let too_big = TempFile::with(&many_types_topology("fdbig", limit));
    let refused = apply(&too_big, &[]);
    let err = crate::support::stderr(&refused);
    assert_eq!(refused.status.code(), Some(1), "{err}");
    for part in [
        "would hold",
        &format!("open-file limit of {fd_total}"),
        &format!("about {limit}"),
        "LimitNOFILE",
        "--skip-capacity-check",
    ] {
        assert!(err.contains(part), "`{part}` missing from: {err}");
    }
    let queues = v.mgmt.get(&format!("queues/{}", enc(&v.vhost))).unwrap();
    assert_eq!(queues.as_array().map(Vec::len), Some(0), "{queues}");
    // The node still takes connections, and a namespace that fits applies without a word.
    let small = TempFile::with(&many_types_topology("fdsmall", 3));
    let applied = apply(&small, &[]);
    let err = crate::support::stderr(&applied);
    assert!(applied.status.success(), "{err}");
    assert!(!err.contains("file handle"), "{err}");
    // A namespace that takes the node past 80 % of what it holds applies with a warning.
    let tight = TempFile::with(&many_types_topology("fdtight", limit * 85 / 200));
    let warned = apply(&tight, &[]);
    let err = crate::support::stderr(&warned);
    assert!(warned.status.success(), "{err}");
    assert!(err.contains("nearly full"), "{err}");
    // Re-applying it adds nothing, so it is not refused even on a nearly full node.
    let again = apply(&tight, &[]);
    assert!(again.status.success(), "{}", crate::support::stderr(&again));
    assert!(!crate::support::stderr(&again).contains("nearly full"));
    eprintln!("capacity: fd_total {fd_total}, limit {limit} quorum queues; refused {limit} types");
}

/// The node (`warren-cN@localhost`) that the connection named `warren {role} ...` is on, as
/// the management API of any node still up sees it.
fn node_of(ports: &[u16], role: &str) -> Option<String> {
    let needle = format!("warren {role} ");
    ports.iter().find_map(|port| {
        let mgmt = Management::new(&format!("http://127.0.0.1:{port}"), "guest", "guest");
        mgmt.connections().ok()?.into_iter().find_map(|c| {
            let name = c["client_properties"]["connection_name"].as_str()?;
            name.starts_with(&needle)
                .then(|| c["node"].as_str().map(str::to_string))?
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/cluster.sh up 3: run by scripts/test.sh"]
async fn faults_clients_given_every_node_move_on_when_their_node_stops() {
    let urls = cluster();
    let ports = [15681, 15682, 15683];
    let v = ClusterVhost::new(15681);
    let list = urls.iter().map(|u| v.url(u)).collect::<Vec<_>>().join(",");
    let mut settings = cluster_settings(&list);
    settings.management_url = Some(
        ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(","),
    );
    let session =
        warren::broker::Session::connect(&list, "fault test", Some(Duration::from_secs(30)))
            .await
            .unwrap();
    session.apply(&settings.plan()).await.unwrap();
    session.close("declared").await;
    let ledger: Arc<Mutex<Ledger>> = Arc::default();
    let stop = CancellationToken::new();
    let worker = tokio::spawn(
        recording_worker(&settings, "moving-worker", ledger.clone()).run(stop.clone()),
    );
    let node = crate::support::eventually(Duration::from_secs(20), "the worker's node", || {
        node_of(&ports, "moving-worker")
    })
    .await;
    // Producers pick a node at random when they first connect: take one that shares the
    // worker's node. Twelve at a time (the management API lists a connection only once its
    // statistics arrive, a few seconds later); each one's task is confirmed and counts.
    let mut producer = None;
    let mut warmups = 0;
    for round in 0..3u32 {
        let mut tried = Vec::new();
        for i in 0..12u32 {
            let role = format!("moving-producer-{round}-{i}");
            let p = Producer::with_role(&settings, &role).unwrap();
            let id = p
                .enqueue(&Job {
                    n: 100_000 + round * 12 + i,
                })
                .await
                .unwrap();
            ledger.lock().unwrap().confirmed.insert(id);
            warmups += 1;
            tried.push((p, role));
        }
        let mut nodes = Vec::new();
        for (_, role) in &tried {
            let on =
                crate::support::eventually(Duration::from_secs(20), "a producer's node", || {
                    node_of(&ports, role)
                })
                .await;
            nodes.push(on);
        }
        for ((p, role), on) in tried.into_iter().zip(nodes) {
            if producer.is_none() && on == node {
                producer = Some((p, role));
            } else {
                p.close().await;
            }
        }
        if producer.is_some() {
            break;
        }
    }
    let (producer, role) = producer.expect("a producer on the worker's node in 36 tries");
    let index: u32 = node["warren-c".len()..node.find('@').unwrap()]
        .parse()
        .unwrap();
    let publishing = {
        let ledger = ledger.clone();
        let node_of_stopped = node.clone();
        tokio::spawn(async move {
            let mut errors = 0;
            for batch in 0..30u32 {
                let items = (0..50).map(|n| {
                    let job = Job { n: batch * 50 + n };
                    let body = Ok(serde_json::to_vec(&job).unwrap());
                    ("job".to_string(), body, warren::EnqueueOptions::default())
                });
                errors += record(&ledger, producer.enqueue_many_raw(items).await);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            // Its connection now (listed once its statistics arrive), on a node still up.
            let stopped = node_of_stopped.clone();
            let now_on = crate::support::eventually(
                Duration::from_secs(20),
                "the producer's connection on another node",
                || node_of(&ports, &role).filter(|n| *n != stopped),
            )
            .await;
            producer.close().await;
            (errors, now_on)
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    rabbitmqctl(index, &["stop_app"]);
    let (errors, producer_now) = publishing.await.unwrap();
    let t = settle(&ledger, Duration::from_secs(90)).await;
    let worker_now = crate::support::eventually(
        Duration::from_secs(20),
        "the worker's connection on another node",
        || node_of(&ports, "moving-worker").filter(|n| *n != node),
    )
    .await;
    stop.cancel();
    let worker_result = worker.await.unwrap();
    rabbitmqctl(index, &["start_app"]);
    eprintln!(
        "LEDGER node of worker and producer ({node}) stopped: {t:?}, producer errors {errors}, \
         worker moved to {worker_now}, producer to {producer_now}"
    );
    ledger::write(
        "node of a worker and a producer stopped, both given every node",
        1500 + warmups,
        &t,
        None,
        "both move to another node without a restart",
    );
    worker_result.expect("the worker ran to its stop");
    t.assert_nothing_lost();
    assert_eq!(t.confirmed + errors, 1500 + warmups, "{t:?}");
    assert!(
        errors <= 100,
        "at most the batches in flight when the node stopped fail: {errors}"
    );
    assert!(t.confirmed >= 1400 + warmups, "{t:?}");
    assert!(
        t.duplicates <= 200,
        "duplicates are bounded by what was unacked on the lost node: {t:?}"
    );
    // Both were found connected again on a node other than the stopped one (the `eventually`
    // calls above fail otherwise): that is the move.
}

/// The node (`warren-cN@localhost`) a queue of `vhost` lives on, as the management API of any
/// node still up sees it; `None` while the queue does not exist.
fn queue_node(ports: &[u16], vhost: &str, queue: &str) -> Option<String> {
    ports.iter().find_map(|port| {
        let mgmt = Management::new(&format!("http://127.0.0.1:{port}"), "guest", "guest");
        let q = mgmt.queue(vhost, queue).ok()??;
        q["node"].as_str().map(str::to_string)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/cluster.sh up 3: run by scripts/test.sh"]
async fn faults_losing_the_node_of_the_scheduler_lease_moves_leadership_and_every_slot_fires_once()
{
    // One scheduler per node, each connected to its node only. The node that holds the lease
    // (the leader's) stops; a scheduler on another node must lead within seconds, and the
    // schedule's slots, recorded in a quorum queue that survives the loss, fire once each.
    let urls = cluster();
    let ports = [15681, 15682, 15683];
    let v = ClusterVhost::new(15681);
    let toml = "queue_type = \"quorum\"\nmax_delay = \"1h\"\n[tasks.tick]\n\
                [schedules.beat]\ntask = \"tick\"\nevery = \"2s\"\ncatch_up = \"all\"\n";
    let settings_for = |url: &str| {
        let mut s = Settings::from_toml(toml).unwrap();
        s.amqp_url = url.to_string();
        s.namespace = "t".into();
        s.validate().unwrap();
        s
    };
    let stop = CancellationToken::new();
    let schedulers: Vec<_> = urls
        .iter()
        .map(|u| {
            let scheduler = warren::schedule::Scheduler::new(&settings_for(&v.url(u)));
            let stop = stop.clone();
            tokio::spawn(async move { scheduler.run(stop).await })
        })
        .collect();
    let lease = "t.scheduler.lease";
    let leader_node = crate::support::eventually(Duration::from_secs(30), "a leader", || {
        queue_node(&ports, &v.vhost, lease)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let index: u32 = leader_node["warren-c".len()..leader_node.find('@').unwrap()]
        .parse()
        .unwrap();
    let stopped_at = Instant::now();
    rabbitmqctl(index, &["stop_app"]);
    let new_node =
        crate::support::eventually(Duration::from_secs(30), "a leader on another node", || {
            queue_node(&ports, &v.vhost, lease).filter(|n| *n != leader_node)
        })
        .await;
    let takeover = stopped_at.elapsed();
    tokio::time::sleep(Duration::from_secs(10)).await;
    rabbitmqctl(index, &["start_app"]);
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.cancel();
    for s in schedulers {
        tokio::time::timeout(Duration::from_secs(30), s)
            .await
            .expect("scheduler stops")
            .unwrap()
            .expect("scheduler ok");
    }
    // Every firing, through a node that stayed up.
    let live = urls
        .iter()
        .enumerate()
        .find(|(i, _)| *i as u32 + 1 != index)
        .map(|(_, u)| v.url(u))
        .unwrap();
    let slots = fired_slots(&live).await;
    eprintln!(
        "LEDGER scheduler lease node loss: {} slots, leader {leader_node} -> {new_node}, takeover {takeover:?}",
        slots.len()
    );
    assert!(slots.len() >= 10, "about 24 s of a 2 s schedule: {slots:?}");
    for pair in slots.windows(2) {
        assert_eq!(
            (pair[1] - pair[0]).num_seconds(),
            2,
            "each slot once, none missing: {slots:?}"
        );
    }
    assert!(
        takeover < Duration::from_secs(15),
        "a scheduler on another node led {takeover:?} after the node stopped"
    );
}
