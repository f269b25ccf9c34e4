//! `warren bench`: Warren against a raw lapin baseline, in one run, on one broker.
//!
//! Both sides move the same bodies (JSON of `size` bytes, persistent) through queues of the
//! same type with the same prefetch. The raw side is what a careful lapin program does and
//! nothing more: a publisher with a window of outstanding confirms, and a consumer acking each
//! delivery (and a second consumer acking with `multiple`). Warren's side is
//! `Producer::enqueue_many` and a `Worker` with a no-op handler. Drains run in a child process
//! (`warren bench-drain`) so their CPU time and peak RSS are the consumer's alone. Only the
//! ratios of one run mean anything: the broker shares this machine's cores with us.
//!
//! A third side, `raw_wire`, is the same raw loop sending what Warren sends: its wire format
//! (task id and type; see `wire::Envelope`), through a direct exchange with `mandatory`,
//! and, end to end, on a connection of its own. RabbitMQ charges for each of these (measured
//! with `examples/wire_cost.rs`: a direct exchange with `mandatory` costs about 15 % more
//! broker CPU per publish than the default exchange without it), so `warren / raw` mixes two
//! costs: `warren / raw_wire` is Warren's code alone, `raw_wire / raw` the format's and the
//! routing's.
//!
//! Method: every timed phase starts after a short pause (the broker finishes the previous
//! phase's background work); rates of drains are steady rates from the first delivery to
//! the last; end-to-end and paced phases publish only once the consumer is up, so neither
//! side's start-up (a worker connects and declares its topology) is counted as per-task cost.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::{QueueType, Settings};
use crate::error::{Error, Result};
use crate::producer::Producer;
use crate::task::Task;
use crate::topology::{self, Plan, names::Names};
use crate::wire::{Envelope, new_task_id};
use crate::worker::{TaskContext, Worker};

/// The benchmark's task: a send time and padding up to the message size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchTask {
    /// Unix time in µs when the task was created, just before it was published.
    pub t: u64,
    /// Padding.
    pub pad: String,
}

impl Task for BenchTask {
    const NAME: &'static str = "bench";
}

/// What to measure.
#[derive(Debug, Clone, Serialize)]
pub struct BenchOptions {
    /// Messages per throughput phase.
    pub count: u64,
    /// Body size in bytes.
    pub size: usize,
    /// Queue type of both sides.
    pub queue_type: QueueType,
    /// Prefetch of both consumers.
    pub prefetch: u16,
    /// Warren worker concurrency.
    pub concurrency: usize,
    /// Repetitions; medians and spreads are reported.
    pub repetitions: usize,
    /// Paced load for the latency phase, messages per second.
    pub paced_rate: u64,
    /// Length of the paced phase.
    pub paced_for: Duration,
}

/// Microseconds since the unix epoch.
fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Padding that makes a task's JSON body `size` bytes (about: the timestamp's digits vary).
fn padding(size: usize) -> String {
    let empty = BenchTask {
        t: now_us(),
        pad: String::new(),
    };
    let overhead = serde_json::to_vec(&empty).map_or(0, |b| b.len());
    "x".repeat(size.saturating_sub(overhead))
}

/// `n` tasks stamped as they are taken, so each carries its own publish time. Both sides
/// draw their bodies from here: the same serialization work per message.
fn tasks(n: u64, size: usize) -> impl Iterator<Item = BenchTask> {
    let pad = padding(size);
    (0..n).map(move |_| BenchTask {
        t: now_us(),
        pad: pad.clone(),
    })
}

fn amqp(operation: &str) -> impl FnOnce(lapin::Error) -> Error + '_ {
    move |source| Error::Amqp {
        operation: operation.to_string(),
        source,
    }
}

/// Latency percentiles (p50, p90, p99) of `samples`, in ms.
pub fn percentiles(samples: &mut [f64]) -> [f64; 3] {
    if samples.is_empty() {
        return [f64::NAN; 3];
    }
    samples.sort_by(f64::total_cmp);
    let at = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
    [at(0.5), at(0.9), at(0.99)]
}

// ---- the raw baseline ---------------------------------------------------------------------

/// The message properties of a raw publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    /// Persistent JSON and nothing else: the plain lapin program the targets are set against.
    Bare,
    /// Warren's wire format (task id, type, and whatever else `Envelope` sends) and Warren's
    /// routing: through a direct exchange with `mandatory`. Sent by the same raw loop: the
    /// gap between this and Warren is Warren's own code; the gap between `Bare` and this is
    /// what the broker charges for the task metadata and the routing.
    Warren,
}

/// Publishes `n` messages to `queue` with a window of outstanding confirms; returns the
/// seconds taken. `Bare` goes through the default exchange, `Warren` through the direct
/// exchange of the same name as `queue` (see [`declare_raw`]).
async fn raw_publish(
    ch: &Channel,
    queue: &str,
    n: u64,
    size: usize,
    window: usize,
    wire: Wire,
) -> Result<f64> {
    let started = Instant::now();
    let mut inflight = FuturesUnordered::new();
    let bare = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into());
    for task in tasks(n, size) {
        if inflight.len() >= window
            && let Some(c) = inflight.next().await
        {
            check_confirm(c)?;
        }
        let body = serde_json::to_vec(&task).unwrap_or_default();
        let (exchange, routing_key, props, mandatory) = match wire {
            Wire::Bare => ("", queue, bare.clone(), false),
            Wire::Warren => (
                queue,
                RAW_ROUTING_KEY,
                Envelope::new(new_task_id(), BenchTask::NAME).properties(None),
                true,
            ),
        };
        let confirm = ch
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory,
                    ..Default::default()
                },
                &body,
                props,
            )
            .await
            .map_err(amqp("raw publish"))?;
        inflight.push(confirm);
    }
    while let Some(c) = inflight.next().await {
        check_confirm(c)?;
    }
    Ok(started.elapsed().as_secs_f64())
}

fn check_confirm(c: lapin::Result<lapin::Confirmation>) -> Result<()> {
    match c.map_err(amqp("raw confirm"))? {
        lapin::Confirmation::Ack(None) => Ok(()),
        other => Err(Error::InvalidInput(format!(
            "raw publish not confirmed: {other:?}"
        ))),
    }
}

/// What a consumer saw: when its first and last deliveries arrived, and each delivery's
/// enqueue-to-start latency in ms.
struct Drained {
    first: Instant,
    last: Instant,
    latencies: Vec<f64>,
}

impl Drained {
    /// Deliveries per second from the first to the last: the steady rate, the same for both
    /// sides, without start-up (a Warren worker connects and declares its topology first, a
    /// cost paid once per process, not per task).
    fn steady_rate(&self, n: u64) -> f64 {
        n.saturating_sub(1) as f64 / (self.last - self.first).as_secs_f64().max(1e-9)
    }
}

/// Consumes `n` messages from `queue`, acking each (or, with `multiple`, every prefetch/4
/// and at the end).
async fn raw_drain(
    conn: &Connection,
    queue: &str,
    n: u64,
    prefetch: u16,
    multiple: bool,
) -> Result<Drained> {
    let ch = conn.create_channel().await.map_err(amqp("channel"))?;
    ch.basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(amqp("qos"))?;
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "bench raw".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(amqp("consume"))?;
    let every = u64::from(prefetch / 4).max(1);
    let mut latencies = Vec::with_capacity(n as usize);
    let mut first = None;
    let mut got = 0;
    while got < n {
        let d = match consumer.next().await {
            Some(Ok(d)) => d,
            Some(Err(e)) => return Err(amqp("raw consume")(e)),
            None => return Err(Error::InvalidInput("raw consumer ended".into())),
        };
        first.get_or_insert_with(Instant::now);
        if let Ok(t) = serde_json::from_slice::<BenchTask>(&d.data) {
            latencies.push(now_us().saturating_sub(t.t) as f64 / 1000.0);
        }
        got += 1;
        if !multiple {
            d.ack(BasicAckOptions::default())
                .await
                .map_err(amqp("ack"))?;
        } else if got % every == 0 || got == n {
            ch.basic_ack(d.delivery_tag, BasicAckOptions { multiple: true })
                .await
                .map_err(amqp("ack"))?;
        }
    }
    let last = Instant::now();
    let _ = ch.close(200, "bench".into()).await;
    Ok(Drained {
        first: first.unwrap_or(last),
        last,
        latencies,
    })
}

// ---- Warren's side ------------------------------------------------------------------------

async fn warren_enqueue(producer: &Producer, n: u64, size: usize) -> Result<f64> {
    let started = Instant::now();
    for r in producer.enqueue_many(tasks(n, size)).await {
        r?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Runs a Warren worker with a no-op handler until `n` tasks ran.
async fn warren_drain(
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
        .map_err(|e| Error::InvalidInput(format!("bench worker: {e}")))??;
    let latencies = latencies.lock().map(|l| l.clone()).unwrap_or_default();
    Ok(Drained {
        first: first.get().copied().unwrap_or(last),
        last,
        latencies,
    })
}

// ---- phases ---------------------------------------------------------------------------------

/// Lets the broker finish what the previous phase left (acked messages to garbage-collect,
/// index writes) so that it does not slow whichever side is measured next.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// Waits until `queue` has a consumer: publishing starts only once the consumer is up, so
/// start-up is measured by neither side.
async fn wait_for_consumer(ch: &Channel, queue: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let q = topology::declare::inspect(ch, queue)
            .await
            .map_err(amqp("checking the bench queue"))?;
        if q.consumer_count() > 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::InvalidInput(format!(
                "no consumer appeared on {queue} within 30 s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs `consumer`; once it consumes from `queue`, runs `publish`. Returns what the consumer
/// saw and when publishing started.
async fn with_consumer<C, P, F>(
    ch: &Channel,
    queue: &str,
    consumer: C,
    publish: F,
) -> Result<(Drained, Instant)>
where
    C: std::future::Future<Output = Result<Drained>>,
    F: FnOnce() -> P,
    P: std::future::Future<Output = Result<()>>,
{
    let publisher = async {
        wait_for_consumer(ch, queue).await?;
        let started = Instant::now();
        publish().await?;
        Ok::<Instant, Error>(started)
    };
    let (c, p) = tokio::join!(consumer, publisher);
    let started = p?;
    Ok((c?, started))
}

/// Calls `batch(k)` every 10 ms with `k` = `rate`/100, until `n` messages went out.
async fn paced<F, P>(n: u64, rate: u64, mut batch: F) -> Result<()>
where
    F: FnMut(u64) -> P,
    P: std::future::Future<Output = Result<()>>,
{
    let per_tick = (rate / 100).max(1);
    let mut interval = tokio::time::interval(Duration::from_millis(10));
    let mut sent = 0;
    while sent < n {
        interval.tick().await;
        let k = per_tick.min(n - sent);
        batch(k).await?;
        sent += k;
    }
    Ok(())
}

async fn confirm_channel(conn: &Connection) -> Result<Channel> {
    let ch = conn.create_channel().await.map_err(amqp("channel"))?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(amqp("confirm select"))?;
    Ok(ch)
}

// ---- drains in a child process --------------------------------------------------------------

/// Which consumer a `bench-drain` child runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum DrainSide {
    /// Raw lapin, one ack per delivery.
    Raw,
    /// Raw lapin, acks with `multiple`.
    RawMultiple,
    /// A Warren worker with a no-op handler.
    Warren,
}

/// What a `bench-drain` child reports.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct DrainFigures {
    /// Steady drain rate, msg/s (first to last delivery).
    pub rate: f64,
    /// Peak resident set size of the child, KiB.
    pub peak_rss_kib: u64,
    /// CPU seconds (user + system) of the child.
    pub cpu_secs: f64,
}

/// Peak RSS of this process image in KiB (`VmHWM`; `ru_maxrss` would include the parent's
/// RSS at fork time) and CPU seconds used so far.
fn rusage() -> (u64, f64) {
    let hwm = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0);
    // SAFETY: getrusage writes into the zeroed struct we own; RUSAGE_SELF is always valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    if rc != 0 {
        return (hwm, 0.0);
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (hwm, secs(ru.ru_utime) + secs(ru.ru_stime))
}

/// The body of `warren bench-drain`: consume `n` messages and report time, RSS and CPU.
///
/// # Errors
/// Broker errors.
pub async fn drain_child(
    settings: &Settings,
    side: DrainSide,
    n: u64,
    prefetch: u16,
    concurrency: usize,
) -> Result<DrainFigures> {
    let names = Names::new(&settings.namespace);
    let (_, cpu_before) = rusage();
    let drained = match side {
        DrainSide::Warren => warren_drain(settings, n, prefetch, concurrency).await?,
        DrainSide::Raw | DrainSide::RawMultiple => {
            let conn = crate::broker::connect(
                &settings.amqp_url,
                "warren bench raw",
                Some(settings.connect_timeout),
            )
            .await?;
            let r = raw_drain(
                &conn,
                &raw_queue(&names),
                n,
                prefetch,
                side == DrainSide::RawMultiple,
            )
            .await?;
            let _ = conn.close(200, "bench".into()).await;
            r
        }
    };
    let (rss, cpu_after) = rusage();
    Ok(DrainFigures {
        rate: drained.steady_rate(n),
        peak_rss_kib: rss,
        cpu_secs: cpu_after - cpu_before,
    })
}

fn raw_queue(names: &Names) -> String {
    names.work_queue("raw")
}

async fn drain_in_child(
    settings: &Settings,
    opts: &BenchOptions,
    side: DrainSide,
) -> Result<DrainFigures> {
    let exe = std::env::current_exe().map_err(|source| Error::Io {
        context: "locating the warren binary".into(),
        source,
    })?;
    let side_name = match side {
        DrainSide::Raw => "raw",
        DrainSide::RawMultiple => "raw-multiple",
        DrainSide::Warren => "warren",
    };
    let out = tokio::process::Command::new(exe)
        .env("WARREN_AMQP_URL", &settings.amqp_url)
        .env("WARREN_NAMESPACE", &settings.namespace)
        .env("WARREN_TOPOLOGY", "/dev/null")
        // The worker's production default: its per-task spans are part of its cost.
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,lapin=off,warren=info".into()),
        )
        .args([
            "bench-drain",
            "--side",
            side_name,
            "--count",
            &opts.count.to_string(),
        ])
        .args([
            "--prefetch",
            &opts.prefetch.to_string(),
            "--concurrency",
            &opts.concurrency.to_string(),
        ])
        .args(["--queue-type", opts.queue_type.as_str()])
        .output()
        .await
        .map_err(|source| Error::Io {
            context: "running warren bench-drain".into(),
            source,
        })?;
    if !out.status.success() {
        return Err(Error::InvalidInput(format!(
            "bench-drain {side_name} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| {
        Error::InvalidInput(format!("bench-drain {side_name} printed no figures: {e}"))
    })
}

// ---- the run --------------------------------------------------------------------------------

/// Settings of the benchmark's own namespace.
pub fn bench_settings(base: &Settings, queue_type: QueueType, namespace: &str) -> Result<Settings> {
    let mut s =
        Settings::from_toml("max_delay = \"1h\"\nmax_payload_bytes = 16777216\n[tasks.bench]\n")?;
    s.amqp_url = base.amqp_url.clone();
    s.connect_timeout = base.connect_timeout;
    s.queue_type = queue_type;
    s.namespace = namespace.to_string();
    s.validate()?;
    Ok(s)
}

/// Routing key from the raw exchange to the raw queue.
const RAW_ROUTING_KEY: &str = "raw";

/// Declares the raw side's queue, and a direct exchange of the same name bound to it with
/// [`RAW_ROUTING_KEY`] as Warren binds a work queue to `{ns}.tasks` (a direct exchange costs
/// the broker a routing-table lookup per message that the default exchange does not).
async fn declare_raw(ch: &Channel, settings: &Settings) -> Result<String> {
    let plan = Plan::new(settings);
    let work = plan
        .queues
        .iter()
        .find(|q| q.name == Names::new(&settings.namespace).work_queue("bench"));
    // The raw queue gets the same arguments as Warren's work queue, so both sides pay the
    // same broker costs (queue type, dead-lettering strategy).
    let args = work
        .map(|q| topology::declare::field_table(&q.args))
        .unwrap_or_default();
    let name = raw_queue(&Names::new(&settings.namespace));
    ch.queue_declare(
        name.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .map_err(amqp("declaring the raw queue"))?;
    ch.exchange_declare(
        name.as_str().into(),
        lapin::ExchangeKind::Direct,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .map_err(amqp("declaring the raw exchange"))?;
    ch.queue_bind(
        name.as_str().into(),
        name.as_str().into(),
        RAW_ROUTING_KEY.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .map_err(amqp("binding the raw queue"))?;
    Ok(name)
}

/// One repetition's figures, by name.
pub type Figures = BTreeMap<String, f64>;

/// Runs every phase `repetitions` times; calls `progress` with a phase name as it goes.
///
/// # Errors
/// Broker errors; the benchmark namespace is deleted either way.
pub async fn run(
    base: &Settings,
    opts: &BenchOptions,
    mut progress: impl FnMut(&str),
) -> Result<Vec<Figures>> {
    let ns = format!("{}.bench-{}", base.namespace, std::process::id());
    let settings = bench_settings(base, opts.queue_type, &ns)?;
    let vhost = crate::broker::url_parts(&settings.amqp_url)?.vhost;
    let conn = crate::broker::connect(
        &settings.amqp_url,
        "warren bench",
        Some(settings.connect_timeout),
    )
    .await?;
    let plan = Plan::new(&settings);
    topology::apply(&plan, &conn, &vhost).await?;
    let ch = conn.create_channel().await.map_err(amqp("channel"))?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(amqp("confirm select"))?;
    let raw = declare_raw(&ch, &settings).await?;
    let result = repetitions(&settings, opts, &conn, &ch, &raw, &mut progress).await;
    topology::declare::remove(&plan, &conn, &[raw.as_str()]).await;
    let _ = conn.close(200, "bench done".into()).await;
    result
}

async fn repetitions(
    settings: &Settings,
    opts: &BenchOptions,
    conn: &Connection,
    ch: &Channel,
    raw: &str,
    progress: &mut impl FnMut(&str),
) -> Result<Vec<Figures>> {
    let work = Names::new(&settings.namespace).work_queue("bench");
    let producer = Producer::with_role(settings, "bench-producer")?;
    let n = opts.count;
    let rate = |secs: f64| n as f64 / secs.max(1e-9);
    let mut all = Vec::new();
    for rep in 1..=opts.repetitions {
        let mut f = Figures::new();
        let step = |p: &mut dyn FnMut(&str), what: &str| {
            p(&format!("repetition {rep}/{}: {what}", opts.repetitions))
        };
        let purge = |q: String| async move {
            ch.queue_purge(q.as_str().into(), QueuePurgeOptions::default())
                .await
                .map_err(amqp("purge"))
        };

        // Enqueue, then drain in a child process; the sides take turns going first.
        purge(raw.to_string()).await?;
        purge(work.clone()).await?;
        for key in rotated(&ENQUEUE_SIDES, rep) {
            // Warren's side publishes with its producer (`wire` = None).
            let (wire, drains): (Option<Wire>, &[(&str, DrainSide)]) = match key {
                "raw" => (
                    Some(Wire::Bare),
                    &[
                        ("raw", DrainSide::Raw),
                        ("raw_multiple", DrainSide::RawMultiple),
                    ],
                ),
                "raw_wire" => (Some(Wire::Warren), &[("raw_wire", DrainSide::RawMultiple)]),
                _ => (None, &[("warren", DrainSide::Warren)]),
            };
            let publish = || async {
                match wire {
                    Some(wire) => raw_publish(ch, raw, n, opts.size, 1024, wire).await,
                    None => warren_enqueue(&producer, n, opts.size).await,
                }
            };
            step(progress, &format!("{key} publish"));
            settle().await;
            let cpu = rusage().1;
            let secs = publish().await?;
            f.insert(format!("{key}.enqueue"), rate(secs));
            f.insert(format!("{key}.enqueue_cpu_s"), rusage().1 - cpu);
            for (i, (drain_key, side)) in drains.iter().enumerate() {
                if i > 0 {
                    publish().await?;
                }
                step(progress, &format!("{drain_key} drain"));
                settle().await;
                let d = drain_in_child(settings, opts, *side).await?;
                f.insert(format!("{drain_key}.drain"), d.rate);
                f.insert(format!("{drain_key}.drain_cpu_s"), d.cpu_secs);
                f.insert(
                    format!("{drain_key}.drain_rss_mib"),
                    d.peak_rss_kib as f64 / 1024.0,
                );
            }
        }

        // End to end, both running in this process, timed from the first publish (the
        // consumer is already up) to the last delivery; latencies at full load.
        for key in rotated(&E2E_SIDES, rep) {
            step(progress, &format!("{key} end to end"));
            settle().await;
            let cpu = rusage().1;
            let (mut d, started) = match key {
                "warren" => {
                    let consumer = warren_drain(settings, n, opts.prefetch, opts.concurrency);
                    with_consumer(ch, &work, consumer, || async {
                        warren_enqueue(&producer, n, opts.size).await.map(drop)
                    })
                    .await?
                }
                _ => {
                    let (multiple, wire) = match key {
                        "raw" => (false, Wire::Bare),
                        "raw_multiple" => (true, Wire::Bare),
                        _ => (true, Wire::Warren),
                    };
                    raw_end_to_end(settings, conn, ch, raw, opts, multiple, wire).await?
                }
            };
            f.insert(format!("{key}.e2e"), rate((d.last - started).as_secs_f64()));
            f.insert(format!("{key}.e2e_cpu_s"), rusage().1 - cpu);
            record_latency(&mut f, &format!("{key}.full"), &mut d.latencies);
        }

        // Paced: a steady rate, latency only.
        step(progress, "paced latency");
        let paced_n = (opts.paced_rate as f64 * opts.paced_for.as_secs_f64()).max(1.0) as u64;
        settle().await;
        let pch = confirm_channel(conn).await?;
        let consumer = raw_drain(conn, raw, paced_n, opts.prefetch, false);
        let (mut d, _) = with_consumer(ch, raw, consumer, || {
            paced(paced_n, opts.paced_rate, |k| {
                let pch = &pch;
                async move {
                    raw_publish(pch, raw, k, opts.size, 1024, Wire::Bare)
                        .await
                        .map(drop)
                }
            })
        })
        .await?;
        let _ = pch.close(200, "bench".into()).await;
        record_latency(&mut f, "raw.paced", &mut d.latencies);
        settle().await;
        let consumer = warren_drain(settings, paced_n, opts.prefetch, opts.concurrency);
        let (mut d, _) = with_consumer(ch, &work, consumer, || {
            paced(paced_n, opts.paced_rate, |k| {
                let producer = &producer;
                async move {
                    for r in producer.enqueue_many(tasks(k, opts.size)).await {
                        r?;
                    }
                    Ok(())
                }
            })
        })
        .await?;
        record_latency(&mut f, "warren.paced", &mut d.latencies);
        all.push(f);
    }
    producer.close().await;
    Ok(all)
}

/// The end-to-end sides. Each repetition runs them in another order ([`rotated`]): the
/// broker's state drifts within a repetition (acked messages to collect, index files to
/// compact), and a side always run last would always pay for it.
const E2E_SIDES: [&str; 4] = ["raw", "raw_multiple", "raw_wire", "warren"];

/// The publishing sides of the enqueue-and-drain phases (`raw` also feeds `raw_multiple`'s
/// drain), rotated like [`E2E_SIDES`].
const ENQUEUE_SIDES: [&str; 3] = ["raw", "raw_wire", "warren"];

/// `sides` rotated left by `rep`: over as many repetitions as sides, each side runs once in
/// each position.
fn rotated<'a>(sides: &[&'a str], rep: usize) -> Vec<&'a str> {
    let mut order = sides.to_vec();
    if !order.is_empty() {
        let k = rep % order.len();
        order.rotate_left(k);
    }
    order
}

/// One raw end-to-end phase on `queue`: a raw consumer, then a raw publisher once it is up.
async fn raw_end_to_end(
    settings: &Settings,
    conn: &Connection,
    ch: &Channel,
    queue: &str,
    opts: &BenchOptions,
    multiple: bool,
    wire: Wire,
) -> Result<(Drained, Instant)> {
    // raw_wire also takes Warren's connection layout: publishing on a connection of its
    // own, as RabbitMQ advises (flow control blocks publishing connections).
    let own = match wire {
        Wire::Bare => None,
        Wire::Warren => Some(
            crate::broker::connect(
                &settings.amqp_url,
                "warren bench raw-publish",
                Some(settings.connect_timeout),
            )
            .await?,
        ),
    };
    let pch = confirm_channel(own.as_ref().unwrap_or(conn)).await?;
    let n = opts.count;
    let result = with_consumer(
        ch,
        queue,
        raw_drain(conn, queue, n, opts.prefetch, multiple),
        || async {
            raw_publish(&pch, queue, n, opts.size, 1024, wire)
                .await
                .map(drop)
        },
    )
    .await;
    let _ = pch.close(200, "bench".into()).await;
    if let Some(c) = own {
        let _ = c.close(200, "bench".into()).await;
    }
    result
}

/// Records `{prefix}_p50_ms`, `_p90_ms` and `_p99_ms` of `samples`.
fn record_latency(f: &mut Figures, prefix: &str, samples: &mut [f64]) {
    let [p50, p90, p99] = percentiles(samples);
    f.insert(format!("{prefix}_p50_ms"), p50);
    f.insert(format!("{prefix}_p90_ms"), p90);
    f.insert(format!("{prefix}_p99_ms"), p99);
}

/// Median, minimum and maximum of one figure over the repetitions.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    /// Median.
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

/// The ratios reported: label, numerator figure, denominator figure.
const RATIOS: &[(&str, &str, &str)] = &[
    (
        "enqueue: warren / raw windowed publisher",
        "warren.enqueue",
        "raw.enqueue",
    ),
    ("drain: warren / raw ack-each", "warren.drain", "raw.drain"),
    (
        "drain: warren / raw ack-multiple",
        "warren.drain",
        "raw_multiple.drain",
    ),
    ("end to end: warren / raw ack-each", "warren.e2e", "raw.e2e"),
    (
        "end to end: warren / raw ack-multiple",
        "warren.e2e",
        "raw_multiple.e2e",
    ),
    (
        "enqueue: warren / raw with warren's wire and routing",
        "warren.enqueue",
        "raw_wire.enqueue",
    ),
    (
        "drain: warren / raw ack-multiple with warren's wire and routing",
        "warren.drain",
        "raw_wire.drain",
    ),
    (
        "end to end: warren / raw ack-multiple with warren's wire and routing",
        "warren.e2e",
        "raw_wire.e2e",
    ),
    (
        "wire and routing cost, enqueue: raw with warren's / raw",
        "raw_wire.enqueue",
        "raw.enqueue",
    ),
    (
        "wire and routing cost, end to end: raw with warren's / raw (both ack-multiple)",
        "raw_wire.e2e",
        "raw_multiple.e2e",
    ),
    (
        "paced p99 latency: warren / raw",
        "warren.paced_p99_ms",
        "raw.paced_p99_ms",
    ),
];

/// Median, minimum and maximum of `v`; `None` when it is empty.
fn spread_of(mut v: Vec<f64>) -> Option<Spread> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Spread {
        median,
        min: v[0],
        max: v[n - 1],
    })
}

/// Medians and spreads per figure, and of each Warren/raw ratio.
///
/// A ratio is taken within each repetition, where both sides ran seconds apart, and then
/// summarized: on a shared machine whose speed drifts during a run, paired ratios cancel the
/// drift that a ratio of two medians (taken from different repetitions) would keep.
pub fn summarize(reps: &[Figures]) -> (BTreeMap<String, Spread>, BTreeMap<String, Spread>) {
    let keys: std::collections::BTreeSet<&String> = reps.iter().flat_map(|f| f.keys()).collect();
    let spreads = keys
        .into_iter()
        .filter_map(|k| {
            spread_of(reps.iter().filter_map(|f| f.get(k).copied()).collect())
                .map(|s| (k.clone(), s))
        })
        .collect();
    let ratios = RATIOS
        .iter()
        .filter_map(|(label, a, b)| {
            let per_rep = reps
                .iter()
                .filter_map(|f| Some(f.get(*a)? / f.get(*b)?))
                .collect();
            spread_of(per_rep).map(|s| (label.to_string(), s))
        })
        .collect();
    (spreads, ratios)
}

/// The report as text.
pub fn report(
    opts: &BenchOptions,
    spreads: &BTreeMap<String, Spread>,
    ratios: &BTreeMap<String, Spread>,
) -> String {
    let mut out = format!(
        "warren bench: {} messages of {} B, {} queues, prefetch {}, concurrency {}, {} repetition(s), paced {} msg/s\n\n",
        opts.count,
        opts.size,
        opts.queue_type.as_str(),
        opts.prefetch,
        opts.concurrency,
        opts.repetitions,
        opts.paced_rate
    );
    out.push_str(&format!(
        "  {:<34} {:>12} {:>24}\n",
        "figure", "median", "spread (min..max)"
    ));
    for (k, s) in spreads {
        let unit = if k.ends_with("_ms") {
            "ms"
        } else if k.ends_with("_s") {
            "s"
        } else if k.ends_with("_mib") {
            "MiB"
        } else {
            "msg/s"
        };
        out.push_str(&format!(
            "  {k:<34} {:>9.1} {unit:<5} {:>9.1} .. {:<9.1}\n",
            s.median, s.min, s.max
        ));
    }
    out.push_str("\n  ratios (median of the per-repetition ratios, and their spread)\n");
    for (k, r) in ratios {
        out.push_str(&format!(
            "  {k:<42} {:>6.2}   ({:.2} .. {:.2})\n",
            r.median, r.min, r.max
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_side_runs_once_in_each_position() {
        for sides in [&E2E_SIDES[..], &ENQUEUE_SIDES[..]] {
            let k = sides.len();
            let orders: Vec<Vec<&str>> = (1..=k).map(|r| rotated(sides, r)).collect();
            for position in 0..k {
                let mut at: Vec<&str> = orders.iter().map(|o| o[position]).collect();
                at.sort_unstable();
                let mut all = sides.to_vec();
                all.sort_unstable();
                assert_eq!(at, all, "position {position} of {sides:?}");
            }
        }
        assert!(rotated(&[], 3).is_empty());
    }

    fn rep(pairs: &[(&str, f64)]) -> Figures {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn ratios_are_paired_within_each_repetition() {
        let reps = vec![
            rep(&[("warren.e2e", 100.0), ("raw.e2e", 400.0)]),
            rep(&[("warren.e2e", 300.0), ("raw.e2e", 200.0)]),
            rep(&[("warren.e2e", 200.0), ("raw.e2e", 100.0)]),
        ];
        let (figures, ratios) = summarize(&reps);
        let r = ratios["end to end: warren / raw ack-each"];
        // per repetition: 0.25, 1.5, 2.0
        assert_eq!((r.median, r.min, r.max), (1.5, 0.25, 2.0));
        // the ratio of the medians (200 / 200) would mix repetitions
        assert_eq!(figures["warren.e2e"].median, 200.0);
        assert_eq!(figures["raw.e2e"].median, 200.0);
        // ratios whose figures were not measured are left out, not reported as NaN
        assert!(!ratios.contains_key("enqueue: warren / raw windowed publisher"));
    }

    #[test]
    fn an_even_count_takes_the_mean_of_the_middle_two() {
        let s = spread_of(vec![4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 4.0));
        assert!(spread_of(vec![f64::NAN]).is_none());
    }
}
