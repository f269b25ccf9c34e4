//! `warren schedules`: each schedule's cadence, next and last firing, and which scheduler
//! leads, read from the management API (the records without consuming them, the lease's
//! holder by its connection name).

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};

use crate::cadence::Cadence;
use crate::config::Settings;
use crate::error::Result;
use crate::ops::management::{Management, enc};
use crate::wire::header;

/// One schedule as `warren schedules` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScheduleRow {
    /// The schedule's name.
    pub name: String,
    /// The task type it fires.
    pub task: String,
    /// `cron 0 3 * * * Europe/Berlin` or `every 10m`.
    pub cadence: String,
    /// `latest`, `all` or `none`.
    pub catch_up: String,
    /// The next slot after now, RFC 3339 UTC; `None` when there is none.
    pub next: Option<String>,
    /// The last slot fired, RFC 3339 UTC; `None` when it never fired.
    pub last: Option<String>,
    /// The last firing's task id.
    pub last_id: Option<String>,
}

/// The schedules of a namespace and their leader.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Schedules {
    /// Connection name of the scheduler holding the lease (`warren scheduler host:pid`),
    /// `None` when no scheduler leads.
    pub leader: Option<String>,
    /// One row per schedule, by name.
    pub schedules: Vec<ScheduleRow>,
}

/// The text `warren schedules` shows for a cadence.
pub fn cadence_text(cadence: &Cadence) -> String {
    match cadence {
        Cadence::Every(d) => format!("every {}", crate::duration::duration_text(*d)),
        Cadence::Cron(c) => format!("cron {} {}", c.pattern(), c.zone()),
    }
}

/// Reads every schedule's record and the lease's holder.
///
/// # Errors
/// [`crate::error::Error::Management`] and the like when the API cannot be read.
pub fn fetch(settings: &Settings, mgmt: &Management, now: DateTime<Utc>) -> Result<Schedules> {
    let vhost = crate::broker::url_parts(&settings.amqp_url)?.vhost;
    let names = settings.layout().names;
    let mut rows = Vec::new();
    for (name, s) in &settings.schedules {
        let record = names.schedule_record(&s.task, name);
        let last = last_firing(mgmt, &vhost, &record)?;
        rows.push(ScheduleRow {
            name: name.clone(),
            task: s.task.clone(),
            cadence: cadence_text(&s.cadence),
            catch_up: s.catch_up.as_str().to_string(),
            // Never at or before the last firing (read after `now`, it may be newer).
            next: (s.cadence)
                .next_after(last.as_ref().map_or(now, |(slot, _)| now.max(*slot)))
                .map(rfc3339),
            last: last.as_ref().map(|(slot, _)| rfc3339(*slot)),
            last_id: last.map(|(_, id)| id),
        });
    }
    Ok(Schedules {
        leader: leader(mgmt, &vhost, &names.scheduler_lease())?,
        schedules: rows,
    })
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// The record's firing: its slot and task id, left in the queue (`ack_requeue_true`).
fn last_firing(
    mgmt: &Management,
    vhost: &str,
    queue: &str,
) -> Result<Option<(DateTime<Utc>, String)>> {
    if mgmt.queue(vhost, queue)?.is_none() {
        return Ok(None);
    }
    let got = mgmt.post_json(
        &format!("queues/{}/{}/get", enc(vhost), enc(queue)),
        &json!({"count": 8, "ackmode": "ack_requeue_true", "encoding": "auto", "truncate": 64}),
    )?;
    Ok(latest_of(&got))
}

/// Of the messages a management `get` returned, the latest slot and its task id.
fn latest_of(messages: &Value) -> Option<(DateTime<Utc>, String)> {
    (messages.as_array()?.iter())
        .filter_map(|m| {
            let props = &m["properties"];
            let ms = props["headers"][header::SCHEDULED_FOR].as_i64()?;
            let id = props["message_id"].as_str()?.to_string();
            Some((DateTime::from_timestamp_millis(ms)?, id))
        })
        .max_by_key(|(slot, _)| *slot)
}

/// The connection name of the lease's holder: the queue's owner, looked up among the
/// connections.
fn leader(mgmt: &Management, vhost: &str, lease: &str) -> Result<Option<String>> {
    let Some(q) = mgmt.queue(vhost, lease)? else {
        return Ok(None);
    };
    let Some(owner) = q["owner_pid_details"]["name"].as_str() else {
        return Ok(None);
    };
    let Some(conn) = mgmt.get_opt(&format!("connections/{}", enc(owner)))? else {
        return Ok(None);
    };
    Ok(conn["client_properties"]["connection_name"]
        .as_str()
        .or(conn["user_provided_name"].as_str())
        .map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_recorded_slot_wins() {
        let got = json!([
            {"properties": {"message_id": "tick@2026-11-23T08:00:02Z",
                            "headers": {"warren-scheduled-for": 1_795_420_802_000_i64}}},
            {"properties": {"message_id": "tick@2026-11-23T08:00:04Z",
                            "headers": {"warren-scheduled-for": 1_795_420_804_000_i64}}},
            {"properties": {"message_id": "not a firing"}}
        ]);
        let (slot, id) = latest_of(&got).unwrap();
        assert_eq!(id, "tick@2026-11-23T08:00:04Z");
        assert_eq!(slot.timestamp_millis(), 1_795_420_804_000);
        assert_eq!(latest_of(&json!([])), None);
    }

    #[test]
    fn cadences_read_as_written() {
        use crate::cadence::CronCadence;
        assert_eq!(
            cadence_text(&Cadence::Every(std::time::Duration::from_secs(600))),
            "every 10m"
        );
        assert_eq!(
            cadence_text(&Cadence::Cron(Box::new(
                CronCadence::new("0 3 * * *", "Europe/Berlin").unwrap()
            ))),
            "cron 0 3 * * * Europe/Berlin"
        );
    }
}
