//! One term as leader: catch up from the records, then fire each slot as it comes, on the
//! connection that holds the lease, until the lease or the connection is lost or shutdown.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use tokio_util::sync::CancellationToken;

use super::cadence::CATCH_UP_MAX;
use super::{firing, lease, record};
use crate::broker::{Session, close_channel};
use crate::config::Settings;
use crate::error::{Error, Result};

/// Longest a leader sleeps without looking at its connection and the time: a lost connection
/// ends a term within this long even between two far-apart slots.
const TICK: Duration = Duration::from_secs(1);

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
            self.fire_due(Utc::now()).await?;
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

    /// Fires the slots due by `now`: the one that just came, or, after a stall longer than a
    /// period (a suspended host), the missed ones per each schedule's policy.
    async fn fire_due(&mut self, now: DateTime<Utc>) -> Result<()> {
        for (name, schedule) in &self.settings.schedules {
            let Some(cursor) = self.cursors.get(name.as_str()).copied() else {
                continue;
            };
            let (due, more) = schedule.cadence.slots_between(cursor, now, CATCH_UP_MAX);
            let firing = if due.len() > 1 || more {
                tracing::warn!(schedule = %name, missed = due.len(), catch_up = schedule.catch_up.as_str(), "the scheduler fell behind; catching up");
                schedule.catch_up.pick(&due)
            } else {
                &due[..]
            };
            for slot in firing {
                self.fire(name, *slot).await?;
            }
            self.cursors.insert(name, cursor.max(now));
        }
        Ok(())
    }

    /// Publishes one firing and waits for its confirm.
    async fn fire(&self, name: &str, slot: DateTime<Utc>) -> Result<()> {
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
