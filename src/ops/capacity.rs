//! Will a namespace fit the broker's file handle budget?
//!
//! A RabbitMQ 3.10 node derives its file handle budget from its open-file limit, and every
//! quorum queue it hosts draws on that budget whether or not it holds a message. When the
//! budget runs out the node still answers the management API but accepts no new AMQP
//! connection and does not recover by itself (measured on 3.10; `docs/deploying.md` has the
//! figures). Applying a namespace is the moment that
//! adds many quorum queues at once, so `warren topology apply` asks here first.
//!
//! The budget is not visible in the management API (its `fd_used` stayed at 40 while quorum
//! queues were added until the node wedged), so this is an estimate from counts, calibrated on
//! a test machine (`docs/deploying.md`), all under a limit of 1024:
//! - one node took 366 quorum queues and wedged before 398 (~2.5 handles each);
//! - in a three-node cluster, the node the queues were declared through (which leads them
//!   all: 3.10 places a leader on the declaring node) wedged between 203 and 222, while the
//!   other two, holding followers only, still took connections (~4.5 handles per led queue);
//! - idle classic queues cost nothing measurable (976 of them on one node).
//!
//! So only quorum queues count; a cluster is budgeted as if one node led every queue (as it
//! does when one client declares them), on the node with the smallest limit.

use std::collections::HashSet;

use serde_json::Value;

use super::management::Management;
use crate::error::{Error, Result};
use crate::topology::{Plan, QueueType};

/// File handles RabbitMQ keeps back from the open-file limit before it budgets the rest.
const RESERVED_HANDLES: u64 = 100;
/// Share of the budget quorum queues may fill: the rest is headroom for connections.
const USABLE_SHARE: f64 = 0.9;
/// Handles one idle quorum queue draws on a single node (measured wedge: ~380 at 1024).
const HANDLES_PER_QUORUM_QUEUE: f64 = 2.5;
/// Handles a quorum queue draws on the node that leads it in a cluster (measured wedge of the
/// leading node: ~210 at 1024).
const HANDLES_PER_LED_QUORUM_QUEUE: f64 = 5.0;
/// Above this share of the limit, applying still goes ahead but says the node is nearly full.
const TIGHT_SHARE: f64 = 0.8;

/// How many quorum queues a broker of `nodes` running nodes, the smallest with this open-file
/// limit, holds before a node stops accepting connections, with a margin: one node 332 at a
/// limit of 1024 (23 556 at 65 536); a cluster 166 (11 778).
pub fn quorum_queue_limit(fd_total: u64, nodes: u64) -> u64 {
    let usable = fd_total.saturating_sub(RESERVED_HANDLES) as f64 * USABLE_SHARE;
    let per_queue = if nodes > 1 {
        HANDLES_PER_LED_QUORUM_QUEUE
    } else {
        HANDLES_PER_QUORUM_QUEUE
    };
    (usable / per_queue) as u64
}

/// What the broker holds and what applying a plan would add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capacity {
    /// The running node with the smallest open-file limit.
    pub node: String,
    /// Its open-file limit (the management API's `fd_total`).
    pub fd_total: u64,
    /// Running nodes.
    pub nodes: u64,
    /// Quorum queues on the broker now, every vhost.
    pub quorum_queues: u64,
    /// Quorum queues the plan would create (those it declares that do not exist yet).
    pub new_quorum_queues: u64,
}

/// Whether a plan fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Well within the budget (or nothing new to create).
    Fits,
    /// Fits, but the node will be above 80 % of what it holds.
    Tight,
    /// The node would run out of file handles and stop accepting connections.
    WouldNotFit,
}

impl Capacity {
    /// Quorum queues after applying.
    pub fn after(&self) -> u64 {
        self.quorum_queues + self.new_quorum_queues
    }

    /// What the node holds, from [`quorum_queue_limit`].
    pub fn limit(&self) -> u64 {
        quorum_queue_limit(self.fd_total, self.nodes)
    }

    /// The verdict for this plan. Creating nothing always fits: re-applying a namespace on a
    /// full node must not be refused.
    pub fn verdict(&self) -> Verdict {
        let (after, limit) = (self.after(), self.limit());
        if self.new_quorum_queues == 0 {
            Verdict::Fits
        } else if after > limit {
            Verdict::WouldNotFit
        } else if after as f64 > limit as f64 * TIGHT_SHARE {
            Verdict::Tight
        } else {
            Verdict::Fits
        }
    }

    /// The figures in one sentence, for a warning or a refusal.
    pub fn describe(&self) -> String {
        format!(
            "node {} would hold {} quorum queues ({} now + {} new); with its open-file limit of \
             {} it holds about {} before it stops accepting connections (each quorum queue \
             takes ~{} file handles on RabbitMQ 3.10{}). Raise the limit RabbitMQ starts with \
             (systemd LimitNOFILE=65536, a container's `ulimits: nofile`) and restart it, or \
             use queue_type = \"classic\"",
            self.node,
            self.after(),
            self.quorum_queues,
            self.new_quorum_queues,
            self.fd_total,
            self.limit(),
            if self.nodes > 1 {
                HANDLES_PER_LED_QUORUM_QUEUE
            } else {
                HANDLES_PER_QUORUM_QUEUE
            },
            if self.nodes > 1 {
                " on the node that leads it"
            } else {
                ""
            }
        )
    }
}

/// Reads the nodes' limits and the broker's queues, and counts what `plan` would add in
/// `vhost`.
///
/// # Errors
/// [`Error::Management`] / [`Error::ManagementUnreachable`] when the API cannot be read, or
/// reports no running node.
pub fn check(mgmt: &Management, vhost: &str, plan: &Plan) -> Result<Capacity> {
    let nodes = mgmt.get("nodes?columns=name,running,fd_total")?;
    let queues = mgmt.get("queues?columns=name,vhost,type")?;
    census(&nodes, &queues, vhost, plan).ok_or_else(|| {
        Error::Management(format!(
            "{}/api/nodes reports no running node with an open-file limit (fd_total)",
            mgmt.base()
        ))
    })
}

/// [`check`] on the API's answers: `None` when no running node reports `fd_total` (the
/// statistics of a node that just started are not in yet).
fn census(nodes: &Value, queues: &Value, vhost: &str, plan: &Plan) -> Option<Capacity> {
    let running: Vec<&Value> = nodes
        .as_array()?
        .iter()
        .filter(|n| n["running"].as_bool().unwrap_or(true))
        .collect();
    // Every running node counts towards "a cluster", also one whose statistics (fd_total)
    // are not in yet; the limit comes from those that report one.
    let (node, fd_total) = running
        .iter()
        .filter_map(|n| Some((n["name"].as_str()?.to_string(), n["fd_total"].as_u64()?)))
        .min_by_key(|(_, fd)| *fd)?;
    let queues = queues.as_array().map(Vec::as_slice).unwrap_or_default();
    let existing: HashSet<&str> = queues
        .iter()
        .filter(|q| q["vhost"].as_str() == Some(vhost))
        .filter_map(|q| q["name"].as_str())
        .collect();
    let quorum_queues = queues.iter().filter(|q| q["type"] == "quorum").count() as u64;
    let new_quorum_queues = plan
        .queues
        .iter()
        .filter(|q| q.queue_type() == QueueType::Quorum && !existing.contains(q.name.as_str()))
        .count() as u64;
    Some(Capacity {
        node,
        fd_total,
        nodes: running.len() as u64,
        quorum_queues,
        new_quorum_queues,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::Settings;

    fn capacity(fd_total: u64, now: u64, new: u64) -> Capacity {
        Capacity {
            node: "rabbit@a".into(),
            fd_total,
            nodes: 1,
            quorum_queues: now,
            new_quorum_queues: new,
        }
    }

    #[test]
    fn the_limits_stay_below_the_measured_wedge_points() {
        // Measured at 1024: one node took 366 quorum queues and wedged before 398; in a
        // three-node cluster the leading node took 203 and wedged before 222.
        let single = quorum_queue_limit(1024, 1);
        assert!((300..366).contains(&single), "{single}");
        let cluster = quorum_queue_limit(1024, 3);
        assert!((150..203).contains(&cluster), "{cluster}");
        assert!(quorum_queue_limit(65536, 1) > 20_000);
        assert_eq!(quorum_queue_limit(50, 1), 0);
    }

    #[test]
    fn verdicts_follow_the_count_after_applying() {
        let limit = quorum_queue_limit(1024, 1);
        assert_eq!(capacity(1024, 0, 122).verdict(), Verdict::Fits);
        assert_eq!(capacity(1024, 200, 122).verdict(), Verdict::Tight);
        assert_eq!(capacity(1024, limit - 10, 10).verdict(), Verdict::Tight);
        assert_eq!(
            capacity(1024, limit - 10, 11).verdict(),
            Verdict::WouldNotFit
        );
        assert_eq!(capacity(1024, 366, 122).verdict(), Verdict::WouldNotFit);
    }

    #[test]
    fn reapplying_on_a_full_node_is_never_refused() {
        assert_eq!(capacity(1024, 5000, 0).verdict(), Verdict::Fits);
    }

    #[test]
    fn the_description_names_node_figures_and_the_way_out() {
        let text = capacity(1024, 300, 122).describe();
        for part in [
            "rabbit@a",
            "422 quorum queues",
            "300 now + 122 new",
            "1024",
            "LimitNOFILE",
        ] {
            assert!(text.contains(part), "{part} missing from: {text}");
        }
    }

    fn plan(queue_type: &str) -> Plan {
        let toml = format!(
            "namespace = \"cap\"\nqueue_type = \"{queue_type}\"\nmax_delay = \"7s\"\n\
             [tasks.a]\n[tasks.b]\n"
        );
        Settings::from_toml(&toml).unwrap().plan()
    }

    #[test]
    fn census_counts_only_new_quorum_queues_of_this_vhost_on_the_smallest_node() {
        let plan = plan("quorum");
        let planned: Vec<&str> = plan.queues.iter().map(|q| q.name.as_str()).collect();
        assert!(planned.len() > 4);
        let nodes = json!([
            {"name": "rabbit@big", "running": true, "fd_total": 65536},
            {"name": "rabbit@small", "running": true, "fd_total": 1024},
            {"name": "rabbit@down", "running": false},
        ]);
        // A node that just started reports no fd_total yet, but still makes a cluster.
        let young = json!([
            {"name": "rabbit@a", "running": true, "fd_total": 1024},
            {"name": "rabbit@b", "running": true},
        ]);
        assert_eq!(census(&young, &json!([]), "/", &plan).unwrap().nodes, 2);
        // One planned queue exists in this vhost, one in another (so still new here), plus a
        // classic queue that does not count.
        let queues = json!([
            {"name": planned[0], "vhost": "/", "type": "quorum"},
            {"name": planned[1], "vhost": "other", "type": "quorum"},
            {"name": "someone.else", "vhost": "/", "type": "classic"},
        ]);
        let c = census(&nodes, &queues, "/", &plan).unwrap();
        assert_eq!(c.node, "rabbit@small");
        assert_eq!(c.fd_total, 1024);
        assert_eq!(c.nodes, 2, "the stopped node does not count");
        assert_eq!(c.quorum_queues, 2);
        // Every planned queue but the control stream is quorum; one of them exists already.
        let quorum = plan
            .queues
            .iter()
            .filter(|q| q.queue_type() == QueueType::Quorum);
        assert_eq!(c.new_quorum_queues, quorum.count() as u64 - 1);
    }

    #[test]
    fn a_classic_namespace_adds_no_quorum_queues() {
        let nodes = json!([{"name": "rabbit@a", "running": true, "fd_total": 1024}]);
        let c = census(&nodes, &json!([]), "/", &plan("classic")).unwrap();
        assert_eq!(c.new_quorum_queues, 0);
        assert_eq!(c.verdict(), Verdict::Fits);
    }

    #[test]
    fn no_running_node_with_figures_is_no_answer() {
        let plan = plan("quorum");
        assert!(
            census(
                &json!([{"name": "n", "running": true}]),
                &json!([]),
                "/",
                &plan
            )
            .is_none()
        );
        assert!(census(&json!({"error": "x"}), &json!([]), "/", &plan).is_none());
    }
}
