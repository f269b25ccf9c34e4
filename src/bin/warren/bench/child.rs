//! Drains in a child process (`warren bench-drain`), so that their CPU time and peak RSS are
//! the consumer's alone.

use std::io::ErrorKind;

use serde::{Deserialize, Serialize};
use warren::topology::Names;
use warren::{Error, Result, Settings};

use super::BenchOptions;
use super::raw::{raw_drain, raw_queue};
use super::side::{warren_drain, warren_drain_beside_limits, warren_drain_many};
use crate::failure;

/// Which consumer a `bench-drain` child runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum DrainSide {
    /// Raw lapin, one ack per delivery.
    Raw,
    /// Raw lapin, acks with `multiple`.
    RawMultiple,
    /// A Warren worker with a no-op handler.
    Warren,
    /// A Warren worker with a no-op handler for each of the many-types phase's types.
    WarrenManyTypes,
    /// A Warren worker with the bench type's no-op handler beside two limited types with a
    /// backlog (a concurrency limit whose runs take 5 ms, a rate limit).
    WarrenBesideLimits,
}

/// What a `bench-drain` child reports.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(super) struct DrainFigures {
    /// Steady drain rate, msg/s (first to last delivery).
    pub rate: f64,
    /// Peak resident set size of the child, KiB.
    pub peak_rss_kib: u64,
    /// CPU seconds (user + system) of the child.
    pub cpu_secs: f64,
}

/// Peak RSS of this process image in KiB (`VmHWM`; `ru_maxrss` would include the parent's
/// RSS at fork time) and CPU seconds used so far.
pub(super) fn rusage() -> (u64, f64) {
    let hwm = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0);
    // SAFETY: getrusage writes into the zeroed struct we own; RUSAGE_SELF is always valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    if rc != 0 {
        return (hwm, 0.0);
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (hwm, secs(ru.ru_utime) + secs(ru.ru_stime))
}

/// The body of `warren bench-drain`: consume `n` messages and report time, RSS and CPU.
///
/// # Errors
/// Broker errors.
pub(super) async fn drain_child(
    settings: &Settings,
    side: DrainSide,
    n: u64,
    prefetch: u16,
    concurrency: usize,
) -> Result<DrainFigures> {
    let names = Names::new(&settings.namespace);
    let (_, cpu_before) = rusage();
    let drained = match side {
        DrainSide::Warren => warren_drain(settings, n, prefetch, concurrency).await?,
        DrainSide::WarrenManyTypes => warren_drain_many(settings, n, prefetch, concurrency).await?,
        DrainSide::WarrenBesideLimits => {
            warren_drain_beside_limits(settings, n, prefetch, concurrency).await?
        }
        DrainSide::Raw | DrainSide::RawMultiple => {
            let conn = warren::broker::connect(
                &settings.broker_url(),
                "warren bench raw",
                Some(settings.connect_timeout),
            )
            .await?;
            let r = raw_drain(
                &conn,
                &raw_queue(&names),
                n,
                prefetch,
                side == DrainSide::RawMultiple,
            )
            .await?;
            warren::broker::close_connection(&conn, "bench").await;
            r
        }
    };
    let (rss, cpu_after) = rusage();
    Ok(DrainFigures {
        rate: drained.steady_rate(n),
        peak_rss_kib: rss,
        cpu_secs: cpu_after - cpu_before,
    })
}

pub(super) async fn drain_in_child(
    settings: &Settings,
    opts: &BenchOptions,
    side: DrainSide,
) -> Result<DrainFigures> {
    let exe = std::env::current_exe().map_err(|source| Error::Io {
        context: "locating the warren binary".into(),
        source,
    })?;
    let side_name = match side {
        DrainSide::Raw => "raw",
        DrainSide::RawMultiple => "raw-multiple",
        DrainSide::Warren => "warren",
        DrainSide::WarrenManyTypes => "warren-many-types",
        DrainSide::WarrenBesideLimits => "warren-beside-limits",
    };
    let out = tokio::process::Command::new(exe)
        .env("WARREN_AMQP_URL", &settings.amqp_url)
        .env("WARREN_NAMESPACE", &settings.namespace)
        .env("WARREN_TOPOLOGY", "/dev/null")
        // The worker's production default: its per-task spans are part of its cost.
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,lapin=off,warren=info".into()),
        )
        .args([
            "bench-drain",
            "--side",
            side_name,
            "--count",
            &opts.count.to_string(),
        ])
        .args([
            "--prefetch",
            &opts.prefetch.to_string(),
            "--concurrency",
            &opts.concurrency.to_string(),
        ])
        .args(["--queue-type", opts.queue_type.as_str()])
        .output()
        .await
        .map_err(|source| Error::Io {
            context: "running warren bench-drain".into(),
            source,
        })?;
    if !out.status.success() {
        return Err(failure(
            ErrorKind::Other,
            format!("bench-drain {side_name} exited with {}", out.status),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| {
        let context = format!("bench-drain {side_name} printed no figures");
        failure(ErrorKind::InvalidData, context, e.to_string())
    })
}
