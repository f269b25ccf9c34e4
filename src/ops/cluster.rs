//! The cluster as an operator checks it: which nodes are up, and for each quorum queue of the
//! namespace its leader and which of its members are online. Read from the management API
//! (`/api/nodes`, and the queue list's `leader`, `members`, `online`); building it from the
//! API's JSON is pure and unit-tested.

use serde::Serialize;
use serde_json::Value;

use crate::error::Result;
use crate::ops::management::Management;

/// One RabbitMQ node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    /// `rabbit@host`.
    pub name: String,
    /// Up and part of the cluster now.
    pub running: bool,
}

/// One quorum queue's replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Replicas {
    /// Queue name.
    pub queue: String,
    /// The node that leads it, when one does (none while it elects).
    pub leader: Option<String>,
    /// Every member node.
    pub members: Vec<String>,
    /// Members online now; fewer than a majority of `members` and the queue stops.
    pub online: Vec<String>,
}

impl Replicas {
    /// Whether a majority of its members are online (the queue accepts and delivers).
    pub fn has_quorum(&self) -> bool {
        self.online.len() * 2 > self.members.len()
    }
}

/// Nodes and the namespace's quorum queues.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Cluster {
    /// Every node the broker knows.
    pub nodes: Vec<Node>,
    /// The namespace's quorum queues (classic queues have no replicas to show).
    pub quorum: Vec<Replicas>,
}

fn names(v: &Value) -> Vec<String> {
    (v.as_array().into_iter().flatten())
        .filter_map(|n| n.as_str().map(str::to_string))
        .collect()
}

/// The cluster from `/api/nodes` items and the namespace's queue list (with columns
/// `name,type,leader,members,online`).
pub fn from_api(nodes: &[Value], queues: &[Value]) -> Cluster {
    Cluster {
        nodes: nodes
            .iter()
            .filter_map(|n| {
                Some(Node {
                    name: n["name"].as_str()?.to_string(),
                    running: n["running"].as_bool().unwrap_or(false),
                })
            })
            .collect(),
        quorum: queues
            .iter()
            .filter(|q| q["type"] == "quorum")
            .filter_map(|q| {
                Some(Replicas {
                    queue: q["name"].as_str()?.to_string(),
                    leader: q["leader"].as_str().map(str::to_string),
                    members: names(&q["members"]),
                    online: names(&q["online"]),
                })
            })
            .collect(),
    }
}

/// Reads the cluster of namespace `ns` in `vhost`.
///
/// # Errors
/// [`crate::error::Error::Management`] when the API is unreachable or refuses us.
pub fn fetch(mgmt: &Management, vhost: &str, ns: &str) -> Result<Cluster> {
    let nodes = mgmt.get("nodes?columns=name,running")?;
    let queues = mgmt.namespace_queues(vhost, ns, "name,type,leader,members,online")?;
    Ok(from_api(
        nodes.as_array().map(Vec::as_slice).unwrap_or_default(),
        &queues,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quorum_queues_show_leader_and_members_and_classic_ones_are_left_out() {
        let nodes = [
            json!({"name": "rabbit@a", "running": true}),
            json!({"name": "rabbit@b", "running": false}),
        ];
        let queues = [
            json!({"name": "ns.job", "type": "quorum", "leader": "rabbit@a",
                   "members": ["rabbit@a", "rabbit@b", "rabbit@c"], "online": ["rabbit@a", "rabbit@c"]}),
            json!({"name": "ns.job.dead", "type": "quorum",
                   "members": ["rabbit@a", "rabbit@b", "rabbit@c"], "online": ["rabbit@a"]}),
            json!({"name": "ns.delay.1", "type": "classic"}),
        ];
        let c = from_api(&nodes, &queues);
        assert_eq!(c.nodes.len(), 2);
        assert!(c.nodes[0].running && !c.nodes[1].running);
        assert_eq!(c.quorum.len(), 2, "the classic queue has no replicas");
        assert_eq!(c.quorum[0].leader.as_deref(), Some("rabbit@a"));
        assert!(c.quorum[0].has_quorum(), "2 of 3 online");
        assert_eq!(c.quorum[1].leader, None);
        assert!(!c.quorum[1].has_quorum(), "1 of 3 online");
    }
}
