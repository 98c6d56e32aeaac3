"""Score a JSONL file of responses offline: the library behind `vidrl score FILE.jsonl`.

Each input line is a JSON object holding a response and the ground truth it is scored
against (the fields of `vidrl.data.sample.Sample` a reward reads):

    tvg:   {"task": "tvg", "response": "...", "timestamps": [s, e], "duration": d}
    mcq:   {"task": "mcq", "response": "...", "answer": "B", "options": [...]}  (options optional)
    gqa:   {"task": "gqa", "response": "...", "answer": "B", "timestamps": [[s, e], ...],
            "duration": d}
    track: {"task": "track", "response": "...", "boxes": [[x0, y0, x1, y1], ...]}

Each output line is the input row plus `reward` (the total; null when no component applies)
and `components` (name -> value). A bad row (not JSON, unknown task, missing field, wrong
type) comes out as the row, or `{"raw": line}` when it is not a JSON object, plus `error`:
a message naming the line number, the field and the problem. Bad rows are never fatal;
`main_score` returns how many there were. Blank lines are skipped.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from vidrl.data.answers import parse_letter
from vidrl.data.sample import TASK_KINDS, Box, Interval, Sample
from vidrl.rewards.compose import ComposedReward
from vidrl.rewards.config import RewardsConfig, build_reward
from vidrl.rewards.types import RewardInput

DEFAULT_PRESET = "vidrl"
Row = dict[str, Any]
_Scored = tuple[Row, bool]
"""An output row and whether the input row was good."""


class RowError(ValueError):
    """A row that cannot be scored; the message names the line, the field and the problem."""


def main_score(path: str, preset: str | None, out: TextIO) -> int:
    """Score the JSONL file at `path` ("-": stdin) into `out` with a preset (None: "vidrl");
    returns the number of bad rows. An unknown preset raises before the file is opened (a
    config error, not a row error)."""
    reward = preset_reward(preset)
    bad_rows = 0
    with _open_lines(path) as lines:
        for row, ok in _score_lines(reward, lines):
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            bad_rows += not ok
    return bad_rows


def preset_reward(preset: str | None) -> ComposedReward:
    """The composed reward of a preset; None picks the default preset."""
    return build_reward(RewardsConfig.model_validate({"preset": preset or DEFAULT_PRESET}))


def _score_lines(reward: ComposedReward, lines: Iterable[str]) -> Iterator[_Scored]:
    """(output row, whether the row was good) for every non-blank line."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = _parse_object(line, number)
        except RowError as error:
            yield {"raw": line.rstrip("\r\n"), "error": str(error)}, False
            continue
        try:
            item = RewardInput(sample=_sample_from_row(row, number), response=row["response"])
        except RowError as error:
            yield {**row, "error": str(error)}, False
            continue
        yield _scored_row(reward, item, row, number)


def _scored_row(reward: ComposedReward, item: RewardInput, row: Row, number: int) -> _Scored:
    result = reward.score([item])
    score = result.scores[0]
    out = {
        **row,
        "reward": None if score is None else score.total,
        "components": {} if score is None else dict(score.components),
    }
    if result.failures:
        failure = result.failures[0]
        out["error"] = f"line {number}: reward component {failure.component!r}: {failure.error}"
        return out, False
    return out, True


def _parse_object(line: str, number: int) -> Row:
    try:
        row = json.loads(line)
    except (ValueError, RecursionError) as error:
        raise RowError(f"line {number}: not valid JSON ({error})") from None
    if not isinstance(row, dict):
        raise RowError(f"line {number}: expected a JSON object, got {type(row).__name__}")
    return row


def _sample_from_row(row: Row, number: int) -> Sample:
    fields = _RowReader(row, number)
    task = fields.string("task")
    if task not in TASK_KINDS:
        raise fields.error("task", f"unknown task {task!r}; allowed: {', '.join(TASK_KINDS)}")
    fields.string("response")
    sample_id = row["id"] if isinstance(row.get("id"), str) else f"line-{number}"
    common: dict[str, Any] = {"id": sample_id, "task": task, "video": "", "question": ""}
    if task == "tvg":
        return Sample(**common, duration=fields.duration(), timestamps=(fields.tvg_interval(),))
    if task == "track":
        return Sample(**common, duration=0.0, boxes=fields.boxes())
    answer, options = fields.letter(), fields.options()
    if task == "mcq":
        return Sample(**common, duration=0.0, answer=answer, options=options)
    duration, intervals = fields.duration(), fields.intervals("timestamps")
    return Sample(**common, duration=duration, answer=answer, options=options, timestamps=intervals)


class _RowReader:
    """Typed access to a row's fields; every problem becomes a RowError naming the field."""

    def __init__(self, row: Row, number: int) -> None:
        self.row, self.line = row, number

    def error(self, field: str, problem: str) -> RowError:
        return RowError(f"line {self.line}: field {field!r}: {problem}")

    def get(self, field: str) -> Any:
        if field not in self.row:
            raise self.error(field, "missing")
        return self.row[field]

    def string(self, field: str) -> str:
        value = self.get(field)
        if not isinstance(value, str):
            raise self.error(field, f"expected a string, got {_kind(value)}")
        return value

    def number(self, field: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(field, f"expected a number, got {_kind(value)}")
        if not math.isfinite(value):
            raise self.error(field, f"expected a finite number, got {value}")
        return float(value)

    def duration(self) -> float:
        duration = self.number("duration", self.get("duration"))
        if duration <= 0:
            raise self.error("duration", f"expected seconds > 0, got {duration}")
        return duration

    def pair(self, field: str, value: Any) -> Interval:
        if not isinstance(value, list) or len(value) != 2:
            raise self.error(field, f"expected [start, end], got {_kind(value)}")
        return self.number(field, value[0]), self.number(field, value[1])

    def tvg_interval(self) -> Interval:
        value = self.get("timestamps")
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], list):
            value = value[0]  # [[s, e]] (Charades-style) is accepted too
        return self.pair("timestamps", value)

    def intervals(self, field: str) -> tuple[Interval, ...]:
        value = self.get(field)
        if not isinstance(value, list):
            raise self.error(field, f"expected [[start, end], ...], got {_kind(value)}")
        return tuple(self.pair(field, item) for item in value)

    def boxes(self) -> tuple[Box, ...]:
        value = self.get("boxes")
        if not isinstance(value, list) or not value:
            raise self.error("boxes", f"expected [[x0, y0, x1, y1], ...], got {_kind(value)}")
        boxes = []
        for box in value:
            if not isinstance(box, list) or len(box) != 4:
                raise self.error("boxes", f"expected [x0, y0, x1, y1], got {_kind(box)}")
            x0, y0, x1, y1 = (self.number("boxes", v) for v in box)
            boxes.append((x0, y0, x1, y1))
        return tuple(boxes)

    def letter(self) -> str:
        answer = self.string("answer")
        letter = parse_letter(answer)
        if letter is None:
            problem = f"expected an option letter like 'B' or '(B)', got {answer!r}"
            raise self.error("answer", problem)
        return letter

    def options(self) -> tuple[str, ...]:
        value = self.row.get("options", [])
        if not isinstance(value, list) or not all(isinstance(o, str) for o in value):
            raise self.error("options", f"expected a list of strings, got {_kind(value)}")
        return tuple(value)


def _kind(value: Any) -> str:
    """How a JSON value is described in error messages."""
    if isinstance(value, list):
        return f"a list of {len(value)}"
    return "null" if value is None else type(value).__name__


@contextlib.contextmanager
def _open_lines(path: str) -> Iterator[Iterable[str]]:
    if path == "-":
        yield sys.stdin
        return
    with open(path, encoding="utf-8") as handle:
        yield handle
