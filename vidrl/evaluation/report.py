"""Score a file of model predictions into one JSON summary (`vidrl metrics`).

Input: JSON Lines, one object per prediction. A grounding row carries
`{"prediction": str, "timestamps": [s, e], "duration": seconds}` (`[[s, e]]`, one interval as
in `Sample.timestamps`, is accepted too); a multiple-choice row carries
`{"prediction": str, "answer": "C"}` (or "(C)"), optionally with `options` (a list, whose length
bounds the letters `parse_letter` accepts). A row with a `task` key is read as that task:
"gqa" rows carry `answer`, `options`, `timestamps: [[s, e], ...]` (the supporting intervals)
and `duration`; "track" rows carry `boxes: [[x0, y0, x1, y1], ...]`. The predictions file of
`vidrl eval` is such a file. Blank lines are skipped.

Output, one JSON object:
    parse          which parser read the predictions ("tags", "lmms" or "free")
    n, unparsed    grounding rows scored, and how many of them gave no interval (IoU 0)
    mIoU, R1@0.3, R1@0.5, R1@0.7   percent, lmms-eval style (see metrics.py); with "lmms",
                   computed exactly as lmms-eval's charades_sta computes them
                   (`vidrl.evaluation.parsing.lmms_metrics`), here and under `tasks`
    accuracy, n_mcq, unparsed_mcq  percent correct, mcq rows scored, rows with no letter;
                   present only when the input holds at least one mcq row
    tasks          every task's summary, as `vidrl eval` reports it (vidrl.evaluation.scoring)
    bad_rows, errors   rows that could not be scored, each {"line": N, "reason": "..."}
The grounding keys are always present, with n = 0 when there are no grounding rows. A bad row
(not JSON, missing or mistyped fields) is listed and skipped, never fatal, so one broken line
does not lose a long evaluation run; the caller decides what a non-zero count means.
A row without `task` that has both `timestamps` and `answer` is ambiguous and reported as bad.
Every row is scored by `vidrl.evaluation.scoring.score_prediction`, the function `vidrl eval`
scores with, so both report the same numbers for the same predictions.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import TextIO

from vidrl.data.sample import TASK_KINDS, Box, Interval, Sample
from vidrl.evaluation.metrics import grounding_metrics
from vidrl.evaluation.parsing import INTERVAL_PARSERS
from vidrl.evaluation.scoring import Scored, score_prediction, summarize

__all__ = ["INTERVAL_PARSERS", "compute_metrics", "main_metrics"]

_UNUSED_DURATION = 1.0
"""Duration of a rebuilt mcq sample: mcq rows need none, and no mcq score reads it."""


class _BadRow(ValueError):
    """A row that cannot be scored; its message is the reason shown to the user."""


class _Tally:
    """Accumulates per-row results; rows are validated in full before anything is recorded."""

    def __init__(self, parse: str) -> None:
        if parse not in INTERVAL_PARSERS:
            raise ValueError(f"parse must be one of {sorted(INTERVAL_PARSERS)}, got {parse!r}")
        self.parse = parse
        self.scored: list[Scored] = []
        self.errors: list[dict[str, int | str]] = []

    def add(self, line: int, row: object) -> None:
        try:
            sample, prediction = _row_sample(line, row)
        except _BadRow as bad:
            self.error(line, str(bad))
            return
        self.scored.append(score_prediction(sample, prediction, self.parse))

    def error(self, line: int, reason: str) -> None:
        self.errors.append({"line": line, "reason": reason})

    def summary(self) -> dict[str, object]:
        tasks = summarize(self.scored, self.parse)
        result: dict[str, object] = {"parse": self.parse}
        grounding = tasks.get("tvg") or {**grounding_metrics([]), "unparsed": 0}
        result["n"] = grounding["n"]
        result["unparsed"] = grounding["unparsed"]
        result.update({k: v for k, v in grounding.items() if k not in ("n", "unparsed")})
        if "mcq" in tasks:
            result["accuracy"] = tasks["mcq"]["accuracy"]
            result["n_mcq"] = tasks["mcq"]["n"]
            result["unparsed_mcq"] = tasks["mcq"]["unparsed"]
        result["tasks"] = tasks
        result["bad_rows"] = len(self.errors)
        result["errors"] = self.errors
        return result


def compute_metrics(rows: Iterable[object], parse: str) -> dict[str, object]:
    """Score rows (already decoded) with the "tags", "lmms" or "free" parser; see the module doc.

    Rows are numbered from 1 in the `errors` list.
    """
    tally = _Tally(parse)
    for line, row in enumerate(rows, start=1):
        tally.add(line, row)
    return tally.summary()


def main_metrics(path: str, parse: str, out: TextIO) -> int:
    """Score the JSON Lines file at `path`, write one JSON object to `out`, return bad rows."""
    tally = _Tally(parse)
    # Read bytes and decode line by line, so one corrupt line is a bad row, not a crash.
    with open(path, "rb") as lines:
        for line, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                tally.error(line, "not UTF-8 text")
                continue
            except json.JSONDecodeError as bad:
                tally.error(line, f"not JSON: {bad.msg}")
                continue
            tally.add(line, row)
    out.write(json.dumps(tally.summary(), allow_nan=False) + "\n")
    return len(tally.errors)


def _row_sample(line: int, row: object) -> tuple[Sample, str]:
    """The sample a row's ground truth describes, and its prediction; _BadRow if unusable."""
    if not isinstance(row, dict):
        raise _BadRow(f"row is a JSON {type(row).__name__}, not an object")
    prediction = row.get("prediction")
    if not isinstance(prediction, str):
        raise _BadRow("'prediction' is missing or not a string")
    task = row.get("task")
    if task is None:
        if "timestamps" in row and "answer" in row:
            raise _BadRow("row has both 'timestamps' and 'answer' but no 'task' (say \"task\": \"gqa\")")
        if "timestamps" not in row and "answer" not in row:
            raise _BadRow("row has neither 'timestamps' (grounding) nor 'answer' (mcq)")
        task = "tvg" if "timestamps" in row else "mcq"
    if task not in TASK_KINDS:
        raise _BadRow(f"unknown task {task!r}; allowed: {', '.join(TASK_KINDS)}")
    base = {"id": str(row.get("id", f"line {line}")), "video": "", "question": ""}
    base["dataset"] = str(row.get("dataset") or "")
    if task == "tvg":
        gt, duration = _grounding_truth(row)
        return Sample(task="tvg", duration=duration, timestamps=(gt,), **base), prediction
    if task == "track":
        duration = _positive_duration(row)
        return Sample(task="track", duration=duration, boxes=_boxes(row), **base), prediction
    answer, options = _mcq_truth(row)
    if task == "mcq":
        return Sample(
            task="mcq", duration=_UNUSED_DURATION, options=options, answer=answer, **base
        ), prediction
    spans = _spans(row.get("timestamps"))
    duration = _positive_duration(row)
    return (
        Sample(task="gqa", duration=duration, options=options, answer=answer, timestamps=spans, **base),
        prediction,
    )


def _positive_duration(row: dict[str, object]) -> float:
    duration = _finite_number(row.get("duration"), "duration")
    if duration <= 0:
        raise _BadRow(f"'duration' must be positive, got {duration}")
    return duration


def _grounding_truth(row: dict[str, object]) -> tuple[Interval, float]:
    duration = _positive_duration(row)
    timestamps = row["timestamps"]
    # One interval wrapped in a list, as Sample.timestamps holds it, is the same ground truth.
    if isinstance(timestamps, list) and len(timestamps) == 1 and isinstance(timestamps[0], list):
        timestamps = timestamps[0]
    if not isinstance(timestamps, list) or len(timestamps) != 2:
        raise _BadRow("'timestamps' must be [start, end] in seconds")
    start = _finite_number(timestamps[0], "timestamps[0]")
    end = _finite_number(timestamps[1], "timestamps[1]")
    if start > end:
        raise _BadRow(f"'timestamps' is reversed: [{start}, {end}]")
    return (start, end), duration


def _spans(value: object) -> tuple[Interval, ...]:
    """gqa's supporting intervals: a non-empty list of [start, end] pairs, start <= end."""
    if not isinstance(value, list) or not value:
        raise _BadRow("'timestamps' of a gqa row must be a non-empty list of [start, end]")
    spans = []
    for pair in value:
        if not isinstance(pair, list) or len(pair) != 2:
            raise _BadRow(f"'timestamps' entry {pair!r} is not [start, end]")
        start, end = _finite_number(pair[0], "timestamps"), _finite_number(pair[1], "timestamps")
        if start > end:
            raise _BadRow(f"'timestamps' entry is reversed: [{start}, {end}]")
        spans.append((start, end))
    return tuple(spans)


def _boxes(row: dict[str, object]) -> tuple[Box, ...]:
    value = row.get("boxes")
    if not isinstance(value, list) or not value:
        raise _BadRow("'boxes' must be a non-empty list of [x0, y0, x1, y1]")
    boxes = []
    for box in value:
        if not isinstance(box, list) or len(box) != 4:
            raise _BadRow(f"'boxes' entry {box!r} is not [x0, y0, x1, y1]")
        x0, y0, x1, y1 = (_finite_number(v, "boxes") for v in box)
        boxes.append((x0, y0, x1, y1))
    return tuple(boxes)


def _mcq_truth(row: dict[str, object]) -> tuple[str, tuple[str, ...]]:
    answer = row.get("answer")
    letter = answer.strip().strip("()").strip().upper() if isinstance(answer, str) else ""
    if len(letter) != 1 or not "A" <= letter <= "Z":
        raise _BadRow(f"'answer' must be an option letter such as 'C' or '(C)', got {answer!r}")
    options = row.get("options")
    if options is not None and not isinstance(options, list):
        raise _BadRow("'options' must be a list of option texts")
    return letter, tuple(str(o) for o in options or ())


def _finite_number(value: object, name: str) -> float:
    # bool is an int subclass in Python; true/false in a data file is never a time.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _BadRow(f"'{name}' is missing or not a number")
    if not math.isfinite(value):
        raise _BadRow(f"'{name}' is not finite")
    return float(value)
