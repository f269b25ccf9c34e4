//! What a declaration is: exchanges, queues with their arguments, and bindings, as plain
//! values that [`super::plan`] assembles and [`super::declare`] sends. Pure.

use serde::Deserialize;

/// Queue type for work, dead and delay queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// Raft-replicated; survives the loss of a minority of cluster nodes. The default.
    #[default]
    Quorum,
    /// Single-node queue; cheaper, no replication.
    Classic,
}

impl QueueType {
    /// The value of the `x-queue-type` argument.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        }
    }
}

/// Exchange type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    /// Exact routing-key match.
    Direct,
    /// Pattern match on dot-separated words.
    Topic,
    /// Every bound queue or exchange, whatever the key.
    Fanout,
}

impl ExchangeKind {
    /// The AMQP name of the type.
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Fanout => "fanout",
        }
    }
}

/// A queue argument value. Integers go on the wire as integers and strings as AMQP long
/// strings: RabbitMQ rejects a TTL sent as a string, and a short string in a field table
/// resets the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgValue {
    /// An integer argument (TTL, delivery limit).
    Int(i64),
    /// A string argument (queue type, dead-letter exchange).
    Str(String),
}

impl std::fmt::Display for ArgValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ArgValue::Int(i) => write!(f, "{i}"),
            ArgValue::Str(s) => write!(f, "{s}"),
        }
    }
}

/// One exchange to declare (always durable, never auto-deleted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeDecl {
    /// Exchange name.
    pub name: String,
    /// Exchange type.
    pub kind: ExchangeKind,
    /// Arguments in a stable order (`alternate-exchange`); empty for most.
    pub args: Vec<(&'static str, ArgValue)>,
}

/// One queue to declare (always durable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDecl {
    /// Queue name.
    pub name: String,
    /// Arguments in a stable order.
    pub args: Vec<(&'static str, ArgValue)>,
}

impl QueueDecl {
    /// The value of argument `key`, if declared.
    pub fn arg(&self, key: &str) -> Option<&ArgValue> {
        self.args.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// Its type: quorum when declared `x-queue-type = quorum`, classic otherwise.
    pub fn queue_type(&self) -> QueueType {
        match self.arg("x-queue-type") {
            Some(ArgValue::Str(t)) if t == QueueType::Quorum.as_str() => QueueType::Quorum,
            _ => QueueType::Classic,
        }
    }
}

/// What a binding points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// A queue.
    Queue,
    /// Another exchange (exchange-to-exchange binding).
    Exchange,
}

/// One binding to declare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingDecl {
    /// Source exchange.
    pub source: String,
    /// Destination queue or exchange.
    pub destination: String,
    /// Whether the destination is a queue or an exchange.
    pub kind: Destination,
    /// Routing key or topic pattern.
    pub routing_key: String,
}
