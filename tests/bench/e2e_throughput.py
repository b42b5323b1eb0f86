"""End-to-end throughput with hollow nodes: not a test, prints figures.

    python tests/bench/e2e_throughput.py --nodes 1000 --executions 2000 --json

The real api (HTTP), scheduler, monitor, RabbitMQ and PostgreSQL, each service its own
process as deployed, with a database and deployment of their own and a RabbitMQ node of
their own (``--shared-broker``: a vhost of the machine's broker); the executors
are ``--nodes`` hollow ones (services/executor/hollow.py: the real executor over a fake
engine) in ONE more process. After the nodes registered and a small warm-up, the bench
submits ``--executions`` long-running executions of a one-service ZApp (``--instances``
essential instances each) over HTTP, ``--concurrency`` requests at a time, and waits
until every execution runs.

- ``services_started_per_s``: instances started divided by the time from the first
  submit to the last instance running (the whole pipeline, submission included);
  ``steady_started_per_s`` the same between the 10th and the 90th percentile instance.
- ``submit_to_running_p50_ms``/``p99``: from the client sending the POST to the
  execution's ``started_at`` (the scheduler's commit; both on this machine's clock).
- ``cpu_seconds``: CPU used during the run by each process (the broker and the
  database's backends for this bench included), to show where the time goes;
  ``cpu_ms_per_instance`` the same per instance started, and
  ``cpu_bound_ceiling_per_s`` the rate the machine's cores would allow at that cost
  (a figure that holds better than the rate itself when other work shares the
  machine). ``idle_cores``: what each process uses while the cluster does nothing
  (heartbeats, polling), measured for ``--idle`` seconds before the run.
- ``passes``, ``pass_ms_mean``: the scheduling passes run during the run and their mean
  duration (from the scheduler's ``zoe_scheduling_pass_duration_seconds``).

``--profile DIR`` runs every service under ``py-spy record`` (folded stacks in DIR).

``--registration-only`` stops after the nodes registered and the idle cluster was
measured (no warm-up, no submissions): ``node_registration_s``, the CPU each process
used during registration (``registration_cpu_seconds``), how many nodes were up at
each 10 s mark (``nodes_up_every_10s``), ``idle_cores`` and the losses declared.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from common import db
from tests.bench._platform import (
    BenchPlatform,
    busybox_service,
    cpu_used,
    machine,
    percentile,
)
from tests.private_postgres import free_port


def application(instances: int) -> dict[str, Any]:
    """A long-running ZApp of one service with ``instances`` essential instances."""
    svc = busybox_service(
        "svc",
        command="sleep 3600",
        monitor=True,
        essential=instances,
        total=instances,
        min_cores=0.1,
        min_memory=32 << 20,
    )
    return {"name": "bench", "version": 3, "will_end": False, "size": 1, "services": [svc]}


async def submit_all(
    session: aiohttp.ClientSession, api: str, count: int, instances: int, concurrency: int
) -> list[tuple[int, float, float]]:
    """Submit ``count`` executions; returns (id, sent at, answered at) wall-clock times."""
    body = {"name": "bench", "application": application(instances)}
    gate = asyncio.Semaphore(concurrency)
    out: list[tuple[int, float, float]] = []

    async def one() -> None:
        async with gate:
            sent = time.time()
            async with session.post(f"{api}/executions", json=body) as r:
                data = await r.json()
                if r.status != 201:
                    raise RuntimeError(f"submit refused: {r.status} {data}")
            out.append((data["id"], sent, time.time()))

    await asyncio.gather(*(one() for _ in range(count)))
    return out


async def wait_running(plat: BenchPlatform, pool: Any, ids: list[int], timeout: float) -> float:
    """Wait until every execution in ``ids`` runs; returns the wall-clock time it did."""
    deadline = time.monotonic() + timeout
    while True:
        running = await pool.fetchval(
            "SELECT count(*) FROM executions WHERE id = ANY($1::bigint[]) AND state = 'running'",
            ids,
        )
        if running == len(ids):
            return time.time()
        bad = await pool.fetchval(
            "SELECT count(*) FROM executions WHERE id = ANY($1::bigint[])"
            " AND state NOT IN ('submitted', 'queued', 'starting', 'running')",
            ids,
        )
        if bad:
            raise RuntimeError(f"{bad} executions ended instead of running")
        plat.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {running} of {len(ids)} executions running")
        await asyncio.sleep(0.25)


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _declared_lost(plat: BenchPlatform) -> int:
    """How many times the monitor declared a node lost (its log's ``node.lost``)."""
    log = plat.log_dir / "monitor.log"
    return log.read_text().count('"node.lost"') if log.exists() else 0


async def pass_totals(session: aiohttp.ClientSession, url: str) -> tuple[float, float]:
    """How many passes the scheduler ran so far, and their seconds in all."""
    async with session.get(url) as r:
        text = await r.text()
    found = {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if family.name == "zoe_scheduling_pass_duration_seconds"
    }
    name = "zoe_scheduling_pass_duration_seconds"
    return found.get(f"{name}_count", 0.0), found.get(f"{name}_sum", 0.0)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    profile = Path(args.profile) if args.profile else None
    plat = BenchPlatform("throughput", profile_dir=profile, private_broker=not args.shared_broker)
    info = machine()
    try:
        await plat.create()
        plat.spawn(
            "hollow",
            ["services.executor.hollow", "--nodes", str(args.nodes), "--prefix", plat.deployment],
            ZOE_HEARTBEAT_INTERVAL=str(args.heartbeat),
            ZOE_USAGE_INTERVAL="30",
            ZOE_CORES="16",
            ZOE_MEMORY=str(64 << 30),
            ZOE_LOG_LEVEL="warning",
        )
        metrics_port = free_port()
        plat.start_core(
            {
                "monitor": {"ZOE_NODE_TIMEOUT": str(max(30.0, 6 * args.heartbeat))},
                "scheduler": {
                    "ZOE_PASS_INTERVAL": str(args.pass_interval),
                    "ZOE_METRICS_PORT": str(metrics_port),
                },
            }
        )
        scheduler_metrics = f"http://127.0.0.1:{metrics_port}/metrics"
        connector = aiohttp.TCPConnector(limit=args.concurrency)
        async with (
            db.pool(plat.database_url, max_size=2) as pool,
            aiohttp.ClientSession(connector=connector, headers=plat.headers) as session,
        ):
            await plat.wait_api(session)
            pg = await plat.pg_backends(pool)
            reg_start = plat.cpu_snapshot(pg)
            marks: list[int] = []
            try:
                registration_s = await plat.wait_nodes(
                    pool, args.nodes, timeout=args.timeout, marks=marks
                )
            except TimeoutError:
                up = await pool.fetchval("SELECT count(*) FROM nodes WHERE state = 'up'")
                return {
                    "error": f"{up} of {args.nodes} nodes registered in {args.timeout:g} s",
                    "nodes_registered": up,
                    "nodes_up_every_10s": marks,
                    "nodes_declared_lost": _declared_lost(plat),
                    "config": {"nodes": args.nodes, "heartbeat_interval_s": args.heartbeat},
                }
            registration_cpu = cpu_used(reg_start, plat.cpu_snapshot(pg))
            if args.registration_only:
                await asyncio.sleep(5.0)  # the registrations' tail (first passes) settles
                pg = await plat.pg_backends(pool)
                idle_start = plat.cpu_snapshot(pg)
                await asyncio.sleep(args.idle)
                idle = cpu_used(idle_start, plat.cpu_snapshot(pg))
                up = await pool.fetchval("SELECT count(*) FROM nodes WHERE state = 'up'")
                return {
                    "node_registration_s": round(registration_s, 1),
                    "registration_cpu_seconds": registration_cpu,
                    "nodes_up_every_10s": marks,
                    "idle_cores": {k: round(v / args.idle, 3) for k, v in idle.items()},
                    "idle_cores_total": round(
                        sum(v for k, v in idle.items() if k != "bench-client") / args.idle, 3
                    ),
                    "nodes_up_after_idle": up,
                    "nodes_declared_lost": _declared_lost(plat),
                    "config": {
                        "nodes": args.nodes,
                        "heartbeat_interval_s": args.heartbeat,
                        "idle_s": args.idle,
                        "broker": "shared" if args.shared_broker else "private node",
                    },
                    "machine": {**info, "loadavg_at_end": _loadavg()},
                }
            warm = await submit_all(session, plat.api, args.warmup, args.instances, 4)
            await wait_running(plat, pool, [w[0] for w in warm], args.timeout)
            await asyncio.sleep(1.0)  # let the warm-up's tail settle

            pg = await plat.pg_backends(pool)
            # the cost of a cluster that does nothing (heartbeats, polls), for comparison
            idle_start = plat.cpu_snapshot(pg)
            await asyncio.sleep(args.idle)
            idle = cpu_used(idle_start, plat.cpu_snapshot(pg))
            passes_before = await pass_totals(session, scheduler_metrics)
            before = plat.cpu_snapshot(pg)
            started = time.time()
            submitted = await submit_all(
                session, plat.api, args.executions, args.instances, args.concurrency
            )
            ids = [s[0] for s in submitted]
            ended = await wait_running(plat, pool, ids, args.timeout)
            after = plat.cpu_snapshot(pg)
            passes_after = await pass_totals(session, scheduler_metrics)
            executions = await pool.fetch(
                "SELECT id, extract(epoch FROM started_at)::float8 AS started"
                " FROM executions WHERE id = ANY($1::bigint[])",
                ids,
            )
            instances = await pool.fetch(
                "SELECT extract(epoch FROM updated_at)::float8 AS at FROM instances"
                " WHERE execution_id = ANY($1::bigint[]) AND state = 'running' ORDER BY 1",
                ids,
            )
        lost = _declared_lost(plat)
    finally:
        await plat.destroy()

    sent = {s[0]: s[1] for s in submitted}
    latencies = [(r["started"] - sent[r["id"]]) * 1000 for r in executions]
    times = [r["at"] for r in instances]
    first_submit = min(sent.values())
    total = len(times)
    lo, hi = times[int(total * 0.1)], times[min(total - 1, int(total * 0.9))]
    cpu = cpu_used(before, after)
    window = ended - started
    passes = passes_after[0] - passes_before[0]
    return {
        "services_started_per_s": round(total / (times[-1] - first_submit), 1),
        "steady_started_per_s": round((int(total * 0.9) - int(total * 0.1)) / (hi - lo), 1)
        if hi > lo
        else None,
        "submit_to_running_p50_ms": round(percentile(latencies, 50), 1),
        "submit_to_running_p99_ms": round(percentile(latencies, 99), 1),
        "submit_to_running_max_ms": round(max(latencies), 1),
        "submits_per_s": round(len(submitted) / (max(s[2] for s in submitted) - first_submit), 1),
        "instances_started": total,
        "run_seconds": round(window, 2),
        # the scheduler's passes during the run (zoe_scheduling_pass_duration_seconds)
        "passes": int(passes),
        "pass_ms_mean": round(1000 * (passes_after[1] - passes_before[1]) / passes, 2)
        if passes
        else None,
        "cpu_seconds": cpu,
        "cpu_ms_per_instance": {k: round(1000 * v / total, 2) for k, v in cpu.items()},
        # CPU share (of one core) each process uses while the cluster is idle
        "idle_cores": {k: round(v / args.idle, 3) for k, v in idle.items()},
        # what the machine could start per second if CPU were the only limit
        "cpu_bound_ceiling_per_s": round(
            (info["nproc"] or 1) * total / max(sum(cpu.values()), 1e-9), 1
        ),
        "cpu_busy_percent_of_machine": round(
            100 * sum(cpu.values()) / (window * (info["nproc"] or 1)), 1
        ),
        "node_registration_s": round(registration_s, 1),
        "registration_cpu_seconds": registration_cpu,
        # verdicts of node loss the monitor said during the whole run (none expected)
        "nodes_declared_lost": lost,
        "config": {
            "nodes": args.nodes,
            "executions": args.executions,
            "instances_per_execution": args.instances,
            "http_concurrency": args.concurrency,
            "heartbeat_interval_s": args.heartbeat,
            "pass_interval_s": args.pass_interval,
            "warmup_executions": args.warmup,
            "profiled": profile is not None,
            "broker": "shared" if args.shared_broker else "private node",
        },
        "machine": {**info, "loadavg_at_end": _loadavg()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--executions", type=int, default=2000)
    parser.add_argument("--instances", type=int, default=1, help="instances per execution")
    parser.add_argument("--concurrency", type=int, default=16, help="HTTP requests at once")
    parser.add_argument("--heartbeat", type=float, default=5.0, help="node heartbeat seconds")
    parser.add_argument("--pass-interval", type=float, default=1.0, help="ZOE_PASS_INTERVAL")
    parser.add_argument("--warmup", type=int, default=20, help="executions before measuring")
    parser.add_argument(
        "--idle", type=float, default=10.0, help="seconds of an idle cluster measured first"
    )
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--profile", metavar="DIR", help="run the services under py-spy")
    parser.add_argument(
        "--shared-broker",
        action="store_true",
        help="use the machine's RabbitMQ (a vhost) instead of a private node: avoid with"
        " many nodes, their quorum queues slow the broker down for everyone",
    )
    parser.add_argument(
        "--registration-only",
        action="store_true",
        help="stop after registration and the idle measurement (no submissions)",
    )
    parser.add_argument("--json", action="store_true", help="print only the JSON figures")
    args = parser.parse_args()
    figures = asyncio.run(run(args))
    if args.json:
        print(json.dumps(figures))
    else:
        print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
