//! A plan as RabbitMQ definitions JSON, for operators who import topology through the
//! management UI or API rather than letting Warren declare it. Pure.

use serde_json::{Map, Value, json};

use super::decl::{ArgValue, Destination};
use super::plan::Plan;

impl Plan {
    /// RabbitMQ definitions JSON for this plan (no `vhost` keys): import it into one vhost
    /// with the management UI ("Import definitions") or `POST /api/definitions/{vhost}`.
    pub fn to_definitions(&self) -> Value {
        let exchanges: Vec<Value> = self
            .exchanges
            .iter()
            .map(|e| {
                json!({"name": e.name, "type": e.kind.as_str(), "durable": true,
                       "auto_delete": false, "internal": false, "arguments": arguments(&e.args)})
            })
            .collect();
        let queues: Vec<Value> = self
            .queues
            .iter()
            .map(|q| {
                json!({"name": q.name, "durable": true, "auto_delete": false,
                       "arguments": arguments(&q.args)})
            })
            .collect();
        let bindings: Vec<Value> = self
            .bindings
            .iter()
            .map(|b| {
                let dt = match b.kind {
                    Destination::Queue => "queue",
                    Destination::Exchange => "exchange",
                };
                json!({"source": b.source, "destination": b.destination, "destination_type": dt,
                       "routing_key": b.routing_key, "arguments": {}})
            })
            .collect();
        json!({"exchanges": exchanges, "queues": queues, "bindings": bindings,
               "policies": [], "parameters": []})
    }
}

/// Arguments as a definitions JSON object.
fn arguments(args: &[(&'static str, ArgValue)]) -> Map<String, Value> {
    args.iter()
        .map(|(k, v)| {
            let v = match v {
                ArgValue::Int(i) => json!(i),
                ArgValue::Str(s) => json!(s),
            };
            (k.to_string(), v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::QueueType;
    use crate::topology::plan::tests::plan;

    #[test]
    fn definitions_keep_integer_arguments_as_numbers() {
        let defs = plan(QueueType::Quorum, 7).to_definitions();
        let q = defs["queues"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["name"] == "ns.delay.1")
            .unwrap();
        assert_eq!(q["arguments"]["x-message-ttl"], json!(2000));
        assert_eq!(q["arguments"]["x-queue-type"], json!("quorum"));
        assert_eq!(
            defs["exchanges"][0],
            json!({"name":"ns.tasks","type":"direct","durable":true,"auto_delete":false,"internal":false,"arguments":{}})
        );
        assert!(
            defs["bindings"]
                .as_array()
                .unwrap()
                .iter()
                .any(|b| b["destination_type"] == "exchange")
        );
    }
}
