//! Sends a [`Plan`] to RabbitMQ. The only lapin calls of the topology module.
//!
//! Declaring is idempotent: an object that exists with the same arguments is left as it is.
//! One that exists with other arguments makes RabbitMQ close the channel with
//! `PRECONDITION_FAILED - inequivalent arg`; we turn that into a [`Conflict`] naming the
//! object, the argument and both values, reopen a channel and go on, so one run reports every
//! conflict at once.

use lapin::options::{
    ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};

use super::decl::{ArgValue, BindingDecl, Destination, ExchangeDecl, ExchangeKind, QueueDecl};
use super::own::OwnQueue;
use super::plan::Plan;
use crate::broker::{Session, close_channel};
use crate::error::{Conflict, Error, Result};

/// What [`apply`] declared.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Exchanges declared (created, or already there as planned).
    pub exchanges: Vec<String>,
    /// Queues declared, with the number of messages each held.
    pub queues: Vec<(String, u32)>,
    /// Bindings declared, as `source -[key]-> destination`.
    pub bindings: Vec<String>,
}

/// Field table of a queue's or an exchange's arguments: integers as 64-bit integers, strings as long strings.
pub fn field_table(args: &[(&'static str, ArgValue)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in args {
        let value = match v {
            ArgValue::Int(i) => AMQPValue::LongLongInt(*i),
            ArgValue::Str(s) => AMQPValue::LongString(s.as_str().into()),
        };
        table.insert((*k).into(), value);
    }
    table
}

/// Declares every exchange, queue and binding of `plan` on `conn`.
///
/// # Errors
/// [`Error::TopologyConflict`] listing every object that exists with other arguments;
/// [`Error::Declare`] for any other refusal or a lost connection.
pub async fn apply(plan: &Plan, conn: &Connection, vhost: &str) -> Result<ApplyReport> {
    let mut run = Declaring {
        conn,
        vhost,
        channel: open(conn).await?,
        report: ApplyReport::default(),
        conflicts: Vec::new(),
    };
    for ex in &plan.exchanges {
        run.exchange(ex).await?;
    }
    for q in &plan.queues {
        run.queue(q).await?;
    }
    for b in &plan.bindings {
        run.binding(b).await?;
    }
    close_channel(&run.channel, "topology applied").await;
    if run.conflicts.is_empty() {
        Ok(run.report)
    } else {
        Err(Error::TopologyConflict(run.conflicts))
    }
}

impl Session {
    /// Declares every exchange, queue and binding of `plan` on this session's connection.
    ///
    /// # Errors
    /// As [`apply`].
    pub async fn apply(&self, plan: &Plan) -> Result<ApplyReport> {
        apply(plan, self.connection(), self.vhost()).await
    }
}

/// One `apply` in progress: the channel in use (reopened after a conflict closes it), what
/// was declared, and the conflicts found so far.
struct Declaring<'a> {
    conn: &'a Connection,
    vhost: &'a str,
    channel: Channel,
    report: ApplyReport,
    conflicts: Vec<Conflict>,
}

impl Declaring<'_> {
    async fn exchange(&mut self, ex: &ExchangeDecl) -> Result<()> {
        let kind = match ex.kind {
            ExchangeKind::Direct => lapin::ExchangeKind::Direct,
            ExchangeKind::Topic => lapin::ExchangeKind::Topic,
            ExchangeKind::Fanout => lapin::ExchangeKind::Fanout,
        };
        let opts = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let declared = self
            .channel
            .exchange_declare(ex.name.as_str().into(), kind, opts, field_table(&ex.args))
            .await;
        match declared {
            Ok(()) => {
                self.report.exchanges.push(ex.name.clone());
                Ok(())
            }
            Err(source) => self.conflict(source, "exchange", &ex.name).await,
        }
    }

    async fn queue(&mut self, q: &QueueDecl) -> Result<()> {
        let opts = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let declared = self
            .channel
            .queue_declare(q.name.as_str().into(), opts, field_table(&q.args))
            .await;
        match declared {
            Ok(state) => {
                self.report
                    .queues
                    .push((q.name.clone(), state.message_count()));
                Ok(())
            }
            Err(source) => self.conflict(source, "queue", &q.name).await,
        }
    }

    async fn binding(&mut self, b: &BindingDecl) -> Result<()> {
        let (src, dst, key) = (
            b.source.as_str(),
            b.destination.as_str(),
            b.routing_key.as_str(),
        );
        let (ch, args) = (&self.channel, FieldTable::default());
        let result = match b.kind {
            Destination::Queue => {
                let opts = QueueBindOptions::default();
                ch.queue_bind(dst.into(), src.into(), key.into(), opts, args)
                    .await
            }
            Destination::Exchange => {
                let opts = ExchangeBindOptions::default();
                ch.exchange_bind(dst.into(), src.into(), key.into(), opts, args)
                    .await
            }
        };
        let name = format!("{src} -[{key}]-> {dst}");
        result.map_err(|source| Error::Declare {
            entity: "binding",
            name: name.clone(),
            source,
        })?;
        self.report.bindings.push(name);
        Ok(())
    }

    /// Records a conflict and reopens the channel it closed; any other error is final.
    async fn conflict(
        &mut self,
        source: lapin::Error,
        entity: &'static str,
        name: &str,
    ) -> Result<()> {
        let conflict =
            conflict_of(&source, entity, name, self.vhost).ok_or_else(|| Error::Declare {
                entity,
                name: name.to_string(),
                source,
            })?;
        self.conflicts.push(conflict);
        self.channel = open(self.conn).await?;
        Ok(())
    }
}

/// Declares a worker's own queue of a broadcast type (exclusive to `ch`'s connection,
/// non-durable) and binds it. Idempotent on one connection; another connection holding the
/// name gets `RESOURCE_LOCKED` (transient: the old connection of this worker, not yet
/// noticed gone); a refusal such as `ACCESS_REFUSED` is final.
///
/// # Errors
/// [`Error::Declare`] naming the queue or binding the broker refused.
pub async fn declare_own(ch: &Channel, own: &OwnQueue) -> Result<()> {
    let q = &own.queue;
    let opts = QueueDeclareOptions {
        exclusive: true,
        durable: false,
        ..Default::default()
    };
    ch.queue_declare(q.name.as_str().into(), opts, field_table(&q.args))
        .await
        .map_err(|source| Error::Declare {
            entity: "queue",
            name: q.name.clone(),
            source,
        })?;
    for b in &own.bindings {
        let (src, key) = (b.source.as_str(), b.routing_key.as_str());
        ch.queue_bind(
            q.name.as_str().into(),
            src.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|source| Error::Declare {
            entity: "binding",
            name: format!("{src} -[{key}]-> {}", q.name),
            source,
        })?;
    }
    Ok(())
}

/// Declares `q` durable with its arguments; the broker's answer carries its message and
/// consumer counts.
///
/// # Errors
/// The broker's refusal (e.g. `PRECONDITION_FAILED` for other arguments), which closes `ch`.
pub async fn declare_queue(ch: &Channel, q: &QueueDecl) -> lapin::Result<lapin::Queue> {
    let opts = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(q.name.as_str().into(), opts, field_table(&q.args))
        .await
}

/// Declares `q` (as [`declare_queue`]) and binds it as `binding` says: for state queues made
/// on first use, such as a type's pause record.
///
/// # Errors
/// The broker's refusal, which closes `ch`.
pub async fn declare_bound(
    ch: &Channel,
    q: &QueueDecl,
    binding: &BindingDecl,
) -> lapin::Result<()> {
    declare_queue(ch, q).await?;
    ch.queue_bind(
        q.name.as_str().into(),
        binding.source.as_str().into(),
        binding.routing_key.as_str().into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
}

/// Deletes the plan's queues and exchanges, and each name in `extra` as both a queue and an
/// exchange; best effort. For commands that declare a namespace of their own (the demo, the
/// benchmark) and remove it afterwards; never for a namespace someone else uses.
pub async fn remove(plan: &Plan, conn: &Connection, extra: &[&str]) {
    let Ok(ch) = conn.create_channel().await else {
        return;
    };
    // Lazy queues too (a limit record, made on first use): they are the plan's as well.
    let queues = plan
        .queues
        .iter()
        .chain(&plan.lazy)
        .map(|q| q.name.as_str())
        .chain(extra.iter().copied());
    for q in queues {
        let _ = ch.queue_delete(q.into(), Default::default()).await;
    }
    let exchanges = plan
        .exchanges
        .iter()
        .map(|e| e.name.as_str())
        .chain(extra.iter().copied());
    for e in exchanges {
        let _ = ch.exchange_delete(e.into(), Default::default()).await;
    }
    close_channel(&ch, "removed").await;
}

/// A new channel on `conn`.
pub(super) async fn open(conn: &Connection) -> Result<Channel> {
    conn.create_channel().await.map_err(|source| Error::Amqp {
        operation: "opening a channel".into(),
        source,
    })
}

/// A `PRECONDITION_FAILED` about an argument becomes a [`Conflict`]; anything else is `None`.
fn conflict_of(
    err: &lapin::Error,
    entity: &'static str,
    name: &str,
    vhost: &str,
) -> Option<Conflict> {
    let lapin::ErrorKind::ProtocolError(amqp) = err.kind() else {
        return None;
    };
    if !matches!(
        amqp.kind(),
        AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
    ) {
        return None;
    }
    // The code says "conflict"; only the broker's text says which argument and values, so
    // read them from it, and keep the whole text when its shape is unfamiliar.
    let text = amqp.get_message().as_str();
    let (argument, existing, wanted) = parse_inequivalent(text).unwrap_or_else(|| {
        (
            "(see broker message)".into(),
            text.to_string(),
            "the planned value".into(),
        )
    });
    Some(Conflict {
        entity,
        name: name.to_string(),
        vhost: vhost.to_string(),
        argument,
        existing,
        wanted,
    })
}

/// Reads `inequivalent arg 'A' for queue 'Q' in vhost 'V': received X but current is Y`,
/// where X and Y are `none` or `the value 'v' of type 't'`.
fn parse_inequivalent(text: &str) -> Option<(String, String, String)> {
    let rest = text.split_once("inequivalent arg '")?.1;
    let (argument, rest) = rest.split_once('\'')?;
    let rest = rest.split_once("received ")?.1;
    let (received, current) = rest.split_once(" but current is ")?;
    let value = |s: &str| -> String {
        let s = s.trim();
        match s.split_once("the value '") {
            Some((_, v)) => v.split_once('\'').map_or(v, |(v, _)| v).to_string(),
            None => s.trim_matches('\'').to_string(),
        }
    };
    Some((argument.to_string(), value(current), value(received)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broker_conflict_message_yields_argument_and_both_values() {
        let text = "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'ns.a' in vhost 'v': \
                    received the value 'quorum' of type 'longstr' but current is none";
        assert_eq!(
            parse_inequivalent(text),
            Some(("x-queue-type".into(), "none".into(), "quorum".into()))
        );
        let text = "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/': \
                    received the value '2000' of type 'long' but current is the value '5000' of type 'long'";
        assert_eq!(
            parse_inequivalent(text),
            Some(("x-message-ttl".into(), "5000".into(), "2000".into()))
        );
        let text = "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'e' in vhost '/': \
                    received 'topic' but current is 'direct'";
        assert_eq!(
            parse_inequivalent(text),
            Some(("type".into(), "direct".into(), "topic".into()))
        );
    }

    #[test]
    fn an_unfamiliar_message_is_not_parsed() {
        assert_eq!(
            parse_inequivalent("PRECONDITION_FAILED - something else"),
            None
        );
    }

    #[test]
    fn arguments_go_out_as_integers_and_long_strings() {
        let t = field_table(&[
            ("x-message-ttl", ArgValue::Int(1000)),
            ("x-queue-type", ArgValue::Str("quorum".into())),
        ]);
        let inner = t.inner();
        assert!(matches!(
            inner.get("x-message-ttl"),
            Some(AMQPValue::LongLongInt(1000))
        ));
        assert!(matches!(
            inner.get("x-queue-type"),
            Some(AMQPValue::LongString(_))
        ));
    }
}
