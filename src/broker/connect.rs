//! Named connections with bounded, backed-off retries over the nodes of a cluster.

use std::time::Duration;

use backoff::ExponentialBackoffBuilder;
use backoff::backoff::Backoff as _;
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::{Connection, ConnectionProperties};

use super::url::{redact, urls, with_heartbeat};
use crate::duration::duration_text;
use crate::error::{AccessDenied, Error, Result};

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

/// Heartbeat timeout asked of the broker when a URL names none (`?heartbeat=`) and the
/// settings set none (`heartbeat`). RabbitMQ checks for silence once per timeout and closes a
/// connection after two silent checks, so a frozen client is found 2 to 3 timeouts after it
/// froze (measured: 10 s gave a 30 s stall); its unacked tasks then go to other workers. 5 s
/// (RabbitMQ's advised floor, below which busy hosts see false alarms) keeps that stall at
/// about 15 s, and costs one 8-byte frame each way every 2.5 s per connection.
pub const HEARTBEAT_DEFAULT: Duration = Duration::from_secs(5);

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
pub(super) async fn connect_once(
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
        let with_beat = with_heartbeat(url, HEARTBEAT_DEFAULT);
        let attempt = bounded(url, bound, async {
            Connection::connect_with_runtime(&with_beat, properties(name), super::io::runtime())
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
pub(super) async fn bounded<T>(
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
                duration_text(bound)
            ),
        })),
    }
}

/// Runs `attempt` with exponential backoff (500 ms doubling to 5 s, each wait ±50 %) until it succeeds, fails for good, or `deadline` has passed (never, when
/// `None`). No wait runs past the deadline, and each attempt is told the time left, to
/// bound itself with. The first retry is logged at `warn`, the rest at `debug`: one line says
/// the broker is not there, not one per attempt.
pub(super) async fn retry_until<T, F, Fut>(deadline: Option<Duration>, mut attempt: F) -> Result<T>
where
    F: FnMut(Option<Duration>) -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, backoff::Error<Error>>>,
{
    let mut waits = ExponentialBackoffBuilder::new()
        .with_initial_interval(Duration::from_millis(500))
        // Each wait is drawn from ±50 % of the interval, so clients that failed together
        // retry apart (the kill -9 scenario counts their attempts per second).
        .with_randomization_factor(0.5)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_names_say_role_host_and_pid() {
        let name = connection_name("worker");
        assert!(name.starts_with("warren worker "));
        assert!(name.ends_with(&format!(":{}", std::process::id())));
    }
}
