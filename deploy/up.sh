#!/usr/bin/env bash
# `make up`: install what is missing, build the local images, migrate the database,
# start the registry (ZOE_REGISTRY), api, scheduler, monitor and one executor in the
# background, submit the demo ZApp.
# Running it again leaves running services alone and submits one more demo execution.
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib.sh

deploy/install.sh
load_env

# Least privilege (deploy/provision.py): one broker user per service process with the
# rights the route table gives it, a PostgreSQL role that is no superuser owning the
# database; their passwords and each process's URLs go to var/secrets/ (0600).
# rabbitmqctl only reaches a local node: a remote broker's users are the site's to make.
amqp_host=$("$VENV/bin/python" -c 'import sys, urllib.parse as u; print(u.urlsplit(sys.argv[1]).hostname or "")' "$ZOE_AMQP_URL")
broker=()
if ! [[ $amqp_host =~ ^(127\.0\.0\.1|localhost|::1)$ ]] || ! command -v rabbitmqctl >/dev/null; then
    say "the broker at $amqp_host is not local: every service uses ZOE_AMQP_URL as it is"
    broker=(--no-broker)
fi
say "provisioning the services' broker users and database role (var/secrets/)"
"$VENV/bin/python" -m deploy.provision --node "$ZOE_NODE_NAME" "${broker[@]}"

# The registry before the executor: it pulls the images it lacks from there.
if [[ -n $ZOE_REGISTRY ]]; then
    deploy/registry.sh start --addr "$ZOE_REGISTRY"
fi

# Images before services: the executor may start the demo as soon as it is submitted.
say "building the base and demo images (skipped when present)"
"$VENV/bin/python" -m services.executor.images build --zapp zapps/hello

# The schema before any service: each of them expects the tables in place.
say "migrating the database"
with_service_env zoe-scheduler "$VENV/bin/zoe-migrate"

# The first admin, once (its password printed here, once), and an admin token for the
# CLI in var/secrets/admin.token (mode 0600): `export ZOE_TOKEN_FILE=var/secrets/admin.token`.
with_service_env zoe-api "$VENV/bin/python" -m services.api.bootstrap --token-file var/secrets/admin.token
export ZOE_TOKEN_FILE=$PWD/var/secrets/admin.token

# The api first, then the services that consume commands and facts; each declares the
# bus topology on start, so their order is otherwise free. Each other than the api gets
# its own ZOE_METRICS_PORT (deploy/zoe.env.default) for /metrics, /healthz and /readyz.
for service in zoe-api zoe-scheduler zoe-monitor zoe-executor; do
    if is_running "$service"; then
        say "$service already running (pid $(<"var/run/$service.pid"))"
    else
        start_service "$service"
    fi
done

for service in zoe-api zoe-scheduler zoe-monitor zoe-executor; do
    say "waiting for $service to be ready (http://127.0.0.1:$(probe_port "$service")/readyz)"
    wait_until 60 "$service's /readyz" service_ready "$service"
done

say "submitting the demo ZApp"
"$VENV/bin/zoe" submit zapps/hello/hello.json --name hello-demo --wait
"$VENV/bin/zoe" ls

say "Zoe is up: API on http://127.0.0.1:${ZOE_HTTP_PORT}/, logs in var/log/, pids in var/run/"
say "an admin token is in var/secrets/admin.token: export ZOE_TOKEN_FILE=$ZOE_TOKEN_FILE (or zoe login)"
