#!/usr/bin/env bash
# A Zoe cluster on one machine, for tests and for trying it out (run as root):
#   deploy/testcluster.sh up N     N test hosts host1..hostN (network namespaces, each
#                                  with its own dockerd, one swarm), a registry, the
#                                  control plane, one executor per host; prints the
#                                  ZOE_URL=... assignments (also in var/testcluster/env)
#   deploy/testcluster.sh status   each host: netns, link, dockerd, swarm, executor, node
#   deploy/testcluster.sh cut I    take host I off the network (its link down)
#   deploy/testcluster.sh heal I   put it back (its link up)
#   deploy/testcluster.sh down     remove everything `up` made; safe twice, and after a
#                                  failed `up`
#   deploy/testcluster.sh reclaim  take down another checkout's test cluster when the run
#                                  that made it is gone (or the checkout is)
# Layout: bridge zt-br0 198.18.0.1/24 in the root namespace; host i is the netns
# zt-host<i> at 198.18.0.(10+i), its dockerd socket var/testcluster/host<i>/docker.sock;
# the registry on 198.18.0.1:5055; RabbitMQ reached by the hosts at 198.18.0.1:5672.
# Settings given to `up` reach the services, e.g. ZOE_NODE_TIMEOUT=5 (the monitor's)
# or ZOE_HEARTBEAT_INTERVAL=1 (the executors'); ZOE_TESTCLUSTER_PORT (8180) is the api's;
# ZOE_TESTCLUSTER_HOLDER=PID (a test run's) makes the cluster that process's: once it is
# gone, another checkout's `reclaim` may take the cluster down.
set -euo pipefail
cd "$(dirname "$0")/.."
TC=var/testcluster
RUN_DIR=$TC/run LOG_DIR=var/log/testcluster SECRETS_DIR=$TC/secrets
export RUN_DIR LOG_DIR # deploy/registry.sh keeps its pid file and log there too
. deploy/lib.sh

BRIDGE=zt-br0
GATEWAY=198.18.0.1
REGISTRY=$GATEWAY:5055
DEPLOYMENT=zt-cluster      # names the vhost, the database role, the containers' labels
DATABASE=zt_cluster
PORT=${ZOE_TESTCLUSTER_PORT:-8180}
SCHEDULER_PORT=$((PORT + 1)) MONITOR_PORT=$((PORT + 2))
EXECUTOR_PORT=9103         # each executor's probes, on its host's address
# the base images the library's images are built FROM, pushed to the registry at `up`
IMAGES=${ZOE_TESTCLUSTER_IMAGES:-zoe/busybox:1 zoe/debian:12 zoe/python:2}
PYTHON=$VENV/bin/python
export PYTHONPATH=$PWD # the services run this checkout's code

usage() { sed -n '2,21s/^# \{0,1\}//p' "$0"; }

netns() { echo "zt-host$1"; }
addr() { echo "198.18.0.$((10 + $1))"; }
hostdir() { echo "$TC/host$1"; }
sock() { echo "$PWD/$(hostdir "$1")/docker.sock"; }
hdocker() {
    local i=$1
    shift
    "$DOCKER" -H "unix://$(sock "$i")" "$@"
}
in_host() {
    local i=$1
    shift
    nsenter --net="/var/run/netns/$(netns "$i")" "$@"
}
# One test cluster per machine (its names and addresses are fixed): the checkout that
# made it is written here, and only that checkout's `down`, `cut`, `heal` touch the
# machine's parts of it (bridge, namespaces, links, rules, vhost, database).
# Its second line, "holder PID START", names the run that holds it (a process and its start
# time, so that a reused pid is not mistaken for it).
OWNER_FILE=/run/zoe-testcluster.owner
owner() { head -n1 "$OWNER_FILE" 2>/dev/null || true; }
# a process's start time (clock ticks since boot), which tells a reused pid apart
started() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    awk '{print $20}' <<<"${stat##*) }"
}
# true when the machine's test cluster is another checkout's whose run or checkout is gone
abandoned() {
    local o holder pid start
    o=$(owner)
    [[ -n $o && $o != "$PWD" ]] || return 1
    [[ -f $o/deploy/testcluster.sh ]] || return 0
    holder=$(sed -n 2p "$OWNER_FILE" 2>/dev/null || true)
    read -r _ pid start <<<"$holder"
    [[ $holder == holder\ * && $pid =~ ^[0-9]+$ ]] || return 1 # made by hand: held until its down
    [[ $(started "$pid" || true) != "$start" ]]
}
# true when the machine's test cluster (or what a failed `up` left) is this checkout's
ours() {
    local o
    o=$(owner)
    [[ $o == "$PWD" ]] || [[ -z $o && -f $TC/hosts ]]
}
not_ours() {
    if [[ -n $(owner) ]]; then
        die "the test cluster on this machine is the one of $(owner) (deploy/testcluster.sh down there)"
    fi
    die "this checkout has no test cluster up"
}

# the number of hosts `up` made (0: none recorded)
hosts() { cat "$TC/hosts" 2>/dev/null || echo 0; }
# every host index of this cluster, recorded or left over by a failed `up` (namespaces
# and links by their names only when the machine's test cluster is ours)
all_hosts() {
    {
        seq 1 "$(hosts)"
        if ours; then
            ip netns list 2>/dev/null | sed -n 's/^zt-host\([0-9]\+\).*/\1/p'
            ip -o link show 2>/dev/null | sed -n 's/^[0-9]*: zt-host\([0-9]\+\)[@:].*/\1/p'
        fi
        for d in "$TC"/host*/; do
            if [[ -d $d ]]; then basename "$d" | sed 's/^host//'; fi
        done
    } | { grep -E '^[0-9]+$' || true; } | sort -nu
}

# The services' settings: the deployment's, on loopback, plus whatever ZOE_* the caller set.
control_env() {
    export ZOE_DEPLOYMENT=$DEPLOYMENT
    export ZOE_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/$DEPLOYMENT
    export ZOE_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/$DATABASE
    export ZOE_HTTP_PORT=$PORT ZOE_URL=http://127.0.0.1:$PORT
    export ZOE_SCHEDULER_METRICS_PORT=$SCHEDULER_PORT ZOE_MONITOR_METRICS_PORT=$MONITOR_PORT
    export ZOE_ZAPPS_ROOT=$PWD/zapps ZOE_REGISTRY=$REGISTRY
    export ZOE_LOG_JSON=${ZOE_LOG_JSON:-true}
}

api_get() { # api_get PATH: the api's JSON answer, as the admin
    curl -fsS --max-time 5 -H "Authorization: Bearer $(cat "$TC/admin.token")" \
        "http://127.0.0.1:$PORT/api/v1$1"
}

# ---- up ---------------------------------------------------------------------------------

make_network() {
    local n=$1 i
    say "bridge $BRIDGE $GATEWAY/24"
    ip link add "$BRIDGE" type bridge
    ip addr add "$GATEWAY/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    # The machine's dockerd sets FORWARD to DROP and bridge netfilter is on: traffic
    # between the test hosts over the bridge needs this (MULTIHOST.md).
    if iptables -n -L DOCKER-USER >/dev/null 2>&1; then
        iptables -I DOCKER-USER -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT
    fi
    # RabbitMQ may listen on loopback only: the hosts' 198.18.0.1:5672 is sent there.
    sysctl -qw "net.ipv4.conf.$BRIDGE.route_localnet=1"
    iptables -t nat -I PREROUTING -i "$BRIDGE" -d "$GATEWAY" -p tcp --dport 5672 \
        -j DNAT --to-destination 127.0.0.1:5672
    for i in $(seq 1 "$n"); do
        say "host$i: netns $(netns "$i"), $(addr "$i")"
        ip netns add "$(netns "$i")"
        ip link add "zt-host$i" type veth peer name eth0 netns "$(netns "$i")"
        ip link set "zt-host$i" master "$BRIDGE" up
        ip netns exec "$(netns "$i")" ip addr add "$(addr "$i")/24" dev eth0
        ip netns exec "$(netns "$i")" ip link set eth0 up
        ip netns exec "$(netns "$i")" ip link set lo up
        ip netns exec "$(netns "$i")" ip route add default via "$GATEWAY"
    done
}

engine_answers() { hdocker "$1" info >/dev/null 2>&1; }

start_engine() {
    local i=$1 d
    d=$(hostdir "$i")
    mkdir -p "$d/data" "$d/exec"
    say "host$i: dockerd (log $d/dockerd.log)"
    # nsenter --net, not `ip netns exec`: that remounts /sys and dockerd loses its cgroups;
    # a UTS namespace of its own so that the engine (and its swarm node) is called host<i>
    in_host "$i" setsid nohup unshare --uts /bin/sh -c 'hostname "$0" && exec "$@"' "host$i" \
        /usr/sbin/dockerd \
        --data-root "$PWD/$d/data" --exec-root "$PWD/$d/exec" \
        -H "unix://$(sock "$i")" --pidfile "$PWD/$d/docker.pid" \
        --bip "172.30.$i.1/24" --cgroup-parent "zt-host$i" \
        --insecure-registry "$REGISTRY" >>"$d/dockerd.log" 2>&1 </dev/null &
}

make_swarm() {
    local n=$1 i token
    say "swarm: host1 manager, the others workers"
    hdocker 1 swarm init --advertise-addr "$(addr 1)" --listen-addr "$(addr 1):2377" >/dev/null
    token=$(hdocker 1 swarm join-token -q worker)
    for i in $(seq 2 "$n"); do
        hdocker "$i" swarm join --token "$token" --advertise-addr "$(addr "$i")" \
            "$(addr 1):2377" >/dev/null
    done
    # and label them as Zoe names them
    for i in $(seq 1 "$n"); do
        hdocker 1 node update --label-add "zoe.node=host$i" \
            "$(hdocker "$i" info --format '{{.Swarm.NodeID}}')" >/dev/null
    done
    hdocker 1 info --format '{{.Swarm.Cluster.ID}}' >"$TC/swarm-cluster-id"
}

# Every base image: built on the machine's engine when missing, handed to host1's
# engine (which trusts the registry), pushed, then removed there again: every host
# starts empty and pulls from the registry what it needs.
push_images() {
    local ref
    for ref in $IMAGES; do
        say "image $ref -> $REGISTRY/$ref"
        "$PYTHON" -m services.executor.images build "$ref" >>"$LOG_DIR/images.log" 2>&1 \
            || die "building $ref failed: see $LOG_DIR/images.log"
        "$DOCKER" save "$ref" | hdocker 1 load -q >/dev/null
        hdocker 1 tag "$ref" "$REGISTRY/$ref"
        hdocker 1 push -q "$REGISTRY/$ref" >/dev/null
        hdocker 1 rmi -f "$REGISTRY/$ref" "$ref" >/dev/null
    done
}

provision() {
    local n=$1 nodes=() i
    for i in $(seq 2 "$n"); do nodes+=(--add-node "host$i"); done
    mkdir -p "$SECRETS_DIR" && chmod 0700 "$SECRETS_DIR"
    # the superuser deploy/install.sh made, if any (else a server trusting loopback)
    if [[ -f var/secrets/postgres-admin.password ]]; then
        cp var/secrets/postgres-admin.password "$SECRETS_DIR/"
    fi
    say "vhost $DEPLOYMENT, database $DATABASE, their users and role ($SECRETS_DIR)"
    "$PYTHON" -m deploy.provision --node host1 "${nodes[@]}" --secrets "$SECRETS_DIR" \
        >>"$LOG_DIR/provision.log"
    mv "$SECRETS_DIR/zoe-executor.env" "$SECRETS_DIR/zoe-executor-host1.env"
    with_service_env zoe-scheduler "$VENV/bin/zoe-migrate" >>"$LOG_DIR/provision.log" 2>&1
    with_service_env zoe-api "$PYTHON" -m services.api.bootstrap \
        --token-file "$TC/admin.token" >>"$LOG_DIR/provision.log"
}

start_executor() {
    local i=$1 name="zoe-executor-host$i"
    say "host$i: executor (log $LOG_DIR/$name.log)"
    # its broker URL names 198.18.0.1: the executor runs inside the host's netns
    (
        . "$SECRETS_DIR/$name.env"
        ZOE_AMQP_URL=${ZOE_AMQP_URL/@127.0.0.1:/@$GATEWAY:}
        start_detached "$name" nsenter --net="/var/run/netns/$(netns "$i")" \
            env ZOE_AMQP_URL="$ZOE_AMQP_URL" \
            ZOE_NODE_NAME="host$i" ZOE_LABELS="host$i" \
            ZOE_DOCKER_URL="unix://$(sock "$i")" \
            ZOE_SWARM=true ZOE_SWARM_CLUSTER_ID="$(cat "$TC/swarm-cluster-id")" \
            ZOE_ADVERTISE_HOST="$(addr "$i")" ZOE_PUBLISH_HOST="$(addr "$i")" \
            ZOE_METRICS_HOST="$(addr "$i")" ZOE_METRICS_PORT=$EXECUTOR_PORT \
            "$VENV/bin/zoe-executor"
    )
}

executor_ready() {
    kill -0 "$(cat "$RUN_DIR/zoe-executor-host$1.pid" 2>/dev/null)" 2>/dev/null || {
        tail -n 30 "$LOG_DIR/zoe-executor-host$1.log" >&2 || true
        die "the executor of host$1 exited; the end of its log is above"
    }
    curl -fsS -o /dev/null --max-time 2 "http://$(addr "$1"):$EXECUTOR_PORT/readyz" 2>/dev/null
}

node_up() { api_get /nodes | "$PYTHON" -c '
import json, sys
sys.exit(not any(n["name"] == sys.argv[1] and n["state"] == "up" for n in json.load(sys.stdin)))
' "host$1"; }

write_env() {
    local n=$1 i
    {
        echo "ZOE_URL=http://127.0.0.1:$PORT"
        echo "ZOE_TOKEN_FILE=$PWD/$TC/admin.token"
        echo "ZOE_REGISTRY=$REGISTRY"
        echo "ZOE_DEPLOYMENT=$DEPLOYMENT"
        echo "ZOE_SWARM_CLUSTER_ID=$(cat "$TC/swarm-cluster-id")"
        echo "ZOE_TESTCLUSTER_HOSTS=$n"
        for i in $(seq 1 "$n"); do
            echo "ZOE_TESTCLUSTER_DOCKER_$i=unix://$(sock "$i")"
            echo "ZOE_TESTCLUSTER_ADDR_$i=$(addr "$i")"
        done
    } >"$TC/env.new"
    mv "$TC/env.new" "$TC/env"
}

up() {
    local n=${1:-}
    [[ $n =~ ^[0-9]+$ ]] && ((n >= 1 && n <= 20)) || die "up needs the number of hosts, 1 to 20"
    [[ $(id -u) == 0 ]] || die "run as root: it makes network namespaces and starts dockerd"
    local tool
    for tool in ip iptables nsenter dockerd docker-registry rabbitmqctl curl; do
        command -v "$tool" >/dev/null || die "$tool is missing: run deploy/install.sh"
    done
    [[ -x $PYTHON ]] || die "$PYTHON is missing: run deploy/install.sh"
    local o
    o=$(owner)
    if [[ -n $o && $o != "$PWD" ]]; then
        die "the test cluster of $o is up on this machine: one at a time (deploy/testcluster.sh down there)"
    fi
    if [[ -f $TC/hosts ]]; then
        die "a test cluster of $(hosts) hosts is up already (deploy/testcluster.sh down first)"
    fi
    if [[ -z $o ]] && ip link show "$BRIDGE" >/dev/null 2>&1; then
        die "$BRIDGE exists but no checkout owns it ($OWNER_FILE): another test cluster is up on this machine"
    fi
    # claim the machine's test cluster; of two `up`s at once, one wins
    local claim=$PWD holder=${ZOE_TESTCLUSTER_HOLDER:-}
    if [[ -n $holder ]]; then
        [[ $holder =~ ^[0-9]+$ ]] && started "$holder" >/dev/null \
            || die "ZOE_TESTCLUSTER_HOLDER=$holder is not a running process"
        claim+=$'\n'"holder $holder $(started "$holder")"
    fi
    if [[ -z $o ]] && ! (set -o noclobber && echo "$claim" >"$OWNER_FILE") 2>/dev/null; then
        die "the test cluster of $(owner) was just started on this machine: one at a time"
    fi
    if [[ -n $o ]]; then echo "$claim" >"$OWNER_FILE"; fi
    local start=$SECONDS i
    rm -rf "$LOG_DIR"
    mkdir -p "$TC" "$RUN_DIR" "$LOG_DIR"
    echo "$n" >"$TC/hosts" # from here on, `down` knows what to remove
    trap 'if (($? != 0)); then echo "up failed: deploy/testcluster.sh down removes what it made" >&2; fi' EXIT
    control_env

    make_network "$n"
    for i in $(seq 1 "$n"); do start_engine "$i"; done
    for i in $(seq 1 "$n"); do wait_until 60 "the dockerd of host$i" engine_answers "$i"; done
    make_swarm "$n"
    deploy/registry.sh start --addr "$REGISTRY" --data "$TC/registry" --name zt-registry
    push_images
    provision "$n"

    local service
    for service in zoe-api zoe-scheduler zoe-monitor; do start_service "$service"; done
    for service in zoe-api zoe-scheduler zoe-monitor; do
        wait_until 60 "$service's /readyz" service_ready "$service"
    done
    for i in $(seq 1 "$n"); do start_executor "$i"; done
    for i in $(seq 1 "$n"); do
        wait_until 90 "the executor of host$i" executor_ready "$i"
        wait_until 30 "node host$i (state up in GET /nodes)" node_up "$i"
    done
    write_env "$n"
    say "test cluster of $n hosts up in $((SECONDS - start))s; logs in $LOG_DIR/"
    cat "$TC/env"
}

# ---- status -----------------------------------------------------------------------------

status() {
    local n i nodes state
    n=$(hosts)
    if [[ -n $(owner) && $(owner) != "$PWD" ]]; then
        echo "no test cluster of this checkout (the one on this machine is $(owner)'s)"
        return 1
    fi
    if ((n == 0)) && [[ -z $(all_hosts) ]]; then
        echo "no test cluster"
        return 1
    fi
    control_env
    nodes=$( (api_get /nodes 2>/dev/null || echo '[]') | "$PYTHON" -c '
import json, sys
for n in json.load(sys.stdin): print(n["name"], n["state"])')
    for service in zoe-api zoe-scheduler zoe-monitor; do
        if is_running "$service"; then state="alive (pid $(<"$RUN_DIR/$service.pid"))"; else state=dead; fi
        printf '%-14s %s\n' "$service" "$state"
    done
    printf '%-14s %s\n' registry "$(deploy/registry.sh status --addr "$REGISTRY" --name zt-registry 2>&1 || true)"
    local healthy=yes ns link engine swarm executor node
    for i in $(all_hosts); do
        ns=no link=absent engine=dead swarm=- executor=dead
        ip netns list | grep -qw "$(netns "$i")" && ns=yes
        if ip link show "zt-host$i" >/dev/null 2>&1; then
            ip -o link show "zt-host$i" | grep -q ',UP' && link=up || link=down
        fi
        if engine_answers "$i"; then
            engine="alive (pid $(cat "$(hostdir "$i")/docker.pid" 2>/dev/null))"
            swarm=$(hdocker "$i" info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null || echo '?')
        fi
        if is_running "zoe-executor-host$i" zoe-executor; then
            executor="alive (pid $(<"$RUN_DIR/zoe-executor-host$i.pid"))"
        fi
        node=$(awk -v n="host$i" '$1 == n {print $2}' <<<"$nodes")
        printf 'host%-10s netns=%s addr=%s link=%s dockerd=%s swarm=%s executor=%s node=%s\n' \
            "$i" "$ns" "$(addr "$i")" "$link" "$engine" "$swarm" "$executor" "${node:-none}"
        [[ $ns == yes && $link == up && $swarm == active && $node == up && $executor == alive* ]] \
            || healthy=no
    done
    [[ $healthy == yes ]]
}

# ---- cut / heal -------------------------------------------------------------------------

set_link() {
    local i=${1:-}
    [[ $i =~ ^[0-9]+$ ]] || die "$2 needs a host number"
    ours || not_ours
    ip link show "zt-host$i" >/dev/null 2>&1 || die "host$i has no link (zt-host$i): is it up?"
    ip link set "zt-host$i" "$3"
    say "host$i: link $3"
}

# ---- down -------------------------------------------------------------------------------

stop_engine() {
    local i=$1 d pid deadline
    d=$(hostdir "$i")
    pid=$(cat "$d/docker.pid" 2>/dev/null || true)
    if [[ $pid =~ ^[0-9]+$ ]] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null \
        | grep -q -- "dockerd.*$PWD/$d/data"; then
        say "host$i: stopping dockerd (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        deadline=$((SECONDS + 30))
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
        kill -KILL "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
    fi
}

down() {
    local i hosts_list start=$SECONDS
    hosts_list=$(all_hosts)
    control_env
    for i in $hosts_list; do stop_pidfile "zoe-executor-host$i" 20 zoe-executor; done
    for service in zoe-api zoe-scheduler zoe-monitor; do stop_pidfile "$service" 20; done
    for i in $hosts_list; do
        engine_answers "$i" || continue
        # every container on a test engine is the cluster's
        hdocker "$i" ps -aq | xargs -r "$DOCKER" -H "unix://$(sock "$i")" rm -f >/dev/null || true
    done
    # workers leave first, the manager last
    for i in $(sort -nr <<<"$hosts_list"); do
        engine_answers "$i" && hdocker "$i" swarm leave --force >/dev/null 2>&1 || true
    done
    for i in $hosts_list; do stop_engine "$i"; done
    deploy/registry.sh stop --name zt-registry
    local failed=no
    if ours; then
        remove_machine_parts "$hosts_list" || failed=yes
    elif [[ -n $(owner) ]]; then
        say "the test cluster on this machine is $(owner)'s: its bridge, namespaces, rules, vhost and database are left alone"
    fi
    # whatever a dockerd left mounted under the data (netns files, overlays), then the data
    local m
    for m in $(grep -F " $PWD/$TC/" /proc/mounts | cut -d' ' -f2 | sort -r || true); do
        umount -l "$m" 2>/dev/null || true
    done
    rm -rf "$TC"
    if [[ $failed == yes ]]; then
        die "the vhost or the database of the test cluster could not be removed (above): run deploy/testcluster.sh down again"
    fi
    if [[ $(owner) == "$PWD" ]]; then rm -f "$OWNER_FILE"; fi
    say "test cluster down in $((SECONDS - start))s (logs kept in $LOG_DIR/)"
}

# The machine's parts of our test cluster: namespaces, links, bridge, rules, cgroups,
# the vhost and its users, the database and its role.
remove_machine_parts() {
    local hosts_list=$1 i
    # the engines' --cgroup-parent groups, empty once their containers are gone
    local group
    for group in $(find /sys/fs/cgroup -maxdepth 2 -type d -name 'zt-host*' 2>/dev/null); do
        find "$group" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done
    for i in $hosts_list; do
        ip netns del "$(netns "$i")" 2>/dev/null || true
        ip link del "zt-host$i" 2>/dev/null || true
    done
    ip link del "$BRIDGE" 2>/dev/null || true
    while iptables -D DOCKER-USER -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT 2>/dev/null; do :; done
    while iptables -t nat -D PREROUTING -i "$BRIDGE" -d "$GATEWAY" -p tcp --dport 5672 \
        -j DNAT --to-destination 127.0.0.1:5672 2>/dev/null; do :; done
    # the broker's vhost and users, the database and its role; tried again for a while
    # (the shared broker may be restarting), and a failure leaves the owner file, so
    # that the next `down` tries again
    "$PYTHON" - "$SECRETS_DIR" "$DATABASE" "$DEPLOYMENT" <<'PY' || return 1
import asyncio, sys
from pathlib import Path
import asyncpg
from deploy.provision import Secrets, admin_database_url, drop_role, rabbitmqctl
secrets, database, deployment = sys.argv[1:]
def ctl(*args):
    return rabbitmqctl(*args, attempts=8)
if deployment in ctl("list_vhosts", "name", "--no-table-headers").split():
    print(f"==> removing the vhost {deployment}", flush=True)
    ctl("delete_vhost", deployment)
for line in ctl("list_users", "--no-table-headers").splitlines():
    if line.split("\t")[0].startswith(deployment + "-"):
        ctl("delete_user", line.split("\t")[0])
admin = Path(secrets) if Path(secrets, "postgres-admin.password").exists() else Path("var/secrets")
url = admin_database_url(Secrets(admin), "postgresql://postgres@127.0.0.1:5432/postgres")
async def main():
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await conn.close()
    await drop_role(url, deployment)
asyncio.run(main())
PY
}

# ---- reclaim ----------------------------------------------------------------------------

# Another checkout's test cluster whose run is gone (killed, or its machine's session
# ended before its `down`) is taken down: by that checkout's own `down` when it is still
# there, else from here, its processes found by namespace and port.
reclaim() {
    local o ns
    o=$(owner)
    if [[ -z $o || $o == "$PWD" ]]; then
        say "no test cluster of another checkout on this machine"
        return 0
    fi
    if ! abandoned; then
        say "the test cluster of $o is held by a live run or was made by hand: left alone"
        return 0
    fi
    if [[ -f $o/deploy/testcluster.sh ]]; then
        say "the test cluster of $o outlived the run that made it: taking it down there"
        if (cd "$o" && bash deploy/testcluster.sh down) && [[ $(owner) != "$o" ]]; then return 0; fi
    fi
    say "the test cluster of $o is left over (its checkout is gone, or its down failed): taking it down from here"
    for ns in $(ip netns list 2>/dev/null | sed -n 's/^\(zt-host[0-9]\+\).*/\1/p'); do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
    done
    ss -Hltnp "( sport = :$PORT or sport = :$SCHEDULER_PORT or sport = :$MONITOR_PORT or sport = :${REGISTRY##*:} )" 2>/dev/null \
        | grep -o 'pid=[0-9]\+' | cut -d= -f2 | sort -u | xargs -r kill -KILL 2>/dev/null || true
    echo "$PWD" >"$OWNER_FILE"
    down
}

case ${1:-} in
    up) up "${2:-}" ;;
    status) status ;;
    cut) set_link "${2:-}" cut down ;;
    heal) set_link "${2:-}" heal up ;;
    down) down ;;
    reclaim) reclaim ;;
    -h | --help) usage ;;
    *)
        usage >&2
        exit 2
        ;;
esac
