//! The declared topology on a real broker: idempotence, arguments, the delay ladder, conflicts.

use std::time::{Duration, Instant};

use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use warren::topology::{self, ArgValue, ladder::Ladder};
use warren::{Error, QueueType};

use crate::support::{TestBroker, take};

const TOPOLOGY: &str = "max_delay = \"60s\"\n[tasks.job]\n[tasks.other]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applying_twice_declares_the_same_objects_without_error() {
    // Given a fresh vhost and a quorum topology with two task types
    let broker = TestBroker::new();
    let settings = broker.settings(TOPOLOGY);
    let plan = settings.plan();
    let conn = broker.connect().await;

    // When it is applied twice
    let first = topology::apply(&plan, &conn, &broker.vhost)
        .await
        .expect("first apply");
    let second = topology::apply(&plan, &conn, &broker.vhost)
        .await
        .expect("second apply");

    // Then both runs declared the same objects, and the broker has exactly those queues
    assert_eq!(first, second);
    assert_eq!(first.queues.len(), plan.queues.len());
    let listed = broker
        .mgmt
        .get(&format!(
            "queues/{}",
            warren::ops::management::enc(&broker.vhost)
        ))
        .unwrap();
    let mut names: Vec<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    let mut planned: Vec<String> = plan.queues.iter().map(|q| q.name.clone()).collect();
    planned.sort();
    assert_eq!(names, planned);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_queues_carry_the_planned_arguments_with_their_types() {
    let broker = TestBroker::new();
    let settings = broker.settings(TOPOLOGY);
    let plan = settings.plan();
    let conn = broker.connect().await;
    topology::apply(&plan, &conn, &broker.vhost).await.unwrap();

    for q in &plan.queues {
        let info = broker.queue_info(&q.name);
        assert_eq!(info["durable"], true, "{}", q.name);
        let want_type = match q.name.as_str() {
            "t.control.events" => "stream",
            _ => "quorum",
        };
        assert_eq!(info["type"], want_type, "{}", q.name);
        let args = info["arguments"].as_object().unwrap();
        assert_eq!(args.len(), q.args.len(), "{}: {args:?}", q.name);
        for (key, want) in &q.args {
            let got = &args[*key];
            match want {
                ArgValue::Int(i) => assert_eq!(
                    got.as_i64(),
                    Some(*i),
                    "{}.{key} must be an integer",
                    q.name
                ),
                ArgValue::Str(s) => assert_eq!(
                    got.as_str(),
                    Some(s.as_str()),
                    "{}.{key} must be a string",
                    q.name
                ),
            }
        }
    }
    let work = broker.queue_info("t.job");
    assert_eq!(work["arguments"]["x-dead-letter-routing-key"], "job");
    assert_eq!(work["arguments"]["x-delivery-limit"], 10);
}

/// Publishes raw messages into the ladder with the given delays (in that order) and returns
/// the delays in arrival order with their arrival times.
async fn ladder_arrivals(queue_type: QueueType, delays: &[u64]) -> Vec<(u64, Duration)> {
    let broker = TestBroker::new();
    let mut settings = broker.settings(TOPOLOGY);
    settings.queue_type = queue_type;
    let conn = broker.connect().await;
    topology::apply(&settings.plan(), &conn, &broker.vhost)
        .await
        .unwrap();
    let ladder = Ladder::for_max_delay(settings.max_delay);
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let started = Instant::now();
    for d in delays {
        let confirm = ch
            .basic_publish(
                format!("t.delay.{}", ladder.top()).as_str().into(),
                ladder.routing_key(*d, "job").as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                d.to_string().as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(
            confirm.is_ack() && confirm.take_message().is_none(),
            "routable into the ladder"
        );
    }
    let max = delays.iter().max().copied().unwrap_or(0);
    let got = take(
        &ch,
        "t.job",
        delays.len(),
        started,
        Duration::from_secs(max + 5),
    )
    .await;
    got.into_iter()
        .map(|(t, d)| (String::from_utf8_lossy(&d.data).parse().unwrap(), t))
        .collect()
}

// Tolerance: RabbitMQ expires a classic queue's head on a timer and a quorum queue's on its
// Raft tick; we allow the delay minus 50 ms to the delay plus 1.5 s.
fn assert_on_time(delay: u64, at: Duration) {
    let want = Duration::from_secs(delay);
    assert!(
        at + Duration::from_millis(50) >= want,
        "{delay}s delay arrived early, at {at:?}"
    );
    assert!(
        at <= want + Duration::from_millis(1500),
        "{delay}s delay arrived late, at {at:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_second_delay_reaches_the_work_queue_after_three_seconds_classic() {
    let arrivals = ladder_arrivals(QueueType::Classic, &[3]).await;
    assert_on_time(3, arrivals[0].1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_second_delay_reaches_the_work_queue_after_three_seconds_quorum() {
    let arrivals = ladder_arrivals(QueueType::Quorum, &[3]).await;
    assert_on_time(3, arrivals[0].1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delays_published_in_reverse_order_arrive_in_delay_order() {
    // No head-of-line blocking: the 5 s message sits in other levels than the 1 s one.
    let arrivals = ladder_arrivals(QueueType::Quorum, &[5, 2, 1]).await;
    let order: Vec<u64> = arrivals.iter().map(|(d, _)| *d).collect();
    assert_eq!(order, vec![1, 2, 5]);
    for (d, at) in arrivals {
        assert_on_time(d, at);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_declared_with_other_arguments_gives_an_explained_conflict() {
    // Given a work queue someone declared as a plain classic queue
    let broker = TestBroker::new();
    let settings = broker.settings(TOPOLOGY);
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        "t.job".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();

    // When the quorum topology is applied
    let err = topology::apply(&settings.plan(), &conn, &broker.vhost)
        .await
        .unwrap_err();

    // Then the error names the queue, the argument, both values and how to migrate
    let Error::TopologyConflict(conflicts) = &err else {
        panic!("expected a conflict, got {err}")
    };
    assert_eq!(conflicts.len(), 1, "{err}");
    let c = &conflicts[0];
    assert_eq!(
        (c.entity, c.name.as_str(), c.vhost.as_str()),
        ("queue", "t.job", broker.vhost.as_str())
    );
    // RabbitMQ names the first differing argument it checks; the existing queue has none.
    let plan = settings.plan();
    let planned = plan.queues.iter().find(|q| q.name == "t.job").unwrap();
    let want = planned
        .arg(&c.argument)
        .unwrap_or_else(|| panic!("{} is not a planned argument", c.argument));
    assert_eq!(
        (c.existing.as_str(), c.wanted.clone()),
        ("none", want.to_string())
    );
    let text = err.to_string();
    assert!(
        text.contains("delete it") && text.contains("declare the topology again"),
        "{text}"
    );
    // and everything else was still declared
    assert_eq!(broker.queue_info("t.other")["type"], "quorum");
}
