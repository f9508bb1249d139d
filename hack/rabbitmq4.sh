#!/usr/bin/env bash
# Start/stop RabbitMQ 4.0 (Debian 13's rabbitmq-server, Erlang 27) on 127.0.0.1:5673
# (guest/guest), beside the host's 3.10 broker: it runs under chroot from a trixie root that
# is built once and cached (hack/rabbitmq-lib.sh), with /proc bind-mounted while it runs.
# State: /roger-state/<node> inside the root.
# Usage: hack/rabbitmq4.sh up|down|status
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=hack/rabbitmq-lib.sh
source "$ROOT/hack/rabbitmq-lib.sh"
RMQ_TAG=rabbitmq4
PORT=${ROGER_AMQP4_PORT:-5673}
export RMQ_CHROOT=$RMQ_TRIXIE_ROOT
rmq_node rabbit4@localhost "$PORT" 25673 15673 15693 /roger-state/rabbit4

up() {
  rmq_trixie_root
  mkdir -p "$(rmq_host_state)"
  exec 9>"$(rmq_host_state)/.lock"
  flock 9
  rmq_trixie_mount
  if rmq_running; then rmq_log "already running on 127.0.0.1:$PORT"; return 0; fi
  rmq_write_config </dev/null
  rmq_start
}

down() {
  [ -x "$RMQ_CHROOT/usr/lib/rabbitmq/bin/rabbitmq-server" ] || { rmq_log "not installed"; return 0; }
  if mountpoint -q "$RMQ_CHROOT/proc"; then rmq_stop; fi
  rmq_trixie_unmount
  rmq_log "stopped"
}

status() {
  if [ -x "$RMQ_CHROOT/usr/lib/rabbitmq/bin/rabbitmq-server" ] && mountpoint -q "$RMQ_CHROOT/proc" && rmq_running; then
    echo "rabbitmq 4.0: running on amqp://guest:guest@127.0.0.1:$PORT/"
  else
    echo "rabbitmq 4.0: stopped"; return 1
  fi
}

case "${1:-}" in
  up) up ;; down) down ;; status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
