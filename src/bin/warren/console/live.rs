//! One poller for every viewer: it reads the management API once per refresh and publishes
//! the figures on a watch channel that every page and event stream reads. Ten open browsers
//! cost the API what one does; `/api/health` counts the polls so a test can see it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use warren::ops::cluster::Cluster;
use warren::ops::management::Management;
use warren::ops::status::Status;
use warren::{Result, Settings};

/// The latest figures.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Figures {
    /// The status, once one poll answered.
    pub status: Option<Status>,
    /// Nodes up and each quorum queue's leader and members online, once one poll answered.
    pub cluster: Option<Cluster>,
    /// Why the last poll failed, when it did (the figures above are then older).
    pub error: Option<String>,
    /// When the last poll answered, unix ms.
    pub polled_at_ms: i64,
    /// Polls made since the console started.
    pub polls: u64,
}

/// The poller's output.
pub(crate) struct Live {
    figures: watch::Receiver<Arc<Figures>>,
    polls: Arc<AtomicU64>,
}

impl Live {
    /// Starts polling every `refresh`.
    ///
    /// # Errors
    /// [`warren::Error::Config`] for a management URL that cannot be used.
    pub fn start(settings: Settings, refresh: Duration) -> Result<Live> {
        let mgmt = Management::from_settings(&settings)?;
        let (tx, rx) = watch::channel(Arc::new(Figures::default()));
        let polls = Arc::new(AtomicU64::new(0));
        let counter = polls.clone();
        let broker = warren::ops::version::BrokerVersion::read(&mgmt)
            .ok()
            .map(|v| v.to_string());
        tokio::spawn(async move {
            let mut last: Option<(Status, Cluster)> = None;
            loop {
                let (s, m) = (settings.clone(), mgmt.clone());
                let polled = tokio::task::spawn_blocking(move || poll(&s, &m)).await;
                let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
                let mut figures = Figures {
                    status: last.as_ref().map(|l| l.0.clone()),
                    cluster: last.as_ref().map(|l| l.1.clone()),
                    polls: n,
                    polled_at_ms: now_ms(),
                    ..Figures::default()
                };
                match polled {
                    Ok(Ok((mut status, cluster))) => {
                        status.broker = broker.clone();
                        last = Some((status.clone(), cluster.clone()));
                        figures.status = Some(status);
                        figures.cluster = Some(cluster);
                    }
                    Ok(Err(e)) => figures.error = Some(e.to_string()),
                    Err(e) => figures.error = Some(format!("the poll panicked: {e}")),
                }
                if tx.send(Arc::new(figures)).is_err() {
                    return;
                }
                tokio::time::sleep(refresh).await;
            }
        });
        Ok(Live { figures: rx, polls })
    }

    /// The latest figures.
    pub fn now(&self) -> Arc<Figures> {
        self.figures.borrow().clone()
    }

    /// A receiver of every new set of figures (an event stream's).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Figures>> {
        self.figures.clone()
    }

    /// Polls made so far.
    pub fn polls(&self) -> u64 {
        self.polls.load(Ordering::Relaxed)
    }
}

/// One poll: the namespace's status and its cluster (two more API calls, shared by every
/// viewer like the rest).
fn poll(settings: &Settings, mgmt: &Management) -> Result<(Status, Cluster)> {
    let status = warren::ops::status::fetch(settings, mgmt)?;
    let cluster = warren::ops::cluster::fetch(mgmt, &status.vhost, &settings.namespace)?;
    Ok((status, cluster))
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
