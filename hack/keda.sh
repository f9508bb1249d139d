#!/usr/bin/env bash
# KEDA for spec.autoscaling.engine keda, from the Go module github.com/kedacore/keda/v2 pinned
# in hack/tools/keda/go.mod, fetched through the Go module proxy only (never another download).
# Only its CRDs: building KEDA's operator from the module did not finish in 30 minutes here.
#
#   hack/keda.sh version     the pinned version
#   hack/keda.sh crds        copy KEDA's CRDs into .cluster/keda/<version>/ and apply them to
#                            the local API server (idempotent); prints the directory
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODDIR=$ROOT/hack/tools/keda
KUBECTL=${KUBECTL:-$ROOT/.cluster/bin/kubectl}
KUBECONFIG=${KUBECONFIG:-$ROOT/.cluster/kubeconfig}
export GOFLAGS=${GOFLAGS:--mod=mod}

log() { printf '[keda] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

VERSION=$(awk '$1=="require" && $2=="github.com/kedacore/keda/v2" {print $3}' "$MODDIR/go.mod")
[ -n "$VERSION" ] || die "no github.com/kedacore/keda/v2 version in hack/tools/keda/go.mod"

module_dir() { # the module's source in the Go module cache (downloaded through GOPROXY once)
  command -v go >/dev/null 2>&1 || die "Go is required to fetch github.com/kedacore/keda/v2"
  local dir
  dir=$(cd "$MODDIR" && go mod download -json github.com/kedacore/keda/v2 \
        | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [ -d "$dir/config/crd/bases" ] || die "github.com/kedacore/keda/v2@$VERSION has no config/crd/bases"
  printf '%s\n' "$dir"
}

crds() {
  local out=$ROOT/.cluster/keda/$VERSION
  if [ ! -s "$out/keda.sh_scaledobjects.yaml" ]; then
    mkdir -p "$out.tmp"
    cp "$(module_dir)"/config/crd/bases/*.yaml "$out.tmp/"
    rm -rf "$out" && mv "$out.tmp" "$out"
  fi
  "$KUBECTL" --kubeconfig "$KUBECONFIG" apply --server-side --force-conflicts \
    --field-manager roger-keda-crds -f "$out" >&2
  for f in "$out"/*.yaml; do
    local name
    name=$(basename "$f" .yaml); name=${name#*_}.${name%%_*}
    "$KUBECTL" --kubeconfig "$KUBECONFIG" wait --for=condition=Established \
      "crd/$name" --timeout=60s >/dev/null
  done
  log "KEDA $VERSION CRDs applied from $out"
  printf '%s\n' "$out"
}

case ${1:-} in
  version) printf '%s\n' "$VERSION" ;;
  crds) crds ;;
  *) die "usage: hack/keda.sh version|crds" ;;
esac
