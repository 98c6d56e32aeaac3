"""Scoring one prediction (a model's raw output) per sample, for every task, and the per-task
summaries of an evaluation.

One function, `score_prediction`, scores a (sample, output) pair both for the harness
(`vidrl eval`, in-run evaluation) and for `vidrl metrics` (which rebuilds the sample from a
predictions row), so the two can never disagree.

What each task's prediction is read as, and what it scores:
  tvg    the interval of the chosen parser ("tags", "lmms" or "free"); score = temporal IoU
  mcq    exactly one option letter (`parse_letter`: "B", "(B)", "B. text", "[B]", "B - text";
         with "lmms" not the last two); score = 1 if right, else 0
  gqa    exactly one option letter, plus `<glue>` intervals; score = 1 if the letter is right,
         `iou` = IoU of the merged supporting intervals (VideoChat-R1's grounded QA)
  track  exactly one box per ground-truth frame; score = mean box IoU over the frames
A prediction that cannot be read scores 0 and is counted as `unparsed`; for mcq and gqa that is
an output naming no single valid option (the `invalid_option` percentage).

Summaries are in percent like lmms-eval: tvg {mIoU, R1@0.3, R1@0.5, R1@0.7}; mcq {accuracy,
invalid_option, per_type: {task type: {accuracy, n}}} (the task type is `Sample.dataset`);
gqa {accuracy, mIoU, invalid_option}; track {mIoU} (mean box IoU); each with `n` and
`unparsed` (a count).

Departures: gqa and track predictions are clamped exactly as the rewards clamp them
(`vidrl.rewards.builtin`), so an evaluation reports what training optimised; the references'
evaluation scripts do not clamp.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vidrl.data.answers import extract_answer, parse_boxes, parse_glue, parse_letter
from vidrl.data.sample import Box, Sample
from vidrl.evaluation.metrics import grounding_metrics, temporal_iou
from vidrl.evaluation.parsing import INTERVAL_PARSERS, lmms_metrics
from vidrl.rewards.builtin import box_iou, gqa_iou


@dataclass(frozen=True, slots=True)
class Scored:
    """One sample's prediction, as read and scored.

    parsed:   what was read, JSON-able: [start, end] (tvg), "B" (mcq), {"answer": "B",
              "glue": [[s, e], ...]} (gqa), [[x0, y0, x1, y1], ...] (track); None if unreadable.
    score:    tvg IoU, mcq/gqa 1.0 or 0.0, track mean box IoU; 0.0 when unparsed.
    unparsed: the prediction could not be read as the task's answer.
    iou:      gqa only: IoU of the supporting intervals (scored even when the letter is not).
    """

    sample: Sample
    prediction: str
    parsed: Any
    score: float
    unparsed: bool
    iou: float | None = None


def score_prediction(sample: Sample, prediction: str, parse: str = "tags") -> Scored:
    """Read and score `prediction` for `sample` with the "tags", "lmms" or "free" parser."""
    if parse not in INTERVAL_PARSERS:
        raise ValueError(f"parse must be one of {sorted(INTERVAL_PARSERS)}, got {parse!r}")
    if sample.task == "tvg":
        interval = INTERVAL_PARSERS[parse](prediction, sample.duration)
        iou = temporal_iou(interval, sample.interval)
        return Scored(sample, prediction, None if interval is None else list(interval), iou, interval is None)
    if sample.task in ("mcq", "gqa"):
        answer = _answer_text(prediction, parse)
        letter = None if answer is None else _letter(answer, len(sample.options) or None, parse)
        correct = float(letter is not None and letter == sample.answer)
        if sample.task == "mcq":
            return Scored(sample, prediction, letter, correct, letter is None)
        glue = [list(pair) for pair in parse_glue(prediction)]
        parsed = {"answer": letter, "glue": glue}
        return Scored(sample, prediction, parsed, correct, letter is None, gqa_iou(prediction, sample))
    return _score_track(sample, prediction, parse)


def _answer_text(prediction: str, parse: str) -> str | None:
    # The strict parser wants the answer inside <answer>; lmms and free read free text,
    # using the tag's content when a model happens to write one.
    answer = extract_answer(prediction)
    return prediction if answer is None and parse in ("lmms", "free") else answer


def _letter(answer: str, num_options: int | None, parse: str) -> str | None:
    # "lmms" reads letters as it always has (lmms-eval's own multiple-choice readers are not
    # reproduced here), so a number reported with it does not move; "tags" and "free" read
    # every form the rewards read.
    return parse_letter(answer, num_options, "basic" if parse == "lmms" else "all")


def _score_track(sample: Sample, prediction: str, parse: str) -> Scored:
    answer = _answer_text(prediction, parse)
    boxes = None if answer is None else parse_boxes(answer)
    if boxes is None or len(boxes) != len(sample.boxes) or not sample.boxes:
        return Scored(sample, prediction, None, 0.0, True)
    ious = [box_iou(_clamped(p), g) for p, g in zip(boxes, sample.boxes, strict=True)]
    return Scored(sample, prediction, [list(b) for b in boxes], sum(ious) / len(ious), False)


def _clamped(box: Box) -> Box:
    # As the tracking reward does: a box reaching past the frame counts for its visible part.
    x0, y0, x1, y1 = (min(max(v, 0.0), 1.0) for v in box)
    return (x0, y0, x1, y1)


def summarize(scored: Sequence[Scored], parse: str = "tags") -> dict[str, dict[str, Any]]:
    """Task -> its metrics (see the module docstring); only tasks present appear. With the
    "lmms" parser the grounding metrics are lmms-eval's own (`lmms_metrics`: exact thresholds)."""
    by_task: dict[str, list[Scored]] = {}
    for item in scored:
        by_task.setdefault(item.sample.task, []).append(item)
    out: dict[str, dict[str, Any]] = {}
    for task, items in by_task.items():
        unparsed = sum(item.unparsed for item in items)
        if task == "tvg":
            metric = lmms_metrics if parse == "lmms" else grounding_metrics
            out[task] = {**metric([item.score for item in items]), "unparsed": unparsed}
        elif task == "mcq":
            out[task] = {**_choice_metrics(items), "per_type": _per_type(items)}
        elif task == "gqa":
            ious = [item.iou or 0.0 for item in items]
            out[task] = {**_choice_metrics(items), "mIoU": 100.0 * sum(ious) / len(ious)}
        else:
            mean = sum(item.score for item in items) / len(items)
            out[task] = {"mIoU": 100.0 * mean, "n": len(items), "unparsed": unparsed}
    return out


def _choice_metrics(items: Sequence[Scored]) -> dict[str, Any]:
    unparsed = sum(item.unparsed for item in items)
    return {
        "accuracy": 100.0 * sum(item.score for item in items) / len(items),
        "n": len(items),
        "invalid_option": 100.0 * unparsed / len(items),
        "unparsed": unparsed,
    }


def _per_type(items: Sequence[Scored]) -> dict[str, dict[str, float | int]]:
    groups: dict[str, list[Scored]] = {}
    for item in items:
        groups.setdefault(item.sample.dataset or "unknown", []).append(item)
    return {
        name: {"accuracy": 100.0 * sum(i.score for i in group) / len(group), "n": len(group)}
        for name, group in sorted(groups.items())
    }


def prediction_row(scored: Scored, **extra: Any) -> dict[str, Any]:
    """The JSON row of one prediction: who, what was asked, the raw output (`prediction`),
    what was read and its score, and the ground truth in the fields `vidrl metrics` reads
    (`vidrl.evaluation.report` turns such a row back into the sample)."""
    sample = scored.sample
    row: dict[str, Any] = {
        "id": sample.id,
        "task": sample.task,
        "dataset": sample.dataset,
        "video": sample.video,
        "question": sample.question,
        **extra,
        "prediction": scored.prediction,
        "parsed": scored.parsed,
        "score": scored.score,
        "duration": sample.duration,
    }
    if scored.iou is not None:
        row["iou"] = scored.iou
    if sample.task == "tvg":
        row["timestamps"] = list(sample.interval)
    if sample.task in ("mcq", "gqa"):
        row["answer"] = sample.answer
        row["options"] = list(sample.options)
    if sample.task == "gqa":
        row["timestamps"] = [list(pair) for pair in sample.timestamps]
    if sample.task == "track":
        row["boxes"] = [list(box) for box in sample.boxes]
    return row


def flat_metrics(tasks: Mapping[str, Mapping[str, Any]], prefix: str = "eval") -> dict[str, float]:
    """`{prefix}/{task}/{metric}` -> value for a metrics sink (per-type accuracies as
    `{prefix}/mcq/accuracy/{type}`); non-finite values are left out."""
    flat: dict[str, float] = {}
    for task, metrics in tasks.items():
        for name, value in metrics.items():
            if name == "per_type":
                for kind, numbers in value.items():
                    flat[f"{prefix}/{task}/accuracy/{kind}"] = float(numbers["accuracy"])
            elif isinstance(value, int | float) and math.isfinite(value):
                flat[f"{prefix}/{task}/{name}"] = float(value)
    return flat
