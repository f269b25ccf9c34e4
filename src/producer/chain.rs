//! Chains: a task and the task types that run after it, each with the previous result as its
//! payload ([`EnqueueOptions::then`]).

use std::time::Duration;

use serde::de::DeserializeOwned;

use super::wait::decode;
use super::{EnqueueOptions, Producer, serialize};
use crate::error::Result;
use crate::task::Task;

impl Producer {
    /// A chain that starts with `first`: add steps with [`Chain::then`], then
    /// [`Chain::enqueue`] it or [`Chain::call`] it (wait for the last step's result).
    ///
    /// ```no_run
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Serialize, Deserialize)] struct Fetch { url: String }
    /// # impl warren::Task for Fetch { const NAME: &'static str = "fetch"; }
    /// # #[derive(Serialize, Deserialize)] struct Parse;
    /// # impl warren::Task for Parse { const NAME: &'static str = "parse"; }
    /// # async fn example(producer: warren::Producer) -> warren::Result<()> {
    /// let words: u64 = producer
    ///     .chain(&Fetch { url: "https://example.com".into() })
    ///     .then::<Parse>()
    ///     .call(std::time::Duration::from_secs(30))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn chain<T: Task>(&self, first: &T) -> Chain<'_> {
        Chain {
            producer: self,
            task: T::NAME,
            body: serialize(first),
            options: EnqueueOptions::default(),
        }
    }
}

/// A chain of tasks being built ([`Producer::chain`]): each step runs once the previous one
/// succeeded, with its result as the payload.
#[derive(Debug)]
pub struct Chain<'a> {
    producer: &'a Producer,
    task: &'static str,
    body: Result<Vec<u8>>,
    options: EnqueueOptions,
}

impl Chain<'_> {
    /// Runs task type `U` next, with the previous step's result as its payload (which must
    /// decode as a `U`).
    pub fn then<U: Task>(mut self) -> Self {
        self.options.then.push(U::NAME.to_string());
        self
    }

    /// The first task's options (delay, expiry, id, …); the steps added stay.
    pub fn options(mut self, options: EnqueueOptions) -> Self {
        let then = std::mem::take(&mut self.options.then);
        self.options = EnqueueOptions {
            then: [then, options.then].concat(),
            ..options
        };
        self
    }

    /// Enqueues the chain's first task; returns its id (the chain's: every step has it).
    ///
    /// # Errors
    /// As [`Producer::enqueue_raw`].
    pub async fn enqueue(self) -> Result<String> {
        let body = self.body?;
        self.producer
            .enqueue_raw(self.task, body, self.options)
            .await
    }

    /// Enqueues the chain and waits up to `timeout` for its last step's result, or the
    /// outcome of the step that died.
    ///
    /// # Errors
    /// As [`Producer::call`].
    pub async fn call<R: DeserializeOwned>(self, timeout: Duration) -> Result<R> {
        let body = self.body?;
        let (id, answer) = self
            .producer
            .enqueue_wait_raw(self.task, body, self.options, timeout)
            .await?;
        decode(self.task, id, answer)
    }
}
