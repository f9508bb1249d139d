#!/usr/bin/env bash
# A real node in the local cluster, beside the kwok nodes: kubelet (built from the same
# k8s.io/kubernetes module as the control plane, hack/tools.sh), Debian's containerd and
# runc, the project's images imported into containerd's store (no registry, no pulls).
#
# Network: a bridge the project creates (roger0, 10.213.0.1/24, a private range nothing
# else here uses) is the Pods' network (CNI bridge + host-local, no masquerading, no default
# route: Pods reach this machine's bridge address and nothing else). The node's address is
# the bridge's, and so is its name (an address, so the API server's `kubectl logs/exec`
# never looks a name up in DNS). RabbitMQ on 127.0.0.1:5672 (and its management API on
# 15672) is forwarded from 10.213.0.1 for the Pods (and for the operator, which reads queue
# depths from the host of the Secret's URL).
#
# The node is tainted roger.dev/real-node=true:NoSchedule and labelled
# roger.dev/real-node=true: only Pods that ask for it land there.
#
# What it took on these machines (see docs/real-node.md):
# - containerd's `restrict_oom_score_adj`: the kubelet asks for negative oom_score_adj
#   (-998 for sandboxes) and CAP_SYS_RESOURCE is outside this machine's bounding set; runc
#   then failed every sandbox with "can't get final child's PID from pipe: EOF";
# - `failCgroupV1: false`, `cgroupDriver: cgroupfs` (hybrid cgroups, no systemd);
# - a pause image built here (hack/tools/pause) and tagged with containerd's sandbox name.
#
# Usage: hack/node.sh up|down|status|load-images
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
S=${ROGER_STATE_DIR:-$ROOT/.cluster}
BIN=$S/bin
PKI=$S/pki
N=$S/node
CACHE=${ROGER_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/roger-tools}
BRIDGE=roger0
NODE_IP=10.213.0.1
POD_SUBNET=10.213.0.0/24
NODE_NAME=$NODE_IP
PAUSE_IMAGE=registry.k8s.io/pause:3.10
AMQP_PORT=${ROGER_AMQP_PORT:-5672}
MGMT_PORT=${ROGER_MGMT_PORT:-15672}  # the operator reads queue depths from the URL's host
KUBELET_HEALTH_PORT=${ROGER_KUBELET_HEALTH_PORT:-10248}
SOCK=$N/containerd.sock
# The `kubernetes` Service's ClusterIP (in the API server's certificate): Pods' in-cluster
# config dials it. It is put on the bridge, routed to from the Pods, and forwarded to the
# API server on 127.0.0.1 (there is no kube-proxy).
API_SERVICE_IP=${ROGER_API_SERVICE_IP:-10.96.0.1}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$ROOT/hack/containers/containers.conf}
ctr() { command ctr --address "$SOCK" -n k8s.io "$@"; }
has_image() { local all; all=$(ctr images ls -q); grep -qx "$1" <<<"$all"; }
kc() { "$BIN/kubectl" --kubeconfig "$S/kubeconfig" "$@"; }
log() { printf '[node] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
alive() { [ -f "$N/$1.pid" ] && kill -0 "$(cat "$N/$1.pid")" 2>/dev/null; }

start() { # name command...: a background process of ours, its pid in $N/NAME.pid
  local name=$1; shift
  alive "$name" && return 0
  setsid "$@" >>"$N/$name.log" 2>&1 </dev/null 8>&- 9>&- &
  echo $! >"$N/$name.pid"
}

stop() { # name
  local pid
  [ -f "$N/$1.pid" ] || return 0
  pid=$(cat "$N/$1.pid")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$N/$1.pid"
}

wait_for() { # what seconds command...
  local what=$1 secs=$2 deadline; shift 2
  deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "timed out waiting for $what"
    sleep 0.5
  done
}

packages() {
  local need=()
  command -v containerd >/dev/null 2>&1 || need+=(containerd)
  command -v runc >/dev/null 2>&1 || need+=(runc)
  # pause_image imports with podman before load_images (hack/images.sh) would install it.
  command -v podman >/dev/null 2>&1 || need+=(podman)
  [ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
  [ ${#need[@]} -eq 0 ] && return 0
  log "installing ${need[*]} (Debian packages)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "${need[@]}" >/dev/null \
    || { apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null; } \
    || die "could not install ${need[*]}"
}

bridge() {
  ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
  local addrs  # (captured first: `ip ... | grep -q` fails under pipefail when grep exits early)
  addrs=$(ip -4 -o addr show dev "$BRIDGE")
  [[ $addrs == *" $NODE_IP/24 "* ]] || ip addr add "$NODE_IP/24" dev "$BRIDGE"
  [[ $addrs == *" $API_SERVICE_IP/32 "* ]] || ip addr add "$API_SERVICE_IP/32" dev "$BRIDGE"
  ip link set "$BRIDGE" up
}

configs() {
  mkdir -p "$N/cni" "$N/kubelet" "$N/pki"
  cat >"$N/cni/10-roger.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "roger-pods", "plugins": [
  {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "dataDir": "$N/cni-ipam",
            "ranges": [[{"subnet": "$POD_SUBNET", "gateway": "$NODE_IP"}]],
            "routes": [{"dst": "$API_SERVICE_IP/32"}]}},
  {"type": "loopback"}]}
EOF
  cat >"$N/containerd.toml" <<EOF
version = 2
root = "$N/containerd"
state = "$N/containerd-state"
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    snapshotter = "overlayfs"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$N/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$N/cni"
EOF
  cat >"$N/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTH_PORT
# The API server reaches it on the bridge address only (logs, exec); nothing else can.
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$SOCK
registerWithTaints:
  - {key: roger.dev/real-node, value: "true", effect: NoSchedule}
# A shared development machine: never evict for its disk or memory.
evictionHard: {memory.available: "1Mi", nodefs.available: "1%", imagefs.available: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
resolvConf: ""
EOF
  if [ ! -s "$N/pki/kubelet.crt" ]; then  # the node's identity: system:node:<name>
    openssl req -new -newkey rsa:2048 -nodes -keyout "$N/pki/kubelet.key" \
      -subj "/O=system:nodes/CN=system:node:$NODE_NAME" -out "$N/pki/kubelet.csr" 2>/dev/null
    openssl x509 -req -in "$N/pki/kubelet.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
      -CAcreateserial -CAserial "$N/pki/ca.srl" -days 365 -out "$N/pki/kubelet.crt" 2>/dev/null
  fi
  local server
  server=$(awk '$1 == "server:" {print $2; exit}' "$S/kubeconfig")
  cat >"$N/kubelet.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: local, cluster: {server: "$server", certificate-authority: "$PKI/ca.crt"}}]
users: [{name: node, user: {client-certificate: "$N/pki/kubelet.crt", client-key: "$N/pki/kubelet.key"}}]
contexts: [{name: node, context: {cluster: local, user: node}}]
current-context: node
EOF
}

pause_image() { # a pause binary built here, as containerd's sandbox image
  has_image "$PAUSE_IMAGE" && return 0
  local dir=$CACHE/pause
  mkdir -p "$dir/rootfs"
  (cd "$ROOT/hack/tools/pause" && CGO_ENABLED=0 go build -ldflags "-s -w" -o "$dir/rootfs/pause" .)
  tar -C "$dir/rootfs" -cf "$dir/rootfs.tar" .
  podman import --quiet --change 'ENTRYPOINT=["/pause"]' --change 'USER=65535:65535' \
    "$dir/rootfs.tar" "$PAUSE_IMAGE" >/dev/null
  rm -f "$dir/pause.tar"
  podman save --quiet -o "$dir/pause.tar" "$PAUSE_IMAGE"
  ctr images import "$dir/pause.tar" >/dev/null
}

load_images() { # the project's images, when podman's differ from what containerd holds
  bash "$ROOT/hack/images.sh" build >/dev/null
  local image id stamp
  mkdir -p "$N/images"
  for image in $(bash "$ROOT/hack/images.sh" names); do
    id=$(podman image inspect --format '{{.Id}}' "$image")
    stamp=$N/images/$(echo "$image" | tr '/:' '__')
    if [ "$(cat "$stamp" 2>/dev/null)" = "$id" ] && has_image "$image"; then
      continue
    fi
    log "importing $image into containerd"
    podman save --quiet -o "$N/images/image.tar" "$image"
    ctr images import "$N/images/image.tar" >/dev/null
    rm -f "$N/images/image.tar"
    echo "$id" >"$stamp"
  done
}

node_ready() {
  [ "$(kc get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]
}

up() {
  [ -s "$S/kubeconfig" ] || die "the cluster is not up: make cluster-up"
  packages
  [ -x "$BIN/kubelet" ] || bash "$ROOT/hack/tools.sh"
  mkdir -p "$N"
  exec 9>"$N/.lock"
  flock 9
  bridge
  configs
  start containerd containerd --config "$N/containerd.toml"
  wait_for "containerd" 30 ctr version
  pause_image
  load_images
  start amqp-proxy "$ROOT/.venv/bin/python" -m roger_devtools.tcpproxy \
    --listen "$NODE_IP:$AMQP_PORT" --target "$AMQP_PORT"
  start management-proxy "$ROOT/.venv/bin/python" -m roger_devtools.tcpproxy \
    --listen "$NODE_IP:$MGMT_PORT" --target "$MGMT_PORT"
  local api_port
  api_port=$(awk '$1 == "server:" {print $2; exit}' "$S/kubeconfig" | sed 's/.*://')
  start api-proxy "$ROOT/.venv/bin/python" -m roger_devtools.tcpproxy \
    --listen "$API_SERVICE_IP:443" --target "$api_port"
  start kubelet "$BIN/kubelet" --config "$N/kubelet.yaml" --kubeconfig "$N/kubelet.kubeconfig" \
    --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" --root-dir "$N/kubelet" \
    --cert-dir "$N/pki/serving" --node-labels roger.dev/real-node=true
  wait_for "node $NODE_NAME Ready (log: $N/kubelet.log)" 90 node_ready
  log "node $NODE_NAME Ready (containerd $(containerd --version | awk '{print $3}'), Pods on $POD_SUBNET)"
}

down() {
  mkdir -p "$N"
  stop kubelet
  if alive containerd; then  # every Pod's containers and sandboxes, then containerd
    local c
    for c in $(ctr tasks ls -q 2>/dev/null); do ctr tasks kill -s KILL "$c" >/dev/null 2>&1 || true; done
    sleep 1
    for c in $(ctr containers ls -q 2>/dev/null); do
      ctr tasks delete -f "$c" >/dev/null 2>&1 || true
      ctr containers delete "$c" >/dev/null 2>&1 || true
    done
  fi
  stop containerd
  stop amqp-proxy
  stop management-proxy
  stop api-proxy
  # the kubelet's and containerd's mounts under the state directory, deepest first
  local real  # /proc/mounts has the path with symlinks resolved (.cluster may be one)
  real=$(readlink -f "$N")
  awk -v n="$real/" 'index($2, n) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
  kc delete node "$NODE_NAME" --wait=false >/dev/null 2>&1 || true
  if ip link show "$BRIDGE" >/dev/null 2>&1; then ip link del "$BRIDGE"; fi
  log "stopped"
}

status() {
  if alive kubelet && alive containerd && node_ready; then
    echo "real node: $NODE_NAME Ready (kubelet + containerd, Pods on $POD_SUBNET)"
  else
    echo "real node: stopped"; return 1
  fi
}

case "${1:-}" in
  up) up ;; down) down ;; status) status ;;
  load-images) load_images ;;
  *) echo "usage: $0 up|down|status|load-images" >&2; exit 2 ;;
esac
