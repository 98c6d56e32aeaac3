"""Scoring a model's predictions on samples: the metrics of each task, from raw outputs.

Pure: the caller generates (greedy, one response per sample, e.g. with the rollout pool)
and hands the texts in, so this module needs no engine and evaluates saved outputs the
same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vidrl.data.answers import extract_answer, parse_letter
from vidrl.data.sample import Sample
from vidrl.evaluation.metrics import accuracy, grounding_metrics, temporal_iou
from vidrl.evaluation.report import INTERVAL_PARSERS


def evaluate_predictions(
    samples: Sequence[Sample], texts: Sequence[str], parse: str = "tags"
) -> dict[str, Any]:
    """tvg: mIoU and R1@0.3/0.5/0.7 (percent) with `unparsed`; mcq: accuracy (percent) and
    `invalid_option` (outputs that name no single valid option, percent); `n` per task."""
    if len(samples) != len(texts):
        raise ValueError(f"{len(samples)} samples but {len(texts)} predictions")
    parser = INTERVAL_PARSERS[parse]
    ious: list[float] = []
    unparsed = 0
    letters: list[str | None] = []
    answers: list[str] = []
    for sample, text in zip(samples, texts, strict=True):
        if sample.task == "tvg":
            interval = parser(text, sample.duration)
            unparsed += interval is None
            ious.append(temporal_iou(interval, sample.interval))
        elif sample.task == "mcq":
            answer = extract_answer(text) if parse == "tags" else (extract_answer(text) or text)
            letters.append(parse_letter(answer or "", len(sample.options) or None))
            answers.append(sample.answer or "")
    out: dict[str, Any] = {}
    if ious:
        out["tvg"] = {**grounding_metrics(ious), "unparsed": unparsed}
    if answers:
        invalid = sum(letter is None for letter in letters)
        out["mcq"] = {
            "accuracy": accuracy(letters, answers),
            "n": len(answers),
            "invalid_option": 100.0 * invalid / len(answers),
        }
    return out
