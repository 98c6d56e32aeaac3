"""`vidrl plot RUN_DIR`: PNGs of the curves people look at (those the Temporal-R1 paper shows).

reward.png        mean total reward and each named component, per step
length.png        mean response length (tokens), per step
kl.png            KL to the reference and clip fraction, per step
phases.png        seconds of each phase of a step (data, rollout, reward, learn, sync), stacked
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PHASES = ("time/data", "time/rollout", "time/reward", "time/learn", "time/sync")


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


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    picked = [(r["step"], r[key]) for r in rows if key in r]
    return [p[0] for p in picked], [p[1] for p in picked]


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write the PNGs into RUN_DIR/plots; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    out = run_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    reward_keys = sorted(
        {k for r in rows for k in r if k.startswith("reward/") and k not in ("reward/std", "reward/failures")}
    )
    figures = {
        "reward.png": ("reward", reward_keys),
        "length.png": ("response length (tokens)", ["response/length_mean"]),
        "kl.png": ("KL and clip fraction", ["learner/kl", "learner/clip_fraction"]),
    }
    for name, (title, keys) in figures.items():
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for key in keys:
            steps, values = _series(rows, key)
            if steps:
                ax.plot(steps, values, label=key.split("/", 1)[1])
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        written.append(out / name)
    written.append(_phases(rows, out, plt))
    return written


def _phases(rows: list[dict[str, Any]], out: Path, plt: Any) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [r["step"] for r in rows]
    bottom = [0.0] * len(rows)
    for key in PHASES:
        values = [float(r.get(key, 0.0)) for r in rows]
        ax.bar(steps, values, bottom=bottom, label=key.split("/", 1)[1])
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_title("seconds per phase")
    ax.set_xlabel("step")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "phases.png", dpi=100)
    plt.close(fig)
    return out / "phases.png"
