#!/usr/bin/env bash
# `make restart`: restart the services `make up` started, one at a time, each by SIGTERM,
# waiting for its exit (SIGKILL after 30 s), starting it again as up.sh does and waiting
# for its /readyz before the next. Order: the standby scheduler (if one runs, pid file
# var/run/zoe-scheduler-standby.pid), the scheduler (the standby leads meanwhile), the
# monitor, the executor, the api (clients retry its 503s and refused connections).
# A service that is not running is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib.sh

case ${1:-} in
    "") ;;
    -h | --help)
        sed -n '2,7s/^# \{0,1\}//p' "$0"
        exit 0
        ;;
    *) die "unknown option $1" ;;
esac
load_env

# The standby first: it holds nothing. The scheduler next, while its standby (if any)
# can take over; the monitor, executor and api then run under a scheduler that leads.
for service in zoe-scheduler-standby zoe-scheduler zoe-monitor zoe-executor zoe-api; do
    if ! is_running "$service"; then
        [[ $service == zoe-scheduler-standby ]] || say "$service is not running: left alone"
        continue
    fi
    stop_pidfile "$service" 30
    start_service "$service"
    say "waiting for $service to be ready (http://127.0.0.1:$(probe_port "$service")/readyz)"
    wait_until 60 "$service's /readyz" service_ready "$service"
done

say "restarted: API on http://127.0.0.1:${ZOE_HTTP_PORT}/"
