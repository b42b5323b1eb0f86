"""Presenting simulation results: a plain-text table and a turnaround plot."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .simulator import Result
    from .workload import Workload

COLUMNS = (
    ("policy", "policy", "{}"),
    ("mean", "mean_turnaround", "{:.0f}"),
    ("median", "median_turnaround", "{:.0f}"),
    ("p95", "p95_turnaround", "{:.0f}"),
    ("slowdown", "mean_slowdown", "{:.1f}"),
    ("queue", "mean_queue_time", "{:.0f}"),
    ("util", "utilisation", "{:.1%}"),
    ("reclaimed", "reclaimed", "{}"),
    ("vs base", "", ""),
    ("pass ms", "mean_pass_ms", "{:.2f}"),
)
# Added when the workload has several users.
USER_COLUMNS = (
    ("worst user", "worst_user_mean_slowdown", "{:.2f}"),
    ("jain", "jain_index", "{:.3f}"),
    ("light/alone", "worst_light_user_vs_alone", "{:.2f}x"),
)


def render_table(workload: Workload, seed: int, results: Sequence[Result]) -> str:
    """A fixed-width table, one row per policy; times in seconds.

    "vs base" is the mean turnaround of the first rigid-fifo row (or the first row)
    divided by the row's: how many times faster than the baseline.
    """
    base = next((r for r in results if r.policy == "rigid-fifo"), results[0] if results else None)
    columns = COLUMNS + (USER_COLUMNS if any(r.per_user_alone for r in results) else ())
    rows = [[title for title, _, _ in columns]]
    for r in results:
        row = []
        for _, attr, fmt in columns:
            if not attr:
                ratio = (
                    base.mean_turnaround / r.mean_turnaround if base and r.mean_turnaround else 0
                )
                row.append(f"{ratio:.2f}x")
            else:
                row.append(fmt.format(getattr(r, attr)))
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    lines = [
        f"{workload.name} workload, {len(workload.apps)} apps, {len(workload.nodes)} nodes, "
        f"load {workload.load:g}, seed {seed} (times in seconds)"
        if workload.name != "history"
        else f"this deployment's history: {len(workload.apps)} finished executions replayed"
        f" on its {len(workload.nodes)} nodes up (times in seconds)"
    ]
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=False)
        ]
        lines.append("  ".join(cells))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    if len(columns) > len(COLUMNS):
        lines.append(
            "worst user: the largest mean slowdown of a user; jain: Jain's index over the"
            " users' mean slowdowns; light/alone: the largest ratio, over every user but"
            " the heaviest, of its mean slowdown to the one it gets alone on the cluster"
        )
    unfinished = [r for r in results if r.finished < r.apps]
    for r in unfinished:
        lines.append(f"note: {r.policy} finished only {r.finished} of {r.apps} applications")
    return "\n".join(lines)


def plot_turnarounds(
    results: Sequence[Result], path: str, *, title: str, floor: Sequence[float] = ()
) -> None:
    """Draw the distribution (CDF, log scale) of turnaround per policy into a PNG;
    `floor`, the nominal runtimes, is drawn dashed: no policy can do better."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110)
    if floor:
        xs = sorted(max(1.0, t) for t in floor)
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        ax.step(
            xs,
            ys,
            where="post",
            color="black",
            linestyle="--",
            linewidth=1,
            label="nominal runtime (lower bound)",
        )
    for r in results:
        xs = sorted(max(1.0, t) for t in r.turnarounds)
        if not xs:
            continue
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        ax.step(xs, ys, where="post", label=f"{r.policy} (mean {r.mean_turnaround:.0f} s)")
    ax.set_xscale("log")
    ax.set_xlabel("turnaround (finish - submit), seconds, log scale")
    ax.set_ylabel("fraction of applications")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
