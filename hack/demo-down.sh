#!/usr/bin/env bash
# Stop what `make demo` started beside the cluster and the broker (operator, local pods,
# Prometheus).
ROOT=$(cd "$(dirname "$0")/.." && pwd)
for name in localpods operator; do
  pidfile=$ROOT/.cluster/demo/$name.pid
  [ -f "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$pidfile"
done
[ -x "$ROOT/hack/prometheus.sh" ] && bash "$ROOT/hack/prometheus.sh" down || true
