#!/usr/bin/env bash
# The library must build without the `cli` feature, and without it none of the command line's
# crates may be in its dependency tree: a program that links Warren to enqueue a task does not
# compile clap, indicatif, tracing-subscriber or the Prometheus exporter.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo check --locked --lib --no-default-features
tree=$(cargo tree --locked -e normal --no-default-features --prefix none)
found=$(grep -E '^(clap|indicatif|tracing-subscriber|metrics-exporter-prometheus) ' <<<"$tree" | sort -u || true)
if [ -n "$found" ]; then
  echo "check-lib-deps: the library without --features cli depends on:" >&2
  echo "$found" >&2
  exit 1
fi
echo "check-lib-deps: the library alone has none of clap, indicatif, tracing-subscriber, metrics-exporter-prometheus"
