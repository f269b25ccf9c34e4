//! Every route a task travels: where a message is published and with which routing key.
//! Pure; the producer, the worker and dead-letter replay all take their routes from here.
//!
//! ```text
//! work     {ns}.tasks        key = task                      undelayed enqueue
//! delayed  {ns}.delay.L      key = bits of the delay . task  delayed enqueue and retries
//! dead     {ns}.dead         key = task                      dead copies
//! replay   {ns}.tasks        key = task                      a dead task sent back to work
//! ```

use super::ladder::Ladder;
use super::names::Names;

/// An exchange and a routing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Exchange to publish to.
    pub exchange: String,
    /// Routing key.
    pub routing_key: String,
}

/// The routes of one namespace. Cheap to clone; build once, not per message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routes {
    names: Names,
    ladder: Ladder,
    /// `{ns}.tasks`, the ladder's top exchange and `{ns}.dead`, built once.
    tasks_exchange: String,
    ladder_entry: String,
    dead_exchange: String,
}

impl Routes {
    /// The routes of namespace `names` with delay ladder `ladder`.
    pub fn new(names: Names, ladder: Ladder) -> Routes {
        Routes {
            tasks_exchange: names.tasks_exchange(),
            ladder_entry: names.delay_level(ladder.top()),
            dead_exchange: names.dead_exchange(),
            names,
            ladder,
        }
    }

    /// The namespace's names.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// Straight to `task`'s work queue.
    pub fn work(&self, task: &str) -> Route {
        Route {
            exchange: self.tasks_exchange.clone(),
            routing_key: task.to_string(),
        }
    }

    /// Into the delay ladder's top level, to reach `task`'s work queue after `delay_secs`
    /// (at most the ladder's capacity; callers check `max_delay` first).
    pub fn delayed(&self, task: &str, delay_secs: u64) -> Route {
        Route {
            exchange: self.ladder_entry.clone(),
            routing_key: self.ladder.routing_key(delay_secs, task),
        }
    }

    /// To `task`'s dead queue.
    pub fn dead(&self, task: &str) -> Route {
        Route {
            exchange: self.dead_exchange.clone(),
            routing_key: task.to_string(),
        }
    }

    /// A dead task sent back: the same route as a new enqueue, so replayed tasks meet the
    /// same bindings (and the same `mandatory` check) as any other.
    pub fn replay(&self, task: &str) -> Route {
        self.work(task)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::*;

    /// The routes of namespace `ns` with a 60 s ladder (levels 5..0).
    pub(crate) fn routes() -> Routes {
        Routes::new(
            Names::new("ns"),
            Ladder::for_max_delay(Duration::from_secs(60)),
        )
    }

    #[test]
    fn work_and_replay_go_through_the_tasks_exchange_under_the_task_name() {
        let r = routes();
        let work = Route {
            exchange: "ns.tasks".into(),
            routing_key: "mail".into(),
        };
        assert_eq!(r.work("mail"), work);
        assert_eq!(r.replay("mail"), work);
    }

    #[test]
    fn a_delay_enters_the_top_of_the_ladder_with_its_bits_in_the_key() {
        // 60 s: levels 5..0; 5 s = 0b000101.
        assert_eq!(
            routes().delayed("mail", 5),
            Route {
                exchange: "ns.delay.5".into(),
                routing_key: "0.0.0.1.0.1.mail".into(),
            }
        );
    }

    #[test]
    fn dead_copies_go_to_the_dead_exchange_under_the_task_name() {
        assert_eq!(
            routes().dead("mail"),
            Route {
                exchange: "ns.dead".into(),
                routing_key: "mail".into(),
            }
        );
    }
}
