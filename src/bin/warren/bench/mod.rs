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
//! and, end to end, on a connection of its own. RabbitMQ charges for each of these (figures from
//! `examples/wire_cost.rs` in `docs/performance.md`), so `warren / raw` mixes two
//! costs: `warren / raw_wire` is Warren's code alone, `raw_wire / raw` the format's and the
//! routing's.
//!
//! Method: every timed phase starts after a short pause (the broker finishes the previous
//! phase's background work); rates of drains are steady rates from the first delivery to
//! the last; end-to-end and paced phases publish only once the consumer is up, so neither
//! side's start-up (a worker connects and declares its topology) is counted as per-task cost.

mod child;
mod delays;
mod idle;
mod raw;
mod repetition;
mod report;
mod rpc;
mod side;
mod timing;

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use clap::Args;
use lapin::options::ConfirmSelectOptions;
use serde::{Deserialize, Serialize};
use warren::broker::Session;
use warren::duration::parse_duration;
use warren::topology::{self, Names};
use warren::{Error, Producer, QueueType, Result, Settings, Task};

use crate::write_err;
use child::DrainSide;
use raw::declare_raw;
use repetition::Bench;

/// `warren bench ...`
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Messages per throughput phase.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: u64,
    /// Message body size in bytes.
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Queue type of both sides.
    #[arg(long, default_value = "classic", value_parser = ["classic", "quorum"])]
    pub queue_type: String,
    /// Prefetch of both consumers.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u16).range(1..))]
    pub prefetch: u16,
    /// Warren worker concurrency.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,
    /// Repetitions (medians and spreads are reported).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub repetitions: u32,
    /// Paced load of the latency phase, messages per second.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub rate: u64,
    /// Length of the paced phase.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub paced_for: Duration,
    /// Delays at scale: this many tasks with delays spread over whole seconds from 0 to
    /// `--delay-spread`, run once after the repetitions (0: skipped, and the report says so).
    #[arg(long, default_value_t = 0)]
    pub delays: u64,
    /// The longest delay of the delays phase.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub delay_spread: Duration,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `warren bench-drain ...` (internal)
#[derive(Debug, Args)]
pub struct BenchDrainArgs {
    /// Which consumer.
    #[arg(long, value_enum)]
    pub side: DrainSide,
    /// Messages to consume.
    #[arg(long)]
    pub count: u64,
    /// Prefetch.
    #[arg(long)]
    pub prefetch: u16,
    /// Warren concurrency.
    #[arg(long)]
    pub concurrency: usize,
    /// Queue type.
    #[arg(long, value_parser = ["classic", "quorum"])]
    pub queue_type: String,
}

fn queue_type(name: &str) -> warren::QueueType {
    if name == "quorum" {
        warren::QueueType::Quorum
    } else {
        warren::QueueType::Classic
    }
}

/// `warren bench ...`
pub(crate) async fn command(
    settings: &Settings,
    args: BenchArgs,
    out: &mut dyn Write,
) -> Result<ExitCode> {
    let opts = BenchOptions {
        count: args.count,
        size: args.size,
        queue_type: queue_type(&args.queue_type),
        prefetch: args.prefetch,
        concurrency: args.concurrency as usize,
        repetitions: args.repetitions as usize,
        paced_rate: args.rate,
        paced_for: args.paced_for,
        delays: args.delays,
        delay_spread: args.delay_spread,
    };
    let terminal = std::io::stderr().is_terminal();
    let (reps, delayed) = run(settings, &opts, |phase| {
        if terminal {
            eprint!("\r\x1b[2K{phase}");
        } else {
            eprintln!("{phase}");
        }
    })
    .await?;
    if terminal {
        eprintln!();
    }
    let (spreads, ratios) = report::summarize(&reps);
    if args.json {
        // `delays` is null when the phase was skipped (no `--delays`).
        let json = serde_json::json!({"options": opts, "figures": spreads, "ratios": ratios,
                                      "repetitions": reps, "delays": delayed});
        writeln!(out, "{json}").map_err(write_err)?;
    } else {
        write!(out, "{}", report::report(&opts, &spreads, &ratios)).map_err(write_err)?;
        write!(out, "{}", delays::text(delayed.as_ref())).map_err(write_err)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `warren bench-drain ...` (internal)
pub(crate) async fn drain_command(
    settings: &Settings,
    args: BenchDrainArgs,
    out: &mut dyn Write,
) -> Result<ExitCode> {
    let s = bench_settings(settings, queue_type(&args.queue_type), &settings.namespace)?;
    let figures =
        child::drain_child(&s, args.side, args.count, args.prefetch, args.concurrency).await?;
    writeln!(
        out,
        "{}",
        serde_json::to_string(&figures).unwrap_or_default()
    )
    .map_err(write_err)?;
    Ok(ExitCode::SUCCESS)
}

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
    /// Tasks of the delays phase (0: skipped).
    pub delays: u64,
    /// The longest delay of the delays phase.
    pub delay_spread: Duration,
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

// ---- the run --------------------------------------------------------------------------------

/// Settings of the benchmark's own namespace.
pub fn bench_settings(base: &Settings, queue_type: QueueType, namespace: &str) -> Result<Settings> {
    let mut toml =
        String::from("max_delay = \"1h\"\nmax_payload_bytes = 16777216\n[tasks.bench]\n");
    for name in many_types() {
        toml.push_str(&format!("[tasks.{name}]\n"));
    }
    toml.push_str(&format!(
        "[tasks.{LIMITED_AT_ONCE}]\nconcurrency_limit = 2\n[tasks.{LIMITED_RATE}]\nrate_limit = \"50/s\"\n"
    ));
    let mut s = Settings::from_toml(&toml)?;
    s.amqp_url = base.amqp_url.clone();
    s.connect_timeout = base.connect_timeout;
    s.queue_type = queue_type;
    s.namespace = namespace.to_string();
    s.validate()?;
    Ok(s)
}

/// Task types of the many-types phase: one worker drains them all.
pub(super) const MANY_TYPES: usize = 40;

/// The names of the many-types phase's task types (`many00` …).
pub(super) fn many_types() -> impl Iterator<Item = String> {
    (0..MANY_TYPES).map(|i| format!("many{i:02}"))
}

/// The limits phase's types: one with `concurrency_limit = 2`, one with `rate_limit = 50/s`,
/// each with a backlog, in the same worker as the bench type.
pub(super) const LIMITED_AT_ONCE: &str = "limited_at_once";
pub(super) const LIMITED_RATE: &str = "limited_rate";

/// The backlog of each limited type in the limits phase.
pub(super) const LIMITED_BACKLOG: u64 = 1000;

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
) -> Result<(Vec<Figures>, Option<delays::DelayFigures>)> {
    let ns = format!("{}.bench-{}", base.namespace, std::process::id());
    let settings = bench_settings(base, opts.queue_type, &ns)?;
    let session = Session::connect(
        &settings.broker_url(),
        "warren bench",
        Some(settings.connect_timeout),
    )
    .await?;
    let plan = settings.plan();
    session.apply(&plan).await?;
    let conn = session.connection();
    let ch = session.channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(amqp("confirm select"))?;
    let raw = declare_raw(&ch, &settings).await?;
    let bench = Bench {
        settings: &settings,
        opts,
        conn,
        ch: &ch,
        raw: &raw,
        work: Names::new(&settings.namespace).work_queue("bench"),
        producer: Producer::with_role(&settings, "bench-producer")?,
    };
    let mut result = bench.repetitions(&mut progress).await.map(|r| (r, None));
    if let Ok((_, delays)) = &mut result
        && opts.delays > 0
    {
        progress(&format!(
            "delays at scale: {} tasks over 0-{} s",
            opts.delays,
            opts.delay_spread.as_secs()
        ));
        match bench
            .delays_at_scale(opts.delays, opts.delay_spread.as_secs())
            .await
        {
            Ok(d) => *delays = Some(d),
            Err(e) => result = Err(e),
        }
    }
    bench.producer.close().await;
    topology::declare::remove(&plan, conn, &[raw.as_str()]).await;
    session.close("bench done").await;
    result
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

/// Records `{prefix}_p50_ms`, `_p90_ms` and `_p99_ms` of `samples`.
fn record_latency(f: &mut Figures, prefix: &str, samples: &mut [f64]) {
    let [p50, p90, p99] = crate::stats::percentiles(samples);
    f.insert(format!("{prefix}_p50_ms"), p50);
    f.insert(format!("{prefix}_p90_ms"), p90);
    f.insert(format!("{prefix}_p99_ms"), p99);
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
}
