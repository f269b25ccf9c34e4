//! Settings: the topology file, the environment and CLI flags, layered in one place.
//!
//! Precedence, lowest first: built-in defaults < `topology/warren.toml` < environment
//! (`WARREN_AMQP_URL`, `WARREN_NAMESPACE`, `WARREN_MANAGEMENT_URL`) < CLI flags. The CLI
//! declares each flag together with its environment variable (clap's `env`), so it hands
//! this module one [`Overrides`] that already holds "flag, else environment". No lapin here.
//!
//! This file holds the settings themselves and their defaults; `layers.rs` reads and layers
//! them, `file.rs` is the topology file's format (`schedules.rs` its schedule tables),
//! `validate.rs` the range checks, and `plan.rs` the plan and routes they imply.

use std::collections::BTreeMap;
use std::time::Duration;

mod file;
mod layers;
mod plan;
mod schedules;
mod validate;

pub use layers::{Overrides, topology_file};

use crate::cadence::{Cadence, CatchUp};
use crate::retry::TaskPolicy;
use crate::topology::QueueType;

/// Broker URL used when nothing else is configured: the local RabbitMQ's default vhost.
pub const AMQP_URL_DEFAULT: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Namespace used when nothing else is configured; prefixes every exchange and queue name.
pub const NAMESPACE_DEFAULT: &str = "warren";
/// Topology file read when neither `--topology` nor `WARREN_TOPOLOGY` names one.
pub const TOPOLOGY_PATH_DEFAULT: &str = "topology/warren.toml";
/// Longest delay when the file does not say: 30 days covers "retry tomorrow" and monthly jobs
/// with a ladder of 22 levels.
pub const MAX_DELAY_DEFAULT: Duration = Duration::from_secs(30 * 24 * 3600);
/// The ladder's hard limit: 28 levels (0..=27) hold up to 2^28 - 1 s, about 8.5 years.
pub const LADDER_LEVELS_MAX: u32 = 28;
/// Largest task body accepted by the producer: 1 MiB. Tasks should carry ids, not records,
/// and RabbitMQ slows down on large messages long before its own 128 MiB limit.
pub const MAX_PAYLOAD_BYTES_DEFAULT: usize = 1024 * 1024;
/// The broker's default `consumer_timeout` (30 min); a time limit at or above it makes the
/// broker close the channel under a running task.
pub const CONSUMER_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30 * 60);

/// One task type as declared in the topology file.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSettings {
    /// Policy after applying this type's overrides to `[defaults]`.
    pub policy: TaskPolicy,
    /// Program run by `warren worker` for this type, e.g. `["python3", "handlers/resize.py"]`.
    pub exec: Option<Vec<String>>,
    /// The `exec` program gets the broker's URL (with its password) as `WARREN_AMQP_URL`
    /// (`exec_broker_url = true`). Off by default: a handler that does not talk to the broker
    /// should not hold its credentials (a crash report or a logged environment would leak them).
    pub exec_broker_url: bool,
    /// This type's queue type when it differs from the namespace's (priorities need classic
    /// queues on RabbitMQ 3.x).
    pub queue_type: Option<QueueType>,
    /// Priority levels of the work queue (1–10), making it a priority queue.
    pub priorities: Option<u8>,
    /// Every worker serving this type runs each task once, from a queue of its own, instead
    /// of one worker of the pool (`broadcast = true`; see [`crate::topology::OwnQueue`]).
    pub broadcast: bool,
    /// At most this many runs at once across every worker (see [`crate::control`]).
    pub concurrency_limit: Option<u32>,
    /// At most this many starts per period across every worker, spaced.
    pub rate_limit: Option<crate::limits::RateLimit>,
}

/// One periodic task, as declared in `[schedules.NAME]`: fired by the one leading
/// `warren scheduler` (see [`crate::schedule`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleSettings {
    /// The task type each firing enqueues (declared under `[tasks]`).
    pub task: String,
    /// When it fires.
    pub cadence: Cadence,
    /// The body of every firing; `{}` when the table gives none.
    pub payload: serde_json::Value,
    /// What a leader does with firings missed while no scheduler led.
    pub catch_up: CatchUp,
}

/// Worker process settings.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerSettings {
    /// Handlers running at once per process. Defaults to 8.
    pub concurrency: usize,
    /// Unacked deliveries the broker sends ahead, per consumer. Defaults to 2 × concurrency:
    /// enough that a handler finishing finds the next task already local, small enough that
    /// an idle replica still gets work.
    pub prefetch: u16,
    /// How long running tasks may take to finish on SIGTERM. Defaults to 30 s.
    pub grace: Duration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            concurrency: 8,
            prefetch: 16,
            grace: Duration::from_secs(30),
        }
    }
}

/// Everything Warren needs to know, after layering.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// AMQP URL of the broker, including vhost, or the URLs of several nodes of one cluster,
    /// comma-separated (clients connect to any of them and move on when one goes away).
    /// Contains the password: never log it, use [`crate::broker::redact`].
    pub amqp_url: String,
    /// Management API base URL, or several, comma-separated; `None` derives
    /// `http://{amqp host}:15672` for each AMQP URL.
    pub management_url: Option<String>,
    /// Prefix of every exchange and queue name.
    pub namespace: String,
    /// Type of every queue Warren declares.
    pub queue_type: QueueType,
    /// Longest delay (and retry delay) accepted; decides the ladder's height.
    pub max_delay: Duration,
    /// Largest task body the producer accepts, in bytes.
    pub max_payload_bytes: usize,
    /// Policy for task types that do not override it.
    pub defaults: TaskPolicy,
    /// Declared task types by name.
    pub tasks: BTreeMap<String, TaskSettings>,
    /// Periodic tasks by schedule name.
    pub schedules: BTreeMap<String, ScheduleSettings>,
    /// Worker process settings.
    pub worker: WorkerSettings,
    /// How long producers and CLI commands retry reaching the broker before failing.
    /// Workers retry forever. Defaults to 15 s.
    pub connect_timeout: Duration,
    /// AMQP heartbeat timeout asked of the broker for every connection (a URL's own
    /// `?heartbeat=` wins). It bounds how long a frozen worker or node holds tasks and how
    /// long a client takes to notice a silent broker: two to three timeouts. Defaults to
    /// 5 s ([`crate::broker::connect::HEARTBEAT_DEFAULT`]).
    pub heartbeat: Duration,
    /// How long a cancel holds (for tasks not started yet, delayed ones included): the
    /// control stream's `x-max-age`. Defaults to 7 days.
    pub cancel_retention: Duration,
    /// Payload fields `warren console` masks for viewers (`[console] mask = ["password"]`),
    /// matched by name at any depth of a JSON payload, case-insensitively.
    pub console_mask: Vec<String>,
}

/// Cancel retention when nothing else is configured: a week.
pub const CANCEL_RETENTION_DEFAULT: Duration = Duration::from_secs(7 * 24 * 3600);

/// Connect retry period when nothing else is configured.
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(15);

impl Default for Settings {
    fn default() -> Self {
        Settings {
            amqp_url: AMQP_URL_DEFAULT.to_string(),
            management_url: None,
            namespace: NAMESPACE_DEFAULT.to_string(),
            queue_type: QueueType::default(),
            max_delay: MAX_DELAY_DEFAULT,
            max_payload_bytes: MAX_PAYLOAD_BYTES_DEFAULT,
            defaults: TaskPolicy::default(),
            tasks: BTreeMap::new(),
            schedules: BTreeMap::new(),
            worker: WorkerSettings::default(),
            connect_timeout: CONNECT_TIMEOUT_DEFAULT,
            heartbeat: crate::broker::connect::HEARTBEAT_DEFAULT,
            cancel_retention: CANCEL_RETENTION_DEFAULT,
            console_mask: Vec::new(),
        }
    }
}

impl Settings {
    /// The URL (or list) to connect with: `amqp_url` with the `heartbeat` setting added to
    /// each URL that does not name one. Contains the password, as `amqp_url` does.
    pub fn broker_url(&self) -> String {
        crate::broker::with_heartbeat(&self.amqp_url, self.heartbeat)
    }

    /// The policy of task type `name`: its own table, else `[defaults]`.
    pub fn policy(&self, name: &str) -> &TaskPolicy {
        self.tasks.get(name).map_or(&self.defaults, |t| &t.policy)
    }

    /// True when task type `name` is declared `broadcast = true`.
    pub fn is_broadcast(&self, name: &str) -> bool {
        self.tasks.get(name).is_some_and(|t| t.broadcast)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_table_overrides_only_the_keys_it_sets() {
        let s = Settings::from_toml(
            r#"
            [defaults]
            max_attempts = 7
            time_limit = "2m"
            [defaults.backoff]
            initial = "3s"
            multiplier = 3.0
            [tasks.resize]
            max_attempts = 2
            [tasks.resize.backoff]
            max = "10m"
            "#,
        )
        .unwrap();
        let p = s.policy("resize");
        assert_eq!(p.max_attempts, 2);
        assert_eq!(p.time_limit, Duration::from_secs(120));
        assert_eq!(p.backoff.initial, Duration::from_secs(3));
        assert_eq!(p.backoff.multiplier, 3.0);
        assert_eq!(p.backoff.max, Duration::from_secs(600));
        assert_eq!(s.policy("unknown").max_attempts, 7);
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line() {
        let err =
            Settings::from_toml("namespace = \"a\"\n\n[defaults]\nmax_atempts = 3\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("max_atempts"), "{msg}");
        assert!(msg.contains("line 4"), "{msg}");
    }

    #[test]
    fn a_bad_duration_is_quoted_with_an_example() {
        let err = Settings::from_toml("max_delay = \"3 fortnights\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("3 fortnights") && err.contains("90s"), "{err}");
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn a_queue_type_other_than_quorum_or_classic_is_refused() {
        let err = Settings::from_toml("queue_type = \"stream\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("stream") && err.contains("quorum") && err.contains("classic"),
            "{err}"
        );
    }

    #[test]
    fn a_duplicate_task_table_is_refused_by_the_parser() {
        let err = Settings::from_toml("[tasks.a]\n[tasks.a]\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("duplicate") || err.contains("redefin"),
            "{err}"
        );
    }
}
