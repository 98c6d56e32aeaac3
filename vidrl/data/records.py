"""Turning one raw record of any supported format into a checked `Sample`.

Each `*_record` function raises `BadRecord` with a reason a person can act on; the
readers (vidrl.data.readers) turn that into a logged, counted skip. `check_sample`
holds the rules every sample obeys, whatever format it came from:
  - duration > 0 and finite;
  - every interval satisfies 0 <= start < end <= duration (reversed or out-of-range
    ground truth is a data error, never silently repaired);
  - tvg has exactly one interval; mcq/gqa have an answer letter within the options;
  - track boxes are normalised with x0 < x1 and y0 < y1.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from vidrl.data.answers import extract_answer, parse_interval, parse_letter
from vidrl.data.sample import TASK_KINDS, Box, Interval, Sample
from vidrl.data.skips import BadRecord

# "(A) text", "A. text", "A) text", "A: text" at the start of a line of a question.
_OPTION_LINE = re.compile(r"^\s*\(?([A-Z])[).:]\s*(.+?)\s*$", re.MULTILINE)
_TIME_EPS = 1e-6


def check_sample(sample: Sample) -> Sample:
    """Return the sample if it obeys the rules in the module docstring, else raise BadRecord."""
    if sample.task not in TASK_KINDS:
        raise BadRecord(f"unknown task {sample.task!r}; allowed: {', '.join(TASK_KINDS)}")
    if not sample.question.strip():
        raise BadRecord("empty question")
    if not (math.isfinite(sample.duration) and sample.duration > 0):
        raise BadRecord(f"duration must be a positive number of seconds, got {sample.duration!r}")
    for start, end in sample.timestamps:
        if not (math.isfinite(start) and math.isfinite(end)):
            raise BadRecord(f"interval [{start}, {end}] is not finite")
        if start >= end:
            raise BadRecord(f"interval [{start}, {end}] is reversed or empty (start must be < end)")
        if start < -_TIME_EPS or end > sample.duration + _TIME_EPS:
            raise BadRecord(f"interval [{start}, {end}] lies outside the video [0, {sample.duration}]")
    if sample.task == "tvg" and len(sample.timestamps) != 1:
        raise BadRecord(f"a tvg sample needs exactly one interval, got {len(sample.timestamps)}")
    if sample.task in ("mcq", "gqa"):
        _check_answer(sample)
    if sample.task == "gqa" and not sample.timestamps:
        raise BadRecord("a gqa sample needs at least one supporting interval")
    if sample.task == "track":
        _check_boxes(sample.boxes)
    return sample


def _check_answer(sample: Sample) -> None:
    if sample.answer is None or not re.fullmatch(r"[A-Z]", sample.answer):
        raise BadRecord(f"answer must be one option letter, got {sample.answer!r}")
    if sample.options and ord(sample.answer) - ord("A") >= len(sample.options):
        raise BadRecord(f"answer {sample.answer!r} but only {len(sample.options)} options")


def _check_boxes(boxes: Sequence[Box]) -> None:
    if not boxes:
        raise BadRecord("a track sample needs at least one box")
    for box in boxes:
        x0, y0, x1, y1 = box
        if not all(math.isfinite(v) and -_TIME_EPS <= v <= 1 + _TIME_EPS for v in box):
            raise BadRecord(f"box {list(box)} is not normalised to [0, 1]")
        if x0 >= x1 or y0 >= y1:
            raise BadRecord(f"box {list(box)} is empty or reversed (need x0 < x1, y0 < y1)")


def require(record: Mapping[str, Any], name: str) -> Any:
    """A required field, or BadRecord naming it."""
    if not isinstance(record, Mapping):
        raise BadRecord(f"record is a {type(record).__name__}, expected a JSON object")
    if name not in record or record[name] is None:
        raise BadRecord(f"missing field {name!r}")
    return record[name]


def number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise BadRecord(f"{name} must be a number, got {value!r}")
    try:
        out = float(value)
    except ValueError:
        raise BadRecord(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(out):
        raise BadRecord(f"{name} must be finite, got {value!r}")
    return out


def intervals(value: Any, name: str) -> tuple[Interval, ...]:
    """[s, e] or [[s, e], ...] -> ((s, e), ...)."""
    if isinstance(value, Sequence) and len(value) == 2 and not isinstance(value[0], Sequence | str):
        value = [value]
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise BadRecord(f"{name} must be [start, end] or a list of them, got {value!r}")
    out = []
    for pair in value:
        if not isinstance(pair, Sequence) or isinstance(pair, str) or len(pair) != 2:
            raise BadRecord(f"{name} entry {pair!r} is not a [start, end] pair")
        out.append((number(pair[0], name), number(pair[1], name)))
    return tuple(out)


def options_from_text(question: str) -> tuple[str, ...]:
    """Options written into the question as lines "(A) ..."/"A. ...", in letter order."""
    found = _OPTION_LINE.findall(question)
    letters = [letter for letter, _ in found]
    if letters != [chr(ord("A") + i) for i in range(len(letters))]:
        return ()
    return tuple(text for _, text in found)


def temporal_r1_record(record: Mapping[str, Any], data_folder: Path, where: str) -> Sample:
    """A Temporal-R1 record: `dataset`, `video`, `problem`, `solution`, `video_length`.

    The solution of a grounding record is an interval (Temporal-R1's JSON
    `{"start_time": "S", "end_time": "E"}`, optionally inside <answer>, or "S to E"); that
    of a multiple-choice record is an option letter. An explicit `task` field wins.
    """
    problem = str(require(record, "problem"))
    solution = require(record, "solution")
    duration = number(require(record, "video_length"), "video_length")
    task = record.get("task") or _infer_task(solution)
    base = dict(
        id=str(record.get("id") or where),
        video=str(data_folder / str(require(record, "video"))),
        question=problem,
        duration=duration,
        dataset=str(record.get("dataset", "")),
    )
    if task == "tvg":
        interval = _solution_interval(solution, duration)
        if interval is None:
            raise BadRecord(f"solution {solution!r} is not an interval")
        return check_sample(Sample(task="tvg", timestamps=(interval,), **base))
    if task == "mcq":
        options = tuple(map(str, record.get("options") or options_from_text(problem)))
        letter = parse_letter(_answer_text(solution))
        return check_sample(Sample(task="mcq", options=options, answer=letter, **base))
    raise BadRecord(f"task {task!r} is not readable from Temporal-R1 records (tvg, mcq)")


def _answer_text(solution: Any) -> str:
    text = solution if isinstance(solution, str) else json.dumps(solution)
    return extract_answer(text) or text


def _solution_interval(solution: Any, duration: float) -> Interval | None:
    """Seconds from any of the solution forms.

    Temporal-R1's released records hold a list [start, end] as FRACTIONS of the video
    (their trainer compares it with the prediction divided by video_length), so a list is
    scaled by the duration; the JSON-object and text forms are in seconds.
    """
    if isinstance(solution, Mapping) and {"start_time", "end_time"} <= solution.keys():
        return number(solution["start_time"], "start_time"), number(solution["end_time"], "end_time")
    if isinstance(solution, Sequence) and not isinstance(solution, str) and len(solution) == 2:
        start, end = intervals(solution, "solution")[0]
        if not (0.0 <= start <= 1.0 and 0.0 <= end <= 1.0):
            raise BadRecord(f"a list solution holds fractions of the video in [0, 1], got {solution!r}")
        return start * duration, end * duration
    return parse_interval(_answer_text(solution), "any")


def _infer_task(solution: Any) -> str:
    if _solution_interval(solution, 1.0) is not None:
        return "tvg"
    if parse_letter(_answer_text(solution)) is not None:
        return "mcq"
    raise BadRecord(f"cannot tell the task from solution {solution!r}; add a 'task' field")


def charades_records(vid: str, entry: Any, video_folder: Path, extension: str) -> list[Sample]:
    """One Charades-STA entry {duration, timestamps, sentences} -> one tvg sample per sentence."""
    duration = number(require(entry, "duration"), "duration")
    spans = intervals(require(entry, "timestamps"), "timestamps")
    sentences = require(entry, "sentences")
    if not isinstance(sentences, list) or len(sentences) != len(spans):
        raise BadRecord(f"{len(spans)} timestamps but sentences is {sentences!r}")
    video = str(video_folder / f"{vid}{extension}")
    return [
        Sample(
            id=f"{vid}#{i}",
            task="tvg",
            video=video,
            question=str(sentence).strip(),
            duration=duration,
            timestamps=(span,),
            dataset="charades",
        )
        for i, (span, sentence) in enumerate(zip(spans, sentences, strict=True))
    ]


def gqa_record(record: Mapping[str, Any], video_folder: Path, where: str) -> Sample:
    """A grounded-QA record {video, question, options, answer: "(C)", glue, duration}."""
    options = require(record, "options")
    if not isinstance(options, list) or not options:
        raise BadRecord(f"options must be a non-empty list, got {options!r}")
    answer = parse_letter(str(require(record, "answer")), len(options))
    return check_sample(
        Sample(
            id=str(record.get("id") or where),
            task="gqa",
            video=str(video_folder / str(require(record, "video"))),
            question=str(require(record, "question")),
            duration=number(require(record, "duration"), "duration"),
            options=tuple(map(str, options)),
            answer=answer,
            timestamps=intervals(require(record, "glue"), "glue"),
            dataset=str(record.get("dataset", "gqa")),
        )
    )


def sample_record(record: Mapping[str, Any], where: str) -> Sample:
    """A vidrl sample as written by `sample_to_record` (JSONL or a Parquet row)."""
    task = require(record, "task")
    boxes = tuple(tuple(number(v, "boxes") for v in box) for box in record.get("boxes") or ())
    if any(len(box) != 4 for box in boxes):
        raise BadRecord("every box needs 4 numbers [x0, y0, x1, y1]")
    return check_sample(
        Sample(
            id=str(record.get("id") or where),
            task=task,
            video=str(require(record, "video")),
            question=str(require(record, "question")),
            duration=number(require(record, "duration"), "duration"),
            options=tuple(map(str, record.get("options") or ())),
            answer=record.get("answer"),
            timestamps=intervals(record.get("timestamps") or [], "timestamps"),
            boxes=boxes,  # type: ignore[arg-type]  # lengths checked above
            dataset=str(record.get("dataset") or ""),
        )
    )


def sample_to_record(sample: Sample) -> dict[str, Any]:
    """The JSON/Parquet row of a sample (lists, not tuples)."""
    return {
        "id": sample.id,
        "task": sample.task,
        "video": sample.video,
        "question": sample.question,
        "duration": sample.duration,
        "options": list(sample.options),
        "answer": sample.answer,
        "timestamps": [list(t) for t in sample.timestamps],
        "boxes": [list(b) for b in sample.boxes],
        "dataset": sample.dataset,
    }


def activitynet_records(vid: str, entry: Any, video_folder: Path, extension: str) -> list[Sample]:
    """One ActivityNet-Captions entry {duration, timestamps, sentences} -> one tvg sample per
    sentence (the layout of Charades-STA, with `dataset` "activitynet").

    Departure: ActivityNet's annotations hold ends a little past the video's duration (the
    times were marked on the web player, the durations read from the files); such an end is
    clamped to the duration, as lmms-eval's scoring effectively does. A start at or past the
    end of the video, or a reversed interval, is still a data error.
    """
    samples = charades_records(vid, entry, video_folder, extension)
    return [
        replace(
            sample,
            dataset="activitynet",
            timestamps=tuple(_clamp_end(span, sample.duration) for span in sample.timestamps),
        )
        for sample in samples
    ]


def _clamp_end(span: Interval, duration: float) -> Interval:
    start, end = span
    # An interval that starts past the end is left for check_sample to reject by name.
    return (start, min(end, duration)) if start < duration else span


MCQ_UNKNOWN_DURATION = 1.0
"""Duration given to an MVBench-style record without one: mcq prompts do not state the
video's length and no mcq metric reads it, so it only has to pass `check_sample`."""


def mvbench_record(record: Mapping[str, Any], video_folder: Path, where: str, task_type: str) -> Sample:
    """An MVBench-style record {video, question, candidates: [texts], answer: text}.

    The answer is the text of one candidate (compared with surrounding whitespace ignored);
    its position gives the letter. `task_type` (the record's own `task_type` key wins, else
    the caller's, usually the file stem) is kept in `Sample.dataset`, so accuracy can be
    reported per task type. `duration` is optional (see MCQ_UNKNOWN_DURATION).
    """
    candidates = require(record, "candidates")
    if not isinstance(candidates, list) or not candidates or len(candidates) > 26:
        raise BadRecord(f"candidates must be a list of 1-26 option texts, got {candidates!r}")
    options = tuple(str(c).strip() for c in candidates)
    answer = str(require(record, "answer")).strip()
    if options.count(answer) != 1:
        raise BadRecord(f"answer {answer!r} is not exactly one of the candidates {list(options)}")
    duration = record.get("duration")
    return check_sample(
        Sample(
            id=str(record.get("id") or where),
            task="mcq",
            video=str(video_folder / str(require(record, "video"))),
            question=str(require(record, "question")).strip(),
            duration=MCQ_UNKNOWN_DURATION if duration is None else number(duration, "duration"),
            options=options,
            answer=chr(ord("A") + options.index(answer)),
            dataset=str(record.get("task_type") or task_type),
        )
    )
