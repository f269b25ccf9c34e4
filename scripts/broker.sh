#!/usr/bin/env bash
# Makes sure a RabbitMQ with the management plugin answers on 127.0.0.1 (AMQP 5672, HTTP 15672).
#   1. uses one that is already running;
#   2. else starts an installed rabbitmq-server;
#   3. else installs it with apt-get (when run as root and apt-get exists);
#   4. else explains what to do and fails.
# It also enables the management plugin, which `warren status`, `dlq` and the tests need.
set -euo pipefail

AMQP_PORT=${WARREN_BROKER_PORT:-5672}
HTTP_PORT=${WARREN_MANAGEMENT_PORT:-15672}

say() { printf 'broker.sh: %s\n' "$*" >&2; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
management_ok() {
  curl -fsS -o /dev/null -u guest:guest "http://127.0.0.1:$HTTP_PORT/api/overview" 2>/dev/null
}
wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local deadline=$((SECONDS + $1)) what=$2; shift 2
  until "$@"; do
    if ((SECONDS >= deadline)); then say "gave up waiting for $what after ${deadline}s"; return 1; fi
    sleep 1
  done
}

if port_open "$AMQP_PORT" && management_ok; then
  say "RabbitMQ answers on 127.0.0.1:$AMQP_PORT with the management API on :$HTTP_PORT"
  exit 0
fi

if ! command -v rabbitmq-server >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    say "rabbitmq-server is not installed; installing it with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
  else
    say "no RabbitMQ answers on 127.0.0.1:$AMQP_PORT and rabbitmq-server is not installed."
    say "Install it (Debian/Ubuntu: sudo apt-get install rabbitmq-server), or run one in Docker:"
    say "  docker compose up -d rabbitmq"
    say "then run this script again."
    exit 1
  fi
fi

if ! port_open "$AMQP_PORT"; then
  # The open-file limit RabbitMQ's own systemd unit sets (65536), or the hard limit if lower:
  # the node's file handle budget follows it, and at 1024 a 3.10 node stops accepting
  # connections at ~400 quorum queues (two namespaces of 100 task types).
  hard=$(ulimit -Hn)
  if [ "$hard" = unlimited ] || [ "$hard" -ge 65536 ]; then nofile=65536; else nofile=$hard; fi
  ulimit -n "$nofile"
  say "starting rabbitmq-server with an open-file limit of $nofile"
  rabbitmq-server -detached
  wait_for 90 "RabbitMQ to accept AMQP connections" port_open "$AMQP_PORT"
  rabbitmqctl await_startup >/dev/null 2>&1 || true
fi

if ! management_ok; then
  say "enabling the management plugin"
  rabbitmq-plugins enable rabbitmq_management >/dev/null
  wait_for 60 "the management API on :$HTTP_PORT" management_ok
fi
say "RabbitMQ answers on 127.0.0.1:$AMQP_PORT with the management API on :$HTTP_PORT"
