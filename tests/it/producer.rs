//! The producer on a real broker: wire format, delays, expiry, errors, bulk, reconnects.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::types::AMQPValue;
use serde::{Deserialize, Serialize};
use warren::{EnqueueOptions, Error, Producer, Task};

use crate::support::{TestBroker, eventually, stderr, stdout, take};

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Resize {
    path: String,
    width: u32,
}

impl Task for Resize {
    const NAME: &'static str = "resize";
}

const TOPOLOGY: &str = "max_delay = \"1h\"\nqueue_type = \"classic\"\n[tasks.resize]\n";

fn header<'a>(d: &'a lapin::message::Delivery, key: &str) -> Option<&'a AMQPValue> {
    d.properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(key))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueued_task_has_exactly_the_wire_format_properties() {
    let broker = TestBroker::new();
    let (settings, _conn, ch) = broker.applied(TOPOLOGY).await;
    let producer = Producer::new(&settings).unwrap();
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let before = SystemTime::now();

    let id = producer
        .enqueue_with(
            &Resize {
                path: "a.png".into(),
                width: 64,
            },
            EnqueueOptions::default()
                .expires_in(Duration::from_secs(600))
                .correlation_id("order-7")
                .traceparent(traceparent),
        )
        .await
        .expect("confirmed");

    let msg = ch
        .basic_get("t.resize".into(), BasicGetOptions::default())
        .await
        .unwrap()
        .expect("task is in the queue");
    let d = &msg.delivery;
    let p = &d.properties;
    assert_eq!(
        serde_json::from_slice::<Resize>(&d.data).unwrap(),
        Resize {
            path: "a.png".into(),
            width: 64
        }
    );
    assert_eq!(d.routing_key.as_str(), "resize");
    assert_eq!(d.exchange.as_str(), "t.tasks");
    assert_eq!(p.message_id().as_ref().unwrap().as_str(), id);
    assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 7);
    assert_eq!(p.kind().as_ref().unwrap().as_str(), "resize");
    assert_eq!(
        p.content_type().as_ref().unwrap().as_str(),
        "application/json"
    );
    assert_eq!(*p.delivery_mode(), Some(2));
    assert_eq!(p.correlation_id().as_ref().unwrap().as_str(), "order-7");
    // The enqueue time travels in the UUID v7 id (ms); `timestamp` only when the id and the
    // enqueue fell in different seconds.
    let id_ms = warren::wire::id_time_ms(&id).expect("v7 id carries its time");
    let before_ms = before
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        (before_ms..before_ms + 5000).contains(&id_ms),
        "id time {id_ms} vs enqueue at {before_ms}"
    );
    if let Some(ts) = *p.timestamp() {
        assert_ne!(
            ts,
            id_ms / 1000,
            "timestamp sent though the id says the same"
        );
    }
    let expiration: u64 = p
        .expiration()
        .as_ref()
        .expect("direct publish carries expiration")
        .as_str()
        .parse()
        .unwrap();
    assert!((599_000..=600_000).contains(&expiration), "{expiration}");
    let headers = p.headers().as_ref().unwrap().inner();
    let keys: BTreeSet<&str> = headers.keys().map(|k| k.as_str()).collect();
    // No `warren-attempt`: absent means the first run.
    assert_eq!(keys, BTreeSet::from(["traceparent", "warren-expires-at"]));
    let Some(AMQPValue::LongLongInt(at)) = header(d, "warren-expires-at") else {
        panic!("expires-at")
    };
    let before_ms = before_ms as i64;
    assert!((before_ms + 600_000..=before_ms + 605_000).contains(at));
    assert_eq!(
        header(d, "traceparent"),
        Some(&AMQPValue::LongString(traceparent.into()))
    );
    assert!(p.app_id().is_none() && p.priority().is_none() && p.reply_to().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_four_second_delay_is_not_in_the_queue_at_three_seconds_and_is_by_five() {
    let broker = TestBroker::new();
    let (settings, _conn, ch) = broker.applied(TOPOLOGY).await;
    let producer = Producer::new(&settings).unwrap();
    let started = Instant::now();
    let id = producer
        .enqueue_with(
            &Resize {
                path: "d".into(),
                width: 1,
            },
            EnqueueOptions::default().delay(Duration::from_secs(4)),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(started.elapsed())).await;
    assert_eq!(broker.count(&ch, "t.resize").await, 0, "arrived before 3 s");
    let got = take(&ch, "t.resize", 1, started, Duration::from_secs(5)).await;
    assert_eq!(
        got[0].1.properties.message_id().as_ref().unwrap().as_str(),
        id
    );
    assert!(
        got[0].0 >= Duration::from_secs(4) - Duration::from_millis(50),
        "arrived at {:?}",
        got[0].0
    );
    // A delayed publish carries no per-message TTL: it would race the levels' own TTLs.
    assert!(got[0].1.properties.expiration().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delays_of_one_three_and_two_seconds_arrive_in_delay_order() {
    let broker = TestBroker::new();
    let (settings, _conn, ch) = broker.applied(TOPOLOGY).await;
    let producer = Producer::new(&settings).unwrap();
    let started = Instant::now();
    for secs in [1u32, 3, 2] {
        producer
            .enqueue_with(
                &Resize {
                    path: secs.to_string(),
                    width: secs,
                },
                EnqueueOptions::default().delay(Duration::from_secs(secs.into())),
            )
            .await
            .unwrap();
    }
    let got = take(&ch, "t.resize", 3, started, Duration::from_secs(8)).await;
    let order: Vec<u32> = got
        .iter()
        .map(|(_, d)| serde_json::from_slice::<Resize>(&d.data).unwrap().width)
        .collect();
    assert_eq!(order, vec![1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconsumed_task_past_its_expiry_lands_in_the_dead_queue_as_expired() {
    for queue_type in ["classic", "quorum"] {
        let broker = TestBroker::new();
        let toml = format!("max_delay = \"1h\"\nqueue_type = \"{queue_type}\"\n[tasks.resize]\n");
        let (settings, _conn, ch) = broker.applied(&toml).await;
        let producer = Producer::new(&settings).unwrap();
        let started = Instant::now();
        let id = producer
            .enqueue_with(
                &Resize {
                    path: "x".into(),
                    width: 1,
                },
                EnqueueOptions::default().expires_in(Duration::from_secs(1)),
            )
            .await
            .unwrap();
        let got = take(&ch, "t.resize.dead", 1, started, Duration::from_secs(5)).await;
        let d = &got[0].1;
        assert_eq!(
            d.properties.message_id().as_ref().unwrap().as_str(),
            id,
            "{queue_type}"
        );
        assert_eq!(
            header(d, "x-first-death-reason"),
            Some(&AMQPValue::LongString("expired".into())),
            "{queue_type}"
        );
        assert_eq!(broker.count(&ch, "t.resize").await, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiry_longer_than_the_delay_survives_the_ladder() {
    let broker = TestBroker::new();
    let (settings, _conn, ch) = broker.applied(TOPOLOGY).await;
    let producer = Producer::new(&settings).unwrap();
    let started = Instant::now();
    let opts = EnqueueOptions::default()
        .delay(Duration::from_secs(2))
        .expires_in(Duration::from_secs(30));
    let id = producer
        .enqueue_with(
            &Resize {
                path: "x".into(),
                width: 1,
            },
            opts,
        )
        .await
        .unwrap();
    let got = take(&ch, "t.resize", 1, started, Duration::from_secs(6)).await;
    let d = &got[0].1;
    assert_eq!(d.properties.message_id().as_ref().unwrap().as_str(), id);
    assert!(
        matches!(
            header(d, "warren-expires-at"),
            Some(AMQPValue::LongLongInt(_))
        ),
        "the worker still knows the expiry"
    );
    assert_eq!(broker.count(&ch, "t.resize.dead").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_without_the_topology_is_an_error_that_says_to_apply_it() {
    // Given a vhost where nothing is declared
    let broker = TestBroker::new();
    let settings = broker.settings(TOPOLOGY);
    let producer = Producer::new(&settings).unwrap();
    // When a task and a bulk are enqueued
    let err = producer
        .enqueue(&Resize {
            path: "x".into(),
            width: 1,
        })
        .await
        .unwrap_err();
    let bulk = producer
        .enqueue_many((0..50).map(|i| Resize {
            path: i.to_string(),
            width: i,
        }))
        .await;
    // Then every one is reported as not enqueued, naming the missing exchange
    assert!(matches!(err, Error::MissingExchange { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("exchange `t.tasks` does not exist"),
        "{err}"
    );
    assert!(
        bulk.iter()
            .all(|r| matches!(r, Err(Error::MissingExchange { .. }))),
        "{bulk:?}"
    );
    // And the command adds the fix: apply the topology (exit 1: not a usage error)
    let out = broker.cli(&["--topology", "/dev/null", "enqueue", "resize"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("run `warren topology apply`"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_type_missing_from_the_topology_is_unroutable() {
    let broker = TestBroker::new();
    let (settings, _conn, ch) = broker
        .applied("max_delay = \"1h\"\nqueue_type = \"classic\"\n[tasks.other]\n")
        .await;
    let producer = Producer::new(&settings).unwrap();
    let err = producer
        .enqueue(&Resize {
            path: "x".into(),
            width: 1,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unroutable { .. }), "{err:?}");
    assert!(
        err.to_string().contains("`resize`") && err.to_string().contains("namespace `t`"),
        "{err}"
    );
    // The producer keeps working after a returned message.
    producer
        .enqueue_raw("other", b"{}".to_vec(), EnqueueOptions::default())
        .await
        .unwrap();
    assert_eq!(broker.count(&ch, "t.other").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_producer_keeps_what_it_confirmed_and_reconnects_when_used_again() {
    let broker = TestBroker::new();
    let (settings, _conn, ch) = broker.applied(TOPOLOGY).await;
    let producer = Producer::new(&settings).unwrap();
    let job = Resize {
        path: "a".into(),
        width: 1,
    };
    producer.enqueue(&job).await.unwrap();
    producer.close().await;
    producer.close().await; // twice is harmless
    producer.enqueue(&job).await.expect("a new connection");
    producer.close().await;
    assert_eq!(broker.count(&ch, "t.resize").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_producer_whose_connection_the_broker_closed_returns_at_once() {
    // Given a producer whose connection the broker force-closed
    let broker = TestBroker::new();
    let (settings, _conn, ch) = broker.applied(TOPOLOGY).await;
    let role = format!("producer-closed-{}", broker.vhost);
    let producer = Producer::with_role(&settings, &role).unwrap();
    let job = Resize {
        path: "a".into(),
        width: 1,
    };
    producer.enqueue(&job).await.unwrap();
    let name = warren::broker::connection_name(&role);
    let mgmt = broker.mgmt.clone();
    eventually(
        Duration::from_secs(20),
        "the producer connection to show up",
        || mgmt.close_connections_named(&name).ok().filter(|n| *n > 0),
    )
    .await;
    // When it is closed: no close-ok will come, and close must not wait for one
    let started = Instant::now();
    producer.close().await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "close took {:?}",
        started.elapsed()
    );
    // Then the confirmed task is there and the producer still works
    producer.enqueue(&job).await.expect("a new connection");
    producer.close().await;
    assert_eq!(broker.count(&ch, "t.resize").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_input_is_refused_before_anything_is_published() {
    let broker = TestBroker::new();
    let toml =
        "max_delay = \"1h\"\nqueue_type = \"classic\"\nmax_payload_bytes = 1000\n[tasks.resize]\n";
    let (settings, _conn, ch) = broker.applied(toml).await;
    let producer = Producer::new(&settings).unwrap();
    let cases: Vec<(&str, Vec<u8>, EnqueueOptions, &str)> = vec![
        (
            "resize",
            vec![b'1'; 1001],
            EnqueueOptions::default(),
            "1001 bytes, above the limit of 1000",
        ),
        (
            "resize",
            b"{}".to_vec(),
            EnqueueOptions::default().delay(Duration::from_secs(3601)),
            "above max_delay",
        ),
        (
            "resize",
            b"{}".to_vec(),
            EnqueueOptions::default().expires_at(SystemTime::now() - Duration::from_secs(1)),
            "in the past",
        ),
        (
            "Resize",
            b"{}".to_vec(),
            EnqueueOptions::default(),
            "task name `Resize`",
        ),
        (
            "a.b",
            b"{}".to_vec(),
            EnqueueOptions::default(),
            "task name `a.b`",
        ),
        (
            "resize",
            b"{}".to_vec(),
            EnqueueOptions::default().id(""),
            "task id",
        ),
    ];
    for (task, body, opts, needle) in cases {
        let err = producer.enqueue_raw(task, body, opts).await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidInput(_)) && err.to_string().contains(needle),
            "{needle}: {err}"
        );
    }
    assert_eq!(broker.count(&ch, "t.resize").await, 0);
    assert_eq!(broker.count(&ch, "t.delay.11").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_id_and_a_sub_second_delay_are_honoured() {
    let broker = TestBroker::new();
    let (settings, _conn, ch) = broker.applied(TOPOLOGY).await;
    let producer = Producer::new(&settings).unwrap();
    let started = Instant::now();
    let id = producer
        .enqueue_with(
            &Resize {
                path: "x".into(),
                width: 1,
            },
            EnqueueOptions::default()
                .id("order-42")
                .delay(Duration::from_millis(200)),
        )
        .await
        .unwrap();
    assert_eq!(id, "order-42");
    let got = take(&ch, "t.resize", 1, started, Duration::from_secs(4)).await;
    // 200 ms rounds up to a whole second
    assert!(got[0].0 >= Duration::from_millis(950), "{:?}", got[0].0);
    assert_eq!(
        got[0].1.properties.message_id().as_ref().unwrap().as_str(),
        "order-42"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forcibly_closed_connection_loses_no_confirmed_task() {
    // Given a producer with a connection name of its own, publishing batches in a loop
    let broker = TestBroker::new();
    let (settings, _conn, ch) = broker.applied(TOPOLOGY).await;
    let producer =
        Producer::with_role(&settings, &format!("producer-kill-{}", broker.vhost)).unwrap();
    let name = warren::broker::connection_name(&format!("producer-kill-{}", broker.vhost));
    let killed = Arc::new(AtomicBool::new(false));
    let publishing = {
        let (producer, killed) = (producer.clone(), killed.clone());
        tokio::spawn(async move {
            let mut results = Vec::new();
            let mut rounds_after_kill = 0;
            while rounds_after_kill < 2 && results.len() < 400_000 {
                if killed.load(Ordering::SeqCst) {
                    rounds_after_kill += 1;
                }
                let batch = producer
                    .enqueue_many((0..2000).map(|i| Resize {
                        path: "k".into(),
                        width: i,
                    }))
                    .await;
                results.extend(batch);
            }
            results
        })
    };
    // When the broker force-closes its connection mid-run
    let mgmt = broker.mgmt.clone();
    let closed = eventually(
        Duration::from_secs(20),
        "the producer connection to show up",
        || mgmt.close_connections_named(&name).ok().filter(|n| *n > 0),
    )
    .await;
    killed.store(true, Ordering::SeqCst);
    let results = publishing.await.unwrap();

    // Then every task reported as enqueued is in the queue, and errors (if any) are clear
    assert!(closed >= 1);
    let confirmed: HashSet<String> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().cloned())
        .collect();
    for e in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(e.is_transient(), "unexpected error kind: {e}");
    }
    let in_queue = broker.count(&ch, "t.resize").await as usize;
    let mut seen = HashSet::new();
    while let Some(msg) = ch
        .basic_get("t.resize".into(), BasicGetOptions::default())
        .await
        .unwrap()
    {
        seen.insert(
            msg.delivery
                .properties
                .message_id()
                .as_ref()
                .unwrap()
                .to_string(),
        );
        msg.delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    let lost: Vec<&String> = confirmed.difference(&seen).collect();
    assert!(
        lost.is_empty(),
        "{} confirmed tasks missing from the queue (e.g. {:?})",
        lost.len(),
        lost.first()
    );
    assert!(
        confirmed.len() > 2000,
        "the producer went on after the reconnect"
    );
    eprintln!(
        "forced close: {} confirmed, {in_queue} in queue ({} duplicates from republishing)",
        confirmed.len(),
        in_queue - seen.len().min(in_queue)
    );
}

#[test]
fn enqueue_count_puts_exactly_that_many_distinct_ids_in_the_queue() {
    let broker = TestBroker::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_settings, _conn, ch) = rt.block_on(broker.applied(TOPOLOGY));
    let out = broker.cli_with(
        &[
            "enqueue",
            "resize",
            "--payload",
            "{\"path\":\"p\",\"width\":1}",
            "--count",
            "10000",
        ],
        &[("WARREN_TOPOLOGY", "/dev/null")],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let printed: HashSet<String> = stdout(&out).lines().map(str::to_string).collect();
    assert_eq!(printed.len(), 10_000);
    assert!(
        stderr(&out).contains("enqueued 10000 of 10000 `resize` tasks"),
        "{}",
        stderr(&out)
    );
    let in_queue: HashSet<String> = rt.block_on(async {
        assert_eq!(broker.count(&ch, "t.resize").await, 10_000);
        let got = take(
            &ch,
            "t.resize",
            10_000,
            Instant::now(),
            Duration::from_secs(60),
        )
        .await;
        got.into_iter()
            .map(|(_, d)| d.properties.message_id().as_ref().unwrap().to_string())
            .collect()
    });
    assert_eq!(in_queue, printed);
}

#[test]
fn stdin_lines_are_enqueued_and_a_bad_line_is_named_and_skipped() {
    let broker = TestBroker::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_settings, _conn, ch) = rt.block_on(broker.applied(TOPOLOGY));
    let input = "{\"path\":\"1\",\"width\":1}\n{\"path\":\"2\",\"width\":2}\n{not json}\n\n{\"path\":\"5\",\"width\":5}\n";
    let out = broker.cli_with(
        &["enqueue", "resize", "-"],
        &[("WARREN_TOPOLOGY", "/dev/null")],
        Some(input),
    );
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a bad line fails the run: {err}"
    );
    assert!(
        err.contains("line 3 is not valid JSON") && err.contains("line 3 NOT enqueued"),
        "{err}"
    );
    let printed: Vec<(usize, String)> = stdout(&out)
        .lines()
        .map(|l| {
            let (n, id) = l.split_once('\t').expect("LINE<TAB>ID");
            (n.parse().unwrap(), id.to_string())
        })
        .collect();
    assert_eq!(
        printed.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        vec![1, 2, 5]
    );
    let in_queue: Vec<(String, u32)> = rt.block_on(async {
        let got = take(&ch, "t.resize", 3, Instant::now(), Duration::from_secs(10)).await;
        got.into_iter()
            .map(|(_, d)| {
                (
                    d.properties.message_id().as_ref().unwrap().to_string(),
                    serde_json::from_slice::<Resize>(&d.data).unwrap().width,
                )
            })
            .collect()
    });
    let ids: Vec<String> = printed.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(
        in_queue
            .iter()
            .map(|(id, _)| id.clone())
            .collect::<Vec<_>>(),
        ids
    );
    assert_eq!(
        in_queue.iter().map(|(_, w)| *w).collect::<Vec<_>>(),
        vec![1, 2, 5]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_that_refuses_publishes_is_reported_as_a_refusal() {
    // Given a quorum work queue (x-overflow = reject-publish) limited to 1 message by a policy
    let broker = TestBroker::new();
    let toml = "max_delay = \"1h\"\nqueue_type = \"quorum\"\n[tasks.resize]\n";
    let (settings, _conn, ch) = broker.applied(toml).await;
    broker
        .mgmt
        .put(
            &format!("policies/{}/cap", warren::ops::management::enc(&broker.vhost)),
            &serde_json::json!({"pattern": "^t\\.resize$", "apply-to": "queues", "definition": {"max-length": 1}}),
        )
        .unwrap();
    let producer = Producer::new(&settings).unwrap();
    // When three tasks are enqueued (the policy takes a moment to apply, so retry the first)
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut confirmed = 0;
    let refused = loop {
        match producer
            .enqueue(&Resize {
                path: "x".into(),
                width: 1,
            })
            .await
        {
            Err(e) => break e,
            Ok(_) => {
                confirmed += 1;
                assert!(Instant::now() < deadline, "the capped queue never refused");
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Then the broker's nack is an error that says what happened, and the queue holds
    // exactly what was confirmed (the quorum limit is approximate: 1 or 2)
    assert!(matches!(refused, Error::Refusal { .. }), "{refused:?}");
    assert!(
        refused.to_string().contains("refused") && refused.to_string().contains("(nack)"),
        "{refused}"
    );
    assert!(confirmed >= 1);
    assert_eq!(broker.count(&ch, "t.resize").await, confirmed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priorities_are_delivered_first_and_a_delayed_task_keeps_its_priority() {
    let broker = TestBroker::new();
    let toml = "max_delay = \"1h\"\nqueue_type = \"quorum\"\n[tasks.report]\nqueue_type = \"classic\"\n\
                priorities = 5\n";
    let (settings, _conn, ch) = broker.applied(toml).await;
    let info = broker.queue_info("t.report");
    assert_eq!(info["arguments"]["x-max-priority"], 5, "{info}");
    assert_eq!(info["type"], "classic", "{info}");
    let producer = Producer::new(&settings).unwrap();
    let enqueue = |prio: Option<u8>, delay: Option<Duration>, id: &str| {
        let mut opts = EnqueueOptions::default().id(id);
        opts.priority = prio;
        opts.delay = delay;
        producer.enqueue_raw("report", b"{}".to_vec(), opts)
    };
    // A high one delayed through the ladder, then three plain ones and a high one at once.
    enqueue(Some(5), Some(Duration::from_secs(1)), "late-high")
        .await
        .unwrap();
    for id in ["low-1", "low-2", "low-3"] {
        enqueue(None, None, id).await.unwrap();
    }
    enqueue(Some(5), None, "high").await.unwrap();
    // Nobody consumes until the delayed one is back in the work queue.
    let deadline = Instant::now() + Duration::from_secs(10);
    while broker.count(&ch, "t.report").await < 5 {
        assert!(
            Instant::now() < deadline,
            "the delayed task did not come back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let got = take(&ch, "t.report", 5, Instant::now(), Duration::from_secs(5)).await;
    let order: Vec<String> = got
        .iter()
        .map(|(_, d)| d.properties.message_id().as_ref().unwrap().to_string())
        .collect();
    let (first, rest) = order.split_at(2);
    let mut first = first.to_vec();
    first.sort();
    assert_eq!(first, ["high", "late-high"], "{order:?}");
    assert_eq!(rest, ["low-1", "low-2", "low-3"], "{order:?}");
    assert_eq!(*got[0].1.properties.priority(), Some(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warren_enqueue_priority_sets_the_message_priority() {
    let broker = TestBroker::new();
    let toml = "max_delay = \"1h\"\n[tasks.report]\nqueue_type = \"classic\"\npriorities = 5\n";
    let (_settings, _conn, ch) = broker.applied(toml).await;
    let topo = crate::support::TempFile::with(toml);
    let o = broker.cli_with(
        &["enqueue", "report", "--priority", "3"],
        &[("WARREN_TOPOLOGY", topo.as_str())],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let got = take(&ch, "t.report", 1, Instant::now(), Duration::from_secs(5)).await;
    assert_eq!(*got[0].1.properties.priority(), Some(3));
    let bad = broker.cli_with(
        &["enqueue", "report", "--priority", "300"],
        &[("WARREN_TOPOLOGY", topo.as_str())],
        None,
    );
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
}
