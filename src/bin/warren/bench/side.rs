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

/// Runs a Warren worker with a no-op handler until `n` tasks ran.
pub(super) async fn warren_drain(
    settings: &Settings,
    n: u64,
    prefetch: u16,
    concurrency: usize,
) -> Result<Drained> {
    let done = Arc::new(AtomicU64::new(0));
    let all = Arc::new(Notify::new());
    let first = Arc::new(OnceLock::new());
    let latencies = Arc::new(std::sync::Mutex::new(Vec::with_capacity(n as usize)));
    let (d2, a2, f2, l2) = (done.clone(), all.clone(), first.clone(), latencies.clone());
    let worker = Worker::new(settings)
        .role("bench-worker")
        .prefetch(prefetch)
        .concurrency(concurrency)
        .handle(move |t: BenchTask, _ctx: TaskContext| {
            f2.get_or_init(Instant::now);
            let lat = now_us().saturating_sub(t.t) as f64 / 1000.0;
            if let Ok(mut l) = l2.lock() {
                l.push(lat);
            }
            if d2.fetch_add(1, Ordering::SeqCst) + 1 == n {
                a2.notify_one();
            }
            async { Ok(()) }
        });
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));
    all.notified().await;
    let last = Instant::now();
    stop.cancel();
    running
        .await
        .map_err(|e| Error::Internal(format!("the bench worker task failed: {e}")))??;
    let latencies = latencies.lock().map(|l| l.clone()).unwrap_or_default();
    Ok(Drained {
        first: first.get().copied().unwrap_or(last),
        last,
        latencies,
    })
}
