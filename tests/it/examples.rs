//! The programs in `examples/` run as their doc comments say, each in a vhost of its own:
//! `cargo test` builds them, and these tests run the built binaries, so an example that no
//! longer works fails the test command instead of the first reader who tries it.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use crate::support::TestBroker;

/// The example binary `name` that `cargo test` built beside this test binary
/// (`target/<profile>/examples/<name>`).
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/it-<hash> -> target/<profile>/examples/<name>
    let profile = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary sits in target/<profile>/deps");
    let path = profile.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: `cargo test` builds the examples; was it run with --test only?",
        path.display()
    );
    path
}

/// Runs `cmd` to its end, killing it (and failing) after `limit`.
fn run_within(mut cmd: Command, limit: Duration) -> Output {
    use std::io::Read;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the example starts");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped")));
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("the example's status") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the example ran past {limit:?}; its output:\n{}",
                String::from_utf8_lossy(&stdout.join().unwrap_or_default())
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

#[test]
fn the_thumbnails_example_makes_every_thumbnail_and_leaves_nothing_behind() {
    let broker = TestBroker::new();
    let mut cmd = Command::new(example("thumbnails"));
    cmd.env("WARREN_AMQP_URL", broker.amqp_url());
    let out = run_within(cmd, Duration::from_secs(120));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        out.status
    );
    // Ten tasks ran once each (the flaky one on its second attempt), then the summary.
    let made: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("thumbnail "))
        .collect();
    assert_eq!(made.len(), 10, "{stdout}");
    assert!(
        made.iter()
            .any(|l| l.starts_with("thumbnail flaky.png") && l.ends_with("attempt 2)")),
        "{stdout}"
    );
    assert!(
        made.iter().any(|l| l.starts_with("thumbnail later.png")),
        "{stdout}"
    );
    assert!(stdout.contains("all 10 thumbnails made"), "{stdout}");
    // Its namespace is gone from the vhost.
    let queues = broker
        .mgmt
        .get(&format!(
            "queues/{}",
            warren::ops::management::enc(&broker.vhost)
        ))
        .expect("the vhost's queues");
    let left: Vec<&str> = queues
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|q| q["name"].as_str())
        .filter(|n| n.starts_with("example."))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn the_wire_cost_example_prints_a_median_row_per_variant() {
    let broker = TestBroker::new();
    let mut cmd = Command::new(example("wire_cost"));
    cmd.args(["300", "1", "classic", "bare,full"])
        .env("WARREN_AMQP_URL", broker.amqp_url());
    let out = run_within(cmd, Duration::from_secs(120));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let medians = stdout
        .split("medians over 1 rounds:")
        .nth(1)
        .unwrap_or_else(|| panic!("no medians in:\n{stdout}"));
    for variant in ["bare", "full"] {
        let row = medians
            .lines()
            .find(|l| l.split_whitespace().next() == Some(variant))
            .unwrap_or_else(|| panic!("no median row for {variant}:\n{stdout}"));
        let rates: Vec<f64> = row
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().expect("a number"))
            .collect();
        assert_eq!(rates.len(), 4, "{row}");
        assert!(
            rates[0] > 0.0 && rates[2] > 0.0,
            "publish and drain rates: {row}"
        );
    }
}
