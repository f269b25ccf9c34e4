//! Delays at scale (`warren bench --delays N`): N tasks with delays spread over whole seconds
//! from 0 to `--delay-spread`, one worker, and how late each run starts behind its due time.
//!
//! Run once after the repetitions (it lasts the whole spread), not per repetition. Lateness is
//! from the moment a task was due (its publish time plus its delay) to its handler's start: the
//! ladder's own precision (it holds a task for whole powers of two seconds), the broker's TTL
//! sweeps, and the worker. The ladder's size is sampled from the management API 10 s in.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use warren::{EnqueueOptions, Error, Result, TaskContext, Worker};

use super::repetition::Bench;
use super::{BenchTask, now_us, padding};

/// What the delays phase measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DelayFigures {
    /// Tasks enqueued.
    pub tasks: u64,
    /// Ran (all of them, unless the phase timed out).
    pub ran: u64,
    /// The longest delay asked for, s.
    pub spread_s: u64,
    /// Lateness behind the due time, ms: p50, p90, p99, max.
    pub late_p50_ms: f64,
    /// See `late_p50_ms`.
    pub late_p90_ms: f64,
    /// See `late_p50_ms`.
    pub late_p99_ms: f64,
    /// See `late_p50_ms`.
    pub late_max_ms: f64,
    /// Messages in the ladder's queues 10 s after the enqueue began (management API).
    pub ladder_messages: Option<u64>,
    /// The broker memory of the ladder's queues then, MiB (management API).
    pub ladder_memory_mib: Option<f64>,
}

impl Bench<'_> {
    /// Enqueues `n` tasks delayed 0, 1, …, `spread` s in turn, runs one worker until every one
    /// ran (or the spread plus 2 min passed), and reports their lateness.
    pub(super) async fn delays_at_scale(&self, n: u64, spread: u64) -> Result<DelayFigures> {
        let (settings, opts) = (self.settings, self.opts);
        let late = Arc::new(std::sync::Mutex::new(Vec::with_capacity(n as usize)));
        let all = Arc::new(Notify::new());
        let (l2, a2) = (late.clone(), all.clone());
        let worker = Worker::new(settings)
            .role("bench-delays-worker")
            .prefetch(opts.prefetch)
            .concurrency(opts.concurrency)
            .handle(move |t: BenchTask, _ctx: TaskContext| {
                // `t` is the due time here.
                let ms = now_us().saturating_sub(t.t) as f64 / 1000.0;
                let mut l = l2.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                l.push(ms);
                if l.len() as u64 == n {
                    a2.notify_one();
                }
                async { Ok(()) }
            });
        let stop = CancellationToken::new();
        let running = tokio::spawn(worker.run(stop.clone()));
        let began = Instant::now();
        let pad = padding(opts.size);
        let items = (0..n).map(|i| {
            let delay = i % (spread + 1);
            let task = BenchTask {
                t: now_us() + delay * 1_000_000,
                pad: pad.clone(),
            };
            let body = serde_json::to_vec(&task).map_err(|e| Error::Internal(e.to_string()));
            let options = EnqueueOptions::default().delay(Duration::from_secs(delay));
            ("bench".to_string(), body, options)
        });
        for r in self.producer.enqueue_many_raw(items).await {
            r?;
        }
        tokio::time::sleep(Duration::from_secs(10).saturating_sub(began.elapsed())).await;
        let (ladder_messages, ladder_memory_mib) = self.ladder_size().await;
        let deadline = Duration::from_secs(spread + 120).saturating_sub(began.elapsed());
        let _ = tokio::time::timeout(deadline, all.notified()).await;
        stop.cancel();
        running
            .await
            .map_err(|e| Error::Internal(format!("the bench delays worker failed: {e}")))??;
        let mut late = late
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let ran = late.len() as u64;
        let [p50, p90, p99] = crate::stats::percentiles(&mut late);
        Ok(DelayFigures {
            tasks: n,
            ran,
            spread_s: spread,
            late_p50_ms: p50,
            late_p90_ms: p90,
            late_p99_ms: p99,
            late_max_ms: late.iter().copied().fold(0.0, f64::max),
            ladder_messages,
            ladder_memory_mib,
        })
    }

    /// Messages and memory (MiB) of the namespace's delay ladder, from the management API;
    /// `None` where it does not say.
    async fn ladder_size(&self) -> (Option<u64>, Option<f64>) {
        let settings = self.settings.clone();
        tokio::task::spawn_blocking(move || {
            let mgmt = warren::ops::management::Management::from_settings(&settings).ok()?;
            let vhost = warren::broker::url::url_parts(&settings.amqp_url)
                .ok()?
                .vhost;
            let queues = mgmt
                .namespace_queues(&vhost, &settings.namespace, "name,messages,memory")
                .ok()?;
            let prefix = format!("{}.delay.", settings.namespace);
            let ladder: Vec<_> = queues
                .iter()
                .filter(|q| q["name"].as_str().is_some_and(|n| n.starts_with(&prefix)))
                .collect();
            let messages = ladder.iter().map(|q| q["messages"].as_u64()).sum();
            let memory: Option<u64> = ladder.iter().map(|q| q["memory"].as_u64()).sum();
            Some((messages, memory.map(|b| b as f64 / 1_048_576.0)))
        })
        .await
        .ok()
        .flatten()
        .unwrap_or((None, None))
    }
}

/// The delays phase as text, or the line that says it was skipped.
pub(super) fn text(d: Option<&DelayFigures>) -> String {
    let Some(d) = d else {
        return "\n  delays at scale: skipped (run with --delays 100000 [--delay-spread 60s])\n"
            .to_string();
    };
    let ladder = match (d.ladder_messages, d.ladder_memory_mib) {
        (Some(m), Some(mib)) => format!("{m} messages, {mib:.1} MiB"),
        _ => "not reported (no management API)".to_string(),
    };
    format!(
        "\n  delays at scale: {} tasks delayed 0-{} s, {} ran; late behind their due time: p50 \
         {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms; the ladder 10 s in: {ladder}\n",
        d.tasks, d.spread_s, d.ran, d.late_p50_ms, d.late_p90_ms, d.late_p99_ms, d.late_max_ms
    )
}
