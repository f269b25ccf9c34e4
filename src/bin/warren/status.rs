//! `warren status`: one row per task type, once or every `--watch` interval.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use warren::duration::parse_duration;
use warren::ops::status::Status;
use warren::ops::version::BrokerVersion;
use warren::{Error, Result, Settings};

use crate::write_err;

/// `warren status ...`
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON (figures the broker has not reported yet are null).
    #[arg(long)]
    pub json: bool,
    /// Refresh every interval, at least 1s [`--watch` alone: 2s] (in place on a terminal).
    #[arg(long, value_parser = parse_watch, num_args = 0..=1, default_missing_value = "2s")]
    pub watch: Option<Duration>,
}

/// Shortest `--watch` interval: the management API recomputes its statistics every 5 s, and a
/// tighter loop only loads it (a 0 s watch queried it ~150 times a second).
const WATCH_MIN: Duration = Duration::from_secs(1);

fn parse_watch(text: &str) -> std::result::Result<Duration, String> {
    let every = parse_duration(text)?;
    if every < WATCH_MIN {
        return Err(format!(
            "a watch interval of `{text}` is below 1s; the broker's statistics change every 5s"
        ));
    }
    Ok(every)
}

/// How long `status` waits for an AMQP connection to count queues.
const AMQP_WAIT: Duration = Duration::from_secs(3);

/// `warren status ...`
pub(crate) async fn run(
    settings: &Settings,
    args: StatusArgs,
    out: &mut dyn Write,
) -> Result<ExitCode> {
    let mgmt = warren::ops::management::Management::from_settings(settings)?;
    let in_place = args.watch.is_some() && std::io::stdout().is_terminal() && !args.json;
    // Once, not per refresh: the version does not change under a watch.
    let m = mgmt.clone();
    let broker = tokio::task::spawn_blocking(move || BrokerVersion::read(&m).ok())
        .await
        .ok()
        .flatten()
        .map(|v| v.to_string());
    // Ready, consumers, dead and delayed are counted over AMQP, which answers at once (the
    // management API samples every 5 s, and can show a re-created queue's old figures).
    // Connected once; a broker that does not answer over AMQP in 3 s leaves the API's figures.
    let mut amqp: Option<Option<lapin::Connection>> = None;
    loop {
        let (s, m) = (settings.clone(), mgmt.clone());
        let mut status = tokio::task::spawn_blocking(move || warren::ops::status::fetch(&s, &m))
            .await
            .map_err(|e| Error::Management(format!("status query failed: {e}")))??;
        status.broker = broker.clone();
        // Under `--watch`, a connection the broker closed (a restart) is opened again.
        if let Some(Some(conn)) = &amqp
            && !conn.status().connected()
        {
            amqp = None;
        }
        if status.queues > 0 {
            let conn = match &amqp {
                Some(conn) => conn.as_ref(),
                None => {
                    let url = settings.broker_url();
                    let name = "warren status";
                    let opened = warren::broker::connect(&url, name, Some(AMQP_WAIT))
                        .await
                        .ok();
                    amqp.insert(opened).as_ref()
                }
            };
            if let Some(conn) = conn {
                warren::ops::status::count_over_amqp(&mut status, settings, conn).await;
            }
        }
        if status.queues == 0 && !args.json {
            let missing = format!(
                "namespace `{}` has no queues in vhost `{}`: apply its topology with `warren \
                 topology apply`, or check --namespace and the AMQP URL's vhost",
                status.namespace, status.vhost
            );
            match args.watch {
                None => {
                    eprintln!("error: {missing}");
                    return Ok(ExitCode::from(1));
                }
                Some(_) => writeln!(out, "{missing}").map_err(write_err)?,
            }
        }
        let text = if args.json {
            serde_json::to_string(&status).unwrap_or_default() + "\n"
        } else {
            table(&status)
        };
        if in_place {
            // Home the cursor and clear the screen, then draw.
            write!(out, "\x1b[H\x1b[2J").map_err(write_err)?;
        }
        write!(out, "{text}").map_err(write_err)?;
        out.flush().map_err(write_err)?;
        match args.watch {
            None => {
                if let Some(Some(conn)) = &amqp {
                    warren::broker::close_connection(conn, "status shown").await;
                }
                return Ok(ExitCode::SUCCESS);
            }
            Some(every) => tokio::time::sleep(every).await,
        }
    }
}

fn cell<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "?".to_string(), |v| v.to_string())
}

/// A rate per second (never negative: `ops::status` reads them so).
fn rate(v: Option<f64>) -> String {
    v.map_or_else(|| "?".to_string(), |r| format!("{r:.1}/s"))
}

/// The status as an aligned table; `?` marks figures the broker has not reported yet.
/// A row's limits: `2/3 at once` (tokens held / limit), `5/s`, both, or `-`.
fn limit(r: &warren::ops::status::Row) -> String {
    let mut parts = Vec::new();
    if let Some(n) = r.concurrency_limit {
        parts.push(format!("{}/{n} at once", cell(r.limit_in_use)));
    }
    if let Some(rate) = &r.rate_limit {
        parts.push(rate.clone());
    }
    match parts.is_empty() {
        true => "-".to_string(),
        false => parts.join(", "),
    }
}

pub(crate) fn table(status: &Status) -> String {
    let header = [
        "TASK",
        "READY",
        "RUNNING",
        "CONSUMERS",
        "DEAD",
        "PUBLISH",
        "ACK",
        "LIMIT",
    ];
    let mut rows: Vec<[String; 8]> = vec![header.map(str::to_string)];
    for r in &status.tasks {
        let (mut task, consumers) = match r.broadcast_workers {
            Some(n) => (
                format!("{} (broadcast)", r.task),
                format!("{n} worker{}", if n == 1 { "" } else { "s" }),
            ),
            None => (r.task.clone(), cell(r.consumers)),
        };
        if r.paused {
            task.push_str(" (paused)");
        }
        rows.push([
            task,
            cell(r.ready),
            cell(r.running),
            consumers,
            cell(r.dead),
            rate(r.publish_rate),
            rate(r.ack_rate),
            limit(r),
        ]);
    }
    let unknown = status.delayed.is_none()
        || rows[1..]
            .iter()
            .any(|r| r.iter().any(|c| c == "?" || c.starts_with("?/")));
    let widths: Vec<usize> = (0..8)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = format!(
        "namespace `{}` in vhost `{}` on {}\n",
        status.namespace,
        status.vhost,
        status
            .broker
            .as_deref()
            .unwrap_or("a broker of unknown version")
    );
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == 0 {
                    format!("{c:<w$}", w = widths[i])
                } else {
                    format!("{c:>w$}", w = widths[i])
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    if status.tasks.is_empty() {
        out.push_str(
            "(no task types: declare some under [tasks] and run `warren topology apply`)\n",
        );
    }
    if status.tasks.iter().any(|r| r.broadcast_workers.is_some()) {
        out.push_str(
            "broadcast: every worker running the type gets its own queue; READY and RUNNING \
             add up all of them\n",
        );
    }
    if let Some(s) = &status.schedules {
        match &s.leader {
            Some(leader) => out.push_str(&format!("schedules, led by {leader}:\n")),
            None => out.push_str(
                "schedules: NO SCHEDULER LEADS, nothing fires (run `warren scheduler` or \
                 `warren worker --scheduler`):\n",
            ),
        }
        for r in &s.schedules {
            out.push_str(&format!(
                "  {} -> {}, {}; next {}, last {}\n",
                r.name,
                r.task,
                r.cadence,
                r.next.as_deref().unwrap_or("-"),
                r.last.as_deref().unwrap_or("never")
            ));
        }
    }
    for r in &status.tasks {
        if let Some(declared) = &r.declared_limits {
            out.push_str(&format!(
                "`{}`: limits changed live (`warren limit`); the topology file says {declared} \
                 (`warren topology apply` puts it back)\n",
                r.task
            ));
        }
        if !r.limit_holders.is_empty() {
            let held: Vec<String> = (r.limit_holders.iter())
                .map(|h| format!("{} ×{}", h.connection, h.tokens))
                .collect();
            out.push_str(&format!(
                "`{}` limit tokens held by: {}\n",
                r.task,
                held.join(", ")
            ));
        }
    }
    // The ladder is shared by every task type of the namespace: one figure, not one per row.
    out.push_str(&format!(
        "delayed (the namespace's delay ladder): {}\n",
        cell(status.delayed)
    ));
    if unknown {
        out.push_str(
            "? = not reported by the broker: a new queue's figures arrive within 5 s; a rate \
             stays ? until the queue sees traffic of that kind\n",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren::ops::status::Row;

    fn status_of(tasks: Vec<Row>, delayed: Option<u64>) -> Status {
        Status {
            namespace: "ns".into(),
            vhost: "/".into(),
            broker: None,
            queues: 3,
            delayed,
            tasks,
            schedules: None,
        }
    }

    #[test]
    fn every_unknown_figure_is_explained() {
        let known = Row {
            task: "mail".into(),
            ready: Some(0),
            running: Some(0),
            consumers: Some(1),
            publish_rate: Some(0.0),
            ack_rate: Some(0.0),
            dead: Some(0),
            ..Row::default()
        };
        let t = table(&status_of(vec![known.clone()], Some(0)));
        assert_eq!(t.matches("0.0/s").count(), 2, "{t}");
        assert!(!t.contains('?'), "nothing unknown, no footnote: {t}");
        // Only DEAD unknown (a dead queue's first statistics not in yet).
        let dead_unknown = Row {
            dead: None,
            ..known.clone()
        };
        let t = table(&status_of(vec![dead_unknown], Some(0)));
        assert!(t.contains("arrive within 5 s"), "{t}");
        // Only the ladder unknown.
        let t = table(&status_of(vec![known], None));
        assert!(
            t.contains("delay ladder): ?\n") && t.contains("arrive within 5 s"),
            "{t}"
        );
    }

    #[test]
    fn schedules_show_their_leader_or_say_loudly_that_none_leads() {
        let row = warren::ops::schedules::ScheduleRow {
            name: "beat".into(),
            task: "job".into(),
            cadence: "every 1m".into(),
            catch_up: "latest".into(),
            next: Some("2026-12-04T03:00:00Z".into()),
            last: None,
            last_id: None,
        };
        let mut status = status_of(Vec::new(), Some(0));
        status.schedules = Some(warren::ops::schedules::Schedules {
            leader: None,
            schedules: vec![row.clone()],
        });
        let t = table(&status);
        assert!(t.contains("NO SCHEDULER LEADS"), "{t}");
        assert!(
            t.contains("beat -> job, every 1m; next 2026-12-04T03:00:00Z, last never"),
            "{t}"
        );
        status.schedules = Some(warren::ops::schedules::Schedules {
            leader: Some("warren scheduler vm:42".into()),
            schedules: vec![row],
        });
        let t = table(&status);
        assert!(
            t.contains("schedules, led by warren scheduler vm:42:"),
            "{t}"
        );
    }

    #[test]
    fn the_table_marks_unknown_figures() {
        let row = |task: &str| Row {
            task: task.into(),
            ready: Some(3),
            delayed_in_namespace: Some(7),
            ..Row::default()
        };
        let status = Status {
            namespace: "ns".into(),
            vhost: "/".into(),
            broker: Some("RabbitMQ 3.10.8 (Erlang 25.2.3)".into()),
            queues: 30,
            delayed: Some(7),
            tasks: vec![row("mail"), row("resize")],
            schedules: None,
        };
        let t = table(&status);
        assert!(t.contains("TASK") && t.contains("mail"), "{t}");
        assert!(t.lines().nth(2).unwrap().contains('?'), "{t}");
        assert!(t.contains("not reported by the broker"), "{t}");
        // The namespace-wide ladder figure is shown once, not on every row
        assert_eq!(t.matches('7').count(), 1, "{t}");
        assert!(
            t.contains("delayed (the namespace's delay ladder): 7"),
            "{t}"
        );
    }
}
