#!/usr/bin/env bash
# KEDA for spec.autoscaling.engine keda, from the Go module github.com/kedacore/keda/v2 pinned
# in hack/tools/keda/go.mod, fetched through the Go module proxy only (never another download).
#
#   hack/keda.sh version     the pinned version
#   hack/keda.sh crds        copy KEDA's CRDs into .cluster/keda/<version>/ and apply them to
#                            the local API server (idempotent); prints the directory
#   hack/keda.sh operator    build KEDA's operator from the module (cached by version in the
#                            tools cache, like hack/tools.sh); prints the binary's path
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODDIR=$ROOT/hack/tools/keda
CACHE=${ROGER_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/roger-tools}
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

operator() {
  local out=$CACHE/keda-$VERSION
  if [ ! -x "$out/keda" ]; then
    # Built inside a copy of the module itself: its go.mod's replace and exclude directives
    # apply only there (not to a module that merely requires it).
    local src
    src=$(mktemp -d)
    trap 'chmod -R u+w "$src" && rm -rf "$src"' EXIT
    cp -r "$(module_dir)"/. "$src/"
    chmod -R u+w "$src"
    mkdir -p "$out"
    log "building KEDA $VERSION's operator (cold: many minutes; cached afterwards in $out)"
    local start=$SECONDS
    (cd "$src" && go build -ldflags "-s -w -X github.com/kedacore/keda/v2/version.Version=$VERSION" \
      -o "$out/keda.tmp" ./cmd/operator) >"$out/build.log" 2>&1 \
      || { tail -n 30 "$out/build.log" >&2; die "go build failed (log: $out/build.log)"; }
    mv "$out/keda.tmp" "$out/keda"
    log "built in $((SECONDS - start))s"
  fi
  printf '%s\n' "$out/keda"
}

case ${1:-} in
  version) printf '%s\n' "$VERSION" ;;
  crds) crds ;;
  operator) operator ;;
  *) die "usage: hack/keda.sh version|crds|operator" ;;
esac
