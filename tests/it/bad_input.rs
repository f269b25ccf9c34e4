//! Bad input, table-driven: each case gets a clear error or its documented dead-letter
//! reason, the worker keeps processing good tasks in between, and nothing else is lost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde::{Deserialize, Serialize};
use warren::topology;
use warren::{EnqueueOptions, Error, Producer, Task, TaskContext, Worker};

use crate::support::{TempFile, TestBroker, stderr, take, warren_bin};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Job {
    n: u32,
}

impl Task for Job {
    const NAME: &'static str = "job";
}

const TOPOLOGY: &str =
    "max_delay = \"1h\"\nmax_payload_bytes = 67108864\n[tasks.job]\n[tasks.other]\n";

fn props(id: &str) -> BasicProperties {
    BasicProperties::default()
        .with_message_id(id.into())
        .with_type("job".into())
        .with_delivery_mode(2)
}

fn with_header(p: BasicProperties, k: &str, v: AMQPValue) -> BasicProperties {
    let mut h = FieldTable::default();
    h.insert(k.into(), v);
    p.with_headers(h)
}

/// Messages a foreign or broken publisher could send, and the reason each must die with
/// (`None`: it is valid and must run).
fn wire_cases() -> Vec<(&'static str, Vec<u8>, BasicProperties, Option<&'static str>)> {
    let past = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 60_000;
    vec![
        (
            "malformed json",
            b"{\"n\": ".to_vec(),
            props("malformed json"),
            Some("undecodable"),
        ),
        (
            "wrong shape",
            b"{\"name\": \"x\"}".to_vec(),
            props("wrong shape"),
            Some("undecodable"),
        ),
        (
            "wrong field type",
            b"{\"n\": \"seven\"}".to_vec(),
            props("wrong field type"),
            Some("undecodable"),
        ),
        (
            "json array",
            b"[1, 2]".to_vec(),
            props("json array"),
            Some("undecodable"),
        ),
        (
            "empty body",
            Vec::new(),
            props("empty body"),
            Some("undecodable"),
        ),
        (
            "invalid utf-8",
            vec![0xff, 0xfe, 0x00],
            props("invalid utf-8"),
            Some("undecodable"),
        ),
        (
            "50 MiB body",
            vec![b'x'; 50 * 1024 * 1024],
            props("50 MiB body"),
            Some("undecodable"),
        ),
        (
            "wrong content type",
            b"{\"n\": 1}".to_vec(),
            props("wrong content type").with_content_type("text/plain".into()),
            Some("undecodable"),
        ),
        (
            "type of another task",
            b"{\"n\": 1}".to_vec(),
            props("type of another task").with_type("other".into()),
            Some("unknown_task"),
        ),
        (
            "unknown task type",
            b"{\"n\": 1}".to_vec(),
            props("unknown task type").with_type("nonexistent".into()),
            Some("unknown_task"),
        ),
        (
            "attempt as string",
            b"{\"n\": 1}".to_vec(),
            with_header(
                props("attempt as string"),
                "warren-attempt",
                AMQPValue::LongString("2".into()),
            ),
            Some("invalid_header"),
        ),
        (
            "attempt negative",
            b"{\"n\": 1}".to_vec(),
            with_header(
                props("attempt negative"),
                "warren-attempt",
                AMQPValue::LongLongInt(-1),
            ),
            Some("invalid_header"),
        ),
        (
            "attempt zero",
            b"{\"n\": 1}".to_vec(),
            with_header(
                props("attempt zero"),
                "warren-attempt",
                AMQPValue::LongLongInt(0),
            ),
            Some("invalid_header"),
        ),
        (
            "attempt huge",
            b"{\"n\": 1}".to_vec(),
            with_header(
                props("attempt huge"),
                "warren-attempt",
                AMQPValue::LongLongInt(1 << 40),
            ),
            Some("invalid_header"),
        ),
        (
            "expires-at as string",
            b"{\"n\": 1}".to_vec(),
            with_header(
                props("expires-at as string"),
                "warren-expires-at",
                AMQPValue::LongString("soon".into()),
            ),
            Some("invalid_header"),
        ),
        (
            "expiry in the past",
            b"{\"n\": 1}".to_vec(),
            with_header(
                props("expiry in the past"),
                "warren-expires-at",
                AMQPValue::LongLongInt(past),
            ),
            Some("expired"),
        ),
        // valid though minimal or unusual: they run
        (
            "no type, no id",
            b"{\"n\": 100}".to_vec(),
            BasicProperties::default(),
            None,
        ),
        (
            "json with charset",
            b"{\"n\": 101}".to_vec(),
            props("json with charset").with_content_type("application/json; charset=utf-8".into()),
            None,
        ),
        (
            "attempt as 32-bit int",
            b"{\"n\": 102}".to_vec(),
            with_header(
                props("attempt as 32-bit int"),
                "warren-attempt",
                AMQPValue::LongInt(2),
            ),
            None,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_die_with_their_reason_and_good_ones_in_between_all_run() {
    let broker = TestBroker::new();
    let settings = broker.settings(TOPOLOGY);
    let conn = broker.connect().await;
    topology::apply(&settings.plan(), &conn, &broker.vhost)
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let ran: Arc<Mutex<Vec<u32>>> = Arc::default();
    let r2 = ran.clone();
    let stop = tokio_util::sync::CancellationToken::new();
    let worker = Worker::new(&settings).handle(move |job: Job, _ctx: TaskContext| {
        let ran = r2.clone();
        async move {
            ran.lock().unwrap().push(job.n);
            Ok(())
        }
    });
    let handle = tokio::spawn(worker.run(stop.clone()));

    // A good task after every case.
    let cases = wire_cases();
    let started = Instant::now();
    for (i, (_, body, p, _)) in cases.iter().enumerate() {
        for (b, p) in [
            (body.clone(), p.clone()),
            (
                serde_json::to_vec(&Job { n: i as u32 }).unwrap(),
                props(&format!("good-{i}")),
            ),
        ] {
            let c = ch
                .basic_publish(
                    "t.tasks".into(),
                    "job".into(),
                    BasicPublishOptions::default(),
                    &b,
                    p,
                )
                .await
                .unwrap()
                .await
                .unwrap();
            assert!(c.is_ack());
        }
    }
    let bad = cases.iter().filter(|c| c.3.is_some()).count();
    let dead = take(&ch, "t.job.dead", bad, started, Duration::from_secs(30)).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while ran.lock().unwrap().len() < cases.len() + (cases.len() - bad) {
        assert!(
            Instant::now() < deadline,
            "good tasks missing: ran {:?}",
            ran.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    handle.await.unwrap().unwrap();

    let reasons: HashMap<String, String> = dead
        .iter()
        .map(|(_, d)| {
            let id = d
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default();
            let reason = match d
                .properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get("warren-reason"))
            {
                Some(AMQPValue::LongString(s)) => {
                    String::from_utf8_lossy(s.as_bytes()).into_owned()
                }
                other => format!("{other:?}"),
            };
            (id, reason)
        })
        .collect();
    for (name, _, _, want) in &cases {
        if let Some(want) = want {
            assert_eq!(
                reasons.get(*name).map(String::as_str),
                Some(*want),
                "case `{name}`: {reasons:?}"
            );
        }
    }
    let mut ran = ran.lock().unwrap().clone();
    ran.sort();
    let mut want: Vec<u32> = (0..cases.len() as u32).chain([100, 101, 102]).collect();
    want.sort();
    assert_eq!(ran, want, "every good task ran exactly once");
    assert_eq!(broker.count(&ch, "t.job").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_enqueues_are_refused_with_a_reason_and_publish_nothing() {
    let broker = TestBroker::new();
    let mut settings = broker.settings(TOPOLOGY);
    settings.max_payload_bytes = 1024;
    let conn = broker.connect().await;
    topology::apply(&settings.plan(), &conn, &broker.vhost)
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let producer = Producer::new(&settings).unwrap();
    let long = "a".repeat(200);
    let cases: Vec<(&str, &str, Vec<u8>, EnqueueOptions, &str)> = vec![
        (
            "delay above max_delay",
            "job",
            b"{}".to_vec(),
            EnqueueOptions::default().delay(Duration::from_secs(3601)),
            "above max_delay",
        ),
        (
            "expiry in the past",
            "job",
            b"{}".to_vec(),
            EnqueueOptions::default().expires_at(SystemTime::now() - Duration::from_secs(5)),
            "in the past",
        ),
        (
            "zero expiry",
            "job",
            b"{}".to_vec(),
            EnqueueOptions::default().expires_in(Duration::ZERO),
            "in the past",
        ),
        (
            "name with dots",
            "send.email",
            b"{}".to_vec(),
            EnqueueOptions::default(),
            "contains '.'",
        ),
        (
            "name with spaces",
            "send email",
            b"{}".to_vec(),
            EnqueueOptions::default(),
            "contains ' '",
        ),
        (
            "unicode name",
            "émail",
            b"{}".to_vec(),
            EnqueueOptions::default(),
            "contains 'é'",
        ),
        (
            "200-character name",
            &long,
            b"{}".to_vec(),
            EnqueueOptions::default(),
            "1 to 64 characters",
        ),
        (
            "empty name",
            "",
            b"{}".to_vec(),
            EnqueueOptions::default(),
            "1 to 64 characters",
        ),
        (
            "body over the limit",
            "job",
            vec![b' '; 1025],
            EnqueueOptions::default(),
            "above the limit of 1024",
        ),
        (
            "empty id",
            "job",
            b"{}".to_vec(),
            EnqueueOptions::default().id(""),
            "task id",
        ),
    ];
    for (name, task, body, opts, needle) in cases {
        match producer.enqueue_raw(task, body, opts).await {
            Err(Error::InvalidInput(msg)) => assert!(msg.contains(needle), "case `{name}`: {msg}"),
            other => panic!("case `{name}`: expected a clear refusal, got {other:?}"),
        }
    }
    // a delay of zero is no delay: it goes straight to the work queue
    producer
        .enqueue_with(
            &Job { n: 1 },
            EnqueueOptions::default().delay(Duration::ZERO),
        )
        .await
        .unwrap();
    assert_eq!(broker.count(&ch, "t.job").await, 1);
    assert_eq!(broker.count(&ch, "t.delay.11").await, 0);
}

#[test]
fn bad_configuration_urls_and_flags_are_clear_errors_with_the_right_exit_code() {
    let broker = TestBroker::new();
    let topo = |text: &str| TempFile::with(text);
    let files = [
        (
            "unknown key",
            topo("[defaults]\nmax_tries = 3\n"),
            "unknown field `max_tries`",
        ),
        (
            "bad duration",
            topo("[defaults]\ntime_limit = \"forever\"\n"),
            "invalid duration `forever`",
        ),
        (
            "bad queue type",
            topo("queue_type = \"lazy\"\n"),
            "unknown variant `lazy`",
        ),
        (
            "max_delay above the ladder",
            topo("max_delay = \"20years\"\n"),
            "max_delay",
        ),
        (
            "duplicate task",
            topo("[tasks.a]\n[tasks.a]\n"),
            "duplicate",
        ),
        (
            "bad task name",
            topo("[tasks.\"A B\"]\n"),
            "task name `A B`",
        ),
        (
            "time limit over consumer_timeout",
            topo("[defaults]\ntime_limit = \"1h\"\n"),
            "consumer_timeout",
        ),
        (
            "jitter out of range",
            topo("[defaults.backoff]\njitter = 2.0\n"),
            "backoff.jitter",
        ),
        (
            "zero attempts",
            topo("[defaults]\nmax_attempts = 0\n"),
            "max_attempts",
        ),
        ("not toml", topo("this is not toml"), "TOML parse error"),
    ];
    for (name, file, needle) in &files {
        let out = broker.cli(&["--topology", file.as_str(), "topology", "apply"]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "case `{name}`: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains(needle),
            "case `{name}`: {}",
            stderr(&out)
        );
    }
    let runs: Vec<(&str, Vec<&str>, i32, &str)> = vec![
        (
            "not a URL",
            vec!["--amqp-url", "not a url", "topology", "apply"],
            2,
            "amqp://",
        ),
        (
            "http scheme",
            vec![
                "--amqp-url",
                "http://guest:guest@127.0.0.1/",
                "topology",
                "apply",
            ],
            2,
            "amqp://",
        ),
        (
            "wrong password",
            vec![
                "--amqp-url",
                "amqp://guest:nope@127.0.0.1:5672/%2f",
                "topology",
                "apply",
            ],
            1,
            "ACCESS_REFUSED",
        ),
        (
            "unknown vhost",
            vec![
                "--amqp-url",
                "amqp://guest:guest@127.0.0.1:5672/nope-vhost",
                "topology",
                "apply",
            ],
            1,
            "vhost nope-vhost not found",
        ),
        (
            "negative delay",
            vec!["enqueue", "job", "--delay=-5s"],
            2,
            "--delay",
        ),
        (
            "zero count",
            vec!["enqueue", "job", "--count", "0"],
            2,
            "--count",
        ),
        (
            "zero concurrency",
            vec!["worker", "--concurrency", "0"],
            2,
            "--concurrency",
        ),
        (
            "zero prefetch",
            vec!["worker", "--prefetch", "0"],
            2,
            "--prefetch",
        ),
        (
            "payload not JSON",
            vec![
                "--topology",
                "/dev/null",
                "enqueue",
                "job",
                "--payload",
                "{oops",
            ],
            2,
            "not valid JSON",
        ),
        (
            "purge without --yes",
            vec!["--topology", "/dev/null", "dlq", "purge", "job"],
            2,
            "--yes",
        ),
        (
            "dlq of an unknown task",
            vec!["--topology", "/dev/null", "dlq", "list", "no_such_task"],
            2,
            "does not exist",
        ),
    ];
    for (name, args, code, needle) in runs {
        let out = warren_bin().args(&args).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(code),
            "case `{name}`: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains(needle),
            "case `{name}`: {}",
            stderr(&out)
        );
    }
}
