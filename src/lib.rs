//! Warren: a distributed task service on RabbitMQ.
//!
//! Typed tasks go in with publisher confirms; workers run them with manual acks and prefetch;
//! delays, retries, expiry and dead letters are held *in the broker*, never in worker memory,
//! so any worker can die at any moment and nothing is lost.
//!
//! ```text
//! Producer ──confirm──▶ {ns}.tasks ──▶ {ns}.{task} ──prefetch──▶ Worker ─┬─ ok ─────────▶ ack
//!    │ delay > 0                          ▲   │ expired / delivery limit  ├─ retryable ──▶ ladder (confirm) ▶ ack
//!    └──▶ {ns}.delay.L … {ns}.delay.0 ────┘   ▼                           └─ permanent ──▶ {ns}.dead (confirm) ▶ ack
//!         (level n holds 2^n s)          {ns}.dead ──▶ {ns}.{task}.dead
//! ```
//!
//! Module map:
//! - [`config`]: settings from `topology/warren.toml`, environment and flags (pure).
//! - [`topology`]: names, the delay ladder and the declaration plan (pure), and `apply`.
//! - [`wire`]: the message format: properties and headers (pure).
//! - [`task`]: the [`Task`] trait and [`TaskError`].
//! - [`broker`]: named connections, bounded retries, the pool.
//! - [`producer`]: confirmed enqueue, delays, expiry, bulk.
//! - [`retry`]: retry decisions from the attempt number (pure).
//! - [`worker`]: consumers, handlers, acks after confirmed outcomes, reconnects, shutdown.
//! - [`status`], [`dlq`]: what operators read and repair.
//! - [`management`]: the RabbitMQ management HTTP API.
//! - [`cli`]: the `warren` command.

#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    clippy::unwrap_in_result
)]

pub mod broker;
pub mod config;
pub mod error;
pub mod ops;
pub mod producer;
pub mod retry;
pub mod task;
pub mod topology;
pub mod trace;
pub mod wire;
pub mod worker;

pub use config::Settings;
pub use error::{Error, Result};
pub use producer::{EnqueueOptions, Producer};
pub use task::{Task, TaskError};
pub use topology::QueueType;
pub use worker::{TaskContext, Worker};
