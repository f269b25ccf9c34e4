#!/usr/bin/env bash
# The test command: makes sure a broker runs, then runs every test (unit, integration, doc),
# then the fault scenarios (broker node restarts, node loss, a small file handle budget) on a
# RabbitMQ cluster of their own, which scripts/cluster.sh starts beside the shared broker and
# removes afterwards.
#
#   scripts/test.sh                        everything
#   WARREN_SKIP_FAULTS=1 scripts/test.sh   everything but the fault scenarios, for a quicker
#                                          loop; exits 3 even when all passed, so that a run
#                                          without them can never pass as a whole one
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/broker.sh
cargo test --locked "$@"

if [ "${WARREN_SKIP_FAULTS:-}" = 1 ]; then
  echo "test.sh: WARREN_SKIP_FAULTS=1: the fault scenarios (tests/it/faults.rs) were NOT run; exit 3" >&2
  exit 3
fi
trap 'scripts/cluster.sh down' EXIT
scripts/cluster.sh down >/dev/null 2>&1 || true
# The fault nodes get a small open-file limit, as a node started by hand often has: the
# file handle scenario needs one, and the others declare a few dozen queues.
WARREN_CLUSTER_NOFILE=1024 scripts/cluster.sh up 3
log=$(mktemp)
cargo test --locked --test it -- --ignored --test-threads=1 faults:: 2>&1 | tee "$log"
# A filter that matches nothing passes with "0 passed": make sure every scenario ran.
ran=$(sed -n 's/^test result: ok\. \([0-9]*\) passed.*/\1/p' "$log" | tail -1)
rm -f "$log"
expected=$(grep -c '^async fn faults_' tests/it/faults.rs)
if [ "${ran:-0}" -ne "$expected" ]; then
  echo "test.sh: tests/it/faults.rs has $expected fault scenarios, ${ran:-0} ran" >&2
  exit 1
fi
