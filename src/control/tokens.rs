//! Limit tokens: a classic queue of N messages per limit, held by workers as unacked
//! deliveries. A worker takes one from its consumer before it starts a task and gives it back
//! (`basic.reject`, requeue) when the run ends (`concurrency_limit`) or a hold time after the
//! start (`rate_limit`). A worker that dies holds nothing: the broker requeues the unacked
//! tokens of a closed connection, `kill -9` included.
//!
//! **Counting** is the delicate part: the queue shows only the tokens nobody holds. So a
//! worker counts, tops up and subscribes under the type's lock (the exclusive queue
//! `{ns}.{task}.limit.lock`), and tops up only when the queue has no consumer, i.e. when no
//! token is held: then the queue must hold exactly N, and it is purged and refilled to N if
//! not, to the limits in force ([`super::limits`]: the record a live change writes). A live
//! change moves the circulation by its difference instead; a lowering leaves debt, which a
//! worker pays with the next tokens it takes or gives back (each then acked, gone). The
//! token queue is classic: quorum queues count every requeue as a delivery and, from
//! RabbitMQ 4.0, dead-letter a message after 20 of them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};

use crate::broker::{Session, close_channel};
use crate::error::{Error, Result};
use crate::topology::{ArgValue, QueueDecl, QueueType};

/// One limit's tokens as a worker sees them: its channel and consumer.
#[derive(Debug)]
pub(crate) struct Tokens {
    channel: Arc<TokenChannel>,
    consumer: Consumer,
}

/// The channel tokens are held on. It closes (returning every token still on it) only once
/// the [`Tokens`] and every [`Token`] taken from it are gone: a worker that stops taking
/// tokens (shutdown, pause, a lost get channel) keeps the ones its runs still hold until
/// those runs end, so the limit holds through a deploy. Never cancelled on its own: a
/// consumer-less token queue is what makes the next worker count and refill it.
#[derive(Debug)]
struct TokenChannel {
    channel: Channel,
    /// The token queue's debt queue.
    debt: String,
    /// Debt may be owed (set by a `limit` event or a debt found at subscribe; cleared when
    /// the debt queue is found empty).
    owed: Arc<AtomicBool>,
}

impl TokenChannel {
    /// Pays one token of debt with token `tag`, if any is owed: takes a debt message, acks
    /// the token (gone), then acks the debt message. True when it paid (the caller then
    /// neither uses nor requeues the token). The token is acked first: a worker that dies
    /// between the two acks leaves the debt message to be paid again, one token fewer than
    /// the limit until the next count (never one more).
    async fn pay(&self, tag: u64) -> bool {
        if !self.owed.load(Ordering::Acquire) {
            return false;
        }
        let got = self
            .channel
            .basic_get(
                self.debt.as_str().into(),
                lapin::options::BasicGetOptions { no_ack: false },
            )
            .await;
        match got {
            Ok(Some(debt)) => {
                let _ = self
                    .channel
                    .basic_ack(tag, BasicAckOptions::default())
                    .await;
                let _ = debt.delivery.ack(BasicAckOptions::default()).await;
                tracing::info!(queue = %self.debt, "a lowered limit took back a token");
                true
            }
            Ok(None) => {
                self.owed.store(false, Ordering::Release);
                false
            }
            Err(e) => {
                tracing::warn!(queue = %self.debt, error = %e, "cannot read the limit's debt");
                false
            }
        }
    }
}

impl Drop for TokenChannel {
    fn drop(&mut self) {
        let ch = self.channel.clone();
        if ch.status().connected()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move { close_channel(&ch, "limit tokens released").await });
        }
    }
}

/// A token taken from a [`Tokens`]; back in its queue when dropped (or when the connection
/// goes).
#[derive(Debug)]
pub(crate) struct Token {
    channel: Arc<TokenChannel>,
    tag: u64,
}

impl Token {
    /// Gives the token back after `after` (a start token's hold), in the background.
    pub(crate) fn give_back_after(self, after: Duration) {
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            drop(self);
        });
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        let (channel, tag) = (self.channel.clone(), self.tag);
        // A closed channel has given it back already. The reject holds the channel until it
        // is sent, so the channel's own close comes after it.
        if channel.channel.status().connected()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                if channel.pay(tag).await {
                    return;
                }
                let _ = channel
                    .channel
                    .basic_reject(tag, BasicRejectOptions { requeue: true })
                    .await;
            });
        }
    }
}

impl Tokens {
    /// Counts `queue`'s tokens (refilling it to `count` when nobody holds one, its debt
    /// then forgotten) and subscribes to it with `prefetch`. The caller holds the type's lock.
    /// `owed` is the worker's flag for this queue's debt, set here when debt is waiting.
    ///
    /// # Errors
    /// Broker errors; the caller's session reconnects.
    pub(crate) async fn subscribe(
        session: &Session,
        names: &crate::topology::Names,
        queue: &str,
        count: u32,
        prefetch: u16,
        owed: Arc<AtomicBool>,
    ) -> Result<Tokens> {
        let amqp = |what: &str, source| Error::Amqp {
            operation: format!("{what} `{queue}`"),
            source,
        };
        let channel = session.channel().await?;
        let decl = QueueDecl {
            name: queue.to_string(),
            args: vec![(
                "x-queue-type",
                ArgValue::Str(QueueType::Classic.as_str().into()),
            )],
        };
        let state = crate::topology::declare::declare_queue(&channel, &decl)
            .await
            .map_err(|e| amqp("declaring the limit tokens", e))?;
        let debt = names.limit_debt(queue);
        let debt_decl = QueueDecl {
            name: debt.clone(),
            args: decl.args.clone(),
        };
        crate::topology::declare::declare_bound(
            &channel,
            &debt_decl,
            &crate::topology::Plan::state_binding(names, &debt),
        )
        .await
        .map_err(|e| amqp("declaring the debt of", e))?;
        let debt_state = crate::topology::declare::declare_queue(&channel, &debt_decl)
            .await
            .map_err(|e| amqp("counting the debt of", e))?;
        let binding = crate::topology::Plan::state_binding(names, queue);
        if state.consumer_count() == 0 {
            // Nobody holds a token: the count is exact, and debt owed by nobody is moot.
            if debt_state.message_count() > 0 {
                channel
                    .queue_purge(debt.as_str().into(), QueuePurgeOptions::default())
                    .await
                    .map_err(|e| amqp("forgetting the debt of", e))?;
            }
            if state.message_count() != count {
                refill(session, &channel, &binding, count).await?;
                tracing::info!(queue, tokens = count, "limit tokens counted and refilled");
            }
        } else if debt_state.message_count() > 0 {
            owed.store(true, Ordering::Release);
        }
        channel
            .basic_qos(prefetch.max(1), BasicQosOptions { global: false })
            .await
            .map_err(|e| amqp("subscribing to", e))?;
        let consumer = channel
            .basic_consume(
                queue.into(),
                "warren limit".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| amqp("subscribing to", e))?;
        Ok(Tokens {
            channel: Arc::new(TokenChannel {
                channel,
                debt,
                owed,
            }),
            consumer,
        })
    }

    /// The next token; `None` when the channel failed (the caller reconnects). While debt is
    /// owed, each token that comes pays one instead (acked, gone).
    pub(crate) async fn take(&mut self) -> Option<Token> {
        loop {
            let tag = match self.consumer.next().await {
                Some(Ok(d)) => d.delivery_tag,
                _ => return None,
            };
            if self.channel.pay(tag).await {
                continue;
            }
            return Some(Token {
                channel: self.channel.clone(),
                tag,
            });
        }
    }
}

/// Empties the queue of `binding` and publishes `count` tokens into it through the binding
/// (made here too, for a namespace applied before it existed), confirmed.
async fn refill(
    session: &Session,
    channel: &Channel,
    binding: &crate::topology::BindingDecl,
    count: u32,
) -> Result<()> {
    let queue = binding.destination.as_str();
    let amqp = |what: &str, source| Error::Amqp {
        operation: format!("{what} `{queue}`"),
        source,
    };
    channel
        .queue_purge(queue.into(), QueuePurgeOptions::default())
        .await
        .map_err(|e| amqp("purging the limit tokens", e))?;
    let ch = session.channel().await?;
    ch.queue_bind(
        queue.into(),
        binding.source.as_str().into(),
        binding.routing_key.as_str().into(),
        lapin::options::QueueBindOptions::default(),
        lapin::types::FieldTable::default(),
    )
    .await
    .map_err(|e| amqp("binding the limit tokens", e))?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| amqp("refilling", e))?;
    let props = lapin::BasicProperties::default().with_delivery_mode(2);
    let mut confirms = Vec::new();
    for _ in 0..count {
        let c = ch
            .basic_publish(
                binding.source.as_str().into(),
                binding.routing_key.as_str().into(),
                BasicPublishOptions::default(),
                b"token",
                props.clone(),
            )
            .await
            .map_err(|e| amqp("refilling", e))?;
        confirms.push(c);
    }
    for c in confirms {
        c.await.map_err(|e| amqp("refilling", e))?;
    }
    close_channel(&ch, "limit tokens refilled").await;
    Ok(())
}
