//! The topology file's format: what `topology/warren.toml` may say, layered over the
//! built-in defaults. Unknown keys are errors, with TOML's line and column.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::schedules::ScheduleFile;
use super::{Settings, TaskSettings, WorkerSettings};
use crate::duration::parse_duration;
use crate::error::{Error, Result};
use crate::limits::RateLimit;
use crate::retry::{BackoffPolicy, TaskPolicy};
use crate::topology::QueueType;

/// Parses topology TOML over the built-in defaults, without validating.
pub(super) fn parse(text: &str) -> Result<Settings> {
    let file: FileSettings = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
    file.into_settings(text)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    amqp_url: Option<OneOrMany>,
    management_url: Option<OneOrMany>,
    namespace: Option<String>,
    queue_type: Option<QueueType>,
    #[serde(default, deserialize_with = "opt_duration")]
    max_delay: Option<Duration>,
    max_payload_bytes: Option<usize>,
    #[serde(default, deserialize_with = "opt_duration")]
    connect_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "opt_duration")]
    heartbeat: Option<Duration>,
    #[serde(default, deserialize_with = "opt_duration")]
    cancel_retention: Option<Duration>,
    #[serde(default)]
    defaults: PolicyFile,
    #[serde(default)]
    worker: WorkerFile,
    #[serde(default)]
    tasks: BTreeMap<String, TaskFile>,
    #[serde(default)]
    schedules: BTreeMap<String, toml::Spanned<ScheduleFile>>,
    #[serde(default)]
    console: ConsoleFile,
}

/// `[console]`: what `warren console` hides from viewers.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsoleFile {
    #[serde(default)]
    mask: Vec<String>,
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
    max_interruptions: Option<u32>,
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
    max_interruptions: Option<u32>,
    exec: Option<Vec<String>>,
    #[serde(default)]
    exec_broker_url: bool,
    queue_type: Option<QueueType>,
    priorities: Option<u8>,
    #[serde(default)]
    broadcast: bool,
    #[serde(default, deserialize_with = "opt_concurrency_limit")]
    concurrency_limit: Option<u32>,
    #[serde(default, deserialize_with = "opt_rate_limit")]
    rate_limit: Option<RateLimit>,
}

/// A URL, or a list of them (the nodes of a cluster); kept as one comma-separated string,
/// the form the environment and the flags take too.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn joined(self) -> String {
        match self {
            OneOrMany::One(url) => url,
            OneOrMany::Many(urls) => urls.join(","),
        }
    }
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
            max_interruptions: self.max_interruptions.unwrap_or(base.max_interruptions),
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
            max_interruptions: self.max_interruptions,
        }
        .over(defaults);
        TaskSettings {
            policy,
            exec: self.exec,
            exec_broker_url: self.exec_broker_url,
            queue_type: self.queue_type,
            priorities: self.priorities,
            broadcast: self.broadcast,
            concurrency_limit: self.concurrency_limit,
            rate_limit: self.rate_limit,
        }
    }
}

impl FileSettings {
    /// The settings this file describes over the defaults; `text` is the file itself, for the
    /// line numbers of schedule problems.
    fn into_settings(self, text: &str) -> Result<Settings> {
        let base = Settings::default();
        let defaults = self.defaults.over(&base.defaults);
        let worker = WorkerSettings {
            concurrency: self.worker.concurrency.unwrap_or(base.worker.concurrency),
            prefetch: self.worker.prefetch.unwrap_or(base.worker.prefetch),
            grace: self.worker.grace.unwrap_or(base.worker.grace),
        };
        let tasks: BTreeMap<String, TaskSettings> = self
            .tasks
            .into_iter()
            .map(|(name, t)| (name, t.into_task(&defaults)))
            .collect();
        let max_payload_bytes = self.max_payload_bytes.unwrap_or(base.max_payload_bytes);
        let task_names: Vec<&str> = tasks.keys().map(String::as_str).collect();
        let schedules =
            super::schedules::convert(text, self.schedules, &task_names, max_payload_bytes)
                .map_err(|problems| Error::Config(problems.join("\n  ")))?;
        Ok(Settings {
            amqp_url: self.amqp_url.map_or(base.amqp_url, OneOrMany::joined),
            management_url: self
                .management_url
                .map(OneOrMany::joined)
                .or(base.management_url),
            namespace: self.namespace.unwrap_or(base.namespace),
            queue_type: self.queue_type.unwrap_or(base.queue_type),
            max_delay: self.max_delay.unwrap_or(base.max_delay),
            max_payload_bytes,
            defaults,
            tasks,
            schedules,
            worker,
            connect_timeout: self.connect_timeout.unwrap_or(base.connect_timeout),
            heartbeat: self.heartbeat.unwrap_or(base.heartbeat),
            cancel_retention: self.cancel_retention.unwrap_or(base.cancel_retention),
            console_mask: self.console.mask,
        })
    }
}

fn opt_duration<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// `concurrency_limit`: at least 1, said with TOML's line when not.
fn opt_concurrency_limit<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<u32>, D::Error> {
    let n = i64::deserialize(d)?;
    match u32::try_from(n) {
        Ok(n) if n >= 1 => Ok(Some(n)),
        _ => Err(serde::de::Error::custom(format!(
            "concurrency_limit = {n}: give 1 or more runs at once across all workers (to stop \
             a task type for a while, use `warren pause`)"
        ))),
    }
}

/// `rate_limit = "10/s"`, said with TOML's line when it does not parse.
fn opt_rate_limit<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<RateLimit>, D::Error> {
    let text = String::deserialize(d)?;
    RateLimit::parse(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}
