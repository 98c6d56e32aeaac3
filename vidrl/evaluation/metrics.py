"""Evaluation metrics: temporal IoU, grounding recall at IoU thresholds, accuracy.

Numbers are reported the way lmms-eval reports Charades-STA, so they line up with published
tables: mIoU is the mean IoU times 100, and R1@t is the percentage of samples whose top-1 (only)
prediction has IoU >= t. A prediction that could not be parsed counts as IoU 0.

Departures from lmms-eval's script:
- a threshold test allows 1e-9 of floating-point noise, so an IoU that is exactly 0.5 in real
  numbers but came out as 0.49999999999999994 from subtracting decimal seconds still counts;
- an empty union (a point prediction on a point ground truth) gives IoU 0 instead of dividing by
  zero, and an empty list of samples gives zeros with `n = 0` instead of raising.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from vidrl.data.iou import interval_iou
from vidrl.data.sample import Interval

R1_THRESHOLDS: tuple[float, ...] = (0.3, 0.5, 0.7)
"""IoU thresholds of the R1@t columns, as in lmms-eval's charades_sta and the seed papers."""

_THRESHOLD_SLACK = 1e-9
"""How far below a threshold an IoU may fall from rounding alone and still count."""


def temporal_iou(pred: Interval | None, gt: Interval) -> float:
    """IoU in [0, 1] of two [start, end] intervals in seconds (`vidrl.data.iou.interval_iou`,
    the reward's IoU too).

    None (no parsable prediction), a reversed or non-finite prediction, and an empty union all
    give 0. A malformed ground truth is a data error, not a bad prediction, so it raises.
    """
    gt_start, gt_end = gt
    if not (math.isfinite(gt_start) and math.isfinite(gt_end)) or gt_start > gt_end:
        raise ValueError(f"ground-truth interval must be finite with start <= end, got {gt}")
    if pred is None:
        return 0.0
    start, end = pred
    # Screened here rather than left to the shared arithmetic: with nan or inf it returns
    # 0 only by accident of float rules (and nan for inf over inf).
    if not (math.isfinite(start) and math.isfinite(end)) or start > end:
        return 0.0
    return interval_iou(pred, gt)


def grounding_metrics(ious: Sequence[float]) -> dict[str, float | int]:
    """mIoU, R1@0.3, R1@0.5, R1@0.7 (all in percent) and `n`, the number of samples.

    `ious` holds one IoU per sample, 0 for unparsed predictions.
    """
    n = len(ious)
    metrics: dict[str, float | int] = {"mIoU": _percent(sum(ious), n)}
    for threshold in R1_THRESHOLDS:
        hits = sum(1 for iou in ious if iou >= threshold - _THRESHOLD_SLACK)
        metrics[f"R1@{threshold}"] = _percent(hits, n)
    metrics["n"] = n
    return metrics


def blind_best(truths: Sequence[Interval], longest: float, grid: float = 0.5) -> tuple[float, Interval]:
    """The best mIoU (percent) that one interval answered to every question reaches, and that
    interval: the ceiling of a model that gives the same interval whatever the video and the
    question, found over every interval with ends on a `grid`-second grid in [0, longest],
    measured on the answers themselves. A model blind to the video but reading the question
    (the event's kind) could still do better."""
    if not truths:
        return 0.0, (0.0, 0.0)
    ends = [i * grid for i in range(math.floor(longest / grid) + 1)]
    best, chosen = -1.0, (0.0, 0.0)
    for i, start in enumerate(ends):
        for end in ends[i + 1 :]:
            total = sum(interval_iou((start, end), truth) for truth in truths)
            if total > best:  # the first best in grid order: the same interval on every run
                best, chosen = total, (start, end)
    return _percent(best, len(truths)), chosen


def accuracy(preds: Sequence[str | None], answers: Sequence[str]) -> float:
    """Percent of predictions equal to their answer; None (unparsed) is wrong; empty gives 0.

    Both sides are compared as given: normalise letters (case, parentheses) before calling.
    """
    if len(preds) != len(answers):
        raise ValueError(f"{len(preds)} predictions for {len(answers)} answers")
    correct = sum(1 for pred, answer in zip(preds, answers, strict=True) if pred == answer)
    return _percent(correct, len(answers))


def _percent(total: float, n: int) -> float:
    # An empty evaluation reports 0 rather than failing: the caller also reports n = 0.
    return 100.0 * total / n if n else 0.0
