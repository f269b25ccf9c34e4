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

pub(crate) use crate::wire::answer::DIRECT_REPLY_TO;

/// A wait in progress: the task's name (an answer must be of the same type: a caller's own
/// id may be reused across types; `None` for a chain, whose steps share the id) and where
/// its answer goes.
type Wait = (Option<String>, oneshot::Sender<Answer>);

/// The waits in progress, by task id.
#[derive(Debug, Default)]
pub(super) struct Answers {
    waiting: Mutex<HashMap<String, Wait>>,
}

impl Answers {
    /// Gives the answer in a reply to its wait; anything else is dropped (logged at debug):
    /// a reply that is no answer, one for an id nobody waits for (a second run's, or after a
    /// timeout), or one of another task type than the wait's.
    fn hand_over(&self, props: &lapin::BasicProperties, body: &[u8]) {
        let id = props.correlation_id().as_ref().map(|s| s.to_string());
        let Some(answer) = answer::read(props, body) else {
            tracing::debug!(task.id = ?id, "a reply without `warren-outcome` is not an answer; dropped");
            return;
        };
        let kind = props.kind().as_ref().map(|k| k.to_string());
        let waiter = {
            let mut waiting = self.lock();
            let matches = |w: &Wait| match (&w.0, kind.as_deref()) {
                (Some(wanted), Some(k)) => wanted == k,
                _ => true,
            };
            match id.as_deref() {
                Some(id) if waiting.get(id).is_some_and(matches) => waiting.remove(id),
                _ => None,
            }
        };
        match waiter {
            Some((_, tx)) => {
                let _ = tx.send(answer);
            }
            None => tracing::debug!(task.id = ?id, "an answer nobody waits for; dropped"),
        }
    }

    /// Registers a wait for task `id`'s answer (before the task is published: the answer may
    /// come back before the confirm does).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when this producer already waits for that id.
    pub(super) fn expect(&self, task: Option<&str>, id: &str) -> Result<oneshot::Receiver<Answer>> {
        let mut waiting = self.lock();
        if waiting.contains_key(id) {
            return Err(Error::InvalidInput(format!(
                "this producer already waits for task id `{id}`; wait once per id"
            )));
        }
        let (tx, rx) = oneshot::channel();
        waiting.insert(id.to_string(), (task.map(str::to_string), tx));
        Ok(rx)
    }

    /// Gives up the wait for `id` (timed out, or the task was never published).
    pub(super) fn forget(&self, id: &str) {
        self.lock().remove(id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Wait>> {
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
            self.hand_over(&d.properties, &d.data);
        }
        if !self.lock().is_empty() {
            tracing::warn!(
                "the channel answers come on closed: answers to tasks enqueued on it are lost \
                 (their waits time out; the tasks still run)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Envelope;

    fn answer_to(task: &str, id: &str, value: &[u8]) -> crate::wire::copies::Outgoing {
        let mut env = Envelope::new(id.into(), task);
        env.reply_to = Some(format!("{DIRECT_REPLY_TO}.x"));
        answer::succeeded(&env, value.to_vec()).unwrap()
    }

    #[test]
    fn an_answer_reaches_its_wait_once_and_nothing_else_does() {
        let answers = Answers::default();
        let mut rx = answers.expect(Some("thumb"), "id-1").unwrap();
        assert!(
            answers.expect(Some("thumb"), "id-1").is_err(),
            "one wait per id"
        );
        // Not an answer (no `warren-outcome`): the wait stays.
        let other = lapin::BasicProperties::default().with_correlation_id("id-1".into());
        answers.hand_over(&other, b"{}");
        // Another type's answer under the same id: the wait stays.
        let foreign = answer_to("resize", "id-1", b"7");
        answers.hand_over(&foreign.properties, &foreign.body);
        assert!(rx.try_recv().is_err(), "still waiting");
        let mine = answer_to("thumb", "id-1", b"42");
        answers.hand_over(&mine.properties, &mine.body);
        assert_eq!(rx.try_recv().unwrap(), Answer::Succeeded(b"42".to_vec()));
        // A second answer for the id finds no wait, and a new wait may be made.
        answers.hand_over(&mine.properties, &mine.body);
        assert!(answers.expect(Some("thumb"), "id-1").is_ok());
        answers.forget("id-1");
        assert!(answers.lock().is_empty());
    }
}
