#!/usr/bin/env bash
# A 3-node RabbitMQ cluster on 127.0.0.1, beside the single brokers on 5672 and 5673.
#   3.10 (default; Debian's host package): node N (1..3) is roger-cN@localhost with AMQP 568N,
#        distribution 2568N, management 1568N, prometheus 1578N, state .cluster/rabbitmq-cluster/cN
#   4.0 (ROGER_CLUSTER_RABBITMQ=4.0; from the trixie root of hack/rabbitmq4.sh): roger4-cN@localhost,
#        AMQP 569N, distribution 2569N, management 1588N, prometheus 1598N, state /roger-state/cN
#        inside the root
# Both may run at once. Quorum queues and streams declared through any node get a member on
# every node (their default group size is the cluster size).
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
NODES=(1 2 3)
case "${ROGER_CLUSTER_RABBITMQ:-3.10}" in
  3.10) PREFIX=roger-c AMQP=5680 DIST=25680 MGMT=15680 PROM=15780
        STATE=${ROGER_STATE_DIR:-$ROOT/.cluster}/rabbitmq-cluster ;;
  4.0)  PREFIX=roger4-c AMQP=5690 DIST=25690 MGMT=15880 PROM=15980
        STATE=/roger-state/cluster; export RMQ_CHROOT=$RMQ_TRIXIE_ROOT ;;
  *) echo "ROGER_CLUSTER_RABBITMQ: expected 3.10 or 4.0" >&2; exit 2 ;;
esac
SEED=${PREFIX}1@localhost

node() { rmq_node "$PREFIX$1@localhost" $((AMQP + $1)) $((DIST + $1)) $((MGMT + $1)) $((PROM + $1)) "$STATE/c$1"; }

# The 4.0 nodes need the trixie root, with /proc mounted.
prepare() {
  [ -n "${RMQ_CHROOT:-}" ] || return 0
  rmq_trixie_root
  rmq_trixie_mount
}

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
  prepare
  local dir; dir=${RMQ_CHROOT:-}$STATE
  mkdir -p "$dir"
  exec 9>"$dir/.lock"
  flock 9
  local n
  # Launch all first: a clustered node restarted after the others waits on boot for them.
  for n in "${NODES[@]}"; do launch "$n"; done
  for n in "${NODES[@]}"; do node "$n"; rmq_wait_ready; done
  for n in "${NODES[@]:1}"; do
    node "$n"
    clustered && continue
    rmq_log "joining $PREFIX$n@localhost to $SEED"
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
  if [ -n "${RMQ_CHROOT:-}" ]; then
    [ -x "$RMQ_CHROOT/usr/lib/rabbitmq/bin/rabbitmq-server" ] || return 0
    mountpoint -q "$RMQ_CHROOT/proc" || { rm -rf "$RMQ_CHROOT$STATE"; return 0; }
  fi
  for n in 3 2 1; do node "$n"; rmq_stop; done
  rm -rf "${RMQ_CHROOT:-}$STATE"
  [ -z "${RMQ_CHROOT:-}" ] || rmq_trixie_unmount
  rmq_log "stopped"
}

status() {
  local n bad=0
  for n in "${NODES[@]}"; do
    node "$n"
    if rmq_running; then echo "$PREFIX$n: running on 127.0.0.1:$RMQ_AMQP_PORT"; else echo "$PREFIX$n: stopped"; bad=1; fi
  done
  return $bad
}

urls() {
  local n out=()
  for n in "${NODES[@]}"; do out+=("amqp://guest:guest@127.0.0.1:$((AMQP + n))/%2F"); done
  (IFS=,; echo "${out[*]}")
}

case "${1:-}" in
  up) up ;; down) down ;; status) status ;; urls) urls ;;
  stop-node) node "${2:?node number}"; rmq_stop ;;
  start-node) prepare; node "${2:?node number}"; rmq_running || { rmq_write_config </dev/null; rmq_start; } ;;
  ctl) node "${2:?node number}"; shift 2; rmq_ctl "$@" ;;
  *) echo "usage: $0 up|down|status|urls|stop-node N|start-node N|ctl N ARGS..." >&2; exit 2 ;;
esac
