//! `warren scheduler` (run the schedules, leading or standing by) and `warren schedules`
//! (list them with their next and last firing and the leader).

use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use warren::ops::schedules::Schedules;
use warren::{Error, Result, Settings};

use crate::write_err;

/// `warren schedules ...`
#[derive(Debug, Args)]
pub struct SchedulesArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `warren scheduler`: fires the topology's schedules while it leads, stands by otherwise,
/// until SIGTERM/SIGINT.
pub(crate) async fn run_scheduler(settings: &Settings) -> Result<ExitCode> {
    let scheduler = warren::schedule::Scheduler::new(settings);
    let shutdown = crate::worker::shutdown_on_signals()?;
    tracing::info!(connection = %scheduler.connection_name(), schedules = settings.schedules.len(), "scheduler starting");
    scheduler.run(shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

/// `warren schedules ...`
pub(crate) async fn list(
    settings: &Settings,
    args: SchedulesArgs,
    out: &mut dyn Write,
) -> Result<ExitCode> {
    if settings.schedules.is_empty() {
        return Err(Error::Config(
            "the topology declares no schedule: add a [schedules.NAME] table with `task` and \
             `cron` or `every`"
                .into(),
        ));
    }
    let mgmt = warren::ops::management::Management::from_settings(settings)?;
    let s = settings.clone();
    let schedules = tokio::task::spawn_blocking(move || {
        warren::ops::schedules::fetch(&s, &mgmt, chrono::Utc::now())
    })
    .await
    .map_err(|e| Error::Management(format!("schedules query failed: {e}")))??;
    let text = if args.json {
        serde_json::to_string(&schedules).unwrap_or_default() + "\n"
    } else {
        table(&schedules)
    };
    out.write_all(text.as_bytes()).map_err(write_err)?;
    Ok(ExitCode::SUCCESS)
}

fn table(s: &Schedules) -> String {
    let mut rows = vec![[
        "SCHEDULE".to_string(),
        "TASK".to_string(),
        "WHEN".to_string(),
        "CATCH-UP".to_string(),
        "NEXT".to_string(),
        "LAST".to_string(),
    ]];
    for r in &s.schedules {
        rows.push([
            r.name.clone(),
            r.task.clone(),
            r.cadence.clone(),
            r.catch_up.clone(),
            r.next.clone().unwrap_or_else(|| "-".into()),
            r.last.clone().unwrap_or_else(|| "never".into()),
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut text = String::new();
    for r in &rows {
        let line: Vec<String> = (0..6)
            .map(|i| format!("{:w$}", r[i], w = widths[i]))
            .collect();
        text.push_str(line.join("  ").trim_end());
        text.push('\n');
    }
    match &s.leader {
        Some(name) => text.push_str(&format!("leader: {name}\n")),
        None => text.push_str(
            "leader: none (no scheduler is running: start `warren scheduler` or `warren worker \
             --scheduler`)\n",
        ),
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren::ops::schedules::ScheduleRow;

    #[test]
    fn the_table_shows_each_schedule_and_the_leader() {
        let s = Schedules {
            leader: None,
            schedules: vec![ScheduleRow {
                name: "nightly".into(),
                task: "report".into(),
                cadence: "cron 0 3 * * * UTC".into(),
                catch_up: "latest".into(),
                next: Some("2026-11-24T03:00:00Z".into()),
                last: None,
                last_id: None,
            }],
        };
        let t = table(&s);
        assert!(t.starts_with("SCHEDULE  TASK"), "{t}");
        assert!(
            t.contains(
                "nightly   report  cron 0 3 * * * UTC  latest    2026-11-24T03:00:00Z  never"
            ),
            "{t}"
        );
        assert!(t.contains("leader: none"), "{t}");
    }
}
