#!/usr/bin/env bash
# The test command: makes sure a broker runs, then runs every test (unit, integration, doc).
# Integration tests talk to the real broker; each test gets a fresh vhost and deletes it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/broker.sh
cargo test --locked "$@"
