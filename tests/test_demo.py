"""vidrl.demo without training: the held-out split is large enough per task, the training
curve's ends and the learning check on hand-made metric rows, and the summary it prints."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from vidrl.data.synth import _num_test, ask, plan_scene
from vidrl.demo import (
    DEMO_TEST_FRACTION,
    DEMO_VIDEOS,
    REWARD_GAIN,
    SCORE_NOISE,
    DemoReport,
    learning_check,
    print_summary,
    training_curve,
)


def test_the_held_out_split_has_at_least_64_questions_per_task() -> None:
    # The demo's plan (no video encoding needed): the last videos are the test split.
    first_test = DEMO_VIDEOS - _num_test(DEMO_VIDEOS, DEMO_TEST_FRACTION)
    counts: Counter[str] = Counter()
    for i in range(first_test, DEMO_VIDEOS):
        counts.update(
            q["task"] for q in ask(plan_scene(0, i, 128, 96, 8, 8, 16), np.random.default_rng([0, i, 1]))
        )
    assert set(counts) == {"tvg", "mcq"}
    assert min(counts.values()) >= 64, counts


def rows(reward: list[float], iou: list[float], accuracy: list[float]) -> list[dict[str, float]]:
    return [
        {"step": i, "reward/mean": r, "reward/format": 1.0, "reward/tvg_iou": t, "reward/mcq_accuracy": a}
        for i, (r, t, a) in enumerate(zip(reward, iou, accuracy, strict=True))
    ]


def test_training_curve_holds_the_ends_and_the_window_means() -> None:
    curve = training_curve(rows([float(i) for i in range(10)], [0.2] * 10, [0.3] * 10))
    assert curve["reward/mean"] == pytest.approx(
        {"first": 0.0, "last": 9.0, "first_mean": 2.0, "last_mean": 7.0}
    )
    assert set(curve) == {"reward/mean", "reward/format", "reward/mcq_accuracy", "reward/tvg_iou"}
    assert training_curve(rows([0.5] * 9, [0.2] * 9, [0.3] * 9)) == {}  # too short for two windows


def test_learning_check_wants_the_reward_gain_and_no_task_falling() -> None:
    rising = [0.5] * 5 + [0.5 + REWARD_GAIN + 0.01] * 5
    learned, why = learning_check(training_curve(rows(rising, [0.2] * 5 + [0.3] * 5, [0.3] * 10)))
    assert learned, why
    learned, why = learning_check(training_curve(rows([0.5] * 10, [0.2] * 10, [0.3] * 10)))
    assert not learned and "reward gained +0.000" in why
    noise = [0.3] * 5 + [0.3 - SCORE_NOISE] * 5  # within the noise: not a fall
    assert learning_check(training_curve(rows(rising, [0.2] * 5 + [0.4] * 5, noise)))[0]
    falling = [0.3] * 5 + [0.3 - SCORE_NOISE - 0.01] * 5
    learned, why = learning_check(training_curve(rows(rising, [0.2] * 5 + [0.4] * 5, falling)))
    assert not learned and why == "mcq_accuracy fell"
    assert learning_check({}) == (False, "too few GRPO steps for two windows of the curve")


def test_the_summary_prints_the_curve_the_check_and_the_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    curve = training_curve(rows([0.5] * 5 + [0.7] * 5, [0.2] * 5 + [0.3] * 5, [0.3] * 10))
    report = DemoReport(out=tmp_path)
    learned, why = learning_check(curve)
    report.numbers = {
        "mean_reward_by_kind": {"reference": {"vidrl": 1.5}},
        "training_curve": curve,
        "learned": learned,
        "learning_check": why,
        "eval_table": "metric  after SFT  after GRPO",
        "eval_samples": {"tvg": 84, "mcq": 70},
        "seconds": 1.0,
    }
    print_summary(report)
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    assert lines["reward"] == ["0.500", "0.700", "0.500", "0.700", "+0.200"]
    assert lines["tvg_iou"] == ["0.200", "0.300", "0.200", "0.300", "+0.100"]
    assert "learned visibly: yes (reward +0.200 (>= 0.1), no task's score fell by over 0.1)" in out
    assert "84 tvg, 70 mcq samples" in out
