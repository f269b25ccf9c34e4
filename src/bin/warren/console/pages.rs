//! The pages and their JSON twins under `/api/`: what the console reads, never changes.

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use askama::Template;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use futures_util::Stream;
use rust_embed::RustEmbed;
use serde::Serialize;
use warren::ops::dead_entry::Entry;
use warren::ops::dead_index::{FilterText, Page, Snapshot};
use warren::ops::status::Row;
use warren::topology::Names;

use super::auth::Who;
use super::live::now_ms;
use super::{Failure, Shared};

type Answer<T> = std::result::Result<T, Failure>;

/// The console's script, styles and images, in the binary.
#[derive(RustEmbed)]
#[folder = "assets/console/"]
struct Assets;

/// How long a dead-queue snapshot serves pages before the next request reads the queue anew.
pub(crate) const SNAPSHOT_FRESH: Duration = Duration::from_secs(10);

/// Snapshots of dead queues, one per task type, and the id sets a confirm page stands for.
#[derive(Default)]
pub(crate) struct DeadCache {
    snapshots: Mutex<HashMap<String, Arc<Snapshot>>>,
    /// Confirm token → what its confirm page counted.
    pub pending: Mutex<HashMap<String, Pending>>,
}

/// A bulk action counted and shown, waiting for its confirm.
pub(crate) struct Pending {
    /// The task type.
    pub task: String,
    /// `replay` or `purge`.
    pub action: String,
    /// The ids counted when the page was shown: the confirm acts on these and no others.
    pub ids: BTreeSet<String>,
}

impl DeadCache {
    /// `task`'s snapshot: the cached one while fresh, else a new one.
    pub async fn get(&self, console: &Shared, task: &str, refresh: bool) -> Answer<Arc<Snapshot>> {
        if !refresh {
            let cached = self.snapshots.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(s) = cached.get(task)
                && now_ms() - s.taken_at_ms < SNAPSHOT_FRESH.as_millis() as i64
            {
                return Ok(s.clone());
            }
        }
        let settings = &console.settings;
        let session = console.session().await?;
        let names = Names::new(&settings.namespace);
        let taken = warren::ops::dlq::snapshot(&session, &names, task).await;
        session.close("snapshot taken").await;
        let snapshot = Arc::new(taken?);
        let mut cached = self.snapshots.lock().unwrap_or_else(|p| p.into_inner());
        cached.insert(task.to_string(), snapshot.clone());
        Ok(snapshot)
    }

    /// Forgets `task`'s snapshot (after a change to its dead queue).
    pub fn forget(&self, task: &str) {
        let mut cached = self.snapshots.lock().unwrap_or_else(|p| p.into_inner());
        cached.remove(task);
    }
}

/// 404 unless the topology declares `task`.
pub(crate) fn declared(console: &Shared, task: &str) -> Answer<()> {
    match console.settings.tasks.contains_key(task) {
        true => Ok(()),
        false => Err(Failure(
            StatusCode::NOT_FOUND,
            format!("no task type `{task}` in this console's topology"),
        )),
    }
}

/// A figure the broker has not reported yet shows as `–`.
fn figure(v: Option<u64>) -> String {
    v.map_or_else(|| "–".to_string(), |v| v.to_string())
}

fn rate(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_string(), |v| format!("{v:.1}/s"))
}

/// One row of the overview as the page shows it.
pub(crate) struct RowView {
    pub task: String,
    pub ready: String,
    pub running: String,
    pub consumers: String,
    pub dead: String,
    pub publish: String,
    pub ack: String,
    pub state: String,
}

impl RowView {
    fn of(r: &Row) -> RowView {
        let mut state = Vec::new();
        if r.paused {
            state.push("paused".to_string());
        }
        if let Some(limit) = r.concurrency_limit {
            state.push(format!("limit {}/{limit}", figure(r.limit_in_use)));
        }
        if let Some(rate) = &r.rate_limit {
            state.push(format!("rate {rate}"));
        }
        if let Some(w) = r.broadcast_workers {
            state.push(format!("broadcast to {w}"));
        }
        RowView {
            task: r.task.clone(),
            ready: figure(r.ready),
            running: figure(r.running),
            consumers: figure(r.consumers),
            dead: figure(r.dead),
            publish: rate(r.publish_rate),
            ack: rate(r.ack_rate),
            state: state.join(", "),
        }
    }
}

#[derive(Template)]
#[template(path = "console/overview.html")]
struct OverviewPage {
    base: String,
    who: Who,
    broker: String,
    delayed: String,
    error: Option<String>,
    cluster: Option<warren::ops::cluster::Cluster>,
    rows: Vec<RowView>,
}

fn html<T: Template>(page: &T) -> Answer<Response> {
    page.render()
        .map(|h| Html(h).into_response())
        .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// `GET /`
pub(crate) async fn overview(State(c): State<Shared>, headers: HeaderMap) -> Answer<Response> {
    let who = c.auth.viewer(&headers)?;
    let figures = c.live.now();
    let status = figures.status.as_ref();
    html(&OverviewPage {
        base: c.base.clone(),
        who,
        broker: status.and_then(|s| s.broker.clone()).unwrap_or_default(),
        delayed: figure(status.and_then(|s| s.delayed)),
        error: figures.error.clone(),
        cluster: figures.cluster.clone(),
        rows: status
            .map(|s| s.tasks.iter().map(RowView::of).collect())
            .unwrap_or_default(),
    })
}

/// `GET /api/overview`: the shared poller's latest figures.
pub(crate) async fn overview_json(State(c): State<Shared>, headers: HeaderMap) -> Answer<Response> {
    c.auth.viewer(&headers)?;
    Ok(Json(&*c.live.now()).into_response())
}

/// `GET /api/health`: alive, and how many polls the management API has had.
pub(crate) async fn health(State(c): State<Shared>) -> Response {
    Json(serde_json::json!({ "ok": true, "polls": c.live.polls() })).into_response()
}

/// `GET /events`: the overview's figures each time the poller has new ones.
pub(crate) async fn events(
    State(c): State<Shared>,
    headers: HeaderMap,
) -> Answer<Sse<impl Stream<Item = std::result::Result<Event, Infallible>>>> {
    c.auth.viewer(&headers)?;
    let rx = c.live.subscribe();
    let stream = futures_util::stream::unfold((rx, true), |(mut rx, first)| async move {
        if !first && rx.changed().await.is_err() {
            return None;
        }
        let figures = rx.borrow_and_update().clone();
        let rows: Vec<_> = (figures.status.iter())
            .flat_map(|s| s.tasks.iter())
            .map(|r| {
                let v = RowView::of(r);
                serde_json::json!({
                    "task": v.task, "ready": v.ready, "running": v.running,
                    "consumers": v.consumers, "dead": v.dead, "publish": v.publish,
                    "ack": v.ack, "state": v.state,
                })
            })
            .collect();
        let data = serde_json::json!({ "rows": rows, "polls": figures.polls }).to_string();
        Some((
            Ok(Event::default().event("figures").data(data)),
            (rx, false),
        ))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// `GET /assets/{file}`
pub(crate) async fn asset(Path(file): Path<String>) -> Response {
    match Assets::get(&file) {
        Some(f) => {
            let kind = match file.rsplit('.').next() {
                Some("js") => "text/javascript; charset=utf-8",
                Some("css") => "text/css; charset=utf-8",
                Some("png") => "image/png",
                Some("svg") => "image/svg+xml",
                _ => "application/octet-stream",
            };
            ([(header::CONTENT_TYPE, kind)], f.data.into_owned()).into_response()
        }
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

#[derive(Template)]
#[template(path = "console/login.html")]
struct LoginPage {
    base: String,
    failed: bool,
}

/// `GET /login`
pub(crate) async fn login_form(
    State(c): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
) -> Answer<Response> {
    html(&LoginPage {
        base: c.base.clone(),
        failed: q.contains_key("failed"),
    })
}

/// The dead-list query: a filter and a page.
fn dead_query(q: &HashMap<String, String>) -> Answer<(FilterText, Page)> {
    let field = |k: &str| q.get(k).cloned().unwrap_or_default();
    let text = FilterText {
        reason: field("reason"),
        min_attempts: field("min_attempts"),
        max_attempts: field("max_attempts"),
        older_than: field("older_than"),
        newer_than: field("newer_than"),
        id: field("id"),
        q: field("q"),
    };
    let page = Page::parse(
        q.get("page").map(String::as_str),
        q.get("per_page").map(String::as_str),
    )?;
    Ok((text, page))
}

/// One page of a dead queue, filtered.
#[derive(Serialize)]
pub(crate) struct DeadList {
    pub task: String,
    pub taken_at_ms: i64,
    /// Dead tasks the filter matches (in this snapshot).
    pub matching: usize,
    /// In the snapshot.
    pub total: usize,
    /// Beyond what one snapshot reads.
    pub not_read: u64,
    pub page: Page,
    pub pages: usize,
    pub reasons: Vec<(String, usize)>,
    pub entries: Vec<Entry>,
}

/// The payload fields `who` may not read.
fn mask_for<'a>(c: &'a Shared, who: &Who) -> &'a [String] {
    match who.is_operator() {
        true => &[],
        false => &c.settings.console_mask,
    }
}

async fn dead_page(
    c: &Shared,
    who: &Who,
    task: &str,
    q: &HashMap<String, String>,
) -> Answer<(DeadList, FilterText)> {
    declared(c, task)?;
    let (text, page) = dead_query(q)?;
    let filter = text.parse()?;
    let snapshot = c.dead.get(c, task, q.contains_key("refresh")).await?;
    let now = now_ms();
    // A viewer's search runs over the masked payloads: it must not find what it cannot see.
    let mask = mask_for(c, who);
    let masked: Vec<Entry> = match mask.is_empty() {
        true => Vec::new(),
        false => snapshot.entries.iter().map(|e| e.masked(mask)).collect(),
    };
    let pool: Box<dyn Iterator<Item = &Entry>> = match mask.is_empty() {
        true => Box::new(snapshot.entries.iter()),
        false => Box::new(masked.iter()),
    };
    let matching: Vec<&Entry> = pool.filter(|e| filter.matches(e, now)).collect();
    let list = DeadList {
        task: task.to_string(),
        taken_at_ms: snapshot.taken_at_ms,
        matching: matching.len(),
        total: snapshot.entries.len(),
        not_read: snapshot.not_read,
        page,
        pages: page.pages(matching.len()),
        reasons: snapshot.reasons(),
        entries: (matching.into_iter())
            .skip(page.offset())
            .take(page.per_page)
            .cloned()
            .collect(),
    };
    Ok((list, text))
}

/// `GET /api/tasks/{task}/dead`
pub(crate) async fn dead_list_json(
    State(c): State<Shared>,
    Path(task): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Answer<Response> {
    let who = c.auth.viewer(&headers)?;
    let (list, _) = dead_page(&c, &who, &task, &q).await?;
    Ok(Json(list).into_response())
}

#[derive(Template)]
#[template(path = "console/dead.html")]
struct DeadPage {
    base: String,
    who: Who,
    list: DeadList,
    filter: FilterText,
    /// The filter as a query string, for the paging links.
    query: String,
}

/// `GET /tasks/{task}/dead`
pub(crate) async fn dead_list(
    State(c): State<Shared>,
    Path(task): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Answer<Response> {
    let who = c.auth.viewer(&headers)?;
    let (list, filter) = dead_page(&c, &who, &task, &q).await?;
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(
            [
                ("reason", &filter.reason),
                ("min_attempts", &filter.min_attempts),
                ("max_attempts", &filter.max_attempts),
                ("older_than", &filter.older_than),
                ("newer_than", &filter.newer_than),
                ("id", &filter.id),
                ("q", &filter.q),
            ]
            .into_iter()
            .filter(|(_, v)| !v.is_empty()),
        )
        .finish();
    html(&DeadPage {
        base: c.base.clone(),
        who,
        list,
        filter,
        query,
    })
}

async fn dead_entry(c: &Shared, who: &Who, task: &str, id: &str) -> Answer<Entry> {
    declared(c, task)?;
    let mut snapshot = c.dead.get(c, task, false).await?;
    if snapshot.find(id).is_none() {
        // Died since the snapshot? Read the queue again before saying no.
        snapshot = c.dead.get(c, task, true).await?;
    }
    snapshot
        .find(id)
        .map(|e| e.masked(mask_for(c, who)))
        .ok_or_else(|| {
            Failure(
                StatusCode::NOT_FOUND,
                format!(
                    "no dead `{task}` task has id `{id}`: it was replayed or purged, or never died"
                ),
            )
        })
}

/// `GET /api/tasks/{task}/dead/{id}`
pub(crate) async fn dead_detail_json(
    State(c): State<Shared>,
    Path((task, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Answer<Response> {
    let who = c.auth.viewer(&headers)?;
    Ok(Json(dead_entry(&c, &who, &task, &id).await?).into_response())
}

#[derive(Template)]
#[template(path = "console/detail.html")]
struct DetailPage {
    base: String,
    who: Who,
    task: String,
    id: String,
    entry: Entry,
    pretty: String,
}

/// `GET /tasks/{task}/dead/{id}`
pub(crate) async fn dead_detail(
    State(c): State<Shared>,
    Path((task, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Answer<Response> {
    let who = c.auth.viewer(&headers)?;
    let entry = dead_entry(&c, &who, &task, &id).await?;
    let pretty = entry.payload_pretty().unwrap_or_default();
    html(&DetailPage {
        base: c.base.clone(),
        who,
        task,
        id,
        entry,
        pretty,
    })
}

#[derive(Template)]
#[template(path = "console/audit.html")]
struct AuditPage {
    base: String,
    who: Who,
    records: Vec<warren::ops::audit::AuditRecord>,
}

/// `GET /audit`
pub(crate) async fn audit(State(c): State<Shared>, headers: HeaderMap) -> Answer<Response> {
    let who = c.auth.viewer(&headers)?;
    html(&AuditPage {
        base: c.base.clone(),
        who,
        records: c.trail.newest_first(),
    })
}

/// `GET /api/audit`
pub(crate) async fn audit_json(State(c): State<Shared>, headers: HeaderMap) -> Answer<Response> {
    c.auth.viewer(&headers)?;
    Ok(Json(c.trail.newest_first()).into_response())
}

/// A page that says what an action did (or will do, with a confirm form).
#[derive(Template)]
#[template(path = "console/done.html")]
pub(crate) struct DonePage {
    pub base: String,
    pub who: Who,
    pub title: String,
    pub lines: Vec<String>,
    pub back: String,
    /// A confirm form: (action URL, confirm token) when the page asks before acting.
    pub confirm: Option<(String, String)>,
}

impl DonePage {
    pub fn answer(&self) -> Answer<Response> {
        html(self)
    }
}

async fn workers_now(c: &Shared) -> Answer<Vec<warren::ops::workers::WorkerRow>> {
    let settings = c.settings.clone();
    tokio::task::spawn_blocking(move || {
        let mgmt = warren::ops::management::Management::from_settings(&settings)?;
        warren::ops::workers::fetch(&settings, &mgmt)
    })
    .await
    .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(Failure::from)
}

#[derive(Template)]
#[template(path = "console/workers.html")]
struct WorkersPage {
    base: String,
    who: Who,
    workers: Vec<warren::ops::workers::WorkerRow>,
}

/// `GET /workers`: each connected worker, from its connection and consumers.
pub(crate) async fn workers(State(c): State<Shared>, headers: HeaderMap) -> Answer<Response> {
    let who = c.auth.viewer(&headers)?;
    html(&WorkersPage {
        base: c.base.clone(),
        who,
        workers: workers_now(&c).await?,
    })
}

/// `GET /api/workers`
pub(crate) async fn workers_json(State(c): State<Shared>, headers: HeaderMap) -> Answer<Response> {
    c.auth.viewer(&headers)?;
    Ok(Json(workers_now(&c).await?).into_response())
}

#[derive(Template)]
#[template(path = "console/schedules.html")]
struct SchedulesPage {
    base: String,
    who: Who,
    leader: String,
    rows: Vec<warren::ops::schedules::ScheduleRow>,
}

/// `GET /schedules`: cadence, next and last firing, the leading scheduler (from the shared
/// poll).
pub(crate) async fn schedules(State(c): State<Shared>, headers: HeaderMap) -> Answer<Response> {
    let who = c.auth.viewer(&headers)?;
    let figures = c.live.now();
    let s = figures.status.as_ref().and_then(|s| s.schedules.clone());
    html(&SchedulesPage {
        base: c.base.clone(),
        who,
        leader: (s.as_ref().and_then(|s| s.leader.clone()))
            .unwrap_or_else(|| "no scheduler leads now".into()),
        rows: s.map(|s| s.schedules).unwrap_or_default(),
    })
}

/// `GET /api/schedules`
pub(crate) async fn schedules_json(
    State(c): State<Shared>,
    headers: HeaderMap,
) -> Answer<Response> {
    c.auth.viewer(&headers)?;
    let figures = c.live.now();
    let s = figures.status.as_ref().and_then(|s| s.schedules.clone());
    Ok(Json(s).into_response())
}
