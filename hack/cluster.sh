#!/usr/bin/env bash
# A real local Kubernetes control plane on 127.0.0.1, built from Go modules (hack/tools.sh):
# etcd, kube-apiserver (RBAC, service-account token signing, Pod Security admission),
# kube-controller-manager, kube-scheduler and kwok with fake Nodes so Pods become Running.
#
# Usage: hack/cluster.sh up|down|status|stop-apiserver|start-apiserver
# State (PKI, etcd data, logs, pids, kubeconfig) lives in .cluster/. Service and pod CIDRs
# are allocation ranges only: nothing here sends a packet to them.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
S=${ROGER_STATE_DIR:-$ROOT/.cluster}
BIN=$S/bin
PKI=$S/pki
LOGS=$S/logs
PIDS=$S/pids
KUBECONFIG_OUT=$S/kubeconfig
ETCD_PORT=${ROGER_ETCD_PORT:-12379}
ETCD_PEER_PORT=${ROGER_ETCD_PEER_PORT:-12380}
API_PORT=${ROGER_API_PORT:-6443}
KCM_PORT=${ROGER_KCM_PORT:-10257}
SCHED_PORT=${ROGER_SCHEDULER_PORT:-10259}
KWOK_PORT=${ROGER_KWOK_PORT:-10247}
SERVICE_CIDR=10.96.0.0/16
POD_CIDR=10.244.0.0/16
NODES=${ROGER_FAKE_NODES:-2}
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---- PKI and kubeconfigs ---------------------------------------------------------------
cert() { # name CN O [SANs]
  local name=$1 cn=$2 org=$3 san=${4:-}
  [ -f "$PKI/$name.crt" ] && return 0
  local ext
  ext=$(mktemp)
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    if [ -n "$san" ]; then echo "extendedKeyUsage=serverAuth,clientAuth"; echo "subjectAltName=$san"
    else echo "extendedKeyUsage=clientAuth"; fi
  } >"$ext"
  local subj="/CN=$cn"
  [ -n "$org" ] && subj="/O=$org$subj"
  openssl req -new -newkey rsa:2048 -nodes -keyout "$PKI/$name.key" -subj "$subj" \
    -out "$PKI/$name.csr" 2>/dev/null
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 3650 -sha256 -extfile "$ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$ext" "$PKI/$name.csr"
}

kubeconfig() { # file user cert
  local file=$1 user=$2 c=$3
  cat >"$file" <<YAML
apiVersion: v1
kind: Config
clusters:
- name: roger-local
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 "$PKI/$c.crt")
    client-key-data: $(base64 -w0 "$PKI/$c.key")
contexts:
- name: roger-local
  context: {cluster: roger-local, user: $user}
current-context: roger-local
YAML
  chmod 600 "$file"
}

pki() {
  mkdir -p "$PKI"
  if [ ! -f "$PKI/ca.crt" ]; then
    openssl req -x509 -new -newkey rsa:2048 -nodes -keyout "$PKI/ca.key" -days 3650 \
      -subj "/CN=roger-local-ca" -out "$PKI/ca.crt" 2>/dev/null
  fi
  [ -f "$PKI/sa.key" ] || { openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
                             openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null; }
  cert apiserver kube-apiserver "" \
    "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:10.96.0.1"
  cert admin roger-admin system:masters
  cert controller-manager system:kube-controller-manager ""
  cert scheduler system:kube-scheduler ""
  cert kwok roger-kwok system:masters
  kubeconfig "$KUBECONFIG_OUT" roger-admin admin
  kubeconfig "$S/controller-manager.kubeconfig" system:kube-controller-manager controller-manager
  kubeconfig "$S/scheduler.kubeconfig" system:kube-scheduler scheduler
  kubeconfig "$S/kwok.kubeconfig" roger-kwok kwok
}

# ---- processes ---------------------------------------------------------------------------
alive() { [ -f "$PIDS/$1.pid" ] && kill -0 "$(cat "$PIDS/$1.pid")" 2>/dev/null; }

start() { # name args...
  local name=$1; shift
  alive "$name" && return 0
  [ -x "$BIN/$name" ] || die "$BIN/$name is missing: run 'make tools' (hack/tools.sh)"
  setsid "$BIN/$name" "$@" >>"$LOGS/$name.log" 2>&1 </dev/null 9>&- &
  echo $! >"$PIDS/$name.pid"
}

stop() { # name
  local name=$1 pid
  [ -f "$PIDS/$name.pid" ] || return 0
  pid=$(cat "$PIDS/$name.pid")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PIDS/$name.pid"
}

wait_for() { # description seconds command...
  local what=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { log "timed out waiting for $what"; return 1; }
    sleep 0.3
  done
}

api_ready() {
  curl -sf --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "https://127.0.0.1:$API_PORT/readyz" >/dev/null
}

kc() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_OUT" "$@"; }

start_etcd() {
  start etcd --name roger-local --data-dir "$S/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "roger-local=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync --quota-backend-bytes 4294967296 --log-level warn
}

start_apiserver() {
  start kube-apiserver --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$API_PORT" \
    --endpoint-reconciler-type none --service-cluster-ip-range "$SERVICE_CIDR" \
    --client-ca-file "$PKI/ca.crt" --tls-cert-file "$PKI/apiserver.crt" \
    --tls-private-key-file "$PKI/apiserver.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --authorization-mode Node,RBAC --cert-dir "$PKI/apiserver-generated" --profiling=false \
    --event-ttl 1h
}

start_controllers() {
  start kube-controller-manager --kubeconfig "$S/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$S/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$S/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$KCM_PORT" --leader-elect=false \
    --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
    --use-service-account-credentials=true --cluster-name roger-local \
    --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
    --cluster-cidr "$POD_CIDR" --service-cluster-ip-range "$SERVICE_CIDR" \
    --cert-dir "$PKI/kcm-generated" --profiling=false
  start kube-scheduler --kubeconfig "$S/scheduler.kubeconfig" \
    --authentication-kubeconfig "$S/scheduler.kubeconfig" \
    --authorization-kubeconfig "$S/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$SCHED_PORT" --leader-elect=false \
    --cert-dir "$PKI/scheduler-generated" --profiling=false
  start kwok --kubeconfig "$S/kwok.kubeconfig" \
    --manage-all-nodes=false --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
    --cidr 10.244.0.1/24 --node-ip 127.0.0.1 --server-address "127.0.0.1:$KWOK_PORT" \
    --config "$BIN/kwok-stages.yaml"
}

fake_nodes() {
  local i
  for i in $(seq 0 $((NODES - 1))); do
    cat <<YAML
---
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations: {kwok.x-k8s.io/node: fake, node.alpha.kubernetes.io/ttl: "0"}
  labels:
    kubernetes.io/hostname: kwok-node-$i
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    type: kwok
status:
  allocatable: {cpu: "64", memory: 256Gi, pods: "1000"}
  capacity: {cpu: "64", memory: 256Gi, pods: "1000"}
  nodeInfo: {architecture: amd64, operatingSystem: linux, kubeletVersion: fake}
YAML
  done
}

all_alive() { local c; for c in "${COMPONENTS[@]}"; do alive "$c" || return 1; done; }

up() {
  local start_s=$SECONDS
  bash "$ROOT/hack/tools.sh"
  mkdir -p "$LOGS" "$PIDS"
  # Parallel callers wait for one start instead of racing a second control plane.
  exec 9>"$S/.lock"
  flock 9
  if all_alive && api_ready; then log "already running (kubeconfig: $KUBECONFIG_OUT)"; return 0; fi
  all_alive || { down_quiet; }
  pki
  log "starting etcd and kube-apiserver on 127.0.0.1:$API_PORT"
  start_etcd
  start_apiserver
  wait_for "kube-apiserver /readyz" 90 api_ready || { tail -n 30 "$LOGS/kube-apiserver.log" >&2; die "kube-apiserver did not become ready"; }
  log "starting kube-controller-manager, kube-scheduler and kwok"
  start_controllers
  fake_nodes | kc apply -f - >/dev/null
  wait_for "fake nodes Ready" 60 kc wait --for=condition=Ready node --all --timeout=2s \
    || { tail -n 30 "$LOGS/kwok.log" >&2; die "kwok did not make the nodes Ready"; }
  wait_for "default service account" 60 kc get serviceaccount default -n default \
    || { tail -n 30 "$LOGS/kube-controller-manager.log" >&2; die "controller-manager is not working"; }
  log "ready in $((SECONDS - start_s))s: export KUBECONFIG=$KUBECONFIG_OUT (kubectl, helm in $BIN)"
}

down_quiet() {
  local c i
  for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do stop "${COMPONENTS[$i]}"; done
  # Any component still running from our bin directory is ours: leave no process behind.
  pkill -KILL -f -- "^$BIN/(etcd|kube-apiserver|kube-controller-manager|kube-scheduler|kwok) " \
    2>/dev/null || true
}

down() { down_quiet; log "stopped"; }

status() {
  local c rc=0
  for c in "${COMPONENTS[@]}"; do
    if alive "$c"; then echo "$c: running (pid $(cat "$PIDS/$c.pid"))"; else echo "$c: stopped"; rc=1; fi
  done
  [ $rc -eq 0 ] && kc get nodes -o wide 2>/dev/null | sed 's/^/  /'
  return $rc
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  stop-apiserver) stop kube-apiserver ;;
  start-apiserver) start_apiserver; wait_for "kube-apiserver /readyz" 90 api_ready ;;
  *) echo "usage: $0 up|down|status|stop-apiserver|start-apiserver" >&2; exit 2 ;;
esac
