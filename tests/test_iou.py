"""The one temporal IoU: hand-worked cases, and the reward and the evaluation agreeing on it."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vidrl.data.iou import interval_iou
from vidrl.data.sample import Sample
from vidrl.evaluation.metrics import temporal_iou
from vidrl.evaluation.parsing import parse_tags
from vidrl.rewards.builtin import tvg_iou


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ((2.0, 6.0), (4.0, 8.0), 2 / 6),  # overlap [4, 6], hull [2, 8]
        ((4.0, 8.0), (2.0, 6.0), 2 / 6),  # symmetric
        ((3.0, 5.0), (0.0, 10.0), 0.2),
        ((0.0, 10.0), (0.0, 10.0), 1.0),
        ((0.0, 2.0), (2.0, 4.0), 0.0),  # touching
        ((10.0, 20.0), (0.0, 5.0), 0.0),  # disjoint: the hull is no union, but 0 either way
        ((5.0, 5.0), (0.0, 10.0), 0.0),  # a point
        ((3.0, 3.0), (3.0, 3.0), 0.0),  # empty hull: 0, no ZeroDivisionError
        ((6.0, 2.0), (2.0, 6.0), 0.0),  # reversed: no overlap
    ],
)
def test_interval_iou_hand_worked(a, b, expected: float) -> None:
    assert interval_iou(a, b) == pytest.approx(expected)


centiseconds = st.integers(0, 4_000).map(lambda c: c / 100)  # up to 10 s past a 30 s video


@settings(max_examples=500, deadline=None)
@given(start=centiseconds, end=centiseconds, gt_start=st.integers(0, 2_999), gt_length=st.integers(1, 3_000))
def test_reward_and_evaluation_give_the_same_iou(
    start: float, end: float, gt_start: int, gt_length: int
) -> None:
    # The same "S to E" answer through the grounding reward and through `vidrl eval --parse
    # tags`: both clamp to the video and score reversed or empty answers 0, then share the IoU.
    gt = (gt_start / 100, min(gt_start + gt_length, 3_000) / 100)
    sample = Sample("t", "tvg", "v", "q", duration=30.0, timestamps=(gt,))
    response = f"<answer>{start} to {end}</answer>"
    evaluated = temporal_iou(parse_tags(response, sample.duration), sample.interval)
    assert tvg_iou(response, sample) == evaluated
