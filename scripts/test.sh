#!/usr/bin/env bash
# The test command: makes sure a broker runs, then runs every test (unit, integration, doc),
# then the fault scenarios (broker node restarts and node loss) on a RabbitMQ cluster of their
# own, which scripts/cluster.sh starts beside the shared broker and removes afterwards.
#
#   scripts/test.sh                  everything
#   WARREN_SKIP_FAULTS=1 scripts/test.sh    everything but the fault scenarios (says so loudly)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/broker.sh
cargo test --locked "$@"

if [ "${WARREN_SKIP_FAULTS:-}" = 1 ]; then
  echo "test.sh: WARREN_SKIP_FAULTS=1: the fault scenarios (tests/it/faults.rs) were NOT run" >&2
  exit 0
fi
trap 'scripts/cluster.sh down' EXIT
scripts/cluster.sh down >/dev/null 2>&1 || true
scripts/cluster.sh up 3
cargo test --locked --test it -- --ignored --test-threads=1 faults::
