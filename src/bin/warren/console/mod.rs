//! `warren console`: the operator's web console, served from RabbitMQ alone.
//!
//! One process reads the broker for every viewer: [`live`] polls the management API once per
//! refresh and hands the same figures to every page and event stream, so ten open browsers
//! cost the API what one does. Dead tasks are browsed from a snapshot per refresh
//! ([`warren::ops::dead_index`]), never by get-and-requeue. Every change is a POST that passes
//! [`auth`]'s checks (role, origin, CSRF) and is written to the namespace's audit stream before
//! it is reported done ([`actions`]).

mod actions;
mod auth;
mod live;
mod pages;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::Args;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use warren::duration::parse_duration;
use warren::{Error, Result, Settings};

/// `warren console`
#[derive(Debug, Args)]
pub struct ConsoleArgs {
    /// Address to listen on. Anything but loopback needs tokens (`--tokens-file` or the
    /// environment): an open console on a network is refused.
    #[arg(long, default_value = "127.0.0.1:8077")]
    pub bind: SocketAddr,
    /// File of access tokens, one `ROLE NAME TOKEN` per line (`operator ann 7f3c…`); ROLE is
    /// `viewer` or `operator`. Also `WARREN_CONSOLE_OPERATOR_TOKEN` and
    /// `WARREN_CONSOLE_VIEWER_TOKEN`. Without any, the console is read-only and loopback-only.
    #[arg(long, env = "WARREN_CONSOLE_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
    /// A header a trusted reverse proxy sets to the signed-in user's name (`X-Forwarded-User`);
    /// its users are viewers unless also named by `--proxy-operators`. Only set this when the
    /// proxy strips the header from what clients send.
    #[arg(long)]
    pub proxy_user_header: Option<String>,
    /// Users of `--proxy-user-header` who are operators (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub proxy_operators: Vec<String>,
    /// URL prefix the console is served under behind a reverse proxy, e.g. `/warren`.
    #[arg(long, default_value = "")]
    pub base_path: String,
    /// How often the shared poller reads the broker, e.g. `2s`.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub refresh: Duration,
}

/// What every handler reads.
pub(crate) struct Console {
    pub settings: Settings,
    pub base: String,
    pub auth: auth::Auth,
    pub live: live::Live,
    pub dead: pages::DeadCache,
    pub trail: warren::ops::audit::Trail,
}

pub(crate) type Shared = Arc<Console>;

impl Console {
    /// A session for one read or action, named `warren console host:pid` in the management UI.
    /// One per request, not one kept open: a broker restart costs the next request nothing.
    pub async fn session(&self) -> Result<warren::broker::Session> {
        let s = &self.settings;
        warren::broker::Session::open(&s.broker_url(), "console", s.connect_timeout).await
    }
}

/// A failed request: its status and the reason, shown as text.
#[derive(Debug)]
pub(crate) struct Failure(pub StatusCode, pub String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (
            self.0,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{}\n", self.1),
        )
            .into_response()
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        let status = match &e {
            Error::InvalidInput(_) => StatusCode::BAD_REQUEST,
            Error::MissingQueue { .. } => StatusCode::NOT_FOUND,
            _ => StatusCode::BAD_GATEWAY,
        };
        Failure(status, e.to_string())
    }
}

/// `warren console`
pub(crate) async fn run(settings: &Settings, args: ConsoleArgs) -> Result<ExitCode> {
    let base = normalised_base(&args.base_path)?;
    let auth = auth::Auth::configure(&args)?;
    if !args.bind.ip().is_loopback() && !auth.has_credentials() {
        return Err(Error::InvalidInput(format!(
            "refusing to serve the console on {} without auth: anyone who reaches it could \
             read every task; give --tokens-file (or WARREN_CONSOLE_OPERATOR_TOKEN / \
             WARREN_CONSOLE_VIEWER_TOKEN) or --proxy-user-header, or bind 127.0.0.1",
            args.bind
        )));
    }
    let listener = tokio::net::TcpListener::bind(args.bind)
        .await
        .map_err(|source| Error::Io {
            context: format!("listening on {}", args.bind),
            source,
        })?;
    let console = Arc::new(Console {
        settings: settings.clone(),
        base: base.clone(),
        auth,
        live: live::Live::start(settings.clone(), args.refresh)?,
        dead: pages::DeadCache::default(),
        trail: warren::ops::audit::Trail::default(),
    });
    tokio::spawn(follow_audit(console.clone()));
    let app = router(console.clone());
    let app = match base.is_empty() {
        true => app,
        // `nest` serves `/warren` but not `/warren/`, which is what people type.
        false => {
            let to = base.clone();
            Router::new().nest(&base, app).route(
                &format!("{base}/"),
                get(move || async move { axum::response::Redirect::permanent(&to) }),
            )
        }
    };
    let local = listener.local_addr().map_err(|source| Error::Io {
        context: "reading the bound address".into(),
        source,
    })?;
    tracing::info!(address = %local, base = %base, "console listening");
    eprintln!("warren console on http://{local}{base}/");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|source| Error::Io {
            context: "serving the console".into(),
            source,
        })?;
    Ok(ExitCode::SUCCESS)
}

/// `/warren/` → `/warren`; empty stays empty; anything else not starting with `/` is refused.
fn normalised_base(raw: &str) -> Result<String> {
    let trimmed = raw.trim_end_matches('/');
    if !trimmed.is_empty() && !trimmed.starts_with('/') {
        return Err(Error::InvalidInput(format!(
            "--base-path `{raw}` must start with `/`, e.g. `/warren`"
        )));
    }
    if trimmed.contains(['?', '#', '"', '<', '>', ' ']) {
        return Err(Error::InvalidInput(format!(
            "--base-path `{raw}` may hold only a URL path"
        )));
    }
    Ok(trimmed.to_string())
}

/// The audit trail's follower: reads the stream from its start, and again after a lost
/// connection.
async fn follow_audit(console: Shared) {
    let names = warren::topology::Names::new(&console.settings.namespace);
    loop {
        match warren::broker::Session::open(
            &console.settings.broker_url(),
            "console audit",
            console.settings.connect_timeout,
        )
        .await
        {
            Ok(session) => {
                if let Err(e) = warren::ops::audit::follow(&session, &names, &console.trail).await {
                    tracing::warn!(error = %e, "reading the audit stream stopped; reading it again");
                }
                session.close("console audit follower restarts").await;
            }
            Err(e) => tracing::warn!(error = %e, "the audit stream cannot be read now"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Every route, relative to the base path.
fn router(console: Shared) -> Router {
    let csp = HeaderValue::from_static(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    Router::new()
        .route("/", get(pages::overview))
        .route("/api/overview", get(pages::overview_json))
        .route("/api/health", get(pages::health))
        .route("/events", get(pages::events))
        .route("/login", get(pages::login_form).post(actions::login))
        .route("/logout", post(actions::logout))
        .route("/assets/{file}", get(pages::asset))
        .route("/tasks/{task}/dead", get(pages::dead_list))
        .route("/api/tasks/{task}/dead", get(pages::dead_list_json))
        .route("/tasks/{task}/dead/{id}", get(pages::dead_detail))
        .route("/api/tasks/{task}/dead/{id}", get(pages::dead_detail_json))
        .route("/tasks/{task}/dead/{id}/replay", post(actions::replay_one))
        .route("/tasks/{task}/dead/{id}/purge", post(actions::purge_one))
        .route("/tasks/{task}/dead-matching", post(actions::matching))
        .route("/tasks/{task}/{verb}", post(actions::control))
        .route("/schedules", get(pages::schedules))
        .route("/api/schedules", get(pages::schedules_json))
        .route("/schedules/{name}/run", post(actions::run_schedule))
        .route("/workers", get(pages::workers))
        .route("/api/workers", get(pages::workers_json))
        .route("/audit", get(pages::audit))
        .route("/api/audit", get(pages::audit_json))
        .layer(RequestBodyLimitLayer::new(4 * 1024 * 1024))
        .layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            csp,
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        ))
        .with_state(console)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_paths_are_normalised_or_refused() {
        assert_eq!(normalised_base("").unwrap(), "");
        assert_eq!(normalised_base("/warren/").unwrap(), "/warren");
        assert!(normalised_base("warren").is_err());
        assert!(normalised_base("/a\"b").is_err());
    }
}
