//! The runtime every AMQP connection's background work runs on: lapin's heartbeat timer and
//! its internal RPC loop, apart from the tasks that run handlers.
//!
//! Why a runtime of its own: lapin spawns its heartbeat sender on the runtime it is given
//! (by default the caller's). A worker whose handlers block that runtime (a CPU-bound Rust
//! handler that never yields, on every worker thread) would then stop sending heartbeats; the
//! broker would close a healthy connection after the timeout and hand its tasks to another
//! worker while they still run here. On a thread of its own, heartbeats go out however busy
//! the handlers are. The cost is one mostly idle thread per process.

use std::sync::OnceLock;

/// The AMQP I/O runtime's name, as threads show it (`top -H`, a debugger).
pub const THREAD_NAME: &str = "warren-amqp";

/// The process's AMQP I/O runtime, started on first use and kept for the process's life.
///
/// # Panics
/// When the operating system refuses a thread (then nothing else would work either).
pub fn runtime() -> async_rs::TokioRuntime {
    static IO: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let rt = IO.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(THREAD_NAME)
            .enable_all()
            .build()
            .expect("starting the AMQP I/O thread")
    });
    async_rs::Runtime::tokio_with_handle(rt.handle().clone())
}
