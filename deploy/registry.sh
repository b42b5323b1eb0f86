#!/usr/bin/env bash
# The deployment's image registry: Debian's docker-registry (the CNCF distribution
# server) with a config of our own, run in the background.
#   deploy/registry.sh start|stop|status [--addr HOST:PORT] [--data DIR] [--name NAME]
#   --addr  where it listens (default 127.0.0.1:5055; an engine trusts 127.0.0.1 without
#           TLS, any other address needs --insecure-registry or a certificate)
#   --data  where the images are stored (default var/registry)
#   --name  names its pid file var/run/NAME.pid, log var/log/NAME.log and config
#           var/run/NAME.yml (default registry), so that two can run side by side
#           (the folders are $RUN_DIR and $LOG_DIR when set, as in deploy/lib.sh)
# `start` waits until GET /v2/ answers; starting a running one, or stopping a stopped
# one, changes nothing. `status` exits 0 when it runs and answers, 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib.sh

usage() { sed -n '2,12s/^# \{0,1\}//p' "$0"; }

command=${1:-}
[[ -n $command ]] || {
    usage >&2
    exit 2
}
shift
addr=127.0.0.1:5055 data=var/registry name=registry
while (($#)); do
    case $1 in
        --addr) addr=${2:?--addr needs HOST:PORT} && shift ;;
        --data) data=${2:?--data needs a folder} && shift ;;
        --name) name=${2:?--name needs a name} && shift ;;
        -h | --help) usage && exit 0 ;;
        *) die "unknown option $1 (use --addr, --data, --name)" ;;
    esac
    shift
done
[[ $addr =~ ^[^:]+:[0-9]+$ ]] || die "--addr $addr is not HOST:PORT"
[[ $name =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] || die "--name $name: letters, digits, . _ - only"
config=$RUN_DIR/$name.yml

# True when GET http://ADDR/v2/ answers 200 (the registry's API version check).
answers() {
    curl -fsS -o /dev/null --max-time 2 "http://$addr/v2/" 2>/dev/null
}

start() {
    command -v docker-registry >/dev/null \
        || die "docker-registry is not installed: run deploy/install.sh (Debian package docker-registry)"
    if is_running "$name"; then
        say "$name already running (pid $(<"$RUN_DIR/$name.pid")) on $addr"
    else
        if answers; then
            die "something else already answers on http://$addr/v2/ (not $RUN_DIR/$name.pid)"
        fi
        mkdir -p "$data" "$RUN_DIR" "$LOG_DIR"
        # storage under DATA; no debug server, no auth: the deployment's hosts reach it
        # on a network of their own (docs/operations.md, "A real cluster")
        cat >"$config" <<YAML
version: 0.1
log:
  level: info
  fields: {service: $name}
storage:
  filesystem: {rootdirectory: $(realpath "$data")}
  delete: {enabled: true}
http:
  addr: $addr
  headers:
    X-Content-Type-Options: [nosniff]
YAML
        say "starting $name on $addr (data $data, log $LOG_DIR/$name.log)"
        start_detached "$name" docker-registry serve "$config"
    fi
    wait_until 30 "the registry on http://$addr/v2/" registry_ready
}

# alive by its pid (its command line names the config, hence NAME) and answering
registry_ready() {
    kill -0 "$(cat "$RUN_DIR/$name.pid" 2>/dev/null)" 2>/dev/null || {
        tail -n 20 "$LOG_DIR/$name.log" >&2 || true
        die "$name exited; the end of $LOG_DIR/$name.log is above"
    }
    answers
}

case $command in
    start) start ;;
    stop) stop_pidfile "$name" 10 ;;
    status)
        if is_running "$name" && answers; then
            echo "$name: running (pid $(<"$RUN_DIR/$name.pid")), http://$addr/v2/ answers"
        elif is_running "$name"; then
            echo "$name: running (pid $(<"$RUN_DIR/$name.pid")), http://$addr/v2/ does not answer"
            exit 1
        else
            echo "$name: not running"
            exit 1
        fi
        ;;
    *)
        usage >&2
        exit 2
        ;;
esac
