#!/usr/bin/env bash
# A 3-node RabbitMQ cluster (Debian's 3.10) on 127.0.0.1, beside the single broker on 5672:
# node N (1..3) is roger-cN@localhost with AMQP 568N, distribution 2568N, management 1568N and
# prometheus 1578N, state under .cluster/rabbitmq-cluster/cN. Quorum queues and streams
# declared through any node get a member on every node (their default group size is the
# cluster size).
# Usage: hack/rabbitmq-cluster.sh up | down | status | urls | stop-node N | start-node N
#   up          start the nodes that are not running and join them into one cluster (idempotent)
#   down        stop all three nodes and delete their state
#   urls        the comma-separated AMQP URLs of the three nodes (ROGER_AMQP_URL accepts them)
#   stop-node N / start-node N   one node, for fault tests
#   ctl N ARGS...   rabbitmqctl ARGS against node N (e.g. list_queues name leader members)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=hack/rabbitmq-lib.sh
source "$ROOT/hack/rabbitmq-lib.sh"
RMQ_TAG=rabbitmq-cluster
STATE=${ROGER_STATE_DIR:-$ROOT/.cluster}/rabbitmq-cluster
NODES=(1 2 3)
SEED=roger-c1@localhost

node() { rmq_node "roger-c$1@localhost" $((5680 + $1)) $((25680 + $1)) $((15680 + $1)) $((15780 + $1)) "$STATE/c$1"; }

clustered() { [ "$(rmq_ctl eval "lists:member('$SEED', rabbit_nodes:all())." 2>/dev/null)" = true ]; }

# Run a CLI command; show its output only when it fails.
quiet() {
  local out
  out=$("$@" 2>&1) || { printf '%s\n' "$out" >&2; return 1; }
}

launch() {
  node "$1"
  rmq_running && return 0
  rmq_write_config </dev/null
  rmq_launch
}

up() {
  mkdir -p "$STATE"
  exec 9>"$STATE/.lock"
  flock 9
  local n
  # Launch all first: a clustered node restarted after the others waits on boot for them.
  for n in "${NODES[@]}"; do launch "$n"; done
  for n in "${NODES[@]}"; do node "$n"; rmq_wait_ready; done
  for n in "${NODES[@]:1}"; do
    node "$n"
    clustered && continue
    rmq_log "joining roger-c$n@localhost to $SEED"
    quiet rmq_ctl stop_app
    quiet rmq_ctl reset
    quiet rmq_ctl join_cluster "$SEED"
    quiet rmq_ctl start_app
    rmq_wait_ready
  done
  rmq_log "3 nodes running: $(urls)"
}

down() {
  local n
  for n in 3 2 1; do node "$n"; rmq_stop; done
  rm -rf "$STATE"
  rmq_log "stopped"
}

status() {
  local n bad=0
  for n in "${NODES[@]}"; do
    node "$n"
    if rmq_running; then echo "roger-c$n: running on 127.0.0.1:$RMQ_AMQP_PORT"; else echo "roger-c$n: stopped"; bad=1; fi
  done
  return $bad
}

urls() {
  local n out=()
  for n in "${NODES[@]}"; do out+=("amqp://guest:guest@127.0.0.1:$((5680 + n))/%2F"); done
  (IFS=,; echo "${out[*]}")
}

case "${1:-}" in
  up) up ;; down) down ;; status) status ;; urls) urls ;;
  stop-node) node "${2:?node number}"; rmq_stop ;;
  start-node) node "${2:?node number}"; rmq_running || { rmq_write_config </dev/null; rmq_start; } ;;
  ctl) node "${2:?node number}"; shift 2; rmq_ctl "$@" ;;
  *) echo "usage: $0 up|down|status|urls|stop-node N|start-node N|ctl N ARGS..." >&2; exit 2 ;;
esac
