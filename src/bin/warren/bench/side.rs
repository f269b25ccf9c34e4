//! Warren's side of the benchmark: `Producer::enqueue_many` and a `Worker` with a no-op handler.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use warren::{Error, Producer, Result, Settings, TaskContext, Worker};

use super::{BenchTask, Drained, now_us, tasks};

pub(super) async fn warren_enqueue(producer: &Producer, n: u64, size: usize) -> Result<f64> {
    let started = Instant::now();
    for r in producer.enqueue_many(tasks(n, size)).await {
        r?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Counts a drain's runs toward `n`: when the first ran, and a wake-up when the n-th did.
/// Cheap to clone into handlers.
#[derive(Clone)]
struct Runs {
    n: u64,
    done: Arc<AtomicU64>,
    all: Arc<Notify>,
    first: Arc<OnceLock<Instant>>,
}

impl Runs {
    fn new(n: u64) -> Runs {
        Runs {
            n,
            done: Arc::new(AtomicU64::new(0)),
            all: Arc::new(Notify::new()),
            first: Arc::new(OnceLock::new()),
        }
    }

    /// One more run (called at its start).
    fn ran(&self) {
        self.first.get_or_init(Instant::now);
        if self.done.fetch_add(1, Ordering::SeqCst) + 1 == self.n {
            self.all.notify_one();
        }
    }

    /// Runs `worker` until `n` runs were counted, then stops it; the steady span of the
    /// drain, from its first run to its n-th (no latencies: the caller adds its own).
    async fn drain(&self, worker: Worker) -> Result<Drained> {
        let stop = CancellationToken::new();
        let running = tokio::spawn(worker.run(stop.clone()));
        self.all.notified().await;
        let last = Instant::now();
        stop.cancel();
        running
            .await
            .map_err(|e| Error::Internal(format!("the bench worker task failed: {e}")))??;
        Ok(Drained {
            first: self.first.get().copied().unwrap_or(last),
            last,
            latencies: Vec::new(),
        })
    }
}

/// Runs a Warren worker with a no-op handler until `n` tasks ran.
pub(super) async fn warren_drain(
    settings: &Settings,
    n: u64,
    prefetch: u16,
    concurrency: usize,
) -> Result<Drained> {
    let runs = Runs::new(n);
    let latencies = Arc::new(std::sync::Mutex::new(Vec::with_capacity(n as usize)));
    let (r2, l2) = (runs.clone(), latencies.clone());
    let worker = Worker::new(settings)
        .role("bench-worker")
        .prefetch(prefetch)
        .concurrency(concurrency)
        .handle(move |t: BenchTask, _ctx: TaskContext| {
            r2.ran();
            let lat = now_us().saturating_sub(t.t) as f64 / 1000.0;
            if let Ok(mut l) = l2.lock() {
                l.push(lat);
            }
            async { Ok(()) }
        });
    let mut drained = runs.drain(worker).await?;
    drained.latencies = latencies.lock().map(|l| l.clone()).unwrap_or_default();
    Ok(drained)
}

/// Runs one Warren worker serving every type of the many-types phase, each with a no-op
/// handler, until `n` tasks ran across them.
pub(super) async fn warren_drain_many(
    settings: &Settings,
    n: u64,
    prefetch: u16,
    concurrency: usize,
) -> Result<Drained> {
    let runs = Runs::new(n);
    let mut worker = Worker::new(settings)
        .role("bench-many-worker")
        .prefetch(prefetch)
        .concurrency(concurrency);
    for name in super::many_types() {
        let runs = runs.clone();
        worker = worker.handle_json(&name, move |_body, _ctx| {
            runs.ran();
            Box::pin(async { Ok(None) })
        })?;
    }
    runs.drain(worker).await
}

/// Enqueues `n` tasks spread evenly over the many-types phase's types.
pub(super) async fn warren_enqueue_many_types(
    producer: &Producer,
    n: u64,
    size: usize,
) -> Result<f64> {
    let names: Vec<String> = super::many_types().collect();
    let started = Instant::now();
    let items = tasks(n, size).enumerate().map(|(i, t)| {
        let body = serde_json::to_vec(&t).map_err(|e| Error::Internal(e.to_string()));
        (
            names[i % names.len()].clone(),
            body,
            warren::EnqueueOptions::default(),
        )
    });
    for r in producer.enqueue_many_raw(items).await {
        r?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Runs a Warren worker with the bench type's no-op handler and the limits phase's two
/// limited types (runs of 5 ms at a concurrency limit of 2, and a rate limit), until `n`
/// bench tasks ran: the bench type's drain beside limited ones.
pub(super) async fn warren_drain_beside_limits(
    settings: &Settings,
    n: u64,
    prefetch: u16,
    concurrency: usize,
) -> Result<Drained> {
    let runs = Runs::new(n);
    let r2 = runs.clone();
    let worker = Worker::new(settings)
        .role("bench-limits-worker")
        .prefetch(prefetch)
        .concurrency(concurrency)
        .handle(move |_: BenchTask, _ctx: TaskContext| {
            r2.ran();
            async { Ok(()) }
        })
        .handle_json(super::LIMITED_AT_ONCE, |_body, _ctx| {
            Box::pin(async {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                Ok(None)
            })
        })?
        .handle_json(super::LIMITED_RATE, |_body, _ctx| {
            Box::pin(async { Ok(None) })
        })?;
    runs.drain(worker).await
}

/// Enqueues `n` tasks of each named type.
pub(super) async fn warren_enqueue_to(
    producer: &Producer,
    types: &[&str],
    n: u64,
    size: usize,
) -> Result<()> {
    let items = types.iter().flat_map(|name| {
        tasks(n, size).map(move |t| {
            let body = serde_json::to_vec(&t).map_err(|e| Error::Internal(e.to_string()));
            (name.to_string(), body, warren::EnqueueOptions::default())
        })
    });
    for r in producer.enqueue_many_raw(items).await {
        r?;
    }
    Ok(())
}
