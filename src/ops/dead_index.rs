//! A dead queue read once into memory, then filtered and paged: what the console browses.
//!
//! AMQP cannot look at a message without taking it: every read of a queue is a delivery, and
//! giving the message back raises a quorum queue's delivery count and, on a quorum queue,
//! moves it to the back. So a browser must not read the queue per page view. The console
//! takes one [`Snapshot`] of a dead queue (every message delivered once and all of them
//! returned at once, in order, by [`super::dlq::snapshot`]), and answers every page, filter
//! and detail view from it until it is refreshed or an action changes the queue. Warren's dead
//! queues carry no delivery limit, so the count a snapshot adds drops nothing; and because
//! the snapshot holds every message before giving any back, the queue's order is kept.
//!
//! Memory is bounded by what each entry keeps ([`super::dead_entry::keep_for`]). Filtering
//! and paging are pure and unit-tested.

use std::time::Duration;

use serde::Serialize;

use super::dead_entry::Entry;
use crate::error::{Error, Result};

/// Largest page.
pub const PER_PAGE_MAX: usize = 500;

/// Every message of one dead queue at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Snapshot {
    /// The queue read.
    pub queue: String,
    /// When, unix ms.
    pub taken_at_ms: i64,
    /// The messages, in queue order.
    pub entries: Vec<Entry>,
    /// Messages the queue held beyond what one snapshot reads ([`super::dlq::SCAN_MAX`]).
    pub not_read: u64,
}

impl Snapshot {
    /// The entry with task id `id` (the first, for a broadcast type's several copies).
    pub fn find(&self, id: &str) -> Option<&Entry> {
        self.entries
            .iter()
            .find(|e| e.task.id.as_deref() == Some(id))
    }

    /// The entries `filter` matches at `now_ms`.
    pub fn matching<'a>(
        &'a self,
        filter: &'a Filter,
        now_ms: i64,
    ) -> impl Iterator<Item = &'a Entry> {
        self.entries
            .iter()
            .filter(move |e| filter.matches(e, now_ms))
    }

    /// The body bytes the snapshot keeps.
    pub fn kept_bytes(&self) -> usize {
        self.entries.iter().map(|e| e.task.payload.len()).sum()
    }

    /// How many entries each reason has, most first (ties by name).
    pub fn reasons(&self) -> Vec<(String, usize)> {
        let mut by = std::collections::BTreeMap::<String, usize>::new();
        for e in &self.entries {
            *by.entry(e.task.reason.clone().unwrap_or_else(|| "unknown".into()))
                .or_default() += 1;
        }
        let mut v: Vec<_> = by.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }
}

/// Which dead tasks to show or act on. Every field narrows; an empty filter matches all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Filter {
    /// Dead for this reason (`failed`, `expired`, `cancelled`, …).
    pub reason: Option<String>,
    /// At least this many runs.
    pub min_attempts: Option<i64>,
    /// At most this many runs.
    pub max_attempts: Option<i64>,
    /// Dead for at least this long.
    pub older_than: Option<Duration>,
    /// Dead for at most this long.
    pub newer_than: Option<Duration>,
    /// This task id, exactly.
    pub id: Option<String>,
    /// Text found in the payload or the error (case-insensitive).
    pub text: Option<String>,
}

/// The raw text of a filter, as a query string or a form carries it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(default)]
pub struct FilterText {
    /// See [`Filter::reason`].
    pub reason: String,
    /// See [`Filter::min_attempts`].
    pub min_attempts: String,
    /// See [`Filter::max_attempts`].
    pub max_attempts: String,
    /// See [`Filter::older_than`], a duration (`10m`).
    pub older_than: String,
    /// See [`Filter::newer_than`], a duration.
    pub newer_than: String,
    /// See [`Filter::id`].
    pub id: String,
    /// See [`Filter::text`].
    pub q: String,
}

impl FilterText {
    /// The filter it says.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the field, its value and what it takes.
    pub fn parse(&self) -> Result<Filter> {
        let opt = |s: &str| Some(s.trim()).filter(|s| !s.is_empty()).map(str::to_string);
        let int = |name: &str, s: &str| -> Result<Option<i64>> {
            opt(s)
                .map(|v| {
                    v.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                        Error::InvalidInput(format!(
                            "{name} `{v}` is not a count; give a whole number ≥ 0"
                        ))
                    })
                })
                .transpose()
        };
        let dur = |name: &str, s: &str| -> Result<Option<Duration>> {
            opt(s)
                .map(|v| {
                    crate::duration::parse_duration(&v)
                        .map_err(|e| Error::InvalidInput(format!("{name} `{v}`: {e}")))
                })
                .transpose()
        };
        let filter = Filter {
            reason: opt(&self.reason),
            min_attempts: int("min_attempts", &self.min_attempts)?,
            max_attempts: int("max_attempts", &self.max_attempts)?,
            older_than: dur("older_than", &self.older_than)?,
            newer_than: dur("newer_than", &self.newer_than)?,
            id: opt(&self.id),
            text: opt(&self.q),
        };
        if let (Some(lo), Some(hi)) = (filter.min_attempts, filter.max_attempts)
            && lo > hi
        {
            return Err(Error::InvalidInput(format!(
                "min_attempts {lo} is above max_attempts {hi}: nothing could match"
            )));
        }
        Ok(filter)
    }
}

impl Filter {
    /// True when nothing narrows it.
    pub fn is_empty(&self) -> bool {
        *self == Filter::default()
    }

    /// Whether `entry` passes at `now_ms`. A task without a figure a bound asks about (no
    /// attempts, no death time) does not pass that bound.
    pub fn matches(&self, entry: &Entry, now_ms: i64) -> bool {
        let t = &entry.task;
        if let Some(r) = &self.reason
            && t.reason.as_deref().unwrap_or("unknown") != r
        {
            return false;
        }
        let attempts = t.attempts.unwrap_or(1);
        if self.min_attempts.is_some_and(|n| attempts < n)
            || self.max_attempts.is_some_and(|n| attempts > n)
        {
            return false;
        }
        if self.older_than.is_some() || self.newer_than.is_some() {
            let Some(at) = t.dead_at_ms else {
                return false;
            };
            let age = Duration::from_millis(u64::try_from(now_ms - at).unwrap_or(0));
            if self.older_than.is_some_and(|d| age < d) || self.newer_than.is_some_and(|d| age > d)
            {
                return false;
            }
        }
        if let Some(id) = &self.id
            && t.id.as_deref() != Some(id.as_str())
        {
            return false;
        }
        if let Some(q) = &self.text {
            let q = q.to_lowercase();
            let found = t.payload.to_lowercase().contains(&q)
                || t.error
                    .as_deref()
                    .is_some_and(|e| e.to_lowercase().contains(&q));
            if !found {
                return false;
            }
        }
        true
    }
}

/// One page of a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Page {
    /// From 1.
    pub number: usize,
    /// Entries per page, 1..=[`PER_PAGE_MAX`].
    pub per_page: usize,
}

impl Page {
    /// The page `page` of `per_page` entries, as a query string gives them (empty = default:
    /// the first page of 50).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] saying which value is wrong and what it takes.
    pub fn parse(page: Option<&str>, per_page: Option<&str>) -> Result<Page> {
        let number = match page.map(str::trim).filter(|s| !s.is_empty()) {
            None => 1,
            Some(s) => s.parse::<usize>().ok().filter(|n| *n >= 1).ok_or_else(|| {
                Error::InvalidInput(format!(
                    "page `{s}` is not a page number; pages count from 1"
                ))
            })?,
        };
        let per_page = match per_page.map(str::trim).filter(|s| !s.is_empty()) {
            None => 50,
            Some(s) => s
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=PER_PAGE_MAX).contains(n))
                .ok_or_else(|| {
                    Error::InvalidInput(format!(
                        "per_page `{s}` is out of range; give 1 to {PER_PAGE_MAX}"
                    ))
                })?,
        };
        Ok(Page { number, per_page })
    }

    /// Index of this page's first item.
    pub fn offset(&self) -> usize {
        (self.number - 1).saturating_mul(self.per_page)
    }

    /// Pages `total` items fill (at least 1).
    pub fn pages(&self, total: usize) -> usize {
        total.div_ceil(self.per_page).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::dead_entry::tests::entry;

    fn text(f: impl FnOnce(&mut FilterText)) -> Result<Filter> {
        let mut t = FilterText::default();
        f(&mut t);
        t.parse()
    }

    #[test]
    fn each_field_narrows_and_an_empty_filter_matches_all() {
        let now = 1_000_000;
        let e = entry("a1", "failed", 3, now - 120_000, r#"{"user":"Ann"}"#);
        assert!(Filter::default().matches(&e, now));
        let yes = [
            text(|t| t.reason = "failed".into()),
            text(|t| t.min_attempts = "3".into()),
            text(|t| t.max_attempts = "3".into()),
            text(|t| t.older_than = "1m".into()),
            text(|t| t.newer_than = "5m".into()),
            text(|t| t.id = "a1".into()),
            text(|t| t.q = "ANN".into()),
            text(|t| t.q = "error of".into()),
        ];
        for f in yes {
            assert!(f.as_ref().unwrap().matches(&e, now), "{f:?}");
        }
        let no = [
            text(|t| t.reason = "expired".into()),
            text(|t| t.min_attempts = "4".into()),
            text(|t| t.max_attempts = "2".into()),
            text(|t| t.older_than = "5m".into()),
            text(|t| t.newer_than = "1m".into()),
            text(|t| t.id = "a".into()),
            text(|t| t.q = "bob".into()),
        ];
        for f in no {
            assert!(!f.as_ref().unwrap().matches(&e, now), "{f:?}");
        }
    }

    #[test]
    fn bad_filter_values_are_refused_naming_the_field() {
        let e = text(|t| t.min_attempts = "three".into()).unwrap_err();
        assert!(e.to_string().contains("min_attempts `three`"), "{e}");
        let e = text(|t| t.older_than = "soon".into()).unwrap_err();
        assert!(e.to_string().contains("older_than `soon`"), "{e}");
        let e = text(|t| {
            t.min_attempts = "5".into();
            t.max_attempts = "2".into();
        })
        .unwrap_err();
        assert!(e.to_string().contains("nothing could match"), "{e}");
        assert!(text(|t| t.min_attempts = " ".into()).unwrap().is_empty());
    }

    #[test]
    fn pages_count_from_one_and_refuse_bad_numbers() {
        let p = Page::parse(None, None).unwrap();
        assert_eq!((p.number, p.per_page, p.offset()), (1, 50, 0));
        let p = Page::parse(Some("3"), Some("20")).unwrap();
        assert_eq!((p.offset(), p.pages(41), p.pages(0)), (40, 3, 1));
        for (page, per) in [
            ("0", "10"),
            ("-1", "10"),
            ("x", "10"),
            ("1", "0"),
            ("1", "501"),
        ] {
            let e = Page::parse(Some(page), Some(per)).unwrap_err();
            assert!(matches!(e, Error::InvalidInput(_)), "{page} {per}: {e}");
        }
    }

    #[test]
    fn reasons_are_counted_most_first() {
        let s = Snapshot {
            entries: vec![
                entry("1", "failed", 1, 0, "{}"),
                entry("2", "expired", 1, 0, "{}"),
                entry("3", "failed", 1, 0, "{}"),
            ],
            ..Snapshot::default()
        };
        assert_eq!(
            s.reasons(),
            vec![("failed".into(), 2), ("expired".into(), 1)]
        );
        assert_eq!(s.find("3").unwrap().task.id.as_deref(), Some("3"));
        let f = text(|t| t.reason = "failed".into()).unwrap();
        assert_eq!(s.matching(&f, 0).count(), 2);
    }
}
