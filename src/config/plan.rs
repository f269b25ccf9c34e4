//! What the settings imply for the broker: the namespace's layout, the declaration plan of
//! its task types, schedules and state queues, and the routes a task takes.

use super::Settings;
use crate::topology::{Ladder, Layout, Names, OwnQueue, Plan, Routes, TaskQueues};

impl Settings {
    /// The shape of this namespace: names, ladder height, queue type.
    pub fn layout(&self) -> Layout {
        Layout {
            names: Names::new(&self.namespace),
            ladder: Ladder::for_max_delay(self.max_delay),
            queue_type: self.queue_type,
        }
    }

    /// The declaration plan of every task type in [`Settings::tasks`] and every schedule's
    /// record queue.
    pub fn plan(&self) -> Plan {
        let mut plan = self.plan_for(self.tasks.keys().map(String::as_str));
        let layout = self.layout();
        for (name, schedule) in &self.schedules {
            plan.add_schedule(&layout, self.task_queues(&schedule.task), name);
        }
        plan
    }

    /// What the schedules need declared on top of the task types: each one's record queue
    /// and its binding (the exchanges come from `topology apply`).
    pub fn schedules_plan(&self) -> Plan {
        let layout = self.layout();
        let mut plan = Plan::default();
        for (name, schedule) in &self.schedules {
            plan.add_schedule(&layout, self.task_queues(&schedule.task), name);
        }
        plan
    }

    /// The declaration plan of the given task types (validated names), each with its own
    /// policy's delivery limit.
    pub fn plan_for<'a>(&self, tasks: impl IntoIterator<Item = &'a str>) -> Plan {
        let names: Vec<&str> = tasks.into_iter().collect();
        let tasks = names.iter().map(|name| self.task_queues(name));
        let layout = self.layout();
        let mut plan = Plan::build(&layout, tasks);
        plan.add_control(&layout, self.cancel_retention);
        plan.add_audit(&layout.names);
        for name in names {
            let Some(task) = self.tasks.get(name) else {
                continue;
            };
            let mut tokens = Vec::new();
            if task.concurrency_limit.is_some() {
                tokens.push(layout.names.limit_running(name));
            }
            if task.rate_limit.is_some() {
                tokens.push(layout.names.limit_starts(name));
            }
            for queue in &tokens {
                plan.add_tokens(&layout.names, queue.clone());
            }
            if !tokens.is_empty() {
                plan.add_limit_state(&layout.names, name, &tokens);
            }
            plan.add_pause_record(&layout.names, name);
        }
        plan
    }

    /// Worker `worker`'s own queue of broadcast type `name` (see [`OwnQueue`]).
    pub fn own_queue(&self, name: &str, worker: &str) -> OwnQueue {
        Plan::own_queue(&self.layout(), self.task_queues(name), worker)
    }

    fn task_queues<'a>(&self, name: &'a str) -> TaskQueues<'a> {
        let task = self.tasks.get(name);
        TaskQueues {
            name,
            delivery_limit: self.policy(name).delivery_limit,
            queue_type: task.and_then(|t| t.queue_type),
            priorities: task.and_then(|t| t.priorities),
            broadcast: self.is_broadcast(name),
        }
    }

    /// The routes of this namespace.
    pub fn routes(&self) -> Routes {
        let Layout { names, ladder, .. } = self.layout();
        Routes::new(names, ladder)
    }
}
