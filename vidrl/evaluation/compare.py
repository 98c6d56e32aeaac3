"""Side-by-side tables of evaluations (`vidrl eval --compare RUN_A RUN_B ...`), laid out like
the papers' results tables: one row per metric of each variant and task, one column per run.

A run is an evaluation's output folder (holding summary.json) or a summary.json itself, as
written by `vidrl eval`: `{"variants": {variant: {task: {metric: value}}}}`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

TABLE_METRICS: dict[str, tuple[str, ...]] = {
    "tvg": ("mIoU", "R1@0.3", "R1@0.5", "R1@0.7", "unparsed"),
    "mcq": ("accuracy", "invalid_option"),
    "gqa": ("accuracy", "mIoU", "invalid_option"),
    "track": ("mIoU", "unparsed"),
}
"""Task -> the metrics shown, in order (mcq also gets one accuracy row per task type)."""

Summary = Mapping[str, Any]


def load_summary(run: str | Path) -> tuple[str, Summary]:
    """(column name, summary) of a run folder or a summary.json; the name is the folder's."""
    path = Path(run)
    file = path / "summary.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{run}: no summary.json (give a `vidrl eval --out` folder or the file)")
    summary = json.loads(file.read_text(encoding="utf-8"))
    if not isinstance(summary, dict) or not isinstance(summary.get("variants"), dict):
        raise ValueError(f"{file}: not a `vidrl eval` summary (no 'variants')")
    return file.parent.name or str(file), summary


def table_rows(summaries: Mapping[str, Summary]) -> list[tuple[str, list[float | None]]]:
    """(row label, one value per run or None where a run lacks it), variants and tasks in the
    order first seen."""
    labels: list[tuple[str, str, str, str | None]] = []  # variant, task, metric, mcq type
    for summary in summaries.values():
        for variant, tasks in summary["variants"].items():
            for task, metrics in tasks.items():
                if task not in TABLE_METRICS:
                    continue  # counts such as "samples" and "skipped" sit beside the tasks
                wanted = [(variant, task, m, None) for m in TABLE_METRICS[task] if m in metrics]
                wanted += [(variant, task, "accuracy", k) for k in metrics.get("per_type", {})]
                labels += [label for label in wanted if label not in labels]
    rows = []
    for variant, task, metric, kind in labels:
        values = [_value(s, variant, task, metric, kind) for s in summaries.values()]
        name = f"{metric}[{kind}]" if kind is not None else metric
        rows.append((f"{variant} {task} {name}", values))
    return rows


def _value(summary: Summary, variant: str, task: str, metric: str, kind: str | None) -> float | None:
    metrics = summary["variants"].get(variant, {}).get(task)
    if metrics is None:
        return None
    if kind is not None:
        metrics = metrics.get("per_type", {}).get(kind)
        if metrics is None:
            return None
    value = metrics.get(metric)
    return float(value) if isinstance(value, int | float) else None


def format_table(summaries: Mapping[str, Summary]) -> str:
    """The side-by-side table as text: metrics down, runs across, one decimal, "-" if absent."""
    rows = table_rows(summaries)
    names = list(summaries)
    label_width = max([len("metric"), *(len(label) for label, _ in rows)])
    widths = [max(10, len(name)) for name in names]
    lines = ["metric".ljust(label_width) + "".join(f"  {n:>{w}}" for n, w in zip(names, widths, strict=True))]
    for label, values in rows:
        cells = ("-" if v is None else f"{v:.1f}" for v in values)
        lines.append(
            label.ljust(label_width) + "".join(f"  {c:>{w}}" for c, w in zip(cells, widths, strict=True))
        )
    return "\n".join(lines)


def compare_runs(runs: Sequence[str | Path]) -> str:
    """The table of `vidrl eval --compare`: runs named by their folders (made unique)."""
    summaries: dict[str, Summary] = {}
    for run in runs:
        name, summary = load_summary(run)
        unique, n = name, 2
        while unique in summaries:  # two runs whose folders share a name stay apart
            unique, n = f"{name}#{n}", n + 1
        summaries[unique] = summary
    return format_table(summaries)
