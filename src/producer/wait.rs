//! Waiting for outcomes: enqueue and wait for the final answer over direct reply-to
//! ([`super::answers`]), one task or a group under one timeout.

use std::time::{Duration, SystemTime};

use serde::de::DeserializeOwned;

use super::answers::{self, Answers};
use super::{EnqueueOptions, Producer, one_at_a_time, serialize};
use crate::error::{Error, Result, WaitFailure};
use crate::task::Task;
use crate::wire::answer::Answer;
use crate::wire::copies::Outgoing;

impl Producer {
    /// Enqueues `task` and waits up to `timeout` for its final outcome: the value its handler
    /// returned, decoded as `R`. Retries in between do not answer; the final outcome does,
    /// once. The answer comes over direct reply-to (no queue per call): at most once, and lost
    /// if this producer's connection drops meanwhile, which ends the wait at once with
    /// [`WaitFailure::AnswerLost`]; the task itself runs at least once either way.
    ///
    /// # Errors
    /// [`Error::Wait`]: [`WaitFailure::TimedOut`] (the task is enqueued and may still run),
    /// [`WaitFailure::AnswerLost`] (the connection died after the task was enqueued),
    /// [`WaitFailure::Dead`] (its reason and error), [`WaitFailure::UndecodableResult`] (with
    /// the raw answer); [`Error::InvalidInput`] for a broadcast type or options with a
    /// `reply_to`; and the errors of [`Producer::enqueue_raw`].
    pub async fn call<T: Task, R: DeserializeOwned>(
        &self,
        task: &T,
        options: EnqueueOptions,
        timeout: Duration,
    ) -> Result<R> {
        let body = serialize(task)?;
        let (id, answer) = self
            .enqueue_wait_raw(T::NAME, body, options, timeout)
            .await?;
        decode(T::NAME, id, answer)
    }

    /// Enqueues a group of tasks and waits up to `timeout` (for all of them together) for each
    /// one's outcome, as [`Producer::call`]; one result per task, in input order.
    pub async fn call_many<T: Task, R: DeserializeOwned>(
        &self,
        tasks: impl IntoIterator<Item = T>,
        timeout: Duration,
    ) -> Vec<Result<R>> {
        let items = tasks.into_iter().map(|t| {
            (
                T::NAME.to_string(),
                serialize(&t),
                EnqueueOptions::default(),
            )
        });
        self.enqueue_many_wait_raw(items, timeout)
            .await
            .into_iter()
            .map(|r| r.and_then(|(id, answer)| decode(T::NAME, id, answer)))
            .collect()
    }

    /// Enqueues a JSON `body` as task `task` and waits up to `timeout` for its final outcome;
    /// returns its id and the answer, [`Answer::Dead`] included.
    ///
    /// # Errors
    /// As [`Producer::call`], except that a dead task is an answer here, not an error.
    pub async fn enqueue_wait_raw(
        &self,
        task: &str,
        body: Vec<u8>,
        options: EnqueueOptions,
        timeout: Duration,
    ) -> Result<(String, Answer)> {
        let item = (task.to_string(), Ok(body), options);
        let mut results = self.enqueue_many_wait_raw([item], timeout).await;
        results.pop().unwrap_or_else(|| {
            Err(Error::Internal(
                "waiting for one task gave no result".into(),
            ))
        })
    }

    /// As [`Producer::enqueue_wait_raw`] for many tasks, pipelined; `timeout` bounds the whole
    /// call, publishing included. One result per task, in input order.
    pub async fn enqueue_many_wait_raw(
        &self,
        items: impl IntoIterator<Item = (String, Result<Vec<u8>>, EnqueueOptions)>,
        timeout: Duration,
    ) -> Vec<Result<(String, Answer)>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let answers = &self.inner.answers;
        // Every wait still registered when this call ends is forgotten, however it ends (a
        // caller that drops this future included).
        let mut registered = Forget {
            answers,
            ids: Vec::new(),
        };
        let mut slots = Vec::new();
        let mut messages = Vec::new();
        for (task, body, options) in items {
            let prepared = body
                .and_then(|b| self.prepare_awaited(&task, b, options))
                .and_then(|out| {
                    // A chain answers from its last step, or from whichever step died.
                    let kind = crate::wire::decode::chain_of(&out.properties)
                        .map_or(true, |c| c.is_empty())
                        .then_some(task.as_str());
                    Ok((answers.expect(kind, &out.id)?, out))
                });
            slots.push(prepared.map(|(rx, out)| {
                registered.ids.push(out.id.clone());
                let slot = (task, out.id.clone(), rx);
                messages.push(Ok(out));
                slot
            }));
        }
        let publishing = self.inner.waiter.publish_all(messages.into_iter());
        // Publishing may retry a lost connection: it counts against the wait too.
        let mut published = tokio::time::timeout_at(deadline, publishing)
            .await
            .map(Vec::into_iter);
        let after = crate::duration::duration_text(timeout);
        let timed_out = |task: String, id: String| {
            Error::Wait(WaitFailure::TimedOut {
                task,
                id,
                after: after.clone(),
            })
        };
        let mut results = Vec::with_capacity(slots.len());
        for slot in slots {
            let result = match slot {
                Err(e) => Err(e),
                Ok((task, id, mut rx)) => match published.as_mut().map(Iterator::next) {
                    Err(_) => Err(timed_out(task, id)),
                    Ok(None) => Err(Error::Internal(format!("task {id} has no publish result"))),
                    Ok(Some(Err(e))) => Err(e),
                    Ok(Some(Ok(_))) => match tokio::time::timeout_at(deadline, &mut rx).await {
                        Ok(Ok(answer)) => Ok((id, answer)),
                        // The sender goes unsent only when the answer can no longer come.
                        Ok(Err(_)) => Err(Error::Wait(WaitFailure::AnswerLost { task, id })),
                        Err(_) => {
                            answers.forget(&id);
                            // It may have come between the deadline and the forget.
                            match rx.try_recv() {
                                Ok(answer) => Ok((id, answer)),
                                Err(_) => Err(timed_out(task, id)),
                            }
                        }
                    },
                },
            };
            results.push(result);
        }
        results
    }

    /// Prepares a task a caller waits for: its answer comes over direct reply-to.
    fn prepare_awaited(
        &self,
        task: &str,
        body: Vec<u8>,
        mut options: EnqueueOptions,
    ) -> Result<Outgoing> {
        if options.unique_key.is_some() {
            return Err(one_at_a_time());
        }
        if options.reply_to.is_some() {
            return Err(Error::InvalidInput(
                "waiting answers over direct reply-to; for answers in a queue you named, \
                 enqueue with EnqueueOptions::reply_to and read that queue"
                    .into(),
            ));
        }
        options.reply_to = Some(answers::DIRECT_REPLY_TO.to_string());
        self.preparer(true)
            .message(task, body, options, SystemTime::now())
    }
}

/// The caller's result from an answer: the value decoded as `R`, or why there is none.
pub(super) fn decode<R: DeserializeOwned>(task: &str, id: String, answer: Answer) -> Result<R> {
    match answer {
        Answer::Succeeded(body) => serde_json::from_slice(&body).map_err(|e| {
            Error::Wait(WaitFailure::UndecodableResult {
                task: task.to_string(),
                id,
                error: e.to_string(),
                raw: String::from_utf8_lossy(&body).into_owned(),
            })
        }),
        Answer::Dead {
            reason,
            error,
            task: step,
            ..
        } => Err(Error::Wait(WaitFailure::Dead {
            task: step.unwrap_or_else(|| task.to_string()),
            id,
            reason,
            error,
        })),
    }
}

/// Forgets the waits of `ids` when dropped (those answered are gone already).
struct Forget<'a> {
    answers: &'a Answers,
    ids: Vec<String>,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        for id in &self.ids {
            self.answers.forget(id);
        }
    }
}
