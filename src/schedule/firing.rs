//! One firing as a message: the schedule's task with its payload, a task id that names the
//! schedule and slot, and a `BCC` key that copies it into the schedule's record queue. Pure.

use chrono::{DateTime, SecondsFormat, Utc};
use lapin::types::{AMQPValue, FieldArray};

use crate::config::{ScheduleSettings, Settings};
use crate::topology::names::schedule_key;
use crate::wire::copies::{IfUnroutable, Outgoing};
use crate::wire::{Envelope, header, unix_ms};

/// The task id of `schedule`'s firing for `slot`: `{schedule}@{slot, RFC 3339 UTC}`, e.g.
/// `nightly@2026-11-24T02:00:00Z`. The same on every scheduler, so a handler (and an
/// operator reading a dead queue) can tell which firing a task is, and deduplicate by id.
pub fn task_id(schedule: &str, slot: DateTime<Utc>) -> String {
    format!(
        "{schedule}@{}",
        slot.to_rfc3339_opts(SecondsFormat::AutoSi, true)
    )
}

/// The message of `schedule`'s firing for `slot`, fired at `now`.
///
/// One publish reaches two queues: the task's (routing key = task name) and the schedule's
/// record (`BCC` = `{task}.schedule.{name}`), atomically: the broker routes a publish it
/// received to all its queues, and one it did not receive to none, so a scheduler killed
/// mid-publish leaves either a task and its record, or neither.
///
/// The firing carries no broker-side `expiration` even when the type has `expires`: the
/// same message is the record, which must outlive it. The worker still refuses it once
/// `warren-expires-at` has passed (dead, `expired`).
pub(crate) fn message(
    settings: &Settings,
    name: &str,
    schedule: &ScheduleSettings,
    slot: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Outgoing {
    let task = &schedule.task;
    let mut env = Envelope::new(task_id(name, slot), task);
    env.enqueued_at_ms = unix_ms(now.into());
    env.expires_at_ms = settings
        .policy(task)
        .expires
        .map(|d| unix_ms(std::time::SystemTime::from(now) + d));
    let mut headers = env.headers();
    headers.insert(header::SCHEDULE.into(), AMQPValue::LongString(name.into()));
    headers.insert(
        header::SCHEDULED_FOR.into(),
        AMQPValue::LongLongInt(slot.timestamp_millis()),
    );
    headers.insert(
        header::BCC.into(),
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongString(
            schedule_key(task, name).as_str().into(),
        )])),
    );
    let body = serde_json::to_vec(&schedule.payload).unwrap_or_else(|_| b"{}".to_vec());
    Outgoing {
        task: task.clone(),
        id: env.id.clone(),
        route: settings.routes().work(task),
        body,
        properties: env.properties_with(headers, None),
        if_unroutable: if settings.is_broadcast(task) {
            IfUnroutable::BroadcastFiring
        } else {
            IfUnroutable::Error
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::decode::{header_int, header_str};

    #[test]
    fn a_firing_names_its_slot_and_reaches_the_record_by_bcc() {
        let settings = Settings::from_toml(
            "namespace = \"ns\"\n[tasks.report]\nexpires = \"1h\"\n\
             [schedules.nightly]\ntask = \"report\"\ncron = \"0 3 * * *\"\npayload = { kind = \"daily\" }\n",
        )
        .unwrap();
        let slot = DateTime::parse_from_rfc3339("2026-11-24T03:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let now = slot + chrono::Duration::milliseconds(250);
        let out = message(
            &settings,
            "nightly",
            &settings.schedules["nightly"],
            slot,
            now,
        );
        assert_eq!(out.id, "nightly@2026-11-24T03:00:00Z");
        assert_eq!(out.route.exchange, "ns.tasks");
        assert_eq!(out.route.routing_key, "report");
        assert_eq!(out.body, br#"{"kind":"daily"}"#);
        let p = &out.properties;
        assert_eq!(header_str(p, header::SCHEDULE).as_deref(), Some("nightly"));
        assert_eq!(
            header_int(p, header::SCHEDULED_FOR),
            Some(slot.timestamp_millis())
        );
        assert_eq!(
            header_int(p, header::EXPIRES_AT),
            Some(now.timestamp_millis() + 3_600_000)
        );
        assert!(p.expiration().is_none(), "the record must outlive expiry");
        let bcc = p.headers().as_ref().unwrap().inner()[header::BCC].clone();
        let AMQPValue::FieldArray(keys) = bcc else {
            panic!("{bcc:?}")
        };
        assert_eq!(
            keys.as_slice(),
            &[AMQPValue::LongString("report.schedule.nightly".into())]
        );
    }
}
