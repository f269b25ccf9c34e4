//! One run's phases: enqueue and drain, end to end, paced, round trips, and an idle consumer
//! with its start-up, each side in turn.

use lapin::options::QueuePurgeOptions;
use lapin::{Channel, Connection};
use warren::broker::close_channel;
use warren::{Producer, Result, Settings};

use super::child::{DrainSide, drain_in_child, rusage};
use super::raw::{RawEndToEnd, Wire, raw_drain, raw_publish};
use super::report::Figures;
use super::side::{warren_drain, warren_enqueue, warren_enqueue_many_types, warren_enqueue_to};
use super::timing::{confirm_channel, paced, settle, with_consumer};
use super::{
    BenchOptions, E2E_SIDES, ENQUEUE_SIDES, LIMITED_AT_ONCE, LIMITED_BACKLOG, LIMITED_RATE, amqp,
    record_latency, rotated, tasks,
};

/// What every phase of a run uses: the settings and options, the broker objects, the
/// producer of Warren's side.
pub(super) struct Bench<'a> {
    pub(super) settings: &'a Settings,
    pub(super) opts: &'a BenchOptions,
    pub(super) conn: &'a Connection,
    pub(super) ch: &'a Channel,
    /// The raw side's queue.
    pub(super) raw: &'a str,
    /// Warren's work queue.
    pub(super) work: String,
    pub(super) producer: Producer,
}

impl Bench<'_> {
    /// Runs every phase `opts.repetitions` times.
    pub(super) async fn repetitions(
        &self,
        progress: &mut impl FnMut(&str),
    ) -> Result<Vec<Figures>> {
        let reps = self.opts.repetitions;
        let mut all = Vec::new();
        for rep in 1..=reps {
            let mut step = |what: &str| progress(&format!("repetition {rep}/{reps}: {what}"));
            let mut f = Figures::new();
            self.repetition(rep, &mut f, &mut step).await?;
            all.push(f);
        }
        Ok(all)
    }

    async fn repetition(
        &self,
        rep: usize,
        f: &mut Figures,
        step: &mut impl FnMut(&str),
    ) -> Result<()> {
        self.purge(self.raw).await?;
        self.purge(&self.work).await?;
        // Enqueue, then drain in a child process; the sides take turns going first.
        for key in rotated(&ENQUEUE_SIDES, rep) {
            self.enqueue_and_drain(key, f, step).await?;
        }
        // The same count spread over many types, drained by one worker.
        step("warren drain of many types");
        settle().await;
        warren_enqueue_many_types(&self.producer, self.opts.count, self.opts.size).await?;
        settle().await;
        let d = drain_in_child(self.settings, self.opts, DrainSide::WarrenManyTypes).await?;
        f.insert("warren.drain_many_types".into(), d.rate);
        f.insert("warren.drain_many_types_cpu_s".into(), d.cpu_secs);
        f.insert(
            "warren.drain_many_types_rss_mib".into(),
            d.peak_rss_kib as f64 / 1024.0,
        );
        // The bench type beside two limited types with a backlog, in one worker.
        step("warren drain beside limited types");
        self.beside_limits(f).await?;
        // End to end, both running in this process, timed from the first publish (the
        // consumer is already up) to the last delivery; latencies at full load.
        for key in rotated(&E2E_SIDES, rep) {
            step(&format!("{key} end to end"));
            self.end_to_end(key, f).await?;
        }
        // Paced: a steady rate, latency only.
        step("paced latency");
        self.paced(f).await?;
        // Request and response: enqueue and wait, against a raw RPC loop.
        step("round trips");
        self.round_trips(f).await?;
        // One task at a time to an idle consumer, and a consumer's start to its first task.
        step("idle and start-up");
        self.idle_and_start_up(f).await
    }

    /// The bench type's drain in a worker that also serves a concurrency-limited and a
    /// rate-limited type, each with a backlog: `warren.drain_beside_limits`. What the
    /// limited types leave is purged afterwards.
    async fn beside_limits(&self, f: &mut Figures) -> Result<()> {
        let limited = [LIMITED_AT_ONCE, LIMITED_RATE];
        settle().await;
        warren_enqueue_to(&self.producer, &limited, LIMITED_BACKLOG, self.opts.size).await?;
        warren_enqueue(&self.producer, self.opts.count, self.opts.size).await?;
        settle().await;
        let d = drain_in_child(self.settings, self.opts, DrainSide::WarrenBesideLimits).await?;
        f.insert("warren.drain_beside_limits".into(), d.rate);
        // How many limited tasks ran meanwhile: the backlog less what is left (purged).
        let names = warren::topology::Names::new(&self.settings.namespace);
        let mut left = 0;
        for task in limited {
            left += self
                .ch
                .queue_purge(
                    names.work_queue(task).as_str().into(),
                    QueuePurgeOptions::default(),
                )
                .await
                .map_err(amqp("purge"))?;
        }
        let ran = (2 * LIMITED_BACKLOG).saturating_sub(u64::from(left));
        f.insert("warren.beside_limits_limited_ran".into(), ran as f64);
        Ok(())
    }

    async fn purge(&self, queue: &str) -> Result<()> {
        self.ch
            .queue_purge(queue.into(), QueuePurgeOptions::default())
            .await
            .map(drop)
            .map_err(amqp("purge"))
    }

    fn rate(&self, secs: f64) -> f64 {
        self.opts.count as f64 / secs.max(1e-9)
    }

    /// One side's enqueue, then its drain(s) in a child process.
    async fn enqueue_and_drain(
        &self,
        key: &str,
        f: &mut Figures,
        step: &mut impl FnMut(&str),
    ) -> Result<()> {
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
        let (n, size) = (self.opts.count, self.opts.size);
        let publish = || async {
            match wire {
                Some(wire) => raw_publish(self.ch, self.raw, n, size, wire).await,
                None => warren_enqueue(&self.producer, n, size).await,
            }
        };
        step(&format!("{key} publish"));
        settle().await;
        let cpu = rusage().1;
        let secs = publish().await?;
        f.insert(format!("{key}.enqueue"), self.rate(secs));
        f.insert(format!("{key}.enqueue_cpu_s"), rusage().1 - cpu);
        for (i, (drain_key, side)) in drains.iter().enumerate() {
            if i > 0 {
                publish().await?;
            }
            step(&format!("{drain_key} drain"));
            settle().await;
            let d = drain_in_child(self.settings, self.opts, *side).await?;
            f.insert(format!("{drain_key}.drain"), d.rate);
            f.insert(format!("{drain_key}.drain_cpu_s"), d.cpu_secs);
            f.insert(
                format!("{drain_key}.drain_rss_mib"),
                d.peak_rss_kib as f64 / 1024.0,
            );
        }
        Ok(())
    }

    /// One side end to end: its consumer, then its publisher once the consumer is up.
    async fn end_to_end(&self, key: &str, f: &mut Figures) -> Result<()> {
        let opts = self.opts;
        settle().await;
        let cpu = rusage().1;
        let (mut d, started) = match key {
            "warren" => {
                let consumer =
                    warren_drain(self.settings, opts.count, opts.prefetch, opts.concurrency);
                with_consumer(self.ch, &self.work, consumer, || async {
                    warren_enqueue(&self.producer, opts.count, opts.size)
                        .await
                        .map(drop)
                })
                .await?
            }
            _ => {
                let (multiple, wire) = match key {
                    "raw" => (false, Wire::Bare),
                    "raw_multiple" => (true, Wire::Bare),
                    _ => (true, Wire::Warren),
                };
                let raw = RawEndToEnd { multiple, wire };
                raw.run(self.settings, self.conn, self.ch, self.raw, opts)
                    .await?
            }
        };
        f.insert(
            format!("{key}.e2e"),
            self.rate((d.last - started).as_secs_f64()),
        );
        f.insert(format!("{key}.e2e_cpu_s"), rusage().1 - cpu);
        record_latency(f, &format!("{key}.full"), &mut d.latencies);
        Ok(())
    }

    /// Both sides at a steady rate: enqueue-to-start latency only.
    async fn paced(&self, f: &mut Figures) -> Result<()> {
        let opts = self.opts;
        let paced_n = (opts.paced_rate as f64 * opts.paced_for.as_secs_f64()).max(1.0) as u64;
        settle().await;
        let pch = confirm_channel(self.conn).await?;
        let consumer = raw_drain(self.conn, self.raw, paced_n, opts.prefetch, false);
        let (mut d, _) = with_consumer(self.ch, self.raw, consumer, || {
            paced(paced_n, opts.paced_rate, |k| {
                let pch = &pch;
                async move {
                    raw_publish(pch, self.raw, k, opts.size, Wire::Bare)
                        .await
                        .map(drop)
                }
            })
        })
        .await?;
        close_channel(&pch, "bench").await;
        record_latency(f, "raw.paced", &mut d.latencies);
        settle().await;
        let consumer = warren_drain(self.settings, paced_n, opts.prefetch, opts.concurrency);
        let (mut d, _) = with_consumer(self.ch, &self.work, consumer, || {
            paced(paced_n, opts.paced_rate, |k| async move {
                for r in self.producer.enqueue_many(tasks(k, opts.size)).await {
                    r?;
                }
                Ok(())
            })
        })
        .await?;
        record_latency(f, "warren.paced", &mut d.latencies);
        Ok(())
    }
}
