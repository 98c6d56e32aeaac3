"""vidrl.demo without training: the held-out and out-of-distribution splits are large enough
per task, the training curve's ends and the learning check on hand-made metric rows, the count
of different intervals, and the summary it prints."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from vidrl.cluster.pretrain import SEEING_RADIUS
from vidrl.data.synth import _num_test, ask, plan_scene
from vidrl.demo import (
    DEMO_TEST_FRACTION,
    DEMO_VIDEOS,
    OOD_SECONDS,
    OOD_SEED,
    OOD_TEST_FRACTION,
    OOD_VIDEOS,
    REWARD_GAIN,
    SCORE_NOISE,
    DemoReport,
    distinct_intervals,
    learning_check,
    print_summary,
    training_curve,
)


def split_plan(
    seed: int, videos: int, fraction: float, seconds: tuple[int, int]
) -> tuple[Counter[str], list[float]]:
    """The questions per task and the durations of a split's test videos, from the plan alone
    (no video encoding needed): the last videos are the test split."""
    counts: Counter[str] = Counter()
    durations = []
    for i in range(videos - _num_test(videos, fraction), videos):
        scene = plan_scene(seed, i, 128, 96, 8, *seconds, SEEING_RADIUS)
        counts.update(q["task"] for q in ask(scene, np.random.default_rng([seed, i, 1])))
        durations.append(scene.duration)
    return counts, durations


def test_the_held_out_split_has_at_least_64_questions_per_task() -> None:
    counts, durations = split_plan(0, DEMO_VIDEOS, DEMO_TEST_FRACTION, (8, 16))
    assert set(counts) == {"tvg", "mcq"}
    assert min(counts.values()) >= 64, counts
    assert max(durations) <= 16


def test_the_out_of_distribution_split_is_longer_and_has_40_questions_per_task() -> None:
    counts, durations = split_plan(OOD_SEED, OOD_VIDEOS, OOD_TEST_FRACTION, OOD_SECONDS)
    assert set(counts) == {"tvg", "mcq"}
    assert min(counts.values()) >= 40, counts
    assert min(durations) >= 20 > 16


class Answers:
    """An evaluation result as far as `distinct_intervals` reads it."""

    def __init__(self, rows: list[dict[str, object]]) -> None:
        self._rows = rows

    def rows(self) -> list[dict[str, object]]:
        return self._rows


def test_distinct_intervals_counts_the_different_grounding_answers_only() -> None:
    rows = [
        {"task": "tvg", "parsed": [1.0, 10.0]},
        {"task": "tvg", "parsed": [1.0, 10.0]},
        {"task": "tvg", "parsed": [2.0, 4.5]},
        {"task": "tvg", "parsed": None},  # unparsed: no interval
        {"task": "mcq", "parsed": "B"},
    ]
    assert distinct_intervals({"no_think": Answers(rows)}) == 2
    assert distinct_intervals({"no_think": Answers(rows[:2] + rows[3:])}) == 1


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
        "evaluation": {
            "held-out": {
                "samples": {"tvg": 84, "mcq": 70},
                "table": "metric  base  after SFT  after GRPO",
                "distinct_intervals": {"base": 0, "sft": 9, "grpo": 3},
                "blind_best": {"mIoU": 32.1, "interval": [3.0, 9.5]},
            },
            "out-of-distribution": {
                "samples": {"tvg": 46, "mcq": 41},
                "table": "metric  base  after SFT  after GRPO",
                "distinct_intervals": {"base": 0, "sft": 5, "grpo": 1},
                "blind_best": {"mIoU": 20.5, "interval": [4.0, 16.5]},
            },
        },
        "seconds": 1.0,
    }
    print_summary(report)
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    assert lines["reward"] == ["0.500", "0.700", "0.500", "0.700", "+0.200"]
    assert lines["tvg_iou"] == ["0.200", "0.300", "0.200", "0.300", "+0.100"]
    assert "learned visibly: yes (reward +0.200 (>= 0.1), no task's score fell by over 0.1)" in out
    assert "held-out evaluation (greedy, `vidrl eval` harness; 84 tvg, 70 mcq samples)" in out
    assert "out-of-distribution evaluation (greedy, `vidrl eval` harness; 46 tvg, 41 mcq samples)" in out
    assert "different intervals answered to the 46 grounding questions: base 0, sft 5, grpo 1" in out
    assert "the best one interval for all of them (3.0 to 9.5 s) scores mIoU 32.1" in out
