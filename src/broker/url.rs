//! Broker URLs: a list of cluster nodes, the one printable (redacted) form, and the parts
//! Warren needs besides connecting (host, user, vhost). Pure.

use crate::error::{Error, Result};

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

/// `list` with `heartbeat={secs}` added to each URL that does not name a heartbeat of its own
/// (a URL's own `?heartbeat=` wins: an operator can set it per node).
///
/// Why Warren always asks: a client that asks for nothing inherits the broker's 60 s, and a
/// frozen process (SIGSTOP, a paused VM, a starved container) then holds its unacked tasks
/// for up to three timeouts before the broker gives them to another worker.
pub fn with_heartbeat(list: &str, heartbeat: std::time::Duration) -> String {
    let secs = heartbeat.as_secs().max(1);
    urls(list)
        .into_iter()
        .map(|url| {
            if has_query_key(url, "heartbeat") {
                return url.to_string();
            }
            // The query goes before a fragment, which AMQP URLs do not use but may carry.
            let (base, fragment) = match url.split_once('#') {
                Some((b, f)) => (b, Some(f)),
                None => (url, None),
            };
            let sep = if base.contains('?') { '&' } else { '?' };
            let mut out = format!("{base}{sep}heartbeat={secs}");
            if let Some(f) = fragment {
                out.push('#');
                out.push_str(f);
            }
            out
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn has_query_key(url: &str, key: &str) -> bool {
    let Some((_, query)) = url.split_once('?') else {
        return false;
    };
    let query = query.split('#').next().unwrap_or_default();
    query
        .split('&')
        .any(|pair| pair.split('=').next() == Some(key))
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
/// (`Settings::validate`, in `config`, checks).
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
    fn a_heartbeat_is_added_where_a_url_names_none() {
        let ten = std::time::Duration::from_secs(10);
        assert_eq!(
            with_heartbeat("amqp://h:1/%2f", ten),
            "amqp://h:1/%2f?heartbeat=10"
        );
        assert_eq!(
            with_heartbeat("amqp://h/v?frame_max=8192", ten),
            "amqp://h/v?frame_max=8192&heartbeat=10"
        );
        // A URL's own value wins, node by node.
        assert_eq!(
            with_heartbeat("amqp://a/v?heartbeat=3, amqp://b/v", ten),
            "amqp://a/v?heartbeat=3,amqp://b/v?heartbeat=10"
        );
        // `heartbeat_x` is another key; sub-second rounds up to the protocol's 1 s.
        assert_eq!(
            with_heartbeat(
                "amqp://h/v?heartbeat_x=1",
                std::time::Duration::from_millis(300)
            ),
            "amqp://h/v?heartbeat_x=1&heartbeat=1"
        );
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
}
