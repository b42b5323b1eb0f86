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
# chromium: the browser the web interface's tests drive (playwright, no download)
# docker-registry: the deployment's image registry (deploy/registry.sh; the package
# starts nothing without systemd); iproute2 (ip netns) and iptables: deploy/testcluster.sh
apt_install busybox-static debootstrap docker-compose chromium docker-registry iproute2 iptables curl

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
# Nothing logs in without a password over TCP. Two roles have one, kept in var/secrets/:
# zoe_admin, a superuser for provisioning (deploy/provision.py makes the services' role
# "zoe", no superuser, owning the database) and for the test suite's own databases; and
# that role "zoe". zoe_admin is made over the local socket as the postgres system user
# (peer authentication, Debian's default), or over TCP when the server trusts loopback.
# Loopback TCP authenticates with scram-sha-256 (Debian's default): the trust lines that
# earlier versions of this script put on top of pg_hba.conf are replaced.
pg_version() {
    local dirs=(/etc/postgresql/*/)
    [[ -d ${dirs[0]} ]] || return 0
    basename "$(printf '%s\n' "${dirs[@]%/}" | sort -V | tail -n1)"
}
pg_admin_password() {
    "$VENV/bin/python" -c 'from deploy.provision import Secrets; print(Secrets().password("postgres-admin"))'
}
# pg_login USER [PASSWORD]: true when USER logs in on 127.0.0.1:5432 (with PASSWORD).
pg_login() {
    PGUSER=$1 PGPASSWORD=${2:-} "$VENV/bin/python" - <<'PY' 2>/dev/null
import asyncio, os, asyncpg
async def main():
    conn = await asyncpg.connect(
        host="127.0.0.1", port=5432, database="postgres", user=os.environ["PGUSER"],
        password=os.environ["PGPASSWORD"] or None, timeout=3,
    )
    await conn.close()
asyncio.run(main())
PY
}
pg_admin_works() { pg_login zoe_admin "$(pg_admin_password)"; }
# SQL on standard input, run as a superuser: over TCP as postgres when loopback is
# trusted, else over the local socket as the postgres system user (peer).
pg_superuser_sql() {
    local sql
    sql=$(cat)
    if pg_login postgres; then
        PGPASSWORD= psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -U postgres -d postgres <<<"$sql"
    else
        runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -d postgres <<<"$sql"
    fi
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

hba=/etc/postgresql/$(pg_version)/main/pg_hba.conf
pg_reload=no
if [[ -f $hba ]] && grep -q '^# zoe: loopback trust' "$hba"; then
    say "replacing the loopback trust lines of $hba with scram-sha-256"
    # ours are the marker and the two lines under it, on top of the file
    {
        echo '# zoe: loopback scram (deploy/install.sh)'
        echo 'host    all    all    127.0.0.1/32    scram-sha-256'
        echo 'host    all    all    ::1/128         scram-sha-256'
        sed '/^# zoe: loopback trust/,+2d' "$hba"
    } >"$hba.zoe-new"
    cat "$hba.zoe-new" >"$hba" # keep owner and mode of the original
    rm -f "$hba.zoe-new"
    pg_reload=yes
fi
if [[ $pg_reload == yes ]]; then
    pg_ctlcluster --skip-systemctl-redirect "$(pg_version)" main reload
fi

if ! pg_admin_works; then
    say "making the PostgreSQL superuser zoe_admin (password in var/secrets/postgres-admin.password)"
    password=$(pg_admin_password)
    pg_superuser_sql <<SQL
DO \$\$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'zoe_admin') THEN
        CREATE ROLE zoe_admin LOGIN SUPERUSER;
    END IF;
END \$\$;
ALTER ROLE zoe_admin LOGIN SUPERUSER PASSWORD '$password';
SQL
    if ! pg_admin_works && [[ -f $hba ]] && ! grep -q '^# zoe: loopback scram' "$hba"; then
        say "authenticating loopback connections with scram-sha-256 in $hba"
        # First matching line wins in pg_hba.conf, so ours go on top.
        {
            echo '# zoe: loopback scram (deploy/install.sh)'
            echo 'host    all    all    127.0.0.1/32    scram-sha-256'
            echo 'host    all    all    ::1/128         scram-sha-256'
            cat "$hba"
        } >"$hba.zoe-new"
        cat "$hba.zoe-new" >"$hba"
        rm -f "$hba.zoe-new"
        pg_ctlcluster --skip-systemctl-redirect "$(pg_version)" main reload
    fi
    wait_until 15 "PostgreSQL login as zoe_admin on 127.0.0.1" pg_admin_works
fi

say "installed: $VENV, Docker engine, RabbitMQ, PostgreSQL"
