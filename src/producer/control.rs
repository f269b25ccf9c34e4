//! Cancel, pause and resume from a producer: events on the control stream ([`crate::control`]).

use super::Producer;
use crate::control::events::{self, Event};
use crate::control::limits::{self, Change, Limits};
use crate::error::{Error, Result};
use crate::topology::validate_task_name;

/// Ids per cancel event: a cancel of many ids goes out as several events of this many.
const IDS_PER_EVENT: usize = 1000;

impl Producer {
    /// Cancels tasks `ids` of type `task`: one that has not started never starts (it goes
    /// dead as `cancelled` when a worker receives it, a delayed one when its delay ends), a
    /// running one has its [`crate::worker::TaskContext::cancel`] fired and goes dead as `cancelled`.
    /// Holds for `cancel_retention`, across worker restarts. An unknown or finished id is not
    /// an error. Returns once the broker holds the cancel.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a bad task name or id; [`Error::MissingExchange`] when the
    /// topology (its control stream) is not applied; broker errors.
    pub async fn cancel(&self, task: &str, ids: &[String]) -> Result<()> {
        validate_task_name(task).map_err(Error::InvalidInput)?;
        if let Some(bad) = ids
            .iter()
            .find(|id| id.is_empty() || id.len() > super::prepare::TASK_ID_MAX)
        {
            return Err(Error::InvalidInput(format!(
                "task id `{bad}` must be 1 to {} bytes",
                super::prepare::TASK_ID_MAX
            )));
        }
        for chunk in ids.chunks(IDS_PER_EVENT) {
            let event = Event::Cancel {
                task: task.to_string(),
                ids: chunk.to_vec(),
            };
            self.control(event).await?;
        }
        Ok(())
    }

    /// Pauses task type `task`: every worker stops starting it (tasks wait in the broker),
    /// workers started later included, until [`Producer::resume`]. Runs in progress finish.
    ///
    /// # Errors
    /// As [`Producer::cancel`].
    pub async fn pause(&self, task: &str) -> Result<()> {
        validate_task_name(task).map_err(Error::InvalidInput)?;
        let event = Event::Pause {
            task: task.to_string(),
        };
        self.control(event).await
    }

    /// Resumes task type `task` after [`Producer::pause`].
    ///
    /// # Errors
    /// As [`Producer::cancel`].
    pub async fn resume(&self, task: &str) -> Result<()> {
        validate_task_name(task).map_err(Error::InvalidInput)?;
        let event = Event::Resume {
            task: task.to_string(),
        };
        self.control(event).await
    }

    /// The limits declared for `task` in this producer's topology.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a type the topology does not declare.
    pub fn declared_limits(&self, task: &str) -> Result<Limits> {
        let t = self
            .inner
            .settings
            .tasks
            .get(task)
            .ok_or_else(|| Error::InvalidInput(format!("no task `{task}` in the topology")))?;
        Ok(Limits {
            concurrency: t.concurrency_limit,
            rate: t.rate_limit,
        })
    }

    /// The limits in force for `task` across its workers: the last [`Producer::set_limits`]
    /// or `topology apply`, else the topology's.
    ///
    /// # Errors
    /// As [`Producer::declared_limits`]; broker errors.
    pub async fn limits(&self, task: &str) -> Result<Limits> {
        let declared = self.declared_limits(task)?;
        let conn = self.inner.publisher.connection().await?;
        let recorded = limits::read_record(&conn, self.inner.routes.names(), task).await?;
        Ok(recorded.map_or(declared, |r| r.within(declared)))
    }

    /// Puts `to` in force for `task`'s running workers, within a second or so: a raise adds
    /// tokens at once; a lowering lets the runs in progress finish, starting no new one above
    /// the new limit ([`crate::control::limits`]). Holds until the next change or
    /// `topology apply` (which puts the topology file's limits back), across restarts.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a type the topology does not declare, or one whose kinds of
    /// limit `to` changes (adding or removing a limit needs the topology and a restart);
    /// broker errors.
    pub async fn set_limits(&self, task: &str, to: Limits) -> Result<Change> {
        let declared = self.declared_limits(task)?;
        let conn = self.inner.publisher.connection().await?;
        limits::set(&conn, self.inner.routes.names(), task, declared, to).await
    }

    async fn control(&self, event: Event) -> Result<()> {
        let conn = self.inner.publisher.connection().await?;
        events::publish(&conn, self.inner.routes.names(), event).await
    }
}
