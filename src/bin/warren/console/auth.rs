//! Who is asking, and may they change things.
//!
//! Two roles: a viewer reads, an operator also acts. A token comes from a file or the
//! environment (never the command line, where `ps` shows it, and never a page); a browser
//! trades it once at the login form for a session cookie (HttpOnly, SameSite=Strict) and a
//! CSRF token the pages put into every form. A script sends it as `Authorization: Bearer`;
//! a browser never adds that header by itself, so such requests need no CSRF token. Every
//! POST must also come from this console's own origin (`Sec-Fetch-Site`, else `Origin`).

use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::{HeaderMap, StatusCode, header};
use warren::{Error, Result};

use super::{ConsoleArgs, Failure};

/// What someone may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Role {
    /// Reads every page.
    Viewer,
    /// Also replays, purges, pauses.
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }
}

/// How a request proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Via {
    /// Nothing: an open loopback console.
    Anonymous,
    /// `Authorization: Bearer`.
    Bearer,
    /// The session cookie; its CSRF token.
    Cookie(String),
    /// A trusted proxy's header.
    Proxy,
}

/// Someone asking.
#[derive(Debug, Clone)]
pub(crate) struct Who {
    pub name: String,
    pub role: Role,
    pub via: Via,
}

impl Who {
    /// The CSRF token a page puts into its forms (empty when none is needed).
    pub fn csrf(&self) -> &str {
        match &self.via {
            Via::Cookie(t) => t,
            _ => "",
        }
    }

    pub fn is_operator(&self) -> bool {
        self.role == Role::Operator
    }
}

/// The name of the session cookie.
pub(crate) const COOKIE: &str = "warren_console";

/// Tokens, sessions and the proxy header.
pub(crate) struct Auth {
    tokens: Vec<(String, Role, String)>,
    proxy_header: Option<String>,
    proxy_operators: Vec<String>,
    sessions: Mutex<HashMap<String, Who>>,
}

impl Auth {
    /// From `--tokens-file`, the environment and the proxy flags.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an unreadable tokens file or a bad line in it.
    pub fn configure(args: &ConsoleArgs) -> Result<Auth> {
        let mut tokens = Vec::new();
        if let Some(path) = &args.tokens_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Error::InvalidInput(format!("cannot read --tokens-file {}: {e}", path.display()))
            })?;
            tokens = parse_tokens(&text)
                .map_err(|e| Error::InvalidInput(format!("{}: {e}", path.display())))?;
        }
        for (var, role) in [
            ("WARREN_CONSOLE_OPERATOR_TOKEN", Role::Operator),
            ("WARREN_CONSOLE_VIEWER_TOKEN", Role::Viewer),
        ] {
            if let Ok(t) = std::env::var(var)
                && !t.trim().is_empty()
            {
                tokens.push((t.trim().to_string(), role, role.as_str().to_string()));
            }
        }
        if let Some((t, _, name)) = tokens.iter().find(|(t, _, _)| t.len() < 16) {
            return Err(Error::InvalidInput(format!(
                "the token of `{name}` is {} characters; give at least 16 (e.g. `openssl rand -hex 16`)",
                t.len()
            )));
        }
        Ok(Auth {
            tokens,
            proxy_header: args.proxy_user_header.clone().filter(|h| !h.is_empty()),
            proxy_operators: args.proxy_operators.clone(),
            sessions: Mutex::new(HashMap::new()),
        })
    }

    /// Whether anyone must prove who they are (else the console is open and read-only).
    pub fn has_credentials(&self) -> bool {
        !self.tokens.is_empty() || self.proxy_header.is_some()
    }

    fn token(&self, given: &str) -> Option<(Role, String)> {
        self.tokens
            .iter()
            .find(|(t, _, _)| constant_time_eq(t.as_bytes(), given.as_bytes()))
            .map(|(_, r, n)| (*r, n.clone()))
    }

    /// Who sent `headers`: `None` when the console needs credentials and they carry none
    /// that hold.
    pub fn who(&self, headers: &HeaderMap) -> Option<Who> {
        if let Some(h) = &self.proxy_header
            && let Some(user) = headers.get(h.as_str()).and_then(|v| v.to_str().ok())
            && !user.is_empty()
        {
            let role = match self.proxy_operators.iter().any(|o| o == user) {
                true => Role::Operator,
                false => Role::Viewer,
            };
            return Some(Who {
                name: user.to_string(),
                role,
                via: Via::Proxy,
            });
        }
        if let Some(bearer) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        {
            return self.token(bearer.trim()).map(|(role, name)| Who {
                name,
                role,
                via: Via::Bearer,
            });
        }
        if let Some(id) = cookie(headers, COOKIE) {
            let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(who) = sessions.get(&id) {
                return Some(who.clone());
            }
        }
        match self.has_credentials() {
            true => None,
            false => Some(Who {
                name: "anonymous".into(),
                role: Role::Viewer,
                via: Via::Anonymous,
            }),
        }
    }

    /// Trades a token for a session; returns the session id for the cookie.
    pub fn login(&self, token: &str) -> Option<String> {
        let (role, name) = self.token(token.trim())?;
        let id = random_hex();
        let who = Who {
            name,
            role,
            via: Via::Cookie(random_hex()),
        };
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.insert(id.clone(), who);
        Some(id)
    }

    /// Ends the session `headers` carry.
    pub fn logout(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers, COOKIE) {
            let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            sessions.remove(&id);
        }
    }

    /// Reading: anyone the console knows.
    ///
    /// # Errors
    /// 401 when credentials are needed.
    pub fn viewer(&self, headers: &HeaderMap) -> std::result::Result<Who, Failure> {
        self.who(headers).ok_or_else(|| {
            Failure(
                StatusCode::UNAUTHORIZED,
                "sign in first (the login page, or `Authorization: Bearer TOKEN`)".into(),
            )
        })
    }

    /// A change: an operator, from this console's own origin, with the session's CSRF token.
    ///
    /// # Errors
    /// 401 unknown; 403 a viewer, a cross-site request, or a missing or wrong CSRF token.
    pub fn operator(
        &self,
        headers: &HeaderMap,
        csrf: Option<&str>,
    ) -> std::result::Result<Who, Failure> {
        same_origin(headers)?;
        let who = self.viewer(headers)?;
        if !who.is_operator() {
            return Err(Failure(
                StatusCode::FORBIDDEN,
                format!(
                    "`{}` is a viewer: changes need an operator's token",
                    who.name
                ),
            ));
        }
        if let Via::Cookie(want) = &who.via {
            let given = csrf.unwrap_or_default();
            if given.is_empty() || !constant_time_eq(given.as_bytes(), want.as_bytes()) {
                return Err(Failure(
                    StatusCode::FORBIDDEN,
                    "the form's CSRF token is missing or stale: reload the page and try again"
                        .into(),
                ));
            }
        }
        Ok(who)
    }
}

/// Refuses a request a browser marks as coming from another site.
///
/// # Errors
/// 403 naming the header.
pub(crate) fn same_origin(headers: &HeaderMap) -> std::result::Result<(), Failure> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text("sec-fetch-site") {
        return match site {
            "same-origin" | "none" => Ok(()),
            other => Err(Failure(
                StatusCode::FORBIDDEN,
                format!("a change from another site is refused (Sec-Fetch-Site: {other})"),
            )),
        };
    }
    if let Some(origin) = text("origin") {
        let host = text("host").unwrap_or_default();
        let origin_host = origin.split_once("://").map(|(_, h)| h).unwrap_or(origin);
        if origin_host != host {
            return Err(Failure(
                StatusCode::FORBIDDEN,
                format!("a change from another origin is refused (Origin: {origin}, Host: {host})"),
            ));
        }
    }
    Ok(())
}

/// `ROLE NAME TOKEN` lines; `#` comments and blank lines skipped.
fn parse_tokens(text: &str) -> std::result::Result<Vec<(String, Role, String)>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [role, name, token] = parts[..] else {
            return Err(format!(
                "line {}: give `ROLE NAME TOKEN` (e.g. `operator ann 7f3c…`)",
                n + 1
            ));
        };
        let role = match role {
            "operator" => Role::Operator,
            "viewer" => Role::Viewer,
            other => {
                return Err(format!(
                    "line {}: role `{other}` is not `viewer` or `operator`",
                    n + 1
                ));
            }
        };
        out.push((token.to_string(), role, name.to_string()));
    }
    Ok(out)
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// 256 bits from the thread's CSPRNG, as hex.
fn random_hex() -> String {
    let (a, b): (u128, u128) = (rand::random(), rand::random());
    format!("{a:032x}{b:032x}")
}

/// Compares without leaking, by timing, how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn token_lines_parse_and_bad_ones_say_which() {
        let t =
            parse_tokens("# ops\noperator ann 0123456789abcdef\n\nviewer bob fedcba9876543210\n")
                .unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].1, Role::Operator);
        assert_eq!(t[1].2, "bob");
        assert!(parse_tokens("admin ann x").unwrap_err().contains("line 1"));
        assert!(
            parse_tokens("operator ann")
                .unwrap_err()
                .contains("ROLE NAME TOKEN")
        );
    }

    #[test]
    fn cross_site_requests_are_refused() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("127.0.0.1:8077"));
        assert!(same_origin(&h).is_ok());
        h.insert("origin", HeaderValue::from_static("http://127.0.0.1:8077"));
        assert!(same_origin(&h).is_ok());
        h.insert("origin", HeaderValue::from_static("http://evil.example"));
        assert_eq!(same_origin(&h).unwrap_err().0, StatusCode::FORBIDDEN);
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert_eq!(same_origin(&h).unwrap_err().0, StatusCode::FORBIDDEN);
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(same_origin(&h).is_ok());
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; warren_console=xyz; b=2"),
        );
        assert_eq!(cookie(&h, COOKIE).as_deref(), Some("xyz"));
        assert!(constant_time_eq(b"abc", b"abc") && !constant_time_eq(b"abc", b"abd"));
    }
}
