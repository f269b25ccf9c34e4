//! When a schedule fires: a cron expression read in a time zone, or a fixed period. Pure.
//!
//! A firing's time (its *slot*) is computed, never remembered: every scheduler replica works
//! out the same slots from the topology file alone, so a leader that takes over needs from the
//! broker only the last slot fired (the schedule's record queue). A period's slots are the multiples
//! of it since 1970-01-01T00:00:00Z (`every = "10m"` fires at :00, :10, :20…), the same on
//! every host whatever time each one started.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

/// Most missed firings `catch_up = "all"` fires after a takeover; older ones are skipped,
/// with a warning. A per-second schedule down for a day would otherwise enqueue 86 400 tasks
/// at once.
pub const CATCH_UP_MAX: usize = 1000;

/// How a schedule's slots are spaced.
#[derive(Debug, Clone, PartialEq)]
pub enum Cadence {
    /// Every this long (whole seconds, at least one), at its multiples since the Unix epoch.
    Every(Duration),
    /// The times a cron expression matches in a time zone (boxed: a parsed expression is
    /// large, and the period is the common case).
    Cron(Box<CronCadence>),
}

/// A parsed cron expression and the time zone its fields are read in.
#[derive(Debug, Clone)]
pub struct CronCadence {
    pattern: String,
    cron: croner::Cron,
    zone: chrono_tz::Tz,
}

impl PartialEq for CronCadence {
    fn eq(&self, other: &Self) -> bool {
        self.pattern == other.pattern && self.zone == other.zone
    }
}

impl CronCadence {
    /// Parses `pattern` (5 fields, or 6 with seconds first; `@daily` and the like) read in
    /// time zone `zone` (an IANA name such as `Europe/Berlin`).
    ///
    /// # Errors
    /// A sentence naming what does not parse: the pattern or the zone.
    pub fn new(pattern: &str, zone: &str) -> Result<CronCadence, String> {
        let cron: croner::Cron = pattern.parse().map_err(|e: croner::errors::CronError| {
            format!(
                "cron expression `{pattern}` does not parse ({e}); write minute hour day month \
                 weekday, e.g. \"0 3 * * *\" (03:00 every day) or \"*/15 * * * *\""
            )
        })?;
        let zone: chrono_tz::Tz = zone.parse().map_err(|_| {
            format!(
                "time zone `{zone}` is not an IANA time zone name; write e.g. \"UTC\", \
                 \"Europe/Berlin\", \"America/New_York\""
            )
        })?;
        let cadence = CronCadence {
            pattern: pattern.to_string(),
            cron,
            zone,
        };
        // A pattern that never matches (`0 0 30 2 *`, February 30th) parses; refuse it here,
        // or a scheduler would idle forever without saying why.
        if cadence.next_after(Utc::now()).is_none() {
            return Err(format!(
                "cron expression `{pattern}` never matches a date (e.g. February 30th)"
            ));
        }
        Ok(cadence)
    }

    /// The pattern as written.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The time zone's name.
    pub fn zone(&self) -> &str {
        self.zone.name()
    }

    fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = t.with_timezone(&self.zone);
        match self.cron.find_next_occurrence(&local, false) {
            Ok(next) => Some(next.with_timezone(&Utc)),
            Err(e) => {
                tracing::warn!(cron = %self.pattern, after = %t, error = %e, "no next match of the cron expression");
                None
            }
        }
    }

    fn at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = t.with_timezone(&self.zone);
        // No match before `t` is normal for a walk back to the record; not worth a warning.
        let prev = self.cron.find_previous_occurrence(&local, true).ok()?;
        Some(prev.with_timezone(&Utc))
    }
}

/// Parses `every`: a duration of whole seconds, at least one second.
///
/// # Errors
/// A sentence quoting the value and saying what is accepted.
pub fn parse_every(text: &str) -> Result<Duration, String> {
    let d = crate::duration::parse_duration(text)?;
    if d < Duration::from_secs(1) || d.subsec_nanos() != 0 {
        return Err(format!(
            "every = \"{text}\" must be a whole number of seconds, at least 1s (a firing is a \
             task enqueued with a confirm: sub-second schedules belong in a loop of your own)"
        ));
    }
    Ok(d)
}

impl Cadence {
    /// The first slot strictly after `t`; `None` when there is none (a cron expression that
    /// stopped matching, e.g. one limited to past years).
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Cadence::Every(period) => {
                let p = period_ms(*period);
                let next = (t.timestamp_millis().div_euclid(p) + 1) * p;
                Utc.timestamp_millis_opt(next).single()
            }
            Cadence::Cron(c) => c.next_after(t),
        }
    }

    /// The last slot at or before `t`.
    pub fn at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Cadence::Every(period) => {
                let p = period_ms(*period);
                Utc.timestamp_millis_opt(t.timestamp_millis().div_euclid(p) * p)
                    .single()
            }
            Cadence::Cron(c) => c.at_or_before(t),
        }
    }

    /// The slots after `after` (all of them when `None`, i.e. the schedule never fired) up to
    /// and including `until`, ascending: at most `limit` of them, the latest ones, and whether
    /// earlier ones were left out.
    pub fn slots_between(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
    ) -> (Vec<DateTime<Utc>>, bool) {
        let mut slots = Vec::new();
        let mut cursor = until;
        // Walked backwards from `until`, so the work is bounded by `limit` however long the
        // gap: a per-second schedule down for a month costs `limit` steps, not 2.6 million.
        while let Some(slot) = self.at_or_before(cursor) {
            if slot <= after {
                break;
            }
            if slots.len() == limit {
                slots.reverse();
                return (slots, true);
            }
            slots.push(slot);
            cursor = slot - chrono::Duration::milliseconds(1);
        }
        slots.reverse();
        (slots, false)
    }
}

fn period_ms(period: Duration) -> i64 {
    i64::try_from(period.as_millis())
        .unwrap_or(i64::MAX)
        .max(1000)
}

/// What a leader does with firings that fell due while nobody led (`catch_up = ...`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CatchUp {
    /// Fire the most recent missed firing only (the default): a report that should have run
    /// at 03:00 runs once when a scheduler is back, not once per missed day.
    #[default]
    Latest,
    /// Fire every missed firing, oldest first (at most [`CATCH_UP_MAX`]).
    All,
    /// Fire none: the schedule resumes with its next firing.
    None,
}

impl CatchUp {
    /// The name as written in the topology file.
    pub fn as_str(self) -> &'static str {
        match self {
            CatchUp::Latest => "latest",
            CatchUp::All => "all",
            CatchUp::None => "none",
        }
    }

    /// Of `missed` (ascending), the slots this policy fires.
    pub fn pick(self, missed: &[DateTime<Utc>]) -> &[DateTime<Utc>] {
        match self {
            CatchUp::Latest => &missed[missed.len().saturating_sub(1)..],
            CatchUp::All => missed,
            CatchUp::None => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn a_period_fires_at_its_multiples_since_the_epoch() {
        let every = Cadence::Every(Duration::from_secs(600));
        assert_eq!(
            every.next_after(at("2026-11-23T08:03:10Z")),
            Some(at("2026-11-23T08:10:00Z"))
        );
        // Strictly after: a slot time itself moves on to the next one.
        assert_eq!(
            every.next_after(at("2026-11-23T08:10:00Z")),
            Some(at("2026-11-23T08:20:00Z"))
        );
        assert_eq!(
            every.at_or_before(at("2026-11-23T08:10:00Z")),
            Some(at("2026-11-23T08:10:00Z"))
        );
    }

    #[test]
    fn a_cron_expression_is_read_in_its_time_zone() {
        let berlin = Cadence::Cron(Box::new(
            CronCadence::new("0 3 * * *", "Europe/Berlin").unwrap(),
        ));
        // 03:00 in Berlin is 02:00 UTC in winter and 01:00 UTC in summer.
        assert_eq!(
            berlin.next_after(at("2026-11-23T08:00:00Z")),
            Some(at("2026-11-24T02:00:00Z"))
        );
        assert_eq!(
            berlin.next_after(at("2026-07-01T08:00:00Z")),
            Some(at("2026-07-02T01:00:00Z"))
        );
        let utc = Cadence::Cron(Box::new(CronCadence::new("*/15 * * * *", "UTC").unwrap()));
        assert_eq!(
            utc.at_or_before(at("2026-11-23T08:29:59Z")),
            Some(at("2026-11-23T08:15:00Z"))
        );
        // Six fields: seconds first.
        let secs = Cadence::Cron(Box::new(CronCadence::new("*/2 * * * * *", "UTC").unwrap()));
        assert_eq!(
            secs.next_after(at("2026-11-23T08:00:01Z")),
            Some(at("2026-11-23T08:00:02Z"))
        );
    }

    #[test]
    fn bad_patterns_and_zones_say_which_is_wrong() {
        let e = CronCadence::new("0 3 * *", "UTC").unwrap_err();
        assert!(e.contains("`0 3 * *`") && e.contains("0 3 * * *"), "{e}");
        let e = CronCadence::new("61 * * * *", "UTC").unwrap_err();
        assert!(e.contains("`61 * * * *`"), "{e}");
        let e = CronCadence::new("0 3 * * *", "Mars/Olympus").unwrap_err();
        assert!(
            e.contains("`Mars/Olympus`") && e.contains("Europe/Berlin"),
            "{e}"
        );
        let e = CronCadence::new("0 0 30 2 *", "UTC").unwrap_err();
        assert!(e.contains("never matches"), "{e}");
    }

    #[test]
    fn every_takes_whole_seconds_from_one() {
        assert_eq!(parse_every("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_every("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_every("500ms").unwrap_err().contains("at least 1s"));
        assert!(parse_every("1500ms").unwrap_err().contains("whole number"));
        assert!(parse_every("0s").is_err());
        assert!(parse_every("often").unwrap_err().contains("often"));
    }

    #[test]
    fn missed_slots_are_the_latest_ones_after_the_last_firing() {
        let every = Cadence::Every(Duration::from_secs(2));
        let (slots, more) =
            every.slots_between(at("2026-11-23T08:00:00Z"), at("2026-11-23T08:00:07Z"), 100);
        assert_eq!(
            slots,
            vec![
                at("2026-11-23T08:00:02Z"),
                at("2026-11-23T08:00:04Z"),
                at("2026-11-23T08:00:06Z")
            ]
        );
        assert!(!more);
        // A month of a per-second schedule: bounded by the limit, the latest kept.
        let (slots, more) = Cadence::Every(Duration::from_secs(1)).slots_between(
            at("2026-10-23T08:00:00Z"),
            at("2026-11-23T08:00:00Z"),
            CATCH_UP_MAX,
        );
        assert!(more);
        assert_eq!(slots.len(), CATCH_UP_MAX);
        assert_eq!(slots.last(), Some(&at("2026-11-23T08:00:00Z")));
        // Nothing after the last firing yet (a host whose clock is behind the leader's).
        let (slots, _) =
            every.slots_between(at("2026-11-23T08:00:06Z"), at("2026-11-23T08:00:05Z"), 100);
        assert!(slots.is_empty());
    }

    #[test]
    fn catch_up_policies_pick_the_latest_all_or_none() {
        let missed = [
            at("2026-11-21T03:00:00Z"),
            at("2026-11-22T03:00:00Z"),
            at("2026-11-23T03:00:00Z"),
        ];
        assert_eq!(CatchUp::Latest.pick(&missed), &missed[2..]);
        assert_eq!(CatchUp::All.pick(&missed), &missed[..]);
        assert!(CatchUp::None.pick(&missed).is_empty());
        assert!(CatchUp::Latest.pick(&[]).is_empty());
        assert_eq!(CatchUp::default(), CatchUp::Latest);
    }
}
