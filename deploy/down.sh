#!/usr/bin/env bash
# `make down`: stop the services and the registry deploy/up.sh started, by their pid files.
#   --purge  also remove the containers (and networks) labelled zoe.deployment=$ZOE_DEPLOYMENT
#            that the platform left behind, e.g. after a crash or a SIGKILL
#   --all    also stop the dockerd that deploy/install.sh started (var/run/dockerd.pid)
# RabbitMQ and PostgreSQL are left running: other programs on the host share them.
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib.sh

purge=no all=no
for arg in "$@"; do
    case $arg in
        --purge) purge=yes ;;
        --all) all=yes ;;
        -h | --help)
            sed -n '2,6s/^# \{0,1\}//p' "$0"
            exit 0
            ;;
        *) die "unknown option $arg (use --purge, --all)" ;;
    esac
done
load_env

# Requests stop first, then placements, then verdicts; the executor goes last so the
# facts of containers stopping meanwhile are still reported.
for service in zoe-api zoe-scheduler-standby zoe-scheduler zoe-monitor zoe-executor; do
    stop_pidfile "$service" 20
done

# the registry's images stay in var/registry for the next `make up`
deploy/registry.sh stop

if [[ $purge == yes ]] && "$DOCKER" info >/dev/null 2>&1; then
    label="zoe.deployment=$ZOE_DEPLOYMENT"
    containers=$("$DOCKER" ps -aq --filter "label=$label")
    if [[ -n $containers ]]; then
        say "removing the containers labelled $label"
        # shellcheck disable=SC2086  # one id per word
        "$DOCKER" rm -f $containers >/dev/null
    fi
    networks=$("$DOCKER" network ls -q --filter "label=$label")
    if [[ -n $networks ]]; then
        say "removing the networks labelled $label"
        # shellcheck disable=SC2086
        "$DOCKER" network rm $networks >/dev/null
    fi
    # the executors' records of which network each execution uses (not the user data)
    claims=$("$DOCKER" volume ls -q --filter "label=$label" --filter "label=zoe.network")
    if [[ -n $claims ]]; then
        # shellcheck disable=SC2086
        "$DOCKER" volume rm $claims >/dev/null
    fi
fi

if [[ $all == yes ]]; then
    # Only a dockerd we started: one started by someone else has no pid file of ours.
    stop_pidfile dockerd 30
fi

say "Zoe is down"
