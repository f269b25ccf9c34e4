//! The audit trail of `warren console`: every action (who, what, when, how many tasks) as one
//! record in the namespace's audit stream `{ns}.console.audit`, kept by the broker.
//!
//! A stream, because an audit is appended to and read from the start by any number of
//! readers, none of which removes anything; the broker keeps it across restarts (and across
//! console restarts, which keep nothing of their own) for up to a year or 100 MB. A record
//! is published with a confirm *before* the console reports the action done: an action whose
//! record the broker did not take is reported as not recorded.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use serde::{Deserialize, Serialize};

use crate::broker::{Session, close_channel};
use crate::error::{Error, Result};
use crate::topology::{Names, Plan, declare::declare_queue};

/// Records a console keeps in memory to list (the newest).
pub const KEPT: usize = 1000;

/// One action taken in the console.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When, unix ms.
    pub at_ms: i64,
    /// Who: the token's or the proxy's user name (`anonymous` on an open loopback console).
    pub who: String,
    /// Their role (`operator`).
    pub role: String,
    /// What: `replay`, `replay-edited`, `purge`, `replay-matching`, `purge-matching`,
    /// `pause`, `resume`, `cancel`, `limits`, `free-unique`, `run-schedule`.
    pub action: String,
    /// The task type it touched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// What it was done to: a task id, a filter, a unique key, a schedule.
    #[serde(default)]
    pub target: String,
    /// How many tasks it changed.
    #[serde(default)]
    pub count: u64,
    /// Anything else worth reading later (the new id of an edited replay, the new limits).
    #[serde(default)]
    pub detail: String,
}

impl AuditRecord {
    /// A record of `action` by `who` (`role`) now.
    pub fn now(who: &str, role: &str, action: &str) -> AuditRecord {
        AuditRecord {
            at_ms: crate::wire::unix_ms(SystemTime::now()) as i64,
            who: who.to_string(),
            role: role.to_string(),
            action: action.to_string(),
            task: None,
            target: String::new(),
            count: 0,
            detail: String::new(),
        }
    }
}

fn amqp(what: &str) -> impl FnOnce(lapin::Error) -> Error + '_ {
    move |source| Error::Amqp {
        operation: format!("{what} the audit stream"),
        source,
    }
}

/// Appends `record` to `names`' audit stream (declaring it on first use); returns once the
/// broker confirmed it.
///
/// # Errors
/// [`Error::Refusal`] when the broker nacks it; AMQP errors.
pub async fn record(session: &Session, names: &Names, record: &AuditRecord) -> Result<()> {
    let ch = session.channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(amqp("writing to"))?;
    let stream = Plan::audit_stream(names);
    declare_queue(&ch, &stream)
        .await
        .map_err(amqp("declaring"))?;
    let body = serde_json::to_vec(record).map_err(|e| Error::Internal(e.to_string()))?;
    let props = lapin::BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(crate::wire::CONTENT_TYPE.into());
    let confirm = ch
        .basic_publish(
            "".into(),
            stream.name.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            &body,
            props,
        )
        .await
        .map_err(amqp("writing to"))?
        .await
        .map_err(amqp("writing to"))?;
    close_channel(&ch, "audit record written").await;
    match confirm {
        lapin::Confirmation::Ack(None) => Ok(()),
        _ => Err(Error::Refusal {
            task: "audit record".into(),
        }),
    }
}

/// The newest records of an audit stream, newest last, as a follower keeps them.
#[derive(Debug, Clone, Default)]
pub struct Trail {
    records: Arc<Mutex<VecDeque<AuditRecord>>>,
}

impl Trail {
    /// The records kept, newest first.
    pub fn newest_first(&self) -> Vec<AuditRecord> {
        let kept = self.records.lock().unwrap_or_else(|p| p.into_inner());
        kept.iter().rev().cloned().collect()
    }

    fn push(&self, record: AuditRecord) {
        let mut kept = self.records.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() == KEPT {
            kept.pop_front();
        }
        kept.push_back(record);
    }

    fn clear(&self) {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

/// Reads `names`' audit stream from its start into `trail`, then follows it, until the
/// session's connection fails (the caller opens a new one and follows again: the trail is
/// read anew from the start, so nothing is counted twice).
///
/// # Errors
/// AMQP errors.
pub async fn follow(session: &Session, names: &Names, trail: &Trail) -> Result<()> {
    let ch = session.channel().await?;
    let stream = Plan::audit_stream(names);
    declare_queue(&ch, &stream)
        .await
        .map_err(amqp("declaring"))?;
    // A stream consumer needs a prefetch and acks (they only return credit).
    ch.basic_qos(500, BasicQosOptions { global: false })
        .await
        .map_err(amqp("reading"))?;
    let mut args = FieldTable::default();
    args.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString("first".into()),
    );
    let mut records = ch
        .basic_consume(
            stream.name.as_str().into(),
            "warren console audit".into(),
            BasicConsumeOptions::default(),
            args,
        )
        .await
        .map_err(amqp("reading"))?;
    trail.clear();
    while let Some(next) = records.next().await {
        let delivery = next.map_err(amqp("reading"))?;
        match serde_json::from_slice::<AuditRecord>(&delivery.data) {
            Ok(r) => trail.push(r),
            Err(e) => tracing::warn!(error = %e, "an audit record that is not one was skipped"),
        }
        delivery
            .ack(BasicAckOptions::default())
            .await
            .map_err(amqp("reading"))?;
    }
    Err(Error::Internal("the audit stream's consumer ended".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trail_keeps_the_newest_and_lists_them_first() {
        let t = Trail::default();
        for i in 0..(KEPT + 5) {
            let mut r = AuditRecord::now("ann", "operator", "purge");
            r.count = i as u64;
            t.push(r);
        }
        let listed = t.newest_first();
        assert_eq!(listed.len(), KEPT);
        assert_eq!(listed[0].count, (KEPT + 4) as u64);
        assert_eq!(listed[KEPT - 1].count, 5);
    }

    #[test]
    fn records_read_back_and_tolerate_missing_fields() {
        let r: AuditRecord =
            serde_json::from_str(r#"{"at_ms":1,"who":"a","role":"operator","action":"pause"}"#)
                .unwrap();
        assert_eq!((r.task, r.count), (None, 0));
        let mut full = AuditRecord::now("a", "operator", "replay");
        full.task = Some("mail".into());
        let back: AuditRecord =
            serde_json::from_slice(&serde_json::to_vec(&full).unwrap()).unwrap();
        assert_eq!(back, full);
    }
}
