#!/usr/bin/env bash
# A RabbitMQ node of its own with a short consumer_timeout, for the tests of what the worker
# does when the broker closes a channel whose delivery stayed unacknowledged too long
# (tests/integration/test_consumer_timeout.py). The shared brokers keep RabbitMQ's default.
#   3.10 (default): roger-ct@localhost, AMQP 5677, distribution 25677, management 15677,
#        prometheus 15777, state .cluster/rabbitmq-timeout
#   4.0 (ROGER_TIMEOUT_RABBITMQ=4.0; the trixie root of hack/rabbitmq4.sh): roger4-ct@localhost,
#        AMQP 5678, distribution 25678, management 15678, prometheus 15778, state
#        /roger-state/timeout inside the root
# consumer_timeout is ROGER_CONSUMER_TIMEOUT_MS (default 4000), and the channels check it every
# second (channel_tick_interval; RabbitMQ's default is a minute), so a test sees it soon.
# Usage: hack/rabbitmq-timeout.sh up|down|status|url
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=hack/rabbitmq-lib.sh
source "$ROOT/hack/rabbitmq-lib.sh"
RMQ_TAG=rabbitmq-timeout
TIMEOUT_MS=${ROGER_CONSUMER_TIMEOUT_MS:-4000}
case "${ROGER_TIMEOUT_RABBITMQ:-3.10}" in
  3.10) rmq_node roger-ct@localhost 5677 25677 15677 15777 "${ROGER_STATE_DIR:-$ROOT/.cluster}/rabbitmq-timeout" ;;
  4.0)  export RMQ_CHROOT=$RMQ_TRIXIE_ROOT
        rmq_node roger4-ct@localhost 5678 25678 15678 15778 /roger-state/timeout ;;
  *) echo "ROGER_TIMEOUT_RABBITMQ: expected 3.10 or 4.0" >&2; exit 2 ;;
esac
export RABBITMQ_ADVANCED_CONFIG_FILE=$RMQ_STATE/advanced.config

up() {
  if [ -n "${RMQ_CHROOT:-}" ]; then rmq_trixie_root; rmq_trixie_mount; fi
  mkdir -p "$(rmq_host_state)"
  exec 9>"$(rmq_host_state)/.lock"
  flock 9
  if rmq_running; then rmq_log "already running on 127.0.0.1:$RMQ_AMQP_PORT"; return 0; fi
  echo "consumer_timeout = $TIMEOUT_MS" | rmq_write_config
  echo '[{rabbit, [{channel_tick_interval, 1000}]}].' > "$(rmq_host_state)/advanced.config"
  rmq_start
}

down() {
  if [ -n "${RMQ_CHROOT:-}" ]; then
    [ -x "$RMQ_CHROOT/usr/lib/rabbitmq/bin/rabbitmq-server" ] || return 0
    mountpoint -q "$RMQ_CHROOT/proc" || return 0
  fi
  rmq_stop
  [ -z "${RMQ_CHROOT:-}" ] || rmq_trixie_unmount
  rmq_log "stopped"
}

case "${1:-}" in
  up) up ;; down) down ;;
  status) if rmq_running; then echo "running on 127.0.0.1:$RMQ_AMQP_PORT"; else echo stopped; exit 1; fi ;;
  url) echo "amqp://guest:guest@127.0.0.1:$RMQ_AMQP_PORT/%2F" ;;
  *) echo "usage: $0 up|down|status|url" >&2; exit 2 ;;
esac
