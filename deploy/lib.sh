# shellcheck shell=bash disable=SC2034
# Helpers shared by the deploy scripts; sourced, never run. Expects `set -euo pipefail`
# and the working directory at the repository root.

DOCKER=/usr/bin/docker # Debian's client, matching the engine's API (1.41)
VENV=.venv

say() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# True when something accepts TCP connections on 127.0.0.1:$1 (bash's /dev/tcp).
port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# wait_until SECONDS WHAT COMMAND...: poll COMMAND every half second until it succeeds,
# or fail naming WHAT once the deadline has passed.
wait_until() {
    local seconds=$1 what=$2
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@"; do
        if ((SECONDS >= deadline)); then
            die "$what did not answer within ${seconds}s"
        fi
        sleep 0.5
    done
}

# True when var/run/$1.pid names a live process whose command line mentions $1
# (so a recycled pid of an unrelated process is not mistaken for ours).
is_running() {
    local pidfile="var/run/$1.pid" pid
    [[ -f $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$1"
}

# start_detached NAME COMMAND...: run COMMAND in its own session, immune to the
# terminal closing, output appended to var/log/NAME.log, pid in var/run/NAME.pid.
# Without job control a background child is not a group leader, so setsid execs in
# place and $! is the program's own pid.
start_detached() {
    local name=$1
    shift
    mkdir -p var/log var/run
    setsid nohup "$@" >>"var/log/$name.log" 2>&1 </dev/null &
    echo $! >"var/run/$name.pid"
}

# stop_pidfile NAME [GRACE]: SIGTERM the process of var/run/NAME.pid, wait up to GRACE
# seconds (default 20) for it to exit, then SIGKILL; remove the pid file.
stop_pidfile() {
    local name=$1 grace=${2:-20} pid deadline
    if ! is_running "$name"; then
        rm -f "var/run/$name.pid"
        return 0
    fi
    pid=$(<"var/run/$name.pid")
    say "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + grace))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "$name did not stop within ${grace}s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "var/run/$name.pid"
}

# The services' environment: deploy/zoe.env (site settings, optional) first, then
# deploy/zoe.env.default fills in whatever is still unset. Everything is exported.
load_env() {
    set -a
    # shellcheck source=/dev/null
    if [[ -f deploy/zoe.env ]]; then . deploy/zoe.env; fi
    # shellcheck source=deploy/zoe.env.default
    . deploy/zoe.env.default
    set +a
}
