#!/usr/bin/env bash
# Build (or reuse) the pinned control-plane binaries from Go modules, cache them outside
# the repo keyed by version, and link them into .cluster/bin.
#
# Versions live in one place: the go.mod files under hack/tools/ (kube, etcd, kwok, helm).
# KUBEBUILDER_ASSETS, when it holds a kube-apiserver/etcd/kubectl of the pinned versions,
# is used instead of building those.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOOLS=$ROOT/hack/tools
CACHE=${ROGER_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/roger-tools}
BIN=$ROOT/.cluster/bin
export GOFLAGS=${GOFLAGS:--mod=mod}

log() { printf '[tools] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

mod_version() { # module dir, module path -> pinned version from go.mod
  awk -v m="$2" '$1==m && $2 ~ /^v/ {print $2; exit} $1=="require" && $2==m {print $3; exit}' "$TOOLS/$1/go.mod"
}

command -v go >/dev/null 2>&1 || die "Go is required (go 1.26+) to build the control plane"

K8S=$(mod_version kube k8s.io/kubernetes)
ETCD=$(mod_version etcd go.etcd.io/etcd/server/v3)
KWOK=$(mod_version kwok sigs.k8s.io/kwok)
HELM=$(mod_version helm helm.sh/helm/v3)
[ -n "$K8S" ] && [ -n "$ETCD" ] && [ -n "$KWOK" ] && [ -n "$HELM" ] \
  || die "could not read pinned versions from hack/tools/*/go.mod"

# Builds from a module carry no release metadata: stamp the versions the way release
# builds do, so `kubectl version`, Helm's kubeVersion checks and `helm version` are right.
k8s_minor=${K8S#v1.}; k8s_minor=${k8s_minor%%.*}
K8S_LDFLAGS="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  K8S_LDFLAGS+=" -X $p.gitVersion=$K8S -X $p.gitMajor=1 -X $p.gitMinor=$k8s_minor"
  K8S_LDFLAGS+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
done
HELM_LDFLAGS="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM"
HELM_LDFLAGS+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"

# reports TEXT CMD...: whether CMD's output contains TEXT. Not `CMD | grep -q TEXT`: under
# pipefail, grep exiting at the first match can kill CMD with SIGPIPE, the pipeline then
# "fails", and a good binary was deleted and rebuilt (minutes without kubectl for every
# suite on the machine).
reports() {
  local text=$1 out; shift
  out=$("$@" 2>/dev/null) || return 1
  [[ $out == *"$text"* ]]
}

# build DIR OUT_DIR LDFLAGS PACKAGE... : one `go build` per module so packages compile once.
# A cached binary is reused only if it reports the pinned version (STAMP, when given).
build() {
  local moddir=$1 out=$2 ldflags=$3; shift 3
  local missing=()
  for pkg in "$@"; do
    local b
    b=$out/$(basename "$pkg")
    if [ ! -x "$b" ] || { [ -n "${STAMP:-}" ] && ! reports "$STAMP" "$b" --version; }; then
      missing+=("$pkg")
    fi
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  mkdir -p "$out.tmp"
  log "building ${missing[*]##*/} in hack/tools/$moddir (cold: minutes; cached afterwards in $out)"
  local start=$SECONDS
  if ! (cd "$TOOLS/$moddir" && go build -ldflags "$ldflags" -o "$out.tmp/" "${missing[@]}") >"$out.log" 2>&1; then
    tail -n 30 "$out.log" >&2
    die "go build failed in hack/tools/$moddir (full log: $out.log). If the module proxy refused a
       module, the line above names it; try another pinned version in hack/tools/$moddir/go.mod."
  fi
  mv "$out.tmp"/* "$out/" 2>/dev/null || { mkdir -p "$out" && mv "$out.tmp"/* "$out/"; }
  rmdir "$out.tmp"
  log "built in $((SECONDS - start))s"
}

mkdir -p "$BIN" "$CACHE"
# One build at a time per machine: parallel test sessions all call this script.
exec 9>"$CACHE/.lock"
flock 9
k8s_out=$CACHE/k8s-$K8S
mkdir -p "$k8s_out"
if [ -n "${KUBEBUILDER_ASSETS:-}" ] && [ -x "$KUBEBUILDER_ASSETS/kube-apiserver" ] \
   && reports "$K8S" "$KUBEBUILDER_ASSETS/kube-apiserver" --version; then
  log "using kube-apiserver/kubectl/etcd from KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS"
  for b in kube-apiserver kubectl; do
    [ -x "$KUBEBUILDER_ASSETS/$b" ] && ln -sf "$KUBEBUILDER_ASSETS/$b" "$k8s_out/$b"
  done
fi
# kubelet: the real node (hack/node.sh) runs the same Kubernetes as the control plane.
STAMP=$K8S build kube "$k8s_out" "$K8S_LDFLAGS" k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler \
  k8s.io/kubernetes/cmd/kubelet

etcd_out=$CACHE/etcd-$ETCD
mkdir -p "$etcd_out"
if [ -n "${KUBEBUILDER_ASSETS:-}" ] && [ -x "$KUBEBUILDER_ASSETS/etcd" ] && [ ! -x "$etcd_out/etcd" ] \
   && reports "${ETCD#v}" "$KUBEBUILDER_ASSETS/etcd" --version; then
  ln -sf "$KUBEBUILDER_ASSETS/etcd" "$etcd_out/etcd"
fi
if [ ! -x "$etcd_out/etcd" ]; then
  # The module's root package is etcd's main package; build it under the name etcd.
  build etcd "$etcd_out" "-s -w" go.etcd.io/etcd/server/v3
  for n in server v3; do if [ -x "$etcd_out/$n" ]; then mv "$etcd_out/$n" "$etcd_out/etcd"; fi; done
fi

# kubectl --version is not a flag; its stamp is checked through `kubectl version --client`.
if [ -x "$k8s_out/kubectl" ] && ! reports "$K8S" "$k8s_out/kubectl" version --client; then
  rm -f "$k8s_out/kubectl"
fi
build kube "$k8s_out" "$K8S_LDFLAGS" k8s.io/kubernetes/cmd/kubectl
build kwok "$CACHE/kwok-$KWOK" "-s -w" sigs.k8s.io/kwok/cmd/kwok
if [ -x "$CACHE/helm-$HELM/helm" ] && ! reports "$HELM" "$CACHE/helm-$HELM/helm" version --short; then
  rm -f "$CACHE/helm-$HELM/helm"
fi
build helm "$CACHE/helm-$HELM" "$HELM_LDFLAGS" helm.sh/helm/v3/cmd/helm

# kwok needs Stages (how fake nodes and pods move through their lifecycle). Use the ones
# its module ships: node init + heartbeat (so nodes stay Ready) and the fast pod stages.
stages=$CACHE/kwok-$KWOK/stages.yaml
if [ ! -s "$stages" ]; then
  kwok_src=$(cd "$TOOLS/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)
  for f in node/fast/node-initialize node/heartbeat/node-heartbeat pod/fast/pod-ready \
           pod/fast/pod-complete pod/fast/pod-delete; do
    [ -f "$kwok_src/kustomize/stage/$f.yaml" ] || die "kwok stage $f.yaml not found in $kwok_src"
    printf -- '---\n'; cat "$kwok_src/kustomize/stage/$f.yaml"; printf '\n'
  done >"$stages.tmp" && mv "$stages.tmp" "$stages"
fi

# Each link is replaced atomically (a new link renamed over the old one): suites running
# side by side call this script while others run kubectl, which must never find a gap.
link() { ln -sfn "$1" "$2.tmp.$$" && mv -Tf "$2.tmp.$$" "$2"; }
for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl; do link "$k8s_out/$b" "$BIN/$b"; done
link "$etcd_out/etcd" "$BIN/etcd"
link "$CACHE/kwok-$KWOK/kwok" "$BIN/kwok"
link "$CACHE/helm-$HELM/helm" "$BIN/helm"
link "$stages" "$BIN/kwok-stages.yaml"
log "ready in .cluster/bin: kubernetes $K8S, etcd $ETCD, kwok $KWOK, helm $HELM"
