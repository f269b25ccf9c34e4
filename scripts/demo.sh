#!/usr/bin/env bash
# The first command for a newcomer: makes sure a broker runs, builds `warren`, then runs
# `warren demo`, which declares a namespace of its own, starts workers, enqueues a planned mix
# of tasks and prints a summary. Extra arguments go to `warren demo` (e.g. --tasks 2000 --keep).
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf 'demo.sh: %s\n' "$*" >&2; }

say "step 1 of 3: a RabbitMQ broker with its management API on 127.0.0.1"
scripts/broker.sh

if [ -x target/release/warren ]; then
  say "step 2 of 3: building warren (release; only what changed since the last build)"
else
  say "step 2 of 3: building warren in release mode; the first build compiles every"
  say "            dependency, about 2.5 minutes on 2 cores (cargo shows its progress below)"
fi
# Cargo's own progress (a bar on a terminal, a line per crate otherwise), not --quiet.
cargo build --release --bin warren

say "step 3 of 3: warren demo. It declares a namespace of its own, starts workers (3 by default) and"
say "            enqueues a planned mix of tasks: most succeed, some fail once and then succeed,"
say "            some always fail and go dead, some are delayed, some expire in the delay ladder."
say "            It prints each outcome planned against what happened, rates and latencies, and"
say "            exits 0 only when every task reached its planned outcome (a few seconds)."
exec target/release/warren demo "$@"
