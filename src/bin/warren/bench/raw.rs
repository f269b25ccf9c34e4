//! The raw lapin baseline: what a careful lapin program does, and nothing more.

use std::time::Instant;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use warren::broker::{close_channel, close_connection};
use warren::topology::{self, Names};
use warren::wire::{Envelope, new_task_id};
use warren::{Result, Settings, Task};

use super::timing::{confirm_channel, with_consumer};
use super::{BenchOptions, BenchTask, Drained, amqp, now_us, tasks};

/// The message properties of a raw publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wire {
    /// Persistent JSON and nothing else: the plain lapin program the targets are set against.
    Bare,
    /// Warren's wire format (task id, type, and whatever else `Envelope` sends) and Warren's
    /// routing: through a direct exchange with `mandatory`. Sent by the same raw loop: the
    /// gap between this and Warren is Warren's own code; the gap between `Bare` and this is
    /// what the broker charges for the task metadata and the routing.
    Warren,
}

/// Publishes `n` messages to `queue` with a window of outstanding confirms; returns the
/// seconds taken. `Bare` goes through the default exchange, `Warren` through the direct
/// exchange of the same name as `queue` (see [`declare_raw`]).
pub(super) async fn raw_publish(
    ch: &Channel,
    queue: &str,
    n: u64,
    size: usize,
    wire: Wire,
) -> Result<f64> {
    // The same window as Warren's producer: both sides keep as many confirms outstanding.
    let window = warren::producer::CONFIRM_WINDOW_DEFAULT;
    let started = Instant::now();
    let mut inflight = FuturesUnordered::new();
    let bare = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into());
    for task in tasks(n, size) {
        if inflight.len() >= window
            && let Some(c) = inflight.next().await
        {
            check_confirm(c)?;
        }
        let body = serde_json::to_vec(&task).unwrap_or_default();
        let (exchange, routing_key, props, mandatory) = match wire {
            Wire::Bare => ("", queue, bare.clone(), false),
            Wire::Warren => (
                queue,
                RAW_ROUTING_KEY,
                Envelope::new(new_task_id(), BenchTask::NAME).properties(None),
                true,
            ),
        };
        let confirm = ch
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory,
                    ..Default::default()
                },
                &body,
                props,
            )
            .await
            .map_err(amqp("raw publish"))?;
        inflight.push(confirm);
    }
    while let Some(c) = inflight.next().await {
        check_confirm(c)?;
    }
    Ok(started.elapsed().as_secs_f64())
}

pub(super) fn check_confirm(c: lapin::Result<lapin::Confirmation>) -> Result<()> {
    match c.map_err(amqp("raw confirm"))? {
        lapin::Confirmation::Ack(None) => Ok(()),
        other => Err(crate::failure(
            std::io::ErrorKind::Other,
            "a raw publish".into(),
            format!("not confirmed: {other:?}"),
        )),
    }
}

/// Consumes `n` messages from `queue`, acking each (or, with `multiple`, every prefetch/4
/// and at the end).
pub(super) async fn raw_drain(
    conn: &Connection,
    queue: &str,
    n: u64,
    prefetch: u16,
    multiple: bool,
) -> Result<Drained> {
    let ch = conn.create_channel().await.map_err(amqp("channel"))?;
    ch.basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(amqp("qos"))?;
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "bench raw".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(amqp("consume"))?;
    let every = u64::from(prefetch / 4).max(1);
    let mut latencies = Vec::with_capacity(n as usize);
    let mut first = None;
    let mut got = 0;
    while got < n {
        let d = match consumer.next().await {
            Some(Ok(d)) => d,
            Some(Err(e)) => return Err(amqp("raw consume")(e)),
            None => {
                return Err(crate::failure(
                    std::io::ErrorKind::ConnectionAborted,
                    format!("consuming {queue}"),
                    "the raw consumer ended early".into(),
                ));
            }
        };
        first.get_or_insert_with(Instant::now);
        if let Ok(t) = serde_json::from_slice::<BenchTask>(&d.data) {
            latencies.push(now_us().saturating_sub(t.t) as f64 / 1000.0);
        }
        got += 1;
        if !multiple {
            d.ack(BasicAckOptions::default())
                .await
                .map_err(amqp("ack"))?;
        } else if got % every == 0 || got == n {
            ch.basic_ack(d.delivery_tag, BasicAckOptions { multiple: true })
                .await
                .map_err(amqp("ack"))?;
        }
    }
    let last = Instant::now();
    close_channel(&ch, "bench").await;
    Ok(Drained {
        first: first.unwrap_or(last),
        last,
        latencies,
    })
}

/// Routing key from the raw exchange to the raw queue.
pub(super) const RAW_ROUTING_KEY: &str = "raw";

/// Declares the raw side's queue, and a direct exchange of the same name bound to it with
/// [`RAW_ROUTING_KEY`] as Warren binds a work queue to `{ns}.tasks` (a direct exchange costs
/// the broker a routing-table lookup per message that the default exchange does not).
pub(super) async fn declare_raw(ch: &Channel, settings: &Settings) -> Result<String> {
    let plan = settings.plan();
    let work = plan
        .queues
        .iter()
        .find(|q| q.name == Names::new(&settings.namespace).work_queue("bench"));
    // The raw queue gets the same arguments as Warren's work queue, so both sides pay the
    // same broker costs (queue type, dead-lettering strategy).
    let args = work
        .map(|q| topology::declare::field_table(&q.args))
        .unwrap_or_default();
    let name = raw_queue(&Names::new(&settings.namespace));
    ch.queue_declare(
        name.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .map_err(amqp("declaring the raw queue"))?;
    ch.exchange_declare(
        name.as_str().into(),
        lapin::ExchangeKind::Direct,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .map_err(amqp("declaring the raw exchange"))?;
    ch.queue_bind(
        name.as_str().into(),
        name.as_str().into(),
        RAW_ROUTING_KEY.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .map_err(amqp("binding the raw queue"))?;
    Ok(name)
}

/// One raw end-to-end phase: a raw consumer, then a raw publisher once it is up.
#[derive(Debug, Clone, Copy)]
pub(super) struct RawEndToEnd {
    /// Ack with `multiple` (else each delivery).
    pub(super) multiple: bool,
    pub(super) wire: Wire,
}

impl RawEndToEnd {
    /// Runs on `queue`; returns what the consumer saw and when publishing started.
    pub(super) async fn run(
        self,
        settings: &Settings,
        conn: &Connection,
        ch: &Channel,
        queue: &str,
        opts: &BenchOptions,
    ) -> Result<(Drained, Instant)> {
        // raw_wire also takes Warren's connection layout: publishing on a connection of its
        // own, as RabbitMQ advises (flow control blocks publishing connections).
        let own = match self.wire {
            Wire::Bare => None,
            Wire::Warren => Some(
                warren::broker::connect(
                    &settings.broker_url(),
                    "warren bench raw-publish",
                    Some(settings.connect_timeout),
                )
                .await?,
            ),
        };
        let pch = confirm_channel(own.as_ref().unwrap_or(conn)).await?;
        let n = opts.count;
        let result = with_consumer(
            ch,
            queue,
            raw_drain(conn, queue, n, opts.prefetch, self.multiple),
            || async {
                raw_publish(&pch, queue, n, opts.size, self.wire)
                    .await
                    .map(drop)
            },
        )
        .await;
        close_channel(&pch, "bench").await;
        if let Some(c) = own {
            close_connection(&c, "bench").await;
        }
        result
    }
}

/// The raw side's queue (and direct exchange) in the benchmark's namespace.
pub(super) fn raw_queue(names: &Names) -> String {
    names.work_queue("raw")
}
