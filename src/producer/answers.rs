//! Answers to waiting callers, over RabbitMQ's direct reply-to: the tasks a caller waits for
//! are published on a channel that also consumes `amq.rabbitmq.reply-to` (no queue is
//! created per call or per caller), and each answer is handed to the wait registered under
//! its task id.
//!
//! Direct reply-to is at most once: an answer comes only to the channel the task was
//! published on, while that channel lives. A lost connection loses the answers to what was
//! confirmed on it: those waits end at once with [`crate::error::WaitFailure::AnswerLost`]
//! (the tasks still run), rather than at their timeout. A task whose confirm the loss cut
//! off is published again on the next channel, and its answer comes there. A task that ran
//! twice may answer twice: the first answer wins, the second finds no wait and is dropped.
//!
//! Each listening channel has a number; a wait records the number of the channel its task
//! was confirmed on, and the end of that channel's consumer ends those waits (a confirm that
//! arrives after its channel's end ends its wait at once).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use futures_util::StreamExt;
use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::wire::answer::{self, Answer};

pub(crate) use crate::wire::answer::DIRECT_REPLY_TO;

/// A wait in progress.
#[derive(Debug)]
struct Wait {
    /// The task's name: an answer must be of the same type (a caller's own id may be reused
    /// across types); `None` for a chain, whose steps share the id.
    task: Option<String>,
    /// Where its answer goes. Dropped unsent when the answer can no longer come.
    tx: oneshot::Sender<Answer>,
    /// The listening channel its task was confirmed on, once it was.
    channel: Option<u64>,
}

/// The waits in progress and the listening channels' numbers.
#[derive(Debug, Default)]
struct Waiting {
    by_id: HashMap<String, Wait>,
    /// Channels whose consumer has ended.
    ended: HashSet<u64>,
    /// The number of the next channel to listen.
    next_channel: u64,
}

/// The waits in progress, by task id.
#[derive(Debug, Default)]
pub(super) struct Answers {
    waiting: Mutex<Waiting>,
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
            let matches = |w: &Wait| match (&w.task, kind.as_deref()) {
                (Some(wanted), Some(k)) => wanted == k,
                _ => true,
            };
            match id.as_deref() {
                Some(id) if waiting.by_id.get(id).is_some_and(matches) => waiting.by_id.remove(id),
                _ => None,
            }
        };
        match waiter {
            Some(wait) => {
                let _ = wait.tx.send(answer);
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
        if waiting.by_id.contains_key(id) {
            return Err(Error::InvalidInput(format!(
                "this producer already waits for task id `{id}`; wait once per id"
            )));
        }
        let (tx, rx) = oneshot::channel();
        let wait = Wait {
            task: task.map(str::to_string),
            tx,
            channel: None,
        };
        waiting.by_id.insert(id.to_string(), wait);
        Ok(rx)
    }

    /// Records that task `id` was confirmed on listening channel `channel`: its answer can
    /// come only there. When that channel has ended already, the wait ends now.
    pub(super) fn confirmed_on(&self, id: &str, channel: u64) {
        let mut waiting = self.lock();
        if waiting.ended.contains(&channel) {
            waiting.by_id.remove(id);
        } else if let Some(wait) = waiting.by_id.get_mut(id) {
            wait.channel = Some(channel);
        }
    }

    /// Gives up the wait for `id` (timed out, or the task was never published).
    pub(super) fn forget(&self, id: &str) {
        self.lock().by_id.remove(id);
    }

    /// Ends the waits whose answers would come on `channel`, which has ended; returns how
    /// many.
    fn channel_ended(&self, channel: u64) -> usize {
        let mut waiting = self.lock();
        waiting.ended.insert(channel);
        let before = waiting.by_id.len();
        waiting.by_id.retain(|_, w| w.channel != Some(channel));
        before - waiting.by_id.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Consumes direct reply-to on `ch` and hands each answer to its wait, until the channel
    /// closes. Call on a new publishing channel before publishing on it; returns the
    /// channel's number for [`Answers::confirmed_on`].
    ///
    /// # Errors
    /// The broker's refusal of the consumer.
    pub(super) async fn listen(self: std::sync::Arc<Self>, ch: &Channel) -> lapin::Result<u64> {
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
        let channel = {
            let mut waiting = self.lock();
            waiting.next_channel += 1;
            waiting.next_channel
        };
        tokio::spawn(self.deliver(consumer, channel));
        Ok(channel)
    }

    async fn deliver(self: std::sync::Arc<Self>, mut consumer: Consumer, channel: u64) {
        while let Some(Ok(d)) = consumer.next().await {
            self.hand_over(&d.properties, &d.data);
        }
        let lost = self.channel_ended(channel);
        if lost > 0 {
            tracing::warn!(
                waits = lost,
                "the connection answers come back on was lost: the answers to {lost} task(s) \
                 confirmed on it can no longer arrive, and their waits end now (the tasks \
                 still run)"
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
        assert!(answers.lock().by_id.is_empty());
    }

    #[test]
    fn the_end_of_a_channel_ends_the_waits_confirmed_on_it_and_no_other() {
        let answers = Answers::default();
        let mut on_1 = answers.expect(Some("thumb"), "a").unwrap();
        let mut on_2 = answers.expect(Some("thumb"), "b").unwrap();
        let mut unconfirmed = answers.expect(Some("thumb"), "c").unwrap();
        answers.confirmed_on("a", 1);
        answers.confirmed_on("b", 2);
        assert_eq!(answers.channel_ended(1), 1);
        assert!(matches!(
            on_1.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
        assert!(matches!(
            on_2.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        ));
        // Not confirmed when the channel ended: published again elsewhere, still waiting.
        assert!(matches!(
            unconfirmed.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        ));
        // A confirm that arrives after its channel ended ends its wait at once.
        answers.confirmed_on("c", 1);
        assert!(matches!(
            unconfirmed.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
        assert_eq!(answers.lock().by_id.len(), 1);
    }
}
