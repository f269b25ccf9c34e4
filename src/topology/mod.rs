//! The topology: which exchanges, queues and bindings a namespace needs, and how a task
//! travels through them.
//!
//! Everything here is pure except [`declare`], the only place that sends declarations to
//! RabbitMQ, and [`mod@teardown`], which deletes them again: [`names`] builds every name, [`ladder`] the delay arithmetic, [`routes`] every
//! route a message takes, [`plan`] every declaration with its arguments. It knows nothing of
//! settings files: [`crate::Settings::plan`] and [`crate::Settings::routes`] build these from
//! the settings. See the README's names table and delay ladder.
//!
//! ```text
//! producer ─▶ {ns}.tasks ──key=task──▶ {ns}.{task} ─▶ worker
//!    │ delay                               │ expired / delivery limit / dead
//!    └▶ {ns}.delay.L ─ … ─▶ {ns}.delay.0 ─▶ {ns}.delay.deliver ─#.task─┘   {ns}.dead ─▶ {ns}.{task}.dead
//! ```

pub mod declare;
pub mod ladder;
pub mod names;
pub mod plan;
pub mod routes;
mod state;
pub mod teardown;

pub use declare::{ApplyReport, apply};
pub use ladder::Ladder;
pub use names::{Names, validate_namespace, validate_task_name};
pub use plan::{
    ArgValue, BindingDecl, Destination, ExchangeDecl, ExchangeKind, Layout, OwnQueue, Plan,
    QueueDecl, QueueType, TaskQueues,
};
pub use routes::{Route, Routes};
pub use teardown::{Teardown, TeardownReport, teardown};
