//! Counters for the metrics endpoint, through the `metrics` facade (a no-op until a program
//! installs an exporter, as `warren worker --metrics-addr` does). Handles are registered once
//! per task type when the worker starts, so recording a task costs a few atomic operations,
//! not label allocations.
//!
//! Series: `warren_tasks_total{task,outcome}` (outcome = success | retry | dead |
//! interrupted, the last for runs a worker's shutdown cut short),
//! `warren_dead_lettered_total{task,reason}`, `warren_retries_total{task}`,
//! `warren_task_duration_seconds{task}` (histogram), `warren_tasks_in_flight{task}`,
//! `warren_reconnects_total`.

use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

use crate::wire::Reason;

/// How a delivery ended, as counted in `warren_tasks_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Ran and acked.
    Success,
    /// A retry copy went into the ladder.
    Retry,
    /// A dead copy went to the dead queue.
    Dead(Reason),
    /// A worker's shutdown cut the run short; a copy went back to the work queue.
    Interrupted,
}

pub(super) struct Metrics {
    in_flight: Gauge,
    duration: Histogram,
    success: Counter,
    retry: Counter,
    dead: Counter,
    interrupted: Counter,
    retries: Counter,
    dead_by_reason: Vec<(Reason, Counter)>,
}

impl Metrics {
    pub(super) fn new(task: &str) -> Metrics {
        let t = task.to_string();
        let outcome =
            |o: &'static str| counter!("warren_tasks_total", "task" => t.clone(), "outcome" => o);
        Metrics {
            in_flight: gauge!("warren_tasks_in_flight", "task" => t.clone()),
            duration: histogram!("warren_task_duration_seconds", "task" => t.clone()),
            success: outcome("success"),
            retry: outcome("retry"),
            dead: outcome("dead"),
            interrupted: outcome("interrupted"),
            retries: counter!("warren_retries_total", "task" => t.clone()),
            dead_by_reason: Reason::ALL
                .into_iter()
                .map(|r| {
                    let c = counter!("warren_dead_lettered_total", "task" => t.clone(), "reason" => r.as_str());
                    (r, c)
                })
                .collect(),
        }
    }

    pub(super) fn started(&self) {
        self.in_flight.increment(1.0);
    }

    pub(super) fn finished(&self, took: Duration) {
        self.in_flight.decrement(1.0);
        self.duration.record(took.as_secs_f64());
    }

    /// Counts an outcome that is safely in the broker.
    pub(super) fn outcome(&self, outcome: Outcome) {
        match outcome {
            Outcome::Success => self.success.increment(1),
            Outcome::Retry => {
                self.retry.increment(1);
                self.retries.increment(1);
            }
            Outcome::Interrupted => self.interrupted.increment(1),
            Outcome::Dead(why) => {
                self.dead.increment(1);
                if let Some((_, c)) = self.dead_by_reason.iter().find(|(r, _)| *r == why) {
                    c.increment(1);
                }
            }
        }
    }
}
