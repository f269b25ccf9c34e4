//! The topology: which exchanges, queues and bindings a namespace needs, and how a task
//! travels through them.
//!
//! Everything here is pure except [`declare`], the only place that sends declarations to
//! RabbitMQ, and [`mod@teardown`], which deletes them again: [`names`] builds every name, [`ladder`] the delay arithmetic, [`routes`] every
//! route a message takes, [`plan`] every declaration with its arguments. It knows nothing of
//! settings files: `Settings::plan` and `Settings::routes` (in `config`) build these from
//! the settings. `docs/design.md` has the names table and the delay ladder.
//!
//! ```text
//! producer ─▶ {ns}.tasks ──key=task──▶ {ns}.{task} ─▶ worker
//!    │ delay                               │ expired / delivery limit / dead
//!    └▶ {ns}.delay.L ─ … ─▶ {ns}.delay.0 ─▶ {ns}.delay.deliver ─#.task─┘   {ns}.dead ─▶ {ns}.{task}.dead
//! ```

mod decl;
pub mod declare;
mod definitions;
pub mod ladder;
pub mod names;
mod own;
pub mod plan;
pub mod routes;
mod state;
pub mod teardown;

pub use decl::{
    ArgValue, BindingDecl, Destination, ExchangeDecl, ExchangeKind, QueueDecl, QueueType,
};
pub use declare::{ApplyReport, apply};
pub use ladder::Ladder;
pub use names::{Names, RuntimeQueue, validate_namespace, validate_task_name};
pub use own::OwnQueue;
pub use plan::{Layout, Plan, TaskQueues};
pub use routes::{Route, Routes};
pub use teardown::{RuntimeQueues, Teardown, TeardownReport, teardown};
