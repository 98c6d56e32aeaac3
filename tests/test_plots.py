"""vidrl.cluster.plots: the smoothed line and the curves' ends on hand-worked numbers, and the
dashboard plus one PNG per panel from a metrics file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vidrl.cluster.plots import ends, plot_run, read_metrics, smooth, task_score_keys


def test_smooth_is_a_debiased_moving_average() -> None:
    # weight 0.5: averages 0.5, 0.5 * 0.5 + 0.5 * 2 = 1.25; debiased by 1 - 0.5 and 1 - 0.25.
    assert smooth([1.0, 2.0], weight=0.5) == pytest.approx([1.0, 1.25 / 0.75])
    assert smooth([3.0, 3.0, 3.0]) == pytest.approx([3.0, 3.0, 3.0])  # a constant stays put
    assert smooth([]) == []


def test_ends_average_the_first_and_last_window() -> None:
    rows = [{"step": i, "reward/mean": float(i)} for i in range(10)]
    assert ends(rows, "reward/mean", window=3) == pytest.approx((1.0, 8.0))
    assert ends(rows, "reward/mean", window=5) == pytest.approx((2.0, 7.0))
    assert ends(rows, "reward/mean", window=6) is None  # two windows would overlap
    assert ends(rows, "reward/tvg_iou") is None  # never logged


def metrics_rows(steps: int) -> list[dict[str, float]]:
    return [
        {
            "step": step,
            "reward/mean": 0.5 + 0.01 * step,
            "reward/std": 0.2,
            "reward/failures": 0.0,
            "reward/format": 0.9,
            "reward/tvg_iou": 0.2 + 0.005 * step,
            "reward/mcq_accuracy": 0.3,
            "response/length_mean": 20.0 - step / 4,
            "learner/kl": 0.001 * step,
            "learner/clip_fraction": 0.01,
            **{f"time/{phase}": 0.1 for phase in ("data", "rollout", "reward", "learn", "sync")},
        }
        for step in range(steps)
    ]


def test_task_scores_are_the_logged_components() -> None:
    keys = task_score_keys(metrics_rows(2))
    assert keys == ["reward/format", "reward/mcq_accuracy", "reward/tvg_iou"]


def test_plot_run_writes_the_dashboard_and_each_panel(tmp_path: Path) -> None:
    rows = metrics_rows(12)
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    written = plot_run(tmp_path)
    names = [p.name for p in written]
    assert names == ["dashboard.png", "reward.png", "accuracy.png", "length.png", "kl.png", "phases.png"]
    for path in written:
        assert path.parent == tmp_path / "plots"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_read_metrics_names_the_bad_line(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"step": 0}\nnot json\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2"):
        read_metrics(tmp_path)
    with pytest.raises(FileNotFoundError):
        read_metrics(tmp_path / "missing")
