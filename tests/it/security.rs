//! Credentials stay out of output; a least-privilege user can run a namespace.

use std::time::{Duration, Instant};

use warren::ops::management::enc;

use crate::support::{TempFile, TestBroker, stderr, stdout, warren_bin};

const PASSWORD: &str = "pw-Zq81-never-print-me";

/// A user with `PASSWORD`, granted `configure`/`write`/`read` patterns on the test vhost.
struct User {
    name: String,
    broker_mgmt: warren::ops::management::Management,
}

impl User {
    fn new(broker: &TestBroker, configure: &str, write: &str, read: &str) -> User {
        let name = format!("{}-user", broker.vhost);
        broker
            .mgmt
            .put(
                &format!("users/{}", enc(&name)),
                &serde_json::json!({"password": PASSWORD, "tags": ""}),
            )
            .unwrap();
        broker
            .mgmt
            .put(
                &format!("permissions/{}/{}", enc(&broker.vhost), enc(&name)),
                &serde_json::json!({"configure": configure, "write": write, "read": read}),
            )
            .unwrap();
        User {
            name,
            broker_mgmt: broker.mgmt.clone(),
        }
    }

    fn url(&self, broker: &TestBroker) -> String {
        format!(
            "amqp://{}:{PASSWORD}@127.0.0.1:5672/{}",
            self.name,
            enc(&broker.vhost)
        )
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let _ = self
            .broker_mgmt
            .delete(&format!("users/{}", enc(&self.name)));
    }
}

fn run(url: &str, topology: &str, args: &[&str], log: &str) -> std::process::Output {
    warren_bin()
        .env("WARREN_AMQP_URL", url)
        .env("WARREN_NAMESPACE", "t")
        .env("WARREN_TOPOLOGY", topology)
        .env("RUST_LOG", log)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn the_password_never_appears_in_output_logs_or_errors() {
    let broker = TestBroker::new();
    let user = User::new(&broker, ".*", ".*", ".*");
    let url = user.url(&broker);
    let topo =
        TempFile::with("max_delay = \"1h\"\n[tasks.job]\nexec = [\"sh\", \"-c\", \"exit 65\"]\n");
    let mut outputs = Vec::new();
    for log in ["info", "debug,lapin=debug"] {
        outputs.push(run(&url, topo.as_str(), &["topology", "apply"], log));
        outputs.push(run(
            &url,
            topo.as_str(),
            &["enqueue", "job", "--payload", "{}"],
            log,
        ));
        outputs.push(run(&url, topo.as_str(), &["status"], log));
        outputs.push(run(&url, topo.as_str(), &["status", "--json"], log));
        outputs.push(run(&url, topo.as_str(), &["dlq", "list", "job"], log));
        // failures: an unknown vhost, a wrong scheme, an unreachable port
        outputs.push(run(
            &url.replace(&enc(&broker.vhost), "missing-vhost"),
            topo.as_str(),
            &["topology", "apply"],
            log,
        ));
        outputs.push(run(
            &url.replace("amqp://", "http://"),
            topo.as_str(),
            &["topology", "apply"],
            log,
        ));
        outputs.push(run(
            &url.replace(":5672/", ":1/"),
            topo.as_str(),
            &["--connect-timeout", "1s", "topology", "apply"],
            log,
        ));
    }
    // and a worker that runs (and dead-letters) the task, then stops on SIGTERM
    let mut worker = warren_bin()
        .env("WARREN_AMQP_URL", &url)
        .env("WARREN_NAMESPACE", "t")
        .env("WARREN_TOPOLOGY", topo.as_str())
        .env("RUST_LOG", "debug")
        .arg("worker")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while worker.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "worker did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
    outputs.push(worker.wait_with_output().unwrap());
    let mut checked = 0;
    for o in &outputs {
        let text = format!("{}{}", stdout(o), stderr(o));
        assert!(!text.contains(PASSWORD), "password leaked in: {text}");
        checked += text.len();
    }
    assert!(checked > 1000, "the runs produced output to check");
    assert!(
        outputs.iter().any(|o| stderr(o).contains(":***@")),
        "errors show the redacted URL"
    );
}

#[test]
fn a_user_limited_to_the_namespace_can_apply_enqueue_and_work() {
    // configure/write/read only on `t.*` objects: the least a namespace `t` needs.
    let broker = TestBroker::new();
    let user = User::new(&broker, "^t\\.", "^t\\.", "^t\\.");
    let url = user.url(&broker);
    let log = TempFile::path("ran");
    let topo = TempFile::with(&format!(
        "max_delay = \"1h\"\n[tasks.job]\nexec = [\"sh\", \"-c\", \"echo $WARREN_TASK_ID >> {}\"]\n",
        log.as_str()
    ));
    let apply = run(&url, topo.as_str(), &["topology", "apply"], "warn");
    assert!(apply.status.success(), "{}", stderr(&apply));
    let enq = run(
        &url,
        topo.as_str(),
        &["enqueue", "job", "--count", "20", "--delay", "1s"],
        "warn",
    );
    assert!(enq.status.success(), "{}", stderr(&enq));
    let mut worker = warren_bin()
        .env("WARREN_AMQP_URL", &url)
        .env("WARREN_NAMESPACE", "t")
        .env("WARREN_TOPOLOGY", topo.as_str())
        .arg("worker")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while log.lines().len() < 20 {
        assert!(
            Instant::now() < deadline,
            "only {} of 20 ran",
            log.lines().len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status();
    assert!(worker.wait().unwrap().success());
    // and outside the namespace it may not declare anything
    let other = run(
        &url,
        topo.as_str(),
        &["--namespace", "other", "topology", "apply"],
        "warn",
    );
    assert_eq!(other.status.code(), Some(1));
    assert!(
        stderr(&other).contains("ACCESS_REFUSED"),
        "{}",
        stderr(&other)
    );
}
