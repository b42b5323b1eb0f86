"""The metrics: documented once, queried only by name from that list, valid for promtool."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from pathlib import Path

from prometheus_client import generate_latest

from common import metrics
from common.probe import Probe

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("api", "scheduler", "monitor", "executor")


def documented() -> dict[str, str]:
    """The table of docs/operations.md: metric name -> type."""
    text = (ROOT / "docs" / "operations.md").read_text()
    table = text.split("<!-- metrics:", 1)[1]
    rows = re.findall(r"^\| `(zoe_[a-z_]+)` \| (\w+) \|", table, flags=re.M)
    return dict(rows)


def declared() -> dict[str, str]:
    """Every zoe_ metric a service exposes: name (as scraped) -> type."""
    out: dict[str, str] = {metrics.HEARTBEAT_AGE: "gauge"}  # the monitor's own collector
    for service in SERVICES:
        for family in metrics.registry(service).collect():
            if family.name.startswith("zoe_"):
                suffix = "_total" if family.type == "counter" else ""
                out[family.name + suffix] = family.type
    return out


def test_every_metric_is_documented_with_its_type() -> None:
    assert documented() == declared()


def test_the_dashboard_queries_only_documented_metrics() -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "zoe.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert exprs
    names = documented()
    queried = set()
    for expr in exprs:
        for name in re.findall(r"\bzoe_[a-z_]+", expr):
            base = re.sub(r"_(bucket|count|sum)$", "", name)
            assert name in names or names.get(base) == "histogram", (name, expr)
            queried.add(name if name in names else base)
    for main in (
        "zoe_http_requests_total",
        "zoe_executions",
        "zoe_scheduling_pass_duration_seconds",
    ):
        assert main in queried


def test_promtool_accepts_every_service_registry() -> None:
    metrics.HTTP_REQUESTS.labels("/api/v1/executions/{id}", "GET", "200").inc()
    metrics.MESSAGES_REFUSED.labels("scheduler", "invalid").inc()
    metrics.START_DURATION.labels("started").observe(0.5)
    metrics.DEATHS.labels("crashed").inc()
    tool = shutil.which("promtool")
    assert tool is not None, "promtool is missing: deploy/install.sh installs it"
    for service in SERVICES:
        text = generate_latest(metrics.registry(service))
        done = subprocess.run([tool, "check", "metrics"], input=text, capture_output=True)
        assert done.returncode == 0, (service, done.stdout, done.stderr)


def test_readiness_names_what_fails_and_forgets_removed_checks() -> None:
    probe = Probe(metrics.registry("api"))

    async def broken() -> bool:
        raise ConnectionError("the database is away")

    probe.require("broker", lambda: True)
    remove = probe.require("database", broken)
    probe.require("consumers", lambda: False)
    assert asyncio.run(probe.missing()) == ["database", "consumers"]
    remove()
    assert asyncio.run(probe.missing()) == ["consumers"]
