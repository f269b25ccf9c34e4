//! A worker's view of the control stream: which tasks are cancelled, which types paused, and
//! the runs in progress that a cancel must stop. Fed by [`super::follow`]; read on every
//! delivery, so the common case (nothing cancelled) is one atomic load.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::events::{Event, Record};

/// Cancels, pauses and running tasks of one worker.
#[derive(Debug)]
pub(crate) struct ControlState {
    retention_ms: u64,
    /// False until the first cancel: the per-delivery check is then one load.
    any_cancel: AtomicBool,
    /// task → id → when it was cancelled, unix ms (looked up by `&str`, no allocation).
    cancelled: Mutex<HashMap<String, HashMap<String, u64>>>,
    /// Runs in progress: serial → (task, id, the run's cancel token).
    running: Mutex<HashMap<u64, (String, String, CancellationToken)>>,
    serial: AtomicU64,
    /// Pause state of each task type this worker serves.
    paused: BTreeMap<String, watch::Sender<bool>>,
    /// Live limit state of each task type this worker serves.
    limits: BTreeMap<String, Arc<LiveLimit>>,
}

/// A limited type's live limits in one worker ([`super::limits`]): whether a lowered limit
/// may have left debt to pay, and the start tokens' hold under the rate in force.
#[derive(Debug, Default)]
pub(crate) struct LiveLimit {
    /// The running tokens' debt queue may hold messages: pay before using or giving back.
    pub(crate) running_owed: Arc<AtomicBool>,
    /// The same for the start tokens.
    pub(crate) starts_owed: Arc<AtomicBool>,
    /// How long a start token is held after a start under the rate in force, ms; 0 before
    /// any is known.
    start_hold_ms: AtomicU64,
}

impl LiveLimit {
    /// Puts `limits` in force: a rate's hold time, and debt may be owed.
    pub(crate) fn set(&self, limits: super::limits::Limits) {
        if let Some(rate) = limits.rate {
            let ms = u64::try_from(rate.tokens().1.as_millis()).unwrap_or(u64::MAX);
            self.start_hold_ms.store(ms.max(1), Ordering::Release);
        }
        self.running_owed.store(true, Ordering::Release);
        self.starts_owed.store(true, Ordering::Release);
    }

    /// The hold of a start token under the rate in force, when one is known.
    pub(crate) fn start_hold(&self) -> Option<std::time::Duration> {
        match self.start_hold_ms.load(Ordering::Acquire) {
            0 => None,
            ms => Some(std::time::Duration::from_millis(ms)),
        }
    }
}

impl ControlState {
    /// State for a worker serving `tasks`, keeping cancels for `retention_ms`.
    pub(crate) fn new<'a>(tasks: impl IntoIterator<Item = &'a str>, retention_ms: u64) -> Self {
        let tasks: Vec<&str> = tasks.into_iter().collect();
        ControlState {
            limits: tasks
                .iter()
                .map(|t| (t.to_string(), Arc::default()))
                .collect(),
            retention_ms,
            any_cancel: AtomicBool::new(false),
            cancelled: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            serial: AtomicU64::new(0),
            paused: tasks
                .iter()
                .map(|t| (t.to_string(), watch::channel(false).0))
                .collect(),
        }
    }

    /// Applies one control record read at `now_ms`: a cancel is remembered (and stops the
    /// matching runs), a pause or resume flips its type. Records older than the retention
    /// (a slow stream cleanup) are ignored.
    pub(crate) fn apply(&self, record: &Record, now_ms: u64) {
        match &record.event {
            // Past the retention (the stream drops whole segments, so it may still hold it).
            Event::Cancel { .. } if record.at + self.retention_ms < now_ms => {}
            Event::Cancel { task, ids } => {
                {
                    let mut cancelled = lock(&self.cancelled);
                    let of_task = cancelled.entry(task.clone()).or_default();
                    for id in ids {
                        of_task.insert(id.clone(), record.at);
                    }
                    // Forget the expired ones now and then (on a cancel, never per task).
                    let horizon = now_ms.saturating_sub(self.retention_ms);
                    for ids in cancelled.values_mut() {
                        ids.retain(|_, at| *at >= horizon);
                    }
                    cancelled.retain(|_, ids| !ids.is_empty());
                    // Back to the one-load check once nothing is cancelled any more.
                    self.any_cancel
                        .store(!cancelled.is_empty(), Ordering::Release);
                }
                for (t, id, token) in lock(&self.running).values() {
                    if t == task && ids.contains(id) {
                        tracing::info!(task = %t, id = %id, "cancelled while running; stopping it");
                        token.cancel();
                    }
                }
            }
            Event::Pause { task } => self.set_paused(task, true),
            Event::Resume { task } => self.set_paused(task, false),
            Event::Limit {
                task,
                concurrency,
                rate,
            } => {
                if let Some(live) = self.limits.get(task) {
                    live.set(super::limits::from_parts(*concurrency, rate.as_deref()));
                }
            }
            Event::Marker { .. } => {}
        }
    }

    /// The live limits of `task` (`None` for a type this worker does not serve).
    pub(crate) fn live_limit(&self, task: &str) -> Option<Arc<LiveLimit>> {
        self.limits.get(task).cloned()
    }

    fn set_paused(&self, task: &str, paused: bool) {
        if let Some(tx) = self.paused.get(task) {
            tx.send_if_modified(|p| std::mem::replace(p, paused) != paused);
        }
    }

    /// True when task `id` of `task` is cancelled. A copy replayed from its dead queue at
    /// `replayed_ms` (`warren-replayed-at`) counts as cancelled only by a cancel from after
    /// its replay: the replay was asked for after the cancel. A first enqueue is not compared
    /// with the cancel's time at all (the producer's and the canceller's clocks may differ).
    pub(crate) fn is_cancelled(
        &self,
        task: &str,
        id: &str,
        replayed_ms: impl FnOnce() -> Option<u64>,
    ) -> bool {
        if !self.any_cancel.load(Ordering::Acquire) {
            return false;
        }
        let at = lock(&self.cancelled)
            .get(task)
            .and_then(|ids| ids.get(id))
            .copied();
        at.is_some_and(|at| replayed_ms().is_none_or(|replayed| at >= replayed))
    }

    /// The pause state of `task` (always "running" for a type this worker does not serve).
    pub(crate) fn paused(&self, task: &str) -> watch::Receiver<bool> {
        match self.paused.get(task) {
            Some(tx) => tx.subscribe(),
            None => watch::channel(false).1,
        }
    }

    /// Registers a run of `task` `id`; its token is cancelled by a cancel of that id, or by
    /// [`ControlState::stop_all`]. Unregistered when the guard drops.
    pub(crate) fn run_started(&self, task: &str, id: &str) -> RunGuard<'_> {
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        lock(&self.running).insert(serial, (task.to_string(), id.to_string(), token.clone()));
        RunGuard {
            state: self,
            serial,
            token,
        }
    }

    /// Cancels every run in progress (the worker's grace period is over).
    pub(crate) fn stop_all(&self) {
        for (_, _, token) in lock(&self.running).values() {
            token.cancel();
        }
    }
}

/// A run in progress; unregisters it when dropped.
#[derive(Debug)]
pub(crate) struct RunGuard<'a> {
    state: &'a ControlState,
    serial: u64,
    /// Cancelled when the run must stop.
    pub(crate) token: CancellationToken,
}

impl Drop for RunGuard<'_> {
    fn drop(&mut self) {
        lock(&self.state.running).remove(&self.serial);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(at: u64, event: Event) -> Record {
        Record { at, event }
    }

    #[test]
    fn a_cancel_applies_to_copies_from_before_it_and_stops_matching_runs() {
        let s = ControlState::new(["report"], 1000);
        assert!(!s.is_cancelled("report", "a", || None));
        let run_a = s.run_started("report", "a");
        let run_b = s.run_started("report", "b");
        s.apply(
            &record(
                100,
                Event::Cancel {
                    task: "report".into(),
                    ids: vec!["a".into()],
                },
            ),
            150,
        );
        assert!(s.is_cancelled("report", "a", || None));
        assert!(s.is_cancelled("report", "a", || Some(50)));
        // Replayed after the cancel: it runs.
        assert!(!s.is_cancelled("report", "a", || Some(120)));
        assert!(!s.is_cancelled("report", "b", || None));
        assert!(!s.is_cancelled("other", "a", || None));
        assert!(run_a.token.is_cancelled());
        assert!(!run_b.token.is_cancelled());
        drop(run_a);
        s.stop_all();
        assert!(run_b.token.is_cancelled());
    }

    #[test]
    fn cancels_older_than_the_retention_are_ignored() {
        let s = ControlState::new(["report"], 1000);
        let cancel = Event::Cancel {
            task: "report".into(),
            ids: vec!["a".into()],
        };
        s.apply(&record(100, cancel), 5000);
        assert!(!s.is_cancelled("report", "a", || None));
        // A later cancel prunes the expired ones; with none left, the check is one load.
        let again = Event::Cancel {
            task: "report".into(),
            ids: vec!["a".into()],
        };
        s.apply(&record(4500, again), 5000);
        assert!(s.is_cancelled("report", "a", || None));
        let empty = Event::Cancel {
            task: "other".into(),
            ids: vec![],
        };
        s.apply(&record(9000, empty), 9000);
        assert!(!s.any_cancel.load(Ordering::Acquire));
    }

    #[test]
    fn pause_and_resume_flip_only_their_type() {
        let s = ControlState::new(["report", "mail"], 1000);
        let report = s.paused("report");
        let mail = s.paused("mail");
        s.apply(
            &record(
                1,
                Event::Pause {
                    task: "report".into(),
                },
            ),
            2,
        );
        assert!(*report.borrow());
        assert!(!*mail.borrow());
        s.apply(
            &record(
                3,
                Event::Resume {
                    task: "report".into(),
                },
            ),
            4,
        );
        assert!(!*report.borrow());
        // A type this worker does not serve: nothing to flip.
        s.apply(
            &record(
                5,
                Event::Pause {
                    task: "other".into(),
                },
            ),
            6,
        );
        assert!(!*s.paused("other").borrow());
    }
}
