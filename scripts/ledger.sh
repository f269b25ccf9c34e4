#!/usr/bin/env bash
# Renders the fault ledger (the rows the fault scenarios wrote to target/fault-ledger/) into
# docs/reliability.md, between its `ledger:begin` and `ledger:end` markers. Run by
# scripts/test.sh after the fault scenarios pass; never edit that table by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=target/fault-ledger
doc=docs/reliability.md
ls "$dir"/*.row >/dev/null 2>&1 || { echo "ledger.sh: no rows in $dir: run scripts/test.sh" >&2; exit 1; }
table=$(mktemp)
{
  echo "<!-- ledger:begin: written by scripts/ledger.sh from the fault scenarios' own counts; $(date -u +%Y-%m-%d), $(git rev-parse --short HEAD 2>/dev/null || echo '?'), RabbitMQ $(rabbitmqctl version 2>/dev/null || echo '?'), $(nproc) cores -->"
  echo "| fault | sent | confirmed | ran | lost | duplicated | longest stall | what happens |"
  echo "|---|---|---|---|---|---|---|---|"
  cat "$dir"/*.row
  echo "<!-- ledger:end -->"
} > "$table"
if ! grep -q '<!-- ledger:begin' "$doc"; then
  echo "ledger.sh: $doc has no ledger:begin marker" >&2; exit 1
fi
awk -v table="$table" '
  /<!-- ledger:begin/ { while ((getline line < table) > 0) print line; skip=1; next }
  /<!-- ledger:end -->/ { skip=0; next }
  !skip { print }' "$doc" > "$doc.new"
mv "$doc.new" "$doc"
rm -f "$table"
echo "ledger.sh: $(ls "$dir"/*.row | wc -l) rows into $doc" >&2
