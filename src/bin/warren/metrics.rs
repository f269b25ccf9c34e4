//! The Prometheus endpoint of `warren worker --metrics-addr`.
//!
//! Metrics are recorded through the `metrics` facade where they happen (the worker) and
//! rendered in Prometheus text format by `metrics-exporter-prometheus`; this module only
//! installs that recorder and answers `GET` on a TCP port with its output.
//!
//! Series: `warren_tasks_total{task,outcome}` (outcome = success | retry | dead),
//! `warren_dead_lettered_total{task,reason}`, `warren_retries_total{task}`,
//! `warren_task_duration_seconds{task}` (histogram), `warren_tasks_in_flight{task}`,
//! `warren_reconnects_total`.

use std::net::SocketAddr;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use warren::{Error, Result};

/// Histogram buckets of task durations, in seconds: 5 ms to 10 min.
const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0,
];

/// Installs the process-wide recorder and serves it on `addr` (`HOST:PORT`; a host name is
/// resolved, e.g. `localhost:9464`); returns the bound address.
///
/// # Errors
/// [`Error::Config`] when a recorder is already installed or the address cannot be bound.
pub async fn serve(addr: &str) -> Result<SocketAddr> {
    let handle = PrometheusBuilder::new()
        .set_buckets(DURATION_BUCKETS)
        .and_then(PrometheusBuilder::install_recorder)
        .map_err(|e| Error::Config(format!("cannot install the metrics recorder: {e}")))?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Config(format!("cannot listen for metrics on {addr}: {e}")))?;
    let bound = listener.local_addr().map_err(|source| Error::Io {
        context: "reading the metrics address".into(),
        source,
    })?;
    tokio::spawn(accept(listener, handle));
    tracing::info!(address = %bound, "serving Prometheus metrics at /metrics");
    Ok(bound)
}

async fn accept(listener: TcpListener, handle: PrometheusHandle) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            // Any request gets the metrics: one endpoint, nothing to route.
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            let body = handle.render();
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}
