//! A session: one named connection and its virtual host, closed once and in bounded time.

use std::time::Duration;

use lapin::{Channel, Connection};

use super::closing::close_connection;
use super::connect::{connect, connection_name};
use super::url::url_parts;
use crate::error::{Error, Result};

/// One named connection and the virtual host it is on: connect, declare, work, close.
///
/// The sequence every short-lived user of the broker follows (a command, the demo, the
/// benchmark, a test) and the worker's unit of reconnection. Close it with
/// [`Session::close`]: the broker then logs a clean close, and a dying connection cannot hold
/// up an exit for more than [`super::CLOSE_TIMEOUT`].
#[derive(Debug)]
pub struct Session {
    conn: Connection,
    vhost: String,
}

impl Session {
    /// Connects to `url` (or a node of a comma-separated list) as
    /// `warren {role} {host}:{pid}`, retrying until `connect_timeout` has passed.
    ///
    /// # Errors
    /// As [`Session::connect`].
    pub async fn open(url: &str, role: &str, connect_timeout: Duration) -> Result<Session> {
        Session::connect(url, &connection_name(role), Some(connect_timeout)).await
    }

    /// Connects to `url` with connection name `name`, retrying until `deadline` has passed
    /// (or forever when `None`).
    ///
    /// # Errors
    /// [`Error::Config`] for an unusable URL; otherwise as [`connect`].
    pub async fn connect(url: &str, name: &str, deadline: Option<Duration>) -> Result<Session> {
        let vhost = url_parts(url)?.vhost;
        let conn = connect(url, name, deadline).await?;
        Ok(Session { conn, vhost })
    }

    /// A new channel on this session's connection.
    ///
    /// # Errors
    /// [`Error::Amqp`] when the connection is gone or refuses another channel.
    pub async fn channel(&self) -> Result<Channel> {
        self.conn
            .create_channel()
            .await
            .map_err(|source| Error::Amqp {
                operation: "opening a channel".into(),
                source,
            })
    }

    /// The connection, for channels with options of their own.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The virtual host, decoded from the URL (`/` by default).
    pub fn vhost(&self) -> &str {
        &self.vhost
    }

    /// True while the connection is open.
    pub fn is_connected(&self) -> bool {
        self.conn.status().connected()
    }

    /// Closes the connection with the AMQP handshake, waiting at most [`super::CLOSE_TIMEOUT`];
    /// `reason` is what the broker logs. Channels still open close with it.
    pub async fn close(&self, reason: &str) {
        close_connection(&self.conn, reason).await;
    }
}
