//! An idle consumer and a cold start: how long one task waits when nothing else is going on,
//! and how long a consumer takes from its start to its first task.
//!
//! The other phases load the consumer; a user who enqueues one task to an idle worker, or
//! starts a worker with work waiting, sees these instead. Raw lapin does the least a consumer
//! can: connect, open a channel, set the prefetch, consume. Warren's worker also declares its
//! topology and starts its control follower before it consumes: that is in its start-up.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use warren::broker::{close_channel, close_connection};
use warren::{Error, Result, TaskContext, Worker};

use super::raw::{Wire, raw_publish};
use super::repetition::Bench;
use super::report::Figures;
use super::side::warren_enqueue;
use super::timing::settle;
use super::{BenchTask, amqp, now_us, record_latency, tasks};

/// Tasks sent one at a time to an idle consumer, each once the previous one ran.
const IDLE_TASKS: usize = 50;

/// The pause before each: long enough that the consumer's threads are parked when it lands.
const IDLE_GAP: Duration = Duration::from_millis(20);

/// No first task within this is a failed benchmark, not a figure.
const FIRST_TASK_TIMEOUT: Duration = Duration::from_secs(30);

impl Bench<'_> {
    /// `{side}.startup_ms` (from the consumer's start, with one task waiting, to that task
    /// running) and `{side}.idle_p50_ms`/`_p90_ms`/`_p99_ms` (enqueue to start, one task at a
    /// time to an idle consumer), raw lapin then Warren.
    pub(super) async fn idle_and_start_up(&self, f: &mut Figures) -> Result<()> {
        let (settings, opts) = (self.settings, self.opts);
        settle().await;
        raw_publish(self.ch, self.raw, 1, opts.size, Wire::Bare).await?;
        let started = Instant::now();
        let conn = warren::broker::connect(
            &settings.broker_url(),
            "warren bench raw idle",
            Some(settings.connect_timeout),
        )
        .await?;
        let ch = conn.create_channel().await.map_err(amqp("channel"))?;
        ch.basic_qos(opts.prefetch, BasicQosOptions::default())
            .await
            .map_err(amqp("qos"))?;
        let consumer = ch
            .basic_consume(
                self.raw.into(),
                "bench raw idle".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(amqp("consume"))?;
        // In a task of its own, as a worker's consumer is: each delivery is timed when it
        // arrives, not when this loop gets back from its publish's confirm.
        let (arrived, mut arrivals) = mpsc::unbounded_channel();
        let consuming = tokio::spawn(raw_idle_consumer(consumer, arrived));
        next_run(&mut arrivals).await?;
        f.insert("raw.startup_ms".into(), ms(started.elapsed()));
        let mut waits = Vec::with_capacity(IDLE_TASKS);
        for _ in 0..IDLE_TASKS {
            tokio::time::sleep(IDLE_GAP).await;
            raw_publish(self.ch, self.raw, 1, opts.size, Wire::Bare).await?;
            waits.push(next_run(&mut arrivals).await? as f64 / 1000.0);
        }
        record_latency(f, "raw.idle", &mut waits);
        consuming.abort();
        close_channel(&ch, "bench").await;
        close_connection(&conn, "bench").await;

        settle().await;
        warren_enqueue(&self.producer, 1, opts.size).await?;
        let (ran, mut runs) = mpsc::unbounded_channel();
        let worker = Worker::new(settings)
            .role("bench-idle-worker")
            .prefetch(opts.prefetch)
            .concurrency(opts.concurrency)
            .handle(move |t: BenchTask, _ctx: TaskContext| {
                let _ = ran.send(now_us().saturating_sub(t.t));
                async { Ok(()) }
            });
        let stop = CancellationToken::new();
        let started = Instant::now();
        let running = tokio::spawn(worker.run(stop.clone()));
        next_run(&mut runs).await?;
        f.insert("warren.startup_ms".into(), ms(started.elapsed()));
        let mut waits = Vec::with_capacity(IDLE_TASKS);
        for task in tasks(IDLE_TASKS as u64, opts.size) {
            tokio::time::sleep(IDLE_GAP).await;
            let task = BenchTask {
                t: now_us(),
                ..task
            };
            self.producer.enqueue(&task).await?;
            waits.push(next_run(&mut runs).await? as f64 / 1000.0);
        }
        record_latency(f, "warren.idle", &mut waits);
        stop.cancel();
        running
            .await
            .map_err(|e| Error::Internal(format!("the bench idle worker failed: {e}")))??;
        Ok(())
    }
}

/// Consumes the raw idle queue: acks each delivery and sends how long it took from its send
/// time to its arrival (µs).
async fn raw_idle_consumer(mut consumer: lapin::Consumer, arrived: mpsc::UnboundedSender<u64>) {
    while let Some(Ok(d)) = consumer.next().await {
        let at = now_us();
        let sent = serde_json::from_slice::<BenchTask>(&d.data).map_or(at, |t| t.t);
        let _ = arrived.send(at.saturating_sub(sent));
        let _ = d.ack(BasicAckOptions::default()).await;
    }
}

/// How long the next task that reached the consumer (raw) or its handler (Warren) waited, µs.
async fn next_run(runs: &mut mpsc::UnboundedReceiver<u64>) -> Result<u64> {
    tokio::time::timeout(FIRST_TASK_TIMEOUT, runs.recv())
        .await
        .ok()
        .flatten()
        .ok_or_else(|| no_task("the idle consumer"))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn no_task(who: &str) -> Error {
    crate::failure(
        std::io::ErrorKind::TimedOut,
        format!("{who} got no task"),
        format!("none arrived within {FIRST_TASK_TIMEOUT:?}"),
    )
}
