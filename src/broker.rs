//! Connections to RabbitMQ: naming, bounded connect retries, sessions with one bounded close,
//! and the pool.
//!
//! One reconnect mechanism: we do not turn on lapin's `enable_auto_recover()`. A lost
//! connection is replaced by a fresh one from [`Pool`] (deadpool drops connections that are no
//! longer connected), and the caller re-opens its channels, so channel-level errors (which
//! lapin does not recover) and connection loss follow the same path.

use std::time::Duration;

use backoff::ExponentialBackoffBuilder;
use backoff::backoff::Backoff as _;
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::{Channel, Connection, ConnectionProperties};

use crate::config::Settings;
use crate::error::{AccessDenied, Error, Result};
use crate::topology::{self, ApplyReport, Plan};

/// The URLs of a setting that may name several nodes of a cluster, comma-separated
/// (`amqp://h1/%2f,amqp://h2/%2f`), in the order given.
pub fn urls(list: &str) -> Vec<&str> {
    list.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

/// `url` (or each URL of a comma-separated list) with its password replaced by `***`; the
/// only form of a broker URL that may appear in a log line, an error or command output.
pub fn redact(url: &str) -> String {
    if url.contains(',') {
        return urls(url)
            .into_iter()
            .map(redact_one)
            .collect::<Vec<_>>()
            .join(",");
    }
    redact_one(url)
}

fn redact_one(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        // Unparseable: show only the scheme, since the rest may hold a password.
        Err(_) => match url.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://(unparseable URL)"),
            None => "(unparseable URL)".to_string(),
        },
    }
}

/// Parts of an AMQP URL that Warren needs besides connecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlParts {
    /// Host name or address.
    pub host: String,
    /// User name (`guest` when absent).
    pub username: String,
    /// Password (`guest` when absent). Never print it.
    pub password: String,
    /// Virtual host, decoded (`/` when absent).
    pub vhost: String,
}

/// Splits an AMQP URL.
///
/// # Errors
/// [`Error::Config`] when the URL cannot be parsed (the message does not repeat the URL).
///
/// Of a list, the first URL's: every URL of a list names the same vhost and user
/// ([`crate::config::Settings::validate`] checks).
pub fn url_parts(url: &str) -> Result<UrlParts> {
    let url = urls(url).first().copied().unwrap_or(url);
    let parsed = url::Url::parse(url).map_err(|e| {
        Error::Config(format!(
            "the AMQP URL `{}` is not a valid URL: {e}",
            redact(url)
        ))
    })?;
    if !matches!(parsed.scheme(), "amqp" | "amqps") {
        return Err(Error::Config(format!(
            "the AMQP URL `{}` must start with amqp:// or amqps://",
            redact(url)
        )));
    }
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let path = parsed.path();
    let vhost = match path.strip_prefix('/') {
        None | Some("") => "/".to_string(),
        Some(v) => decode(v),
    };
    Ok(UrlParts {
        host: parsed.host_str().unwrap_or("localhost").to_string(),
        username: if parsed.username().is_empty() {
            "guest".into()
        } else {
            decode(parsed.username())
        },
        password: parsed.password().map_or_else(|| "guest".into(), decode),
        vhost,
    })
}

/// `warren {role} {host}:{pid}`: what the management UI shows for our connections, so an
/// operator can tell producers from workers and find the process.
pub fn connection_name(role: &str) -> String {
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    format!("warren {role} {host}:{}", std::process::id())
}

fn properties(name: &str) -> ConnectionProperties {
    ConnectionProperties::default()
        .with_connection_name(name.into())
        .with_client_property("product".into(), "warren".into())
        .with_client_property("version".into(), env!("CARGO_PKG_VERSION").into())
}

/// Why a connect attempt failed, and whether trying again can help.
fn classify(url: &str, err: lapin::Error) -> backoff::Error<Error> {
    let redacted = redact(url);
    if let lapin::ErrorKind::ProtocolError(amqp) = err.kind() {
        let reason = amqp
            .get_message()
            .as_str()
            .trim_end_matches('.')
            .to_string();
        match amqp.kind() {
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => {
                return backoff::Error::permanent(Error::Refused {
                    url: redacted,
                    reason,
                    because: AccessDenied::Credentials,
                });
            }
            AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED) => {
                return backoff::Error::permanent(Error::Refused {
                    url: redacted,
                    reason,
                    because: AccessDenied::VirtualHost,
                });
            }
            _ => {}
        }
    }
    backoff::Error::transient(Error::Connect {
        url: redacted,
        reason: err.to_string(),
    })
}

/// Longest one connection attempt may take: TCP, TLS and the AMQP handshake up to
/// `connection.open-ok`. A port that accepts TCP but never speaks AMQP (a node out of file
/// handles, another service, a half-open load balancer) otherwise holds a client forever.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens one named connection to `url` (or to one node of a comma-separated list), retrying
/// with exponential backoff until `deadline` has passed (or forever when `None`). Each
/// attempt goes over the nodes in a random order, each node bounded by [`ATTEMPT_TIMEOUT`]
/// and by the time left.
///
/// # Errors
/// [`Error::Refused`] at once for bad credentials or an unknown vhost; [`Error::Connect`]
/// when the broker stayed unreachable, or silent, until the deadline.
pub async fn connect(url: &str, name: &str, deadline: Option<Duration>) -> Result<Connection> {
    retry_until(deadline, |left| connect_once(url, name, left)).await
}

/// One round over the nodes of `list`, shuffled so that replicas spread over a cluster: the
/// first node that completes the handshake. Bad credentials end the round (every node of a
/// cluster shares its users); any other failure moves on to the next node.
async fn connect_once(
    list: &str,
    name: &str,
    left: Option<Duration>,
) -> std::result::Result<Connection, backoff::Error<Error>> {
    let started = tokio::time::Instant::now();
    let mut nodes = urls(list);
    if nodes.len() > 1 {
        rand::seq::SliceRandom::shuffle(nodes.as_mut_slice(), &mut rand::thread_rng());
    }
    let mut failed = None;
    for url in nodes.iter().copied() {
        let left_now = left.map(|l| l.saturating_sub(started.elapsed()));
        if left_now.is_some_and(|l| l.is_zero()) {
            break;
        }
        let bound = left_now.map_or(ATTEMPT_TIMEOUT, |l| l.min(ATTEMPT_TIMEOUT));
        let attempt = bounded(url, bound, async {
            Connection::connect(url, properties(name))
                .await
                .map_err(|e| classify(url, e))
        });
        match attempt.await {
            Ok(conn) => {
                if nodes.len() > 1 {
                    tracing::info!(node = %redact(url), "connected");
                }
                return Ok(conn);
            }
            Err(backoff::Error::Transient { err, .. }) if nodes.len() > 1 => {
                tracing::debug!(node = %redact(url), error = %err, "node unreachable; next");
                failed = Some(err);
            }
            Err(e) => return Err(e),
        }
    }
    Err(backoff::Error::transient(failed.unwrap_or_else(|| {
        Error::Connect {
            url: redact(list),
            reason: "no time left to try a node".into(),
        }
    })))
}

/// One connection attempt to `url`, given at most `bound`; running out of time is a
/// transient [`Error::Connect`] that says what a silent port means.
async fn bounded<T>(
    url: &str,
    bound: Duration,
    attempt: impl std::future::Future<Output = std::result::Result<T, backoff::Error<Error>>>,
) -> std::result::Result<T, backoff::Error<Error>> {
    match tokio::time::timeout(bound, attempt).await {
        Ok(result) => result,
        Err(_) => Err(backoff::Error::transient(Error::Connect {
            url: redact(url),
            reason: format!(
                "no AMQP handshake within {}: the port accepts connections but does not answer \
                 as RabbitMQ (a node out of file handles, or another service)",
                crate::config::duration_text(bound)
            ),
        })),
    }
}

/// Runs `attempt` with exponential backoff (200 ms doubling to 5 s, with the `backoff`
/// crate's jitter) until it succeeds, fails for good, or `deadline` has passed (never, when
/// `None`). No wait runs past the deadline, and each attempt is told the time left, to
/// bound itself with. The first retry is logged at `warn`, the rest at `debug`: one line says
/// the broker is not there, not one per attempt.
async fn retry_until<T, F, Fut>(deadline: Option<Duration>, mut attempt: F) -> Result<T>
where
    F: FnMut(Option<Duration>) -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, backoff::Error<Error>>>,
{
    let mut waits = ExponentialBackoffBuilder::new()
        .with_initial_interval(Duration::from_millis(200))
        .with_multiplier(2.0)
        .with_max_interval(Duration::from_secs(5))
        .with_max_elapsed_time(None)
        .build();
    let started = tokio::time::Instant::now();
    let mut last: Option<Error> = None;
    for retry in 0u32.. {
        let left = deadline.map(|d| d.saturating_sub(started.elapsed()));
        // The last wait ended at the deadline: report what failed, not an attempt given no
        // time at all.
        if left.is_some_and(|l| l < Duration::from_millis(1))
            && let Some(err) = last.take()
        {
            return Err(err);
        }
        let err = match attempt(left).await {
            Ok(value) => return Ok(value),
            Err(backoff::Error::Permanent(err)) => return Err(err),
            Err(backoff::Error::Transient { err, .. }) => err,
        };
        let left = deadline.map(|d| d.saturating_sub(started.elapsed()));
        if left.is_some_and(|l| l.is_zero()) {
            return Err(err);
        }
        let wait = waits
            .next_backoff()
            .unwrap_or(Duration::from_secs(5))
            .min(left.unwrap_or(Duration::MAX));
        let line = err
            .to_string()
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        if retry == 0 {
            tracing::warn!(error = %line, retry_in = ?wait, "broker not reachable yet; retrying");
        } else {
            tracing::debug!(error = %line, retry_in = ?wait, "broker not reachable yet; retrying");
        }
        tokio::time::sleep(wait).await;
        last = Some(err);
    }
    unreachable!("the retry loop returns from inside")
}

/// True when `err` is the broker closing a channel with soft error `which` (404 NOT_FOUND,
/// 405 RESOURCE_LOCKED, 406 PRECONDITION_FAILED…).
pub fn is_soft(err: &lapin::Error, which: AMQPSoftError) -> bool {
    matches!(err.kind(), lapin::ErrorKind::ProtocolError(amqp)
        if amqp.kind() == &AMQPErrorKind::Soft(which))
}

/// How long a close waits for the broker's close-ok. A close that races a dying connection
/// can wait for one that never comes (suspected once with lapin 4.12), and a shutdown or an
/// exit must not hang on it.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Closes `ch` with the AMQP handshake if it is still open, waiting at most [`CLOSE_TIMEOUT`]
/// for close-ok. Closing by hand rather than leaving it to the drop of the last handle (which
/// lapin does in the background) keeps it from racing the connection's close.
pub async fn close_channel(ch: &Channel, reason: &str) {
    if ch.status().connected() {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, ch.close(200, reason.into())).await;
    }
}

/// Closes `conn` with the AMQP handshake if it is still open, waiting at most
/// [`CLOSE_TIMEOUT`]: the broker then logs a clean close, not "client unexpectedly closed TCP
/// connection".
pub async fn close_connection(conn: &Connection, reason: &str) {
    if !conn.status().connected() {
        return;
    }
    match tokio::time::timeout(CLOSE_TIMEOUT, conn.close(200, reason.into())).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "closing the connection"),
        Err(_) => tracing::warn!("the broker did not answer the connection close in time; leaving"),
    }
}

/// One named connection and the virtual host it is on: connect, declare, work, close.
///
/// The sequence every short-lived user of the broker follows (a command, the demo, the
/// benchmark, a test) and the worker's unit of reconnection. Close it with
/// [`Session::close`]: the broker then logs a clean close, and a dying connection cannot hold
/// up an exit for more than [`CLOSE_TIMEOUT`].
#[derive(Debug)]
pub struct Session {
    conn: Connection,
    vhost: String,
}

impl Session {
    /// Connects to `settings.amqp_url` as `warren {role} {host}:{pid}`, retrying until
    /// `settings.connect_timeout` has passed.
    ///
    /// # Errors
    /// As [`Session::connect`].
    pub async fn open(settings: &Settings, role: &str) -> Result<Session> {
        Session::connect(
            &settings.amqp_url,
            &connection_name(role),
            Some(settings.connect_timeout),
        )
        .await
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

    /// Declares every exchange, queue and binding of `plan`.
    ///
    /// # Errors
    /// As [`topology::apply`].
    pub async fn apply(&self, plan: &Plan) -> Result<ApplyReport> {
        topology::apply(plan, &self.conn, &self.vhost).await
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

    /// Closes the connection with the AMQP handshake, waiting at most [`CLOSE_TIMEOUT`];
    /// `reason` is what the broker logs. Channels still open close with it.
    pub async fn close(&self, reason: &str) {
        close_connection(&self.conn, reason).await;
    }
}

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

/// Creates pool connections on any node of a URL list; see [`connect_once`].
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
    /// As [`connect`].
    pub async fn get(&self) -> Result<PooledConnection> {
        self.get_within(self.deadline).await
    }

    /// As [`Pool::get`], giving up after `limit` (never, when `None`): a caller with a
    /// deadline of its own passes what is left of it.
    ///
    /// # Errors
    /// As [`connect`].
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hides_the_password_and_keeps_the_rest() {
        assert_eq!(
            redact("amqp://bob:s3cret@host:5672/%2f"),
            "amqp://bob:***@host:5672/%2f"
        );
        assert_eq!(redact("amqp://host/vh"), "amqp://host/vh");
        assert!(!redact("amqp://bob:s3cret@[bad").contains("s3cret"));
    }

    #[test]
    fn url_parts_decode_the_vhost_and_default_credentials() {
        let p = url_parts("amqp://127.0.0.1:5672/%2f").unwrap();
        assert_eq!(
            (p.host.as_str(), p.username.as_str(), p.vhost.as_str()),
            ("127.0.0.1", "guest", "/")
        );
        let p = url_parts("amqps://u:p%40ss@rabbit.example/it-1").unwrap();
        assert_eq!((p.password.as_str(), p.vhost.as_str()), ("p@ss", "it-1"));
        assert_eq!(url_parts("amqp://h").unwrap().vhost, "/");
        assert!(url_parts("http://h/").is_err());
    }

    #[test]
    fn connection_names_say_role_host_and_pid() {
        let name = connection_name("worker");
        assert!(name.starts_with("warren worker "));
        assert!(name.ends_with(&format!(":{}", std::process::id())));
    }
}
