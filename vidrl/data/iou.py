"""Temporal IoU: the one overlap measure of two time intervals.

The grounding reward (`vidrl.rewards.builtin.tvg_iou`) and the evaluation metric
(`vidrl.evaluation.metrics.temporal_iou`) both score an answered interval with
`interval_iou`, so training and evaluation can never compute it differently. It lives in
`vidrl.data`, the layer both depend on (neither imports the other for it).

What each caller does around it stays with the caller, because their contracts differ:
the reward clamps the prediction to the video, scores a reversed or empty one 0 and clips
the result to [0, 1] (a reward is total: never NaN); the evaluation scores an unparsed,
reversed or non-finite prediction 0 and raises on a malformed ground truth (a data error).
"""

from __future__ import annotations

from vidrl.data.sample import Interval


def interval_iou(a: Interval, b: Interval) -> float:
    """Length of the overlap over length of the hull of two `[start, end]` intervals.

    max(min(ends) - max(starts), 0) / (max(ends) - min(starts)); the hull equals the union
    whenever the intervals overlap, and there is nothing to divide otherwise. Disjoint,
    touching and reversed intervals have no overlap: 0. An empty hull (a point on the same
    point) gives 0 instead of dividing by zero. For finite intervals with start <= end the
    result is in [0, 1]; non-finite input is the caller's to screen (see the module doc).
    """
    overlap = max(min(a[1], b[1]) - max(a[0], b[0]), 0.0)
    hull = max(a[1], b[1]) - min(a[0], b[0])
    return overlap / hull if hull > 0 else 0.0
