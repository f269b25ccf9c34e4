#!/usr/bin/env bash
# The first command for a newcomer: makes sure a broker runs, then runs `warren demo`, which
# declares a namespace of its own, starts workers, enqueues a planned mix of tasks and prints
# a summary. Extra arguments go to `warren demo` (e.g. --tasks 2000 --keep).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/broker.sh
cargo build --release --quiet --bin warren
exec target/release/warren demo "$@"
