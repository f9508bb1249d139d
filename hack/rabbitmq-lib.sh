# Shared by hack/rabbitmq.sh, hack/rabbitmq4.sh and hack/rabbitmq-cluster.sh (sourced, not run).
# Runs RabbitMQ nodes as the current user on 127.0.0.1 only: one node = a name, four ports
# (AMQP, distribution, management, prometheus) and a state directory. A node runs either
# Debian's host package (3.10) or, through RMQ_CHROOT, the same scripts inside a root
# filesystem (4.0 from trixie); everything else is the same for both.

rmq_log() { printf '[%s] %s\n' "${RMQ_TAG:-rabbitmq}" "$*" >&2; }

# rmq_node NAME AMQP DIST MGMT PROM STATE: the RABBITMQ_* environment of one node. STATE is
# the path as the node sees it (inside the chroot when RMQ_CHROOT is set).
rmq_node() {
  export RABBITMQ_NODENAME=$1 RMQ_AMQP_PORT=$2 RABBITMQ_DIST_PORT=$3 RMQ_MGMT_PORT=$4
  export RMQ_PROM_PORT=$5 RMQ_STATE=$6
  export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
  export RABBITMQ_NODE_PORT=$RMQ_AMQP_PORT
  export ERL_EPMD_ADDRESS=127.0.0.1
  export RABBITMQ_MNESIA_BASE=$RMQ_STATE/mnesia
  export RABBITMQ_LOG_BASE=$RMQ_STATE/log
  export RABBITMQ_PID_FILE=$RMQ_STATE/rabbitmq.pid
  export RABBITMQ_CONFIG_FILE=$RMQ_STATE/rabbitmq   # .conf appended by rabbitmq
  export RABBITMQ_ENABLED_PLUGINS_FILE=$RMQ_STATE/enabled_plugins
  export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
  export RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
  export ERL_CRASH_DUMP=$RMQ_STATE/erl_crash.dump
}

# The node's state directory as this script sees it (outside any chroot).
rmq_host_state() { printf '%s%s' "${RMQ_CHROOT:-}" "$RMQ_STATE"; }

# Run one of RabbitMQ's scripts for the current node. Debian's /usr/sbin wrappers switch to
# the rabbitmq user and drop this environment; the real scripts run fine as the current user.
rmq() {
  local tool=$1; shift
  if [ -n "${RMQ_CHROOT:-}" ]; then
    chroot "$RMQ_CHROOT" /usr/lib/rabbitmq/bin/"$tool" "$@"
  else
    /usr/lib/rabbitmq/bin/"$tool" "$@"
  fi
}

rmq_ctl() { rmq rabbitmqctl -n "$RABBITMQ_NODENAME" -q "$@"; }

rmq_running() { rmq_ctl await_startup --timeout 2 >/dev/null 2>&1; }

# rabbitmq.conf and plugins for the current node; extra config lines come on stdin.
rmq_write_config() {
  local dir; dir=$(rmq_host_state)
  mkdir -p "$dir/log" "$dir/mnesia"
  {
    cat <<CONF
listeners.tcp.1 = 127.0.0.1:$RMQ_AMQP_PORT
loopback_users = none
management.tcp.ip = 127.0.0.1
management.tcp.port = $RMQ_MGMT_PORT
prometheus.tcp.ip = 127.0.0.1
prometheus.tcp.port = $RMQ_PROM_PORT
prometheus.return_per_object_metrics = true
vm_memory_high_watermark.relative = 0.2
disk_free_limit.absolute = 500MB
CONF
    cat
  } > "$dir/rabbitmq.conf"
  echo '[rabbitmq_management,rabbitmq_prometheus].' > "$dir/enabled_plugins"
}

# epmd must listen on loopback only; start it ourselves before any broker does. One epmd
# serves every node on the machine (chrooted ones too: it is a TCP service).
# Debian's /usr/sbin/rabbitmq* wrappers (even `rabbitmq-diagnostics --version`) start one on
# every address when none runs: say so, since only stopping every node can fix it.
rmq_epmd() {
  epmd -address 127.0.0.1 -daemon 9>&-
  if grep -qvE '^(127\.0\.0\.1|\[::1\]):' < <(ss -Hltn 'sport = :4369' 2>/dev/null | awk '{print $4}'); then
    rmq_log "WARNING: epmd listens beyond 127.0.0.1 (started outside these scripts);" \
      "stop every RabbitMQ node, then epmd, and start again"
  fi
}

# Start the current node in the background (its config already written) and wait for it.
rmq_start() { rmq_launch && rmq_wait_ready; }

# Start without waiting: clustered nodes restarted together wait for each other on boot.
# The launched process's pid goes to launch.pid, so that a wait can tell a boot that died.
rmq_launch() {
  local dir; dir=$(rmq_host_state)
  rmq_epmd
  rmq_log "starting $RABBITMQ_NODENAME on 127.0.0.1:$RMQ_AMQP_PORT (state in $dir)"
  local server=(/usr/lib/rabbitmq/bin/rabbitmq-server)
  [ -z "${RMQ_CHROOT:-}" ] || server=(chroot "$RMQ_CHROOT" "${server[@]}")
  nohup "${server[@]}" >"$dir/log/startup.log" 2>&1 9>&- &
  echo $! >"$dir/launch.pid"
}

# Whether PID is a live process of the current node (a pid file may name a pid reused since;
# this node's processes carry its name in their environment).
# (grep reads a process substitution, not a pipe: under pipefail, grep -q quitting at its
# match could SIGPIPE the writer and make a pipeline "fail" even though it matched.)
rmq_ours() {
  grep -qx "RABBITMQ_NODENAME=$RABBITMQ_NODENAME" < <(tr '\0' '\n' 2>/dev/null <"/proc/$1/environ")
}

# Whether any of the current node's four ports still has a listener.
rmq_ports_busy() {
  local p
  for p in "$RMQ_AMQP_PORT" "$RABBITMQ_DIST_PORT" "$RMQ_MGMT_PORT" "$RMQ_PROM_PORT"; do
    [ -z "$(ss -Hltn "sport = :$p" 2>/dev/null)" ] || return 0
  done
  return 1
}

# Why the last boot died: the start-up output and the crash dump's slogan.
rmq_boot_failure() {
  local dir; dir=$(rmq_host_state)
  tail -n 20 "$dir/log/startup.log" >&2 2>/dev/null || true
  [ ! -f "$dir/erl_crash.dump" ] || grep -m1 '^Slogan:' "$dir/erl_crash.dump" >&2 || true
}

# Whether the node answers now (and say so).
rmq_answers() {
  rmq_running || return 1
  rmq_log "$RABBITMQ_NODENAME ready on 127.0.0.1:$RMQ_AMQP_PORT"
}

# Wait until the node answers, for RMQ_START_PATIENCE seconds (default 240). A launched
# boot that dies (e.g. a port of the node's previous instance not yet free: a node SIGKILLed
# or stopped under load) is noticed at once, not waited out: its ports are waited for and it
# is launched once more.
rmq_wait_ready() {
  local dir pid relaunched=0 deadline=$((SECONDS + ${RMQ_START_PATIENCE:-240}))
  dir=$(rmq_host_state)
  while [ "$SECONDS" -lt "$deadline" ]; do
    if rmq_answers; then return 0; fi
    pid=$(cat "$dir/launch.pid" 2>/dev/null || true)
    if [ -n "$pid" ] && ! rmq_ours "$pid" && ! rmq_running; then
      rmq_log "$RABBITMQ_NODENAME: its boot (pid $pid) died:"
      rmq_boot_failure
      [ "$relaunched" = 0 ] || { rm -f "$dir/launch.pid"; return 1; }
      relaunched=1
      while rmq_ports_busy && [ "$SECONDS" -lt "$deadline" ]; do
        # the ports' holder may be this node, answering after all (launcher gone, node slow)
        if rmq_answers; then return 0; fi
        sleep 0.5
      done
      rmq_log "$RABBITMQ_NODENAME: its ports are free; launching it once more"
      rmq_launch
    fi
    sleep 0.5
  done
  rmq_log "$RABBITMQ_NODENAME did not start in ${RMQ_START_PATIENCE:-240} s; last log lines:"
  tail -n 40 "$dir"/log/*.log >&2 || true
  return 1
}

# Stop the current node (by its own pid); never touches epmd or any other node. Returns only
# once the node's process is gone, so that its ports are free for the next start.
rmq_stop() {
  local dir pid=""; dir=$(rmq_host_state)
  if rmq_running; then
    pid=$(rmq_ctl eval 'list_to_integer(os:getpid()).' 2>/dev/null || true)
    rmq_ctl stop >/dev/null 2>&1 || true
  fi
  [ -n "$pid" ] || pid=$(cat "$dir/rabbitmq.pid" 2>/dev/null || true)
  [ -n "$pid" ] || return 0
  rmq_ours "$pid" || return 0
  rmq_await_exit "$pid" 60 && return 0
  kill "$pid" 2>/dev/null || true
  rmq_await_exit "$pid" 120 && return 0
  rmq_log "$RABBITMQ_NODENAME (pid $pid) ignored SIGTERM for 30 s: SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  rmq_await_exit "$pid" 40
}

# rmq_await_exit PID N: wait up to N quarter seconds for PID to be gone (or a zombie).
rmq_await_exit() {
  local _
  for _ in $(seq 1 "$2"); do rmq_ours "$1" || return 0; sleep 0.25; done
  return 1
}

# -- RabbitMQ 4.x from a Debian 13 (trixie) root, run under chroot ----------------------------
# The host stays bookworm: trixie packages go only into this root (never into the host), made
# once with mmdebstrap from the mirror the host already uses, and cached across clones.
RMQ_TOOLS_CACHE=${ROGER_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/roger-tools}  # as hack/tools.sh
RMQ_TRIXIE_ROOT=$RMQ_TOOLS_CACHE/rabbitmq-trixie

# The first non-security Debian mirror in the host's apt sources (one-line or deb822 style).
rmq_debian_mirror() {
  local uri
  uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
      | awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; break } }' \
      | grep -v security | head -n 1 || true)
  if [ -z "$uri" ]; then
    uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | awk '/^URIs:/ { for (i = 2; i <= NF; i++) print $i }' | grep -v security | head -n 1 || true)
  fi
  [ -n "$uri" ] || { rmq_log "no Debian mirror found in /etc/apt/sources.list*"; return 1; }
  printf '%s\n' "$uri"
}

# Build the trixie root once (under a lock: parallel callers wait for one build).
rmq_trixie_root() {
  mkdir -p "$RMQ_TOOLS_CACHE"
  (
    flock 8
    [ -x "$RMQ_TRIXIE_ROOT/usr/lib/rabbitmq/bin/rabbitmq-server" ] && exit 0
    if ! command -v mmdebstrap >/dev/null 2>&1; then
      rmq_log "installing mmdebstrap (a host package of the host's own release)"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null \
        || { DEBIAN_FRONTEND=noninteractive apt-get update -qq \
             && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null; }
    fi
    local mirror tmp=$RMQ_TRIXIE_ROOT.tmp start=$SECONDS
    mirror=$(rmq_debian_mirror)
    rm -rf "$tmp"
    rmq_log "building a trixie root with rabbitmq-server in $RMQ_TRIXIE_ROOT"
    mmdebstrap --quiet --variant=apt --include=rabbitmq-server trixie "$tmp" "$mirror" 8>&-
    grep -qs localhost "$tmp/etc/hosts" || echo '127.0.0.1 localhost' >> "$tmp/etc/hosts"
    mv "$tmp" "$RMQ_TRIXIE_ROOT"
    rmq_log "trixie root built in $((SECONDS - start))s"
  ) 8>"$RMQ_TOOLS_CACHE/rabbitmq-trixie.lock"
}

# /proc inside the root (Erlang reads it); idempotent. /dev is not bind-mounted: mmdebstrap
# made the device nodes a node needs, and a bind-mounted /dev would let a `rm -rf` of the
# cache delete the host's devices. Stop the nodes (down) before deleting the root.
rmq_trixie_mount() {
  mountpoint -q "$RMQ_TRIXIE_ROOT/proc" || mount --bind /proc "$RMQ_TRIXIE_ROOT/proc"
}

# Whether any process (a node, a CLI call) still runs inside the root.
rmq_trixie_in_use() {
  local p
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/root" 2>/dev/null)" = "$RMQ_TRIXIE_ROOT" ] && return 0
  done
  return 1
}

# Unmount once no process runs inside the root any more (/dev: roots mounted by older scripts).
rmq_trixie_unmount() {
  local m
  rmq_trixie_in_use && return 0
  for m in dev proc; do
    if mountpoint -q "$RMQ_TRIXIE_ROOT/$m"; then umount "$RMQ_TRIXIE_ROOT/$m" || umount -l "$RMQ_TRIXIE_ROOT/$m"; fi
  done
}
