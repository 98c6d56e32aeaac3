"""The committed seeing model (vidrl/assets/tiny_seeing_qwen2_5_vl, built by `vidrl tiny-model
--pretrain`): its held-out figures are what its report says, and it is a vision test: the
questions that need the frames' order or motion fall to the blind level when the video is
shuffled in time or is one frame repeated. A regression in the vision path (frames out of order,
collapsed timestamps, a processor that expands the video differently) would fail it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from vidrl.cluster.pretrain import (
    OPEN_SEED,
    OPEN_VIDEOS,
    REPORT,
    SEEING_MODEL,
    Batcher,
    PretrainConfig,
    blind_levels,
    held_out_data,
    held_out_scores,
    one_frame_repeated,
    open_question_scores,
    shuffled_in_time,
)

pytestmark = pytest.mark.slow

NUMERIC_SLACK = 2
"""Questions whose answer may flip between CPUs (float32 sums in another order on near ties)."""


@pytest.fixture(scope="module")
def seeing() -> tuple[Any, Batcher, dict[str, Any]]:
    import torch
    from transformers import AutoModelForImageTextToText

    torch.set_num_threads(2)
    model = AutoModelForImageTextToText.from_pretrained(SEEING_MODEL, dtype=torch.float32).eval()
    report = json.loads((SEEING_MODEL / REPORT).read_text(encoding="utf-8"))
    return model, Batcher(SEEING_MODEL), report


@pytest.fixture(scope="module")
def held_out(tmp_path_factory: pytest.TempPathFactory, seeing: tuple[Any, Batcher, dict[str, Any]]) -> Path:
    report = seeing[2]
    return held_out_data(tmp_path_factory.mktemp("held_out"), PretrainConfig(**report["config"]))


def test_the_committed_model_scores_what_its_report_says(
    seeing: tuple[Any, Batcher, dict[str, Any]], held_out: Path
) -> None:
    model, batcher, report = seeing
    scores = held_out_scores(model, batcher, held_out)
    questions = report["held_out"]["questions"]
    assert scores["questions"] == questions
    assert abs(scores["mcq"] - report["held_out"]["mcq"]) * questions <= NUMERIC_SLACK
    opened = open_question_scores(
        model, batcher, OPEN_VIDEOS, OPEN_SEED, tuple(report["config"]["shape_radius"])
    )
    for kind, accuracy in report["open_questions"].items():
        assert abs(opened[kind] - accuracy) <= 0.05, kind


VISION_TEST_VIDEOS = 60
VISION_TEST_SEED = 3_000
"""Scenes of the vision test's own (neither pretraining's, the report's nor the demo's)."""
BLIND_SLACK = 0.15
"""How far above a question's blind level a broken video may still score (60 scenes: one
direction question in two of them, so about 30 answers, a standard error of 0.09 at 0.5)."""
SEEING_MARGIN = 0.2
"""How far above its broken-video score the intact video must put the same questions."""


@pytest.mark.parametrize(
    ("broken", "needs"),
    [(shuffled_in_time, ("direction",)), (one_frame_repeated, ("direction", "mover"))],
    ids=["shuffled_in_time", "one_frame_repeated"],
)
def test_questions_that_need_the_frames_fall_to_blind_on_a_broken_video(
    seeing: tuple[Any, Batcher, dict[str, Any]], broken: Any, needs: tuple[str, ...]
) -> None:
    """Direction needs the frames in order, the mover needs motion. The blind level is the share
    of the most frequent answer (what a model that ignores the frames does at best)."""
    model, batcher, report = seeing
    radius = tuple(report["config"]["shape_radius"])
    blind_level = blind_levels(batcher, VISION_TEST_VIDEOS, VISION_TEST_SEED, radius)
    intact = open_question_scores(model, batcher, VISION_TEST_VIDEOS, VISION_TEST_SEED, radius)
    damaged = open_question_scores(model, batcher, VISION_TEST_VIDEOS, VISION_TEST_SEED, radius, broken)
    for kind in needs:
        blind = blind_level[kind]
        assert intact[kind] >= damaged[kind] + SEEING_MARGIN, (kind, intact, damaged)
        assert damaged[kind] <= blind + BLIND_SLACK, (kind, damaged)


def test_the_command_builds_a_model_with_its_report(tmp_path: Path) -> None:
    """`vidrl tiny-model --pretrain` end to end, two steps: the model loads as the plain
    architecture (the probe is not saved) and the report holds every figure README quotes."""
    from transformers import AutoModelForImageTextToText

    from vidrl.cli import main

    assert main(["tiny-model", str(tmp_path / "m"), "--pretrain", "--steps", "2"]) == 0
    report = json.loads((tmp_path / "m" / REPORT).read_text(encoding="utf-8"))
    assert report["config"]["steps"] == 2 and report["parameters"] > 1_000_000
    assert set(report["open_questions"]) == {"colour", "count", "direction", "mover"}
    assert report["held_out"]["questions"] == 70 and 0 <= report["held_out"]["mcq"] <= 1
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "m")
    assert not any("probe" in name for name, _ in model.named_parameters())
    assert sum(p.numel() for p in model.parameters()) == report["parameters"]
