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
//! # Layers
//!
//! The modules stand on floors, and **a module imports only from floors below its own**:
//! no circle, no arrow back up. The `warren` binary in `src/bin/warren/` uses only what is
//! public here. `tests/it/layers.rs` reads this table and checks every `use` of the crate
//! against it, so the table and the code cannot drift apart.
//!
//! | floor | modules | owns |
//! |---|---|---|
//! | 1 | [`error`], [`duration`], [`retry`], [`trace`] | [`Error`] (facts, no command-line advice); durations as people write them; [`retry::TaskPolicy`] and `decide`; W3C `traceparent` |
//! | 2 | [`broker`], [`task`], [`cadence`], [`limits`] | URLs, named connections, [`broker::Session`], [`broker::Pool`], closing, the exclusive-queue lease, passive inspect; the [`Task`] trait; a schedule's slots; rate limits as numbers |
//! | 3 | [`topology`] | names, the delay ladder, routes, the declaration plan (pure); `declare` and `teardown` send it |
//! | 4 | [`config`], [`wire`] | [`Settings`]: defaults < topology file < environment < flags; the message format: encode, decode, copies |
//! | 5 | [`control`], [`schedule`] | limit tokens, the control stream of cancels and pauses; the scheduler's lease, firings, records |
//! | 6 | [`producer`] | [`Producer`]: prepare (pure), confirm pipeline, unique keys, waiting, chains |
//! | 7 | [`worker`], [`ops`] | [`Worker`]: sessions, consumers, one delivery, the outcome (pure), settling, acks; the management API, status, dlq, schedules, capacity |
//! | 8 | `lib.rs` | this face: re-exports only; nothing inside the crate imports it |
//!
//! Two rules ride on the floors: **nothing below floor 4 names [`Settings`]** (the broker and
//! the topology take a URL, a role, a deadline, a [`topology::Layout`]), and **only
//! [`broker`], `topology::{declare, teardown}` and floors 5 and up talk to the broker**;
//! below that, lapin's types appear only as values (`wire` builds `BasicProperties`, `error`
//! carries `lapin::Error`). The design, with each decision and its reason, is in
//! `docs/design.md`; the wire format in `docs/wire-format.md`; performance figures live in
//! `docs/performance.md`, not in comments.

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
