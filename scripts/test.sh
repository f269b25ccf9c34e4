#!/usr/bin/env bash
# The test command: makes sure a broker runs, then runs every test (unit, integration, doc),
# then the fault scenarios (frozen workers and nodes, a silent partition, kill -9 of a node
# and of the whole broker, node restarts, a small file handle budget) on a RabbitMQ cluster
# of their own, which scripts/cluster.sh starts beside the shared broker and removes
# afterwards. The fault scenarios write their counts to target/fault-ledger/, and
# scripts/ledger.sh renders them into docs/reliability.md.
#
#   scripts/test.sh                        everything
#   scripts/test.sh ARGS...                `cargo test ARGS...` only (a filtered run, for a
#                                          quick loop): its last line says it was not the
#                                          whole suite, and it exits 3 when all passed
#   WARREN_SKIP_FAULTS=1 scripts/test.sh   everything but the fault scenarios; exits 3 even
#                                          when all passed, so that a run without them can
#                                          never pass as a whole one
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/broker.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# How many tests each suite of a cargo test log ran: "suite: N passed, M ignored".
summary() {
  awk '/^ *Running |^ *Doc-tests /{ suite=($2=="unittests") ? "unit tests " $3 : $2; if ($1=="Doc-tests") suite="doc-tests " $2 }
       /^test result:/{ printf "test.sh: %-40s %s passed, %s ignored\n", suite, $4, $8 }' "$1" |
    sed 's/;//g'
}

# Runs cargo test with ARGS into the log; when it fails, prints every panic's message once
# more at the end (a backtrace per failure otherwise pushes the messages out of the last
# screen, and out of the tail a CI report keeps).
run_tests() {
  local status=0
  cargo test --locked "$@" 2>&1 | tee "$log" || status=$?
  if [ "$status" != 0 ]; then
    echo "test.sh: the panics of that run, without their backtraces:" >&2
    awk '/ panicked at /{ on=1 } /^stack backtrace:/{ on=0 } on' "$log" >&2
  fi
  return "$status"
}

if [ "$#" -gt 0 ]; then
  status=0
  run_tests "$@" || status=$?
  summary "$log"
  [ "$status" = 0 ] || exit "$status"
  echo "test.sh: FILTERED run (cargo test $*): NOT the whole suite; exit 3" >&2
  exit 3
fi

run_tests
summary "$log" > "$log.summary"

if [ "${WARREN_SKIP_FAULTS:-}" = 1 ]; then
  cat "$log.summary"; rm -f "$log.summary"
  echo "test.sh: WARREN_SKIP_FAULTS=1: the fault scenarios (tests/it/faults/) were NOT run; exit 3" >&2
  exit 3
fi
trap 'rm -f "$log" "$log.summary"; scripts/cluster.sh down' EXIT
scripts/cluster.sh down >/dev/null 2>&1 || true
# The fault nodes get a small open-file limit, as a node started by hand often has: the
# file handle scenario needs one, and the others declare a few dozen queues.
WARREN_CLUSTER_NOFILE=1024 scripts/cluster.sh up 3
rm -rf target/fault-ledger
run_tests --test it -- --ignored --test-threads=1 faults::
# A filter that matches nothing passes with "0 passed": make sure every scenario ran.
ran=$(sed -n 's/^test result: ok\. \([0-9]*\) passed.*/\1/p' "$log" | tail -1)
expected=$(cat tests/it/faults/*.rs | grep -c '^async fn faults_')
if [ "${ran:-0}" -ne "$expected" ]; then
  echo "test.sh: tests/it/faults/ has $expected fault scenarios, ${ran:-0} ran" >&2
  exit 1
fi
scripts/ledger.sh
cat "$log.summary"
echo "test.sh: fault scenarios                              $ran passed"
echo "test.sh: the whole suite passed"
