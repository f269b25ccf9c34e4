//! A pool of named connections to any node of a cluster, for short publish paths.

use std::time::Duration;

use lapin::Connection;

use super::connect::{ATTEMPT_TIMEOUT, bounded, connect_once, connection_name, retry_until};
use super::url::{redact, url_parts, urls};
use crate::error::{Error, Result};

/// A pool of named connections for short publish paths (producer, CLI).
///
/// deadpool's own manager, not deadpool-lapin's: that one connects to a single fixed address,
/// and a producer must move to another node of a cluster when its node goes away.
#[derive(Clone)]
pub struct Pool {
    inner: deadpool::managed::Pool<Nodes>,
    url: String,
    deadline: Option<Duration>,
}

/// Pooled connection: derefs to a [`Connection`].
pub type PooledConnection = deadpool::managed::Object<Nodes>;

/// Creates pool connections on any node of a URL list, each over the nodes in a random
/// order.
#[derive(Debug)]
pub struct Nodes {
    list: String,
    name: String,
}

impl deadpool::managed::Manager for Nodes {
    type Type = Connection;
    type Error = Error;

    async fn create(&self) -> Result<Connection> {
        connect_once(&self.list, &self.name, None)
            .await
            .map_err(|e| match e {
                backoff::Error::Permanent(e) | backoff::Error::Transient { err: e, .. } => e,
            })
    }

    async fn recycle(
        &self,
        conn: &mut Connection,
        _: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<Error> {
        if conn.status().connected() {
            Ok(())
        } else {
            Err(deadpool::managed::RecycleError::message(
                "the connection is closed",
            ))
        }
    }
}

impl std::fmt::Debug for Pool {
    // The URL is printed redacted.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("url", &redact(&self.url))
            .field("status", &self.inner.status())
            .finish()
    }
}

impl Pool {
    /// A pool of at most `size` connections named after `role`, to `url` (or any node of a
    /// comma-separated list). Connects lazily.
    ///
    /// # Errors
    /// [`Error::Config`] when the URL is unusable.
    pub fn new(url: &str, role: &str, size: usize, deadline: Option<Duration>) -> Result<Pool> {
        url_parts(url)?;
        let nodes = Nodes {
            list: url.to_string(),
            name: connection_name(role),
        };
        let inner = deadpool::managed::Pool::builder(nodes)
            .max_size(size.max(1))
            .build()
            .map_err(|e| Error::Config(format!("cannot build the connection pool: {e}")))?;
        Ok(Pool {
            inner,
            url: url.to_string(),
            deadline,
        })
    }

    /// A connected connection, retrying with backoff until the pool's deadline.
    ///
    /// # Errors
    /// As [`super::connect()`].
    pub async fn get(&self) -> Result<PooledConnection> {
        self.get_within(self.deadline).await
    }

    /// As [`Pool::get`], giving up after `limit` (never, when `None`): a caller with a
    /// deadline of its own passes what is left of it.
    ///
    /// # Errors
    /// As [`super::connect()`].
    pub async fn get_within(&self, limit: Option<Duration>) -> Result<PooledConnection> {
        // The manager bounds each node by ATTEMPT_TIMEOUT and moves on to the next; this
        // bounds the whole round by the time left (or by every node's share without one), so
        // a silent first node does not use up the attempt of the healthy ones behind it.
        let nodes = urls(&self.url).len().max(1) as u32;
        retry_until(limit, |left| {
            bounded(&self.url, left.unwrap_or(ATTEMPT_TIMEOUT * nodes), async {
                self.inner.get().await.map_err(|e| match e {
                    deadpool::managed::PoolError::Backend(err) if !err.is_transient() => {
                        backoff::Error::permanent(err)
                    }
                    deadpool::managed::PoolError::Backend(err) => backoff::Error::transient(err),
                    other => backoff::Error::transient(Error::Connect {
                        url: redact(&self.url),
                        reason: other.to_string(),
                    }),
                })
            })
        })
        .await
    }

    /// The broker URL (with password); pass it on, never print it.
    pub fn url(&self) -> &str {
        &self.url
    }
}
