//! What the broker charges for message properties, routing and `mandatory`: raw lapin, one
//! durable queue, several publish variants published and drained in alternation, with the
//! broker's CPU read from `/proc/<beam.smp pid>/stat` (so run it on the broker's host).
//!
//! ```sh
//! cargo run --release --example wire_cost -- [count] [rounds] [classic|quorum] [variants]
//! cargo run --release --example wire_cost -- 20000 10 classic bare,id+type,full
//! ```
//!
//! Variants name the properties besides `content_type` and `delivery_mode = 2`: `bare`, `id`,
//! `id+type`, `id+type+ts`, `id+type+hdr` (the `warren-attempt` table), `full` (all of them,
//! Warren's format before the first run's header and timestamp were dropped), `idlenN` (an
//! id of N characters). A suffix `@m` publishes with `mandatory`, `@x` with `mandatory`
//! through a direct exchange (Warren's path) instead of the default exchange.
//!
//! It prints each round and then the medians: publish and drain rates, and broker CPU seconds
//! per 10k messages for each. The drift between rounds on this machine is large; compare
//! medians over at least 8 rounds.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};

/// Broker CPU seconds so far (user + system), 0 when no `beam.smp` runs here.
fn broker_cpu_s() -> f64 {
    let pid = std::process::Command::new("pgrep")
        .args(["-f", "beam.smp"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_default();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// The properties of `variant` (without its `@` suffix).
fn properties(variant: &str) -> BasicProperties {
    let id = || uuid::Uuid::now_v7().to_string();
    let base = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into());
    let attempt = || {
        let mut h = FieldTable::default();
        h.insert("warren-attempt".into(), AMQPValue::LongLongInt(1));
        h
    };
    let ts = 1_763_780_000;
    match variant {
        "bare" => base,
        "id" => base.with_message_id(id().into()),
        "id+type" => base.with_message_id(id().into()).with_type("bench".into()),
        "id+type+ts" => base
            .with_message_id(id().into())
            .with_type("bench".into())
            .with_timestamp(ts),
        "id+type+hdr" => base
            .with_message_id(id().into())
            .with_type("bench".into())
            .with_headers(attempt()),
        "full" => base
            .with_message_id(id().into())
            .with_type("bench".into())
            .with_timestamp(ts)
            .with_headers(attempt()),
        other => match other.strip_prefix("idlen").and_then(|n| n.parse().ok()) {
            Some(len) => base.with_message_id("x".repeat(len).into()),
            None => panic!("unknown variant {other}"),
        },
    }
}

/// One round's figures: publish rate, broker CPU per 10k published, drain rate, per 10k drained.
type Row = [f64; 4];

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let n: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(20000);
    let rounds: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(8);
    let queue_type = args.get(3).map_or("classic", String::as_str);
    let variants: Vec<&str> = args
        .get(4)
        .map_or("bare,id+type,full", String::as_str)
        .split(',')
        .collect();
    let url = std::env::var("WARREN_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let conn = Connection::connect(&url, ConnectionProperties::default()).await?;
    let publish = conn.create_channel().await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let consume = conn.create_channel().await?;
    consume.basic_qos(1000, BasicQosOptions::default()).await?;

    let queue = format!("wire-cost-{}", std::process::id());
    let exchange = format!("{queue}-x");
    let mut queue_args = FieldTable::default();
    queue_args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(queue_type.into()),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    publish
        .queue_declare(queue.as_str().into(), durable, queue_args)
        .await?;
    publish
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    publish
        .queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            queue.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    let body = vec![b'x'; 256];
    let per_10k = 10000.0 / n as f64;
    let mut table: BTreeMap<&str, Vec<Row>> = BTreeMap::new();
    println!("variant          pub/s  pub CPU   drain/s  drain CPU  (broker s per 10k)");
    for round in 0..rounds {
        for &variant in &variants {
            let (props_of, exchange, mandatory) = match variant.rsplit_once('@') {
                Some((v, "x")) => (v, exchange.as_str(), true),
                Some((v, "m")) => (v, "", true),
                _ => (variant, "", false),
            };
            tokio::time::sleep(Duration::from_millis(500)).await;
            let cpu = broker_cpu_s();
            let started = Instant::now();
            let mut inflight = FuturesUnordered::new();
            for _ in 0..n {
                if inflight.len() >= 1024
                    && let Some(confirm) = inflight.next().await
                {
                    confirm?;
                }
                let confirm = publish
                    .basic_publish(
                        exchange.into(),
                        queue.as_str().into(),
                        BasicPublishOptions {
                            mandatory,
                            ..Default::default()
                        },
                        &body,
                        properties(props_of),
                    )
                    .await?;
                inflight.push(confirm);
            }
            while let Some(confirm) = inflight.next().await {
                confirm?;
            }
            let published = (
                n as f64 / started.elapsed().as_secs_f64(),
                broker_cpu_s() - cpu,
            );

            tokio::time::sleep(Duration::from_millis(500)).await;
            let cpu = broker_cpu_s();
            let tag = format!("wire-cost-{round}-{variant}");
            let mut consumer = consume
                .basic_consume(
                    queue.as_str().into(),
                    tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            let started = Instant::now();
            let mut got = 0u64;
            while got < n {
                let Some(delivery) = consumer.next().await else {
                    return Err("consumer ended".into());
                };
                let delivery = delivery?;
                got += 1;
                if got.is_multiple_of(100) || got == n {
                    delivery
                        .acker
                        .ack(BasicAckOptions { multiple: true })
                        .await?;
                }
            }
            let drained = (
                n as f64 / started.elapsed().as_secs_f64(),
                broker_cpu_s() - cpu,
            );
            consume
                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                .await?;
            let row = [
                published.0,
                published.1 * per_10k,
                drained.0,
                drained.1 * per_10k,
            ];
            println!(
                "{variant:<14} {:>7.0} {:>8.3} {:>9.0} {:>10.3}",
                row[0], row[1], row[2], row[3]
            );
            table.entry(variant).or_default().push(row);
        }
    }
    println!("medians over {rounds} rounds:");
    for (variant, rows) in &table {
        let median = |i: usize| {
            let mut xs: Vec<f64> = rows.iter().map(|r| r[i]).collect();
            xs.sort_by(f64::total_cmp);
            xs[xs.len() / 2]
        };
        println!(
            "{variant:<14} {:>7.0} {:>8.3} {:>9.0} {:>10.3}",
            median(0),
            median(1),
            median(2),
            median(3)
        );
    }
    publish
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await?;
    publish
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    Ok(())
}
