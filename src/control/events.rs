//! The control stream: cancels, pauses and resumes, appended to the stream `{ns}.control.events` and followed
//! by every worker.
//!
//! `{ns}.control.events` is a stream (RabbitMQ 3.9+) bound to the direct exchange `{ns}.control`
//! under [`EVENTS_KEY`], with `x-max-age` = `cancel_retention`: a worker that starts replays
//! the last retention's events from its first offset within that age, so a cancel holds for
//! workers started later and across restarts, with no store but the broker. A pause or
//! resume also goes, by `BCC`, to the type's record queue `{ns}.{task}.paused` (one message),
//! so a pause older than the retention still holds.

use std::time::SystemTime;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldArray, FieldTable};
use serde::{Deserialize, Serialize};

use lapin::protocol::AMQPSoftError;

use crate::broker::is_soft;
use crate::error::{Error, Result};
use crate::topology::declare::declare_bound;
use crate::topology::names::{EVENTS_KEY, pause_key};
use crate::topology::{Names, Plan};
use crate::wire::unix_ms;

/// One control event as it travels (JSON body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// When it was issued, unix ms.
    pub at: u64,
    /// What it says.
    #[serde(flatten)]
    pub event: Event,
}

/// What a control event says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Event {
    /// These tasks of this type must not start, and stop if running.
    Cancel {
        /// Task type.
        task: String,
        /// Task ids.
        ids: Vec<String>,
    },
    /// Workers stop starting this type.
    Pause {
        /// Task type.
        task: String,
    },
    /// Workers start this type again.
    Resume {
        /// Task type.
        task: String,
    },
    /// The limits of this type changed (`warren limit`, `topology apply`): what is in force
    /// now. The tokens were added or put in debt before it was published.
    Limit {
        /// Task type.
        task: String,
        /// `concurrency_limit` in force.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        concurrency: Option<u32>,
        /// `rate_limit` in force, as written (`10/s`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rate: Option<String>,
    },
    /// A worker's own mark: once it reads it back, it has read everything before it.
    Marker {
        /// The worker's mark.
        id: String,
    },
}

/// Publishes `event` to the control stream (and a pause or resume to its type's record,
/// declared here), confirmed, on a channel of `conn`.
///
/// # Errors
/// [`Error::Refusal`] when the broker nacks; [`Error::Amqp`] for a broker failure.
pub(crate) async fn publish(conn: &lapin::Connection, names: &Names, event: Event) -> Result<()> {
    let amqp = |what: &str, source| Error::Amqp {
        operation: what.to_string(),
        source,
    };
    let ch = conn
        .create_channel()
        .await
        .map_err(|e| amqp("opening a control channel", e))?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| amqp("opening a control channel", e))?;
    let mut headers = FieldTable::default();
    if let Event::Pause { task } | Event::Resume { task } = &event {
        let (record, binding) = Plan::pause_record(names, task);
        declare_bound(&ch, &record, &binding)
            .await
            .map_err(|e| amqp(&format!("declaring `{}`", record.name), e))?;
        headers.insert(
            crate::wire::header::BCC.into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongString(
                pause_key(task).as_str().into(),
            )])),
        );
    }
    let record = Record {
        at: unix_ms(SystemTime::now()),
        event,
    };
    let body = serde_json::to_vec(&record).map_err(|e| Error::Internal(e.to_string()))?;
    let props = lapin::BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(crate::wire::CONTENT_TYPE.into())
        .with_headers(headers);
    let opts = BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    };
    let missing = |e: lapin::Error| match is_soft(&e, AMQPSoftError::NOTFOUND) {
        true => Error::MissingExchange {
            exchange: names.control_exchange(),
        },
        false => amqp("publishing a control event", e),
    };
    let confirm = ch
        .basic_publish(
            names.control_exchange().as_str().into(),
            EVENTS_KEY.into(),
            opts,
            &body,
            props,
        )
        .await
        .map_err(missing)?
        .await
        .map_err(missing)?;
    crate::broker::close_channel(&ch, "control event published").await;
    match confirm {
        lapin::Confirmation::Ack(None) | lapin::Confirmation::NotRequested => Ok(()),
        lapin::Confirmation::Ack(Some(_)) => Err(Error::MissingQueue {
            queue: names.control_stream(),
        }),
        lapin::Confirmation::Nack(_) => Err(Error::Refusal {
            task: "control event".into(),
        }),
    }
}

/// The record a control message carries; `None` for a body that is not one (logged).
pub fn decode(body: &[u8]) -> Option<Record> {
    match serde_json::from_slice(body) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(error = %e, "ignoring a control message that is not a Warren event");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_travel_as_tagged_json() {
        let r = Record {
            at: 1_795_420_800_000,
            event: Event::Cancel {
                task: "report".into(),
                ids: vec!["a".into(), "b".into()],
            },
        };
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"at":1795420800000,"kind":"cancel","task":"report","ids":["a","b"]}"#
        );
        assert_eq!(decode(json.as_bytes()), Some(r));
        assert_eq!(
            decode(br#"{"at":1,"kind":"pause","task":"report"}"#).map(|r| r.event),
            Some(Event::Pause {
                task: "report".into()
            })
        );
        assert_eq!(decode(b"not json"), None);
    }
}
