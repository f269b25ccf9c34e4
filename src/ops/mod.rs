//! What operators read and repair: the management HTTP API, a namespace's status, dead queues.
//!
//! Library functions that return data; printing it is the `warren` binary's job.

pub mod audit;
pub mod capacity;
pub mod cluster;
pub mod dead_entry;
pub mod dead_index;
pub mod dlq;
pub mod leftovers;
pub mod management;
pub mod schedules;
pub mod status;
pub mod unique;
pub mod version;
pub mod workers;
