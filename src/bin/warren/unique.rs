//! `warren unique list | free`: the unique keys of a task type, and freeing one that
//! outlived its task.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::SystemTime;

use clap::Subcommand;
use warren::ops::unique::HeldKey;
use warren::{Producer, Result, Settings};

use crate::write_err;

/// `warren unique ...`
#[derive(Debug, Subcommand)]
pub enum UniqueCommand {
    /// Show the held keys of a task type: held by a task, or by a `unique_for` window.
    List {
        /// Task type.
        task: String,
    },
    /// Free a key whatever holds it, so that the next enqueue with it is accepted.
    Free {
        /// Task type.
        task: String,
        /// The key, as given to `--unique`, or as `warren unique list` shows it.
        key: String,
    },
}

/// `warren unique ...`
pub(crate) async fn run(
    settings: &Settings,
    cmd: UniqueCommand,
    topology: Option<&Path>,
    out: &mut dyn Write,
) -> Result<ExitCode> {
    match cmd {
        UniqueCommand::List { task } => {
            crate::enqueue::check_declared(settings, &task, topology)?;
            let mgmt = warren::ops::management::Management::from_settings(settings)?;
            let keys = warren::ops::unique::list(settings, &mgmt, &task).await?;
            out.write_all(table(&keys, SystemTime::now()).as_bytes())
                .map_err(write_err)?;
        }
        UniqueCommand::Free { task, key } => {
            crate::enqueue::check_declared(settings, &task, topology)?;
            let producer = Producer::with_role(settings, "cli")?;
            let freed = producer.free_unique(&task, &key).await;
            producer.close().await;
            let line = match freed? {
                true => format!(
                    "freed unique key `{key}` of `{task}`: the next enqueue with it is accepted"
                ),
                false => format!("unique key `{key}` of `{task}` was not held"),
            };
            writeln!(out, "{line}").map_err(write_err)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One row per key: KEY, HELD BY (its task, its window or both) and SINCE.
fn table(keys: &[HeldKey], now: SystemTime) -> String {
    if keys.is_empty() {
        return "no unique key is held\n".to_string();
    }
    let mut rows = vec![[
        "KEY".to_string(),
        "HELD BY".to_string(),
        "SINCE".to_string(),
    ]];
    for k in keys {
        let by = match (k.by_task, k.by_window) {
            (true, true) => "task, window",
            (true, false) => "task",
            _ => "window",
        };
        let since = k.since.map_or_else(
            || "?".to_string(),
            |t| {
                format!(
                    "{}s ago",
                    now.duration_since(t).unwrap_or_default().as_secs()
                )
            },
        );
        rows.push([k.key.clone(), by.to_string(), since]);
    }
    let widths: Vec<usize> = (0..2)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut text = String::new();
    for r in rows {
        text.push_str(&format!(
            "{:<w0$}  {:<w1$}  {}\n",
            r[0],
            r[1],
            r[2],
            w0 = widths[0],
            w1 = widths[1]
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn keys_read_as_a_table_and_none_says_so() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        assert_eq!(table(&[], now), "no unique key is held\n");
        let keys = [
            HeldKey {
                key: "k-1".into(),
                by_task: true,
                by_window: false,
                since: Some(now - Duration::from_secs(90)),
            },
            HeldKey {
                key: "h-0123456789abcdef0123456789abcdef01234567".into(),
                by_task: true,
                by_window: true,
                since: None,
            },
            HeldKey {
                key: "w".into(),
                by_task: false,
                by_window: true,
                since: Some(now - Duration::from_secs(5)),
            },
        ];
        assert_eq!(
            table(&keys, now),
            "KEY                                         HELD BY       SINCE\n\
             k-1                                         task          90s ago\n\
             h-0123456789abcdef0123456789abcdef01234567  task, window  ?\n\
             w                                           window        5s ago\n"
        );
    }
}
