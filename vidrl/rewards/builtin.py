"""The builtin rewards: format, temporal IoU, option accuracy, glue IoU, box IoU (per sample), and
DAPO's overlong punishment (a batch reward over token lengths, in [-1, 0]).

Each is a pure, TOTAL function `(response, sample, **kwargs) -> float | None`: any string
(garbage, huge, unicode, nested tags) gives a number in [0, 1] and never an exception;
None means only "this reward does not apply to this sample's task". The registry adapts
them to the batch contract of `vidrl.rewards.types`.

Where we depart from the references (Temporal-R1, VideoChat-R1):
- Predicted intervals are clamped to [0, duration] and must have start < end after
  clamping, else IoU 0; the references neither clamp nor check order, so a reversed or
  huge interval could still earn IoU.
- Option letters must be unambiguous (`parse_letter`): "A or B" and "[A] or [B]" score 0,
  not 1; "[B]" and "B - text" name B.
- Boxes are clamped to [0, 1] and a degenerate box scores 0 on its frame; the number of
  boxes must equal the ground truth's (VideoChat-R1 hard-codes 8).
- The tag grammars are checked with anchored scans equivalent to the references' regexes
  (`<think>.*?</think>\\s*<answer>.*?</answer>` fullmatch, DOTALL), which backtrack
  quadratically on responses full of tags; `tests/test_rewards.py` checks the equivalence.
- For gqa the tag grammars include VideoChat-R1's `\\s*<glue>.*?</glue>` after the answer,
  since the supporting intervals are written there.

The switches that reproduce a reference where vidrl's default reads differently (the
presets set them; see `vidrl.rewards.presets` for what each preset matches and where it
still departs): `block` picks which `<answer>` block is read (`AnswerBlock`),
`numbers="float"` reads JSON times with Python's `float` as Temporal-R1 does, and
`glue="videochat_r1"` / the "+glue" grammars use VideoChat-R1's strict glue grammar.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from itertools import pairwise
from typing import Literal

from vidrl.data.answers import (
    AnswerBlock,
    IntervalStyle,
    NumberSyntax,
    extract_answer,
    find_block,
    parse_boxes,
    parse_glue,
    parse_interval,
    parse_letter,
    parse_videochat_glue,
)
from vidrl.data.iou import interval_iou
from vidrl.data.sample import Box, Interval, Sample
from vidrl.rewards.types import RewardInput

FormatGrammar = Literal[
    "tags",
    "tags+task",
    "tags+glue",
    "answer_only",
    "answer_only+task",
    "answer_only+glue",
    "tags_json_tvg",
    "answer_json_tvg",
]
"""tags: `<think>.*?</think>\\s*<answer>.*?</answer>` fullmatch (gqa: plus `<glue>` block);
answer_only: `\\s*<answer>.*?</answer>\\s*` for the no-thinking prompt; `+task`: the same and
the answer parses for the sample's task; `+glue`: the same and, for gqa, the first `<glue>`
block is a valid list in VideoChat-R1's grammar (their gqa format; other tasks as without
it); tags_json_tvg / answer_json_tvg: Temporal-R1's strict JSON grammar (tvg only)."""
GlueGrammar = Literal["vidrl", "videochat_r1"]
"""How `gqa_iou` reads `<glue>`: vidrl: the last block, loosely (`parse_glue`), reversed
pairs dropped; videochat_r1: the first block in VideoChat-R1's strict grammar
(`parse_videochat_glue`), IoU 0 if it is invalid."""

# Temporal-R1's format regex; `[\d.]++` is possessive only to avoid backtracking (a `"`
# must follow, so the greedy match is the only one that can succeed).
_JSON_TVG_BODY = (
    r'<answer>\s*\{\s*"start_time"\s*:\s*"([\d.]++)"\s*,\s*"end_time"\s*:\s*"([\d.]++)"\s*\}'
    r"\s*</answer>"
)
_TAGS_JSON_TVG = re.compile(r"<think>.*?</think>\s*" + _JSON_TVG_BODY, re.DOTALL)
_ANSWER_JSON_TVG = re.compile(r"\s*" + _JSON_TVG_BODY + r"\s*", re.DOTALL)
_SEPARATORS = {
    ("think", "answer"): re.compile(r"</think>\s*<answer>"),
    ("answer", "glue"): re.compile(r"</answer>\s*<glue>"),
}


def format_reward(
    response: str,
    sample: Sample,
    grammar: FormatGrammar = "tags",
    style: IntervalStyle = "any",
    strip: bool = True,
) -> float | None:
    """1.0 if the response follows the answer grammar, else 0.0.

    strip: ignore whitespace around the whole response first (VideoChat-R1 does,
    Temporal-R1 does not). style: the interval style a tvg answer must parse in (`+task`).
    The JSON grammars apply to tvg samples only (None otherwise).
    """
    text = response.strip() if strip else response
    if grammar in ("tags_json_tvg", "answer_json_tvg"):
        if sample.task != "tvg":
            return None
        pattern = _TAGS_JSON_TVG if grammar == "tags_json_tvg" else _ANSWER_JSON_TVG
        return 1.0 if pattern.fullmatch(text) else 0.0
    thinking = grammar.startswith("tags")
    tags = ["think", "answer"] if thinking else ["answer"]
    if sample.task == "gqa":
        tags.append("glue")
    # answer_only's grammar itself allows whitespace around the tags.
    if not _is_tag_chain(text if thinking else text.strip(), tags):
        return 0.0
    if grammar.endswith("+task") and not answer_is_well_formed(text, sample, style):
        return 0.0
    if grammar.endswith("+glue") and sample.task == "gqa" and _videochat_glue(text) is None:
        return 0.0
    return 1.0


def answer_is_well_formed(response: str, sample: Sample, style: IntervalStyle = "any") -> bool:
    """Whether the response's answer parses as the sample's task requires.

    tvg: an interval with 0 <= start < end; mcq: exactly one valid option letter; gqa: that
    letter and a glue list of 0 <= start <= end pairs (at least one); track: as many boxes
    as the ground truth has (at least one).
    """
    answer = extract_answer(response)
    if answer is None:
        return False
    if sample.task == "tvg":
        pair = parse_interval(answer, style)
        return pair is not None and 0 <= pair[0] < pair[1]
    letter = parse_letter(answer, len(sample.options) or None)
    if sample.task == "mcq":
        return letter is not None
    if sample.task == "gqa":
        glue = parse_glue(response)
        return letter is not None and bool(glue) and all(0 <= s <= e for s, e in glue)
    boxes = parse_boxes(answer)
    return boxes is not None and (not sample.boxes or len(boxes) == len(sample.boxes))


def tvg_iou(
    response: str,
    sample: Sample,
    style: IntervalStyle = "any",
    normalize: bool = False,
    block: AnswerBlock = "last",
    numbers: NumberSyntax = "decimal",
) -> float | None:
    """Temporal IoU of the answered interval with the ground truth (tvg only), by
    `vidrl.data.iou.interval_iou`, the function the evaluation's `temporal_iou` uses.

    The prediction is clamped to [0, duration]; start >= end after clamping scores 0.
    normalize: divide all times by the duration first, as Temporal-R1 does (the same IoU
    up to rounding; kept so that preset reproduces their numbers bit for bit).
    block: which `<answer>` block is read; numbers: how JSON times are read.
    """
    if sample.task != "tvg" or not sample.timestamps:
        return None
    answer = extract_answer(response, block)
    pair = None if answer is None else parse_interval(answer, style, numbers)
    if pair is None:
        return 0.0
    start, end = _clamp_interval(pair, sample.duration)
    if not start < end:
        return 0.0
    gt_start, gt_end = sample.interval
    if normalize and sample.duration > 0:
        duration = sample.duration
        start, end, gt_start, gt_end = (t / duration for t in (start, end, gt_start, gt_end))
    # Clipped: a reward stays in [0, 1] and is never NaN, whatever the sample holds.
    return _unit(interval_iou((start, end), (gt_start, gt_end)))


def mcq_accuracy(response: str, sample: Sample, block: AnswerBlock = "last") -> float | None:
    """1.0 if the answer names exactly one option and it is the right one (mcq only)."""
    if sample.task != "mcq":
        return None
    return _letter_accuracy(response, sample, block)


def gqa_accuracy(response: str, sample: Sample, block: AnswerBlock = "last") -> float | None:
    """1.0 if the answer names exactly one option and it is the right one (gqa only)."""
    if sample.task != "gqa":
        return None
    return _letter_accuracy(response, sample, block)


def gqa_iou(response: str, sample: Sample, glue: GlueGrammar = "vidrl") -> float | None:
    """IoU of the merged `<glue>` intervals with the merged ground-truth intervals (gqa).

    glue: how the block is read (`GlueGrammar`). Each predicted interval is clamped to
    [0, duration]; empty or reversed ones are dropped. IoU = length of the intersection of
    the two unions / length of their union.
    """
    if sample.task != "gqa" or not sample.timestamps:
        return None
    pairs = parse_glue(response) if glue == "vidrl" else _videochat_glue(response) or []
    predicted = []
    for pair in pairs:
        start, end = _clamp_interval(pair, sample.duration)
        if start < end:
            predicted.append((start, end))
    return merged_iou(predicted, sample.timestamps)


def track_iou(response: str, sample: Sample) -> float | None:
    """Mean box IoU over the frames (track only); a wrong number of boxes scores 0.

    Predicted boxes are clamped to [0, 1]; a degenerate box (x1 <= x0 or y1 <= y0 after
    clamping) scores 0 on its frame.
    """
    if sample.task != "track" or not sample.boxes:
        return None
    answer = extract_answer(response)
    boxes = None if answer is None else parse_boxes(answer)
    if boxes is None or len(boxes) != len(sample.boxes):
        return 0.0
    ious = [box_iou(_clamp_box(p), g) for p, g in zip(boxes, sample.boxes, strict=True)]
    return _unit(sum(ious) / len(ious))


def overlong_penalty(batch: list[RewardInput], max_tokens: int, buffer_tokens: int) -> list[float | None]:
    """DAPO's soft overlong punishment (arXiv 2503.14476), a batch reward over token lengths L:
    0 while L <= max_tokens - buffer_tokens, then falling linearly to -1 at L = max_tokens, and
    -1 beyond. None for a response whose length is not known. max_tokens must be the rollout's
    response limit (RunConfig checks it)."""
    if buffer_tokens < 1 or max_tokens <= buffer_tokens:
        raise ValueError(f"need 1 <= buffer_tokens < max_tokens, got {buffer_tokens}, {max_tokens}")
    start = max_tokens - buffer_tokens
    out: list[float | None] = []
    for item in batch:
        length = item.response_tokens
        if length is None:
            out.append(None)
        elif length <= start:
            out.append(0.0)
        else:
            out.append(max((start - length) / buffer_tokens, -1.0))
    return out


def merged_iou(predicted: Sequence[Interval], truth: Sequence[Interval]) -> float:
    """IoU of two interval sets, each taken as the union of its intervals."""
    a, b = merge_intervals(predicted), merge_intervals(truth)
    inter = _intersection_length(a, b)
    union = _total_length(a) + _total_length(b) - inter
    return _unit(inter / union) if union > 0 else 0.0


def merge_intervals(intervals: Sequence[Interval]) -> list[Interval]:
    """Sorted, disjoint intervals covering the same points (reversed/empty ones dropped)."""
    merged: list[Interval] = []
    for start, end in sorted(i for i in intervals if i[0] < i[1]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def box_iou(a: Box, b: Box) -> float:
    """Area IoU of two `[x0, y0, x1, y1]` boxes; 0 if either is degenerate."""
    if not (a[2] > a[0] and a[3] > a[1] and b[2] > b[0] and b[3] > b[1]):
        return 0.0
    inter_w = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    inter_h = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return _unit(inter / union) if union > 0 else 0.0


def _letter_accuracy(response: str, sample: Sample, block: AnswerBlock) -> float | None:
    truth = None if sample.answer is None else parse_letter(sample.answer)
    if truth is None:
        return None  # no usable ground truth: not scoreable rather than always wrong
    answer = extract_answer(response, block)
    chosen = None if answer is None else parse_letter(answer, len(sample.options) or None)
    return 1.0 if chosen == truth else 0.0


def _videochat_glue(response: str) -> list[Interval] | None:
    """The first `<glue>` block in VideoChat-R1's grammar; None if absent or invalid."""
    body = find_block(response, "glue", "first")
    return None if body is None else parse_videochat_glue(body)


def _is_tag_chain(text: str, tags: Sequence[str]) -> bool:
    """Whether `<t1>.*?</t1>\\s*<t2>.*?</t2>...` (DOTALL) fullmatches `text`, in linear time.

    The pattern matches iff the text opens with `<t1>`, closes with `</tn>`, and the
    separators `</ti>\\s*<ti+1>` occur in order, without overlap, in between: the contents
    are free, so taking each separator at its earliest match is always a valid split.
    """
    opening, closing = f"<{tags[0]}>", f"</{tags[-1]}>"
    pos, end = len(opening), len(text) - len(closing)
    if pos > end or not (text.startswith(opening) and text.endswith(closing)):
        return False
    for pair in pairwise(tags):
        found = _SEPARATORS[pair].search(text, pos, end)
        if found is None:
            return False
        pos = found.end()
    return True


def _clamp_interval(pair: tuple[float, float], duration: float) -> tuple[float, float]:
    upper = duration if math.isfinite(duration) and duration > 0 else math.inf
    return min(max(pair[0], 0.0), upper), min(max(pair[1], 0.0), upper)


def _clamp_box(box: Box) -> Box:
    x0, y0, x1, y1 = (min(max(v, 0.0), 1.0) for v in box)
    return (x0, y0, x1, y1)


def _intersection_length(a: list[Interval], b: list[Interval]) -> float:
    total, i, j = 0.0, 0, 0
    while i < len(a) and j < len(b):
        overlap = min(a[i][1], b[j][1]) - max(a[i][0], b[j][0])
        total += max(overlap, 0.0)
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def _total_length(intervals: list[Interval]) -> float:
    return sum(end - start for start, end in intervals)


def _unit(value: float) -> float:
    """Clip to [0, 1]: guards only against rounding at the edges, and maps nan to 0."""
    return min(max(value, 0.0), 1.0) if value == value else 0.0
