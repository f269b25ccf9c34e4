//! Cancel, pause and resume from a producer: events on the control stream ([`crate::control`]).

use super::Producer;
use crate::control::events::{self, Event};
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

    async fn control(&self, event: Event) -> Result<()> {
        let conn = self.inner.publisher.connection().await?;
        events::publish(&conn, self.inner.routes.names(), event).await
    }
}
