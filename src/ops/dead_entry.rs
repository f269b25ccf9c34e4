//! One dead message as the console shows it: what an operator reads first ([`DeadTask`]),
//! its headers as text, the broker's `x-death` history, and at most [`PAYLOAD_KEEP`] bytes of
//! its body while a snapshot is within [`PAYLOAD_BUDGET`] ([`keep_for`]); what was cut is said
//! on the entry. Masking named payload fields for viewers is here too. Pure and unit-tested.

use lapin::BasicProperties;
use lapin::types::AMQPValue;
use serde::Serialize;

use crate::wire::decode::Death;

/// One dead task as an operator sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadTask {
    /// Task id (`message_id`).
    pub id: Option<String>,
    /// `warren-reason`, else the broker's first death reason (`expired`, `delivery_limit`, …).
    pub reason: Option<String>,
    /// `warren-error`.
    pub error: Option<String>,
    /// `warren-attempt`: runs made.
    pub attempts: Option<i64>,
    /// `warren-dead-at`, unix ms; else the broker's death time.
    pub dead_at_ms: Option<i64>,
    /// `warren-replays`: times replayed before.
    pub replays: Option<i64>,
    /// `warren-worker`: which worker dead-lettered it.
    pub worker: Option<String>,
    /// The body as text.
    pub payload: String,
}

/// What an operator needs to know about one dead message.
pub fn describe(props: &BasicProperties, body: &[u8]) -> DeadTask {
    let death = Death::read(props);
    DeadTask {
        id: props.message_id().as_ref().map(|s| s.to_string()),
        reason: death.reason,
        error: death.error,
        attempts: death.attempts,
        dead_at_ms: death.dead_at_ms,
        replays: death.replays,
        worker: death.worker,
        payload: String::from_utf8_lossy(body).into_owned(),
    }
}

/// Body bytes an entry keeps while the snapshot is within its budget.
pub const PAYLOAD_KEEP: usize = 64 * 1024;
/// Body bytes an entry keeps once the snapshot's budget is spent.
pub const BRIEF_KEEP: usize = 512;
/// Body bytes one snapshot keeps in all (before entries fall back to [`BRIEF_KEEP`]).
pub const PAYLOAD_BUDGET: usize = 32 * 1024 * 1024;

/// One death in the broker's `x-death` history (newest first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrokerDeath {
    /// The queue it died in.
    pub queue: String,
    /// `rejected`, `expired`, `maxlen`, `delivery_limit`.
    pub reason: String,
    /// How many times it died there for that reason.
    pub count: i64,
    /// When, unix seconds (the broker's resolution).
    pub time_s: Option<i64>,
}

/// One dead message of a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    /// Its place in the queue when the snapshot was taken, from 0 (the next to be delivered).
    pub position: usize,
    /// What the operator reads first; `payload` holds the kept bytes only.
    pub task: DeadTask,
    /// The whole body's length in bytes.
    pub payload_bytes: usize,
    /// The body was cut to fit the snapshot's memory budget (`payload` is its start).
    pub payload_cut: bool,
    /// The body is valid UTF-8 (else `payload` is shown lossily and `payload_base64` is exact).
    pub payload_utf8: bool,
    /// Every header as text, in name order (`x-death` apart, in [`Entry::broker_deaths`]).
    pub headers: Vec<(String, String)>,
    /// The broker's `x-death` history.
    pub broker_deaths: Vec<BrokerDeath>,
    /// `correlation_id`, when set.
    pub correlation_id: Option<String>,
    /// The message's `timestamp` property, unix seconds.
    pub timestamp_s: Option<u64>,
    /// The kept bytes, exact, when the body is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
}

impl Entry {
    /// The entry for one dead message at `position`, keeping at most `keep` body bytes.
    pub fn read(position: usize, props: &BasicProperties, body: &[u8], keep: usize) -> Entry {
        let kept = &body[..body.len().min(keep)];
        let utf8 = std::str::from_utf8(body).is_ok();
        let mut task = describe(props, kept);
        // A cut inside a UTF-8 character is not the body's fault.
        if utf8 && kept.len() < body.len() {
            task.payload = String::from_utf8_lossy(utf8_prefix(kept)).into_owned();
        }
        let mut headers = Vec::new();
        let mut broker_deaths = Vec::new();
        if let Some(table) = props.headers() {
            for (k, v) in table.inner() {
                if k.as_str() == "x-death" {
                    broker_deaths = deaths(v);
                } else {
                    headers.push((k.to_string(), value_text(v)));
                }
            }
        }
        headers.sort();
        Entry {
            position,
            task,
            payload_bytes: body.len(),
            payload_cut: kept.len() < body.len(),
            payload_utf8: utf8,
            headers,
            broker_deaths,
            correlation_id: props.correlation_id().as_ref().map(|s| s.to_string()),
            timestamp_s: *props.timestamp(),
            payload_base64: (!utf8).then(|| {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD.encode(kept)
            }),
        }
    }

    /// The body pretty-printed when it is JSON (and was kept whole).
    pub fn payload_pretty(&self) -> Option<String> {
        if self.payload_cut {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&self.task.payload).ok()?;
        serde_json::to_string_pretty(&v).ok()
    }

    /// This entry with the values of payload fields named in `fields` replaced by
    /// [`MASKED`] (at any depth, names compared case-insensitively), for someone who may not
    /// read them. A payload that cannot be read as JSON (cut, or not JSON) is withheld whole:
    /// a mask that cannot be applied must not show what it hides.
    pub fn masked(&self, fields: &[String]) -> Entry {
        if fields.is_empty() {
            return self.clone();
        }
        let mut e = self.clone();
        e.payload_base64 = None;
        let parsed = (!self.payload_cut)
            .then(|| serde_json::from_str::<serde_json::Value>(&self.task.payload).ok())
            .flatten();
        e.task.payload = match parsed {
            Some(mut v) => {
                mask_value(&mut v, fields);
                v.to_string()
            }
            None => format!(
                "{MASKED} ({} bytes, not readable as JSON)",
                self.payload_bytes
            ),
        };
        e
    }
}

/// What a masked value shows.
pub const MASKED: &str = "•••";

fn mask_value(v: &mut serde_json::Value, fields: &[String]) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, inner) in map.iter_mut() {
                if fields.iter().any(|f| f.eq_ignore_ascii_case(k)) {
                    *inner = serde_json::Value::String(MASKED.into());
                } else {
                    mask_value(inner, fields);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|i| mask_value(i, fields)),
        _ => {}
    }
}

/// The longest prefix of `bytes` that is whole UTF-8 characters.
fn utf8_prefix(bytes: &[u8]) -> &[u8] {
    match std::str::from_utf8(bytes) {
        Ok(_) => bytes,
        Err(e) => &bytes[..e.valid_up_to()],
    }
}

/// A header value as an operator reads it.
fn value_text(v: &AMQPValue) -> String {
    match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.to_string(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::FieldArray(a) => {
            let items: Vec<String> = a.as_slice().iter().map(value_text).collect();
            format!("[{}]", items.join(", "))
        }
        AMQPValue::FieldTable(t) => {
            let items: Vec<String> = t
                .inner()
                .iter()
                .map(|(k, v)| format!("{k}: {}", value_text(v)))
                .collect();
            format!("{{{}}}", items.join(", "))
        }
        other => match crate::wire::decode::as_int(other) {
            Some(n) => n.to_string(),
            None => format!("{other:?}"),
        },
    }
}

/// The `x-death` array, newest first.
fn deaths(v: &AMQPValue) -> Vec<BrokerDeath> {
    let AMQPValue::FieldArray(items) = v else {
        return Vec::new();
    };
    items
        .as_slice()
        .iter()
        .filter_map(|item| {
            let AMQPValue::FieldTable(t) = item else {
                return None;
            };
            let get = |k: &str| t.inner().get(k);
            let text = |k: &str| get(k).map(value_text).unwrap_or_default();
            Some(BrokerDeath {
                queue: text("queue"),
                reason: text("reason"),
                count: get("count")
                    .and_then(crate::wire::decode::as_int)
                    .unwrap_or(0),
                time_s: match get("time") {
                    Some(AMQPValue::Timestamp(t)) => i64::try_from(*t).ok(),
                    Some(other) => crate::wire::decode::as_int(other),
                    None => None,
                },
            })
        })
        .collect()
}

/// How many body bytes the next entry keeps, given what the snapshot kept so far.
pub fn keep_for(kept_so_far: usize) -> usize {
    if kept_so_far < PAYLOAD_BUDGET {
        PAYLOAD_KEEP
            .min(PAYLOAD_BUDGET - kept_so_far)
            .max(BRIEF_KEEP)
    } else {
        BRIEF_KEEP
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn masking_hides_named_fields_at_any_depth_and_withholds_what_it_cannot_read() {
        let mut e = entry(
            "a",
            "failed",
            1,
            0,
            r#"{"user":"ann","Password":"pw","card":{"card_number":"4111"},"list":[{"password":"x"}]}"#,
        );
        let fields = vec!["password".to_string(), "card_number".to_string()];
        let m = e.masked(&fields);
        assert!(
            !m.task.payload.contains("pw") && !m.task.payload.contains("4111"),
            "{}",
            m.task.payload
        );
        assert!(
            !m.task.payload.contains("\"x\"") && m.task.payload.contains("ann"),
            "{}",
            m.task.payload
        );
        assert_eq!(e.masked(&[]), e);
        e.task.payload = "password=pw".into();
        let m = e.masked(&fields);
        assert!(m.task.payload.starts_with(MASKED) && !m.task.payload.contains("pw"));
    }
    use lapin::types::{FieldArray, FieldTable};

    pub(crate) fn entry(
        id: &str,
        reason: &str,
        attempts: i64,
        dead_at_ms: i64,
        body: &str,
    ) -> Entry {
        let mut h = FieldTable::default();
        h.insert("warren-reason".into(), AMQPValue::LongString(reason.into()));
        h.insert("warren-attempt".into(), AMQPValue::LongLongInt(attempts));
        h.insert("warren-dead-at".into(), AMQPValue::LongLongInt(dead_at_ms));
        h.insert(
            "warren-error".into(),
            AMQPValue::LongString(format!("error of {id}").into()),
        );
        let props = BasicProperties::default()
            .with_message_id(id.into())
            .with_headers(h);
        Entry::read(0, &props, body.as_bytes(), PAYLOAD_KEEP)
    }

    #[test]
    fn a_cut_body_says_so_and_keeps_whole_characters() {
        let props = BasicProperties::default();
        let body = "ééééé".as_bytes();
        let e = Entry::read(4, &props, body, 3);
        assert!(e.payload_cut && e.payload_utf8);
        assert_eq!(e.task.payload, "é");
        assert_eq!((e.payload_bytes, e.position), (10, 4));
        assert_eq!(e.payload_pretty(), None);
        let whole = Entry::read(0, &props, br#"{"a":1}"#, PAYLOAD_KEEP);
        assert_eq!(whole.payload_pretty().unwrap(), "{\n  \"a\": 1\n}");
        let binary = Entry::read(0, &props, &[0xff, 0x00], PAYLOAD_KEEP);
        assert!(!binary.payload_utf8);
        assert_eq!(binary.payload_base64.as_deref(), Some("/wA="));
    }

    #[test]
    fn headers_read_as_text_and_x_death_as_history() {
        let mut death = FieldTable::default();
        death.insert("queue".into(), AMQPValue::LongString("ns.mail".into()));
        death.insert("reason".into(), AMQPValue::LongString("expired".into()));
        death.insert("count".into(), AMQPValue::LongLongInt(2));
        death.insert("time".into(), AMQPValue::Timestamp(1_700_000_000));
        let mut h = FieldTable::default();
        h.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
        );
        h.insert("tenant".into(), AMQPValue::LongString("acme".into()));
        h.insert("n".into(), AMQPValue::LongInt(7));
        let props = BasicProperties::default().with_headers(h);
        let e = Entry::read(0, &props, b"{}", PAYLOAD_KEEP);
        assert_eq!(
            e.headers,
            vec![("n".into(), "7".into()), ("tenant".into(), "acme".into())]
        );
        assert_eq!(
            e.broker_deaths,
            vec![BrokerDeath {
                queue: "ns.mail".into(),
                reason: "expired".into(),
                count: 2,
                time_s: Some(1_700_000_000),
            }]
        );
    }

    #[test]
    fn the_budget_bounds_what_a_snapshot_keeps() {
        assert_eq!(keep_for(0), PAYLOAD_KEEP);
        assert_eq!(keep_for(PAYLOAD_BUDGET - 1000), 1000);
        assert_eq!(keep_for(PAYLOAD_BUDGET - 10), BRIEF_KEEP);
        assert_eq!(keep_for(PAYLOAD_BUDGET * 2), BRIEF_KEEP);
    }
}
