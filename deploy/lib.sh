# shellcheck shell=bash disable=SC2034
# Helpers shared by the deploy scripts; sourced, never run. Expects `set -euo pipefail`
# and the working directory at the repository root.

DOCKER=/usr/bin/docker # Debian's client, matching the engine's API (1.41)
VENV=.venv
# Where pid files, logs and the services' secrets go; deploy/testcluster.sh keeps its own.
RUN_DIR=${RUN_DIR:-var/run}
LOG_DIR=${LOG_DIR:-var/log}
SECRETS_DIR=${SECRETS_DIR:-var/secrets}

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

# is_running NAME [PROGRAM]: true when $RUN_DIR/NAME.pid names a live process whose
# command line mentions PROGRAM (default NAME; so a recycled pid of an unrelated process
# is not mistaken for ours; a standby runs the program of its name without -standby).
is_running() {
    local pidfile="$RUN_DIR/$1.pid" pid
    [[ -f $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "${2:-${1%-standby}}"
}

# start_detached NAME COMMAND...: run COMMAND in its own session, immune to the
# terminal closing, output appended to $LOG_DIR/NAME.log, pid in $RUN_DIR/NAME.pid.
# Without job control a background child is not a group leader, so setsid execs in
# place and $! is the program's own pid.
start_detached() {
    local name=$1
    shift
    mkdir -p "$LOG_DIR" "$RUN_DIR"
    setsid nohup "$@" >>"$LOG_DIR/$name.log" 2>&1 </dev/null &
    echo $! >"$RUN_DIR/$name.pid"
}

# stop_pidfile NAME [GRACE] [PROGRAM]: SIGTERM the process of $RUN_DIR/NAME.pid (if
# is_running NAME PROGRAM), wait up to GRACE seconds (default 20) for it to exit, then
# SIGKILL; remove the pid file.
stop_pidfile() {
    local name=$1 grace=${2:-20} program=${3:-} pid deadline
    if ! is_running "$name" "$program"; then
        rm -f "$RUN_DIR/$name.pid"
        return 0
    fi
    pid=$(<"$RUN_DIR/$name.pid")
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
    rm -f "$RUN_DIR/$name.pid"
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

# Where a service answers /healthz and /readyz: the api on its HTTP port, the others on
# a metrics port of their own (given to each as ZOE_METRICS_PORT). Call after load_env.
probe_port() {
    case $1 in
        zoe-api) echo "$ZOE_HTTP_PORT" ;;
        zoe-scheduler) echo "$ZOE_SCHEDULER_METRICS_PORT" ;;
        zoe-scheduler-standby) echo "$ZOE_SCHEDULER_STANDBY_METRICS_PORT" ;;
        zoe-monitor) echo "$ZOE_MONITOR_METRICS_PORT" ;;
        zoe-executor) echo "$ZOE_EXECUTOR_METRICS_PORT" ;;
        *) die "no probe port for $1" ;;
    esac
}

# with_service_env NAME COMMAND...: run COMMAND with the environment of service NAME:
# $SECRETS_DIR/NAME.env (its own broker user's and the database role's URLs, written by
# deploy/provision.py; a standby scheduler has the scheduler's) exported over the rest.
# A subshell: the secrets never reach the caller's environment nor a command line.
with_service_env() {
    local file="$SECRETS_DIR/${1%-standby}.env"
    shift
    (
        if [[ -f $file ]]; then
            set -a
            # shellcheck source=/dev/null
            . "$file"
            set +a
        fi
        "$@"
    )
}

# start_service NAME: start zoe-api, zoe-scheduler, zoe-scheduler-standby (a second
# zoe-scheduler), zoe-monitor or zoe-executor detached, as up.sh and restart.sh do.
start_service() {
    local name=$1 program=${1%-standby}
    say "starting $name (log $LOG_DIR/$name.log)"
    if [[ $name == zoe-api ]]; then
        with_service_env "$name" start_detached "$name" "$VENV/bin/$program"
    else
        with_service_env "$name" start_detached "$name" \
            env ZOE_METRICS_PORT="$(probe_port "$name")" "$VENV/bin/$program"
    fi
}

# probe NAME ROUTE: true when http://127.0.0.1:<NAME's probe port>ROUTE answers 200.
probe() {
    "$VENV/bin/python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
        "http://127.0.0.1:$(probe_port "$1")$2" 2>/dev/null
}

# service_ready NAME: it still runs (else the end of its log is shown and the script
# fails) and its /readyz answers 200 (database, broker, consumers; the scheduler leads).
# Of two schedulers one leads: each is ready when it is alive and one of them leads.
service_ready() {
    # alive by its pid alone: right after the start its command line may still be the
    # launcher's (setsid, nohup), which is_running would not recognise
    kill -0 "$(cat "$RUN_DIR/$1.pid" 2>/dev/null)" 2>/dev/null || {
        tail -n 30 "$LOG_DIR/$1.log" >&2 || true
        die "$1 exited; the end of $LOG_DIR/$1.log is above"
    }
    case $1 in
        zoe-scheduler | zoe-scheduler-standby)
            probe "$1" /healthz || return 1
            probe zoe-scheduler /readyz || { is_running zoe-scheduler-standby \
                && probe zoe-scheduler-standby /readyz; }
            ;;
        *) probe "$1" /readyz ;;
    esac
}
