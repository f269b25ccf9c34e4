#!/usr/bin/env bash
# A RabbitMQ of its own for destructive tests (restarts, node loss), beside the shared broker
# on 5672, which these tests must never disturb.
#
#   scripts/cluster.sh up [N]     start N nodes (1 or 3; default 3) and cluster them
#   scripts/cluster.sh down       stop them and delete their data
#   scripts/cluster.sh urls       print the AMQP URLs, one per node
#
# Node i is warren-c<i>@localhost: AMQP on 5680+i, management on 15680+i, distribution on
# 25680+i, data and logs under $WARREN_CLUSTER_DIR (default /tmp/warren-cluster). Nodes run as
# the `rabbitmq` user with its Erlang cookie (so rabbitmqctl can reach them) and need root to
# start. Quorum queues declared on the cluster replicate across all of its nodes. Node 1 also
# listens for amqps:// on 5691 with a private CA ($WARREN_CLUSTER_DIR/tls/ca.pem) and has a
# 4 s consumer_timeout, for the consumer-timeout scenario.
#
# Partitions: the nodes run with cluster_partition_handling = pause_minority (the side with
# fewer nodes pauses: it closes client connections and refuses new ones until it sees the
# majority again) and net_ticktime = 10 s (a silent peer is declared down in 7.5-12.5 s; the
# default 60 s would make every partition test take minutes). Node i makes its outgoing
# distribution connections from 127.0.0.(i+1), so nftables can tell the nodes apart on
# loopback:
#
#   scripts/cluster.sh cut I      drop (silently: no RST, no ICMP) every packet between node I
#                                 and the other nodes; clients and rabbitmqctl still reach it
#   scripts/cluster.sh heal       remove every rule `cut` made (the nft table warren_cut)
#   scripts/cluster.sh pid I      the pid of node I's Erlang VM (to SIGSTOP or kill -9 it)
#   scripts/cluster.sh start I..  start nodes again (after a kill -9) and wait until they serve
#   scripts/cluster.sh only I     refuse (RST) new AMQP connections to every node but I, so
#                                 that clients given every URL all land on node I; `heal`
#                                 lifts it
#   scripts/cluster.sh syns       how many AMQP connection attempts (TCP SYNs to the nodes'
#                                 AMQP ports) were made since the first call: reconnect storms
#                                 show here
set -euo pipefail

DIR=${WARREN_CLUSTER_DIR:-/tmp/warren-cluster}
SERVER=/usr/lib/rabbitmq/bin/rabbitmq-server
say() { printf 'cluster.sh: %s\n' "$*" >&2; }
# Open files for each node: RabbitMQ's own systemd unit uses 65536. A node's file handle
# budget follows this limit, and quorum queues use it up: at 1024 a 3.10 node stops accepting
# connections at ~400 quorum queues. Raised up to the hard limit when that is lower.
# WARREN_CLUSTER_NOFILE sets it instead, for the test of a node with a small budget.
NOFILE_WANTED=65536
nofile() {
  if [ -n "${WARREN_CLUSTER_NOFILE:-}" ]; then echo "$WARREN_CLUSTER_NOFILE"; return; fi
  local hard; hard=$(ulimit -Hn)
  if [ "$hard" = unlimited ] || [ "$hard" -ge "$NOFILE_WANTED" ]; then echo "$NOFILE_WANTED"; else echo "$hard"; fi
}
node() { echo "warren-c$1@localhost"; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

need_root() {
  if [ "$(id -u)" != 0 ]; then
    say "starting extra RabbitMQ nodes needs root (they run as the rabbitmq user with its cookie)"
    exit 1
  fi
  if [ ! -x "$SERVER" ]; then
    say "$SERVER not found: install rabbitmq-server (scripts/broker.sh does)"
    exit 1
  fi
}

# A private CA and a server certificate for localhost / 127.0.0.1, for node 1's TLS listener.
make_tls() {
  local t="$DIR/tls"
  mkdir -p "$t"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=warren test CA" \
    -keyout "$t/ca.key" -out "$t/ca.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
    -keyout "$t/server.key" -out "$t/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > "$t/ext.cnf"
  openssl x509 -req -in "$t/server.csr" -CA "$t/ca.pem" -CAkey "$t/ca.key" -CAcreateserial \
    -days 2 -extfile "$t/ext.cnf" -out "$t/server.pem" 2>/dev/null
  chown -R rabbitmq:rabbitmq "$t"
}

start_node() {
  local i=$1 d="$DIR/c$1"
  mkdir -p "$d/mnesia" "$d/log"
  cat > "$d/rabbitmq.conf" <<CONF
listeners.tcp.default = $((5680 + i))
management.tcp.port = $((15680 + i))
loopback_users = none
cluster_partition_handling = pause_minority
CONF
  if [ "$i" = 1 ]; then
    # amqps:// on 5691, with the private CA of make_tls
    cat >> "$d/rabbitmq.conf" <<CONF
listeners.ssl.default = 5691
ssl_options.cacertfile = $DIR/tls/ca.pem
ssl_options.certfile = $DIR/tls/server.pem
ssl_options.keyfile = $DIR/tls/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
# a consumer timeout short enough to test (checked every second, see advanced.config)
consumer_timeout = 4000
CONF
  fi
  # dead_letter_worker_publisher_confirm_timeout: how long a quorum queue's at-least-once
  # dead-letter worker waits for the target queue's confirm before sending again. Its default
  # (180 s) strands delayed tasks that long when the ladder's next queue lost its leader
  # (measured: every delayed task in flight at a kill -9 waited past 90 s); 5 s is what
  # docs/deploying.md advises operators to set.
  local rabbit='[{dead_letter_worker_publisher_confirm_timeout, 5000}]'
  [ "$i" = 1 ] && rabbit='[{dead_letter_worker_publisher_confirm_timeout, 5000}, {channel_tick_interval, 1000}]'
  cat > "$d/advanced.config" <<ERL
[{kernel, [{net_ticktime, 10}, {inet_dist_connect_options, [{ip, {127,0,0,$((i + 1))}}]}]},
 {rabbit, $rabbit}].
ERL
  echo '[rabbitmq_management].' > "$d/enabled_plugins"
  cat > "$d/env.sh" <<ENV
export HOME=/var/lib/rabbitmq
export RABBITMQ_NODENAME=$(node "$i")
export RABBITMQ_NODE_PORT=$((5680 + i))
export RABBITMQ_DIST_PORT=$((25680 + i))
export RABBITMQ_MNESIA_BASE=$d/mnesia
export RABBITMQ_LOG_BASE=$d/log
export RABBITMQ_CONFIG_FILE=$d/rabbitmq.conf
export RABBITMQ_ADVANCED_CONFIG_FILE=$d/advanced.config
export RABBITMQ_ENABLED_PLUGINS_FILE=$d/enabled_plugins
export RABBITMQ_PID_FILE=$d/pid
ENV
  chown -R rabbitmq:rabbitmq "$d"
  su rabbitmq -s /bin/sh -c "ulimit -n $(nofile); . $d/env.sh; nohup $SERVER > $d/stdout.log 2>&1 &"
}

wait_node() {
  # 150 s: after a kill -9 of every node, three nodes recovering their queues at once on two
  # cores took over 90 s once in CI (session 16); the tests' own bound on a script is 180 s.
  local i=$1 deadline=$((SECONDS + 150))
  until rabbitmqctl -q -n "$(node "$i")" await_startup >/dev/null 2>&1 && port_open $((5680 + i)); do
    if ((SECONDS >= deadline)); then
      say "node $(node "$i") did not start; see $DIR/c$i/log and $DIR/c$i/stdout.log"
      exit 1
    fi
    sleep 1
  done
}

up() {
  local n=${1:-3}
  need_root
  if port_open 5681; then say "a node already answers on 5681; run '$0 down' first"; exit 1; fi
  mkdir -p "$DIR"
  make_tls
  for i in $(seq 1 "$n"); do start_node "$i"; done
  for i in $(seq 1 "$n"); do wait_node "$i"; done
  for i in $(seq 2 "$n"); do
    # (joining prints benign feature-flag warnings and "tracked connection table" errors)
    rabbitmqctl -q -n "$(node "$i")" stop_app >/dev/null 2>&1
    rabbitmqctl -q -n "$(node "$i")" reset >/dev/null 2>&1
    rabbitmqctl -q -n "$(node "$i")" join_cluster "$(node 1)" >/dev/null 2>&1
    rabbitmqctl -q -n "$(node "$i")" start_app >/dev/null 2>&1
  done
  for i in $(seq 1 "$n"); do
    until curl -fsS -o /dev/null -u guest:guest "http://127.0.0.1:$((15680 + i))/api/overview"; do sleep 1; done
  done
  echo "$n" > "$DIR/size"
  say "up: $n node(s) on AMQP ports $(seq -s ' ' 5681 $((5680 + n))), open-file limit $(nofile)"
}

down() {
  heal >/dev/null 2>&1
  [ -d "$DIR" ] || { say "nothing to stop"; return 0; }
  # A frozen node (SIGSTOP) cannot act on SIGTERM.
  for d in "$DIR"/c*; do [ -f "$d/pid" ] && kill -CONT "$(cat "$d/pid")" 2>/dev/null || true; done
  for d in "$DIR"/c*; do
    [ -f "$d/pid" ] || continue
    local pid; pid=$(cat "$d/pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  # Leftover Erlang helpers of these nodes only (matched by node name).
  pkill -f 'warren-c[0-9]@localhost' 2>/dev/null || true
  rm -rf "$DIR"
  say "down"
}

# nftables, from Debian's packages when missing (the image has neither nft nor iptables).
need_nft() {
  command -v nft >/dev/null 2>&1 && return 0
  say "installing nftables (for partitions)"
  if ! { apt-get install -y -qq nftables >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq nftables >/dev/null 2>&1; }; }; then
    say "cannot install nftables: apt-get install nftables failed"
    exit 1
  fi
}

# Node I's distribution traffic, both directions: the connections it makes (from its own
# source address) and those the others make to its distribution port (from theirs).
cut() {
  local i=$1 n; n=$(cat "$DIR/size" 2>/dev/null || echo 0)
  [ "$i" -ge 1 ] && [ "$i" -le "$n" ] || { say "no node $i in a cluster of $n"; exit 2; }
  need_nft
  local me="127.0.0.$((i + 1))" port=$((25680 + i)) others=""
  for j in $(seq 1 "$n"); do
    [ "$j" = "$i" ] || others="${others:+$others, }127.0.0.$((j + 1))"
  done
  nft add table inet warren_cut
  for hook in input output; do
    nft add chain inet warren_cut "$hook" "{ type filter hook $hook priority 0; policy accept; }"
    nft add rule inet warren_cut "$hook" ip saddr "$me" tcp dport != 4369 drop
    nft add rule inet warren_cut "$hook" ip daddr "$me" drop
    nft add rule inet warren_cut "$hook" ip saddr "{ $others }" tcp dport "$port" drop
    nft add rule inet warren_cut "$hook" ip daddr "{ $others }" tcp sport "$port" drop
  done
  say "cut: node $i ($(node "$i")) from the others"
}

only() {
  local i=$1 n ports=""; n=$(cat "$DIR/size" 2>/dev/null || echo 0)
  need_nft
  for j in $(seq 1 "$n"); do
    [ "$j" = "$i" ] || ports="${ports:+$ports, }$((5680 + j))"
  done
  nft add table inet warren_cut
  nft add chain inet warren_cut only "{ type filter hook input priority 0; policy accept; }"
  nft add rule inet warren_cut only tcp dport "{ $ports }" tcp flags syn reject with tcp reset
  say "only: new AMQP connections go to node $i alone"
}

syns() {
  need_nft
  if ! nft list table inet warren_syns >/dev/null 2>&1; then
    nft add table inet warren_syns
    nft add chain inet warren_syns out "{ type filter hook output priority 0; policy accept; }"
    nft add rule inet warren_syns out tcp dport 5681-5683 tcp flags syn counter
  fi
  nft list table inet warren_syns | sed -n 's/.*counter packets \([0-9]*\).*/\1/p'
}

heal() {
  command -v nft >/dev/null 2>&1 || return 0
  nft delete table inet warren_cut 2>/dev/null || true
  nft delete table inet warren_syns 2>/dev/null || true
  say "healed"
}

urls() {
  local n; n=$(cat "$DIR/size" 2>/dev/null || echo 0)
  for i in $(seq 1 "$n"); do echo "amqp://guest:guest@127.0.0.1:$((5680 + i))/%2f"; done
}

case "${1:-}" in
  up) up "${2:-3}" ;;
  down) down ;;
  urls) urls ;;
  cut) cut "${2:?usage: $0 cut NODE}" ;;
  heal) heal ;;
  pid) cat "$DIR/c${2:?usage: $0 pid NODE}/pid" ;;
  start) shift; for i in "$@"; do start_node "$i"; done; for i in "$@"; do wait_node "$i"; done; say "started: $*" ;;
  only) only "${2:?usage: $0 only NODE}" ;;
  syns) syns ;;
  *) echo "usage: $0 up [1|3] | down | urls | cut NODE | heal | pid NODE | start NODE.. | only NODE | syns" >&2; exit 2 ;;
esac
