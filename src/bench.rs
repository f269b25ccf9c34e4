//! `warren bench`: Warren against a raw lapin baseline, in one run, on one broker.
//!
//! Both sides move the same bodies (JSON of `size` bytes, persistent) through queues of the
//! same type with the same prefetch. The raw side is what a careful lapin program does and
//! nothing more: a publisher with a window of outstanding confirms, and a consumer acking each
//! delivery (and a second consumer acking with `multiple`). Warren's side is
//! `Producer::enqueue_many` and a `Worker` with a no-op handler. Drains run in a child process
//! (`warren bench-drain`) so their CPU time and peak RSS are the consumer's alone. Only the
//! ratios of one run mean anything: the broker shares this machine's cores with us.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueuePurgeOptions,
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

fn body(size: usize) -> Vec<u8> {
    let task = BenchTask {
        t: now_us(),
        pad: String::new(),
    };
    let empty = serde_json::to_vec(&task).unwrap_or_default().len() + 20;
    let task = BenchTask {
        t: now_us(),
        pad: "x".repeat(size.saturating_sub(empty)),
    };
    serde_json::to_vec(&task).unwrap_or_default()
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

/// Publishes `n` messages to `queue` through the direct exchange of the same name (as Warren
/// publishes through `{ns}.tasks`, so both sides cost the broker the same routing) with a
/// window of outstanding confirms; returns the seconds taken.
async fn raw_publish(ch: &Channel, queue: &str, n: u64, size: usize, window: usize) -> Result<f64> {
    let started = Instant::now();
    let mut inflight = FuturesUnordered::new();
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into());
    for _ in 0..n {
        if inflight.len() >= window
            && let Some(c) = inflight.next().await
        {
            check_confirm(c)?;
        }
        let confirm = ch
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &body(size),
                props.clone(),
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

/// Consumes `n` messages from `queue`, acking each (or, with `multiple`, every prefetch/4
/// and at the end); returns the seconds from the first delivery's request and the latencies.
async fn raw_drain(
    conn: &Connection,
    queue: &str,
    n: u64,
    prefetch: u16,
    multiple: bool,
) -> Result<(f64, Vec<f64>)> {
    let ch = conn.create_channel().await.map_err(amqp("channel"))?;
    ch.basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(amqp("qos"))?;
    let started = Instant::now();
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
    let mut got = 0;
    while got < n {
        let d = match consumer.next().await {
            Some(Ok(d)) => d,
            Some(Err(e)) => return Err(amqp("raw consume")(e)),
            None => return Err(Error::InvalidInput("raw consumer ended".into())),
        };
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
    let secs = started.elapsed().as_secs_f64();
    let _ = ch.close(200, "bench".into()).await;
    Ok((secs, latencies))
}

// ---- Warren's side ------------------------------------------------------------------------

fn tasks(n: u64, size: usize) -> impl Iterator<Item = BenchTask> {
    let pad = serde_json::from_slice::<BenchTask>(&body(size))
        .map(|t| t.pad)
        .unwrap_or_default();
    (0..n).map(move |_| BenchTask {
        t: now_us(),
        pad: pad.clone(),
    })
}

async fn warren_enqueue(producer: &Producer, n: u64, size: usize) -> Result<f64> {
    let started = Instant::now();
    for r in producer.enqueue_many(tasks(n, size)).await {
        r?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Runs a Warren worker with a no-op handler until `n` tasks ran; returns the seconds from
/// its start and the latencies.
async fn warren_drain(
    settings: &Settings,
    n: u64,
    prefetch: u16,
    concurrency: usize,
) -> Result<(f64, Vec<f64>)> {
    let done = Arc::new(AtomicU64::new(0));
    let all = Arc::new(Notify::new());
    let latencies = Arc::new(std::sync::Mutex::new(Vec::with_capacity(n as usize)));
    let (d2, a2, l2) = (done.clone(), all.clone(), latencies.clone());
    let worker = Worker::new(settings)
        .role("bench-worker")
        .prefetch(prefetch)
        .concurrency(concurrency)
        .handle(move |t: BenchTask, _ctx: TaskContext| {
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
    let started = Instant::now();
    let running = tokio::spawn(worker.run(stop.clone()));
    all.notified().await;
    let secs = started.elapsed().as_secs_f64();
    stop.cancel();
    running
        .await
        .map_err(|e| Error::InvalidInput(format!("bench worker: {e}")))??;
    let l = latencies.lock().map(|l| l.clone()).unwrap_or_default();
    Ok((secs, l))
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
    /// Seconds to consume everything.
    pub secs: f64,
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
    let secs = match side {
        DrainSide::Warren => warren_drain(settings, n, prefetch, concurrency).await?.0,
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
            .await?
            .0;
            let _ = conn.close(200, "bench".into()).await;
            r
        }
    };
    let (rss, cpu_after) = rusage();
    Ok(DrainFigures {
        secs,
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
        .env("RUST_LOG", "error,lapin=off")
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

        // Enqueue, then drain in a child process: raw per-message acks, raw multiple, Warren.
        step(progress, "raw publish");
        purge(raw.to_string()).await?;
        let cpu = rusage().1;
        f.insert(
            "raw.enqueue".into(),
            rate(raw_publish(ch, raw, n, opts.size, 1024).await?),
        );
        f.insert("raw.enqueue_cpu_s".into(), rusage().1 - cpu);
        step(progress, "raw drain (ack each)");
        let d = drain_in_child(settings, opts, DrainSide::Raw).await?;
        f.insert("raw.drain".into(), rate(d.secs));
        f.insert("raw.drain_cpu_s".into(), d.cpu_secs);
        f.insert("raw.drain_rss_mib".into(), d.peak_rss_kib as f64 / 1024.0);
        raw_publish(ch, raw, n, opts.size, 1024).await?;
        step(progress, "raw drain (ack multiple)");
        let d = drain_in_child(settings, opts, DrainSide::RawMultiple).await?;
        f.insert("raw_multiple.drain".into(), rate(d.secs));

        step(progress, "warren enqueue");
        purge(work.clone()).await?;
        let cpu = rusage().1;
        f.insert(
            "warren.enqueue".into(),
            rate(warren_enqueue(&producer, n, opts.size).await?),
        );
        f.insert("warren.enqueue_cpu_s".into(), rusage().1 - cpu);
        step(progress, "warren drain");
        let d = drain_in_child(settings, opts, DrainSide::Warren).await?;
        f.insert("warren.drain".into(), rate(d.secs));
        f.insert("warren.drain_cpu_s".into(), d.cpu_secs);
        f.insert(
            "warren.drain_rss_mib".into(),
            d.peak_rss_kib as f64 / 1024.0,
        );

        // End to end, both running in this process; latencies at full load.
        step(progress, "raw end to end");
        for (key, multiple) in [("raw", false), ("raw_multiple", true)] {
            let started = Instant::now();
            let consumer = raw_drain(conn, raw, n, opts.prefetch, multiple);
            let publisher = async {
                let pch = conn.create_channel().await.map_err(amqp("channel"))?;
                pch.confirm_select(ConfirmSelectOptions::default())
                    .await
                    .map_err(amqp("confirm"))?;
                raw_publish(&pch, raw, n, opts.size, 1024).await
            };
            let (c, p) = tokio::join!(consumer, publisher);
            p?;
            let (_, mut lat) = c?;
            f.insert(format!("{key}.e2e"), rate(started.elapsed().as_secs_f64()));
            record_latency(&mut f, &format!("{key}.full"), &mut lat);
        }
        step(progress, "warren end to end");
        let started = Instant::now();
        let (c, p) = tokio::join!(
            warren_drain(settings, n, opts.prefetch, opts.concurrency),
            warren_enqueue(&producer, n, opts.size)
        );
        p?;
        let (_, mut lat) = c?;
        f.insert("warren.e2e".into(), rate(started.elapsed().as_secs_f64()));
        record_latency(&mut f, "warren.full", &mut lat);

        // Paced: a steady rate, latency only.
        step(progress, "paced latency");
        let paced_n = (opts.paced_rate as f64 * opts.paced_for.as_secs_f64()).max(1.0) as u64;
        let tick = Duration::from_millis(10);
        let per_tick = (opts.paced_rate / 100).max(1);
        {
            let consumer = raw_drain(conn, raw, paced_n, opts.prefetch, false);
            let publisher = async {
                let pch = conn.create_channel().await.map_err(amqp("channel"))?;
                pch.confirm_select(ConfirmSelectOptions::default())
                    .await
                    .map_err(amqp("confirm"))?;
                let mut sent = 0;
                let mut interval = tokio::time::interval(tick);
                while sent < paced_n {
                    interval.tick().await;
                    let k = per_tick.min(paced_n - sent);
                    raw_publish(&pch, raw, k, opts.size, 1024).await?;
                    sent += k;
                }
                Ok::<(), Error>(())
            };
            let (c, p) = tokio::join!(consumer, publisher);
            p?;
            let (_, mut lat) = c?;
            record_latency(&mut f, "raw.paced", &mut lat);
        }
        {
            let consumer = warren_drain(settings, paced_n, opts.prefetch, opts.concurrency);
            let publisher = async {
                let mut sent = 0;
                let mut interval = tokio::time::interval(tick);
                while sent < paced_n {
                    interval.tick().await;
                    let k = per_tick.min(paced_n - sent);
                    for r in producer.enqueue_many(tasks(k, opts.size)).await {
                        r?;
                    }
                    sent += k;
                }
                Ok::<(), Error>(())
            };
            let (c, p) = tokio::join!(consumer, publisher);
            p?;
            let (_, mut lat) = c?;
            record_latency(&mut f, "warren.paced", &mut lat);
        }
        all.push(f);
    }
    Ok(all)
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

/// Medians and spreads per figure, plus the Warren/raw ratios of the medians.
pub fn summarize(reps: &[Figures]) -> (BTreeMap<String, Spread>, BTreeMap<String, f64>) {
    let mut spreads = BTreeMap::new();
    if let Some(first) = reps.first() {
        for key in first.keys() {
            let mut v: Vec<f64> = reps.iter().filter_map(|f| f.get(key).copied()).collect();
            v.sort_by(f64::total_cmp);
            let median = if v.len() % 2 == 1 {
                v[v.len() / 2]
            } else {
                (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
            };
            spreads.insert(
                key.clone(),
                Spread {
                    median,
                    min: v[0],
                    max: v[v.len() - 1],
                },
            );
        }
    }
    let m = |k: &str| spreads.get(k).map_or(f64::NAN, |s: &Spread| s.median);
    let mut ratios = BTreeMap::new();
    ratios.insert(
        "enqueue: warren / raw windowed publisher".into(),
        m("warren.enqueue") / m("raw.enqueue"),
    );
    ratios.insert(
        "drain: warren / raw ack-each".into(),
        m("warren.drain") / m("raw.drain"),
    );
    ratios.insert(
        "drain: warren / raw ack-multiple".into(),
        m("warren.drain") / m("raw_multiple.drain"),
    );
    ratios.insert(
        "end to end: warren / raw ack-each".into(),
        m("warren.e2e") / m("raw.e2e"),
    );
    ratios.insert(
        "end to end: warren / raw ack-multiple".into(),
        m("warren.e2e") / m("raw_multiple.e2e"),
    );
    ratios.insert(
        "paced p99 latency: warren / raw".into(),
        m("warren.paced_p99_ms") / m("raw.paced_p99_ms"),
    );
    (spreads, ratios)
}

/// The report as text.
pub fn report(
    opts: &BenchOptions,
    spreads: &BTreeMap<String, Spread>,
    ratios: &BTreeMap<String, f64>,
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
    out.push_str("\n  ratios (medians of this run)\n");
    for (k, r) in ratios {
        out.push_str(&format!("  {k:<42} {r:>6.2}\n"));
    }
    out
}
