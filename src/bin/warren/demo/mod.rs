//! `warren demo`: the main job on one command, against a real broker.
//!
//! Declares a namespace of its own, starts a pool of in-process workers, enqueues a planned
//! mix (most succeed, some fail once then succeed, some always fail, some are delayed, some
//! expire in the delay ladder), watches every task reach its end, and reports the outcomes
//! against the plan with throughput and latency. Deletes its queues afterwards unless kept.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod drive;

use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use warren::broker::Session;
use warren::duration::parse_duration;
use warren::topology::{self, Names};
use warren::{QueueType, Result, Settings, Task};

use crate::progress::Progress;
use crate::write_err;

/// `warren demo ...`
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Tasks to enqueue.
    #[arg(long, default_value_t = 400, value_parser = clap::value_parser!(u64).range(20..=1_000_000))]
    pub tasks: u64,
    /// In-process workers.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub workers: u16,
    /// Keep the demo's queues afterwards, to browse them in the management UI.
    #[arg(long)]
    pub keep: bool,
    /// Give up waiting for outcomes after this long.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// `warren demo ...`
pub(crate) async fn command(
    settings: &Settings,
    args: DemoArgs,
    out: &mut dyn Write,
) -> Result<ExitCode> {
    let opts = DemoOptions {
        tasks: args.tasks,
        workers: usize::from(args.workers),
        keep: args.keep,
        timeout: args.timeout,
    };
    let bar = Progress::new(opts.tasks);
    let summary = run(settings, &opts, |done, _| bar.set(done)).await?;
    bar.finish();
    let mgmt = warren::ops::management::Management::from_settings(settings)?;
    let vhost = warren::broker::url_parts(&settings.amqp_url)?.vhost;
    let text = report(
        &summary,
        mgmt.base(),
        &vhost,
        opts.keep,
        settings.queue_type,
    );
    write!(out, "{text}").map_err(write_err)?;
    Ok(if summary.all_as_planned() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// What each demo task is planned to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Succeeds at once.
    Ok,
    /// Fails once, succeeds on the retry.
    Flaky,
    /// Always fails: dead after `max_attempts`.
    Doomed,
    /// Delayed 2 s, then succeeds.
    Delayed,
    /// Delayed 2 s with a 1 s expiry: dead as `expired`, never run.
    Expiring,
}

impl Kind {
    /// The planned end state.
    pub fn expected(self) -> &'static str {
        match self {
            Kind::Ok | Kind::Delayed => "succeeded first time",
            Kind::Flaky => "succeeded after a retry",
            Kind::Doomed => "dead: failed",
            Kind::Expiring => "dead: expired",
        }
    }

    fn for_seq(seq: u64) -> Kind {
        match seq % 20 {
            0 | 1 => Kind::Flaky,
            2 => Kind::Doomed,
            3 | 4 => Kind::Delayed,
            5 => Kind::Expiring,
            _ => Kind::Ok,
        }
    }
}

/// The demo's task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DemoTask {
    /// Sequence number.
    pub seq: u64,
    /// What it is planned to do.
    pub kind: Kind,
    /// Unix ms when it was enqueued (for latency).
    pub sent_ms: u64,
}

impl Task for DemoTask {
    const NAME: &'static str = "demo";
}

/// Options of `warren demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Tasks to enqueue. Defaults to 400.
    pub tasks: u64,
    /// In-process workers. Defaults to 3.
    pub workers: usize,
    /// Keep the demo's queues for browsing in the management UI.
    pub keep: bool,
    /// Give up waiting after this long. Defaults to 60 s.
    pub timeout: Duration,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            tasks: 400,
            workers: 3,
            keep: false,
            timeout: Duration::from_secs(60),
        }
    }
}

/// What happened, against what was planned.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Namespace the demo ran in.
    pub namespace: String,
    /// Planned count per end state.
    pub expected: BTreeMap<String, u64>,
    /// Observed count per end state.
    pub actual: BTreeMap<String, u64>,
    /// Tasks whose end state differs from their plan (or never came).
    pub mismatched: u64,
    /// Handler runs (retries and at-least-once duplicates included).
    pub runs: u64,
    /// Confirmed enqueues per second.
    pub enqueue_rate: f64,
    /// Tasks settled per second, first enqueue to last outcome.
    pub throughput: f64,
    /// Enqueue-to-start latency of undelayed first attempts, ms: p50, p90, p99.
    pub latency_ms: [f64; 3],
    /// Seconds from the first enqueue to the last outcome.
    pub elapsed_s: f64,
}

impl Summary {
    /// True when every task reached its planned end state.
    pub fn all_as_planned(&self) -> bool {
        self.mismatched == 0 && self.expected == self.actual
    }
}

#[derive(Default)]
pub(crate) struct Observed {
    /// seq -> end state
    ends: HashMap<u64, &'static str>,
    runs: u64,
    latencies: Vec<f64>,
}

/// Settings of the demo's own namespace: fast retries, a short ladder.
pub fn demo_settings(base: &Settings) -> Result<Settings> {
    let mut s = Settings::from_toml(
        r#"
        max_delay = "1h"
        [tasks.demo]
        max_attempts = 3
        time_limit = "10s"
        [tasks.demo.backoff]
        initial = "1s"
        multiplier = 2.0
        max = "10s"
        jitter = 0.0
        "#,
    )?;
    s.amqp_url = base.amqp_url.clone();
    s.management_url = base.management_url.clone();
    s.connect_timeout = base.connect_timeout;
    s.queue_type = base.queue_type;
    s.namespace = format!("{}.demo-{}", base.namespace, std::process::id());
    s.validate()?;
    Ok(s)
}

/// Runs the demo, calling `progress(settled, total)` about twice a second.
///
/// # Errors
/// Broker errors while setting up; a demo that ran but missed its plan is an `Ok` summary
/// with mismatches.
pub async fn run(
    base: &Settings,
    opts: &DemoOptions,
    mut progress: impl FnMut(u64, u64),
) -> Result<Summary> {
    let settings = demo_settings(base)?;
    let names = Names::new(&settings.namespace);
    let session = Session::open(&settings.broker_url(), "demo", settings.connect_timeout).await?;
    let plan = settings.plan();
    session.apply(&plan).await?;
    let result = drive::drive(&settings, opts, &session, &names, &mut progress).await;
    if !opts.keep {
        topology::declare::remove(&plan, session.connection(), &[]).await;
    }
    session.close("demo done").await;
    result
}

/// The summary as text, with where to look in the management UI.
pub fn report(
    s: &Summary,
    management: &str,
    vhost: &str,
    kept: bool,
    queue_type: QueueType,
) -> String {
    let mut out = format!(
        "\nWarren demo in namespace `{}` ({} queues)\n\n",
        s.namespace,
        queue_type.as_str()
    );
    out.push_str(&format!(
        "  {:<26} {:>8} {:>8}\n",
        "outcome", "planned", "actual"
    ));
    let mut keys: Vec<&String> = s.expected.keys().chain(s.actual.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        let e = s.expected.get(k).copied().unwrap_or(0);
        let a = s.actual.get(k).copied().unwrap_or(0);
        out.push_str(&format!(
            "  {k:<26} {e:>8} {a:>8}{}\n",
            if e == a { "" } else { "   <-- differs" }
        ));
    }
    out.push_str(&format!(
        "\n  handler runs {} (retries included)\n  enqueue {:.0} tasks/s (confirmed)   processed {:.1} tasks/s over {:.1} s (includes the 2 s delays and 1 s + 2 s retry waits)\n  enqueue-to-start latency, undelayed first attempts: p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms\n",
        s.runs, s.enqueue_rate, s.throughput, s.elapsed_s, s.latency_ms[0], s.latency_ms[1], s.latency_ms[2]
    ));
    let vh = warren::ops::management::enc(vhost);
    if kept {
        out.push_str(&format!(
            "\n  In the management UI ({management}/#/queues/{vh}): `{ns}.demo` is the work queue, \
             `{ns}.demo.dead` holds the failed and expired tasks (try `warren --namespace {ns} dlq list demo`), \
             `{ns}.delay.N` are the delay ladder.\n",
            ns = s.namespace
        ));
    } else {
        out.push_str(&format!(
            "\n  The demo's queues were removed; run `warren demo --keep` to browse them in the management UI \
             ({management}/#/queues/{vh}) — connections show as `warren demo-worker-N host:pid`.\n"
        ));
    }
    out.push_str(if s.all_as_planned() {
        "\n  every task reached its planned outcome\n"
    } else {
        "\n  SOME TASKS DID NOT REACH THEIR PLANNED OUTCOME\n"
    });
    out
}
