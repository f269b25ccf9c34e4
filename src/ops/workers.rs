//! The workers connected to a namespace, from what the broker already knows: each worker's
//! connection names its host and pid (`warren worker host:pid`) and Warren's version, and its
//! consumers name the queues (task types) it serves and their prefetch. No worker has to
//! report anything for this.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::config::Settings;
use crate::error::Result;
use crate::ops::management::{Management, enc};

/// One connected worker.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerRow {
    /// The connection's name as the management UI shows it.
    pub connection: String,
    /// Host, from the name.
    pub host: String,
    /// Process id, from the name.
    pub pid: Option<u32>,
    /// Warren's version, from the client properties.
    pub version: Option<String>,
    /// Where it connects from.
    pub peer: Option<String>,
    /// Connected since, unix ms.
    pub connected_at_ms: Option<i64>,
    /// The task types it consumes, with each consumer's prefetch.
    pub tasks: Vec<(String, Option<u64>)>,
}

/// Workers of namespace `ns` from the API's `connections` and `consumers` lists (one vhost's).
pub fn rows(ns: &str, connections: &[Value], consumers: &[Value]) -> Vec<WorkerRow> {
    let mut by_conn: BTreeMap<&str, Vec<(String, Option<u64>)>> = BTreeMap::new();
    for c in consumers {
        let (Some(conn), Some(queue)) = (
            c["channel_details"]["connection_name"].as_str(),
            c["queue"]["name"].as_str(),
        ) else {
            continue;
        };
        // `{ns}.{task}`, a broadcast worker's own `{ns}.{task}@{worker}`, or a limited
        // type's `{ns}.{task}.…` token queue: task names hold no `.` or `@`.
        let Some(rest) = queue.strip_prefix(ns).and_then(|r| r.strip_prefix('.')) else {
            continue;
        };
        let task = rest.split(['@', '.']).next().unwrap_or(rest);
        if task == "control" || task == "delay" || task == "console" {
            continue;
        }
        by_conn
            .entry(conn)
            .or_default()
            .push((task.to_string(), c["prefetch_count"].as_u64()));
    }
    let mut out = Vec::new();
    for c in connections {
        let Some(given) = c["user_provided_name"]
            .as_str()
            .or_else(|| c["client_properties"]["connection_name"].as_str())
        else {
            continue;
        };
        let Some(host_pid) = given.strip_prefix("warren worker ") else {
            continue;
        };
        let name = c["name"].as_str().unwrap_or_default();
        let Some(mut tasks) = by_conn.get(name).cloned() else {
            // a worker of another namespace in the same vhost, or one between connections
            continue;
        };
        tasks.sort();
        tasks.dedup();
        let (host, pid) = match host_pid.rsplit_once(':') {
            // `host:pid`, or `host:pid-N` for a worker's further connections
            Some((h, p)) => (
                h.to_string(),
                p.split('-').next().and_then(|p| p.parse().ok()),
            ),
            None => (host_pid.to_string(), None),
        };
        out.push(WorkerRow {
            connection: given.to_string(),
            host,
            pid,
            version: c["client_properties"]["version"]
                .as_str()
                .map(str::to_string),
            peer: c["peer_host"].as_str().map(str::to_string),
            connected_at_ms: c["connected_at"].as_i64(),
            tasks,
        });
    }
    out.sort_by(|a, b| (&a.host, a.pid).cmp(&(&b.host, b.pid)));
    out
}

/// The workers connected to `settings`' namespace now.
///
/// # Errors
/// [`crate::error::Error::Management`] when the API is unreachable or refuses us.
pub fn fetch(settings: &Settings, mgmt: &Management) -> Result<Vec<WorkerRow>> {
    let vhost = crate::broker::url_parts(&settings.amqp_url)?.vhost;
    let connections = mgmt
        .get(&format!("vhosts/{}/connections", enc(&vhost)))?
        .as_array()
        .cloned()
        .unwrap_or_default();
    let consumers = mgmt
        .get(&format!("consumers/{}", enc(&vhost)))?
        .as_array()
        .cloned()
        .unwrap_or_default();
    Ok(rows(&settings.namespace, &connections, &consumers))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn workers_come_from_their_connections_and_consumers() {
        let connections = [
            json!({"name": "10.0.0.5:4711 -> 10.0.0.1:5672", "user_provided_name": "warren worker web-1:42-3",
                   "client_properties": {"version": "0.1.0"}, "peer_host": "10.0.0.5", "connected_at": 1700}),
            json!({"name": "10.0.0.6:1 -> 10.0.0.1:5672", "user_provided_name": "warren producer web-2:7"}),
            json!({"name": "10.0.0.7:1 -> 10.0.0.1:5672", "user_provided_name": "warren worker other-ns:9"}),
        ];
        let consumers = [
            json!({"channel_details": {"connection_name": "10.0.0.5:4711 -> 10.0.0.1:5672"}, "queue": {"name": "ns.mail"}, "prefetch_count": 16}),
            json!({"channel_details": {"connection_name": "10.0.0.5:4711 -> 10.0.0.1:5672"}, "queue": {"name": "ns.reload@web-1:42"}, "prefetch_count": 4}),
            json!({"channel_details": {"connection_name": "10.0.0.7:1 -> 10.0.0.1:5672"}, "queue": {"name": "x.mail"}, "prefetch_count": 16}),
        ];
        let rows = rows("ns", &connections, &consumers);
        assert_eq!(rows.len(), 1, "{rows:?}");
        let w = &rows[0];
        assert_eq!(
            (w.host.as_str(), w.pid, w.version.as_deref()),
            ("web-1", Some(42), Some("0.1.0"))
        );
        assert_eq!(
            w.tasks,
            [
                ("mail".to_string(), Some(16)),
                ("reload".to_string(), Some(4))
            ]
        );
    }
}
