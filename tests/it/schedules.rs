//! Periodic tasks on a real broker: several schedulers, exactly one leads; every slot fires
//! once across `kill -9` of the leader and a connection the broker closes; a new leader
//! catches up per `catch_up`; `warren worker --scheduler`; bad schedules.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use lapin::options::{BasicAckOptions, BasicGetOptions};
use warren::Settings;

use crate::support::{Reaped, TempFile, TestBroker, eventually, stderr, stdout};
use crate::worker::{signal, wait_exit, warren_process, worker_process};

const PERIOD: i64 = 2;

fn topology(catch_up: &str) -> String {
    format!(
        r#"
queue_type = "classic"
[tasks.tick]
[schedules.beat]
task = "tick"
every = "{PERIOD}s"
catch_up = "{catch_up}"
payload = {{ source = "beat" }}
"#
    )
}

fn scheduler_process(broker: &TestBroker, topology: &TempFile) -> Reaped {
    warren_process(broker, topology, "scheduler", &[])
}

/// The leading scheduler's connection name, as `warren schedules` reads it.
fn leader(settings: &Settings) -> Option<String> {
    let mgmt = warren::ops::management::Management::from_settings(settings).unwrap();
    warren::ops::schedules::fetch(settings, &mgmt, Utc::now())
        .unwrap()
        .leader
}

/// The pid at the end of a connection name `warren scheduler host:pid`.
fn pid_of(connection: &str) -> u32 {
    connection.rsplit(':').next().unwrap().parse().unwrap()
}

/// Takes every message of `queue`: the task ids, in queue order.
async fn drain(ch: &lapin::Channel, queue: &str) -> Vec<String> {
    let mut ids = Vec::new();
    while let Some(m) = ch
        .basic_get(queue.into(), BasicGetOptions::default())
        .await
        .unwrap()
    {
        ids.push(
            m.delivery
                .properties
                .message_id()
                .as_ref()
                .unwrap()
                .to_string(),
        );
        m.delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    ids
}

/// The slot of a firing's task id `beat@2026-11-23T08:00:02Z`.
fn slot_of(id: &str) -> DateTime<Utc> {
    let (schedule, at) = id.split_once('@').unwrap_or_else(|| panic!("{id}"));
    assert_eq!(schedule, "beat", "{id}");
    DateTime::parse_from_rfc3339(at)
        .unwrap()
        .with_timezone(&Utc)
}

/// Fails unless `slots` (sorted) hold no duplicate and no gap: each one period after the last.
fn assert_every_slot_once(slots: &[DateTime<Utc>]) {
    // No slots (or one) would pass the check below without showing anything.
    assert!(
        slots.len() >= 2,
        "at least two firings to compare: {slots:?}"
    );
    for pair in slots.windows(2) {
        let step = (pair[1] - pair[0]).num_seconds();
        assert!(
            step == PERIOD,
            "slots {} and {} are {step} s apart (0: fired twice, more than {PERIOD}: a gap); \
             all: {slots:?}",
            pair[0],
            pair[1]
        );
    }
}

/// The connection holding the lease, as the broker names it (`127.0.0.1:53422 -> …`): unlike
/// the leader's connection name, it changes when the same process reconnects.
fn lease_owner(broker: &TestBroker) -> Option<String> {
    let q = broker
        .mgmt
        .queue(&broker.vhost, "t.scheduler.lease")
        .ok()??;
    q["owner_pid_details"]["name"].as_str().map(str::to_string)
}

/// Kills the leader with `how` and waits for another connection to hold the lease; how long
/// that took.
async fn depose(
    settings: &Settings,
    schedulers: &mut [Reaped],
    how: &str,
    broker: &TestBroker,
) -> Duration {
    let old = leader(settings).expect("a scheduler leads");
    let old_owner = lease_owner(broker).expect("the lease is held");
    let started = Instant::now();
    match how {
        "kill" => {
            let pid = pid_of(&old);
            let s = (schedulers.iter_mut())
                .find(|s| s.id() == pid)
                .unwrap_or_else(|| panic!("the leader {old} is one of ours"));
            signal(s, "-KILL");
        }
        _ => {
            let closed = broker.mgmt.close_connections_named(&old).unwrap();
            assert_eq!(closed, 1, "the leader's connection {old}");
        }
    }
    // A closed connection's process may come back and lead again, on a new connection.
    eventually(
        Duration::from_secs(8),
        "another connection to hold the lease",
        || lease_owner(broker).filter(|now| *now != old_owner),
    )
    .await;
    let took = started.elapsed();
    if how == "kill" {
        let now = leader(settings).expect("a scheduler leads");
        assert_ne!(now, old, "a killed leader cannot lead again");
    }
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_schedulers_fire_every_slot_once_while_the_leader_is_killed_twice() {
    let broker = TestBroker::new();
    let toml = topology("all");
    let (settings, _conn, ch) = broker.applied(&toml).await;
    let file = TempFile::with(&toml);
    let mut schedulers: Vec<Reaped> = (0..3).map(|_| scheduler_process(&broker, &file)).collect();
    eventually(Duration::from_secs(15), "a leader", || leader(&settings)).await;
    let mut takeovers = Vec::new();
    for how in ["kill", "kill", "close"] {
        tokio::time::sleep(Duration::from_secs(10)).await;
        takeovers.push(depose(&settings, &mut schedulers, how, &broker).await);
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let last_leader = leader(&settings).expect("a scheduler still leads");
    for s in schedulers.iter_mut() {
        if s.try_wait().unwrap().is_none() {
            signal(s, "-TERM");
            let status = wait_exit(s, Duration::from_secs(15)).await;
            assert!(status.success(), "a scheduler stops cleanly: {}", s.log());
        }
    }
    let ids = drain(&ch, "t.tick").await;
    let mut slots: Vec<DateTime<Utc>> = ids.iter().map(|id| slot_of(id)).collect();
    slots.sort();
    let logs: Vec<String> = schedulers.iter().map(Reaped::log).collect();
    assert!(
        slots.len() >= 18,
        "about 40 s of a 2 s schedule: {} firings {slots:?}\n{logs:#?}",
        slots.len()
    );
    assert_every_slot_once(&slots);
    assert!(
        !takeovers.is_empty(),
        "the leader was deposed at least once"
    );
    for (n, t) in takeovers.iter().enumerate() {
        assert!(
            *t < Duration::from_secs(5),
            "takeover {n} took {t:?} (standbys poll every second)"
        );
    }
    // The record holds the last firing only.
    let record = "t.tick.schedule.beat";
    let in_record = drain(&ch, record).await;
    assert_eq!(
        in_record.iter().map(|id| slot_of(id)).collect::<Vec<_>>(),
        vec![*slots.last().unwrap()]
    );
    // Two different processes were killed; the last leader is a third one (or the closed
    // one, reconnected).
    assert!(
        last_leader.starts_with("warren scheduler "),
        "{last_leader}"
    );
    // Two standbys for about 40 s: before lease probes, each refusal was a broker error line
    // (about 80 here); now only the races of a takeover or the start give one.
    let refusals = lease_refusals_in_broker_log(&broker);
    assert!(
        refusals <= 2 * (takeovers.len() + 1),
        "{refusals} RESOURCE_LOCKED lines for the lease in the broker's log"
    );
    eprintln!(
        "fired {} slots, each once; takeovers took {takeovers:?}; {refusals} lease refusals \
         in the broker's log",
        slots.len()
    );
}

/// Lines of the broker's log (found through the management API) where a declare of this
/// vhost's scheduler lease was refused as held by another connection.
fn lease_refusals_in_broker_log(broker: &TestBroker) -> usize {
    let nodes = broker.mgmt.get("nodes").unwrap();
    let files: Vec<String> = (nodes.as_array().unwrap().iter())
        .flat_map(|n| n["log_files"].as_array().cloned().unwrap_or_default())
        .filter_map(|f| f.as_str().map(str::to_string))
        .filter(|f| f.ends_with(".log") && !f.contains("upgrade"))
        .collect();
    assert!(!files.is_empty(), "the API names the broker's log: {nodes}");
    let needle = format!("'t.scheduler.lease' in vhost '{}'", broker.vhost);
    files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f)
                .unwrap_or_else(|e| panic!("reading the broker's log {f}: {e}"));
            text.lines()
                .filter(|l| l.contains("resource_locked") && l.contains(&needle))
                .count()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_fires_only_the_latest_firing_missed_while_none_ran() {
    let broker = TestBroker::new();
    let toml = topology("latest");
    let (settings, _conn, ch) = broker.applied(&toml).await;
    let file = TempFile::with(&toml);
    let mut first = scheduler_process(&broker, &file);
    let count = || {
        broker.queue_info("t.tick")["messages"]
            .as_u64()
            .unwrap_or(0)
    };
    eventually(Duration::from_secs(20), "two firings", || {
        (count() >= 2).then_some(())
    })
    .await;
    signal(&first, "-TERM");
    assert!(
        wait_exit(&mut first, Duration::from_secs(15))
            .await
            .success()
    );
    let stopped = Utc::now();
    // Three or four slots fall due with no scheduler running.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let restarted = Utc::now();
    let mut second = scheduler_process(&broker, &file);
    eventually(
        Duration::from_secs(10),
        "the second scheduler to lead",
        || leader(&settings).filter(|l| pid_of(l) == second.id()),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal(&second, "-TERM");
    assert!(
        wait_exit(&mut second, Duration::from_secs(15))
            .await
            .success()
    );
    let mut slots: Vec<DateTime<Utc>> = drain(&ch, "t.tick")
        .await
        .iter()
        .map(|id| slot_of(id))
        .collect();
    slots.sort();
    let last_before = *slots
        .iter()
        .filter(|s| **s <= stopped)
        .max()
        .expect("fired before");
    let caught_up = slots.iter().find(|s| **s > stopped).copied();
    let caught_up = caught_up.unwrap_or_else(|| panic!("the latest missed slot fired: {slots:?}"));
    // The first slot after the stop is the latest one missed: at or after the last slot
    // before the restart, and several slots after the last firing (all of them missed but
    // this one are skipped, which `catch_up = "all"` would have fired).
    assert!(
        caught_up >= restarted - chrono::Duration::seconds(PERIOD),
        "the caught-up slot {caught_up} is the latest before the restart at {restarted}"
    );
    assert!(
        (caught_up - last_before).num_seconds() >= 3 * PERIOD,
        "slots between {last_before} and {caught_up} were skipped: {slots:?}"
    );
    let log = second.log();
    assert!(
        log.contains("catching up") && log.contains("firing=1"),
        "one missed firing fired: {log}"
    );
    // Every slot after the caught-up one fired, each once.
    let after: Vec<_> = slots.iter().copied().filter(|s| *s >= caught_up).collect();
    assert_every_slot_once(&after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_with_the_scheduler_flag_run_each_firing_once() {
    let broker = TestBroker::new();
    let ledger = TempFile::path("ledger");
    let exec = format!(
        "[tasks.tick]\nexec = [\"sh\", \"-c\", \"cat >/dev/null; echo $WARREN_TASK_ID >> {}\"]",
        ledger.as_str()
    );
    let toml = topology("latest").replace("[tasks.tick]", &exec);
    let file = TempFile::with(&toml);
    let settings = broker.settings(&toml);
    // No `topology apply`: the worker and its scheduler declare what they need.
    let mut workers: Vec<Reaped> = (0..2)
        .map(|_| worker_process(&broker, &file, &["--scheduler"]))
        .collect();
    eventually(Duration::from_secs(20), "three firings run", || {
        (ledger.lines().len() >= 3).then_some(())
    })
    .await;
    let lead = leader(&settings).expect("one of the workers leads");
    assert!(
        workers.iter().any(|w| w.id() == pid_of(&lead)),
        "{lead} is one of the two workers"
    );
    let out = broker.cli_with(&["schedules"], &[("WARREN_TOPOLOGY", file.as_str())], None);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert!(
        text.contains("beat      tick  every 2s  latest")
            && text.contains(&format!("leader: {lead}")),
        "{text}"
    );
    for w in workers.iter_mut() {
        signal(w, "-TERM");
        assert!(
            wait_exit(w, Duration::from_secs(20)).await.success(),
            "{}",
            w.log()
        );
    }
    let mut ids = ledger.lines();
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "each firing ran once: {:?}", ledger.lines());
    let slots: Vec<_> = ids.iter().map(|id| slot_of(id)).collect();
    assert_every_slot_once(&slots);
}

#[test]
fn bad_schedules_and_missing_ones_are_usage_errors() {
    let broker = TestBroker::new();
    let bad = TempFile::with(
        "[tasks.tick]\n\n[schedules.beat]\ntask = \"tock\"\ncron = \"0 3 * * *\"\n\
         [schedules.nightly]\ntask = \"tick\"\ncron = \"0 3 * * *\"\ntimezone = \"Mars/Base\"\n",
    );
    for args in [&["scheduler"][..], &["schedules"], &["topology", "apply"]] {
        let out = broker.cli_with(args, &[("WARREN_TOPOLOGY", bad.as_str())], None);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("[schedules.beat] (line 3)") && err.contains("`tock`"),
            "{err}"
        );
        assert!(
            err.contains("[schedules.nightly] (line 6)") && err.contains("`Mars/Base`"),
            "{err}"
        );
    }
    let none = TempFile::with("[tasks.tick]\nexec = [\"true\"]\n");
    for args in [
        &["scheduler"][..],
        &["schedules"],
        &["worker", "--scheduler"],
    ] {
        let out = broker.cli_with(args, &[("WARREN_TOPOLOGY", none.as_str())], None);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("[schedules.NAME]"), "{args:?}: {err}");
    }
}
