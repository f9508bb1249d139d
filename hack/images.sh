#!/usr/bin/env bash
# Build the project's images here, without any container registry.
#
# The Dockerfiles start FROM ${PYTHON_IMAGE} (python:3.11-slim by default, for builds
# anywhere else). Here the base is made from Debian packages: a bookworm root (python3
# 3.11, python3-venv) built with mmdebstrap from the machine's Debian mirror, with a venv in
# /opt/python first on PATH (what python:3.11-slim's /usr/local is: `python` and `pip` that
# may install), imported with `podman import`. The root's tarball is cached in
# ~/.cache/roger-tools keyed by its recipe; podman's layer cache keeps the rest warm.
# `pip` in the build stages reaches PyPI through host networking (the host's trust store is
# mounted for the build, so the machine's TLS setup applies); nothing is ever pulled
# (--pull=never).
#
# Usage: hack/images.sh build|base|sizes|names
#   build  the base, roger-worker, roger-operator and roger-example-worker, tagged with the
#          project's version; prints their sizes
#   names  the three image names with their tag, one a line
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=hack/rabbitmq-lib.sh
source "$ROOT/hack/rabbitmq-lib.sh"  # rmq_debian_mirror, RMQ_TOOLS_CACHE
export CONTAINERS_CONF=${CONTAINERS_CONF:-$ROOT/hack/containers/containers.conf}
CACHE=$RMQ_TOOLS_CACHE
SUITE=bookworm  # python3 3.11: the floor of requires-python, as python:3.11-slim
PACKAGES=python3,python3-venv,ca-certificates
BASE=localhost/roger-python:3.11-$SUITE
VERSION=$(awk -F'"' '/^version *=/ {print $2; exit}' "$ROOT/pyproject.toml")
WORKER=localhost/roger-worker:$VERSION
OPERATOR=localhost/roger-operator:$VERSION
EXAMPLE=localhost/roger-example-worker:$VERSION

log() { printf '[images] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# The root without documentation, manuals and translations (copyright files stay).
MMDEBSTRAP_ARGS=(
  --quiet --variant=minbase "--include=$PACKAGES"
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-exclude=/usr/share/info/*'
  --customize-hook='chroot "$1" python3 -m venv /opt/python'
  --customize-hook='chroot "$1" /opt/python/bin/pip --version'
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/*'
)
IMPORT_CHANGES=(
  --change 'ENV=PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  --change 'ENV=LANG=C.UTF-8'
  --change 'CMD=["python3"]'
)

need_podman() { # and mmdebstrap, which builds the base root
  local need=()
  command -v podman >/dev/null 2>&1 || need+=(podman)
  command -v runc >/dev/null 2>&1 || need+=(runc)
  command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
  [ ${#need[@]} -eq 0 ] && return 0
  log "installing ${need[*]} (Debian packages)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "${need[@]}" >/dev/null \
    || { apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null; } \
    || die "could not install ${need[*]}"
}

base() {
  local key tar
  key=$(printf '%s\n' "$SUITE" "${MMDEBSTRAP_ARGS[@]}" "${IMPORT_CHANGES[@]}" | sha256sum | cut -c1-12)
  if [ "$(podman image inspect --format '{{index .Labels "roger.recipe"}}' "$BASE" 2>/dev/null)" = "$key" ]; then
    return 0
  fi
  tar=$CACHE/python-$SUITE-$key.tar
  mkdir -p "$CACHE"
  (
    flock 8
    [ -s "$tar" ] && exit 0
    local start=$SECONDS mirror
    mirror=$(rmq_debian_mirror)
    log "building a $SUITE root with $PACKAGES (cached in $tar)"
    # (mmdebstrap picks the output format from the name: it must end in .tar)
    mmdebstrap "${MMDEBSTRAP_ARGS[@]}" "$SUITE" "$tar.tmp.tar" "$mirror" 8>&- \
      || { rm -f "$tar.tmp.tar"; die "mmdebstrap failed"; }
    mv "$tar.tmp.tar" "$tar"
    log "root built in $((SECONDS - start))s"
  ) 8>"$CACHE/python-$SUITE.lock"
  podman import --quiet "${IMPORT_CHANGES[@]}" --change "LABEL=roger.recipe=$key" "$tar" "$BASE" >/dev/null
  log "imported $BASE"
}

build_args() { # the flags every build shares
  local args=(--pull=never --network host --layers)
  local bundle=/etc/ssl/certs/ca-certificates.crt
  [ -s "$bundle" ] && args+=(--volume "$bundle:$bundle:ro")
  printf '%s\n' "${args[@]}"
}

build() {
  need_podman
  local start=$SECONDS common
  mapfile -t common < <(build_args)
  mkdir -p "$CACHE"
  exec 7>"$CACHE/images.lock"  # parallel test runs build once, one after the other
  flock 7
  base
  log "building $WORKER, $OPERATOR and $EXAMPLE"
  podman build --quiet "${common[@]}" --build-arg "PYTHON_IMAGE=$BASE" \
    -f "$ROOT/worker/Dockerfile" -t "$WORKER" "$ROOT" >/dev/null
  podman build --quiet "${common[@]}" --build-arg "PYTHON_IMAGE=$BASE" \
    -f "$ROOT/operator/Dockerfile" -t "$OPERATOR" "$ROOT" >/dev/null
  podman build --quiet "${common[@]}" --build-arg "ROGER_WORKER_IMAGE=$WORKER" \
    -f "$ROOT/examples/Dockerfile" -t "$EXAMPLE" "$ROOT/examples" >/dev/null
  log "built in $((SECONDS - start))s"
  sizes
}

sizes() {
  podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' \
    | grep -E "^($BASE|$WORKER|$OPERATOR|$EXAMPLE) " | sort
}

case "${1:-}" in
  build) build ;;
  base) need_podman; base ;;
  sizes) sizes ;;
  names) printf '%s\n' "$WORKER" "$OPERATOR" "$EXAMPLE" ;;
  *) echo "usage: $0 build|base|sizes|names" >&2; exit 2 ;;
esac
