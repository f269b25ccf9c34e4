//! Periodic tasks: `[schedules.NAME]` tables fired by exactly one scheduler, with no store
//! but RabbitMQ.
//!
//! **One leader.** Every scheduler replica (`warren scheduler`, or `warren worker
//! --scheduler`) connects and tries to declare the exclusive queue `{ns}.scheduler.lease`
//! (`broker::lease`). The broker lets one connection hold it and refuses the others (405
//! RESOURCE_LOCKED); they stand by and try again every second. When the leader's connection
//! goes, `kill -9` included, the broker deletes the queue and a standby takes it within about
//! a second. A leader fires only over the connection that holds the lease: once the broker
//! has dropped that connection (which is when the lease frees), nothing it publishes arrives,
//! so two leaders never fire at once on one broker.
//!
//! **Each slot once.** A firing is one publish to `{ns}.tasks` with the task as routing key
//! and the schedule's key in `BCC` ([`firing`]). The broker routes it to the task's queue and
//! to the schedule's record queue `{ns}.{task}.schedule.{name}` (one message, the oldest
//! dropped) atomically: a scheduler killed mid-publish leaves both or neither. So the record
//! always names the last slot fired, and a new leader fires only slots after it ([`record`]),
//! also when it took over from a leader killed between two firings. The firing's task id is
//! `{schedule}@{slot}` (`nightly@2026-11-24T02:00:00Z`), the same on every replica.
//!
//! Why not a unique task per firing (a unique key)? Its key is released when
//! the task finishes, so it cannot stop a second firing of a slot after the first one ran;
//! and the key, the task and the record would be three publishes, with a crash possible
//! between any two. One publish to two queues leaves no such gap.
//!
//! **Catch-up.** A new leader compares each record with the clock: the slots that fell due
//! while nobody led are fired per the schedule's `catch_up` ([`crate::cadence::CatchUp`]: the most
//! recent one by default, all of them, or none). A schedule that never fired starts with its
//! next slot. A leader that falls behind (a slow broker, a suspended host) fires every slot
//! it owes, up to 1000.
//!
//! **What breaks it.** The record queue lives in the broker like the tasks: with quorum
//! queues it survives a node's loss. A network partition between cluster nodes can let a
//! scheduler on each side take the lease (each side sees the other's node, and the exclusive
//! queue on it, as gone); RabbitMQ's `pause_minority` partition handling, which pauses the
//! minority side and closes its connections, keeps it to one. Deleting the lease queue by
//! hand makes its holder step down before its next firing (`broker::lease::still_held`). Clocks:
//! each slot is fired when the leader's clock reaches it; replicas with skewed clocks do not
//! fire a slot twice (a new leader never fires at or before the record), but a slot may fire
//! early or late by the skew.

pub mod firing;
mod leader;
pub mod record;

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::broker::lease;
use crate::broker::{Session, connection_name};
use crate::config::Settings;
use crate::error::{Error, Result};
use leader::{Term, TermEnd};

/// How often a standby tries to take the lease.
pub const STANDBY_POLL: Duration = Duration::from_secs(1);

/// Longest a standby waits for the broker's answer to a lease probe before declaring.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Runs the schedules of a topology when it leads, stands by otherwise.
#[derive(Debug, Clone)]
pub struct Scheduler {
    settings: Settings,
    name: String,
}

impl Scheduler {
    /// A scheduler for `settings`' schedules, its connection named `warren scheduler
    /// {host}:{pid}` (what `warren schedules` shows as the leader).
    pub fn new(settings: &Settings) -> Scheduler {
        Scheduler {
            settings: settings.clone(),
            name: connection_name("scheduler"),
        }
    }

    /// The connection name this scheduler uses.
    pub fn connection_name(&self) -> &str {
        &self.name
    }

    /// Stands by and leads in turn until `shutdown` is cancelled, reconnecting after any
    /// broker failure (forever, like a worker).
    ///
    /// # Errors
    /// [`Error::Config`] when there is no schedule; errors no retry can mend: refused
    /// credentials, a topology that conflicts with the broker's.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<()> {
        if self.settings.schedules.is_empty() {
            return Err(Error::Config(
                "no schedule to run: add a [schedules.NAME] table with `task` and `cron` or \
                 `every` to the topology file"
                    .into(),
            ));
        }
        let mut pause = Duration::from_millis(500);
        let url = self.settings.broker_url();
        loop {
            let session = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                s = Session::connect(&url, &self.name, None) => s?,
            };
            let began = tokio::time::Instant::now();
            let outcome = self.serve(&session, &shutdown).await;
            // A session that lasted is no sign of a broker in trouble: start the backoff over.
            if began.elapsed() > Duration::from_secs(30) {
                pause = Duration::from_millis(500);
            }
            metrics::gauge!("warren_scheduler_leading").set(0.0);
            session.close("scheduler stepping down").await;
            match outcome {
                Ok(TermEnd::Shutdown) => return Ok(()),
                Ok(TermEnd::LeaseLost) => {}
                Err(e) if fatal(&e) => return Err(e),
                Err(e) => tracing::warn!(error = %e, "scheduler: reconnecting"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(Duration::from_secs(10));
        }
    }

    /// One connection's life: declare what the schedules need, stand by, lead.
    async fn serve(&self, session: &Session, shutdown: &CancellationToken) -> Result<TermEnd> {
        let mut plan = self
            .settings
            .plan_for(self.settings.schedules.values().map(|s| s.task.as_str()));
        let records = self.settings.schedules_plan();
        plan.queues.extend(records.queues);
        plan.bindings.extend(records.bindings);
        session.apply(&plan).await?;
        let names = self.settings.layout().names;
        let (lease_name, control) = (names.scheduler_lease(), names.control_exchange());
        let conn = session.connection();
        let mut said = false;
        // A probe first: declaring a held lease costs a broker error line each time. A probe
        // is a publish, which a broker in a memory or disk alarm holds back: one that takes
        // too long lets the declare decide, and shutdown is heard meanwhile.
        loop {
            let probe = tokio::time::timeout(
                PROBE_TIMEOUT,
                lease::held_elsewhere(conn, &control, &lease_name),
            );
            let held = tokio::select! {
                _ = shutdown.cancelled() => return Ok(TermEnd::Shutdown),
                probed = probe => probed.unwrap_or(Ok(false))?,
            };
            if !held && lease::try_take(conn, &lease_name, Some(&control)).await? {
                break;
            }
            if !said {
                tracing::info!(lease = %lease_name, "another scheduler leads; standing by");
                said = true;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(TermEnd::Shutdown),
                _ = tokio::time::sleep(STANDBY_POLL) => {}
            }
            if !session.is_connected() {
                return Err(Error::Internal("the scheduler's connection closed".into()));
            }
        }
        tracing::info!(lease = %lease_name, schedules = self.settings.schedules.len(), "leading the schedules");
        metrics::gauge!("warren_scheduler_leading").set(1.0);
        Term::new(&self.settings, session, &lease_name)
            .run(shutdown)
            .await
    }
}

/// Errors a reconnect cannot mend.
fn fatal(e: &Error) -> bool {
    // A work queue deleted under a leader is declared again by the next session.
    (e.is_usage() && !matches!(e, Error::MissingQueue { .. }))
        || matches!(e, Error::Refused { .. } | Error::TopologyConflict(_))
}
