"""`vidrl plot RUN_DIR`: PNGs of the curves people look at (those the Temporal-R1 paper shows).

dashboard.png     the five below in one figure, with the first and last steps' means in words
reward.png        mean total reward per step, its smoothed line, and the spread (std) band
accuracy.png      each task's own score per step: tvg IoU, mcq accuracy, ... (with format)
length.png        mean response length (tokens), per step
kl.png            KL to the reference and clip fraction, per step
phases.png        seconds of each phase of a step (data, rollout, reward, learn, sync), stacked

Per-task scores are the reward components the driver logs as `reward/<name>`, each the mean
over the step's responses to the tasks that component scores; `reward/format` covers every
task. A run's few steps are noisy (8 prompts a step), hence the smoothed line: an
exponential moving average, debiased at the start as TensorBoard's is.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PHASES = ("time/data", "time/rollout", "time/reward", "time/prepare", "time/learn", "time/sync")
NOT_A_TASK_SCORE = ("reward/mean", "reward/std", "reward/failures")
SMOOTHING = 0.6
"""Weight of the past in the moving average (TensorBoard's default slider value)."""
WINDOW = 5
"""Steps averaged at each end of a run to say how far a curve moved (one step is noisy)."""


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no metrics (is {run_dir} a run directory?)")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise ValueError(f"{path}:{number}: not a JSON line") from None
    return rows


def series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of `key` over the rows that logged it."""
    picked = [(r["step"], r[key]) for r in rows if key in r]
    return [p[0] for p in picked], [p[1] for p in picked]


def smooth(values: Sequence[float], weight: float = SMOOTHING) -> list[float]:
    """Exponential moving average, debiased: the first points are not pulled towards 0."""
    out, average = [], 0.0
    for count, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight**count))
    return out


def ends(rows: list[dict[str, Any]], key: str, window: int = WINDOW) -> tuple[float, float] | None:
    """(mean of the first `window` logged values of `key`, mean of the last `window`); None
    when it was logged fewer than 2 * window times, too few for two disjoint windows."""
    _, values = series(rows, key)
    if len(values) < 2 * window:
        return None
    return sum(values[:window]) / window, sum(values[-window:]) / window


def task_score_keys(rows: list[dict[str, Any]]) -> list[str]:
    """The logged reward components (`reward/tvg_iou`, `reward/mcq_accuracy`, ...), sorted."""
    keys = {k for r in rows for k in r if k.startswith("reward/") and k not in NOT_A_TASK_SCORE}
    return sorted(keys)


def _draw_reward(ax: Any, rows: list[dict[str, Any]]) -> None:
    steps, means = series(rows, "reward/mean")
    _, stds = series(rows, "reward/std")
    if len(stds) == len(means):
        low = [m - s for m, s in zip(means, stds, strict=True)]
        high = [m + s for m, s in zip(means, stds, strict=True)]
        ax.fill_between(steps, low, high, alpha=0.08, color="C0", label="± std over responses")
    ax.plot(steps, means, color="C0", alpha=0.35, marker=".", label="mean")
    ax.plot(steps, smooth(means), color="C0", linewidth=2, label="smoothed")
    ax.set_title("training reward")


def _draw_lines(ax: Any, rows: list[dict[str, Any]], keys: Sequence[str], title: str) -> None:
    for index, key in enumerate(keys):
        steps, values = series(rows, key)
        if steps:
            ax.plot(steps, values, color=f"C{index}", alpha=0.3)
            ax.plot(steps, smooth(values), color=f"C{index}", label=key.split("/", 1)[1])
    ax.set_title(title)


def _draw_kl(ax: Any, rows: list[dict[str, Any]]) -> None:
    """KL on the left axis, clip fraction on the right: their scales differ by orders."""
    steps, kl = series(rows, "learner/kl")
    ax.plot(steps, kl, color="C0")
    ax.set_ylabel("KL (k3)", color="C0")
    right = ax.twinx()
    steps, clip = series(rows, "learner/clip_fraction")
    right.plot(steps, clip, color="C1")
    right.set_ylabel("clip fraction", color="C1")
    ax.set_title("KL to reference (left) and clip fraction (right)")


def _draw_phases(ax: Any, rows: list[dict[str, Any]]) -> None:
    steps = [r["step"] for r in rows]
    bottom = [0.0] * len(rows)
    for key in PHASES:
        values = [float(r.get(key, 0.0)) for r in rows]
        ax.bar(steps, values, bottom=bottom, label=key.split("/", 1)[1])
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_title("seconds per phase")


def _draw_summary(ax: Any, rows: list[dict[str, Any]]) -> None:
    """The curves' ends in numbers: what the plots say, for a reader who wants figures."""
    lines = [f"mean of the first {WINDOW} -> last {WINDOW} steps", ""]
    for key in ["reward/mean", *task_score_keys(rows), "response/length_mean"]:
        moved = ends(rows, key)
        if moved is not None:
            first, last = moved
            lines.append(f"{key.split('/', 1)[1]:<16} {first:7.3f} -> {last:7.3f}  ({last - first:+.3f})")
    ax.text(0.02, 0.95, "\n".join(lines), family="monospace", fontsize=9, va="top", transform=ax.transAxes)
    ax.axis("off")


def _panels(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """File name -> how to draw that panel on an axis; the dashboard draws them all."""
    return {
        "reward.png": lambda ax: _draw_reward(ax, rows),
        "accuracy.png": lambda ax: _draw_lines(ax, rows, task_score_keys(rows), "per-task score"),
        "length.png": lambda ax: _draw_lines(ax, rows, ["response/length_mean"], "response length (tokens)"),
        "kl.png": lambda ax: _draw_kl(ax, rows),
        "phases.png": lambda ax: _draw_phases(ax, rows),
    }


def _finish(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write the dashboard and each panel as its own PNG into RUN_DIR/plots; their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    out = run_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    panels = _panels(rows)
    fig, axes = plt.subplots(2, 3, figsize=(15, 7.5))
    for ax, draw in zip(axes.flat, panels.values(), strict=False):
        draw(ax)
        _finish(ax)
    _draw_summary(axes.flat[-1], rows)
    fig.suptitle(f"{run_dir.name}: {len(rows)} GRPO steps")
    fig.tight_layout()
    written = [out / "dashboard.png"]
    fig.savefig(written[0], dpi=100)
    plt.close(fig)
    for name, draw in panels.items():
        fig, ax = plt.subplots(figsize=(6, 3.5))
        draw(ax)
        _finish(ax)
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        written.append(out / name)
    return written
