"""Scoring a model's predictions on samples: the metrics of each task, from raw outputs.

Pure: the caller generates (greedy, one response per sample, e.g. with the rollout pool,
see vidrl.cluster.evaluate) and hands the texts in, so this module needs no engine and
evaluates saved outputs the same way. The scoring itself is vidrl.evaluation.scoring.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vidrl.data.sample import Sample
from vidrl.evaluation.scoring import Scored, score_prediction, summarize


def score_predictions(samples: Sequence[Sample], texts: Sequence[str], parse: str = "tags") -> list[Scored]:
    """Each sample's prediction read and scored (see `score_prediction`)."""
    if len(samples) != len(texts):
        raise ValueError(f"{len(samples)} samples but {len(texts)} predictions")
    return [score_prediction(s, t, parse) for s, t in zip(samples, texts, strict=True)]


def evaluate_predictions(
    samples: Sequence[Sample], texts: Sequence[str], parse: str = "tags"
) -> dict[str, Any]:
    """Task -> metrics: tvg mIoU and R1@0.3/0.5/0.7 (percent); mcq accuracy, `invalid_option`
    (percent of outputs naming no single valid option) and per-type accuracy; gqa accuracy and
    interval mIoU; track mean box IoU; each with `n` and `unparsed`."""
    return summarize(score_predictions(samples, texts, parse), parse)
