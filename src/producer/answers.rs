//! Answers to waiting callers, over RabbitMQ's direct reply-to: the tasks a caller waits for
//! are published on a channel that also consumes `amq.rabbitmq.reply-to` (no queue is
//! created per call or per caller), and each answer is handed to the wait registered under
//! its task id.
//!
//! Direct reply-to is at most once: an answer comes only to the channel the task was
//! published on, while that channel lives. A lost connection loses the answers to what was
//! published before it (those waits time out; the tasks still run), and a task that ran
//! twice may answer twice: the first answer wins, the second finds no wait and is dropped.

use std::collections::HashMap;
use std::sync::Mutex;

use futures_util::StreamExt;
use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::wire::answer::{self, Answer};

/// The pseudo-queue of direct reply-to: consumed (no-ack) and named in `reply_to`.
pub(crate) const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// The waits in progress, by task id.
#[derive(Debug, Default)]
pub(super) struct Answers {
    waiting: Mutex<HashMap<String, oneshot::Sender<Answer>>>,
}

impl Answers {
    /// Registers a wait for task `id`'s answer (before the task is published: the answer may
    /// come back before the confirm does).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when this producer already waits for that id.
    pub(super) fn expect(&self, id: &str) -> Result<oneshot::Receiver<Answer>> {
        let mut waiting = self.lock();
        if waiting.contains_key(id) {
            return Err(Error::InvalidInput(format!(
                "this producer already waits for task id `{id}`; wait once per id"
            )));
        }
        let (tx, rx) = oneshot::channel();
        waiting.insert(id.to_string(), tx);
        Ok(rx)
    }

    /// Gives up the wait for `id` (timed out, or the task was never published).
    pub(super) fn forget(&self, id: &str) {
        self.lock().remove(id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Answer>>> {
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Consumes direct reply-to on `ch` and hands each answer to its wait, until the channel
    /// closes. Call on a new publishing channel before publishing on it.
    ///
    /// # Errors
    /// The broker's refusal of the consumer.
    pub(super) async fn listen(self: std::sync::Arc<Self>, ch: &Channel) -> lapin::Result<()> {
        let consumer = ch
            .basic_consume(
                DIRECT_REPLY_TO.into(),
                "warren-answers".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        tokio::spawn(self.deliver(consumer));
        Ok(())
    }

    async fn deliver(self: std::sync::Arc<Self>, mut consumer: Consumer) {
        while let Some(Ok(d)) = consumer.next().await {
            let id = d
                .properties
                .correlation_id()
                .as_ref()
                .map(|s| s.to_string());
            let waiter = id.as_deref().and_then(|id| self.lock().remove(id));
            match (waiter, answer::read(&d.properties, &d.data)) {
                (Some(waiter), Some(answer)) => {
                    let _ = waiter.send(answer);
                }
                (Some(_), None) => {
                    tracing::warn!(task.id = ?id, "a reply without `warren-outcome` is not an answer; dropped")
                }
                (None, _) => {
                    tracing::debug!(task.id = ?id, "an answer nobody waits for (a second run's, or after a timeout); dropped")
                }
            }
        }
        if !self.lock().is_empty() {
            tracing::warn!(
                "the channel answers come on closed: answers to tasks enqueued on it are lost \
                 (their waits time out; the tasks still run)"
            );
        }
    }
}
