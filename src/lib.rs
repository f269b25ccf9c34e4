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
//! Module map (the library knows no command line; the `warren` binary in `src/bin/warren/`
//! uses only what is public here):
//!
//! | module | owns | pure? |
//! |---|---|---|
//! | [`config`] | [`Settings`]: defaults < topology file < environment < flags, `validate` | yes |
//! | [`task`] | the [`Task`] trait, [`TaskError`] | yes |
//! | [`retry`] | [`retry::TaskPolicy`] and its backoff, `decide` after a failed attempt | yes |
//! | [`wire`] | the message format: encode ([`wire::Envelope`]), [`wire::decode`], the retry, dead and replay [`wire::copies`], [`wire::Reason`] | yes |
//! | [`topology`] | [`topology::names`], the delay [`topology::ladder`], every [`topology::routes`] route, the declaration [`topology::plan`]; [`topology::declare`] sends it | all but `declare` |
//! | [`broker`] | named connections, bounded retries, [`broker::Session`] (connect, declare, one bounded close), the pool | no |
//! | [`producer`] | [`Producer`]: message preparation (pure), the confirm pipeline | partly |
//! | [`worker`] | [`Worker`]: sessions and reconnects, consumers, one delivery's shell, the outcome decision (pure), acks, metrics | partly |
//! | [`schedule`] | periodic tasks: slots of a cron or period ([`schedule::cadence`], pure), the firing message (pure), the leader's lease and term, the records | partly |
//! | [`control`] | limits across workers ([`control::limits`], pure; the token queues), the control stream of cancels and pauses, a worker's view of it | partly |
//! | [`ops`] | the management HTTP API, `status`, `dlq` and `schedules` as functions returning data | partly |
//! | [`trace`] | W3C `traceparent` carried from producer to handler | yes |
//! | [`error`] | [`Error`]: facts, no command-line advice; `is_transient`, `is_usage` | yes |
//!
//! lapin is called only from `broker`, `topology::declare`, `producer`, `worker`, `schedule`,
//! `control` and `ops::dlq`. Performance figures live in `docs/performance.md`, not in comments.

#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    clippy::unwrap_in_result
)]

pub mod broker;
pub mod cadence;
pub mod config;
pub mod control;
pub mod duration;
pub mod error;
pub mod limits;
pub mod ops;
pub mod producer;
pub mod retry;
pub mod schedule;
pub mod task;
pub mod topology;
pub mod trace;
pub mod wire;
pub mod worker;

pub use config::Settings;
pub use error::{Error, Result};
pub use producer::{Chain, EnqueueOptions, Producer};
pub use task::{Task, TaskError};
pub use topology::QueueType;
pub use worker::{TaskContext, Worker};
