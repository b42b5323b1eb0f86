"""The simulator: seeded, reproducible, and driving the same core."""

from __future__ import annotations

import json

import pytest

from services.scheduler.simulator import Simulation, Variant, main, simulate
from services.scheduler.workload import make_workload, rigid


def test_the_same_seed_gives_the_same_figures_and_another_seed_others():
    first = simulate(make_workload("small", 7, apps=80), ["dynsize", "rigid-fifo"], check=True)
    again = simulate(make_workload("small", 7, apps=80), ["dynsize", "rigid-fifo"], check=True)
    other = simulate(make_workload("small", 8, apps=80), ["dynsize", "rigid-fifo"])
    assert [r.figures() | {"mean_pass_ms": 0} for r in first] == [
        r.figures() | {"mean_pass_ms": 0} for r in again
    ]
    assert first[0].turnarounds == again[0].turnarounds
    assert first[0].turnarounds != other[0].turnarounds


@pytest.mark.parametrize("label", ["fifo", "size", "dynsize", "flexible", "rigid-fifo"])
def test_every_application_finishes_and_every_pass_keeps_the_rules(label):
    result = Simulation(make_workload("small", 3, apps=120), Variant.parse(label), check=True).run()
    assert result.finished == result.apps == 120
    assert 0 < result.utilisation <= 1
    assert result.mean_turnaround >= result.mean_queue_time > -1e-9
    assert result.mean_slowdown >= 1 - 1e-9


def test_elastic_scheduling_beats_the_rigid_baseline_on_the_small_workload():
    rigid_fifo, best = simulate(make_workload("small", 1), ["rigid-fifo", "dynsize"])
    assert best.mean_turnaround * 2 < rigid_fifo.mean_turnaround
    assert best.reclaimed > 0 and rigid_fifo.reclaimed == 0


def test_workloads_follow_their_shape():
    workload = make_workload("small", 2, load=0.5)
    assert len(workload.nodes) == 5 and len(workload.apps) == 200
    assert all(any(i.essential for i in a.instances) for a in workload.apps)
    assert any(not i.essential for a in workload.apps for i in a.instances)
    assert all(i.essential for a in rigid(workload).apps for i in a.instances)
    arrivals = [a.arrival for a in workload.apps]
    assert arrivals == sorted(arrivals)
    with pytest.raises(ValueError):
        make_workload("huge", 1)


def test_command_line_json_table_and_plot(capsys, tmp_path):
    argv = ["--workload", "small", "--apps", "40", "--seed", "3", "--policy", "dynsize,rigid-fifo"]
    assert main([*argv, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["policy"] for r in doc["results"]] == ["dynsize", "rigid-fifo"]
    assert {"mean_turnaround_s", "p95_turnaround_s", "utilisation", "reclaimed"} <= set(
        doc["results"][0]
    )
    png = tmp_path / "turnaround.png"
    assert main([*argv, "--plot", str(png)]) == 0
    table = capsys.readouterr().out
    assert "rigid-fifo" in table and "vs base" in table
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_command_line_rejects_an_unknown_policy(capsys):
    assert main(["--workload", "small", "--policy", "lottery"]) == 2
    assert "lottery" in capsys.readouterr().err


def test_the_multiuser_workload_reports_each_user_and_the_fairness(capsys):
    workload = make_workload("multiuser-small", 4, apps=120)
    users = {a.user for a in workload.apps}
    assert "heavy" in users and len(users) == 4
    heavy = [a for a in workload.apps if a.user == "heavy"]
    assert len(heavy) > len(workload.apps) / 2
    assert len({a.arrival for a in heavy}) < len(heavy)  # it submits in bursts
    argv = ["--workload", "multiuser-small", "--apps", "120", "--seed", "4", "--policy"]
    assert main([*argv, "dynsize,fair", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    for row in doc["results"]:
        assert set(row["per_user"]) == users
        assert row["worst_user_mean_slowdown"] == max(row["per_user"].values())
        assert 1 / len(users) <= row["jain_index"] <= 1
        assert set(row["per_user_alone"]) == users - {"heavy"}
        assert row["worst_light_user_vs_alone"] > 0
    assert main([*argv, "fair"]) == 0
    assert "jain" in capsys.readouterr().out


def test_jain_s_index():
    from services.scheduler.fairness import jain_index

    assert jain_index([2.0, 2.0, 2.0]) == 1.0
    assert jain_index([1.0, 0.0, 0.0, 0.0]) == 0.25


def test_since_goes_with_history(capsys):
    assert main(["--workload", "small", "--since", "2026-11-30"]) == 2
    assert "--since goes with --history" in capsys.readouterr().err
