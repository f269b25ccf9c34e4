//! Control held in RabbitMQ: limits across every worker, durable cancels, pause and resume.
//!
//! **Cancel, pause, resume** are events appended to the control stream `{ns}.control.events`
//! ([`events`]). Every worker follows it (`follow`): at each (re)connect it replays the
//! events of the last `cancel_retention` (a stream with `x-max-age`), and knows it has caught
//! up once it reads back a marker it published itself, before it consumes a single task. So
//! a cancel holds for workers started later and across restarts, and a pause holds for a
//! worker started while paused. A pause or resume is also copied by `BCC` into the type's
//! record queue `{ns}.{task}.paused`, which keeps the last one beyond the retention.
//!
//! - A cancelled task that has not started goes dead as `cancelled` when a worker receives it
//!   (delayed ones when their delay ends); a running one has its `TaskContext`
//!   `cancel` token fired, is given a second, and goes dead as `cancelled`. Dead, so it stays
//!   visible and replayable; a replay after the cancel runs.
//! - A paused type's consumers are cancelled on every worker (what they had prefetched goes
//!   back to the queue unstarted); tasks wait in the broker until the resume.
//!
//! **Limits** ([`crate::limits`], `tokens`): tokens in a queue, held by workers as unacked
//! deliveries, which the broker returns when a worker's connection dies.

pub mod events;
pub(crate) mod follow;
pub mod limits;
pub(crate) mod state;
pub(crate) mod tokens;
