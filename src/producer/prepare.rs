//! Message preparation: validates one task and encodes it with its route. Pure: sends nothing
//! and reads the clock only through the `now` it is given.

use std::time::{Duration, SystemTime};

use super::EnqueueOptions;
use super::unique::Lock;
use crate::config::Settings;
use crate::error::{Error, Result};
use crate::topology::ladder::round_up_secs;
use crate::topology::{Routes, validate_task_name};
use crate::wire::copies::{IfUnroutable, Outgoing};
use crate::wire::{Envelope, new_task_id, unix_ms};

/// Longest task id a caller may choose, in bytes (AMQP short strings hold 255).
pub(crate) const TASK_ID_MAX: usize = 255;

/// What preparing a message needs: the settings (limits, per-type policy) and the routes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Preparer<'a> {
    pub(crate) settings: &'a Settings,
    pub(crate) routes: &'a Routes,
    /// True on the producer's waiting path, which publishes on a channel that consumes
    /// direct reply-to; anywhere else such a `reply_to` makes the broker close the channel.
    pub(crate) direct_reply_ok: bool,
}

impl Preparer<'_> {
    /// Validates and encodes `body` as a `task` task enqueued at `now` with `options`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a bad name, an oversized body, a delay above `max_delay`,
    /// an expiry not after `now`, or a bad id.
    pub(crate) fn message(
        &self,
        task: &str,
        body: Vec<u8>,
        options: EnqueueOptions,
        now: SystemTime,
    ) -> Result<Outgoing> {
        self.prepared(task, body, options, now).map(|(out, _)| out)
    }

    /// As [`Preparer::message`], with a unique task's [`Lock`] worked out in the same pass:
    /// the key's queues are named once, for the header and for the enqueue that takes them.
    ///
    /// # Errors
    /// As [`Preparer::message`]; also a bad unique key or window, or a unique broadcast.
    pub(crate) fn prepared(
        &self,
        task: &str,
        body: Vec<u8>,
        options: EnqueueOptions,
        now: SystemTime,
    ) -> Result<(Outgoing, Option<Lock>)> {
        let s = self.settings;
        validate_task_name(task).map_err(Error::InvalidInput)?;
        check_size(task, body.len(), s.max_payload_bytes)?;
        let delay = options.delay.map_or(0, round_up_secs);
        check_delay(delay, s.max_delay)?;
        let expires_at = self.expiry(task, &options, now)?;
        check_id(options.id.as_deref())?;
        check_reply_to(s, task, options.reply_to.as_deref(), self.direct_reply_ok)?;
        let mut env = Envelope::new(options.id.unwrap_or_else(new_task_id), task);
        env.expires_at_ms = expires_at.map(unix_ms);
        env.correlation_id = options.correlation_id;
        env.priority = options.priority;
        env.reply_to = options.reply_to;
        let mut lock = None;
        if let Some(key) = options.unique_key {
            super::unique::check_key(&key)?;
            if options
                .unique_for
                .is_some_and(|w| w > super::unique::WINDOW_MAX || w.is_zero())
            {
                return Err(Error::InvalidInput(format!(
                    "unique_for must be from 1s to {} (got {})",
                    crate::duration::duration_text(super::unique::WINDOW_MAX),
                    crate::duration::duration_text(options.unique_for.unwrap_or_default())
                )));
            }
            if s.is_broadcast(task) {
                return Err(Error::InvalidInput(format!(
                    "`{task}` is a broadcast type: a unique key would be held by every worker's \
                     copy; broadcast tasks cannot be unique"
                )));
            }
            let window = options.unique_for;
            let queues = super::unique::lock_queues(self.routes.names(), task, &key, window);
            env.unique = Some(queues[0].name.clone());
            // The key's marker expires with the task (which the broker may dead-letter by
            // itself then, unseen by any worker); the window's with the window.
            let expiry = expires_at.map(|at| {
                at.duration_since(now)
                    .unwrap_or_default()
                    .max(Duration::from_millis(1))
            });
            lock = Some(Lock {
                exchange: self.routes.names().control_exchange(),
                key,
                queues,
                ttls: [expiry, window],
            });
        }
        check_chain(s, task, &options.then)?;
        env.chain = options.then;
        // Inside a handler, a new task joins the running task's trace.
        env.traceparent = options.traceparent.or_else(crate::trace::current);
        let (route, expiration) = if delay == 0 {
            // The broker expires (and dead-letters) an undelayed task even with no worker;
            // not one a caller waits for: the worker refuses it when it arrives, and answers.
            let ttl = env
                .expires_at_ms
                .filter(|_| env.reply_to.is_none())
                .map(|at| at.saturating_sub(unix_ms(now)).max(1));
            (self.routes.work(task), ttl)
        } else {
            // In the ladder a per-message TTL would fire before the level's own; the worker
            // checks `warren-expires-at` instead.
            (self.routes.delayed(task, delay), None)
        };
        let out = Outgoing {
            task: task.to_string(),
            id: env.id.clone(),
            route,
            body,
            properties: env.properties(expiration),
            if_unroutable: if s.is_broadcast(task) {
                IfUnroutable::Broadcast
            } else {
                IfUnroutable::Error
            },
        };
        Ok((out, lock))
    }

    /// When the task must not start any more: the call's expiry, else the type's default.
    fn expiry(
        &self,
        task: &str,
        options: &EnqueueOptions,
        now: SystemTime,
    ) -> Result<Option<SystemTime>> {
        let expires_at = match (options.expires_in, options.expires_at) {
            (Some(d), _) => Some(now + d),
            (None, Some(t)) => Some(t),
            (None, None) => self.settings.policy(task).expires.map(|d| now + d),
        };
        match expires_at {
            Some(t) if t <= now => Err(Error::InvalidInput(format!(
                "the expiry of a `{task}` task is in the past ({}); give a future time or none",
                humantime::format_rfc3339_millis(t)
            ))),
            other => Ok(other),
        }
    }
}

fn check_size(task: &str, len: usize, max: usize) -> Result<()> {
    if len <= max {
        return Ok(());
    }
    Err(Error::InvalidInput(format!(
        "a `{task}` task body is {len} bytes, above the limit of {max} (max_payload_bytes); \
         send ids rather than records, or raise max_payload_bytes in the topology file"
    )))
}

fn check_delay(delay_secs: u64, max_delay: Duration) -> Result<()> {
    if delay_secs <= max_delay.as_secs() {
        return Ok(());
    }
    Err(Error::InvalidInput(format!(
        "a delay of {} is above max_delay ({}); raise max_delay in the topology file \
         (and re-apply it) or schedule the task later",
        crate::duration::duration_text(Duration::from_secs(delay_secs)),
        crate::duration::duration_text(max_delay)
    )))
}

fn check_id(id: Option<&str>) -> Result<()> {
    match id {
        Some(id) if id.is_empty() || id.len() > TASK_ID_MAX => Err(Error::InvalidInput(format!(
            "a task id must be 1 to {TASK_ID_MAX} bytes long"
        ))),
        _ => Ok(()),
    }
}

/// A chain's steps: valid task names, none of them a broadcast type (a step has one
/// successor, not one per worker), fitting the header (each name is at most 64 bytes).
fn check_chain(settings: &Settings, first: &str, steps: &[String]) -> Result<()> {
    if !steps.is_empty() && settings.is_broadcast(first) {
        return Err(Error::InvalidInput(format!(
            "`{first}` is a broadcast type: every worker would run it and continue the chain; \
             start a chain with an ordinary task type"
        )));
    }
    if steps.len() > 32 {
        return Err(Error::InvalidInput(format!(
            "a chain of {} steps is too long: at most 33 tasks (the first and 32 more)",
            steps.len() + 1
        )));
    }
    for step in steps {
        validate_task_name(step).map_err(|e| Error::InvalidInput(format!("chain step: {e}")))?;
        // Caught here, not after the previous steps ran: with task types declared, a step
        // must be one of them.
        if !settings.tasks.is_empty() && !settings.tasks.contains_key(step) {
            return Err(Error::InvalidInput(format!(
                "chain step `{step}` is not a task type of the topology"
            )));
        }
        if settings.is_broadcast(step) {
            return Err(Error::InvalidInput(format!(
                "chain step `{step}` is a broadcast type: every worker would run it and \
                 continue the chain; a chain step must be an ordinary task type"
            )));
        }
    }
    Ok(())
}

/// A `reply_to`: 1 to 255 bytes (an AMQP short string); direct reply-to only where the
/// publishing channel consumes it; none on a broadcast type (every worker would answer).
fn check_reply_to(
    settings: &Settings,
    task: &str,
    reply_to: Option<&str>,
    direct_reply_ok: bool,
) -> Result<()> {
    let Some(to) = reply_to else { return Ok(()) };
    if to.is_empty() || to.len() > 255 {
        return Err(Error::InvalidInput(format!(
            "a reply queue name must be 1 to 255 bytes (it is {})",
            to.len()
        )));
    }
    if to.starts_with(crate::wire::answer::DIRECT_REPLY_TO) && !direct_reply_ok {
        return Err(Error::InvalidInput(
            "direct reply-to needs the publishing channel to consume it: use Producer::call \
             or enqueue_wait_raw to wait for an answer"
                .into(),
        ));
    }
    if settings.is_broadcast(task) {
        return Err(Error::InvalidInput(format!(
            "`{task}` is a broadcast type: every worker running it would answer, and waiting \
             for many answers to one task is not supported yet; enqueue it without waiting or \
             a reply queue"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use lapin::types::AMQPValue;

    use super::*;
    use crate::wire::header;

    fn settings() -> Settings {
        let mut s = Settings::from_toml(
            "max_delay = \"1h\"\nmax_payload_bytes = 16\n[tasks.mail]\nexpires = \"10m\"\n[tasks.job]\n",
        )
        .unwrap();
        s.namespace = "ns".into();
        s
    }

    fn prepare(task: &str, body: &[u8], options: EnqueueOptions) -> Result<Outgoing> {
        let s = settings();
        let routes = s.routes();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        Preparer {
            settings: &s,
            routes: &routes,
            direct_reply_ok: false,
        }
        .message(task, body.to_vec(), options, now)
    }

    fn refusal(result: Result<Outgoing>) -> String {
        match result {
            Err(Error::InvalidInput(msg)) => msg,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn an_undelayed_task_goes_to_the_tasks_exchange_without_expiry() {
        let m = prepare("job", b"{}", EnqueueOptions::default().id("a")).unwrap();
        assert_eq!(
            (m.route.exchange.as_str(), m.route.routing_key.as_str()),
            ("ns.tasks", "job")
        );
        assert_eq!((m.task.as_str(), m.id.as_str()), ("job", "a"));
        assert_eq!(*m.properties.expiration(), None);
    }

    #[test]
    fn a_delayed_task_enters_the_ladder_rounded_up_to_whole_seconds() {
        let opts = EnqueueOptions::default().delay(Duration::from_millis(4200));
        let m = prepare("job", b"{}", opts).unwrap();
        // max_delay 1 h: levels 11..0; 5 s = 0b101.
        assert_eq!(m.route.exchange, "ns.delay.11");
        assert_eq!(m.route.routing_key, "0.0.0.0.0.0.0.0.0.1.0.1.job");
    }

    #[test]
    fn an_expiry_is_a_broker_ttl_when_direct_and_a_header_in_the_ladder() {
        let direct = prepare("mail", b"{}", EnqueueOptions::default()).unwrap();
        assert_eq!(
            direct.properties.expiration().as_ref().map(|s| s.as_str()),
            Some("600000"),
            "the type's default expiry of 10 min"
        );
        let opts = EnqueueOptions::default()
            .delay(Duration::from_secs(2))
            .expires_in(Duration::from_secs(30));
        let delayed = prepare("mail", b"{}", opts).unwrap();
        assert_eq!(*delayed.properties.expiration(), None);
        let h = delayed.properties.headers().as_ref().unwrap().inner();
        assert!(matches!(
            h.get(header::EXPIRES_AT),
            Some(AMQPValue::LongLongInt(1_700_000_030_000))
        ));
    }

    #[test]
    fn bad_input_is_refused_with_what_was_wrong() {
        let long = "x".repeat(TASK_ID_MAX + 1);
        let cases = [
            ("Job", &b"{}"[..], EnqueueOptions::default(), "'J'"),
            (
                "job",
                &[b' '; 17][..],
                EnqueueOptions::default(),
                "above the limit of 16",
            ),
            (
                "job",
                b"{}",
                EnqueueOptions::default().delay(Duration::from_secs(3601)),
                "above max_delay",
            ),
            (
                "job",
                b"{}",
                EnqueueOptions::default().expires_at(SystemTime::UNIX_EPOCH),
                "in the past",
            ),
            (
                "job",
                b"{}",
                EnqueueOptions::default().id(""),
                "1 to 255 bytes",
            ),
            (
                "job",
                b"{}",
                EnqueueOptions::default().id(long),
                "1 to 255 bytes",
            ),
        ];
        for (task, body, opts, needle) in cases {
            let msg = refusal(prepare(task, body, opts));
            assert!(msg.contains(needle), "{task}: {msg}");
        }
    }
}
