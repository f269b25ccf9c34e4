//! Settings: the topology file, the environment and CLI flags, layered in one place.
//!
//! Precedence, lowest first: built-in defaults < `topology/warren.toml` < environment
//! (`WARREN_AMQP_URL`, `WARREN_NAMESPACE`, `WARREN_MANAGEMENT_URL`) < CLI flags. The CLI
//! declares each flag together with its environment variable (clap's `env`), so it hands
//! this module one [`Overrides`] that already holds "flag, else environment". No lapin here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::error::{Error, Result};
use crate::retry::{BackoffPolicy, TaskPolicy};
use crate::topology::{self, Ladder, Layout, Names, Plan, QueueType, Routes, TaskQueues};

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
    /// AMQP URL of the broker, including vhost. Contains the password: never log it, use
    /// [`crate::broker::redact`].
    pub amqp_url: String,
    /// Management API base URL; `None` derives `http://{amqp host}:15672`.
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
    /// Worker process settings.
    pub worker: WorkerSettings,
    /// How long producers and CLI commands retry reaching the broker before failing.
    /// Workers retry forever. Defaults to 15 s.
    pub connect_timeout: Duration,
}

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
            worker: WorkerSettings::default(),
            connect_timeout: CONNECT_TIMEOUT_DEFAULT,
        }
    }
}

/// Values from the environment or CLI flags that override the file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--amqp-url` / `WARREN_AMQP_URL`.
    pub amqp_url: Option<String>,
    /// `--namespace` / `WARREN_NAMESPACE`.
    pub namespace: Option<String>,
    /// `--management-url` / `WARREN_MANAGEMENT_URL`.
    pub management_url: Option<String>,
    /// `--connect-timeout` / `WARREN_CONNECT_TIMEOUT`.
    pub connect_timeout: Option<Duration>,
}

impl Overrides {
    /// Reads the `WARREN_*` variables, for library users without a CLI.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Overrides {
            amqp_url: var("WARREN_AMQP_URL"),
            namespace: var("WARREN_NAMESPACE"),
            management_url: var("WARREN_MANAGEMENT_URL"),
            connect_timeout: var("WARREN_CONNECT_TIMEOUT").and_then(|v| parse_duration(&v).ok()),
        }
    }
}

impl Settings {
    /// Loads settings: defaults, then `path` (or `topology/warren.toml` when it exists), then
    /// `overrides`, then validates.
    ///
    /// # Errors
    /// [`Error::Config`] naming the file, line and key when the file is unreadable or wrong,
    /// or the field when a value is out of range.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Settings> {
        let mut settings = match topology_file(path) {
            Some(p) => Settings::from_file(&p)?,
            None => Settings::default(),
        };
        settings.apply(overrides);
        settings.validate()?;
        Ok(settings)
    }

    /// Reads one topology file over the built-in defaults, without validating.
    ///
    /// # Errors
    /// [`Error::TopologyFile`] when the file cannot be read; [`Error::Config`] when it cannot
    /// be parsed.
    pub fn from_file(path: &Path) -> Result<Settings> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::TopologyFile {
            path: path.to_path_buf(),
            source,
        })?;
        Settings::from_toml(&text).map_err(|e| match e {
            Error::Config(msg) => Error::Config(format!("in `{}`: {msg}", path.display())),
            other => other,
        })
    }

    /// Parses topology TOML over the built-in defaults, without validating.
    ///
    /// # Errors
    /// [`Error::Config`] with TOML's line and column for syntax errors and unknown keys.
    pub fn from_toml(text: &str) -> Result<Settings> {
        let file: FileSettings = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        Ok(file.into_settings())
    }

    /// Applies environment/flag overrides (they win over the file).
    pub fn apply(&mut self, overrides: &Overrides) {
        if let Some(url) = &overrides.amqp_url {
            self.amqp_url = url.clone();
        }
        if let Some(ns) = &overrides.namespace {
            self.namespace = ns.clone();
        }
        if let Some(url) = &overrides.management_url {
            self.management_url = Some(url.clone());
        }
        if let Some(t) = overrides.connect_timeout {
            self.connect_timeout = t;
        }
    }

    /// The policy of task type `name`: its own table, else `[defaults]`.
    pub fn policy(&self, name: &str) -> &TaskPolicy {
        self.tasks.get(name).map_or(&self.defaults, |t| &t.policy)
    }

    /// The shape of this namespace: names, ladder height, queue type.
    pub fn layout(&self) -> Layout {
        Layout {
            names: Names::new(&self.namespace),
            ladder: Ladder::for_max_delay(self.max_delay),
            queue_type: self.queue_type,
        }
    }

    /// The declaration plan of every task type in [`Settings::tasks`].
    pub fn plan(&self) -> Plan {
        self.plan_for(self.tasks.keys().map(String::as_str))
    }

    /// The declaration plan of the given task types (validated names), each with its own
    /// policy's delivery limit.
    pub fn plan_for<'a>(&self, tasks: impl IntoIterator<Item = &'a str>) -> Plan {
        let tasks = tasks.into_iter().map(|name| TaskQueues {
            name,
            delivery_limit: self.policy(name).delivery_limit,
        });
        Plan::build(&self.layout(), tasks)
    }

    /// The routes of this namespace.
    pub fn routes(&self) -> Routes {
        let Layout { names, ladder, .. } = self.layout();
        Routes::new(names, ladder)
    }

    /// Rejects settings that cannot work, naming the field and the accepted range.
    ///
    /// # Errors
    /// [`Error::Config`] describing every problem found, one per line.
    pub fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        if let Err(e) = topology::validate_namespace(&self.namespace) {
            problems.push(e);
        }
        if !(self.amqp_url.starts_with("amqp://") || self.amqp_url.starts_with("amqps://")) {
            problems.push(format!(
                "`amqp_url` must start with amqp:// or amqps://, got `{}`",
                crate::broker::redact(&self.amqp_url)
            ));
        }
        let max_delay = self.max_delay.as_secs();
        let ladder_limit = (1u64 << LADDER_LEVELS_MAX) - 1;
        if max_delay < 1 || max_delay > ladder_limit || self.max_delay.subsec_nanos() != 0 {
            problems.push(format!(
                "`max_delay` must be a whole number of seconds from 1s to {} ({ladder_limit}s, the \
                 delay ladder's {LADDER_LEVELS_MAX} levels), got {}",
                humantime::format_duration(Duration::from_secs(ladder_limit)),
                humantime::format_duration(self.max_delay)
            ));
        }
        if self.max_payload_bytes == 0 {
            problems.push("`max_payload_bytes` must be at least 1".to_string());
        }
        check_policy("[defaults]", &self.defaults, &mut problems);
        for (name, task) in &self.tasks {
            if let Err(e) = topology::validate_task_name(name) {
                problems.push(format!("[tasks.{name}]: {e}"));
            }
            check_policy(&format!("[tasks.{name}]"), &task.policy, &mut problems);
            if let Some(exec) = &task.exec
                && exec.first().is_none_or(|p| p.trim().is_empty())
            {
                problems.push(format!(
                    "[tasks.{name}] `exec` must name a program, e.g. exec = [\"python3\", \"handlers/{name}.py\"]"
                ));
            }
        }
        let w = &self.worker;
        if w.concurrency == 0 || w.concurrency > 10_000 {
            problems.push(format!(
                "[worker] `concurrency` must be 1..=10000, got {}",
                w.concurrency
            ));
        }
        if w.prefetch == 0 {
            problems.push("[worker] `prefetch` must be 1..=65535, got 0".to_string());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Config(problems.join("\n  ")))
        }
    }
}

fn check_policy(table: &str, p: &TaskPolicy, problems: &mut Vec<String>) {
    if p.max_attempts == 0 || p.max_attempts > 1000 {
        problems.push(format!(
            "{table} `max_attempts` must be 1..=1000, got {}",
            p.max_attempts
        ));
    }
    if p.delivery_limit == 0 {
        problems.push(format!("{table} `delivery_limit` must be at least 1"));
    }
    if p.time_limit.is_zero() {
        problems.push(format!("{table} `time_limit` must be longer than 0s"));
    } else if p.time_limit >= CONSUMER_TIMEOUT_DEFAULT {
        problems.push(format!(
            "{table} `time_limit` = {} reaches RabbitMQ's default consumer_timeout (30m), which \
             closes the channel under a running task; lower it (or raise consumer_timeout on \
             the broker and keep this below it)",
            humantime::format_duration(p.time_limit)
        ));
    }
    if p.expires.is_some_and(|e| e.is_zero()) {
        problems.push(format!(
            "{table} `expires` must be longer than 0s (omit it for no expiry)"
        ));
    }
    let b = &p.backoff;
    if b.initial.is_zero() {
        problems.push(format!("{table} `backoff.initial` must be longer than 0s"));
    }
    if !(b.multiplier.is_finite() && b.multiplier >= 1.0) {
        problems.push(format!(
            "{table} `backoff.multiplier` must be >= 1.0, got {}",
            b.multiplier
        ));
    }
    if !(0.0..=1.0).contains(&b.jitter) {
        problems.push(format!(
            "{table} `backoff.jitter` must be within 0.0..=1.0, got {}",
            b.jitter
        ));
    }
    if b.max < b.initial {
        problems.push(format!(
            "{table} `backoff.max` must be >= `backoff.initial`"
        ));
    }
}

// ---- the file format -------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    amqp_url: Option<String>,
    management_url: Option<String>,
    namespace: Option<String>,
    queue_type: Option<QueueType>,
    #[serde(default, deserialize_with = "opt_duration")]
    max_delay: Option<Duration>,
    max_payload_bytes: Option<usize>,
    #[serde(default, deserialize_with = "opt_duration")]
    connect_timeout: Option<Duration>,
    #[serde(default)]
    defaults: PolicyFile,
    #[serde(default)]
    worker: WorkerFile,
    #[serde(default)]
    tasks: BTreeMap<String, TaskFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    max_attempts: Option<u32>,
    #[serde(default)]
    backoff: BackoffFile,
    #[serde(default, deserialize_with = "opt_duration")]
    time_limit: Option<Duration>,
    #[serde(default, deserialize_with = "opt_duration")]
    expires: Option<Duration>,
    delivery_limit: Option<u32>,
}

/// A task table: the policy keys plus `exec`. (serde's `flatten` does not combine with
/// `deny_unknown_fields`, so the policy keys are repeated here.)
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskFile {
    max_attempts: Option<u32>,
    #[serde(default)]
    backoff: BackoffFile,
    #[serde(default, deserialize_with = "opt_duration")]
    time_limit: Option<Duration>,
    #[serde(default, deserialize_with = "opt_duration")]
    expires: Option<Duration>,
    delivery_limit: Option<u32>,
    exec: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackoffFile {
    #[serde(default, deserialize_with = "opt_duration")]
    initial: Option<Duration>,
    multiplier: Option<f64>,
    #[serde(default, deserialize_with = "opt_duration")]
    max: Option<Duration>,
    jitter: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkerFile {
    concurrency: Option<usize>,
    prefetch: Option<u16>,
    #[serde(default, deserialize_with = "opt_duration")]
    grace: Option<Duration>,
}

impl BackoffFile {
    fn over(&self, base: &BackoffPolicy) -> BackoffPolicy {
        BackoffPolicy {
            initial: self.initial.unwrap_or(base.initial),
            multiplier: self.multiplier.unwrap_or(base.multiplier),
            max: self.max.unwrap_or(base.max),
            jitter: self.jitter.unwrap_or(base.jitter),
        }
    }
}

impl PolicyFile {
    fn over(&self, base: &TaskPolicy) -> TaskPolicy {
        TaskPolicy {
            max_attempts: self.max_attempts.unwrap_or(base.max_attempts),
            backoff: self.backoff.over(&base.backoff),
            time_limit: self.time_limit.unwrap_or(base.time_limit),
            expires: self.expires.or(base.expires),
            delivery_limit: self.delivery_limit.unwrap_or(base.delivery_limit),
        }
    }
}

impl TaskFile {
    fn into_task(self, defaults: &TaskPolicy) -> TaskSettings {
        let policy = PolicyFile {
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            time_limit: self.time_limit,
            expires: self.expires,
            delivery_limit: self.delivery_limit,
        }
        .over(defaults);
        TaskSettings {
            policy,
            exec: self.exec,
        }
    }
}

impl FileSettings {
    fn into_settings(self) -> Settings {
        let base = Settings::default();
        let defaults = self.defaults.over(&base.defaults);
        let worker = WorkerSettings {
            concurrency: self.worker.concurrency.unwrap_or(base.worker.concurrency),
            prefetch: self.worker.prefetch.unwrap_or(base.worker.prefetch),
            grace: self.worker.grace.unwrap_or(base.worker.grace),
        };
        let tasks = self
            .tasks
            .into_iter()
            .map(|(name, t)| (name, t.into_task(&defaults)))
            .collect();
        Settings {
            amqp_url: self.amqp_url.unwrap_or(base.amqp_url),
            management_url: self.management_url.or(base.management_url),
            namespace: self.namespace.unwrap_or(base.namespace),
            queue_type: self.queue_type.unwrap_or(base.queue_type),
            max_delay: self.max_delay.unwrap_or(base.max_delay),
            max_payload_bytes: self.max_payload_bytes.unwrap_or(base.max_payload_bytes),
            defaults,
            tasks,
            worker,
            connect_timeout: self.connect_timeout.unwrap_or(base.connect_timeout),
        }
    }
}

/// The topology file [`Settings::load`] reads for `path`: `path` itself when given, else
/// `topology/warren.toml` when it exists, else none (built-in defaults).
pub fn topology_file(path: Option<&Path>) -> Option<PathBuf> {
    match path {
        Some(p) => Some(p.to_path_buf()),
        None => {
            let default = Path::new(TOPOLOGY_PATH_DEFAULT);
            default.exists().then(|| default.to_path_buf())
        }
    }
}

/// Parses a duration written for humans: `90s`, `10m`, `1h 30m`, `30d`.
///
/// # Errors
/// A message that quotes the input and shows the accepted form.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!("invalid duration `{text}` ({e}); write a number and a unit, e.g. `90s`, `10m`, `2h`, `30d`")
    })
}

fn opt_duration<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../topology/warren.toml");

    #[test]
    fn the_shipped_example_file_is_valid() {
        let s = Settings::from_toml(EXAMPLE).expect("example parses");
        s.validate().expect("example validates");
        assert!(!s.tasks.is_empty());
    }

    #[test]
    fn built_in_defaults_are_valid_and_quorum() {
        let s = Settings::default();
        s.validate().unwrap();
        assert_eq!(s.queue_type, QueueType::Quorum);
        assert_eq!(s.max_delay, Duration::from_secs(30 * 86400));
    }

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
    fn overrides_win_over_the_file() {
        let mut s =
            Settings::from_toml("namespace = \"file\"\namqp_url = \"amqp://a/%2f\"").unwrap();
        s.apply(&Overrides {
            namespace: Some("flag".into()),
            amqp_url: None,
            management_url: Some("http://m:1".into()),
            connect_timeout: None,
        });
        assert_eq!(s.namespace, "flag");
        assert_eq!(s.amqp_url, "amqp://a/%2f");
        assert_eq!(s.management_url.as_deref(), Some("http://m:1"));
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
    fn max_delay_above_the_ladder_limit_is_refused() {
        let s = Settings::from_toml("max_delay = \"10years\"").unwrap();
        let err = s.validate().unwrap_err().to_string();
        assert!(
            err.contains("max_delay") && err.contains("268435455s"),
            "{err}"
        );
    }

    #[test]
    fn sub_second_max_delay_is_refused() {
        let s = Settings::from_toml("max_delay = \"1500ms\"").unwrap();
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("whole number of seconds")
        );
    }

    #[test]
    fn bad_task_names_are_refused() {
        for bad in ["Send", "a.b", "with space", "ünï", &"x".repeat(65)] {
            let s = Settings::from_toml(&format!("[tasks.\"{bad}\"]\n")).unwrap();
            let err = s.validate().unwrap_err().to_string();
            assert!(err.contains("task name"), "{bad}: {err}");
        }
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

    #[test]
    fn policy_ranges_are_checked_with_the_table_named() {
        let s = Settings::from_toml(
            "[tasks.a]\nmax_attempts = 0\ntime_limit = \"45m\"\n[tasks.a.backoff]\njitter = 1.5\nmultiplier = 0.5\n",
        )
        .unwrap();
        let err = s.validate().unwrap_err().to_string();
        for needle in [
            "[tasks.a] `max_attempts`",
            "consumer_timeout",
            "`backoff.jitter`",
            "`backoff.multiplier`",
        ] {
            assert!(err.contains(needle), "missing {needle}: {err}");
        }
    }

    #[test]
    fn an_amqp_url_with_another_scheme_is_refused_without_its_password() {
        let s = Settings {
            amqp_url: "http://user:secret@host/".into(),
            ..Default::default()
        };
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("amqp://") && !err.contains("secret"), "{err}");
    }
}
