//! Live limits: changing a type's `concurrency_limit` or `rate_limit` while its workers run.
//!
//! A limit is a number of tokens in circulation (the `tokens` module), most of them held by
//! workers at any moment, so nobody can count them. A change therefore never counts: it
//! moves the circulation by the difference, under the type's lock (the one a worker counts
//! and refills under), and records the new number.
//!
//! - **The record** `{ns}.{task}.limit.record` holds the limits in force (one message, the
//!   newest). A worker counts and refills to it, not to its own file; with no record yet it
//!   writes its file's. `warren limit` and `topology apply` write it.
//! - **Raising** from n to m adds m − n tokens (first cancelling any debt left by an earlier
//!   lowering). Workers take them at once: their token prefetch is their own concurrency.
//! - **Lowering** from n to m takes n − m tokens out: those lying in the queue at once, and
//!   for each one held, a message in the debt queue `{tokens}.debt`. A worker that takes or
//!   gives back a token while it knows of debt (the `limit` event on the control stream says
//!   so) first takes a debt message: if it gets one, the token is acked, gone, instead of
//!   used or requeued. Runs in progress are not stopped: running falls to the new limit as
//!   they end, and no new run starts above it.
//! - The control stream's `limit` event tells running workers the new numbers (a rate's hold
//!   time) and that there may be debt.
//!
//! Each token and each debt message is taken by exactly one consumer (the broker's own
//! guarantee), so concurrent workers, changers and debts never pay twice.

use std::time::{Duration, SystemTime};

use lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::protocol::AMQPSoftError;
use serde::{Deserialize, Serialize};

use super::events::{self, Event};
use crate::broker::{close_channel, is_soft};
use crate::error::{Error, Result};
use crate::limits::RateLimit;
use crate::topology::declare::declare_bound;
use crate::topology::{ArgValue, Names, Plan, QueueDecl, QueueType};
use crate::wire::unix_ms;

/// The limits of one task type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// Runs at once across every worker.
    pub concurrency: Option<u32>,
    /// Starts per period across every worker.
    pub rate: Option<RateLimit>,
}

impl Limits {
    /// Reads as `concurrency 3, rate 10/s` (`none` without either).
    pub fn text(&self) -> String {
        let mut parts = Vec::new();
        if let Some(n) = self.concurrency {
            parts.push(format!("concurrency {n}"));
        }
        if let Some(r) = self.rate {
            parts.push(format!("rate {}", r.text()));
        }
        match parts.is_empty() {
            true => "none".into(),
            false => parts.join(", "),
        }
    }

    /// These limits with `declared`'s kinds only: a record may name a kind the topology no
    /// longer declares, or lack one it now declares (the file's number then stands).
    pub fn within(self, declared: Limits) -> Limits {
        Limits {
            concurrency: declared.concurrency.map(|n| self.concurrency.unwrap_or(n)),
            rate: declared.rate.map(|r| self.rate.unwrap_or(r)),
        }
    }

    /// Start tokens in circulation for the rate (0 without one).
    fn start_tokens(&self) -> u32 {
        self.rate.map_or(0, |r| r.tokens().0)
    }
}

/// The record's body.
#[derive(Debug, Serialize, Deserialize)]
struct Body {
    at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    concurrency: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rate: Option<String>,
}

/// Reads limits from a record's or an event's fields; a rate that does not parse counts as
/// none (logged).
pub(crate) fn from_parts(concurrency: Option<u32>, rate: Option<&str>) -> Limits {
    let rate = rate.and_then(|r| match RateLimit::parse(r) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(error = %e, "ignoring an unreadable rate in a limit record");
            None
        }
    });
    Limits {
        concurrency: concurrency.filter(|n| *n > 0),
        rate,
    }
}

/// Decodes a limit record's body; `None` for one that is not.
pub fn decode(body: &[u8]) -> Option<Limits> {
    let body: Body = serde_json::from_slice(body).ok()?;
    Some(from_parts(body.concurrency, body.rate.as_deref()))
}

fn amqp(what: impl Into<String>) -> impl FnOnce(lapin::Error) -> Error {
    let operation = what.into();
    move |source| Error::Amqp { operation, source }
}

/// The limits recorded for `task`; `None` when nothing was recorded yet (no record queue: it
/// is made with its first message). The record is read by `basic.get` and given back by
/// closing the channel; an empty answer means another reader holds it for a moment, so it is
/// asked again, for up to 2 s.
///
/// # Errors
/// Broker errors other than a missing record queue.
pub(crate) async fn read_record(
    conn: &lapin::Connection,
    names: &Names,
    task: &str,
) -> Result<Option<Limits>> {
    let queue = names.limit_record(task);
    for _ in 0..10 {
        let ch = conn
            .create_channel()
            .await
            .map_err(amqp("opening a channel"))?;
        let got = match ch
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
            .await
        {
            Ok(got) => got,
            Err(e) if is_soft(&e, AMQPSoftError::NOTFOUND) => return Ok(None),
            Err(e) => return Err(amqp(format!("reading `{queue}`"))(e)),
        };
        close_channel(&ch, "limit record read").await;
        match got {
            Some(m) => return Ok(decode(&m.delivery.data)),
            None => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    Ok(None)
}

/// Writes `limits` as `task`'s record, confirmed, on confirm channel `ch`.
async fn write_record(
    ch: &lapin::Channel,
    names: &Names,
    task: &str,
    limits: Limits,
) -> Result<()> {
    let queue = names.limit_record(task);
    let mut args = vec![(
        "x-queue-type",
        ArgValue::Str(QueueType::Classic.as_str().into()),
    )];
    args.push(("x-max-length", ArgValue::Int(1)));
    let decl = QueueDecl {
        name: queue.clone(),
        args,
    };
    let binding = Plan::state_binding(names, &queue);
    declare_bound(ch, &decl, &binding)
        .await
        .map_err(amqp(format!("declaring `{queue}`")))?;
    let body = Body {
        at: unix_ms(SystemTime::now()),
        concurrency: limits.concurrency,
        rate: limits.rate.map(|r| r.text()),
    };
    let body = serde_json::to_vec(&body).map_err(|e| Error::Internal(e.to_string()))?;
    publish_confirmed(ch, &binding.source, &queue, &body).await
}

/// Publishes `body` through `exchange` under `key` (a state binding), confirmed.
async fn publish_confirmed(
    ch: &lapin::Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
) -> Result<()> {
    let props = lapin::BasicProperties::default().with_delivery_mode(2);
    let opts = BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    };
    let confirm = ch
        .basic_publish(exchange.into(), key.into(), opts, body, props)
        .await
        .map_err(amqp(format!("writing `{key}`")))?
        .await
        .map_err(amqp(format!("writing `{key}`")))?;
    match confirm {
        lapin::Confirmation::Ack(None) => Ok(()),
        lapin::Confirmation::Ack(Some(_)) => Err(Error::MissingQueue {
            queue: key.to_string(),
        }),
        _ => Err(Error::Refusal {
            task: format!("`{key}`"),
        }),
    }
}

/// Moves the circulation of token queue `queue` from `from` tokens to `to`: adds tokens
/// (after cancelling debt), or takes ready ones out and owes the rest in its debt queue.
async fn adjust(ch: &lapin::Channel, names: &Names, queue: &str, from: u32, to: u32) -> Result<()> {
    let debt = names.limit_debt(queue);
    let debt_decl = QueueDecl {
        name: debt.clone(),
        args: vec![(
            "x-queue-type",
            ArgValue::Str(QueueType::Classic.as_str().into()),
        )],
    };
    declare_bound(ch, &debt_decl, &Plan::state_binding(names, &debt))
        .await
        .map_err(amqp(format!("declaring `{debt}`")))?;
    let control = names.control_exchange();
    if to > from {
        let mut add = to - from;
        while add > 0 && take_one(ch, &debt).await? {
            add -= 1;
        }
        for _ in 0..add {
            publish_confirmed(ch, &control, queue, b"token").await?;
        }
    } else {
        let mut remove = from - to;
        while remove > 0 && take_one(ch, queue).await? {
            remove -= 1;
        }
        for _ in 0..remove {
            publish_confirmed(ch, &control, &debt, b"debt").await?;
        }
    }
    Ok(())
}

/// Takes one message out of `queue` for good; false when it is empty.
pub(crate) async fn take_one(ch: &lapin::Channel, queue: &str) -> Result<bool> {
    let got = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await
        .map_err(amqp(format!("taking from `{queue}`")))?;
    match got {
        Some(m) => {
            m.delivery
                .ack(BasicAckOptions::default())
                .await
                .map_err(amqp(format!("taking from `{queue}`")))?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// What a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// The limits in force before.
    pub from: Limits,
    /// The limits in force now.
    pub to: Limits,
}

/// Longest wait for the type's lock (a worker counting its tokens holds it for a moment).
const LOCK_WAIT: Duration = Duration::from_secs(30);

/// Puts `to` in force for `task`, whose topology declares `declared`: moves the token
/// circulation, writes the record and tells running workers (the control stream's `limit`
/// event). Nothing changes when `to` is already in force.
///
/// # Errors
/// [`Error::InvalidInput`] when `to` adds or drops a kind of limit the topology does not
/// declare (a type's workers consume it differently with and without a limit: that takes a
/// topology change and a restart); [`Error::Internal`] when the lock stayed held; broker
/// errors.
pub async fn set(
    conn: &lapin::Connection,
    names: &Names,
    task: &str,
    declared: Limits,
    to: Limits,
) -> Result<Change> {
    for (kind, has, wants) in [
        (
            "concurrency_limit",
            declared.concurrency.is_some(),
            to.concurrency.is_some(),
        ),
        ("rate_limit", declared.rate.is_some(), to.rate.is_some()),
    ] {
        if has != wants {
            let (what, how) = match has {
                true => ("declares a", "removed: remove it from"),
                false => ("declares no", "added: add it to"),
            };
            return Err(Error::InvalidInput(format!(
                "`{task}` {what} `{kind}` in the topology; a limit can be changed live, not \
                 {how} the topology file, run `warren topology apply` and restart its workers"
            )));
        }
    }
    let lock = names.limit_lock(task);
    let began = std::time::Instant::now();
    let mut wait = Duration::from_millis(50);
    while !crate::broker::lease::try_take(conn, &lock, None).await? {
        if began.elapsed() > LOCK_WAIT {
            return Err(Error::Internal(format!(
                "the limit lock `{lock}` stayed held for {}s; try again",
                LOCK_WAIT.as_secs()
            )));
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(1));
    }
    let result = set_locked(conn, names, task, declared, to).await;
    // The lock goes with the connection too; deleting it lets a worker count now.
    if let Ok(ch) = conn.create_channel().await {
        let _ = ch
            .queue_delete(lock.as_str().into(), Default::default())
            .await;
        close_channel(&ch, "limit lock released").await;
    }
    result
}

async fn set_locked(
    conn: &lapin::Connection,
    names: &Names,
    task: &str,
    declared: Limits,
    to: Limits,
) -> Result<Change> {
    let from = read_record(conn, names, task)
        .await?
        .map_or(declared, |r| r.within(declared));
    if from == to {
        return Ok(Change { from, to });
    }
    let ch = conn
        .create_channel()
        .await
        .map_err(amqp("opening a channel"))?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(amqp("opening a channel"))?;
    if let (Some(n), Some(m)) = (from.concurrency, to.concurrency) {
        adjust(&ch, names, &names.limit_running(task), n, m).await?;
    }
    if from.rate.is_some() {
        let (k, j) = (from.start_tokens(), to.start_tokens());
        adjust(&ch, names, &names.limit_starts(task), k, j).await?;
    }
    write_record(&ch, names, task, to).await?;
    close_channel(&ch, "limits changed").await;
    let event = Event::Limit {
        task: task.to_string(),
        concurrency: to.concurrency,
        rate: to.rate.map(|r| r.text()),
    };
    events::publish(conn, names, event).await?;
    Ok(Change { from, to })
}

/// What a worker counts to: the record's limits within `declared`, or `declared` (then
/// written as the record) when there is none. Called under the type's lock.
///
/// # Errors
/// Broker errors.
pub(crate) async fn in_force(
    conn: &lapin::Connection,
    names: &Names,
    task: &str,
    declared: Limits,
) -> Result<Limits> {
    if let Some(recorded) = read_record(conn, names, task).await? {
        return Ok(recorded.within(declared));
    }
    let ch = conn
        .create_channel()
        .await
        .map_err(amqp("opening a channel"))?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(amqp("opening a channel"))?;
    write_record(&ch, names, task, declared).await?;
    close_channel(&ch, "limit record written").await;
    Ok(declared)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(text: &str) -> Option<RateLimit> {
        Some(RateLimit::parse(text).unwrap())
    }

    #[test]
    fn a_record_reads_back_and_keeps_only_the_declared_kinds() {
        let body = br#"{"at":1,"concurrency":3,"rate":"20/s"}"#;
        let recorded = decode(body).unwrap();
        assert_eq!(
            recorded,
            Limits {
                concurrency: Some(3),
                rate: rate("20/s")
            }
        );
        let declared = Limits {
            concurrency: Some(1),
            rate: None,
        };
        assert_eq!(
            recorded.within(declared),
            Limits {
                concurrency: Some(3),
                rate: None
            }
        );
        // A kind the record lacks keeps the file's number.
        let only_rate = Limits {
            concurrency: None,
            rate: rate("5/s"),
        };
        assert_eq!(
            decode(br#"{"at":1,"concurrency":2}"#)
                .unwrap()
                .within(only_rate),
            only_rate
        );
        assert_eq!(decode(b"not json"), None);
        assert_eq!(recorded.text(), "concurrency 3, rate 20/s");
        assert_eq!(Limits::default().text(), "none");
    }
}
