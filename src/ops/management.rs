//! A small client for RabbitMQ's management HTTP API (statistics, definitions, connections).
//!
//! Blocking (ureq): callers in async code use it from `spawn_blocking` or accept a short
//! block. Credentials come from the AMQP URL unless the management URL carries its own.

use std::time::Duration;

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;

use crate::broker::{redact, url_parts, urls};
use crate::config::Settings;
use crate::error::{Error, Result};

/// Management API port when the URL is derived from the AMQP host.
pub const MANAGEMENT_PORT_DEFAULT: u16 = 15672;

/// Percent-encodes one path segment (vhost `/` becomes `%2F`).
pub fn enc(segment: &str) -> String {
    utf8_percent_encode(segment, NON_ALPHANUMERIC).to_string()
}

/// A management API endpoint with credentials: one base URL, or several (one per node of a
/// cluster), tried in turn when one cannot be reached.
#[derive(Clone)]
pub struct Management {
    bases: Vec<String>,
    /// Index into `bases` of the one that answered last.
    current: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    user: String,
    password: String,
    agent: ureq::Agent,
}

impl std::fmt::Debug for Management {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Management")
            .field("bases", &self.bases)
            .field("user", &self.user)
            .finish()
    }
}

impl Management {
    /// The API for `settings`: `management_url` if set (a comma-separated list names several
    /// nodes), else `http://{amqp host}:15672` for each AMQP URL.
    ///
    /// # Errors
    /// [`Error::Config`] when a URL cannot be parsed.
    pub fn from_settings(settings: &Settings) -> Result<Management> {
        let amqp = url_parts(&settings.amqp_url)?;
        let (mut user, mut password) = (amqp.username.clone(), amqp.password.clone());
        let mut bases = Vec::new();
        match &settings.management_url {
            Some(list) => {
                for m in urls(list) {
                    let mut parsed = url::Url::parse(m).map_err(|e| {
                        Error::Config(format!(
                            "the management URL `{}` is not a valid URL: {e}",
                            redact(m)
                        ))
                    })?;
                    if !parsed.username().is_empty() {
                        user = parsed.username().to_string();
                    }
                    if let Some(p) = parsed.password() {
                        password = p.to_string();
                    }
                    let _ = parsed.set_username("");
                    let _ = parsed.set_password(None);
                    bases.push(parsed.to_string().trim_end_matches('/').to_string());
                }
            }
            None => {
                for url in urls(&settings.amqp_url) {
                    let host = url_parts(url)?.host;
                    let host = if host.contains(':') {
                        format!("[{host}]")
                    } else {
                        host
                    };
                    bases.push(format!("http://{host}:{MANAGEMENT_PORT_DEFAULT}"));
                }
            }
        }
        if bases.is_empty() {
            return Err(Error::Config("no management URL".into()));
        }
        Ok(Management::with_bases(bases, &user, &password))
    }

    /// An API at `base` (e.g. `http://127.0.0.1:15672`) with basic-auth credentials.
    pub fn new(base: &str, user: &str, password: &str) -> Management {
        Management::with_bases(vec![base.to_string()], user, password)
    }

    fn with_bases(bases: Vec<String>, user: &str, password: &str) -> Management {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(3))
            .timeout(Duration::from_secs(30))
            .build();
        let mut bases: Vec<String> = bases
            .into_iter()
            .map(|b| b.trim_end_matches('/').to_string())
            .collect();
        bases.dedup();
        Management {
            bases,
            current: Default::default(),
            user: user.to_string(),
            password: password.to_string(),
            agent,
        }
    }

    /// The base URL in use (no credentials in it): the one that answered last.
    pub fn base(&self) -> &str {
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed);
        self.bases.get(i).or(self.bases.first()).map_or("", |b| b)
    }

    /// Sends a request to the base in use, moving on to the next when one cannot be reached
    /// (refused, timed out); an HTTP answer, even an error, comes from a node that is up.
    // ureq's own error, handed straight to `fail`, which maps it to ours.
    #[allow(clippy::result_large_err)]
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> std::result::Result<ureq::Response, ureq::Error> {
        use std::sync::atomic::Ordering::Relaxed;
        let start = self.current.load(Relaxed);
        let n = self.bases.len();
        for k in 0..n {
            let i = (start + k) % n;
            let base = &self.bases[i];
            let request = self
                .agent
                .request(method, &format!("{base}/api/{path}"))
                .set("authorization", &basic_auth(&self.user, &self.password));
            let sent = match body {
                Some(b) => request.send_json(b),
                None => request.call(),
            };
            match sent {
                Err(ureq::Error::Transport(t)) if k + 1 < n => {
                    tracing::debug!(base = %base, error = %t, "management API unreachable; next node");
                }
                answered => {
                    if i != start {
                        self.current.store(i, Relaxed);
                    }
                    return answered;
                }
            }
        }
        // No base at all (from_settings refuses that): ureq's own error for a URL it cannot use.
        self.agent.request(method, "http:///").call()
    }

    fn fail(&self, method: &str, path: &str, err: ureq::Error) -> Error {
        match err {
            ureq::Error::Status(401, _) => Error::ManagementRefused {
                base: self.base().to_string(),
                user: self.user.clone(),
            },
            ureq::Error::Status(code, resp) => {
                let body = resp.into_string().unwrap_or_default();
                Error::Management(format!(
                    "{method} {}/api/{path} answered {code}: {}",
                    self.base(),
                    body.trim()
                ))
            }
            ureq::Error::Transport(t) => Error::ManagementUnreachable {
                base: self.bases.join(","),
                reason: t.to_string(),
            },
        }
    }

    /// `GET /api/{path}` as JSON.
    ///
    /// # Errors
    /// [`Error::Management`] naming the URL and status.
    pub fn get(&self, path: &str) -> Result<Value> {
        let resp = self
            .call("GET", path, None)
            .map_err(|e| self.fail("GET", path, e))?;
        resp.into_json().map_err(|e| {
            Error::Management(format!(
                "GET {}/api/{path}: unreadable JSON: {e}",
                self.base()
            ))
        })
    }

    /// `GET /api/{path}`, with 404 as `None`.
    ///
    /// # Errors
    /// As [`Management::get`], except for 404.
    pub fn get_opt(&self, path: &str) -> Result<Option<Value>> {
        match self.call("GET", path, None) {
            Ok(resp) => resp.into_json().map(Some).map_err(|e| {
                Error::Management(format!(
                    "GET {}/api/{path}: unreadable JSON: {e}",
                    self.base()
                ))
            }),
            Err(ureq::Error::Status(404, _)) => Ok(None),
            Err(e) => Err(self.fail("GET", path, e)),
        }
    }

    /// `PUT /api/{path}` with a JSON body.
    ///
    /// # Errors
    /// [`Error::Management`].
    pub fn put(&self, path: &str, body: &Value) -> Result<()> {
        self.call("PUT", path, Some(body))
            .map_err(|e| self.fail("PUT", path, e))?;
        Ok(())
    }

    /// `POST /api/{path}` with a JSON body.
    ///
    /// # Errors
    /// [`Error::Management`].
    pub fn post(&self, path: &str, body: &Value) -> Result<()> {
        self.call("POST", path, Some(body))
            .map_err(|e| self.fail("POST", path, e))?;
        Ok(())
    }

    /// `POST /api/{path}` with a JSON body, answered with JSON (e.g. a queue's `get`).
    ///
    /// # Errors
    /// [`Error::Management`].
    pub fn post_json(&self, path: &str, body: &Value) -> Result<Value> {
        let resp = self
            .call("POST", path, Some(body))
            .map_err(|e| self.fail("POST", path, e))?;
        resp.into_json().map_err(|e| {
            Error::Management(format!(
                "POST {}/api/{path}: unreadable JSON: {e}",
                self.base()
            ))
        })
    }

    /// `DELETE /api/{path}`; a 404 counts as done.
    ///
    /// # Errors
    /// [`Error::Management`].
    pub fn delete(&self, path: &str) -> Result<()> {
        match self.call("DELETE", path, None) {
            Ok(_) | Err(ureq::Error::Status(404, _)) => Ok(()),
            Err(e) => Err(self.fail("DELETE", path, e)),
        }
    }

    /// Every queue of namespace `ns` in `vhost` (names starting `{ns}.`), with `columns`
    /// (comma-separated) of each, read page by page.
    ///
    /// # Errors
    /// [`Error::Management`], also when the vhost does not exist.
    pub fn namespace_queues(&self, vhost: &str, ns: &str, columns: &str) -> Result<Vec<Value>> {
        let regex = format!("^{}\\.", ns.replace('.', "\\."));
        let mut queues = Vec::new();
        let mut page = 1;
        loop {
            let path = format!(
                "queues/{}?page={page}&page_size=500&use_regex=true&name={}&columns={columns}",
                enc(vhost),
                enc(&regex)
            );
            // The API answers 404 for a vhost it does not have: say that, not the URL.
            let body = self.get_opt(&path)?.ok_or_else(|| {
                Error::Management(format!(
                    "vhost `{vhost}` does not exist on the broker at {}",
                    self.base()
                ))
            })?;
            queues.extend(body["items"].as_array().cloned().unwrap_or_default());
            if page >= body["page_count"].as_u64().unwrap_or(1) {
                break;
            }
            page += 1;
        }
        Ok(queues)
    }

    /// One queue's details, or `None` when it does not exist.
    ///
    /// # Errors
    /// [`Error::Management`].
    pub fn queue(&self, vhost: &str, name: &str) -> Result<Option<Value>> {
        self.get_opt(&format!("queues/{}/{}", enc(vhost), enc(name)))
    }

    /// Every connection the broker has (all vhosts).
    ///
    /// # Errors
    /// [`Error::Management`].
    pub fn connections(&self) -> Result<Vec<Value>> {
        Ok(self
            .get("connections")?
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Force-closes the connections whose user-provided name is `name`; returns how many.
    ///
    /// # Errors
    /// [`Error::Management`].
    pub fn close_connections_named(&self, name: &str) -> Result<usize> {
        let mut closed = 0;
        for c in self.connections()? {
            let provided = c["client_properties"]["connection_name"]
                .as_str()
                .unwrap_or_default();
            if provided == name
                && let Some(id) = c["name"].as_str()
            {
                self.delete(&format!("connections/{}", enc(id)))?;
                closed += 1;
            }
        }
        Ok(closed)
    }
}

fn basic_auth(user: &str, password: &str) -> String {
    use base64::Engine;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {token}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_is_base64_of_user_colon_password() {
        assert_eq!(basic_auth("guest", "guest"), "Basic Z3Vlc3Q6Z3Vlc3Q=");
        assert_eq!(basic_auth("a", "b"), "Basic YTpi");
        assert_eq!(basic_auth("ab", "cd"), "Basic YWI6Y2Q=");
    }

    #[test]
    fn the_default_endpoint_is_the_amqp_host_on_15672_with_its_credentials() {
        let mut s = Settings {
            amqp_url: "amqp://bob:pw@rabbit.local:5672/v".into(),
            ..Default::default()
        };
        let m = Management::from_settings(&s).unwrap();
        assert_eq!(
            (m.base(), m.user.as_str(), m.password.as_str()),
            ("http://rabbit.local:15672", "bob", "pw")
        );
        s.management_url = Some("http://admin:x@mgmt:8080/".into());
        let m = Management::from_settings(&s).unwrap();
        assert_eq!(
            (m.base(), m.user.as_str(), m.password.as_str()),
            ("http://mgmt:8080", "admin", "x")
        );
    }

    #[test]
    fn each_node_of_a_cluster_gets_a_management_endpoint() {
        let mut s = Settings {
            amqp_url: "amqp://bob:pw@n1:5672/v,amqp://bob:pw@n2:5672/v".into(),
            ..Default::default()
        };
        let m = Management::from_settings(&s).unwrap();
        assert_eq!(m.bases, ["http://n1:15672", "http://n2:15672"]);
        s.management_url = Some("http://a:1/,http://b:2".into());
        let m = Management::from_settings(&s).unwrap();
        assert_eq!(m.bases, ["http://a:1", "http://b:2"]);
        assert_eq!(m.base(), "http://a:1");
    }

    #[test]
    fn vhost_segments_are_encoded() {
        assert_eq!(enc("/"), "%2F");
        assert_eq!(enc("it-1"), "it%2D1");
    }
}
