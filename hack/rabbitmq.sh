#!/usr/bin/env bash
# Start/stop Debian's rabbitmq-server on 127.0.0.1:5672 (guest/guest), state under .cluster/.
# Node settings and start/stop are shared with the 4.0 broker and the 3-node cluster
# (hack/rabbitmq-lib.sh).
# Usage: hack/rabbitmq.sh up|down|status
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=hack/rabbitmq-lib.sh
source "$ROOT/hack/rabbitmq-lib.sh"
STATE=${ROGER_STATE_DIR:-$ROOT/.cluster}/rabbitmq
PORT=${ROGER_AMQP_PORT:-5672}
rmq_node "${RABBITMQ_NODENAME:-roger@localhost}" "$PORT" 25672 15672 15692 "$STATE"

ensure_installed() {
  [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] && return 0
  rmq_log "installing Debian's rabbitmq-server"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq rabbitmq-server >/dev/null
}

up() {
  ensure_installed
  mkdir -p "$STATE"
  # Parallel callers (test sessions, make) wait for one start instead of racing a second
  # broker onto the same ports.
  exec 9>"$STATE/.lock"
  flock 9
  if rmq_running; then rmq_log "already running on 127.0.0.1:$PORT"; return 0; fi
  rmq_write_config </dev/null
  rmq_start || exit 1
}

down() {
  [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || return 0
  rmq_stop
  # The cluster's and the 4.0 broker's nodes use the same epmd: leave it to the last one.
  if [ -z "$(epmd -names 2>/dev/null | grep '^name ')" ]; then epmd -kill >/dev/null 2>&1 || true; fi
  rmq_log "stopped"
}

status() {
  if rmq_running; then echo "rabbitmq: running on amqp://guest:guest@127.0.0.1:$PORT/"; else echo "rabbitmq: stopped"; return 1; fi
}

case "${1:-}" in
  up) up ;; down) down ;; status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
