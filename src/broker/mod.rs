//! Connections to RabbitMQ: naming, bounded connect retries, sessions with one bounded close,
//! and the pool.
//!
//! One reconnect mechanism: we do not turn on lapin's `enable_auto_recover()`. A lost
//! connection is replaced by a fresh one from [`Pool`] (deadpool drops connections that are no
//! longer connected), and the caller re-opens its channels, so channel-level errors (which
//! lapin does not recover) and connection loss follow the same path.
//!
//! The plumbing every other part of Warren talks to RabbitMQ through: [`url`] (node lists,
//! redaction), [`mod@connect`] (named connections, bounded retries), [`Session`], [`Pool`],
//! [`closing`], the exclusive-queue lease (`lease`, crate-internal) and the passive
//! [`inspect()`]. It knows no
//! settings file and no topology: callers hand it a URL, a role and a deadline.

pub mod closing;
pub mod connect;
mod inspect;
pub mod io;
pub(crate) mod lease;
mod pool;
mod session;
pub mod url;

pub use closing::{CLOSE_TIMEOUT, close_channel, close_connection, is_soft};
pub use connect::{ATTEMPT_TIMEOUT, connect, connection_name};
pub use inspect::inspect;
pub use pool::{Nodes, Pool, PooledConnection};
pub use session::Session;
pub use url::{UrlParts, redact, url_parts, urls, with_heartbeat};
