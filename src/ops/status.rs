//! `warren status`: one row per task type, read from the management HTTP API.
//!
//! The API samples statistics every few seconds, so a figure it has not reported yet is
//! `None` ("unknown"), never 0. Building rows from the API's JSON is pure and unit-tested.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::config::Settings;
use crate::error::Result;
use crate::ops::management::{Management, enc};
use crate::topology::names::Names;

/// One task type's figures. `None` = the broker has not reported it (yet).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Row {
    /// Task name.
    pub task: String,
    /// Ready in the work queue.
    pub ready: Option<u64>,
    /// Delivered to a worker and not yet acked (running or prefetched).
    pub running: Option<u64>,
    /// Consumers on the work queue.
    pub consumers: Option<u64>,
    /// Waiting in the delay ladder; the ladder is shared by the namespace, so this is the
    /// namespace's total, repeated per row (also [`Status::delayed`], once).
    pub delayed_in_namespace: Option<u64>,
    /// In the dead queue.
    pub dead: Option<u64>,
    /// Publishes into the work queue per second.
    pub publish_rate: Option<f64>,
    /// Acks from the work queue per second.
    pub ack_rate: Option<f64>,
    /// Broadcast types only: the workers receiving it now (one own queue each). Their
    /// queues' figures are summed into `ready`, `running`, `consumers` and the rates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broadcast_workers: Option<u64>,
    /// Paused (`warren pause`): no worker starts it until `warren resume`.
    pub paused: bool,
    /// `concurrency_limit`: runs at once across every worker.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency_limit: Option<u32>,
    /// With `concurrency_limit`: its tokens held by workers now (in use, or taken for the
    /// next start).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit_in_use: Option<u64>,
    /// `rate_limit`, as written (`10/s`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<String>,
    /// The topology file's limits, when the limits in force above differ (changed live by
    /// `warren limit`, until the next `topology apply`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub declared_limits: Option<String>,
    /// Who holds the type's limit tokens now (concurrency tokens, else start tokens): each
    /// worker connection and how many it holds. The counts are the broker's samples of each
    /// channel (every 5 s), so while tokens move they need not add up to `limit_in_use`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub limit_holders: Vec<Holder>,
}

/// A worker connection holding limit tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Holder {
    /// The connection's name as the management UI shows it (`warren worker host:pid …`).
    pub connection: String,
    /// Tokens it holds (running, or taken for its next start).
    pub tokens: u64,
}

/// The whole status: rows and where they came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    /// Namespace.
    pub namespace: String,
    /// Virtual host.
    pub vhost: String,
    /// The broker's product and version (`RabbitMQ 3.10.8 (Erlang 25.2.3)`), when the caller
    /// read it ([`super::version::BrokerVersion::read`]): it does not change between
    /// refreshes, so [`fetch`] leaves it to the caller.
    pub broker: Option<String>,
    /// Queues of the namespace found on the broker; 0 when it was never applied here.
    pub queues: usize,
    /// Waiting in the namespace's delay ladder (shared by every task type).
    pub delayed: Option<u64>,
    /// One row per task type (declared in the topology file or found on the broker).
    pub tasks: Vec<Row>,
    /// The topology's schedules, their next and last firing and the leading scheduler, as
    /// `warren schedules` shows them; `None` when the topology declares none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedules: Option<super::schedules::Schedules>,
}

fn uint(v: &Value, path: &[&str]) -> Option<u64> {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_u64)
}

fn float(v: &Value, path: &[&str]) -> Option<f64> {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_f64)
}

/// A queue's rate per second from `message_stats.{details}`. The API's rates are
/// differences of sampled counters and dip below zero when a queue's counters restart (a
/// purge, a node restart); no queue moves backwards, so those are 0 (and never `-0.0`).
fn rate(q: &Value, details: &str) -> Option<f64> {
    float(q, &["message_stats", details, "rate"]).map(|r| if r > 0.0 { r } else { 0.0 })
}

/// Rows from the API's queue list (`GET /api/queues/{vhost}` items) for namespace `ns`:
/// the declared `tasks` plus any work queue found on the broker. A type is a broadcast type
/// when it is in `broadcast` or workers' own queues of it (`{ns}.{task}@{worker}`) exist.
pub fn rows(ns: &str, declared: &[String], broadcast: &[String], queues: &[Value]) -> Vec<Row> {
    let names = Names::new(ns);
    let by_name: BTreeMap<&str, &Value> = queues
        .iter()
        .filter_map(|q| q["name"].as_str().map(|n| (n, q)))
        .collect();
    let prefix = format!("{ns}.");
    let mut tasks: Vec<String> = declared.to_vec();
    // Workers' own queues by task type.
    let mut owns: BTreeMap<String, Vec<&Value>> =
        broadcast.iter().map(|t| (t.clone(), Vec::new())).collect();
    for (name, q) in &by_name {
        let Some(rest) = name.strip_prefix(&prefix) else {
            continue;
        };
        let task = match rest.split_once('@') {
            // A dot before the `@`: a queue of a namespace under this one (`ns.sub.x@…`).
            Some((task, _worker)) if task.contains('.') => continue,
            Some((task, _worker)) => {
                owns.entry(task.to_string()).or_default().push(q);
                task
            }
            None if !rest.contains('.') => rest,
            None => continue,
        };
        if !tasks.iter().any(|t| t == task) {
            tasks.push(task.to_string());
        }
    }
    for task in owns.keys() {
        if !tasks.contains(task) {
            tasks.push(task.clone());
        }
    }
    tasks.sort();
    let delayed = delayed_total(ns, queues);
    tasks
        .into_iter()
        .map(|task| {
            let dead = by_name.get(names.dead_queue(&task).as_str()).copied();
            let dead = dead.and_then(|q| uint(q, &["messages"]));
            if let Some(own) = owns.get(&task) {
                return Row {
                    ready: sum(own, |q| uint(q, &["messages_ready"])),
                    running: sum(own, |q| uint(q, &["messages_unacknowledged"])),
                    consumers: sum(own, |q| uint(q, &["consumers"])),
                    delayed_in_namespace: delayed,
                    dead,
                    publish_rate: rate_sum(own, "publish_details"),
                    ack_rate: rate_sum(own, "ack_details"),
                    broadcast_workers: Some(own.len() as u64),
                    task,
                    ..Row::default()
                };
            }
            let work = by_name.get(names.work_queue(&task).as_str()).copied();
            Row {
                ready: work.and_then(|q| uint(q, &["messages_ready"])),
                running: work.and_then(|q| uint(q, &["messages_unacknowledged"])),
                consumers: work.and_then(|q| uint(q, &["consumers"])),
                delayed_in_namespace: delayed,
                dead,
                publish_rate: work.and_then(|q| rate(q, "publish_details")),
                ack_rate: work.and_then(|q| rate(q, "ack_details")),
                broadcast_workers: None,
                task,
                ..Row::default()
            }
        })
        .collect()
}

/// Fills in `row`'s limits from its type's settings and the token queues in `by_name`. A
/// limited type's workers consume its tokens, not its work queue (they get tasks one by
/// one), so its consumers are the token queue's.
fn add_limits(row: &mut Row, ns: &str, settings: &Settings, by_name: &BTreeMap<&str, &Value>) {
    let Some(t) = settings.tasks.get(&row.task) else {
        return;
    };
    row.concurrency_limit = t.concurrency_limit;
    row.rate_limit = t.rate_limit.map(|r| r.text());
    let Some(tokens) = token_queue(&Names::new(ns), settings, &row.task) else {
        return;
    };
    if let Some(q) = by_name.get(tokens.as_str()) {
        row.consumers = uint(q, &["consumers"]);
        if t.concurrency_limit.is_some() {
            row.limit_in_use = uint(q, &["messages_unacknowledged"]);
        }
    }
}

/// The token queue a limited type's workers consume instead of its work queue (concurrency
/// tokens, else start tokens); `None` for a type without limits in the file.
fn token_queue(names: &Names, settings: &Settings, task: &str) -> Option<String> {
    let t = settings.tasks.get(task)?;
    match (t.concurrency_limit, t.rate_limit) {
        (Some(_), _) => Some(names.limit_running(task)),
        (None, Some(_)) => Some(names.limit_starts(task)),
        (None, None) => None,
    }
}

/// Puts the limits in force (the limit record, read without consuming it) and the token
/// holders into a limited type's row.
fn add_live_limits(
    row: &mut Row,
    mgmt: &Management,
    vhost: &str,
    names: &Names,
    by_name: &BTreeMap<&str, &Value>,
) -> Result<()> {
    if row.concurrency_limit.is_none() && row.rate_limit.is_none() {
        return Ok(());
    }
    let declared = crate::control::limits::Limits {
        concurrency: row.concurrency_limit,
        rate: row
            .rate_limit
            .as_deref()
            .and_then(|r| crate::limits::RateLimit::parse(r).ok()),
    };
    let record = names.limit_record(&row.task);
    if by_name.contains_key(record.as_str()) {
        let got = mgmt.post_json(
            &format!("queues/{}/{}/get", enc(vhost), enc(&record)),
            &serde_json::json!({"count": 1, "ackmode": "ack_requeue_true", "encoding": "auto"}),
        )?;
        let payload = got[0]["payload"].as_str().unwrap_or_default();
        if let Some(recorded) = crate::control::limits::decode(payload.as_bytes()) {
            let in_force = recorded.within(declared);
            if in_force != declared {
                row.concurrency_limit = in_force.concurrency;
                row.rate_limit = in_force.rate.map(|r| r.text());
                row.declared_limits = Some(declared.text());
            }
        }
    }
    let tokens = match row.concurrency_limit {
        Some(_) => names.limit_running(&row.task),
        None => names.limit_starts(&row.task),
    };
    // Asked also while the queue's figures are not reported yet (a new queue).
    if by_name
        .get(tokens.as_str())
        .is_some_and(|q| uint(q, &["consumers"]) != Some(0))
    {
        row.limit_holders = holders(mgmt, vhost, &tokens)?;
    }
    Ok(())
}

/// The connections whose channels consume token queue `queue`, with the tokens each holds
/// (its channel's unacked deliveries), most first.
fn holders(mgmt: &Management, vhost: &str, queue: &str) -> Result<Vec<Holder>> {
    let Some(q) = mgmt.get_opt(&format!("queues/{}/{}", enc(vhost), enc(queue)))? else {
        return Ok(Vec::new());
    };
    let mut found: Vec<Holder> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for c in q["consumer_details"].as_array().into_iter().flatten() {
        let channel = c["channel_details"]["name"].as_str().unwrap_or_default();
        if channel.is_empty() || !seen.insert(channel.to_string()) {
            continue;
        }
        // A channel closed meanwhile holds nothing.
        let Some(ch) = mgmt.get_opt(&format!("channels/{}", enc(channel)))? else {
            continue;
        };
        let tokens = uint(&ch, &["messages_unacknowledged"]).unwrap_or(0);
        // The broker names a connection by its addresses; the name the worker gave it
        // (`warren worker host:pid …`) is its `user_provided_name`.
        let by_addresses = c["channel_details"]["connection_name"]
            .as_str()
            .unwrap_or(channel)
            .to_string();
        let connection = mgmt
            .get_opt(&format!("connections/{}", enc(&by_addresses)))?
            .and_then(|c| c["user_provided_name"].as_str().map(str::to_string))
            .unwrap_or(by_addresses);
        match found.iter_mut().find(|h| h.connection == connection) {
            Some(h) => h.tokens += tokens,
            None => found.push(Holder { connection, tokens }),
        }
    }
    found.sort_by(|a, b| {
        b.tokens
            .cmp(&a.tokens)
            .then(a.connection.cmp(&b.connection))
    });
    Ok(found)
}

/// True when `task`'s pause record says paused (read without consuming it).
fn read_paused(mgmt: &Management, vhost: &str, queue: &str) -> Result<bool> {
    let got = mgmt.post_json(
        &format!("queues/{}/{}/get", enc(vhost), enc(queue)),
        &serde_json::json!({"count": 1, "ackmode": "ack_requeue_true", "encoding": "auto"}),
    )?;
    let payload = got[0]["payload"].as_str().unwrap_or_default();
    Ok(crate::control::events::decode(payload.as_bytes())
        .is_some_and(|r| matches!(r.event, crate::control::events::Event::Pause { .. })))
}

/// The sum of a rate over `queues`: 0.0 for none (a float sum of nothing is -0.0, which
/// would print as `-0.0/s`).
fn rate_sum(queues: &[&Value], details: &str) -> Option<f64> {
    sum(queues, |q| rate(q, details)).map(|r| if r > 0.0 { r } else { 0.0 })
}

/// The sum of a figure over several queues: unknown when any of them has not reported it;
/// 0 over no queue (no worker receives the type: nothing waits anywhere).
fn sum<T: std::iter::Sum<T>>(queues: &[&Value], figure: impl Fn(&Value) -> Option<T>) -> Option<T> {
    queues.iter().map(|q| figure(q)).sum()
}

/// Messages waiting in namespace `ns`'s delay ladder (`{ns}.delay.N` queues), from the API's
/// queue list; `None` when the ladder is not there or a level's count is not reported yet.
pub fn delayed_total(ns: &str, queues: &[Value]) -> Option<u64> {
    let prefix = format!("{ns}.delay.");
    let levels: Vec<&Value> = queues
        .iter()
        .filter(|q| {
            q["name"]
                .as_str()
                .and_then(|n| n.strip_prefix(&prefix))
                .is_some_and(|l| l.parse::<u32>().is_ok())
        })
        .collect();
    if levels.is_empty() {
        return None;
    }
    levels.iter().map(|q| uint(q, &["messages"])).sum()
}

/// Reads the status of `settings`' namespace.
///
/// # Errors
/// [`crate::error::Error::Management`] when the API is unreachable or refuses us.
pub fn fetch(settings: &Settings, mgmt: &Management) -> Result<Status> {
    let vhost = crate::broker::url_parts(&settings.amqp_url)?.vhost;
    let ns = &settings.namespace;
    let columns = "name,messages,messages_ready,messages_unacknowledged,consumers,\
                   message_stats.publish_details.rate,message_stats.ack_details.rate";
    let queues = mgmt.namespace_queues(&vhost, ns, columns)?;
    let declared: Vec<String> = settings.tasks.keys().cloned().collect();
    let broadcast: Vec<String> = (settings.tasks.iter())
        .filter(|(_, t)| t.broadcast)
        .map(|(name, _)| name.clone())
        .collect();
    let mut tasks = rows(ns, &declared, &broadcast, &queues);
    let by_name: BTreeMap<&str, &Value> = queues
        .iter()
        .filter_map(|q| q["name"].as_str().map(|n| (n, q)))
        .collect();
    let names = Names::new(ns);
    for row in &mut tasks {
        add_limits(row, ns, settings, &by_name);
        add_live_limits(row, mgmt, &vhost, &names, &by_name)?;
        let record = names.pause_record(&row.task);
        if by_name.contains_key(record.as_str()) {
            row.paused = read_paused(mgmt, &vhost, &record)?;
        }
    }
    Ok(Status {
        namespace: ns.clone(),
        vhost,
        broker: None,
        queues: queues.len(),
        delayed: delayed_total(ns, &queues),
        tasks,
        schedules: match settings.schedules.is_empty() {
            true => None,
            false => Some(super::schedules::fetch(settings, mgmt, chrono::Utc::now())?),
        },
    })
}

/// Puts current counts into `status` from passive declares over AMQP, which answer at once
/// and exactly: a work queue's ready count and consumers, a dead queue's count, the delay
/// ladder's total. The management API samples them every 5 s, so it has none for a queue
/// declared a moment ago, and for one deleted and declared again under the same name it can
/// show the old queue's last sample. How many are running (delivered, not acked) and the rates
/// have no AMQP answer and stay the API's. Of a broadcast type only the dead queue is asked:
/// its workers' own queues are exclusive to each worker's connection. A queue that cannot be
/// asked (it does not exist) keeps the API's figure.
pub async fn count_over_amqp(status: &mut Status, settings: &Settings, conn: &lapin::Connection) {
    let names = Names::new(&status.namespace);
    let mut counts = Counts {
        conn,
        channel: None,
    };
    for row in &mut status.tasks {
        if row.broadcast_workers.is_none() {
            let limited = token_queue(&names, settings, &row.task);
            if let Some((ready, consumers)) = counts.of(&names.work_queue(&row.task)).await {
                row.ready = Some(ready);
                // A limited type's workers consume its tokens, not its work queue.
                if limited.is_none() {
                    row.consumers = Some(consumers);
                }
            }
            if let Some(tokens) = limited
                && let Some((_, consumers)) = counts.of(&tokens).await
            {
                row.consumers = Some(consumers);
            }
        }
        if let Some((dead, _)) = counts.of(&names.dead_queue(&row.task)).await {
            row.dead = Some(dead);
        }
    }
    // The levels on the broker, 0 up to the first missing one: the namespace may have been
    // applied with another `max_delay` than the file at hand says (or with no file at all).
    let mut total = None;
    for level in 0..64 {
        match counts.of(&names.delay_level(level)).await {
            Some((n, _)) => total = Some(total.unwrap_or(0) + n),
            None => break,
        }
    }
    if total.is_some() {
        status.delayed = total;
        for row in &mut status.tasks {
            row.delayed_in_namespace = total;
        }
    }
    if let Some(ch) = counts.channel {
        crate::broker::close_channel(&ch, "status counted").await;
    }
}

/// Passive declares on one channel, reopened after a refusal (a missing queue closes it).
struct Counts<'a> {
    conn: &'a lapin::Connection,
    channel: Option<lapin::Channel>,
}

impl Counts<'_> {
    /// `(messages ready, consumers)` of `queue`; `None` when it cannot be asked.
    async fn of(&mut self, queue: &str) -> Option<(u64, u64)> {
        if self
            .channel
            .as_ref()
            .is_none_or(|c| !c.status().connected())
        {
            self.channel = self.conn.create_channel().await.ok();
        }
        let ch = self.channel.as_ref()?;
        let q = crate::broker::inspect(ch, queue).await.ok()?;
        Some((u64::from(q.message_count()), u64::from(q.consumer_count())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_rate_below_zero_reads_as_zero() {
        let queues = vec![json!({"name": "ns.resize", "messages_ready": 0,
            "message_stats": {"publish_details": {"rate": -0.04}, "ack_details": {"rate": -3.2}}})];
        let rows = rows("ns", &["resize".to_string()], &[], &queues);
        assert_eq!(
            (rows[0].publish_rate, rows[0].ack_rate),
            (Some(0.0), Some(0.0))
        );
        assert!(!format!("{:.1}", rows[0].ack_rate.unwrap()).starts_with('-'));
    }

    #[test]
    fn a_broadcast_type_with_no_worker_has_rates_of_plain_zero() {
        let queues = vec![json!({"name": "ns.reload.dead", "messages": 0})];
        let rows = rows(
            "ns",
            &["reload".to_string()],
            &["reload".to_string()],
            &queues,
        );
        let (publish, ack) = (rows[0].publish_rate.unwrap(), rows[0].ack_rate.unwrap());
        assert_eq!((publish, ack), (0.0, 0.0));
        assert!(
            publish.is_sign_positive() && ack.is_sign_positive(),
            "not -0.0: {publish:?} {ack:?}"
        );
    }

    #[test]
    fn rows_join_work_dead_and_ladder_queues_and_keep_unknowns_unknown() {
        let queues = vec![
            json!({"name": "ns.mail", "messages": 5, "messages_ready": 3, "messages_unacknowledged": 2, "consumers": 1,
                   "message_stats": {"publish_details": {"rate": 2.5}, "ack_details": {"rate": 1.0}}}),
            json!({"name": "ns.mail.dead", "messages": 4}),
            json!({"name": "ns.delay.0", "messages": 1}),
            json!({"name": "ns.delay.1", "messages": 2}),
            json!({"name": "ns.fresh"}), // just declared: no figures yet
            json!({"name": "other.mail", "messages": 99}),
        ];
        let rows = rows("ns", &["resize".to_string()], &[], &queues);
        let names: Vec<&str> = rows.iter().map(|r| r.task.as_str()).collect();
        assert_eq!(names, ["fresh", "mail", "resize"]);
        let mail = &rows[1];
        assert_eq!(
            (mail.ready, mail.running, mail.consumers, mail.dead),
            (Some(3), Some(2), Some(1), Some(4))
        );
        assert_eq!((mail.publish_rate, mail.ack_rate), (Some(2.5), Some(1.0)));
        assert_eq!(mail.delayed_in_namespace, Some(3));
        let fresh = &rows[0];
        assert_eq!(
            (fresh.ready, fresh.dead, fresh.publish_rate),
            (None, None, None)
        );
        assert_eq!(rows[2].ready, None, "declared but not on the broker");
    }

    #[test]
    fn a_broadcast_row_counts_its_workers_and_sums_their_queues() {
        let queues = vec![
            json!({"name": "ns.reload@web-1.example.com:42", "messages_ready": 1, "messages_unacknowledged": 1, "consumers": 1}),
            json!({"name": "ns.reload@web-2:7", "messages_ready": 2, "messages_unacknowledged": 0, "consumers": 1,
                   "message_stats": {"publish_details": {"rate": 2.0}}}),
            json!({"name": "ns.reload.dead", "messages": 3}),
            json!({"name": "ns.quiet.dead", "messages": 0}),
            json!({"name": "ns.sub.other@h:1", "messages_ready": 9}), // namespace `ns.sub`
        ];
        let rows = rows("ns", &[], &["quiet".to_string()], &queues);
        let names: Vec<&str> = rows.iter().map(|r| r.task.as_str()).collect();
        assert_eq!(names, ["quiet", "reload"], "own queues are not task types");
        let reload = &rows[1];
        assert_eq!(reload.broadcast_workers, Some(2));
        assert_eq!(
            (reload.ready, reload.running, reload.consumers, reload.dead),
            (Some(3), Some(1), Some(2), Some(3))
        );
        assert_eq!(
            reload.publish_rate, None,
            "one queue reported a rate, the other not yet: unknown, not 2.0"
        );
        // Declared broadcast, no worker running: zero workers, nothing waiting.
        let quiet = &rows[0];
        assert_eq!((quiet.broadcast_workers, quiet.ready), (Some(0), Some(0)));
    }
}
