//! `[schedules.NAME]` tables: periodic tasks, checked with the line of the table they are in.
//!
//! The checks that need the whole file (the task must be declared under `[tasks]`) run after
//! TOML has parsed it, so each problem is given with its schedule's name and line here rather
//! than by TOML itself.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::ScheduleSettings;
use crate::cadence::{Cadence, CatchUp, CronCadence, parse_every};

/// A `[schedules.NAME]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ScheduleFile {
    task: String,
    cron: Option<String>,
    every: Option<String>,
    timezone: Option<String>,
    payload: Option<toml::Value>,
    catch_up: Option<CatchUp>,
}

/// Checks and converts every schedule of a file whose text is `text` and whose task types are
/// `tasks`; every problem found, each naming its schedule and line.
pub(super) fn convert(
    text: &str,
    schedules: BTreeMap<String, toml::Spanned<ScheduleFile>>,
    tasks: &[&str],
    max_payload_bytes: usize,
) -> Result<BTreeMap<String, ScheduleSettings>, Vec<String>> {
    let mut out = BTreeMap::new();
    let mut problems = Vec::new();
    for (name, spanned) in schedules {
        let line = text[..spanned.span().start.min(text.len())]
            .matches('\n')
            .count()
            + 1;
        let at = format!("[schedules.{name}] (line {line})");
        match one(&name, spanned.into_inner(), tasks, max_payload_bytes) {
            Ok(s) => {
                out.insert(name, s);
            }
            Err(mine) => problems.extend(mine.into_iter().map(|p| format!("{at}: {p}"))),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

fn one(
    name: &str,
    file: ScheduleFile,
    tasks: &[&str],
    max_payload_bytes: usize,
) -> Result<ScheduleSettings, Vec<String>> {
    let mut problems = Vec::new();
    if let Err(e) = crate::topology::validate_task_name(name) {
        // The rule and its wording are the task names' (both appear in queue names).
        problems.push(e.replace("task name", "schedule name"));
    }
    if !tasks.contains(&file.task.as_str()) {
        problems.push(format!(
            "task `{}` is not declared; add a [tasks.{}] table or name one of: {}",
            file.task,
            file.task,
            if tasks.is_empty() {
                "(no task is declared)".to_string()
            } else {
                tasks.join(", ")
            }
        ));
    }
    let cadence = match (&file.cron, &file.every) {
        (Some(_), Some(_)) => {
            problems.push("give either `cron` or `every`, not both".to_string());
            None
        }
        (None, None) => {
            problems.push(
                "give `cron` (e.g. cron = \"0 3 * * *\") or `every` (e.g. every = \"10m\")"
                    .to_string(),
            );
            None
        }
        (Some(pattern), None) => {
            match CronCadence::new(pattern, file.timezone.as_deref().unwrap_or("UTC")) {
                Ok(c) => Some(Cadence::Cron(Box::new(c))),
                Err(e) => {
                    problems.push(e);
                    None
                }
            }
        }
        (None, Some(every)) => {
            if file.timezone.is_some() {
                problems.push(
                    "`timezone` applies to `cron` only: an `every` period is the same length in \
                     every zone; remove it, or use cron for wall-clock times"
                        .to_string(),
                );
            }
            match parse_every(every) {
                Ok(d) => Some(Cadence::Every(d)),
                Err(e) => {
                    problems.push(e);
                    None
                }
            }
        }
    };
    let payload = match file.payload {
        None => serde_json::Value::Object(serde_json::Map::new()),
        Some(v) => match serde_json::to_value(v) {
            Ok(json) => json,
            Err(e) => {
                problems.push(format!("`payload` cannot be written as JSON: {e}"));
                serde_json::Value::Null
            }
        },
    };
    let size = serde_json::to_vec(&payload).map_or(0, |b| b.len());
    if size > max_payload_bytes {
        problems.push(format!(
            "`payload` is {size} bytes as JSON, above max_payload_bytes ({max_payload_bytes})"
        ));
    }
    match cadence {
        Some(cadence) if problems.is_empty() => Ok(ScheduleSettings {
            task: file.task,
            cadence,
            payload,
            catch_up: file.catch_up.unwrap_or_default(),
        }),
        _ => Err(problems),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::cadence::{Cadence, CatchUp};
    use crate::config::Settings;

    const TASKS: &str = "[tasks.report]\n[tasks.tick]\n";

    fn err(text: &str) -> String {
        Settings::from_toml(&format!("{TASKS}{text}"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_schedule_reads_its_cadence_zone_payload_and_policy() {
        let s = Settings::from_toml(&format!(
            "{TASKS}
            [schedules.nightly]
            task = \"report\"
            cron = \"0 3 * * *\"
            timezone = \"Europe/Berlin\"
            payload = {{ kind = \"daily\", days = 1 }}
            [schedules.heartbeat]
            task = \"tick\"
            every = \"10m\"
            catch_up = \"all\"
            "
        ))
        .unwrap();
        let nightly = &s.schedules["nightly"];
        assert_eq!(nightly.task, "report");
        let Cadence::Cron(c) = &nightly.cadence else {
            panic!("{nightly:?}")
        };
        assert_eq!((c.pattern(), c.zone()), ("0 3 * * *", "Europe/Berlin"));
        assert_eq!(
            nightly.payload,
            serde_json::json!({"kind": "daily", "days": 1})
        );
        assert_eq!(nightly.catch_up, CatchUp::Latest);
        let hb = &s.schedules["heartbeat"];
        assert_eq!(hb.cadence, Cadence::Every(Duration::from_secs(600)));
        assert_eq!(hb.payload, serde_json::json!({}));
        assert_eq!(hb.catch_up, CatchUp::All);
    }

    #[test]
    fn each_bad_schedule_is_named_with_its_line() {
        // Line 3 (after the two task lines) holds the table header.
        let e = err("[schedules.nightly]\ntask = \"reprot\"\ncron = \"0 3 * * *\"\n");
        assert!(
            e.contains("[schedules.nightly] (line 3)") && e.contains("`reprot`"),
            "{e}"
        );
        assert!(e.contains("report, tick"), "{e}");
        let e = err("[schedules.a]\ntask = \"tick\"\ncron = \"0 25 * * *\"\n");
        assert!(e.contains("(line 3)") && e.contains("`0 25 * * *`"), "{e}");
        let e = err(
            "[schedules.a]\ntask = \"tick\"\ncron = \"0 3 * * *\"\ntimezone = \"Europe/Berln\"\n",
        );
        assert!(e.contains("`Europe/Berln`"), "{e}");
        let e = err("[schedules.a]\ntask = \"tick\"\nevery = \"500ms\"\n");
        assert!(e.contains("at least 1s"), "{e}");
        let e = err("[schedules.a]\ntask = \"tick\"\nevery = \"1m\"\ncron = \"* * * * *\"\n");
        assert!(e.contains("not both"), "{e}");
        let e = err("[schedules.a]\ntask = \"tick\"\n");
        assert!(e.contains("give `cron`"), "{e}");
        let e = err("[schedules.a]\ntask = \"tick\"\nevery = \"1m\"\ntimezone = \"UTC\"\n");
        assert!(e.contains("`timezone` applies to `cron` only"), "{e}");
        let e = err("[schedules.Nightly]\ntask = \"tick\"\nevery = \"1m\"\n");
        assert!(e.contains("schedule name `Nightly`"), "{e}");
        // Two bad schedules: both reported, each with its own line.
        let e = err(
            "[schedules.a]\ntask = \"x\"\nevery = \"1m\"\n[schedules.b]\ntask = \"y\"\nevery = \"1m\"\n",
        );
        assert!(e.contains("(line 3)") && e.contains("(line 6)"), "{e}");
    }

    #[test]
    fn an_unknown_key_in_a_schedule_is_refused_by_the_parser() {
        let e = err("[schedules.a]\ntask = \"tick\"\nevery = \"1m\"\ncatchup = \"all\"\n");
        assert!(e.contains("catchup") && e.contains("line 6"), "{e}");
        let e = err("[schedules.a]\ntask = \"tick\"\nevery = \"1m\"\ncatch_up = \"some\"\n");
        assert!(e.contains("some") && e.contains("latest"), "{e}");
    }
}
