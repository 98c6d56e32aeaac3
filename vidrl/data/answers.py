"""Answer formats of every task: how a perfect answer is written, and how one is read back.

Prompts use the renderers for SFT targets, rewards and evaluation use the parsers, so the
two sides can never drift apart (`parse_*(render_*(x)) == x`). Nothing here scores: the
reward logic lives in `vidrl.rewards`.

What a model writes inside `<answer>...</answer>`:
- tvg:   `{"start_time": "12.5", "end_time": "20.25"}` (Temporal-R1) or `12.5 to 20.25`
         (VideoChat-R1).
- mcq:   `B`.
- gqa:   `B`, followed OUTSIDE the answer by `<glue>[(12.5, 20.25), ...]</glue>`
         (VideoChat-R1's grammar), so `render_gqa` returns the whole tagged tail.
- track: `[[x0, y0, x1, y1], ...]`, one normalised box per sampled frame.

Every parser is total: any string gives a value or None, never an exception, and it runs
in time linear in the input (possessive quantifiers and anchored scans instead of
backtracking patterns, since responses are untrusted model output). Parsers return raw
values (an interval may be reversed or outside the video); callers decide what to do.

Where we depart from the references:
- `extract_answer` takes the LAST complete `<answer>` block (Temporal-R1 takes the first);
  the two agree whenever the response has one answer.
- The "json" interval style also accepts unquoted numbers (`{"start_time": 1.5, ...}`), as
  Temporal-R1's `json.loads` + `float` does; the strict quoted form is checked by the
  format reward, not here. String values must be plain decimals ("1e3", "nan", "inf" and
  "1_0" are rejected; Python's `float` would take them).
- `parse_letter` demands exactly one option letter; VideoChat-R1 takes the first capital
  A-G anywhere, which scores "A or B" as A.
"""

from __future__ import annotations

import json
import math
import re
from collections import deque
from collections.abc import Sequence
from typing import Any, Literal

from vidrl.data.sample import Box, Interval, Sample

IntervalStyle = Literal["json", "to", "any"]
"""json: Temporal-R1's JSON object; to: VideoChat-R1's last `S to E` / `S and E`;
any: json, then a JSON object embedded in text, then `S to E`, then `S - E`."""

# Decimal number, signed; possessive so a long run of digits is scanned once.
_NUM = r"[-+]?+(?:\d++(?:\.\d*+)?+|\.\d++)"
# VideoChat-R1's `(\d+\.?\d*) (to|and) (\d+\.?\d*)`, case-insensitive as theirs. The
# lookbehind and possessive quantifiers only remove backtracking: a space must follow each
# number, so the greedy match is the only one that can succeed, and a match starting
# inside a run of digits implies one starting at the run's first digit.
_TO_RANGE = re.compile(r"(?<!\d)(\d++\.?+\d*+) (?:to|and) (\d++\.?+\d*+)", re.IGNORECASE)
_DASH_RANGE = re.compile(r"(?<![\d.\-])(\d++(?:\.\d++)?+)\s*+[-\u2013]\s*+(\d++(?:\.\d++)?+)")
_FLAT_OBJECT = re.compile(r"\{[^{}]*+\}")
_DECIMAL_STRING = re.compile(rf"\s*+({_NUM})\s*+")
_COMMA = r"\s*+,\s*+"
_PAIR = re.compile(rf"[(\[]\s*+({_NUM}){_COMMA}({_NUM})\s*+[)\]]")
_QUAD = re.compile(rf"[(\[]\s*+({_NUM}){_COMMA}({_NUM}){_COMMA}({_NUM}){_COMMA}({_NUM})\s*+[)\]]")

# "The answer is", "Answer:", "The correct option is:", "Option", "Final answer -" ...
_LETTER_PREFIX = re.compile(
    r"(?:the\s++)?(?:(?:correct|best|final|right)\s++)?(?:answer|option|choice)"
    r"(?:\s++is)?+\s*+[:\-]?\s*+",
    re.IGNORECASE,
)
# A bare letter must be followed by the end or by `.`, `)` or `:` ("B", "B.", "B) text");
# otherwise "A man walks" would read as option A.
_LEAD_LETTER = re.compile(r"\(([A-Z])\)|([A-Z])(?=$|[.):])")
# What follows the chosen letter must not be a second choice: "A. or B", "(A) (B)", "A) B)".
_SECOND_CHOICE = re.compile(
    r"[\s.,;:/&|)]*+(?:(?i:or|and)\s++)?\(?[A-Z]\)?(?=\s*$|[.,;:)/&|]|\s+(?i:or|and)\b)"
)


def extract_answer(text: str) -> str | None:
    """Content of the last complete `<answer>...</answer>` block, stripped; None if none."""
    return _last_block(text, "answer")


def parse_interval(answer: str, style: IntervalStyle) -> tuple[float, float] | None:
    """The (start, end) pair in seconds written in an answer, or None.

    The pair is returned as written: it may be reversed or outside the video. Non-finite
    numbers (nan, inf, overflowing literals) give None.
    """
    if style == "json":
        return _interval_from_json(answer)
    if style == "to":
        return _last_range(_TO_RANGE, answer)
    if style == "any":
        for parse in (_interval_from_json, _interval_from_embedded_json):
            pair = parse(answer)
            if pair is not None:
                return pair
        return _last_range(_TO_RANGE, answer) or _last_range(_DASH_RANGE, answer)
    return None


def parse_letter(answer: str, num_options: int | None = None) -> str | None:
    """The single option letter an answer chooses, or None.

    Accepts "B", "(B)", "B.", "B) text", "(B) text", "The answer is B", "Answer: (B)".
    Rejects empty answers, lowercase letters, and anything naming a second choice
    ("A or B", "A, B", "(A) (B)"). With `num_options`, the letter must be one of the first
    `num_options` letters.
    """
    text = answer.strip().strip("*`'\"").strip()
    prefix = _LETTER_PREFIX.match(text)
    if prefix is not None:
        text = text[prefix.end() :]
    lead = _LEAD_LETTER.match(text)
    if lead is None:
        return None
    letter = lead[1] or lead[2]
    rest = text[lead.end() :]
    if lead[2] is not None:
        rest = rest[1:]  # the `.`, `)` or `:` that let a bare letter through
    if _SECOND_CHOICE.match(rest):
        return None
    if num_options is not None and ord(letter) - ord("A") >= num_options:
        return None
    return letter


def parse_glue(text: str) -> list[tuple[float, float]]:
    """Supporting intervals from the last `<glue>[(s, e), ...]</glue>` block of a response.

    Accepts `[(s, e), ...]` and `[[s, e], ...]`; pairs are returned as written (possibly
    reversed). No block, or a pair with a non-finite number, gives an empty list.
    """
    body = _last_block(text, "glue")
    if body is None:
        return []
    pairs = [_finite(m[1], m[2]) for m in _PAIR.finditer(body)]
    if any(pair is None for pair in pairs):
        return []
    return [(pair[0], pair[1]) for pair in pairs if pair is not None]


def parse_boxes(answer: str) -> list[Box] | None:
    """Boxes `[x0, y0, x1, y1]` listed in an answer, in order; None if there are none.

    Brackets may be square or round; the numbers are returned as written (not clamped).
    A box with a non-finite number makes the whole answer unreadable (None).
    """
    boxes: list[Box] = []
    for match in _QUAD.finditer(answer):
        box = _finite(match[1], match[2], match[3], match[4])
        if box is None:
            return None
        boxes.append((box[0], box[1], box[2], box[3]))
    return boxes or None


def render_tvg(start: float, end: float, style: Literal["json", "to"] = "json") -> str:
    """The answer body for a grounding sample, seconds with one or two decimals."""
    s, e = format_seconds(start), format_seconds(end)
    if style == "json":
        return f'{{"start_time": "{s}", "end_time": "{e}"}}'
    return f"{s} to {e}"


def render_mcq(letter: str) -> str:
    """The answer body for a multiple-choice sample: the bare letter."""
    return _checked_letter(letter)


def render_gqa(letter: str, intervals: Sequence[Interval]) -> str:
    """The tagged tail of a grounded-QA response: `<answer>B</answer><glue>[...]</glue>`.

    Unlike the other renderers this includes the tags, because the supporting intervals
    live outside `<answer>` (VideoChat-R1's grammar).
    """
    pairs = ", ".join(f"({format_seconds(s)}, {format_seconds(e)})" for s, e in intervals)
    return f"<answer>{_checked_letter(letter)}</answer><glue>[{pairs}]</glue>"


def render_track(boxes: Sequence[Box]) -> str:
    """The answer body for a tracking sample: `[[x0, y0, x1, y1], ...]`, up to 3 decimals."""
    rendered = (", ".join(_format_decimal(v, 3) for v in box) for box in boxes)
    return "[" + ", ".join(f"[{inner}]" for inner in rendered) + "]"


def render_answer(sample: Sample, tvg_style: Literal["json", "to"] = "json") -> str:
    """The tagged tail of a perfect response to `sample`: `<answer>...</answer>`, plus the
    `<glue>` block for gqa. Use this (not `wrap_answer(render_gqa(...))`) for SFT targets."""
    if sample.task == "gqa":
        return render_gqa(sample.answer or "", sample.timestamps)
    if sample.task == "tvg":
        return wrap_answer(render_tvg(*sample.interval, style=tvg_style))
    if sample.task == "mcq":
        return wrap_answer(render_mcq(sample.answer or ""))
    return wrap_answer(render_track(sample.boxes))


def wrap_answer(body: str) -> str:
    """`<answer>body</answer>`."""
    return f"<answer>{body}</answer>"


def render_response(tail: str, think: str | None = None) -> str:
    """A whole response: `<think>think</think>` (when given) then the tagged tail."""
    return tail if think is None else f"<think>{think}</think>\n{tail}"


def format_seconds(seconds: float) -> str:
    """Seconds with one or two decimals: 12.0 -> "12.0", 12.5 -> "12.5", 12.25 -> "12.25"."""
    return _format_decimal(seconds, 2)


def _format_decimal(value: float, max_decimals: int) -> str:
    text = f"{value:.{max_decimals}f}".rstrip("0")
    if text.endswith("."):
        text += "0"
    return "0.0" if float(text) == 0 else text  # never "-0.0"


def _checked_letter(letter: str) -> str:
    if len(letter) != 1 or not "A" <= letter <= "Z":
        raise ValueError(f"an option letter is one of A..Z, got {letter!r}")
    return letter


def _last_block(text: str, tag: str) -> str | None:
    """Content of the last `<tag>...</tag>` pair, found with plain scans (linear time).

    The opening tag is the last one that still has a closing tag after it, and the block
    ends at the first closing tag after that opening.
    """
    opening, closing = f"<{tag}>", f"</{tag}>"
    last_close = text.rfind(closing)
    if last_close < 0:
        return None
    start = text.rfind(opening, 0, last_close)
    if start < 0:
        return None
    body_start = start + len(opening)
    return text[body_start : text.find(closing, body_start)].strip()


def _interval_from_json(answer: str) -> tuple[float, float] | None:
    try:
        data = json.loads(answer)
    except (ValueError, RecursionError):  # also covers over-long integer literals
        return None
    if not isinstance(data, dict):
        return None
    start, end = _json_seconds(data.get("start_time")), _json_seconds(data.get("end_time"))
    if start is None or end is None:
        return None
    return start, end


def _interval_from_embedded_json(answer: str) -> tuple[float, float] | None:
    for match in reversed(list(_FLAT_OBJECT.finditer(answer))):
        pair = _interval_from_json(match[0])
        if pair is not None:
            return pair
    return None


def _json_seconds(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:
            return None
        return number if math.isfinite(number) else None
    if isinstance(value, str):
        match = _DECIMAL_STRING.fullmatch(value)
        if match is not None:
            pair = _finite(match[1])
            return None if pair is None else pair[0]
    return None


def _last_range(pattern: re.Pattern[str], text: str) -> tuple[float, float] | None:
    last = deque(pattern.finditer(text), maxlen=1)  # only the last match counts
    if not last:
        return None
    pair = _finite(last[0][1], last[0][2])
    return None if pair is None else (pair[0], pair[1])


def _finite(*texts: str) -> tuple[float, ...] | None:
    """The numbers, or None if any of them overflows to inf."""
    numbers = tuple(float(t) for t in texts)
    return numbers if all(math.isfinite(n) for n in numbers) else None
