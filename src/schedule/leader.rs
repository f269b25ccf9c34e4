//! One term as leader: catch up from the records, then fire each slot as it comes, on the
//! connection that holds the lease, until the lease or the connection is lost or shutdown.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use tokio_util::sync::CancellationToken;

use super::{firing, record};
use crate::broker::lease;
use crate::broker::{Session, close_channel};
use crate::cadence::CATCH_UP_MAX;
use crate::config::Settings;
use crate::error::{Error, Result};

/// Longest a leader sleeps without looking at its connection and the time: a lost connection
/// ends a term within this long even between two far-apart slots.
const TICK: Duration = Duration::from_secs(1);

/// Longest one firing's publish may wait for its confirm before the term ends.
const FIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a term ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TermEnd {
    /// Shutdown was asked for.
    Shutdown,
    /// The lease is no longer this connection's (deleted by hand); step down and reconnect.
    LeaseLost,
}

/// A leader's state: the session holding the lease and each schedule's cursor (the latest
/// time whose slots are done).
pub(super) struct Term<'a> {
    pub(super) settings: &'a Settings,
    pub(super) session: &'a Session,
    pub(super) lease: &'a str,
    cursors: BTreeMap<&'a str, DateTime<Utc>>,
    channel: Option<lapin::Channel>,
}

impl<'a> Term<'a> {
    pub(super) fn new(settings: &'a Settings, session: &'a Session, lease: &'a str) -> Term<'a> {
        Term {
            settings,
            session,
            lease,
            cursors: BTreeMap::new(),
            channel: None,
        }
    }

    /// Runs the term until it ends.
    ///
    /// # Errors
    /// A lost connection or a refused firing: the caller closes the session (freeing the
    /// lease for another scheduler) and starts over.
    pub(super) async fn run(mut self, shutdown: &CancellationToken) -> Result<TermEnd> {
        let ch = self.session.channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|source| Error::Amqp {
                operation: "putting the scheduler's channel in confirm mode".into(),
                source,
            })?;
        self.channel = Some(ch);
        let result = self.lead(shutdown).await;
        if let Some(ch) = &self.channel {
            close_channel(ch, "leader stepping down").await;
        }
        result
    }

    async fn lead(&mut self, shutdown: &CancellationToken) -> Result<TermEnd> {
        self.catch_up().await?;
        loop {
            let next = self.next_slot();
            if let Some(end) = self.wait_until(next, shutdown).await? {
                return Ok(end);
            }
            if !lease::still_held(self.session.connection(), self.lease).await {
                tracing::warn!(lease = %self.lease, "the scheduler lease is gone from this connection; stepping down");
                return Ok(TermEnd::LeaseLost);
            }
            tokio::select! {
                fired = self.fire_due(Utc::now()) => fired?,
                _ = shutdown.cancelled() => return Ok(TermEnd::Shutdown),
            }
        }
    }

    /// At the start of a term: each schedule's firings missed since its record, per its
    /// `catch_up` policy. A schedule that never fired starts with its next slot.
    async fn catch_up(&mut self) -> Result<()> {
        let settings = self.settings;
        let names = settings.layout().names;
        for (name, schedule) in &settings.schedules {
            let queue = names.schedule_record(&schedule.task, name);
            let last = record::read(self.session.connection(), &queue).await?;
            let now = Utc::now();
            let Some(last) = last else {
                tracing::info!(schedule = %name, "no firing recorded yet: starting with the next slot");
                self.cursors.insert(name, now);
                continue;
            };
            let (missed, more) = schedule.cadence.slots_between(last.slot, now, CATCH_UP_MAX);
            let firing = schedule.catch_up.pick(&missed);
            if !missed.is_empty() {
                tracing::info!(
                    schedule = %name,
                    last = %last.task_id,
                    missed = missed.len(),
                    firing = firing.len(),
                    catch_up = schedule.catch_up.as_str(),
                    "catching up firings missed while no scheduler led"
                );
            }
            if more {
                tracing::warn!(schedule = %name, kept = CATCH_UP_MAX, "more firings were missed than catch-up fires; the oldest are skipped");
            }
            for slot in firing {
                self.fire(name, *slot).await?;
            }
            // Never before the record: a host whose clock is behind the last leader's must
            // not fire that slot again.
            self.cursors.insert(name, now.max(last.slot));
        }
        Ok(())
    }

    /// The earliest next slot over every schedule; `None` when no schedule has one.
    fn next_slot(&self) -> Option<DateTime<Utc>> {
        (self.settings.schedules.iter())
            .filter_map(|(name, s)| s.cadence.next_after(*self.cursors.get(name.as_str())?))
            .min()
    }

    /// Sleeps until `next` (forever when `None`), looking at the connection every [`TICK`].
    async fn wait_until(
        &self,
        next: Option<DateTime<Utc>>,
        shutdown: &CancellationToken,
    ) -> Result<Option<TermEnd>> {
        loop {
            let now = Utc::now();
            if next.is_some_and(|n| n <= now) {
                return Ok(None);
            }
            let left = next.map_or(TICK, |n| (n - now).to_std().unwrap_or_default().min(TICK));
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(Some(TermEnd::Shutdown)),
                _ = tokio::time::sleep(left) => {}
            }
            if !self.session.is_connected() {
                return Err(Error::Internal("the scheduler's connection closed".into()));
            }
        }
    }

    /// Fires every slot due by `now`, oldest first: normally the one that just came; more
    /// when this leader fell behind (a slow broker, a suspended host), at most
    /// [`CATCH_UP_MAX`]. The `catch_up` policy is for firings missed while no scheduler led;
    /// a leader that is late is still the leader, and fires what it owes.
    async fn fire_due(&mut self, now: DateTime<Utc>) -> Result<()> {
        for (name, schedule) in &self.settings.schedules {
            let Some(cursor) = self.cursors.get(name.as_str()).copied() else {
                continue;
            };
            let (due, more) = schedule.cadence.slots_between(cursor, now, CATCH_UP_MAX);
            if more {
                tracing::warn!(schedule = %name, kept = CATCH_UP_MAX, "the scheduler fell far behind; the oldest due firings are skipped");
            }
            for slot in &due {
                self.fire(name, *slot).await?;
                // Advanced per firing: a failure later on leaves the fired ones behind.
                self.cursors.insert(name, cursor.max(*slot));
            }
            self.cursors.insert(name, cursor.max(now));
        }
        Ok(())
    }

    /// Publishes one firing and waits for its confirm. A refused firing (nack) is published
    /// again, same id, after a pause, until the broker takes it: its record copy may have
    /// landed, and the next leader would not fire that slot again. Bounded by [`FIRE_TIMEOUT`]
    /// per try: a broker that holds the publish (a memory or disk alarm) ends the term.
    async fn fire(&self, name: &str, slot: DateTime<Utc>) -> Result<()> {
        let schedule = &self.settings.schedules[name];
        if !self.settings.is_broadcast(&schedule.task) {
            // The record's `BCC` route keeps `mandatory` from reporting a missing work queue.
            let queue = self.settings.layout().names.work_queue(&schedule.task);
            if !lease::still_held(self.session.connection(), &queue).await {
                return Err(Error::MissingQueue { queue });
            }
        }
        let mut pause = Duration::from_millis(500);
        loop {
            let tried = tokio::time::timeout(FIRE_TIMEOUT, self.publish(name, slot)).await;
            match tried {
                Ok(Err(Error::Refusal { .. })) => {
                    tracing::warn!(schedule = %name, "the broker refused a firing; publishing it again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(10));
                }
                Ok(done) => return done,
                Err(_) => {
                    return Err(Error::Internal(format!(
                        "firing schedule `{name}` was not confirmed within {}s",
                        FIRE_TIMEOUT.as_secs()
                    )));
                }
            }
        }
    }

    async fn publish(&self, name: &str, slot: DateTime<Utc>) -> Result<()> {
        let schedule = &self.settings.schedules[name];
        let out = firing::message(self.settings, name, schedule, slot, Utc::now());
        let Some(ch) = &self.channel else {
            return Err(Error::Internal("no scheduler channel".into()));
        };
        let amqp = |source| Error::Amqp {
            operation: format!("firing schedule `{name}`"),
            source,
        };
        let opts = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        let confirm = ch
            .basic_publish(
                out.route.exchange.as_str().into(),
                out.route.routing_key.as_str().into(),
                opts,
                &out.body,
                out.properties,
            )
            .await
            .map_err(amqp)?
            .await
            .map_err(amqp)?;
        match confirm {
            lapin::Confirmation::Ack(None) | lapin::Confirmation::NotRequested => {}
            // Routed nowhere, not even to the record: the topology lacks the record's binding.
            lapin::Confirmation::Ack(Some(_)) => {
                return Err(Error::Unroutable {
                    task: schedule.task.clone(),
                    namespace: self.settings.namespace.clone(),
                });
            }
            lapin::Confirmation::Nack(_) => {
                return Err(Error::Refusal {
                    task: schedule.task.clone(),
                });
            }
        }
        metrics::counter!("warren_schedule_firings_total", "schedule" => name.to_string())
            .increment(1);
        tracing::info!(schedule = %name, task = %schedule.task, id = %out.id, "fired");
        Ok(())
    }
}
