//! Round trips: `Producer::call` (enqueue and wait for the answer) against a raw lapin RPC
//! loop over direct reply-to, one call at a time and [`IN_FLIGHT`] at once.
//!
//! Both sides do what a reliable RPC over RabbitMQ needs and nothing more: the request is
//! persistent and confirmed before the caller waits; the server publishes its answer with a
//! confirm, then acks the request. A round trip is timed from the request's publish to the
//! answer's arrival.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::future::join_all;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use warren::broker::close_channel;
use warren::{EnqueueOptions, Error, Result, TaskContext, Worker};

use super::repetition::Bench;
use super::report::Figures;
use super::timing::{confirm_channel, settle, wait_for_consumer};
use super::{BenchTask, amqp, record_latency, tasks};

/// Calls in flight at once in the concurrent phase.
const IN_FLIGHT: usize = 100;

/// Calls made one after another, and in the concurrent phase: 200 and 2000 for the default
/// 20000 messages per phase, fewer for a short run.
fn calls(count: u64) -> (usize, usize) {
    let count = count as usize;
    (
        (count / 100).clamp(10, 200),
        (count / 10).clamp(IN_FLIGHT, 2000),
    )
}
/// No answer within this is a failed benchmark, not a figure.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

impl Bench<'_> {
    /// Both sides' round trips into `f`: `{side}.rpc_seq` and `{side}.rpc_100` rates
    /// (calls/s) and their `_p50_ms`/`_p90_ms`/`_p99_ms`.
    pub(super) async fn round_trips(&self, f: &mut Figures) -> Result<()> {
        let (settings, opts, conn, ch, raw, work, producer) = (
            self.settings,
            self.opts,
            self.conn,
            self.ch,
            self.raw,
            self.work.as_str(),
            &self.producer,
        );
        settle().await;
        let stop = CancellationToken::new();
        let server_ch = conn.create_channel().await.map_err(amqp("channel"))?;
        let answers_ch = confirm_channel(conn).await?;
        let server = tokio::spawn(raw_server(
            server_ch,
            answers_ch,
            raw.to_string(),
            opts.prefetch,
            stop.clone(),
        ));
        wait_for_consumer(ch, raw).await?;
        let client = RawClient::open(conn).await?;
        let body = serde_json::to_vec(&tasks(1, opts.size).next()).unwrap_or_default();
        let raw_call = |_: usize| {
            let (client, body) = (&client, body.clone());
            async move { client.call(raw, body).await }
        };
        let n = calls(opts.count);
        measure(f, "raw", n, raw_call).await?;
        stop.cancel();
        let _ = server.await;
        close_channel(&client.ch, "bench").await;

        settle().await;
        let stop = CancellationToken::new();
        let worker = Worker::new(settings)
            .role("bench-rpc-worker")
            .prefetch(opts.prefetch)
            .concurrency(opts.concurrency)
            .handle(|_: BenchTask, _ctx: TaskContext| async { Ok(1u8) });
        let running = tokio::spawn(worker.run(stop.clone()));
        wait_for_consumer(ch, work).await?;
        let task = tasks(1, opts.size).next();
        let warren_call = |_: usize| {
            let task = task.clone();
            async move {
                let task = task.ok_or_else(|| Error::Internal("no bench task".into()))?;
                producer
                    .call::<_, u8>(&task, EnqueueOptions::default(), CALL_TIMEOUT)
                    .await
                    .map(drop)
            }
        };
        measure(f, "warren", n, warren_call).await?;
        stop.cancel();
        running
            .await
            .map_err(|e| Error::Internal(format!("the bench worker task failed: {e}")))??;
        Ok(())
    }
}

/// Times `sequential` calls one by one, then `concurrent` calls [`IN_FLIGHT`] at once
/// (after one untimed call that opens what the side opens on first use).
async fn measure<F, Fut>(
    f: &mut Figures,
    side: &str,
    (sequential, concurrent): (usize, usize),
    call: F,
) -> Result<()>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    call(0).await?;
    let mut rtts = Vec::with_capacity(sequential);
    let started = Instant::now();
    for i in 0..sequential {
        let t = Instant::now();
        call(i).await?;
        rtts.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    f.insert(
        format!("{side}.rpc_seq"),
        sequential as f64 / started.elapsed().as_secs_f64(),
    );
    record_latency(f, &format!("{side}.rpc_seq"), &mut rtts);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let rtts = Mutex::new(Vec::with_capacity(concurrent));
    let started = Instant::now();
    let lanes = (0..IN_FLIGHT).map(|_| async {
        while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < concurrent {
            let t = Instant::now();
            call(0).await?;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            rtts.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(ms);
        }
        Ok::<(), Error>(())
    });
    for lane in join_all(lanes).await {
        lane?;
    }
    f.insert(
        format!("{side}.rpc_100"),
        concurrent as f64 / started.elapsed().as_secs_f64(),
    );
    let mut rtts = rtts.into_inner().unwrap_or_default();
    record_latency(f, &format!("{side}.rpc_100"), &mut rtts);
    Ok(())
}

/// The raw server: consumes `queue` with `prefetch`; answers each request (confirmed) to its
/// `reply_to`, then acks it. Each request is handled in a task of its own, as Warren's worker
/// runs handlers concurrently.
async fn raw_server(
    ch: Channel,
    answers: Channel,
    queue: String,
    prefetch: u16,
    stop: CancellationToken,
) -> Result<()> {
    ch.basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(amqp("qos"))?;
    let mut requests = ch
        .basic_consume(
            queue.as_str().into(),
            "raw-rpc-server".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(amqp("consume"))?;
    loop {
        let d = tokio::select! {
            _ = stop.cancelled() => break,
            d = requests.next() => match d {
                Some(Ok(d)) => d,
                _ => break,
            },
        };
        let answers = answers.clone();
        tokio::spawn(async move {
            let Some(to) = d.properties.reply_to().clone() else {
                return;
            };
            let mut props = BasicProperties::default().with_delivery_mode(2);
            if let Some(c) = d.properties.correlation_id().clone() {
                props = props.with_correlation_id(c);
            }
            let answered = answers
                .basic_publish(
                    "".into(),
                    to.as_str().into(),
                    BasicPublishOptions::default(),
                    b"1",
                    props,
                )
                .await;
            if let Ok(confirm) = answered
                && confirm.await.is_ok()
            {
                let _ = d.ack(BasicAckOptions::default()).await;
            }
        });
    }
    close_channel(&ch, "bench").await;
    close_channel(&answers, "bench").await;
    Ok(())
}

/// The raw caller: one confirm-mode channel that publishes requests and consumes direct
/// reply-to, answers matched by correlation id.
struct RawClient {
    ch: Channel,
    waiting: Arc<Mutex<HashMap<String, oneshot::Sender<()>>>>,
    next: std::sync::atomic::AtomicU64,
}

impl RawClient {
    async fn open(conn: &Connection) -> Result<RawClient> {
        let ch = confirm_channel(conn).await?;
        let mut answers = ch
            .basic_consume(
                DIRECT_REPLY_TO.into(),
                "raw-rpc-client".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(amqp("consume direct reply-to"))?;
        let waiting: Arc<Mutex<HashMap<String, oneshot::Sender<()>>>> = Arc::default();
        let w = waiting.clone();
        tokio::spawn(async move {
            while let Some(Ok(d)) = answers.next().await {
                let id = d
                    .properties
                    .correlation_id()
                    .as_ref()
                    .map(|c| c.to_string());
                let tx = id.and_then(|id| w.lock().ok()?.remove(&id));
                if let Some(tx) = tx {
                    let _ = tx.send(());
                }
            }
        });
        Ok(RawClient {
            ch,
            waiting,
            next: std::sync::atomic::AtomicU64::new(0),
        })
    }

    async fn call(&self, queue: &str, body: Vec<u8>) -> Result<()> {
        let id = self
            .next
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .to_string();
        let (tx, rx) = oneshot::channel();
        if let Ok(mut w) = self.waiting.lock() {
            w.insert(id.clone(), tx);
        }
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_reply_to(DIRECT_REPLY_TO.into())
            .with_correlation_id(id.as_str().into());
        self.ch
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &body,
                props,
            )
            .await
            .map_err(amqp("publish"))?
            .await
            .map_err(amqp("confirm"))?;
        tokio::time::timeout(CALL_TIMEOUT, rx)
            .await
            .map_err(|_| Error::Internal("a raw RPC call got no answer in 30 s".into()))?
            .map_err(|_| Error::Internal("the raw RPC answer channel closed".into()))
    }
}
