//! Looking at a queue without creating it: a passive declare.

use lapin::Channel;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;

/// The broker's view of `queue` (its message and consumer counts) by a passive declare,
/// which creates nothing. A missing queue is a `NOT_FOUND` error that closes `ch`.
pub async fn inspect(ch: &Channel, queue: &str) -> lapin::Result<lapin::Queue> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    ch.queue_declare(queue.into(), passive, FieldTable::default())
        .await
}
