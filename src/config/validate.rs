//! Checking settings: every value that cannot work is named with its field and the accepted
//! range, all problems at once. Pure.

use std::time::Duration;

use super::{CONSUMER_TIMEOUT_DEFAULT, LADDER_LEVELS_MAX, Settings};
use crate::error::{Error, Result};
use crate::retry::TaskPolicy;
use crate::topology;

impl Settings {
    /// Rejects settings that cannot work, naming the field and the accepted range.
    ///
    /// # Errors
    /// [`Error::Config`] describing every problem found, one per line.
    pub fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        if let Err(e) = topology::validate_namespace(&self.namespace) {
            problems.push(e);
        }
        check_amqp_urls(&self.amqp_url, &mut problems);
        let max_delay = self.max_delay.as_secs();
        let ladder_limit = (1u64 << LADDER_LEVELS_MAX) - 1;
        if max_delay < 1 || max_delay > ladder_limit || self.max_delay.subsec_nanos() != 0 {
            problems.push(format!(
                "`max_delay` must be a whole number of seconds from 1s to {} ({ladder_limit}s, the \
                 delay ladder's {LADDER_LEVELS_MAX} levels), got {}",
                crate::duration::duration_text(Duration::from_secs(ladder_limit)),
                crate::duration::duration_text(self.max_delay)
            ));
        }
        if self.cancel_retention < Duration::from_secs(60)
            || self.cancel_retention.subsec_nanos() != 0
        {
            problems.push(format!(
                "`cancel_retention` must be a whole number of seconds, at least 1m, got {}",
                crate::duration::duration_text(self.cancel_retention)
            ));
        }
        // 0 would turn heartbeats off: a frozen peer would then hold its tasks until TCP
        // gives up, which can take many minutes. Past 5 m the bound is no bound.
        if self.heartbeat < Duration::from_secs(1)
            || self.heartbeat > Duration::from_secs(300)
            || self.heartbeat.subsec_nanos() != 0
        {
            problems.push(format!(
                "`heartbeat` must be a whole number of seconds from 1s to 5m (it bounds how long \
                 a frozen worker holds its tasks; 5s is the default), got {}",
                crate::duration::duration_text(self.heartbeat)
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
            if task.exec_broker_url && task.exec.is_none() {
                problems.push(format!(
                    "[tasks.{name}] `exec_broker_url` hands the broker URL to an `exec` program; \
                     this type has no `exec`"
                ));
            }
            if let Some(exec) = &task.exec
                && exec.first().is_none_or(|p| p.trim().is_empty())
            {
                problems.push(format!(
                    "[tasks.{name}] `exec` must name a program, e.g. exec = [\"python3\", \"handlers/{name}.py\"]"
                ));
            }
            // A broadcast type's tasks wait in each worker's own queue, which is always
            // classic (see `topology::OwnQueue`): priorities work whatever the type.
            let queue_type = match task.broadcast {
                true => crate::topology::QueueType::Classic,
                false => task.queue_type.unwrap_or(self.queue_type),
            };
            check_priorities(name, task.priorities, queue_type, &mut problems);
            let limited = task.concurrency_limit.is_some() || task.rate_limit.is_some();
            if limited && task.policy.time_limit > LIMITED_TIME_LIMIT_MAX {
                problems.push(format!(
                    "[tasks.{name}] with a limit, `time_limit` must be at most {} (got {}): a \
                     run holds its limit token as an unacked delivery, which RabbitMQ's \
                     consumer timeout (30m) would take back mid-run",
                    crate::duration::duration_text(LIMITED_TIME_LIMIT_MAX),
                    crate::duration::duration_text(task.policy.time_limit)
                ));
            }
            if task.broadcast && limited {
                problems.push(format!(
                    "[tasks.{name}] a broadcast type cannot have `concurrency_limit` or \
                     `rate_limit`: every worker runs each broadcast once, and a limit shared by \
                     all workers would hold some copies back for good"
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

/// Longest `time_limit` of a limited type: its run token is held for the run plus up to a
/// minute of waiting for work, under RabbitMQ's 30 minute consumer timeout with room to spare.
const LIMITED_TIME_LIMIT_MAX: Duration = Duration::from_secs(25 * 60);

/// Priorities: 1 to 10 levels (RabbitMQ allows 255 and recommends few: each level is a queue
/// of its own inside the broker), on a classic queue only, since RabbitMQ 3.x has no quorum
/// priority queues.
fn check_priorities(
    name: &str,
    priorities: Option<u8>,
    queue_type: crate::topology::QueueType,
    problems: &mut Vec<String>,
) {
    let Some(levels) = priorities else { return };
    if !(1..=10).contains(&levels) {
        problems.push(format!(
            "[tasks.{name}] `priorities` must be 1..=10 (RabbitMQ recommends few levels), got {levels}"
        ));
    }
    if queue_type == crate::topology::QueueType::Quorum {
        problems.push(format!(
            "[tasks.{name}] `priorities` needs a classic queue: RabbitMQ 3.x has priority queues \
             of type classic only; add queue_type = \"classic\" to [tasks.{name}] (RabbitMQ \
             4.0 quorum queues know two fixed levels, normal and high, without x-max-priority)"
        ));
    }
}

/// Each URL of the list is amqp:// or amqps://, and all name the same vhost and user: the
/// namespace lives in one vhost of one cluster, and a client must find it on any node.
fn check_amqp_urls(list: &str, problems: &mut Vec<String>) {
    let urls = crate::broker::urls(list);
    if urls.is_empty() {
        problems.push("`amqp_url` is empty".to_string());
    }
    let mut first: Option<crate::broker::UrlParts> = None;
    for url in urls {
        if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
            problems.push(format!(
                "`amqp_url` must start with amqp:// or amqps://, got `{}`",
                crate::broker::redact(url)
            ));
            continue;
        }
        let parts = match crate::broker::url_parts(url) {
            Ok(parts) => parts,
            Err(e) => {
                problems.push(format!(
                    "`amqp_url`: {e} (a comma inside a URL, e.g. in a password, is written %2C)"
                ));
                continue;
            }
        };
        match &first {
            None => first = Some(parts),
            Some(f) if f.vhost != parts.vhost || f.username != parts.username => {
                problems.push(format!(
                    "every URL of `amqp_url` must name the same vhost and user (the nodes of \
                     one cluster): `{}` differs from the first",
                    crate::broker::redact(url)
                ));
            }
            Some(_) => {}
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
            crate::duration::duration_text(p.time_limit)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::QueueType;

    const EXAMPLE: &str = include_str!("../../topology/warren.toml");

    #[test]
    fn the_shipped_example_file_is_valid() {
        let s = Settings::from_toml(EXAMPLE).expect("example parses");
        s.validate().expect("example validates");
        assert!(!s.tasks.is_empty());
        assert_eq!(s.schedules["nightly_report"].task, "nightly_report");
    }

    #[test]
    fn built_in_defaults_are_valid_and_quorum() {
        let s = Settings::default();
        s.validate().unwrap();
        assert_eq!(s.queue_type, QueueType::Quorum);
        assert_eq!(s.max_delay, Duration::from_secs(30 * 86400));
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

    #[test]
    fn the_nodes_of_one_cluster_may_be_listed_in_the_file_or_comma_separated() {
        let file = Settings::from_toml(
            "amqp_url = [\"amqp://u:p@n1:5672/v\", \"amqp://u:p@n2:5672/v\"]\n\
             management_url = [\"http://n1:15672\", \"http://n2:15672\"]",
        )
        .unwrap();
        assert_eq!(file.amqp_url, "amqp://u:p@n1:5672/v,amqp://u:p@n2:5672/v");
        assert_eq!(
            file.management_url.as_deref(),
            Some("http://n1:15672,http://n2:15672")
        );
        file.validate().unwrap();
        assert_eq!(
            crate::broker::redact(&file.amqp_url),
            "amqp://u:***@n1:5672/v,amqp://u:***@n2:5672/v"
        );
        assert_eq!(crate::broker::url_parts(&file.amqp_url).unwrap().vhost, "v");
    }

    #[test]
    fn listed_nodes_must_share_vhost_and_user_and_each_be_amqp() {
        for (list, needle) in [
            ("amqp://u@a/v1,amqp://u@b/v2", "same vhost and user"),
            ("amqp://u@a/v,amqp://w@b/v", "same vhost and user"),
            (
                "amqp://u@a/v,http://u:secret@b/v",
                "must start with amqp://",
            ),
            (" , ", "`amqp_url` is empty"),
        ] {
            let s = Settings {
                amqp_url: list.into(),
                ..Default::default()
            };
            let err = s.validate().unwrap_err().to_string();
            assert!(
                err.contains(needle) && !err.contains("secret"),
                "{list}: {err}"
            );
        }
    }

    #[test]
    fn a_broadcast_type_parses_and_takes_priorities_in_a_quorum_namespace() {
        let s =
            Settings::from_toml("[tasks.reload]\nbroadcast = true\npriorities = 3\n[tasks.job]\n")
                .unwrap();
        s.validate().unwrap();
        assert!(s.is_broadcast("reload") && !s.is_broadcast("job") && !s.is_broadcast("other"));
        let own = s.own_queue("reload", "h:1");
        assert_eq!(own.queue.name, "warren.reload@h:1");
        assert_eq!(
            own.queue.arg("x-max-priority"),
            Some(&crate::topology::ArgValue::Int(3))
        );
        let err = Settings::from_toml("[tasks.reload]\nbroadcast = \"yes\"\n").unwrap_err();
        assert!(err.to_string().contains("broadcast"), "{err}");
    }

    #[test]
    fn priorities_need_a_classic_queue_and_at_most_ten_levels() {
        let ok = Settings::from_toml(
            "queue_type = \"quorum\"\n[tasks.report]\nqueue_type = \"classic\"\npriorities = 5\n",
        )
        .unwrap();
        ok.validate().unwrap();
        let work = ok
            .plan()
            .queues
            .into_iter()
            .find(|q| q.name == "warren.report")
            .unwrap();
        assert_eq!(work.queue_type(), crate::topology::QueueType::Classic);
        assert_eq!(
            work.arg("x-max-priority"),
            Some(&crate::topology::ArgValue::Int(5))
        );
        for (toml, needle) in [
            ("[tasks.report]\npriorities = 5\n", "needs a classic queue"),
            (
                "[tasks.report]\nqueue_type = \"classic\"\npriorities = 11\n",
                "must be 1..=10",
            ),
            (
                "[tasks.report]\nqueue_type = \"classic\"\npriorities = 0\n",
                "must be 1..=10",
            ),
        ] {
            let err = Settings::from_toml(toml)
                .and_then(|s| s.validate())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(needle) && err.contains("[tasks.report]"),
                "{toml}: {err}"
            );
        }
    }
}
