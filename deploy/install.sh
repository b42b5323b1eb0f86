#!/usr/bin/env bash
# Install and start what Zoe needs on a Debian 12 host (run as root), skipping whatever
# is already there: the project's virtualenv, the Docker engine, RabbitMQ, PostgreSQL.
# Safe to run again and again; with everything in place it takes about a second.
#   --node  only the virtualenv and the Docker engine: a host that runs just an executor
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib.sh
mkdir -p var/log var/run

node_only=no
case ${1:-} in
    --node) node_only=yes ;;
    "") ;;
    *) die "unknown option $1 (use --node)" ;;
esac

[[ $(id -u) == 0 ]] || die "run as root: it installs Debian packages and starts daemons"

# --- Debian packages ------------------------------------------------------------------
APT_UPDATED=no

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# apt_install PACKAGE...: install those not installed yet; refresh the lists at most once.
apt_install() {
    local missing=() p
    for p in "$@"; do installed "$p" || missing+=("$p"); done
    ((${#missing[@]})) || return 0
    if [[ $APT_UPDATED == no ]]; then
        say "apt-get update"
        apt-get update -q
        APT_UPDATED=yes
    fi
    say "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# busybox-static feeds the zoe/busybox base image, debootstrap the zoe/debian one;
# docker-compose checks deploy/compose.yaml in the test suite.
apt_install busybox-static debootstrap docker-compose

# promtool checks the services' /metrics in the test suite. Debian ships it only inside
# the prometheus package (the server, its web assets, a daemon its postinst starts, 96 MB):
# we take the one binary out of that package instead of installing it.
if ! command -v promtool >/dev/null; then
    if [[ $APT_UPDATED == no ]]; then
        apt-get update -q
        APT_UPDATED=yes
    fi
    say "installing promtool (from Debian's prometheus package) into /usr/local/bin"
    promdir=$(mktemp -d)
    chown _apt "$promdir" 2>/dev/null || true # apt-get downloads as _apt where it may
    (cd "$promdir" && apt-get download -q prometheus)
    dpkg-deb --fsys-tarfile "$promdir"/prometheus_*.deb | tar -x -C "$promdir" ./usr/bin/promtool
    install -m 0755 "$promdir/usr/bin/promtool" /usr/local/bin/promtool
    rm -rf "$promdir"
fi

# --- Python virtualenv ----------------------------------------------------------------
PYTHON=${PYTHON:-python3}
if ! command -v "$PYTHON" >/dev/null; then
    apt_install python3
fi
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$PYTHON is older than 3.11"
# Debian splits venv and ensurepip out of the standard library.
if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
    apt_install python3-venv
fi

# The stamp records which requirements.lock and pyproject.toml the venv was made from:
# when both are unchanged and the project is installed, pip is not run at all.
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
stamp=$VENV/.zoe-installed
if [[ ! -x $VENV/bin/python ]]; then
    say "creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
if [[ $(cat "$stamp" 2>/dev/null) != "$want" || ! -x $VENV/bin/zoe ]]; then
    say "installing the locked dependencies and the project into $VENV"
    "$VENV/bin/pip" install -q -r requirements.lock
    # The lock holds every dependency, dev tools included: install only the project.
    "$VENV/bin/pip" install -q --no-deps -e '.[dev]'
    echo "$want" >"$stamp"
fi

# --- Docker engine --------------------------------------------------------------------
docker_answers() { "$DOCKER" info >/dev/null 2>&1; }

if ! docker_answers; then
    apt_install docker.io
    # The package may have started an engine; a dockerd we started earlier may still be
    # initialising. Wait for either rather than start a second one.
    if ! docker_answers && ! is_running dockerd; then
        say "starting dockerd (log var/log/dockerd.log)"
        # Every execution has a network of its own on each host it runs on: Docker's
        # default address pools hold about 30 networks, these 4,096 of 254 addresses.
        start_detached dockerd dockerd --default-address-pool base=172.16.0.0/12,size=24
    fi
    wait_until 30 "the Docker engine" docker_answers
fi

if [[ $node_only == yes ]]; then
    say "installed: $VENV, Docker engine"
    exit 0
fi

# --- RabbitMQ -------------------------------------------------------------------------
if ! port_open 5672; then
    apt_install rabbitmq-server
    # The package may have started it already; start it only if it still does not answer.
    if ! port_open 5672; then
        say "starting rabbitmq-server"
        # Every quorum queue holds file handles: the default limit of 1024 runs out
        # with a few hundred nodes' command queues.
        (ulimit -n 65536 2>/dev/null || true; rabbitmq-server -detached)
    fi
    wait_until 90 "RabbitMQ on 127.0.0.1:5672" port_open 5672
fi

# --- PostgreSQL -----------------------------------------------------------------------
# Zoe connects as postgres over TCP on loopback without a password. A fresh Debian
# install authenticates TCP with scram, so we trust 127.0.0.1 and ::1 instead: fine on
# a single-user host; elsewhere set a password and put it in ZOE_DATABASE_URL.
pg_version() {
    local dirs=(/etc/postgresql/*/)
    [[ -d ${dirs[0]} ]] || return 0
    basename "$(printf '%s\n' "${dirs[@]%/}" | sort -V | tail -n1)"
}
pg_trusts_loopback() {
    "$VENV/bin/python" - <<'PY' 2>/dev/null
import asyncio, asyncpg
async def main():
    conn = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres", timeout=3)
    await conn.close()
asyncio.run(main())
PY
}

if ! port_open 5432; then
    apt_install postgresql
    version=$(pg_version)
    [[ -n $version ]] || die "postgresql is installed but /etc/postgresql holds no version"
    if [[ ! -d /etc/postgresql/$version/main ]]; then
        pg_createcluster "$version" main
    fi
    if ! port_open 5432; then
        say "starting PostgreSQL $version"
        pg_ctlcluster --skip-systemctl-redirect "$version" main start
    fi
    wait_until 30 "PostgreSQL on 127.0.0.1:5432" port_open 5432
fi

if ! pg_trusts_loopback; then
    version=$(pg_version)
    hba=/etc/postgresql/$version/main/pg_hba.conf
    [[ -f $hba ]] || die "cannot log in as postgres on 127.0.0.1:5432 and found no $hba"
    if ! grep -q '^# zoe: loopback trust' "$hba"; then
        say "trusting loopback connections in $hba"
        # First matching line wins in pg_hba.conf, so ours go on top.
        {
            echo '# zoe: loopback trust (deploy/install.sh)'
            echo 'host    all    all    127.0.0.1/32    trust'
            echo 'host    all    all    ::1/128         trust'
            cat "$hba"
        } >"$hba.zoe-new"
        cat "$hba.zoe-new" >"$hba" # keep owner and mode of the original
        rm -f "$hba.zoe-new"
    fi
    pg_ctlcluster --skip-systemctl-redirect "$version" main reload
    wait_until 15 "PostgreSQL login as postgres on 127.0.0.1" pg_trusts_loopback
fi

say "installed: $VENV, Docker engine, RabbitMQ, PostgreSQL"
