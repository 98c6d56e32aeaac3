"""Score a file of model predictions into one JSON summary (`vidrl metrics`).

Input: JSON Lines, one object per prediction. A grounding row carries
`{"prediction": str, "timestamps": [s, e], "duration": seconds}` (`[[s, e]]`, one interval as
in `Sample.timestamps`, is accepted too); a multiple-choice row carries
`{"prediction": str, "answer": "C"}` (or "(C)"), optionally with `options` (a list, whose length
bounds the letters `parse_letter` accepts). Blank lines are skipped.

Output, one JSON object:
    parse          which parser read the predictions ("tags" or "lmms")
    n, unparsed    grounding rows scored, and how many of them gave no interval (IoU 0)
    mIoU, R1@0.3, R1@0.5, R1@0.7   percent, lmms-eval style (see metrics.py)
    accuracy, n_mcq, unparsed_mcq  percent correct, mcq rows scored, rows with no letter;
                   present only when the input holds at least one mcq row
    bad_rows, errors   rows that could not be scored, each {"line": N, "reason": "..."}
The grounding keys are always present, with n = 0 when there are no grounding rows. A bad row
(not JSON, missing or mistyped fields) is listed and skipped, never fatal, so one broken line
does not lose a long evaluation run; the caller decides what a non-zero count means.
Grounded QA rows (both `timestamps` and `answer`) are not scored here and are reported as bad.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import TextIO

from vidrl.data.answers import extract_answer, parse_letter
from vidrl.data.sample import Interval
from vidrl.evaluation.metrics import accuracy, grounding_metrics, temporal_iou
from vidrl.evaluation.parsing import IntervalParser, parse_lmms, parse_tags

INTERVAL_PARSERS: dict[str, IntervalParser] = {"tags": parse_tags, "lmms": parse_lmms}
"""Parse mode name -> the parser that reads a grounding prediction."""


class _BadRow(ValueError):
    """A row that cannot be scored; its message is the reason shown to the user."""


class _Tally:
    """Accumulates per-row results; rows are validated in full before anything is recorded."""

    def __init__(self, parse: str) -> None:
        if parse not in INTERVAL_PARSERS:
            raise ValueError(f"parse must be one of {sorted(INTERVAL_PARSERS)}, got {parse!r}")
        self.parse = parse
        self.ious: list[float] = []
        self.unparsed = 0
        self.letters: list[str | None] = []
        self.answers: list[str] = []
        self.errors: list[dict[str, int | str]] = []

    def add(self, line: int, row: object) -> None:
        try:
            self._score(row)
        except _BadRow as bad:
            self.error(line, str(bad))

    def error(self, line: int, reason: str) -> None:
        self.errors.append({"line": line, "reason": reason})

    def _score(self, row: object) -> None:
        if not isinstance(row, dict):
            raise _BadRow(f"row is a JSON {type(row).__name__}, not an object")
        prediction = row.get("prediction")
        if not isinstance(prediction, str):
            raise _BadRow("'prediction' is missing or not a string")
        if "timestamps" in row and "answer" in row:
            raise _BadRow("row has both 'timestamps' and 'answer' (grounded QA is not scored)")
        if "timestamps" in row:
            gt, duration = _grounding_truth(row)
            interval = INTERVAL_PARSERS[self.parse](prediction, duration)
            if interval is None:
                self.unparsed += 1
            self.ious.append(temporal_iou(interval, gt))
        elif "answer" in row:
            answer, num_options = _mcq_truth(row)
            self.letters.append(self._letter(prediction, num_options))
            self.answers.append(answer)
        else:
            raise _BadRow("row has neither 'timestamps' (grounding) nor 'answer' (mcq)")

    def _letter(self, prediction: str, num_options: int | None) -> str | None:
        # Strict mode wants the letter inside <answer>; lmms mode reads free text, using the
        # tag's content when a model happens to write one.
        answer = extract_answer(prediction)
        if answer is None and self.parse == "lmms":
            answer = prediction
        return None if answer is None else parse_letter(answer, num_options)

    def summary(self) -> dict[str, object]:
        result: dict[str, object] = {"parse": self.parse}
        metrics = grounding_metrics(self.ious)
        result["n"] = metrics.pop("n")
        result["unparsed"] = self.unparsed
        result.update(metrics)
        if self.answers:
            result["accuracy"] = accuracy(self.letters, self.answers)
            result["n_mcq"] = len(self.answers)
            result["unparsed_mcq"] = sum(1 for letter in self.letters if letter is None)
        result["bad_rows"] = len(self.errors)
        result["errors"] = self.errors
        return result


def compute_metrics(rows: Iterable[object], parse: str) -> dict[str, object]:
    """Score rows (already decoded) with the "tags" or "lmms" parser; see the module doc.

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


def _grounding_truth(row: dict[str, object]) -> tuple[Interval, float]:
    duration = _finite_number(row.get("duration"), "duration")
    if duration <= 0:
        raise _BadRow(f"'duration' must be positive, got {duration}")
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


def _mcq_truth(row: dict[str, object]) -> tuple[str, int | None]:
    answer = row["answer"]
    letter = answer.strip().strip("()").strip().upper() if isinstance(answer, str) else ""
    if len(letter) != 1 or not "A" <= letter <= "Z":
        raise _BadRow(f"'answer' must be an option letter such as 'C' or '(C)', got {answer!r}")
    options = row.get("options")
    if options is not None and not isinstance(options, list):
        raise _BadRow("'options' must be a list of option texts")
    return letter, None if options is None else len(options)


def _finite_number(value: object, name: str) -> float:
    # bool is an int subclass in Python; true/false in a data file is never a time.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _BadRow(f"'{name}' is missing or not a number")
    if not math.isfinite(value):
        raise _BadRow(f"'{name}' is not finite")
    return float(value)
