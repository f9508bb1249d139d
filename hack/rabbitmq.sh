#!/usr/bin/env bash
# Start/stop Debian's rabbitmq-server on 127.0.0.1:5672 (guest/guest), state under .cluster/.
# Usage: hack/rabbitmq.sh up|down|status
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
STATE=${ROGER_STATE_DIR:-$ROOT/.cluster}/rabbitmq
export RABBITMQ_NODENAME=${RABBITMQ_NODENAME:-roger@localhost}
export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
export RABBITMQ_NODE_PORT=${ROGER_AMQP_PORT:-5672}
export RABBITMQ_DIST_PORT=25672
export ERL_EPMD_ADDRESS=127.0.0.1
export RABBITMQ_MNESIA_BASE=$STATE/mnesia
export RABBITMQ_LOG_BASE=$STATE/log
export RABBITMQ_PID_FILE=$STATE/rabbitmq.pid
export RABBITMQ_CONFIG_FILE=$STATE/rabbitmq   # .conf appended by rabbitmq
export RABBITMQ_ENABLED_PLUGINS_FILE=$STATE/enabled_plugins
export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
export ERL_CRASH_DUMP=$STATE/erl_crash.dump
export RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"

# Debian's /usr/sbin wrappers switch to the rabbitmq user and drop this environment;
# the real scripts run fine as the current user.
export PATH=/usr/lib/rabbitmq/bin:$PATH

log() { printf '[rabbitmq] %s\n' "$*" >&2; }

ensure_installed() {
  [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] && return 0
  log "installing Debian's rabbitmq-server"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq rabbitmq-server >/dev/null
}

running() { rabbitmqctl -n "$RABBITMQ_NODENAME" -q await_startup --timeout 2 >/dev/null 2>&1; }

up() {
  ensure_installed
  mkdir -p "$STATE"
  # Parallel callers (test sessions, make) wait for one start instead of racing a second
  # broker onto the same ports.
  exec 9>"$STATE/.lock"
  flock 9
    if running; then log "already running on 127.0.0.1:$RABBITMQ_NODE_PORT"; return 0; fi
  mkdir -p "$STATE/log" "$STATE/mnesia"
  cat > "$STATE/rabbitmq.conf" <<CONF
listeners.tcp.1 = 127.0.0.1:$RABBITMQ_NODE_PORT
loopback_users = none
management.tcp.ip = 127.0.0.1
management.tcp.port = 15672
prometheus.tcp.ip = 127.0.0.1
prometheus.tcp.port = 15692
prometheus.return_per_object_metrics = true
vm_memory_high_watermark.relative = 0.2
disk_free_limit.absolute = 500MB
CONF
  echo '[rabbitmq_management,rabbitmq_prometheus].' > "$STATE/enabled_plugins"
  # epmd must listen on loopback only; start it ourselves before the broker does.
  epmd -address 127.0.0.1 -daemon 9>&-
  log "starting rabbitmq-server (state in $STATE)"
  nohup rabbitmq-server >"$STATE/log/startup.log" 2>&1 9>&- &
  for _ in $(seq 1 120); do
    if running; then log "ready on 127.0.0.1:$RABBITMQ_NODE_PORT"; return 0; fi
    sleep 0.5
  done
  log "rabbitmq-server did not start; last log lines:"; tail -n 40 "$STATE"/log/*.log >&2 || true
  exit 1
}

down() {
    if command -v rabbitmqctl >/dev/null 2>&1 && running; then
    rabbitmqctl -n "$RABBITMQ_NODENAME" -q stop >/dev/null 2>&1 || true
  fi
  if [ -f "$RABBITMQ_PID_FILE" ]; then kill "$(cat "$RABBITMQ_PID_FILE")" 2>/dev/null || true; fi
  pkill -f "beam.*-sname $RABBITMQ_NODENAME" 2>/dev/null || pkill -f "beam.*$STATE" 2>/dev/null || true
  epmd -kill >/dev/null 2>&1 || true
  log "stopped"
}

status() {
    if running; then echo "rabbitmq: running on amqp://guest:guest@127.0.0.1:$RABBITMQ_NODE_PORT/"; else echo "rabbitmq: stopped"; return 1; fi
}

case "${1:-}" in
  up) up ;; down) down ;; status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
