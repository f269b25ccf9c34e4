//! The demo's run: workers, a watch on the dead queue, the planned enqueue, the wait for
//! every task to end, and the tally against the plan.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use warren::broker::{Session, close_channel};
use warren::topology::Names;
use warren::wire::decode::header_str;
use warren::wire::{Reason, header, unix_ms};
use warren::{EnqueueOptions, Error, Producer, Result, Settings, TaskContext, TaskError, Worker};

use super::{DemoOptions, DemoTask, Kind, Observed, Summary};

type Seen = Arc<Mutex<Observed>>;

/// How long the demo's workers have to start consuming.
const WORKERS_UP: Duration = Duration::from_secs(30);

fn lock(seen: &Seen) -> std::sync::MutexGuard<'_, Observed> {
    // Every update is one statement: the state stays consistent across a panic elsewhere.
    seen.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs the demo in `settings`' namespace (declared by the caller) and tallies the outcomes.
pub(super) async fn drive(
    settings: &Settings,
    opts: &DemoOptions,
    session: &Session,
    names: &Names,
    progress: &mut impl FnMut(u64, u64),
) -> Result<Summary> {
    let seen: Seen = Arc::default();
    let stop = CancellationToken::new();
    let workers: Vec<_> = (0..opts.workers.max(1))
        .map(|i| start_worker(settings, i, &seen, &stop))
        .collect();
    let (dead_ch, dead_watch) = watch_dead(session, names, &seen).await?;
    // Enqueue once every worker consumes: the latency below is a task's wait in the queue,
    // not the workers' start-up (which `warren bench` measures on its own).
    let ch = session.channel().await?;
    let want = opts.workers.max(1) as u32;
    let up = crate::consumers::wait_for_consumers(&ch, &names.work_queue("demo"), want, WORKERS_UP)
        .await;
    close_channel(&ch, "demo workers up").await;
    up?;
    let started = Instant::now();
    let planned = enqueue_plan(settings, opts).await;
    let enqueue_secs = started.elapsed().as_secs_f64();
    if planned.is_ok() {
        wait_for_ends(&seen, opts, progress).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop.cancel();
    for w in workers {
        let _ = w.await;
    }
    dead_watch.abort();
    close_channel(&dead_ch, "demo done").await;
    let (expected, kinds) = planned?;
    let o = lock(&seen);
    let (actual, mismatched) = tally(&o, &kinds);
    let mut latencies = o.latencies.clone();
    Ok(Summary {
        namespace: settings.namespace.clone(),
        expected,
        actual,
        mismatched,
        runs: o.runs,
        enqueue_rate: opts.tasks as f64 / enqueue_secs.max(1e-9),
        throughput: o.ends.len() as f64 / elapsed.max(1e-9),
        latency_ms: crate::stats::percentiles(&mut latencies),
        elapsed_s: elapsed,
    })
}

/// An in-process worker that plays each task's planned part and records how it ended.
fn start_worker(
    settings: &Settings,
    i: usize,
    seen: &Seen,
    stop: &CancellationToken,
) -> JoinHandle<Result<()>> {
    let seen = seen.clone();
    let worker = Worker::new(settings)
        .role(&format!("demo-worker-{i}"))
        .concurrency(8)
        .prefetch(16)
        .handle(move |t: DemoTask, ctx: TaskContext| {
            let seen = seen.clone();
            async move { play(&seen, &t, &ctx) }
        });
    tokio::spawn(worker.run(stop.clone()))
}

/// One run of a demo task: fails or succeeds as planned, and records the end.
fn play(seen: &Seen, t: &DemoTask, ctx: &TaskContext) -> std::result::Result<(), TaskError> {
    let now = unix_ms(SystemTime::now());
    let mut o = lock(seen);
    o.runs += 1;
    if ctx.attempt == 1 && matches!(t.kind, Kind::Ok | Kind::Flaky | Kind::Doomed) {
        o.latencies.push(now.saturating_sub(t.sent_ms) as f64);
    }
    match t.kind {
        Kind::Flaky if ctx.attempt == 1 => Err(TaskError::retry("flaky: first attempt fails")),
        Kind::Doomed => Err(TaskError::retry("doomed: always fails")),
        Kind::Flaky => {
            o.ends.insert(t.seq, "succeeded after a retry");
            Ok(())
        }
        _ => {
            let end = if ctx.attempt == 1 {
                "succeeded first time"
            } else {
                "succeeded after a retry"
            };
            o.ends.entry(t.seq).or_insert(end);
            Ok(())
        }
    }
}

/// Consumes the dead queue: it tells which tasks died and why.
async fn watch_dead(
    session: &Session,
    names: &Names,
    seen: &Seen,
) -> Result<(Channel, JoinHandle<()>)> {
    let ch = session.channel().await?;
    let mut dead = ch
        .basic_consume(
            names.dead_queue("demo").as_str().into(),
            "warren demo dead-watch".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|source| Error::Amqp {
            operation: "watching the dead queue".into(),
            source,
        })?;
    let seen = seen.clone();
    let watch = tokio::spawn(async move {
        while let Some(Ok(d)) = dead.next().await {
            let reason = header_str(&d.properties, header::REASON).and_then(|r| Reason::parse(&r));
            if let Ok(t) = serde_json::from_slice::<DemoTask>(&d.data) {
                let end = match reason {
                    Some(Reason::Failed) => "dead: failed",
                    Some(Reason::Expired) => "dead: expired",
                    _ => "dead: other",
                };
                lock(&seen).ends.insert(t.seq, end);
            }
            let _ = d.ack(BasicAckOptions::default()).await;
        }
    });
    Ok((ch, watch))
}

/// Expected ends by name, and each task's kind by sequence number.
type Plan = (BTreeMap<String, u64>, HashMap<u64, Kind>);

/// Enqueues the planned mix in batches of 25, each stamped when it is sent, so the latency
/// measures the wait in the queue rather than the time to publish the whole run.
async fn enqueue_plan(settings: &Settings, opts: &DemoOptions) -> Result<Plan> {
    let producer = Producer::with_role(settings, "demo-producer")?;
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    let mut kinds: HashMap<u64, Kind> = HashMap::new();
    let seqs: Vec<u64> = (0..opts.tasks).collect();
    let mut result = Ok(());
    for batch in seqs.chunks(25) {
        let now_ms = unix_ms(SystemTime::now());
        let tasks: Vec<_> = batch
            .iter()
            .map(|&seq| {
                let kind = Kind::for_seq(seq);
                kinds.insert(seq, kind);
                *expected.entry(kind.expected().to_string()).or_default() += 1;
                planned_task(seq, kind, now_ms)
            })
            .collect();
        let results = producer.enqueue_many_raw(tasks).await;
        if let Some(Err(e)) = results.into_iter().find(|r| r.is_err()) {
            result = Err(e);
            break;
        }
    }
    producer.close().await;
    result.map(|()| (expected, kinds))
}

fn planned_task(seq: u64, kind: Kind, now_ms: u64) -> (String, Result<Vec<u8>>, EnqueueOptions) {
    let options = match kind {
        Kind::Delayed => EnqueueOptions::default().delay(Duration::from_secs(2)),
        Kind::Expiring => EnqueueOptions::default()
            .delay(Duration::from_secs(2))
            .expires_in(Duration::from_secs(1)),
        _ => EnqueueOptions::default(),
    };
    let body = serde_json::to_vec(&DemoTask {
        seq,
        kind,
        sent_ms: now_ms,
    })
    .map_err(|e| Error::Internal(format!("serializing a demo task: {e}")));
    ("demo".to_string(), body, options)
}

/// Waits until every task ended or the timeout passed, reporting progress.
async fn wait_for_ends(seen: &Seen, opts: &DemoOptions, progress: &mut impl FnMut(u64, u64)) {
    let deadline = Instant::now() + opts.timeout;
    loop {
        let settled = lock(seen).ends.len() as u64;
        progress(settled, opts.tasks);
        if settled >= opts.tasks || Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// How many tasks reached each end, and how many of them not the planned one.
fn tally(o: &Observed, kinds: &HashMap<u64, Kind>) -> (BTreeMap<String, u64>, u64) {
    let mut actual: BTreeMap<String, u64> = BTreeMap::new();
    let mut mismatched = 0;
    for (seq, kind) in kinds {
        let end = o.ends.get(seq).copied().unwrap_or("never finished");
        *actual.entry(end.to_string()).or_default() += 1;
        if end != kind.expected() {
            mismatched += 1;
        }
    }
    (actual, mismatched)
}
