//! The POSTs: each checks [`super::auth::Auth::operator`] first, acts through the library's
//! `ops` (every republish confirmed before its dead copy is removed), then writes an audit
//! record, and reports done only once that record is confirmed too.

use std::collections::{BTreeSet, HashMap};

use axum::Form;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use warren::ops::audit::AuditRecord;
use warren::ops::dead_index::FilterText;
use warren::ops::dlq::{self, Selection};
use warren::topology::Names;
use warren::{Error, Producer};

use super::auth::{COOKIE, Who, same_origin};
use super::live::now_ms;
use super::pages::{DonePage, Pending, declared};
use super::{Failure, Shared};

type Answer<T> = std::result::Result<T, Failure>;
type Fields = HashMap<String, String>;

fn field<'a>(form: &'a Fields, name: &str) -> Option<&'a str> {
    form.get(name).map(String::as_str)
}

/// `POST /login`: a token for a session cookie.
pub(crate) async fn login(
    State(c): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<Fields>,
) -> Answer<Response> {
    same_origin(&headers)?;
    let Some(id) = c.auth.login(field(&form, "token").unwrap_or_default()) else {
        return Ok(Redirect::to(&format!("{}/login?failed", c.base)).into_response());
    };
    let path = if c.base.is_empty() { "/" } else { &c.base };
    let cookie = format!("{COOKIE}={id}; HttpOnly; SameSite=Strict; Path={path}");
    Ok((
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, cookie),
            (header::LOCATION, format!("{}/", c.base)),
        ],
    )
        .into_response())
}

/// `POST /logout`
pub(crate) async fn logout(State(c): State<Shared>, headers: HeaderMap) -> Answer<Response> {
    same_origin(&headers)?;
    c.auth.logout(&headers);
    let cookie = format!("{COOKIE}=; HttpOnly; SameSite=Strict; Max-Age=0; Path=/");
    Ok((
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, cookie),
            (header::LOCATION, format!("{}/login", c.base)),
        ],
    )
        .into_response())
}

/// Writes `record` to the audit stream; a failure says the action itself was done.
async fn audited(c: &Shared, record: AuditRecord) -> Answer<()> {
    let settings = &c.settings;
    let names = Names::new(&settings.namespace);
    let written = async {
        let session = c.session().await?;
        let r = warren::ops::audit::record(&session, &names, &record).await;
        session.close("audit record written").await;
        r
    }
    .await;
    written.map_err(|e| {
        Failure(
            StatusCode::BAD_GATEWAY,
            format!(
                "`{}` was done, but its audit record could not be written: {e}",
                record.action
            ),
        )
    })
}

fn record(who: &Who, action: &str, task: &str, target: &str, count: usize) -> AuditRecord {
    let mut r = AuditRecord::now(&who.name, who.role.as_str(), action);
    r.task = Some(task.to_string());
    r.target = target.to_string();
    r.count = count as u64;
    r
}

fn done(c: &Shared, who: Who, title: String, lines: Vec<String>, back: String) -> Answer<Response> {
    DonePage {
        base: c.base.clone(),
        who,
        title,
        lines,
        back,
        confirm: None,
    }
    .answer()
}

/// `POST /tasks/{task}/dead/{id}/replay`: as it died, or with the form's `payload` in place
/// of its own (JSON, checked; the new task records the id it replays).
pub(crate) async fn replay_one(
    State(c): State<Shared>,
    Path((task, id)): Path<(String, String)>,
    headers: HeaderMap,
    Form(form): Form<Fields>,
) -> Answer<Response> {
    let who = c.auth.operator(&headers, field(&form, "csrf"))?;
    declared(&c, &task)?;
    let edited = field(&form, "payload").filter(|p| !p.trim().is_empty());
    if let Some(body) = edited {
        dlq::check_edited(body.as_bytes(), c.settings.max_payload_bytes)
            .map_err(|e| Failure(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    }
    let producer = Producer::with_role(&c.settings, "console")?;
    let session = c.session().await?;
    let result = match edited {
        Some(body) => dlq::replay_edited(&session, &producer, &task, &id, body.as_bytes())
            .await
            .map(|r| (vec![r.replayed], Some(r.new_id))),
        None => {
            let ids = Selection::Ids(BTreeSet::from([id.clone()]));
            dlq::replay(&session, &producer, &task, &ids, false)
                .await
                .map(|r| (r.replayed, None))
        }
    };
    session.close("replayed").await;
    producer.close().await;
    c.dead.forget(&task);
    let gone = || {
        Failure(
            StatusCode::CONFLICT,
            format!(
                "dead `{task}` task `{id}` is no longer in the dead queue: it was replayed or \
                 purged already (see the audit page), or never died"
            ),
        )
    };
    let (replayed, new_id) = match result {
        Err(Error::InvalidInput(m)) if m.starts_with("no dead") => return Err(gone()),
        other => other?,
    };
    if replayed.is_empty() {
        return Err(gone());
    }
    let action = if new_id.is_some() {
        "replay-edited"
    } else {
        "replay"
    };
    let mut rec = record(&who, action, &task, &id, 1);
    if let Some(n) = &new_id {
        rec.detail = format!("new id {n}");
    }
    audited(&c, rec).await?;
    let mut lines = vec![format!("dead task {id} replayed")];
    if let Some(n) = new_id {
        lines.push(format!("the edited task runs as {n}"));
    }
    done(
        &c,
        who,
        format!("Replayed {id}"),
        lines,
        format!("{}/tasks/{task}/dead", c.base),
    )
}

/// `POST /tasks/{task}/dead/{id}/purge`
pub(crate) async fn purge_one(
    State(c): State<Shared>,
    Path((task, id)): Path<(String, String)>,
    headers: HeaderMap,
    Form(form): Form<Fields>,
) -> Answer<Response> {
    let who = c.auth.operator(&headers, field(&form, "csrf"))?;
    declared(&c, &task)?;
    let removed = purge(&c, &task, &BTreeSet::from([id.clone()])).await?;
    if removed.is_empty() {
        return Err(Failure(
            StatusCode::CONFLICT,
            format!(
                "dead `{task}` task `{id}` is no longer in the dead queue: replayed or purged already"
            ),
        ));
    }
    audited(&c, record(&who, "purge", &task, &id, 1)).await?;
    done(
        &c,
        who,
        format!("Purged {id}"),
        vec![format!("dead task {id} deleted")],
        format!("{}/tasks/{task}/dead", c.base),
    )
}

async fn purge(c: &Shared, task: &str, ids: &BTreeSet<String>) -> Answer<Vec<String>> {
    let session = c.session().await?;
    let names = Names::new(&c.settings.namespace);
    let removed = dlq::purge_ids(&session, &names, task, ids).await;
    session.close("purged").await;
    c.dead.forget(task);
    Ok(removed?)
}

/// `POST /tasks/{task}/dead-matching`: replay or purge every dead task the form's filter
/// matches. Without `confirm` it counts them and shows a confirm form bound to exactly
/// those ids (held here under a token); with it, it acts on those ids and no others, so a
/// task that died in between is not swept up unseen.
pub(crate) async fn matching(
    State(c): State<Shared>,
    Path(task): Path<String>,
    headers: HeaderMap,
    Form(form): Form<Fields>,
) -> Answer<Response> {
    let who = c.auth.operator(&headers, field(&form, "csrf"))?;
    declared(&c, &task)?;
    let back = format!("{}/tasks/{task}/dead", c.base);
    if let Some(token) = field(&form, "confirm") {
        let pending = {
            let mut held = c.dead.pending.lock().unwrap_or_else(|p| p.into_inner());
            held.remove(token)
        };
        let Some(Pending {
            task: for_task,
            action,
            ids,
        }) = pending.filter(|p| p.task == task)
        else {
            return Err(Failure(
                StatusCode::CONFLICT,
                "this confirmation was used or has expired: count the matching tasks again".into(),
            ));
        };
        let (acted, missing) = match action.as_str() {
            "replay" => {
                let producer = Producer::with_role(&c.settings, "console")?;
                let session = c.session().await?;
                let r =
                    dlq::replay(&session, &producer, &for_task, &Selection::Ids(ids), false).await;
                session.close("replayed").await;
                producer.close().await;
                c.dead.forget(&task);
                let r = r?;
                (r.replayed.len(), r.not_found.len() + r.failed.len())
            }
            _ => {
                let n = ids.len();
                let removed = purge(&c, &task, &ids).await?;
                (removed.len(), n - removed.len())
            }
        };
        let mut rec = record(&who, &format!("{action}-matching"), &task, "filter", acted);
        rec.detail = format!("{missing} of those counted were gone already");
        audited(&c, rec).await?;
        let mut lines = vec![format!("{acted} dead tasks: {action} done")];
        if missing > 0 {
            lines.push(format!(
                "{missing} of those counted were no longer dead (replayed or purged meanwhile)"
            ));
        }
        return done(&c, who, format!("{action}: {acted} tasks"), lines, back);
    }
    let action = match field(&form, "action") {
        Some(a @ ("replay" | "purge")) => a.to_string(),
        other => {
            return Err(Failure(
                StatusCode::BAD_REQUEST,
                format!(
                    "action `{}` is not `replay` or `purge`",
                    other.unwrap_or("")
                ),
            ));
        }
    };
    let text = FilterText {
        reason: field(&form, "reason").unwrap_or_default().into(),
        min_attempts: field(&form, "min_attempts").unwrap_or_default().into(),
        max_attempts: field(&form, "max_attempts").unwrap_or_default().into(),
        older_than: field(&form, "older_than").unwrap_or_default().into(),
        newer_than: field(&form, "newer_than").unwrap_or_default().into(),
        id: field(&form, "id").unwrap_or_default().into(),
        q: field(&form, "q").unwrap_or_default().into(),
    };
    let filter = text.parse()?;
    let snapshot = c.dead.get(&c, &task, true).await?;
    let ids: BTreeSet<String> = snapshot
        .matching(&filter, now_ms())
        .filter_map(|e| e.task.id.clone())
        .collect();
    let token = format!("{:032x}", rand::random::<u128>());
    let count = ids.len();
    {
        let mut held = c.dead.pending.lock().unwrap_or_else(|p| p.into_inner());
        // A few unconfirmed counts at most; an old one is simply counted again.
        if held.len() > 64 {
            held.clear();
        }
        held.insert(
            token.clone(),
            Pending {
                task: task.clone(),
                action: action.clone(),
                ids,
            },
        );
    }
    DonePage {
        base: c.base.clone(),
        who,
        title: format!("{action} {count} dead `{task}` tasks?"),
        lines: vec![format!(
            "{count} dead tasks match the filter now; confirm to {action} exactly these"
        )],
        back,
        confirm: Some((format!("{}/tasks/{task}/dead-matching", c.base), token)),
    }
    .answer()
}

/// `POST /tasks/{task}/pause`, `…/resume`, and `…/cancel` (form field `ids`: task ids
/// separated by spaces, commas or lines).
pub(crate) async fn control(
    State(c): State<Shared>,
    Path((task, verb)): Path<(String, String)>,
    headers: HeaderMap,
    Form(form): Form<Fields>,
) -> Answer<Response> {
    let pause = match verb.as_str() {
        "pause" => true,
        "resume" => false,
        "cancel" => return cancel(c, task, headers, form).await,
        _ => {
            return Err(Failure(
                StatusCode::NOT_FOUND,
                format!("no action `{verb}` for a task type (pause, resume, cancel)"),
            ));
        }
    };
    let who = c.auth.operator(&headers, field(&form, "csrf"))?;
    declared(&c, &task)?;
    let producer = Producer::with_role(&c.settings, "console")?;
    let sent = match pause {
        true => producer.pause(&task).await,
        false => producer.resume(&task).await,
    };
    producer.close().await;
    sent?;
    let action = if pause { "pause" } else { "resume" };
    audited(&c, record(&who, action, &task, &task, 0)).await?;
    done(
        &c,
        who,
        format!("{action}: {task}"),
        vec![format!("`{task}` {action}d on every worker")],
        format!("{}/", c.base),
    )
}

async fn cancel(c: Shared, task: String, headers: HeaderMap, form: Fields) -> Answer<Response> {
    let who = c.auth.operator(&headers, field(&form, "csrf"))?;
    declared(&c, &task)?;
    let ids: Vec<String> = (field(&form, "ids").unwrap_or_default())
        .split(|ch: char| ch.is_whitespace() || ch == ',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if ids.is_empty() {
        return Err(Failure(
            StatusCode::BAD_REQUEST,
            "give the ids to cancel in `ids`, separated by spaces, commas or lines".into(),
        ));
    }
    let producer = Producer::with_role(&c.settings, "console")?;
    let sent = producer.cancel(&task, &ids).await;
    producer.close().await;
    sent?;
    audited(&c, record(&who, "cancel", &task, &ids.join(" "), ids.len())).await?;
    done(
        &c,
        who,
        format!("Cancelled {} `{task}` tasks", ids.len()),
        vec![format!(
            "not started ones never start, running ones are stopped; both go dead as `cancelled`: {}",
            ids.join(", ")
        )],
        format!("{}/", c.base),
    )
}

/// `POST /schedules/{name}/run`: enqueues the schedule's task with its payload now, once,
/// besides its own firings (which it does not move).
pub(crate) async fn run_schedule(
    State(c): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Form(form): Form<Fields>,
) -> Answer<Response> {
    let who = c.auth.operator(&headers, field(&form, "csrf"))?;
    let Some(schedule) = c.settings.schedules.get(&name) else {
        return Err(Failure(
            StatusCode::NOT_FOUND,
            format!("no schedule `{name}` in this console's topology"),
        ));
    };
    let body = serde_json::to_vec(&schedule.payload)
        .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let producer = Producer::with_role(&c.settings, "console")?;
    let sent = producer
        .enqueue_raw(&schedule.task, body, Default::default())
        .await;
    producer.close().await;
    let id = sent?;
    let mut rec = record(&who, "run-schedule", &schedule.task, &name, 1);
    rec.detail = format!("task id {id}");
    audited(&c, rec).await?;
    done(
        &c,
        who,
        format!("Ran {name} now"),
        vec![format!("`{}` enqueued as {id}", schedule.task)],
        format!("{}/schedules", c.base),
    )
}
