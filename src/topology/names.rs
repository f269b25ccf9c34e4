//! Every exchange and queue name, built in one place so producer, worker, CLI and tests
//! cannot disagree. Pure: no lapin here.

/// Longest task name; names appear in queue names and routing keys (255 bytes at most).
pub const TASK_NAME_MAX: usize = 64;

/// Checks a task name: `[a-z0-9_-]`, 1 to 64 characters.
///
/// # Errors
/// A sentence naming the offending character or length.
pub fn validate_task_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.chars().count() > TASK_NAME_MAX {
        return Err(format!(
            "task name `{}` must be 1 to {TASK_NAME_MAX} characters long (it is {})",
            shorten(name),
            name.chars().count()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-'))
    {
        return Err(format!(
            "task name `{}` contains {c:?}; use only lowercase ASCII letters, digits, `_` and `-` \
             (names appear in queue names and routing keys)",
            shorten(name)
        ));
    }
    Ok(())
}

/// Checks a namespace: like a task name, and dots are allowed inside (`billing.prod`).
///
/// # Errors
/// A sentence naming the problem.
pub fn validate_namespace(ns: &str) -> Result<(), String> {
    let ok_chars = ns
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.'));
    if ns.is_empty() || ns.len() > 64 || !ok_chars || ns.starts_with('.') || ns.ends_with('.') {
        return Err(format!(
            "namespace `{}` must be 1 to 64 characters of lowercase ASCII letters, digits, `_`, `-` \
             and inner dots",
            shorten(ns)
        ));
    }
    Ok(())
}

fn shorten(s: &str) -> String {
    if s.chars().count() > 70 {
        let head: String = s.chars().take(60).collect();
        format!("{head}…")
    } else {
        s.to_string()
    }
}

/// Names of one namespace's objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    ns: String,
}

impl Names {
    /// Names under namespace `ns` (already validated).
    pub fn new(ns: impl Into<String>) -> Self {
        Names { ns: ns.into() }
    }

    /// The namespace itself.
    pub fn namespace(&self) -> &str {
        &self.ns
    }

    /// `{ns}.tasks`: direct exchange producers publish to, routing key = task name.
    pub fn tasks_exchange(&self) -> String {
        format!("{}.tasks", self.ns)
    }

    /// `{ns}.{task}`: the work queue of one task type.
    pub fn work_queue(&self, task: &str) -> String {
        format!("{}.{task}", self.ns)
    }

    /// `{ns}.dead`: direct exchange receiving dead tasks, routing key = task name.
    pub fn dead_exchange(&self) -> String {
        format!("{}.dead", self.ns)
    }

    /// `{ns}.{task}.dead`: dead tasks of one type.
    pub fn dead_queue(&self, task: &str) -> String {
        format!("{}.{task}.dead", self.ns)
    }

    /// `{ns}.delay.{level}`: the ladder's exchange and queue of one level (same name).
    pub fn delay_level(&self, level: u32) -> String {
        format!("{}.delay.{level}", self.ns)
    }

    /// `{ns}.{task}.listeners`: fanout exchange between the ladder's foot and a broadcast
    /// type's workers' own queues; its alternate exchange is [`Names::unheard_exchange`].
    pub fn listeners_exchange(&self, task: &str) -> String {
        format!("{}.{task}.listeners", self.ns)
    }

    /// `{ns}.{task}.retries`: topic exchange between the ladder's foot and a broadcast type's
    /// workers' own queues, for each worker's own retries (`#.{retry_key}`); its alternate
    /// exchange is [`Names::unheard_exchange`].
    pub fn retries_exchange(&self, task: &str) -> String {
        format!("{}.{task}.retries", self.ns)
    }

    /// `{ns}.{task}.unheard`: fanout exchange into a broadcast type's dead queue, for the
    /// delayed copies no worker listened to.
    pub fn unheard_exchange(&self, task: &str) -> String {
        format!("{}.{task}.unheard", self.ns)
    }

    /// `{ns}.delay.deliver`: topic exchange at the ladder's foot, routes `#.{task}` to work.
    pub fn deliver_exchange(&self) -> String {
        format!("{}.delay.deliver", self.ns)
    }

    /// `{ns}.{task}.schedule.{schedule}`: the last firing of one schedule of `task` (the
    /// scheduler's record). Beside the task's own queues in a listing; task names hold no
    /// dot, so it never collides with another type's queue.
    pub fn schedule_record(&self, task: &str, schedule: &str) -> String {
        format!("{}.{}", self.ns, schedule_key(task, schedule))
    }

    /// `{ns}.control`: the direct exchange control events (cancel, pause, resume) are
    /// published to.
    pub fn control_exchange(&self) -> String {
        format!("{}.control", self.ns)
    }

    /// `{ns}.console.audit`: the stream of every action taken in `warren console` (who, what,
    /// when, how many tasks). Dotted, so no task's work queue can have its name.
    pub fn audit_stream(&self) -> String {
        format!("{}.console.audit", self.ns)
    }

    /// `{ns}.control.events`: the control stream (cancels, pauses, resumes). Dotted, so no
    /// task's work queue can have its name.
    pub fn control_stream(&self) -> String {
        format!("{}.control.events", self.ns)
    }

    /// `{ns}.{task}.paused`: the last pause or resume of `task`.
    pub fn pause_record(&self, task: &str) -> String {
        format!("{}.{task}.paused", self.ns)
    }

    /// `{ns}.{task}.limit.running`: the `concurrency_limit` tokens of `task`.
    pub fn limit_running(&self, task: &str) -> String {
        format!("{}.{task}.limit.running", self.ns)
    }

    /// `{ns}.{task}.limit.starts`: the `rate_limit` tokens of `task`.
    pub fn limit_starts(&self, task: &str) -> String {
        format!("{}.{task}.limit.starts", self.ns)
    }

    /// `{ns}.{task}.limit.record`: the limits of `task` in force (the last `warren limit` or
    /// `topology apply`), one message.
    pub fn limit_record(&self, task: &str) -> String {
        format!("{}.{task}.limit.record", self.ns)
    }

    /// `{tokens}.debt`: the tokens of the token queue `tokens` still to be taken out of
    /// circulation after a lowered limit, one message each.
    pub fn limit_debt(&self, tokens: &str) -> String {
        format!("{tokens}.debt")
    }

    /// `{ns}.{task}.limit.lock`: the exclusive queue held while a worker counts `task`'s
    /// tokens and subscribes to them.
    pub fn limit_lock(&self, task: &str) -> String {
        format!("{}.{task}.limit.lock", self.ns)
    }

    /// `{ns}.scheduler.lease`: the exclusive queue whose holder is the one scheduler that
    /// fires (the scheduler's `BCC`).
    pub fn scheduler_lease(&self) -> String {
        format!("{}.scheduler.lease", self.ns)
    }

    /// `{ns}.{task}@{worker}`: one worker's own queue of broadcast type `task`, named after
    /// the worker (`{host}:{pid}`, as in its connection name `warren worker {host}:{pid}`).
    /// `@` cannot occur in a task name, so these never collide with a work or dead queue.
    pub fn own_queue(&self, task: &str, worker: &str) -> String {
        format!("{}.{}", self.ns, own_key(task, worker))
    }

    /// `{ns}.{task}.unique.{key}`: the lock of one unique key of `task` (`key` as it appears
    /// in names, see `producer::unique::key_in_name`).
    pub fn unique_lock(&self, task: &str, key: &str) -> String {
        format!("{}.{task}.unique.{key}", self.ns)
    }

    /// `{ns}.{task}.unique-for.{key}`: the `unique_for` window of one unique key of `task`.
    pub fn unique_window(&self, task: &str, key: &str) -> String {
        format!("{}.{task}.unique-for.{key}", self.ns)
    }

    /// What the queue `name`, made at run time rather than by the plan, is to task type
    /// `task` of this namespace, if anything: a worker's own queue of a broadcast type, or a
    /// unique key's lock or window. A name alone can mislead across namespaces: `shop.test`'s
    /// work and state queues of a type `unique` (`shop.test.unique.dead`) look like keys of
    /// `shop`'s type `test`, so callers also check the lock's arguments; and a key of
    /// `shop.test`'s type `unique` has those arguments too, so a key that itself starts with
    /// `unique.` or `unique-for.` is not counted (left behind rather than taken from another
    /// namespace).
    pub fn runtime_queue(&self, task: &str, name: &str) -> Option<RuntimeQueue> {
        let rest = name.strip_prefix(&self.ns)?.strip_prefix('.')?;
        let rest = rest.strip_prefix(task)?;
        if rest.len() > 1 && rest.starts_with('@') {
            return Some(RuntimeQueue::Own);
        }
        let key = rest
            .strip_prefix(".unique.")
            .or_else(|| rest.strip_prefix(".unique-for."))?;
        // `{ns}.{task}.unique.unique.K` is also namespace `{ns}.{task}`'s type `unique` with
        // key `K`, and the lock's arguments are the same: such a name is nobody's for sure,
        // so it is left alone.
        let ambiguous = ["unique.", "unique-for."]
            .iter()
            .any(|p| key.starts_with(p));
        (!key.is_empty() && !ambiguous).then_some(RuntimeQueue::UniqueKey)
    }
}

/// A queue of a namespace that its plan does not name: made by workers and producers as they
/// run, found by listing the vhost (see [`Names::runtime_queue`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeQueue {
    /// A worker's own queue of a broadcast type (exclusive to its connection).
    Own,
    /// A unique key's lock or `unique_for` window (one marker message).
    UniqueKey,
}

/// `{task}@{worker}`: one worker's own queue of broadcast type `task`, after the namespace.
pub fn own_key(task: &str, worker: &str) -> String {
    format!("{task}@{worker}")
}

/// `{task}@.{worker}`: the routing key (after the ladder's bits) that reaches one worker's
/// own queue of broadcast type `task` only: its retries travel the ladder under it. The word
/// `{task}@` is never a task name (no `@` in one), so the type's retries exchange takes every
/// retry of the type by `#.{task}@.#` and nothing else; the worker id ends in `:{pid}`, so the
/// key's last word is never a task name and `#.{task}` (the fan-out binding) does not match.
pub fn retry_key(task: &str, worker: &str) -> String {
    format!("{task}@.{worker}")
}

/// The routing key under which the control exchange reaches the control stream.
pub const EVENTS_KEY: &str = "events";

/// The routing key of a type's pause record on the control exchange (a pause or resume
/// carries it in `BCC`).
pub fn pause_key(task: &str) -> String {
    format!("pause.{task}")
}

/// `{task}.schedule.{schedule}`: the key a firing of `schedule` carries in `BCC`, which
/// routes it from `{ns}.tasks` into the schedule's record queue as well as to its task's
/// queue. A task name holds no dot, so no plain enqueue matches it.
pub fn schedule_key(task: &str, schedule: &str) -> String {
    format!("{task}.schedule.{schedule}")
}

/// A worker id for queue names and routing keys: `{host}:{pid}`, plus `-{n}` for the n-th
/// worker of one process (n ≥ 2), the host cut to 100 characters and anything outside
/// `[A-Za-z0-9._-]` in it replaced by `_` (`#` and `*` would be wildcards in a binding).
pub fn worker_id(host: &str, pid: u32, nth: u32) -> String {
    let host: String = host
        .chars()
        .take(100)
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '_' | '-' => c,
            _ => '_',
        })
        .collect();
    match nth {
        0 | 1 => format!("{host}:{pid}"),
        n => format!("{host}:{pid}-{n}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_queues_are_told_apart_from_each_other_and_from_other_names() {
        let n = Names::new("shop");
        let kind = |name: &str| n.runtime_queue("mail", name);
        assert_eq!(kind("shop.mail@host:12"), Some(RuntimeQueue::Own));
        assert_eq!(
            kind(&n.unique_lock("mail", "k1")),
            Some(RuntimeQueue::UniqueKey)
        );
        assert_eq!(
            kind(&n.unique_window("mail", "k1")),
            Some(RuntimeQueue::UniqueKey)
        );
        for other in [
            "shop.mail",
            "shop.mail.dead",
            "shop.mail@",
            "shop.mail.unique.",
            "shop.mailer.unique.k1",
            "shop.mailer@host:12",
            "shopx.mail@host:12",
            "shop.test.mail@host:12",
            "other.mail.unique.k1",
            // Namespace `shop.mail`'s type `unique`, key `k1`, as much as `shop`'s.
            "shop.mail.unique.unique.k1",
            "shop.mail.unique.unique-for.k1",
            "shop.mail.unique-for.unique.k1",
        ] {
            assert_eq!(kind(other), None, "{other}");
        }
    }

    #[test]
    fn names_follow_the_design_table() {
        let n = Names::new("shop");
        assert_eq!(n.tasks_exchange(), "shop.tasks");
        assert_eq!(n.work_queue("send_email"), "shop.send_email");
        assert_eq!(n.dead_exchange(), "shop.dead");
        assert_eq!(n.dead_queue("send_email"), "shop.send_email.dead");
        assert_eq!(n.delay_level(3), "shop.delay.3");
        assert_eq!(n.deliver_exchange(), "shop.delay.deliver");
        assert_eq!(n.own_queue("reload", "web-1:42"), "shop.reload@web-1:42");
        assert_eq!(own_key("reload", "web-1:42"), "reload@web-1:42");
        assert_eq!(
            n.schedule_record("report", "nightly"),
            "shop.report.schedule.nightly"
        );
        assert_eq!(n.scheduler_lease(), "shop.scheduler.lease");
    }

    #[test]
    fn worker_ids_name_host_and_pid_and_never_hold_a_wildcard() {
        assert_eq!(
            worker_id("web-1.example.com", 42, 1),
            "web-1.example.com:42"
        );
        assert_eq!(worker_id("web-1", 42, 3), "web-1:42-3");
        assert_eq!(worker_id("a#b*c d", 7, 0), "a_b_c_d:7");
        assert_eq!(worker_id(&"h".repeat(300), 1, 1).len(), 102);
    }

    #[test]
    fn valid_task_names_pass() {
        for ok in ["a", "send_email", "resize-image", "v2", &"x".repeat(64)] {
            validate_task_name(ok).unwrap();
        }
    }

    #[test]
    fn invalid_task_names_say_why() {
        assert!(validate_task_name("").unwrap_err().contains("1 to 64"));
        assert!(
            validate_task_name(&"x".repeat(65))
                .unwrap_err()
                .contains("it is 65")
        );
        assert!(validate_task_name("a.b").unwrap_err().contains("'.'"));
        assert!(validate_task_name("a b").unwrap_err().contains("' '"));
        assert!(validate_task_name("Email").unwrap_err().contains("'E'"));
        assert!(validate_task_name("café").unwrap_err().contains("'é'"));
        assert!(
            validate_task_name(&"é".repeat(200))
                .unwrap_err()
                .contains('…')
        );
    }

    #[test]
    fn namespaces_allow_inner_dots_only() {
        validate_namespace("billing.prod").unwrap();
        assert!(validate_namespace(".a").is_err());
        assert!(validate_namespace("a.").is_err());
        assert!(validate_namespace("A").is_err());
    }
}
