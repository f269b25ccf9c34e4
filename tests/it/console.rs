//! `warren console` over HTTP against the real broker: every route, its refusals, and the
//! dead-task actions counted in the queues.

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use lapin::options::ConfirmSelectOptions;

use serde::{Deserialize, Serialize};

use crate::ops::put_dead;
use crate::support::{Reaped, TempFile, TestBroker, stderr, warren_bin};

const OPERATOR: &str = "op-token-0123456789abcdef";
const VIEWER: &str = "view-token-0123456789abcdef";
const TOPOLOGY: &str = "max_delay = \"10s\"\nqueue_type = \"classic\"\n[console]\nmask = [\"n\"]\n[tasks.job]\n[tasks.other]\n\
     [schedules.nightly]\ntask = \"other\"\ncron = \"0 3 * * *\"\npayload = { full = true }\n";

#[derive(Debug, Serialize, Deserialize)]
struct Job {}

impl warren::Task for Job {
    const NAME: &'static str = "job";
}

/// A console on a free loopback port, for `broker`'s vhost.
struct Console {
    child: Reaped,
    base: String,
    agent: ureq::Agent,
    _topology: TempFile,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Console {
    fn start(broker: &TestBroker, base_path: &str) -> Console {
        Console::start_with(broker, base_path, &[])
    }

    /// As [`Console::start`], with `env` set on top (a broker address that is down).
    fn start_with(broker: &TestBroker, base_path: &str, env: &[(&str, &str)]) -> Console {
        let topology = TempFile::with(TOPOLOGY);
        let port = free_port();
        let bind = format!("127.0.0.1:{port}");
        let mut cmd = warren_bin();
        cmd.env("WARREN_AMQP_URL", broker.amqp_url())
            .env("WARREN_NAMESPACE", "t")
            .env("WARREN_CONSOLE_OPERATOR_TOKEN", OPERATOR)
            .env("WARREN_CONSOLE_VIEWER_TOKEN", VIEWER)
            .args(["--topology", topology.as_str(), "console", "--bind", &bind])
            .args(["--refresh", "500ms"])
            .args(["--base-path", base_path])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = Reaped::new(cmd.spawn().expect("spawn the console"));
        let agent = ureq::AgentBuilder::new()
            .redirects(0)
            .timeout(Duration::from_secs(20))
            .build();
        let base = format!("http://{bind}{}", base_path.trim_end_matches('/'));
        let deadline = Instant::now() + Duration::from_secs(20);
        while agent.get(&format!("{base}/api/health")).call().is_err() {
            assert!(Instant::now() < deadline, "the console never answered");
            std::thread::sleep(Duration::from_millis(100));
        }
        Console {
            child,
            base,
            agent,
            _topology: topology,
        }
    }

    fn get(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let mut req = self.agent.get(&format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        answer(req.call())
    }

    fn json(&self, path: &str) -> serde_json::Value {
        self.json_as(path, VIEWER)
    }

    fn json_as(&self, path: &str, token: &str) -> serde_json::Value {
        let (code, body) = self.get(path, Some(token));
        assert_eq!(code, 200, "{path}: {body}");
        serde_json::from_str(&body).expect("JSON")
    }

    /// A POST as a browser with a session would send it (same-origin).
    fn post(&self, path: &str, auth: &Auth, form: &[(&str, &str)]) -> (u16, String) {
        let mut req = self
            .agent
            .post(&format!("{}{path}", self.base))
            .set("Sec-Fetch-Site", "same-origin");
        match auth {
            Auth::Bearer(t) => req = req.set("Authorization", &format!("Bearer {t}")),
            Auth::Cookie(c) => req = req.set("Cookie", c),
        }
        answer(req.send_form(form))
    }

    /// Signs in with `token`; the session cookie.
    fn login(&self, token: &str) -> String {
        let r = self
            .agent
            .post(&format!("{}/login", self.base))
            .set("Sec-Fetch-Site", "same-origin")
            .send_form(&[("token", token)])
            .expect("login answers");
        assert_eq!(r.status(), 303);
        let cookie = r
            .header("set-cookie")
            .expect("a session cookie")
            .to_string();
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
            "{cookie}"
        );
        cookie.split(';').next().unwrap().to_string()
    }

    fn page(&self, path: &str, cookie: &str) -> String {
        let r = self
            .agent
            .get(&format!("{}{path}", self.base))
            .set("Cookie", cookie)
            .call()
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        r.into_string().unwrap()
    }
}

enum Auth<'a> {
    Bearer(&'a str),
    Cookie(&'a str),
}

fn answer(r: Result<ureq::Response, ureq::Error>) -> (u16, String) {
    match r {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("the console did not answer: {e}"),
    }
}

/// The CSRF token a page put into its forms.
fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token");
    let rest = &page[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

#[test]
fn an_open_console_on_a_network_address_is_refused() {
    let out = crate::support::run(
        {
            let mut cmd = warren_bin();
            cmd.args(["console", "--bind", "0.0.0.0:0"]);
            cmd
        },
        None,
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("without auth"), "{}", stderr(&out));
}

/// With neither AMQP nor the management API answering, the console still serves: the
/// overview says the last poll failed and why, a read or an action that needs the broker is
/// 502 with the reason, and nothing is reported done.
#[test]
fn with_the_broker_down_the_console_says_so_and_acts_on_nothing() {
    let broker = TestBroker::new();
    let down = free_port();
    let amqp = format!("amqp://guest:guest@127.0.0.1:{down}/%2f");
    let mgmt = format!("http://127.0.0.1:{down}/");
    let console = Console::start_with(
        &broker,
        "/",
        &[
            ("WARREN_AMQP_URL", &amqp),
            ("WARREN_MANAGEMENT_URL", &mgmt),
            // Each request retries the connection until this runs out.
            ("WARREN_CONNECT_TIMEOUT", "2s"),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let overview = loop {
        let o = console.json("/api/overview");
        if !o["error"].is_null() {
            break o;
        }
        assert!(Instant::now() < deadline, "no failed poll reported: {o}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let why = overview["error"].as_str().unwrap();
    assert!(why.contains(&format!("127.0.0.1:{down}")), "{why}");
    assert!(
        overview["status"].is_null(),
        "no figures were ever read: {overview}"
    );
    let (code, page) = console.get("/", Some(VIEWER));
    assert_eq!(code, 200);
    assert!(page.contains("The last poll failed"), "{page}");

    let (code, body) = console.get("/api/tasks/job/dead", Some(VIEWER));
    assert_eq!(code, 502, "{body}");
    assert!(
        body.contains(&down.to_string()),
        "the reason names the address: {body}"
    );
    let (code, body) = console.post(
        "/tasks/job/dead/some-id/replay",
        &Auth::Bearer(OPERATOR),
        &[],
    );
    assert_eq!(code, 502, "{body}");
    let (code, body) = console.post("/tasks/job/pause", &Auth::Bearer(OPERATOR), &[]);
    assert_eq!(code, 502, "{body}");
    let (code, _) = console.get("/api/health", None);
    assert_eq!(code, 200, "the console itself stays up");
    drop(console);
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_answer_refuse_bad_input_and_act_exactly_on_what_they_say() {
    let broker = TestBroker::new();
    let (_settings, _conn, ch) = broker.applied(TOPOLOGY).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for (i, id) in ["d1", "d2", "d3"].into_iter().enumerate() {
        put_dead(&ch, "job", id, i as u32).await;
    }
    // a quorum queue in the namespace (the topology's are classic), for the cluster view
    let mut quorum = lapin::types::FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString("quorum".into()),
    );
    ch.queue_declare(
        "t.probe".into(),
        lapin::options::QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        quorum,
    )
    .await
    .unwrap();
    let c = Console::start(&broker, "/warren/");
    // reading needs a token once tokens are configured
    assert_eq!(c.get("", None).0, 401);
    assert_eq!(c.get("/", None).0, 308, "`/warren/` leads to `/warren`");
    assert_eq!(c.get("/api/overview", None).0, 401);
    let overview = c.json("/api/overview");
    assert!(overview.get("polls").is_some(), "{overview}");
    // the cluster: this node running, and the one quorum queue of the namespace led by it
    let deadline = Instant::now() + Duration::from_secs(15);
    let cluster = loop {
        let o = c.json("/api/overview");
        if o["cluster"]["quorum"]
            .as_array()
            .is_some_and(|q| !q.is_empty())
        {
            break o["cluster"].clone();
        }
        assert!(Instant::now() < deadline, "no cluster shown: {o}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let node = cluster["nodes"][0]["name"].as_str().unwrap().to_string();
    assert!(node.starts_with("rabbit@"), "{cluster}");
    assert_eq!(cluster["nodes"][0]["running"], true, "{cluster}");
    let quorum = cluster["quorum"].as_array().unwrap();
    assert_eq!(
        quorum.len(),
        1,
        "only the quorum queue, not the classic ones: {cluster}"
    );
    assert_eq!(quorum[0]["queue"], "t.probe");
    assert_eq!(quorum[0]["leader"], node.as_str());
    assert_eq!(quorum[0]["online"], serde_json::json!([node]));
    let (code, page) = c.get("", Some(VIEWER));
    assert!(
        code == 200 && page.contains("id=\"quorum\""),
        "{code}: {page}"
    );
    // unknown type or id: 404; bad paging or filter: 400 with the reason
    let (code, body) = c.get("/api/tasks/nope/dead", Some(VIEWER));
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("no task type `nope`"), "{body}");
    assert_eq!(c.get("/api/tasks/job/dead/nosuch", Some(VIEWER)).0, 404);
    for bad in [
        "page=0",
        "per_page=9999",
        "page=x",
        "min_attempts=many",
        "older_than=soon",
    ] {
        let (code, body) = c.get(&format!("/api/tasks/job/dead?{bad}"), Some(VIEWER));
        assert_eq!(code, 400, "{bad}: {body}");
    }
    // paging and search by payload text
    let all = c.json("/api/tasks/job/dead?per_page=2");
    assert_eq!(
        (all["total"].as_u64(), all["pages"].as_u64()),
        (Some(3), Some(2))
    );
    assert_eq!(all["entries"].as_array().unwrap().len(), 2);
    let (_, found) = c.get("/api/tasks/job/dead?q=%22n%22%3A2", Some(OPERATOR));
    let found: serde_json::Value = serde_json::from_str(&found).unwrap();
    assert_eq!(found["matching"], 1, "{found}");
    assert_eq!(found["entries"][0]["task"]["id"], "d3");
    assert_eq!(found["entries"][0]["task"]["payload"], "{\"n\":2}");
    // `[console] mask = ["n"]`: a viewer sees it masked, and cannot find it by its value
    let masked = c.json("/api/tasks/job/dead/d3");
    assert_eq!(masked["task"]["payload"], "{\"n\":\"•••\"}", "{masked}");
    assert_eq!(c.json("/api/tasks/job/dead?q=%22n%22%3A2")["matching"], 0);
    // browsing removed nothing and kept the order
    assert_eq!(broker.count(&ch, "t.job.dead").await, 3);
    let again = c.json("/api/tasks/job/dead?refresh=1");
    let order: Vec<_> = (again["entries"].as_array().unwrap().iter())
        .map(|e| e["task"]["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(order, ["d1", "d2", "d3"]);

    // refusals: a viewer, another site, a session without the CSRF token
    let (code, body) = c.post("/tasks/job/dead/d1/replay", &Auth::Bearer(VIEWER), &[]);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("viewer"), "{body}");
    let cross = c
        .agent
        .post(&format!("{}/tasks/job/dead/d1/purge", c.base))
        .set("Authorization", &format!("Bearer {OPERATOR}"))
        .set("Sec-Fetch-Site", "cross-site")
        .send_form(&[]);
    assert_eq!(answer(cross).0, 403);
    let cookie = c.login(OPERATOR);
    let (code, body) = c.post("/tasks/job/dead/d1/replay", &Auth::Cookie(&cookie), &[]);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("CSRF"), "{body}");
    assert_eq!(
        broker.count(&ch, "t.job.dead").await,
        3,
        "nothing refused acted"
    );

    // a viewer's page has no action buttons; an operator's has them
    let viewer_cookie = c.login(VIEWER);
    let viewer_page = c.page("/tasks/job/dead/d1", &viewer_cookie);
    assert!(
        viewer_page.contains("d1") && !viewer_page.contains("/replay\""),
        "{viewer_page}"
    );
    let page = c.page("/tasks/job/dead/d1", &cookie);
    assert!(page.contains("/tasks/job/dead/d1/replay\""), "{page}");
    let csrf = csrf_of(&page);

    // an edited payload that is not JSON: 422 and the reason
    let (code, body) = c.post(
        "/tasks/job/dead/d1/replay",
        &Auth::Cookie(&cookie),
        &[("csrf", &csrf), ("payload", "{n: 1")],
    );
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("not JSON"), "{body}");
    // an edited replay: a new task that records what it replays
    let (code, body) = c.post(
        "/tasks/job/dead/d1/replay",
        &Auth::Cookie(&cookie),
        &[("csrf", &csrf), ("payload", "{\"n\": 99}")],
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("the edited task runs as"), "{body}");
    let msgs = crate::support::take(&ch, "t.job", 1, Instant::now(), Duration::from_secs(10)).await;
    let props = &msgs[0].1.properties;
    assert_eq!(msgs[0].1.data, b"{\"n\": 99}");
    let replay_of = props
        .headers()
        .as_ref()
        .unwrap()
        .inner()
        .get("warren-replay-of")
        .cloned();
    assert_eq!(
        replay_of,
        Some(lapin::types::AMQPValue::LongString("d1".into()))
    );
    assert_eq!(broker.count(&ch, "t.job.dead").await, 2);
    // replaying it again is explained
    let (code, body) = c.post(
        "/tasks/job/dead/d1/replay",
        &Auth::Cookie(&cookie),
        &[("csrf", &csrf)],
    );
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("replayed or purged already"), "{body}");

    // purge all that match a filter: counted first, then exactly those
    let (code, body) = c.post(
        "/tasks/job/dead-matching",
        &Auth::Cookie(&cookie),
        &[("csrf", &csrf), ("action", "purge"), ("reason", "failed")],
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("2 dead tasks match"), "{body}");
    assert_eq!(
        broker.count(&ch, "t.job.dead").await,
        2,
        "counting acts on nothing"
    );
    put_dead(&ch, "job", "late", 5).await;
    let token = {
        let at = body.find("name=\"confirm\" value=\"").unwrap() + 22;
        body[at..at + body[at..].find('"').unwrap()].to_string()
    };
    let (code, body) = c.post(
        "/tasks/job/dead-matching",
        &Auth::Cookie(&cookie),
        &[("csrf", &csrf), ("confirm", &token)],
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("2 dead tasks: purge done"), "{body}");
    // the task that died after the count is still there
    let left = c.json("/api/tasks/job/dead?refresh=1");
    assert_eq!(left["total"], 1, "{left}");
    assert_eq!(left["entries"][0]["task"]["id"], "late");
    // a used confirmation is refused
    let (code, _) = c.post(
        "/tasks/job/dead-matching",
        &Auth::Cookie(&cookie),
        &[("csrf", &csrf), ("confirm", &token)],
    );
    assert_eq!(code, 409);

    // a schedule runs now, once, with its payload
    let (code, body) = c.post(
        "/schedules/nope/run",
        &Auth::Cookie(&cookie),
        &[("csrf", &csrf)],
    );
    assert_eq!(code, 404, "{body}");
    let (code, body) = c.post(
        "/schedules/nightly/run",
        &Auth::Cookie(&cookie),
        &[("csrf", &csrf)],
    );
    assert_eq!(code, 200, "{body}");
    let ran =
        crate::support::take(&ch, "t.other", 1, Instant::now(), Duration::from_secs(10)).await;
    assert_eq!(ran[0].1.data, b"{\"full\":true}");
    let listed = c.json("/api/schedules");
    assert_eq!(listed["schedules"][0]["name"], "nightly", "{listed}");
    assert!(c.get("/schedules", Some(VIEWER)).1.contains("0 3 * * *"));

    // pause a type: the shared poll shows it paused; resume
    let (code, body) = c.post(
        "/tasks/job/pause",
        &Auth::Cookie(&cookie),
        &[("csrf", &csrf)],
    );
    assert_eq!(code, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = c.json("/api/overview");
        let job = (o["status"]["tasks"].as_array().into_iter().flatten())
            .find(|r| r["task"] == "job")
            .cloned();
        if job.is_some_and(|j| j["paused"] == true) {
            break;
        }
        assert!(Instant::now() < deadline, "never shown paused: {o}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (code, body) = c.post(
        "/tasks/job/resume",
        &Auth::Cookie(&cookie),
        &[("csrf", &csrf)],
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        c.post(
            "/tasks/job/explode",
            &Auth::Cookie(&cookie),
            &[("csrf", &csrf)]
        )
        .0,
        404
    );
    // cancel by id: no ids is 400; the ids are sent to every worker
    let (code, _) = c.post(
        "/tasks/job/cancel",
        &Auth::Cookie(&cookie),
        &[("csrf", &csrf)],
    );
    assert_eq!(code, 400);
    let (code, body) = c.post(
        "/tasks/job/cancel",
        &Auth::Cookie(&cookie),
        &[("csrf", &csrf), ("ids", "late, gone")],
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("Cancelled 2"), "{body}");

    // every action is in the audit trail, from the broker
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let audit = c.json("/api/audit");
        let actions: Vec<_> = (audit.as_array().unwrap().iter())
            .map(|r| {
                (
                    r["action"].as_str().unwrap().to_string(),
                    r["count"].as_u64(),
                )
            })
            .collect();
        if actions.len() >= 6 {
            assert_eq!(
                actions,
                [
                    ("cancel".to_string(), Some(2)),
                    ("resume".to_string(), Some(0)),
                    ("pause".to_string(), Some(0)),
                    ("run-schedule".to_string(), Some(1)),
                    ("purge-matching".to_string(), Some(2)),
                    ("replay-edited".to_string(), Some(1))
                ]
            );
            break;
        }
        assert!(Instant::now() < deadline, "audit: {audit}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(c.page("/audit", &cookie).contains("purge-matching"));
    // the pages render
    for path in ["", "/tasks/job/dead", "/tasks/job/dead?q=late", "/audit"] {
        let (code, body) = c.get(path, Some(VIEWER));
        assert_eq!(code, 200, "{path}: {body}");
    }
    let (code, _) = c.get("/assets/console.js", None);
    assert_eq!(code, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_viewers_share_one_poll_and_see_a_counter_change_live() {
    let broker = TestBroker::new();
    let (settings, _conn, _ch) = broker.applied(TOPOLOGY).await;
    let c = Console::start(&broker, "");
    // ten viewers hold an event stream open
    let streams: Vec<_> = (0..10)
        .map(|_| {
            let r = c
                .agent
                .get(&format!("{}/events", c.base))
                .set("Authorization", &format!("Bearer {VIEWER}"))
                .call()
                .expect("an event stream");
            BufReader::new(r.into_reader())
        })
        .collect();
    let polls = |c: &Console| c.json("/api/health")["polls"].as_u64().unwrap();
    let before = polls(&c);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let made = polls(&c) - before;
    // one poll per 500 ms refresh, whatever the number of viewers (each polling: 60)
    assert!(made <= 8, "{made} polls in 3 s with 10 viewers");
    // a worker shows on the workers page, from its connection and consumers
    let worker =
        warren::Worker::new(&settings).handle(|_: Job, _: warren::TaskContext| async { Ok(()) });
    let (stop, running) = crate::worker::spawn(worker);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let workers = c.json("/api/workers");
        let mine = (workers.as_array().unwrap().iter())
            .find(|w| w["pid"] == std::process::id())
            .cloned();
        if let Some(w) = mine {
            assert_eq!(w["tasks"][0][0], "job", "{w}");
            assert_eq!(w["version"], env!("CARGO_PKG_VERSION"));
            break;
        }
        assert!(Instant::now() < deadline, "no worker listed: {workers}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(c.get("/workers", Some(VIEWER)).1.contains("job (16)"));
    stop.cancel();
    running.await.unwrap().unwrap();
    // an enqueue shows on a viewer's stream without a reload
    let producer = warren::Producer::new(&settings).unwrap();
    producer
        .enqueue_raw("job", b"{}".to_vec(), Default::default())
        .await
        .unwrap();
    producer.close().await;
    let mut first = streams.into_iter().next().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut line = String::new();
    loop {
        line.clear();
        first.read_line(&mut line).expect("the stream stays open");
        if let Some(json) = line.strip_prefix("data:") {
            let data: serde_json::Value = serde_json::from_str(json).unwrap();
            let job = (data["rows"].as_array().unwrap().iter())
                .find(|r| r["task"] == "job")
                .cloned();
            if job.is_some_and(|j| j["ready"] == "1") {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the ready count never reached 1: {line}"
        );
    }
}

/// Publishes `n` dead `job` tasks of about 200 bytes each, confirmed, in windows.
async fn put_many_dead(ch: &lapin::Channel, n: usize) {
    use lapin::BasicProperties;
    use lapin::options::BasicPublishOptions;
    use lapin::types::{AMQPValue, FieldTable};
    for window in (0..n).collect::<Vec<_>>().chunks(500) {
        let mut confirms = Vec::new();
        for i in window {
            let mut h = FieldTable::default();
            h.insert("warren-attempt".into(), AMQPValue::LongLongInt(3));
            h.insert(
                "warren-reason".into(),
                AMQPValue::LongString("failed".into()),
            );
            let props = BasicProperties::default()
                .with_message_id(format!("m{i:05}").as_str().into())
                .with_delivery_mode(2)
                .with_headers(h);
            let body = format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(180));
            confirms.push(
                ch.basic_publish(
                    "t.dead".into(),
                    "job".into(),
                    BasicPublishOptions::default(),
                    body.as_bytes(),
                    props,
                )
                .await
                .unwrap(),
            );
        }
        for c in confirms {
            assert!(c.await.unwrap().is_ack());
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn browsing_ten_thousand_dead_tasks_harms_none_and_stays_bounded() {
    let broker = TestBroker::new();
    let (_settings, _conn, ch) = broker.applied(TOPOLOGY).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    put_many_dead(&ch, 10_000).await;
    let c = Console::start(&broker, "");
    let started = Instant::now();
    let first = c.json("/api/tasks/job/dead");
    let took = started.elapsed();
    eprintln!("first page of 10 000 dead tasks: {took:?}");
    assert_eq!(first["total"], 10_000, "every dead task is in the snapshot");
    assert_eq!(first["entries"].as_array().unwrap().len(), 50);
    assert_eq!(first["entries"][0]["task"]["id"], "m00000");
    // a generous bound: reading the queue message by message (get and requeue) takes minutes
    assert!(
        took < Duration::from_secs(10),
        "the first page took {took:?}"
    );
    // a later page, a search, and a fresh snapshot: the queue keeps its count and its order
    let last = c.json("/api/tasks/job/dead?page=200");
    assert_eq!(last["entries"][49]["task"]["id"], "m09999");
    let found = c.json_as("/api/tasks/job/dead?q=%22n%22%3A4242%2C", OPERATOR);
    assert_eq!(found["matching"], 1, "{}", found["matching"]);
    for _ in 0..3 {
        let again = c.json("/api/tasks/job/dead?refresh=1&per_page=500");
        let ids: Vec<_> = (again["entries"].as_array().unwrap().iter())
            .map(|e| e["task"]["id"].as_str().unwrap().to_string())
            .collect();
        let want: Vec<_> = (0..500).map(|i| format!("m{i:05}")).collect();
        assert_eq!(ids, want, "a snapshot reordered the queue");
    }
    assert_eq!(broker.count(&ch, "t.job.dead").await, 10_000);
    let rss = rss_kib(c.child.0.id());
    eprintln!(
        "console RSS after browsing 10 000 dead tasks: {} MiB",
        rss / 1024
    );
    assert!(rss < 200 * 1024, "console RSS {rss} KiB");
}
